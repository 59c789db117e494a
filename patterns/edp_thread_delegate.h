/*
 * edp_thread_delegate.h - the thread delegate pattern: messages of one
 * context (an account) keep their order while different contexts are
 * processed in parallel by N worker threads.
 *
 * Topology: trades are published to a topic exchange with a per-account
 * routing key (trade.eq.<account>) bound to a durable queue; for scale-out
 * past one process an x-consistent-hash exchange shards accounts over K
 * queues ("<queue>.1" .. "<queue>.K"), each drained by one dispatcher.
 *
 * The dispatcher owns the connection (rabbitmq-c is not thread-safe) and
 * is the only thread calling it. It reads each delivery's context and
 * places it with the allocation map (edp_allocmap.h): a context with
 * messages in flight stays on its worker, a new one goes to the least
 * loaded worker, and each worker processes its messages in arrival order.
 * Workers hand finished messages back through a queue plus eventfd that
 * the dispatcher polls in edp_conn_wait(); the dispatcher then acks them.
 * Nothing is acked before its handler finished; prefetch bounds what is
 * in flight.
 *
 * Guarantees (docs/thread-delegate.md has the details):
 * - Per context, the handler is called for message n+1 only after message
 *   n was processed or dead-lettered, and never on two workers at once.
 * - A failed handler is retried in place, on the same worker, up to
 *   max_retries times (fewer by the deliveries that ended unsettled
 *   before, a quorum queue's x-delivery-count: a dispatcher crashed or
 *   lost its connection holding the message); the context's later
 *   messages wait behind it. After
 *   the last retry the message goes to "<queue>.dlq" (headers
 *   x-edp-reason, x-edp-retries, x-edp-context) and an event says so;
 *   only then (the worker waits for the broker's confirm of the copy) do
 *   later messages of that context run. If the copy is refused, the
 *   dispatcher reconnects so that the message and all after it come back
 *   in order. Requeueing to the tail, as the forwarding pattern does,
 *   would let later messages overtake it.
 * - Crash or connection loss: messages not acked are redelivered by the
 *   broker in their queue order, so per context the handler sees an
 *   in-order sequence in which the messages whose ack was lost appear a
 *   second time, in order, before the next ones (1 2 3 [2 3] 4 5): none
 *   is skipped, none reordered beyond that repetition.
 */
#ifndef EDP_THREAD_DELEGATE_H
#define EDP_THREAD_DELEGATE_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A dead-letter copy carries the forwarding pattern's headers
 * (EDP_FWD_HDR_REASON, EDP_FWD_HDR_RETRIES, EDP_FWD_HDR_QUEUE) plus the
 * message's context in this one. */
#define EDP_TD_HDR_CONTEXT "x-edp-context"

/* ---- topology ---- */

/* Declares the topic exchange (durable), queue (durable, of kind k: NULL
 * = classic) and its "<queue>.dlq", and binds queue to exchange with
 * binding_key (e.g. "trade.eq.*"). The queue is always single-active
 * (x-single-active-consumer): a second dispatcher on it stands by instead
 * of taking messages of the same accounts at the same time, and takes
 * over, in queue order, when the first goes away. Senders and dispatchers
 * must give the same kind. Returns 0 or an edp_conn error
 * (EDP_EPRECONDITION: the queue exists with other arguments, e.g. from a
 * version without single-active queues). */
int edp_td_declare(edp_conn *c, const char *exchange, const char *queue,
                   const char *binding_key, const edp_queue_kind *k);

/* Sharded topology: an x-consistent-hash exchange (durable) and shard
 * queues "<queue_prefix>.<k>" (each single-active, of kind k, with its
 * .dlq) bound with weight 1. shard 0 declares all of 1..shards (what a
 * sender does), shard k only queue k (what the dispatcher of shard k
 * does; shards is then ignored). Needs the
 * rabbitmq_consistent_hash_exchange plugin (else EDP_ECLOSED or
 * EDP_ECHANNEL with the broker's reply). */
int edp_td_declare_shards(edp_conn *c, const char *exchange,
                          const char *queue_prefix, int shards, int shard,
                          const edp_queue_kind *k);

/* ---- context ---- */

enum edp_td_context_from {
  EDP_TD_CTX_ROUTING_KEY = 0, /* the routing key's last '.' segment */
  EDP_TD_CTX_HEADER = 1,      /* a string or integer header */
  EDP_TD_CTX_JSON = 2         /* a string or integer field of a JSON body */
};

/* Extracts the context of d into out (NUL-terminated). from is an
 * enum edp_td_context_from, key the header or field name (ignored for the
 * routing key). Returns 0, EDP_EBADDATA (missing, empty, not a string or
 * integer, body not a JSON object, or longer than out_len - 1) or
 * EDP_EINVAL. */
int edp_td_context(int from, const char *key, const edp_delivery *d, char *out,
                   size_t out_len);

/* ---- dispatcher ---- */

/* The work of one message, called on a worker thread (0-based worker).
 * Must not touch the connection. Return 0 when done; anything else fails
 * the attempt, with a one-line reason written to reason. attempt counts
 * from 1. */
typedef int (*edp_td_handler)(void *ud, int worker, const char *context,
                              const edp_delivery *d, int attempt, char *reason,
                              size_t reason_len);

enum edp_td_event_type {
  EDP_TD_PROCESSED = 0,     /* handler succeeded; reported just before
                               the ack is sent (see edp_td_event_fn) */
  EDP_TD_DEAD_LETTERED = 1, /* failed max_retries + 1 times, or no context;
                               copied to the .dlq, then acked */
  EDP_TD_REQUEUED = 2,      /* not acked (connection lost or shutting
                               down): the broker redelivers it */
  EDP_TD_ACTIVE = 3         /* a standby dispatcher got its first delivery:
                               it is the queue's active consumer now (d is
                               that delivery; worker -1) */
};

