/*
 * edp_conn.c - one broker connection with one channel over rabbitmq-c 0.11:
 * opening and closing it, the frame pump, and recovery.
 *
 * rabbitmq-c 0.11 gives us frames but no publisher-confirm helper and no
 * reconnection, so this module owns both: it reads every frame itself
 * (pump), routes basic.deliver to the delivery queue, basic.ack/nack/return
 * to the confirm tracker, and channel.close/connection.close to the error
 * path.
 *
 * Recovery is one explicit sequence (restore_session): channel -> qos and
 * confirm mode -> topology -> consumers -> republish, after a new
 * connection or after the broker closed the channel. Nothing in it
 * recurses: a close met inside a call only records that the channel is
 * closed, and the sequence runs at the boundary of the public call
 * (edp__ready before it, edp__settle after it). A step the broker refuses
 * closes the fresh channel again; the step is settled (skipped, dropped and
 * reported, or its queue declared anew) and the sequence goes on from there
 * on the next channel, so it ends after at most one retry per step.
 */

#define _GNU_SOURCE /* getaddrinfo_a */
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "edp_conn_internal.h"
#include "edp_tls.h"
#include "edp_util.h"

/* Channel closes in a row with unconfirmed messages and no ack between
 * them: the messages themselves close the channel (a poison publish), so
 * they are reported nacked instead of being published a fourth time. */
#define POISON_CLOSES 3

/* ---------- small helpers ---------- */

void edp__log(edp_conn *c, int level, const char *fmt, ...) {
  if (!c->o.log)
    return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  c->o.log(c->o.log_ud, level, buf);
}

/* Tells the owner what happened; reason NULL means the broker's last
 * reply text, the usual cause. The code is always the last reply's (0 for
 * UNBLOCKED), also beside a reason given here. */
static void event_full(edp_conn *c, int type, const char *reason,
                       const char *queue, const char *tag,
                       uint64_t republished) {
  if (!c->on_event)
    return;
  int unblocked = type == EDP_CONN_UNBLOCKED;
  edp_conn_event ev = {
      .type = type,
      .reply_code = unblocked ? 0 : c->reply_code,
      .reason = reason      ? reason
                : unblocked ? ""
                            : c->reply_text,
      .queue = queue,
      .tag = tag,
      .republished = republished,
      .url = c->masked,
      .client_name = c->client_name ? c->client_name : "edp",
  };
  c->on_event(c->on_event_ud, &ev);
}

void edp__event(edp_conn *c, int type, const char *queue, const char *tag) {
  event_full(c, type, NULL, queue, tag, 0);
}

const char *edp_conn_event_name(int type) {
  switch (type) {
  case EDP_CONN_LOST:
    return "connection_lost";
  case EDP_CONN_RECONNECTED:
    return "reconnected";
  case EDP_CONN_CHANNEL_RESTORED:
    return "channel_restored";
  case EDP_CONN_CONSUMER_CANCELLED:
    return "consumer_cancelled";
  case EDP_CONN_BLOCKED:
    return "blocked";
  case EDP_CONN_UNBLOCKED:
    return "unblocked";
  default:
    return "unknown";
  }
}

amqp_bytes_t edp__bytes_of(const char *s) {
  return s ? amqp_cstring_bytes(s) : amqp_empty_bytes;
}

char *edp__dup_bytes(amqp_bytes_t b) {
  char *s = malloc(b.len + 1);
  if (s) {
    if (b.len)
      memcpy(s, b.bytes, b.len);
    s[b.len] = '\0';
  }
  return s;
}

int edp__bytes_eq(amqp_bytes_t b, const char *s) {
  s = s ? s : "";
  return b.len == strlen(s) && (b.len == 0 || !memcmp(b.bytes, s, b.len));
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

/* ---------- losing a channel or the connection ---------- */

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
  edp__drop_deliveries(c);
  c->open = 0;
}

void edp__mark_closed(edp_conn *c, const char *why) {
  int was_up = c->st != NULL;
  if (was_up) {
    edp__log(c, EDP_LOG_WARN, "connection to %s lost: %s", c->masked, why);
    edp_count_add(&c->m.lost, 1);
    edp_gauge_set(&c->m.state, EDP_CONN_STATE_DOWN);
  }
  channel_lost(c);
  c->chan_closed = 0;
  edp__blocked_end(c);
  c->blocked = 0;
  if (c->st) {
    amqp_destroy_connection(c->st);
    c->st = NULL;
  }
  if (was_up)
    event_full(c, EDP_CONN_LOST, why, NULL, NULL, 0);
}

