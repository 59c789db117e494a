/*
 * edp_conn_internal.h - the state of an edp_conn, shared by the files that
 * implement it (not installed, not part of the API):
 *
 *   edp_conn.c      connection, frame pump, channel closes and recovery
 *   edp_publish.c   publishing and publisher confirms
 *   edp_consume.c   consumers, deliveries and acks
 *   edp_topology.c  exchanges, queues and bindings, and their replay
 *   edp_tls.c       the TLS socket of amqps:// and its error messages
 *
 * Channel numbers rotate: every (re)opened channel gets the next number,
 * so a frame that rabbitmq-c queued for a channel the broker closed can
 * never be taken for a frame of the new one (a stale basic.ack would
 * confirm the wrong message, a stale basic.deliver would be acked on the
 * wrong channel).
 */
#ifndef EDP_CONN_INTERNAL_H
#define EDP_CONN_INTERNAL_H

#include <amqp.h>
#include <stdint.h>
#include <string.h>

#include "edp_conn.h"
#include "edp_metrics.h"

/* Channel numbers used in turn; a closed number is reused only 64
 * channel openings later, long after its frames were read. */
#define EDP__CHANNELS 64

/* A published, not yet confirmed message: a deep copy in one allocation so
 * that it can be published again after a reconnect. */
struct edp__pending {
  struct edp__pending *next;
  uint64_t seq;
  int64_t sent_us; /* when it was written, for the confirm latency (0:
                      timing off) */
  int returned;
  int reply_code;
  char reply_text[128];
  /* A lent body (edp_conn_publish_lent): m.body is the caller's, given
   * back through body_done when the entry is freed; NULL: m.body is in
   * the entry's own allocation. */
  edp_body_done_fn body_done;
  void *body_ud;
  edp_msg m; /* points into the same allocation */
};

struct edp__dnode {
  struct edp__dnode *next;
  edp_delivery d;
};

enum edp__op_kind { EDP__OP_EXCHANGE, EDP__OP_QUEUE, EDP__OP_BIND };

struct edp__topo_op {
  int kind;
  char *name, *exchange, *key; /* queue or exchange, bind exchange, key/type */
  int durable;
  int server_named;
  int gone;          /* server-named queue no longer exists: declare anew */
  edp_queue_opts qo; /* strings owned */
};

struct edp__consumer {
  char *queue, *tag;
  edp_consume_opts o;
  int prefetch; /* the qos in effect when it was created, -1 = none */
};

/* The counters behind edp_conn_stats_get(): written by the owner thread
 * alone with edp_count_add()/edp_gauge_set() (edp_metrics.h), read by any
 * thread. Plain counts on the hot paths, no lock. */
struct edp__counters {
  uint64_t published, confirmed, nacked, returned, delivered;
  uint64_t lost, reconnects, channel_restores, consumers_cancelled;
  uint64_t blocked_count, blocked_us; /* completed blocked periods */
  uint64_t blocked_since_us;          /* 0: not blocked now */
  int state;                          /* enum edp_conn_state */
  int consumers;                      /* a copy of n_cons */
  edp_hist confirm_latency;
};

struct edp_conn {
  edp_conn_opts o;
  char *url_raw, *client_name;
  edp_url url;
  char masked[512];
  /* The last TLS attempt (edp_tls.c): first verification error, the
   * subject of the certificate it concerns, handshake begun. */
  int tls_verify_err;
  int tls_started;
  int tls_alert; /* the first fatal alert the broker sent, 0 = none */
  char tls_subject[256];
  char tls_identity[256]; /* the client certificate's CN, for EXTERNAL */
  /* edp_conn_publish_confirmed waits out the confirm of a message it
   * wrote: the pump does not end at the stop fd meanwhile. */
  int ignore_stop;
  /* Memory for the headers of the message being published; kept and
   * recycled, so a publish with headers allocates nothing. */
  amqp_pool_t hdr_pool;

