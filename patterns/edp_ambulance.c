/*
 * edp_ambulance.c - priority messages overtaking a standard backlog (see
 * edp_ambulance.h for the modes and the contract).
 *
 * How the ambulance thread prefers priority work without polling: it has
 * one connection whose channel carries two consumers, one on each lane,
 * with per-consumer prefetch (basic.qos with global=false applies to the
 * consumers created after it). The standard consumer gets prefetch 1: the
 * thread holds at most the standard message it is processing plus one
 * waiting. The priority consumer gets a few (priority_prefetch, default
 * 4): while the thread processes one priority message the broker has
 * already pushed the next ones, so after the ack the next priority message
 * is in our buffer, not still on the wire, and a buffered standard message
 * cannot slip in between. Measured with 400 priority messages queued: a
 * priority prefetch of 1 let about 200 standard messages in between, 2 or
 * more none (4 keeps that true when the broker falls a handler behind on a
 * loaded machine). The priority lane has this one consumer, so holding a
 * few of its messages takes them from no other thread.
 * Before each choice the thread drains everything the socket holds into
 * two small local lanes and starts the head of the priority lane if there
 * is one. When both are empty it blocks in edp_conn_wait() on its socket,
 * which wakes for whichever delivery comes first: a priority message that
 * arrives while the thread waits for standard work is picked up at once.
 *
 * The prefetch makes the next priority message usually be here already;
 * to make it a rule, when the priority lane runs dry right after priority
 * work while standard work waits, the thread asks the broker (one passive
 * queue.declare) whether the priority queue still holds ready messages,
 * and if so waits for them (see await_priority). That costs one round trip
 * per run of priority messages, none while the priority lane is idle.
 *
 * In ambulance mode the standard threads' consumers have a higher consumer
 * priority (x-priority 1) than the priority thread's standard consumer, so
 * the broker gives standard work to the priority thread only when every
 * standard thread is busy: at low load the priority thread stays free for
 * the next priority message.
 *
 * After a reconnect edp_conn replays the last qos value for all consumers
 * (it records one prefetch per channel); we set the priority consumer's
 * qos last, so the replayed value is the priority prefetch for both, which
 * keeps the priority guarantee and lets the thread hold a few more
 * standard messages.
 *
 * Handlers run on a worker thread per consumer thread (edp_worker): while
 * one runs, the consumer thread keeps servicing its connection, so
 * heartbeats flow however long the handler takes, and the deliveries that
 * arrive meanwhile wait in the worker until the next drain moves them
 * into the lanes, where the priority choice is made as before.
 */
#include "edp_ambulance.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "edp_conn_group.h"
#include "edp_trace.h"
#include "edp_util.h"
#include "edp_worker.h"

/* Consecutive recoveries without progress before a thread gives up. */
#define MAX_RECOVERIES 10
#define MAX_THREADS 64
#define MAX_BASE 200

/* ---------- names and topology ---------- */

static const char *const mode_names[] = {"fifo", "carpool", "ambulance",
                                         "native"};

int edp_amb_mode_parse(const char *s, int *mode) {
  for (int i = 0; s && mode && i < 4; i++)
    if (!strcmp(s, mode_names[i])) {
      *mode = i;
      return 0;
    }
  return EDP_EINVAL;
}

const char *edp_amb_mode_name(int mode) {
  return mode >= 0 && mode < 4 ? mode_names[mode] : "?";
}

const char *edp_amb_kind_name(int kind) {
  return kind == EDP_AMB_PRIORITY ? "priority" : "standard";
}

static int valid_base(const char *base) {
  return base && base[0] && strlen(base) <= MAX_BASE;
}

static int two_lanes(int mode) {
  return mode == EDP_AMB_CARPOOL || mode == EDP_AMB_AMBULANCE;
}

