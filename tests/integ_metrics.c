/*
 * integ_metrics.c - the programs' --metrics endpoint against the
 * harness's broker: every counter equals the count of the same run's
 * --json events, exactly (sender and receiver, retries and dead letters
 * included); promtool accepts each /metrics; /healthz says 503 under a
 * memory alarm and while the node restarts, and 200 again after; a real
 * Prometheus server (package prometheus) scrapes a receiver and its HTTP
 * API returns the processed count.
 */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "edp.h"
#include "t_nodes.h"
#include "testlib.h"

/* ---------- HTTP and the text format ---------- */

/* GET http://127.0.0.1:port{path}; *status receives the status code (0
 * when nothing answered). Returns the body (free it) or NULL. */
static char *http_get(int port, const char *path, int *status) {
  *status = 0;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
    close(fd);
    return NULL;
  }
  char req[1024];
  int n = snprintf(req, sizeof(req),
                   "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
  ck_assert_int_eq(write(fd, req, (size_t)n), n);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap + 1);
  long long deadline = t_now_ms() + 10000;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    long long left = deadline - t_now_ms();
    if (left <= 0 || poll(&p, 1, (int)left) != 1)
      break;
    if (len == cap)
      buf = realloc(buf, (cap *= 2) + 1);
    ssize_t r = read(fd, buf + len, cap - len);
    if (r <= 0)
      break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = '\0';
  char *body = strstr(buf, "\r\n\r\n");
  if (sscanf(buf, "HTTP/1.%*d %d", status) != 1 || !body) {
    free(buf);
    return NULL;
  }
  memmove(buf, body + 4, strlen(body + 4) + 1);
  return buf;
}

/* The sum of every sample of family name (all label sets) in text; -1 if
 * there is none. */
static double metric(const char *text, const char *name) {
  size_t nl = strlen(name);
  double sum = -1;
  for (const char *p = text; p && *p;) {
    const char *end = strchr(p, '\n');
    if (!strncmp(p, name, nl) && (p[nl] == '{' || p[nl] == ' ')) {
      const char *sp = p + nl;
      /* The value follows the last space of the line. */
      for (const char *q = sp; q < (end ? end : p + strlen(p)); q++)
        if (*q == ' ')
          sp = q;
      sum = (sum < 0 ? 0 : sum) + atof(sp + 1);
    }
    p = end ? end + 1 : NULL;
  }
  return sum;
}