  amqp_connection_state_t st; /* NULL once the connection is lost */
  amqp_channel_t chan;        /* the current channel's number */
  int open;                   /* connection and channel usable */
  int chan_closed; /* the broker closed the channel, the connection lives:
                      the next call restores the channel first */
  uint32_t epoch;  /* channel openings */
  unsigned rand_state;

  int reply_code;
  char reply_text[256];

  int blocked;                /* connection.blocked seen, not unblocked */
  int64_t next_io_check_ms;   /* publishing looks at the socket then */
  size_t blind_bytes;         /* written since it last looked */
  int sndbuf;                 /* the socket's send buffer, last read; 0 */
  int closes_without_ack;     /* channel closes with messages in flight
                                 and no ack in between: a poison message */
  edp_conn_event_fn on_event; /* may be NULL */
  void *on_event_ud;

  int prefetch; /* -1 = never set */
  int confirm;
  struct edp__topo_op *ops;
  size_t n_ops, cap_ops;
  struct edp__consumer *cons;
  size_t n_cons, cap_cons;
  int consumer_lost; /* a consumer was cancelled; wait reports it once */

  uint64_t next_seq;
  struct edp__pending *pend_head, *pend_tail, *lost_head, *lost_tail;
  size_t n_pend, n_lost;
  uint64_t republished; /* messages published again by restores, in all
                           (edp_count_add: the stats read it) */
  int timing;           /* edp_conn_set_timing: confirm latency kept */
  struct edp__counters m;
  edp_confirm_fn on_confirm;
  void *on_confirm_ud;
  edp_rename_fn on_rename;
  void *on_rename_ud;
  uint64_t sync_seq; /* edp_conn_publish_confirmed's message, 0 = none */
  int sync_status;   /* its confirm status, -1 until it came */

  struct edp__dnode *dq_head, *dq_tail;
  size_t n_dq;
  size_t dq_bytes;        /* the queued deliveries' body bytes */
  int64_t held_beat_ms;   /* last heartbeat sent while reads were held */
};

/* ---- edp_conn.c ---- */

