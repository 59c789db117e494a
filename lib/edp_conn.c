/*
 * edp_conn.c - one broker connection with one channel over rabbitmq-c 0.11.
 *
 * rabbitmq-c 0.11 gives us frames but no publisher-confirm helper and no
 * reconnection, so this module owns both: it reads every frame itself
 * (pump), routes basic.deliver to a delivery queue, basic.ack/nack/return
 * to the confirm tracker, and channel.close/connection.close to the error
 * path. Everything the caller declared is recorded so that a lost
 * connection can be rebuilt in the order the broker needs: connection,
 * channel, qos, confirm mode, topology, consumers.
 */

#include "edp_conn.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "edp_util.h"

#define CHANNEL 1

/* A published, not yet confirmed message: a deep copy in one allocation so
 * that it can be published again after a reconnect. */
struct pending {
  struct pending *next;
  uint64_t seq;
  int returned;
  int reply_code;
  char reply_text[128];
  edp_msg m; /* points into the same allocation */
};

struct dnode {
  struct dnode *next;
  edp_delivery d;
};

enum op_kind { OP_EXCHANGE, OP_QUEUE, OP_BIND };

struct topo_op {
  int kind;
  char *name, *exchange, *key; /* queue or exchange, bind exchange, key/type */
  int durable;
  int server_named;
  edp_queue_opts qo; /* strings owned */
};

struct consumer_rec {
  char *queue, *tag;
  edp_consume_opts o;
  int prefetch; /* the qos in effect when it was created, -1 = none */
};

struct edp_conn {
  edp_conn_opts o;
  char *url_raw, *client_name;
  edp_url url;
  char masked[512];

  amqp_connection_state_t st;
  int open;       /* connection and channel usable */
  uint32_t epoch; /* channel openings */
  unsigned rand_state;

  int reply_code;
  char reply_text[256];

  int prefetch; /* -1 = never set */
  int confirm;
  struct topo_op *ops;
  size_t n_ops, cap_ops;
  struct consumer_rec *cons;
  size_t n_cons, cap_cons;
  int broker_cancelled;

  uint64_t next_seq;
  struct pending *pend_head, *pend_tail, *lost_head, *lost_tail;
  size_t n_pend, n_lost;
  edp_confirm_fn on_confirm;
  void *on_confirm_ud;
  edp_rename_fn on_rename;
  void *on_rename_ud;
  uint64_t sync_seq; /* edp_conn_publish_confirmed's message, 0 = none */
  int sync_status;   /* its confirm status, -1 until it came */

  struct dnode *dq_head, *dq_tail;
  size_t n_dq;
};

/* ---------- small helpers ---------- */

static void logf_(edp_conn *c, int level, const char *fmt, ...) {
  if (!c->o.log)
    return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  c->o.log(c->o.log_ud, level, buf);
}

static char *dupstr(const char *s) { return s ? strdup(s) : NULL; }

static amqp_bytes_t bytes_of(const char *s) {
  return s ? amqp_cstring_bytes(s) : amqp_empty_bytes;
}

static char *dup_bytes(amqp_bytes_t b) {
  char *s = malloc(b.len + 1);
  if (s) {
    if (b.len)
      memcpy(s, b.bytes, b.len);
    s[b.len] = '\0';
  }
  return s;
}

static void set_reply(edp_conn *c, int code, amqp_bytes_t text) {
  c->reply_code = code;
  size_t n = text.len < sizeof(c->reply_text) - 1 ? text.len
                                                  : sizeof(c->reply_text) - 1;
  if (n)
    memcpy(c->reply_text, text.bytes, n);
  c->reply_text[n] = '\0';
}

/* Maps an AMQP reply code (channel or connection close) to our codes. */
static int code_to_err(int code, const char *text) {
  switch (code) {
  case 404:
    return EDP_ENOTFOUND;
  case 403:
  case 405:
  case 530:
    return EDP_EACCESS;
  case 406:
    return strstr(text, "message size") || strstr(text, "max size")
               ? EDP_ETOOBIG
               : EDP_EPRECONDITION;
  default:
    return EDP_ECHANNEL;
  }
}

/* ---------- delivery queue and confirm tracking ---------- */

void edp_delivery_clear(edp_delivery *d) {
  if (!d)
    return;
  free(d->exchange);
  free(d->routing_key);
  free(d->consumer_tag);
  free(d->body);
  free(d->message_id);
  free(d->content_type);
  free(d->reply_to);
  free(d->correlation_id);
  free(d->type);
  for (size_t i = 0; i < d->n_headers; i++) {
    free((char *)d->headers[i].key);
    free((char *)d->headers[i].str);
  }
  free(d->headers);
  memset(d, 0, sizeof(*d));
}

static void drop_deliveries(edp_conn *c) {
  while (c->dq_head) {
    struct dnode *n = c->dq_head;
    c->dq_head = n->next;
    edp_delivery_clear(&n->d);
    free(n);
  }
  c->dq_tail = NULL;
  c->n_dq = 0;
}

static void append_pending(struct pending **head, struct pending **tail,
                           struct pending *p) {
  p->next = NULL;
  if (*tail)
    (*tail)->next = p;
  else
    *head = p;
  *tail = p;
}

/* The channel is gone: its delivery tags and confirm sequence numbers mean
 * nothing any more. Unconfirmed messages move to the lost list (for
 * republishing); queued deliveries are dropped, since they cannot be acked
 * and the broker redelivers them. */
static void channel_lost(edp_conn *c) {
  if (c->pend_head) {
    if (c->lost_tail)
      c->lost_tail->next = c->pend_head;
    else
      c->lost_head = c->pend_head;
    c->lost_tail = c->pend_tail;
    c->n_lost += c->n_pend;
  }
  c->pend_head = c->pend_tail = NULL;
  c->n_pend = 0;
  drop_deliveries(c);
  c->open = 0;
}

static void mark_closed(edp_conn *c, const char *why) {
  if (c->open)
    logf_(c, EDP_LOG_WARN, "connection to %s lost: %s", c->masked, why);
  channel_lost(c);
  if (c->st) {
    amqp_destroy_connection(c->st);
    c->st = NULL;
  }
}

static void report_confirm(edp_conn *c, struct pending *p, int nack) {
  if (c->sync_seq && p->seq == c->sync_seq)
    c->sync_status = nack          ? EDP_CONFIRM_NACK
                     : p->returned ? EDP_CONFIRM_RETURNED
                                   : EDP_CONFIRM_ACK;
  if (c->on_confirm) {
    edp_confirm cf = {
        .seq = p->seq,
        .status = nack          ? EDP_CONFIRM_NACK
                  : p->returned ? EDP_CONFIRM_RETURNED
                                : EDP_CONFIRM_ACK,
        .message_id = p->m.message_id,
        .reply_code = p->reply_code,
        .reply_text = p->reply_text,
        .msg = &p->m,
    };
    c->on_confirm(c->on_confirm_ud, &cf);
  }
}

static void handle_ack(edp_conn *c, uint64_t tag, int multiple, int nack) {
  if (multiple) {
    while (c->pend_head && c->pend_head->seq <= tag) {
      struct pending *p = c->pend_head;
      c->pend_head = p->next;
      if (!c->pend_head)
        c->pend_tail = NULL;
      c->n_pend--;
      report_confirm(c, p, nack);
      free(p);
    }
    return;
  }
  struct pending *prev = NULL;
  for (struct pending *p = c->pend_head; p; prev = p, p = p->next) {
    if (p->seq != tag)
      continue;
    if (prev)
      prev->next = p->next;
    else
      c->pend_head = p->next;
    if (c->pend_tail == p)
      c->pend_tail = prev;
    c->n_pend--;
    report_confirm(c, p, nack);
    free(p);
    return;
  }
}

