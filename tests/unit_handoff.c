/*
 * unit_handoff.c - the thread handoff queue: FIFO order, the eventfd
 * readable exactly while items are queued, timeouts, close, and many
 * producers against one polling consumer.
 */
#include <check.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "edp_handoff.h"
#include "edp_util.h"

static int readable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

START_TEST(fifo_and_fd) {
  edp_handoff *h = NULL;
  ck_assert_int_eq(edp_handoff_new(&h), 0);
  int fd = edp_handoff_fd(h);
  ck_assert(!readable(fd));
  void *item = NULL;
  ck_assert_int_eq(edp_handoff_take(h, &item, 0), EDP_ETIMEOUT);
  /* More than the initial ring, to exercise growth with a wrapped head. */
  for (intptr_t i = 1; i <= 10; i++)
    ck_assert_int_eq(edp_handoff_push(h, (void *)i), 0);
  for (intptr_t i = 1; i <= 5; i++) {
    ck_assert_int_eq(edp_handoff_take(h, &item, 0), 0);
    ck_assert_int_eq((intptr_t)item, i);
  }
  for (intptr_t i = 11; i <= 200; i++)
    ck_assert_int_eq(edp_handoff_push(h, (void *)i), 0);
  ck_assert_uint_eq(edp_handoff_size(h), 195);
  ck_assert(readable(fd));
  for (intptr_t i = 6; i <= 200; i++) {
    ck_assert(readable(fd));
    ck_assert_int_eq(edp_handoff_take(h, &item, 0), 0);
    ck_assert_int_eq((intptr_t)item, i);
  }
  ck_assert(!readable(fd));
  ck_assert_uint_eq(edp_handoff_size(h), 0);
  edp_handoff_destroy(&h);
  ck_assert_ptr_null(h);
  edp_handoff_destroy(NULL);
}
END_TEST

START_TEST(timeout_and_close) {
  edp_handoff *h = NULL;
  ck_assert_int_eq(edp_handoff_new(&h), 0);
  void *item = NULL;
  int64_t t0 = edp_now_ms();
  ck_assert_int_eq(edp_handoff_take(h, &item, 50), EDP_ETIMEOUT);
  int64_t took = edp_now_ms() - t0;
  ck_assert_int_ge(took, 45);
  ck_assert_int_lt(took, 2000);
  ck_assert_int_eq(edp_handoff_push(h, NULL), 0);
  edp_handoff_close(h);
  ck_assert_int_eq(edp_handoff_push(h, (void *)1), EDP_ESTOPPED);
  /* What was pushed before close is still handed out, then STOPPED. */
  item = (void *)1;
  ck_assert_int_eq(edp_handoff_take(h, &item, -1), 0);
  ck_assert_ptr_null(item);
  ck_assert_int_eq(edp_handoff_take(h, &item, -1), EDP_ESTOPPED);
  ck_assert_int_eq(edp_handoff_take(NULL, &item, 0), EDP_EINVAL);
  ck_assert_int_eq(edp_handoff_push(NULL, NULL), EDP_EINVAL);
  edp_handoff_destroy(&h);
}
END_TEST

#define PRODUCERS 4
#define PER_PRODUCER 20000

static void *producer(void *arg) {
  edp_handoff *h = arg;
  static _Atomic int next_id;
  int id = next_id++;
  for (intptr_t i = 0; i < PER_PRODUCER; i++)
    ck_assert_int_eq(
        edp_handoff_push(h, (void *)(intptr_t)(id * PER_PRODUCER + i + 1)), 0);
  return NULL;
}

static void *closer_wait(void *arg) {
  edp_handoff *h = arg;
  void *item;
  int rc = edp_handoff_take(h, &item, -1);
  return (void *)(intptr_t)rc;
}

START_TEST(producers_and_poller) {
  edp_handoff *h = NULL;
  ck_assert_int_eq(edp_handoff_new(&h), 0);
  pthread_t th[PRODUCERS];
  for (int i = 0; i < PRODUCERS; i++)
    pthread_create(&th[i], NULL, producer, h);
  /* The consumer waits only on the fd, as a connection owner does. Each
   * producer's items must come out in its own order. */
  intptr_t last[PRODUCERS] = {0};
  int got = 0;
  while (got < PRODUCERS * PER_PRODUCER) {
    struct pollfd p = {edp_handoff_fd(h), POLLIN, 0};
    ck_assert_int_eq(poll(&p, 1, 5000), 1);
    void *item;
    while (edp_handoff_take(h, &item, 0) == 0) {
      intptr_t v = (intptr_t)item - 1;
      int who = (int)(v / PER_PRODUCER);
      ck_assert_int_lt(who, PRODUCERS);
      ck_assert_int_eq(v % PER_PRODUCER, last[who]);
      last[who]++;
      got++;
    }
  }
  for (int i = 0; i < PRODUCERS; i++)
    pthread_join(th[i], NULL);
  /* A blocked waiter is woken by close. */
  pthread_t w;
  pthread_create(&w, NULL, closer_wait, h);
  edp_handoff_close(h);
  void *res;
  pthread_join(w, &res);
  ck_assert_int_eq((int)(intptr_t)res, EDP_ESTOPPED);
  edp_handoff_destroy(&h);
}
END_TEST

int main(void) {
  Suite *s = suite_create("handoff");
  TCase *tc = tcase_create("handoff");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, fifo_and_fd);
  tcase_add_test(tc, timeout_and_close);
  tcase_add_test(tc, producers_and_poller);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
