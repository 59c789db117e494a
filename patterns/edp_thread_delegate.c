/*
 * edp_thread_delegate.c - the thread delegate dispatcher (see
 * edp_thread_delegate.h for the contract and the guarantees).
 *
 * One dispatcher thread owns the connection. It takes deliveries, places
 * each by its context in the allocation map, and pushes it onto its
 * worker's queue. Workers run the handler (retrying in place on failure,
 * so the context's later messages wait behind it) and push the finished
 * task onto the done queue, whose eventfd is the wake fd of the
 * dispatcher's edp_conn_wait(). The dispatcher then acks (or dead-letters)
 * on the channel the message came from and releases the context.
 *
 * Epochs: every task remembers the channel epoch it arrived on. After a
 * reconnect the broker redelivers everything unacked, so workers skip
 * tasks of an older epoch that they have not started; only a message
 * already running is processed twice. Its stale ack is refused with
 * EDP_ESTALE and nothing more is needed.
 */
#include "edp_thread_delegate.h"

#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "edp_allocmap.h"
#include "edp_forwarding.h"
#include "edp_handoff.h"
#include "edp_util.h"

#define CTX_MAX 256
#define MAX_RECOVERIES 10

/* Channel epochs start at 1: no delivery carries 0, so storing 0 as the
 * epoch workers may process makes them skip every task they hold. */
#define EPOCH_NONE 0u

enum { OUT_OK = 0, OUT_FAILED = 1, OUT_SKIPPED = 2 };

typedef struct td_task {
  edp_delivery d;
  char ctx[CTX_MAX];
  int worker;
  int outcome;
  int attempts; /* handler calls made here */
  int crashed;  /* earlier deliveries that ended unsettled (quorum
                   queues' x-delivery-count): failed attempts too */
  char reason[256];
  int64_t started_us, finished_us;
  int traced;     /* the delivery carries a trace context */
  edp_trace span; /* then: the worker's span for it, a child of it */
} td_task;

typedef struct td_worker {
  edp_td *td;
  int idx;
  edp_handoff *in;
  edp_handoff *verdict; /* dead-letter outcomes, for the FAILED task */
  pthread_t th;
  int started;
  /* Written by the worker's thread, read by anyone (edp_metrics.h). */
  int busy;         /* 1 while a handler runs */
  uint64_t busy_us; /* time spent in the handler, in all */
} td_worker;

struct edp_td {
  edp_conn *c;
  edp_td_opts o;
  char *queue, *dlq, *context_key;
  char consumer_tag[256];
  edp_allocmap *map;
  edp_handoff *done;
  td_worker *w;
  int abort_fd;      /* readable once stopping: ends retry pauses */
  atomic_uint epoch; /* the channel epoch workers may process */
  atomic_int stopping;
  int stopped;
  int need_reconnect;
  /* The dispatcher writes st and these with single-writer stores
   * (edp_metrics.h); edp_td_stats_get may run on any thread. */
  edp_td_stats st;
  int contexts;        /* a copy of the allocation map's size */
  edp_hist processing; /* the last handler attempt of each message */
};

static void inflight_add(edp_td *td, int d) {
  __atomic_store_n(&td->st.in_flight, td->st.in_flight + (size_t)d,
                   __ATOMIC_RELAXED);
}

static void touch(edp_td *td) {
  __atomic_store_n(&td->st.last_activity_ms, edp_now_ms(), __ATOMIC_RELAXED);
}

/* ---------- topology ---------- */

/* A dispatcher's queue: of the user's kind, always single-active, since
 * two dispatchers taking one account's messages at once lose its order. */
static int declare_ordered(edp_conn *c, const char *queue,
                           const edp_queue_kind *k) {
  edp_queue_kind ordered = {0};
  if (k)
    ordered = *k;
  ordered.single_active = 1;
  return edp_fwd_declare(c, queue, &ordered);
}

int edp_td_declare(edp_conn *c, const char *exchange, const char *queue,
                   const char *binding_key, const edp_queue_kind *k) {
  if (!c || !exchange || !exchange[0] || !binding_key)
    return EDP_EINVAL;
  int rc = edp_conn_exchange_declare(c, exchange, "topic", 1);
  if (!rc)
    rc = declare_ordered(c, queue, k);
  if (!rc)
    rc = edp_conn_queue_bind(c, queue, exchange, binding_key);
  return rc;
}