int edp_amb_queue_name(int mode, const char *base, int kind, char *out,
                       size_t out_len) {
  if (mode < 0 || mode > 3 || !valid_base(base) || !out ||
      (kind != EDP_AMB_STANDARD && kind != EDP_AMB_PRIORITY))
    return EDP_EINVAL;
  const char *suffix = mode == EDP_AMB_FIFO       ? "fifo"
                       : mode == EDP_AMB_NATIVE   ? "native"
                       : kind == EDP_AMB_PRIORITY ? "priority"
                                                  : "standard";
  int n = snprintf(out, out_len, "%s.%s", base, suffix);
  return n < 0 || (size_t)n >= out_len ? EDP_EINVAL : 0;
}

int edp_amb_declare(edp_conn *c, int mode, const char *base,
                    const edp_queue_kind *k) {
  if (!c || mode < 0 || mode > 3 || !valid_base(base))
    return EDP_EINVAL;
  edp_queue_kind lanes = {0};
  if (k)
    lanes = *k;
  lanes.single_active = 0;
  char dlq[MAX_BASE + 8], q[MAX_BASE + 16];
  snprintf(dlq, sizeof(dlq), "%s.dlq", base);
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  int rc = edp_queue_opts_kind(&qo, &lanes, dlq);
  if (!rc && mode == EDP_AMB_NATIVE && qo.queue_type)
    rc = EDP_EINVAL;
  if (rc)
    return rc;
  edp_queue_opts dq;
  edp_queue_opts_init(&dq);
  dq.queue_type = qo.queue_type;
  rc = edp_conn_queue_declare(c, dlq, &dq, NULL, 0, NULL, NULL);
  /* A rejected message goes through the default exchange to the .dlq:
   * handler failures are kept, not dropped and not looped. */
  qo.dead_letter_exchange = "";
  qo.dead_letter_routing_key = dlq;
  if (mode == EDP_AMB_NATIVE)
    qo.max_priority = EDP_AMB_MAX_PRIORITY;
  for (int kind = 0; !rc && kind < (two_lanes(mode) ? 2 : 1); kind++) {
    edp_amb_queue_name(mode, base, kind, q, sizeof(q));
    rc = edp_conn_queue_declare(c, q, &qo, NULL, 0, NULL, NULL);
  }
  return rc;
}

/* ---------- sender ---------- */

struct edp_amb_sender {
  edp_conn *c;
  edp_amb_sender_opts o;
  char base[MAX_BASE + 1];
  char queue[2][MAX_BASE + 16];
  edp_amb_sender_stats st;
};

void edp_amb_sender_opts_init(edp_amb_sender_opts *o) {
  memset(o, 0, sizeof(*o));
  o->mode = EDP_AMB_AMBULANCE;
  o->persistent = 1;
  o->confirm_window = 1024;
  o->confirm_timeout_ms = 30000;
}

static void sender_confirmed(void *ud, const edp_confirm *cf) {
  edp_amb_sender *s = ud;
  if (cf->status == EDP_CONFIRM_ACK)
    s->st.confirmed++;
  else
    s->st.refused++;
  if (s->o.on_confirm)
    s->o.on_confirm(s->o.ud, cf);
}

int edp_amb_sender_new(edp_conn *c, const edp_amb_sender_opts *o,
                       edp_amb_sender **out) {
  if (!c || !o || !out || !valid_base(o->base) || o->mode < 0 || o->mode > 3 ||
      o->confirm_window < 1)
    return EDP_EINVAL;
  *out = NULL;
  int rc = edp_amb_declare(c, o->mode, o->base, &o->kind);
  if (!rc)
    rc = edp_conn_confirm_select(c);
  if (rc)
    return rc;
  edp_amb_sender *s = calloc(1, sizeof(*s));
  if (!s)
    return EDP_ENOMEM;
  s->c = c;
  s->o = *o;
  snprintf(s->base, sizeof(s->base), "%s", o->base);
  s->o.base = s->base;
  for (int k = 0; k < 2; k++)
    edp_amb_queue_name(o->mode, o->base, k, s->queue[k], sizeof(s->queue[k]));
  edp_conn_on_confirm(c, sender_confirmed, s);
  *out = s;
  return 0;
}

void edp_amb_sender_destroy(edp_amb_sender **sp) {
  if (!sp || !*sp)
    return;
  edp_conn_on_confirm((*sp)->c, NULL, NULL);
  free(*sp);
  *sp = NULL;
}

