/*
 * edp_forwarding.c - event forwarding: at-least-once delivery between two
 * services over a durable queue (see edp_forwarding.h for the contract).
 *
 * The sender never blocks on one confirm per message: it keeps up to
 * confirm_window messages in flight and waits only when the window is
 * full. The receiver acks only after its handler succeeded; a failed
 * message is copied to the tail of its queue (or to the .dlq) and the
 * original acked only once the broker confirmed the copy, so a crash
 * anywhere in between duplicates a message at worst and never loses one.
 */
#include "edp_forwarding.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edp_idset.h"
#include "edp_metrics.h"
#include "edp_util.h"
#include "edp_worker.h"

/* Consecutive lost connections in one call before we give up. */
#define MAX_RECOVERIES 10

int edp_fwd_declare(edp_conn *c, const char *queue, const edp_queue_kind *k) {
  return edp_conn_declare_kind(c, queue, k, 1);
}

int64_t edp_fwd_delivery_count(const edp_delivery *d, int64_t cap) {
  int64_t n = 0;
  if (!d || !edp_delivery_header(d, "x-delivery-count"))
    return 0;
  if (edp_delivery_header_int(d, "x-delivery-count", &n) || n < 0 || n > cap)
    return cap;
  return n;
}

/* ---------- sender ---------- */

struct edp_fwd_sender {
  edp_conn *c;
  edp_fwd_sender_opts o;
  char *queue;
  edp_fwd_sender_stats st;
};

const char *edp_fwd_dead_reason(const edp_delivery *d) {
  static const char *const names[] = {EDP_FWD_HDR_REASON,
                                      "x-first-death-reason"};
  for (size_t i = 0; d && i < 2; i++) {
    const char *s = edp_delivery_header_str(d, names[i]);
    if (s)
      return s;
  }
  return NULL;
}

void edp_fwd_sender_opts_init(edp_fwd_sender_opts *o) {
  memset(o, 0, sizeof(*o));
  o->persistent = 1;
  o->confirm_window = 1024;
  o->confirm_timeout_ms = 30000;
}

static void sender_confirmed(void *ud, const edp_confirm *cf) {
  edp_fwd_sender *s = ud;
  edp_count_add(
      cf->status == EDP_CONFIRM_ACK ? &s->st.confirmed : &s->st.refused, 1);
  if (s->o.on_confirm)
    s->o.on_confirm(s->o.ud, cf);
}

int edp_fwd_sender_new(edp_conn *c, const edp_fwd_sender_opts *o,
                       edp_fwd_sender **out) {
  if (!c || !o || !out || !o->queue)
    return EDP_EINVAL;
  *out = NULL;
  int rc = edp_fwd_declare(c, o->queue, &o->kind);
  if (rc)
    return rc;
  edp_fwd_sender *s = calloc(1, sizeof(*s));
  if (!s || !(s->queue = strdup(o->queue))) {
    free(s);
    return EDP_ENOMEM;
  }
  s->c = c;
  s->o = *o;
  s->o.queue = s->queue;
  if (s->o.confirm_window) {
    if ((rc = edp_conn_confirm_select(c))) {
      edp_fwd_sender_destroy(&s);
      return rc;
    }
    edp_conn_on_confirm(c, sender_confirmed, s);
  }
  *out = s;
  return 0;
}

void edp_fwd_sender_destroy(edp_fwd_sender **sp) {
  if (!sp || !*sp)
    return;
  if ((*sp)->o.confirm_window)
    edp_conn_on_confirm((*sp)->c, NULL, NULL);
  free((*sp)->queue);
  free(*sp);
  *sp = NULL;
}

/* Waits until at most max messages are in flight, recovering from a lost
 * connection on the way. */
static int sender_drain(edp_fwd_sender *s, size_t max) {
  edp_recovery r = {0};
  int rc =
      edp_conn_wait_confirms_recover(s->c, max, s->o.confirm_timeout_ms, &r);
  edp_count_add(&s->st.reconnects, r.reconnects);
  edp_count_add(&s->st.republished, r.republished);
  return rc;
}

int edp_fwd_send(edp_fwd_sender *s, const char *message_id, const void *body,
                 size_t len, const char *content_type) {
  return edp_fwd_send_traced(s, message_id, body, len, content_type, NULL);
}