static int bytes_eq(amqp_bytes_t b, const char *s) {
  s = s ? s : "";
  return b.len == strlen(s) && (b.len == 0 || !memcmp(b.bytes, s, b.len));
}

/* A basic.return carries the message but no sequence number; the broker
 * sends it just before the ack of that message. So it belongs to the
 * oldest unreturned mandatory message with the same exchange, routing key
 * and (if any) message_id. */
static void handle_return(edp_conn *c, const amqp_basic_return_t *r,
                          const amqp_message_t *msg) {
  char *mid = (msg->properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
                  ? dup_bytes(msg->properties.message_id)
                  : NULL;
  struct pending *hit = NULL;
  for (struct pending *p = c->pend_head; p && !hit; p = p->next)
    if (!p->returned && p->m.mandatory &&
        bytes_eq(r->exchange, p->m.exchange) &&
        bytes_eq(r->routing_key, p->m.routing_key) &&
        (!mid || (p->m.message_id && !strcmp(p->m.message_id, mid))))
      hit = p;
  if (hit) {
    hit->returned = 1;
    hit->reply_code = r->reply_code;
    snprintf(hit->reply_text, sizeof(hit->reply_text), "%.*s",
             (int)r->reply_text.len, (const char *)r->reply_text.bytes);
  }
  logf_(c, EDP_LOG_DEBUG, "message %s returned: %d %.*s", mid ? mid : "(no id)",
        r->reply_code, (int)r->reply_text.len,
        (const char *)r->reply_text.bytes);
  free(mid);
}

static int int_kind(const amqp_field_value_t *v, int64_t *out) {
  switch (v->kind) {
  case AMQP_FIELD_KIND_I8:
    *out = v->value.i8;
    return 1;
  case AMQP_FIELD_KIND_U8:
    *out = v->value.u8;
    return 1;
  case AMQP_FIELD_KIND_I16:
    *out = v->value.i16;
    return 1;
  case AMQP_FIELD_KIND_U16:
    *out = v->value.u16;
    return 1;
  case AMQP_FIELD_KIND_I32:
    *out = v->value.i32;
    return 1;
  case AMQP_FIELD_KIND_U32:
    *out = v->value.u32;
    return 1;
  case AMQP_FIELD_KIND_I64:
    *out = v->value.i64;
    return 1;
  case AMQP_FIELD_KIND_U64:
    *out = (int64_t)v->value.u64;
    return 1;
  default:
    return 0;
  }
}

static int fill_delivery(edp_delivery *d, const amqp_basic_deliver_t *dv,
                         amqp_message_t *msg, uint32_t epoch) {
  const amqp_basic_properties_t *p = &msg->properties;
  memset(d, 0, sizeof(*d));
  d->tag = dv->delivery_tag;
  d->epoch = epoch;
  d->redelivered = dv->redelivered;
  d->priority = -1;
  d->exchange = dup_bytes(dv->exchange);
  d->routing_key = dup_bytes(dv->routing_key);
  d->consumer_tag = dup_bytes(dv->consumer_tag);
  d->body = dup_bytes(msg->body);
  d->body_len = msg->body.len;
  if (!d->exchange || !d->routing_key || !d->consumer_tag || !d->body)
    return EDP_ENOMEM;
#define EDP__PROP(flag, field)                                                 \
  if (p->_flags & flag) {                                                      \
    if (!(d->field = dup_bytes(p->field)))                                     \
      return EDP_ENOMEM;                                                       \
  }
  EDP__PROP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)
  EDP__PROP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)
  EDP__PROP(AMQP_BASIC_REPLY_TO_FLAG, reply_to)
  EDP__PROP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)
  EDP__PROP(AMQP_BASIC_TYPE_FLAG, type)
#undef EDP__PROP
  if (p->_flags & AMQP_BASIC_PRIORITY_FLAG)
    d->priority = p->priority;
  if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
    d->timestamp = (int64_t)p->timestamp;
  if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
    d->persistent = p->delivery_mode == AMQP_DELIVERY_PERSISTENT;
  if ((p->_flags & AMQP_BASIC_HEADERS_FLAG) && p->headers.num_entries > 0) {
    d->headers = calloc((size_t)p->headers.num_entries, sizeof(edp_header));
    if (!d->headers)
      return EDP_ENOMEM;
    for (int i = 0; i < p->headers.num_entries; i++) {
      const amqp_table_entry_t *e = &p->headers.entries[i];
      edp_header *h = &d->headers[d->n_headers];
      if (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
          e->value.kind == AMQP_FIELD_KIND_BYTES) {
        h->str = dup_bytes(e->value.value.bytes);
      } else if (!int_kind(&e->value, &h->num)) {
        continue;
      }
      h->key = dup_bytes(e->key);
      d->n_headers++;
    }
  }
  return 0;
}

/* ---------- frame pump ---------- */

static int lib_error(edp_conn *c, int status) {
  mark_closed(c, amqp_error_string2(status));
  return EDP_ECLOSED;
}

/* Handles a server-initiated channel.close: acknowledges it, restores the
 * channel (with qos, confirm mode and consumers) and returns the mapped
 * error of the close. */
static int reopen_channel(edp_conn *c);

static int on_channel_close(edp_conn *c, const amqp_channel_close_t *m) {
  set_reply(c, m->reply_code, m->reply_text);
  logf_(c, EDP_LOG_WARN, "channel closed by broker: %d %s", c->reply_code,
        c->reply_text);
  int err = code_to_err(c->reply_code, c->reply_text);
  amqp_channel_close_ok_t ok = {0};
  if (amqp_send_method(c->st, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) < 0) {
    mark_closed(c, "send channel.close-ok failed");
    return EDP_ECLOSED;
  }
  channel_lost(c);
  int rc = reopen_channel(c);
  return rc ? rc : err;
}

static int on_connection_close(edp_conn *c, const amqp_connection_close_t *m) {
  set_reply(c, m->reply_code, m->reply_text);
  amqp_connection_close_ok_t ok = {0};
  amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
  char why[320];
  snprintf(why, sizeof(why), "closed by broker: %d %s", c->reply_code,
           c->reply_text);
  mark_closed(c, why);
  return EDP_ECLOSED;
}

static int read_content(edp_conn *c, amqp_message_t *msg) {
  amqp_rpc_reply_t r = amqp_read_message(c->st, CHANNEL, msg, 0);
  if (r.reply_type == AMQP_RESPONSE_NORMAL)
    return 0;
  if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
      return on_channel_close(c, r.reply.decoded);
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
      return on_connection_close(c, r.reply.decoded);
  }
  return lib_error(c, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                          ? r.library_error
                          : AMQP_STATUS_UNEXPECTED_STATE);
}