int edp__lib_error(edp_conn *c, int status) {
  edp__mark_closed(c, amqp_error_string2(status));
  return EDP_ECLOSED;
}

/* "NOT_FOUND - no exchange 'x' in vhost '/'": a publish to a missing
 * exchange. Those messages can't succeed until someone declares it. */
static int pick_exchange(const edp_msg *m, const void *arg) {
  return !strcmp(m->exchange ? m->exchange : "", (const char *)arg);
}

/* "... message size 5000000 is larger than configured max size 4194304". */
static int pick_bigger(const edp_msg *m, const void *arg) {
  return m->body_len > *(const size_t *)arg;
}

/* Messages that closed the channel would close it again when published
 * once more: report them refused instead, by what the close names. */
static void refuse_poison(edp_conn *c) {
  const char *t = c->reply_text;
  const char *ex = strstr(t, "no exchange '");
  if (c->reply_code == 404 && ex) {
    char name[256];
    ex += strlen("no exchange '");
    const char *end = strchr(ex, '\'');
    if (end && (size_t)(end - ex) < sizeof(name)) {
      memcpy(name, ex, (size_t)(end - ex));
      name[end - ex] = '\0';
      edp__refuse_pending(c, pick_exchange, name);
    }
    return;
  }
  const char *mx = strstr(t, "max size ");
  if (c->reply_code == 406 && mx) {
    size_t max = (size_t)strtoull(mx + strlen("max size "), NULL, 10);
    edp__refuse_pending(c, pick_bigger, &max);
  }
}

/* amqp_read_message(), which leaks the message's pool when the body's
 * malloc fails (rabbitmq-c 0.11 to this day): a broker may announce a
 * body of any size up to 2^64 bytes, and one that does made us leak on
 * every such delivery (found by tests/fuzz/fuzz_broker.c). Emptying the
 * pool after any failure is safe: the other error paths emptied it
 * already, and emptying is idempotent. */
static amqp_rpc_reply_t read_message(edp_conn *c, amqp_channel_t ch,
                                     amqp_message_t *msg) {
  amqp_rpc_reply_t r = amqp_read_message(c->st, ch, msg, 0);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    empty_amqp_pool(&msg->pool);
  return r;
}

/* Frames rabbitmq-c queued for the closing channel while it waited for
 * an RPC reply came before the close: a basic.ack among them is a real
 * confirm (applied now, so the message isn't republished for nothing), a
 * basic.return a real return; deliveries are dropped (the broker requeues
 * them with the channel). Only queued frames are read, never the socket. */
static void drain_closed_channel(edp_conn *c, amqp_channel_t ch) {
  while (c->st && amqp_frames_enqueued(c->st)) {
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    if (amqp_simple_wait_frame_noblock(c->st, &f, &zero) != AMQP_STATUS_OK)
      return;
    if (f.channel != ch || f.frame_type != AMQP_FRAME_METHOD)
      continue;
    void *m = f.payload.method.decoded;
    if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
      amqp_basic_ack_t *a = m;
      edp__handle_ack(c, a->delivery_tag, a->multiple, 0);
    } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
      amqp_basic_nack_t *a = m;
      edp__handle_ack(c, a->delivery_tag, a->multiple, 1);
    } else if (f.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
      amqp_basic_return_t r = *(amqp_basic_return_t *)m;
      amqp_message_t msg;
      amqp_rpc_reply_t rr = read_message(c, ch, &msg);
      if (rr.reply_type != AMQP_RESPONSE_NORMAL)
        return;
      edp__handle_return(c, &r, &msg);
      amqp_destroy_message(&msg);
    }
  }
}

/* A server-initiated channel.close: answer it, settle what the old channel
 * left, and leave the channel closed for edp__ready/edp__settle to restore
 * (never here: this runs inside other calls). Returns the close's error. */
static int on_channel_close(edp_conn *c, amqp_channel_t ch,
                            const amqp_channel_close_t *m) {
  set_reply(c, m->reply_code, m->reply_text);
  edp__log(c, EDP_LOG_WARN, "channel closed by broker: %d %s", c->reply_code,
           c->reply_text);
  int err = code_to_err(c->reply_code, c->reply_text);
  drain_closed_channel(c, ch);
  amqp_channel_close_ok_t ok = {0};
  if (!c->st ||
      amqp_send_method(c->st, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) < 0) {
    edp__mark_closed(c, "send channel.close-ok failed");
    return EDP_ECLOSED;
  }
  int in_flight = c->pend_head || c->lost_head;
  refuse_poison(c);
  c->closes_without_ack = in_flight ? c->closes_without_ack + 1 : 0;
  channel_lost(c);
  c->chan_closed = 1;
  return err;
}