/* promtool check metrics on text: its exit code (0: accepted). */
static int promtool(const char *text) {
  char path[] = "/tmp/edp-integ-metrics.XXXXXX";
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

static char *scrape(int port) {
  int status = 0;
  char *text = http_get(port, "/metrics", &status);
  ck_assert_int_eq(status, 200);
  ck_assert_ptr_nonnull(text);
  ck_assert_msg(promtool(text) == 0, "promtool refused:\n%s", text);
  return text;
}

/* /healthz: the status, and the reason line into reason. */
static int health(int port, char *reason, size_t len) {
  int status = 0;
  char *body = http_get(port, "/healthz", &status);
  snprintf(reason, len, "%s", body ? body : "");
  free(body);
  return status;
}

/* ---------- the programs' events ---------- */

typedef struct counts {
  int port; /* from metrics_listening */
  int received, processed, retried, dead, duplicate, confirmed, nacked;
  int returned, blocked, unblocked, lost, reconnected, hold, summary;
  long long retries;         /* the dispatcher's summary */
  int priority;              /* processed events of kind "priority" */
  int sent, confirmed_by[2]; /* senders; multi-sender: per broker */
  /* the watch pattern: server and services */
  int registered, notified, removed, rejected, changed, changes;
  char queue[256]; /* a service's watch queue */
} counts;

static void count_event(counts *c, json_t *ev) {
  const char *k = json_string_value(json_object_get(ev, "event"));
  if (!k)
    return;
  if (!strcmp(k, "metrics_listening"))
    c->port = (int)json_integer_value(json_object_get(ev, "port"));
  c->received += !strcmp(k, "received");
  c->processed += !strcmp(k, "processed");
  c->priority +=
      !strcmp(k, "processed") &&
      !strcmp(json_string_value(json_object_get(ev, "kind")) ?: "", "priority");
  c->retried += !strcmp(k, "retried");
  c->dead += !strcmp(k, "dead_lettered");
  c->duplicate += !strcmp(k, "duplicate");
  c->confirmed += !strcmp(k, "confirmed");
  c->nacked += !strcmp(k, "nacked");
  c->returned += !strcmp(k, "returned");
  c->blocked += !strcmp(k, "blocked");
  c->unblocked += !strcmp(k, "unblocked");
  c->lost += !strcmp(k, "connection_lost");
  c->reconnected += !strcmp(k, "reconnected");
  c->hold += !strcmp(k, "metrics_hold");
  c->summary += !strcmp(k, "summary");
  c->sent += !strcmp(k, "sent");
  json_int_t b = json_integer_value(json_object_get(ev, "broker"));
  if (!strcmp(k, "confirmed") && b >= 0 && b < 2)
    c->confirmed_by[b]++;
  c->registered += !strcmp(k, "registered");
  c->notified += !strcmp(k, "notified");
  c->removed += !strcmp(k, "removed");
  c->rejected += !strcmp(k, "rejected");
  c->changed += !strcmp(k, "changed");
  c->changes +=
      !strcmp(k, "config") && !json_is_true(json_object_get(ev, "initial"));
  if (!strcmp(k, "registered") && json_object_get(ev, "queue"))
    snprintf(c->queue, sizeof(c->queue), "%s",
             json_string_value(json_object_get(ev, "queue")));
  if (!strcmp(k, "summary") && json_object_get(ev, "retries"))
    c->retries = json_integer_value(json_object_get(ev, "retries"));
}

/* Reads events into c until done(c) holds; 1 then, 0 on EOF or timeout. */
static int await(t_proc *p, counts *c, int (*done)(const counts *),
                 int timeout_ms) {
  char line[8192];
  long long deadline = t_now_ms() + timeout_ms;
  while (!done(c)) {
    long long left = deadline - t_now_ms();
    if (left <= 0 || t_readline(p, line, sizeof(line), (int)left) != 1)
      return 0;
    json_t *ev = json_loads(line, 0, NULL);
    if (ev) {
      count_event(c, ev);
      json_decref(ev);
    }
  }
  return 1;
}

static int has_port(const counts *c) { return c->port > 0; }
static int has_hold(const counts *c) { return c->hold > 0; }
static int has_blocked(const counts *c) { return c->blocked > 0; }
static int has_unblocked(const counts *c) { return c->unblocked > 0; }

static int has_registered(const counts *c) { return c->registered > 0; }

/* prog with --queue (or no queue when NULL) and extra; with keep_stdin its
 * stdin stays open for t_write. */
static void spawn_with(t_proc *p, const char *prog, const char *queue,
                       char **extra, int keep_stdin) {
  char *argv[32] = {(char *)t_bin(prog), "--url",
                    (char *)t_url(),     "--json",
                    "--metrics",         "127.0.0.1:0"};
  int n = 6;
  if (queue) {
    argv[n++] = "--queue";
    argv[n++] = (char *)queue;
  }
  for (; extra && *extra && n < 31; extra++)
    argv[n++] = *extra;
  argv[n] = NULL;
  ck_assert_int_eq(keep_stdin ? t_spawn_stdin(p, argv) : t_spawn(p, argv, NULL),
                   0);
}

static void spawn(t_proc *p, const char *prog, const char *queue,
                  char **extra) {
  spawn_with(p, prog, queue, extra, 0);
}

static void run_quiet(char **argv) {
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  char line[4096];
  while (t_readline(&p, line, sizeof(line), 60000) == 1)
    ;
  ck_assert_int_eq(t_wait(&p, 60000), 0);
}

/* Runs a sender (or any program) on the harness's broker to the end:
 * prog --url URL, then the NULL-terminated arguments. */
static void feed(const char *prog, ...) {
  char *argv[32] = {(char *)t_bin(prog), "--url", (char *)t_url()};
  int n = 3;
  va_list ap;
  va_start(ap, prog);
  for (const char *a; (a = va_arg(ap, const char *)) && n < 31;)
    argv[n++] = (char *)a;
  va_end(ap);
  argv[n] = NULL;
  run_quiet(argv);
}

#define N_MSGS 300

/* The sender's and the receiver's counters against their own events:
 * every message once, a fifth of the attempts failing, a retry allowed
 * once, so that processed, retried and dead-lettered all occur. */
START_TEST(counters_equal_json_events) {
  const char *q = t_unique("metrics.fwd");
  t_proc s;
  char *sx[] = {"--count", "300", "--metrics-hold", "30000", NULL};
  spawn(&s, "edp-forward-sender", q, sx);
  counts sc = {0};
  ck_assert(await(&s, &sc, has_hold, 60000));
  ck_assert_int_eq(sc.summary, 1);
  ck_assert_int_eq(sc.confirmed, N_MSGS);
  char *text = scrape(sc.port);
  ck_assert(metric(text, "edp_messages_sent_total") == N_MSGS);
  ck_assert(metric(text, "edp_messages_published_total") == N_MSGS);
  ck_assert(metric(text, "edp_messages_confirmed_total") == sc.confirmed);
  ck_assert(metric(text, "edp_messages_nacked_total") == sc.nacked);
  ck_assert(metric(text, "edp_messages_returned_total") == sc.returned);
  ck_assert(metric(text, "edp_messages_republished_total") == 0);
  ck_assert(metric(text, "edp_confirm_latency_seconds_count") == N_MSGS);
  free(text);
  char reason[256];
  ck_assert_int_eq(health(sc.port, reason, sizeof(reason)), 503);
  ck_assert_str_eq(reason, "finished\n");
  t_signal(&s, SIGTERM);
  ck_assert_int_eq(t_wait(&s, 10000), 0);

  t_proc r;
  char *rx[] = {"--fail-every",
                "5",
                "--max-retries",
                "1",
                "--idle-timeout",
                "3000",
                "--metrics-hold",
                "30000",
                NULL};
  spawn(&r, "edp-forward-receiver", q, rx);
  counts rc = {0};
  ck_assert(await(&r, &rc, has_hold, 120000));
  ck_assert_int_eq(rc.processed + rc.dead, N_MSGS);
  ck_assert_int_gt(rc.retried, 0);
  ck_assert_int_gt(rc.dead, 0);
  text = scrape(rc.port);
  ck_assert(metric(text, "edp_messages_processed_total") == rc.processed);
  ck_assert(metric(text, "edp_messages_retried_total") == rc.retried);
  ck_assert(metric(text, "edp_messages_dead_lettered_total") == rc.dead);
  ck_assert(metric(text, "edp_messages_failed_total") == rc.retried + rc.dead);
  ck_assert(metric(text, "edp_messages_duplicates_total") == rc.duplicate);
  ck_assert(metric(text, "edp_messages_delivered_total") == rc.received);
  ck_assert(metric(text, "edp_processing_duration_seconds_count") ==
            rc.received);
  /* Each retry or dead-letter copy is a confirmed publish. */
  ck_assert(metric(text, "edp_messages_published_total") ==
            rc.retried + rc.dead);
  ck_assert(metric(text, "edp_messages_confirmed_total") ==
            rc.retried + rc.dead);
  ck_assert(metric(text, "edp_consumers") == 1);
  ck_assert(metric(text, "edp_connection_up") == 1);
  free(text);
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_wait(&r, 10000), 0);
}
END_TEST

/* A sender at a steady rate: blocked by a memory alarm it reports 503 with
 * the reason, 200 once the alarm cleared, and counts the blocked period. */
