/*
 * edp-bench-supervisor - does the supervisor consumer keep the response
 * time of static max consumers while paying for far fewer of them?
 *
 * One step load (low, a 10x burst, low) with 10 ms of work per message is
 * run three times against the same broker: static min consumers, static
 * max consumers, and the supervisor scaling between min and max. For each
 * run: the end-to-end latency (publish to processed) of the messages sent
 * during the burst, p50 and p99, and the consumer-seconds used from the
 * first message until the last one was processed (the cost). Prints one
 * markdown section with ratios against static max; the target is a p99
 * within 2x static max's at no more than half its consumer-seconds.
 *
 * For the plot it samples every run every 100 ms (queue depth from a
 * passive declare on a connection of its own, active consumers from the
 * supervisor's stats) and keeps every message's latency by the time it
 * was sent: supervisor-timeline.csv and supervisor-latency.csv (see
 * benchdata.h).
 *
 * Needs EDP_URL (tests/with-broker.sh sets it). Progress goes to stderr.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchdata.h"
#include "edp.h"

#define WORK_MS 10
#define LOW_RATE 30
#define BURST_RATE 300
#define LOW_MS 4000
#define BURST_MS 8000
#define MIN_CONSUMERS 2
#define MAX_CONSUMERS 10
/* The supervisor's knobs; EDP_BENCH_SUP_N, _INTERVAL_MS, _HINT_MS,
 * _KEEP_ALIVE_MS and _LONG_KEEP_ALIVE_MS override them for exploring (the
 * defaults are what `make bench` uses). The supervisor runs twice with
 * the consumers' backlog hints: with a keep-alive shorter than the burst,
 * and with one that outlasts it; and once more with the short keep-alive
 * and no hints (depth read every interval only), to show what the hints
 * buy. n = 1: the target allows about two handler times of latency; a
 * steady backlog of n per consumer adds n handler times of waiting, so
 * n = 2 sits at the edge of the target whenever the count matches the
 * load exactly (measured: p99 31-33 ms with n = 2 and hints).
 * EDP_BENCH_SUP_TRACE=1 prints scale events, consumer start-up times and
 * the slow messages on stderr; EDP_BENCH_SUP_ONLY_SUP=1 skips the static
 * runs. */
static int PER_CONSUMER = 1, INTERVAL_MS = 100, KEEP_ALIVE_MS = 3000,
           LONG_KEEP_ALIVE_MS = 10000, HINT_MS = 20;
#define DRAIN_TIMEOUT_MS 60000

typedef struct segment {
  int rate;
  int ms;
  int burst;
} segment;

static const segment profile[] = {
    {LOW_RATE, LOW_MS, 0}, {BURST_RATE, BURST_MS, 1}, {LOW_RATE, LOW_MS, 0}};
#define N_SEG (sizeof(profile) / sizeof(profile[0]))

/* Shared with the handler, which runs on the consumer threads. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  long total, done, bad;
  int64_t *lat;         /* per seq: latency in ms, -1 = not processed */
  unsigned char *burst; /* per seq: sent during the burst */
} R = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, NULL};

static int handler(void *ud, int consumer, const edp_delivery *d) {
  (void)ud;
  (void)consumer;
  edp_sleep_ms(WORK_MS, -1);
  unsigned long long seq = 0;
  long long sent = 0;
  int ok =
      sscanf(d->body, "{\"seq\":%llu,\"sent_ms\":%lld}", &seq, &sent) == 2 &&
      seq >= 1 && seq <= (unsigned long long)R.total;
  int64_t lat = edp_wall_ms() - sent;
  pthread_mutex_lock(&R.mu);
  if (ok && R.lat[seq - 1] < 0) {
    R.lat[seq - 1] = lat;
    R.done++;
  } else {
    R.bad++; /* a duplicate or a foreign message: reported */
  }
  pthread_cond_signal(&R.cv);
  pthread_mutex_unlock(&R.mu);
  return 0;
}

static long seg_count(const segment *s) {
  long n = 0;
  while ((long long)n * 1000 / s->rate < s->ms)
    n++;
  return n;
}