static int on_connection_close(edp_conn *c, const amqp_connection_close_t *m) {
  set_reply(c, m->reply_code, m->reply_text);
  amqp_connection_close_ok_t ok = {0};
  amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
  char why[320];
  snprintf(why, sizeof(why), "closed by broker: %d %s", c->reply_code,
           c->reply_text);
  edp__mark_closed(c, why);
  return EDP_ECLOSED;
}

int edp__rpc_result(edp_conn *c, amqp_rpc_reply_t r) {
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return 0;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
      return on_channel_close(c, c->chan, r.reply.decoded);
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      on_connection_close(c, r.reply.decoded);
      int e = code_to_err(c->reply_code, c->reply_text);
      return e == EDP_ECHANNEL ? EDP_ECLOSED : e;
    }
    return edp__lib_error(c, AMQP_STATUS_UNEXPECTED_STATE);
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    return edp__lib_error(c, r.library_error);
  default:
    return edp__lib_error(c, AMQP_STATUS_UNEXPECTED_STATE);
  }
}

/* ---------- frame pump ---------- */

/* A method where content was due: the broker closed the channel or the
 * connection instead; anything else breaks the protocol. */
static int content_interrupted(edp_conn *c, amqp_method_number_t id,
                               void *decoded) {
  if (id == AMQP_CHANNEL_CLOSE_METHOD)
    return on_channel_close(c, c->chan, decoded);
  if (id == AMQP_CONNECTION_CLOSE_METHOD)
    return on_connection_close(c, decoded);
  return edp__lib_error(c, AMQP_STATUS_UNEXPECTED_STATE);
}

static int read_content(edp_conn *c, amqp_message_t *msg) {
  amqp_rpc_reply_t r = read_message(c, c->chan, msg);
  if (r.reply_type == AMQP_RESPONSE_NORMAL)
    return 0;
  if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
    return content_interrupted(c, r.reply.id, r.reply.decoded);
  return edp__lib_error(c, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                               ? r.library_error
                               : AMQP_STATUS_UNEXPECTED_STATE);
}

static int process_frame(edp_conn *c, const amqp_frame_t *f);

/* The next content frame of our channel, of the given type, within the
 * RPC timeout; frames of other channels (channel 0's blocked or close, an
 * old channel's leftovers) are handled as the pump would. */
static int content_frame(edp_conn *c, uint8_t type, amqp_frame_t *f) {
  int res;
  do {
    struct timeval tv = {c->o.rpc_timeout_ms / 1000,
                         (c->o.rpc_timeout_ms % 1000) * 1000};
    res = amqp_simple_wait_frame_noblock(c->st, f, &tv);
    if (res == AMQP_STATUS_OK && f->channel != c->chan) {
      int rc = process_frame(c, f);
      if (rc)
        return rc;
    }
  } while (res == AMQP_STATUS_OK && f->channel != c->chan);
  if (res != AMQP_STATUS_OK)
    return edp__lib_error(c, res);
  if (f->frame_type == AMQP_FRAME_METHOD)
    return content_interrupted(c, f->payload.method.id,
                               f->payload.method.decoded);
  return f->frame_type == type
             ? 0
             : edp__lib_error(c, AMQP_STATUS_UNEXPECTED_STATE);
}

/* A delivery: the content header says how big the body is before any of
 * it is read, so the body frames are copied straight into the delivery's
 * own block (one copy, and no frame is kept once copied: a 16 MiB body
 * costs 16 MiB and a frame, not twice that). A body over max (the
 * consumer's body limit, 0 = none) is queued empty and flagged, its frames
 * read and dropped one at a time, so that a gigabyte body costs a frame of
 * memory, not a gigabyte. The delivery is queued only once complete. */
static int read_delivery(edp_conn *c, const amqp_basic_deliver_t *dv,
                         size_t max) {
  amqp_frame_t f;
  int rc = content_frame(c, AMQP_FRAME_HEADER, &f);
  if (rc)
    return rc;
  const amqp_basic_properties_t *props = f.payload.properties.decoded;
  uint64_t size = f.payload.properties.body_size, got = 0;
  int over = (max && size > max) || size > SIZE_MAX / 2;
  amqp_bytes_t body = {over ? 0 : (size_t)size, NULL};
  struct edp__dnode *n = edp__new_delivery(c, dv, props, body, over ? size : 0);
  if (!n) {
    /* Without memory we cannot hand the message over: rejecting it with
     * requeue gives it back to the broker instead of losing it. The pump
     * skips its body frames (content frames without a method). */
    amqp_basic_reject(c->st, c->chan, dv->delivery_tag, 1);
    return EDP_ENOMEM;
  }
  char *dst = n->d.body;
  while (got < size) {
    if ((rc = content_frame(c, AMQP_FRAME_BODY, &f)))
      break;
    amqp_bytes_t part = f.payload.body_fragment;
    if (part.len > size - got) {
      rc = edp__lib_error(c, AMQP_STATUS_BAD_AMQP_DATA);
      break;
    }
    if (!over)
      memcpy(dst + got, part.bytes, part.len);
    got += part.len;
    amqp_maybe_release_buffers_on_channel(c->st, c->chan);
  }
  if (rc) {
    edp__free_delivery(n);
    return rc;
  }
  edp__push_delivery(c, n);
  return 0;
}

