/*
 * rawc-baseline - the floor edp's forwarding programs are measured
 * against: plain rabbitmq-c 0.11 doing the same work and nothing else
 * (no libedp, no recovery, no copies kept for republishing).
 *
 *   rawc-baseline publish URL QUEUE COUNT SIZE WINDOW
 *   rawc-baseline consume URL QUEUE COUNT PREFETCH
 *
 * QUEUE must exist (the benchmark declares it as edp_fwd_declare() does).
 * publish: sends COUNT persistent messages of
 * SIZE bytes with publisher confirms, at most WINDOW unconfirmed at a time
 * (a sliding window, as a rabbitmq-c user who cares would write it: when
 * the window is full it reads one frame and goes on as soon as a confirm
 * frees a slot). Each message carries what edp-forward-sender puts on the
 * wire: delivery_mode 2, a message_id, content_type text/plain, a
 * timestamp, the mandatory flag; so both send the same bytes.
 * consume: basic.qos PREFETCH, one consumer, an ack per message after it
 * was read, until COUNT messages came.
 *
 * URL is amqp:// or amqps:// (with cacertfile, certfile and keyfile query
 * parameters, as tests/broker.sh writes them). Exit 0, or 1 with a line on
 * stderr. Built against librabbitmq only (Makefile: build/bench/).
 */
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what, int status) {
  fprintf(stderr, "rawc-baseline: %s: %s\n", what, amqp_error_string2(status));
  exit(1);
}

static void check_rpc(amqp_connection_state_t c, const char *what) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    die(what, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                  ? r.library_error
                  : AMQP_STATUS_UNEXPECTED_STATE);
}

