/*
 * unit_watch.c - the watch pattern's parsers and registry without a
 * broker: what a request may say, the indexes behind ownership and
 * quotas, the store format (both versions) and what a store must not
 * claim (the fuzzers' corpora are replayed by make check).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "edp_watch_internal.h"

#define TOKEN "0123456789abcdef0123456789abcdef"

static const char *parse(const char *body, const char *reply_to) {
  edp__watch_req req;
  const char *why =
      edp__watch_parse_request(body, strlen(body), reply_to, "svc.", &req);
  edp__watch_req_clear(&req);
  return why;
}

START_TEST(requests) {
  const char *q = "amq.gen-AbC_9-x";
  ck_assert_ptr_null(parse("{\"queue\":\"amq.gen-AbC_9-x\"}", q));
  ck_assert_ptr_null(parse("{\"queue\":\"amq.gen-AbC_9-x\",\"service\":\"s\","
                           "\"keys\":[\"a\",\"b\"],\"token\":\"" TOKEN "\"}",
                           q));
  ck_assert_ptr_null(parse("{\"queue\":\"svc.1\"}", "svc.1"));
  ck_assert_str_eq(parse("{\"queue\":\"svc.\"}", "svc."),
                   "reply_to is not a server-named (amq.gen-) or allowed "
                   "queue");
  ck_assert_str_eq(parse("{}", NULL), "no reply_to");
  ck_assert_str_eq(parse("{\"queue\":\"amq.gen-x\"}", "amq.gen-x!"),
                   "reply_to is not a server-named (amq.gen-) or allowed "
                   "queue");
  ck_assert_str_eq(parse("{\"queue\":\"amq.gen-y\"}", q),
                   "\"queue\" must be the request's reply_to queue");
  /* a NUL inside a JSON string would shorten the C string it becomes:
   * jansson refuses it, and so would we */
  ck_assert_str_eq(parse("{\"queue\":\"amq.gen-AbC_9-x\\u0000z\"}", q),
                   "not JSON");
  ck_assert_str_eq(
      parse("{\"queue\":\"amq.gen-AbC_9-x\",\"token\":\"ABC\"}", q),
      "\"token\" must be the 32 hex digits of a registration "
      "reply");
  ck_assert_str_eq(parse("{\"queue\":\"amq.gen-AbC_9-x\",\"token\":\"" TOKEN
                         "\",\"token\":\"" TOKEN "\"}",
                         q),
                   "not JSON");
  ck_assert_str_eq(parse("{\"queue\":\"amq.gen-AbC_9-x\",\"x\":1}", q),
                   "unknown field in request");
  ck_assert_str_eq(
      parse("{\"queue\":\"amq.gen-AbC_9-x\",\"keys\":[\"a\\u0001\"]}", q),
      "\"keys\" must be an array of at most 64 short printable strings");
}
END_TEST

static struct edp__watch mk(const char *queue, const char *user) {
  struct edp__watch w;
  memset(&w, 0, sizeof(w));
  w.queue = strdup(queue);
  w.user = strdup(user);
  w.corr = strdup("");
  memcpy(w.token, TOKEN, sizeof(w.token));
  return w;
}

START_TEST(registry_indexes) {
  edp__watch_reg r;
  ck_assert_int_eq(edp__watch_reg_init(&r), 0);
  const char *users[] = {"a", "b", "a", "c", "a"};
  char q[5][32];
  for (int i = 0; i < 5; i++) {
    snprintf(q[i], sizeof(q[i]), "amq.gen-%d", i);
    struct edp__watch w = mk(q[i], users[i]);
    ck_assert_int_eq(edp__watch_put(&r, &w), 0);
  }
  ck_assert_uint_eq(edp__watch_user_count(&r, "a"), 3);
  /* replacing a watch moves it to its new owner's count */
  struct edp__watch w = mk(q[0], "b");
  ck_assert_int_eq(edp__watch_put(&r, &w), 0);
  ck_assert_uint_eq(r.n_w, 5);
  ck_assert_uint_eq(edp__watch_user_count(&r, "a"), 2);
  ck_assert_uint_eq(edp__watch_user_count(&r, "b"), 2);
  /* removing from the middle keeps every queue findable */
  edp__watch_remove(&r, q[1]);
  edp__watch_remove(&r, q[1]);
  ck_assert_uint_eq(r.n_w, 4);
  ck_assert_ptr_null(edp__watch_find(&r, q[1]));
  for (int i = 0; i < 5; i++)
    if (i != 1)
      ck_assert_str_eq(edp__watch_find(&r, q[i])->queue, q[i]);
  ck_assert_uint_eq(edp__watch_user_count(&r, "b"), 1);
  ck_assert_uint_eq(edp__watch_user_count(&r, "nobody"), 0);
  edp__watch_reg_free(&r);
}
END_TEST