static void on_blocked(edp_conn *c, int blocked, amqp_bytes_t reason) {
  if (blocked == c->blocked)
    return;
  c->blocked = blocked;
  if (blocked) {
    edp_count_add(&c->m.blocked_count, 1);
    edp_count_set(&c->m.blocked_since_us, (uint64_t)edp_now_us());
    edp_gauge_set(&c->m.state, EDP_CONN_STATE_BLOCKED);
  } else {
    edp__blocked_end(c);
    edp_gauge_set(&c->m.state, EDP_CONN_STATE_UP);
  }
  if (blocked) {
    set_reply(c, 0, reason);
    edp__log(c, EDP_LOG_WARN,
             "broker blocked publishing (resource alarm): %s; publishing "
             "waits",
             c->reply_text);
  } else {
    edp__log(c, EDP_LOG_INFO, "broker unblocked publishing");
  }
  edp__event(c, blocked ? EDP_CONN_BLOCKED : EDP_CONN_UNBLOCKED, NULL, NULL);
}

static int process_frame(edp_conn *c, const amqp_frame_t *f) {
  if (f->frame_type != AMQP_FRAME_METHOD)
    return 0; /* content of a frame we skipped, e.g. an old channel's */
  void *m = f->payload.method.decoded;
  amqp_method_number_t id = f->payload.method.id;
  if (f->channel == 0) {
    switch (id) {
    case AMQP_CONNECTION_CLOSE_METHOD:
      return on_connection_close(c, m);
    case AMQP_CONNECTION_BLOCKED_METHOD:
      on_blocked(c, 1, ((amqp_connection_blocked_t *)m)->reason);
      return 0;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
      on_blocked(c, 0, amqp_empty_bytes);
      return 0;
    default:
      return 0;
    }
  }
  if (f->channel != c->chan || c->chan_closed) {
    /* A frame of a channel closed before: its tags and sequence numbers
     * belong to no live channel. */
    edp__log(c, EDP_LOG_DEBUG, "dropped method 0x%08x of old channel %u",
             (unsigned)id, (unsigned)f->channel);
    return 0;
  }
  switch (id) {
  case AMQP_CHANNEL_CLOSE_METHOD:
    return on_channel_close(c, f->channel, m);
  case AMQP_BASIC_ACK_METHOD: {
    amqp_basic_ack_t *a = m;
    edp__handle_ack(c, a->delivery_tag, a->multiple, 0);
    return 0;
  }
  case AMQP_BASIC_NACK_METHOD: {
    amqp_basic_nack_t *a = m;
    edp__handle_ack(c, a->delivery_tag, a->multiple, 1);
    return 0;
  }
  case AMQP_BASIC_RETURN_METHOD: {
    amqp_basic_return_t r = *(amqp_basic_return_t *)m;
    amqp_message_t msg;
    int rc = read_content(c, &msg);
    if (rc)
      return rc;
    edp__handle_return(c, &r, &msg);
    amqp_destroy_message(&msg);
    return 0;
  }
  case AMQP_BASIC_DELIVER_METHOD: {
    amqp_basic_deliver_t dv = *(amqp_basic_deliver_t *)m;
    return read_delivery(c, &dv, edp__consumer_max_body(c, dv.consumer_tag));
  }
  case AMQP_BASIC_CANCEL_METHOD:
    edp__broker_cancel(c, ((amqp_basic_cancel_t *)m)->consumer_tag);
    return 0;
  default:
    edp__log(c, EDP_LOG_DEBUG, "ignored method 0x%08x", (unsigned)id);
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
int edp__pump(edp_conn *c, int wake_fd, int timeout_ms, int *woke) {
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (;;) {
    if (!c->st)
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
                              {c->ignore_stop ? -1 : c->o.stop_fd, POLLIN, 0},
                              {wake_fd, POLLIN, 0}};
      int n = poll(fds, 3, slice);
      if (n < 0 && errno != EINTR)
        return edp__lib_error(c, AMQP_STATUS_SOCKET_ERROR);
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
      return edp__lib_error(c, res);
    if (deadline >= 0 && edp_now_ms() >= deadline)
      return EDP_ETIMEOUT;
  }
}

/* ---------- the recovery sequence ---------- */

/* Opens the next channel number and sets qos and confirm mode on it. */
static int open_channel(edp_conn *c) {
  amqp_channel_t ch = (amqp_channel_t)(c->chan % EDP__CHANNELS + 1);
  int chmax = amqp_get_channel_max(c->st);
  if (chmax > 0 && ch > chmax)
    ch = 1;
  c->chan = ch;
  c->chan_closed = 0;
  amqp_channel_open(c->st, ch);
  int rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st));
  if (rc)
    return rc;
  c->epoch++;
  c->open = 1;
  c->next_seq = 1;
  if (c->prefetch >= 0) {
    amqp_basic_qos(c->st, ch, 0, (uint16_t)c->prefetch, 0);
    if ((rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st))))
      return rc;
  }
  if (c->confirm) {
    amqp_confirm_select(c->st, ch);
    if ((rc = edp__rpc_result(c, amqp_get_rpc_reply(c->st))))
      return rc;
  }
  return 0;
}

