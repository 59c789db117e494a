/*
 * unit_metrics.c - the metrics registry without a broker: histogram
 * buckets at their bounds, label escaping and its limit, families grouped
 * across objects under one # HELP/# TYPE, removal, and promtool (package
 * prometheus) accepting the rendered text, escapes included. A writer
 * thread counting while another renders shows the reads are race-free
 * under the sanitizer build.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edp.h"

START_TEST(hist_buckets) {
  edp_hist h = {0};
  edp_hist_observe(&h, 400);      /* <= 0.0005 */
  edp_hist_observe(&h, 500);      /* le is inclusive */
  edp_hist_observe(&h, 501);      /* next bucket */
  edp_hist_observe(&h, -3);       /* clamped to 0 */
  edp_hist_observe(&h, 20000000); /* 20 s: +Inf */
  ck_assert_uint_eq(h.count, 5);
  ck_assert_uint_eq(h.bucket[0], 3);
  ck_assert_uint_eq(h.bucket[1], 1);
  ck_assert_uint_eq(h.bucket[EDP_HIST_BUCKETS - 1], 1);
  ck_assert_uint_eq(h.sum_us, 400 + 500 + 501 + 20000000);
  ck_assert(edp_hist_bound(0) == 0.0005);
  ck_assert(edp_hist_bound(EDP_HIST_BUCKETS - 2) == 10.0);
}
END_TEST

START_TEST(label_escaping) {
  char l[64] = "";
  ck_assert_int_eq(edp_metrics_label(l, sizeof(l), "queue", "a\"b\\c\nd"), 0);
  ck_assert_str_eq(l, "queue=\"a\\\"b\\\\c\\nd\"");
  ck_assert_int_eq(edp_metrics_label(l, sizeof(l), "k", "v"), 0);
  ck_assert_str_eq(l, "queue=\"a\\\"b\\\\c\\nd\",k=\"v\"");
  char before[64];
  strcpy(before, l);
  ck_assert_int_eq(
      edp_metrics_label(l, sizeof(l), "long",
                        "01234567890123456789012345678901234567890"),
      EDP_ETOOBIG);
  ck_assert_str_eq(l, before);
}
END_TEST

typedef struct obj {
  const char *queue;
  uint64_t n;
  edp_hist h;
} obj;

static void collect(const void *p, edp_metrics_out *out) {
  const obj *o = p;
  char l[128] = "";
  edp_metrics_label(l, sizeof(l), "queue", o->queue);
  edp_metrics_counter(out, "t_done_total", "Things done.", l,
                      edp_count_read(&o->n));
  edp_metrics_gauge(out, "t_level", "A level\\with a backslash.", l, 0.5);
  edp_metrics_histogram(out, "t_duration_seconds", "Durations.", l, &o->h);
}

static int count_lines(const char *text, const char *prefix) {
  int n = 0;
  for (const char *p = text; p && *p;) {
    if (!strncmp(p, prefix, strlen(prefix)))
      n++;
    p = strchr(p, '\n');
    p = p ? p + 1 : NULL;
  }
  return n;
}

/* promtool check metrics on text: its exit code. */
static int promtool(const char *text) {
  char path[] = "/tmp/edp-unit-metrics.XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
  int rc = system(cmd);
  unlink(path);
  return rc;
}

