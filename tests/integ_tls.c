/*
 * integ_tls.c - amqps:// against a real TLS node that this suite starts
 * itself (tests/broker.sh start-tls in a mktemp dir: a TLS listener only,
 * client certificates required, test certificates, EXTERNAL login) and
 * always stops; the plain node of EDP_URL serves as the wrong kind of port.
 *
 * It proves that verified TLS carries confirmed messages, also through a
 * connection the broker closes mid-send; that every kind of refusal (wrong
 * CA, a name the certificate lacks, an expired certificate, no client
 * certificate, one of an unrelated CA, the wrong kind of port) ends at
 * once with a one-line error that names its cause and EDP_ETLS (exit 77),
 * nothing reported confirmed; and that EXTERNAL logs in by the
 * certificate's CN. The patterns' programs over amqps: integ_tls_demo.sh.
 */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "edp.h"
#include "faultproxy.h"
#include "testlib.h"

/* A refusal must come well within one connect timeout. */
#define REFUSE_BOUND_MS 3000

static char base_dir[256];
static char tls_dir[300];
static pid_t owner; /* Check forks a child per test: only we clean up */
static int tls_port;

static pid_t spawn_broker(const char *cmd, const char *dir,
                          char *const *extra) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", 1);
    if (null >= 0)
      dup2(null, 1);
    char *argv[12] = {"broker.sh", (char *)cmd, (char *)dir};
    int n = 3;
    for (; extra && *extra && n < 11; extra++)
      argv[n++] = *extra;
    argv[n] = NULL;
    execv("tests/broker.sh", argv);
    _exit(127);
  }
  return pid;
}

