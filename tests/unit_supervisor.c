/*
 * unit_supervisor.c - the supervisor's scaling policy, which is a pure
 * function and needs no broker: rounding, clamping, the keep-alive before
 * a scale-down, zero and huge depths; plus option checks of edp_sup_new.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"

static edp_sup_policy pol(int n, int min, int max, int keep_ms) {
  edp_sup_policy p;
  edp_sup_policy_init(&p);
  p.per_consumer = n;
  p.min = min;
  p.max = max;
  p.keep_alive_ms = keep_ms;
  return p;
}

START_TEST(defaults_are_valid) {
  edp_sup_policy p;
  edp_sup_policy_init(&p);
  ck_assert_int_eq(edp_sup_policy_check(&p), 0);
  ck_assert_int_eq(p.per_consumer, 10);
  ck_assert_int_eq(p.min, 1);
  ck_assert_int_eq(p.max, 50);
  edp_sup_opts o;
  edp_sup_opts_init(&o);
  ck_assert_int_eq(o.prefetch, 1);
  ck_assert_int_eq(o.interval_ms, 1000);
  ck_assert_int_eq(o.hint_ms, 20);
  ck_assert_int_eq(o.supervise, 1);
}
END_TEST

START_TEST(rounding_is_ceil) {
  edp_sup_policy p = pol(10, 0, 100, 0);
  ck_assert_int_eq(edp_sup_policy_want(&p, 1), 1);
  ck_assert_int_eq(edp_sup_policy_want(&p, 9), 1);
  ck_assert_int_eq(edp_sup_policy_want(&p, 10), 1);
  ck_assert_int_eq(edp_sup_policy_want(&p, 11), 2);
  ck_assert_int_eq(edp_sup_policy_want(&p, 140), 14);
  ck_assert_int_eq(edp_sup_policy_want(&p, 141), 15);
  p.per_consumer = 1;
  ck_assert_int_eq(edp_sup_policy_want(&p, 37), 37);
}
END_TEST

START_TEST(clamping) {
  edp_sup_policy p = pol(10, 2, 5, 0);
  ck_assert_int_eq(edp_sup_policy_want(&p, 0), 2);
  ck_assert_int_eq(edp_sup_policy_want(&p, 15), 2);
  ck_assert_int_eq(edp_sup_policy_want(&p, 21), 3);
  ck_assert_int_eq(edp_sup_policy_want(&p, 50), 5);
  ck_assert_int_eq(edp_sup_policy_want(&p, 51), 5);
  ck_assert_int_eq(edp_sup_policy_want(&p, 100000), 5);
}
END_TEST

START_TEST(zero_depth) {
  edp_sup_policy p = pol(10, 0, 5, 0);
  ck_assert_int_eq(edp_sup_policy_want(&p, 0), 0);
  edp_sup_policy_state st;
  edp_sup_policy_state_init(&st);
  /* min 0 and no keep-alive: an empty queue retires everybody at once. */
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 3, 0, 100), 0);
  p.min = 1;
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 0, 0, 200), 1);
}
END_TEST

START_TEST(huge_depth) {
  edp_sup_policy p = pol(1, 1, 10000, 0);
  ck_assert_int_eq(edp_sup_policy_want(&p, UINT64_MAX), 10000);
  ck_assert_int_eq(edp_sup_policy_want(&p, (uint64_t)UINT32_MAX), 10000);
  p.per_consumer = 7;
  ck_assert_int_eq(edp_sup_policy_want(&p, UINT64_MAX), 10000);
  p = pol(2147483647, 0, 10, 0);
  ck_assert_int_eq(edp_sup_policy_want(&p, UINT64_MAX), 10);
  ck_assert_int_eq(edp_sup_policy_want(&p, 1), 1);
  edp_sup_policy_state st;
  edp_sup_policy_state_init(&st);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 1, UINT64_MAX, 0), 10);
}
END_TEST

