/*
 * edp-bench-multi - the multi-broker claim, measured: aggregate throughput
 * of persistent, confirmed messages over 1, 2 and 3 independent nodes in
 * one run, and what it costs in CPU (the client's, from getrusage, and the
 * nodes', from /proc). Starts its own three nodes with tests/broker.sh
 * (run from the source tree) and always stops them. The baseline is one
 * plain edp_conn with the same confirm window on node 0, in the same run.
 * Prints a markdown section; each figure is the median of three runs.
 *
 * Then, for the plot, a kill and rejoin: a paced load over the three
 * nodes while node 2 is killed (SIGKILL) and started again, sampling each
 * node's confirmed messages per second (multi-timeline.csv and
 * multi-events.csv, see benchdata.h).
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchdata.h"
#include "cli.h"

#define NODES 3
#define REPS 3

static cli app;
static char base_dir[256];
static char node_dir[NODES][300];
static char node_url[NODES][512]; /* a TLS node's URL names its files */
static pid_t owner;
static int seq_q;

/* ---------- nodes ---------- */

static pid_t spawn_broker(const char *cmd, const char *dir) {
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout))
      _exit(127);
    execl("tests/broker.sh", "broker.sh", cmd, dir, (char *)NULL);
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

static void nodes_stop(void) {
  if (!base_dir[0] || getpid() != owner)
    return;
  pid_t p[NODES];
  for (int i = 0; i < NODES; i++)
    p[i] = spawn_broker("stop", node_dir[i]);
  for (int i = 0; i < NODES; i++)
    if (wait_pid(p[i]) != 0)
      wait_pid(spawn_broker("kill", node_dir[i]));
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "edp-bench-multi: could not remove %s\n", base_dir);
  base_dir[0] = '\0';
}

static void on_signal(int sig) {
  nodes_stop();
  signal(sig, SIG_DFL);
  raise(sig);
}

static void nodes_start(void) {
  owner = getpid();
  snprintf(base_dir, sizeof(base_dir), "/tmp/edp-bench-multi.XXXXXX");
  if (!mkdtemp(base_dir))
    cli_die(&app, CLI_SOFTWARE, "mkdtemp: %s", strerror(errno));
  atexit(nodes_stop);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  fprintf(stderr, "multi-broker: starting %d nodes in %s...\n", NODES,
          base_dir);
  pid_t p[NODES];
  for (int i = 0; i < NODES; i++) {
    snprintf(node_dir[i], sizeof(node_dir[i]), "%s/n%d", base_dir, i);
    p[i] = spawn_broker("start", node_dir[i]);
  }
  for (int i = 0; i < NODES; i++) {
    if (wait_pid(p[i]) != 0)
      cli_die(&app, CLI_UNAVAILABLE, "node %d did not start", i);
    char path[1024];
    snprintf(path, sizeof(path), "%s/url", node_dir[i]);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(node_url[i], sizeof(node_url[i]), f))
      cli_die(&app, CLI_SOFTWARE, "no URL for node %d", i);
    fclose(f);
    node_url[i][strcspn(node_url[i], "\n")] = '\0';
  }
}

/* CPU seconds the nodes' Erlang VMs used so far. */
static double nodes_cpu(void) {
  double s = 0;
  long hz = sysconf(_SC_CLK_TCK);
  for (int i = 0; i < NODES; i++) {
    char path[1024], buf[1024];
    snprintf(path, sizeof(path), "%s/pid", node_dir[i]);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1) {
      if (f)
        fclose(f);
      continue;
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (!(f = fopen(path, "r")))
      continue;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')');
    long ut = 0, st = 0;
    if (p &&
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld",
               &ut, &st) == 2)
      s += (double)(ut + st) / (double)hz;
  }
  return s;
}

/* ---------- measurements ---------- */

typedef struct result {
  double rate;      /* messages per second */
  double client_us; /* client CPU per message, microseconds */
  double broker_us; /* nodes' CPU per message, microseconds */
} result;

typedef struct meter {
  int64_t t0;
  double c0, b0;
} meter;

static void meter_start(meter *m) {
  m->t0 = edp_now_ms();
  m->c0 = bench_self_cpu();
  m->b0 = nodes_cpu();
}

