/*
 * integ_faultproxy.c - the fault proxy between plain rabbitmq-c and a real
 * broker: AMQP works through it, and each fault ends the client's next
 * call with an error within a bound instead of a hang: a reset fails at
 * once, a stall runs into the RPC timeout, and a cut mid-frame (in the
 * handshake, in a publish) fails on EOF and loses the truncated message.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "edp_url.h"
#include "edp_util.h"
#include "faultproxy.h"
#include "testlib.h"

/* The RPC and handshake bound for these tests: a fault that is noticed
 * (EOF, reset) must fail well before it. */
#define RPC_TIMEOUT_S 5

static edp_url broker(void) {
  edp_url u;
  char why[256];
  ck_assert_msg(edp_url_parse(t_url(), &u, why, sizeof(why)) == 0,
                "broker URL: %s", why);
  return u;
}

static const char *why(amqp_rpc_reply_t r) {
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return "ok";
  case AMQP_RESPONSE_NONE:
    return "no reply";
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    return amqp_error_string2(r.library_error);
  default:
    return "server exception";
  }
}

static void set_timeouts(amqp_connection_state_t c, int seconds) {
  struct timeval tv = {seconds, 0};
  ck_assert_int_eq(amqp_set_handshake_timeout(c, &tv), AMQP_STATUS_OK);
  ck_assert_int_eq(amqp_set_rpc_timeout(c, &tv), AMQP_STATUS_OK);
}

/* A new connection state whose socket is connected to the proxy (TCP
 * only: no AMQP handshake yet). */
static amqp_connection_state_t connect_via(fp_proxy *p) {
  amqp_connection_state_t c = amqp_new_connection();
  ck_assert_ptr_nonnull(c);
  amqp_socket_t *s = amqp_tcp_socket_new(c);
  ck_assert_ptr_nonnull(s);
  struct timeval tv = {RPC_TIMEOUT_S, 0};
  ck_assert_int_eq(amqp_socket_open_noblock(s, "127.0.0.1", fp_port(p), &tv),
                   AMQP_STATUS_OK);
  set_timeouts(c, RPC_TIMEOUT_S);
  return c;
}

static amqp_rpc_reply_t login(amqp_connection_state_t c, const edp_url *u) {
  return amqp_login(c, u->vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, u->user,
                    u->pass);
}

/* A logged-in connection through the proxy with channel 1 open. */
static amqp_connection_state_t open_via(fp_proxy *p, const edp_url *u) {
  amqp_connection_state_t c = connect_via(p);
  amqp_rpc_reply_t r = login(c, u);
  ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "login: %s", why(r));
  ck_assert_ptr_nonnull(amqp_channel_open(c, 1));
  r = amqp_get_rpc_reply(c);
  ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "channel: %s", why(r));
  return c;
}

static amqp_queue_declare_ok_t *
declare(amqp_connection_state_t c, const char *q, int passive, int exclusive) {
  return amqp_queue_declare(c, 1, amqp_cstring_bytes(q), passive, 0, exclusive,
                            0, amqp_empty_table);
}

static void publish(amqp_connection_state_t c, const char *q,
                    const char *text) {
  ck_assert_int_eq(amqp_basic_publish(c, 1, amqp_empty_bytes,
                                      amqp_cstring_bytes(q), 0, 0, NULL,
                                      amqp_cstring_bytes(text)),
                   AMQP_STATUS_OK);
}

/* Consumes from q and asserts that the first message is text: the round
 * trip through the proxy to the broker and back. */
static void expect_first(amqp_connection_state_t c, const char *q,
                         const char *text) {
  ck_assert_ptr_nonnull(amqp_basic_consume(c, 1, amqp_cstring_bytes(q),
                                           amqp_empty_bytes, 0, 1, 0,
                                           amqp_empty_table));
  amqp_envelope_t env;
  struct timeval tv = {RPC_TIMEOUT_S, 0};
  amqp_maybe_release_buffers(c);
  amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
  ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "consume: %s", why(r));
  ck_assert_uint_eq(env.message.body.len, strlen(text));
  ck_assert(memcmp(env.message.body.bytes, text, strlen(text)) == 0);
  amqp_destroy_envelope(&env);
}

/* Asserts that a failed call failed on the fault (EOF, reset), not by
 * running into the RPC timeout. */
static void assert_failed_fast(amqp_connection_state_t c, const void *res,
                               int64_t t0_us, const char *what) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  int64_t took_ms = (edp_now_us() - t0_us) / 1000;
  ck_assert_msg(res == NULL, "%s succeeded through a broken path", what);
  ck_assert_msg(r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION,
                "%s: reply type %d (%s)", what, (int)r.reply_type, why(r));
  ck_assert_msg(r.library_error != AMQP_STATUS_TIMEOUT,
                "%s only timed out (%lld ms)", what, (long long)took_ms);
  ck_assert_msg(took_ms < RPC_TIMEOUT_S * 1000 - 1000,
                "%s took %lld ms to fail", what, (long long)took_ms);
}

