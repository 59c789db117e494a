/*
 * edp_supervisor.c - the supervisor consumer pattern (contract in
 * edp_supervisor.h): a supervisor thread that sizes a pool of consumer
 * threads from the depth of their queue.
 *
 * Ownership: every consumer thread opens and owns its own connection; the
 * supervisor thread owns the supervisor's connection (opened by
 * edp_sup_new and handed over before the thread starts, handed back after
 * it was joined). No AMQP state is ever shared: each consumer runs its
 * handler on a worker thread (edp_worker) that never sees the connection,
 * while the consumer thread services it. Besides that handoff, the only
 * cross-thread signals are an eventfd per consumer ("retire") and one for
 * the supervisor ("stop"); each thread gives its eventfd to its connection
 * as stop_fd, so a signal ends the connection's wait (and any reconnect
 * backoff) at once, and nobody polls a flag on a timer. A retire that
 * comes while a handler runs is cleared from the eventfd and kept in the
 * consumer's flag, so the connection is still serviced until the handler
 * is done and its message acked.
 *
 * The list of consumers, the counters and the policy state are guarded by
 * one mutex that is never held while user callbacks run.
 */
#include "edp_supervisor.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "edp_conn_group.h"
#include "edp_trace.h"
#include "edp_util.h"
#include "edp_worker.h"

/* Highest max accepted: a thread and a connection per consumer. */
#define EDP_SUP_MAX_CEILING 10000

/* ---------- policy ---------- */

void edp_sup_policy_init(edp_sup_policy *p) {
  p->per_consumer = 10;
  p->min = 1;
  /* 50, not the talk's 500: here a consumer is an OS thread with its own
   * TCP connection (a few hundred KiB on the broker, plus a thread stack),
   * and with prefetch 1 a consumer only adds throughput while its handler
   * waits on I/O. 50 waiting handlers is a lot for one process; raise it
   * deliberately when the handlers are slow and the broker has room. */
  p->max = 50;
  p->keep_alive_ms = 5000;
}

void edp_sup_policy_state_init(edp_sup_policy_state *s) {
  s->low_since_ms = -1;
  s->low_peak = 0;
}

int edp_sup_policy_check(const edp_sup_policy *p) {
  if (!p || p->per_consumer < 1 || p->min < 0 || p->max < 1 ||
      p->max < p->min || p->max > EDP_SUP_MAX_CEILING || p->keep_alive_ms < 0)
    return EDP_EINVAL;
  return 0;
}

int edp_sup_policy_want(const edp_sup_policy *p, uint64_t depth) {
  uint64_t n = (uint64_t)p->per_consumer;
  /* ceil without depth + n - 1, which could wrap for a huge depth. */
  uint64_t want = depth / n + (depth % n ? 1 : 0);
  if (want > (uint64_t)p->max)
    return p->max;
  if (want < (uint64_t)p->min)
    return p->min;
  return (int)want;
}

int edp_sup_policy_decide(const edp_sup_policy *p, edp_sup_policy_state *s,
                          int current, uint64_t depth, int64_t now_ms) {
  int want = edp_sup_policy_want(p, depth);
  if (want >= current) {
    /* Any reading at or above the current count ends a low period: the
     * keep-alive counts an uninterrupted stretch of lower demand. */
    s->low_since_ms = -1;
    return want;
  }
  if (s->low_since_ms < 0) {
    s->low_since_ms = now_ms;
    s->low_peak = want;
  } else if (want > s->low_peak) {
    s->low_peak = want;
  }
  if (now_ms - s->low_since_ms < p->keep_alive_ms)
    return current;
  /* Retire only what no reading of the period needed. */
  int target = s->low_peak;
  s->low_since_ms = -1;
  return target;
}

int64_t edp_sup_next_reading(int64_t last_ms, int64_t next_ms, int hinted,
                             int hint_ms) {
  if (!hinted || hint_ms <= 0)
    return next_ms;
  int64_t early = last_ms + hint_ms;
  return early < next_ms ? early : next_ms;
}