static result meter_stop(const meter *m, int n) {
  double secs = (double)(edp_now_ms() - m->t0) / 1000.0;
  result r = {n / (secs > 0.001 ? secs : 0.001), (bench_self_cpu() - m->c0) * 1e6 / n,
              (nodes_cpu() - m->b0) * 1e6 / n};
  return r;
}

static char body[256];

static void init_msg(edp_msg *m, const char *q) {
  edp_msg_init(m);
  m->routing_key = q;
  m->body = body;
  m->body_len = sizeof(body);
  m->persistent = 1;
}

/* Baseline: one plain connection, window 1024, to node 0. */
static result baseline(int n) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = node_url[0];
  edp_conn *c = NULL;
  if (edp_conn_open(&o, &c, NULL, 0) || edp_conn_confirm_select(c))
    cli_die(&app, CLI_UNAVAILABLE, "baseline: cannot connect");
  char q[64];
  snprintf(q, sizeof(q), "bench.multi.%d.%d", (int)getpid(), ++seq_q);
  if (edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL))
    cli_die(&app, CLI_UNAVAILABLE, "baseline: declare failed");
  edp_msg m;
  init_msg(&m, q);
  meter mt;
  meter_start(&mt);
  for (int i = 0; i < n; i++)
    if (edp_conn_wait_confirms(c, 1023, 30000) || edp_conn_publish(c, &m, NULL))
      cli_die(&app, CLI_UNAVAILABLE, "baseline: publish failed");
  if (edp_conn_wait_confirms(c, 0, 60000))
    cli_die(&app, CLI_UNAVAILABLE, "baseline: confirms missing");
  result r = meter_stop(&mt, n);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
  return r;
}

static int consumed_pipe[2];
static long consumed, consume_target;

static int count_handler(void *ud, int broker, const edp_delivery *d) {
  (void)ud;
  (void)broker;
  (void)d;
  /* Serialized by the consumer's handler mutex. */
  if (++consumed == consume_target) {
    ssize_t w = write(consumed_pipe[1], "x", 1);
    (void)w;
  }
  return 0;
}

/* Publishes n messages round-robin over the first k nodes (result in
 * *pub), then drains them with a consumer on the same k nodes (*con). */
static void multi_run(int n, int k, result *pub, result *con) {
  char q[64];
  snprintf(q, sizeof(q), "bench.multi.%d.%d", (int)getpid(), ++seq_q);
  const char *urls[NODES];
  for (int i = 0; i < k; i++)
    urls[i] = node_url[i];
  edp_multi_producer_opts po;
  edp_multi_producer_opts_init(&po);
  po.urls = urls;
  po.n_urls = (size_t)k;
  po.queue = q;
  edp_multi_producer *p = NULL;
  char why[600] = "";
  if (edp_multi_producer_new(&po, &p, why, sizeof(why)) ||
      edp_multi_producer_live(p) != (size_t)k)
    cli_die(&app, CLI_UNAVAILABLE, "producer: %s", why);
  edp_msg m;
  init_msg(&m, q);
  meter mt;
  meter_start(&mt);
  for (int i = 0; i < n; i++)
    if (edp_multi_publish(p, &m, NULL))
      cli_die(&app, CLI_UNAVAILABLE, "multi publish failed");
  if (edp_multi_flush(p, 120000))
    cli_die(&app, CLI_UNAVAILABLE, "multi flush failed");
  *pub = meter_stop(&mt, n);
  edp_multi_producer_destroy(&p);

  consumed = 0;
  consume_target = n;
  edp_multi_consumer_opts co;
  edp_multi_consumer_opts_init(&co);
  co.urls = urls;
  co.n_urls = (size_t)k;
  co.queue = q;
  co.prefetch = 512;
  co.handler = count_handler;
  edp_multi_consumer *c = NULL;
  meter_start(&mt);
  if (edp_multi_consumer_new(&co, &c, why, sizeof(why)))
    cli_die(&app, CLI_UNAVAILABLE, "consumer: %s", why);
  struct pollfd pf = {consumed_pipe[0], POLLIN, 0};
  if (poll(&pf, 1, 120000) != 1)
    cli_die(&app, CLI_UNAVAILABLE, "consumer: only %ld of %d in 120 s",
            consumed, n);
  char x;
  if (read(consumed_pipe[0], &x, 1) != 1)
    cli_die(&app, CLI_SOFTWARE, "pipe read failed");
  *con = meter_stop(&mt, n);
  edp_multi_consumer_destroy(&c);
  /* The queues are empty now; delete them so the nodes stay small. */
  for (int i = 0; i < k; i++) {
    edp_conn_opts o;
    edp_conn_opts_init(&o);
    o.url = node_url[i];
    edp_conn *dc = NULL;
    if (!edp_conn_open(&o, &dc, NULL, 0))
      edp_conn_queue_delete(dc, q);
    edp_conn_destroy(&dc);
  }
}