/* Restores the session on the live connection: channel, qos and confirm
 * mode, topology, consumers, then the unconfirmed messages. Each pass
 * either finishes or settles one step the broker refused (the step's
 * code closed the channel), so passes are bounded by the recorded steps.
 * Returns 0 or EDP_ECLOSED (the connection is gone then). */
static int restore_session(edp_conn *c, int fresh_connection) {
  size_t topo_next = 0;
  size_t passes = 0, max_passes = 2 * c->n_ops + c->n_cons + 3;
  for (;;) {
    if (!c->st)
      return EDP_ECLOSED;
    if (passes++ > max_passes) {
      edp__mark_closed(c, "channel could not be restored");
      return EDP_ECLOSED;
    }
    int rc = open_channel(c);
    if (rc && c->st) {
      /* Refusing a bare channel, qos or confirm mode leaves nothing to
       * settle: the connection is of no use. */
      edp__mark_closed(c, "channel could not be opened");
      return EDP_ECLOSED;
    }
    if (!rc)
      rc = edp__restore_topology(c, &topo_next, fresh_connection);
    if (!rc)
      rc = edp__restore_consumers(c);
    if (rc == EDP_ENOMEM && c->st) {
      edp__mark_closed(c, "out of memory restoring the channel");
      return EDP_ECLOSED;
    }
    if (!rc)
      break;
  }
  if (c->closes_without_ack >= POISON_CLOSES && c->lost_head) {
    edp__log(c, EDP_LOG_ERROR,
             "%zu unconfirmed messages closed the channel %d times in a "
             "row: reported nacked, not published again",
             c->n_lost, c->closes_without_ack);
    edp__refuse_pending(c, NULL, NULL);
    c->closes_without_ack = 0;
  }
  size_t n = 0;
  int rc = edp__republish_lost(c, &n);
  edp_count_add(&c->republished, n);
  return rc;
}

/* Restores a channel the broker closed, on the live connection. */
static int restore_channel(edp_conn *c) {
  uint64_t before = c->republished;
  int rc = restore_session(c, 0);
  if (rc)
    return rc;
  edp_count_add(&c->m.channel_restores, 1);
  edp__log(c, EDP_LOG_INFO, "channel restored (epoch %u, %llu republished)",
           (unsigned)c->epoch, (unsigned long long)(c->republished - before));
  event_full(c, EDP_CONN_CHANNEL_RESTORED, NULL, NULL, NULL,
             c->republished - before);
  return 0;
}

int edp__ready(edp_conn *c) {
  if (!c)
    return EDP_EINVAL;
  if (c->st && c->chan_closed) {
    int rc = restore_channel(c);
    if (rc)
      return rc;
  }
  return c->open ? 0 : EDP_ECLOSED;
}

