/*
 * edp_multi_broker.h - the multi-broker pattern: more throughput and
 * capacity by spreading one logical queue over several independent
 * brokers.
 *
 * Producer: one edp_conn (confirm mode) per broker URL, all owned by the
 * thread that calls the producer functions. Messages go round-robin over
 * the live brokers, or in key mode to the broker chosen by a hash of a key
 * (one account's messages always go to one broker, so they keep their
 * order). A broker whose connection is lost, or that confirms nothing for
 * confirm_timeout_ms, is marked down: in round-robin mode its unconfirmed
 * messages are published again to the live brokers; in key mode they are
 * held for it (with the messages published for its keys meanwhile, up to
 * hold_max) and sent, in order, when it is back. A down broker is retried
 * with backoff, one connect attempt of at most connect_timeout_ms at a
 * time, so a dead broker never stalls the live ones for longer than that.
 *
 * Consumer: one thread and one connection per broker, each draining the
 * same queue name and calling one handler (serialized by a mutex, so the
 * handler never runs twice at once); the ack follows on the connection's
 * own thread after the handler returned. A lost broker is reconnected with
 * backoff by its thread while the others keep draining. A queue deleted
 * under its consumer is declared again and consumed (the consumer owns
 * the queue, as it declared it); if the broker refuses that, the broker
 * is reported failed, never left silently idle.
 *
 * Guarantee: at least once. A message counts as sent when a broker
 * confirmed it; a message resent after a broker loss may be delivered
 * twice (once from the revived broker, once from the one it was resent
 * to), never zero times while the brokers keep their disks.
 */
#ifndef EDP_MULTI_BROKER_H
#define EDP_MULTI_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"