/* ---------- service ---------- */

struct consumer {
  edp_sup *s;
  int id;
  pthread_t th;
  int efd;           /* written to ask the thread to retire or stop */
  atomic_int retire; /* 1 once asked; read by the consumer thread */
  int retiring;      /* the supervisor's view, under s->mu */
  int done;          /* the thread has finished, under s->mu */
  int slot;          /* its metric series, "consumer-<slot>" (see below) */
  int64_t started_ms;
  struct consumer *next;
};

/* A consumer as the events name it: its id and its metric series. */
struct consumer_ref {
  int id, slot;
};

struct edp_sup {
  edp_sup_opts o;
  char *url, *queue, *name;
  edp_conn *c; /* the supervisor's connection */
  int stop_efd;
  int hint_efd; /* consumers write it when they find a backlog */
  pthread_t th;
  int th_started;
  int stopped;
  int queue_missing; /* the last depth reading found no queue */
  pthread_mutex_t mu;
  struct consumer *cons; /* newest first */
  int next_id;
  edp_sup_policy_state pst;
  edp_sup_stats st;
  int64_t finished_ms; /* lifetime of consumers already ended */
  /* Per tick, for the events after the unlock. */
  struct consumer_ref *ids_started, *ids_retired;
  unsigned char *slot_used; /* [1..max]: a live consumer holds it */
  /* Every connection's series: "monitor" (the supervisor's) and
   * "consumer-<slot>", whose counts outlive the consumers. */
  edp_conn_group *conns;
};

void edp_sup_opts_init(edp_sup_opts *o) {
  memset(o, 0, sizeof(*o));
  o->name = "edp-sup";
  o->prefetch = 1;
  o->interval_ms = 1000;
  o->hint_ms = 20;
  o->supervise = 1;
  edp_sup_policy_init(&o->policy);
  o->heartbeat_s = 10;
}

