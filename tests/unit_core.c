/*
 * unit_core.c - the core pieces that need no broker: URL parsing and
 * masking, error strings, the bounded id set.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "edp_idset.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

START_TEST(url_full) {
  edp_url u;
  ck_assert_int_eq(
      edp_url_parse("amqp://bob:s3cret@broker.example:5673/prod", &u, NULL, 0),
      0);
  ck_assert_str_eq(u.user, "bob");
  ck_assert_str_eq(u.pass, "s3cret");
  ck_assert_str_eq(u.host, "broker.example");
  ck_assert_int_eq(u.port, 5673);
  ck_assert_str_eq(u.vhost, "prod");
  ck_assert_int_eq(u.heartbeat_s, -1);
}
END_TEST

START_TEST(url_defaults) {
  edp_url u;
  ck_assert_int_eq(edp_url_parse("amqp://localhost", &u, NULL, 0), 0);
  ck_assert_str_eq(u.user, "guest");
  ck_assert_str_eq(u.pass, "guest");
  ck_assert_int_eq(u.port, 5672);
  ck_assert_str_eq(u.vhost, "/");
  /* RabbitMQ's URI specification: an empty path is the vhost "". */
  ck_assert_int_eq(edp_url_parse("amqp://h/", &u, NULL, 0), 0);
  ck_assert_str_eq(u.vhost, "");
  ck_assert_int_eq(edp_url_parse("amqp://h/%2f", &u, NULL, 0), 0);
  ck_assert_str_eq(u.vhost, "/");
  ck_assert_int_eq(edp_url_parse("amqp://", &u, NULL, 0), 0);
  ck_assert_str_eq(u.host, "localhost");
}
END_TEST

START_TEST(url_decoding_and_ipv6) {
  edp_url u;
  ck_assert_int_eq(
      edp_url_parse("amqp://us%40er:p%3Aa%2Fss@[::1]:5674/v%20h", &u, NULL, 0),
      0);
  ck_assert_str_eq(u.user, "us@er");
  ck_assert_str_eq(u.pass, "p:a/ss");
  ck_assert_str_eq(u.host, "::1");
  ck_assert_int_eq(u.port, 5674);
  ck_assert_str_eq(u.vhost, "v h");
}
END_TEST

START_TEST(url_query) {
  edp_url u;
  ck_assert_int_eq(
      edp_url_parse("amqp://h/?heartbeat=5&connection_timeout=2500&frame_max="
                    "4096&channel_max=7",
                    &u, NULL, 0),
      0);
  ck_assert_int_eq(u.heartbeat_s, 5);
  ck_assert_int_eq(u.connect_timeout_ms, 2500);
  ck_assert_int_eq(u.frame_max, 4096);
  ck_assert_int_eq(u.channel_max, 7);
}
END_TEST

START_TEST(url_errors) {
  static const char *bad[] = {"http://h/",
                              "amqp://h:0/",
                              "amqp://h:65536/",
                              "amqp://h:12x/",
                              "amqp://h:/",
                              "amqp://[::1/",
                              "amqp://h/a/b",
                              "amqp://h/%zz",
                              "amqp://h/%4",
                              "amqp://h/?heartbeat",
                              "amqp://h/?nope=1",
                              "amqp://h/?heartbeat=-1",
                              "amqp://h /",
                              "amqp://u:p@h/%00",
                              "",
                              "amqp://h:99999999999/"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    edp_url u;
    char why[200] = "";
    ck_assert_msg(edp_url_parse(bad[i], &u, why, sizeof(why)) == EDP_EURL,
                  "accepted '%s'", bad[i]);
    ck_assert_msg(why[0] != '\0', "no reason for '%s'", bad[i]);
  }
  ck_assert_int_eq(edp_url_parse(NULL, NULL, NULL, 0), EDP_EINVAL);
}
END_TEST

START_TEST(url_too_long_fields) {
  char url[1200];
  char big[600];
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  edp_url u;
  snprintf(url, sizeof(url), "amqp://%s:p@h/", big);
  ck_assert_int_eq(edp_url_parse(url, &u, NULL, 0), EDP_EURL);
  snprintf(url, sizeof(url), "amqp://u:p@h/%s", big);
  ck_assert_int_eq(edp_url_parse(url, &u, NULL, 0), EDP_EURL);
}
END_TEST

