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

int edp_fwd_send_traced(edp_fwd_sender *s, const char *message_id,
                        const void *body, size_t len, const char *content_type,
                        const edp_trace *t) {
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
  int rc = edp_conn_publish_window(s->c, &m, s->o.confirm_window,
                                   s->o.confirm_timeout_ms, &r);
  edp_count_add(&s->st.reconnects, r.reconnects);
  edp_count_add(&s->st.republished, r.republished);
  if (!rc)
    edp_count_add(&s->st.sent, 1);
  return rc;
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

struct edp_fwd_receiver {
  edp_conn *c;
  edp_worker *w; /* runs the handler while we service c */
  edp_fwd_receiver_opts o;
  char *queue, *dlq;
  edp_idset *seen;
  edp_fwd_receiver_stats st;
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

/* One handler call, as the worker thread runs it. */
typedef struct handler_call {
  edp_fwd_receiver *r;
  const edp_delivery *d;
  char *reason;
  size_t reason_len;
  const edp_trace *span; /* NULL: the delivery carries no trace */
} handler_call;

static int call_handler(void *ud) {
  handler_call *hc = ud;
  edp_trace_set_current(hc->span);
  int rc = hc->r->o.handler(hc->r->o.ud, hc->d, hc->reason, hc->reason_len);
  edp_trace_set_current(NULL);
  return rc;
}

static int handle_traced(edp_fwd_receiver *r, const edp_delivery *d,
                         const edp_trace *span);

/* The receiver's span for d: a child of the context d carries. It is the
 * calling thread's current span while d is handled and reported, so that
 * on_event sees it as the handler does. */
static int handle(edp_fwd_receiver *r, const edp_delivery *d) {
  edp_trace in, span;
  int traced = edp_trace_from_delivery(d, &in) == 0;
  if (traced) {
    edp_trace_child(&in, &span);
    edp_trace_set_current(&span);
  }
  int rc = handle_traced(r, d, traced ? &span : NULL);
  edp_trace_set_current(NULL);
  return rc;
}

static int handle_traced(edp_fwd_receiver *r, const edp_delivery *d,
                         const edp_trace *span) {
  if (d->redelivered)
    edp_count_add(&r->st.redelivered, 1);
  /* An empty message_id names nothing: it is never a dedup key. */
  int keyed = r->seen && d->message_id && d->message_id[0];
  if (keyed && edp_idset_contains(r->seen, d->message_id)) {
    edp_count_add(&r->st.duplicates, 1);
    emit(r, EDP_FWD_DUPLICATE, d, "");
    return settle(r, d, 1);
  }
  char bad[96];
  int64_t retries = retries_of(r, d, bad, sizeof(bad));
  /* A delivery that ended unsettled before (a consumer crashed or lost
   * its connection holding it: the broker's x-delivery-count) was a
   * failed attempt too. The count starts again at 0 in a retry copy, so
   * the copy carries the sum in x-edp-retries. */
  retries += edp_fwd_delivery_count(d, r->o.max_retries);
  if (retries > r->o.max_retries)
    retries = r->o.max_retries;
  char reason[256] = "";
  /* The handler runs on the worker while this thread services the
   * connection. Whatever happened to the connection meanwhile, the
   * settling below meets it: a lost connection refuses the ack (the
   * broker redelivers the message), a channel or consumer error comes back
   * from the next edp_worker_receive(), and a stop stays readable on the
   * stop fd. Only a handler that never ran must not be settled. */
  handler_call hc = {r, d, reason, sizeof(reason), span};
  int h = -1;
  int64_t t0 = edp_conn_timing(r->c) ? edp_now_us() : 0;
  int wrc = edp_worker_run(r->w, r->c, call_handler, &hc, &h);
  if (wrc == EDP_EINVAL)
    return wrc;
  if (t0)
    edp_hist_observe(&r->st.processing, edp_now_us() - t0);
  if (h != 0)
    edp_count_add(&r->st.failed, 1);
  if (h == 0) {
    int rc = settle(r, d, 1);
    if (!rc && keyed && edp_idset_add(r->seen, d->message_id) < 0)
      rc = EDP_ENOMEM;
    edp_count_add(&r->st.processed, 1);
    emit(r, EDP_FWD_PROCESSED, d, "");
    return rc;
  }
  if (!reason[0])
    snprintf(reason, sizeof(reason), "handler failed");
  if (bad[0]) {
    size_t len = strlen(reason);
    if (len + strlen(bad) >= sizeof(reason))
      len = sizeof(reason) - strlen(bad) - 1;
    snprintf(reason + len, sizeof(reason) - len, "%s", bad);
  }
  int dead = retries >= r->o.max_retries;
  int rc = forward_copy(r, d, dead, retries + 1, reason, span);
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

int edp_fwd_receive(edp_fwd_receiver *r, int timeout_ms) {
  if (!r)
    return EDP_EINVAL;
  for (int i = 0; i < MAX_RECOVERIES; i++) {
    edp_delivery d;
    int rc = edp_worker_receive(r->w, r->c, &d, timeout_ms);
    if (rc == EDP_ECLOSED) {
      if ((rc = receiver_recover(r)))
        return rc;
      continue;
    }
    if (rc == EDP_ECHANNEL)
      continue; /* the channel was restored with its consumer */
    if (rc)
      return rc;
    rc = handle(r, &d);
    edp_delivery_clear(&d);
    return rc;
  }
  return EDP_ECONNECT;
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