static void slog(edp_sup *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void slog(edp_sup *s, int level, const char *fmt, ...) {
  if (!s->o.log)
    return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  s->o.log(s->o.log_ud, level, buf);
}

static void emit(edp_sup *s, const edp_sup_event *ev) {
  if (s->o.on_event)
    s->o.on_event(s->o.ud, ev);
}

static void conn_opts(edp_sup *s, edp_conn_opts *co, const char *client,
                      int stop_fd) {
  edp_conn_opts_init(co);
  co->url = s->url;
  co->heartbeat_s = s->o.heartbeat_s;
  co->client_name = client;
  co->stop_fd = stop_fd;
  co->log = s->o.log;
  co->log_ud = s->o.log_ud;
  co->on_event = s->o.on_conn_event;
  co->on_event_ud = s->o.on_conn_event_ud;
}

/* A next delivery that arrives this soon after the ack was already in the
 * queue: a loopback round trip is well under a millisecond, a message
 * that had to be published first is rarely that punctual. */
#define EDP_SUP_HINT_GAP_US 1500

static void poke(int efd) {
  uint64_t one = 1;
  /* The counter cannot overflow with our few writes; EAGAIN would only
   * mean it is already readable, which is all we want. */
  if (write(efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
    return;
}

static void drain_efd(int efd) {
  uint64_t v;
  if (read(efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
    return;
}

/* Counts active (not retiring, not done) and live (not reaped) consumers;
 * caller holds s->mu. */
static void count_locked(edp_sup *s, int *active, int *live) {
  int a = 0, l = 0;
  for (struct consumer *k = s->cons; k; k = k->next) {
    if (!k->done) {
      l++;
      if (!k->retiring)
        a++;
    }
  }
  *active = a;
  *live = l;
}

/* ---------- consumer thread ---------- */

/* One handler call, as the consumer's worker thread runs it, in the
 * consumer's span for the message (NULL: it carries no trace context). */
typedef struct handler_call {
  struct consumer *k;
  const edp_delivery *d;
  const edp_trace *span;
} handler_call;

static int call_handler(void *ud) {
  handler_call *hc = ud;
  edp_sup *s = hc->k->s;
  edp_trace_set_current(hc->span);
  int h = s->o.handler(s->o.ud, hc->k->id, hc->d);
  edp_trace_set_current(NULL);
  return h;
}

/* A retire request (the consumer's eventfd, which is also its connection's
 * stop_fd) that comes while the handler runs: the flag keeps it, and the
 * loop acts on it after this message, so clear the fd and go on servicing
 * the connection; else a handler that outlives two heartbeat intervals
 * would lose the connection, and a scale-down would duplicate its
 * message. */
static int retire_later(void *ud) {
  struct consumer *k = ud;
  drain_efd(k->efd);
  return 0;
}

/* Runs the handler on one delivery and settles it. The handler runs on
 * the worker while this thread services the connection; a connection lost
 * meanwhile shows in the ack (EDP_ECLOSED, reconnected by the caller), a
 * channel or consumer error comes back from the next edp_worker_wait().
 * A lost connection means the broker redelivers the message: the one case
 * where a message is processed twice, and it is not a scale-down. */
static int handle(struct consumer *k, edp_worker *w, edp_conn *c,
                  edp_delivery *d) {
  edp_sup *s = k->s;
  /* A child of the context the message carries: the handler (on the
   * worker) and the event (on this thread) see it as edp_trace_current. */
  edp_trace span;
  handler_call hc = {k, d, edp_trace_delivery_span(d, &span) ? &span : NULL};
  int h = -1;
  int wrc = edp_worker_run(w, c, call_handler, &hc, &h);
  if (wrc == EDP_EINVAL)
    return wrc; /* the handler did not run: leave the message unacked */
  int rc = h == 0 ? edp_conn_ack(c, d->epoch, d->tag, 0)
                  : edp_conn_nack(c, d->epoch, d->tag, 0, 1);
  pthread_mutex_lock(&s->mu);
  if (h == 0)
    s->st.processed++;
  else
    s->st.failed++;
  int active, live;
  count_locked(s, &active, &live);
  pthread_mutex_unlock(&s->mu);
  edp_sup_event ev = {h == 0 ? EDP_SUP_PROCESSED : EDP_SUP_FAILED,
                      k->id,
                      active,
                      live,
                      -1,
                      -1,
                      0,
                      0,
                      d,
                      k->slot};
  edp_trace_set_current(hc.span);
  emit(s, &ev);
  edp_trace_set_current(NULL);
  return rc == EDP_ESTALE ? 0 : rc;
}

static int consumer_reconnect(struct consumer *k, edp_conn *c) {
  int rc = edp_conn_reconnect(c);
  if (rc == EDP_ESTOPPED)
    return 0; /* asked to retire meanwhile: the loop sees the flag */
  if (rc)
    return rc;
  edp_sup *s = k->s;
  pthread_mutex_lock(&s->mu);
  s->st.consumer_reconnects++;
  pthread_mutex_unlock(&s->mu);
  edp_sup_event ev = {
      EDP_SUP_RECONNECTED, k->id, 0, 0, -1, -1, 0, 0, NULL, k->slot};
  emit(s, &ev);
  return 0;
}

/* Graceful end: the message in hand is already acked (the loop only gets
 * here between messages); basic.cancel stops new deliveries, and whatever
 * the broker sent before its cancel-ok is already read (rabbitmq-c queues
 * it while waiting for the reply), so it is processed and acked here
 * rather than requeued. Then the connection closes. */
static int consumer_finish(struct consumer *k, edp_worker *w, edp_conn *c,
                           const char *tag) {
  drain_efd(k->efd); /* else every wait below would return EDP_ESTOPPED */
  int rc = edp_conn_cancel(c, tag);
  if (rc == EDP_ECHANNEL)
    rc = 0; /* the restored channel has no consumer any more */
  if (rc)
    return rc == EDP_ECLOSED ? 0 : rc; /* unacked ones go back unprocessed */
  edp_delivery d;
  while ((rc = edp_worker_receive(w, c, &d, 0)) == 0) {
    rc = handle(k, w, c, &d);
    edp_delivery_clear(&d);
    if (rc)
      break;
  }
  return rc == EDP_ETIMEOUT || rc == EDP_ECLOSED ? 0 : rc;
}

static void *consumer_main(void *arg) {
  struct consumer *k = arg;
  edp_sup *s = k->s;
  char client[300], tag[256] = "", why[600] = "";
  snprintf(client, sizeof(client), "%s-consumer-%d", s->name, k->id);
  edp_conn_opts co;
  conn_opts(s, &co, client, k->efd);
  edp_conn *c = NULL;
  edp_worker *w = NULL;
  int err = edp_conn_open(&co, &c, why, sizeof(why));
  if (err) {
    slog(s, EDP_LOG_ERROR, "consumer %d: %s", k->id, why);
  } else {
    char series[32];
    snprintf(series, sizeof(series), "consumer-%d", k->slot);
    if (edp_conn_group_attach(s->conns, series, c))
      slog(s, EDP_LOG_WARN, "consumer %d: its connection has no metrics",
           k->id);
  }
  if (!err && (err = edp_worker_new(&w)))
    slog(s, EDP_LOG_ERROR, "consumer %d: no worker thread: %s", k->id,
         edp_strerror(err));
  if (!err)
    edp_worker_on_stop(w, retire_later, k);
  if (!err)
    err = edp_conn_qos(c, s->o.prefetch);
  if (!err)
    err = edp_conn_consume(c, s->queue, NULL, tag, sizeof(tag));
  if (!err)
    slog(s, EDP_LOG_DEBUG, "consumer %d consuming %lld ms after its start",
         k->id, (long long)(edp_now_ms() - k->started_ms));
  /* When the last ack went out; -1 while nothing was acked yet. */
  int64_t acked_us = -1;
  while (!err && !atomic_load(&k->retire)) {
    /* The timeout only bounds the wait; the eventfd (stop_fd) ends it. */
    int rc = edp_worker_wait(w, c, -1, 1000);
    /* With prefetch 1 the broker sends the next message when it got the
     * ack; if that message is here within one round trip it was already
     * waiting in the queue: a backlog. Tell the supervisor now rather than
     * at its next reading (it rate-limits the extra readings). */
    if (rc > 0 && (rc & EDP_READY_DELIVERY) && acked_us >= 0 &&
        s->o.hint_ms > 0 && s->o.supervise &&
        edp_now_us() - acked_us <= EDP_SUP_HINT_GAP_US)
      poke(s->hint_efd);
    acked_us = -1;
    if (rc == EDP_ESTOPPED || rc == 0 || rc == EDP_ECHANNEL)
      continue;
    if (rc == EDP_ECLOSED) {
      err = consumer_reconnect(k, c);
      continue;
    }
    if (rc < 0) {
      err = rc; /* EDP_ENOTFOUND: the queue was deleted */
      break;
    }
    edp_delivery d;
    rc = edp_worker_receive(w, c, &d, 0);
    if (rc == 0) {
      rc = handle(k, w, c, &d);
      edp_delivery_clear(&d);
      acked_us = edp_now_us();
    }
    if (rc == EDP_ECLOSED)
      err = consumer_reconnect(k, c);
    else if (rc && rc != EDP_ETIMEOUT && rc != EDP_ECHANNEL)
      err = rc;
  }
  if (err && err != EDP_ESTOPPED)
    slog(s, EDP_LOG_ERROR, "consumer %d stops: %s", k->id, edp_strerror(err));
  if (c && edp_conn_is_open(c) && tag[0]) {
    int rc = consumer_finish(k, w, c, tag);
    if (rc && !err)
      err = rc;
  }
  edp_worker_destroy(&w);
  /* Its counts stay in its slot's series; the slot is free once done. */
  edp_conn_group_detach(s->conns, c);
  edp_conn_destroy(&c);
  pthread_mutex_lock(&s->mu);
  k->done = 1;
  s->slot_used[k->slot] = 0;
  s->finished_ms += edp_now_ms() - k->started_ms;
  int active, live;
  count_locked(s, &active, &live);
  pthread_mutex_unlock(&s->mu);
  edp_sup_event ev = {EDP_SUP_STOPPED,
                      k->id,
                      active,
                      live,
                      -1,
                      -1,
                      0,
                      err == EDP_ESTOPPED ? 0 : err,
                      NULL,
                      k->slot};
  emit(s, &ev);
  return NULL;
}

/* Starts one consumer thread; caller holds s->mu. Returns its id or 0. */
static int start_locked(edp_sup *s) {
  struct consumer *k = calloc(1, sizeof(*k));
  if (!k)
    return 0;
  k->s = s;
  k->id = ++s->next_id;
  k->started_ms = edp_now_ms();
  /* The lowest free slot: live consumers never exceed max, so there is
   * one, and the series stay as few as the most consumers alive at once
   * (a consumer id would make a new series at every scale-up). */
  k->slot = 1;
  while (k->slot < s->o.policy.max && s->slot_used[k->slot])
    k->slot++;
  s->slot_used[k->slot] = 1;
  atomic_init(&k->retire, 0);
  k->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (k->efd < 0 || pthread_create(&k->th, NULL, consumer_main, k)) {
    if (k->efd >= 0)
      close(k->efd);
    s->slot_used[k->slot] = 0;
    free(k);
    return 0;
  }
  k->next = s->cons;
  s->cons = k;
  s->st.started++;
  return k->id;
}

static void retire_locked(struct consumer *k) {
  k->retiring = 1;
  atomic_store(&k->retire, 1);
  poke(k->efd);
}

/* Joins and frees consumers whose thread ended. The join cannot block:
 * done is set as the thread's last act. */
static void reap(edp_sup *s) {
  for (;;) {
    struct consumer *dead = NULL;
    pthread_mutex_lock(&s->mu);
    for (struct consumer **pp = &s->cons; *pp; pp = &(*pp)->next) {
      if ((*pp)->done) {
        dead = *pp;
        *pp = dead->next;
        break;
      }
    }
    pthread_mutex_unlock(&s->mu);
    if (!dead)
      return;
    pthread_join(dead->th, NULL);
    close(dead->efd);
    free(dead);
  }
}

/* ---------- supervisor thread ---------- */

static int sup_reconnect(edp_sup *s) {
  int rc = edp_conn_reconnect(s->c);
  if (rc) {
    if (rc != EDP_ESTOPPED)
      slog(s, EDP_LOG_ERROR,
           "supervisor: reconnect failed: %s; retrying "
           "next interval",
           edp_strerror(rc));
    return rc;
  }
  pthread_mutex_lock(&s->mu);
  s->st.sup_reconnects++;
  pthread_mutex_unlock(&s->mu);
  edp_sup_event ev = {EDP_SUP_RECONNECTED, 0, 0, 0, -1, -1, 0, 0, NULL, 0};
  emit(s, &ev);
  return 0;
}

/* Reads the depth, recovering the connection once if needed. */
static int read_depth(edp_sup *s, uint32_t *msgs, uint32_t *cons) {
  for (int attempt = 0; attempt < 2; attempt++) {
    int rc = edp_conn_is_open(s->c) ? 0 : sup_reconnect(s);
    if (rc)
      return rc;
    rc = edp_conn_queue_inspect(s->c, s->queue, msgs, cons);
    if (rc == EDP_ECLOSED || rc == EDP_ECHANNEL)
      continue;
    /* Warn once per disappearance, not every interval. */
    if (rc == EDP_ENOTFOUND && !s->queue_missing)
      slog(s, EDP_LOG_WARN, "supervisor: queue %s does not exist", s->queue);
    s->queue_missing = rc == EDP_ENOTFOUND;
    return rc;
  }
  return EDP_ECLOSED;
}

static void tick(edp_sup *s) {
  reap(s);
  uint32_t msgs = 0, bcons = 0;
  if (read_depth(s, &msgs, &bcons))
    return;
  int n_started = 0, n_retired = 0, active, live, want;
  pthread_mutex_lock(&s->mu);
  count_locked(s, &active, &live);
  want = edp_sup_policy_want(&s->o.policy, msgs);
  int target = s->o.supervise
                   ? edp_sup_policy_decide(&s->o.policy, &s->pst, active, msgs,
                                           edp_now_ms())
                   : s->o.policy.min;
  if (target > active) {
    /* Retiring consumers still hold a thread and a connection, so they
     * count against max until they are gone. */
    int room = s->o.policy.max - live;
    for (int i = 0; i < target - active && i < room; i++) {
      int id = start_locked(s);
      if (!id) {
        slog(s, EDP_LOG_ERROR, "supervisor: cannot start a consumer thread");
        break;
      }
      s->ids_started[n_started++] = (struct consumer_ref){id, s->cons->slot};
    }
  } else if (target < active) {
    /* The newest consumers go first, the way they came. */
    for (struct consumer *k = s->cons; k && n_retired < active - target;
         k = k->next) {
      if (k->done || k->retiring)
        continue;
      retire_locked(k);
      s->ids_retired[n_retired++] = (struct consumer_ref){k->id, k->slot};
    }
    s->st.retired += (uint64_t)n_retired;
  }
  count_locked(s, &active, &live);
  if (live > s->st.peak)
    s->st.peak = live;
  s->st.depth = msgs;
  s->st.wanted = want;
  s->st.ticks++;
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < n_started; i++) {
    edp_sup_event ev = {
        EDP_SUP_START, s->ids_started[i].id,  active, live, msgs, -1, want, 0,
        NULL,          s->ids_started[i].slot};
    emit(s, &ev);
  }
  for (int i = 0; i < n_retired; i++) {
    edp_sup_event ev = {
        EDP_SUP_RETIRE, s->ids_retired[i].id,  active, live, msgs, -1, want, 0,
        NULL,           s->ids_retired[i].slot};
    emit(s, &ev);
  }
  edp_sup_event ev = {EDP_SUP_SCALE, 0,    active, live, msgs,
                      bcons,         want, 0,      NULL, 0};
  emit(s, &ev);
}

static void *sup_main(void *arg) {
  edp_sup *s = arg;
  int64_t next = edp_now_ms(), last = next - s->o.interval_ms;
  int deaf = 0; /* hints ignored until the next reading (at max) */
  for (;;) {
    int64_t now = edp_now_ms();
    if (now < next) {
      int left = (int)(next - now);
      /* Waiting on the connection services its heartbeats; the stop
       * eventfd is its stop_fd and ends the wait. A consumer's hint on
       * hint_efd brings the next reading forward; once it is as early as
       * the rate limit allows, further hints change nothing, so the wait
       * stops listening to them (no wake-up per delivery in a burst). */
      int wake = s->o.hint_ms > 0 && !deaf && next > last + s->o.hint_ms
                     ? s->hint_efd
                     : -1;
      int rc = edp_conn_is_open(s->c)
                   ? edp_conn_wait(s->c, wake, left)
                   : (edp_sleep_ms(left, s->stop_efd) ? EDP_ESTOPPED : 0);
      if (rc == EDP_ESTOPPED)
        break;
      if (rc > 0 && (rc & EDP_READY_WAKE)) {
        drain_efd(s->hint_efd);
        /* At max a reading can start nothing: a backlog draining at full
         * strength would otherwise cost a reading every hint_ms. */
        int active, live;
        pthread_mutex_lock(&s->mu);
        count_locked(s, &active, &live);
        pthread_mutex_unlock(&s->mu);
        if (live < s->o.policy.max)
          next = edp_sup_next_reading(last, next, 1, s->o.hint_ms);
        else
          deaf = 1;
        continue;
      }
      if (rc == EDP_ECLOSED) {
        if (sup_reconnect(s) == EDP_ESTOPPED)
          break;
      } else if (rc < 0 && rc != EDP_ECHANNEL &&
                 edp_sleep_ms(left, s->stop_efd)) {
        break; /* an unexpected error: don't spin on it */
      }
      continue;
    }
    /* The next regular reading is one interval after this one, whether
     * this one was regular or brought forward by a hint. */
    last = now;
    next = now + s->o.interval_ms;
    /* Hints written before this reading are answered by it. */
    drain_efd(s->hint_efd);
    deaf = 0;
    tick(s);
  }
  return NULL;
}

/* ---------- lifecycle ---------- */

static int set_err(char *err_text, size_t err_len, int rc, const char *why) {
  if (err_text && err_len)
    snprintf(err_text, err_len, "%s", why);
  return rc;
}

int edp_sup_new(const edp_sup_opts *o, edp_sup **out, char *err_text,
                size_t err_len) {
  if (!out)
    return EDP_EINVAL;
  *out = NULL;
  if (!o || !o->queue || !o->queue[0] || strlen(o->queue) > 200 ||
      !o->handler || o->prefetch < 1 || o->prefetch > 65535 ||
      o->interval_ms < 10 || o->hint_ms < 0 ||
      edp_sup_policy_check(&o->policy) || (o->name && strlen(o->name) > 200) ||
      o->kind.single_active)
    return set_err(err_text, err_len, EDP_EINVAL, "invalid options");
  edp_sup *s = calloc(1, sizeof(*s));
  if (!s)
    return EDP_ENOMEM;
  s->o = *o;
  /* The type is one of two names: keep our own copy of it. */
  s->o.kind.type =
      o->kind.type && !strcmp(o->kind.type, "quorum") ? "quorum" : NULL;
  s->stop_efd = -1;
  s->hint_efd = -1;
  pthread_mutex_init(&s->mu, NULL);
  edp_sup_policy_state_init(&s->pst);
  s->st.depth = -1;
  s->st.wanted = -1;
  s->url = o->url ? strdup(o->url) : NULL;
  s->queue = strdup(o->queue);
  s->name = strdup(o->name ? o->name : "edp-sup");
  s->ids_started = calloc((size_t)o->policy.max + 1, sizeof(*s->ids_started));
  s->ids_retired = calloc((size_t)o->policy.max + 1, sizeof(*s->ids_retired));
  s->slot_used = calloc((size_t)o->policy.max + 1, 1);
  if ((o->url && !s->url) || !s->queue || !s->name || !s->ids_started ||
      !s->ids_retired || !s->slot_used ||
      edp_conn_group_new(s->name, &s->conns)) {
    edp_sup_destroy(&s);
    return EDP_ENOMEM;
  }
  s->o.url = s->url;
  s->o.queue = s->queue;
  s->o.name = s->name;
  s->stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  s->hint_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->stop_efd < 0 || s->hint_efd < 0) {
    edp_sup_destroy(&s);
    return set_err(err_text, err_len, EDP_EIO, "eventfd failed");
  }
  char client[300], why[600] = "";
  snprintf(client, sizeof(client), "%s-supervisor", s->name);
  edp_conn_opts co;
  conn_opts(s, &co, client, s->stop_efd);
  int rc = edp_conn_open(&co, &s->c, why, sizeof(why));
  if (!rc && edp_conn_group_attach(s->conns, "monitor", s->c))
    slog(s, EDP_LOG_WARN, "supervisor: its connection has no metrics");
  if (!rc) {
    rc = edp_conn_declare_kind(s->c, s->queue, &s->o.kind, 0);
    if (rc)
      snprintf(why, sizeof(why), "declaring queue %s: %s (%d %s)", s->queue,
               edp_strerror(rc), edp_conn_reply_code(s->c),
               edp_conn_reply_text(s->c));
  }
  if (rc) {
    set_err(err_text, err_len, rc, why);
    edp_sup_destroy(&s);
    return rc;
  }
  /* The first tick runs at once and starts policy.min consumers. */
  if (pthread_create(&s->th, NULL, sup_main, s)) {
    edp_sup_destroy(&s);
    return set_err(err_text, err_len, EDP_EIO, "cannot start a thread");
  }
  s->th_started = 1;
  *out = s;
  return 0;
}

void edp_sup_stop(edp_sup *s) {
  if (!s || s->stopped)
    return;
  s->stopped = 1;
  /* The supervisor first, so that it starts nothing while we stop. */
  if (s->th_started) {
    poke(s->stop_efd);
    pthread_join(s->th, NULL);
    s->th_started = 0;
  }
  pthread_mutex_lock(&s->mu);
  for (struct consumer *k = s->cons; k; k = k->next)
    if (!k->done)
      retire_locked(k);
  pthread_mutex_unlock(&s->mu);
  /* Each thread finishes its message in hand; threads mark themselves
   * done last, so joining all of them reaps all of them. */
  for (;;) {
    pthread_mutex_lock(&s->mu);
    struct consumer *k = s->cons;
    if (k)
      s->cons = k->next;
    pthread_mutex_unlock(&s->mu);
    if (!k)
      break;
    pthread_join(k->th, NULL);
    close(k->efd);
    free(k);
  }
  edp_conn_group_detach(s->conns, s->c);
  edp_conn_destroy(&s->c);
}

void edp_sup_destroy(edp_sup **sp) {
  if (!sp || !*sp)
    return;
  edp_sup *s = *sp;
  edp_sup_stop(s);
  if (s->stop_efd >= 0)
    close(s->stop_efd);
  if (s->hint_efd >= 0)
    close(s->hint_efd);
  pthread_mutex_destroy(&s->mu);
  free(s->url);
  free(s->queue);
  free(s->name);
  free(s->ids_started);
  free(s->ids_retired);
  free(s->slot_used);
  edp_conn_group_destroy(&s->conns);
  free(s);
  *sp = NULL;
}

void edp_sup_stats_get(edp_sup *s, edp_sup_stats *out) {
  if (!s || !out)
    return;
  pthread_mutex_lock(&s->mu);
  *out = s->st;
  count_locked(s, &out->consumers, &out->live);
  int64_t now = edp_now_ms(), ms = s->finished_ms;
  for (struct consumer *k = s->cons; k; k = k->next)
    if (!k->done)
      ms += now - k->started_ms;
  out->consumer_ms = ms;
  pthread_mutex_unlock(&s->mu);
}

void edp_sup_collect(const void *sup, edp_metrics_out *out) {
  edp_sup *s = (edp_sup *)sup; /* the lock only */
  edp_sup_stats st;
  edp_sup_stats_get(s, &st);
  char l[512] = "";
  edp_metrics_label(l, sizeof(l), "queue", s->queue);
  edp_metrics_gauge(out, "edp_queue_depth",
                    "Messages ready in the queue at the last reading.", l,
                    (double)st.depth);
  edp_metrics_gauge(out, "edp_sup_consumers_wanted",
                    "Consumers the last depth reading asked for, before the "
                    "[min, max] clamp and the keep-alive.",
                    l, st.wanted);
  edp_metrics_gauge(out, "edp_sup_consumers_active",
                    "Consumers running and not retiring.", l, st.consumers);
  edp_metrics_gauge(out, "edp_sup_consumers_live",
                    "Consumer threads alive, retiring ones included.", l,
                    st.live);
  edp_metrics_messages(out, EDP_MSGS_PROCESSED, l, st.processed);
  edp_metrics_messages(out, EDP_MSGS_FAILED, l, st.failed);
  edp_metrics_counter(out, "edp_sup_consumers_started_total",
                      "Consumers the supervisor started.", l, st.started);
  edp_metrics_counter(out, "edp_sup_consumers_retired_total",
                      "Consumers retired by a scale-down.", l, st.retired);
  edp_metrics_counter(out, "edp_pattern_reconnects_total",
                      "Reconnects of the pattern's own connections.", l,
                      st.sup_reconnects + st.consumer_reconnects);
  edp_conn_group_collect(s->conns, out);
}
