/*
 * edp_conn_group.c - a pattern's own connections as metric series whose
 * counters outlive the connections (contract in edp_conn_group.h).
 *
 * One mutex guards the series and the pointers to the attached
 * connections. A collect holds it while it reads each attached connection
 * through edp_conn_stats_get() (atomic loads, no allocation), and a detach
 * takes it to fold the final counts and drop the pointer, so a connection
 * destroyed after its detach returned is never read. The owner threads
 * keep counting meanwhile: nothing here touches a connection but its
 * counters and its immutable URL.
 */
#include "edp_conn_group.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_conn_internal.h"

#define NAME_MAX_LEN 63

struct series {
  char name[NAME_MAX_LEN + 1];
  char broker[300];   /* host:port of the first connection attached */
  const edp_conn *c;  /* attached now, or NULL */
  edp_conn_stats acc; /* counts of the connections detached before */
  int timing;         /* a connection of the series kept the histogram */
};

struct edp_conn_group {
  pthread_mutex_t mu;
  char *connection;
  struct series *s;
  size_t n, cap;
};

int edp_conn_group_new(const char *connection, edp_conn_group **out) {
  if (!out)
    return EDP_EINVAL;
  edp_conn_group *g = calloc(1, sizeof(*g));
  if (!g || !(g->connection = strdup(connection ? connection : "edp"))) {
    free(g);
    return EDP_ENOMEM;
  }
  pthread_mutex_init(&g->mu, NULL);
  *out = g;
  return 0;
}

void edp_conn_group_destroy(edp_conn_group **gp) {
  if (!gp || !*gp)
    return;
  edp_conn_group *g = *gp;
  pthread_mutex_destroy(&g->mu);
  free(g->connection);
  free(g->s);
  free(g);
  *gp = NULL;
}

/* The series named name, or NULL; caller holds g->mu. */
static struct series *find_locked(edp_conn_group *g, const char *name) {
  for (size_t i = 0; i < g->n; i++)
    if (!strcmp(g->s[i].name, name))
      return &g->s[i];
  return NULL;
}

int edp_conn_group_attach(edp_conn_group *g, const char *name,
                          const edp_conn *c) {
  if (!g || !c || !name || !name[0] || strlen(name) > NAME_MAX_LEN)
    return EDP_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&g->mu);
  struct series *s = find_locked(g, name);
  if (!s && g->n == g->cap) {
    size_t cap = g->cap ? g->cap * 2 : 8;
    struct series *v = realloc(g->s, cap * sizeof(*v));
    if (v) {
      g->s = v;
      g->cap = cap;
    } else {
      rc = EDP_ENOMEM;
    }
  }
  if (!rc && !s) {
    s = &g->s[g->n++];
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    edp__conn_broker(c, s->broker, sizeof(s->broker));
  }
  if (!rc && s->c)
    rc = EDP_EINVAL; /* two connections would make one series jump */
  if (!rc)
    s->c = c;
  pthread_mutex_unlock(&g->mu);
  return rc;
}

/* acc += s, the counters and the histogram (not the gauges). */
static void add_counts(edp_conn_stats *acc, const edp_conn_stats *s) {
  acc->published += s->published;
  acc->republished += s->republished;
  acc->confirmed += s->confirmed;
  acc->nacked += s->nacked;
  acc->returned += s->returned;
  acc->delivered += s->delivered;
  acc->lost += s->lost;
  acc->reconnects += s->reconnects;
  acc->channel_restores += s->channel_restores;
  acc->consumers_cancelled += s->consumers_cancelled;
  acc->blocked_count += s->blocked_count;
  acc->blocked_seconds += s->blocked_seconds;
  edp_hist *h = &acc->confirm_latency;
  h->count += s->confirm_latency.count;
  h->sum_us += s->confirm_latency.sum_us;
  for (int i = 0; i < EDP_HIST_BUCKETS; i++)
    h->bucket[i] += s->confirm_latency.bucket[i];
}

void edp_conn_group_detach(edp_conn_group *g, const edp_conn *c) {
  if (!g || !c)
    return;
  pthread_mutex_lock(&g->mu);
  for (size_t i = 0; i < g->n; i++) {
    struct series *s = &g->s[i];
    if (s->c != c)
      continue;
    edp_conn_stats now;
    if (!edp_conn_stats_get(c, &now))
      add_counts(&s->acc, &now);
    s->timing |= edp_conn_timing(c);
    s->c = NULL;
  }
  pthread_mutex_unlock(&g->mu);
}

void edp_conn_group_collect(const void *group, edp_metrics_out *out) {
  edp_conn_group *g = (edp_conn_group *)group; /* the lock only */
  if (!g)
    return;
  pthread_mutex_lock(&g->mu);
  for (size_t i = 0; i < g->n; i++) {
    struct series *s = &g->s[i];
    edp_conn_stats st = s->acc;
    int live = 0, timing = s->timing;
    edp_conn_stats now;
    if (s->c && !edp_conn_stats_get(s->c, &now)) {
      add_counts(&st, &now);
      st.state = now.state;
      st.consumers = now.consumers;
      live = 1;
      timing |= edp_conn_timing(s->c);
    }
    char l[512] = "";
    edp_metrics_label(l, sizeof(l), "connection", g->connection);
    edp_metrics_label(l, sizeof(l), "broker", s->broker);
    edp_metrics_label(l, sizeof(l), "conn", s->name);
    edp__conn_stats_emit(out, l, &st, live, timing);
  }
  pthread_mutex_unlock(&g->mu);
}
