/*
 * unit_worker.c - the worker that runs handlers off the connection's
 * thread, without a broker (conn NULL: the run only waits for fn): the
 * result comes back, every run uses the same thread (not the caller's),
 * the caller really waits for fn, the worker thread has the asynchronous
 * signals blocked, destroy works idle and after runs, NULL is refused.
 */
#define _GNU_SOURCE
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "edp_util.h"
#include "edp_worker.h"

static int answer(void *ud) {
  (void)ud;
  return 42;
}

START_TEST(result_comes_back) {
  edp_worker *w = NULL;
  ck_assert_int_eq(edp_worker_new(&w), 0);
  ck_assert_ptr_nonnull(w);
  int res = 0;
  ck_assert_int_eq(edp_worker_run(w, NULL, answer, NULL, &res), 0);
  ck_assert_int_eq(res, 42);
  /* fn_result may be NULL. */
  ck_assert_int_eq(edp_worker_run(w, NULL, answer, NULL, NULL), 0);
  edp_worker_destroy(&w);
  ck_assert_ptr_null(w);
}
END_TEST

typedef struct runs {
  pid_t tid[1000];
  int n;
} runs;

static int record_tid(void *ud) {
  runs *r = ud;
  r->tid[r->n] = (pid_t)syscall(SYS_gettid);
  return r->n++;
}

START_TEST(many_runs_one_thread) {
  edp_worker *w = NULL;
  ck_assert_int_eq(edp_worker_new(&w), 0);
  runs *r = calloc(1, sizeof(*r));
  pid_t me = (pid_t)syscall(SYS_gettid);
  int64_t t0 = edp_now_us();
  for (int i = 0; i < 1000; i++) {
    int res = -1;
    ck_assert_int_eq(edp_worker_run(w, NULL, record_tid, r, &res), 0);
    ck_assert_int_eq(res, i);
  }
  int64_t us = edp_now_us() - t0;
  fprintf(stderr, "many_runs_one_thread: 1000 runs in %lld us (%.1f us/run)\n",
          (long long)us, us / 1000.0);
  ck_assert_int_eq(r->n, 1000);
  ck_assert_int_ne(r->tid[0], me);
  for (int i = 1; i < 1000; i++)
    ck_assert_int_eq(r->tid[i], r->tid[0]);
  /* A handoff, not a thread per run: a generous bound even under
   * valgrind. */
  ck_assert_int_lt(us, 20 * 1000 * 1000);
  free(r);
  edp_worker_destroy(&w);
}
END_TEST

static int slow(void *ud) {
  int *ms = ud;
  struct timespec ts = {0, (long)*ms * 1000000L};
  nanosleep(&ts, NULL);
  return 7;
}

START_TEST(caller_waits_for_fn) {
  edp_worker *w = NULL;
  ck_assert_int_eq(edp_worker_new(&w), 0);
  int ms = 80, res = 0;
  int64_t t0 = edp_now_ms();
  ck_assert_int_eq(edp_worker_run(w, NULL, slow, &ms, &res), 0);
  ck_assert_int_ge(edp_now_ms() - t0, 75);
  ck_assert_int_eq(res, 7);
  edp_worker_destroy(&w);
}
END_TEST

static int sigint_blocked(void *ud) {
  (void)ud;
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, NULL, &cur);
  return sigismember(&cur, SIGINT) && sigismember(&cur, SIGTERM) &&
         !sigismember(&cur, SIGSEGV);
}

START_TEST(signals_blocked_in_worker) {
  edp_worker *w = NULL;
  ck_assert_int_eq(edp_worker_new(&w), 0);
  int res = 0;
  ck_assert_int_eq(edp_worker_run(w, NULL, sigint_blocked, NULL, &res), 0);
  ck_assert_int_eq(res, 1);
  /* The caller's own mask is left as it was. */
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, NULL, &cur);
  ck_assert(!sigismember(&cur, SIGINT));
  edp_worker_destroy(&w);
}
END_TEST

START_TEST(destroy_idle) {
  edp_worker *w = NULL;
  ck_assert_int_eq(edp_worker_new(&w), 0);
  edp_worker_destroy(&w); /* its thread never ran anything */
  ck_assert_ptr_null(w);
  edp_worker_destroy(&w);
  edp_worker_destroy(NULL);
  /* Several at once, destroyed in another order than created. */
  edp_worker *v[8] = {0};
  for (int i = 0; i < 8; i++)
    ck_assert_int_eq(edp_worker_new(&v[i]), 0);
  int res = 0;
  ck_assert_int_eq(edp_worker_run(v[3], NULL, answer, NULL, &res), 0);
  for (int i = 7; i >= 0; i--) {
    edp_worker_destroy(&v[i]);
    ck_assert_ptr_null(v[i]);
  }
}
END_TEST

static int stop_hook(void *ud) {
  (void)ud;
  return 0;
}

START_TEST(null_handling) {
  ck_assert_int_eq(edp_worker_new(NULL), EDP_EINVAL);
  int res = 5;
  ck_assert_int_eq(edp_worker_run(NULL, NULL, answer, NULL, &res), EDP_EINVAL);
  ck_assert_int_eq(res, 5); /* fn did not run */
  edp_worker *w = NULL;
  ck_assert_int_eq(edp_worker_new(&w), 0);
  ck_assert_int_eq(edp_worker_run(w, NULL, NULL, NULL, &res), EDP_EINVAL);
  ck_assert_int_eq(res, 5);
  edp_delivery d;
  ck_assert_int_eq(edp_worker_receive(NULL, NULL, &d, 0), EDP_EINVAL);
  ck_assert_int_eq(edp_worker_receive(w, NULL, &d, 0), EDP_EINVAL);
  ck_assert_int_eq(edp_worker_wait(NULL, NULL, -1, 0), EDP_EINVAL);
  ck_assert_int_eq(edp_worker_wait(w, NULL, -1, 0), EDP_EINVAL);
  edp_worker_on_stop(NULL, stop_hook, NULL);
  edp_worker_on_stop(w, stop_hook, NULL);
  edp_worker_on_stop(w, NULL, NULL);
  /* Still usable after all the refusals. */
  ck_assert_int_eq(edp_worker_run(w, NULL, answer, NULL, &res), 0);
  ck_assert_int_eq(res, 42);
  edp_worker_destroy(&w);
}
END_TEST

int main(void) {
  Suite *s = suite_create("worker");
  TCase *tc = tcase_create("worker");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, result_comes_back);
  tcase_add_test(tc, many_runs_one_thread);
  tcase_add_test(tc, caller_waits_for_fn);
  tcase_add_test(tc, signals_blocked_in_worker);
  tcase_add_test(tc, destroy_idle);
  tcase_add_test(tc, null_handling);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