START_TEST(healthz_memory_alarm) {
  const char *q = t_unique("metrics.alarm");
  t_proc s;
  char *sx[] = {"--count", "100000", "--rate", "50", NULL};
  spawn(&s, "edp-forward-sender", q, sx);
  counts c = {0};
  ck_assert(await(&s, &c, has_port, 30000));
  char reason[256];
  long long t0 = t_now_ms();
  int st = 0;
  while ((st = health(c.port, reason, sizeof(reason))) != 200 &&
         t_now_ms() - t0 < 10000)
    usleep(50000);
  ck_assert_int_eq(st, 200);
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0"), 0);
  int ok = await(&s, &c, has_blocked, 30000);
  st = health(c.port, reason, sizeof(reason));
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0.4"), 0);
  ck_assert_msg(ok, "no blocked event");
  ck_assert_int_eq(st, 503);
  ck_assert_ptr_nonnull(strstr(reason, "blocked"));
  ck_assert(await(&s, &c, has_unblocked, 30000));
  ck_assert_int_eq(health(c.port, reason, sizeof(reason)), 200);
  char *text = scrape(c.port);
  ck_assert(metric(text, "edp_connection_blocked_total") == 1);
  ck_assert(metric(text, "edp_connection_blocked_seconds_total") > 0);
  ck_assert(metric(text, "edp_connection_blocked") == 0);
  free(text);
  t_signal(&s, SIGTERM);
  ck_assert_int_eq(t_wait(&s, 10000), 130);
}
END_TEST

static void *restart_node(void *arg) {
  int *rc = arg;
  *rc = t_broker("restart", NULL, NULL, 0);
  return NULL;
}

/* A receiver across a node restart: 503 while its connection is down,
 * 200 once it reconnected and consumes again; the counters saw one loss
 * and one reconnect. */
START_TEST(healthz_node_restart) {
  const char *q = t_unique("metrics.restart");
  t_proc r;
  spawn(&r, "edp-forward-receiver", q, NULL);
  counts c = {0};
  ck_assert(await(&r, &c, has_port, 30000));
  char reason[256] = "";
  long long t0 = t_now_ms();
  while (health(c.port, reason, sizeof(reason)) != 200 &&
         t_now_ms() - t0 < 10000)
    usleep(50000);
  ck_assert_str_eq(reason, "ok\n");
  pthread_t t;
  int restart_rc = -1;
  pthread_create(&t, NULL, restart_node, &restart_rc);
  int seen_503 = 0;
  char down_reason[256] = "";
  t0 = t_now_ms();
  while (!seen_503 && t_now_ms() - t0 < 60000) {
    if (health(c.port, reason, sizeof(reason)) == 503) {
      seen_503 = 1;
      snprintf(down_reason, sizeof(down_reason), "%s", reason);
    } else {
      usleep(20000);
    }
  }
  pthread_join(t, NULL);
  ck_assert_int_eq(restart_rc, 0);
  ck_assert_msg(seen_503, "/healthz never said 503 during the restart");
  ck_assert_msg(strstr(down_reason, "reconnecting"), "reason: %s", down_reason);
  t0 = t_now_ms();
  int st = 0;
  while ((st = health(c.port, reason, sizeof(reason))) != 200 &&
         t_now_ms() - t0 < 40000)
    usleep(100000);
  ck_assert_msg(st == 200, "still %d after the restart: %s", st, reason);
  char *text = scrape(c.port);
  ck_assert(metric(text, "edp_connection_lost_total") == 1);
  ck_assert(metric(text, "edp_connection_reconnects_total") == 1);
  ck_assert(metric(text, "edp_consumers") == 1);
  free(text);
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_wait(&r, 10000), 130);
}
END_TEST

/* The thread delegate dispatcher: its counters against its events and
 * summary; a gauge and a busy counter per worker. */
START_TEST(dispatcher_counters) {
  const char *q = t_unique("metrics.td");
  const char *x = t_unique("metrics.tdx");
  char *sargv[] = {(char *)t_bin("edp-trade-sender"),
                   "--url",
                   (char *)t_url(),
                   "--exchange",
                   (char *)x,
                   "--queue",
                   (char *)q,
                   "--accounts",
                   "20",
                   "--count",
                   "200",
                   NULL};
  t_proc s;
  ck_assert_int_eq(t_spawn(&s, sargv, NULL), 0);
  char line[4096];
  while (t_readline(&s, line, sizeof(line), 30000) == 1)
    ;
  ck_assert_int_eq(t_wait(&s, 30000), 0);
  t_proc d;
  char *dx[] = {"--exchange",
                (char *)x,
                "--queue",
                (char *)q,
                "--workers",
                "4",
                "--fail-every",
                "10",
                "--poison-seq",
                "7",
                "--max-retries",
                "1",
                "--retry-delay-ms",
                "0",
                "--idle-timeout",
                "2000",
                "--metrics-hold",
                "30000",
                NULL};
  spawn(&d, "edp-trade-dispatcher", NULL, dx);
  counts c = {0};
  ck_assert(await(&d, &c, has_hold, 120000));
  ck_assert_int_eq(c.summary, 1);
  ck_assert_int_eq(c.processed + c.dead, 200);
  ck_assert_int_gt(c.dead, 0);
  ck_assert_int_gt(c.retries, 0);
  char *text = scrape(c.port);
  ck_assert(metric(text, "edp_messages_processed_total") == c.processed);
  ck_assert(metric(text, "edp_messages_dead_lettered_total") == c.dead);
  ck_assert(metric(text, "edp_messages_retried_total") == c.retries);
  ck_assert(metric(text, "edp_messages_delivered_total") == 200);
  ck_assert(metric(text, "edp_messages_published_total") == c.dead);
  ck_assert(metric(text, "edp_processing_duration_seconds_count") == 200);
  ck_assert(metric(text, "edp_td_in_flight") == 0);
  ck_assert(metric(text, "edp_worker_busy") == 0);
  ck_assert(metric(text, "edp_worker_busy_seconds_total") > 0);
  int workers = 0;
  for (const char *p = text; (p = strstr(p, "\nedp_worker_busy{")); p++)
    workers++;
  ck_assert_int_eq(workers, 4);
  free(text);
  t_signal(&d, SIGTERM);
  ck_assert_int_eq(t_wait(&d, 10000), 0);
}
END_TEST

