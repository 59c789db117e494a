/*
 * edp_watch.h - the watch notification pattern: a config server notifies
 * services of changes through temporary queues they registered, without
 * holding a connection to any of them.
 *
 * Server: keeps values and a registry of watches in a JSON store (written
 * atomically, mode 0600), serves registration requests on a durable
 * request queue ("config.q") over request/reply, and on a change publishes
 * the new value to every watching queue with mandatory set. A
 * basic.return means the queue is gone with its service: the watch leaves
 * the registry.
 *
 * Client (service side): declares an exclusive, server-named queue that
 * dies with its connection, registers it, and receives the current values
 * and then every change. After a reconnect its queue has a new name and it
 * registers again by itself.
 *
 * Ownership (docs/watch.md has the threat model): a watch belongs to the
 * user_id of the request that created it (the broker refuses a publish
 * whose user_id is not the publisher's login user) and to a random token
 * the server sends only into the watch's own queue, which only the
 * connection that declared it can read. Changing a watch takes both;
 * a request that has neither gets no answer in someone else's queue.
 * Clients accept a change only if it carries their token.
 *
 * Wire format (JSON bodies):
 *   request  {"service":"name","queue":"amq.gen-...","keys":["a","b"],
 *             "token":"<32 hex>"}  (token only to change one's own watch)
 *            reply_to (required, = queue), correlation_id and user_id
 *            (required: the publisher's login user) as AMQP properties;
 *            "keys" missing or [] watches every key.
 *   reply    {"ok":true,"version":N,"token":"<32 hex>",
 *             "values":{"a":{"value":V,"version":n}}}
 *            or {"ok":false,"error":"reason"}; type "edp.watch.reply".
 *   change   {"key":"a","value":V,"version":n,"token":"<32 hex>"};
 *            type "edp.watch.change".
 *   ping     {} of type "edp.watch.ping": proof that the queue still
 *            exists (a basic.return says it is gone); clients drop it.
 * Everything the server publishes carries user_id = its login user.
 */
#ifndef EDP_WATCH_H
#define EDP_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EDP_WATCH_REQUEST_QUEUE "config.q"

/* Limits on what a request may contain. */
#define EDP_WATCH_MAX_REQUEST 65536 /* body bytes */
#define EDP_WATCH_MAX_KEYS 64       /* keys per watch */
#define EDP_WATCH_MAX_KEY_LEN 200
#define EDP_WATCH_MAX_NAME_LEN 128 /* service name */
#define EDP_WATCH_MAX_VALUE 65536  /* a value, serialized */
#define EDP_WATCH_BATCH 128        /* requests per store write (prefetch) */

/* ---- server ---- */

enum edp_watch_event {
  EDP_WATCH_REGISTERED = 0, /* queue (re)registered for keys */
  EDP_WATCH_NOTIFIED = 1,   /* a change was published to queue */
  EDP_WATCH_REMOVED = 2,    /* queue is gone: watch left the registry */
  EDP_WATCH_REJECTED = 3,   /* a bad request; detail says why */
  EDP_WATCH_CHANGED = 4,    /* a value changed (key, version) */
  EDP_WATCH_SAVED = 5       /* the store was written (version = watches;
                               detail: why, e.g. "batch of 12") */
};

typedef struct edp_watch_info {
  int event;           /* enum edp_watch_event */
  const char *queue;   /* NULL for CHANGED / some REJECTED */
  const char *service; /* service name, may be NULL */
  const char *key;     /* NOTIFIED, CHANGED */
  int64_t version;     /* NOTIFIED, CHANGED */
  const char *detail;  /* REJECTED: the reason */
  const char *user;    /* REGISTERED, REJECTED: the request's user_id */
} edp_watch_info;

typedef void (*edp_watch_event_fn)(void *ud, const edp_watch_info *info);

typedef struct edp_watch_server_opts {
  const char *store_path;    /* required: the JSON store */
  const char *request_queue; /* default EDP_WATCH_REQUEST_QUEUE */
  /* Queue names a request may register, besides server-named "amq.gen-"
   * ones: those starting with this prefix. NULL: only amq.gen-. */
  const char *queue_prefix;
  size_t max_watches;  /* registry bound, default 10000 */
  size_t max_per_user; /* watches one user_id may hold, default 1000 */
  /* Orphans: each watch's queue is pinged (a mandatory message; a
   * basic.return removes the watch) once per prune_interval_ms (default
   * 30000, 0 = never), at most prune_rate pings a second (default 500). */
  int prune_interval_ms;
  int prune_rate;
  edp_watch_event_fn on_event;
  void *ud;
} edp_watch_server_opts;

void edp_watch_server_opts_init(edp_watch_server_opts *o);

typedef struct edp_watch_server edp_watch_server;

/* Loads the store (a missing file is an empty store), declares the durable
 * request queue and consumes it on c (not owned; the caller's thread owns
 * it). Errors: EDP_EINVAL, EDP_EBADDATA (the store is not a valid store:
 * we refuse to start rather than overwrite it), EDP_EIO, edp_conn errors. */
int edp_watch_server_new(edp_conn *c, const edp_watch_server_opts *o,
                         edp_watch_server **out);

/* Frees the server (not its connection); *s = NULL; accepts NULL. */
void edp_watch_server_destroy(edp_watch_server **s);

/* Serves what arrived: handles queued registration requests in batches of
 * up to EDP_WATCH_BATCH (one store write per batch, the replies published
 * after it; at most 8 batches a call), waiting up to timeout_ms for the
 * first; and pings the watches
 * that are due (call it at least once a second for pruning to keep its
 * pace). Returns 0 when one or more were handled (bad ones included: they
 * are rejected and acked; a batch whose store write failed is answered
 * "store not writable"), EDP_ETIMEOUT, EDP_ESTOPPED, or a reconnect
 * error. */