START_TEST(render_groups_families) {
  edp_metrics *m = NULL;
  ck_assert_int_eq(edp_metrics_new(&m), 0);
  char *text = NULL;
  size_t len = 1;
  ck_assert_int_eq(edp_metrics_render(m, &text, &len), 0);
  ck_assert_uint_eq(len, 0);
  free(text);
  obj a = {"orders", 3, {0}}, b = {"we\"ird\\q\nx", 7, {0}};
  edp_hist_observe(&a.h, 2000);
  edp_hist_observe(&a.h, 700000);
  ck_assert_int_eq(edp_metrics_add(m, &a, collect), 0);
  ck_assert_int_eq(edp_metrics_add(m, &b, collect), 0);
  ck_assert_int_eq(edp_metrics_render(m, &text, &len), 0);
  ck_assert_uint_eq(len, strlen(text));
  /* One header per family, both objects' samples below it. */
  ck_assert_int_eq(count_lines(text, "# TYPE t_done_total counter"), 1);
  ck_assert_int_eq(count_lines(text, "# TYPE t_duration_seconds histogram"), 1);
  ck_assert_int_eq(count_lines(text, "t_done_total{"), 2);
  ck_assert_ptr_nonnull(strstr(text,
                               "t_done_total{queue=\"orders\"} 3\n"
                               "t_done_total{queue=\"we\\\"ird\\\\q\\nx\"}"
                               " 7\n"));
  ck_assert_ptr_nonnull(
      strstr(text, "t_duration_seconds_bucket{queue=\"orders\",le=\"0.0025\"} "
                   "1\n"));
  ck_assert_ptr_nonnull(
      strstr(text, "t_duration_seconds_bucket{queue=\"orders\",le=\"1\"} 2\n"));
  ck_assert_ptr_nonnull(
      strstr(text, "t_duration_seconds_bucket{queue=\"orders\",le=\"+Inf\"} "
                   "2\n"));
  ck_assert_ptr_nonnull(
      strstr(text, "t_duration_seconds_sum{queue=\"orders\"} 0.702000\n"));
  ck_assert_ptr_nonnull(strstr(text, "# HELP t_level A level\\\\with"));
  ck_assert_int_eq(promtool(text), 0);
  free(text);
  edp_metrics_remove(m, &b);
  ck_assert_int_eq(edp_metrics_render(m, &text, &len), 0);
  ck_assert_int_eq(count_lines(text, "t_done_total{"), 1);
  free(text);
  edp_metrics_destroy(&m);
  ck_assert_ptr_null(m);
  edp_metrics_destroy(&m);
}
END_TEST

/* promtool is a real judge: it refuses what the format forbids. */
static void bad_collect(const void *p, edp_metrics_out *out) {
  (void)p;
  edp_metrics_gauge(out, "t_bad_total", "A gauge named like a counter.", "", 1);
}

START_TEST(promtool_refuses_bad_names) {
  edp_metrics *m = NULL;
  ck_assert_int_eq(edp_metrics_new(&m), 0);
  int x = 0;
  ck_assert_int_eq(edp_metrics_add(m, &x, bad_collect), 0);
  char *text = NULL;
  ck_assert_int_eq(edp_metrics_render(m, &text, NULL), 0);
  ck_assert_int_ne(promtool(text), 0);
  free(text);
  edp_metrics_destroy(&m);
}
END_TEST

static void *writer(void *p) {
  obj *o = p;
  for (int i = 0; i < 200000; i++) {
    edp_count_add(&o->n, 1);
    edp_hist_observe(&o->h, i % 3000);
  }
  return NULL;
}

START_TEST(render_while_counting) {
  edp_metrics *m = NULL;
  ck_assert_int_eq(edp_metrics_new(&m), 0);
  obj a = {"busy", 0, {0}};
  ck_assert_int_eq(edp_metrics_add(m, &a, collect), 0);
  pthread_t t;
  pthread_create(&t, NULL, writer, &a);
  for (int i = 0; i < 200; i++) {
    char *text = NULL;
    ck_assert_int_eq(edp_metrics_render(m, &text, NULL), 0);
    free(text);
  }
  pthread_join(t, NULL);
  char *text = NULL;
  ck_assert_int_eq(edp_metrics_render(m, &text, NULL), 0);
  ck_assert_ptr_nonnull(strstr(text, "t_done_total{queue=\"busy\"} 200000\n"));
  ck_assert_ptr_nonnull(
      strstr(text, "t_duration_seconds_count{queue=\"busy\"} 200000\n"));
  free(text);
  edp_metrics_destroy(&m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("metrics");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, hist_buckets);
  tcase_add_test(tc, label_escaping);
  tcase_add_test(tc, render_groups_families);
  tcase_add_test(tc, promtool_refuses_bad_names);
  tcase_add_test(tc, render_while_counting);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