/* Runs prog with args to the end (its output read and dropped). */

/* The value of the one sample of name with labels containing sel. */
static double metric_with(const char *text, const char *name, const char *sel) {
  size_t nl = strlen(name);
  for (const char *p = text; p && *p;) {
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (!strncmp(p, name, nl) && p[nl] == '{') {
      char line[1024];
      snprintf(line, sizeof(line), "%.*s", (int)len, p);
      if (strstr(line, sel))
        return atof(strrchr(line, ' ') + 1);
    }
    p = end ? end + 1 : NULL;
  }
  return -1;
}

/* Ambulance: processed and the end-to-end latency per lane. */
START_TEST(ambulance_lanes) {
  const char *q = t_unique("metrics.amb");
  feed("edp-ambulance-sender", "--queue", q, "--standard", "30", "--priority",
       "10", "--rate", "0", NULL);
  t_proc r;
  /* --work-ms 1: the default 2 s of work per message (the demo's pace)
   * made this case take 40 s. */
  char *rx[] = {"--queue",        (char *)q,   "--idle-timeout",
                "2000",           "--work-ms", "1",
                "--metrics-hold", "30000",     NULL};
  spawn(&r, "edp-ambulance-receiver", NULL, rx);
  counts c = {0};
  ck_assert(await(&r, &c, has_hold, 60000));
  ck_assert_int_eq(c.processed, 40);
  ck_assert_int_eq(c.priority, 10);
  char *text = scrape(c.port);
  ck_assert(metric_with(text, "edp_messages_processed_total",
                        "lane=\"priority\"") == c.priority);
  ck_assert(metric_with(text, "edp_messages_processed_total",
                        "lane=\"standard\"") == c.processed - c.priority);
  ck_assert(metric_with(text, "edp_message_latency_seconds_count",
                        "lane=\"priority\"") == c.priority);
  ck_assert(metric(text, "edp_message_latency_seconds_count") == 40);
  free(text);
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_wait(&r, 10000), 0);
}
END_TEST

/* Supervisor: processed messages and the consumer gauges. */
START_TEST(supervisor_gauges) {
  const char *q = t_unique("metrics.sup");
  feed("edp-forward-sender", "--queue", q, "--count", "200", NULL);
  t_proc s;
  char *sx[] = {"--queue",
                (char *)q,
                "--min",
                "1",
                "--max",
                "4",
                "--per-consumer",
                "20",
                "--interval-ms",
                "100",
                "--idle-timeout",
                "2000",
                "--metrics-hold",
                "30000",
                NULL};
  spawn(&s, "edp-supervisor", NULL, sx);
  counts c = {0};
  ck_assert(await(&s, &c, has_hold, 60000));
  ck_assert_int_eq(c.processed, 200);
  char *text = scrape(c.port);
  ck_assert(metric(text, "edp_messages_processed_total") == 200);
  ck_assert(metric(text, "edp_queue_depth") == 0);
  /* The hold comes after the stop: every consumer retired. */
  ck_assert(metric(text, "edp_sup_consumers_active") == 0);
  ck_assert(metric(text, "edp_sup_consumers_live") == 0);
  ck_assert(metric(text, "edp_sup_consumers_started_total") >= 1);
  ck_assert(metric(text, "edp_sup_consumers_wanted") >= 0);
  free(text);
  t_signal(&s, SIGTERM);
  ck_assert_int_eq(t_wait(&s, 20000), 0);
}
END_TEST

/* Multi-broker consumer: per-broker state and counts. */
START_TEST(multi_receiver_brokers) {
  const char *q = t_unique("metrics.multi");
  feed("edp-multi-sender", "--queue", q, "--count", "100", NULL);
  t_proc r;
  char *rx[] = {"--queue",        (char *)q, "--count", "100",
                "--metrics-hold", "30000",   NULL};
  spawn(&r, "edp-multi-receiver", NULL, rx);
  counts c = {0};
  ck_assert(await(&r, &c, has_hold, 60000));
  ck_assert_int_eq(c.processed, 100);
  char *text = scrape(c.port);
  ck_assert(metric_with(text, "edp_messages_processed_total", "broker=\"0\"") ==
            100);
  /* The hold comes after the stop: consumed once, not any more. */
  ck_assert(metric(text, "edp_multi_broker_ups_total") == 1);
  ck_assert(metric(text, "edp_multi_broker_up") == 0);
  ck_assert_ptr_null(strstr(text, "guest")); /* no credentials */
  free(text);
  char reason[256];
  ck_assert_int_eq(health(c.port, reason, sizeof(reason)), 503);
  ck_assert_str_eq(reason, "finished\n");
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_wait(&r, 10000), 0);
}
END_TEST

/* ---------- the watch pattern ---------- */

/* Frees the last scrape, stops p (SIGTERM) and checks its exit code. */
static void done_with(t_proc *p, char *text, int code) {
  free(text);
  t_signal(p, SIGTERM);
  ck_assert_int_eq(t_wait(p, 10000), code);
}

/* Waits (bounded) until the broker deleted queue, as it does with an
 * exclusive queue soon after its connection dropped. */
static void await_gone(const char *queue) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  int rc = 0;
  for (long long t0 = t_now_ms();
       (rc = edp_conn_queue_inspect(c, queue, NULL, NULL)) == 0 &&
       t_now_ms() - t0 < 10000;)
    usleep(20000);
  edp_conn_destroy(&c);
  ck_assert_int_eq(rc, EDP_ENOTFOUND);
}

/* A config server on rq (store: a new file in /tmp, its path into store)
 * pinging each watch every prune seconds; its metrics port into sc. */
static void config_server(t_proc *srv, counts *sc, const char *rq, char *store,
                          size_t len, char *prune) {
  snprintf(store, len, "/tmp/%s.json", t_unique("edp-metrics-store"));
  char *sx[] = {
      "--store", store, "--request-queue", (char *)rq, "--prune-interval",
      prune,     NULL};
  spawn_with(srv, "edp-config-server", NULL, sx, 1);
  ck_assert(await(srv, sc, has_port, 30000));
}

