/*
 * edp_consume.c - consumers, deliveries and acks on an edp_conn.
 *
 * The frame pump queues each basic.deliver as an edp_delivery stamped with
 * the channel's epoch; edp_conn_receive() hands them out in order, and an
 * ack names the epoch so that a delivery of a channel that is gone is
 * never acked on its successor (the broker redelivers it instead).
 * Consumers are recorded with the prefetch they were created with, so the
 * recovery sequence can start them again. A consumer that cannot be
 * started again (its queue is gone, another connection holds it
 * exclusively) is dropped and reported once, never retried.
 */

#define _GNU_SOURCE /* TCP_CORK */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "edp_conn_internal.h"
#include "edp_util.h"

/* ---------- deliveries ---------- */

void edp_delivery_clear(edp_delivery *d) {
  if (!d)
    return;
  if (d->block_) {
    /* Filled by fill_delivery(): body and strings share one block. */
    free(d->block_);
    free(d->headers);
    memset(d, 0, sizeof(*d));
    return;
  }
  free(d->exchange);
  free(d->routing_key);
  free(d->consumer_tag);
  free(d->body);
  free(d->message_id);
  free(d->content_type);
  free(d->reply_to);
  free(d->correlation_id);
  free(d->type);
  free(d->user_id);
  free(d->content_encoding);
  free(d->expiration);
  free(d->app_id);
  free(d->cluster_id);
  free(d->headers);
  memset(d, 0, sizeof(*d));
}

void edp__drop_deliveries(edp_conn *c) {
  while (c->dq_head) {
    struct edp__dnode *n = c->dq_head;
    c->dq_head = n->next;
    edp__free_delivery(n);
  }
  c->dq_tail = NULL;
  c->n_dq = 0;
  c->dq_bytes = 0;
}

static size_t bytes_size(amqp_bytes_t b) { return b.len + 1; }

/* Copies b into *cur as a NUL-terminated string and advances *cur. */
static char *put_bytes(char **cur, amqp_bytes_t b) {
  char *s = *cur;
  if (b.len)
    memcpy(s, b.bytes, b.len);
  s[b.len] = '\0';
  *cur += b.len + 1;
  return s;
}

/* The delivery's body and strings are copied into one allocation, after
 * head bytes for the caller (the body first, so that it is aligned as
 * the head leaves it): one malloc and one free per delivery instead of one
 * per field. */
static int fill_delivery(edp_delivery *d, const amqp_basic_deliver_t *dv,
                         const amqp_basic_properties_t *p, amqp_bytes_t body,
                         uint32_t epoch, uint64_t oversize, size_t head) {
  memset(d, 0, sizeof(*d));
  d->tag = dv->delivery_tag;
  d->epoch = epoch;
  d->redelivered = dv->redelivered;
  d->priority = -1;
  size_t size = bytes_size(body) + bytes_size(dv->exchange) +
                bytes_size(dv->routing_key) + bytes_size(dv->consumer_tag);
#define EDP__PROPS                                                             \
  EDP__PROP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)                            \
  EDP__PROP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)                        \
  EDP__PROP(AMQP_BASIC_REPLY_TO_FLAG, reply_to)                                \
  EDP__PROP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)                    \
  EDP__PROP(AMQP_BASIC_TYPE_FLAG, type)                                        \
  EDP__PROP(AMQP_BASIC_USER_ID_FLAG, user_id)                                  \
  EDP__PROP(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding)                \
  EDP__PROP(AMQP_BASIC_EXPIRATION_FLAG, expiration)                            \
  EDP__PROP(AMQP_BASIC_APP_ID_FLAG, app_id)                                    \
  EDP__PROP(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id)
#define EDP__PROP(flag, field)                                                 \
  if (p->_flags & flag)                                                        \
    size += bytes_size(p->field);
  EDP__PROPS
#undef EDP__PROP
  d->block_ = malloc(head + size);
  if (!d->block_)
    return EDP_ENOMEM;
  char *cur = (char *)d->block_ + head;
  /* No bytes yet: the caller copies the body frames into place. */
  d->body = cur;
  cur[body.len] = '\0';
  if (body.bytes && body.len)
    memcpy(cur, body.bytes, body.len);
  cur += body.len + 1;
  d->body_len = body.len;
  d->oversize = oversize;
  d->exchange = put_bytes(&cur, dv->exchange);
  d->routing_key = put_bytes(&cur, dv->routing_key);
  d->consumer_tag = put_bytes(&cur, dv->consumer_tag);