static int wait_pid(pid_t pid) {
  int st = 0;
  if (pid <= 0 || waitpid(pid, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void node_stop(void) {
  if (!base_dir[0] || getpid() != owner)
    return;
  if (wait_pid(spawn_broker("stop", base_dir, NULL)) != 0)
    wait_pid(spawn_broker("kill", base_dir, NULL));
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", base_dir);
  base_dir[0] = '\0';
}

static void on_signal(int sig) {
  node_stop(); /* not async-signal-safe, but we exit right after */
  signal(sig, SIG_DFL);
  raise(sig);
}

static void node_start(void) {
  owner = getpid();
  snprintf(base_dir, sizeof(base_dir), "/tmp/edp-tls.XXXXXX");
  if (!mkdtemp(base_dir)) {
    perror("mkdtemp");
    exit(EXIT_FAILURE);
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  atexit(node_stop);
  fprintf(stderr, "starting a TLS RabbitMQ node in %s...\n", base_dir);
  if (wait_pid(spawn_broker("start-tls", base_dir, NULL)) != 0) {
    fprintf(stderr, "the TLS node did not start\n");
    exit(EXIT_FAILURE);
  }
  snprintf(tls_dir, sizeof(tls_dir), "%s/tls", base_dir);
  char path[400], line[256];
  snprintf(path, sizeof(path), "%s/node.env", base_dir);
  FILE *f = fopen(path, "r");
  while (f && fgets(line, sizeof(line), f))
    sscanf(line, "TLS_PORT=%d", &tls_port);
  if (f)
    fclose(f);
  if (!tls_port) {
    fprintf(stderr, "no ports in %s\n", path);
    exit(EXIT_FAILURE);
  }
  /* The user that EXTERNAL logs in as (the client certificate's CN). */
  char *add[] = {"add_user", "edp-tls-user", "not-used-by-external", NULL};
  char *perm[] = {
      "set_permissions", "-p", "/", "edp-tls-user", ".*", ".*", ".*", NULL};
  if (wait_pid(spawn_broker("ctl", base_dir, add)) != 0 ||
      wait_pid(spawn_broker("ctl", base_dir, perm)) != 0) {
    fprintf(stderr, "could not create the EXTERNAL user\n");
    exit(EXIT_FAILURE);
  }
}

/* &certfile=<dir>/NAME.pem&keyfile=<dir>/NAME.key */
static const char *client_cert(const char *name) {
  static char q[700];
  snprintf(q, sizeof(q), "&certfile=%s/%s.pem&keyfile=%s/%s.key", tls_dir, name,
           tls_dir, name);
  return q;
}

/* amqps://guest:guest@HOST:PORT?cacertfile=<ca> with the client
 * certificate CERT (NULL: none), then QUERY. */
static const char *tls_url_cert(const char *host, int port, const char *ca,
                                const char *cert, const char *query) {
  static char url[2048];
  snprintf(url, sizeof(url),
           "amqps://guest:guest@%s:%d?cacertfile=%s/%s.pem%s%s", host, port,
           tls_dir, ca, cert ? client_cert(cert) : "", query ? query : "");
  return url;
}

/* The same with the client certificate the node accepts. */
static const char *tls_url(const char *host, int port, const char *ca,
                           const char *query) {
  return tls_url_cert(host, port, ca, "client", query);
}

/* The port of EDP_URL's plain node, or 0 under make check TLS=1, where
 * every node is a TLS node. */
static int plain_port(void) {
  edp_url u;
  ck_assert_int_eq(edp_url_parse(t_url(), &u, NULL, 0), 0);
  return u.tls ? 0 : u.port;
}

/* Opens url; returns its error code and the time it took in *ms. */
static int try_open(const char *url, char *why, size_t len, long long *ms) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.connect_timeout_ms = 5000;
  edp_conn *c = NULL;
  long long t0 = t_now_ms();
  why[0] = '\0';
  int rc = edp_conn_open(&o, &c, why, len);
  *ms = t_now_ms() - t0;
  edp_conn_destroy(&c);
  return rc;
}

static void expect_refused(const char *url, int want_rc, const char *cause) {
  char why[600];
  long long ms;
  int rc = try_open(url, why, sizeof(why), &ms);
  fprintf(stderr, "  %s -> %s (%lld ms): %s\n", cause, edp_errname(rc), ms,
          why);
  ck_assert_msg(rc == want_rc, "%s: %s, want %s: %s", url, edp_errname(rc),
                edp_errname(want_rc), why);
  ck_assert_msg(strstr(why, cause), "no '%s' in: %s", cause, why);
  ck_assert_msg(!strchr(why, '\n'), "not one line: %s", why);
  ck_assert_msg(!strstr(why, ":guest@"), "password shown: %s", why);
  ck_assert_int_lt(ms, REFUSE_BOUND_MS);
}

/* A fault proxy in front of the TLS node; url gets the URL through it
 * (the certificate names 127.0.0.1 too). */
static fp_proxy *tls_proxy(char *url, size_t len) {
  fp_proxy *fp = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", tls_port, &fp), 0);
  ck_assert_int_eq(
      fp_url(fp, tls_url("localhost", tls_port, "ca", NULL), url, len), 0);
  return fp;
}

/* ---------- verified TLS works ---------- */

START_TEST(publish_confirm_consume_over_tls) {
  static const char *hosts[] = {"localhost", "127.0.0.1"}; /* IP SAN too */
  for (int h = 0; h < 2; h++) {
    edp_conn_opts o;
    edp_conn_opts_init(&o);
    o.url = tls_url(hosts[h], tls_port, "ca", NULL);
    edp_conn *c = NULL;
    char why[600] = "";
    ck_assert_msg(edp_conn_open(&o, &c, why, sizeof(why)) == 0, "%s", why);
    ck_assert_ptr_nonnull(strstr(edp_conn_url(c), "amqps://guest:***@"));
    const char *q = t_unique("edp.tls");
    char queue[128];
    snprintf(queue, sizeof(queue), "%s", q);
    ck_assert_int_eq(
        edp_conn_queue_declare(c, queue, NULL, NULL, 0, NULL, NULL), 0);
    ck_assert_int_eq(edp_conn_confirm_select(c), 0);
    enum { N = 300 };
    for (int i = 0; i < N; i++) {
      char id[32], body[64];
      snprintf(id, sizeof(id), "tls-%d", i);
      snprintf(body, sizeof(body), "order %d", i);
      edp_msg m;
      edp_msg_init(&m);
      m.routing_key = queue;
      m.body = body;
      m.body_len = strlen(body);
      m.message_id = id;
      ck_assert_int_eq(edp_conn_publish(c, &m, NULL), 0);
    }
    ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 10000), 0);
    ck_assert_uint_eq(edp_conn_unconfirmed(c), 0);
    ck_assert_int_eq(edp_conn_qos(c, 50), 0);
    ck_assert_int_eq(edp_conn_consume(c, queue, NULL, NULL, 0), 0);
    static char seen[N];
    memset(seen, 0, sizeof(seen));
    int got = 0;
    while (got < N) {
      edp_delivery d;
      int rc = edp_conn_receive(c, &d, 5000);
      ck_assert_msg(rc == 0, "receive: %s after %d", edp_errname(rc), got);
      int i = -1;
      ck_assert_int_eq(sscanf(d.message_id, "tls-%d", &i), 1);
      ck_assert_msg(i == got, "out of order: %d at %d", i, got);
      seen[i] = 1;
      got++;
      ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
      edp_delivery_clear(&d);
    }
    for (int i = 0; i < N; i++)
      ck_assert(seen[i]);
    edp_conn_queue_delete(c, queue);
    edp_conn_destroy(&c);
  }
}
END_TEST

/* A client key that other users can read still works, with a warning. */
static void find_key_warning(void *ud, int level, const char *msg) {
  if (level == EDP_LOG_WARN && strstr(msg, "can be read by other users"))
    *(int *)ud = 1;
}

START_TEST(warns_of_a_readable_key) {
  char key[400], cmd[1400];
  snprintf(key, sizeof(key), "%s/open.key", tls_dir);
  snprintf(cmd, sizeof(cmd), "cp '%s/client.key' '%s' && chmod 644 '%s'",
           tls_dir, key, key);
  ck_assert_int_eq(system(cmd), 0);
  char url[2048];
  snprintf(url, sizeof(url),
           "amqps://guest:guest@localhost:%d?cacertfile=%s/ca.pem&certfile=%s/"
           "client.pem&keyfile=%s",
           tls_port, tls_dir, tls_dir, key);
  int warned = 0;
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.log = find_key_warning;
  o.log_ud = &warned;
  edp_conn *c = NULL;
  char why[600] = "";
  ck_assert_msg(edp_conn_open(&o, &c, why, sizeof(why)) == 0, "%s", why);
  ck_assert_msg(warned, "no warning for a key of mode 0644");
  edp_conn_destroy(&c);
  unlink(key);
}
END_TEST

/* ---------- refusals ---------- */

START_TEST(refused_wrong_ca) {
  expect_refused(tls_url("localhost", tls_port, "other-ca", NULL), EDP_ETLS,
                 "unknown CA");
  /* No cacertfile: the system store, which does not hold our test CA. */
  char url[300];
  snprintf(url, sizeof(url), "amqps://guest:guest@localhost:%d", tls_port);
  expect_refused(url, EDP_ETLS, "the system store");
}
END_TEST

START_TEST(refused_name_not_in_certificate) {
  expect_refused(tls_url("localhost", tls_port, "ca",
                         "&server_name_indication=rabbit.example"),
                 EDP_ETLS, "host name mismatch");
  /* A second local name of this machine that the certificate lacks. */
  char host[256];
  struct addrinfo hints = {.ai_family = AF_INET}, *ai = NULL;
  if (gethostname(host, sizeof(host)) == 0 && strcmp(host, "localhost") &&
      getaddrinfo(host, NULL, &hints, &ai) == 0) {
    struct sockaddr_in *sa = (struct sockaddr_in *)ai->ai_addr;
    int loop = sa->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
    freeaddrinfo(ai);
    if (loop)
      expect_refused(tls_url(host, tls_port, "ca", NULL), EDP_ETLS,
                     "host name mismatch");
    else
      fprintf(stderr, "  (host name %s is not 127.0.0.1: skipped)\n", host);
  }
}
END_TEST

START_TEST(refused_client_cert_of_unrelated_ca) {
  expect_refused(
      tls_url_cert("localhost", tls_port, "ca", "other-client", NULL), EDP_ETLS,
      "client certificate");
}
END_TEST

START_TEST(refused_no_client_cert) {
  /* fail_if_no_peer_cert: TLS 1.3 refuses after our first bytes, with
   * the certificate_required alert or a reset that ate it. */
  expect_refused(tls_url_cert("localhost", tls_port, "ca", NULL, NULL),
                 EDP_ETLS, "client certificate");
}
END_TEST

START_TEST(refused_wrong_kind_of_port) {
  if (plain_port())
    expect_refused(tls_url("localhost", plain_port(), "ca", NULL), EDP_ETLS,
                   "does not speak TLS");
  else
    fprintf(stderr, "  (no plain node under TLS=1: amqps:// against a plain "
                    "port not tried)\n");
  char url[300];
  snprintf(url, sizeof(url), "amqp://guest:guest@localhost:%d", tls_port);
  expect_refused(url, EDP_ECONNECT, "amqps://");
}
END_TEST

/* A peer that takes the connection and never answers the ClientHello: a
 * stall, not a refusal (69, retried), ended by the connect timeout. */
START_TEST(handshake_timeout_is_unreachable) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof(a);
  ck_assert(bind(s, (struct sockaddr *)&a, sizeof(a)) == 0);
  ck_assert(listen(s, 4) == 0); /* the kernel accepts; nobody reads */
  ck_assert(getsockname(s, (struct sockaddr *)&a, &al) == 0);
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = tls_url("localhost", ntohs(a.sin_port), "ca", NULL);
  o.connect_timeout_ms = 1000;
  edp_conn *c = NULL;
  char why[600] = "";
  long long t0 = t_now_ms();
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  long long ms = t_now_ms() - t0;
  close(s);
  fprintf(stderr, "  stalled peer -> %s (%lld ms): %s\n", edp_errname(rc), ms,
          why);
  ck_assert_int_eq(rc, EDP_ECONNECT);
  ck_assert_msg(strstr(why, "TLS handshake timed out"), "%s", why);
  ck_assert_int_ge(ms, 900);
  ck_assert_int_lt(ms, REFUSE_BOUND_MS);
}
END_TEST