typedef struct edp_td_event {
  int type;            /* enum edp_td_event_type */
  int worker;          /* 0-based; -1 if it never reached a worker */
  const char *context; /* "" if none could be read */
  const edp_delivery *d;
  int attempts;       /* handler calls made */
  const char *reason; /* "" unless dead-lettered */
  int64_t started_us; /* CLOCK_MONOTONIC microseconds when the last
                         handler attempt began and ended; 0 if none */
  int64_t finished_us;
} edp_td_event;

/* Reports each message's outcome, on the dispatcher thread. PROCESSED
 * comes just before the ack is sent, so a crash (or a lost connection)
 * between the two leaves the message unacked: it comes again, flagged
 * redelivered, and is reported twice; a message is never acked without
 * its report. DEAD_LETTERED comes after the copy was confirmed and the
 * original acked, REQUEUED when the message was left unacked. Per
 * context, events come in processing order. For a message with a
 * traceparent, the handler and this callback see the worker's span for it
 * (a child of the message's, one per message whatever the attempts)
 * through edp_trace_current(); a dead-letter copy continues from it. */
typedef void (*edp_td_event_fn)(void *ud, const edp_td_event *ev);

/* Reports each change of the allocation map, on the dispatcher thread:
 * context is now on worker with in_flight messages (0 = left the map). */
typedef void (*edp_td_map_fn)(void *ud, int worker, const char *context,
                              int in_flight);

typedef struct edp_td_opts {
  const char *queue;        /* required: the queue to drain */
  edp_queue_kind kind;      /* its kind (for its .dlq), as declared */
  int workers;              /* default 5, 1..1024 */
  int prefetch;             /* unacked messages; default 0 = 16 x workers
                               (at least 32), at most 65535 */
  int context_from;         /* default EDP_TD_CTX_ROUTING_KEY */
  const char *context_key;  /* header or JSON field name */
  int max_retries;          /* in-place retries before the .dlq, 3 */
  int retry_delay_ms;       /* pause before each retry, default 100 */
  edp_td_handler handler;   /* required */
  edp_td_event_fn on_event; /* may be NULL */
  edp_td_map_fn on_map;     /* may be NULL */
  void *ud;
} edp_td_opts;

void edp_td_opts_init(edp_td_opts *o);

typedef struct edp_td edp_td;

/* Creates a dispatcher on c (not owned; the calling thread must be its
 * owner and the only one using it from now on): declares queue's .dlq
 * (the queue itself must exist: see edp_td_declare), sets qos and confirm
 * mode (for dead-letter copies), starts the workers and consumes.
 * Errors: EDP_EINVAL, EDP_ENOMEM, EDP_EIO (threads), edp_conn errors. */
int edp_td_new(edp_conn *c, const edp_td_opts *o, edp_td **out);

/* Dispatches and acks for up to timeout_ms (-1: until stopped or an
 * error), returning 0 when the time is up. A lost connection is
 * reconnected (messages in flight then come back redelivered); the
 * reconnect's error (EDP_ECONNECT ...) is returned if it fails.
 * EDP_ESTOPPED when the connection's stop_fd became readable;
 * EDP_ENOTFOUND if the broker cancelled the consumer (queue deleted);
 * EDP_ENOMEM if a delivery could not be handed to a worker (the channel
 * is then given up, so that the next call reconnects and every unacked
 * message comes back in queue order). */
int edp_td_run(edp_td *td, int timeout_ms);

/* Graceful stop: cancels the consumer, lets each worker finish the message
 * it is running (messages not started are left unacked), acks what
 * finished, for up to timeout_ms, then stops the workers. Closing the
 * connection afterwards returns every unacked message to the queue in
 * order. Returns 0 or EDP_ETIMEOUT (some handler still ran; it is waited
 * for anyway, since a thread cannot be abandoned safely). */
int edp_td_stop(edp_td *td, int timeout_ms);

/* Stops (as edp_td_stop with 10 s) if not stopped, frees the dispatcher
 * (not its connection), sets *td to NULL; accepts NULL. */
void edp_td_destroy(edp_td **td);

typedef struct edp_td_stats {
  uint64_t received;  /* deliveries taken from the connection */
  uint64_t processed; /* handler succeeded and acked */
  uint64_t dead_lettered;
  uint64_t retries;     /* handler attempts beyond the first */
  uint64_t requeued;    /* left unacked for redelivery */
  uint64_t redelivered; /* deliveries flagged redelivered */
  uint64_t reconnects;
  size_t in_flight;         /* delivered, not yet settled */
  size_t contexts;          /* entries in the allocation map */
  int64_t last_activity_ms; /* edp_now_ms() of the last delivery or
                               settlement */
  int standby; /* another consumer held the queue when this one started
                  and no delivery came yet (single active consumer). Two
                  dispatchers that start in the same instant may both
                  read 0 and call themselves active: the broker's standby
                  one then reports EDP_TD_ACTIVE at its first delivery */
} edp_td_stats;

/* Callable from any thread while the dispatcher works (each field is read
 * atomically). */
void edp_td_stats_get(const edp_td *td, edp_td_stats *out);

/* The edp_metrics_collect_fn of a dispatcher (obj is the edp_td):
 * processed, retried, dead-lettered, requeued and redelivered messages,
 * the in-flight and context gauges, each worker's busy gauge and busy
 * seconds, and the processing time histogram, labelled queue (and
 * worker); docs/metrics.md. */
void edp_td_collect(const void *dispatcher, edp_metrics_out *out);

#ifdef __cplusplus
}
#endif
#endif