#define EDP__PROP(flag, field)                                                 \
  if (p->_flags & flag)                                                        \
    d->field = put_bytes(&cur, p->field);
  EDP__PROPS
#undef EDP__PROP
#undef EDP__PROPS
  if (p->_flags & AMQP_BASIC_PRIORITY_FLAG)
    d->priority = p->priority;
  if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
    d->timestamp = (int64_t)p->timestamp;
  d->delivery_mode = -1;
  if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) {
    d->delivery_mode = p->delivery_mode;
    d->persistent = p->delivery_mode == AMQP_DELIVERY_PERSISTENT;
  }
  if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
    return edp__fields_from_amqp(&p->headers, &d->headers, &d->n_headers);
  return 0;
}

struct edp__dnode *edp__new_delivery(edp_conn *c,
                                     const amqp_basic_deliver_t *dv,
                                     const amqp_basic_properties_t *props,
                                     amqp_bytes_t body, uint64_t oversize) {
  /* The queue's node lives at the start of the delivery's own block, so
   * that taking the delivery frees nothing and clearing it frees all. */
  edp_delivery d;
  if (fill_delivery(&d, dv, props, body, c->epoch, oversize,
                    sizeof(struct edp__dnode))) {
    edp_delivery_clear(&d);
    return NULL;
  }
  struct edp__dnode *n = d.block_;
  n->next = NULL;
  n->d = d;
  return n;
}

void edp__push_delivery(edp_conn *c, struct edp__dnode *n) {
  if (c->dq_tail)
    c->dq_tail->next = n;
  else
    c->dq_head = n;
  c->dq_tail = n;
  c->n_dq++;
  c->dq_bytes += n->d.body_len;
  edp_count_add(&c->m.delivered, 1);
}

void edp__free_delivery(struct edp__dnode *n) {
  if (!n)
    return;
  edp_delivery d = n->d; /* n is inside the block the clear frees */
  edp_delivery_clear(&d);
}

/* ---------- consumers ---------- */

static void remove_consumer(edp_conn *c, size_t i) {
  free(c->cons[i].queue);
  free(c->cons[i].tag);
  c->cons[i] = c->cons[--c->n_cons];
  edp_gauge_set(&c->m.consumers, (int)c->n_cons);
}

void edp__free_consumers(edp_conn *c) {
  for (size_t i = 0; i < c->n_cons; i++) {
    free(c->cons[i].queue);
    free(c->cons[i].tag);
  }
  free(c->cons);
  c->cons = NULL;
  c->n_cons = c->cap_cons = 0;
  edp_gauge_set(&c->m.consumers, 0);
}

/* A consumer ends: reported once through the event callback and the next
 * edp_conn_wait (EDP_ENOTFOUND), then forgotten. */
static void consumer_gone(edp_conn *c, size_t i, const char *why) {
  edp__log(c, EDP_LOG_WARN, "consumer %s on queue %s ended: %s", c->cons[i].tag,
           c->cons[i].queue, why);
  edp_count_add(&c->m.consumers_cancelled, 1);
  edp__event(c, EDP_CONN_CONSUMER_CANCELLED, c->cons[i].queue, c->cons[i].tag);
  remove_consumer(c, i);
  c->consumer_lost = 1;
}

void edp__broker_cancel(edp_conn *c, amqp_bytes_t tag) {
  for (size_t i = 0; i < c->n_cons; i++) {
    if (!edp__bytes_eq(tag, c->cons[i].tag))
      continue;
    c->reply_code = 0;
    snprintf(c->reply_text, sizeof(c->reply_text),
             "cancelled by the broker (queue deleted or unavailable)");
    consumer_gone(c, i, c->reply_text);
    return;
  }
}

static int do_consume(edp_conn *c, const char *queue, const char *tag,
                      const edp_consume_opts *o, char *tag_out,
                      size_t tag_len) {
  amqp_table_entry_t e = {amqp_cstring_bytes("x-priority"),
                          {AMQP_FIELD_KIND_I32, {.i32 = o->priority}}};
  amqp_table_t args = {o->priority ? 1 : 0, &e};
  amqp_basic_consume_ok_t *ok =
      amqp_basic_consume(c->st, c->chan, amqp_cstring_bytes(queue),
                         edp__bytes_of(tag), 0, o->no_ack, o->exclusive, args);
  int rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc && tag_out && tag_len)
    snprintf(tag_out, tag_len, "%.*s", (int)ok->consumer_tag.len,
             (const char *)ok->consumer_tag.bytes);
  return rc;
}