int edp_watch_server_serve(edp_watch_server *s, int timeout_ms);

/* Sets key to value (a JSON text; anything that does not parse as JSON is
 * taken as a string), saves the store, and publishes the change to every
 * watch of key, waiting for the broker's confirms; watches whose queue is
 * gone are removed (and the store saved again). *version (may be NULL)
 * receives the new version. A connection lost on the way is recovered
 * and the change published again to every watch (at least once: clients
 * drop a version they saw), so 0 means every watch's queue has it.
 * Errors: EDP_EINVAL (bad key), EDP_ETOOBIG (value over
 * EDP_WATCH_MAX_VALUE), EDP_EIO (store not written: nothing published),
 * EDP_ETIMEOUT (no confirm within 30 s), or the reconnect's error
 * (EDP_ECONNECT ...): the value is stored but some watches may not have
 * been told; the next set tells them its newer value. */
int edp_watch_server_set(edp_watch_server *s, const char *key,
                         const char *value, int64_t *version);

/* Registered watches / stored keys. */
size_t edp_watch_server_watch_count(const edp_watch_server *s);
size_t edp_watch_server_key_count(const edp_watch_server *s);

/* The server's counters (docs/metrics.md): written by the thread that owns
 * the server with single-writer stores, readable from any thread. */
typedef struct edp_watch_server_stats {
  int watches;              /* registered watches now */
  int keys;                 /* stored values now */
  uint64_t registrations;   /* watches registered or changed (REGISTERED) */
  uint64_t rejected;        /* requests refused: bad, hijack attempts,
                               quotas, store not writable (REJECTED) */
  uint64_t changes;         /* values set (CHANGED) */
  uint64_t notified;        /* changes the broker confirmed into a watch's
                               queue (NOTIFIED) */
  uint64_t notify_returned; /* changes returned unroutable: the watch's
                               queue is gone */
  uint64_t pings;           /* orphan pings published */
  uint64_t ping_returned;   /* pings returned: the watch's queue is gone */
  uint64_t removed;         /* watches removed, their queue gone (REMOVED) */
  uint64_t saves;           /* store writes (SAVED) */
  uint64_t save_errors;     /* store writes that failed */
} edp_watch_server_stats;

/* Fills *out; callable from any thread while the owner serves (each field
 * read atomically, not one instant's snapshot). Accepts NULL s (zeros). */
void edp_watch_server_stats_get(const edp_watch_server *s,
                                edp_watch_server_stats *out);

/* The edp_metrics_collect_fn of a server (obj is the edp_watch_server):
 * the edp_watch_* families of docs/metrics.md, label queue (the request
 * queue). The connection's own families come from edp_conn_collect. */
void edp_watch_server_collect(const void *server, edp_metrics_out *out);

/* ---- client (service side) ---- */

typedef struct edp_watch_update {
  char *key;   /* NULL: the registration was confirmed (also after a
                  reconnect); the current values follow */
  char *value; /* the value as JSON text */
  int64_t version;
  int initial; /* 1: from the registration reply, 0: a change */
} edp_watch_update;

void edp_watch_update_clear(edp_watch_update *u);

typedef struct edp_watch_client edp_watch_client;

/* Declares the client's temporary queue on c (not owned), starts consuming
 * it and sends the registration for keys (n_keys 0 = every key) to
 * request_queue (NULL = default). Errors: EDP_EINVAL, edp_conn errors. */
int edp_watch_client_new(edp_conn *c, const char *service,
                         const char *const *keys, size_t n_keys,
                         const char *request_queue, edp_watch_client **out);

void edp_watch_client_destroy(edp_watch_client **cl);

/* The client's current queue name (changes after a reconnect). */
const char *edp_watch_client_queue(const edp_watch_client *cl);

/* Messages dropped as not the server's: a reply without our
 * correlation_id, a change without our token, anything else but a ping. */
size_t edp_watch_client_dropped(const edp_watch_client *cl);

/* The client's counters (docs/metrics.md): written by the thread that
 * calls edp_watch_client_next, readable from any thread. */
typedef struct edp_watch_client_stats {
  uint64_t registrations; /* registration replies accepted: 1, plus one
                             per re-registration after a reconnect */
  uint64_t values;        /* current values taken from those replies */
  uint64_t notifications; /* changes received (a newer version) */
  uint64_t stale;         /* changes dropped as not newer: one the server
                             published again after its reconnect */
  uint64_t dropped;       /* messages not from the server (as
                             edp_watch_client_dropped) */
} edp_watch_client_stats;

/* Fills *out from any thread (each field read atomically). Accepts NULL
 * cl (zeros). */
void edp_watch_client_stats_get(const edp_watch_client *cl,
                                edp_watch_client_stats *out);

/* The edp_metrics_collect_fn of a client (obj is the edp_watch_client):
 * the edp_watch_client_* and edp_watch_notifications_received_total
 * families of docs/metrics.md, label service (its name, if it has one). */
void edp_watch_client_collect(const void *client, edp_metrics_out *out);

/* The next update, waiting up to timeout_ms: first the registration
 * confirmation (key NULL), the reply's values (initial = 1), then each
 * change. Changes with a version
 * not newer than the last one seen for that key are dropped (a change
 * republished after the server's reconnect). Returns 0, EDP_ETIMEOUT,
 * EDP_ESTOPPED, EDP_EACCESS (the server rejected the registration; the
 * reason is in u->value), EDP_EPROTOCOL (a reply without a token, from a
 * server older than the token), or a reconnect error. Only the reply to
 * our registration and changes with the token it gave are believed. */
int edp_watch_client_next(edp_watch_client *cl, edp_watch_update *u,
                          int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