static int process_frame(edp_conn *c, const amqp_frame_t *f) {
  if (f->frame_type != AMQP_FRAME_METHOD)
    return 0; /* stray content of a cancelled read; nothing to do */
  void *m = f->payload.method.decoded;
  switch (f->payload.method.id) {
  case AMQP_CONNECTION_CLOSE_METHOD:
    return on_connection_close(c, m);
  case AMQP_CHANNEL_CLOSE_METHOD:
    return on_channel_close(c, m);
  case AMQP_BASIC_ACK_METHOD: {
    amqp_basic_ack_t *a = m;
    handle_ack(c, a->delivery_tag, a->multiple, 0);
    return 0;
  }
  case AMQP_BASIC_NACK_METHOD: {
    amqp_basic_nack_t *a = m;
    handle_ack(c, a->delivery_tag, a->multiple, 1);
    return 0;
  }
  case AMQP_BASIC_RETURN_METHOD: {
    amqp_basic_return_t r = *(amqp_basic_return_t *)m;
    amqp_message_t msg;
    int rc = read_content(c, &msg);
    if (rc)
      return rc;
    handle_return(c, &r, &msg);
    amqp_destroy_message(&msg);
    return 0;
  }
  case AMQP_BASIC_DELIVER_METHOD: {
    amqp_basic_deliver_t dv = *(amqp_basic_deliver_t *)m;
    amqp_message_t msg;
    int rc = read_content(c, &msg);
    if (rc)
      return rc;
    struct dnode *n = calloc(1, sizeof(*n));
    rc = n ? fill_delivery(&n->d, &dv, &msg, c->epoch) : EDP_ENOMEM;
    amqp_destroy_message(&msg);
    if (rc) {
      if (n)
        edp_delivery_clear(&n->d);
      free(n);
      /* Without memory we cannot hand the message over; rejecting it with
       * requeue gives it back to the broker instead of losing it. */
      amqp_basic_reject(c->st, CHANNEL, dv.delivery_tag, 1);
      return rc;
    }
    if (c->dq_tail)
      c->dq_tail->next = n;
    else
      c->dq_head = n;
    c->dq_tail = n;
    c->n_dq++;
    return 0;
  }
  case AMQP_BASIC_CANCEL_METHOD: {
    amqp_basic_cancel_t *cn = m;
    char *tag = dup_bytes(cn->consumer_tag);
    for (size_t i = 0; tag && i < c->n_cons; i++) {
      if (strcmp(c->cons[i].tag, tag))
        continue;
      logf_(c, EDP_LOG_WARN, "broker cancelled consumer %s on queue %s", tag,
            c->cons[i].queue);
      free(c->cons[i].queue);
      free(c->cons[i].tag);
      c->cons[i] = c->cons[--c->n_cons];
      break;
    }
    free(tag);
    c->broker_cancelled = 1;
    return 0;
  }
  case AMQP_CONNECTION_BLOCKED_METHOD:
    logf_(c, EDP_LOG_WARN, "broker blocked publishing (resource alarm)");
    return 0;
  case AMQP_CONNECTION_UNBLOCKED_METHOD:
    logf_(c, EDP_LOG_INFO, "broker unblocked publishing");
    return 0;
  default:
    logf_(c, EDP_LOG_DEBUG, "ignored method 0x%08x",
          (unsigned)f->payload.method.id);
    return 0;
  }
}

static int buffered(edp_conn *c) {
  return amqp_frames_enqueued(c->st) || amqp_data_in_buffer(c->st);
}

/* Reads and handles frames until one arrived (returns 0), wake_fd became
 * readable (*woke = 1, returns 0), stop_fd became readable (EDP_ESTOPPED) or
 * timeout_ms passed (EDP_ETIMEOUT; -1 waits forever). Polls in slices of
 * half the heartbeat interval so rabbitmq-c can send heartbeats and notice
 * a silent broker even when no frame comes. */
static int pump(edp_conn *c, int wake_fd, int timeout_ms, int *woke) {
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (;;) {
    if (!c->open || !c->st)
      return EDP_ECLOSED;
    if (!buffered(c)) {
      int slice = c->url.heartbeat_s > 0 ? c->url.heartbeat_s * 500 : 60000;
      if (deadline >= 0) {
        int64_t left = deadline - edp_now_ms();
        if (left < 0)
          left = 0;
        if (left < slice)
          slice = (int)left;
      }
      struct pollfd fds[3] = {{amqp_get_sockfd(c->st), POLLIN, 0},
                              {c->o.stop_fd, POLLIN, 0},
                              {wake_fd, POLLIN, 0}};
      int n = poll(fds, 3, slice);
      if (n < 0 && errno != EINTR)
        return lib_error(c, AMQP_STATUS_SOCKET_ERROR);
      if (n > 0 && (fds[1].revents & POLLIN))
        return EDP_ESTOPPED;
      if (n > 0 && (fds[2].revents & POLLIN)) {
        if (woke)
          *woke = 1;
        return 0;
      }
    }
    struct timeval zero = {0, 0};
    amqp_frame_t f;
    int res = amqp_simple_wait_frame_noblock(c->st, &f, &zero);
    if (res == AMQP_STATUS_OK) {
      int rc = process_frame(c, &f);
      if (c->st)
        amqp_maybe_release_buffers(c->st);
      return rc;
    }
    if (res != AMQP_STATUS_TIMEOUT)
      return lib_error(c, res);
    if (deadline >= 0 && edp_now_ms() >= deadline)
      return EDP_ETIMEOUT;
  }
}

/* ---------- synchronous calls ---------- */

/* Turns an RPC reply into our error code, handling closes. */
static int rpc_result(edp_conn *c, amqp_rpc_reply_t r) {
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return 0;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
      return on_channel_close(c, r.reply.decoded);
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      on_connection_close(c, r.reply.decoded);
      int e = code_to_err(c->reply_code, c->reply_text);
      return e == EDP_ECHANNEL ? EDP_ECLOSED : e;
    }
    return lib_error(c, AMQP_STATUS_UNEXPECTED_STATE);
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    return lib_error(c, r.library_error);
  default:
    return lib_error(c, AMQP_STATUS_UNEXPECTED_STATE);
  }
}

static int check_open(edp_conn *c) {
  if (!c)
    return EDP_EINVAL;
  return c->open ? 0 : EDP_ECLOSED;
}

/* Builds x-arguments of a queue declare into entries (at most 7). */
static amqp_table_t queue_args(const edp_queue_opts *o, amqp_table_entry_t *e) {
  int n = 0;
  if (o->dead_letter_exchange) {
    e[n].key = amqp_cstring_bytes("x-dead-letter-exchange");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_exchange);
  }
  if (o->dead_letter_routing_key) {
    e[n].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->dead_letter_routing_key);
  }
  if (o->max_priority > 0) {
    e[n].key = amqp_cstring_bytes("x-max-priority");
    e[n].value.kind = AMQP_FIELD_KIND_I32;
    e[n++].value.value.i32 = o->max_priority;
  }
  if (o->queue_type) {
    e[n].key = amqp_cstring_bytes("x-queue-type");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->queue_type);
  }
  if (o->message_ttl_ms >= 0) {
    e[n].key = amqp_cstring_bytes("x-message-ttl");
    e[n].value.kind = AMQP_FIELD_KIND_I64;
    e[n++].value.value.i64 = o->message_ttl_ms;
  }
  if (o->max_length >= 0) {
    e[n].key = amqp_cstring_bytes("x-max-length");
    e[n].value.kind = AMQP_FIELD_KIND_I64;
    e[n++].value.value.i64 = o->max_length;
  }
  if (o->overflow) {
    e[n].key = amqp_cstring_bytes("x-overflow");
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n++].value.value.bytes = amqp_cstring_bytes(o->overflow);
  }
  amqp_table_t t = {n, e};
  return t;
}

static int do_queue_declare(edp_conn *c, const char *name,
                            const edp_queue_opts *o, int passive,
                            char *name_out, size_t name_out_len, uint32_t *msgs,
                            uint32_t *consumers) {
  amqp_table_entry_t e[7];
  amqp_queue_declare_ok_t *ok =
      amqp_queue_declare(c->st, CHANNEL, bytes_of(name), passive, o->durable,
                         o->exclusive, o->auto_delete, queue_args(o, e));
  int rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc)
    return rc;
  if (name_out && name_out_len)
    snprintf(name_out, name_out_len, "%.*s", (int)ok->queue.len,
             (const char *)ok->queue.bytes);
  if (msgs)
    *msgs = ok->message_count;
  if (consumers)
    *consumers = ok->consumer_count;
  return 0;
}