static int sender_drain(edp_amb_sender *s, size_t max) {
  edp_recovery r = {0};
  int rc =
      edp_conn_wait_confirms_recover(s->c, max, s->o.confirm_timeout_ms, &r);
  s->st.reconnects += r.reconnects;
  s->st.republished += r.republished;
  return rc;
}

int edp_amb_send(edp_amb_sender *s, int kind, const char *message_id,
                 const void *body, size_t len) {
  return edp_amb_send_traced(s, kind, message_id, body, len, NULL);
}

int edp_amb_send_traced(edp_amb_sender *s, int kind, const char *message_id,
                        const void *body, size_t len, const edp_trace *t) {
  if (!s || !message_id || !message_id[0] || (len && !body) ||
      (kind != EDP_AMB_STANDARD && kind != EDP_AMB_PRIORITY))
    return EDP_EINVAL;
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_header h[3] = {{EDP_AMB_HDR_KIND, edp_amb_kind_name(kind), 0},
                     {EDP_AMB_HDR_SENT_US, NULL, 0},
                     {EDP_TRACE_HDR_PARENT, "", 0}};
  if (t)
    h[2].str = edp_trace_format(t, tp, sizeof(tp));
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = s->queue[kind];
  m.body = body;
  m.body_len = len;
  m.persistent = s->o.persistent;
  m.mandatory = 1; /* a deleted queue returns the message to us */
  m.message_id = message_id;
  m.content_type = "text/plain";
  m.timestamp = (int64_t)time(NULL);
  if (s->o.mode == EDP_AMB_NATIVE)
    m.priority = kind == EDP_AMB_PRIORITY ? EDP_AMB_MAX_PRIORITY : 0;
  m.headers = h;
  m.n_headers = t ? 3 : 2;
  /* Stamped after the wait for the window, so that latency counts from
   * the moment the message really left (a reconnect in between makes it
   * a little early). */
  int rc = sender_drain(s, s->o.confirm_window - 1);
  if (rc)
    return rc;
  h[1].num = edp_wall_us();
  edp_recovery r = {0};
  rc = edp_conn_publish_window(s->c, &m, s->o.confirm_window,
                               s->o.confirm_timeout_ms, &r);
  s->st.reconnects += r.reconnects;
  s->st.republished += r.republished;
  if (!rc)
    s->st.sent[kind]++;
  return rc;
}

int edp_amb_flush(edp_amb_sender *s) {
  return s ? sender_drain(s, 0) : EDP_EINVAL;
}

void edp_amb_sender_stats_get(const edp_amb_sender *s,
                              edp_amb_sender_stats *out) {
  if (s && out)
    *out = s->st;
}

/* ---------- receiver ---------- */

/* Deliveries a thread holds but has not started, one FIFO per lane. */
struct lane {
  edp_delivery *v;
  size_t n, cap;
};

enum role {
  ROLE_PRIORITY_ONLY,  /* carpool's priority thread */
  ROLE_PRIORITY_FIRST, /* ambulance's priority thread */
  ROLE_ONE_QUEUE       /* standard threads, fifo and native workers */
};

struct amb_thread {
  edp_amb_receiver *r;
  pthread_t tid;
  int running;
  edp_conn *c;
  edp_worker *w; /* runs the handler while the thread services c */
  int index, role;
  char name[32];
  char ptag[256], stag[256]; /* consumer tags of the lanes, "" = none */
  struct lane lanes[2];      /* by kind */
  int after_priority;        /* the last message processed was priority */
};

struct edp_amb_receiver {
  edp_amb_receiver_opts o;
  char base[MAX_BASE + 1];
  char queue[2][MAX_BASE + 16];
  int stop_pipe[2]; /* readable = stop; every connection polls it */
  int fail_pipe[2]; /* readable = a thread ended on an error */
  int n;
  struct amb_thread *t;
  edp_conn_group *conns; /* the threads' connections, for metrics */
  pthread_mutex_t mu;    /* guards the fields below */
  int stopping;
  int error;
  edp_amb_receiver_stats st;
};