int edp_td_declare_shards(edp_conn *c, const char *exchange,
                          const char *queue_prefix, int shards, int shard,
                          const edp_queue_kind *kind) {
  if (!c || !exchange || !exchange[0] || !queue_prefix || shard < 0 ||
      (shard == 0 && (shards < 1 || shards > 1000)) ||
      strlen(queue_prefix) > 190)
    return EDP_EINVAL;
  int rc = edp_conn_exchange_declare(c, exchange, "x-consistent-hash", 1);
  int lo = shard ? shard : 1, hi = shard ? shard : shards;
  for (int k = lo; !rc && k <= hi; k++) {
    char q[256];
    snprintf(q, sizeof(q), "%s.%d", queue_prefix, k);
    rc = declare_ordered(c, q, kind);
    /* The binding key of a consistent-hash exchange is the shard's weight:
     * equal weights give each queue an equal share of the hash ring. */
    if (!rc)
      rc = edp_conn_queue_bind(c, q, exchange, "1");
  }
  return rc;
}

/* ---------- context ---------- */

int edp_td_context(int from, const char *key, const edp_delivery *d, char *out,
                   size_t out_len) {
  if (!d || !out || !out_len)
    return EDP_EINVAL;
  out[0] = '\0';
  int n = -1;
  switch (from) {
  case EDP_TD_CTX_ROUTING_KEY: {
    const char *rk = d->routing_key ? d->routing_key : "";
    const char *dot = strrchr(rk, '.');
    n = snprintf(out, out_len, "%s", dot ? dot + 1 : rk);
    break;
  }
  case EDP_TD_CTX_HEADER: {
    if (!key)
      return EDP_EINVAL;
    const char *s = edp_delivery_header_str(d, key);
    int64_t v;
    if (s)
      n = snprintf(out, out_len, "%s", s);
    else if (edp_delivery_header_int(d, key, &v) == 0)
      n = snprintf(out, out_len, "%lld", (long long)v);
    break;
  }
  case EDP_TD_CTX_JSON: {
    if (!key)
      return EDP_EINVAL;
    json_t *root = d->body ? json_loadb(d->body, d->body_len, 0, NULL) : NULL;
    json_t *f = json_is_object(root) ? json_object_get(root, key) : NULL;
    if (json_is_string(f))
      n = snprintf(out, out_len, "%s", json_string_value(f));
    else if (json_is_integer(f))
      n = snprintf(out, out_len, "%lld", (long long)json_integer_value(f));
    json_decref(root);
    break;
  }
  default:
    return EDP_EINVAL;
  }
  if (n <= 0 || (size_t)n >= out_len) {
    out[0] = '\0';
    return EDP_EBADDATA;
  }
  return 0;
}

/* ---------- workers ---------- */

static void run_task(td_worker *w, td_task *t) {
  edp_td *td = w->td;
  t->crashed = (int)edp_fwd_delivery_count(&t->d, td->o.max_retries);
  for (int attempt = 1;; attempt++) {
    /* A task of an older channel will be redelivered, and one not started
     * when we stop will be too: running it would only duplicate it. */
    if (atomic_load(&td->stopping) || t->d.epoch != atomic_load(&td->epoch)) {
      t->outcome = OUT_SKIPPED;
      return;
    }
    t->attempts = attempt;
    t->reason[0] = '\0';
    t->started_us = edp_now_us();
    edp_gauge_set(&w->busy, 1);
    edp_trace_set_current(t->traced ? &t->span : NULL);
    int rc = td->o.handler(td->o.ud, w->idx, t->ctx, &t->d, attempt, t->reason,
                           sizeof(t->reason));
    edp_trace_set_current(NULL);
    t->finished_us = edp_now_us();
    edp_gauge_set(&w->busy, 0);
    edp_count_add(&w->busy_us, (uint64_t)(t->finished_us - t->started_us));
    if (rc == 0) {
      t->outcome = OUT_OK;
      return;
    }
    if (!t->reason[0])
      snprintf(t->reason, sizeof(t->reason), "handler failed");
    if (attempt + t->crashed > td->o.max_retries) {
      t->outcome = OUT_FAILED;
      return;
    }
    /* Retrying here, not by requeueing, is what keeps the context's later
     * messages behind this one. */
    if (td->o.retry_delay_ms > 0 &&
        edp_sleep_ms(td->o.retry_delay_ms, td->abort_fd)) {
      t->outcome = OUT_SKIPPED;
      return;
    }
  }
}