START_TEST(scale_up_is_immediate) {
  edp_sup_policy p = pol(10, 1, 50, 5000);
  edp_sup_policy_state st;
  edp_sup_policy_state_init(&st);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 1, 2000, 0), 50);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 1, 35, 0), 4);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 4, 40, 10), 4);
}
END_TEST

START_TEST(keep_alive_delays_scale_down) {
  edp_sup_policy p = pol(10, 1, 50, 1000);
  edp_sup_policy_state st;
  edp_sup_policy_state_init(&st);
  /* 10 consumers, demand drops to 2 at t=0: kept until t=1000. */
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 10, 20, 0), 10);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 10, 15, 500), 10);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 10, 0, 999), 10);
  /* At the keep-alive: down to the highest demand of the period (2). */
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 10, 0, 1000), 2);
  /* A new low period starts for the remaining surplus. */
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 2, 0, 1100), 2);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 2, 0, 2099), 2);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 2, 0, 2100), 1);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 1, 0, 5000), 1);
}
END_TEST

START_TEST(keep_alive_resets_on_demand) {
  edp_sup_policy p = pol(10, 1, 50, 1000);
  edp_sup_policy_state st;
  edp_sup_policy_state_init(&st);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 5, 0, 0), 5);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 5, 0, 900), 5);
  /* Demand back at the current count: the low period ends. */
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 5, 50, 950), 5);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 5, 0, 1000), 5);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 5, 0, 1999), 5);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 5, 0, 2000), 1);
}
END_TEST

START_TEST(no_keep_alive) {
  edp_sup_policy p = pol(10, 1, 50, 0);
  edp_sup_policy_state st;
  edp_sup_policy_state_init(&st);
  ck_assert_int_eq(edp_sup_policy_decide(&p, &st, 8, 30, 0), 3);
}
END_TEST

START_TEST(decide_is_deterministic) {
  edp_sup_policy p = pol(3, 2, 9, 250);
  edp_sup_policy_state a, b;
  edp_sup_policy_state_init(&a);
  edp_sup_policy_state_init(&b);
  uint64_t depths[] = {0, 5, 100, 7, 0, 0, 0, 20, 1, 0, 0, 0, 0};
  int cur_a = 2, cur_b = 2;
  for (size_t i = 0; i < sizeof(depths) / sizeof(depths[0]); i++) {
    cur_a = edp_sup_policy_decide(&p, &a, cur_a, depths[i], (int64_t)i * 100);
    cur_b = edp_sup_policy_decide(&p, &b, cur_b, depths[i], (int64_t)i * 100);
    ck_assert_int_eq(cur_a, cur_b);
    ck_assert_int_ge(cur_a, p.min);
    ck_assert_int_le(cur_a, p.max);
  }
  ck_assert_int_eq(cur_a, 2);
}
END_TEST

START_TEST(policy_check) {
  edp_sup_policy p = pol(10, 1, 50, 0);
  ck_assert_int_eq(edp_sup_policy_check(&p), 0);
  p = pol(0, 1, 50, 0);
  ck_assert_int_eq(edp_sup_policy_check(&p), EDP_EINVAL);
  p = pol(1, 5, 4, 0);
  ck_assert_int_eq(edp_sup_policy_check(&p), EDP_EINVAL);
  p = pol(1, -1, 4, 0);
  ck_assert_int_eq(edp_sup_policy_check(&p), EDP_EINVAL);
  p = pol(1, 0, 0, 0);
  ck_assert_int_eq(edp_sup_policy_check(&p), EDP_EINVAL);
  p = pol(1, 0, 10001, 0);
  ck_assert_int_eq(edp_sup_policy_check(&p), EDP_EINVAL);
  p = pol(1, 0, 4, -1);
  ck_assert_int_eq(edp_sup_policy_check(&p), EDP_EINVAL);
  ck_assert_int_eq(edp_sup_policy_check(NULL), EDP_EINVAL);
}
END_TEST

static int nop_handler(void *ud, int consumer, const edp_delivery *d) {
  (void)ud;
  (void)consumer;
  (void)d;
  return 0;
}