static int do_consume(edp_conn *c, const char *queue, const char *tag,
                      const edp_consume_opts *o, char *tag_out,
                      size_t tag_len) {
  amqp_table_entry_t e = {amqp_cstring_bytes("x-priority"),
                          {AMQP_FIELD_KIND_I32, {.i32 = o->priority}}};
  amqp_table_t args = {o->priority ? 1 : 0, &e};
  amqp_basic_consume_ok_t *ok =
      amqp_basic_consume(c->st, CHANNEL, amqp_cstring_bytes(queue),
                         bytes_of(tag), 0, o->no_ack, o->exclusive, args);
  int rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc && tag_out && tag_len)
    snprintf(tag_out, tag_len, "%.*s", (int)ok->consumer_tag.len,
             (const char *)ok->consumer_tag.bytes);
  return rc;
}

/* Opens channel 1 and replays the channel state: qos, confirm mode and the
 * consumers. The topology lives on the broker and survives a channel. */
static int restore_channel(edp_conn *c) {
  amqp_channel_open(c->st, CHANNEL);
  int rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc)
    return rc;
  c->epoch++;
  c->open = 1;
  c->next_seq = 1;
  if (c->prefetch >= 0) {
    amqp_basic_qos(c->st, CHANNEL, 0, (uint16_t)c->prefetch, 0);
    if ((rc = rpc_result(c, amqp_get_rpc_reply(c->st))))
      return rc;
  }
  if (c->confirm) {
    amqp_confirm_select(c->st, CHANNEL);
    if ((rc = rpc_result(c, amqp_get_rpc_reply(c->st))))
      return rc;
  }
  return 0;
}

/* basic.qos with global=false applies to the consumers created after it,
 * so a channel can give its consumers different prefetch counts. Each
 * consumer gets back the one it was created with, then the channel's last
 * value is set again for consumers created later. */
static int restore_qos(edp_conn *c, int want, int *cur) {
  if (want < 0 || want == *cur)
    return 0;
  amqp_basic_qos(c->st, CHANNEL, 0, (uint16_t)want, 0);
  int rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc)
    *cur = want;
  return rc;
}

static int restore_consumers(edp_conn *c) {
  int cur = c->prefetch; /* restore_channel set it */
  for (size_t i = 0; i < c->n_cons; i++) {
    int rc = restore_qos(c, c->cons[i].prefetch, &cur);
    if (!rc)
      rc = do_consume(c, c->cons[i].queue, c->cons[i].tag, &c->cons[i].o, NULL,
                      0);
    if (rc)
      return rc;
  }
  return restore_qos(c, c->prefetch, &cur);
}

static int reopen_channel(edp_conn *c) {
  int rc = restore_channel(c);
  if (!rc)
    rc = restore_consumers(c);
  if (rc && c->st) {
    /* A channel we cannot restore leaves the connection useless. */
    mark_closed(c, "channel could not be restored");
    return EDP_ECLOSED;
  }
  return rc;
}

/* ---------- open / close ---------- */

void edp_conn_opts_init(edp_conn_opts *o) {
  memset(o, 0, sizeof(*o));
  o->heartbeat_s = 10;
  o->connect_timeout_ms = 5000;
  o->rpc_timeout_ms = 10000;
  o->frame_max = 131072;
  o->reconnect_max_ms = 30000;
  o->backoff_initial_ms = 100;
  o->backoff_max_ms = 5000;
  o->max_body = (size_t)128 << 20;
  o->stop_fd = -1;
}

/* One attempt: TCP connect, login, channel. Fills err_text. */
static int connect_once(edp_conn *c, char *err_text, size_t err_len) {
  char dummy[8];
  if (!err_text) {
    err_text = dummy;
    err_len = sizeof(dummy);
  }
  c->st = amqp_new_connection();
  if (!c->st) {
    snprintf(err_text, err_len, "out of memory");
    return EDP_ENOMEM;
  }
  amqp_socket_t *sock = amqp_tcp_socket_new(c->st);
  if (!sock) {
    amqp_destroy_connection(c->st);
    c->st = NULL;
    snprintf(err_text, err_len, "out of memory");
    return EDP_ENOMEM;
  }
  int cto = c->url.connect_timeout_ms >= 0 ? c->url.connect_timeout_ms
                                           : c->o.connect_timeout_ms;
  struct timeval tv = {cto / 1000, (cto % 1000) * 1000};
  int res = amqp_socket_open_noblock(sock, c->url.host, c->url.port, &tv);
  if (res != AMQP_STATUS_OK) {
    /* rabbitmq-c only says "a socket error occurred" and keeps the
     * socket's own error to itself; after a non-blocking connect that is
     * a refusal or an unreachable host (a timeout has its own status). */
    snprintf(err_text, err_len, "cannot connect to %s: %s", c->masked,
             res == AMQP_STATUS_SOCKET_ERROR
                 ? "connection refused or host unreachable"
                 : amqp_error_string2(res));
    amqp_destroy_connection(c->st);
    c->st = NULL;
    return EDP_ECONNECT;
  }
  amqp_set_handshake_timeout(c->st, &tv);
  struct timeval rpc = {c->o.rpc_timeout_ms / 1000,
                        (c->o.rpc_timeout_ms % 1000) * 1000};
  amqp_set_rpc_timeout(c->st, &rpc);

  amqp_table_entry_t caps[1] = {{amqp_cstring_bytes("consumer_cancel_notify"),
                                 {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}}};
  amqp_table_entry_t props[2] = {
      {amqp_cstring_bytes("capabilities"),
       {AMQP_FIELD_KIND_TABLE, {.table = {1, caps}}}},
      {amqp_cstring_bytes("connection_name"),
       {AMQP_FIELD_KIND_UTF8,
        {.bytes =
             amqp_cstring_bytes(c->client_name ? c->client_name : "edp")}}}};
  amqp_table_t ptable = {2, props};
  int hb = c->url.heartbeat_s >= 0 ? c->url.heartbeat_s : c->o.heartbeat_s;
  c->url.heartbeat_s = hb;
  int fm = c->url.frame_max >= 0 ? c->url.frame_max : c->o.frame_max;
  int cm = c->url.channel_max >= 0 ? c->url.channel_max : 0;
  amqp_rpc_reply_t r = amqp_login_with_properties(
      c->st, c->url.vhost, cm, fm, hb, &ptable, AMQP_SASL_METHOD_PLAIN,
      c->url.user, c->url.pass);
  int rc = 0;
  if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
      r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    amqp_connection_close_t *m = r.reply.decoded;
    set_reply(c, m->reply_code, m->reply_text);
    rc = m->reply_code == 403 ? EDP_EAUTH : code_to_err(m->reply_code, "");
    if (rc == EDP_ECHANNEL)
      rc = EDP_EPROTOCOL;
    snprintf(err_text, err_len, "%s: %d %s", c->masked, c->reply_code,
             c->reply_text);
  } else if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    int st = r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                 ? r.library_error
                 : AMQP_STATUS_UNEXPECTED_STATE;
    snprintf(err_text, err_len, "login to %s failed: %s", c->masked,
             amqp_error_string2(st));
    rc = EDP_ECONNECT;
  }
  if (rc) {
    amqp_destroy_connection(c->st);
    c->st = NULL;
    return rc;
  }
  rc = restore_channel(c);
  if (rc) {
    snprintf(err_text, err_len, "%s: channel open failed: %s", c->masked,
             edp_strerror(rc));
    mark_closed(c, "channel open failed");
  }
  return rc;
}