int edp__settle(edp_conn *c, int rc) {
  if (c->st && c->chan_closed) {
    int r = restore_channel(c);
    if (r)
      return r;
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
  o->read_ahead_bytes = (size_t)4 << 20;
  o->stop_fd = -1;
  o->blocked_timeout_ms = -1;
}

/* ---------- name lookup within the connect timeout ---------- */

/* rabbitmq-c resolves the host with a plain getaddrinfo, which waits as
 * long as the resolver's own timeouts say: 5 s per server and try, 20 s
 * with two servers and two tries, however short connect_timeout_ms is.
 * Under podman a broker container that goes away can leave its name's
 * lookups unanswered for that long, and the multi-broker producer, which
 * retries a lost broker on its only thread, stopped sending to the live
 * ones for 20 s and more. So the lookup runs first in glibc's
 * getaddrinfo_a thread, waited for at most the connect timeout; rabbitmq-c
 * then finds the answer quickly (or fails by itself as before). A lookup
 * given up on goes on in that thread: its request is freed by whichever
 * of the two lets go of it last. */
struct lookup {
  struct gaicb cb;
  struct addrinfo hints;
  atomic_int refs;
  char host[];
};

static void lookup_release(struct lookup *l) {
  if (atomic_fetch_sub(&l->refs, 1) == 1) {
    if (l->cb.ar_result)
      freeaddrinfo(l->cb.ar_result);
    free(l);
  }
}

static void lookup_done(union sigval v) { lookup_release(v.sival_ptr); }

/* EDP_ETIMEOUT when host (not a numeric address) found no answer, not
 * even a failure, within ms; else 0. */
static int lookup_within(const char *host, int ms) {
  unsigned char addr[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, host, addr) == 1 ||
      inet_pton(AF_INET6, host, addr) == 1)
    return 0;
  size_t n = strlen(host);
  struct lookup *l = calloc(1, sizeof(*l) + n + 1);
  if (!l)
    return 0; /* rabbitmq-c looks it up the usual way */
  memcpy(l->host, host, n + 1);
  l->hints.ai_family = AF_UNSPEC;
  l->hints.ai_socktype = SOCK_STREAM;
  l->cb.ar_name = l->host;
  l->cb.ar_request = &l->hints;
  atomic_init(&l->refs, 2);
  struct sigevent done;
  memset(&done, 0, sizeof(done));
  done.sigev_notify = SIGEV_THREAD;
  done.sigev_notify_function = lookup_done;
  done.sigev_value.sival_ptr = l;
  struct gaicb *list[1] = {&l->cb};
  if (getaddrinfo_a(GAI_NOWAIT, list, 1, &done)) {
    free(l); /* never queued: no callback will come */
    return 0;
  }
  int64_t deadline = edp_now_ms() + ms;
  int state;
  while ((state = gai_error(&l->cb)) == EAI_INPROGRESS) {
    int64_t left = deadline - edp_now_ms();
    if (left <= 0)
      break;
    struct timespec ts = {(time_t)(left / 1000),
                          (long)(left % 1000) * 1000000L};
    gai_suspend((const struct gaicb *const *)list, 1, &ts);
  }
  lookup_release(l);
  return state == EAI_INPROGRESS ? EDP_ETIMEOUT : 0;
}