static void *worker_main(void *arg) {
  td_worker *w = arg;
  for (;;) {
    void *item = NULL;
    int rc = edp_handoff_take(w->in, &item, 1000);
    if (rc == EDP_ETIMEOUT)
      continue;
    if (rc)
      break; /* closed and drained */
    td_task *t = item;
    run_task(w, t);
    int failed = t->outcome == OUT_FAILED;
    /* The done queue is closed only after every worker was joined, and a
     * push fails only without memory; the dispatcher then finds the task
     * missing and leaves the message to be redelivered on close. */
    if (edp_handoff_push(w->td->done, t)) {
      edp_delivery_clear(&t->d);
      free(t);
      continue;
    }
    /* A failed message must be in the .dlq before the next message of its
     * context may run; wait for the dispatcher's word (the verdict queue
     * is closed on stop, which ends the wait too). */
    while (failed && edp_handoff_take(w->verdict, &item, 1000) == EDP_ETIMEOUT)
      ;
  }
  return NULL;
}

/* ---------- dispatcher ---------- */

void edp_td_opts_init(edp_td_opts *o) {
  memset(o, 0, sizeof(*o));
  o->workers = 5;
  o->context_from = EDP_TD_CTX_ROUTING_KEY;
  o->max_retries = 3;
  o->retry_delay_ms = 100;
}

static void emit(edp_td *td, int type, const td_task *t, const char *reason) {
  if (!td->o.on_event)
    return;
  edp_td_event ev = {type,          t->worker,     t->ctx,
                     &t->d,         t->attempts,   reason ? reason : "",
                     t->started_us, t->finished_us};
  edp_trace_set_current(t->traced ? &t->span : NULL);
  td->o.on_event(td->o.ud, &ev);
  edp_trace_set_current(NULL);
}

/* Copies a failed message to the .dlq with the reason and waits for the
 * broker's confirm, then acks the original. Returns 0 when both happened,
 * EDP_ESTALE if the original's channel is gone (it will be redelivered
 * and must not be dead-lettered twice), or an error (the original then
 * stays unacked). */
static int dead_letter(edp_td *td, td_task *t, const char *reason) {
  edp_delivery *d = &t->d;
  if (d->epoch != edp_conn_epoch(td->c) || !edp_conn_is_open(td->c))
    return EDP_ESTALE;
  /* The copy continues the trace from the worker's span. */
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_header extra[2] = {
      {EDP_TD_HDR_CONTEXT, t->ctx, 0},
      {EDP_TRACE_HDR_PARENT, edp_trace_format(&t->span, tp, sizeof(tp)), 0}};
  edp_fwd_copy o = {.target = td->dlq,
                    .queue = td->queue,
                    .retries = t->attempts > 0 ? t->attempts - 1 + t->crashed
                                               : t->crashed,
                    .reason = reason,
                    .dead = 1,
                    .extra = extra,
                    .n_extra = t->traced ? 2 : 1};
  int rc = edp_fwd_publish_copy(td->c, d, &o, 30000);
  if (!rc)
    rc = edp_conn_ack(td->c, d->epoch, d->tag, 0);
  return rc;
}

/* Settles a finished task: ack or dead-letter it, release its context,
 * report it, free it. */