static int TRACE;
static int64_t T0; /* burst start, monotonic */
static void trace_log(void *ud, int level, const char *msg) {
  (void)ud;
  if (TRACE && level <= EDP_LOG_DEBUG)
    fprintf(stderr, "  [%+6lld] %s\n", (long long)(edp_now_ms() - T0), msg);
}
static void trace_ev(void *ud, const edp_sup_event *ev) {
  (void)ud;
  if (TRACE && (ev->type == EDP_SUP_START || ev->type == EDP_SUP_RETIRE))
    fprintf(stderr, "  [%+6lld] %s %d depth %lld\n",
            (long long)(edp_now_ms() - T0),
            ev->type == EDP_SUP_START ? "start" : "retire", ev->consumer,
            (long long)ev->depth);
}
static int64_t *PUB; /* per seq: publish time, monotonic */

/* The timeline behind the plot: while a run's load and drain go on, the
 * main thread samples depth and consumers every SAMPLE_MS (between its
 * publishes, never in the handler's way). */
#define SAMPLE_MS 100
static struct {
  FILE *timeline, *latency;
  const char *id; /* the run, as the CSV names it */
  const char *queue;
  edp_conn *mc; /* the sampler's own connection */
  edp_sup *sup;
  int64_t l0;    /* load start, monotonic */
  int64_t next;  /* next sample due */
  int64_t *sent; /* per seq: sent, ms after l0 */
} TL;

