/*
 * edp-bench-ambulance - how fast priority messages get through a standard
 * backlog in each layout of the ambulance pattern, and what it costs the
 * standard messages. Prints one markdown section on stdout (progress on
 * stderr); needs EDP_URL (make bench provides a private node).
 *
 * Main table: a standing backlog of 5,000 standard messages (topped up as
 * it is consumed), a 1 ms handler, 2 standard threads (+1: the priority
 * thread, or a third worker in fifo and native), and priority messages at
 * 10/s for 10 s. For fifo, carpool, ambulance and native: priority latency
 * (sent to processed) p50/p99 and standard throughput, with ratios to fifo
 * measured in the same run.
 *
 * Second table: the ambulance thread's choice under a burst of 400
 * priority messages, with a priority prefetch of 1, 2 and 4: how many
 * standard messages it started while priority messages were queued.
 *
 * For the plots it writes ambulance-latency.csv (the priority latency
 * distribution of each mode) and ambulance-throughput.csv (standard
 * msg/s per mode); see benchdata.h. EDP_BENCH_QUICK=1 sends priority
 * messages for 5 s per run instead of 10 s.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchdata.h"
#include "edp.h"

#define HANDLER_MS 1
#define STD_THREADS 2
#define MAX_LAT 100000
#define ROUNDS 2

typedef struct run_cfg {
  int mode;
  long backlog;   /* standing standard backlog; 0 = none */
  long n_prio;    /* priority messages */
  int prio_per_s; /* 0 = all at once */
  int priority_prefetch;
  int check; /* check_priority_lane */
} run_cfg;

typedef struct run_res {
  double p50, p99, max; /* priority latency, ms */
  double std_rate;      /* standard msg/s while priority messages flowed */
  double t0_busy;       /* share of that time thread 0 spent in handlers */
  long prio_thread_std; /* burst: standard started on thread 0 meanwhile */
  long n_lat;
} run_res;

/* Shared with the consumer threads. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  double lat[MAX_LAT];
  long n_lat;
  long std_done;
  int64_t *t0_std_starts; /* start_us of standard work on thread 0 */
  long n_t0, cap_t0;
  int64_t p_first, p_last; /* earliest and latest priority start_us */
} G;

static int handler(void *ud, const edp_amb_job *job) {
  (void)ud;
  (void)job;
  edp_sleep_ms(HANDLER_MS, -1);
  return 0;
}

static void on_event(void *ud, int ev, const edp_amb_job *job) {
  (void)ud;
  if (ev != EDP_AMB_PROCESSED)
    return;
  pthread_mutex_lock(&G.mu);
  if (job->kind == EDP_AMB_PRIORITY) {
    if (G.n_lat < MAX_LAT && job->sent_us)
      G.lat[G.n_lat++] = (double)(job->end_us - job->sent_us) / 1000.0;
    if (!G.p_first || job->start_us < G.p_first)
      G.p_first = job->start_us;
    if (job->start_us > G.p_last)
      G.p_last = job->start_us;
    pthread_cond_broadcast(&G.cv);
  } else {
    G.std_done++;
    if (job->thread == 0 && G.n_t0 < G.cap_t0)
      G.t0_std_starts[G.n_t0++] = job->start_us;
  }
  pthread_mutex_unlock(&G.mu);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "edp-bench-ambulance: %s: %s\n", what, edp_strerror(rc));
  exit(1);
}

static edp_conn *connect_or_die(const char *url) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.client_name = "edp-bench-ambulance";
  edp_conn *c = NULL;
  char why[600];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  if (rc) {
    fprintf(stderr, "edp-bench-ambulance: %s\n", why);
    exit(1);
  }
  return c;
}

static void send_or_die(edp_amb_sender *s, int kind, long n) {
  char id[32];
  snprintf(id, sizeof(id), "%c%ld", kind == EDP_AMB_PRIORITY ? 'P' : 'S', n);
  int rc = edp_amb_send(s, kind, id, id, strlen(id));
  if (rc)
    die("send", rc);
}