static int send_impl(edp_fwd_sender *s, const char *message_id,
                     const void *body, size_t len, const char *content_type,
                     const edp_trace *t, edp_body_done_fn done, void *ud) {
  if (!s || !message_id || !message_id[0] || (len && !body))
    return EDP_EINVAL;
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = s->queue;
  m.body = body;
  m.body_len = len;
  m.persistent = s->o.persistent;
  /* mandatory: if the queue was deleted, the broker returns the message
   * instead of dropping it, and the caller hears about it. */
  m.mandatory = 1;
  m.message_id = message_id;
  m.content_type = content_type;
  m.timestamp = (int64_t)time(NULL);
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_header h = {EDP_TRACE_HDR_PARENT, edp_trace_format(t, tp, sizeof(tp)), 0};
  if (t) {
    m.headers = &h;
    m.n_headers = 1;
  }
  edp_recovery r = {0};
  int rc =
      done ? edp_conn_publish_window_lent(s->c, &m, s->o.confirm_window,
                                          s->o.confirm_timeout_ms, &r, done, ud)
           : edp_conn_publish_window(s->c, &m, s->o.confirm_window,
                                     s->o.confirm_timeout_ms, &r);
  edp_count_add(&s->st.reconnects, r.reconnects);
  edp_count_add(&s->st.republished, r.republished);
  if (!rc)
    edp_count_add(&s->st.sent, 1);
  return rc;
}

int edp_fwd_send_traced(edp_fwd_sender *s, const char *message_id,
                        const void *body, size_t len, const char *content_type,
                        const edp_trace *t) {
  return send_impl(s, message_id, body, len, content_type, t, NULL, NULL);
}

int edp_fwd_send_lent(edp_fwd_sender *s, const char *message_id,
                      const void *body, size_t len, const char *content_type,
                      const edp_trace *t, edp_body_done_fn done, void *ud) {
  if (!done)
    return EDP_EINVAL;
  return send_impl(s, message_id, body, len, content_type, t, done, ud);
}

int edp_fwd_flush(edp_fwd_sender *s) {
  if (!s)
    return EDP_EINVAL;
  return s->o.confirm_window ? sender_drain(s, 0) : 0;
}

void edp_fwd_sender_stats_get(const edp_fwd_sender *s,
                              edp_fwd_sender_stats *out) {
  if (!s || !out)
    return;
  out->sent = edp_count_read(&s->st.sent);
  out->confirmed = edp_count_read(&s->st.confirmed);
  out->refused = edp_count_read(&s->st.refused);
  out->republished = edp_count_read(&s->st.republished);
  out->reconnects = edp_count_read(&s->st.reconnects);
}

void edp_fwd_sender_collect(const void *sender, edp_metrics_out *out) {
  const edp_fwd_sender *s = sender;
  char l[512] = "";
  edp_metrics_label(l, sizeof(l), "queue", s->queue);
  edp_metrics_messages(out, EDP_MSGS_SENT, l, edp_count_read(&s->st.sent));
}

/* ---------- receiver ---------- */

/* Handlers run back to back in one handoff to the worker (a batch): at
 * most BATCH_MAX deliveries, all of them already received, and no new
 * handler starts once BATCH_MS passed since the batch's first one. */
#define BATCH_MAX 256
#define BATCH_MS 2

/* One delivery of a batch and what its handler said. */
typedef struct batch_slot {
  edp_delivery d;
  int64_t retries;
  char bad[96];     /* why x-edp-retries did not count, or "" */
  char reason[256]; /* the handler's reason for a failure */
  int h;            /* the handler's result */
  int traced;       /* span is the receiver's span for d */
  edp_trace span;
} batch_slot;

struct edp_fwd_receiver {
  edp_conn *c;
  edp_worker *w; /* runs the handler while we service c */
  edp_fwd_receiver_opts o;
  char *queue, *dlq;
  edp_idset *seen;
  edp_fwd_receiver_stats st;
  batch_slot *slots; /* BATCH_MAX of them, allocated on the first batch */
  size_t n_held;     /* slots[0..n_held) were taken, not yet handled */
  size_t n_ran;      /* handlers the last batch ran (the worker sets it) */
};

void edp_fwd_receiver_opts_init(edp_fwd_receiver_opts *o) {
  memset(o, 0, sizeof(*o));
  o->prefetch = 32;
  o->max_retries = 3;
}

