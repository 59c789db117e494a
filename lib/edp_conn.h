/*
 * edp_conn.h - a connection to one RabbitMQ broker with one channel:
 * topology, publishing with pipelined publisher confirms, consuming with
 * manual acks, and reconnection that restores all of it.
 *
 * Threads: an edp_conn belongs to the thread that opened it (rabbitmq-c
 * is not thread-safe). Other threads hand work back to that thread, for
 * example through a pipe or eventfd given to edp_conn_wait().
 *
 * Channels: each edp_conn has exactly one channel. Patterns that need
 * parallelism open one edp_conn per thread, which keeps the ownership rule
 * simple and lets each connection be restored on its own.
 *
 * Errors: functions return 0 or a negative EDP_E* code (edp_error.h). The
 * broker's last reply code and text stay readable through
 * edp_conn_reply_code() and edp_conn_reply_text(). After EDP_ECLOSED the
 * connection is gone: call edp_conn_reconnect() (or edp_conn_recover()).
 *
 * Recovery is one sequence, the same after a lost connection and after a
 * channel the broker closed (a channel error: 404 in a passive declare,
 * 406 after consumer_timeout, a publish to a missing exchange): connection
 * (only if lost) -> channel -> qos and confirm mode -> topology ->
 * consumers -> the unconfirmed messages published again. A channel close
 * is restored inside the call that met it, which still returns the close's
 * own error (EDP_ENOTFOUND for a missing queue ...); edp_conn_wait() and
 * edp_conn_receive() return EDP_ECHANNEL. Either way edp_conn_epoch()
 * changed, deliveries of the old channel can no longer be acked
 * (EDP_ESTALE: the broker redelivers them) and the event callback heard
 * EDP_CONN_CHANNEL_RESTORED. A step the broker refuses is settled, never
 * retried in a loop: a consumer whose queue is gone is dropped and reported
 * (EDP_CONN_CONSUMER_CANCELLED, then EDP_ENOTFOUND from the next wait), a
 * server-named queue that is gone is declared anew (edp_rename_fn), and
 * messages that keep closing the channel are reported nacked.
 */
#ifndef EDP_CONN_H
#define EDP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "edp_error.h"
#include "edp_metrics.h"
#include "edp_url.h"