static void run(const char *url, const run_cfg *cfg, run_res *res) {
  char base[128];
  static int seq;
  snprintf(base, sizeof(base), "bench.amb.%d.%d", (int)getpid(), ++seq);
  /* Standard and priority messages leave on separate connections, so a
   * priority message never queues in a socket behind a top-up burst. */
  edp_conn *cs = connect_or_die(url), *cp = connect_or_die(url);
  edp_amb_sender_opts so;
  edp_amb_sender_opts_init(&so);
  so.mode = cfg->mode;
  so.base = base;
  so.persistent = 0;
  edp_amb_sender *ss = NULL, *sp = NULL;
  int rc = edp_amb_sender_new(cs, &so, &ss);
  if (!rc)
    rc = edp_amb_sender_new(cp, &so, &sp);
  if (rc)
    die("sender", rc);
  long std_sent = 0, prio_sent = 0;
  for (; std_sent < cfg->backlog; std_sent++)
    send_or_die(ss, EDP_AMB_STANDARD, std_sent + 1);
  if ((rc = edp_amb_flush(ss)))
    die("flush", rc);

  pthread_mutex_lock(&G.mu);
  G.n_lat = 0;
  G.std_done = 0;
  G.n_t0 = 0;
  G.p_first = G.p_last = 0;
  pthread_mutex_unlock(&G.mu);
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = url;
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ro.mode = cfg->mode;
  ro.base = base;
  ro.threads = STD_THREADS;
  ro.priority_prefetch = cfg->priority_prefetch;
  ro.check_priority_lane = cfg->check;
  ro.conn = &co;
  ro.handler = handler;
  ro.on_event = on_event;
  edp_amb_receiver *r = NULL;
  char why[600];
  if ((rc = edp_amb_receiver_start(&ro, &r, why, sizeof(why)))) {
    fprintf(stderr, "edp-bench-ambulance: %s\n", why);
    exit(1);
  }

  /* Priority messages on schedule; in between, keep the standard backlog
   * at its size. */
  int64_t start = edp_now_ms();
  edp_amb_receiver_stats st0, st1;
  edp_amb_receiver_stats_get(r, &st0);
  while (prio_sent < cfg->n_prio) {
    int64_t due =
        cfg->prio_per_s ? start + prio_sent * 1000 / cfg->prio_per_s : start;
    int64_t now = edp_now_ms();
    if (now >= due) {
      send_or_die(sp, EDP_AMB_PRIORITY, ++prio_sent);
      continue;
    }
    if (cfg->backlog) {
      pthread_mutex_lock(&G.mu);
      long done = G.std_done;
      pthread_mutex_unlock(&G.mu);
      while (std_sent - done < cfg->backlog)
        send_or_die(ss, EDP_AMB_STANDARD, ++std_sent);
    }
    int wait = (int)(due - now);
    rc = edp_conn_wait(cs, -1, wait < 5 ? wait : 5);
    if (rc < 0)
      die("wait", rc);
  }
  int64_t end = edp_now_ms();
  if (cfg->prio_per_s)
    end = start + cfg->n_prio * 1000 / cfg->prio_per_s;
  edp_amb_receiver_stats_get(r, &st1);
  double secs = (double)(end - start) / 1000.0;
  if (secs <= 0)
    secs = 0.001;
  res->std_rate = (double)(st1.processed[EDP_AMB_STANDARD] -
                           st0.processed[EDP_AMB_STANDARD]) /
                  secs;
  res->t0_busy =
      (double)(st1.busy_us_priority_thread - st0.busy_us_priority_thread) /
      (secs * 1e6);

  /* Wait (bounded) until every priority message was processed; in fifo
   * the last ones are still behind the backlog. */
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 60;
  pthread_mutex_lock(&G.mu);
  while (G.n_lat < cfg->n_prio)
    if (pthread_cond_timedwait(&G.cv, &G.mu, &dl))
      break;
  pthread_mutex_unlock(&G.mu);
  edp_amb_receiver_destroy(&r);

  pthread_mutex_lock(&G.mu);
  res->n_lat = G.n_lat;
  qsort(G.lat, (size_t)G.n_lat, sizeof(double), cmp_d);
  res->p50 = G.n_lat ? G.lat[(G.n_lat - 1) / 2] : -1;
  res->p99 = G.n_lat ? G.lat[(G.n_lat * 99 + 99) / 100 - 1] : -1;
  res->max = G.n_lat ? G.lat[G.n_lat - 1] : -1;
  /* Standard messages the priority thread started while priority messages
   * were queued: between the first and the last priority start. */
  res->prio_thread_std = 0;
  for (long i = 0; i < G.n_t0; i++)
    if (G.t0_std_starts[i] > G.p_first && G.t0_std_starts[i] < G.p_last)
      res->prio_thread_std++;
  pthread_mutex_unlock(&G.mu);

  char q[256];
  for (int k = 0; k < 2; k++)
    if (!edp_amb_queue_name(cfg->mode, base, k, q, sizeof(q)))
      edp_conn_queue_delete(cs, q);
  snprintf(q, sizeof(q), "%s.dlq", base);
  edp_conn_queue_delete(cs, q);
  edp_amb_sender_destroy(&ss);
  edp_amb_sender_destroy(&sp);
  edp_conn_destroy(&cs);
  edp_conn_destroy(&cp);
}