void edp_amb_receiver_opts_init(edp_amb_receiver_opts *o) {
  memset(o, 0, sizeof(*o));
  o->mode = EDP_AMB_AMBULANCE;
  o->threads = 1;
  o->standard_prefetch = 1;
  o->priority_prefetch = 4;
  o->check_priority_lane = 1;
}

static void lane_clear(struct lane *l) {
  for (size_t i = 0; i < l->n; i++)
    edp_delivery_clear(&l->v[i]);
  l->n = 0;
}

static int lane_push(struct lane *l, edp_delivery *d) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    edp_delivery *v = realloc(l->v, cap * sizeof(*v));
    if (!v)
      return EDP_ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = *d;
  return 0;
}

static void lane_pop(struct lane *l, edp_delivery *d) {
  *d = l->v[0];
  memmove(l->v, l->v + 1, (l->n - 1) * sizeof(*l->v));
  l->n--;
}

static int stopping(edp_amb_receiver *r) {
  pthread_mutex_lock(&r->mu);
  int s = r->stopping;
  pthread_mutex_unlock(&r->mu);
  return s;
}

/* The kind of a delivery: the sender's header says it; without one, the
 * lane (two-lane modes) or the message priority (native) does. */
static int kind_of(const struct amb_thread *t, const edp_delivery *d,
                   int lane) {
  const char *k = edp_delivery_header_str(d, EDP_AMB_HDR_KIND);
  if (k)
    return strcmp(k, "priority") ? EDP_AMB_STANDARD : EDP_AMB_PRIORITY;
  if (t->r->o.mode == EDP_AMB_NATIVE)
    return d->priority > 0 ? EDP_AMB_PRIORITY : EDP_AMB_STANDARD;
  return lane;
}

/* Moves every delivery the connection has (queued or in the socket) into
 * the lanes, without waiting: a priority message that arrived while the
 * handler ran is seen before the next choice. */
static int drain(struct amb_thread *t) {
  for (;;) {
    edp_delivery d;
    int rc = edp_worker_receive(t->w, t->c, &d, 0);
    if (rc == EDP_ETIMEOUT)
      return 0;
    if (rc)
      return rc;
    int lane = t->ptag[0] && d.consumer_tag && !strcmp(d.consumer_tag, t->ptag)
                   ? EDP_AMB_PRIORITY
                   : EDP_AMB_STANDARD;
    if ((rc = lane_push(&t->lanes[lane], &d))) {
      /* Nowhere to keep it: give it back to the broker. */
      edp_conn_nack(t->c, d.epoch, d.tag, 0, 1);
      edp_delivery_clear(&d);
      return rc;
    }
  }
}

/* Handles an error of the connection: deliveries we hold are of a lost
 * channel (the broker redelivers them), so they are dropped; a lost
 * connection is reconnected. Returns 0 to carry on, else the thread's
 * final error (EDP_ESTOPPED when asked to stop). */
static int recover(struct amb_thread *t, int rc) {
  lane_clear(&t->lanes[0]);
  lane_clear(&t->lanes[1]);
  if (rc == EDP_ECHANNEL)
    return 0; /* edp_conn restored the channel with its consumers */
  if (rc != EDP_ECLOSED)
    return rc;
  rc = edp_conn_reconnect(t->c);
  if (!rc) {
    pthread_mutex_lock(&t->r->mu);
    t->r->st.reconnects++;
    pthread_mutex_unlock(&t->r->mu);
  }
  return rc;
}

/* One handler call, as the thread's worker runs it, in the span of the
 * message (NULL: it carries no trace context). */
typedef struct handler_call {
  edp_amb_receiver *r;
  const edp_amb_job *job;
  const edp_trace *span;
} handler_call;

static int call_handler(void *ud) {
  handler_call *hc = ud;
  edp_trace_set_current(hc->span);
  int h = hc->r->o.handler(hc->r->o.ud, hc->job);
  edp_trace_set_current(NULL);
  return h;
}

/* Runs the handler on one delivery, then acks it (or rejects it to the
 * .dlq) and reports it. Returns 0 or a connection error. */
