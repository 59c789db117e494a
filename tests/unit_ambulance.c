/*
 * unit_ambulance.c - the parts of the ambulance pattern that need no
 * broker: mode names, queue names, option defaults and validation, and a
 * receiver that cannot connect leaving nothing behind (run under valgrind
 * by make check).
 */
#include <check.h>
#include <string.h>

#include "edp.h"

START_TEST(modes) {
  static const char *names[] = {"fifo", "carpool", "ambulance", "native"};
  for (int i = 0; i < 4; i++) {
    int m = -1;
    ck_assert_int_eq(edp_amb_mode_parse(names[i], &m), 0);
    ck_assert_int_eq(m, i);
    ck_assert_str_eq(edp_amb_mode_name(m), names[i]);
  }
  int m = 7;
  ck_assert_int_eq(edp_amb_mode_parse("Ambulance", &m), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_mode_parse("", &m), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_mode_parse(NULL, &m), EDP_EINVAL);
  ck_assert_int_eq(m, 7);
  ck_assert_str_eq(edp_amb_mode_name(9), "?");
  ck_assert_str_eq(edp_amb_kind_name(EDP_AMB_PRIORITY), "priority");
  ck_assert_str_eq(edp_amb_kind_name(EDP_AMB_STANDARD), "standard");
}
END_TEST

START_TEST(queue_names) {
  char q[64];
  ck_assert_int_eq(edp_amb_queue_name(EDP_AMB_AMBULANCE, "b", EDP_AMB_PRIORITY,
                                      q, sizeof(q)),
                   0);
  ck_assert_str_eq(q, "b.priority");
  ck_assert_int_eq(
      edp_amb_queue_name(EDP_AMB_CARPOOL, "b", EDP_AMB_STANDARD, q, sizeof(q)),
      0);
  ck_assert_str_eq(q, "b.standard");
  ck_assert_int_eq(
      edp_amb_queue_name(EDP_AMB_NATIVE, "b", EDP_AMB_PRIORITY, q, sizeof(q)),
      0);
  ck_assert_str_eq(q, "b.native");
  ck_assert_int_eq(
      edp_amb_queue_name(EDP_AMB_FIFO, "b", EDP_AMB_PRIORITY, q, sizeof(q)), 0);
  ck_assert_str_eq(q, "b.fifo");
  /* Bad mode, kind, base and a buffer too small are refused. */
  ck_assert_int_eq(edp_amb_queue_name(4, "b", 0, q, sizeof(q)), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_queue_name(0, "b", 2, q, sizeof(q)), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_queue_name(0, "", 0, q, sizeof(q)), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_queue_name(0, "base", 0, q, 6), EDP_EINVAL);
  char longb[260];
  memset(longb, 'x', sizeof(longb) - 1);
  longb[sizeof(longb) - 1] = '\0';
  ck_assert_int_eq(edp_amb_queue_name(0, longb, 0, q, sizeof(q)), EDP_EINVAL);
}
END_TEST

static int ok_handler(void *ud, const edp_amb_job *job) {
  (void)ud;
  (void)job;
  return 0;
}

START_TEST(option_defaults_and_validation) {
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ck_assert_int_eq(ro.mode, EDP_AMB_AMBULANCE);
  ck_assert_int_eq(ro.threads, 1);
  ck_assert_int_eq(ro.standard_prefetch, 1);
  ck_assert_int_eq(ro.priority_prefetch, 4);
  ck_assert_int_eq(ro.check_priority_lane, 1);
  edp_amb_receiver *r = NULL;
  char err[128];
  /* No base, no handler, bad threads, bad prefetch: EDP_EINVAL at once. */
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, err, sizeof(err)),
                   EDP_EINVAL);
  ro.base = "b";
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, err, sizeof(err)),
                   EDP_EINVAL);
  ro.handler = ok_handler;
  ro.threads = 0;
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, NULL, 0), EDP_EINVAL);
  ro.threads = 65;
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, NULL, 0), EDP_EINVAL);
  ro.threads = 1;
  ro.priority_prefetch = 0;
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, NULL, 0), EDP_EINVAL);
  ck_assert_str_eq(err, "invalid receiver options");

  edp_amb_sender_opts so;
  edp_amb_sender_opts_init(&so);
  ck_assert_int_eq(so.mode, EDP_AMB_AMBULANCE);
  ck_assert_int_eq(so.persistent, 1);
  ck_assert_int_eq((int)so.confirm_window, 1024);
  edp_amb_sender *s = NULL;
  ck_assert_int_eq(edp_amb_sender_new(NULL, &so, &s), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_send(NULL, 0, "S1", "x", 1), EDP_EINVAL);
  ck_assert_int_eq(edp_amb_flush(NULL), EDP_EINVAL);
  edp_amb_sender_destroy(NULL);
  edp_amb_sender_destroy(&s);
  edp_amb_receiver_destroy(NULL);
  edp_amb_receiver *none = NULL;
  edp_amb_receiver_destroy(&none);
  ck_assert_int_eq(edp_amb_receiver_fd(NULL), -1);
  ck_assert_int_eq(edp_amb_receiver_error(NULL), EDP_EINVAL);
}
END_TEST

/* A receiver whose broker does not answer fails with EDP_ECONNECT, a
 * reason, and no thread, descriptor or memory left (valgrind). */
START_TEST(receiver_without_broker) {
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = "amqp://guest:guest@127.0.0.1:1/";
  co.connect_timeout_ms = 1000;
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ro.base = "b";
  ro.handler = ok_handler;
  ro.threads = 3;
  ro.conn = &co;
  edp_amb_receiver *r = NULL;
  char err[300] = "";
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, err, sizeof(err)),
                   EDP_ECONNECT);
  ck_assert_ptr_null(r);
  ck_assert_msg(err[0], "expected a reason");
}
END_TEST

int main(void) {
  Suite *s = suite_create("ambulance-unit");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, modes);
  tcase_add_test(tc, queue_names);
  tcase_add_test(tc, option_defaults_and_validation);
  tcase_add_test(tc, receiver_without_broker);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
