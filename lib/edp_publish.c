/*
 * edp_publish.c - publishing and publisher confirms on an edp_conn.
 *
 * rabbitmq-c 0.11 has no confirm helper: in confirm mode every published
 * message is copied into the pending list with its sequence number, and
 * basic.ack/nack (honouring `multiple`) and basic.return, read by the
 * frame pump, settle it there. A lost channel moves the pending list to
 * the lost list, which the recovery sequence publishes again.
 *
 * A blocked broker (resource alarm) stops reading the socket, and a write
 * into it would hang inside rabbitmq-c where no timeout or stop fd
 * reaches. So publishing looks at the socket every few milliseconds (a
 * clock read per message, a poll() per interval): it reads what came
 * (connection.blocked among it) and, while blocked or while the socket
 * takes nothing, waits with the stop fd and a deadline instead of writing.
 */

#include <linux/sockios.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "edp_conn_internal.h"
#include "edp_util.h"

/* How often a publish looks at the socket, in ms, and how many bytes it
 * writes at most without looking (a quarter of a small send buffer). */
#define IO_CHECK_MS 2
#define BLIND_BYTES (64 * 1024)
/* Re-check interval while the send buffer is too full to take a frame:
 * the kernel has no event for "this much room", so this one wait looks
 * again (frames are serviced meanwhile). Only a slow broker gets here. */
#define WAIT_SLICE_MS 10

/* Consecutive reconnects without progress before recovery gives up. */
#define MAX_RECOVERIES 10

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

/* Deep-copies m (strings, headers and, unless lent, the body) into one
 * allocation of head bytes followed by the copied data; the edp_msg lands
 * at msg_off inside the head. Lets the pending list and edp_msg_dup share
 * one copier. A lent body is pointed at, not copied. */
static void *copy_msg_into(const edp_msg *m, size_t head, size_t msg_off,
                           int lent) {
  size_t size =
      head + m->n_headers * sizeof(edp_header) + slen(m->exchange) +
      slen(m->routing_key) + slen(m->message_id) + slen(m->content_type) +
      slen(m->reply_to) + slen(m->correlation_id) + slen(m->type) +
      slen(m->user_id) + slen(m->content_encoding) + slen(m->expiration) +
      slen(m->app_id) + slen(m->cluster_id) + (lent ? 0 : m->body_len);
  for (size_t i = 0; i < m->n_headers; i++)
    size += slen(m->headers[i].key) + slen(m->headers[i].str);
  /* The table comes right after the headers array, which keeps it aligned
   * (head and edp_header are multiples of 8 bytes). */
  size_t table = edp__fields_size(m->table, m->n_table);
  size += table;
  char *block = malloc(size);
  if (!block)
    return NULL;
  memset(block, 0, head);
  edp_msg *copy = (edp_msg *)(block + msg_off);
  *copy = *m;
  edp_header *h = (edp_header *)(block + head);
  char *cur = (char *)(h + m->n_headers);
  copy->table =
      m->n_table ? edp__fields_copy_into(cur, m->table, m->n_table) : NULL;
  cur += table;
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
  copy->user_id = put_str(&cur, m->user_id);
  copy->content_encoding = put_str(&cur, m->content_encoding);
  copy->expiration = put_str(&cur, m->expiration);
  copy->app_id = put_str(&cur, m->app_id);
  copy->cluster_id = put_str(&cur, m->cluster_id);
  if (lent)
    return block; /* copy->body is m->body */
  if (m->body_len)
    memcpy(cur, m->body, m->body_len);
  copy->body = cur;
  return block;
}

/* The copy and the size estimate trust a message's table, so a caller's
 * table is checked first (NULL keys or pointers, unknown kinds, keys over
 * 255 bytes) by converting it once. */
static int table_check(const edp_msg *m) {
  if (!m->n_table)
    return 0;
  if (!m->table)
    return EDP_EINVAL;
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_table_t t;
  int rc = edp__fields_to_amqp(&pool, m->table, m->n_table, &t);
  empty_amqp_pool(&pool);
  return rc;
}