int edp_fwd_receiver_new(edp_conn *c, const edp_fwd_receiver_opts *o,
                         edp_fwd_receiver **out) {
  if (!c || !o || !out || !o->queue || !o->handler || o->max_retries < 0 ||
      o->prefetch < 0)
    return EDP_EINVAL;
  *out = NULL;
  edp_fwd_receiver *r = calloc(1, sizeof(*r));
  if (!r)
    return EDP_ENOMEM;
  r->c = c;
  r->o = *o;
  r->queue = strdup(o->queue);
  r->dlq = malloc(strlen(o->queue) + 5);
  int rc = r->queue && r->dlq ? 0 : EDP_ENOMEM;
  if (!rc) {
    sprintf(r->dlq, "%s.dlq", o->queue);
    r->o.queue = r->queue;
  }
  if (!rc && o->dedup_window)
    rc = edp_idset_new(o->dedup_window, &r->seen);
  if (!rc)
    rc = edp_worker_new(&r->w);
  if (!rc)
    rc = edp_fwd_declare(c, o->queue, &o->kind);
  if (!rc)
    rc = edp_conn_qos(c, o->prefetch);
  if (!rc)
    rc = edp_conn_confirm_select(c);
  if (!rc)
    rc = edp_conn_consume(c, o->queue, NULL, NULL, 0);
  if (rc) {
    edp_fwd_receiver_destroy(&r);
    return rc;
  }
  *out = r;
  return 0;
}

void edp_fwd_receiver_destroy(edp_fwd_receiver **rp) {
  if (!rp || !*rp)
    return;
  edp_fwd_receiver *r = *rp;
  edp_worker_destroy(&r->w);
  edp_idset_destroy(&r->seen);
  /* Held deliveries were never handled nor acked: closing the channel
   * gives them back to the queue. */
  for (size_t i = 0; r->slots && i < r->n_held; i++)
    edp_delivery_clear(&r->slots[i].d);
  free(r->slots);
  free(r->queue);
  free(r->dlq);
  free(r);
  *rp = NULL;
}

static void emit(edp_fwd_receiver *r, int ev, const edp_delivery *d,
                 const char *reason) {
  if (r->o.on_event)
    r->o.on_event(r->o.ud, ev, d, reason);
}

int edp_fwd_publish_copy(edp_conn *c, const edp_delivery *d,
                         const edp_fwd_copy *o, int timeout_ms) {
  if (!c || !d || !o || !o->target || !o->queue || !o->reason ||
      o->n_extra > 4 || (o->n_extra && !o->extra))
    return EDP_EINVAL;
  edp_header h[12];
  size_t n = 0;
  h[n++] = (edp_header){EDP_FWD_HDR_RETRIES, NULL, o->retries};
  h[n++] = (edp_header){EDP_FWD_HDR_REASON, o->reason, 0};
  h[n++] = (edp_header){EDP_FWD_HDR_QUEUE, o->queue, 0};
  /* A retry copy comes back through the default exchange under the
   * queue's name: the first hop's exchange and key are the ones to keep. */
  int64_t prior = 0;
  if (edp_delivery_header_int(d, EDP_FWD_HDR_RETRIES, &prior) || prior < 1 ||
      !edp_delivery_header(d, EDP_FWD_HDR_EXCHANGE) ||
      !edp_delivery_header(d, EDP_FWD_HDR_ROUTING_KEY)) {
    h[n++] =
        (edp_header){EDP_FWD_HDR_EXCHANGE, d->exchange ? d->exchange : "", 0};
    h[n++] = (edp_header){EDP_FWD_HDR_ROUTING_KEY,
                          d->routing_key ? d->routing_key : "", 0};
  }
  edp_msg m;
  edp_msg_from_delivery(&m, d);
  m.routing_key = o->target;
  if (d->user_id && strcmp(d->user_id, edp_conn_user(c))) {
    m.user_id = NULL;
    h[n++] = (edp_header){EDP_FWD_HDR_USER_ID, d->user_id, 0};
  }
  if (o->dead && d->expiration) {
    m.expiration = NULL;
    h[n++] = (edp_header){EDP_FWD_HDR_EXPIRATION, d->expiration, 0};
  }
  int own_trace = 0;
  for (size_t k = 0; k < o->n_extra; k++) {
    h[n++] = o->extra[k];
    own_trace |=
        o->extra[k].key && !strcmp(o->extra[k].key, EDP_TRACE_HDR_PARENT);
  }
  /* A copy is a new hop of the message's trace. */
  edp_trace t;
  char tp[EDP_TRACEPARENT_LEN + 1];
  if (!own_trace && !edp_trace_from_delivery(d, &t)) {
    edp_trace_child(&t, &t);
    h[n++] = (edp_header){EDP_TRACE_HDR_PARENT,
                          edp_trace_format(&t, tp, sizeof(tp)), 0};
  }
  m.headers = h;
  m.n_headers = n;
  return edp_conn_publish_confirmed(c, &m, timeout_ms);
}