/* A connection reset before the peer says a TLS word (a broker going
 * down, a balancer with nothing behind it) is no refusal either: 69, and
 * the same URL works once something answers. */
START_TEST(reset_in_handshake_is_unreachable) {
  char url[2048];
  fp_proxy *fp = tls_proxy(url, sizeof(url));
  ck_assert_int_eq(fp_refuse(fp, 1), 0);
  char why[600];
  long long ms;
  int rc = try_open(url, why, sizeof(why), &ms);
  fprintf(stderr, "  reset in handshake -> %s (%lld ms): %s\n", edp_errname(rc),
          ms, why);
  /* The reset lands in the TLS handshake, or (when it comes first) in
   * the TCP connect's last step: 69 either way. */
  ck_assert_int_eq(rc, EDP_ECONNECT);
  ck_assert_msg(strstr(why, "closed during the TLS handshake") ||
                    strstr(why, "cannot connect"),
                "%s", why);
  ck_assert_int_lt(ms, REFUSE_BOUND_MS);
  ck_assert_int_eq(fp_refuse(fp, 0), 0);
  rc = try_open(url, why, sizeof(why), &ms);
  ck_assert_msg(rc == 0, "%s", why);
  fp_stop(&fp);
}
END_TEST

/* An expired server certificate: served by openssl s_server, since the
 * node has one certificate. */