static struct edp__pending *copy_msg(const edp_msg *m, edp_body_done_fn done,
                                     void *ud) {
  struct edp__pending *p =
      copy_msg_into(m, sizeof(struct edp__pending),
                    offsetof(struct edp__pending, m), done != NULL);
  if (p) {
    p->body_done = done;
    p->body_ud = ud;
  }
  return p;
}

/* Frees a pending entry, giving a lent body back. */
static void pending_free(struct edp__pending *p) {
  if (p->body_done)
    p->body_done(p->body_ud, p->m.body);
  free(p);
}

edp_msg *edp_msg_dup(const edp_msg *m) {
  if (!m || (m->body_len && !m->body) || (m->n_headers && !m->headers) ||
      table_check(m))
    return NULL;
  return copy_msg_into(m, sizeof(edp_msg), 0, 0);
}

void edp__free_pending_list(struct edp__pending *p) {
  while (p) {
    struct edp__pending *n = p->next;
    pending_free(p);
    p = n;
  }
}

static void append_pending(struct edp__pending **head,
                           struct edp__pending **tail, struct edp__pending *p) {
  p->next = NULL;
  if (*tail)
    (*tail)->next = p;
  else
    *head = p;
  *tail = p;
}

/* ---------- confirms ---------- */

/* now_us: the time of the confirm frame, for the latency histogram; 0
 * when timing is off or the message was refused without one. */
static void report_confirm(edp_conn *c, struct edp__pending *p, int nack,
                           int64_t now_us) {
  int status = nack          ? EDP_CONFIRM_NACK
               : p->returned ? EDP_CONFIRM_RETURNED
                             : EDP_CONFIRM_ACK;
  edp_count_add(status == EDP_CONFIRM_ACK    ? &c->m.confirmed
                : status == EDP_CONFIRM_NACK ? &c->m.nacked
                                             : &c->m.returned,
                1);
  if (now_us && p->sent_us)
    edp_hist_observe(&c->m.confirm_latency, now_us - p->sent_us);
  if (c->sync_seq && p->seq == c->sync_seq)
    c->sync_status = status;
  if (c->on_confirm) {
    edp_confirm cf = {
        .seq = p->seq,
        .status = status,
        .message_id = p->m.message_id,
        .reply_code = p->reply_code,
        .reply_text = p->reply_text,
        .msg = &p->m,
    };
    c->on_confirm(c->on_confirm_ud, &cf);
  }
}

void edp__handle_ack(edp_conn *c, uint64_t tag, int multiple, int nack) {
  if (!nack)
    c->closes_without_ack = 0;
  /* One clock read per confirm frame, shared by every message it covers. */
  int64_t now_us = c->timing ? edp_now_us() : 0;
  if (multiple) {
    while (c->pend_head && c->pend_head->seq <= tag) {
      struct edp__pending *p = c->pend_head;
      c->pend_head = p->next;
      if (!c->pend_head)
        c->pend_tail = NULL;
      c->n_pend--;
      report_confirm(c, p, nack, now_us);
      pending_free(p);
    }
    return;
  }
  struct edp__pending *prev = NULL;
  for (struct edp__pending *p = c->pend_head; p; prev = p, p = p->next) {
    if (p->seq != tag)
      continue;
    if (prev)
      prev->next = p->next;
    else
      c->pend_head = p->next;
    if (c->pend_tail == p)
      c->pend_tail = prev;
    c->n_pend--;
    report_confirm(c, p, nack, now_us);
    pending_free(p);
    return;
  }
}

/* A basic.return carries the message but no sequence number; the broker
 * sends it just before the ack of that message, and in publish order. So
 * it belongs to the oldest unreturned mandatory message with the same
 * exchange, routing key, message_id (or none) and body. */