/* A watch service with args, awaited until registered (c->queue). */
static void watch_service(t_proc *p, counts *c, char **args) {
  spawn(p, "edp-watch-service", NULL, args);
  ck_assert(await(p, c, has_registered, 30000));
}

static int has_removed(const counts *c) { return c->removed > 0; }

/* Scrapes port until family name sums to at least v, for 10 s at most;
 * returns the last sum. */
static double await_metric(int port, const char *name, double v) {
  double got = -1;
  for (long long t0 = t_now_ms(); t_now_ms() - t0 < 10000; usleep(100000)) {
    char *text = scrape(port);
    got = metric(text, name);
    free(text);
    if (got >= v)
      break;
  }
  return got;
}

/* Three changes reach a service of every key (3) and one of "color" (2);
 * a third service, killed, makes the first change come back. */
static int watch_settled(const counts *c) {
  return c->notified == 5 && c->removed == 1;
}

/* Config server and services: their counters against the same run's
 * events; the killed watcher shows up as a returned notification and a
 * removed watch. */
START_TEST(watch_counters) {
  const char *rq = t_unique("metrics.config.q");
  char store[300];
  t_proc srv, svc[3];
  counts sc = {0}, c[3] = {{0}};
  config_server(&srv, &sc, rq, store, sizeof(store), "30");
  char *all[] = {"--request-queue", (char *)rq, "--name",
                 "svc-all",         "--count",  "3",
                 "--metrics-hold",  "30000",    NULL};
  char *color[] = {"--request-queue", (char *)rq, "--name",  "svc-color",
                   "--keys",          "color",    "--count", "2",
                   "--metrics-hold",  "30000",    NULL};
  char *doomed[] = {"--request-queue", (char *)rq, "--name", "svc-gone", NULL};
  char **args[3] = {all, color, doomed};
  for (int i = 0; i < 3; i++)
    watch_service(&svc[i], &c[i], args[i]);
  t_signal(&svc[2], SIGKILL);
  ck_assert_int_eq(t_wait(&svc[2], 10000), 128 + SIGKILL);
  await_gone(c[2].queue);
  ck_assert_int_eq(t_write(&srv, "set color blue\nset size 3\nset color red\n"),
                   0);
  const int want[2] = {3, 2};
  for (int i = 0; i < 2; i++) {
    ck_assert(await(&svc[i], &c[i], has_hold, 30000));
    ck_assert_int_eq(c[i].changes, want[i]);
    char *text = scrape(c[i].port);
    ck_assert(metric(text, "edp_watch_notifications_received_total") ==
              c[i].changes);
    ck_assert(metric(text, "edp_watch_client_registrations_total") == 1);
    ck_assert(metric(text, "edp_watch_client_stale_total") == 0);
    ck_assert(metric(text, "edp_watch_client_dropped_total") == 0);
    ck_assert(metric(text, "edp_messages_delivered_total") == c[i].changes + 1);
    done_with(&svc[i], text, 0);
  }
  ck_assert(await(&srv, &sc, watch_settled, 30000));
  ck_assert_int_eq(sc.registered, 3);
  ck_assert_int_eq(sc.changed, 3);
  char *text = scrape(sc.port);
  ck_assert(metric(text, "edp_watch_watches") == sc.registered - sc.removed);
  ck_assert(metric(text, "edp_watch_keys") == 2);
  ck_assert(metric(text, "edp_watch_registrations_total") == sc.registered);
  ck_assert(metric(text, "edp_watch_changes_total") == sc.changed);
  ck_assert(metric(text, "edp_watch_notifications_sent_total") == sc.notified);
  ck_assert(metric(text, "edp_watch_notifications_returned_total") == 1);
  ck_assert(metric(text, "edp_watch_watches_removed_total") == sc.removed);
  ck_assert(metric(text, "edp_watch_requests_rejected_total") == sc.rejected);
  ck_assert(metric(text, "edp_messages_returned_total") == 1);
  ck_assert(metric(text, "edp_consumers") == 1);
  char reason[256];
  ck_assert_int_eq(health(sc.port, reason, sizeof(reason)), 200);
  done_with(&srv, text, 130);
  unlink(store);
}
END_TEST

/* A watcher killed while nothing changes: the server's ping comes back
 * and the watch leaves the registry; the living watcher's pings are
 * neither returned nor taken for foreign messages. */
START_TEST(watch_orphan_pings) {
  const char *rq = t_unique("metrics.config.q");
  char store[300];
  t_proc srv, live, gone;
  counts sc = {0}, lc = {0}, gc = {0};
  config_server(&srv, &sc, rq, store, sizeof(store), "1");
  char *largs[] = {"--request-queue", (char *)rq, "--name", "svc-live", NULL};
  char *gargs[] = {"--request-queue", (char *)rq, "--name", "svc-gone", NULL};
  watch_service(&live, &lc, largs);
  watch_service(&gone, &gc, gargs);
  t_signal(&gone, SIGKILL);
  ck_assert_int_eq(t_wait(&gone, 10000), 128 + SIGKILL);
  ck_assert(await(&srv, &sc, has_removed, 30000));
  char *text = scrape(sc.port);
  ck_assert(metric(text, "edp_watch_pings_returned_total") == 1);
  ck_assert(metric(text, "edp_watch_watches_removed_total") == sc.removed);
  ck_assert(metric(text, "edp_watch_notifications_returned_total") == 0);
  ck_assert(metric(text, "edp_watch_watches") == 1);
  ck_assert(metric(text, "edp_messages_returned_total") == 1);
  free(text);
  /* The living service got a ping besides its reply, and took it as the
   * server's: nothing dropped. */
  ck_assert(await_metric(lc.port, "edp_messages_delivered_total", 2) >= 2);
  text = scrape(lc.port);
  ck_assert(metric(text, "edp_watch_client_dropped_total") == 0);
  done_with(&live, text, 130);
  done_with(&srv, NULL, 130);
  unlink(store);
}
END_TEST