#ifdef __cplusplus
extern "C" {
#endif

enum edp_multi_mode {
  EDP_MULTI_ROUND_ROBIN = 0, /* spread over the live brokers */
  EDP_MULTI_KEY = 1          /* broker = hash(key) % number of brokers */
};

/* Events reported through on_event; count is the number of messages
 * concerned (unconfirmed ones for DOWN, moved ones for REROUTED, held ones
 * for HELD and UP; 0 from the consumer). */
enum edp_multi_event {
  EDP_MULTI_UP = 0,       /* connected (again) / consuming (again) */
  EDP_MULTI_DOWN = 1,     /* lost or unreachable; out of rotation */
  EDP_MULTI_REROUTED = 2, /* its unconfirmed messages went to other brokers */
  EDP_MULTI_HELD = 3,     /* key mode: a message is held for a down broker */
  EDP_MULTI_CANCELLED = 4 /* consumer: the broker cancelled the consumer
                             (its queue was deleted); the connection stays.
                             UP follows once the queue is declared again and
                             consumed; if that fails, the broker's thread
                             ends and edp_multi_consumer_error() says why */
};

/* broker is the index of the URL in opts.urls. */
typedef void (*edp_multi_event_fn)(void *ud, int broker, int event,
                                   size_t count);

/* ---- producer ---- */

typedef struct edp_multi_producer edp_multi_producer;

/* Called for each confirm, on the producer's thread, as
 * edp_conn_on_confirm's callback (cf->msg is valid during the call). */
typedef void (*edp_multi_confirm_fn)(void *ud, int broker,
                                     const edp_confirm *cf);

typedef struct edp_multi_producer_opts {
  const char *const *urls; /* one per broker; required, copied */
  size_t n_urls;           /* 1..EDP_MULTI_MAX_BROKERS */
  const char *queue;       /* required: declared on every broker, and the
                              routing key of messages that have none */
  /* NULL: a durable classic queue; its strings must outlive the producer */
  const edp_queue_opts *queue_opts;
  int mode;                /* enum edp_multi_mode, default round-robin */
  size_t window;           /* unconfirmed messages per broker, 1024 */
  int confirm_timeout_ms;  /* a broker with unconfirmed messages and no
                              confirm for this long is down; 5000 */
  int connect_timeout_ms;  /* one connect attempt, and each AMQP call
                              of it (channel, confirm mode, queue): a
                              retry stalls the others at most 4 x this;
                              default 1000 */
  int retry_initial_ms;    /* first retry delay of a down broker, 250 */
  int retry_max_ms;        /* retry delay cap, default 2000 */
  int down_max_ms;         /* with no broker to send to for this long,
                              publish and flush fail; default 30000 */
  size_t hold_max;         /* key mode: messages kept per down broker,
                              default 10000 */
  int heartbeat_s;         /* default 10 */
  int stop_fd;             /* readable = stop waiting; -1 */
  const char *client_name; /* connection name prefix; copied */
  edp_log_fn log;          /* NULL: silent */
  void *log_ud;
  edp_conn_event_fn on_conn_event; /* each broker connection's events
                                      (blocked, reconnected ...); NULL */
  void *on_conn_event_ud;
  edp_multi_confirm_fn on_confirm;
  edp_multi_event_fn on_event;
  void *ud; /* for on_confirm and on_event */
} edp_multi_producer_opts;

#define EDP_MULTI_MAX_BROKERS 64

void edp_multi_producer_opts_init(edp_multi_producer_opts *o);

/* Connects to every broker it can reach and declares the queue on each.
 * Unreachable brokers are not an error: they start down and are retried.
 * Errors: EDP_EINVAL (bad options), EDP_EURL (a malformed URL; err_text
 * says which), EDP_EAUTH / EDP_EACCESS / EDP_EPRECONDITION (a broker
 * refused us or the queue: a configuration error), EDP_ENOMEM. */
int edp_multi_producer_new(const edp_multi_producer_opts *o,
                           edp_multi_producer **out, char *err_text,
                           size_t err_len);

/* Flushes nothing: unconfirmed and held messages are dropped (call
 * edp_multi_flush() first). Closes every connection, frees, sets *p to
 * NULL; accepts NULL. */
void edp_multi_producer_destroy(edp_multi_producer **p);

/* Publishes m (routing key defaults to the queue) to one broker: the next
 * live one, or in key mode the one key hashes to (key required there,
 * ignored otherwise). Waits only when that broker's window is full, or, in
 * round-robin mode, while no broker is up. The message is copied; the
 * confirm comes later through on_confirm. Returns 0 (sent, or held in key
 * mode), EDP_ECONNECT (no broker up for down_max_ms; in key mode: the
 * key's broker is down and its hold is full), EDP_ESTOPPED, EDP_EINVAL,
 * EDP_ETOOBIG, EDP_ENOMEM. */
int edp_multi_publish(edp_multi_producer *p, const edp_msg *m, const char *key);

/* Services every broker for up to timeout_ms: reads confirms, sends
 * heartbeats, retries down brokers whose time came, moves or resends
 * their messages. Returns 0 or EDP_ESTOPPED. Use it instead of sleeping
 * (e.g. to pace a rate). */
int edp_multi_poll(edp_multi_producer *p, int timeout_ms);

/* Waits until every message published so far is confirmed, including the
 * resent and held ones. Returns 0, EDP_ETIMEOUT, EDP_ESTOPPED, or
 * EDP_ECONNECT when the brokers holding outstanding messages stayed down
 * for down_max_ms. */
int edp_multi_flush(edp_multi_producer *p, int timeout_ms);

typedef struct edp_multi_broker_stats {
  int live;           /* 1 while in rotation */
  uint64_t published; /* publishes on this broker, resends included */
  uint64_t confirmed; /* acked by the broker */
  uint64_t nacked;    /* nacked, or returned from another route */
  /* Returned because the queue was gone on this broker: declared again
   * and sent again (they count as published twice). */
  uint64_t returned;
  uint64_t rerouted;   /* unconfirmed messages moved to other brokers */
  uint64_t downs, ups; /* transitions */
  size_t unconfirmed;  /* now in flight or lost with the connection */
  size_t held;         /* key mode: waiting for this broker */
} edp_multi_broker_stats;

/* Number of brokers, number of brokers up, and one broker's counters, on
 * the producer's thread (unconfirmed and held exact at that moment).
 * Returns 0 or EDP_EINVAL (no such broker). */
size_t edp_multi_producer_brokers(const edp_multi_producer *p);
size_t edp_multi_producer_live(const edp_multi_producer *p);
int edp_multi_producer_stats(const edp_multi_producer *p, size_t broker,
                             edp_multi_broker_stats *out);

/* The same from any thread while the producer works (a metrics
 * endpoint's): the counters are single-writer stores, each read
 * atomically; unconfirmed and held are as of the end of the producer's
 * last call. Returns 0 or EDP_EINVAL. */
int edp_multi_producer_stats_get(const edp_multi_producer *p, size_t broker,
                                 edp_multi_broker_stats *out);

/* The edp_metrics_collect_fn of a producer (obj is the
 * edp_multi_producer): per broker (labels queue, broker: its index, and
 * host: host:port, never the URL's credentials) whether it is in rotation,
 * its published, confirmed, nacked, returned and rerouted messages, downs
 * and ups, and the unconfirmed and held gauges; and each broker's
 * connection (edp_conn_group.h: conn "broker-<index>", broker host:port);
 * docs/metrics.md. Prometheus derives the rates (rate()) from these
 * counters. */
void edp_multi_producer_collect(const void *producer, edp_metrics_out *out);

/* ---- consumer ---- */

typedef struct edp_multi_consumer edp_multi_consumer;

/* Called for each delivery, on the thread of the broker it came from, never
 * concurrently with itself. Return 0 to ack; non-zero nacks the message
 * with requeue (it comes back later). Keep it short: it runs on the thread
 * that owns the connection. */
typedef int (*edp_multi_handler_fn)(void *ud, int broker,
                                    const edp_delivery *d);

typedef struct edp_multi_consumer_opts {
  const char *const *urls; /* one per broker; required, copied */
  size_t n_urls;           /* 1..EDP_MULTI_MAX_BROKERS */
  const char *queue;       /* required; declared on every broker */
  /* NULL: a durable classic queue; its strings must outlive the consumer */
  const edp_queue_opts *queue_opts;
  int prefetch;                 /* unacked deliveries per broker, default 200 */
  int connect_timeout_ms;       /* default 1000 */
  int retry_initial_ms;         /* reconnect backoff, default 250 */
  int retry_max_ms;             /* default 2000 */
  int heartbeat_s;              /* default 10 */
  const char *client_name;      /* copied */
  edp_multi_handler_fn handler; /* required */
  edp_multi_event_fn on_event;  /* UP / DOWN / CANCELLED per broker, from
                                   its thread */
  void *ud;
  edp_log_fn log; /* called from the broker threads */
  void *log_ud;
  edp_conn_event_fn on_conn_event; /* each broker connection's events;
                                      NULL; from the broker threads */
  void *on_conn_event_ud;
} edp_multi_consumer_opts;

void edp_multi_consumer_opts_init(edp_multi_consumer_opts *o);

/* Validates the options and URLs and starts one thread per broker; each
 * connects (retrying with backoff while its broker is down), declares the
 * queue and consumes. Returns 0, EDP_EINVAL, EDP_EURL (err_text says
 * which), EDP_ENOMEM or EDP_EINTERNAL (no thread). */
int edp_multi_consumer_new(const edp_multi_consumer_opts *o,
                           edp_multi_consumer **out, char *err_text,
                           size_t err_len);

/* Stops every thread: the handler call in progress finishes and is acked,
 * deliveries not yet handled go back to their broker's queue when the
 * connection closes. Idempotent; also done by destroy. */
void edp_multi_consumer_stop(edp_multi_consumer *c);

/* Stops, frees, sets *c to NULL; accepts NULL. */
void edp_multi_consumer_destroy(edp_multi_consumer **c);

/* A fatal error of a broker's thread (EDP_EAUTH, EDP_EACCESS,
 * EDP_EPRECONDITION: the thread gave up on that broker), else 0. After
 * EDP_MULTI_CANCELLED it is the error that kept the thread from consuming
 * the queue again (EDP_EACCESS, EDP_EPRECONDITION at once; others, e.g.
 * EDP_ENOTFOUND, after 5 attempts in a row). */
int edp_multi_consumer_error(const edp_multi_consumer *c, size_t broker);

typedef struct edp_multi_consumer_stats {
  int live;             /* 1 while consuming */
  uint64_t processed;   /* handler calls that returned 0 (then acked) */
  uint64_t failed;      /* handler calls that returned non-zero */
  uint64_t redelivered; /* deliveries flagged redelivered */
  uint64_t downs, ups;
  uint64_t cancels; /* consumers cancelled by the broker (queue deleted) */
} edp_multi_consumer_stats;

int edp_multi_consumer_stats_get(const edp_multi_consumer *c, size_t broker,
                                 edp_multi_consumer_stats *out);

/* The edp_metrics_collect_fn of a consumer (obj is the
 * edp_multi_consumer): per broker (labels queue, broker: its index, and
 * host: host:port, never the URL's credentials) whether it consumes, and
 * its processed, failed and redelivered messages, downs and ups; and each
 * broker's connection (edp_conn_group.h: conn "broker-<index>", broker
 * host:port), kept after its thread closed it; docs/metrics.md. */
void edp_multi_consumer_collect(const void *consumer, edp_metrics_out *out);

#ifdef __cplusplus
}
#endif
#endif