void edp__handle_return(edp_conn *c, const amqp_basic_return_t *r,
                        const amqp_message_t *msg) {
  char *mid = (msg->properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
                  ? edp__dup_bytes(msg->properties.message_id)
                  : NULL;
  struct edp__pending *hit = NULL;
  for (struct edp__pending *p = c->pend_head; p && !hit; p = p->next)
    if (!p->returned && p->m.mandatory &&
        edp__bytes_eq(r->exchange, p->m.exchange) &&
        edp__bytes_eq(r->routing_key, p->m.routing_key) &&
        (mid ? p->m.message_id && !strcmp(p->m.message_id, mid)
             : !p->m.message_id) &&
        msg->body.len == p->m.body_len &&
        (!p->m.body_len || !memcmp(msg->body.bytes, p->m.body, p->m.body_len)))
      hit = p;
  if (hit) {
    hit->returned = 1;
    hit->reply_code = r->reply_code;
    snprintf(hit->reply_text, sizeof(hit->reply_text), "%.*s",
             (int)r->reply_text.len, (const char *)r->reply_text.bytes);
  }
  edp__log(c, EDP_LOG_DEBUG, "message %s returned: %d %.*s",
           mid ? mid : "(no id)", r->reply_code, (int)r->reply_text.len,
           (const char *)r->reply_text.bytes);
  free(mid);
}

/* Moves the picked messages of one list out (NULL pick: all of them). */
static void refuse_list(edp_conn *c, struct edp__pending **head,
                        struct edp__pending **tail, size_t *count,
                        int (*pick)(const edp_msg *, const void *),
                        const void *arg) {
  struct edp__pending *keep = NULL, *keep_tail = NULL, *p = *head;
  size_t kept = 0;
  while (p) {
    struct edp__pending *next = p->next;
    if (!pick || pick(&p->m, arg)) {
      p->reply_code = c->reply_code;
      snprintf(p->reply_text, sizeof(p->reply_text), "%.127s", c->reply_text);
      edp__log(c, EDP_LOG_ERROR, "message %s refused: %d %s",
               p->m.message_id ? p->m.message_id : "(no id)", c->reply_code,
               c->reply_text);
      report_confirm(c, p, 1, 0);
      pending_free(p);
    } else {
      append_pending(&keep, &keep_tail, p);
      kept++;
    }
    p = next;
  }
  *head = keep;
  *tail = keep_tail;
  *count = kept;
}

void edp__refuse_pending(edp_conn *c,
                         int (*pick)(const edp_msg *m, const void *arg),
                         const void *arg) {
  refuse_list(c, &c->pend_head, &c->pend_tail, &c->n_pend, pick, arg);
  refuse_list(c, &c->lost_head, &c->lost_tail, &c->n_lost, pick, arg);
}

/* ---------- publishing ---------- */

/* Fills props->headers from m: the table's entries that no simple header
 * replaces, then the simple headers; nested values come from pool. */
static int build_headers(const edp_msg *m, amqp_pool_t *pool,
                         amqp_basic_properties_t *props) {
  size_t n = 0, total = m->n_table + m->n_headers;
  if (!total)
    return 0;
  if (total > INT32_MAX)
    return EDP_EINVAL;
  amqp_table_entry_t *e = amqp_pool_alloc(pool, total * sizeof(*e));
  if (!e)
    return EDP_ENOMEM;
  for (size_t i = 0; i < m->n_table; i++) {
    int rc = edp__field_to_amqp(pool, &m->table[i], &e[n]);
    if (rc)
      return rc;
    int replaced = 0;
    for (size_t k = 0; k < m->n_headers && !replaced; k++)
      replaced = edp__bytes_eq(e[n].key, m->headers[k].key);
    n += !replaced;
  }
  for (size_t k = 0; k < m->n_headers; k++, n++) {
    e[n].key = amqp_cstring_bytes(m->headers[k].key);
    if (m->headers[k].str) {
      e[n].value.kind = AMQP_FIELD_KIND_UTF8;
      e[n].value.value.bytes = amqp_cstring_bytes(m->headers[k].str);
    } else {
      e[n].value.kind = AMQP_FIELD_KIND_I64;
      e[n].value.value.i64 = m->headers[k].num;
    }
  }
  props->_flags |= AMQP_BASIC_HEADERS_FLAG;
  props->headers.num_entries = (int)n;
  props->headers.entries = e;
  return 0;
}

/* Sends one message; in confirm mode p (its copy) joins the pending list. */
int edp__send(edp_conn *c, const edp_msg *m, struct edp__pending *p,
              uint64_t *seq) {
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof(props));
  if (m->delivery_mode >= 0) {
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = m->delivery_mode > 0 ? (uint8_t)m->delivery_mode
                          : m->persistent      ? AMQP_DELIVERY_PERSISTENT
                                               : AMQP_DELIVERY_NONPERSISTENT;
  }
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
  EDP__SETPROP(AMQP_BASIC_USER_ID_FLAG, user_id)
  EDP__SETPROP(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding)
  EDP__SETPROP(AMQP_BASIC_EXPIRATION_FLAG, expiration)
  EDP__SETPROP(AMQP_BASIC_APP_ID_FLAG, app_id)
  EDP__SETPROP(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id)
#undef EDP__SETPROP
  if (m->priority >= 0) {
    props._flags |= AMQP_BASIC_PRIORITY_FLAG;
    props.priority = (uint8_t)m->priority;
  }
  if (m->timestamp != 0) {
    props._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    props.timestamp = (uint64_t)m->timestamp;
  }
  int res = build_headers(m, &c->hdr_pool, &props);
  if (res) {
    recycle_amqp_pool(&c->hdr_pool);
    return res;
  }
  amqp_bytes_t body = {m->body_len, (void *)m->body};
  res = amqp_basic_publish(c->st, c->chan,
                           edp__bytes_of(m->exchange ? m->exchange : ""),
                           edp__bytes_of(m->routing_key ? m->routing_key : ""),
                           m->mandatory, 0, &props, body);
  recycle_amqp_pool(&c->hdr_pool);
  if (res < 0)
    return edp__lib_error(c, res);
  if (p) {
    p->seq = c->next_seq++;
    p->returned = 0;
    p->sent_us = c->timing ? edp_now_us() : 0;
    append_pending(&c->pend_head, &c->pend_tail, p);
    c->n_pend++;
    if (seq)
      *seq = p->seq;
  } else if (seq) {
    *seq = 0;
  }
  return 0;
}