static int process(struct amb_thread *t, edp_delivery *d, int lane) {
  edp_amb_receiver *r = t->r;
  edp_amb_job job = {0};
  job.kind = kind_of(t, d, lane);
  job.d = d;
  job.thread = t->index;
  job.thread_name = t->name;
  int64_t sent = 0;
  if (!edp_delivery_header_int(d, EDP_AMB_HDR_SENT_US, &sent))
    job.sent_us = sent;
  job.start_us = edp_wall_us();
  /* The handler runs on the worker while this thread services the
   * connection, holding what arrives meanwhile for the next drain(). A
   * lost connection then refuses the ack below (and the caller
   * reconnects); a channel or consumer error comes back from the next
   * drain(), which makes the caller drop the lanes of the old channel. */
  /* The receiver's span for the message: the handler (on the worker)
   * and the event (on this thread) see it as edp_trace_current(). */
  edp_trace span;
  handler_call hc = {r, &job, edp_trace_delivery_span(d, &span) ? &span : NULL};
  int h = -1;
  if (edp_worker_run(t->w, t->c, call_handler, &hc, &h) == EDP_EINVAL)
    return EDP_EINVAL; /* the handler did not run: leave it unacked */
  int failed = h != 0;
  int rc = failed ? edp_conn_nack(t->c, d->epoch, d->tag, 0, 0)
                  : edp_conn_ack(t->c, d->epoch, d->tag, 0);
  job.end_us = edp_wall_us();
  if (rc == EDP_ESTALE)
    return 0; /* its channel is gone: the broker redelivers it */
  if (rc)
    return rc;
  pthread_mutex_lock(&r->mu);
  if (failed)
    r->st.dead_lettered++;
  else
    r->st.processed[job.kind]++;
  if (!failed && job.sent_us)
    edp_hist_observe(&r->st.latency[job.kind], job.end_us - job.sent_us);
  if (d->redelivered)
    r->st.redelivered++;
  if (t->index == 0)
    r->st.busy_us_priority_thread += job.end_us - job.start_us;
  pthread_mutex_unlock(&r->mu);
  if (r->o.on_event) {
    edp_trace_set_current(hc.span);
    r->o.on_event(r->o.ud, failed ? EDP_AMB_DEAD_LETTERED : EDP_AMB_PROCESSED,
                  &job);
    edp_trace_set_current(NULL);
  }
  return 0;
}

/* The ambulance thread finished a priority message, its priority lane is
 * empty and a standard message waits. The broker may just not have pushed
 * the next priority message yet (it does so after our ack, and a loaded
 * broker can take longer than a handler), so ask: a passive declare gives
 * the priority queue's ready count. The queue answers after it sent us any
 * delivery it owed, so with a count of 0 whatever was for us is already in
 * our buffer. With a count above 0 we wait (bounded: another process's
 * priority thread may take it) for the delivery. */
#define AWAIT_PRIORITY_MS 100

static int await_priority(struct amb_thread *t) {
  uint32_t ready = 0;
  int rc =
      edp_conn_queue_inspect(t->c, t->r->queue[EDP_AMB_PRIORITY], &ready, NULL);
  if (rc || !ready)
    return rc;
  int64_t deadline = edp_now_ms() + AWAIT_PRIORITY_MS;
  for (;;) {
    if ((rc = drain(t)) || t->lanes[EDP_AMB_PRIORITY].n)
      return rc;
    int64_t left = deadline - edp_now_ms();
    if (left <= 0)
      return 0;
    rc = edp_worker_wait(t->w, t->c, -1, (int)left);
    if (rc < 0)
      return rc;
  }
}

static void thread_failed(struct amb_thread *t, int rc) {
  edp_amb_receiver *r = t->r;
  pthread_mutex_lock(&r->mu);
  if (!r->error)
    r->error = rc;
  pthread_mutex_unlock(&r->mu);
  ssize_t n = write(r->fail_pipe[1], "x", 1);
  (void)n;
  if (r->o.conn && r->o.conn->log) {
    char msg[160];
    snprintf(msg, sizeof(msg), "ambulance: thread %s stopped: %s", t->name,
             edp_strerror(rc));
    r->o.conn->log(r->o.conn->log_ud, EDP_LOG_ERROR, msg);
  }
}