static void sample_maybe(void) {
  int64_t now = edp_now_ms();
  if (!TL.timeline || !TL.mc || now < TL.next)
    return;
  TL.next = now + SAMPLE_MS;
  uint32_t depth = 0;
  if (edp_conn_queue_inspect(TL.mc, TL.queue, &depth, NULL))
    return;
  edp_sup_stats st;
  edp_sup_stats_get(TL.sup, &st);
  fprintf(TL.timeline, "%s,%.2f,%u,%d\n", TL.id, (double)(now - TL.l0) / 1000.0,
          depth, st.consumers);
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

typedef struct result {
  const char *label;
  double p50, p99, max, cs;
  int peak;
  long bad;
} result;

static void die(const char *what, int rc) {
  fprintf(stderr, "edp-bench-supervisor: %s: %s\n", what, edp_strerror(rc));
  exit(1);
}

/* Services the publisher's connection until the monotonic time t,
 * sampling the timeline on the way. */
static void wait_until(edp_conn *c, int64_t t) {
  for (;;) {
    sample_maybe();
    int64_t now = edp_now_ms(), left = t - now;
    if (left <= 0)
      return;
    if (TL.timeline && TL.next > now && TL.next - now < left)
      left = TL.next - now;
    if (edp_conn_wait(c, -1, (int)left) < 0)
      edp_sleep_ms((int)left, -1);
  }
}

static void run(const char *url, const char *label, const char *id,
                int supervise, int min, int max, int keep_alive_ms, int hint_ms,
                result *out) {
  char queue[128];
  static int n_run;
  snprintf(queue, sizeof(queue), "edp.bench.sup.%d.%d", (int)getpid(), ++n_run);
  R.done = R.bad = 0;
  for (long i = 0; i < R.total; i++)
    R.lat[i] = -1;

  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = url;
  co.client_name = "edp-bench-supervisor-load";
  edp_conn *pc = NULL;
  char why[600];
  int rc = edp_conn_open(&co, &pc, why, sizeof(why));
  if (rc) {
    fprintf(stderr, "edp-bench-supervisor: %s\n", why);
    exit(1);
  }
  edp_fwd_sender_opts fo;
  edp_fwd_sender_opts_init(&fo);
  fo.queue = queue;
  edp_fwd_sender *snd = NULL;
  if ((rc = edp_fwd_sender_new(pc, &fo, &snd)))
    die("sender", rc);

  edp_sup_opts so;
  edp_sup_opts_init(&so);
  so.url = url;
  so.queue = queue;
  so.name = "edp-bench-supervisor";
  so.supervise = supervise;
  so.interval_ms = INTERVAL_MS;
  so.hint_ms = hint_ms;
  so.policy.min = min;
  so.policy.max = max;
  so.policy.per_consumer = PER_CONSUMER;
  so.policy.keep_alive_ms = keep_alive_ms;
  so.handler = handler;
  so.log = trace_log;
  so.on_event = trace_ev;
  T0 = INT64_MAX / 2;
  edp_sup *s = NULL;
  if ((rc = edp_sup_new(&so, &s, why, sizeof(why)))) {
    fprintf(stderr, "edp-bench-supervisor: %s\n", why);
    exit(1);
  }
  TL.id = id;
  TL.queue = queue;
  TL.sup = s;
  TL.mc = NULL;
  if (TL.timeline) {
    co.client_name = "edp-bench-supervisor-sampler";
    if (edp_conn_open(&co, &TL.mc, why, sizeof(why)))
      fprintf(stderr, "edp-bench-supervisor: sampler: %s\n", why);
  }
  TL.next = INT64_MAX;
  /* Let the first consumers connect before the clock starts. */
  wait_until(pc, edp_now_ms() + 1000);
  TL.l0 = edp_now_ms();
  TL.next = TL.l0;
  edp_sup_stats st0, st1;
  edp_sup_stats_get(s, &st0);
  fprintf(stderr, "edp-bench-supervisor: %s: publishing...\n", label);

  long seq = 0;
  for (size_t i = 0; i < N_SEG; i++) {
    int64_t start = edp_now_ms();
    if (profile[i].burst)
      T0 = start;
    long n = seg_count(&profile[i]);
    for (long k = 0; k < n; k++) {
      wait_until(pc, start + (int64_t)k * 1000 / profile[i].rate);
      char id[64], body[96];
      seq++;
      R.burst[seq - 1] = (unsigned char)profile[i].burst;
      PUB[seq - 1] = edp_now_ms() - T0;
      TL.sent[seq - 1] = edp_now_ms() - TL.l0;
      snprintf(id, sizeof(id), "b-%ld", seq);
      int len = snprintf(body, sizeof(body), "{\"seq\":%ld,\"sent_ms\":%lld}",
                         seq, (long long)edp_wall_ms());
      if ((rc = edp_fwd_send(snd, id, body, (size_t)len, "application/json")))
        die("publish", rc);
    }
  }
  if ((rc = edp_fwd_flush(snd)))
    die("confirms", rc);
  int64_t load_end = edp_now_ms();

  /* Wait (on a condition variable) until every message was processed. */
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += DRAIN_TIMEOUT_MS / 1000;
  pthread_mutex_lock(&R.mu);
  while (R.done < R.total) {
    /* Wake at least every sample period to sample the timeline. */
    struct timespec w;
    clock_gettime(CLOCK_REALTIME, &w);
    w.tv_nsec += SAMPLE_MS * 1000000L;
    if (w.tv_nsec >= 1000000000L) {
      w.tv_sec++;
      w.tv_nsec -= 1000000000L;
    }
    int last = w.tv_sec > dl.tv_sec ||
               (w.tv_sec == dl.tv_sec && w.tv_nsec >= dl.tv_nsec);
    if (pthread_cond_timedwait(&R.cv, &R.mu, last ? &dl : &w) && last)
      break;
    pthread_mutex_unlock(&R.mu);
    sample_maybe();
    pthread_mutex_lock(&R.mu);
  }
  long done = R.done;
  pthread_mutex_unlock(&R.mu);
  /* The cost window is the same for every run: it ends when the last
   * message was processed, but not before the longest keep-alive after
   * the load, so a supervisor pays for the consumers it keeps after a
   * burst. */
  int64_t window_end = load_end + LONG_KEEP_ALIVE_MS + 500;
  int64_t extra_ms = 0;
  if (supervise)
    wait_until(pc, window_end);
  else if (edp_now_ms() < window_end)
    /* A static pool holds its consumers all the time: charge the rest of
     * the window without waiting for it. */
    extra_ms = (window_end - edp_now_ms()) * min;
  edp_sup_stats_get(s, &st1);
  st1.consumer_ms += extra_ms;
  /* Sampling ends with the run. */
  TL.next = INT64_MAX;
  edp_conn_destroy(&TL.mc);
  edp_sup_destroy(&s);
  for (long i = 0; TL.latency && i < R.total; i++)
    if (R.lat[i] >= 0)
      fprintf(TL.latency, "%s,%.3f,%lld\n", id, (double)TL.sent[i] / 1000.0,
              (long long)R.lat[i]);
  if (done < R.total) {
    fprintf(stderr, "edp-bench-supervisor: %s: only %ld of %ld processed\n",
            label, done, R.total);
    exit(1);
  }

  if (TRACE)
    for (long i = 0; i < R.total; i++)
      if (R.burst[i] && R.lat[i] > 20)
        fprintf(stderr, "  slow: seq %ld published %+lld lat %lld\n", i + 1,
                (long long)PUB[i], (long long)R.lat[i]);
  int64_t *b = malloc(sizeof(int64_t) * (size_t)R.total);
  long nb = 0;
  for (long i = 0; i < R.total; i++)
    if (R.burst[i])
      b[nb++] = R.lat[i];
  qsort(b, (size_t)nb, sizeof(int64_t), cmp64);
  out->label = label;
  out->p50 = (double)b[nb / 2];
  out->p99 = (double)b[(nb * 99) / 100];
  out->max = (double)b[nb - 1];
  out->cs = (double)(st1.consumer_ms - st0.consumer_ms) / 1000.0;
  out->peak = st1.peak;
  out->bad = R.bad;
  free(b);
  fprintf(stderr,
          "edp-bench-supervisor: %s: burst p50 %.0f ms, p99 %.0f ms, max %.0f "
          "ms, %.1f consumer-s, peak %d\n",
          label, out->p50, out->p99, out->max, out->cs, out->peak);
  edp_fwd_sender_destroy(&snd);
  char dlq[160];
  snprintf(dlq, sizeof(dlq), "%s.dlq", queue);
  edp_conn_queue_delete(pc, queue);
  edp_conn_queue_delete(pc, dlq);
  edp_conn_destroy(&pc);
}

int main(void) {
  const char *url = getenv("EDP_URL");
  if (!url || !url[0]) {
    fprintf(stderr, "edp-bench-supervisor: EDP_URL is not set\n");
    return 1;
  }
  const char *e;
  if ((e = getenv("EDP_BENCH_SUP_N")))
    PER_CONSUMER = atoi(e) > 0 ? atoi(e) : PER_CONSUMER;
  if ((e = getenv("EDP_BENCH_SUP_INTERVAL_MS")))
    INTERVAL_MS = atoi(e) >= 10 ? atoi(e) : INTERVAL_MS;
  if ((e = getenv("EDP_BENCH_SUP_HINT_MS")))
    HINT_MS = atoi(e) >= 0 ? atoi(e) : HINT_MS;
  if ((e = getenv("EDP_BENCH_SUP_KEEP_ALIVE_MS")))
    KEEP_ALIVE_MS = atoi(e) >= 0 ? atoi(e) : KEEP_ALIVE_MS;
  for (size_t i = 0; i < N_SEG; i++)
    R.total += seg_count(&profile[i]);
  R.lat = malloc(sizeof(int64_t) * (size_t)R.total);
  R.burst = calloc((size_t)R.total, 1);
  PUB = calloc((size_t)R.total, sizeof(int64_t));
  TL.sent = calloc((size_t)R.total, sizeof(int64_t));
  if (!PUB || !TL.sent)
    return 1;
  TL.timeline =
      bench_csv_open("supervisor-timeline.csv", "edp-bench-supervisor",
                     "run,t_s,queue_depth,active_consumers");
  TL.latency = bench_csv_open("supervisor-latency.csv", "edp-bench-supervisor",
                              "run,sent_s,latency_ms");
  TRACE = getenv("EDP_BENCH_SUP_TRACE") != NULL;
  if (!R.lat || !R.burst)
    return 1;

  if ((e = getenv("EDP_BENCH_SUP_LONG_KEEP_ALIVE_MS")))
    LONG_KEEP_ALIVE_MS = atoi(e) >= 0 ? atoi(e) : LONG_KEEP_ALIVE_MS;

  result r[5];
  char lmin[32], lmax[32], lsup[3][64];
  snprintf(lmin, sizeof(lmin), "static %d", MIN_CONSUMERS);
  snprintf(lmax, sizeof(lmax), "static %d", MAX_CONSUMERS);
  snprintf(lsup[0], sizeof(lsup[0]), "supervisor, keep-alive %d ms",
           KEEP_ALIVE_MS);
  snprintf(lsup[1], sizeof(lsup[1]), "supervisor, keep-alive %d ms",
           LONG_KEEP_ALIVE_MS);
  snprintf(lsup[2], sizeof(lsup[2]), "supervisor, keep-alive %d ms, no hints",
           KEEP_ALIVE_MS);
  if (getenv("EDP_BENCH_SUP_ONLY_SUP")) {
    run(url, lsup[0], "supervisor", 1, MIN_CONSUMERS, MAX_CONSUMERS,
        KEEP_ALIVE_MS, HINT_MS, &r[2]);
    run(url, lsup[1], "supervisor-long-keep-alive", 1, MIN_CONSUMERS,
        MAX_CONSUMERS, LONG_KEEP_ALIVE_MS, HINT_MS, &r[3]);
    bench_csv_close(TL.timeline, "edp-bench-supervisor");
    bench_csv_close(TL.latency, "edp-bench-supervisor");
    return 0;
  }
  /* The ids name the runs in the CSV files: static-min, static-max,
   * supervisor (short keep-alive, hints), supervisor-long-keep-alive and
   * supervisor-no-hints. */
  run(url, lmin, "static-min", 0, MIN_CONSUMERS, MIN_CONSUMERS, 0, 0, &r[0]);
  run(url, lmax, "static-max", 0, MAX_CONSUMERS, MAX_CONSUMERS, 0, 0, &r[1]);
  run(url, lsup[0], "supervisor", 1, MIN_CONSUMERS, MAX_CONSUMERS,
      KEEP_ALIVE_MS, HINT_MS, &r[2]);
  run(url, lsup[1], "supervisor-long-keep-alive", 1, MIN_CONSUMERS,
      MAX_CONSUMERS, LONG_KEEP_ALIVE_MS, HINT_MS, &r[3]);
  run(url, lsup[2], "supervisor-no-hints", 1, MIN_CONSUMERS, MAX_CONSUMERS,
      KEEP_ALIVE_MS, 0, &r[4]);
  bench_csv_close(TL.timeline, "edp-bench-supervisor");
  bench_csv_close(TL.latency, "edp-bench-supervisor");

  const result *base = &r[1];
  printf("## Supervisor consumer\n\n");
  printf("Step load %d msgs/s for %d s, %d msgs/s for %d s, %d msgs/s for "
         "%d s (%ld persistent messages), %d ms of work per message, "
         "prefetch 1. Latency is publish to processed, of the messages sent "
         "during the burst; consumer-seconds run from the first message to "
         "the last one processed, or to the end of the load plus %d.5 s if "
         "that is later. Supervisor: %d..%d consumers, one per %d queued, "
         "depth read every %d ms and, on a consumer's backlog hint, at most "
         "every %d ms; keep-alive %d ms or %d ms.\n\n",
         LOW_RATE, LOW_MS / 1000, BURST_RATE, BURST_MS / 1000, LOW_RATE,
         LOW_MS / 1000, R.total, WORK_MS, LONG_KEEP_ALIVE_MS / 1000,
         MIN_CONSUMERS, MAX_CONSUMERS, PER_CONSUMER, INTERVAL_MS, HINT_MS,
         KEEP_ALIVE_MS, LONG_KEEP_ALIVE_MS);
  printf("| consumers | burst p50 ms | burst p99 ms | burst max ms | "
         "p99 vs static max | consumer-s | consumer-s vs static max | "
         "peak |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int i = 0; i < 5; i++)
    printf("| %s | %.0f | %.0f | %.0f | %.2fx | %.1f | %.2fx | %d |\n",
           r[i].label, r[i].p50, r[i].p99, r[i].max,
           base->p99 > 0 ? r[i].p99 / base->p99 : 0.0, r[i].cs,
           base->cs > 0 ? r[i].cs / base->cs : 0.0, r[i].peak);
  printf("\nTarget: supervisor (with hints) p99 within 2x static max's at "
         "no more than half its consumer-seconds.");
  for (int i = 2; i < 4; i++) {
    double lat_ratio = base->p99 > 0 ? r[i].p99 / base->p99 : 0;
    double cost_ratio = base->cs > 0 ? r[i].cs / base->cs : 0;
    printf(" Keep-alive %d ms: p99 %.2fx (%s), consumer-seconds %.2fx "
           "(%s).",
           i == 2 ? KEEP_ALIVE_MS : LONG_KEEP_ALIVE_MS, lat_ratio,
           lat_ratio <= 2.0 ? "met" : "missed", cost_ratio,
           cost_ratio <= 0.5 ? "met" : "missed");
  }
  long bad = r[0].bad + r[1].bad + r[2].bad + r[3].bad + r[4].bad;
  if (bad)
    printf(" %ld message(s) were processed twice or unexpected.", bad);
  printf("\n");
  free(R.lat);
  free(R.burst);
  free(TL.sent);
  return 0;
}