/* ---------- senders ---------- */

/* The batch senders: sent and confirmed counters against their events. */
START_TEST(senders_sent_counts) {
  const char *x = t_unique("metrics.tx");
  char *trade[] = {"--exchange", (char *)x, "--count", "40",
                   "--accounts", "4",       NULL};
  char *amb[] = {"--standard", "5", "--priority", "3", "--rate", "0", NULL};
  char *load[] = {"--rate", "200", "--duration", "200ms", NULL};
  const struct {
    const char *prog;
    char **args;
    int n;
  } runs[] = {{"edp-trade-sender", trade, 40},
              {"edp-ambulance-sender", amb, 8},
              {"edp-load", load, 40}};
  for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
    char *extra[16] = {"--metrics-hold", "30000"};
    for (int k = 0; runs[i].args[k]; k++)
      extra[2 + k] = runs[i].args[k];
    t_proc s;
    spawn(&s, runs[i].prog, t_unique("metrics.sent"), extra);
    counts c = {0};
    ck_assert(await(&s, &c, has_hold, 60000));
    ck_assert_int_eq(c.sent, runs[i].n);
    char *text = scrape(c.port);
    ck_assert_msg(metric(text, "edp_messages_sent_total") == c.sent, "%s",
                  runs[i].prog);
    ck_assert(metric(text, "edp_messages_confirmed_total") == c.sent);
    if (i == 1)
      ck_assert(metric_with(text, "edp_messages_sent_total",
                            "lane=\"priority\"") == 3);
    done_with(&s, text, 0);
  }
}
END_TEST

/* Multi-broker producer over the harness's node and one of our own: per
 * broker, published and confirmed equal its confirmed events, in the
 * broker's series and in its connection's. */
START_TEST(multi_sender_brokers) {
  const char *q = t_unique("metrics.msend");
  char *sx[] = {"--url",          t_node_url[0], "--count", "200",
                "--metrics-hold", "30000",       NULL};
  t_proc s;
  spawn(&s, "edp-multi-sender", q, sx);
  counts c = {0};
  ck_assert(await(&s, &c, has_hold, 60000));
  ck_assert_int_eq(c.summary, 1);
  ck_assert_int_eq(c.confirmed, 200);
  char *text = scrape(c.port);
  for (int b = 0; b < 2; b++) {
    char sel[32];
    snprintf(sel, sizeof(sel), "broker=\"%d\"", b);
    ck_assert_int_gt(c.confirmed_by[b], 0);
    ck_assert(metric_with(text, "edp_multi_broker_published_total", sel) ==
              c.confirmed_by[b]);
    ck_assert(metric_with(text, "edp_multi_broker_confirmed_total", sel) ==
              c.confirmed_by[b]);
    ck_assert(metric_with(text, "edp_multi_broker_up", sel) == 1);
    /* Each broker's connection as a series of its own. */
    snprintf(sel, sizeof(sel), "conn=\"broker-%d\"", b);
    ck_assert(metric_with(text, "edp_messages_published_total", sel) ==
              c.confirmed_by[b]);
    ck_assert(metric_with(text, "edp_messages_confirmed_total", sel) ==
              c.confirmed_by[b]);
  }
  ck_assert(metric(text, "edp_multi_broker_nacked_total") == c.nacked);
  ck_assert(metric(text, "edp_multi_broker_rerouted_total") == 0);
  ck_assert(metric(text, "edp_multi_broker_unconfirmed") == 0);
  /* Labelled host:port, never the URL. */
  edp_url u;
  ck_assert_int_eq(edp_url_parse(t_node_url[0], &u, NULL, 0), 0);
  char sel[400];
  snprintf(sel, sizeof(sel), "broker=\"1\",host=\"%s:%d\"", u.host, u.port);
  ck_assert(metric_with(text, "edp_multi_broker_up", sel) == 1);
  ck_assert_ptr_null(strstr(text, "guest"));
  char reason[256];
  ck_assert_int_eq(health(c.port, reason, sizeof(reason)), 503);
  ck_assert_str_eq(reason, "finished\n");
  done_with(&s, text, 0);
}
END_TEST

/* ---------- a real Prometheus server ---------- */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

/* The value of the first result of an instant query, -1 if none yet. */
static double prom_query(int port, const char *query) {
  char path[512];
  snprintf(path, sizeof(path), "/api/v1/query?query=%s", query);
  int status = 0;
  char *body = http_get(port, path, &status);
  double v = -1;
  json_t *j = body && status == 200 ? json_loads(body, 0, NULL) : NULL;
  json_t *res = json_object_get(json_object_get(j, "data"), "result");
  json_t *val = json_object_get(json_array_get(res, 0), "value");
  if (json_is_string(json_array_get(val, 1)))
    v = atof(json_string_value(json_array_get(val, 1)));
  json_decref(j);
  free(body);
  return v;
}