/* Copies a failed message to target with the retry count and reason, and
 * waits for the broker's confirm. Returns 0 only if the copy is safe. */
static int forward_copy(edp_fwd_receiver *r, const edp_delivery *d, int dead,
                        int64_t retries, const char *reason,
                        const edp_trace *span) {
  /* The copy continues the trace from our handling span. */
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_header extra = {EDP_TRACE_HDR_PARENT,
                      edp_trace_format(span, tp, sizeof(tp)), 0};
  edp_fwd_copy o = {.target = dead ? r->dlq : r->queue,
                    .queue = r->queue,
                    .retries = retries,
                    .reason = reason,
                    .dead = dead,
                    .extra = span ? &extra : NULL,
                    .n_extra = span ? 1 : 0};
  return edp_fwd_publish_copy(r->c, d, &o, 30000);
}

/* The retries a delivery already had. x-edp-retries comes from whoever
 * published the message, so only an integer in [0, max_retries] counts;
 * anything else (negative, too big, another type) means the retries are
 * used up and *why says so: a forged count can neither keep a failing
 * message cycling forever nor overflow. */
static int64_t retries_of(const edp_fwd_receiver *r, const edp_delivery *d,
                          char *why, size_t why_len) {
  const edp_value *v = edp_delivery_header(d, EDP_FWD_HDR_RETRIES);
  int64_t n = 0;
  why[0] = '\0';
  if (!v)
    return 0;
  if (edp_delivery_header_int(d, EDP_FWD_HDR_RETRIES, &n))
    snprintf(why, why_len, "; x-edp-retries of type '%c' is not an integer",
             v->kind > 32 && v->kind < 127 ? v->kind : '?');
  else if (n < 0 || n > r->o.max_retries)
    snprintf(why, why_len, "; x-edp-retries %lld is not in [0, %d]",
             (long long)n, r->o.max_retries);
  else
    return n;
  return r->o.max_retries;
}

static int receiver_recover(edp_fwd_receiver *r) {
  int rc = edp_conn_reconnect(r->c);
  if (!rc)
    edp_count_add(&r->st.reconnects, 1);
  return rc;
}

/* Acks (or nacks with requeue); a lost channel means the broker redelivers
 * the message, which is the safe outcome, so only a lost connection needs
 * action. */
static int settle(edp_fwd_receiver *r, const edp_delivery *d, int ack) {
  int rc = ack ? edp_conn_ack(r->c, d->epoch, d->tag, 0)
               : edp_conn_nack(r->c, d->epoch, d->tag, 0, 1);
  if (rc == EDP_ECLOSED)
    return receiver_recover(r);
  return rc == EDP_ESTALE ? 0 : rc;
}

/* Runs the handlers of a batch in order on the worker thread. Each one
 * after the first starts only while the batch is younger than BATCH_MS,
 * so a slow handler makes a batch of one (as unbatched) and a stop waits
 * for one handler at most; the rest stay held for the next batch. */
static int call_batch(void *ud) {
  edp_fwd_receiver *r = ud;
  int64_t start = edp_now_ms();
  size_t i = 0;
  for (; i < r->n_held; i++) {
    if (i > 0 && edp_now_ms() - start >= BATCH_MS)
      break;
    batch_slot *b = &r->slots[i];
    b->reason[0] = '\0';
    /* The histogram has one writer: this worker thread. */
    int64_t t0 = edp_conn_timing(r->c) ? edp_now_us() : 0;
    edp_trace_set_current(b->traced ? &b->span : NULL);
    b->h = r->o.handler(r->o.ud, &b->d, b->reason, sizeof(b->reason));
    edp_trace_set_current(NULL);
    if (t0)
      edp_hist_observe(&r->st.processing, edp_now_us() - t0);
  }
  r->n_ran = i;
  return 0;
}