static void *thread_main(void *arg) {
  struct amb_thread *t = arg;
  int failures = 0, rc = 0;
  while (!stopping(t->r)) {
    rc = drain(t);
    edp_delivery d;
    int lane = -1;
    if (!rc && t->after_priority && t->r->o.check_priority_lane &&
        !t->lanes[EDP_AMB_PRIORITY].n && t->lanes[EDP_AMB_STANDARD].n) {
      t->after_priority = 0;
      rc = await_priority(t);
      if (!rc)
        continue; /* choose again with what arrived */
    }
    if (!rc) {
      /* The whole pattern in one line: priority first. */
      lane = t->lanes[EDP_AMB_PRIORITY].n   ? EDP_AMB_PRIORITY
             : t->lanes[EDP_AMB_STANDARD].n ? EDP_AMB_STANDARD
                                            : -1;
      if (lane < 0) {
        /* Nothing held: block until a delivery on either consumer (or
         * stop). The timeout only bounds the wait; no polling. */
        rc = edp_worker_wait(t->w, t->c, -1, 5000);
        if (rc > 0)
          rc = 0;
        if (!rc)
          continue;
      }
    }
    if (!rc) {
      lane_pop(&t->lanes[lane], &d);
      t->after_priority =
          lane == EDP_AMB_PRIORITY && t->role == ROLE_PRIORITY_FIRST;
      rc = process(t, &d, lane);
      edp_delivery_clear(&d);
      if (!rc) {
        failures = 0;
        continue;
      }
    }
    if (rc == EDP_ESTOPPED)
      break;
    if (++failures > MAX_RECOVERIES || (rc = recover(t, rc))) {
      if (rc != EDP_ESTOPPED)
        thread_failed(t, rc);
      break;
    }
  }
  /* Cancel first so that nothing new arrives, then close: closing the
   * channel returns every unacked delivery we hold to its queue. */
  if (edp_conn_is_open(t->c)) {
    if (t->ptag[0])
      edp_conn_cancel(t->c, t->ptag);
    if (t->stag[0])
      edp_conn_cancel(t->c, t->stag);
  }
  lane_clear(&t->lanes[0]);
  lane_clear(&t->lanes[1]);
  /* Its counts stay with the receiver (a last scrape sees them). */
  edp_conn_group_detach(t->r->conns, t->c);
  edp_conn_destroy(&t->c);
  return NULL;
}

/* Opens thread i's connection and registers its consumers. */
static int setup_thread(edp_amb_receiver *r, int i, char *err, size_t err_len) {
  struct amb_thread *t = &r->t[i];
  const edp_amb_receiver_opts *o = &r->o;
  t->r = r;
  t->index = i;
  if (two_lanes(o->mode) && i == 0) {
    t->role =
        o->mode == EDP_AMB_CARPOOL ? ROLE_PRIORITY_ONLY : ROLE_PRIORITY_FIRST;
    snprintf(t->name, sizeof(t->name), "priority");
  } else {
    t->role = ROLE_ONE_QUEUE;
    snprintf(t->name, sizeof(t->name), "%s-%d",
             two_lanes(o->mode) ? "standard" : "worker",
             two_lanes(o->mode) ? i : i + 1);
  }
  edp_conn_opts co;
  if (o->conn)
    co = *o->conn;
  else
    edp_conn_opts_init(&co);
  co.stop_fd = r->stop_pipe[0];
  char cname[64];
  snprintf(cname, sizeof(cname), "edp-ambulance %s", t->name);
  co.client_name = cname;
  int rc = edp_worker_new(&t->w);
  if (rc) {
    if (err && err_len)
      snprintf(err, err_len, "thread %s: no worker thread: %s", t->name,
               edp_strerror(rc));
    return rc;
  }
  rc = edp_conn_open(&co, &t->c, err, err_len);
  if (rc)
    return rc;
  rc = edp_conn_group_attach(r->conns, t->name, t->c);
  if (!rc)
    rc = edp_amb_declare(t->c, o->mode, r->base, &r->o.kind);
  edp_consume_opts cs;
  edp_consume_opts_init(&cs);
  if (!rc && t->role == ROLE_PRIORITY_FIRST) {
    /* Standard consumer first with prefetch 1, then the priority one with
     * its own prefetch: qos applies to consumers created after it. */
    rc = edp_conn_qos(t->c, 1);
    if (!rc)
      rc = edp_conn_consume(t->c, r->queue[EDP_AMB_STANDARD], &cs, t->stag,
                            sizeof(t->stag));
  }
  if (!rc && t->role != ROLE_ONE_QUEUE) {
    rc = edp_conn_qos(t->c, o->priority_prefetch);
    if (!rc)
      rc = edp_conn_consume(t->c, r->queue[EDP_AMB_PRIORITY], &cs, t->ptag,
                            sizeof(t->ptag));
  }
  if (!rc && t->role == ROLE_ONE_QUEUE) {
    /* Standard threads outrank the ambulance thread on the standard lane,
     * so it gets standard work only when they are all busy. */
    if (o->mode == EDP_AMB_AMBULANCE)
      cs.priority = 1;
    rc = edp_conn_qos(t->c, o->standard_prefetch);
    if (!rc)
      rc = edp_conn_consume(t->c, r->queue[EDP_AMB_STANDARD], &cs, t->stag,
                            sizeof(t->stag));
  }
  if (rc && err && err_len)
    snprintf(err, err_len, "thread %s: %s (broker: %d %s)", t->name,
             edp_strerror(rc), edp_conn_reply_code(t->c),
             edp_conn_reply_text(t->c));
  return rc;
}