START_TEST(prometheus_scrapes_receiver) {
  const char *q = t_unique("metrics.prom");
  /* Messages first, so the receiver has them at once. */
  char *sargv[] = {(char *)t_bin("edp-forward-sender"),
                   "--url",
                   (char *)t_url(),
                   "--queue",
                   (char *)q,
                   "--count",
                   "120",
                   NULL};
  t_proc s;
  ck_assert_int_eq(t_spawn(&s, sargv, NULL), 0);
  char line[4096];
  while (t_readline(&s, line, sizeof(line), 30000) == 1)
    ;
  ck_assert_int_eq(t_wait(&s, 30000), 0);
  t_proc r;
  spawn(&r, "edp-forward-receiver", q, NULL);
  counts c = {0};
  ck_assert(await(&r, &c, has_port, 30000));

  char dir[] = "/tmp/edp-prom.XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char cfg[600], cmd[2048];
  snprintf(cfg, sizeof(cfg), "%s/prometheus.yml", dir);
  FILE *f = fopen(cfg, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f,
          "global:\n  scrape_interval: 1s\n"
          "scrape_configs:\n  - job_name: edp\n    static_configs:\n"
          "      - targets: ['127.0.0.1:%d']\n",
          c.port);
  fclose(f);
  int pport = free_port();
  snprintf(cmd, sizeof(cmd),
           "exec prometheus --config.file=%s --storage.tsdb.path=%s/data "
           "--web.listen-address=127.0.0.1:%d 2>%s/prometheus.log",
           cfg, dir, pport, dir);
  char *pargv[] = {"/bin/sh", "-c", cmd, NULL};
  t_proc prom;
  ck_assert_int_eq(t_spawn(&prom, pargv, NULL), 0);
  char query[300];
  snprintf(query, sizeof(query),
           "edp_messages_processed_total%%7Bqueue%%3D%%22%s%%22%%7D", q);
  double v = -1, up = -1;
  long long t0 = t_now_ms();
  while (v != 120 && t_now_ms() - t0 < 60000) {
    usleep(250000);
    v = prom_query(pport, query);
    up = prom_query(pport, "up%7Bjob%3D%22edp%22%7D");
  }
  t_signal(&prom, SIGTERM);
  int prc = t_wait(&prom, 20000);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_msg(v == 120, "Prometheus says %g processed", v);
  ck_assert(up == 1);
  ck_assert_int_eq(prc, 0);
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_wait(&r, 10000), 130);
}
END_TEST

/* ---------- the connections a pattern owns ---------- */

/* The value of name's sample whose conn label is conn, -1 if none. */
static double conn_metric(const char *text, const char *name,
                          const char *conn) {
  char sel[128];
  snprintf(sel, sizeof(sel), "conn=\"%s\"", conn);
  return metric_with(text, name, sel);
}

/* The number of name's samples whose conn label starts with prefix, and
 * their sum in *sum. */
static int conn_series(const char *text, const char *name, const char *prefix,
                       double *sum) {
  char sel[128];
  snprintf(sel, sizeof(sel), "conn=\"%s", prefix);
  size_t nl = strlen(name);
  int n = 0;
  *sum = 0;
  for (const char *p = text; p && *p;) {
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char line[1024];
    snprintf(line, sizeof(line), "%.*s", (int)len, p);
    if (!strncmp(line, name, nl) && line[nl] == '{' && strstr(line, sel)) {
      n++;
      *sum += atof(strrchr(line, ' ') + 1);
    }
    p = end ? end + 1 : NULL;
  }
  return n;
}

#define SUP_MSGS 300
#define SUP_MAX 4

/* The supervisor's connections: a series per consumer slot while its
 * consumer lives, scraped (and checked by promtool) in a loop while the
 * consumers retire: the counters of every series only grow, and in the
 * final counts the consumers' deliveries add up to every message although
 * all of them are gone. The lifetime race test: scrapes run while the
 * retiring consumers close their connections (run it on the SAN build). */
START_TEST(supervisor_connection_series) {
  const char *q = t_unique("metrics.supconn");
  feed("edp-forward-sender", "--queue", q, "--count", "300", NULL);
  t_proc s;
  char *sx[] = {"--queue",
                (char *)q,
                "--min",
                "1",
                "--max",
                "4",
                "--per-consumer",
                "20",
                "--interval-ms",
                "100",
                "--keep-alive-ms",
                "500",
                "--work-ms",
                "15",
                "--idle-timeout",
                "2500",
                "--metrics-hold",
                "30000",
                NULL};
  spawn(&s, "edp-supervisor", NULL, sx);
  int port = 0, hold = 0, processed = 0, retired = 0, stopped = 0;
  int live[SUP_MAX + 1] = {0}, ever[SUP_MAX + 1] = {0};
  int all_up_seen = 0, scrapes = 0, scrapes_retiring = 0;
  double last[SUP_MAX + 1], last_sum = 0;
  for (int k = 0; k <= SUP_MAX; k++)
    last[k] = -1;
  char line[8192];
  long long deadline = t_now_ms() + 90000;
  while (!hold && t_now_ms() < deadline) {
    /* Every event there is, then one scrape. */
    while (t_readline(&s, line, sizeof(line), port ? 20 : 1000) == 1) {
      json_t *ev = json_loads(line, 0, NULL);
      const char *k = json_string_value(json_object_get(ev, "event"));
      int slot = (int)json_integer_value(json_object_get(ev, "slot"));
      if (k && !strcmp(k, "metrics_listening"))
        port = (int)json_integer_value(json_object_get(ev, "port"));
      if (k && !strcmp(k, "start")) {
        ck_assert(slot >= 1 && slot <= SUP_MAX);
        ck_assert_int_eq(live[slot], 0); /* a slot has one consumer */
        live[slot] = ever[slot] = 1;
      }
      if (k && !strcmp(k, "consumer_stopped")) {
        ck_assert(slot >= 1 && slot <= SUP_MAX && live[slot]);
        live[slot] = 0;
        stopped++;
      }
      retired += k && !strcmp(k, "retire");
      processed += k && !strcmp(k, "processed");
      hold += k && !strcmp(k, "metrics_hold");
      json_decref(ev);
    }
    if (!port || hold)
      continue;
    char *text = scrape(port); /* promtool checks each one */
    scrapes++;
    scrapes_retiring += retired > 0;
    ck_assert(conn_metric(text, "edp_connection_up", "monitor") == 1);
    /* Each slot's counters only grow, whichever consumer holds it, and
     * so does their sum. */
    double sum = 0;
    for (int k = 1; k <= SUP_MAX; k++) {
      char name[32];
      snprintf(name, sizeof(name), "consumer-%d", k);
      double v = conn_metric(text, "edp_messages_delivered_total", name);
      ck_assert_msg(v >= last[k], "consumer-%d delivered went from %g to %g", k,
                    last[k], v);
      last[k] = v;
      sum += v < 0 ? 0 : v;
    }
    ck_assert(sum >= last_sum);
    last_sum = sum;
    /* At full strength: a series for every live consumer, up. */
    int n_live = 0, n_up = 0;
    for (int k = 1; k <= SUP_MAX; k++) {
      char name[32];
      snprintf(name, sizeof(name), "consumer-%d", k);
      n_live += live[k];
      n_up += live[k] && conn_metric(text, "edp_connection_up", name) == 1;
    }
    if (n_live == SUP_MAX && n_up == SUP_MAX)
      all_up_seen = 1;
    free(text);
  }
  ck_assert_msg(hold, "no metrics_hold event");
  ck_assert_int_eq(processed, SUP_MSGS);
  ck_assert_msg(all_up_seen, "never saw the %d consumers' series up", SUP_MAX);
  ck_assert_int_ge(retired, 1);
  ck_assert_int_ge(scrapes_retiring, 3);
  /* The hold: every consumer is gone, their counts are not. */
  char *text = scrape(port);
  double delivered = 0;
  int n_series = conn_series(text, "edp_messages_delivered_total", "consumer-",
                             &delivered);
  int n_ever = 0;
  for (int k = 1; k <= SUP_MAX; k++)
    n_ever += ever[k];
  ck_assert_int_eq(n_series, n_ever);
  ck_assert(delivered == SUP_MSGS);
  double up = 0;
  ck_assert_int_eq(conn_series(text, "edp_connection_up", "", &up), 0);
  ck_assert(conn_metric(text, "edp_messages_delivered_total", "monitor") == 0);
  fprintf(stderr,
          "supervisor_connection_series: %d scrapes (%d after a retire), %d "
          "retired, %d stopped, %d slots\n",
          scrapes, scrapes_retiring, retired, stopped, n_ever);
  free(text);
  t_signal(&s, SIGTERM);
  ck_assert_int_eq(t_wait(&s, 20000), 0);
}
END_TEST