#ifdef __cplusplus
extern "C" {
#endif

enum edp_log_level {
  EDP_LOG_ERROR = 0,
  EDP_LOG_WARN = 1,
  EDP_LOG_INFO = 2,
  EDP_LOG_DEBUG = 3
};

/* Receives every log line of libedp; msg has no trailing newline and never
 * contains a password. Called on the thread that made the libedp call. */
typedef void (*edp_log_fn)(void *ud, int level, const char *msg);

typedef struct edp_conn edp_conn;

/* Called on the owner thread after edp_conn_reconnect() restored the
 * connection, e.g. to register a new server-named queue somewhere. */
typedef void (*edp_reconnect_fn)(void *ud, edp_conn *c);

/* What happened to a connection, for logs, --json events and metrics. */
enum edp_conn_event_type {
  EDP_CONN_LOST = 1,               /* the connection is gone (reason) */
  EDP_CONN_RECONNECTED = 2,        /* a new connection, all restored */
  EDP_CONN_CHANNEL_RESTORED = 3,   /* the broker closed the channel
                                      (reply_code, reason); reopened */
  EDP_CONN_CONSUMER_CANCELLED = 4, /* queue, tag: cancelled by the broker
                                      or not restorable; not retried */
  EDP_CONN_BLOCKED = 5,            /* resource alarm: publishing waits */
  EDP_CONN_UNBLOCKED = 6
};

typedef struct edp_conn_event {
  int type;                /* enum edp_conn_event_type */
  int reply_code;          /* the broker's code where it gave one, else 0 */
  const char *reason;      /* one line, never NULL */
  const char *queue;       /* CONSUMER_CANCELLED: its queue, else NULL */
  const char *tag;         /* CONSUMER_CANCELLED: its consumer tag, else NULL */
  uint64_t republished;    /* RECONNECTED, CHANNEL_RESTORED: messages
                              published again */
  const char *url;         /* the connection's URL, password masked */
  const char *client_name; /* its connection_name, or "edp" */
} edp_conn_event;

/* Called on the owner thread; the strings live until it returns. */
typedef void (*edp_conn_event_fn)(void *ud, const edp_conn_event *ev);

/* "connection_lost", "reconnected", "channel_restored",
 * "consumer_cancelled", "blocked", "unblocked"; "unknown" otherwise. */
const char *edp_conn_event_name(int type);

typedef struct edp_conn_opts {
  const char *url;         /* NULL means EDP_URL_DEFAULT; copied */
  int heartbeat_s;         /* default 10; the URL's ?heartbeat= wins */
  int connect_timeout_ms;  /* name lookup, then TCP connect + login, each
                              within it; default 5000 */
  int rpc_timeout_ms;      /* each synchronous AMQP call, default 10000 */
  int frame_max;           /* default 131072 */
  int reconnect_max_ms;    /* edp_conn_reconnect gives up after, 30000 */
  int backoff_initial_ms;  /* first retry delay, default 100 */
  int backoff_max_ms;      /* retry delay cap, default 5000 */
  size_t max_body;         /* publish refuses bigger bodies with
                              EDP_ETOOBIG; default 128 MiB, RabbitMQ's
                              default max_message_size; 0 = no check */
  size_t read_ahead_bytes; /* while a handler runs (edp_conn_service),
                              reading stops once the queued deliveries'
                              bodies hold this many bytes, and goes on
                              when they are taken; heartbeats still go
                              out. Default 4 MiB; 0 = read all prefetched */
  int stop_fd;             /* readable = stop waiting (EDP_ESTOPPED); -1 */
  int blocked_timeout_ms;  /* publishing waits while the broker blocks the
                              connection (resource alarm); -1, the default,
                              until unblocked or stop_fd, else EDP_ETIMEOUT
                              after this long */
  const char *client_name; /* shown in the management UI; copied */
  edp_log_fn log;          /* NULL: silent */
  void *log_ud;
  edp_reconnect_fn on_reconnect;
  void *on_reconnect_ud;
  edp_conn_event_fn on_event; /* NULL: none; see edp_conn_on_event() */
  void *on_event_ud;
} edp_conn_opts;

/* Fills *o with the defaults above. */
void edp_conn_opts_init(edp_conn_opts *o);

/* Opens a connection and its channel. On failure *out is NULL and the
 * error is EDP_EURL, EDP_ECONNECT (nothing listens, DNS, timeout),
 * EDP_EAUTH (bad credentials, or no user for an EXTERNAL certificate),
 * EDP_EACCESS (vhost missing or refused), EDP_ETLS (amqps://: a
 * certificate that does not verify on either side, a CA, certificate or
 * key file that does not load, a port that does not speak TLS; a TLS
 * handshake that times out is EDP_ECONNECT), EDP_ENOMEM or
 * EDP_EPROTOCOL. err_text, if not NULL, receives a one-line
 * reason with the URL masked. */
int edp_conn_open(const edp_conn_opts *o, edp_conn **out, char *err_text,
                  size_t err_len);

/* Closes the channel and connection gracefully (if still open), frees
 * everything and sets *c to NULL. Accepts NULL and *c == NULL. */
void edp_conn_destroy(edp_conn **c);

/* The broker's last close/reply code (e.g. 404, 403, 320) and its text;
 * 0 and "" when there was none. */
int edp_conn_reply_code(const edp_conn *c);
const char *edp_conn_reply_text(const edp_conn *c);

/* The URL with the password masked. */
const char *edp_conn_url(const edp_conn *c);

/* The user the connection logs in as (the URL's, or with EXTERNAL the
 * client certificate's CN, which is the broker's name for it when it
 * takes names from the CN), for the user_id property; "" for NULL. */
const char *edp_conn_user(const edp_conn *c);

/* Non-zero while the connection is usable. */
int edp_conn_is_open(const edp_conn *c);

/* Counts channel (re)openings; deliveries carry the epoch they came on,
 * and acks for an older epoch are refused with EDP_ESTALE (the broker
 * redelivers those messages). */
uint32_t edp_conn_epoch(const edp_conn *c);

/* The socket, for diagnostics; use edp_conn_wait() to wait on it. */
int edp_conn_fd(const edp_conn *c);

/* Receives the connection's events (edp_conn_event); NULL to stop. */
void edp_conn_on_event(edp_conn *c, edp_conn_event_fn fn, void *ud);

/* Non-zero while the broker blocks this connection's publishing. */
int edp_conn_is_blocked(const edp_conn *c);

/* ---- statistics (see edp_metrics.h, docs/metrics.md) ---- */

/* What a connection is doing, for health checks. */
enum edp_conn_state {
  EDP_CONN_STATE_UP = 0,      /* open and usable */
  EDP_CONN_STATE_BLOCKED = 1, /* open, publishing blocked (resource alarm) */
  EDP_CONN_STATE_DOWN = 2     /* lost; reconnecting or given up */
};

/* The connection's counters since it was opened (reconnects included). */
typedef struct edp_conn_stats {
  uint64_t published;   /* edp_conn_publish calls that wrote a message */
  uint64_t republished; /* unconfirmed messages published again by a
                           restore or edp_conn_republish_unconfirmed */
  uint64_t confirmed, nacked, returned; /* confirms, by outcome */
  uint64_t delivered;                   /* deliveries read */
  uint64_t lost;                        /* times the connection was lost */
  uint64_t reconnects;          /* successful edp_conn_reconnect calls */
  uint64_t channel_restores;    /* channels the broker closed, reopened */
  uint64_t consumers_cancelled; /* consumers ended by the broker */
  uint64_t blocked_count;       /* times the broker blocked publishing */
  double blocked_seconds;       /* time spent blocked, the current
                                   period included */
  int state;                    /* enum edp_conn_state */
  int consumers;                /* consumers it runs (edp_conn_consumers) */
  edp_hist confirm_latency;     /* publish to confirm, with timing on */
} edp_conn_stats;

/* Fills *out. Unlike the rest of edp_conn, callable from any thread while
 * the owner works (a metrics endpoint's); each field is read atomically,
 * the whole is not a snapshot of one instant. Returns 0 or EDP_EINVAL. */
int edp_conn_stats_get(const edp_conn *c, edp_conn_stats *out);

/* Keeps the confirm latency histogram (on != 0) at the cost of one clock
 * read per publish and one per confirm frame; off by default. Owner
 * thread. edp_conn_timing() tells patterns whether to time their work
 * too (any thread). */
void edp_conn_set_timing(edp_conn *c, int on);
int edp_conn_timing(const edp_conn *c);

/* The edp_metrics_collect_fn of a connection (obj is the edp_conn): the
 * edp_connection_* and edp_messages_* families of docs/metrics.md, with
 * labels connection (client_name) and broker (host:port). */
void edp_conn_collect(const void *conn, edp_metrics_out *out);

/* ---- topology (recorded and replayed after a reconnect) ---- */

typedef struct edp_queue_opts {
  int durable;                         /* default 1 */
  int exclusive;                       /* default 0 */
  int auto_delete;                     /* default 0 */
  const char *dead_letter_exchange;    /* x-dead-letter-exchange */
  const char *dead_letter_routing_key; /* x-dead-letter-routing-key */
  int max_priority;                    /* x-max-priority, 0 = none */
  const char *queue_type;              /* x-queue-type: classic, quorum; NULL */
  long message_ttl_ms;                 /* x-message-ttl, -1 = none */
  long max_length;                     /* x-max-length, -1 = none */
  const char *overflow; /* x-overflow: drop-head, reject-publish */
  int single_active;    /* x-single-active-consumer: one consumer at a time
                           gets deliveries, the others wait as standbys */
  long delivery_limit;  /* x-delivery-limit (quorum only), -1 = none */
  const char *dead_letter_strategy; /* x-dead-letter-strategy (quorum):
                                       at-most-once, at-least-once */
} edp_queue_opts;

void edp_queue_opts_init(edp_queue_opts *o);

/* The kind of durable queue a pattern declares for its users, the choice
 * an operator makes (docs/ha.md):
 * - type NULL or "classic": the node's own queue; "quorum": replicated
 *   over the cluster's nodes (Raft), durable only, no priorities on
 *   RabbitMQ 3.x;
 * - delivery_limit (quorum only, 0 = none): the broker dead-letters a
 *   message delivered this many times plus one without being settled
 *   (its consumer crashed or lost the connection every time) to the
 *   queue's "<queue>.dlq", at least once (x-dead-letter-strategy
 *   at-least-once, which needs x-overflow reject-publish);
 * - single_active: only one consumer gets deliveries, the others stand by
 *   and the broker hands the queue to one of them when it goes away. */
typedef struct edp_queue_kind {
  const char *type;
  long delivery_limit;
  int single_active;
} edp_queue_kind;

/* Sets o (after edp_queue_opts_init) for a durable queue of kind k (NULL
 * = classic) whose dead letters go to dlq ("" or NULL = none: a delivery
 * limit then drops, so the patterns always give one). Returns 0, or
 * EDP_EINVAL for an unknown type, a delivery limit on a classic queue or
 * a negative one. */
int edp_queue_opts_kind(edp_queue_opts *o, const edp_queue_kind *k,
                        const char *dlq);

/* Declares the durable queue name of kind k (NULL = classic) and, when
 * with_dlq or a delivery limit asks for it, "<name>.dlq" first (same
 * type, no limit, never single-active). name is at most 200 bytes.
 * Errors: those of edp_queue_opts_kind() and edp_conn_queue_declare(). */
int edp_conn_declare_kind(edp_conn *c, const char *name,
                          const edp_queue_kind *k, int with_dlq);

/* Declares a queue. name "" asks the broker to name it; the name is written
 * to name_out (may be NULL). msgs/consumers (may be NULL) receive the
 * counts. Errors: EDP_EPRECONDITION (exists with other arguments: the
 * broker's reply text, edp_conn_reply_text(), names the first that
 * differs), EDP_EACCESS, EDP_ECLOSED, EDP_ECHANNEL, EDP_ETIMEOUT,
 * EDP_EINVAL (also: a quorum queue that is not durable, exclusive or
 * auto-delete, or a queue type other than classic and quorum). */
int edp_conn_queue_declare(edp_conn *c, const char *name,
                           const edp_queue_opts *o, char *name_out,
                           size_t name_out_len, uint32_t *msgs,
                           uint32_t *consumers);

/* Called during edp_conn_reconnect() when a server-named queue (declared
 * with name "") came back under a new name; its bindings and consumers
 * already follow the new name. The strings live until the call returns. */
typedef void (*edp_rename_fn)(void *ud, const char *old_name,
                              const char *new_name);
void edp_conn_on_queue_renamed(edp_conn *c, edp_rename_fn fn, void *ud);

/* Passive declare: the message and consumer counts of an existing queue.
 * EDP_ENOTFOUND if it does not exist (the channel is restored). */
int edp_conn_queue_inspect(edp_conn *c, const char *name, uint32_t *msgs,
                           uint32_t *consumers);

/* Deletes / purges a queue (not recorded). purged may be NULL. */
int edp_conn_queue_delete(edp_conn *c, const char *name);
int edp_conn_queue_purge(edp_conn *c, const char *name, uint32_t *purged);

/* Declares an exchange of a type ("direct", "topic", "fanout", "headers",
 * "x-consistent-hash"). */
int edp_conn_exchange_declare(edp_conn *c, const char *name, const char *type,
                              int durable);
int edp_conn_exchange_delete(edp_conn *c, const char *name);

/* Binds queue to exchange with routing_key. */
int edp_conn_queue_bind(edp_conn *c, const char *queue, const char *exchange,
                        const char *routing_key);

/* basic.qos: at most prefetch unacked deliveries on this channel. */
int edp_conn_qos(edp_conn *c, int prefetch);

/* Puts the channel in confirm mode; from then on every publish gets a
 * sequence number and is tracked until the broker acks or nacks it. */
int edp_conn_confirm_select(edp_conn *c);

/* ---- publishing ---- */

typedef struct edp_header {
  const char *key;
  const char *str; /* string value, or NULL for a number */
  int64_t num;
} edp_header;

/* A header value of any AMQP 0-9-1 field type (the field-table grammar as
 * RabbitMQ and rabbitmq-c speak it); kind is the type's tag on the wire.
 * Deliveries keep every header this way, nested arrays and tables
 * included, so that a copy can publish them unchanged. */
enum edp_field_kind {
  EDP_FIELD_BOOL = 't',      /* v.i: 0 or 1 */
  EDP_FIELD_I8 = 'b',        /* v.i */
  EDP_FIELD_U8 = 'B',        /* v.i */
  EDP_FIELD_I16 = 's',       /* v.i */
  EDP_FIELD_U16 = 'u',       /* v.i */
  EDP_FIELD_I32 = 'I',       /* v.i */
  EDP_FIELD_U32 = 'i',       /* v.i */
  EDP_FIELD_I64 = 'l',       /* v.i */
  EDP_FIELD_U64 = 'L',       /* v.u */
  EDP_FIELD_F32 = 'f',       /* v.f32 */
  EDP_FIELD_F64 = 'd',       /* v.f64 */
  EDP_FIELD_DECIMAL = 'D',   /* v.dec */
  EDP_FIELD_STRING = 'S',    /* v.bytes: a longstr, any bytes */
  EDP_FIELD_BYTES = 'x',     /* v.bytes: a byte array */
  EDP_FIELD_TIMESTAMP = 'T', /* v.u: seconds since the epoch */
  EDP_FIELD_ARRAY = 'A',     /* v.array */
  EDP_FIELD_TABLE = 'F',     /* v.table */
  EDP_FIELD_VOID = 'V'       /* no value */
};

typedef struct edp_field edp_field;
typedef struct edp_value {
  int kind; /* enum edp_field_kind */
  union {
    int64_t i;
    uint64_t u;
    float f32;
    double f64;
    struct {
      uint8_t decimals;
      uint32_t value;
    } dec;
    struct {
      const char *ptr; /* in deliveries followed by a NUL not counted */
      size_t len;
    } bytes;
    struct {
      const struct edp_value *v;
      size_t n;
    } array;
    struct {
      const edp_field *v;
      size_t n;
    } table;
  } v;
} edp_value;

struct edp_field {
  const char *key; /* NUL-terminated */
  size_t key_len;  /* its length; 0 means strlen(key) */
  edp_value value;
};

typedef struct edp_msg {
  const char *exchange;    /* "" = default exchange */
  const char *routing_key; /* queue name on the default exchange */
  const void *body;
  size_t body_len;
  int persistent; /* delivery_mode 2 */
  int mandatory;  /* unroutable -> basic.return */
  const char *message_id, *content_type, *reply_to, *correlation_id, *type;
  const char *user_id; /* NULL = not set; the broker refuses (406, channel
                          closed) one that is not the login user */
  int priority;        /* 0..255, -1 = not set */
  int64_t timestamp;   /* seconds since the epoch, 0 = not set */
  const edp_header *headers;
  size_t n_headers;
  /* The rest of AMQP's basic properties, for copies of deliveries (see
   * edp_msg_from_delivery): NULL = not set. */
  const char *content_encoding, *expiration, *app_id, *cluster_id;
  int delivery_mode; /* 0 (edp_msg_init): 2 if persistent, else 1;
                        -1: not set; 1..255: this value */
  /* Headers of any AMQP type, sent before `headers`; an entry of `headers`
   * replaces every entry of table with the same key. */
  const edp_field *table;
  size_t n_table;
} edp_msg;

/* Zeroes *m with priority -1 and exchange "". */
void edp_msg_init(edp_msg *m);

/* Publishes one message. In confirm mode a copy is kept until confirmed
 * and *seq (may be NULL) receives its sequence number, else 0. Does not
 * wait for the confirm. While the broker blocks the connection (a memory
 * or disk alarm) it waits to write, servicing the connection, until
 * unblocked, stop_fd (EDP_ESTOPPED) or blocked_timeout_ms (EDP_ETIMEOUT):
 * a blocked broker no longer reads, and a write would hang. Errors:
 * EDP_ETOOBIG (over max_body), EDP_ECLOSED, EDP_EINVAL, EDP_ESTOPPED,
 * EDP_ETIMEOUT. */
int edp_conn_publish(edp_conn *c, const edp_msg *m, uint64_t *seq);

enum edp_confirm_status {
  EDP_CONFIRM_ACK = 0,     /* the broker took responsibility */
  EDP_CONFIRM_NACK = 1,    /* the broker refused it */
  EDP_CONFIRM_RETURNED = 2 /* unroutable mandatory message, then acked */
};

typedef struct edp_confirm {
  uint64_t seq;
  int status;             /* enum edp_confirm_status */
  const char *message_id; /* NULL if the message had none */
  int reply_code;         /* for RETURNED: e.g. 312 NO_ROUTE */
  const char *reply_text;
  const edp_msg *msg; /* the message as published */
} edp_confirm;

/* Called for each confirmed message, on the owner thread, inside any call
 * that reads frames: the waits, receive, the synchronous calls, and
 * edp_conn_publish (it reads what arrived every few milliseconds). The
 * strings live until the callback returns; it must not call into the
 * connection. */
typedef void (*edp_confirm_fn)(void *ud, const edp_confirm *cf);
void edp_conn_on_confirm(edp_conn *c, edp_confirm_fn fn, void *ud);

/* Messages published in confirm mode and not confirmed yet. */
size_t edp_conn_unconfirmed(const edp_conn *c);

/* Reads frames until at most max_outstanding messages are unconfirmed
 * (counting those a lost channel left, see edp_conn_unconfirmed()),
 * reporting each through the confirm callback. Deliveries that arrive
 * meanwhile are queued for edp_conn_receive(). A channel the broker closes
 * meanwhile is restored and its unconfirmed messages published again.
 * Returns 0, EDP_ETIMEOUT, EDP_ESTOPPED or EDP_ECLOSED (the connection is
 * lost: recover, see edp_conn_wait_confirms_recover()). */
int edp_conn_wait_confirms(edp_conn *c, size_t max_outstanding, int timeout_ms);

/* The messages a lost connection left unconfirmed are held until the
 * reconnect publishes them again (new sequence numbers, same message_id,
 * original order). This publishes any still held, e.g. when a reconnect
 * was interrupted in the middle; *n (may be NULL) receives how many.
 * Returns 0 or an error of edp_conn_publish(). */
int edp_conn_republish_unconfirmed(edp_conn *c, size_t *n);

/* Hands the messages a lost channel left unconfirmed (those
 * edp_conn_republish_unconfirmed() would resend) to fn, oldest first, and
 * forgets each one fn accepts by returning 0; stops at the first non-zero
 * return and keeps that message and the rest. For sending them through
 * another connection, e.g. to another broker when this one is dead. The
 * message lives until fn returns. Returns how many were taken (0 for
 * NULL arguments). */
typedef int (*edp_take_fn)(void *ud, const edp_msg *m);
size_t edp_conn_take_unconfirmed(edp_conn *c, edp_take_fn fn, void *ud);

/* Publishes m and waits up to timeout_ms for its own confirm (confirm
 * mode required), servicing other confirms meanwhile. Returns 0 when the
 * broker acked it, EDP_ENACKED, EDP_ERETURNED (unroutable mandatory
 * message), EDP_ETIMEOUT, EDP_ECLOSED, EDP_EINVAL (not in confirm mode) or
 * an error of edp_conn_publish(). For the rare message that must be safe
 * before the caller goes on, e.g. a copy to a dead-letter queue. A stop
 * (stop_fd readable) before the message is written returns EDP_ESTOPPED
 * with nothing sent; once written, the stop is ignored until its confirm
 * or timeout_ms, so that the caller knows whether the copy exists. */
int edp_conn_publish_confirmed(edp_conn *c, const edp_msg *m, int timeout_ms);

/* What recovering a lost connection took; the caller zeroes it. */
typedef struct edp_recovery {
  uint64_t reconnects;  /* successful reconnects */
  uint64_t republished; /* unconfirmed messages published again */
} edp_recovery;

/* After EDP_ECLOSED: edp_conn_reconnect(), which also publishes the
 * unconfirmed messages again. r (may be NULL) accumulates counts.
 * Returns 0 or the reconnect's error (EDP_ECONNECT, EDP_EAUTH, ...). */
int edp_conn_recover(edp_conn *c, edp_recovery *r);

/* edp_conn_wait_confirms() that recovers a lost connection on the way
 * (edp_conn_recover) and waits again. Errors as both. */
int edp_conn_wait_confirms_recover(edp_conn *c, size_t max_outstanding,
                                   int timeout_ms, edp_recovery *r);

/* Publishes m once at most window - 1 messages are unconfirmed (window 0:
 * no wait, e.g. without confirm mode), recovering a lost connection on the
 * way: edp_conn_recover() publishes the unconfirmed messages again before
 * m. r (may be NULL) accumulates counts. Errors as edp_conn_publish() and
 * edp_conn_wait_confirms_recover(). */
int edp_conn_publish_window(edp_conn *c, const edp_msg *m, size_t window,
                            int timeout_ms, edp_recovery *r);

/* Called once the library no longer needs a lent body (below): its
 * message was confirmed, refused or returned, taken with
 * edp_conn_take_unconfirmed(), sent without confirm mode, or the
 * connection was destroyed. On the thread that owns the connection. */
typedef void (*edp_body_done_fn)(void *ud, const void *body);

/* edp_conn_publish() and edp_conn_publish_window() for a big body that is
 * lent instead of copied: the library keeps the message's copy for
 * republishing (its properties, headers and strings are copied as usual)
 * pointing at m->body itself, which must stay valid and unchanged until
 * done(ud, m->body) is called (exactly once, see edp_body_done_fn). With
 * free() as done it takes ownership of a malloc()ed body. When these
 * return an error the body was not taken: done is not called and the
 * caller still owns it. done must not be NULL (EDP_EINVAL). */
int edp_conn_publish_lent(edp_conn *c, const edp_msg *m, edp_body_done_fn done,
                          void *ud, uint64_t *seq);
int edp_conn_publish_window_lent(edp_conn *c, const edp_msg *m, size_t window,
                                 int timeout_ms, edp_recovery *r,
                                 edp_body_done_fn done, void *ud);

/* A deep copy of m (strings, headers and body) in one allocation, to free
 * with free(). NULL if m is invalid or memory ran out. */
edp_msg *edp_msg_dup(const edp_msg *m);

/* ---- consuming ---- */

typedef struct edp_consume_opts {
  int no_ack;      /* default 0: manual acks */
  int exclusive;   /* default 0 */
  int priority;    /* x-priority consumer argument, default 0 */
  size_t max_body; /* 0 (default): no limit; else a delivery whose content
                      header announces a bigger body is queued without it
                      (edp_delivery.oversize), its body frames read and
                      dropped one by one: the size never becomes memory */
} edp_consume_opts;

void edp_consume_opts_init(edp_consume_opts *o);

/* Starts a consumer on queue (o may be NULL for defaults). The broker's
 * consumer tag goes to tag_out (may be NULL). */
int edp_conn_consume(edp_conn *c, const char *queue, const edp_consume_opts *o,
                     char *tag_out, size_t tag_len);

/* Consumers this connection runs (and restores after a reconnect): those
 * started and neither cancelled nor ended by the broker. Lets an owner
 * that missed the one EDP_ENOTFOUND notice see its consumer is gone. */
size_t edp_conn_consumers(const edp_conn *c);

/* Cancels a consumer; deliveries already sent stay queued. */
int edp_conn_cancel(edp_conn *c, const char *tag);

typedef struct edp_delivery {
  uint64_t tag;   /* delivery tag on the channel of epoch */
  uint32_t epoch; /* see edp_conn_epoch() */
  int redelivered;
  char *exchange, *routing_key, *consumer_tag;
  void *body; /* NUL-terminated copy for convenience */
  size_t body_len;
  char *message_id, *content_type, *reply_to, *correlation_id, *type;
  int priority;      /* -1 if not set */
  int64_t timestamp; /* 0 if not set */
  int persistent;
  edp_field *headers; /* every header, of every type, in wire order; one
                         allocation (a deep copy) */
  size_t n_headers;
  char *user_id; /* the user_id property (the broker refuses a publish
                    whose user_id is not the publisher's login user),
                    NULL if not set */
  char *content_encoding, *expiration, *app_id, *cluster_id; /* or NULL */
  int delivery_mode; /* as received, -1 if not set */
  uint64_t oversize; /* 0, or the announced body size over the consumer's
                        max_body: the body was dropped (body "", len 0) */

  /* Internal: the one allocation that holds the body and the strings of
   * a received delivery (NULL: each field is an allocation of its own). */
  void *block_;
} edp_delivery;

/* Takes the next delivery, waiting up to timeout_ms (0 = don't wait,
 * -1 = forever, until stop_fd). Heartbeats and confirms are serviced while
 * waiting. Returns 0, EDP_ETIMEOUT, EDP_ESTOPPED, EDP_ECLOSED,
 * EDP_ECHANNEL (the broker closed the channel; it was restored with its
 * consumers, deliveries taken before it can't be acked any more) or
 * EDP_ENOTFOUND (a consumer was cancelled, by the broker or because its
 * queue was gone at a restore; the event callback says which).
 * The caller owns *d and frees it with edp_delivery_clear(). */
int edp_conn_receive(edp_conn *c, edp_delivery *d, int timeout_ms);

/* Frees what a delivery owns and zeroes it. Accepts NULL. */
void edp_delivery_clear(edp_delivery *d);

/* The value of the first header named key, or NULL. */
const edp_value *edp_delivery_header(const edp_delivery *d, const char *key);

/* A header's string value (a longstr or byte array; NUL-terminated, cut
 * at an inner NUL) or NULL / an integer header (of any integer type that
 * fits int64_t) into *v (may be NULL): 0 or EDP_ENOTFOUND. */
const char *edp_delivery_header_str(const edp_delivery *d, const char *key);
int edp_delivery_header_int(const edp_delivery *d, const char *key, int64_t *v);

/* Fills *m to publish d again unchanged: its body, every property as
 * received (absent ones stay absent, delivery_mode included; a received
 * delivery_mode 0 goes out as 1, a timestamp 0 as none) and every header
 * (m->table), mandatory set. The caller sets exchange and routing_key and
 * may add headers (m->headers replace those of the same key); m points
 * into d, which must outlive it. */
void edp_msg_from_delivery(edp_msg *m, const edp_delivery *d);

/* Deep copy of fields[0..n) in one allocation (free() it, the array is its
 * start); NULL for n == 0 or without memory (*out_n then 0). */
edp_field *edp_fields_dup(const edp_field *fields, size_t n, size_t *out_n);

/* Number of deliveries read from the socket and not yet received. */
size_t edp_conn_pending_deliveries(const edp_conn *c);

/* The read_ahead_bytes the connection was opened with (0: no limit). A
 * consumer that gathers received deliveries into a batch stops adding
 * to it there too, so that batch and queue each stay near the limit. */
size_t edp_conn_read_ahead(const edp_conn *c);

enum { EDP_READY_DELIVERY = 1, EDP_READY_WAKE = 2 };

/* Waits until a delivery is queued (EDP_READY_DELIVERY), wake_fd (-1 for
 * none) is readable (EDP_READY_WAKE), or timeout_ms passes (returns 0).
 * The owner thread's single blocking point: it services heartbeats and
 * confirms meanwhile. Negative on error as edp_conn_receive(). */
int edp_conn_wait(edp_conn *c, int wake_fd, int timeout_ms);

/* Services the connection (heartbeats, confirms; deliveries are queued
 * for edp_conn_receive) until wake_fd is readable (EDP_READY_WAKE) or
 * timeout_ms passes (0): for an owner that must keep the connection
 * alive while a handler runs elsewhere (edp_worker). While the queued
 * deliveries' bodies hold read_ahead_bytes (edp_conn_opts) it reads
 * nothing and only sends heartbeats, so that prefetched bodies wait in
 * the socket and the broker, not in this process's memory; confirms and
 * broker closes are then read once deliveries are taken. A consumer
 * cancellation is left for the next edp_conn_wait(). Negative on error
 * as edp_conn_wait(). */
int edp_conn_service(edp_conn *c, int wake_fd, int timeout_ms);

/* Acknowledges / rejects deliveries. multiple covers every tag up to tag.
 * EDP_ESTALE if epoch is not the current channel's (the broker will
 * redeliver those messages; nothing to do). */
int edp_conn_ack(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple);
int edp_conn_nack(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple,
                  int requeue);

/* Holds (on != 0) or releases (0) the small frames written to the
 * connection's TCP socket: while held, the kernel joins them into full
 * segments instead of sending a packet per frame (TCP_CORK), and
 * releasing sends what is held at once. For a run of writes that go out
 * together anyway, such as the acks of a batch of handled messages: each
 * frame is still written (and acked) as before, the packets are fewer.
 * Never hold frames across a wait for the broker's answer (a confirm, an
 * RPC): the kernel sends held frames only after 200 ms. Returns 0,
 * EDP_ECLOSED (no connection) or EDP_EIO (not a TCP socket). */
int edp_conn_cork(edp_conn *c, int on);

/* ---- reconnection ---- */

/* Opens a new connection with exponential backoff and jitter, then
 * restores channel, qos, confirm mode, topology and consumers in that
 * order, publishes the unconfirmed messages again, and calls on_reconnect
 * (and the event callback: EDP_CONN_RECONNECTED). Gives up after
 * reconnect_max_ms (EDP_ECONNECT or the last error), at once on EDP_EAUTH,
 * EDP_EACCESS or EDP_ETLS (a refused certificate stays refused), or on
 * stop_fd (EDP_ESTOPPED). */
int edp_conn_reconnect(edp_conn *c);

/* Drops the connection without a handshake, as a broken network would;
 * for tests and for callers that must abandon a wedged connection. */
void edp_conn_abandon(edp_conn *c);

#ifdef __cplusplus
}
#endif
#endif
