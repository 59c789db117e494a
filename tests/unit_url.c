/*
 * unit_url.c - URLs as RabbitMQ's URI specification reads them (every
 * example of its appendix), amqps:// URLs with RabbitMQ's TLS query
 * parameters and the combinations we refuse, the canonical form we print,
 * and masking of passwords that hold every character a password can hold.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "edp_multi_broker.h"

/* The appendix of https://www.rabbitmq.com/docs/uri-spec, row by row. A
 * blank cell there means "the client's default": guest, guest, localhost,
 * 5672 and the vhost "/". */
START_TEST(spec_appendix) {
  static const struct {
    const char *url, *user, *pass, *host;
    int port;
    const char *vhost;
  } rows[] = {
      {"amqp://user:pass@host:10000/vhost", "user", "pass", "host", 10000,
       "vhost"},
      {"amqp://user%61:%61pass@ho%61st:10000/v%2fhost", "usera", "apass",
       "hoast", 10000, "v/host"},
      {"amqp://", "guest", "guest", "localhost", 5672, "/"},
      {"amqp://:@/", "", "", "localhost", 5672, ""},
      {"amqp://user@", "user", "guest", "localhost", 5672, "/"},
      {"amqp://user:pass@", "user", "pass", "localhost", 5672, "/"},
      {"amqp://host", "guest", "guest", "host", 5672, "/"},
      {"amqp://:10000", "guest", "guest", "localhost", 10000, "/"},
      {"amqp:///vhost", "guest", "guest", "localhost", 5672, "vhost"},
      {"amqp://host/", "guest", "guest", "host", 5672, ""},
      {"amqp://host/%2f", "guest", "guest", "host", 5672, "/"},
      {"amqp://[::1]", "guest", "guest", "::1", 5672, "/"},
  };
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    edp_url u;
    char why[200] = "";
    ck_assert_msg(edp_url_parse(rows[i].url, &u, why, sizeof(why)) == 0,
                  "%s: %s", rows[i].url, why);
    ck_assert_str_eq(u.user, rows[i].user);
    ck_assert_str_eq(u.pass, rows[i].pass);
    ck_assert_str_eq(u.host, rows[i].host);
    ck_assert_int_eq(u.port, rows[i].port);
    ck_assert_msg(!strcmp(u.vhost, rows[i].vhost), "%s: vhost '%s'",
                  rows[i].url, u.vhost);
    ck_assert_int_eq(u.tls, 0);
  }
}
END_TEST

/* What we print reads back as the same fields, and the default vhost is
 * printed without a path (a trailing '/' is the vhost ""). */
START_TEST(format_round_trip) {
  static const struct {
    const char *url, *printed;
  } rows[] = {
      {"amqp://guest:guest@127.0.0.1:5672", "amqp://guest:***@127.0.0.1:5672"},
      {"amqp://h/%2f", "amqp://guest:***@h:5672"},
      {"amqp://h/", "amqp://guest:***@h:5672/"},
      {"amqp://h/v%2fhost", "amqp://guest:***@h:5672/v%2Fhost"},
      {"amqps://us%40er:x@h/a%20b", "amqps://us%40er:***@h:5671/a%20b"},
      {"amqp://:p@[fe80::1]:1/", "amqp://:***@[fe80::1]:1/"},
      {"amqp://u@ho%3Ast", "amqp://u:***@ho%3Ast:5672"},
      {"amqp://u@h/%C3%A9t%C3%A9", "amqp://u:***@h:5672/%C3%A9t%C3%A9"},
  };
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    edp_url u, back;
    char out[300];
    ck_assert_int_eq(edp_url_parse(rows[i].url, &u, NULL, 0), 0);
    ck_assert_str_eq(edp_url_format_masked(&u, out, sizeof(out)),
                     rows[i].printed);
    ck_assert_int_eq(edp_url_parse(out, &back, NULL, 0), 0);
    ck_assert_str_eq(back.user, u.user);
    ck_assert_str_eq(back.host, u.host);
    ck_assert_int_eq(back.port, u.port);
    ck_assert_str_eq(back.vhost, u.vhost);
    ck_assert_int_eq(back.tls, u.tls);
  }
  char out[300];
  ck_assert_str_eq(EDP_URL_DEFAULT, "amqp://guest:guest@localhost:5672");
  edp_url u;
  ck_assert_int_eq(edp_url_parse(EDP_URL_DEFAULT, &u, NULL, 0), 0);
  ck_assert_str_eq(u.vhost, "/");
  ck_assert_str_eq(edp_url_format_masked(&u, out, 20), "amqp://guest:***@lo");
}
END_TEST

START_TEST(amqps_defaults) {
  edp_url u;
  ck_assert_int_eq(edp_url_parse("amqps://broker.example/", &u, NULL, 0), 0);
  ck_assert_int_eq(u.tls, 1);
  ck_assert_int_eq(u.port, 5671);
  ck_assert_str_eq(u.host, "broker.example");
  ck_assert_int_eq(u.verify_peer, 1);
  ck_assert_str_eq(u.cacertfile, "");
  ck_assert_str_eq(u.sni, "");
  ck_assert_int_eq(u.sni_disabled, 0);
  ck_assert_int_eq(u.auth_mechanism, EDP_AUTH_PLAIN);
  ck_assert_int_eq(edp_url_parse("amqps://h:5999", &u, NULL, 0), 0);
  ck_assert_int_eq(u.port, 5999);
  ck_assert_int_eq(edp_url_parse("amqp://h/", &u, NULL, 0), 0);
  ck_assert_int_eq(u.tls, 0);
  ck_assert_int_eq(u.port, 5672);
}
END_TEST

