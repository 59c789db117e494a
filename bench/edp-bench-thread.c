/*
 * edp-bench-thread - does the thread delegate scale with workers while
 * keeping per-account order? A handler with 2 ms of simulated I/O, 1,000
 * accounts, the dispatcher with 1, 2, 4, 8, 16 and 32 workers, against a
 * single ordered consumer (receive, handle, ack) measured in the same run.
 * Prints one markdown section; progress goes to stderr. Writes
 * thread-scaling.csv for the plot (see benchdata.h); EDP_BENCH_QUICK=1
 * runs a quarter of the messages.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "benchdata.h"
#include "cli.h"

#define ACCOUNTS 1000
#define WORK_MS 2

static atomic_int last_seq[ACCOUNTS];
static atomic_long violations;

static const char *url;
static int run_no;

static void die(const char *what, int rc) {
  fprintf(stderr, "edp-bench-thread: %s: %s\n", what, edp_strerror(rc));
  exit(1);
}

static edp_conn *connect_or_die(void) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  edp_conn *c = NULL;
  char why[600];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  if (rc) {
    fprintf(stderr, "edp-bench-thread: %s\n", why);
    exit(1);
  }
  return c;
}

/* Checks that an account's messages arrive in seq order. Each account
 * starts over from 0 in every run. */
static void check_order(const edp_delivery *d) {
  int64_t seq = 0;
  edp_delivery_header_int(d, "seq", &seq);
  int a = atoi(d->routing_key + strlen("trade.eq.A-")) % ACCOUNTS;
  int prev = atomic_exchange(&last_seq[a], (int)seq);
  if (seq != prev + 1)
    atomic_fetch_add(&violations, 1);
}

/* Declares a fresh queue and fills it with n transient trades over the
 * accounts in random order; returns the queue name in q. */
static void fill(edp_conn *c, char *q, size_t qlen, long n) {
  char ex[64];
  run_no++;
  snprintf(ex, sizeof(ex), "bench.td.%d", (int)getpid());
  snprintf(q, qlen, "bench.td.%d.%d", (int)getpid(), run_no);
  int rc = edp_td_declare(c, ex, q, "trade.eq.*", NULL);
  if (rc)
    die("declare", rc);
  static int seqs[ACCOUNTS];
  memset(seqs, 0, sizeof(seqs));
  for (int i = 0; i < ACCOUNTS; i++)
    atomic_store(&last_seq[i], 0);
  unsigned seed = 12345u + (unsigned)run_no;
  for (long i = 0; i < n; i++) {
    int a = (int)(rand_r(&seed) % ACCOUNTS);
    char rk[64], body[64];
    snprintf(rk, sizeof(rk), "trade.eq.A-%d", a);
    int len = snprintf(body, sizeof(body), "A-%d,BUY,AAPL,%d SHARES", a,
                       1 + (int)(rand_r(&seed) % 4000));
    edp_header h = {"seq", NULL, ++seqs[a]};
    edp_msg m;
    edp_msg_init(&m);
    m.exchange = ex;
    m.routing_key = rk;
    m.body = body;
    m.body_len = (size_t)len;
    m.headers = &h;
    m.n_headers = 1;
    if ((rc = edp_conn_wait_confirms(c, 1023, 30000)) ||
        (rc = edp_conn_publish(c, &m, NULL)))
      die("publish", rc);
  }
  if ((rc = edp_conn_wait_confirms(c, 0, 30000)))
    die("confirms", rc);
}

/* The baseline: one consumer that receives, handles and acks in order. */
static double run_single(edp_conn *pub, long n) {
  char q[128];
  fill(pub, q, sizeof(q), n);
  edp_conn *c = connect_or_die();
  int rc = edp_conn_qos(c, 64);
  if (!rc)
    rc = edp_conn_consume(c, q, NULL, NULL, 0);
  if (rc)
    die("consume", rc);
  int64_t t0 = edp_now_ms();
  for (long i = 0; i < n; i++) {
    edp_delivery d;
    if ((rc = edp_conn_receive(c, &d, 30000)))
      die("receive", rc);
    edp_sleep_ms(WORK_MS, -1);
    check_order(&d);
    if ((rc = edp_conn_ack(c, d.epoch, d.tag, 0)))
      die("ack", rc);
    edp_delivery_clear(&d);
  }
  int64_t ms = edp_now_ms() - t0;
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
  return n * 1000.0 / (double)(ms ? ms : 1);
}

static int handler(void *ud, int worker, const char *context,
                   const edp_delivery *d, int attempt, char *reason,
                   size_t reason_len) {
  (void)ud, (void)worker, (void)context, (void)attempt, (void)reason,
      (void)reason_len;
  edp_sleep_ms(WORK_MS, -1);
  check_order(d);
  return 0;
}