START_TEST(reset_fails_next_call) {
  edp_url u = broker();
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start(u.host, u.port, &p), 0);
  amqp_connection_state_t c = open_via(p, &u);
  const char *q = t_unique("fp.reset");
  ck_assert_ptr_nonnull(declare(c, q, 0, 1));
  publish(c, q, "through the proxy");
  expect_first(c, q, "through the proxy");
  ck_assert_uint_eq(fp_connections(p), 1);
  ck_assert_uint_eq(fp_active(p), 1);
  ck_assert_uint_gt(fp_bytes(p, FP_C2S), 0);
  ck_assert_uint_gt(fp_bytes(p, FP_S2C), 0);

  ck_assert_int_eq(fp_reset(p), 0);
  int64_t t0 = edp_now_us();
  amqp_queue_declare_ok_t *ok = declare(c, q, 1, 0);
  assert_failed_fast(c, ok, t0, "queue.declare after a reset");
  amqp_destroy_connection(c);
  fp_stop(&p);
}
END_TEST

START_TEST(stall_runs_into_rpc_timeout) {
  edp_url u = broker();
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start(u.host, u.port, &p), 0);
  amqp_connection_state_t c = open_via(p, &u);
  const char *q = t_unique("fp.stall");
  ck_assert_ptr_nonnull(declare(c, q, 0, 1));

  /* A half-open path gives no error at all: only the timeout ends the
   * wait, and it must. */
  ck_assert_int_eq(fp_stall(p), 0);
  set_timeouts(c, 1);
  int64_t t0 = edp_now_us();
  amqp_queue_declare_ok_t *ok = declare(c, q, 1, 0);
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  int64_t took_ms = (edp_now_us() - t0) / 1000;
  ck_assert_ptr_null(ok);
  ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_LIBRARY_EXCEPTION);
  ck_assert_msg(r.library_error == AMQP_STATUS_TIMEOUT, "got %s", why(r));
  /* rabbitmq-c rounds its deadline to whole milliseconds. */
  ck_assert_int_ge(took_ms, 990);
  ck_assert_int_lt(took_ms, 5000);
  ck_assert_uint_eq(fp_active(p), 1); /* stalled, not closed */
  ck_assert_int_eq(fp_pass(p), 0);
  amqp_destroy_connection(c);
  fp_stop(&p);
}
END_TEST

START_TEST(cut_mid_handshake) {
  edp_url u = broker();
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start(u.host, u.port, &p), 0);
  /* connection.start alone is several hundred bytes: 30 end mid-frame. */
  ck_assert_int_eq(fp_cut_after(p, 30, FP_S2C), 0);
  amqp_connection_state_t c = connect_via(p);
  int64_t t0 = edp_now_us();
  amqp_rpc_reply_t r = login(c, &u);
  int64_t took_ms = (edp_now_us() - t0) / 1000;
  ck_assert_msg(r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION,
                "login through a cut path: %s", why(r));
  ck_assert_msg(r.library_error != AMQP_STATUS_TIMEOUT, "login timed out");
  ck_assert_int_lt(took_ms, RPC_TIMEOUT_S * 1000 - 1000);
  ck_assert_uint_eq(fp_bytes(p, FP_S2C), 30);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  amqp_destroy_connection(c);

  /* The proxy forwards again once the mode is lifted. */
  ck_assert_int_eq(fp_pass(p), 0);
  c = open_via(p, &u);
  ck_assert_ptr_nonnull(declare(c, t_unique("fp.after-cut"), 0, 1));
  ck_assert_uint_eq(fp_connections(p), 2);
  amqp_destroy_connection(c);
  fp_stop(&p);
}
END_TEST

START_TEST(cut_mid_publish_loses_the_message) {
  edp_url u = broker();
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start(u.host, u.port, &p), 0);
  amqp_connection_state_t c = open_via(p, &u);
  const char *q = t_unique("fp.cut");
  ck_assert_ptr_nonnull(declare(c, q, 0, 0)); /* outlives the connection */

  uint64_t before = fp_bytes(p, FP_C2S);
  ck_assert_int_eq(fp_cut_after(p, 100, FP_C2S), 0);
  static char body[4096];
  memset(body, 'b', sizeof(body));
  amqp_bytes_t b = {sizeof(body), body};
  /* The frames fit the socket buffer, so the publish itself may still
   * report success; the broker gets 100 bytes of them. */
  (void)amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0,
                           NULL, b);
  int64_t t0 = edp_now_us();
  amqp_queue_declare_ok_t *ok = declare(c, q, 1, 0);
  assert_failed_fast(c, ok, t0, "queue.declare after a cut");
  ck_assert_uint_eq(fp_bytes(p, FP_C2S) - before, 100);
  amqp_destroy_connection(c);

  /* A truncated message never reaches the queue: the first one there is
   * the one published after it. */
  ck_assert_int_eq(fp_pass(p), 0);
  c = open_via(p, &u);
  publish(c, q, "after the cut");
  expect_first(c, q, "after the cut");
  ck_assert_ptr_nonnull(amqp_queue_delete(c, 1, amqp_cstring_bytes(q), 0, 0));
  amqp_destroy_connection(c);
  fp_stop(&p);
}
END_TEST

int main(void) {
  /* These tests read the proxy's effect on rabbitmq-c's own plain TCP
   * socket, byte for byte; make check TLS=1 covers TLS through the proxy
   * in integ_tls and the fault suites. */
  if (!strncmp(t_url(), "amqps://", 8)) {
    printf("integ_faultproxy: plain TCP only, skipped on a TLS node\n");
    return EXIT_SUCCESS;
  }
  Suite *s = suite_create("faultproxy-broker");
  TCase *tc = tcase_create("faultproxy-broker");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, reset_fails_next_call);
  tcase_add_test(tc, stall_runs_into_rpc_timeout);
  tcase_add_test(tc, cut_mid_handshake);
  tcase_add_test(tc, cut_mid_publish_loses_the_message);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