/* Settles a delivery whose handler returned h: an ack after a success, a
 * retry or dead-letter copy (then the ack) after a failure. */
static int finish_traced(edp_fwd_receiver *r, batch_slot *b, int defer_ack);

/* The receiver's span for the delivery is the calling thread's current
 * span while it is settled and reported, so that on_event sees it as the
 * handler did. */
static int finish(edp_fwd_receiver *r, batch_slot *b, int defer_ack) {
  edp_trace_set_current(b->traced ? &b->span : NULL);
  int rc = finish_traced(r, b, defer_ack);
  edp_trace_set_current(NULL);
  return rc;
}

static int finish_traced(edp_fwd_receiver *r, batch_slot *b, int defer_ack) {
  const edp_delivery *d = &b->d;
  int keyed = r->seen && d->message_id && d->message_id[0];
  if (b->h != 0)
    edp_count_add(&r->st.failed, 1);
  if (b->h == 0) {
    int rc = defer_ack ? 0 : settle(r, d, 1);
    if (!rc && keyed && edp_idset_add(r->seen, d->message_id) < 0)
      rc = EDP_ENOMEM;
    edp_count_add(&r->st.processed, 1);
    emit(r, EDP_FWD_PROCESSED, d, "");
    return rc;
  }
  char *reason = b->reason;
  size_t cap = sizeof(b->reason);
  if (!reason[0])
    snprintf(reason, cap, "handler failed");
  if (b->bad[0]) {
    size_t len = strlen(reason);
    if (len + strlen(b->bad) >= cap)
      len = cap - strlen(b->bad) - 1;
    snprintf(reason + len, cap - len, "%s", b->bad);
  }
  int dead = b->retries >= r->o.max_retries;
  int rc = forward_copy(r, d, dead, b->retries + 1, reason,
                        b->traced ? &b->span : NULL);
  if (rc == EDP_ECLOSED)
    return receiver_recover(r); /* the original comes back redelivered */
  if (rc) {
    /* The copy is not safe: give the original back to the queue. */
    int src = settle(r, d, 0);
    return src ? src : rc;
  }
  if (dead)
    edp_count_add(&r->st.dead_lettered, 1);
  else
    edp_count_add(&r->st.retried, 1);
  emit(r, dead ? EDP_FWD_DEAD_LETTERED : EDP_FWD_RETRIED, d, reason);
  return settle(r, d, 1);
}

/* A delivery whose message_id the dedup window has seen is acked unhandled
 * (and freed). Returns 1 if d was one (*rc: the ack's result), else 0. */
static int duplicate(edp_fwd_receiver *r, edp_delivery *d, int *rc) {
  /* An empty message_id names nothing: it is never a dedup key. */
  if (!r->seen || !d->message_id || !d->message_id[0] ||
      !edp_idset_contains(r->seen, d->message_id))
    return 0;
  edp_count_add(&r->st.duplicates, 1);
  emit(r, EDP_FWD_DUPLICATE, d, "");
  *rc = settle(r, d, 1);
  edp_delivery_clear(d);
  return 1;
}

/* Non-zero if d's message_id is among the first n held deliveries': the
 * second one waits until the first was handled, so that dedup sees it. */
static int held_id(const edp_fwd_receiver *r, size_t n, const edp_delivery *d) {
  if (!r->seen || !d->message_id || !d->message_id[0])
    return 0;
  for (size_t i = 0; i < n; i++)
    if (r->slots[i].d.message_id &&
        !strcmp(r->slots[i].d.message_id, d->message_id))
      return 1;
  return 0;
}

/* How many of the held deliveries, at most max, can run as one batch. */
static size_t batch_len(const edp_fwd_receiver *r, size_t max) {
  size_t n = 1;
  while (n < r->n_held && n < max && !held_id(r, n, &r->slots[n].d))
    n++;
  return n;
}

/* Holds d for the next batch. */
static void hold(edp_fwd_receiver *r, const edp_delivery *d) {
  batch_slot *b = &r->slots[r->n_held++];
  b->d = *d;
  if (d->redelivered)
    edp_count_add(&r->st.redelivered, 1);
  b->retries = retries_of(r, &b->d, b->bad, sizeof(b->bad));
  /* A delivery that ended unsettled before (a consumer crashed or lost
   * its connection holding it: the broker's x-delivery-count) was a
   * failed attempt too. The count starts again at 0 in a retry copy, so
   * the copy carries the sum in x-edp-retries. */
  b->retries += edp_fwd_delivery_count(&b->d, r->o.max_retries);
  if (b->retries > r->o.max_retries)
    b->retries = r->o.max_retries;
  /* The receiver's span: a child of the context the message carries. */
  b->traced = edp_trace_delivery_span(&b->d, &b->span);
}