/* The machine's own wake-up delay while the main table runs: a thread
 * that asks to sleep 1 ms and records how late it wakes. On a shared,
 * overloaded machine this tail, not the pattern, bounds every p99. */
static struct {
  pthread_t tid;
  int stop_pipe[2];
  double late[200000];
  long n;
} P;

static void *probe_main(void *arg) {
  (void)arg;
  for (;;) {
    int64_t t0 = edp_wall_us();
    if (edp_sleep_ms(1, P.stop_pipe[0]))
      return NULL;
    if (P.n < 200000)
      P.late[P.n++] = (double)(edp_wall_us() - t0 - 1000) / 1000.0;
  }
}

int main(void) {
  const char *url = getenv("EDP_URL");
  if (!url || !url[0]) {
    fprintf(stderr, "edp-bench-ambulance: EDP_URL is not set\n");
    return 1;
  }
  pthread_mutex_init(&G.mu, NULL);
  pthread_cond_init(&G.cv, NULL);
  G.cap_t0 = 200000;
  G.t0_std_starts = calloc((size_t)G.cap_t0, sizeof(int64_t));
  if (!G.t0_std_starts)
    return 1;

  if (pipe(P.stop_pipe) || pthread_create(&P.tid, NULL, probe_main, NULL))
    return 1;
  static const int modes[] = {EDP_AMB_FIFO, EDP_AMB_CARPOOL, EDP_AMB_AMBULANCE,
                              EDP_AMB_NATIVE};
  /* Two rounds, modes interleaved, so that a stall of the shared machine
   * hits one mode's sample rather than deciding its p99 (with 100 samples
   * the p99 is the second largest). Latencies are pooled, throughputs
   * averaged. */
  run_res res[4];
  long n_prio = bench_quick() ? 50 : 100;
  static double pooled[4][2 * 100];
  long n_pooled[4] = {0};
  memset(res, 0, sizeof(res));
  for (int round = 0; round < ROUNDS; round++)
    for (int i = 0; i < 4; i++) {
      fprintf(stderr,
              "== round %d, %s: backlog 5000, priority 10/s for %ld s\n",
              round + 1, edp_amb_mode_name(modes[i]), n_prio / 10);
      run_cfg cfg = {modes[i], 5000, n_prio, 10, 4, 1};
      run_res x;
      memset(&x, 0, sizeof(x));
      run(url, &cfg, &x);
      res[i].std_rate += x.std_rate / ROUNDS;
      res[i].t0_busy += x.t0_busy / ROUNDS;
      pthread_mutex_lock(&G.mu);
      for (long k = 0; k < G.n_lat && n_pooled[i] < 2 * 100; k++)
        pooled[i][n_pooled[i]++] = G.lat[k];
      pthread_mutex_unlock(&G.mu);
    }
  for (int i = 0; i < 4; i++) {
    long n = n_pooled[i];
    qsort(pooled[i], (size_t)n, sizeof(double), cmp_d);
    res[i].n_lat = n;
    res[i].p50 = n ? pooled[i][(n - 1) / 2] : -1;
    res[i].p99 = n ? pooled[i][(n * 99 + 99) / 100 - 1] : -1;
    res[i].max = n ? pooled[i][n - 1] : -1;
  }
  ssize_t wr = write(P.stop_pipe[1], "x", 1);
  (void)wr;
  pthread_join(P.tid, NULL);
  qsort(P.late, (size_t)P.n, sizeof(double), cmp_d);
  double probe_p99 = P.n ? P.late[(P.n * 99 + 99) / 100 - 1] : -1;
  double probe_max = P.n ? P.late[P.n - 1] : -1;
  fprintf(stderr, "== ambulance: no backlog, priority 10/s for 3 s\n");
  run_res idle;
  memset(&idle, 0, sizeof(idle));
  run_cfg icfg = {EDP_AMB_AMBULANCE, 0, 30, 10, 4, 1};
  run(url, &icfg, &idle);

  const double target = 5.0 * HANDLER_MS + 10.0;
  printf("## Ambulance: priority messages over a standard backlog\n\n");
  printf("A standing backlog of 5,000 standard messages (topped up as it is "
         "consumed), a %d ms handler, %d standard threads plus one (the "
         "priority thread in carpool and ambulance, a third worker in fifo "
         "and native), prefetch 1 per standard consumer, priority messages "
         "at 10/s for 10 s; two rounds with the modes interleaved, latencies "
         "pooled (200 per mode), throughputs averaged. Latency is from send to "
         "the ack after "
         "processing. Target: priority p99 under 5 x handler + 10 ms = "
         "%.0f ms in carpool, ambulance and native; ambulance standard "
         "throughput at least 95%% of fifo's.\n\n",
         HANDLER_MS, STD_THREADS, target);
  FILE *la = fopen("/proc/loadavg", "r");
  char load[64] = "?";
  if (la) {
    if (!fgets(load, sizeof(load), la))
      snprintf(load, sizeof(load), "?");
    load[strcspn(load, " ")] = '\0';
    fclose(la);
  }
  if (bench_quick())
    printf("**Reduced run** (EDP_BENCH_QUICK=1): priority messages for "
           "%ld s per run, %ld per mode pooled, not the figures above.\n\n",
           n_prio / 10, ROUNDS * n_prio);
  printf("Load average at the end of the main table: %s (on %ld cores, "
         "shared with other work). Meanwhile a probe thread asking to sleep "
         "1 ms woke up to %.1f ms late at p99 (%.1f ms at worst): delays of "
         "that size in the broker or the consumers land in the priority "
         "latency tail whatever the pattern does.\n\n",
         load, sysconf(_SC_NPROCESSORS_ONLN), probe_p99, probe_max);
  printf("| mode | priority p50 ms | priority p99 ms | max ms | p99 vs fifo | "
         "p99 < %.0f ms | standard msg/s | vs fifo | thread 0 busy |\n",
         target);
  printf("|---|---|---|---|---|---|---|---|---|\n");
  for (int i = 0; i < 4; i++) {
    const run_res *x = &res[i];
    int lanes = modes[i] == EDP_AMB_CARPOOL || modes[i] == EDP_AMB_AMBULANCE;
    printf(
        "| %s | %.1f | %.1f | %.1f | %.4f | %s | %.0f | %.2f | %.0f%% %s |\n",
        edp_amb_mode_name(modes[i]), x->p50, x->p99, x->max,
        res[0].p99 > 0 ? x->p99 / res[0].p99 : 0,
        modes[i] == EDP_AMB_FIFO ? "(baseline)"
        : x->p99 < target        ? "yes"
                                 : "**no**",
        x->std_rate, res[0].std_rate > 0 ? x->std_rate / res[0].std_rate : 0,
        x->t0_busy * 100, lanes ? "(priority thread)" : "(a worker)");
    if (x->n_lat < ROUNDS * n_prio)
      printf(
          "| | only %ld of %ld priority messages processed | | | | | | | |\n",
          x->n_lat, ROUNDS * n_prio);
  }
  /* The plots: each mode's pooled priority latencies as a distribution
   * (sorted, with the fraction at or below each), and the standard
   * throughput of each mode. */
  FILE *csv = bench_csv_open("ambulance-latency.csv", "edp-bench-ambulance",
                             "mode,latency_ms,fraction");
  for (int i = 0; csv && i < 4; i++)
    for (long k = 0; k < n_pooled[i]; k++)
      fprintf(csv, "%s,%.3f,%.4f\n", edp_amb_mode_name(modes[i]), pooled[i][k],
              (double)(k + 1) / (double)n_pooled[i]);
  bench_csv_close(csv, "edp-bench-ambulance");
  csv = bench_csv_open("ambulance-throughput.csv", "edp-bench-ambulance",
                       "mode,standard_msg_per_s,vs_fifo,priority_p99_ms");
  for (int i = 0; csv && i < 4; i++)
    fprintf(csv, "%s,%.0f,%.2f,%.1f\n", edp_amb_mode_name(modes[i]),
            res[i].std_rate,
            res[0].std_rate > 0 ? res[i].std_rate / res[0].std_rate : 0,
            res[i].p99);
  bench_csv_close(csv, "edp-bench-ambulance");

  double amb_ratio =
      res[0].std_rate > 0 ? res[2].std_rate / res[0].std_rate : 0;
  printf("\nAmbulance standard throughput is %.0f%% of fifo's (target 95%%: "
         "%s). Carpool's cost is its idle lane: its priority thread was busy "
         "%.1f%% of the time, so %d of %d threads did the standard work "
         "(%.0f%% of fifo's throughput).\n",
         amb_ratio * 100, amb_ratio >= 0.95 ? "met" : "**missed**",
         res[1].t0_busy * 100, STD_THREADS, STD_THREADS + 1,
         res[0].std_rate > 0 ? res[1].std_rate / res[0].std_rate * 100 : 0);
  printf("With no backlog (ambulance, priority 10/s for 3 s) the priority "
         "thread waits on both consumers at once and takes a priority "
         "message as it arrives: p50 %.1f ms, p99 %.1f ms, including the "
         "%d ms handler.\n\n",
         idle.p50, idle.p99, HANDLER_MS);

  /* Burst: how the ambulance thread keeps to priority work while the
   * priority lane holds messages: the prefetch of its priority consumer
   * and the broker check when its lane runs dry. */
  static const int pf[] = {1, 1, 4, 4}, chk[] = {0, 1, 0, 1};
  long slipped[4];
  for (int i = 0; i < 4; i++) {
    fprintf(stderr, "== ambulance burst, priority prefetch %d, check %d\n",
            pf[i], chk[i]);
    run_cfg bcfg = {EDP_AMB_AMBULANCE, 2000, 400, 0, pf[i], chk[i]};
    run_res b;
    memset(&b, 0, sizeof(b));
    run(url, &bcfg, &b);
    slipped[i] = b.prio_thread_std;
  }
  printf("Burst of 400 priority messages at once over a 2,000 backlog "
         "(ambulance, %d ms handler): standard messages the priority thread "
         "started while priority messages were queued (between the first "
         "and the last priority start). Without help the next priority "
         "message is still on the wire when the thread acks the current "
         "one, and a buffered standard message slips in between; a larger "
         "priority prefetch keeps the next ones pushed ahead, and the check "
         "(one passive queue.declare when the priority lane runs dry after "
         "priority work) confirms the lane is really empty before standard "
         "work.\n\n",
         HANDLER_MS);
  printf("| priority prefetch | lane check | standard messages on the "
         "priority thread during the burst |\n");
  printf("|---|---|---|\n");
  for (int i = 0; i < 4; i++)
    printf("| %d | %s | %ld |\n", pf[i], chk[i] ? "on" : "off", slipped[i]);
  free(G.t0_std_starts);
  return 0;
}