static int load(const char *text, edp__watch_reg *r) {
  ck_assert_int_eq(edp__watch_reg_init(r), 0);
  int rc = edp__watch_store_parse(r, text, strlen(text), NULL);
  if (rc)
    edp__watch_reg_free(r);
  return rc;
}

START_TEST(store_round_trip_and_format_1) {
  edp__watch_reg r;
  ck_assert_int_eq(
      load("{\"format\":\"edp-watch-store-1\",\"version\":2,\"values\":"
           "{\"k\":{\"value\":[1,2],\"version\":2}},\"watches\":[{\"queue\":"
           "\"amq.gen-a\",\"keys\":[\"k\"],\"service\":\"s\"}]}",
           &r),
      0);
  ck_assert_uint_eq(r.n_w, 1);
  ck_assert_str_eq(r.w[0].user, "");
  ck_assert_uint_eq(strlen(r.w[0].token), 32); /* a fresh one */
  char *a = edp__watch_store_dump(&r);
  edp__watch_reg r2;
  ck_assert_int_eq(load(a, &r2), 0);
  char *b = edp__watch_store_dump(&r2);
  ck_assert_str_eq(a, b);
  ck_assert_ptr_nonnull(strstr(a, "\"format\":\"edp-watch-store-2\""));
  free(a);
  free(b);
  edp__watch_reg_free(&r);
  edp__watch_reg_free(&r2);
}
END_TEST

START_TEST(store_claims_refused) {
  const char *bad[] = {
      "",
      "{\"format\":1}",
      "{\"format\":\"edp-watch-store-2\",\"version\":-1,\"values\":{},"
      "\"watches\":[]}",
      /* a version that would overflow, or a value newer than the store */
      "{\"format\":\"edp-watch-store-2\",\"version\":9223372036854775807,"
      "\"values\":{},\"watches\":[]}",
      "{\"format\":\"edp-watch-store-2\",\"version\":1,\"values\":{\"k\":"
      "{\"value\":1,\"version\":2}},\"watches\":[]}",
      /* one queue, two watches */
      "{\"format\":\"edp-watch-store-2\",\"version\":0,\"values\":{},"
      "\"watches\":[{\"queue\":\"amq.gen-a\"},{\"queue\":\"amq.gen-a\"}]}",
      "{\"format\":\"edp-watch-store-2\",\"version\":0,\"values\":{},"
      "\"watches\":[{\"queue\":\"amq.gen-a\",\"token\":\"xyz\"}]}",
      "{\"format\":\"edp-watch-store-2\",\"version\":0,\"values\":{},"
      "\"watches\":[{\"queue\":\"other\"}]}",
      "{\"format\":\"edp-watch-store-2\",\"version\":0,\"values\":{},"
      "\"watches\":[7]}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    edp__watch_reg r;
    ck_assert_msg(load(bad[i], &r) == EDP_EBADDATA, "store %zu loaded", i);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("watch");
  TCase *tc = tcase_create("watch");
  tcase_add_test(tc, requests);
  tcase_add_test(tc, registry_indexes);
  tcase_add_test(tc, store_round_trip_and_format_1);
  tcase_add_test(tc, store_claims_refused);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
