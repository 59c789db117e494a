/*
 * unit_multi_broker.c - the multi-broker module without a broker: option
 * and URL checks, a producer whose brokers are all unreachable (gives up
 * after down_max_ms, without spinning), key mode holding messages for a
 * down broker within hold_max, and a consumer that starts and stops while
 * its broker is down. Nothing listens on 127.0.0.1 ports 1-3.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "testlib.h"

static const char *dead[3] = {"amqp://guest:guest@127.0.0.1:1/",
                              "amqp://guest:guest@127.0.0.1:2/",
                              "amqp://guest:guest@127.0.0.1:3/"};

typedef struct evs {
  int down[3], up[3], held[3];
} evs;

static void on_event(void *ud, int broker, int ev, size_t count) {
  evs *e = ud;
  (void)count;
  if (ev == EDP_MULTI_DOWN)
    e->down[broker]++;
  else if (ev == EDP_MULTI_UP)
    e->up[broker]++;
  else if (ev == EDP_MULTI_HELD)
    e->held[broker]++;
}

static void msg_init(edp_msg *m, const char *id) {
  edp_msg_init(m);
  m->body = id;
  m->body_len = strlen(id);
  m->message_id = id;
  m->persistent = 1;
}

START_TEST(producer_rejects_bad_options) {
  edp_multi_producer_opts o;
  edp_multi_producer_opts_init(&o);
  ck_assert_uint_eq(o.window, 1024);
  ck_assert_int_eq(o.down_max_ms, 30000);
  edp_multi_producer *p = NULL;
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), EDP_EINVAL);
  o.queue = "q";
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), EDP_EINVAL);
  const char *urls[2] = {dead[0], "http://user:s3cret@host/"};
  o.urls = urls;
  o.n_urls = 2;
  char why[300] = "";
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, why, sizeof(why)), EDP_EURL);
  ck_assert_ptr_null(p);
  ck_assert_ptr_nonnull(strstr(why, "http://user:***@host/"));
  ck_assert_ptr_null(strstr(why, "s3cret"));
  o.n_urls = 1;
  o.mode = 7;
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), EDP_EINVAL);
}
END_TEST

START_TEST(producer_all_down_gives_up_after_bound) {
  evs e = {0};
  edp_multi_producer_opts o;
  edp_multi_producer_opts_init(&o);
  o.urls = dead;
  o.n_urls = 3;
  o.queue = "q";
  o.down_max_ms = 700;
  o.retry_initial_ms = 50;
  o.retry_max_ms = 200;
  o.on_event = on_event;
  o.ud = &e;
  edp_multi_producer *p = NULL;
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), 0);
  ck_assert_uint_eq(edp_multi_producer_brokers(p), 3);
  ck_assert_uint_eq(edp_multi_producer_live(p), 0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(e.down[i], 1);
  edp_msg m;
  msg_init(&m, "a-1");
  long long t0 = t_now_ms();
  ck_assert_int_eq(edp_multi_publish(p, &m, NULL), EDP_ECONNECT);
  long long took = t_now_ms() - t0;
  ck_assert_int_ge(took, 600);
  ck_assert_int_lt(took, 3000);
  edp_multi_broker_stats st;
  ck_assert_int_eq(edp_multi_producer_stats(p, 0, &st), 0);
  ck_assert_int_eq(st.live, 0);
  ck_assert_uint_eq(st.published, 0);
  ck_assert_int_eq(edp_multi_producer_stats(p, 3, &st), EDP_EINVAL);
  /* nothing outstanding: flush has nothing to wait for */
  ck_assert_int_eq(edp_multi_flush(p, 1000), 0);
  edp_multi_producer_destroy(&p);
  ck_assert_ptr_null(p);
  edp_multi_producer_destroy(&p);
}
END_TEST

START_TEST(key_mode_holds_within_bound) {
  evs e = {0};
  edp_multi_producer_opts o;
  edp_multi_producer_opts_init(&o);
  o.urls = dead;
  o.n_urls = 1;
  o.queue = "q";
  o.mode = EDP_MULTI_KEY;
  o.hold_max = 2;
  o.down_max_ms = 300;
  o.on_event = on_event;
  o.ud = &e;
  edp_multi_producer *p = NULL;
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), 0);
  edp_msg m;
  msg_init(&m, "k-1");
  ck_assert_int_eq(edp_multi_publish(p, &m, NULL), EDP_EINVAL);
  ck_assert_int_eq(edp_multi_publish(p, &m, "ACC-1"), 0);
  msg_init(&m, "k-2");
  ck_assert_int_eq(edp_multi_publish(p, &m, "ACC-1"), 0);
  msg_init(&m, "k-3");
  ck_assert_int_eq(edp_multi_publish(p, &m, "ACC-1"), EDP_ECONNECT);
  ck_assert_int_eq(e.held[0], 1);
  edp_multi_broker_stats st;
  edp_multi_producer_stats(p, 0, &st);
  ck_assert_uint_eq(st.held, 2);
  long long t0 = t_now_ms();
  ck_assert_int_eq(edp_multi_flush(p, 5000), EDP_ECONNECT);
  ck_assert_int_lt(t_now_ms() - t0, 3000);
  edp_multi_producer_destroy(&p); /* frees the held copies */
}
END_TEST

static int never(void *ud, int broker, const edp_delivery *d) {
  (void)ud;
  (void)broker;
  (void)d;
  return 0;
}

START_TEST(consumer_starts_and_stops_while_down) {
  edp_multi_consumer_opts o;
  edp_multi_consumer_opts_init(&o);
  edp_multi_consumer *c = NULL;
  ck_assert_int_eq(edp_multi_consumer_new(&o, &c, NULL, 0), EDP_EINVAL);
  o.urls = dead;
  o.n_urls = 2;
  o.queue = "q";
  o.handler = never;
  o.retry_initial_ms = 50;
  o.retry_max_ms = 100;
  ck_assert_int_eq(edp_multi_consumer_new(&o, &c, NULL, 0), 0);
  edp_multi_consumer_stats st;
  ck_assert_int_eq(edp_multi_consumer_stats_get(c, 1, &st), 0);
  ck_assert_int_eq(st.live, 0);
  ck_assert_int_eq(edp_multi_consumer_error(c, 0), 0);
  long long t0 = t_now_ms();
  edp_multi_consumer_destroy(&c);
  ck_assert_ptr_null(c);
  ck_assert_int_lt(t_now_ms() - t0, 2000);
}
END_TEST

int main(void) {
  Suite *s = suite_create("multi_broker_unit");
  TCase *tc = tcase_create("multi_broker_unit");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, producer_rejects_bad_options);
  tcase_add_test(tc, producer_all_down_gives_up_after_bound);
  tcase_add_test(tc, key_mode_holds_within_bound);
  tcase_add_test(tc, consumer_starts_and_stops_while_down);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