void edp__log(edp_conn *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void edp__event(edp_conn *c, int type, const char *queue, const char *tag);
char *edp__dup_bytes(amqp_bytes_t b);
static inline char *edp__dupstr(const char *s) { return s ? strdup(s) : NULL; }
int edp__bytes_eq(amqp_bytes_t b, const char *s);
amqp_bytes_t edp__bytes_of(const char *s);

/* edp_fields.c: AMQP tables <-> edp_field arrays. from_amqp deep-copies t
 * into one allocation (*out is its start; NULL when empty). to_amqp fills
 * *out with entries from pool that point into f (f must outlive it).
 * fields_size is the bytes of a deep copy, which copy_into writes into
 * buf (aligned for edp_field). Errors: EDP_ENOMEM, EDP_EINVAL (a NULL
 * key, a key over 255 bytes, an unknown kind). */
int edp__fields_from_amqp(const amqp_table_t *t, edp_field **out, size_t *n);
int edp__fields_to_amqp(amqp_pool_t *pool, const edp_field *f, size_t n,
                        amqp_table_t *out);
int edp__field_to_amqp(amqp_pool_t *pool, const edp_field *f,
                       amqp_table_entry_t *out);
size_t edp__fields_size(const edp_field *f, size_t n);
/* A field's key length (key_len, or strlen(key) where it is 0). */
size_t edp__field_key_len(const edp_field *f);
edp_field *edp__fields_copy_into(void *buf, const edp_field *f, size_t n);

/* Ends a blocked period in the counters (edp_conn_stats.c); no-op when
 * none is open. */
void edp__blocked_end(edp_conn *c);

/* The broker label of c: its host:port (edp_conn_stats.c). */
void edp__conn_broker(const edp_conn *c, char *buf, size_t len);

/* Writes the connection families of docs/metrics.md for the counters s
 * with the label set l: the gauges (up, blocked, consumers) only when
 * gauges is set (a live connection), the confirm latency histogram only
 * when timing is (edp_conn_stats.c; edp_conn_group.c uses it too). */
void edp__conn_stats_emit(edp_metrics_out *out, const char *l,
                          const edp_conn_stats *s, int gauges, int timing);

/* Turns an RPC reply into 0 or an error, handling a channel or connection
 * close (the channel is then left closed for edp__ready to restore). */
int edp__rpc_result(edp_conn *c, amqp_rpc_reply_t r);
/* A library error: the connection is unusable; returns EDP_ECLOSED. */
int edp__lib_error(edp_conn *c, int status);
void edp__mark_closed(edp_conn *c, const char *why);

/* Before a call: restores a channel the broker closed; then 0 if the
 * channel is usable, else EDP_ECLOSED (EDP_EINVAL for NULL). */
int edp__ready(edp_conn *c);
/* After a call that got rc: restores the channel if the broker closed it
 * and returns rc, or EDP_ECLOSED if the channel could not be restored. */
int edp__settle(edp_conn *c, int rc);

/* Reads and handles frames until one came, wake_fd or stop_fd became
 * readable or timeout_ms passed (see edp_conn.c). */
int edp__pump(edp_conn *c, int wake_fd, int timeout_ms, int *woke);

/* ---- edp_publish.c ---- */

int edp__send(edp_conn *c, const edp_msg *m, struct edp__pending *p,
              uint64_t *seq);
void edp__handle_ack(edp_conn *c, uint64_t tag, int multiple, int nack);
void edp__handle_return(edp_conn *c, const amqp_basic_return_t *r,
                        const amqp_message_t *msg);
/* Reports every unconfirmed message the predicate selects as nacked with
 * the broker's close code and text, and forgets it. */
void edp__refuse_pending(edp_conn *c,
                         int (*pick)(const edp_msg *m, const void *arg),
                         const void *arg);
/* Publishes the lost list again on the current channel. */
int edp__republish_lost(edp_conn *c, size_t *n);
void edp__free_pending_list(struct edp__pending *p);

/* ---- edp_consume.c ---- */

/* A delivery of dv with props, not yet queued, in one allocation (the
 * node, then body and strings; edp__free_delivery frees it, and so does
 * edp_delivery_clear once it was taken): body.len bytes of body, copied
 * from body.bytes, or left for the caller to fill when body.bytes is
 * NULL; the body is NUL-terminated either way. oversize: 0, or the size of
 * a body that was not read (body is empty then). NULL without memory. */
struct edp__dnode *edp__new_delivery(edp_conn *c,
                                     const amqp_basic_deliver_t *dv,
                                     const amqp_basic_properties_t *props,
                                     amqp_bytes_t body, uint64_t oversize);
void edp__push_delivery(edp_conn *c, struct edp__dnode *n);
void edp__free_delivery(struct edp__dnode *n);
/* The max_body of the consumer with tag (0: none, or no such consumer). */
size_t edp__consumer_max_body(const edp_conn *c, amqp_bytes_t tag);
void edp__drop_deliveries(edp_conn *c);
void edp__broker_cancel(edp_conn *c, amqp_bytes_t tag);
/* Starts the recorded consumers on the fresh channel. On a consumer the
 * broker refuses, drops it, reports it and returns the error: the channel
 * is closed then, and the caller starts over. */
int edp__restore_consumers(edp_conn *c);
void edp__free_consumers(edp_conn *c);

/* ---- edp_topology.c ---- */

/* Replays recorded topology ops from *next on; *next advances past each
 * op done or given up. fresh_connection: server-named exclusive queues
 * died with the old connection, declare them anew without asking. */
int edp__restore_topology(edp_conn *c, size_t *next, int fresh_connection);
void edp__free_topology(edp_conn *c);
int edp__queue_declare_raw(edp_conn *c, const char *name,
                           const edp_queue_opts *o, int passive, char *name_out,
                           size_t name_out_len, uint32_t *msgs,
                           uint32_t *consumers);

#endif