static int make_pipe(int p[2]) {
  if (pipe(p))
    return EDP_EINTERNAL;
  for (int i = 0; i < 2; i++) {
    fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
    fcntl(p[i], F_SETFD, FD_CLOEXEC);
  }
  return 0;
}

int edp_amb_receiver_start(const edp_amb_receiver_opts *o,
                           edp_amb_receiver **out, char *err_text,
                           size_t err_len) {
  char scratch[8];
  if (!err_text) {
    err_text = scratch;
    err_len = sizeof(scratch);
  }
  if (err_len)
    err_text[0] = '\0';
  if (!o || !out || !o->handler || !valid_base(o->base) || o->mode < 0 ||
      o->mode > 3 || o->threads < 1 || o->threads > MAX_THREADS ||
      o->standard_prefetch < 1 || o->standard_prefetch > 65535 ||
      o->priority_prefetch < 1 || o->priority_prefetch > 65535) {
    snprintf(err_text, err_len, "invalid receiver options");
    return EDP_EINVAL;
  }
  *out = NULL;
  edp_amb_receiver *r = calloc(1, sizeof(*r));
  if (!r)
    return EDP_ENOMEM;
  r->o = *o;
  /* The type is one of two names: keep our own copy of it. */
  r->o.kind.type =
      o->kind.type && !strcmp(o->kind.type, "quorum") ? "quorum" : NULL;
  snprintf(r->base, sizeof(r->base), "%s", o->base);
  r->o.base = r->base;
  r->stop_pipe[0] = r->stop_pipe[1] = r->fail_pipe[0] = r->fail_pipe[1] = -1;
  pthread_mutex_init(&r->mu, NULL);
  for (int k = 0; k < 2; k++)
    edp_amb_queue_name(o->mode, r->base, k, r->queue[k], sizeof(r->queue[k]));
  r->n = o->threads + 1;
  r->t = calloc((size_t)r->n, sizeof(*r->t));
  int rc = r->t ? 0 : EDP_ENOMEM;
  if (!rc)
    rc = edp_conn_group_new("edp-ambulance", &r->conns);
  if (!rc)
    rc = make_pipe(r->stop_pipe);
  if (!rc)
    rc = make_pipe(r->fail_pipe);
  for (int i = 0; !rc && i < r->n; i++)
    rc = setup_thread(r, i, err_text, err_len);
  for (int i = 0; !rc && i < r->n; i++) {
    if (pthread_create(&r->t[i].tid, NULL, thread_main, &r->t[i]))
      rc = EDP_EINTERNAL;
    else
      r->t[i].running = 1;
  }
  if (rc) {
    if (!err_text[0])
      snprintf(err_text, err_len, "%s", edp_strerror(rc));
    edp_amb_receiver_destroy(&r);
    return rc;
  }
  *out = r;
  return 0;
}

