/*
 * edp-bench-forward - the event forwarding claims, measured in one run on
 * one broker (EDP_URL): persistent publishing with a blocking confirm per
 * message, with the pipelined confirm window, and fire-and-forget; and
 * consuming with one ack per message against one ack for many (multiple).
 * Prints a markdown section; each rate is the median of three runs.
 * For the plot it also sweeps the confirm window (1, 8, 64, 512, 1024,
 * 4096) and writes forwarding-window.csv (see benchdata.h).
 * With EDP_URL_TLS (make bench: a node with a plain and a TLS listener)
 * it compares TLS with plain on that node, runs interleaved, with the
 * client's CPU per message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "benchdata.h"
#include "cli.h"

static cli app;
static int seq_q;
static const char *tls_url; /* the TLS rows connect here */
static int use_tls;
static double loop_cpu_s; /* client CPU of the last timed loop */

static edp_conn *connect_or_die(void) {
  if (!use_tls)
    return cli_connect(&app, "edp-bench");
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = tls_url;
  o.client_name = "edp-bench-tls";
  edp_conn *c = NULL;
  char why[600];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  if (rc)
    cli_die(&app, cli_exit_code(rc), "%s: %s", edp_strerror(rc), why);
  return c;
}

static const char *fresh_queue(edp_conn *c, char *buf, size_t len) {
  snprintf(buf, len, "bench.fwd.%d.%d", (int)getpid(), ++seq_q);
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  int rc = edp_conn_queue_declare(c, buf, &qo, NULL, 0, NULL, NULL);
  if (rc)
    cli_die_err(&app, c, rc, "declare");
  return buf;
}

/* Publishes n persistent messages; window 0 = no confirms, 1 = blocking
 * confirm per message, else pipelined. Returns messages per second. */
static double publish_rate(int n, size_t window) {
  edp_conn *c = connect_or_die();
  char q[128];
  fresh_queue(c, q, sizeof(q));
  if (window && edp_conn_confirm_select(c))
    cli_die(&app, CLI_UNAVAILABLE, "confirm.select failed");
  char body[256];
  memset(body, 'x', sizeof(body));
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = q;
  m.body = body;
  m.body_len = sizeof(body);
  m.persistent = 1;
  int64_t t0 = edp_now_ms();
  double cpu0 = bench_self_cpu();
  for (int i = 0; i < n; i++) {
    int rc = 0;
    if (window)
      rc = edp_conn_wait_confirms(c, window - 1, 30000);
    if (!rc)
      rc = edp_conn_publish(c, &m, NULL);
    if (rc)
      cli_die_err(&app, c, rc, "publish");
  }
  if (window && edp_conn_wait_confirms(c, 0, 60000))
    cli_die(&app, CLI_UNAVAILABLE, "confirms did not arrive");
  /* Without confirms the clock stops when the broker has every message in
   * the queue, not when the client's socket took the last one: a passive
   * declare on the same channel is answered after the publishes before it
   * were routed. */
  uint32_t depth = 0;
  for (int i = 0; !window && depth < (uint32_t)n && i < 1000; i++)
    if (edp_conn_queue_inspect(c, q, &depth, NULL))
      cli_die(&app, CLI_UNAVAILABLE, "queue inspect failed");
  double secs = (double)(edp_now_ms() - t0) / 1000.0;
  loop_cpu_s = bench_self_cpu() - cpu0;
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
  return n / (secs > 0.001 ? secs : 0.001);
}

/* Fills a queue with n messages, then consumes them with prefetch 512 and
 * an ack per message (batch 1) or one multiple-ack per batch. */