/* Bytes a message takes on the wire, near enough: the body is split into
 * frames of frame_max with 8 bytes of framing each; properties, headers
 * and the method frame are bounded by a few hundred bytes plus names. */
static size_t frame_size(const edp_conn *c, const edp_msg *m) {
  size_t fm = (size_t)(c->url.frame_max > 0 ? c->url.frame_max : 131072);
  size_t n = m->body_len + 8 * (m->body_len / fm + 1) + 512 +
             edp__fields_size(m->table, m->n_table);
  for (size_t i = 0; i < m->n_headers; i++)
    n += (m->headers[i].key ? strlen(m->headers[i].key) : 0) +
         (m->headers[i].str ? strlen(m->headers[i].str) : 0) + 16;
  return n;
}

/* Reads the frames that already arrived, without waiting. */
static int read_arrived(edp_conn *c) {
  for (;;) {
    struct pollfd p = {amqp_get_sockfd(c->st), POLLIN, 0};
    if (!amqp_frames_enqueued(c->st) && !amqp_data_in_buffer(c->st) &&
        !(poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR))))
      return 0;
    int rc = edp__pump(c, -1, 0, NULL);
    if (c->chan_closed)
      return EDP_ECHANNEL; /* whatever the close's own code */
    if (rc && rc != EDP_ETIMEOUT)
      return rc;
  }
}

