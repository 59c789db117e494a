/*
 * edp-bench-metrics - what the metrics cost (issue 17): the forwarding
 * sender (window 1024) and receiver as the programs run them, with the
 * metrics off (counters only: they cannot be switched off) and on (the
 * latency histograms kept, the libmicrohttpd endpoint serving, and a
 * scraper thread fetching /metrics every 100 ms, a hundred times more
 * often than Prometheus would). Runs alternate off/on, six pairs in
 * both orders (off first, then on first), and
 * the table shows medians of throughput and of client CPU per message
 * (user + system of this process during the timed loop, scraper and
 * server threads included). Prints a markdown section.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "benchdata.h"
#include "cli.h"
#include "metrics_http.h"

#define PAIRS 6 /* even: each order as often */

static cli app;
static int seq_q;
static double loop_cpu_s;

/* ---------- metrics on: server and scraper ---------- */

typedef struct scraper {
  int port;
  int stop_fd[2];
  pthread_t th;
  long scrapes;
} scraper;

static void fetch(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && !connect(fd, (struct sockaddr *)&a, sizeof(a))) {
    static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
    if (write(fd, req, sizeof(req) - 1) == sizeof(req) - 1) {
      char buf[8192];
      while (read(fd, buf, sizeof(buf)) > 0)
        ;
    }
  }
  if (fd >= 0)
    close(fd);
}

static void *scrape_main(void *arg) {
  scraper *s = arg;
  while (!edp_sleep_ms(100, s->stop_fd[0])) {
    fetch(s->port);
    s->scrapes++;
  }
  return NULL;
}

typedef struct metrics_on {
  edp_metrics *reg;
  metrics_http *http;
  scraper sc;
} metrics_on;

/* EDP_BENCH_METRICS_ONLY=timing (the histograms' clock reads alone) or
 * =serve (the endpoint and the scraper alone) turns on one part of the
 * metrics in the "on" runs, to see which part a cost comes from. */
static int part_on(const char *part) {
  const char *only = getenv("EDP_BENCH_METRICS_ONLY");
  if (!only || !only[0])
    return 1;
  if (strcmp(only, "timing") && strcmp(only, "serve") && strcmp(only, "none"))
    cli_die(&app, CLI_USAGE,
            "EDP_BENCH_METRICS_ONLY: timing, serve or none, got '%s'", only);
  return !strcmp(only, part);
}

static void on_start(metrics_on *mo, edp_conn *c, const void *obj,
                     edp_metrics_collect_fn fn) {
  if (part_on("timing"))
    edp_conn_set_timing(c, 1);
  if (!part_on("serve"))
    return;
  if (edp_metrics_new(&mo->reg) ||
      edp_metrics_add(mo->reg, c, edp_conn_collect) ||
      edp_metrics_add(mo->reg, obj, fn))
    cli_die(&app, CLI_SOFTWARE, "out of memory");
  mo->http = metrics_http_start(&app, "127.0.0.1:0", mo->reg, NULL, NULL);
  mo->sc.port = metrics_http_port(mo->http);
  if (pipe(mo->sc.stop_fd) ||
      pthread_create(&mo->sc.th, NULL, scrape_main, &mo->sc))
    cli_die(&app, CLI_SOFTWARE, "no scraper thread");
}

static void on_stop(metrics_on *mo) {
  if (!mo->reg)
    return; /* EDP_BENCH_METRICS_ONLY=timing */
  if (write(mo->sc.stop_fd[1], "x", 1) != 1)
    cli_die(&app, CLI_SOFTWARE, "cannot stop the scraper");
  pthread_join(mo->sc.th, NULL);
  close(mo->sc.stop_fd[0]);
  close(mo->sc.stop_fd[1]);
  metrics_http_stop(&mo->http);
  edp_metrics_destroy(&mo->reg);
  if (mo->sc.scrapes < 1)
    cli_die(&app, CLI_SOFTWARE, "the scraper never ran: the run is too short");
}

/* ---------- the runs ---------- */

static const char *fresh_queue(char *buf, size_t len) {
  snprintf(buf, len, "bench.metrics.%d.%d", (int)getpid(), ++seq_q);
  return buf;
}

static void drop_queue(edp_conn *c, const char *q) {
  char dlq[160];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn_queue_delete(c, q);
  edp_conn_queue_delete(c, dlq);
}

/* edp_fwd_send of n 256-byte messages and the flush; msg/s. */
static double send_rate(int n, int on) {
  edp_conn *c = cli_connect(&app, "edp-bench-metrics");
  char q[128];
  edp_fwd_sender_opts so;
  edp_fwd_sender_opts_init(&so);
  so.queue = fresh_queue(q, sizeof(q));
  edp_fwd_sender *s = NULL;
  int rc = edp_fwd_sender_new(c, &so, &s);
  if (rc)
    cli_die_err(&app, c, rc, "sender");
  metrics_on mo = {0};
  if (on)
    on_start(&mo, c, s, edp_fwd_sender_collect);
  char body[256], id[32];
  memset(body, 'x', sizeof(body));
  int64_t t0 = edp_now_us();
  double cpu0 = bench_self_cpu();
  for (int i = 0; i < n && !rc; i++) {
    snprintf(id, sizeof(id), "b-%d", i);
    rc = edp_fwd_send(s, id, body, sizeof(body), NULL);
  }
  if (!rc)
    rc = edp_fwd_flush(s);
  double secs = (double)(edp_now_us() - t0) / 1e6;
  loop_cpu_s = bench_self_cpu() - cpu0;
  if (rc)
    cli_die_err(&app, c, rc, "send");
  if (on)
    on_stop(&mo);
  edp_fwd_sender_destroy(&s);
  drop_queue(c, q);
  edp_conn_destroy(&c);
  return n / (secs > 1e-3 ? secs : 1e-3);
}

