/*
 * edp-bench-cost - what edp's forwarding programs cost a client machine,
 * against the floor: bench/rawc-baseline, plain rabbitmq-c doing the same
 * work and nothing else, on the same node (EDP_URL; EDP_URL_TLS too when
 * set), runs interleaved, medians of 3.
 *
 *  - 100-byte messages: edp-forward-sender (persistent, confirm window
 *    1024) against the raw publisher with the same window, and
 *    edp-forward-receiver (prefetch 1000, an ack per message) against the
 *    raw consumer: msg/s, client CPU per message (user + system of the
 *    whole process, from wait4), peak RSS, as ratios to the baseline.
 *  - Big bodies (64 KiB, 1 MiB, 16 MiB) through both: MB/s and peak RSS
 *    against window x body.
 *  - Latency inside one process (edp_fwd_sender and edp_fwd_receiver on
 *    two connections): confirm latency (publish to confirm) and end to end
 *    (publish to handler), p50/p99/p99.9, at 5,000 msg/s and flat out.
 *  - Memory over a longer run: the RSS of a sender and a receiver running
 *    side by side at a fixed rate, sampled from /proc.
 * The programs are found in EDP_BIN (default bin), the baseline beside
 * this program. EDP_BENCH_ONLY=cost runs this one alone in tests/bench.sh;
 * EDP_BENCH_SOAK_S sets the memory run's length (default 60 s; make
 * bench-soak runs it for 600 s); EDP_BENCH_LATENCY_ONLY=1 runs the two
 * latency rows alone (table on stdout).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "benchdata.h"
#include "cli.h"
#include "edp_forwarding.h"

static cli app;
static char raw_bin[PATH_MAX];
static const char *edp_bin;
static int seq_q;

typedef bench_run run;

/* Waits for what bench_spawn() started at t0; dies unless it exited 0. */
static run finish(pid_t pid, double t0, const char *what) {
  run r;
  int status = bench_finish(pid, t0, &r);
  if (status)
    cli_die(&app, CLI_SOFTWARE, "%s failed (status %d)", what, status);
  return r;
}

static run run_prog(char *const argv[]) {
  double t0 = bench_wall_s();
  return finish(bench_spawn(argv), t0, argv[0]);
}

static edp_conn *connect_to(const char *url) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  edp_conn *c = NULL;
  char why[600];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  if (rc)
    cli_die(&app, cli_exit_code(rc), "%s", why);
  return c;
}

/* A fresh durable queue (and its .dlq), declared as the forwarding
 * programs declare it, so that both clients use the same kind of queue. */
static void fresh_queue(const char *url, char *buf, size_t len) {
  snprintf(buf, len, "bench.cost.%d.%d", (int)getpid(), ++seq_q);
  edp_conn *c = connect_to(url);
  int rc = edp_fwd_declare(c, buf, NULL);
  if (rc)
    cli_die(&app, cli_exit_code(rc), "declare: %s", edp_strerror(rc));
  edp_conn_destroy(&c);
}

static void drop_queue(const char *url, const char *q) {
  edp_conn *c = connect_to(url);
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn_queue_delete(c, q);
  edp_conn_queue_delete(c, dlq);
  edp_conn_destroy(&c);
}

static run raw_publish(const char *url, const char *q, long n, long size,
                       long window) {
  char ns[32], ss[32], ws[32];
  snprintf(ns, sizeof(ns), "%ld", n);
  snprintf(ss, sizeof(ss), "%ld", size);
  snprintf(ws, sizeof(ws), "%ld", window);
  char *argv[] = {raw_bin, "publish", (char *)url, (char *)q, ns, ss, ws, NULL};
  return run_prog(argv);
}

static run raw_consume(const char *url, const char *q, long n, long prefetch) {
  char ns[32], ps[32];
  snprintf(ns, sizeof(ns), "%ld", n);
  snprintf(ps, sizeof(ps), "%ld", prefetch);
  char *argv[] = {raw_bin, "consume", (char *)url, (char *)q, ns, ps, NULL};
  return run_prog(argv);
}

static void prog_path(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s/%s", edp_bin, name);
}

