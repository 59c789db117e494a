/*
 * edp_allocmap.c - the allocation map of the thread delegate pattern (see
 * edp_allocmap.h): a chained hash table from context to (worker, count)
 * plus a load counter per worker. The table grows with the number of
 * contexts in flight, which prefetch bounds.
 */
#include "edp_allocmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry {
  struct entry *next;
  int worker;
  int in_flight;
  char key[]; /* NUL-terminated context */
};

struct edp_allocmap {
  struct entry **buckets;
  size_t n_buckets, size;
  int workers;
  int last; /* last worker chosen for a new context */
  int *load;
};

/* FNV-1a: short keys, good spread, no dependencies. */
static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

int edp_allocmap_new(int workers, edp_allocmap **out) {
  if (!out)
    return EDP_EINVAL;
  *out = NULL;
  if (workers < 1 || workers > 4096)
    return EDP_EINVAL;
  edp_allocmap *m = calloc(1, sizeof(*m));
  if (!m)
    return EDP_ENOMEM;
  m->n_buckets = 64;
  m->buckets = calloc(m->n_buckets, sizeof(*m->buckets));
  m->load = calloc((size_t)workers, sizeof(*m->load));
  if (!m->buckets || !m->load) {
    free(m->buckets);
    free(m->load);
    free(m);
    return EDP_ENOMEM;
  }
  m->workers = workers;
  m->last = workers - 1;
  *out = m;
  return 0;
}

void edp_allocmap_destroy(edp_allocmap **mp) {
  if (!mp || !*mp)
    return;
  edp_allocmap *m = *mp;
  for (size_t i = 0; i < m->n_buckets; i++) {
    struct entry *e = m->buckets[i];
    while (e) {
      struct entry *next = e->next;
      free(e);
      e = next;
    }
  }
  free(m->buckets);
  free(m->load);
  free(m);
  *mp = NULL;
}

static struct entry **find(const edp_allocmap *m, const char *ctx) {
  struct entry **p = &m->buckets[hash(ctx) % m->n_buckets];
  while (*p && strcmp((*p)->key, ctx))
    p = &(*p)->next;
  return p;
}

/* Doubles the bucket array; on allocation failure the map just stays
 * more crowded, which is still correct. */
static void grow(edp_allocmap *m) {
  size_t n = m->n_buckets * 2;
  struct entry **b = calloc(n, sizeof(*b));
  if (!b)
    return;
  for (size_t i = 0; i < m->n_buckets; i++) {
    struct entry *e = m->buckets[i];
    while (e) {
      struct entry *next = e->next;
      size_t j = hash(e->key) % n;
      e->next = b[j];
      b[j] = e;
      e = next;
    }
  }
  free(m->buckets);
  m->buckets = b;
  m->n_buckets = n;
}

static int least_loaded(edp_allocmap *m) {
  int best = -1;
  for (int i = 1; i <= m->workers; i++) {
    int w = (m->last + i) % m->workers;
    if (best < 0 || m->load[w] < m->load[best])
      best = w;
  }
  m->last = best;
  return best;
}

int edp_allocmap_assign(edp_allocmap *m, const char *ctx, int *worker,
                        int *in_flight) {
  if (!m || !ctx || !worker)
    return EDP_EINVAL;
  struct entry **p = find(m, ctx);
  struct entry *e = *p;
  if (!e) {
    size_t len = strlen(ctx);
    e = malloc(sizeof(*e) + len + 1);
    if (!e)
      return EDP_ENOMEM;
    memcpy(e->key, ctx, len + 1);
    e->worker = least_loaded(m);
    e->in_flight = 0;
    e->next = NULL;
    *p = e;
    if (++m->size > m->n_buckets)
      grow(m);
  }
  e->in_flight++;
  m->load[e->worker]++;
  *worker = e->worker;
  if (in_flight)
    *in_flight = e->in_flight;
  return 0;
}

int edp_allocmap_release(edp_allocmap *m, const char *ctx, int *worker,
                         int *in_flight) {
  if (!m || !ctx)
    return EDP_EINVAL;
  struct entry **p = find(m, ctx);
  struct entry *e = *p;
  if (!e)
    return EDP_ENOTFOUND;
  m->load[e->worker]--;
  if (worker)
    *worker = e->worker;
  if (in_flight)
    *in_flight = e->in_flight - 1;
  if (--e->in_flight == 0) {
    *p = e->next;
    free(e);
    m->size--;
  }
  return 0;
}

int edp_allocmap_lookup(const edp_allocmap *m, const char *ctx, int *worker,
                        int *in_flight) {
  if (!m || !ctx)
    return EDP_EINVAL;
  struct entry *e = *find(m, ctx);
  if (!e)
    return EDP_ENOTFOUND;
  if (worker)
    *worker = e->worker;
  if (in_flight)
    *in_flight = e->in_flight;
  return 0;
}

size_t edp_allocmap_size(const edp_allocmap *m) { return m ? m->size : 0; }

int edp_allocmap_load(const edp_allocmap *m, int w) {
  return m && w >= 0 && w < m->workers ? m->load[w] : 0;
}