/* One attempt: name lookup (lookup_within), TCP connect and login, no
 * channel. Fills err_text. */
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
  amqp_socket_t *sock = NULL;
  if (c->url.tls) {
    int rc = edp__tls_socket(c, &sock, err_text, err_len);
    if (rc) {
      amqp_destroy_connection(c->st);
      c->st = NULL;
      return rc;
    }
  } else if (!(sock = amqp_tcp_socket_new(c->st))) {
    amqp_destroy_connection(c->st);
    c->st = NULL;
    snprintf(err_text, err_len, "out of memory");
    return EDP_ENOMEM;
  }
  int cto = c->url.connect_timeout_ms >= 0 ? c->url.connect_timeout_ms
                                           : c->o.connect_timeout_ms;
  if (lookup_within(c->url.host, cto)) {
    snprintf(err_text, err_len,
             "cannot connect to %s: the name lookup of %s got no answer "
             "within %d ms",
             c->masked, c->url.host, cto);
    amqp_destroy_connection(c->st);
    c->st = NULL;
    return EDP_ECONNECT;
  }
  struct timeval tv = {cto / 1000, (cto % 1000) * 1000};
  int res = amqp_socket_open_noblock(sock, c->url.host, c->url.port, &tv);
  if (res != AMQP_STATUS_OK && c->url.tls) {
    int rc = edp__tls_explain(c, res, 0, err_text, err_len);
    if (rc) {
      amqp_destroy_connection(c->st);
      c->st = NULL;
      return rc;
    }
  }
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

  /* connection.blocked: without it the broker never tells us it stopped
   * reading, and a publish would hang in a write. */
  amqp_table_entry_t caps[2] = {{amqp_cstring_bytes("consumer_cancel_notify"),
                                 {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
                                {amqp_cstring_bytes("connection.blocked"),
                                 {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}}};
  amqp_table_entry_t props[2] = {
      {amqp_cstring_bytes("capabilities"),
       {AMQP_FIELD_KIND_TABLE, {.table = {2, caps}}}},
      {amqp_cstring_bytes("connection_name"),
       {AMQP_FIELD_KIND_UTF8,
        {.bytes =
             amqp_cstring_bytes(c->client_name ? c->client_name : "edp")}}}};
  amqp_table_t ptable = {2, props};
  int hb = c->url.heartbeat_s >= 0 ? c->url.heartbeat_s : c->o.heartbeat_s;
  c->url.heartbeat_s = hb;
  int fm = c->url.frame_max >= 0 ? c->url.frame_max : c->o.frame_max;
  int cm = c->url.channel_max >= 0 ? c->url.channel_max : 0;
  /* EXTERNAL: the broker takes the user name from our certificate
   * (ssl_cert_login_from); see edp_tls.c for the identity we send. */
  amqp_rpc_reply_t r =
      c->url.auth_mechanism == EDP_AUTH_EXTERNAL
          ? amqp_login_with_properties(c->st, c->url.vhost, cm, fm, hb, &ptable,
                                       AMQP_SASL_METHOD_EXTERNAL,
                                       c->tls_identity)
          : amqp_login_with_properties(c->st, c->url.vhost, cm, fm, hb, &ptable,
                                       AMQP_SASL_METHOD_PLAIN, c->url.user,
                                       c->url.pass);
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
    /* Under TLS 1.3 the broker judges our certificate after our side of
     * the handshake finished: its refusal arrives here, in the login. */
    if (c->url.tls)
      rc = edp__tls_explain(c, st, 1, err_text, err_len);
    if (!rc && st == AMQP_STATUS_BROKER_UNSUPPORTED_SASL_METHOD) {
      snprintf(err_text, err_len,
               "login to %s failed: the broker does not offer the %s "
               "mechanism",
               c->masked,
               c->url.auth_mechanism == EDP_AUTH_EXTERNAL ? "EXTERNAL"
                                                          : "PLAIN");
      rc = EDP_EAUTH;
    } else if (!rc) {
      /* A TLS listener drops a client that speaks AMQP in plain. */
      int closed = !c->url.tls && (st == AMQP_STATUS_SOCKET_ERROR ||
                                   st == AMQP_STATUS_CONNECTION_CLOSED);
      snprintf(err_text, err_len, "login to %s failed: %s%s", c->masked,
               amqp_error_string2(st),
               closed ? " (the broker hung up before the AMQP handshake; a "
                        "TLS port wants amqps://)"
                      : "");
      rc = EDP_ECONNECT;
    }
  }
  if (rc) {
    amqp_destroy_connection(c->st);
    c->st = NULL;
    return rc;
  }
  c->chan = 0; /* a new connection numbers its channels from 1 */
  c->blocked = 0;
  c->sndbuf = 0; /* a new socket: its buffer is read at the first look */
  return 0;
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
  c->client_name = edp__dupstr(o->client_name);
  c->o.url = c->url_raw;
  c->o.client_name = c->client_name;
  c->prefetch = -1;
  init_amqp_pool(&c->hdr_pool, 4096);
  c->on_event = o->on_event;
  c->on_event_ud = o->on_event_ud;
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
  if (!rc && (rc = open_channel(c)) && err_text && err_len)
    snprintf(err_text, err_len, "%s: channel open failed: %s", c->masked,
             edp_strerror(rc));
  if (rc) {
    edp_conn_destroy(&c);
    return rc;
  }
  edp__log(c, EDP_LOG_INFO, "connected to %s", c->masked);
  *out = c;
  return 0;
}

/* Non-zero if the socket takes a write now: a close handshake must not
 * hang on a broker that stopped reading (blocked, stalled network). */
static int socket_writable(edp_conn *c) {
  struct pollfd p = {amqp_get_sockfd(c->st), POLLOUT, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) &&
         !(p.revents & (POLLERR | POLLHUP));
}

