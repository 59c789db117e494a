/*
 * t_calls.h - for the long-handler tests of the integration suites: a
 * thread-safe log of handler calls that a test awaits with a deadline (a
 * condition variable, never a guessed sleep), a handler body that works
 * for a set time, a broker URL with a heartbeat, and publishing one
 * message on a connection of its own.
 *
 * The handlers run on worker threads, so nothing here uses ck_assert;
 * the test asserts on what the log recorded once the calls are done.
 */
#ifndef EDP_T_CALLS_H
#define EDP_T_CALLS_H

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "edp.h"
#include "testlib.h"

#define T_CALLS_MAX 16

typedef struct t_call {
  char id[64];
  int redelivered;
  uint32_t epoch;
  pthread_t thread;
  long long start_ms, end_ms; /* end_ms 0 while it runs */
} t_call;

typedef struct t_calls {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int work_ms; /* how long each call works */
  t_call v[T_CALLS_MAX];
  int n;         /* calls started */
  int done;      /* calls returned */
  int events;    /* processed events the pattern reported */
  int reconnect; /* reconnect events the pattern reported */
} t_calls;

static inline void t_calls_init(t_calls *l, int work_ms) {
  memset(l, 0, sizeof(*l));
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  l->work_ms = work_ms;
}

static inline void t_calls_free(t_calls *l) {
  pthread_cond_destroy(&l->cv);
  pthread_mutex_destroy(&l->mu);
}

/* The handler's body: records the call, works for work_ms (nanosleep,
 * resumed after a signal), records the end. Returns 0. */
static inline int t_calls_work(t_calls *l, const edp_delivery *d) {
  pthread_mutex_lock(&l->mu);
  int i = l->n < T_CALLS_MAX ? l->n++ : T_CALLS_MAX - 1;
  t_call *c = &l->v[i];
  snprintf(c->id, sizeof(c->id), "%s", d->message_id ? d->message_id : "");
  c->redelivered = d->redelivered;
  c->epoch = d->epoch;
  c->thread = pthread_self();
  c->start_ms = t_now_ms();
  c->end_ms = 0;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
  struct timespec ts = {l->work_ms / 1000,
                        (long)(l->work_ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) && errno == EINTR)
    ;
  pthread_mutex_lock(&l->mu);
  c->end_ms = t_now_ms();
  l->done++;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
  return 0;
}

/* Counts a processed (or reconnected) event reported by the pattern. */
static inline void t_calls_event(t_calls *l, int reconnect) {
  pthread_mutex_lock(&l->mu);
  if (reconnect)
    l->reconnect++;
  else
    l->events++;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

/* Waits until *field (a counter of l) reaches n, up to timeout_ms.
 * Returns 1 when it did. */
static inline int t_calls_await(t_calls *l, const int *field, int n,
                                int timeout_ms) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += timeout_ms / 1000;
  dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (dl.tv_nsec >= 1000000000L) {
    dl.tv_sec++;
    dl.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&l->mu);
  int rc = 0;
  while (*field < n && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&l->cv, &l->mu, &dl);
  int ok = *field >= n;
  pthread_mutex_unlock(&l->mu);
  return ok;
}

/* A copy of call i, taken under the lock. */
static inline t_call t_calls_get(t_calls *l, int i) {
  pthread_mutex_lock(&l->mu);
  t_call c = l->v[i];
  pthread_mutex_unlock(&l->mu);
  return c;
}

/* The harness's URL with ?heartbeat=s (or &heartbeat=s) appended. */
static inline const char *t_hb_url(char *buf, size_t len, int s) {
  const char *u = t_url();
  snprintf(buf, len, "%s%cheartbeat=%d", u, strchr(u, '?') ? '&' : '?', s);
  return buf;
}

/* Publishes one persistent message with id to queue on a connection of
 * its own and waits for the broker's confirm. Returns 0 or an EDP_E*. */
static inline int t_publish_one(const char *queue, const char *id) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  int rc = edp_conn_open(&o, &c, NULL, 0);
  if (!rc)
    rc = edp_conn_confirm_select(c);
  if (!rc) {
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = queue;
    m.body = id;
    m.body_len = strlen(id);
    m.persistent = 1;
    m.mandatory = 1;
    m.message_id = id;
    rc = edp_conn_publish_confirmed(c, &m, 10000);
  }
  edp_conn_destroy(&c);
  return rc;
}

/* Ready messages in queue, or -1. */
static inline long t_depth(const char *queue) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  uint32_t msgs = 0;
  int rc = edp_conn_open(&o, &c, NULL, 0);
  if (!rc)
    rc = edp_conn_queue_inspect(c, queue, &msgs, NULL);
  edp_conn_destroy(&c);
  return rc ? -1 : (long)msgs;
}

/* Publishes id to queue from a thread of its own as soon as the log has
 * seen `after` calls start: a message that arrives while a handler runs. */
typedef struct t_later {
  t_calls *log;
  int after;
  const char *queue, *id;
  pthread_t th;
  int rc;
  long long at_ms; /* when the broker confirmed it */
} t_later;

static inline void *t_later_main(void *arg) {
  t_later *p = arg;
  p->rc = t_calls_await(p->log, &p->log->n, p->after, 30000)
              ? t_publish_one(p->queue, p->id)
              : EDP_ETIMEOUT;
  p->at_ms = t_now_ms();
  return NULL;
}

static inline int t_later_start(t_later *p, t_calls *log, int after,
                                const char *queue, const char *id) {
  memset(p, 0, sizeof(*p));
  p->log = log;
  p->after = after;
  p->queue = queue;
  p->id = id;
  return pthread_create(&p->th, NULL, t_later_main, p);
}

#endif