int edp_conn_open(const edp_conn_opts *o, edp_conn **out, char *err_text,
                  size_t err_len) {
  if (!out)
    return EDP_EINVAL;
  *out = NULL;
  edp_conn_opts defaults;
  if (!o) {
    edp_conn_opts_init(&defaults);
    o = &defaults;
  }
  edp_conn *c = calloc(1, sizeof(*c));
  if (!c)
    return EDP_ENOMEM;
  c->o = *o;
  c->url_raw = strdup(o->url ? o->url : EDP_URL_DEFAULT);
  c->client_name = dupstr(o->client_name);
  c->o.url = c->url_raw;
  c->o.client_name = c->client_name;
  c->prefetch = -1;
  c->rand_state =
      (unsigned)edp_now_ms() ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)c;
  if (!c->url_raw || (o->client_name && !c->client_name)) {
    edp_conn_destroy(&c);
    return EDP_ENOMEM;
  }
  char why[200];
  int rc = edp_url_parse(c->url_raw, &c->url, why, sizeof(why));
  if (rc) {
    if (err_text && err_len) {
      char m[512];
      snprintf(err_text, err_len, "bad URL %s: %s",
               edp_url_mask(c->url_raw, m, sizeof(m)), why);
    }
    edp_conn_destroy(&c);
    return rc;
  }
  edp_url_format_masked(&c->url, c->masked, sizeof(c->masked));
  rc = connect_once(c, err_text, err_len);
  if (rc) {
    edp_conn_destroy(&c);
    return rc;
  }
  logf_(c, EDP_LOG_INFO, "connected to %s", c->masked);
  *out = c;
  return 0;
}

static void free_pending_list(struct pending *p) {
  while (p) {
    struct pending *n = p->next;
    free(p);
    p = n;
  }
}

static void free_qo(edp_queue_opts *q) {
  free((char *)q->dead_letter_exchange);
  free((char *)q->dead_letter_routing_key);
  free((char *)q->queue_type);
  free((char *)q->overflow);
}

void edp_conn_destroy(edp_conn **cp) {
  if (!cp || !*cp)
    return;
  edp_conn *c = *cp;
  if (c->st && c->open) {
    amqp_channel_close(c->st, CHANNEL, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
  }
  if (c->st)
    amqp_destroy_connection(c->st);
  drop_deliveries(c);
  free_pending_list(c->pend_head);
  free_pending_list(c->lost_head);
  for (size_t i = 0; i < c->n_ops; i++) {
    free(c->ops[i].name);
    free(c->ops[i].exchange);
    free(c->ops[i].key);
    free_qo(&c->ops[i].qo);
  }
  free(c->ops);
  for (size_t i = 0; i < c->n_cons; i++) {
    free(c->cons[i].queue);
    free(c->cons[i].tag);
  }
  free(c->cons);
  free(c->url_raw);
  free(c->client_name);
  free(c);
  *cp = NULL;
}

void edp_conn_abandon(edp_conn *c) {
  if (c && c->st)
    mark_closed(c, "abandoned");
}

int edp_conn_reply_code(const edp_conn *c) { return c ? c->reply_code : 0; }
const char *edp_conn_reply_text(const edp_conn *c) {
  return c ? c->reply_text : "";
}
const char *edp_conn_url(const edp_conn *c) { return c ? c->masked : ""; }
int edp_conn_is_open(const edp_conn *c) { return c && c->open; }
uint32_t edp_conn_epoch(const edp_conn *c) { return c ? c->epoch : 0; }
int edp_conn_fd(const edp_conn *c) {
  return c && c->st ? amqp_get_sockfd(c->st) : -1;
}

/* ---------- topology ---------- */

void edp_queue_opts_init(edp_queue_opts *o) {
  memset(o, 0, sizeof(*o));
  o->durable = 1;
  o->message_ttl_ms = -1;
  o->max_length = -1;
}

static struct topo_op *add_op(edp_conn *c) {
  if (c->n_ops == c->cap_ops) {
    size_t cap = c->cap_ops ? c->cap_ops * 2 : 8;
    struct topo_op *n = realloc(c->ops, cap * sizeof(*n));
    if (!n)
      return NULL;
    c->ops = n;
    c->cap_ops = cap;
  }
  struct topo_op *op = &c->ops[c->n_ops++];
  memset(op, 0, sizeof(*op));
  return op;
}

static struct topo_op *find_op(edp_conn *c, int kind, const char *name,
                               const char *exchange, const char *key) {
  for (size_t i = 0; i < c->n_ops; i++) {
    struct topo_op *op = &c->ops[i];
    if (op->kind == kind && !strcmp(op->name, name) &&
        (!exchange || !strcmp(op->exchange, exchange)) &&
        (!key || !strcmp(op->key, key)))
      return op;
  }
  return NULL;
}

int edp_conn_queue_declare(edp_conn *c, const char *name,
                           const edp_queue_opts *o, char *name_out,
                           size_t name_out_len, uint32_t *msgs,
                           uint32_t *consumers) {
  int rc = check_open(c);
  if (rc)
    return rc;
  edp_queue_opts defaults;
  if (!o) {
    edp_queue_opts_init(&defaults);
    o = &defaults;
  }
  if (!name)
    name = "";
  char actual[256];
  rc = do_queue_declare(c, name, o, 0, actual, sizeof(actual), msgs, consumers);
  if (rc)
    return rc;
  if (name_out && name_out_len)
    snprintf(name_out, name_out_len, "%s", actual);
  if (find_op(c, OP_QUEUE, actual, NULL, NULL))
    return 0;
  struct topo_op *op = add_op(c);
  if (!op)
    return EDP_ENOMEM;
  op->kind = OP_QUEUE;
  op->name = strdup(actual);
  op->server_named = name[0] == '\0';
  op->qo = *o;
  op->qo.dead_letter_exchange = dupstr(o->dead_letter_exchange);
  op->qo.dead_letter_routing_key = dupstr(o->dead_letter_routing_key);
  op->qo.queue_type = dupstr(o->queue_type);
  op->qo.overflow = dupstr(o->overflow);
  if (!op->name) {
    c->n_ops--;
    return EDP_ENOMEM;
  }
  return 0;
}

int edp_conn_queue_inspect(edp_conn *c, const char *name, uint32_t *msgs,
                           uint32_t *consumers) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!name || !name[0])
    return EDP_EINVAL;
  edp_queue_opts o;
  edp_queue_opts_init(&o);
  return do_queue_declare(c, name, &o, 1, NULL, 0, msgs, consumers);
}

int edp_conn_queue_delete(edp_conn *c, const char *name) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!name)
    return EDP_EINVAL;
  amqp_queue_delete(c->st, CHANNEL, amqp_cstring_bytes(name), 0, 0);
  rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  struct topo_op *op = find_op(c, OP_QUEUE, name, NULL, NULL);
  if (!rc && op) {
    free(op->name);
    free_qo(&op->qo);
    *op = c->ops[--c->n_ops];
  }
  return rc;
}

int edp_conn_queue_purge(edp_conn *c, const char *name, uint32_t *purged) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!name)
    return EDP_EINVAL;
  amqp_queue_purge_ok_t *ok =
      amqp_queue_purge(c->st, CHANNEL, amqp_cstring_bytes(name));
  rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc && purged)
    *purged = ok->message_count;
  return rc;
}

int edp_conn_exchange_declare(edp_conn *c, const char *name, const char *type,
                              int durable) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!name || !type)
    return EDP_EINVAL;
  amqp_exchange_declare(c->st, CHANNEL, amqp_cstring_bytes(name),
                        amqp_cstring_bytes(type), 0, durable, 0, 0,
                        amqp_empty_table);
  rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc || find_op(c, OP_EXCHANGE, name, NULL, NULL))
    return rc;
  struct topo_op *op = add_op(c);
  if (!op)
    return EDP_ENOMEM;
  op->kind = OP_EXCHANGE;
  op->name = strdup(name);
  op->key = strdup(type);
  op->durable = durable;
  return op->name && op->key ? 0 : EDP_ENOMEM;
}

