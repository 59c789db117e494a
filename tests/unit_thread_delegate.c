/*
 * unit_thread_delegate.c - the thread delegate's logic without a broker:
 * the allocation map (stickiness while in flight, least-loaded placement,
 * emptiness when idle, a context never on two workers) and context
 * extraction from routing key, header and JSON body.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_allocmap.h"
#include "edp_thread_delegate.h"

START_TEST(map_sticky_and_empty) {
  edp_allocmap *m = NULL;
  ck_assert_int_eq(edp_allocmap_new(3, &m), 0);
  int w1, w2, n;
  ck_assert_int_eq(edp_allocmap_assign(m, "A-136", &w1, &n), 0);
  ck_assert_int_eq(n, 1);
  ck_assert_int_eq(edp_allocmap_assign(m, "A-136", &w2, &n), 0);
  ck_assert_int_eq(w2, w1); /* in flight: stays on its worker */
  ck_assert_int_eq(n, 2);
  ck_assert_int_eq(edp_allocmap_load(m, w1), 2);
  ck_assert_uint_eq(edp_allocmap_size(m), 1);
  int w, left;
  ck_assert_int_eq(edp_allocmap_release(m, "A-136", &w, &left), 0);
  ck_assert_int_eq(w, w1);
  ck_assert_int_eq(left, 1);
  ck_assert_int_eq(edp_allocmap_release(m, "A-136", &w, &left), 0);
  ck_assert_int_eq(left, 0);
  ck_assert_uint_eq(edp_allocmap_size(m), 0);
  ck_assert_int_eq(edp_allocmap_load(m, w1), 0);
  ck_assert_int_eq(edp_allocmap_release(m, "A-136", NULL, NULL), EDP_ENOTFOUND);
  ck_assert_int_eq(edp_allocmap_lookup(m, "A-136", NULL, NULL), EDP_ENOTFOUND);
  edp_allocmap_destroy(&m);
  ck_assert_ptr_null(m);
  edp_allocmap_destroy(NULL);
}
END_TEST

START_TEST(map_least_loaded) {
  edp_allocmap *m = NULL;
  ck_assert_int_eq(edp_allocmap_new(3, &m), 0);
  int wa, wb, wc, wd, w;
  /* A gets 3 messages, B 2, C 1: each on its own worker. */
  ck_assert_int_eq(edp_allocmap_assign(m, "A", &wa, NULL), 0);
  ck_assert_int_eq(edp_allocmap_assign(m, "B", &wb, NULL), 0);
  ck_assert_int_eq(edp_allocmap_assign(m, "C", &wc, NULL), 0);
  ck_assert_int_ne(wa, wb);
  ck_assert_int_ne(wb, wc);
  ck_assert_int_ne(wa, wc);
  edp_allocmap_assign(m, "A", &w, NULL);
  edp_allocmap_assign(m, "A", &w, NULL);
  edp_allocmap_assign(m, "B", &w, NULL);
  /* A new context goes to the least loaded worker: C's (load 1). */
  ck_assert_int_eq(edp_allocmap_assign(m, "D", &wd, NULL), 0);
  ck_assert_int_eq(wd, wc);
  ck_assert_int_eq(edp_allocmap_load(m, wc), 2);
  /* A's messages all finish; A's next message may move (to the least
   * loaded, now A's old worker with load 0). */
  for (int i = 0; i < 3; i++)
    edp_allocmap_release(m, "A", NULL, NULL);
  ck_assert_int_eq(edp_allocmap_load(m, wa), 0);
  ck_assert_int_eq(edp_allocmap_assign(m, "E", &w, NULL), 0);
  ck_assert_int_eq(w, wa);
  edp_allocmap_destroy(&m);
}
END_TEST

/* A random workload: never two workers for one context, loads always the
 * sum of their contexts, and an empty map at the end. */
START_TEST(map_random_invariants) {
  enum { W = 7, CTX = 300, STEPS = 200000 };
  edp_allocmap *m = NULL;
  ck_assert_int_eq(edp_allocmap_new(W, &m), 0);
  int where[CTX], count[CTX], load[W] = {0};
  for (int i = 0; i < CTX; i++)
    where[i] = -1, count[i] = 0;
  unsigned seed = 42;
  char key[32];
  for (int s = 0; s < STEPS; s++) {
    int c = (int)(rand_r(&seed) % CTX);
    snprintf(key, sizeof(key), "acct-%d", c);
    int w, n;
    if (rand_r(&seed) % 2 || !count[c]) {
      ck_assert_int_eq(edp_allocmap_assign(m, key, &w, &n), 0);
      if (count[c])
        ck_assert_int_eq(w, where[c]);
      where[c] = w;
      count[c]++;
      load[w]++;
      ck_assert_int_eq(n, count[c]);
    } else {
      ck_assert_int_eq(edp_allocmap_release(m, key, &w, &n), 0);
      ck_assert_int_eq(w, where[c]);
      count[c]--;
      load[w]--;
      ck_assert_int_eq(n, count[c]);
    }
    if (s % 1000 == 0)
      for (int i = 0; i < W; i++)
        ck_assert_int_eq(edp_allocmap_load(m, i), load[i]);
  }
  for (int c = 0; c < CTX; c++) {
    snprintf(key, sizeof(key), "acct-%d", c);
    while (count[c]--)
      ck_assert_int_eq(edp_allocmap_release(m, key, NULL, NULL), 0);
  }
  ck_assert_uint_eq(edp_allocmap_size(m), 0);
  for (int i = 0; i < W; i++)
    ck_assert_int_eq(edp_allocmap_load(m, i), 0);
  edp_allocmap_destroy(&m);
}
END_TEST

