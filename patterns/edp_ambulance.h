/*
 * edp_ambulance.h - the ambulance pattern: priority messages overtake a
 * backlog of standard messages.
 *
 * One API, four queue layouts (the mode):
 *
 *   EDP_AMB_CARPOOL    two lanes, "<base>.priority" and "<base>.standard".
 *                      A dedicated priority thread consumes only the
 *                      priority lane and idles when it is empty; the
 *                      standard threads consume the standard lane.
 *   EDP_AMB_AMBULANCE  the same two lanes. The priority thread consumes
 *                      both and always starts the next priority message
 *                      first; it serves standard messages only while the
 *                      priority lane is empty. The standard threads
 *                      consume the standard lane only.
 *   EDP_AMB_NATIVE     one RabbitMQ priority queue "<base>.native"
 *                      (x-max-priority); messages carry the priority
 *                      property and every thread consumes it with a small
 *                      prefetch, because the broker can only reorder what
 *                      it has not delivered yet.
 *   EDP_AMB_FIFO       one plain queue "<base>.fifo" for everything: the
 *                      baseline that shows the problem.
 *
 * Every mode runs threads + 1 consumer threads (in carpool and ambulance
 * the +1 is the priority thread), so modes compare at equal thread counts.
 * Each thread owns its own connection and channel, and runs the handler on
 * a worker thread of its own (edp_worker.h) while it keeps servicing the
 * connection, so handlers may take minutes. Messages are acked only
 * after the handler returned; a handler failure rejects the message to the
 * dead-letter queue "<base>.dlq". A lost connection is reconnected; the
 * messages that were unacked on it come back and may be processed twice
 * (at-least-once).
 */
#ifndef EDP_AMBULANCE_H
#define EDP_AMBULANCE_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"
#include "edp_trace.h"

