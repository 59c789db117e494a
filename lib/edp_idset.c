/*
 * edp_idset.c - open-addressing hash set plus a FIFO ring for eviction.
 * The table has at least twice as many slots as the capacity, so probes
 * stay short; deletion uses backward-shift so no tombstones pile up.
 */
#include "edp_idset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edp_error.h"

struct edp_idset {
  size_t cap;    /* ids remembered */
  size_t nslots; /* power of two >= 2 * cap */
  char **slots;  /* hash table; owns the strings */
  char **ring;   /* insertion order, aliases of slots' strings */
  size_t head, count;
};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ull;
  }
  return h;
}

int edp_idset_new(size_t capacity, edp_idset **out) {
  if (!out || capacity == 0 || capacity > ((size_t)1 << 28))
    return EDP_EINVAL;
  *out = NULL;
  edp_idset *s = calloc(1, sizeof(*s));
  if (!s)
    return EDP_ENOMEM;
  s->cap = capacity;
  s->nslots = 16;
  while (s->nslots < 2 * capacity)
    s->nslots *= 2;
  s->slots = calloc(s->nslots, sizeof(char *));
  s->ring = calloc(capacity, sizeof(char *));
  if (!s->slots || !s->ring) {
    edp_idset_destroy(&s);
    return EDP_ENOMEM;
  }
  *out = s;
  return 0;
}

void edp_idset_destroy(edp_idset **sp) {
  if (!sp || !*sp)
    return;
  edp_idset *s = *sp;
  for (size_t i = 0; s->slots && i < s->nslots; i++)
    free(s->slots[i]);
  free(s->slots);
  free(s->ring);
  free(s);
  *sp = NULL;
}

static size_t find_slot(const edp_idset *s, const char *id) {
  size_t mask = s->nslots - 1;
  size_t i = (size_t)hash(id) & mask;
  while (s->slots[i] && strcmp(s->slots[i], id))
    i = (i + 1) & mask;
  return i;
}

int edp_idset_contains(const edp_idset *s, const char *id) {
  if (!s || !id)
    return 0;
  return s->slots[find_slot(s, id)] != NULL;
}

/* Removes the string at slot i, shifting later entries of the probe run
 * back so lookups never stop at a hole that used to be occupied. */
static void remove_slot(edp_idset *s, size_t i) {
  size_t mask = s->nslots - 1;
  free(s->slots[i]);
  s->slots[i] = NULL;
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (!s->slots[j])
      return;
    size_t home = (size_t)hash(s->slots[j]) & mask;
    /* Move slots[j] to the hole if its home is not in (i, j]. */
    int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!between) {
      s->slots[i] = s->slots[j];
      s->slots[j] = NULL;
      i = j;
    }
  }
}

int edp_idset_add(edp_idset *s, const char *id) {
  if (!s || !id)
    return EDP_EINVAL;
  size_t i = find_slot(s, id);
  if (s->slots[i])
    return 0;
  char *copy = strdup(id);
  if (!copy)
    return EDP_ENOMEM;
  if (s->count == s->cap) {
    char *oldest = s->ring[s->head];
    remove_slot(s, find_slot(s, oldest));
    s->head = (s->head + 1) % s->cap;
    s->count--;
    i = find_slot(s, id);
  }
  s->slots[i] = copy;
  s->ring[(s->head + s->count) % s->cap] = copy;
  s->count++;
  return 1;
}

size_t edp_idset_size(const edp_idset *s) { return s ? s->count : 0; }