START_TEST(map_bad_args) {
  edp_allocmap *m = NULL;
  ck_assert_int_eq(edp_allocmap_new(0, &m), EDP_EINVAL);
  ck_assert_int_eq(edp_allocmap_new(5000, &m), EDP_EINVAL);
  ck_assert_int_eq(edp_allocmap_new(1, NULL), EDP_EINVAL);
  ck_assert_int_eq(edp_allocmap_new(1, &m), 0);
  int w;
  ck_assert_int_eq(edp_allocmap_assign(m, NULL, &w, NULL), EDP_EINVAL);
  ck_assert_int_eq(edp_allocmap_load(m, 7), 0);
  edp_allocmap_destroy(&m);
}
END_TEST

START_TEST(context_extraction) {
  edp_delivery d;
  memset(&d, 0, sizeof(d));
  char rk[] = "trade.eq.A-136";
  char body[] = "{\"account\":\"B-123\",\"n\":42,\"x\":[1]}";
  edp_field h[2] = {
      {"acct", 0, {.kind = EDP_FIELD_STRING, .v.bytes = {"Q-665", 5}}},
      {"num", 0, {.kind = EDP_FIELD_I16, .v.i = 7}}};
  d.routing_key = rk;
  d.body = body;
  d.body_len = strlen(body);
  d.headers = h;
  d.n_headers = 2;
  char out[64];
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_ROUTING_KEY, NULL, &d, out, sizeof(out)), 0);
  ck_assert_str_eq(out, "A-136");
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_HEADER, "acct", &d, out, sizeof(out)), 0);
  ck_assert_str_eq(out, "Q-665");
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_HEADER, "num", &d, out, sizeof(out)), 0);
  ck_assert_str_eq(out, "7");
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_JSON, "account", &d, out, sizeof(out)), 0);
  ck_assert_str_eq(out, "B-123");
  ck_assert_int_eq(edp_td_context(EDP_TD_CTX_JSON, "n", &d, out, sizeof(out)),
                   0);
  ck_assert_str_eq(out, "42");
  /* Missing, wrong type, not JSON, too long, empty: bad data. */
  ck_assert_int_eq(edp_td_context(EDP_TD_CTX_JSON, "x", &d, out, sizeof(out)),
                   EDP_EBADDATA);
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_HEADER, "nope", &d, out, sizeof(out)),
      EDP_EBADDATA);
  char notjson[] = "B-123,SELL,AAPL,206 SHARES";
  d.body = notjson;
  d.body_len = strlen(notjson);
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_JSON, "account", &d, out, sizeof(out)),
      EDP_EBADDATA);
  ck_assert_int_eq(edp_td_context(EDP_TD_CTX_ROUTING_KEY, NULL, &d, out, 4),
                   EDP_EBADDATA);
  char dotted[] = "trade.eq.";
  d.routing_key = dotted;
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_ROUTING_KEY, NULL, &d, out, sizeof(out)),
      EDP_EBADDATA);
  char plain[] = "A-1";
  d.routing_key = plain;
  ck_assert_int_eq(
      edp_td_context(EDP_TD_CTX_ROUTING_KEY, NULL, &d, out, sizeof(out)), 0);
  ck_assert_str_eq(out, "A-1");
  ck_assert_int_eq(edp_td_context(9, NULL, &d, out, sizeof(out)), EDP_EINVAL);
}
END_TEST

START_TEST(td_new_bad_args) {
  edp_td_opts o;
  edp_td_opts_init(&o);
  ck_assert_int_eq(o.workers, 5);
  edp_td *td = (edp_td *)1;
  ck_assert_int_eq(edp_td_new(NULL, &o, &td), EDP_EINVAL);
  ck_assert_ptr_null(td);
  ck_assert_int_eq(edp_td_run(NULL, 0), EDP_EINVAL);
  edp_td_destroy(NULL);
  edp_td_destroy(&td);
}
END_TEST

int main(void) {
  Suite *s = suite_create("thread_delegate");
  TCase *tc = tcase_create("alloc");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, map_sticky_and_empty);
  tcase_add_test(tc, map_least_loaded);
  tcase_add_test(tc, map_random_invariants);
  tcase_add_test(tc, map_bad_args);
  tcase_add_test(tc, context_extraction);
  tcase_add_test(tc, td_new_bad_args);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