static void settle(edp_td *td, td_task *t) {
  if (t->worker >= 0) {
    int w = -1, left = 0;
    if (edp_allocmap_release(td->map, t->ctx, &w, &left) == 0 && td->o.on_map)
      td->o.on_map(td->o.ud, w, t->ctx, left);
    edp_gauge_set(&td->contexts, (int)edp_allocmap_size(td->map));
  }
  inflight_add(td, -1);
  touch(td);
  if (t->attempts > 1)
    edp_count_add(&td->st.retries, (uint64_t)(t->attempts - 1));
  if (t->started_us)
    edp_hist_observe(&td->processing, t->finished_us - t->started_us);
  int rc = 0, type = EDP_TD_REQUEUED;
  if (t->outcome == OUT_OK && t->d.epoch == edp_conn_epoch(td->c) &&
      edp_conn_is_open(td->c)) {
    /* Reported before the ack: a crash between the two leaves the message
     * unacked, so it comes again (flagged redelivered) and is reported
     * twice, never acked without a report. An ack refused here (the
     * connection went meanwhile) means the same: it comes again. */
    edp_count_add(&td->st.processed, 1);
    emit(td, EDP_TD_PROCESSED, t, "");
    rc = edp_conn_ack(td->c, t->d.epoch, t->d.tag, 0);
    type = -1; /* reported */
  } else if (t->outcome == OUT_FAILED) {
    rc = dead_letter(td, t, t->reason);
    if (!rc)
      type = EDP_TD_DEAD_LETTERED;
  }
  if (rc && rc != EDP_ESTALE) {
    /* The channel is lost, or the broker refused the dead-letter copy.
     * Either way the unacked messages must come back from the broker in
     * queue order: invalidate the epoch at once, so that workers skip the
     * tasks they have not started, and reconnect (which returns every
     * unacked message to the queue). During a stop, closing the channel
     * does the same. */
    atomic_store(&td->epoch, EPOCH_NONE);
    if (!atomic_load(&td->stopping))
      td->need_reconnect = 1;
  }
  if (type == EDP_TD_DEAD_LETTERED)
    edp_count_add(&td->st.dead_lettered, 1);
  else if (type == EDP_TD_REQUEUED)
    edp_count_add(&td->st.requeued, 1);
  if (type >= 0)
    emit(td, type, t, type == EDP_TD_DEAD_LETTERED ? t->reason : "");
  if (t->outcome == OUT_FAILED && t->worker >= 0) {
    /* The worker waits for this verdict before it runs anything else, so
     * no later message of the context starts before the failed one is
     * safely in the .dlq (and reported), or the epoch is void. */
    edp_handoff_push(td->w[t->worker].verdict, NULL);
  }
  edp_delivery_clear(&t->d);
  free(t);
}

static void drain_done(edp_td *td) {
  void *item;
  while (edp_handoff_take(td->done, &item, 0) == 0)
    settle(td, item);
}

/* The connection is gone (or must be given up): everything unacked comes
 * back redelivered in queue order, so workers should stop working on what
 * they hold right away. */
static void lost(edp_td *td) {
  atomic_store(&td->epoch, EPOCH_NONE);
  td->need_reconnect = 1;
}

/* Takes ownership of *d (zeroed on return) and hands it to a worker. */
static int dispatch(edp_td *td, edp_delivery *d) {
  edp_count_add(&td->st.received, 1);
  if (td->st.standby) {
    edp_gauge_set(&td->st.standby, 0);
    edp_td_event ev = {.type = EDP_TD_ACTIVE,
                       .worker = -1,
                       .context = "",
                       .d = d,
                       .reason = ""};
    if (td->o.on_event)
      td->o.on_event(td->o.ud, &ev);
  }
  touch(td);
  if (d->redelivered)
    edp_count_add(&td->st.redelivered, 1);
  td_task *t = calloc(1, sizeof(*t));
  if (!t) {
    edp_delivery_clear(d);
    lost(td);
    return EDP_ENOMEM;
  }
  t->d = *d;
  memset(d, 0, sizeof(*d));
  t->worker = -1;
  t->traced = edp_trace_delivery_span(&t->d, &t->span);
  inflight_add(td, 1);
  int rc = edp_td_context(td->o.context_from, td->context_key, &t->d, t->ctx,
                          sizeof(t->ctx));
  if (rc) {
    /* A message without a context can never be placed: it is poison, and
     * the .dlq keeps it with the reason. */
    t->outcome = OUT_FAILED;
    snprintf(t->reason, sizeof(t->reason), "no context in the message (%s)",
             td->o.context_from == EDP_TD_CTX_ROUTING_KEY ? "routing key"
             : td->o.context_from == EDP_TD_CTX_HEADER    ? "header"
                                                          : "JSON body");
    settle(td, t);
    return 0;
  }
  int in_flight = 0;
  rc = edp_allocmap_assign(td->map, t->ctx, &t->worker, &in_flight);
  if (!rc && td->o.on_map)
    td->o.on_map(td->o.ud, t->worker, t->ctx, in_flight);
  if (!rc)
    edp_gauge_set(&td->contexts, (int)edp_allocmap_size(td->map));
  if (!rc)
    rc = edp_handoff_push(td->w[t->worker].in, t);
  if (rc) {
    /* Requeueing just this message would let the context's later
     * messages, already at a worker, overtake it: void the epoch and
     * reconnect instead, and all come back in queue order. */
    if (t->worker >= 0)
      edp_allocmap_release(td->map, t->ctx, NULL, NULL);
    edp_gauge_set(&td->contexts, (int)edp_allocmap_size(td->map));
    inflight_add(td, -1);
    edp_delivery_clear(&t->d);
    free(t);
    lost(td);
    return rc;
  }
  return 0;
}

