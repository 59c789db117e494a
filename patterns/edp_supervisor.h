/*
 * edp_supervisor.h - the supervisor consumer pattern: consumers are added
 * and retired from the depth of their queue, so a service keeps a steady
 * response time under a varying load without holding its peak number of
 * consumers all the time.
 *
 * A service (edp_sup) runs consumer threads on one queue. Each consumer
 * has its own connection (the single-owner rule), a prefetch of 1 by
 * default, and acks a message only after the handler processed it. A
 * supervisor thread, on a connection of its own, reads the queue depth
 * (passive queue.declare) every interval, asks the scaling policy how many
 * consumers it wants, starts missing consumers at once and retires surplus
 * ones only after the demand stayed lower for the keep-alive period.
 *
 * Retiring is graceful: the consumer finishes and acks the message in
 * hand, sends basic.cancel, processes what the broker had already
 * delivered to it before the cancel-ok, and closes. A scale-down therefore
 * never requeues, loses or duplicates a message.
 *
 * Threads: the handler and the event callback run on several threads at
 * once; they must be thread-safe. Each consumer runs its handler on a
 * worker thread of its own (edp_worker.h) while the consumer thread keeps
 * servicing the connection (heartbeats, deliveries), so a handler may take
 * minutes; it must not touch AMQP. A retire or stop that comes while a
 * handler runs waits for it, with the connection still serviced. The event
 * callback runs on the consumer and supervisor threads.
 */
#ifndef EDP_SUPERVISOR_H
#define EDP_SUPERVISOR_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the scaling policy: a pure function of its inputs ---- */

typedef struct edp_sup_policy {
  int per_consumer;  /* n: queued messages one consumer is meant to take,
                        >= 1; default 10 */
  int min;           /* consumers kept even when the queue is empty, >= 0;
                        default 1 */
  int max;           /* hard ceiling, >= max(min, 1); default 50 */
  int keep_alive_ms; /* surplus consumers are retired only after the demand
                        stayed lower this long, >= 0; default 5000 */
} edp_sup_policy;

/* What the policy remembers between two decisions; zero it with
 * edp_sup_policy_state_init(). */
typedef struct edp_sup_policy_state {
  int64_t low_since_ms; /* when the demand fell below the current count, or
                           -1 while it is not lower */
  int low_peak;         /* the highest demand seen since then */
} edp_sup_policy_state;

/* Fills *p with the defaults above. */
void edp_sup_policy_init(edp_sup_policy *p);

/* Resets *s: no lower demand seen. */
void edp_sup_policy_state_init(edp_sup_policy_state *s);

/* Checks a policy; returns 0 or EDP_EINVAL. */
int edp_sup_policy_check(const edp_sup_policy *p);

/* The consumers the depth alone asks for: ceil(depth / per_consumer)
 * clamped to [min, max]. Exact for any depth (no overflow). */
int edp_sup_policy_want(const edp_sup_policy *p, uint64_t depth);

/* The number of consumers to run from now on, given the current number,
 * the queue depth and the time now_ms (any monotonic clock). More demand
 * is answered at once; less demand lowers the count only once it has
 * stayed below current for keep_alive_ms, and then to the highest demand
 * seen during that period. Updates *s; touches nothing else, so the same
 * inputs always give the same output. */
int edp_sup_policy_decide(const edp_sup_policy *p, edp_sup_policy_state *s,
                          int current, uint64_t depth, int64_t now_ms);

/* When the supervisor reads the depth next: next_ms is the regular
 * reading (one interval after the last one, last_ms); a consumer's hint
 * (hinted != 0) that the queue has a backlog brings it forward to
 * last_ms + hint_ms, never later than next_ms. hint_ms <= 0: hints are
 * ignored. Pure, like the policy. */
int64_t edp_sup_next_reading(int64_t last_ms, int64_t next_ms, int hinted,
                             int hint_ms);

/* ---- the service ---- */

/* Called on the consumer's worker thread for each delivery, one at a time
 * per consumer, while the consumer thread services the connection. Return
 * 0 when the message is done (it is then acked); anything else gives it
 * back to the queue (nack with requeue, it comes back redelivered).
 * consumer is the id of the consumer (1, 2, ... in order of starting). */
typedef int (*edp_sup_handler)(void *ud, int consumer, const edp_delivery *d);

enum edp_sup_event_type {
  EDP_SUP_SCALE = 0,      /* one per depth reading (every interval, and
                             the extra readings hints ask for), after the
                             decision */
  EDP_SUP_START = 1,      /* a consumer was started */
  EDP_SUP_RETIRE = 2,     /* a consumer was asked to retire */
  EDP_SUP_STOPPED = 3,    /* a consumer closed (retired, stopped, failed) */
  EDP_SUP_PROCESSED = 4,  /* the handler returned 0 and the ack was sent */
  EDP_SUP_FAILED = 5,     /* the handler failed; the message was requeued */
  EDP_SUP_RECONNECTED = 6 /* a connection was restored (consumer 0 is the
                             supervisor's own) */
};