START_TEST(refused_expired_certificate) {
  int port = 0;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof(a);
  ck_assert(bind(s, (struct sockaddr *)&a, sizeof(a)) == 0);
  ck_assert(getsockname(s, (struct sockaddr *)&a, &al) == 0);
  port = ntohs(a.sin_port);
  close(s);
  char acc[64], cert[400], key[400];
  snprintf(acc, sizeof(acc), "127.0.0.1:%d", port);
  snprintf(cert, sizeof(cert), "%s/server-expired.pem", tls_dir);
  snprintf(key, sizeof(key), "%s/server-expired.key", tls_dir);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", 2);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    execlp("openssl", "openssl", "s_server", "-accept", acc, "-cert", cert,
           "-key", key, "-quiet", (char *)NULL);
    _exit(127);
  }
  ck_assert_int_gt(pid, 0);
  /* Wait (bounded) until it listens. */
  int up = 0;
  for (long long end = t_now_ms() + 5000; !up && t_now_ms() < end;) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    up = connect(c, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(c);
    if (!up)
      nanosleep(&(struct timespec){0, 50000000}, NULL);
  }
  if (up)
    expect_refused(tls_url("localhost", port, "ca", NULL), EDP_ETLS,
                   "expired certificate");
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  ck_assert_msg(up, "openssl s_server did not listen");
}
END_TEST

/* ---------- EXTERNAL ---------- */