#ifdef __cplusplus
extern "C" {
#endif

enum edp_amb_mode {
  EDP_AMB_FIFO = 0,
  EDP_AMB_CARPOOL = 1,
  EDP_AMB_AMBULANCE = 2,
  EDP_AMB_NATIVE = 3
};

enum edp_amb_kind { EDP_AMB_STANDARD = 0, EDP_AMB_PRIORITY = 1 };

/* Headers the sender sets: the kind ("priority" / "standard") and the
 * sender's wall clock in microseconds, for latency. */
#define EDP_AMB_HDR_KIND "x-edp-kind"
#define EDP_AMB_HDR_SENT_US "x-edp-sent-us"

/* x-max-priority of the native queue; priority messages are published with
 * this priority, standard ones with 0. */
#define EDP_AMB_MAX_PRIORITY 10

/* Parses "fifo", "carpool", "ambulance" or "native" into *mode.
 * Returns 0 or EDP_EINVAL. */
int edp_amb_mode_parse(const char *s, int *mode);

/* The mode's name as parsed above; "?" for an unknown mode. */
const char *edp_amb_mode_name(int mode);

/* The kind's name: "priority" or "standard". */
const char *edp_amb_kind_name(int kind);

/* Writes the name of the queue that a message of kind goes to in mode
 * ("<base>.priority", "<base>.standard", "<base>.native" or
 * "<base>.fifo"). Returns 0, or EDP_EINVAL for a bad mode, kind or base
 * (1 to 200 characters) or a too small buffer. */
int edp_amb_queue_name(int mode, const char *base, int kind, char *out,
                       size_t out_len);

/* Declares the durable queues of mode (and "<base>.dlq") on c, of kind k
 * (NULL = classic; single_active is ignored: lanes have several
 * consumers). The lanes of carpool and ambulance can be quorum queues;
 * the native priority queue can't: RabbitMQ 3.x refuses x-max-priority
 * on a quorum queue, and 4.x's quorum queues know only two priorities,
 * not the ten this mode uses (docs/ha.md). Returns 0 or an edp_conn
 * error: EDP_EPRECONDITION if a queue exists with other arguments,
 * EDP_EINVAL for a bad mode or base, or a quorum native queue. */
int edp_amb_declare(edp_conn *c, int mode, const char *base,
                    const edp_queue_kind *k);

/* ---- sender ---- */

typedef struct edp_amb_sender edp_amb_sender;

typedef struct edp_amb_sender_opts {
  int mode;               /* layout to publish to, default EDP_AMB_AMBULANCE */
  const char *base;       /* queue name base, required */
  edp_queue_kind kind;    /* the queues' kind: the receiver's must match */
  int persistent;         /* default 1 */
  size_t confirm_window;  /* unconfirmed messages in flight, default 1024 */
  int confirm_timeout_ms; /* longest wait for the broker, default 30000 */
  /* Called for each message the broker confirmed or refused. */
  edp_confirm_fn on_confirm;
  void *ud;
} edp_amb_sender_opts;

void edp_amb_sender_opts_init(edp_amb_sender_opts *o);

/* Creates a sender on c (not owned, used from the calling thread only):
 * declares the queues and enables confirm mode. Errors: EDP_EINVAL,
 * EDP_ENOMEM, edp_conn errors. */
int edp_amb_sender_new(edp_conn *c, const edp_amb_sender_opts *o,
                       edp_amb_sender **out);

/* Frees the sender (not its connection), sets *s to NULL, accepts NULL. */
void edp_amb_sender_destroy(edp_amb_sender **s);

/* Publishes one message of kind with message_id (required) to the queue
 * of its kind, stamped with the kind and the send time. Waits only while
 * the confirm window is full; a lost connection is reconnected and the
 * unconfirmed messages are published again first. Errors: EDP_EINVAL,
 * EDP_ETOOBIG, EDP_ETIMEOUT, EDP_ESTOPPED, reconnect errors. */
int edp_amb_send(edp_amb_sender *s, int kind, const char *message_id,
                 const void *body, size_t len);

/* edp_amb_send() with trace context: t (NULL: none) goes in the
 * traceparent header, for a sender that starts a trace (edp_trace_new) or
 * continues one (edp_trace_child). The receiver's handler runs in a child
 * span of it (edp_trace_current()). Errors as edp_amb_send(). */
int edp_amb_send_traced(edp_amb_sender *s, int kind, const char *message_id,
                        const void *body, size_t len, const edp_trace *t);

/* Waits until every message sent is confirmed or refused. Errors as
 * edp_amb_send(). */
int edp_amb_flush(edp_amb_sender *s);

typedef struct edp_amb_sender_stats {
  uint64_t sent[2]; /* by kind */
  uint64_t confirmed, refused, republished, reconnects;
} edp_amb_sender_stats;

void edp_amb_sender_stats_get(const edp_amb_sender *s,
                              edp_amb_sender_stats *out);

/* ---- receiver ---- */

/* One message handed to the handler. */
typedef struct edp_amb_job {
  int kind; /* enum edp_amb_kind */
  const edp_delivery *d;
  int thread;              /* 0 = the priority thread of carpool/ambulance;
                              1..threads(+1) the others */
  const char *thread_name; /* "priority", "standard-N" or "worker-N" */
  int64_t sent_us;         /* sender's edp_wall_us(), 0 if not stamped */
  int64_t start_us;        /* wall clock when the handler was called */
  int64_t end_us;          /* wall clock after the ack (events only) */
} edp_amb_job;

/* Processes one message; it runs on the worker thread of a consumer
 * thread, one message at a time per consumer thread, several at once in
 * all. Return 0 when done (the message is then acked), anything else to
 * reject it to "<base>.dlq". It may take as long as it needs: the consumer
 * thread services its connection (heartbeats, deliveries) meanwhile. It
 * must not touch AMQP. After edp_amb_receiver_stop() the handler in
 * progress finishes, but its connection is no longer serviced, so one
 * that goes on for more than two heartbeat intervals after the stop loses
 * its ack and the message comes back redelivered. */
typedef int (*edp_amb_handler)(void *ud, const edp_amb_job *job);

enum edp_amb_event {
  EDP_AMB_PROCESSED = 0,    /* handler succeeded, acked */
  EDP_AMB_DEAD_LETTERED = 1 /* handler failed, rejected to the .dlq */
};

/* Reported on the consumer thread (not the worker) after the ack or
 * reject went out. */
typedef void (*edp_amb_event_fn)(void *ud, int event, const edp_amb_job *job);

typedef struct edp_amb_receiver_opts {
  int mode;                  /* default EDP_AMB_AMBULANCE */
  const char *base;          /* queue name base, required */
  edp_queue_kind kind;       /* the queues' kind: the sender's must match */
  int threads;               /* standard threads, default 1 (1..64) */
  int standard_prefetch;     /* per consumer on standard/fifo/native queues,
                                default 1 */
  int priority_prefetch;     /* the priority thread's priority consumer,
                                default 4 (see edp_ambulance.c) */
  int check_priority_lane;   /* ambulance: before standard work that follows
                                priority work, confirm with the broker that
                                the priority queue is empty; default 1 */
  const edp_conn_opts *conn; /* template for each thread's connection
                                (url, log, ...); stop_fd is replaced */
  edp_amb_handler handler;   /* required */
  edp_amb_event_fn on_event; /* may be NULL */
  void *ud;
} edp_amb_receiver_opts;

void edp_amb_receiver_opts_init(edp_amb_receiver_opts *o);

typedef struct edp_amb_receiver edp_amb_receiver;

/* Opens one connection per consumer thread, declares the queues, starts
 * the consumers and then the threads; returns once every consumer is
 * registered on the broker. Each connection is handed over to its thread
 * and never touched by the caller. On failure nothing is left running and
 * err_text (may be NULL) receives a one-line reason. Errors: EDP_EINVAL,
 * EDP_ENOMEM, edp_conn_open and declare errors, EDP_EINTERNAL (threads). */
int edp_amb_receiver_start(const edp_amb_receiver_opts *o,
                           edp_amb_receiver **out, char *err_text,
                           size_t err_len);

/* Asks every thread to stop: each finishes (and acks) the message it is
 * processing, cancels its consumers and closes its connection, which
 * gives its prefetched, unstarted messages back to the queue. Does not
 * wait; safe to call from any thread, several times. */
void edp_amb_receiver_stop(edp_amb_receiver *r);

/* A file descriptor that becomes readable when a consumer thread ended on
 * an error (lost the broker for good, queue deleted); then
 * edp_amb_receiver_error() says which. */
int edp_amb_receiver_fd(const edp_amb_receiver *r);

/* The first error a consumer thread ended with, 0 if none. */
int edp_amb_receiver_error(edp_amb_receiver *r);

/* Stops (as edp_amb_receiver_stop), waits for the threads, frees
 * everything, sets *r to NULL; accepts NULL. */
void edp_amb_receiver_destroy(edp_amb_receiver **r);

typedef struct edp_amb_receiver_stats {
  uint64_t processed[2]; /* by kind */
  uint64_t dead_lettered, redelivered, reconnects;
  int64_t busy_us_priority_thread; /* handler time of thread 0 */
  /* By kind: from the sender's stamp (x-edp-sent-us) to the ack, for
   * processed messages that carry one; wall clocks of two processes. */
  edp_hist latency[2];
} edp_amb_receiver_stats;

/* A consistent snapshot of the counters; callable from any thread. */
void edp_amb_receiver_stats_get(edp_amb_receiver *r,
                                edp_amb_receiver_stats *out);

/* The edp_metrics_collect_fn of a receiver (obj is the edp_amb_receiver):
 * processed messages and the end-to-end latency histogram per lane
 * (label lane: priority, standard), dead-lettered and redelivered ones,
 * labelled queue (the base name); and each consumer thread's connection
 * (edp_conn_group.h: conn "priority", "standard-N" or "worker-N"), kept
 * after the thread closed it; docs/metrics.md. */
void edp_amb_receiver_collect(const void *receiver, edp_metrics_out *out);

#ifdef __cplusplus
}
#endif
#endif