/* basic.qos with global=false applies to the consumers created after it,
 * so a channel can give its consumers different prefetch counts. Each
 * consumer gets back the one it was created with, then the channel's last
 * value is set again for consumers created later. */
static int restore_qos(edp_conn *c, int want, int *cur) {
  if (want < 0 || want == *cur)
    return 0;
  amqp_basic_qos(c->st, c->chan, 0, (uint16_t)want, 0);
  int rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (!rc)
    *cur = want;
  return rc;
}

int edp__restore_consumers(edp_conn *c) {
  int cur = c->prefetch; /* open_channel set it */
  for (size_t i = 0; i < c->n_cons; i++) {
    int rc = restore_qos(c, c->cons[i].prefetch, &cur);
    if (rc)
      return rc;
    rc =
        do_consume(c, c->cons[i].queue, c->cons[i].tag, &c->cons[i].o, NULL, 0);
    if (rc && c->st) {
      /* Its queue is gone, or someone else holds it exclusively: the
       * channel closed on it. Drop it; the caller opens a new channel and
       * starts the others again. */
      char why[300];
      snprintf(why, sizeof(why), "cannot be restored: %d %s", c->reply_code,
               c->reply_text);
      consumer_gone(c, i, why);
    }
    if (rc)
      return rc;
  }
  return restore_qos(c, c->prefetch, &cur);
}

void edp_consume_opts_init(edp_consume_opts *o) { memset(o, 0, sizeof(*o)); }

int edp_conn_consume(edp_conn *c, const char *queue, const edp_consume_opts *o,
                     char *tag_out, size_t tag_len) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!queue || !queue[0])
    return EDP_EINVAL;
  edp_consume_opts defaults;
  if (!o) {
    edp_consume_opts_init(&defaults);
    o = &defaults;
  }
  if (c->n_cons == c->cap_cons) {
    size_t cap = c->cap_cons ? c->cap_cons * 2 : 4;
    struct edp__consumer *n = realloc(c->cons, cap * sizeof(*n));
    if (!n)
      return EDP_ENOMEM;
    c->cons = n;
    c->cap_cons = cap;
  }
  struct edp__consumer *r = &c->cons[c->n_cons];
  r->queue = strdup(queue);
  r->tag = NULL;
  if (!r->queue)
    return EDP_ENOMEM;
  char tag[256];
  rc = do_consume(c, queue, NULL, o, tag, sizeof(tag));
  if (rc) {
    free(r->queue);
    return edp__settle(c, rc);
  }
  if (!(r->tag = strdup(tag))) {
    /* Without a record it would not be restored: cancel it now. */
    free(r->queue);
    amqp_basic_cancel(c->st, c->chan, amqp_cstring_bytes(tag));
    edp__settle(c, edp__rpc_result(c, amqp_get_rpc_reply(c->st)));
    return EDP_ENOMEM;
  }
  r->o = *o;
  r->prefetch = c->prefetch;
  c->n_cons++;
  edp_gauge_set(&c->m.consumers, (int)c->n_cons);
  if (tag_out && tag_len)
    snprintf(tag_out, tag_len, "%s", tag);
  return 0;
}

int edp_conn_cancel(edp_conn *c, const char *tag) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!tag)
    return EDP_EINVAL;
  for (size_t i = 0; i < c->n_cons; i++)
    if (!strcmp(c->cons[i].tag, tag)) {
      remove_consumer(c, i);
      break;
    }
  amqp_basic_cancel(c->st, c->chan, amqp_cstring_bytes(tag));
  return edp__settle(c, edp__rpc_result(c, amqp_get_rpc_reply(c->st)));
}

size_t edp__consumer_max_body(const edp_conn *c, amqp_bytes_t tag) {
  for (size_t i = 0; i < c->n_cons; i++)
    if (edp__bytes_eq(tag, c->cons[i].tag))
      return c->cons[i].o.max_body;
  return 0;
}

size_t edp_conn_consumers(const edp_conn *c) { return c ? c->n_cons : 0; }

size_t edp_conn_pending_deliveries(const edp_conn *c) {
  return c ? c->n_dq : 0;
}