/* The value of query parameter name in q ("a=1&b=2"), copied to out. */
static const char *query_param(const char *q, const char *name, char *out,
                               size_t len) {
  size_t n = strlen(name);
  for (const char *p = q; p && *p;
       p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
    if (!strncmp(p, name, n) && p[n] == '=') {
      size_t v = strcspn(p + n + 1, "&");
      snprintf(out, len, "%.*s", (int)v, p + n + 1);
      return out;
    }
  return NULL;
}

static amqp_connection_state_t connect_url(const char *url) {
  char buf[2048], ca[1024], cert[1024], key[1024];
  snprintf(buf, sizeof(buf), "%s", url);
  char *q = strchr(buf, '?');
  if (q)
    *q++ = '\0';
  struct amqp_connection_info ci;
  amqp_default_connection_info(&ci);
  int rc = amqp_parse_url(buf, &ci);
  if (rc)
    die("bad URL", rc);
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s;
  if (ci.ssl) {
    s = amqp_ssl_socket_new(c);
    if (!s)
      die("TLS socket", AMQP_STATUS_NO_MEMORY);
    if (q && query_param(q, "cacertfile", ca, sizeof(ca)) &&
        (rc = amqp_ssl_socket_set_cacert(s, ca)))
      die("cacertfile", rc);
    if (q && query_param(q, "certfile", cert, sizeof(cert)) &&
        query_param(q, "keyfile", key, sizeof(key)) &&
        (rc = amqp_ssl_socket_set_key(s, cert, key)))
      die("certfile/keyfile", rc);
  } else {
    s = amqp_tcp_socket_new(c);
    if (!s)
      die("socket", AMQP_STATUS_NO_MEMORY);
  }
  if ((rc = amqp_socket_open(s, ci.host, ci.port)))
    die("connect", rc);
  amqp_rpc_reply_t r =
      amqp_login(c, ci.vhost && ci.vhost[0] ? ci.vhost : "/", 0, 131072, 10,
                 AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    die("login", AMQP_STATUS_UNEXPECTED_STATE);
  amqp_channel_open(c, 1);
  check_rpc(c, "channel.open");
  return c;
}

/* Confirm bookkeeping for a sliding window: settled[s % window] marks
 * sequence number s confirmed; low is the oldest one not yet settled. */
typedef struct window {
  unsigned char *settled;
  uint64_t size, low, next;
} window;

static void settle(window *w, uint64_t tag, int multiple) {
  if (tag >= w->next || tag < w->low)
    return;
  for (uint64_t s = multiple ? w->low : tag; s <= tag; s++)
    w->settled[s % w->size] = 1;
  while (w->low < w->next && w->settled[w->low % w->size])
    w->settled[w->low++ % w->size] = 0;
}

/* Reads one frame and settles the confirm it carries. */
static void read_confirm(amqp_connection_state_t c, window *w) {
  amqp_frame_t f;
  int rc = amqp_simple_wait_frame(c, &f);
  if (rc)
    die("reading confirms", rc);
  if (f.frame_type != AMQP_FRAME_METHOD)
    return;
  switch (f.payload.method.id) {
  case AMQP_BASIC_ACK_METHOD: {
    amqp_basic_ack_t *a = f.payload.method.decoded;
    settle(w, a->delivery_tag, a->multiple);
    break;
  }
  case AMQP_BASIC_NACK_METHOD: {
    amqp_basic_nack_t *a = f.payload.method.decoded;
    fprintf(stderr, "rawc-baseline: message %llu nacked\n",
            (unsigned long long)a->delivery_tag);
    settle(w, a->delivery_tag, a->multiple);
    break;
  }
  case AMQP_BASIC_RETURN_METHOD: {
    amqp_message_t m;
    if (amqp_read_message(c, f.channel, &m, 0).reply_type ==
        AMQP_RESPONSE_NORMAL)
      amqp_destroy_message(&m);
    break;
  }
  case AMQP_CHANNEL_CLOSE_METHOD:
  case AMQP_CONNECTION_CLOSE_METHOD:
    die("closed by the broker", AMQP_STATUS_CONNECTION_CLOSED);
  }
  amqp_maybe_release_buffers(c);
}

static void publish(const char *url, const char *queue, long count, size_t size,
                    long win) {
  amqp_connection_state_t c = connect_url(url);
  amqp_confirm_select(c, 1);
  check_rpc(c, "confirm.select");
  char *body = malloc(size ? size : 1);
  if (!body)
    die("body", AMQP_STATUS_NO_MEMORY);
  memset(body, 'x', size);
  window w = {calloc((size_t)win, 1), (uint64_t)win, 1, 1};
  if (!w.settled)
    die("window", AMQP_STATUS_NO_MEMORY);
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof(p));
  p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
             AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
  p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
  p.content_type = amqp_cstring_bytes("text/plain");
  char id[64];
  for (long i = 1; i <= count; i++) {
    while (w.next - w.low >= w.size)
      read_confirm(c, &w);
    snprintf(id, sizeof(id), "raw-%ld", i);
    p.message_id = amqp_cstring_bytes(id);
    p.timestamp = (uint64_t)time(NULL);
    int rc =
        amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 1,
                           0, &p, (amqp_bytes_t){size, body});
    if (rc)
      die("publish", rc);
    w.next++;
  }
  while (w.low < w.next)
    read_confirm(c, &w);
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  free(w.settled);
  free(body);
}

static void consume(const char *url, const char *queue, long count,
                    int prefetch) {
  amqp_connection_state_t c = connect_url(url);
  amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
  check_rpc(c, "basic.qos");
  amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                     amqp_empty_table);
  check_rpc(c, "basic.consume");
  for (long i = 0; i < count; i++) {
    amqp_envelope_t e;
    amqp_maybe_release_buffers(c);
    amqp_rpc_reply_t r = amqp_consume_message(c, &e, NULL, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
      die("consume", r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                         ? r.library_error
                         : AMQP_STATUS_UNEXPECTED_STATE);
    int rc = amqp_basic_ack(c, 1, e.delivery_tag, 0);
    amqp_destroy_envelope(&e);
    if (rc)
      die("ack", rc);
  }
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
}

int main(int argc, char **argv) {
  if (argc == 7 && !strcmp(argv[1], "publish")) {
    publish(argv[2], argv[3], atol(argv[4]), (size_t)atol(argv[5]),
            atol(argv[6]) > 0 ? atol(argv[6]) : 1);
    return 0;
  }
  if (argc == 6 && !strcmp(argv[1], "consume")) {
    consume(argv[2], argv[3], atol(argv[4]), atoi(argv[5]));
    return 0;
  }
  fprintf(stderr, "usage: rawc-baseline publish URL QUEUE COUNT SIZE WINDOW\n"
                  "       rawc-baseline consume URL QUEUE COUNT PREFETCH\n");
  return 64;
}