static int cmp_rate(const void *a, const void *b) {
  double x = ((const result *)a)->rate, y = ((const result *)b)->rate;
  return x < y ? -1 : x > y;
}

static result median(result *r) {
  qsort(r, REPS, sizeof(*r), cmp_rate);
  return r[REPS / 2];
}

/* ---------- kill and rejoin, for the plot ---------- */

#define TL_RATE 6000      /* offered msg/s over all nodes */
#define TL_KILL_MS 5000   /* node 2 killed */
#define TL_START_MS 10000 /* node 2 started again (takes seconds) */
#define TL_AFTER_MS 6000  /* kept running after it is back */
#define TL_MAX_MS 45000
#define TL_SAMPLE_MS 250

typedef struct tl_result {
  long sent;
  uint64_t confirmed, rerouted;
  double down_s, back_s; /* node 2 seen down, back in rotation; -1 never */
  int ok;
} tl_result;

static int reap(pid_t *pid) {
  if (*pid <= 0)
    return 1;
  int st;
  if (waitpid(*pid, &st, WNOHANG) == *pid) {
    *pid = 0;
    return 1;
  }
  return 0;
}

static tl_result kill_rejoin(void) {
  tl_result res = {0, 0, 0, -1, -1, 0};
  FILE *tl = bench_csv_open("multi-timeline.csv", "edp-bench-multi",
                            "t_s,node0_msg_per_s,node1_msg_per_s,"
                            "node2_msg_per_s,total_msg_per_s,node0_live,"
                            "node1_live,node2_live");
  FILE *ev = bench_csv_open("multi-events.csv", "edp-bench-multi", "t_s,event");
  char q[64];
  snprintf(q, sizeof(q), "bench.multi.%d.%d", (int)getpid(), ++seq_q);
  const char *urls[NODES];
  for (int i = 0; i < NODES; i++)
    urls[i] = node_url[i];
  edp_multi_producer_opts po;
  edp_multi_producer_opts_init(&po);
  po.urls = urls;
  po.n_urls = NODES;
  po.queue = q;
  edp_multi_producer *p = NULL;
  char why[600] = "";
  if (edp_multi_producer_new(&po, &p, why, sizeof(why)))
    cli_die(&app, CLI_UNAVAILABLE, "producer: %s", why);
  edp_msg m;
  init_msg(&m, q);
  uint64_t last[NODES] = {0};
  int was_live = 1;
  pid_t killer = 0, starter = 0;
  int killed = 0, started = 0;
  int64_t t0 = edp_now_ms(), next_sample = t0 + TL_SAMPLE_MS, prev = t0;
  int64_t end = t0 + TL_MAX_MS;
  for (;;) {
    int64_t now = edp_now_ms(), t = now - t0;
    if (now >= end)
      break;
    if (!killed && t >= TL_KILL_MS) {
      killer = spawn_broker("kill", node_dir[2]);
      killed = 1;
      if (ev)
        fprintf(ev, "%.2f,node 2 killed\n", t / 1000.0);
    }
    if (killed && !started && t >= TL_START_MS && reap(&killer)) {
      starter = spawn_broker("start", node_dir[2]);
      started = 1;
      if (ev)
        fprintf(ev, "%.2f,node 2 restarting\n", t / 1000.0);
    }
    reap(&starter);
    long due = (long)(t * TL_RATE / 1000);
    while (res.sent < due && edp_now_ms() < end) {
      if (edp_multi_publish(p, &m, NULL))
        cli_die(&app, CLI_UNAVAILABLE, "kill/rejoin: publish failed");
      res.sent++;
    }
    edp_multi_poll(p, 2);
    now = edp_now_ms();
    if (now < next_sample)
      continue;
    next_sample += TL_SAMPLE_MS;
    double dt = (double)(now - prev) / 1000.0;
    prev = now;
    double r[NODES], total = 0;
    int live[NODES];
    for (int i = 0; i < NODES; i++) {
      edp_multi_broker_stats st;
      edp_multi_producer_stats(p, (size_t)i, &st);
      r[i] = (double)(st.confirmed - last[i]) / (dt > 0 ? dt : 1);
      total += r[i];
      live[i] = st.live;
      last[i] = st.confirmed;
    }
    if (tl)
      fprintf(tl, "%.2f,%.0f,%.0f,%.0f,%.0f,%d,%d,%d\n", (now - t0) / 1000.0,
              r[0], r[1], r[2], total, live[0], live[1], live[2]);
    if (was_live && !live[2] && killed && res.down_s < 0) {
      res.down_s = (now - t0) / 1000.0;
      if (ev)
        fprintf(ev, "%.2f,node 2 seen down\n", res.down_s);
    }
    if (!was_live && live[2] && started && res.back_s < 0) {
      res.back_s = (now - t0) / 1000.0;
      if (ev)
        fprintf(ev, "%.2f,node 2 back in rotation\n", res.back_s);
      end = now + TL_AFTER_MS;
    }
    was_live = live[2];
  }
  while (!reap(&killer) || !reap(&starter))
    edp_multi_poll(p, 100);
  res.ok = edp_multi_flush(p, 60000) == 0;
  for (int i = 0; i < NODES; i++) {
    edp_multi_broker_stats st;
    edp_multi_producer_stats(p, (size_t)i, &st);
    res.confirmed += st.confirmed;
    res.rerouted += st.rerouted;
  }
  edp_multi_producer_destroy(&p);
  for (int i = 0; i < NODES; i++) {
    edp_conn_opts o;
    edp_conn_opts_init(&o);
    o.url = node_url[i];
    edp_conn *dc = NULL;
    if (!edp_conn_open(&o, &dc, NULL, 0))
      edp_conn_queue_delete(dc, q);
    edp_conn_destroy(&dc);
  }
  bench_csv_close(tl, "edp-bench-multi");
  bench_csv_close(ev, "edp-bench-multi");
  return res;
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-bench-multi");
  int scale = argc > 1 ? atoi(argv[1]) : 1;
  if (scale < 1)
    scale = 1;
  /* A reduced run (EDP_BENCH_QUICK) uses a fifth of the messages. */
  int n = 30000 * scale / (bench_quick() ? 5 : 1);
  memset(body, 'x', sizeof(body));
  if (pipe(consumed_pipe))
    cli_die(&app, CLI_SOFTWARE, "pipe: %s", strerror(errno));
  nodes_start();

  result base[REPS], pub[NODES][REPS], con[NODES][REPS];
  fprintf(stderr, "multi-broker: baseline (one connection)...\n");
  for (int i = 0; i < REPS; i++)
    base[i] = baseline(n);
  for (int k = 1; k <= NODES; k++) {
    fprintf(stderr, "multi-broker: %d node(s)...\n", k);
    for (int i = 0; i < REPS; i++)
      multi_run(n, k, &pub[k - 1][i], &con[k - 1][i]);
  }
  result b = median(base), P[NODES], C[NODES];
  for (int k = 0; k < NODES; k++) {
    P[k] = median(pub[k]);
    C[k] = median(con[k]);
  }
  fprintf(stderr, "multi-broker: kill and rejoin of node 2...\n");
  tl_result kr = kill_rejoin();
  nodes_stop();

  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  printf("## Multi-broker (`edp-bench-multi`)\n\n");
  printf("%d persistent 256-byte messages per run, publisher confirms (window\n"
         "1024 per broker), round-robin over the first K of three independent\n"
         "nodes started by the benchmark on this %ld-core machine; then the\n"
         "same messages drained by the multi-broker consumer (one thread per\n"
         "node, prefetch 512, an ack per message). Median of %d runs. CPU per\n"
         "message: the client's from getrusage (all its threads), the nodes'\n"
         "from /proc (all three VMs, idle ones included).\n\n",
         n, cores, REPS);
  printf("| case | msg/s | vs baseline | client CPU us/msg | nodes CPU us/msg |"
         " CPU busy |\n|---|---:|---:|---:|---:|---:|\n");
  printf("| baseline: one edp_conn, node 0 | %.0f | 1.00 | %.1f | %.1f | "
         "%.0f%% |\n",
         b.rate, b.client_us, b.broker_us,
         100.0 * b.rate * (b.client_us + b.broker_us) / 1e6 / (double)cores);
  for (int k = 0; k < NODES; k++)
    printf("| publish, %d node(s) | %.0f | %.2f | %.1f | %.1f | %.0f%% |\n",
           k + 1, P[k].rate, P[k].rate / b.rate, P[k].client_us, P[k].broker_us,
           100.0 * P[k].rate * (P[k].client_us + P[k].broker_us) / 1e6 /
               (double)cores);
  for (int k = 0; k < NODES; k++)
    printf("| consume, %d node(s) | %.0f | %.2f | %.1f | %.1f | %.0f%% |\n",
           k + 1, C[k].rate, C[k].rate / C[0].rate, C[k].client_us,
           C[k].broker_us,
           100.0 * C[k].rate * (C[k].client_us + C[k].broker_us) / 1e6 /
               (double)cores);
  /* "CPU busy" = rate x (client + nodes) CPU per message / cores: near
   * 100% the machine, not the design, is the limit. */
  double busy1 =
      P[0].rate * (P[0].client_us + P[0].broker_us) / 1e6 / (double)cores;
  double node_cap =
      P[0].broker_us > 0 ? (double)cores * 1e6 / P[0].broker_us : 0;
  double client_cap = P[2].client_us > 0 ? 1e6 / P[2].client_us : 0;
  printf("\nScaling here: publish %.2f x with 2 nodes and %.2f x with 3 over 1 "
         "node; consume %.2f x and %.2f x. ",
         P[1].rate / P[0].rate, P[2].rate / P[0].rate, C[1].rate / C[0].rate,
         C[2].rate / C[0].rate);
  printf(
      "A lone node kept the machine only %.0f%% busy while publishing: it is "
      "bound by confirm latency (fsync batching), not CPU, so a second and "
      "third node overlap that latency and publishing scales even on one "
      "machine, until the %ld shared cores run out (CPU busy column; other "
      "engineers' load on this shared machine is not counted there). "
      "Consuming is cheaper per message and already CPU-bound with one node, "
      "so more nodes on the same cores do not help it.\n\n",
      100.0 * busy1, cores);
  printf("Estimate for K nodes on K machines: each node adds what one node "
         "did alone, %.0f msg/s (K=2: ~%.0f, K=3: ~%.0f, K=4: ~%.0f msg/s), "
         "while each node stays under its CPU ceiling of about %.0f msg/s "
         "(%ld cores / %.0f us per message) and the producers keep up: one "
         "producer thread costs %.1f us of CPU per message, about %.0f msg/s "
         "per producer core, so beyond K=%d add producers. Assumes each "
         "machine's disk keeps up with the fsyncs.\n",
         P[0].rate, 2 * P[0].rate, 3 * P[0].rate, 4 * P[0].rate, node_cap,
         cores, P[0].broker_us, P[2].client_us, client_cap,
         P[0].rate > 0 ? (int)(client_cap / P[0].rate) : 0);
  printf("\nKill and rejoin: %d msg/s offered round-robin over the three "
         "nodes; node 2 killed (SIGKILL) at %.1f s and started again at "
         "%.1f s. The producer saw it down at %.1f s and moved its "
         "unconfirmed messages to the others (%llu rerouted); node 2 %s%.1f s. "
         "%ld messages sent, %llu confirmed%s.\n",
         TL_RATE, TL_KILL_MS / 1000.0, TL_START_MS / 1000.0, kr.down_s,
         (unsigned long long)kr.rerouted,
         kr.back_s >= 0 ? "was back in rotation at "
                        : "was **not back** in rotation by ",
         kr.back_s >= 0 ? kr.back_s : TL_MAX_MS / 1000.0, kr.sent,
         (unsigned long long)kr.confirmed, kr.ok ? "" : " (**flush failed**)");
  return 0;
}