/* Gives the held deliveries back to the queue (a stop came: their
 * handlers must not start), or drops them when their channel is gone
 * (the broker redelivers them anyway). No reconnect here: a lost
 * connection has given them back already. */
static void release_held(edp_fwd_receiver *r) {
  for (size_t i = 0; i < r->n_held; i++) {
    const edp_delivery *d = &r->slots[i].d;
    edp_conn_nack(r->c, d->epoch, d->tag, 0, 1);
    edp_delivery_clear(&r->slots[i].d);
  }
  r->n_held = 0;
}

/* Taking more deliveries for a batch met err (a frame it read closed the
 * channel or the connection, or the stop fd fired): no handler of the
 * batch has started, so all of it goes back to the queue, and err is
 * handled as edp_fwd_receive() handles it before a message. */
static int gather_failed(edp_fwd_receiver *r, int err) {
  release_held(r);
  if (err == EDP_ECLOSED)
    return receiver_recover(r);
  return err == EDP_ECHANNEL ? 0 : err; /* restored with its consumer */
}

int edp_fwd_receive_batch(edp_fwd_receiver *r, int timeout_ms, size_t max) {
  if (!r || !max)
    return EDP_EINVAL;
  if (!r->slots && !(r->slots = calloc(BATCH_MAX, sizeof(*r->slots))))
    return EDP_ENOMEM;
  if (max > BATCH_MAX)
    max = BATCH_MAX;
  /* Held deliveries of an earlier channel are the broker's again. */
  if (r->n_held && r->slots[0].d.epoch != edp_conn_epoch(r->c))
    release_held(r);
  /* The first held one may have been held as the second of an id. */
  int rc = 0;
  if (r->n_held && duplicate(r, &r->slots[0].d, &rc)) {
    memmove(r->slots, r->slots + 1, --r->n_held * sizeof(*r->slots));
    return rc;
  }
  for (int i = 0; r->n_held == 0; i++) {
    if (i == MAX_RECOVERIES)
      return EDP_ECONNECT;
    edp_delivery d;
    rc = edp_worker_receive(r->w, r->c, &d, timeout_ms);
    if (rc == EDP_ECLOSED) {
      if ((rc = receiver_recover(r)))
        return rc;
      continue;
    }
    if (rc == EDP_ECHANNEL)
      continue; /* the channel was restored with its consumer */
    if (rc)
      return rc;
    if (duplicate(r, &d, &rc))
      return rc;
    hold(r, &d);
  }
  /* Deliveries that are already here join the batch: one handoff to the
   * worker for all of them instead of one each. A second delivery of an
   * id in the batch ends it (dedup must see the first one handled). */
  size_t n = batch_len(r, max);
  /* ... up to the connection's read-ahead in body bytes: each delivery
   * gathered lets the socket read another, and 64 MiB of 1 MiB bodies
   * gathered cost more in fresh memory than they saved in handoffs. */
  size_t ahead = edp_conn_read_ahead(r->c), bytes = 0;
  for (size_t i = 0; i < r->n_held; i++)
    bytes += r->slots[i].d.body_len;
  while (n < max && n == r->n_held && (!ahead || bytes < ahead)) {
    /* Not only parsed deliveries: bytes already read, and what the socket
     * holds (one poll and one read, no wait). Over TLS a read brings a
     * record of a few small messages, and batches of the parsed ones
     * alone stayed small (8 messages, against 40 in plain). */
    edp_delivery d;
    int grc = edp_conn_receive(r->c, &d, 0);
    if (grc == EDP_ETIMEOUT)
      break;
    if (grc)
      return gather_failed(r, grc);
    if (duplicate(r, &d, &rc)) {
      if (rc)
        break;
      continue;
    }
    n += !held_id(r, n, &d);
    bytes += d.body_len;
    hold(r, &d);
  }
  /* The handlers run on the worker while this thread services the
   * connection. Whatever happened to the connection meanwhile, the
   * settling below meets it: a lost connection refuses the ack (the
   * broker redelivers the message), a channel or consumer error comes back
   * from the next edp_worker_receive(), and a stop stays readable on the
   * stop fd. Only a handler that never ran must not be settled. */
  size_t all = r->n_held;
  r->n_held = n;
  r->n_ran = 0;
  int wrc = edp_worker_run(r->w, r->c, call_batch, r, NULL);
  r->n_held = all;
  if (wrc == EDP_EINVAL)
    return wrc;
  /* With coalesce_acks the successes of the batch are acked by one
   * basic.ack with multiple set, sent where the last of their own acks
   * would have gone: after every handler of the batch returned, so no
   * message is acked earlier than without it. It covers exactly this
   * batch: deliveries come in tag order, every earlier one was settled
   * (by an earlier batch, as a duplicate, or a failure's own ack after
   * its copy was confirmed) and the ones not run have higher tags. */
  size_t ran = r->n_ran;
  int defer = r->o.coalesce_acks && ran > 1;
  const edp_delivery *last_ok = NULL;
  /* The acks of a batch go out together: held in the socket (TCP_CORK)
   * until the last one is written, they leave in a few packets instead of
   * one each (the kernel's send path per packet was most of the
   * receiver's CPU per message beyond raw rabbitmq-c's). Every ack is
   * still its own basic.ack, written after its handler succeeded. A
   * failed message's copy waits for the broker's confirm, so the hold
   * ends before it. */
  int corked = ran > 1 && !defer && edp_conn_cork(r->c, 1) == 0;
  for (size_t i = 0; i < ran && !rc; i++) {
    if (corked && r->slots[i].h != 0) {
      edp_conn_cork(r->c, 0);
      corked = 0;
    }
    rc = finish(r, &r->slots[i], defer);
    if (r->slots[i].h == 0)
      last_ok = &r->slots[i].d;
  }
  if (corked)
    edp_conn_cork(r->c, 0);
  if (defer && last_ok) {
    int arc = edp_conn_ack(r->c, last_ok->epoch, last_ok->tag, 1);
    if (arc == EDP_ECLOSED)
      arc = receiver_recover(r);
    if (arc && arc != EDP_ESTALE && !rc)
      rc = arc;
  }
  for (size_t i = 0; i < ran; i++)
    edp_delivery_clear(&r->slots[i].d);
  r->n_held -= ran;
  memmove(r->slots, r->slots + ran, r->n_held * sizeof(*r->slots));
  if (wrc == EDP_ESTOPPED)
    release_held(r);
  return rc;
}