START_TEST(external_login) {
  char url[1200];
  snprintf(url, sizeof(url),
           "amqps://localhost:%d?cacertfile=%s/ca.pem&auth_mechanism="
           "external%s",
           tls_port, tls_dir, client_cert("client"));
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  edp_conn *c = NULL;
  char why[600] = "";
  ck_assert_msg(edp_conn_open(&o, &c, why, sizeof(why)) == 0, "%s", why);
  ck_assert_ptr_nonnull(strstr(edp_conn_url(c), "auth_mechanism=external"));
  const char *q = t_unique("edp.tls.ext");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);

  /* A certificate whose CN names no user: access refused. */
  snprintf(url, sizeof(url),
           "amqps://localhost:%d?cacertfile=%s/ca.pem&auth_mechanism="
           "external%s",
           tls_port, tls_dir, client_cert("nouser"));
  expect_refused(url, EDP_EAUTH, "EXTERNAL");
  char *argv[] = {
      (char *)t_bin("edp-forward-sender"), "--url", url, "-n", "1", NULL};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  ck_assert_int_eq(t_wait(&p, 10000), 77);
}
END_TEST

/* ---------- the programs over amqps ---------- */

static void count_event(void *ud, json_t *ev) {
  int *n = ud;
  const char *e = json_string_value(json_object_get(ev, "event"));
  if (e && !strcmp(e, "summary"))
    n[0] = (int)json_integer_value(json_object_get(ev, "confirmed"));
  else if (e && !strcmp(e, "processed"))
    n[1]++;
}

START_TEST(forward_programs_over_tls) {
  const char *url = tls_url("localhost", tls_port, "ca", NULL);
  char queue[128];
  snprintf(queue, sizeof(queue), "%s", t_unique("edp.tls.fwd"));
  char *send[] = {(char *)t_bin("edp-forward-sender"),
                  "--url",
                  (char *)url,
                  "--queue",
                  queue,
                  "-n",
                  "500",
                  "--json",
                  NULL};
  int n[2] = {0, 0};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, send, NULL), 0);
  ck_assert_int_eq(t_collect(&p, 20000, count_event, n), 0);
  ck_assert_int_eq(n[0], 500);
  char *recv[] = {(char *)t_bin("edp-forward-receiver"),
                  "--url",
                  (char *)url,
                  "--queue",
                  queue,
                  "-n",
                  "500",
                  "--json",
                  NULL};
  ck_assert_int_eq(t_spawn(&p, recv, NULL), 0);
  ck_assert_int_eq(t_collect(&p, 20000, count_event, n), 0);
  ck_assert_int_eq(n[1], 500);
  /* A refused peer: exit 77 at once, nothing reported confirmed. */
  const char *bad = tls_url("localhost", tls_port, "other-ca", NULL);
  char *send_bad[] = {(char *)t_bin("edp-forward-sender"),
                      "--url",
                      (char *)bad,
                      "--queue",
                      queue,
                      "-n",
                      "5",
                      "--json",
                      NULL};
  n[0] = -1;
  long long t0 = t_now_ms();
  ck_assert_int_eq(t_spawn(&p, send_bad, NULL), 0);
  ck_assert_int_eq(t_collect(&p, 10000, count_event, n), 77);
  ck_assert_int_eq(n[0], -1);
  ck_assert_int_lt(t_now_ms() - t0, REFUSE_BOUND_MS);
}
END_TEST

/* ---------- the broker closes a TLS connection mid-send ---------- */

typedef struct midsend {
  int close_at; /* the broker closes after this many confirms; 0: never */
  int confirmed, closed, summary_confirmed, reconnects;
} midsend;

/* After 2,000 confirms the broker closes the sender's connection. The
 * sender is then still sending: this callback holds up our reading of its
 * events, so it soon blocks on a full stdout with messages in flight. */
static void close_mid_send(void *ud, json_t *ev) {
  midsend *m = ud;
  const char *e = json_string_value(json_object_get(ev, "event"));
  if (!e)
    return;
  if (!strcmp(e, "confirmed") && ++m->confirmed == m->close_at) {
    char *name[] = {"edp-forward-sender", NULL};
    m->closed = wait_pid(spawn_broker("close-conns", base_dir, name)) == 0;
  } else if (!strcmp(e, "summary")) {
    m->summary_confirmed =
        (int)json_integer_value(json_object_get(ev, "confirmed"));
    m->reconnects = (int)json_integer_value(json_object_get(ev, "reconnects"));
  }
}

/* Drains queue; every message ms-1..ms-N must be there (a republished
 * one may be there twice). Returns the number of extra copies. */