void edp_amb_receiver_stop(edp_amb_receiver *r) {
  if (!r)
    return;
  pthread_mutex_lock(&r->mu);
  int first = !r->stopping;
  r->stopping = 1;
  pthread_mutex_unlock(&r->mu);
  if (first && r->stop_pipe[1] >= 0) {
    ssize_t n = write(r->stop_pipe[1], "x", 1);
    (void)n;
  }
}

int edp_amb_receiver_fd(const edp_amb_receiver *r) {
  return r ? r->fail_pipe[0] : -1;
}

int edp_amb_receiver_error(edp_amb_receiver *r) {
  if (!r)
    return EDP_EINVAL;
  pthread_mutex_lock(&r->mu);
  int e = r->error;
  pthread_mutex_unlock(&r->mu);
  return e;
}

void edp_amb_receiver_destroy(edp_amb_receiver **rp) {
  if (!rp || !*rp)
    return;
  edp_amb_receiver *r = *rp;
  edp_amb_receiver_stop(r);
  for (int i = 0; r->t && i < r->n; i++) {
    if (r->t[i].running) {
      pthread_join(r->t[i].tid, NULL);
    } else {
      /* Set up but never started. */
      edp_conn_group_detach(r->conns, r->t[i].c);
      edp_conn_destroy(&r->t[i].c);
    }
    edp_worker_destroy(&r->t[i].w);
    free(r->t[i].lanes[0].v);
    free(r->t[i].lanes[1].v);
  }
  free(r->t);
  for (int i = 0; i < 2; i++) {
    if (r->stop_pipe[i] >= 0)
      close(r->stop_pipe[i]);
    if (r->fail_pipe[i] >= 0)
      close(r->fail_pipe[i]);
  }
  edp_conn_group_destroy(&r->conns);
  pthread_mutex_destroy(&r->mu);
  free(r);
  *rp = NULL;
}

void edp_amb_receiver_stats_get(edp_amb_receiver *r,
                                edp_amb_receiver_stats *out) {
  if (!r || !out)
    return;
  pthread_mutex_lock(&r->mu);
  *out = r->st;
  pthread_mutex_unlock(&r->mu);
}

void edp_amb_receiver_collect(const void *receiver, edp_metrics_out *out) {
  edp_amb_receiver *r = (edp_amb_receiver *)receiver; /* the lock only */
  edp_amb_receiver_stats st;
  edp_amb_receiver_stats_get(r, &st);
  char l[512] = "";
  edp_metrics_label(l, sizeof(l), "queue", r->base);
  /* Indexed by enum edp_amb_kind. */
  static const char *const lanes[2] = {"standard", "priority"};
  for (int k = 0; k < 2; k++) {
    char ll[560];
    snprintf(ll, sizeof(ll), "%s", l);
    edp_metrics_label(ll, sizeof(ll), "lane", lanes[k]);
    edp_metrics_messages(out, EDP_MSGS_PROCESSED, ll, st.processed[k]);
    edp_metrics_histogram(out, "edp_message_latency_seconds",
                          "From the sender's timestamp to the ack, per lane "
                          "(wall clocks of two processes).",
                          ll, &st.latency[k]);
  }
  edp_metrics_messages(out, EDP_MSGS_DEAD_LETTERED, l, st.dead_lettered);
  edp_metrics_messages(out, EDP_MSGS_REDELIVERED, l, st.redelivered);
  edp_metrics_counter(out, "edp_pattern_reconnects_total",
                      "Reconnects of the pattern's own connections.", l,
                      st.reconnects);
  edp_metrics_counter_f(out, "edp_priority_thread_busy_seconds_total",
                        "Handler time of the priority (ambulance) thread.", l,
                        (double)st.busy_us_priority_thread / 1e6);
  edp_conn_group_collect(r->conns, out);
}