START_TEST(amqps_options) {
  edp_url u;
  char why[200] = "";
  ck_assert_int_eq(
      edp_url_parse("amqps://u:p@h/vh?cacertfile=/etc/ca.pem&certfile=%2Ftmp"
                    "%2Fc%20d.pem&keyfile=/tmp/k.pem&verify=verify_none&"
                    "server_name_indication=rabbit.example&heartbeat=5",
                    &u, why, sizeof(why)),
      0);
  ck_assert_str_eq(u.cacertfile, "/etc/ca.pem");
  ck_assert_str_eq(u.certfile, "/tmp/c d.pem");
  ck_assert_str_eq(u.keyfile, "/tmp/k.pem");
  ck_assert_int_eq(u.verify_peer, 0);
  ck_assert_str_eq(u.sni, "rabbit.example");
  ck_assert_int_eq(u.heartbeat_s, 5);
  ck_assert_str_eq(u.vhost, "vh");
  ck_assert_int_eq(
      edp_url_parse("amqps://h/?server_name_indication=disable&verify="
                    "verify_peer&auth_mechanism=EXTERNAL&certfile=c&keyfile=k",
                    &u, why, sizeof(why)),
      0);
  ck_assert_int_eq(u.sni_disabled, 1);
  ck_assert_str_eq(u.sni, "");
  ck_assert_int_eq(u.verify_peer, 1);
  ck_assert_int_eq(u.auth_mechanism, EDP_AUTH_EXTERNAL);
  ck_assert_int_eq(
      edp_url_parse("amqps://h/?auth_mechanism=plain", &u, why, sizeof(why)),
      0);
  ck_assert_int_eq(u.auth_mechanism, EDP_AUTH_PLAIN);
}
END_TEST

START_TEST(amqps_refused) {
  static const char *bad[] = {
      "amqps://h/?verify=yes",
      "amqps://h/?verify=",
      "amqps://h/?auth_mechanism=amqplain",
      "amqps://h/?auth_mechanism=external", /* no client certificate */
      "amqps://h/?certfile=/c.pem",         /* no key */
      "amqps://h/?keyfile=/k.pem",
      "amqps://h/?cacertfile=",
      "amqps://h/?cacertfile=%zz",
      "amqps://h/?server_name_indication=",
      "amqps://h/?sni=x",
      "amqp://h/?cacertfile=/ca.pem", /* a TLS option on a plain URL */
      "amqp://h/?verify=verify_none",
      "amqp://h/?auth_mechanism=plain",
      "amqps://h:0/",
      "amqps://h/#frag",
      "amqpss://h/",
      "AMQPS://h/",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    edp_url u;
    char why[200] = "";
    ck_assert_msg(edp_url_parse(bad[i], &u, why, sizeof(why)) == EDP_EURL,
                  "accepted '%s'", bad[i]);
    ck_assert_msg(why[0] != '\0' && !strchr(why, '\n'),
                  "no one-line reason for '%s'", bad[i]);
  }
  edp_url u;
  char why[200] = "";
  edp_url_parse("amqp://h/?cacertfile=/ca.pem", &u, why, sizeof(why));
  ck_assert_ptr_nonnull(strstr(why, "amqps://"));
  edp_url_parse("amqps://h/?auth_mechanism=external", &u, why, sizeof(why));
  ck_assert_ptr_nonnull(strstr(why, "certfile"));
}
END_TEST

/* Passwords with each reserved character, escaped (as they must be) and
 * unescaped (a user's mistake): neither the parser's reason nor either
 * masking function may show a byte of the secret. */