static int expect_all_in_queue(const char *url, const char *queue) {
  enum { N = 20000 };
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  edp_conn *c = NULL;
  char why[600] = "";
  ck_assert_msg(edp_conn_open(&o, &c, why, sizeof(why)) == 0, "%s", why);
  ck_assert_int_eq(edp_conn_qos(c, 500), 0);
  ck_assert_int_eq(edp_conn_consume(c, queue, NULL, NULL, 0), 0);
  static char seen[N + 1];
  memset(seen, 0, sizeof(seen));
  int distinct = 0, copies = 0;
  while (distinct < N) {
    edp_delivery d;
    int rc = edp_conn_receive(c, &d, 5000);
    ck_assert_msg(rc == 0, "receive: %s after %d of %d", edp_errname(rc),
                  distinct, N);
    int i = 0;
    ck_assert_int_eq(sscanf(d.message_id, "ms-%d", &i), 1);
    ck_assert(i >= 1 && i <= N);
    if (seen[i])
      copies++;
    else
      distinct++;
    seen[i] = 1;
    ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  edp_conn_queue_delete(c, queue);
  edp_conn_destroy(&c);
  return copies;
}

static char *const *midsend_argv(const char *url, const char *queue) {
  static char *argv[12];
  char *a[] = {(char *)t_bin("edp-forward-sender"),
               "--url",
               (char *)url,
               "--queue",
               (char *)queue,
               "-n",
               "20000",
               "--id-prefix",
               "ms",
               "--json",
               NULL};
  memcpy(argv, a, sizeof(a));
  return argv;
}

START_TEST(sender_survives_close_mid_send) {
  const char *url = tls_url("localhost", tls_port, "ca", NULL);
  char queue[128];
  snprintf(queue, sizeof(queue), "%s", t_unique("edp.tls.midsend"));
  midsend m = {.close_at = 2000};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, midsend_argv(url, queue), NULL), 0);
  ck_assert_int_eq(t_collect(&p, 60000, close_mid_send, &m), 0);
  ck_assert_msg(m.closed, "the broker did not close the connection");
  ck_assert_int_ge(m.reconnects, 1);
  ck_assert_int_eq(m.summary_confirmed, 20000);
  int copies = expect_all_in_queue(url, queue);
  fprintf(stderr,
          "  broker close after 2000 confirms: %d reconnect(s), 20000 of "
          "20000 in the queue, %d extra copies\n",
          m.reconnects, copies);
}
END_TEST

/* The TLS stream cut mid-record with messages in flight (a fault proxy
 * in front of the node; the certificate names 127.0.0.1). */
START_TEST(sender_survives_cut_mid_record) {
  char url[2048];
  fp_proxy *fp = tls_proxy(url, sizeof(url));
  char queue[128];
  snprintf(queue, sizeof(queue), "%s", t_unique("edp.tls.cut"));
  midsend m = {0};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, midsend_argv(url, queue), NULL), 0);
  ck_assert_int_eq(fp_wait_connections(fp, 1, 10000), 0);
  /* 500 kB more from the client: well into the 20,000 messages. */
  ck_assert_int_eq(fp_cut_once(fp, 500000, FP_C2S), 0);
  ck_assert_int_eq(t_collect(&p, 60000, close_mid_send, &m), 0);
  ck_assert_int_ge(fp_connections(fp), 2);
  ck_assert_int_ge(m.reconnects, 1);
  ck_assert_int_eq(m.summary_confirmed, 20000);
  int copies = expect_all_in_queue(url, queue);
  fprintf(stderr,
          "  TLS cut after 500 kB: %d reconnect(s), 20000 of 20000 in the "
          "queue, %d extra copies\n",
          m.reconnects, copies);
  fp_stop(&fp);
}
END_TEST

int main(void) {
  node_start();
  Suite *s = suite_create("tls");
  TCase *tc = tcase_create("tls");
  tcase_add_test(tc, publish_confirm_consume_over_tls);
  tcase_add_test(tc, warns_of_a_readable_key);
  tcase_add_test(tc, refused_wrong_ca);
  tcase_add_test(tc, refused_name_not_in_certificate);
  tcase_add_test(tc, refused_client_cert_of_unrelated_ca);
  tcase_add_test(tc, refused_no_client_cert);
  tcase_add_test(tc, refused_wrong_kind_of_port);
  tcase_add_test(tc, refused_expired_certificate);
  tcase_add_test(tc, handshake_timeout_is_unreachable);
  tcase_add_test(tc, reset_in_handshake_is_unreachable);
  tcase_add_test(tc, external_login);
  tcase_add_test(tc, forward_programs_over_tls);
  tcase_add_test(tc, sender_survives_close_mid_send);
  tcase_add_test(tc, sender_survives_cut_mid_record);
  tcase_set_timeout(tc, 60);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