static double run_td(edp_conn *pub, int workers, long n) {
  char q[128];
  fill(pub, q, sizeof(q), n);
  edp_conn *c = connect_or_die();
  edp_td_opts o;
  edp_td_opts_init(&o);
  o.queue = q;
  o.workers = workers;
  o.handler = handler;
  edp_td *td = NULL;
  int rc = edp_td_new(c, &o, &td);
  if (rc)
    die("dispatcher", rc);
  int64_t t0 = edp_now_ms();
  edp_td_stats st;
  for (;;) {
    edp_td_stats_get(td, &st);
    if ((long)st.processed >= n)
      break;
    if ((rc = edp_td_run(td, 100)))
      die("run", rc);
  }
  int64_t ms = edp_now_ms() - t0;
  edp_td_destroy(&td);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
  return n * 1000.0 / (double)(ms ? ms : 1);
}

int main(void) {
  url = getenv("EDP_URL");
  if (!url || !url[0])
    url = EDP_URL_DEFAULT;
  edp_conn *pub = connect_or_die();
  int rc = edp_conn_confirm_select(pub);
  if (rc)
    die("confirm mode", rc);
  static const int ws[] = {1, 2, 4, 8, 16, 32};
  enum { RUNS = 2 };
  /* The machine is shared: every configuration runs twice, the baseline
   * once before and once after the others, and the ratios use the best
   * run of each (the other run is shown too). */
  double rate[6][RUNS], single[RUNS];
  long viol[6] = {0}, msgs[6];
  int div = bench_quick() ? 4 : 1;
  long n_single = 1000 / div, viol_single = 0;
  for (int r = 0; r < RUNS; r++) {
    if (r == 0) {
      fprintf(stderr, "edp-bench-thread: single ordered consumer...\n");
      atomic_store(&violations, 0);
      single[0] = run_single(pub, n_single);
      viol_single += atomic_load(&violations);
    }
    for (int i = 0; i < 6; i++) {
      /* About four seconds of work at the ideal rate, so that the start
       * and the tail (the last backlogs draining) weigh little. */
      msgs[i] = 2000L * ws[i] / div;
      fprintf(stderr,
              "edp-bench-thread: run %d, %d worker(s), %ld messages...\n",
              r + 1, ws[i], msgs[i]);
      atomic_store(&violations, 0);
      rate[i][r] = run_td(pub, ws[i], msgs[i]);
      viol[i] += atomic_load(&violations);
    }
  }
  fprintf(stderr, "edp-bench-thread: single ordered consumer again...\n");
  atomic_store(&violations, 0);
  single[1] = run_single(pub, n_single);
  viol_single += atomic_load(&violations);
  double base = single[0] > single[1] ? single[0] : single[1];
  double base_other = single[0] > single[1] ? single[1] : single[0];

  printf("## Thread delegate\n\n");
  printf("`bench/edp-bench-thread.c`: a handler with %d ms of simulated I/O "
         "(a sleep) per trade, %d accounts, trades pre-filled (transient) in "
         "random account order. Baseline: one ordered consumer (receive, "
         "handle, ack; prefetch 64), run before and after the dispatcher "
         "runs. Dispatcher: default prefetch (16 x workers, at least 32). "
         "Each configuration runs twice; the ratio uses the best run of each "
         "(the machine is shared), the other run is shown. Target: at least "
         "0.9 x workers x the baseline, and 0.95 x with 1 worker; zero order "
         "violations.\n\n",
         WORK_MS, ACCOUNTS);
  printf("| consumer | workers | messages | msg/s (best) | other run | "
         "ratio vs single | target | met | order violations |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
  printf("| single ordered consumer | 1 | %ld | %.0f | %.0f | 1.00 | - | - | "
         "%ld |\n",
         n_single, base, base_other, viol_single);
  int all_met = 1;
  for (int i = 0; i < 6; i++) {
    double best = rate[i][0] > rate[i][1] ? rate[i][0] : rate[i][1];
    double other = rate[i][0] > rate[i][1] ? rate[i][1] : rate[i][0];
    double ratio = best / base;
    double target = ws[i] == 1 ? 0.95 : 0.9 * ws[i];
    int met = ratio >= target && viol[i] == 0;
    all_met &= met;
    printf("| thread delegate | %d | %ld | %.0f | %.0f | %.2f | %.2f | %s | "
           "%ld |\n",
           ws[i], msgs[i], best, other, ratio, target, met ? "yes" : "**no**",
           viol[i]);
  }
  FILE *csv =
      bench_csv_open("thread-scaling.csv", "edp-bench-thread",
                     "workers,msg_per_s,other_run_msg_per_s,ideal_msg_per_s,"
                     "single_consumer_msg_per_s");
  for (int i = 0; csv && i < 6; i++)
    fprintf(csv, "%d,%.0f,%.0f,%.0f,%.0f\n", ws[i],
            rate[i][0] > rate[i][1] ? rate[i][0] : rate[i][1],
            rate[i][0] > rate[i][1] ? rate[i][1] : rate[i][0], base * ws[i],
            base);
  bench_csv_close(csv, "edp-bench-thread");
  double load[3] = {0};
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
      load[0] = 0;
    fclose(f);
  }
  printf("\n%s Load average at the end: %.2f (%ld cores).\n",
         all_met ? "All targets met."
                 : "Some targets missed: see docs/thread-delegate.md "
                   "(benchmark) for why.",
         load[0], sysconf(_SC_NPROCESSORS_ONLN));
  edp_conn_destroy(&pub);
  return 0;
}