START_TEST(url_masking) {
  char out[256];
  ck_assert_str_eq(
      edp_url_mask("amqp://bob:s3cret@h:5672/vh", out, sizeof(out)),
      "amqp://bob:***@h:5672/vh");
  ck_assert_str_eq(edp_url_mask("amqp://h:5672/", out, sizeof(out)),
                   "amqp://h:5672/");
  ck_assert_str_eq(edp_url_mask("amqp://bob@h/", out, sizeof(out)),
                   "amqp://bob@h/");
  /* malformed URLs are masked too */
  ck_assert_str_eq(edp_url_mask("amqp://u:pw@h:12x/a/b", out, sizeof(out)),
                   "amqp://u:***@h:12x/a/b");
  ck_assert_ptr_null(
      strstr(edp_url_mask("foo://u:topsecret@", out, 10), "topsecret"));
  edp_url u;
  ck_assert_int_eq(edp_url_parse("amqp://bob:s3cret@[::1]:5/v", &u, NULL, 0),
                   0);
  ck_assert_str_eq(edp_url_format_masked(&u, out, sizeof(out)),
                   "amqp://bob:***@[::1]:5/v");
  char why[200];
  edp_url_parse("amqp://bob:s3cret@h:bad/", &u, why, sizeof(why));
  ck_assert_ptr_null(strstr(why, "s3cret"));
}
END_TEST

START_TEST(errors_have_text) {
  ck_assert_str_eq(edp_strerror(0), "success");
  ck_assert_str_eq(edp_strerror(EDP_ETIMEOUT), "timed out");
  ck_assert_str_eq(edp_errname(EDP_ETIMEOUT), "TIMEOUT");
  ck_assert_str_eq(edp_strerror(-9999), "unknown error");
  for (int e = EDP_ETLS; e <= EDP_EINVAL; e++)
    ck_assert_str_ne(edp_strerror(e), "unknown error");
}
END_TEST

START_TEST(idset_bounded) {
  edp_idset *s = NULL;
  ck_assert_int_eq(edp_idset_new(0, &s), EDP_EINVAL);
  ck_assert_int_eq(edp_idset_new(100, &s), 0);
  char id[32];
  for (int i = 0; i < 1000; i++) {
    snprintf(id, sizeof(id), "m-%d", i);
    ck_assert_int_eq(edp_idset_add(s, id), 1);
    ck_assert_int_eq(edp_idset_add(s, id), 0);
  }
  ck_assert_uint_eq(edp_idset_size(s), 100);
  for (int i = 0; i < 1000; i++) {
    snprintf(id, sizeof(id), "m-%d", i);
    ck_assert_int_eq(edp_idset_contains(s, id), i >= 900);
  }
  edp_idset_destroy(&s);
  ck_assert_ptr_null(s);
  edp_idset_destroy(&s); /* NULL is fine */
}
END_TEST

START_TEST(conn_open_bad_args) {
  edp_conn *c = (edp_conn *)1;
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = "amqp://u:topsecret@h:notaport/";
  char why[300];
  ck_assert_int_eq(edp_conn_open(&o, &c, why, sizeof(why)), EDP_EURL);
  ck_assert_ptr_null(c);
  ck_assert_ptr_null(strstr(why, "topsecret"));
  ck_assert_int_eq(edp_conn_open(&o, NULL, NULL, 0), EDP_EINVAL);
  edp_conn_destroy(NULL);
  edp_conn_destroy(&c);
}
END_TEST

START_TEST(file_atomic_write_and_read) {
  char dir[] = "/tmp/edp-unit-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof(path), "%s/store.json", dir);
  char *out = NULL;
  ck_assert_int_eq(edp_file_read(path, 100, &out, NULL), EDP_ENOTFOUND);
  ck_assert_int_eq(edp_file_write_atomic(path, "hello", 5, 0600), 0);
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0600);
  size_t len = 0;
  ck_assert_int_eq(edp_file_read(path, 100, &out, &len), 0);
  ck_assert_str_eq(out, "hello");
  ck_assert_uint_eq(len, 5);
  free(out);
  ck_assert_int_eq(edp_file_read(path, 3, &out, NULL), EDP_ETOOBIG);
  char bad[300];
  snprintf(bad, sizeof(bad), "%s/no/such/dir/x", dir);
  ck_assert_int_eq(edp_file_write_atomic(bad, "x", 1, 0600), EDP_EIO);
  ck_assert_int_eq(edp_file_write_atomic(NULL, "x", 1, 0600), EDP_EINVAL);
  unlink(path);
  rmdir(dir);
}
END_TEST

/* A writer killed with SIGKILL at arbitrary moments while it replaces a
 * 4 MiB file over and over: the file is always one whole version, never a
 * mix or a truncation. */
START_TEST(file_never_torn_by_a_crash) {
  char dir[] = "/tmp/edp-unit-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof(path), "%s/store.json", dir);
  const size_t size = (size_t)4 << 20;
  char *a = malloc(size), *b = malloc(size);
  memset(a, 'a', size);
  memset(b, 'b', size);
  ck_assert_int_eq(edp_file_write_atomic(path, a, size, 0600), 0);
  unsigned seed = 12345;
  int whole = 0;
  for (int round = 0; round < 25; round++) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      for (int i = 0;; i++)
        edp_file_write_atomic(path, i % 2 ? a : b, size, 0600);
    }
    edp_sleep_ms(1 + (int)(rand_r(&seed) % 40), -1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    char *got = NULL;
    size_t len = 0;
    ck_assert_int_eq(edp_file_read(path, size * 2, &got, &len), 0);
    ck_assert_uint_eq(len, size);
    ck_assert_msg(!memcmp(got, a, size) || !memcmp(got, b, size),
                  "round %d: torn file", round);
    whole++;
    free(got);
  }
  ck_assert_int_eq(whole, 25);
  free(a);
  free(b);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Queue kinds become exactly the arguments docs/wire.md lists; what the
 * broker would refuse is refused here. */