void edp_conn_destroy(edp_conn **cp) {
  if (!cp || !*cp)
    return;
  edp_conn *c = *cp;
  if (c->st && !c->blocked && socket_writable(c)) {
    /* Graceful, but bounded: a broker that does not answer within 2 s
     * gets the TCP close instead (it requeues our unacked deliveries
     * either way). */
    int ms = c->o.rpc_timeout_ms < 2000 ? c->o.rpc_timeout_ms : 2000;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    amqp_set_rpc_timeout(c->st, &tv);
    if (c->open)
      amqp_channel_close(c->st, c->chan, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
  }
  if (c->st)
    amqp_destroy_connection(c->st);
  edp__drop_deliveries(c);
  edp__free_pending_list(c->pend_head);
  edp__free_pending_list(c->lost_head);
  edp__free_topology(c);
  edp__free_consumers(c);
  empty_amqp_pool(&c->hdr_pool);
  free(c->url_raw);
  free(c->client_name);
  free(c);
  *cp = NULL;
}

void edp_conn_abandon(edp_conn *c) {
  if (c && c->st)
    edp__mark_closed(c, "abandoned");
}

int edp_conn_reply_code(const edp_conn *c) { return c ? c->reply_code : 0; }
const char *edp_conn_reply_text(const edp_conn *c) {
  return c ? c->reply_text : "";
}
const char *edp_conn_url(const edp_conn *c) { return c ? c->masked : ""; }
const char *edp_conn_user(const edp_conn *c) {
  if (!c)
    return "";
  return c->url.auth_mechanism == EDP_AUTH_EXTERNAL ? c->tls_identity
                                                    : c->url.user;
}
int edp_conn_is_open(const edp_conn *c) {
  return c && c->st && (c->open || c->chan_closed);
}
uint32_t edp_conn_epoch(const edp_conn *c) { return c ? c->epoch : 0; }
int edp_conn_fd(const edp_conn *c) {
  return c && c->st ? amqp_get_sockfd(c->st) : -1;
}
int edp_conn_is_blocked(const edp_conn *c) { return c && c->blocked; }

void edp_conn_on_event(edp_conn *c, edp_conn_event_fn fn, void *ud) {
  if (c) {
    c->on_event = fn;
    c->on_event_ud = ud;
  }
}

void edp_conn_on_queue_renamed(edp_conn *c, edp_rename_fn fn, void *ud) {
  if (c) {
    c->on_rename = fn;
    c->on_rename_ud = ud;
  }
}

/* ---------- reconnection ---------- */

int edp_conn_reconnect(edp_conn *c) {
  if (!c)
    return EDP_EINVAL;
  if (c->st)
    edp__mark_closed(c, "reconnecting");
  int64_t start = edp_now_ms();
  int delay = c->o.backoff_initial_ms > 0 ? c->o.backoff_initial_ms : 1;
  for (int attempt = 1;; attempt++) {
    char why[600] = "";
    uint64_t before = c->republished;
    int rc = connect_once(c, why, sizeof(why));
    if (!rc) {
      rc = restore_session(c, 1);
      if (!rc) {
        uint64_t n = c->republished - before;
        edp_count_add(&c->m.reconnects, 1);
        edp_gauge_set(&c->m.state,
                      c->blocked ? EDP_CONN_STATE_BLOCKED : EDP_CONN_STATE_UP);
        edp__log(c, EDP_LOG_INFO,
                 "reconnected to %s (attempt %d, %llu unconfirmed published "
                 "again)",
                 c->masked, attempt, (unsigned long long)n);
        /* The reply code and text stay those of the loss: its cause. */
        event_full(c, EDP_CONN_RECONNECTED, "reconnected", NULL, NULL, n);
        if (c->o.on_reconnect)
          c->o.on_reconnect(c->o.on_reconnect_ud, c);
        return 0;
      }
      snprintf(why, sizeof(why), "restoring the session: %s (%d %s)",
               edp_strerror(rc), c->reply_code, c->reply_text);
      if (c->st)
        edp__mark_closed(c, why);
    }
    /* A refused certificate or password stays refused: give up at once. */
    if (rc == EDP_EAUTH || rc == EDP_EACCESS || rc == EDP_ETLS ||
        rc == EDP_ENOMEM)
      return rc;
    /* Full jitter over the upper half keeps many clients from coming back
     * in lockstep after a broker restart. */
    int wait =
        delay / 2 + (int)(rand_r(&c->rand_state) % (unsigned)(delay / 2 + 1));
    if (edp_now_ms() - start + wait > c->o.reconnect_max_ms) {
      edp__log(c, EDP_LOG_ERROR,
               "giving up reconnecting to %s after %d attempts: %s", c->masked,
               attempt, why);
      return rc == EDP_ECLOSED ? EDP_ECONNECT : rc;
    }
    edp__log(c, EDP_LOG_WARN,
             "reconnect attempt %d failed: %s; retrying in %d ms", attempt, why,
             wait);
    if (edp_sleep_ms(wait, c->o.stop_fd))
      return EDP_ESTOPPED;
    delay = delay > c->o.backoff_max_ms / 2 ? c->o.backoff_max_ms : delay * 2;
  }
}