static run edp_send(const char *url, const char *q, long n, long size,
                    long window) {
  char prog[PATH_MAX], ns[32], ss[32], ws[32];
  prog_path(prog, sizeof(prog), "edp-forward-sender");
  snprintf(ns, sizeof(ns), "%ld", n);
  snprintf(ss, sizeof(ss), "%ld", size);
  snprintf(ws, sizeof(ws), "%ld", window);
  char *argv[] = {
      prog,      "--url",   (char *)url,   "--queue", (char *)q,
      "--count", ns,        "--body-size", ss,        "--confirm-window",
      ws,        "--quiet", NULL};
  return run_prog(argv);
}

/* coalesce: --coalesce-acks (one multiple ack per batch), else none. */
static run edp_receive(const char *url, const char *q, long n, long prefetch,
                       int coalesce) {
  char prog[PATH_MAX], ns[32], ps[32];
  prog_path(prog, sizeof(prog), "edp-forward-receiver");
  snprintf(ns, sizeof(ns), "%ld", n);
  snprintf(ps, sizeof(ps), "%ld", prefetch);
  char *argv[] = {prog,
                  "--url",
                  (char *)url,
                  "--queue",
                  (char *)q,
                  "--count",
                  ns,
                  "--prefetch",
                  ps,
                  "--quiet",
                  coalesce ? "--coalesce-acks" : NULL,
                  NULL};
  return run_prog(argv);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* 100-byte runs (100,000 messages each): 3 rounds. Big bodies: a run is
 * under a second, and 3 rounds left a 1 MiB or 16 MiB ratio to the order
 * of two of them, so 7. */
#define ROUNDS 3
#define BIG_ROUNDS 7

/* Medians over the rounds of one client doing one job. */
typedef struct side {
  double rate, cpu_us, rss_kb, mbs;
} side;

static side summarize(const run *r, int n, long msgs, long size) {
  double rate[BIG_ROUNDS], cpu[BIG_ROUNDS], rss[BIG_ROUNDS], mbs[BIG_ROUNDS];
  for (int i = 0; i < n; i++) {
    rate[i] = msgs / r[i].wall;
    mbs[i] = (double)msgs * size / r[i].wall / 1e6;
    cpu[i] = r[i].cpu * 1e6 / msgs;
    rss[i] = (double)r[i].rss_kb;
  }
  side s = {median(rate, n), median(cpu, n), median(rss, n), median(mbs, n)};
  return s;
}

/* Raw and edp, publish and consume, rounds rounds, the order of the two
 * clients swapped every round. Each consumer drains what its own kind of
 * publisher sent, so that the queues hold the same messages. */
typedef struct pair_result {
  side pub[2], con[3]; /* [0] raw, [1] edp, con[2] edp --coalesce-acks */
} pair_result;

/* coalesce: a third client consumes too, edp with --coalesce-acks (from
 * a queue its own edp-forward-sender run filled, untimed). */
static pair_result compare(const char *url, long n, long size, long window,
                           long prefetch, const char *label, int coalesce,
                           int rounds) {
  run pub[2][BIG_ROUNDS], con[3][BIG_ROUNDS];
  int nc = coalesce ? 3 : 2;
  for (int i = 0; i < rounds; i++) {
    char q[3][128];
    for (int k = 0; k < nc; k++)
      fresh_queue(url, q[k], sizeof(q[k]));
    fprintf(stderr, "cost: %s, round %d of %d...\n", label, i + 1, rounds);
    for (int j = 0; j < 2; j++) {
      int k = (i + j) % 2;
      pub[k][i] = k ? edp_send(url, q[k], n, size, window)
                    : raw_publish(url, q[k], n, size, window);
    }
    if (coalesce)
      edp_send(url, q[2], n, size, window);
    for (int j = 0; j < nc; j++) {
      int k = (i + j) % nc;
      con[k][i] = k ? edp_receive(url, q[k], n, prefetch, k == 2)
                    : raw_consume(url, q[k], n, prefetch);
    }
    for (int k = 0; k < nc; k++)
      drop_queue(url, q[k]);
  }
  pair_result r;
  memset(&r, 0, sizeof(r));
  for (int k = 0; k < nc; k++) {
    if (k < 2)
      r.pub[k] = summarize(pub[k], rounds, n, size);
    r.con[k] = summarize(con[k], rounds, n, size);
  }
  return r;
}

static const char *met(int ok) { return ok ? "met" : "missed"; }

static void print_pair(const char *what, const side *s) {
  printf("| %s, raw rabbitmq-c | %.0f | %.1f | %.0f | %.1f | 1.00 | 1.00 |\n",
         what, s[0].rate, s[0].cpu_us, s[0].rss_kb / 1024, s[0].mbs);
  printf("| %s, edp | %.0f | %.1f | %.0f | %.1f | **%.2f** | **%.2f** |\n",
         what, s[1].rate, s[1].cpu_us, s[1].rss_kb / 1024, s[1].mbs,
         s[1].rate / s[0].rate, s[1].cpu_us / s[0].cpu_us);
}

/* ---------- latency, in one process ---------- */

typedef struct lat_run {
  const char *url, *queue;
  long n, rate;
  int64_t *sent_us;   /* by seq - 1 */
  double *confirm_us; /* confirm latencies, in arrival order */
  double *e2e_us;     /* end-to-end latencies */
  long n_confirm, n_e2e;
  pthread_mutex_t mu;
} lat_run;

static void on_confirm(void *ud, const edp_confirm *cf) {
  lat_run *l = ud;
  const char *dash = cf->message_id ? strrchr(cf->message_id, '-') : NULL;
  long seq = dash ? atol(dash + 1) : 0;
  if (seq >= 1 && seq <= l->n && l->n_confirm < l->n)
    l->confirm_us[l->n_confirm++] =
        (double)(edp_now_us() - l->sent_us[seq - 1]);
}

static int lat_handler(void *ud, const edp_delivery *d, char *reason,
                       size_t reason_len) {
  (void)reason;
  (void)reason_len;
  lat_run *l = ud;
  int64_t sent = d->body_len >= 20 ? atoll(d->body) : 0;
  pthread_mutex_lock(&l->mu);
  if (sent > 0 && l->n_e2e < l->n)
    l->e2e_us[l->n_e2e++] = (double)(edp_now_us() - sent);
  pthread_mutex_unlock(&l->mu);
  return 0;
}

static void *lat_receiver(void *arg) {
  lat_run *l = arg;
  edp_conn *c = connect_to(l->url);
  edp_fwd_receiver_opts o;
  edp_fwd_receiver_opts_init(&o);
  o.queue = l->queue;
  o.prefetch = 1000;
  o.handler = lat_handler;
  o.ud = l;
  edp_fwd_receiver *r = NULL;
  if (edp_fwd_receiver_new(c, &o, &r))
    cli_die(&app, CLI_UNAVAILABLE, "latency receiver failed");
  edp_fwd_receiver_stats st = {0};
  while ((long)st.processed < l->n) {
    int rc = edp_fwd_receive_batch(r, 30000, 64);
    if (rc)
      cli_die(&app, CLI_UNAVAILABLE, "latency receive: %s", edp_strerror(rc));
    edp_fwd_receiver_stats_get(r, &st);
  }
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  return NULL;
}

typedef struct pct {
  double p50, p99, p999;
} pct;

static pct percentiles(double *v, long n) {
  pct p = {0, 0, 0};
  if (n <= 0)
    return p;
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  p.p50 = v[(long)(0.50 * (n - 1))] / 1000;
  p.p99 = v[(long)(0.99 * (n - 1))] / 1000;
  p.p999 = v[(long)(0.999 * (n - 1))] / 1000;
  return p;
}

/* Sends n 100-byte messages (the send time in the body) at rate msg/s (0:
 * as fast as the window allows) while a receiver thread takes them. */
static void latency(const char *url, long n, long rate, pct *confirm, pct *e2e,
                    double *achieved) {
  char q[128];
  fresh_queue(url, q, sizeof(q));
  lat_run l = {.url = url, .queue = q, .n = n, .rate = rate};
  l.sent_us = calloc((size_t)n, sizeof(int64_t));
  l.confirm_us = calloc((size_t)n, sizeof(double));
  l.e2e_us = calloc((size_t)n, sizeof(double));
  if (!l.sent_us || !l.confirm_us || !l.e2e_us)
    cli_die(&app, CLI_SOFTWARE, "out of memory");
  pthread_mutex_init(&l.mu, NULL);
  pthread_t th;
  pthread_create(&th, NULL, lat_receiver, &l);
  edp_conn *c = connect_to(url);
  edp_fwd_sender_opts so;
  edp_fwd_sender_opts_init(&so);
  so.queue = q;
  so.on_confirm = on_confirm;
  so.ud = &l;
  edp_fwd_sender *s = NULL;
  if (edp_fwd_sender_new(c, &so, &s))
    cli_die(&app, CLI_UNAVAILABLE, "latency sender failed");
  char body[100], id[64];
  memset(body, '.', sizeof(body));
  int64_t start = edp_now_us();
  for (long i = 1; i <= n; i++) {
    if (rate > 0) {
      /* Each message at its own time, slept to with nanosleep (within the
       * timer slack, about 50 us). This once spun through the last
       * millisecond before each message: at 5,000/s (200 us apart) that
       * was a spin all the time, one of the two cores taken from the
       * broker and the receiver, and latency at a fixed rate came out
       * worse than flat out. */
      int64_t due = start + (int64_t)((i - 1) * 1000000 / rate);
      int64_t wait = due - edp_now_us();
      if (wait > 0) {
        struct timespec ts = {(time_t)(wait / 1000000),
                              (long)(wait % 1000000) * 1000};
        nanosleep(&ts, NULL);
      }
    }
    snprintf(id, sizeof(id), "lat-%ld", i);
    l.sent_us[i - 1] = edp_now_us();
    int k =
        snprintf(body, sizeof(body), "%020lld", (long long)l.sent_us[i - 1]);
    body[k] = '.';
    int rc = edp_fwd_send(s, id, body, sizeof(body), NULL);
    if (rc)
      cli_die(&app, CLI_UNAVAILABLE, "latency send: %s", edp_strerror(rc));
  }
  if (edp_fwd_flush(s))
    cli_die(&app, CLI_UNAVAILABLE, "latency flush failed");
  *achieved = n / ((double)(edp_now_us() - start) / 1e6);
  pthread_join(th, NULL);
  edp_fwd_sender_destroy(&s);
  edp_conn_destroy(&c);
  *confirm = percentiles(l.confirm_us, l.n_confirm);
  *e2e = percentiles(l.e2e_us, l.n_e2e);
  drop_queue(url, q);
  free(l.sent_us);
  free(l.confirm_us);
  free(l.e2e_us);
  pthread_mutex_destroy(&l.mu);
}

/* ---------- memory over a longer run ---------- */

static long rss_kb_of(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kb = 0;
  while (f && fgets(line, sizeof(line), f))
    if (!strncmp(line, "VmRSS:", 6))
      kb = atol(line + 6);
  if (f)
    fclose(f);
  return kb;
}

/* A sender at rate msg/s and a receiver, side by side for secs seconds;
 * their RSS sampled every second. first/last: the mean of the first and
 * the last tenth of the samples (after 2 s of warm-up). */
typedef struct soak {
  long first[2], last[2], peak[2]; /* [0] sender, [1] receiver */
  long n;
} soak;

static soak soak_run(const char *url, long rate, int secs) {
  char q[128], prog[2][PATH_MAX], ns[32], rs[32];
  fresh_queue(url, q, sizeof(q));
  long n = rate * secs;
  snprintf(ns, sizeof(ns), "%ld", n);
  snprintf(rs, sizeof(rs), "%ld", rate);
  prog_path(prog[0], sizeof(prog[0]), "edp-forward-sender");
  prog_path(prog[1], sizeof(prog[1]), "edp-forward-receiver");
  char *sargv[] = {prog[0],   "--url",   (char *)url, "--queue", q,
                   "--count", ns,        "--rate",    rs,        "--body-size",
                   "100",     "--quiet", NULL};
  char *rargv[] = {prog[1], "--url",   (char *)url, "--queue",
                   q,       "--count", ns,          "--prefetch",
                   "1000",  "--quiet", NULL};
  double t0 = bench_wall_s();
  pid_t rp = bench_spawn(rargv), sp = bench_spawn(sargv);
  long *samples[2];
  long cap = secs + 64, k = 0;
  samples[0] = calloc((size_t)cap, sizeof(long));
  samples[1] = calloc((size_t)cap, sizeof(long));
  soak s = {{0, 0}, {0, 0}, {0, 0}, n};
  while (k < cap) {
    edp_sleep_ms(1000, -1);
    long a = rss_kb_of(sp), b = rss_kb_of(rp);
    if (!a && !b)
      break;
    samples[0][k] = a;
    samples[1][k] = b;
    k++;
  }
  finish(sp, t0, "edp-forward-sender");
  run rr = finish(rp, t0, "edp-forward-receiver");
  (void)rr;
  long skip = k > 4 ? 2 : 0, used = k - skip, tenth = used / 10 ? used / 10 : 1;
  for (int p = 0; p < 2; p++) {
    long f = 0, l = 0, cnt = 0;
    for (long i = skip; i < k; i++)
      if (samples[p][i] > s.peak[p])
        s.peak[p] = samples[p][i];
    for (long i = skip; i < skip + tenth && i < k; i++, cnt++)
      f += samples[p][i];
    s.first[p] = cnt ? f / cnt : 0;
    cnt = 0;
    for (long i = k - tenth; i < k; i++)
      if (samples[p][i] > 0) {
        l += samples[p][i];
        cnt++;
      }
    s.last[p] = cnt ? l / cnt : 0;
  }
  free(samples[0]);
  free(samples[1]);
  drop_queue(url, q);
  return s;
}

/* The memory table of a soak run of secs seconds. */
static void print_soak(soak sk, int soak_s) {
  printf("\nMemory over time: `edp-forward-sender --rate 5000` and "
         "`edp-forward-receiver` side by side for %d s (%ld messages of 100 "
         "bytes), RSS from /proc every second (`make bench-soak` runs it for "
         "600 s):\n\n",
         soak_s, sk.n);
  printf("| program | RSS first tenth KiB | RSS last tenth KiB | peak KiB | "
         "growth |\n|---|---:|---:|---:|---:|\n");
  int flat = 1;
  for (int p = 0; p < 2; p++) {
    long g = sk.last[p] - sk.first[p];
    flat &= g < 512 && sk.peak[p] < 8192;
    printf("| %s | %ld | %ld | %ld | %+ld KiB |\n",
           p ? "edp-forward-receiver" : "edp-forward-sender", sk.first[p],
           sk.last[p], sk.peak[p], g);
  }
  printf("\nTarget: under 8 MiB and flat (less than 512 KiB of growth): "
         "**%s**.\n",
         met(flat));
}

static void print_latency(double r5, pct c5, pct e5, double rf, pct cf, pct ef);

/* The two latency runs: at 5,000 msg/s and flat out. */
static void latency_pair(const char *url, int quick) {
  pct c5, e5, cf, ef;
  double r5, rf;
  fprintf(stderr, "cost: latency at 5000 msg/s...\n");
  latency(url, quick ? 10000 : 50000, 5000, &c5, &e5, &r5);
  fprintf(stderr, "cost: latency flat out...\n");
  latency(url, quick ? 20000 : 100000, 0, &cf, &ef, &rf);
  print_latency(r5, c5, e5, rf, cf, ef);
}

int main(int argc, char **argv) {
  (void)argc;
  cli_init(&app, "edp-bench-cost");
  signal(SIGPIPE, SIG_IGN);
  const char *url = getenv("EDP_URL");
  if (!url || !url[0])
    cli_die(&app, CLI_USAGE, "EDP_URL is not set (tests/with-broker.sh)");
  const char *tls = getenv("EDP_URL_TLS");
  edp_bin =
      getenv("EDP_BIN") && getenv("EDP_BIN")[0] ? getenv("EDP_BIN") : "bin";
  snprintf(raw_bin, sizeof(raw_bin), "%s", argv[0]);
  char *slash = strrchr(raw_bin, '/');
  snprintf(slash ? slash + 1 : raw_bin,
           sizeof(raw_bin) - (size_t)(slash ? slash + 1 - raw_bin : 0),
           "rawc-baseline");
  if (access(raw_bin, X_OK))
    cli_die(&app, CLI_SOFTWARE, "%s: not built (make bench builds it)",
            raw_bin);
  int quick = bench_quick();
  long n = quick ? 20000 : 100000;
  const char *soak_env = getenv("EDP_BENCH_SOAK_S");
  int soak_s = soak_env && atoi(soak_env) > 0 ? atoi(soak_env)
               : quick                        ? 20
                                              : 60;
  if (getenv("EDP_BENCH_LATENCY_ONLY")) {
    latency_pair(url, quick);
    return 0;
  }
  if (getenv("EDP_BENCH_SOAK_ONLY")) {
    print_soak(soak_run(url, 5000, soak_s), soak_s);
    return 0;
  }

  pair_result small =
      compare(url, n, 100, 1024, 1000, "100-byte messages", 1, ROUNDS);
  pair_result small_tls;
  if (tls && tls[0])
    small_tls = compare(tls, n / 2, 100, 1024, 1000, "100-byte messages, TLS",
                        0, ROUNDS);

  static const long sizes[] = {64L << 10, 1L << 20, 16L << 20};
  static const char *size_names[] = {"64 KiB", "1 MiB", "16 MiB"};
  pair_result big[3];
  long big_window[3], big_n[3];
  for (int i = 0; i < 3; i++) {
    /* 64 MiB in flight at most; 256 MiB per run (a fifth when quick). */
    big_window[i] = (64L << 20) / sizes[i];
    if (big_window[i] > 1024)
      big_window[i] = 1024;
    big_n[i] = (256L << 20) / sizes[i] / (quick ? 5 : 1);
    if (big_n[i] < 4)
      big_n[i] = 4;
    big[i] = compare(url, big_n[i], sizes[i], big_window[i], big_window[i],
                     size_names[i], 0, BIG_ROUNDS);
  }

  fprintf(stderr, "cost: latency at 5000 msg/s...\n");
  pct c5, e5, cf, ef;
  double r5, rf;
  latency(url, quick ? 10000 : 50000, 5000, &c5, &e5, &r5);
  fprintf(stderr, "cost: latency flat out...\n");
  latency(url, quick ? 20000 : 100000, 0, &cf, &ef, &rf);

  fprintf(stderr, "cost: memory over %d s at 5000 msg/s...\n", soak_s);
  soak sk = soak_run(url, 5000, soak_s);

  printf("## Client cost against raw rabbitmq-c (`edp-bench-cost`)\n\n");
  printf(
      "The same node, the same work: `edp-forward-sender` (persistent, "
      "confirm window 1024) against `bench/rawc-baseline publish` (plain "
      "rabbitmq-c 0.11, a sliding confirm window of the same size, the same "
      "properties on the wire), and `edp-forward-receiver --prefetch 1000` "
      "against `rawc-baseline consume` (basic.qos 1000, an ack per message "
      "after it was read), and once more with `--coalesce-acks` (one "
      "basic.ack with multiple for each batch of handled messages, sent when "
      "the last of them was handled); both print nothing per message "
      "(`--quiet`). "
      "%ld messages of 100 bytes per run, the two clients' runs interleaved "
      "(order swapped every round), medians of %d rounds. msg/s is the "
      "whole process's wall time (connect included), CPU its user + system "
      "time (wait4), RSS its peak.\n\n",
      n, ROUNDS);
  printf("| run | msg/s | CPU us/msg | peak RSS MiB | MB/s | msg/s vs raw "
         "| CPU vs raw |\n|---|---:|---:|---:|---:|---:|---:|\n");
  print_pair("publish", small.pub);
  print_pair("consume", small.con);
  printf("| consume, edp `--coalesce-acks` | %.0f | %.1f | %.0f | %.1f | "
         "**%.2f** | **%.2f** |\n",
         small.con[2].rate, small.con[2].cpu_us, small.con[2].rss_kb / 1024,
         small.con[2].mbs, small.con[2].rate / small.con[0].rate,
         small.con[2].cpu_us / small.con[0].cpu_us);
  if (tls && tls[0]) {
    print_pair("publish, TLS", small_tls.pub);
    print_pair("consume, TLS", small_tls.con);
  }
  double pr = small.pub[1].rate / small.pub[0].rate,
         pc = small.pub[1].cpu_us / small.pub[0].cpu_us,
         cr = small.con[1].rate / small.con[0].rate,
         cc = small.con[1].cpu_us / small.con[0].cpu_us;
  printf("\nTargets (plain): msg/s >= 0.95 x raw: publish **%s** (%.2f), "
         "consume **%s** (%.2f); CPU per message <= 1.25 x raw: publish "
         "**%s** (%.2f), consume **%s** (%.2f). Peak RSS under 8 MiB: "
         "sender **%s** (%.1f MiB), receiver **%s** (%.1f MiB).\n",
         met(pr >= 0.95), pr, met(cr >= 0.95), cr, met(pc <= 1.25), pc,
         met(cc <= 1.25), cc, met(small.pub[1].rss_kb < 8192),
         small.pub[1].rss_kb / 1024, met(small.con[1].rss_kb < 8192),
         small.con[1].rss_kb / 1024);

  edp_conn_opts defaults;
  edp_conn_opts_init(&defaults);
  size_t read_ahead = defaults.read_ahead_bytes;
  printf("\nBig bodies through forwarding (the same programs; window and "
         "prefetch = 64 MiB / body, at most 1024; 256 MiB per run%s; "
         "medians of %d rounds, the order swapped every round). "
         "Bound: peak RSS <= (window + 1) x body + 8 MiB for the sender: "
         "the window's messages (it keeps each until its confirm, to "
         "publish it again after a reconnect: edp-forward-sender lends "
         "bodies of 64 KiB and more to the library (`edp_fwd_send_lent`) "
         "instead of having them copied, from a pool of window + 1 buffers) "
         "and the one it builds. For the receiver the least of that and "
         "2 x (read-ahead + body) + 8 MiB: it reads no further ahead of its "
         "handler than the connection's read-ahead (`read_ahead_bytes`, "
         "%zu MiB by default) in the batch it gathers and again in the "
         "queue behind it, each up to one body over.\n\n",
         quick ? ", a fifth when reduced" : "", BIG_ROUNDS,
         read_ahead >> 20);
  printf("| body | window | run | MB/s | CPU us/msg | peak RSS MiB | MB/s vs "
         "raw | RSS bound MiB | within |\n|---|---:|---|---:|---:|---:|---:|"
         "---:|---|\n");
  int big_ok = 1;
  for (int i = 0; i < 3; i++) {
    double window_bound =
        (double)(big_window[i] + 1) * sizes[i] / 1048576.0 + 8;
    double ahead_bound =
        2.0 * ((double)read_ahead + sizes[i]) / 1048576.0 + 8;
    for (int k = 0; k < 2; k++) {
      const side *s = k ? big[i].pub : big[i].con;
      double bound = k || ahead_bound > window_bound ? window_bound
                                                     : ahead_bound;
      for (int w = 0; w < 2; w++) {
        double ratio = s[w].mbs / s[0].mbs;
        int within = s[w].rss_kb / 1024 <= bound;
        if (w)
          big_ok &= ratio >= 0.9 && within;
        printf("| %s | %ld | %s %s | %.1f | %.0f | %.0f | %s%.2f%s | %.0f | "
               "%s |\n",
               size_names[i], big_window[i], k ? "publish" : "consume",
               w ? "edp" : "raw", s[w].mbs, s[w].cpu_us, s[w].rss_kb / 1024,
               w ? "**" : "", ratio, w ? "**" : "", bound,
               within ? "yes" : "no");
      }
    }
  }
  printf("\nTarget: edp >= 0.9 x raw MB/s and within the RSS bound, every "
         "size: **%s**.\n",
         met(big_ok));

  print_latency(r5, c5, e5, rf, cf, ef);
  print_soak(sk, soak_s);
  return 0;
}

static void print_latency(double r5, pct c5, pct e5, double rf, pct cf,
                          pct ef) {
  printf("\nLatency (one process: an `edp_fwd_sender` and an "
         "`edp_fwd_receiver` on two connections, 100-byte messages; confirm "
         "= publish to the broker's confirm, end to end = publish to the "
         "receiver's handler), ms:\n\n");
  printf("| load | achieved msg/s | confirm p50 | p99 | p99.9 | end to end "
         "p50 | p99 | p99.9 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
  printf("| 5,000 msg/s | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
         r5, c5.p50, c5.p99, c5.p999, e5.p50, e5.p99, e5.p999);
  printf("| flat out (window 1024) | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f "
         "| %.2f |\n",
         rf, cf.p50, cf.p99, cf.p999, ef.p50, ef.p99, ef.p999);
}