START_TEST(hint_brings_reading_forward) {
  /* Last reading at 1000, next regular one at 2000. */
  ck_assert_int_eq(edp_sup_next_reading(1000, 2000, 0, 20), 2000);
  ck_assert_int_eq(edp_sup_next_reading(1000, 2000, 1, 20), 1020);
  /* Rate limit: never sooner than hint_ms after the last reading, even
   * when the hint comes right after it. */
  ck_assert_int_eq(edp_sup_next_reading(1000, 1020, 1, 20), 1020);
  /* Never later than the regular reading. */
  ck_assert_int_eq(edp_sup_next_reading(1000, 1010, 1, 20), 1010);
  ck_assert_int_eq(edp_sup_next_reading(1000, 1500, 1, 800), 1500);
  /* Hints off. */
  ck_assert_int_eq(edp_sup_next_reading(1000, 2000, 1, 0), 2000);
  ck_assert_int_eq(edp_sup_next_reading(1000, 2000, 1, -5), 2000);
}
END_TEST

START_TEST(new_rejects_bad_options) {
  edp_sup *s = (edp_sup *)1;
  edp_sup_opts o;
  edp_sup_opts_init(&o);
  char why[100];
  /* No queue, no handler: refused before any connection is tried. */
  ck_assert_int_eq(edp_sup_new(&o, &s, why, sizeof(why)), EDP_EINVAL);
  ck_assert_ptr_null(s);
  o.queue = "q";
  ck_assert_int_eq(edp_sup_new(&o, &s, why, sizeof(why)), EDP_EINVAL);
  o.handler = nop_handler;
  o.interval_ms = 5;
  ck_assert_int_eq(edp_sup_new(&o, &s, NULL, 0), EDP_EINVAL);
  o.interval_ms = 1000;
  o.hint_ms = -1;
  ck_assert_int_eq(edp_sup_new(&o, &s, NULL, 0), EDP_EINVAL);
  o.hint_ms = 20;
  o.prefetch = 0;
  ck_assert_int_eq(edp_sup_new(&o, &s, NULL, 0), EDP_EINVAL);
  o.prefetch = 1;
  o.policy.min = 60;
  ck_assert_int_eq(edp_sup_new(&o, &s, NULL, 0), EDP_EINVAL);
  ck_assert_int_eq(edp_sup_new(NULL, &s, NULL, 0), EDP_EINVAL);
  ck_assert_int_eq(edp_sup_new(&o, NULL, NULL, 0), EDP_EINVAL);
  edp_sup_destroy(NULL);
  s = NULL;
  edp_sup_destroy(&s);
}
END_TEST

START_TEST(new_reports_unreachable_broker) {
  edp_sup *s = NULL;
  edp_sup_opts o;
  edp_sup_opts_init(&o);
  o.queue = "q";
  o.handler = nop_handler;
  o.url = "amqp://guest:secret@127.0.0.1:1/";
  char why[600] = "";
  ck_assert_int_eq(edp_sup_new(&o, &s, why, sizeof(why)), EDP_ECONNECT);
  ck_assert_ptr_null(s);
  ck_assert_ptr_null(strstr(why, "secret"));
  o.url = "http://nope/";
  ck_assert_int_eq(edp_sup_new(&o, &s, why, sizeof(why)), EDP_EURL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("supervisor");
  TCase *tc = tcase_create("policy");
  tcase_add_test(tc, defaults_are_valid);
  tcase_add_test(tc, rounding_is_ceil);
  tcase_add_test(tc, clamping);
  tcase_add_test(tc, zero_depth);
  tcase_add_test(tc, huge_depth);
  tcase_add_test(tc, scale_up_is_immediate);
  tcase_add_test(tc, keep_alive_delays_scale_down);
  tcase_add_test(tc, keep_alive_resets_on_demand);
  tcase_add_test(tc, no_keep_alive);
  tcase_add_test(tc, decide_is_deterministic);
  tcase_add_test(tc, policy_check);
  tcase_add_test(tc, hint_brings_reading_forward);
  tcase_add_test(tc, new_rejects_bad_options);
  tcase_add_test(tc, new_reports_unreachable_broker);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