typedef struct edp_sup_event {
  int type;                 /* enum edp_sup_event_type */
  int consumer;             /* consumer id; 0 for the supervisor */
  int consumers;            /* active consumers (not retiring) */
  int live;                 /* consumer threads alive, retiring ones included */
  int64_t depth;            /* SCALE: messages ready in the queue */
  int64_t broker_consumers; /* SCALE: consumers the broker counts */
  int wanted;               /* SCALE: what the depth alone asks for */
  int error;                /* STOPPED: 0, or the EDP_E* code it died of */
  const edp_delivery *d;    /* PROCESSED, FAILED: the message; else NULL */
  int slot; /* the consumer's connection series, "consumer-<slot>" in the
               metrics (edp_sup_collect); 0 for the supervisor */
} edp_sup_event;

/* Called on the supervisor and consumer threads; must be thread-safe. */
typedef void (*edp_sup_event_fn)(void *ud, const edp_sup_event *ev);

typedef struct edp_sup_opts {
  const char *url;     /* broker URL; NULL = EDP_URL_DEFAULT; copied */
  const char *queue;   /* required; declared durable if missing */
  edp_queue_kind kind; /* its kind (type and delivery limit: with a limit,
                          "<queue>.dlq" too); never single-active, which
                          would leave every consumer but one idle */
  const char *name;    /* connection names are "<name>-supervisor" and
                          "<name>-consumer-<id>"; default "edp-sup" */
  int prefetch;        /* per consumer, >= 1, default 1 */
  int interval_ms;     /* depth reading period, >= 10, default 1000 */
  int hint_ms;         /* a consumer that finds its next message already
                          waiting right after its ack (a backlog) wakes the
                          supervisor for an extra reading, at most one per
                          hint_ms after the previous reading, and none while
                          max consumers are alive; only when supervise is
                          on; >= 0, 0 = no hints (readings only every
                          interval); default 20 */
  int supervise;       /* default 1; 0 = static: always policy.min
                          consumers (the baseline) */
  edp_sup_policy policy;
  int heartbeat_s;           /* of every connection; default 10 */
  edp_sup_handler handler;   /* required */
  edp_sup_event_fn on_event; /* may be NULL */
  void *ud;                  /* for handler and on_event */
  edp_log_fn log;            /* NULL: silent; called on any thread */
  void *log_ud;
  edp_conn_event_fn on_conn_event; /* every connection's events (lost,
                                      reconnected, blocked ...); NULL:
                                      none; called on any thread */
  void *on_conn_event_ud;
} edp_sup_opts;

/* Fills *o with the defaults above. */
void edp_sup_opts_init(edp_sup_opts *o);

typedef struct edp_sup edp_sup;

/* Opens the supervisor's connection, declares the queue (durable, default
 * arguments), starts policy.min consumers and the supervisor thread.
 * Errors: EDP_EINVAL (bad options), EDP_ENOMEM, EDP_EIO (thread or
 * eventfd), the errors of edp_conn_open (EDP_EURL, EDP_ECONNECT, EDP_EAUTH,
 * EDP_EACCESS) and of the declare (EDP_EPRECONDITION: the queue exists with
 * other arguments). err_text (may be NULL) receives a one-line reason. */
int edp_sup_new(const edp_sup_opts *o, edp_sup **out, char *err_text,
                size_t err_len);

/* Stops gracefully: every consumer finishes and acks its message in hand,
 * cancels, processes what was already delivered to it and closes; then the
 * supervisor closes. Waits for all threads. Idempotent. */
void edp_sup_stop(edp_sup *s);

/* Stops (if not stopped) and frees; sets *s to NULL; accepts NULL. */
void edp_sup_destroy(edp_sup **s);

typedef struct edp_sup_stats {
  uint64_t processed; /* messages acked after the handler */
  uint64_t failed;    /* handler failures (requeued) */
  uint64_t started;   /* consumers started */
  uint64_t retired;   /* consumers retired by a scale-down */
  int consumers;      /* active now */
  int live;           /* threads alive now (retiring included) */
  int peak;           /* highest live count seen */
  int64_t depth;      /* last depth read, -1 before the first */
  uint64_t ticks;     /* intervals with a depth reading */
  uint64_t sup_reconnects;
  uint64_t consumer_reconnects;
  int64_t consumer_ms; /* sum of every consumer's lifetime so far: the
                          cost in consumer-milliseconds */
  int wanted;          /* what the last depth reading asked for, before
                          [min, max] and the keep-alive; -1 before it */
} edp_sup_stats;

/* A consistent snapshot; safe from any thread. */
void edp_sup_stats_get(edp_sup *s, edp_sup_stats *out);

/* The edp_metrics_collect_fn of a supervisor (obj is the edp_sup): the
 * queue depth, wanted, active and live consumers, processed and failed
 * messages, consumers started and retired, labelled queue; and every
 * connection's (edp_conn_group.h): conn "monitor" (the supervisor's) and
 * "consumer-<slot>", where slot is the lowest number no live consumer
 * held when the consumer started (at most max of them): a slot's counters
 * carry on from the consumers that held it before, so they never reset
 * when consumers retire; docs/metrics.md. */
void edp_sup_collect(const void *sup, edp_metrics_out *out);

#ifdef __cplusplus
}
#endif
#endif