int edp_conn_exchange_delete(edp_conn *c, const char *name) {
  int rc = check_open(c);
  if (rc)
    return rc;
  amqp_exchange_delete(c->st, CHANNEL, amqp_cstring_bytes(name), 0);
  return rpc_result(c, amqp_get_rpc_reply(c->st));
}

int edp_conn_queue_bind(edp_conn *c, const char *queue, const char *exchange,
                        const char *routing_key) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!queue || !exchange || !routing_key)
    return EDP_EINVAL;
  amqp_queue_bind(c->st, CHANNEL, amqp_cstring_bytes(queue),
                  amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key),
                  amqp_empty_table);
  rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc || find_op(c, OP_BIND, queue, exchange, routing_key))
    return rc;
  struct topo_op *op = add_op(c);
  if (!op)
    return EDP_ENOMEM;
  op->kind = OP_BIND;
  op->name = strdup(queue);
  op->exchange = strdup(exchange);
  op->key = strdup(routing_key);
  return op->name && op->exchange && op->key ? 0 : EDP_ENOMEM;
}

int edp_conn_qos(edp_conn *c, int prefetch) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (prefetch < 0 || prefetch > 65535)
    return EDP_EINVAL;
  amqp_basic_qos(c->st, CHANNEL, 0, (uint16_t)prefetch, 0);
  rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc)
    c->prefetch = prefetch;
  return rc;
}

int edp_conn_confirm_select(edp_conn *c) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (c->confirm)
    return 0;
  amqp_confirm_select(c->st, CHANNEL);
  rc = rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc) {
    c->confirm = 1;
    c->next_seq = 1;
  }
  return rc;
}

/* Replays the recorded topology on a fresh channel. A server-named queue
 * gets a new name; bindings and consumers that used the old one follow. */
static int restore_topology(edp_conn *c) {
  for (size_t i = 0; i < c->n_ops; i++) {
    struct topo_op *op = &c->ops[i];
    int rc = 0;
    if (op->kind == OP_EXCHANGE) {
      amqp_exchange_declare(c->st, CHANNEL, amqp_cstring_bytes(op->name),
                            amqp_cstring_bytes(op->key), 0, op->durable, 0, 0,
                            amqp_empty_table);
      rc = rpc_result(c, amqp_get_rpc_reply(c->st));
    } else if (op->kind == OP_QUEUE) {
      char actual[256];
      rc = do_queue_declare(c, op->server_named ? "" : op->name, &op->qo, 0,
                            actual, sizeof(actual), NULL, NULL);
      if (!rc && op->server_named && strcmp(actual, op->name)) {
        char *old = op->name;
        char *fresh = strdup(actual);
        if (!fresh)
          return EDP_ENOMEM;
        for (size_t j = 0; j < c->n_ops; j++)
          if (j != i && c->ops[j].kind == OP_BIND &&
              !strcmp(c->ops[j].name, old)) {
            free(c->ops[j].name);
            c->ops[j].name = strdup(fresh);
          }
        for (size_t j = 0; j < c->n_cons; j++)
          if (!strcmp(c->cons[j].queue, old)) {
            free(c->cons[j].queue);
            c->cons[j].queue = strdup(fresh);
          }
        op->name = fresh;
        if (c->on_rename)
          c->on_rename(c->on_rename_ud, old, fresh);
        free(old);
      }
    } else {
      amqp_queue_bind(c->st, CHANNEL, amqp_cstring_bytes(op->name),
                      amqp_cstring_bytes(op->exchange),
                      amqp_cstring_bytes(op->key), amqp_empty_table);
      rc = rpc_result(c, amqp_get_rpc_reply(c->st));
    }
    if (rc)
      return rc;
  }
  return 0;
}

/* ---------- publishing ---------- */

void edp_msg_init(edp_msg *m) {
  memset(m, 0, sizeof(*m));
  m->exchange = "";
  m->priority = -1;
}

static size_t slen(const char *s) { return s ? strlen(s) + 1 : 0; }

static char *put_str(char **cur, const char *s) {
  if (!s)
    return NULL;
  size_t n = strlen(s) + 1;
  char *d = *cur;
  memcpy(d, s, n);
  *cur += n;
  return d;
}

/* Deep-copies m (strings, headers, body) into one allocation of head
 * bytes followed by the copied data; the edp_msg lands at msg_off inside
 * the head. Lets the pending list and edp_msg_dup share one copier. */
static void *copy_msg_into(const edp_msg *m, size_t head, size_t msg_off) {
  size_t size = head + m->n_headers * sizeof(edp_header) + slen(m->exchange) +
                slen(m->routing_key) + slen(m->message_id) +
                slen(m->content_type) + slen(m->reply_to) +
                slen(m->correlation_id) + slen(m->type) + m->body_len;
  for (size_t i = 0; i < m->n_headers; i++)
    size += slen(m->headers[i].key) + slen(m->headers[i].str);
  char *block = malloc(size);
  if (!block)
    return NULL;
  memset(block, 0, head);
  edp_msg *copy = (edp_msg *)(block + msg_off);
  *copy = *m;
  edp_header *h = (edp_header *)(block + head);
  char *cur = (char *)(h + m->n_headers);
  for (size_t i = 0; i < m->n_headers; i++) {
    h[i].key = put_str(&cur, m->headers[i].key);
    h[i].str = put_str(&cur, m->headers[i].str);
    h[i].num = m->headers[i].num;
  }
  copy->headers = m->n_headers ? h : NULL;
  copy->exchange = put_str(&cur, m->exchange);
  copy->routing_key = put_str(&cur, m->routing_key);
  copy->message_id = put_str(&cur, m->message_id);
  copy->content_type = put_str(&cur, m->content_type);
  copy->reply_to = put_str(&cur, m->reply_to);
  copy->correlation_id = put_str(&cur, m->correlation_id);
  copy->type = put_str(&cur, m->type);
  if (m->body_len)
    memcpy(cur, m->body, m->body_len);
  copy->body = cur;
  return block;
}

static struct pending *copy_msg(const edp_msg *m) {
  return copy_msg_into(m, sizeof(struct pending), offsetof(struct pending, m));
}

edp_msg *edp_msg_dup(const edp_msg *m) {
  if (!m || (m->body_len && !m->body) || (m->n_headers && !m->headers))
    return NULL;
  return copy_msg_into(m, sizeof(edp_msg), 0);
}

void edp_msg_from_delivery(edp_msg *m, const edp_delivery *d) {
  edp_msg_init(m);
  m->body = d->body;
  m->body_len = d->body_len;
  m->persistent = 1;
  m->mandatory = 1;
  m->message_id = d->message_id;
  m->content_type = d->content_type;
  m->correlation_id = d->correlation_id;
  m->reply_to = d->reply_to;
  m->type = d->type;
  m->priority = d->priority;
  m->timestamp = d->timestamp;
}

edp_header *edp_headers_merge(const edp_delivery *d, const edp_header *add,
                              size_t n_add, size_t *n_out) {
  size_t n = 0;
  edp_header *h = calloc(d->n_headers + n_add + 1, sizeof(*h));
  if (!h)
    return NULL;
  for (size_t i = 0; i < d->n_headers; i++) {
    int replaced = 0;
    for (size_t k = 0; k < n_add && !replaced; k++)
      replaced = !strcmp(d->headers[i].key, add[k].key);
    if (!replaced)
      h[n++] = d->headers[i];
  }
  for (size_t k = 0; k < n_add; k++)
    h[n++] = add[k];
  *n_out = n;
  return h;
}