START_TEST(queue_kinds) {
  edp_queue_opts o;
  edp_queue_opts_init(&o);
  ck_assert_int_eq(edp_queue_opts_kind(&o, NULL, "q.dlq"), 0);
  ck_assert_ptr_null(o.queue_type);
  ck_assert_int_eq(o.delivery_limit, -1);
  const edp_queue_kind classic = {"classic", 0, 1};
  ck_assert_int_eq(edp_queue_opts_kind(&o, &classic, "q.dlq"), 0);
  ck_assert_ptr_null(o.queue_type); /* no x-queue-type at all */
  ck_assert_int_eq(o.single_active, 1);
  ck_assert_ptr_null(o.dead_letter_exchange);
  const edp_queue_kind bad[] = {{"stream", 0, 0},
                                {"Quorum", 0, 0},
                                {"classic", 5, 0},
                                {NULL, 5, 0},
                                {"quorum", -1, 0}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    edp_queue_opts_init(&o);
    ck_assert_int_eq(edp_queue_opts_kind(&o, &bad[i], "q.dlq"), EDP_EINVAL);
  }
  const edp_queue_kind qq = {"quorum", 0, 0};
  edp_queue_opts_init(&o);
  ck_assert_int_eq(edp_queue_opts_kind(&o, &qq, "q.dlq"), 0);
  ck_assert_str_eq(o.queue_type, "quorum");
  ck_assert_int_eq(o.delivery_limit, -1);
  ck_assert_ptr_null(o.dead_letter_exchange);
  const edp_queue_kind limited = {"quorum", 20, 0};
  edp_queue_opts_init(&o);
  ck_assert_int_eq(edp_queue_opts_kind(&o, &limited, "q.dlq"), 0);
  ck_assert_int_eq(o.delivery_limit, 20);
  ck_assert_str_eq(o.dead_letter_exchange, "");
  ck_assert_str_eq(o.dead_letter_routing_key, "q.dlq");
  ck_assert_str_eq(o.dead_letter_strategy, "at-least-once");
  ck_assert_str_eq(o.overflow, "reject-publish");
  ck_assert_int_eq(o.durable, 1);
  /* Declares the broker would refuse: no connection is needed to say so. */
  ck_assert_int_eq(edp_conn_declare_kind(NULL, "q", &limited, 1), EDP_EINVAL);
}
END_TEST

START_TEST(msg_dup_is_deep) {
  char body[] = "payload";
  char key[] = "k", val[] = "v", id[] = "m-1";
  edp_header h[2] = {{key, val, 0}, {"n", NULL, 42}};
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = "q";
  m.body = body;
  m.body_len = 7;
  m.message_id = id;
  m.headers = h;
  m.n_headers = 2;
  edp_msg *d = edp_msg_dup(&m);
  ck_assert_ptr_nonnull(d);
  /* changing the original leaves the copy alone */
  body[0] = key[0] = val[0] = id[0] = 'X';
  ck_assert_int_eq(memcmp(d->body, "payload", 7), 0);
  ck_assert_str_eq(d->message_id, "m-1");
  ck_assert_str_eq(d->routing_key, "q");
  ck_assert_str_eq(d->exchange, "");
  ck_assert_uint_eq(d->n_headers, 2);
  ck_assert_str_eq(d->headers[0].key, "k");
  ck_assert_str_eq(d->headers[0].str, "v");
  ck_assert_ptr_null(d->headers[1].str);
  ck_assert_int_eq(d->headers[1].num, 42);
  ck_assert_ptr_null(d->content_type);
  free(d);
  m.body = NULL; /* body_len 7 without a body */
  ck_assert_ptr_null(edp_msg_dup(&m));
}
END_TEST

int main(void) {
  Suite *s = suite_create("core");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, url_full);
  tcase_add_test(tc, url_defaults);
  tcase_add_test(tc, url_decoding_and_ipv6);
  tcase_add_test(tc, url_query);
  tcase_add_test(tc, url_errors);
  tcase_add_test(tc, url_too_long_fields);
  tcase_add_test(tc, url_masking);
  tcase_add_test(tc, errors_have_text);
  tcase_add_test(tc, idset_bounded);
  tcase_add_test(tc, conn_open_bad_args);
  tcase_add_test(tc, msg_dup_is_deep);
  tcase_add_test(tc, queue_kinds);
  tcase_add_test(tc, file_atomic_write_and_read);
  tcase_add_test(tc, file_never_torn_by_a_crash);
  tcase_set_timeout(tc, 120);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