size_t edp_conn_read_ahead(const edp_conn *c) {
  return c ? c->o.read_ahead_bytes : 0;
}

/* One wait step shared by edp_conn_wait and edp_conn_service: reads
 * frames until one came, wake_fd, the deadline (-1: none) or an error.
 * Returns 0 (a frame), EDP_READY_WAKE, EDP_ETIMEOUT or a negative error;
 * a channel the broker closed is restored here (EDP_ECHANNEL). */
static int service_step(edp_conn *c, int wake_fd, int64_t deadline) {
  int left = -1;
  if (deadline >= 0) {
    int64_t l = deadline - edp_now_ms();
    left = l > 0 ? (int)l : 0;
  }
  int woke = 0;
  int rc = edp__pump(c, wake_fd, left, &woke);
  if (woke)
    return EDP_READY_WAKE;
  if (rc == 0 || rc == EDP_ETIMEOUT)
    return rc;
  /* The broker closed the channel: restore it with its consumers. The
   * caller learns its earlier deliveries are void. */
  if (c->chan_closed)
    return edp__settle(c, EDP_ECHANNEL);
  return rc;
}

int edp_conn_wait(edp_conn *c, int wake_fd, int timeout_ms) {
  if (!c)
    return EDP_EINVAL;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (;;) {
    if (c->dq_head)
      return EDP_READY_DELIVERY;
    if (c->consumer_lost) {
      c->consumer_lost = 0;
      return EDP_ENOTFOUND;
    }
    int rc = service_step(c, wake_fd, deadline);
    if (rc == EDP_READY_WAKE)
      return c->dq_head ? EDP_READY_DELIVERY | EDP_READY_WAKE : EDP_READY_WAKE;
    if (rc == EDP_ETIMEOUT)
      return c->dq_head ? EDP_READY_DELIVERY : 0;
    if (rc)
      return rc;
  }
}

/* Instead of a service step while the queue holds read_ahead_bytes:
 * reads nothing, so that the rest of the prefetched bodies wait in the
 * socket and the broker (TCP's window holds the broker back), not in
 * fresh memory here: with prefetch 64 and 1 MiB bodies a receiver used
 * to read 64 MiB ahead of its handler, and touching that memory cost it
 * a fifth of its throughput. The broker still hears from us: a
 * heartbeat goes out every half interval (rabbitmq-c sends one per
 * interval when idle; the broker gives up after two silent ones), and
 * amqp_send_frame restarts rabbitmq-c's own send timer. What the broker sends
 * meanwhile, a close included, is read once the handler took
 * deliveries; a connection lost meanwhile shows then, or as a failed
 * heartbeat. Returns as service_step. */
static int hold_reads(edp_conn *c, int wake_fd, int64_t deadline) {
  for (;;) {
    if (!c->st)
      return EDP_ECLOSED;
    /* The interval the broker agreed to, which may be below the URL's. */
    int beat_s = amqp_get_heartbeat(c->st);
    int beat_ms = beat_s > 0 ? beat_s * 500 : -1;
    int64_t now = edp_now_ms();
    if (beat_ms > 0 && now - c->held_beat_ms >= beat_ms) {
      amqp_frame_t beat = {.frame_type = AMQP_FRAME_HEARTBEAT, .channel = 0};
      int res = amqp_send_frame(c->st, &beat);
      if (res != AMQP_STATUS_OK)
        return edp__lib_error(c, res);
      c->held_beat_ms = now;
    }
    int64_t wait = beat_ms > 0 ? c->held_beat_ms + beat_ms - now : 60000;
    if (deadline >= 0 && deadline - now < wait)
      wait = deadline - now;
    if (wait < 0)
      wait = 0;
    struct pollfd fds[2] = {{c->ignore_stop ? -1 : c->o.stop_fd, POLLIN, 0},
                            {wake_fd, POLLIN, 0}};
    int n = poll(fds, 2, (int)wait);
    if (n < 0 && errno != EINTR)
      return edp__lib_error(c, AMQP_STATUS_SOCKET_ERROR);
    if (n > 0 && (fds[0].revents & POLLIN))
      return EDP_ESTOPPED;
    if (n > 0 && (fds[1].revents & POLLIN))
      return EDP_READY_WAKE;
    if (deadline >= 0 && edp_now_ms() >= deadline)
      return EDP_ETIMEOUT;
  }
}