START_TEST(masking_every_character) {
  static const char *urls[] = {
      "amqps://bob:se%2Fcr%3Fet%23x%40y@h:5671/vh",
      "amqps://bob:se/cret@h/",
      "amqps://bob:se?cret@h/",
      "amqps://bob:se#cret@h/",
      "amqps://bob:se@cret@h/",
      "amqp://bob:s/e?c#r@et@h:5672/",
      "amqp://bob:secret@h/?heartbeat=5&x=a@b",
      "amqps://bob:se%cret@h/",
      "amqps://bob:secret",
      "amqps://bob:se/cret",
      "amqps://bob:se:cret@h/",
      "amqps://bob:se%3Acret@h/",
      "amqps://bob:s\xc3\xa9"
      "cret@h/",
      "amqps://bob:s%C3%A9cret@h/",
      "amqps://bob:se%2",
      "amqps://b@b:se?cret=1@h/",
      "amqps://b@b:se?cret=1@h",
      "amqps://b:x@b/:se?cret=1@h",
      "amqps://bob:se?heartbeat=cret@h",
      "amqp://bob:secret@h/?heartbeat=cret@",
      "bob:secret@h",
  };
  for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
    char out[300], why[200] = "";
    edp_url u;
    edp_url_mask(urls[i], out, sizeof(out));
    ck_assert_msg(!strstr(out, "cret") && !strstr(out, "se%") &&
                      !strstr(out, "se/"),
                  "mask leaked: %s", out);
    if (edp_url_parse(urls[i], &u, why, sizeof(why)) == 0) {
      edp_url_format_masked(&u, out, sizeof(out));
      ck_assert_msg(!strstr(out, "cret"), "format leaked: %s", out);
    } else {
      ck_assert_msg(!strstr(why, "cret") && !strstr(why, "se/"),
                    "reason leaked: %s", why);
    }
  }
  char out[300];
  ck_assert_str_eq(
      edp_url_mask("amqps://bob:p/w@h:5671/vh?cacertfile=/c", out, sizeof(out)),
      "amqps://bob:***@h:5671/vh?cacertfile=/c");
  edp_url u;
  ck_assert_int_eq(
      edp_url_parse("amqps://bob:se%2Fcr%3Fet%23x%40y@h:5671/vh", &u, NULL, 0),
      0);
  ck_assert_str_eq(u.pass, "se/cr?et#x@y");
  ck_assert_str_eq(edp_url_format_masked(&u, out, sizeof(out)),
                   "amqps://bob:***@h:5671/vh");
  ck_assert_int_eq(edp_url_parse("amqps://[::1]/?auth_mechanism=external&"
                                 "certfile=c&keyfile=k",
                                 &u, NULL, 0),
                   0);
  ck_assert_str_eq(edp_url_format_masked(&u, out, sizeof(out)),
                   "amqps://[::1]:5671/?auth_mechanism=external");
}
END_TEST

/* Every message the library makes about a connection (the error of
 * edp_conn_open, the log lines, and the multi-broker's URL check) shows
 * the URL masked, for passwords holding each character a password can
 * hold, escaped as they should be or raw as users write them. Nothing
 * listens on port 1, so each open fails quickly after parsing. */
struct logbuf {
  char text[4096];
};

static void keep_log(void *ud, int level, const char *msg) {
  struct logbuf *b = ud;
  (void)level;
  size_t n = strlen(b->text);
  snprintf(b->text + n, sizeof(b->text) - n, "%s\n", msg);
}

START_TEST(masking_in_messages) {
  static const char *urls[] = {
      "amqp://bob:Zk%2F%3F%23%40%3A%25%C3%A9q@127.0.0.1:1",
      "amqp://bob:Zk/q@127.0.0.1:1",
      "amqp://bob:Zk?q@127.0.0.1:1",
      "amqp://bob:Zk#q@127.0.0.1:1",
      "amqp://bob:Zk@q@127.0.0.1:1",
      "amqp://bob:Zk:q@127.0.0.1:1",
      "amqp://bob:Zk%q@127.0.0.1:1",
      "amqp://bob:Zk\xc3\xa9q@127.0.0.1:1",
      "amqps://bob:Zk%40q@127.0.0.1:1/vh?cacertfile=/nonexistent",
      "amqp://bob:Zkq",
      "amqp://bob:Zkq/vh",
  };
  for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
    struct logbuf lb = {""};
    edp_conn_opts o;
    edp_conn_opts_init(&o);
    o.url = urls[i];
    o.connect_timeout_ms = 2000;
    o.log = keep_log;
    o.log_ud = &lb;
    edp_conn *c = NULL;
    char why[600] = "";
    ck_assert_int_ne(edp_conn_open(&o, &c, why, sizeof(why)), 0);
    ck_assert_ptr_null(c);
    ck_assert_msg(why[0] && !strstr(why, "Zk"), "error shows it: %s", why);
    ck_assert_msg(!strstr(lb.text, "Zk"), "log shows it: %s", lb.text);

    edp_multi_producer_opts mo;
    edp_multi_producer_opts_init(&mo);
    mo.queue = "q";
    mo.urls = &urls[i];
    mo.n_urls = 1;
    mo.down_max_ms = 100;
    edp_multi_producer *p = NULL;
    why[0] = '\0';
    if (edp_multi_producer_new(&mo, &p, why, sizeof(why)) == 0)
      edp_multi_producer_destroy(&p);
    ck_assert_msg(!strstr(why, "Zk"), "multi-broker shows it: %s", why);
  }
}
END_TEST

START_TEST(tls_error_code) {
  ck_assert_str_eq(edp_errname(EDP_ETLS), "TLS");
  ck_assert_ptr_nonnull(strstr(edp_strerror(EDP_ETLS), "TLS"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("url");
  TCase *tc = tcase_create("url");
  tcase_add_test(tc, spec_appendix);
  tcase_add_test(tc, format_round_trip);
  tcase_add_test(tc, amqps_defaults);
  tcase_add_test(tc, amqps_options);
  tcase_add_test(tc, amqps_refused);
  tcase_add_test(tc, masking_every_character);
  tcase_add_test(tc, masking_in_messages);
  tcase_add_test(tc, tls_error_code);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
