/*
 * edp_forwarding.h - the event forwarding pattern: no message lost
 * between two services.
 *
 * Sender: persistent messages to a durable queue, publisher confirms
 * pipelined with a window; a message counts as sent only when the broker
 * confirmed it, and after a lost connection everything unconfirmed is
 * published again (so a receiver may see a message twice, never zero
 * times).
 *
 * Receiver: manual ack only after the handler returned success. A failed
 * message goes back to the tail of its queue with a retry count, up to
 * max_retries, then to "<queue>.dlq" with the reason in a header; the
 * original is acked only after the broker confirmed the copy. Optional
 * dedup drops message_ids seen in a bounded window.
 *
 * Both sides take an open edp_conn that they use from the calling thread
 * only, and reconnect it themselves when it is lost. The receiver runs the
 * handler on a worker thread of its own (edp_worker.h) while the calling
 * thread keeps servicing the connection (heartbeats, confirms,
 * deliveries), so a handler may take minutes.
 */
#ifndef EDP_FORWARDING_H
#define EDP_FORWARDING_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"
#include "edp_trace.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Header names the receiver sets on retried and dead-lettered messages
 * (docs/forwarding.md compares them with Spring AMQP's and x-death). */
#define EDP_FWD_HDR_RETRIES "x-edp-retries"
#define EDP_FWD_HDR_REASON "x-edp-reason"
#define EDP_FWD_HDR_QUEUE "x-edp-original-queue"
#define EDP_FWD_HDR_EXCHANGE "x-edp-original-exchange"
#define EDP_FWD_HDR_ROUTING_KEY "x-edp-original-routing-key"
#define EDP_FWD_HDR_USER_ID "x-edp-original-user-id"
#define EDP_FWD_HDR_EXPIRATION "x-edp-original-expiration"

/* What a retry or dead-letter copy adds to the delivery it copies. */
typedef struct edp_fwd_copy {
  const char *target;      /* queue to publish to (default exchange) */
  const char *queue;       /* the queue the delivery came from */
  int64_t retries;         /* x-edp-retries of the copy */
  const char *reason;      /* x-edp-reason */
  int dead;                /* a dead-letter copy: see below */
  const edp_header *extra; /* more headers, at most 4 (may be NULL) */
  size_t n_extra;
} edp_fwd_copy;

/* Publishes a faithful copy of d to o->target and waits for its confirm
 * (edp_conn_publish_confirmed): body, every property and every header
 * unchanged, plus x-edp-retries, x-edp-reason, x-edp-original-queue and,
 * unless d is already a retry copy (x-edp-retries >= 1 with both present),
 * x-edp-original-exchange and -routing-key. A traced delivery (a valid
 * traceparent header) gives the copy a traceparent with the same trace id
 * and a new span id, unless extra carries one (the forwarding receiver
 * passes its handling span); tracestate travels unchanged. Two properties can't
 * always travel: a user_id other than c's login user (the broker would close
 * the channel, 406) moves to x-edp-original-user-id; a dead-letter copy's
 * expiration moves to x-edp-original-expiration, so that it does not
 * expire in the .dlq (what RabbitMQ's own dead-lettering does). Returns 0
 * once the broker confirmed the copy, else an error of
 * edp_conn_publish_confirmed() (EDP_ESTOPPED: nothing was sent) or
 * EDP_EINVAL. */
int edp_fwd_publish_copy(edp_conn *c, const edp_delivery *d,
                         const edp_fwd_copy *o, int timeout_ms);

/* Declares queue (durable, of kind k: NULL = classic) and its dead-letter
 * queue "<queue>.dlq". Sender and receiver must give the same kind: the
 * broker refuses a queue declared again with other arguments. Returns 0
 * or an edp_conn error (EDP_EPRECONDITION if the queue exists with other
 * arguments, EDP_EINVAL for a bad kind). */
int edp_fwd_declare(edp_conn *c, const char *queue, const edp_queue_kind *k);

/* The broker's count of earlier deliveries of d that ended unsettled
 * (x-delivery-count, set by quorum queues: a consumer that crashed or
 * lost its connection with the message in hand), 0 when absent. Only a
 * value in [0, cap] counts; anything else reads as cap. */
int64_t edp_fwd_delivery_count(const edp_delivery *d, int64_t cap);

/* Why d is in a dead-letter queue: x-edp-reason where edp put it there,
 * else x-first-death-reason where the broker did ("delivery_limit",
 * "rejected", "expired", "maxlen"), else NULL. The string lives as d. */
const char *edp_fwd_dead_reason(const edp_delivery *d);

/* ---- sender ---- */

typedef struct edp_fwd_sender edp_fwd_sender;

typedef struct edp_fwd_sender_opts {
  const char *queue;      /* required; declared with its .dlq */
  edp_queue_kind kind;    /* the queue's kind: the receiver's must match */
  int persistent;         /* default 1 */
  size_t confirm_window;  /* messages in flight, default 1024;
                             0 = no confirms (fire-and-forget, unsafe) */
  int confirm_timeout_ms; /* longest wait for the broker, default 30000 */
  /* Called once per message the broker took (status EDP_CONFIRM_ACK) or
   * refused (NACK, RETURNED); cf->message_id identifies it. */
  edp_confirm_fn on_confirm;
  void *ud;
} edp_fwd_sender_opts;

void edp_fwd_sender_opts_init(edp_fwd_sender_opts *o);

/* Creates a sender on c (not owned), declares the queues and enables
 * confirm mode. Errors: EDP_EINVAL, EDP_ENOMEM, edp_conn errors. */
int edp_fwd_sender_new(edp_conn *c, const edp_fwd_sender_opts *o,
                       edp_fwd_sender **out);

/* Frees the sender (not its connection); sets *s to NULL; accepts NULL. */
void edp_fwd_sender_destroy(edp_fwd_sender **s);

/* Publishes one message with message_id (required, the receiver's key for
 * dedup) and content_type (may be NULL). Waits only while the window is
 * full. A lost connection is reconnected and the unconfirmed messages are
 * published again before this one. Errors: EDP_EINVAL, EDP_ETOOBIG,
 * EDP_ETIMEOUT, EDP_ESTOPPED, or the reconnect's error (EDP_ECONNECT ...). */
int edp_fwd_send(edp_fwd_sender *s, const char *message_id, const void *body,
                 size_t len, const char *content_type);

/* edp_fwd_send() with a trace context: the message carries t as its
 * traceparent header (t NULL: none). The caller starts the trace
 * (edp_trace_new) or continues one (edp_trace_child). Errors as
 * edp_fwd_send(). */
int edp_fwd_send_traced(edp_fwd_sender *s, const char *message_id,
                        const void *body, size_t len, const char *content_type,
                        const edp_trace *t);

/* edp_fwd_send_traced() for a big body, without copying it: the body is
 * lent to the sender (edp_conn_publish_window_lent), which keeps pointing
 * at it for republishing until the broker confirmed (or refused) the
 * message, and then calls done(ud, body), once, on this thread (from a
 * later call or edp_conn_destroy). Until then the body must stay valid and
 * unchanged; with free() as done the sender owns a malloc()ed body. On an
 * error return done is not called: the body is still the caller's.
 * Errors as edp_fwd_send(), and EDP_EINVAL for a NULL done. */
int edp_fwd_send_lent(edp_fwd_sender *s, const char *message_id,
                      const void *body, size_t len, const char *content_type,
                      const edp_trace *t, edp_body_done_fn done, void *ud);

/* Waits until every message sent so far is confirmed (or refused).
 * Errors as edp_fwd_send(). */
int edp_fwd_flush(edp_fwd_sender *s);

typedef struct edp_fwd_sender_stats {
  uint64_t sent;        /* edp_fwd_send calls that published */
  uint64_t confirmed;   /* acked by the broker */
  uint64_t refused;     /* nacked or returned */
  uint64_t republished; /* sent again after a reconnect */
  uint64_t reconnects;
} edp_fwd_sender_stats;

/* Callable from any thread while the sender works (each field is read
 * atomically). */
void edp_fwd_sender_stats_get(const edp_fwd_sender *s,
                              edp_fwd_sender_stats *out);

/* The edp_metrics_collect_fn of a sender (obj is the edp_fwd_sender):
 * edp_messages_sent_total{queue}. Its connection's counters (confirms,
 * resends, reconnects) come from edp_conn_collect. */
void edp_fwd_sender_collect(const void *sender, edp_metrics_out *out);

/* ---- receiver ---- */

/* The message handler. Return 0 when the message is done (it is then
 * acked), anything else to fail it: write a one-line reason to reason.
 * It runs on the receiver's worker thread, one message at a time, while
 * the thread in edp_fwd_receive() services the connection: it may take as
 * long as it needs, and must not touch the connection. d and reason stay
 * valid until it returns. on_event runs on the calling thread. For a
 * delivery with a traceparent, both the handler and on_event see the
 * receiver's span for it (a child of the delivery's) through
 * edp_trace_current(); a retry or dead-letter copy continues from it. */
typedef int (*edp_fwd_handler)(void *ud, const edp_delivery *d, char *reason,
                               size_t reason_len);

enum edp_fwd_event {
  EDP_FWD_PROCESSED = 0,     /* handler succeeded, acked */
  EDP_FWD_RETRIED = 1,       /* handler failed, requeued with a count */
  EDP_FWD_DEAD_LETTERED = 2, /* failed max_retries + 1 times, in .dlq */
  EDP_FWD_DUPLICATE = 3      /* message_id seen before, acked unprocessed */
};

/* Reports what happened to each delivery; reason is "" unless failed. */
typedef void (*edp_fwd_event_fn)(void *ud, int event, const edp_delivery *d,
                                 const char *reason);

typedef struct edp_fwd_receiver_opts {
  const char *queue;         /* required; declared with its .dlq */
  edp_queue_kind kind;       /* the queue's kind: the sender's must match */
  int prefetch;              /* unacked deliveries, default 32 */
  int max_retries;           /* failed attempts before the .dlq, default 3:
                                the handler's failures (x-edp-retries)
                                plus the broker's count of deliveries
                                that ended unsettled (x-delivery-count) */
  size_t dedup_window;       /* remembered message_ids, 0 = no dedup */
  int coalesce_acks;         /* edp_fwd_receive_batch() acks the successes
                                of a batch with one basic.ack (multiple)
                                instead of one each, when all its handlers
                                returned; default 0. Every message other
                                than this receiver's must be settled by
                                then: the connection's only consumer. */
  edp_fwd_handler handler;   /* required */
  edp_fwd_event_fn on_event; /* may be NULL */
  void *ud;
} edp_fwd_receiver_opts;

void edp_fwd_receiver_opts_init(edp_fwd_receiver_opts *o);

typedef struct edp_fwd_receiver edp_fwd_receiver;

/* Creates a receiver on c (not owned): declares the queues, sets qos and
 * confirm mode (for the retry copies) and starts consuming. */
int edp_fwd_receiver_new(edp_conn *c, const edp_fwd_receiver_opts *o,
                         edp_fwd_receiver **out);

/* Cancels nothing on the broker by itself (closing the connection does);
 * frees the receiver, sets *r to NULL, accepts NULL. */
void edp_fwd_receiver_destroy(edp_fwd_receiver **r);

/* Takes and handles one message, waiting up to timeout_ms (-1 forever).
 * Returns 0 when one was handled, EDP_ETIMEOUT when none came, or
 * EDP_ESTOPPED / a reconnect error. A lost connection is reconnected;
 * messages in flight then come back redelivered. A stop (the connection's
 * stop_fd) while the handler runs lets the handler finish; a success is
 * then acked, a failure goes back to the queue untouched (no retry copy is
 * published once stopped; a copy already written is waited for and the
 * original acked: settled exactly once either way), and the next call
 * returns EDP_ESTOPPED. The
 * connection is not serviced after the stop, so a handler that goes on
 * for more than two heartbeat intervals after it loses the ack and its
 * message comes back redelivered. */
int edp_fwd_receive(edp_fwd_receiver *r, int timeout_ms);

/* edp_fwd_receive() for a stream of small messages: takes one message
 * (waiting up to timeout_ms) and up to max - 1 more that have already
 * arrived, runs their handlers back to back on the worker in one handoff
 * (one thread wake-up for all of them instead of one each), then settles
 * each as edp_fwd_receive() does, in order. Every ack still comes after
 * its handler succeeded. No handler starts once the batch has run for
 * 2 ms, so a slow handler makes a batch of one; the messages not reached
 * are handled first by the next call, or given back to the queue (nack
 * with requeue) after a stop. max is capped at 256; 1 is
 * edp_fwd_receive(). Returns as edp_fwd_receive() (0: at least one
 * message was handled; the stats say how many), or EDP_EINVAL for max 0. */
int edp_fwd_receive_batch(edp_fwd_receiver *r, int timeout_ms, size_t max);

typedef struct edp_fwd_receiver_stats {
  uint64_t processed, retried, dead_lettered, duplicates, redelivered;
  uint64_t reconnects;
  uint64_t failed;     /* handler calls that failed (retried, dead-lettered
                          or, if the copy failed, requeued) */
  edp_hist processing; /* handler duration, when edp_conn_timing() is on */
} edp_fwd_receiver_stats;

/* Callable from any thread while the receiver works (each field is read
 * atomically). */
void edp_fwd_receiver_stats_get(const edp_fwd_receiver *r,
                                edp_fwd_receiver_stats *out);

/* The edp_metrics_collect_fn of a receiver (obj is the edp_fwd_receiver):
 * edp_messages_processed_total, _failed_total, _retried_total,
 * _dead_lettered_total, _duplicates_total, _redelivered_total and
 * edp_processing_duration_seconds, labelled queue. */
void edp_fwd_receiver_collect(const void *receiver, edp_metrics_out *out);

#ifdef __cplusplus
}
#endif
#endif