static double consume_rate(int n, int batch) {
  edp_conn *c = connect_or_die();
  char q[128];
  fresh_queue(c, q, sizeof(q));
  edp_conn_confirm_select(c);
  char body[256];
  memset(body, 'x', sizeof(body));
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = q;
  m.body = body;
  m.body_len = sizeof(body);
  for (int i = 0; i < n; i++)
    if (edp_conn_wait_confirms(c, 1023, 30000) || edp_conn_publish(c, &m, NULL))
      cli_die(&app, CLI_UNAVAILABLE, "fill failed");
  edp_conn_wait_confirms(c, 0, 60000);
  if (edp_conn_qos(c, 512) || edp_conn_consume(c, q, NULL, NULL, 0))
    cli_die(&app, CLI_UNAVAILABLE, "consume failed");
  int64_t t0 = edp_now_ms();
  double cpu0 = bench_self_cpu();
  for (int i = 1; i <= n; i++) {
    edp_delivery d;
    int rc = edp_conn_receive(c, &d, 30000);
    if (rc)
      cli_die_err(&app, c, rc, "receive");
    if (i % batch == 0 || i == n)
      rc = edp_conn_ack(c, d.epoch, d.tag, batch > 1);
    edp_delivery_clear(&d);
    if (rc)
      cli_die_err(&app, c, rc, "ack");
  }
  double secs = (double)(edp_now_ms() - t0) / 1000.0;
  loop_cpu_s = bench_self_cpu() - cpu0;
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
  return n / (secs > 0.001 ? secs : 0.001);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median_of3(double *r) {
  qsort(r, 3, sizeof(double), cmp_double);
  return r[1];
}

static double median3(double (*fn)(int, size_t), int n, size_t arg) {
  double r[3];
  for (int i = 0; i < 3; i++)
    r[i] = fn(n, arg);
  return median_of3(r);
}

static double consume_adapter(int n, size_t batch) {
  return consume_rate(n, (int)batch);
}

/* One row of the TLS table: rate and client CPU per message, plain and
 * TLS, medians of 3 runs taken alternately so both see the same machine. */
typedef struct tls_row {
  double rate[2], cpu_us[2]; /* [0] plain, [1] TLS */
} tls_row;

static tls_row tls_compare(double (*fn)(int, size_t), int n, size_t arg) {
  double rate[2][3], cpu[2][3];
  for (int i = 0; i < 3; i++)
    for (use_tls = 0; use_tls < 2; use_tls++) {
      rate[use_tls][i] = fn(n, arg);
      cpu[use_tls][i] = loop_cpu_s * 1e6 / n;
    }
  use_tls = 0;
  tls_row r;
  for (int t = 0; t < 2; t++) {
    r.rate[t] = median_of3(rate[t]);
    r.cpu_us[t] = median_of3(cpu[t]);
  }
  return r;
}

static void print_tls_row(const char *name, const tls_row *r) {
  printf("| %s | %.0f | %.0f | %.0f%% | %.1f | %.1f |\n", name, r->rate[0],
         r->rate[1], 100.0 * r->rate[1] / r->rate[0], r->cpu_us[0],
         r->cpu_us[1]);
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-bench-forward");
  int scale = argc > 1 ? atoi(argv[1]) : 1;
  if (scale < 1)
    scale = 1;
  /* A reduced run (EDP_BENCH_QUICK) uses a fifth of the messages. */
  int div = bench_quick() ? 5 : 1;
  fprintf(stderr, "forwarding: blocking confirms...\n");
  double a = median3(publish_rate, 2000 * scale / div, 1);
  fprintf(stderr, "forwarding: pipelined confirms...\n");
  double b = median3(publish_rate, 40000 * scale / div, 1024);
  fprintf(stderr, "forwarding: fire-and-forget...\n");
  double c = median3(publish_rate, 40000 * scale / div, 0);
  fprintf(stderr, "forwarding: consume, ack each...\n");
  double ca = median3(consume_adapter, 30000 * scale / div, 1);
  fprintf(stderr, "forwarding: consume, ack multiple...\n");
  double cm = median3(consume_adapter, 30000 * scale / div, 64);

  /* The window sweep behind the plot: windows 1 and 1024 are (a) and (b)
   * above; the others are measured here, with enough messages for about
   * a second of publishing at their rate. */
  static const size_t windows[] = {1, 8, 64, 512, 1024, 4096};
  enum { N_WIN = sizeof(windows) / sizeof(windows[0]) };
  double wrate[N_WIN];
  for (int i = 0; i < N_WIN; i++) {
    size_t w = windows[i];
    if (w == 1 || w == 1024) {
      wrate[i] = w == 1 ? a : b;
      continue;
    }
    int n = (w < 64 ? 10000 : 40000) * scale / div;
    fprintf(stderr, "forwarding: window %zu...\n", w);
    wrate[i] = median3(publish_rate, n, w);
  }
  FILE *csv = bench_csv_open("forwarding-window.csv", "edp-bench-forward",
                             "window,msg_per_s,fire_and_forget_msg_per_s");
  for (int i = 0; csv && i < N_WIN; i++)
    fprintf(csv, "%zu,%.0f,%.0f\n", windows[i], wrate[i], c);
  bench_csv_close(csv, "edp-bench-forward");

  printf("## Event forwarding (`edp-bench-forward`)\n\n");
  printf(
      "Persistent 256-byte messages to a durable queue; median of 3 runs.\n"
      "Publish times run until the broker confirmed the last message, or for\n"
      "(c) until the queue holds them all (a passive declare on the same\n"
      "channel).\n\n");
  printf("| case | msg/s | ratio |\n|---|---:|---:|\n");
  printf(
      "| (a) persistent, blocking confirm per message | %.0f | 1.00 x (a) |\n",
      a);
  printf("| (b) persistent, pipelined confirms, window 1024 | %.0f | %.2f x "
         "(a), %.0f%% of (c) |\n",
         b, b / a, 100.0 * b / c);
  printf("| (c) persistent, fire-and-forget (unsafe) | %.0f | %.2f x (a) |\n",
         c, c / a);
  printf("| consume, prefetch 512, one ack per message | %.0f | 1.00 |\n", ca);
  printf("| consume, prefetch 512, one `multiple` ack per 64 | %.0f | %.2f x "
         "ack-each |\n",
         cm, cm / ca);
  printf("\nTargets: (b) >= 8 x (a): **%s** (%.1f x); (b) >= 55%% of (c): "
         "**%s** (%.0f%%).\n",
         b >= 8 * a ? "met" : "missed", b / a, b >= 0.55 * c ? "met" : "missed",
         100.0 * b / c);
  printf("\nConfirm window sweep (persistent, median of 3 runs each; the "
         "plot shows it against fire-and-forget):\n\n| window |");
  for (int i = 0; i < N_WIN; i++)
    printf(" %zu |", windows[i]);
  printf(" fire-and-forget |\n|---|");
  for (int i = 0; i <= N_WIN; i++)
    printf("---:|");
  printf("\n| msg/s |");
  for (int i = 0; i < N_WIN; i++)
    printf(" %.0f |", wrate[i]);
  printf(" %.0f |\n| %% of fire-and-forget |", c);
  for (int i = 0; i < N_WIN; i++)
    printf(" %.0f%% |", 100.0 * wrate[i] / c);
  printf(" 100%% |\n");

  tls_url = getenv("EDP_URL_TLS");
  if (!tls_url || !tls_url[0]) {
    printf("\nTLS rows: skipped (no EDP_URL_TLS; `make bench` sets it).\n");
    return 0;
  }
  fprintf(stderr, "forwarding: TLS vs plain, publish...\n");
  tls_row tp = tls_compare(publish_rate, 40000 * scale / div, 1024);
  fprintf(stderr, "forwarding: TLS vs plain, consume...\n");
  tls_row tc = tls_compare(consume_adapter, 30000 * scale / div, 1);
  printf("\nTLS against plain on the same node (a TLS listener that requires "
         "client certificates beside the plain one; TLS 1.3, the cipher "
         "OpenSSL and the broker agree on; medians of 3 runs taken "
         "alternately; client CPU is user + system of this process during "
         "the timed loop):\n\n");
  printf("| case | plain msg/s | TLS msg/s | TLS / plain | plain client "
         "CPU us/msg | TLS client CPU us/msg |\n|---|---:|---:|---:|---:|"
         "---:|\n");
  print_tls_row("persistent, pipelined confirms, window 1024", &tp);
  print_tls_row("consume, prefetch 512, one ack per message", &tc);
  double worst = tp.rate[1] / tp.rate[0] < tc.rate[1] / tc.rate[0]
                     ? tp.rate[1] / tp.rate[0]
                     : tc.rate[1] / tc.rate[0];
  printf("\nTarget: TLS >= 85%% of plain throughput: **%s** (worst %.0f%%).\n",
         worst >= 0.85 ? "met" : "missed", 100.0 * worst);
  return 0;
}