int edp_conn_service(edp_conn *c, int wake_fd, int timeout_ms) {
  if (!c)
    return EDP_EINVAL;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (;;) {
    int held = c->o.read_ahead_bytes && c->dq_bytes >= c->o.read_ahead_bytes;
    int rc = held ? hold_reads(c, wake_fd, deadline)
                  : service_step(c, wake_fd, deadline);
    if (rc == EDP_ETIMEOUT)
      return 0;
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
  struct edp__dnode *n = c->dq_head;
  c->dq_head = n->next;
  if (!c->dq_head)
    c->dq_tail = NULL;
  c->n_dq--;
  c->dq_bytes -= n->d.body_len;
  *d = n->d; /* n stays in d's block until the caller clears d */
  return 0;
}

const edp_value *edp_delivery_header(const edp_delivery *d, const char *key) {
  size_t kl = key ? strlen(key) : 0;
  for (size_t i = 0; d && key && i < d->n_headers; i++) {
    const edp_field *f = &d->headers[i];
    size_t fl = edp__field_key_len(f);
    if (fl == kl && !memcmp(f->key, key, kl))
      return &f->value;
  }
  return NULL;
}

const char *edp_delivery_header_str(const edp_delivery *d, const char *key) {
  const edp_value *v = edp_delivery_header(d, key);
  return v && (v->kind == EDP_FIELD_STRING || v->kind == EDP_FIELD_BYTES)
             ? v->v.bytes.ptr
             : NULL;
}

int edp_delivery_header_int(const edp_delivery *d, const char *key,
                            int64_t *out) {
  const edp_value *v = edp_delivery_header(d, key);
  int64_t n;
  switch (v ? v->kind : 0) {
  case EDP_FIELD_I8:
  case EDP_FIELD_U8:
  case EDP_FIELD_I16:
  case EDP_FIELD_U16:
  case EDP_FIELD_I32:
  case EDP_FIELD_U32:
  case EDP_FIELD_I64:
    n = v->v.i;
    break;
  case EDP_FIELD_U64:
    if (v->v.u > INT64_MAX)
      return EDP_ENOTFOUND;
    n = (int64_t)v->v.u;
    break;
  default:
    return EDP_ENOTFOUND;
  }
  if (out)
    *out = n;
  return 0;
}

void edp_msg_from_delivery(edp_msg *m, const edp_delivery *d) {
  edp_msg_init(m);
  m->body = d->body;
  m->body_len = d->body_len;
  m->mandatory = 1;
  m->message_id = d->message_id;
  m->content_type = d->content_type;
  m->correlation_id = d->correlation_id;
  m->reply_to = d->reply_to;
  m->type = d->type;
  m->user_id = d->user_id;
  m->content_encoding = d->content_encoding;
  m->expiration = d->expiration;
  m->app_id = d->app_id;
  m->cluster_id = d->cluster_id;
  m->persistent = d->persistent;
  m->delivery_mode = d->delivery_mode;
  m->priority = d->priority;
  m->timestamp = d->timestamp;
  m->table = d->headers;
  m->n_table = d->n_headers;
}

static int ack_common(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple,
                      int nack, int requeue) {
  if (!c)
    return EDP_EINVAL;
  if (!c->st)
    return EDP_ECLOSED;
  /* A delivery of a channel that is gone (or closed and not yet restored)
   * is the broker's again: acking it on another channel would ack a
   * different message. */
  if (epoch != c->epoch || c->chan_closed || !c->open)
    return EDP_ESTALE;
  int res = nack ? amqp_basic_nack(c->st, c->chan, tag, multiple, requeue)
                 : amqp_basic_ack(c->st, c->chan, tag, multiple);
  return res < 0 ? edp__lib_error(c, res) : 0;
}

int edp_conn_ack(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple) {
  return ack_common(c, epoch, tag, multiple, 0, 0);
}

int edp_conn_nack(edp_conn *c, uint32_t epoch, uint64_t tag, int multiple,
                  int requeue) {
  return ack_common(c, epoch, tag, multiple, 1, requeue);
}

int edp_conn_cork(edp_conn *c, int on) {
  if (!c || !c->st)
    return EDP_ECLOSED;
  int fd = amqp_get_sockfd(c->st), v = on != 0;
  if (fd < 0)
    return EDP_ECLOSED;
  return setsockopt(fd, IPPROTO_TCP, TCP_CORK, &v, sizeof(v)) ? EDP_EIO : 0;
}