/* Non-zero if a frame of about need bytes fits into the socket's send
 * buffer now, so that writing it cannot block even if the broker stopped
 * reading this instant. An empty buffer always takes the write: a message
 * bigger than half the buffer has no better moment (the residual risk:
 * written just as the broker blocks, it waits for the broker to read). */
static int fits_in(size_t outq, size_t sndbuf, size_t need) {
  if (outq == 0 || outq + 2 * need <= sndbuf)
    return 1;
  /* A message bigger than the whole buffer blocks in its write until the
   * broker reads, whenever it starts: waiting for room first only left
   * the socket idle for up to WAIT_SLICE_MS between messages (16 MiB
   * bodies at 0.82 x raw rabbitmq-c's MB/s on a quiet machine). */
  if (need >= sndbuf)
    return 1;
  /* A frame of more than half the buffer never fits with that margin:
   * waiting for an empty buffer left the socket idle between big messages
   * (a 1 MiB body went out at 0.6 x raw rabbitmq-c's MB/s). Half full is
   * good enough; its risk is the one above, for a message that big. */
  return 2 * need > sndbuf && 2 * outq <= sndbuf;
}

static int fits_socket(edp_conn *c, size_t need) {
  int fd = amqp_get_sockfd(c->st);
  int outq = 0, sndbuf = 0;
  socklen_t len = sizeof(sndbuf);
  if (ioctl(fd, SIOCOUTQ, &outq) < 0)
    return 1; /* no way to tell: write as rabbitmq-c would */
  /* The buffer's size is read again only when the last one known says
   * no: the kernel grows it as the connection runs, so a known size is
   * (nearly always) the smaller one, and one syscall per look is saved. */
  if (c->sndbuf > 0 && fits_in((size_t)outq, (size_t)c->sndbuf, need))
    return 1;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0)
    return 1;
  c->sndbuf = sndbuf;
  return fits_in((size_t)outq, (size_t)sndbuf, need);
}

/* Before a write of about need bytes. Every IO_CHECK_MS, or when the
 * bytes written since the last look could fill a quarter of a default
 * socket buffer, it reads what arrived (connection.blocked among it) and
 * makes sure the frame fits the send buffer. While the broker blocks us it
 * waits for connection.unblocked; while the buffer is too full (a slow
 * broker) it re-checks every WAIT_SLICE_MS as frames come; both with the
 * stop fd and blocked_timeout_ms. Channel closes met meanwhile are left for
 * the caller's edp__settle. */
static int publish_gate(edp_conn *c, size_t need) {
  int64_t now = edp_now_ms();
  c->blind_bytes += need;
  if (!c->blocked && now < c->next_io_check_ms && c->blind_bytes <= BLIND_BYTES)
    return 0;
  c->next_io_check_ms = now + IO_CHECK_MS;
  c->blind_bytes = need;
  int rc = read_arrived(c);
  if (rc)
    return rc;
  int64_t deadline =
      c->o.blocked_timeout_ms < 0 ? -1 : now + c->o.blocked_timeout_ms;
  for (;;) {
    if (!c->st)
      return EDP_ECLOSED;
    if (c->chan_closed)
      return EDP_ECHANNEL;
    if (!c->blocked && fits_socket(c, need))
      return 0;
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      if (l <= 0)
        return EDP_ETIMEOUT;
      left = (int)l;
    }
    if (!c->blocked && (left < 0 || left > WAIT_SLICE_MS))
      left = WAIT_SLICE_MS;
    rc = edp__pump(c, -1, left, NULL);
    if (c->chan_closed)
      return EDP_ECHANNEL;
    if (rc && rc != EDP_ETIMEOUT)
      return rc;
  }
}