/* The ambulance receiver's and the multi-broker consumer's connections:
 * after the stop (the hold) every thread closed its connection, and each
 * one's series still holds its deliveries: they add up to the messages. */
START_TEST(pattern_connection_series) {
  const char *q = t_unique("metrics.ambconn");
  feed("edp-ambulance-sender", "--queue", q, "--standard", "30", "--priority",
       "10", "--rate", "0", NULL);
  t_proc r;
  /* Not --count: its last processed event may come after the hold's. */
  char *rx[] = {
      "--queue",        (char *)q, "--threads",      "2",     "--work-ms", "5",
      "--idle-timeout", "1500",    "--metrics-hold", "30000", NULL};
  spawn(&r, "edp-ambulance-receiver", NULL, rx);
  counts c = {0};
  ck_assert(await(&r, &c, has_hold, 60000));
  ck_assert_int_eq(c.processed, 40);
  /* The hold begins when the stop was asked: the threads close their
   * connections meanwhile, under scrapes. Once they all did, no series
   * has gauges and every series still has its counts. */
  char *text = NULL;
  double delivered = 0, up = 0;
  long long t0 = t_now_ms();
  for (;;) {
    free(text);
    text = scrape(c.port);
    if (!conn_series(text, "edp_connection_up", "", &up) ||
        t_now_ms() - t0 > 10000)
      break;
    usleep(20000);
  }
  ck_assert_int_eq(conn_series(text, "edp_connection_up", "", &up), 0);
  ck_assert_int_eq(
      conn_series(text, "edp_messages_delivered_total", "", &delivered), 3);
  ck_assert(conn_metric(text, "edp_messages_delivered_total", "priority") >= 0);
  ck_assert(conn_metric(text, "edp_messages_delivered_total", "standard-1") >=
            0);
  ck_assert(conn_metric(text, "edp_messages_delivered_total", "standard-2") >=
            0);
  /* Every message delivered once (none was left prefetched: the queue
   * was empty long before the stop). */
  ck_assert(delivered == 40);
  free(text);
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_wait(&r, 10000), 0);

  const char *mq = t_unique("metrics.multiconn");
  feed("edp-multi-sender", "--queue", mq, "--count", "100", NULL);
  t_proc m;
  char *mx[] = {"--queue",        (char *)mq, "--count", "100",
                "--metrics-hold", "30000",    NULL};
  spawn(&m, "edp-multi-receiver", NULL, mx);
  counts mc = {0};
  ck_assert(await(&m, &mc, has_hold, 60000));
  ck_assert_int_eq(mc.processed, 100);
  text = scrape(mc.port);
  ck_assert(conn_metric(text, "edp_messages_delivered_total", "broker-0") ==
            100);
  ck_assert(conn_metric(text, "edp_connection_lost_total", "broker-0") == 0);
  ck_assert_ptr_null(strstr(text, "guest"));
  free(text);
  t_signal(&m, SIGTERM);
  ck_assert_int_eq(t_wait(&m, 10000), 0);
}
END_TEST

int main(void) {
  t_nodes_begin(1, "metrics");
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("metrics");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, counters_equal_json_events);
  tcase_add_test(tc, healthz_memory_alarm);
  tcase_add_test(tc, dispatcher_counters);
  tcase_add_test(tc, ambulance_lanes);
  tcase_add_test(tc, supervisor_gauges);
  tcase_add_test(tc, multi_receiver_brokers);
  tcase_add_test(tc, prometheus_scrapes_receiver);
  tcase_add_test(tc, healthz_node_restart);
  tcase_add_test(tc, supervisor_connection_series);
  tcase_add_test(tc, pattern_connection_series);
  tcase_add_test(tc, watch_counters);
  tcase_add_test(tc, watch_orphan_pings);
  tcase_add_test(tc, senders_sent_counts);
  suite_add_tcase(s, tc);
  /* A second broker: it boots while the cases above run. */
  TCase *tn = tcase_create("multi-sender");
  tcase_set_timeout(tn, 240);
  tcase_add_unchecked_fixture(tn, t_nodes_ready, t_nodes_stop);
  tcase_add_test(tn, multi_sender_brokers);
  suite_add_tcase(s, tn);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