static void sync_epoch(edp_td *td) {
  unsigned e = edp_conn_epoch(td->c);
  if (atomic_load(&td->epoch) != e)
    atomic_store(&td->epoch, e);
}

static int reconnect(edp_td *td) {
  int rc = edp_conn_reconnect(td->c);
  if (rc)
    return rc;
  edp_count_add(&td->st.reconnects, 1);
  td->need_reconnect = 0;
  sync_epoch(td);
  return 0;
}

int edp_td_run(edp_td *td, int timeout_ms) {
  if (!td || td->stopped)
    return EDP_EINVAL;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (int failures = 0;;) {
    if (td->need_reconnect) {
      if (failures++ >= MAX_RECOVERIES)
        return EDP_ECONNECT;
      int rc = reconnect(td);
      if (rc)
        return rc;
    }
    drain_done(td);
    if (td->need_reconnect)
      continue;
    /* The channel may have been restored in a call that did not report
     * EDP_ECHANNEL to us (the owner's own synchronous call between two
     * runs returns the close's error, e.g. EDP_ENOTFOUND): the epoch
     * tells. Without this the workers kept the old epoch and skipped
     * every delivery of the new channel, which then stayed unacked. */
    sync_epoch(td);
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      if (l <= 0)
        return 0;
      left = (int)l;
    }
    int r = edp_conn_wait(td->c, edp_handoff_fd(td->done), left);
    if (r == EDP_ECLOSED) {
      lost(td);
      continue;
    }
    if (r == EDP_ECHANNEL) {
      /* The channel was reopened with its consumer: a new epoch. */
      sync_epoch(td);
      continue;
    }
    if (r < 0)
      return r;
    failures = 0;
    while (r & EDP_READY_DELIVERY && edp_conn_pending_deliveries(td->c)) {
      edp_delivery d;
      int rc = edp_conn_receive(td->c, &d, 0);
      if (rc == EDP_ETIMEOUT)
        break;
      if (rc) {
        if (rc == EDP_ECLOSED)
          lost(td);
        break;
      }
      if ((rc = dispatch(td, &d)))
        return rc;
    }
  }
}