static int publish_impl(edp_conn *c, const edp_msg *m, uint64_t *seq,
                        edp_body_done_fn done, void *ud) {
  int rc = edp__ready(c);
  if (rc)
    return rc;
  if (!m || (m->body_len && !m->body) || (m->n_headers && !m->headers))
    return EDP_EINVAL;
  if ((rc = table_check(m)))
    return rc;
  if (c->o.max_body && m->body_len > c->o.max_body)
    return EDP_ETOOBIG;
  for (size_t i = 0; i < m->n_headers; i++)
    if (!m->headers[i].key)
      return EDP_EINVAL;
  for (int i = 0; i < 3; i++) {
    rc = publish_gate(c, frame_size(c, m));
    if (rc != EDP_ECHANNEL)
      break;
    /* The broker closed the channel while we looked: restore it (the
     * unconfirmed messages go out again) and look once more. */
    if ((rc = edp__settle(c, 0)))
      return rc;
    rc = EDP_ECHANNEL;
  }
  if (rc)
    return rc;
  struct edp__pending *p = NULL;
  if (c->confirm && !(p = copy_msg(m, done, ud)))
    return EDP_ENOMEM;
  rc = edp__send(c, m, p, seq);
  if (rc) {
    free(p); /* a lent body stays the caller's */
    return rc;
  }
  edp_count_add(&c->m.published, 1);
  if (!p && done)
    done(ud, m->body); /* nothing kept: written is done */
  return 0;
}

int edp_conn_publish(edp_conn *c, const edp_msg *m, uint64_t *seq) {
  return publish_impl(c, m, seq, NULL, NULL);
}

int edp_conn_publish_lent(edp_conn *c, const edp_msg *m, edp_body_done_fn done,
                          void *ud, uint64_t *seq) {
  if (!done)
    return EDP_EINVAL;
  return publish_impl(c, m, seq, done, ud);
}

void edp_conn_on_confirm(edp_conn *c, edp_confirm_fn fn, void *ud) {
  if (c) {
    c->on_confirm = fn;
    c->on_confirm_ud = ud;
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
  while (c->n_pend + c->n_lost > max_outstanding) {
    /* Restores a channel the broker closed and publishes its unconfirmed
     * messages again; a lost connection is the caller's to recover. */
    int rc = edp__ready(c);
    if (!rc && c->n_lost)
      rc = edp__republish_lost(c, NULL);
    if (rc)
      return rc;
    /* The restore may have settled them all (messages refused as poison):
     * nothing left to wait for. */
    if (c->n_pend + c->n_lost <= max_outstanding)
      break;
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      left = l > 0 ? (int)l : 0;
    }
    rc = edp__pump(c, -1, left, NULL);
    if (rc == EDP_ETIMEOUT && c->n_pend + c->n_lost <= max_outstanding)
      break;
    if (rc == EDP_ETIMEOUT || rc == EDP_ESTOPPED || rc == EDP_ECLOSED)
      return rc;
    /* Other errors are channel closes: the next pass restores. */
  }
  return 0;
}