int edp_fwd_receive(edp_fwd_receiver *r, int timeout_ms) {
  return edp_fwd_receive_batch(r, timeout_ms, 1);
}

void edp_fwd_receiver_stats_get(const edp_fwd_receiver *r,
                                edp_fwd_receiver_stats *out) {
  if (!r || !out)
    return;
  out->processed = edp_count_read(&r->st.processed);
  out->retried = edp_count_read(&r->st.retried);
  out->dead_lettered = edp_count_read(&r->st.dead_lettered);
  out->duplicates = edp_count_read(&r->st.duplicates);
  out->redelivered = edp_count_read(&r->st.redelivered);
  out->reconnects = edp_count_read(&r->st.reconnects);
  out->failed = edp_count_read(&r->st.failed);
  edp_hist_read(&r->st.processing, &out->processing);
}

void edp_fwd_receiver_collect(const void *receiver, edp_metrics_out *out) {
  const edp_fwd_receiver *r = receiver;
  edp_fwd_receiver_stats st;
  edp_fwd_receiver_stats_get(r, &st);
  char l[512] = "";
  edp_metrics_label(l, sizeof(l), "queue", r->queue);
  edp_metrics_messages(out, EDP_MSGS_PROCESSED, l, st.processed);
  edp_metrics_messages(out, EDP_MSGS_FAILED, l, st.failed);
  edp_metrics_messages(out, EDP_MSGS_RETRIED, l, st.retried);
  edp_metrics_messages(out, EDP_MSGS_DEAD_LETTERED, l, st.dead_lettered);
  edp_metrics_messages(out, EDP_MSGS_DUPLICATES, l, st.duplicates);
  edp_metrics_messages(out, EDP_MSGS_REDELIVERED, l, st.redelivered);
  if (edp_conn_timing(r->c))
    edp_metrics_histogram(out, "edp_processing_duration_seconds",
                          "Time the handler took per message.", l,
                          &st.processing);
}