int edp_td_new(edp_conn *c, const edp_td_opts *o, edp_td **out) {
  if (!out)
    return EDP_EINVAL;
  *out = NULL;
  if (!c || !o || !o->queue || !o->queue[0] || strlen(o->queue) > 200 ||
      !o->handler || o->workers < 1 || o->workers > 1024 || o->prefetch < 0 ||
      o->prefetch > 65535 || o->max_retries < 0 || o->retry_delay_ms < 0 ||
      o->context_from < EDP_TD_CTX_ROUTING_KEY ||
      o->context_from > EDP_TD_CTX_JSON ||
      (o->context_from != EDP_TD_CTX_ROUTING_KEY &&
       (!o->context_key || !o->context_key[0])))
    return EDP_EINVAL;
  edp_td *td = calloc(1, sizeof(*td));
  if (!td)
    return EDP_ENOMEM;
  td->c = c;
  td->o = *o;
  td->abort_fd = -1;
  td->stopped = 1; /* until the workers run, destroy has nothing to stop */
  if (!td->o.prefetch) {
    int p = 16 * o->workers;
    td->o.prefetch = p < 32 ? 32 : p > 65535 ? 65535 : p;
  }
  td->queue = strdup(o->queue);
  td->dlq = malloc(strlen(o->queue) + 5);
  td->context_key = o->context_key ? strdup(o->context_key) : NULL;
  td->w = calloc((size_t)o->workers, sizeof(*td->w));
  int rc = td->queue && td->dlq && td->w && (td->context_key || !o->context_key)
               ? 0
               : EDP_ENOMEM;
  if (!rc) {
    sprintf(td->dlq, "%s.dlq", o->queue);
    td->o.queue = td->queue;
    td->o.context_key = td->context_key;
    rc = edp_allocmap_new(o->workers, &td->map);
  }
  if (!rc)
    rc = edp_handoff_new(&td->done);
  if (!rc && (td->abort_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
    rc = EDP_EIO;
  atomic_init(&td->epoch, edp_conn_epoch(c));
  atomic_init(&td->stopping, 0);
  for (int i = 0; !rc && i < o->workers; i++) {
    td->w[i].td = td;
    td->w[i].idx = i;
    rc = edp_handoff_new(&td->w[i].in);
    if (!rc)
      rc = edp_handoff_new(&td->w[i].verdict);
  }
  for (int i = 0; !rc && i < o->workers; i++) {
    if (pthread_create(&td->w[i].th, NULL, worker_main, &td->w[i]))
      rc = EDP_EIO;
    else
      td->w[i].started = 1;
    td->stopped = 0;
  }
  if (!rc) {
    /* The .dlq as edp_td_declare made it: same type, nothing more. */
    edp_queue_opts qo;
    edp_queue_opts_init(&qo);
    qo.queue_type = o->kind.type;
    rc = edp_conn_queue_declare(c, td->dlq, &qo, NULL, 0, NULL, NULL);
  }
  if (!rc)
    rc = edp_conn_qos(c, td->o.prefetch);
  if (!rc)
    rc = edp_conn_confirm_select(c);
  /* On a single-active queue, a consumer that finds another one there
   * waits as a standby until the broker hands it the queue. Counted
   * before consuming: a quorum queue counts only its active consumer. */
  uint32_t consumers = 0;
  if (!rc)
    rc = edp_conn_queue_inspect(c, td->queue, NULL, &consumers);
  if (!rc) {
    edp_gauge_set(&td->st.standby, consumers > 0);
    rc = edp_conn_consume(c, td->queue, NULL, td->consumer_tag,
                          sizeof(td->consumer_tag));
  }
  if (!rc)
    sync_epoch(td);
  if (rc) {
    edp_td_destroy(&td);
    return rc;
  }
  *out = td;
  return 0;
}

int edp_td_stop(edp_td *td, int timeout_ms) {
  if (!td)
    return EDP_EINVAL;
  if (td->stopped)
    return 0;
  atomic_store(&td->stopping, 1);
  uint64_t one = 1;
  ssize_t wr = write(td->abort_fd, &one, sizeof(one));
  (void)wr;
  /* Best effort: a lost connection has no consumer left to cancel. */
  if (edp_conn_is_open(td->c) && td->consumer_tag[0])
    edp_conn_cancel(td->c, td->consumer_tag);
  int64_t deadline = edp_now_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
  /* The connection's stop_fd may be what brought us here and stays
   * readable, so wait on the done queue directly; it is a short wait
   * bounded by the handlers still running. */
  while (td->st.in_flight > 0) {
    drain_done(td);
    if (!td->st.in_flight)
      break;
    int64_t left = deadline - edp_now_ms();
    if (left <= 0)
      break;
    struct pollfd p = {edp_handoff_fd(td->done), POLLIN, 0};
    poll(&p, 1, (int)left);
  }
  int rc = td->st.in_flight ? EDP_ETIMEOUT : 0;
  for (int i = 0; i < td->o.workers; i++) {
    edp_handoff_close(td->w[i].in);
    edp_handoff_close(td->w[i].verdict);
  }
  for (int i = 0; i < td->o.workers; i++)
    if (td->w[i].started) {
      pthread_join(td->w[i].th, NULL);
      td->w[i].started = 0;
    }
  drain_done(td);
  td->stopped = 1;
  return rc;
}

void edp_td_destroy(edp_td **tdp) {
  if (!tdp || !*tdp)
    return;
  edp_td *td = *tdp;
  if (td->w) {
    /* Workers that started must be stopped before anything is freed. */
    int any = 0;
    for (int i = 0; i < td->o.workers; i++)
      any |= td->w[i].started;
    if (any) {
      td->stopped = 0;
      edp_td_stop(td, 10000);
    }
    for (int i = 0; i < td->o.workers; i++) {
      edp_handoff_destroy(&td->w[i].in);
      edp_handoff_destroy(&td->w[i].verdict);
    }
  }
  edp_handoff_destroy(&td->done);
  edp_allocmap_destroy(&td->map);
  if (td->abort_fd >= 0)
    close(td->abort_fd);
  free(td->w);
  free(td->queue);
  free(td->dlq);
  free(td->context_key);
  free(td);
  *tdp = NULL;
}

void edp_td_stats_get(const edp_td *td, edp_td_stats *out) {
  if (!td || !out)
    return;
  const edp_td_stats *s = &td->st;
  out->received = edp_count_read(&s->received);
  out->processed = edp_count_read(&s->processed);
  out->dead_lettered = edp_count_read(&s->dead_lettered);
  out->retries = edp_count_read(&s->retries);
  out->requeued = edp_count_read(&s->requeued);
  out->redelivered = edp_count_read(&s->redelivered);
  out->reconnects = edp_count_read(&s->reconnects);
  out->in_flight = __atomic_load_n(&s->in_flight, __ATOMIC_RELAXED);
  out->contexts = (size_t)edp_gauge_read(&td->contexts);
  out->last_activity_ms =
      __atomic_load_n(&s->last_activity_ms, __ATOMIC_RELAXED);
  out->standby = edp_gauge_read(&s->standby);
}

void edp_td_collect(const void *dispatcher, edp_metrics_out *out) {
  const edp_td *td = dispatcher;
  edp_td_stats st;
  edp_td_stats_get(td, &st);
  char l[512] = "";
  edp_metrics_label(l, sizeof(l), "queue", td->queue);
  edp_metrics_messages(out, EDP_MSGS_PROCESSED, l, st.processed);
  edp_metrics_messages(out, EDP_MSGS_RETRIED, l, st.retries);
  edp_metrics_messages(out, EDP_MSGS_DEAD_LETTERED, l, st.dead_lettered);
  edp_metrics_messages(out, EDP_MSGS_REQUEUED, l, st.requeued);
  edp_metrics_messages(out, EDP_MSGS_REDELIVERED, l, st.redelivered);
  edp_metrics_gauge(out, "edp_td_in_flight",
                    "Messages delivered to the dispatcher, not yet settled.", l,
                    (double)st.in_flight);
  edp_metrics_gauge(out, "edp_td_contexts",
                    "Contexts (accounts) with messages in flight.", l,
                    (double)st.contexts);
  for (int i = 0; i < td->o.workers; i++) {
    char wl[560], idx[16];
    snprintf(wl, sizeof(wl), "%s", l);
    snprintf(idx, sizeof(idx), "%d", i);
    edp_metrics_label(wl, sizeof(wl), "worker", idx);
    edp_metrics_gauge(out, "edp_worker_busy",
                      "1 while the worker runs a handler.", wl,
                      edp_gauge_read(&td->w[i].busy));
    edp_metrics_counter_f(out, "edp_worker_busy_seconds_total",
                          "Time the worker spent in handlers.", wl,
                          (double)edp_count_read(&td->w[i].busy_us) / 1e6);
  }
  edp_metrics_histogram(out, "edp_processing_duration_seconds",
                        "Time the handler took per message (its last "
                        "attempt).",
                        l, &td->processing);
}