int edp__republish_lost(edp_conn *c, size_t *n) {
  if (n)
    *n = 0;
  while (c->lost_head) {
    struct edp__pending *p = c->lost_head;
    c->lost_head = p->next;
    if (!c->lost_head)
      c->lost_tail = NULL;
    c->n_lost--;
    if (!c->confirm) {
      pending_free(p);
      continue;
    }
    int rc = edp__send(c, &p->m, p, NULL);
    if (rc) {
      /* The connection dropped again: keep the message for next time,
       * at the head so the order holds. The failed send moved the pending
       * list behind the lost list already. */
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

int edp_conn_republish_unconfirmed(edp_conn *c, size_t *n) {
  if (n)
    *n = 0;
  int rc = edp__ready(c);
  if (rc)
    return rc;
  size_t k = 0;
  rc = edp__republish_lost(c, &k);
  edp_count_add(&c->republished, k);
  if (n)
    *n = k;
  return rc;
}

size_t edp_conn_take_unconfirmed(edp_conn *c, edp_take_fn fn, void *ud) {
  size_t n = 0;
  if (!c || !fn)
    return 0;
  while (c->lost_head && fn(ud, &c->lost_head->m) == 0) {
    struct edp__pending *p = c->lost_head;
    c->lost_head = p->next;
    if (!c->lost_head)
      c->lost_tail = NULL;
    c->n_lost--;
    pending_free(p);
    n++;
  }
  return n;
}

/* Non-zero once the stop fd is readable. */
static int stop_requested(const edp_conn *c) {
  struct pollfd p = {c->o.stop_fd, POLLIN, 0};
  return c->o.stop_fd >= 0 && poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

int edp_conn_publish_confirmed(edp_conn *c, const edp_msg *m, int timeout_ms) {
  if (!c)
    return EDP_EINVAL;
  if (!c->confirm)
    return EDP_EINVAL;
  /* A stop either comes before the message is written (nothing sent) or is
   * ignored until its confirm: a caller that gave up on a written message
   * would settle the original as if the copy did not exist, and the
   * broker would hold both (issue 12). */
  if (stop_requested(c))
    return EDP_ESTOPPED;
  uint64_t seq = 0;
  int rc = edp_conn_publish(c, m, &seq);
  if (rc)
    return rc;
  c->ignore_stop = 1;
  uint32_t epoch = c->epoch;
  c->sync_seq = seq;
  c->sync_status = -1;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  while (!rc && c->sync_status < 0) {
    if (c->epoch != epoch) {
      /* The channel went and came back: the message was published again
       * under another number. Not knowing its fate is an error to this
       * caller (never a confirm); it may come twice. */
      rc = EDP_ECHANNEL;
      break;
    }
    int left = -1;
    if (deadline >= 0) {
      int64_t l = deadline - edp_now_ms();
      left = l > 0 ? (int)l : 0;
    }
    /* report_confirm() records our message's status when it comes. */
    rc = edp__pump(c, -1, left, NULL);
  }
  c->ignore_stop = 0;
  /* A channel close (a publish to a missing exchange is one) is restored
   * here; its error says why. */
  if (c->chan_closed)
    rc = edp__settle(c, rc ? rc : EDP_ECHANNEL);
  int status = c->sync_status;
  c->sync_seq = 0;
  if (rc)
    return rc;
  return status == EDP_CONFIRM_ACK    ? 0
         : status == EDP_CONFIRM_NACK ? EDP_ENACKED
                                      : EDP_ERETURNED;
}

/* ---------- recovery for publishers ---------- */

int edp_conn_recover(edp_conn *c, edp_recovery *r) {
  if (!c)
    return EDP_EINVAL;
  /* The reconnect publishes the unconfirmed messages again itself, and
   * retries (with backoff) when the new connection drops meanwhile. */
  uint64_t before = c->republished;
  int rc = edp_conn_reconnect(c);
  if (r && !rc)
    r->reconnects++;
  if (r)
    r->republished += c->republished - before;
  return rc;
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

static int publish_window_impl(edp_conn *c, const edp_msg *m, size_t window,
                               int timeout_ms, edp_recovery *r,
                               edp_body_done_fn done, void *ud) {
  for (int i = 0; i < MAX_RECOVERIES; i++) {
    int rc = window
                 ? edp_conn_wait_confirms_recover(c, window - 1, timeout_ms, r)
                 : 0;
    if (!rc)
      rc = publish_impl(c, m, NULL, done, ud);
    if (rc != EDP_ECLOSED)
      return rc;
    if ((rc = edp_conn_recover(c, r)))
      return rc;
  }
  return EDP_ECONNECT;
}

int edp_conn_publish_window(edp_conn *c, const edp_msg *m, size_t window,
                            int timeout_ms, edp_recovery *r) {
  return publish_window_impl(c, m, window, timeout_ms, r, NULL, NULL);
}

int edp_conn_publish_window_lent(edp_conn *c, const edp_msg *m, size_t window,
                                 int timeout_ms, edp_recovery *r,
                                 edp_body_done_fn done, void *ud) {
  if (!done)
    return EDP_EINVAL;
  return publish_window_impl(c, m, window, timeout_ms, r, done, ud);
}