/* Sends one message; in confirm mode p (its copy) joins the pending list. */
static int send_msg(edp_conn *c, const edp_msg *m, struct pending *p,
                    uint64_t *seq) {
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof(props));
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode =
      m->persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT;
#define EDP__SETPROP(flag, field)                                              \
  if (m->field) {                                                              \
    props._flags |= flag;                                                      \
    props.field = amqp_cstring_bytes(m->field);                                \
  }
  EDP__SETPROP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)
  EDP__SETPROP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)
  EDP__SETPROP(AMQP_BASIC_REPLY_TO_FLAG, reply_to)
  EDP__SETPROP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)
  EDP__SETPROP(AMQP_BASIC_TYPE_FLAG, type)
#undef EDP__SETPROP
  if (m->priority >= 0) {
    props._flags |= AMQP_BASIC_PRIORITY_FLAG;
    props.priority = (uint8_t)m->priority;
  }
  if (m->timestamp > 0) {
    props._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    props.timestamp = (uint64_t)m->timestamp;
  }
  amqp_table_entry_t stack_entries[8];
  amqp_table_entry_t *entries = stack_entries;
  if (m->n_headers > 8) {
    entries = calloc(m->n_headers, sizeof(*entries));
    if (!entries)
      return EDP_ENOMEM;
  }
  if (m->n_headers) {
    for (size_t i = 0; i < m->n_headers; i++) {
      entries[i].key = amqp_cstring_bytes(m->headers[i].key);
      if (m->headers[i].str) {
        entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[i].value.value.bytes = amqp_cstring_bytes(m->headers[i].str);
      } else {
        entries[i].value.kind = AMQP_FIELD_KIND_I64;
        entries[i].value.value.i64 = m->headers[i].num;
      }
    }
    props._flags |= AMQP_BASIC_HEADERS_FLAG;
    props.headers.num_entries = (int)m->n_headers;
    props.headers.entries = entries;
  }
  amqp_bytes_t body = {m->body_len, (void *)m->body};
  int res = amqp_basic_publish(c->st, CHANNEL,
                               bytes_of(m->exchange ? m->exchange : ""),
                               bytes_of(m->routing_key ? m->routing_key : ""),
                               m->mandatory, 0, &props, body);
  if (entries != stack_entries)
    free(entries);
  if (res < 0)
    return lib_error(c, res);
  if (p) {
    p->seq = c->next_seq++;
    p->returned = 0;
    append_pending(&c->pend_head, &c->pend_tail, p);
    c->n_pend++;
    if (seq)
      *seq = p->seq;
  } else if (seq) {
    *seq = 0;
  }
  return 0;
}

int edp_conn_publish(edp_conn *c, const edp_msg *m, uint64_t *seq) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!m || (m->body_len && !m->body) || (m->n_headers && !m->headers))
    return EDP_EINVAL;
  if (c->o.max_body && m->body_len > c->o.max_body)
    return EDP_ETOOBIG;
  for (size_t i = 0; i < m->n_headers; i++)
    if (!m->headers[i].key)
      return EDP_EINVAL;
  struct pending *p = NULL;
  if (c->confirm && !(p = copy_msg(m)))
    return EDP_ENOMEM;
  rc = send_msg(c, m, p, seq);
  if (rc)
    free(p);
  return rc;
}

void edp_conn_on_confirm(edp_conn *c, edp_confirm_fn fn, void *ud) {
  if (c) {
    c->on_confirm = fn;
    c->on_confirm_ud = ud;
  }
}

void edp_conn_on_queue_renamed(edp_conn *c, edp_rename_fn fn, void *ud) {
  if (c) {
    c->on_rename = fn;
    c->on_rename_ud = ud;
  }
}

size_t edp_conn_unconfirmed(const edp_conn *c) {
  return c ? c->n_pend + c->n_lost : 0;
}

int edp_conn_wait_confirms(edp_conn *c, size_t max_outstanding,
                           int timeout_ms) {
  if (!c)
    return EDP_EINVAL;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  while (c->n_pend > max_outstanding) {
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      left = l > 0 ? (int)l : 0;
    }
    int rc = pump(c, -1, left, NULL);
    if (rc == EDP_ETIMEOUT && c->n_pend <= max_outstanding)
      break;
    if (rc)
      return rc;
  }
  return 0;
}

int edp_conn_republish_unconfirmed(edp_conn *c, size_t *n) {
  if (n)
    *n = 0;
  int rc = check_open(c);
  if (rc)
    return rc;
  while (c->lost_head) {
    struct pending *p = c->lost_head;
    c->lost_head = p->next;
    if (!c->lost_head)
      c->lost_tail = NULL;
    c->n_lost--;
    if (!c->confirm) {
      free(p);
      continue;
    }
    rc = send_msg(c, &p->m, p, NULL);
    if (rc) {
      /* The connection dropped again: keep the message for next time,
       * at the head so the order holds. */
      p->next = c->lost_head;
      c->lost_head = p;
      if (!c->lost_tail)
        c->lost_tail = p;
      c->n_lost++;
      return rc;
    }
    if (n)
      (*n)++;
  }
  return 0;
}

size_t edp_conn_take_unconfirmed(edp_conn *c, edp_take_fn fn, void *ud) {
  size_t n = 0;
  if (!c || !fn)
    return 0;
  while (c->lost_head && fn(ud, &c->lost_head->m) == 0) {
    struct pending *p = c->lost_head;
    c->lost_head = p->next;
    if (!c->lost_head)
      c->lost_tail = NULL;
    c->n_lost--;
    free(p);
    n++;
  }
  return n;
}

int edp_conn_publish_confirmed(edp_conn *c, const edp_msg *m, int timeout_ms) {
  if (!c)
    return EDP_EINVAL;
  if (!c->confirm)
    return EDP_EINVAL;
  uint64_t seq = 0;
  int rc = edp_conn_publish(c, m, &seq);
  if (rc)
    return rc;
  c->sync_seq = seq;
  c->sync_status = -1;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  while (!rc && c->sync_status < 0) {
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      left = l > 0 ? (int)l : 0;
    }
    /* report_confirm() records our message's status when it comes. */
    rc = pump(c, -1, left, NULL);
  }
  int status = c->sync_status;
  c->sync_seq = 0;
  if (rc)
    return rc;
  return status == EDP_CONFIRM_ACK    ? 0
         : status == EDP_CONFIRM_NACK ? EDP_ENACKED
                                      : EDP_ERETURNED;
}

/* Consecutive reconnects without progress before recovery gives up. */
#define MAX_RECOVERIES 10

int edp_conn_recover(edp_conn *c, edp_recovery *r) {
  if (!c)
    return EDP_EINVAL;
  for (int i = 0; i < MAX_RECOVERIES; i++) {
    int rc = edp_conn_reconnect(c);
    if (rc)
      return rc;
    if (r)
      r->reconnects++;
    size_t n = 0;
    rc = edp_conn_republish_unconfirmed(c, &n);
    if (r)
      r->republished += n;
    if (rc != EDP_ECLOSED)
      return rc;
  }
  return EDP_ECONNECT;
}

int edp_conn_publish_window(edp_conn *c, const edp_msg *m, size_t window,
                            int timeout_ms, edp_recovery *r) {
  for (int i = 0; i < MAX_RECOVERIES; i++) {
    int rc = window
                 ? edp_conn_wait_confirms_recover(c, window - 1, timeout_ms, r)
                 : 0;
    if (!rc)
      rc = edp_conn_publish(c, m, NULL);
    if (rc != EDP_ECLOSED)
      return rc;
    if ((rc = edp_conn_recover(c, r)))
      return rc;
  }
  return EDP_ECONNECT;
}