static int noop(void *ud, const edp_delivery *d, char *reason, size_t len) {
  (void)ud;
  (void)d;
  (void)reason;
  (void)len;
  return 0;
}

/* A queue of n messages (not timed), then edp_fwd_receive until all were
 * processed; msg/s. */
static double receive_rate(int n, int on) {
  edp_conn *c = cli_connect(&app, "edp-bench-metrics");
  char q[128];
  fresh_queue(q, sizeof(q));
  edp_fwd_sender_opts so;
  edp_fwd_sender_opts_init(&so);
  so.queue = q;
  edp_fwd_sender *s = NULL;
  char body[256], id[32];
  memset(body, 'x', sizeof(body));
  int rc = edp_fwd_sender_new(c, &so, &s);
  for (int i = 0; i < n && !rc; i++) {
    snprintf(id, sizeof(id), "b-%d", i);
    rc = edp_fwd_send(s, id, body, sizeof(body), NULL);
  }
  if (!rc)
    rc = edp_fwd_flush(s);
  edp_fwd_sender_destroy(&s);
  if (rc)
    cli_die_err(&app, c, rc, "fill");
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.prefetch = 256;
  ro.handler = noop;
  edp_fwd_receiver *r = NULL;
  if ((rc = edp_fwd_receiver_new(c, &ro, &r)))
    cli_die_err(&app, c, rc, "receiver");
  metrics_on mo = {0};
  if (on)
    on_start(&mo, c, r, edp_fwd_receiver_collect);
  int64_t t0 = edp_now_us();
  double cpu0 = bench_self_cpu();
  edp_fwd_receiver_stats st = {0};
  while (!rc && st.processed < (uint64_t)n) {
    rc = edp_fwd_receive(r, 30000);
    edp_fwd_receiver_stats_get(r, &st);
  }
  double secs = (double)(edp_now_us() - t0) / 1e6;
  loop_cpu_s = bench_self_cpu() - cpu0;
  if (rc)
    cli_die_err(&app, c, rc, "receive");
  if (on)
    on_stop(&mo);
  edp_fwd_receiver_destroy(&r);
  drop_queue(c, q);
  edp_conn_destroy(&c);
  return n / (secs > 1e-3 ? secs : 1e-3);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return v[n / 2];
}

typedef struct row {
  double rate[2], cpu_us[2]; /* [0] off, [1] on */
} row;

static row compare(double (*fn)(int, int), int n) {
  double rate[2][PAIRS], cpu[2][PAIRS];
  /* The order swaps every pair: the second run of a pair was 10.6%
   * slower for the receiver with nothing switched on (the broker still
   * busy with the first run's deleted queue), which read as a metrics
   * cost. */
  for (int i = 0; i < PAIRS; i++)
    for (int k = 0; k < 2; k++) {
      int on = (i % 2) ^ k;
      rate[on][i] = fn(n, on);
      cpu[on][i] = loop_cpu_s * 1e6 / n;
    }
  row r;
  for (int on = 0; on < 2; on++) {
    r.rate[on] = median(rate[on], PAIRS);
    r.cpu_us[on] = median(cpu[on], PAIRS);
  }
  return r;
}

static double print_row(const char *name, const row *r) {
  double cost = 100.0 * (1.0 - r->rate[1] / r->rate[0]);
  printf("| %s | %.0f | %.0f | %+.1f%% | %.1f | %.1f |\n", name, r->rate[0],
         r->rate[1], -cost, r->cpu_us[0], r->cpu_us[1]);
  return cost;
}

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_init(&app, "edp-bench-metrics");
  (void)part_on("timing"); /* a bad EDP_BENCH_METRICS_ONLY: 64 before any run */
  int div = bench_quick() ? 5 : 1;
  fprintf(stderr, "metrics: forwarding sender, off/on...\n");
  row s = compare(send_rate, 40000 / div);
  fprintf(stderr, "metrics: forwarding receiver, off/on...\n");
  row r = compare(receive_rate, 30000 / div);
  printf("## Metrics cost (`edp-bench-metrics`)\n\n");
  printf("The forwarding sender (persistent 256-byte messages, window 1024) "
         "and receiver (prefetch 256, a handler that returns at once) with "
         "the metrics off (the counters, which are always kept) and on "
         "(latency histograms, the `/metrics` endpoint, and a scraper "
         "fetching it every 100 ms); %d runs of each, alternating, "
         "the order swapped every pair, medians. Client CPU is user + system of this process during the "
         "timed loop, the server and scraper threads included.\n\n",
         PAIRS);
  printf("| case | off msg/s | on msg/s | on vs off | off CPU us/msg | on "
         "CPU us/msg |\n|---|---:|---:|---:|---:|---:|\n");
  double cs = print_row("forwarding sender, window 1024", &s);
  double cr = print_row("forwarding receiver", &r);
  double worst = cs > cr ? cs : cr;
  printf("\nTarget: metrics cost at most 3%% of throughput: **%s** (worst "
         "%.1f%%; a negative cost is noise in the machine's favour).\n",
         worst <= 3.0 ? "met" : "missed", worst);
  return 0;
}