int edp_conn_wait_confirms_recover(edp_conn *c, size_t max_outstanding,
                                   int timeout_ms, edp_recovery *r) {
  for (int i = 0; i < MAX_RECOVERIES; i++) {
    int rc = edp_conn_wait_confirms(c, max_outstanding, timeout_ms);
    if (rc != EDP_ECLOSED)
      return rc;
    if ((rc = edp_conn_recover(c, r)))
      return rc;
  }
  return EDP_ECONNECT;
}

/* ---------- consuming ---------- */

void edp_consume_opts_init(edp_consume_opts *o) { memset(o, 0, sizeof(*o)); }

int edp_conn_consume(edp_conn *c, const char *queue, const edp_consume_opts *o,
                     char *tag_out, size_t tag_len) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!queue || !queue[0])
    return EDP_EINVAL;
  edp_consume_opts defaults;
  if (!o) {
    edp_consume_opts_init(&defaults);
    o = &defaults;
  }
  char tag[256];
  rc = do_consume(c, queue, NULL, o, tag, sizeof(tag));
  if (rc)
    return rc;
  if (tag_out && tag_len)
    snprintf(tag_out, tag_len, "%s", tag);
  if (c->n_cons == c->cap_cons) {
    size_t cap = c->cap_cons ? c->cap_cons * 2 : 4;
    struct consumer_rec *n = realloc(c->cons, cap * sizeof(*n));
    if (!n)
      return EDP_ENOMEM;
    c->cons = n;
    c->cap_cons = cap;
  }
  struct consumer_rec *r = &c->cons[c->n_cons];
  r->queue = strdup(queue);
  r->tag = strdup(tag);
  r->o = *o;
  r->prefetch = c->prefetch;
  if (!r->queue || !r->tag) {
    free(r->queue);
    free(r->tag);
    return EDP_ENOMEM;
  }
  c->n_cons++;
  return 0;
}

int edp_conn_cancel(edp_conn *c, const char *tag) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (!tag)
    return EDP_EINVAL;
  for (size_t i = 0; i < c->n_cons; i++) {
    if (strcmp(c->cons[i].tag, tag))
      continue;
    free(c->cons[i].queue);
    free(c->cons[i].tag);
    c->cons[i] = c->cons[--c->n_cons];
    break;
  }
  amqp_basic_cancel(c->st, CHANNEL, amqp_cstring_bytes(tag));
  return rpc_result(c, amqp_get_rpc_reply(c->st));
}

size_t edp_conn_pending_deliveries(const edp_conn *c) {
  return c ? c->n_dq : 0;
}

int edp_conn_wait(edp_conn *c, int wake_fd, int timeout_ms) {
  if (!c)
    return EDP_EINVAL;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (;;) {
    if (c->dq_head)
      return EDP_READY_DELIVERY;
    if (c->broker_cancelled) {
      c->broker_cancelled = 0;
      return EDP_ENOTFOUND;
    }
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      left = l > 0 ? (int)l : 0;
    }
    int woke = 0;
    int rc = pump(c, wake_fd, left, &woke);
    if (woke)
      return c->dq_head ? EDP_READY_DELIVERY | EDP_READY_WAKE : EDP_READY_WAKE;
    if (rc == EDP_ETIMEOUT)
      return c->dq_head ? EDP_READY_DELIVERY : 0;
    if (rc)
      return rc;
  }
}

int edp_conn_receive(edp_conn *c, edp_delivery *d, int timeout_ms) {
  if (!c || !d)
    return EDP_EINVAL;
  memset(d, 0, sizeof(*d));
  int rc = edp_conn_wait(c, -1, timeout_ms);
  if (rc < 0)
    return rc;
  if (!(rc & EDP_READY_DELIVERY))
    return EDP_ETIMEOUT;
  struct dnode *n = c->dq_head;
  c->dq_head = n->next;
  if (!c->dq_head)
    c->dq_tail = NULL;
  c->n_dq--;
  *d = n->d;
  free(n);
  return 0;
}

const char *edp_delivery_header_str(const edp_delivery *d, const char *key) {
  for (size_t i = 0; d && key && i < d->n_headers; i++)
    if (d->headers[i].str && !strcmp(d->headers[i].key, key))
      return d->headers[i].str;
  return NULL;
}

int edp_delivery_header_int(const edp_delivery *d, const char *key,
                            int64_t *v) {
  for (size_t i = 0; d && key && i < d->n_headers; i++)
    if (!d->headers[i].str && !strcmp(d->headers[i].key, key)) {
      if (v)
        *v = d->headers[i].num;
      return 0;
    }
  return EDP_ENOTFOUND;
}

static int ack_common(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple,
                      int nack, int requeue) {
  int rc = check_open(c);
  if (rc)
    return rc;
  if (epoch != c->epoch)
    return EDP_ESTALE;
  int res = nack ? amqp_basic_nack(c->st, CHANNEL, tag, multiple, requeue)
                 : amqp_basic_ack(c->st, CHANNEL, tag, multiple);
  return res < 0 ? lib_error(c, res) : 0;
}

int edp_conn_ack(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple) {
  return ack_common(c, epoch, tag, multiple, 0, 0);
}

int edp_conn_nack(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple,
                  int requeue) {
  return ack_common(c, epoch, tag, multiple, 1, requeue);
}

/* ---------- reconnection ---------- */

static int restore_all(edp_conn *c) {
  int rc = restore_topology(c);
  if (!rc)
    rc = restore_consumers(c);
  return rc;
}

int edp_conn_reconnect(edp_conn *c) {
  if (!c)
    return EDP_EINVAL;
  if (c->st)
    mark_closed(c, "reconnecting");
  int64_t start = edp_now_ms();
  int delay = c->o.backoff_initial_ms > 0 ? c->o.backoff_initial_ms : 1;
  for (int attempt = 1;; attempt++) {
    char why[600] = "";
    int rc = connect_once(c, why, sizeof(why));
    if (!rc) {
      rc = restore_all(c);
      if (!rc) {
        logf_(c, EDP_LOG_INFO,
              "reconnected to %s (attempt %d, %zu unconfirmed to resend)",
              c->masked, attempt, c->n_lost);
        if (c->o.on_reconnect)
          c->o.on_reconnect(c->o.on_reconnect_ud, c);
        return 0;
      }
      snprintf(why, sizeof(why), "restoring topology: %s (%d %s)",
               edp_strerror(rc), c->reply_code, c->reply_text);
      if (c->st)
        mark_closed(c, why);
      if (rc != EDP_ECLOSED && rc != EDP_ETIMEOUT)
        return rc;
    }
    if (rc == EDP_EAUTH || rc == EDP_EACCESS || rc == EDP_ENOMEM)
      return rc;
    /* Full jitter over the upper half keeps many clients from coming back
     * in lockstep after a broker restart. */
    int wait =
        delay / 2 + (int)(rand_r(&c->rand_state) % (unsigned)(delay / 2 + 1));
    if (edp_now_ms() - start + wait > c->o.reconnect_max_ms) {
      logf_(c, EDP_LOG_ERROR,
            "giving up reconnecting to %s after %d attempts: %s", c->masked,
            attempt, why);
      return rc == EDP_ECLOSED ? EDP_ECONNECT : rc;
    }
    logf_(c, EDP_LOG_WARN, "reconnect attempt %d failed: %s; retrying in %d ms",
          attempt, why, wait);
    if (edp_sleep_ms(wait, c->o.stop_fd))
      return EDP_ESTOPPED;
    delay = delay > c->o.backoff_max_ms / 2 ? c->o.backoff_max_ms : delay * 2;
  }
}
