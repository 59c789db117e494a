/*
 * edp-bench-metrics - what the metrics cost (issue 17), on the programs as
 * users run them: edp-forward-sender (persistent 256-byte messages,
 * confirm window 1024) and edp-forward-receiver (prefetch 1000, an ack per
 * message), each without --metrics and with --metrics 127.0.0.1:PORT (the
 * latency histograms kept, libmicrohttpd serving) while this program
 * fetches /metrics every 100 ms, a hundred times as often as Prometheus
 * would. Without --metrics the counters are still kept: they cannot be
 * switched off.
 *
 * Each round runs the program three times on the same node: off, on, and
 * off again, in an order that rotates every round. Off again against off
 * is the A/A control: what two runs with nothing changed differ by on
 * this machine at this moment. Each round gives the ratios on/off and
 * off again/off of throughput (wall time of the whole program, start to
 * exit) and of CPU per message (user + system of the whole process, from
 * wait4); the table shows their medians over the rounds and their range.
 * Ratios within a round, not medians of each side, because the broker's
 * speed drifts between rounds more than metrics cost (an earlier version
 * of this bench, in one process with medians per side, read that drift
 * as a 23.5% cost, and its own A/A control as 17.9%).
 *
 * Programs from EDP_BIN (default bin); the node from EDP_URL. Prints a
 * markdown section.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "benchdata.h"
#include "cli.h"
#include "edp_forwarding.h"

#define ROUNDS 9 /* a multiple of 3: each order position as often */

enum { OFF, ON, OFF_AGAIN, KINDS };

static cli app;
static const char *edp_bin;
static int seq_q;

/* ---------- the scraper: GET /metrics every 100 ms ---------- */

typedef struct scraper {
  int port, stop_fd[2];
  pthread_t th;
  long scrapes; /* answered 200 with edp_ series in them */
} scraper;

/* One GET /metrics; 1 when it answered 200 with edp's series. */
static int fetch(int port) {
  int ok = 0, fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && !connect(fd, (struct sockaddr *)&a, sizeof(a))) {
    static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
    if (write(fd, req, sizeof(req) - 1) == sizeof(req) - 1) {
      char buf[8192];
      ssize_t n = read(fd, buf, sizeof(buf) - 1);
      if (n > 0) {
        buf[n] = '\0';
        ok = !strncmp(buf, "HTTP/1.", 7) && !strncmp(buf + 8, " 200", 4);
      }
      while (read(fd, buf, sizeof(buf)) > 0)
        ;
    }
  }
  if (fd >= 0)
    close(fd);
  return ok;
}

static void *scrape_main(void *arg) {
  scraper *s = arg;
  while (!edp_sleep_ms(100, s->stop_fd[0]))
    s->scrapes += fetch(s->port);
  return NULL;
}

/* A loopback port nobody listens on now (the kernel's pick). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t len = sizeof(a);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof(a)) &&
      !getsockname(fd, (struct sockaddr *)&a, &len))
    port = ntohs(a.sin_port);
  if (fd >= 0)
    close(fd);
  if (!port)
    cli_die(&app, CLI_SOFTWARE, "no free loopback port");
  return port;
}

/* ---------- the programs ---------- */

static void fresh_queue(char *buf, size_t len) {
  snprintf(buf, len, "bench.metrics.%d.%d", (int)getpid(), ++seq_q);
}

static void drop_queue(const char *q) {
  edp_conn *c = cli_connect(&app, "edp-bench-metrics");
  char dlq[160];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn_queue_delete(c, q);
  edp_conn_queue_delete(c, dlq);
  edp_conn_destroy(&c);
}

/* Runs name with args (NULL-terminated, up to 12), adding --metrics and
 * scraping it when on. Dies unless it exits 0, or when on and no scrape
 * was answered. */
static bench_run run_prog(const char *name, int on, char *const args[]) {
  char prog[PATH_MAX], addr[64];
  char *argv[20];
  int k = 0;
  snprintf(prog, sizeof(prog), "%s/%s", edp_bin, name);
  argv[k++] = prog;
  for (int i = 0; args[i] && k < 16; i++)
    argv[k++] = args[i];
  scraper sc = {0};
  if (on) {
    sc.port = free_port();
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", sc.port);
    argv[k++] = "--metrics";
    argv[k++] = addr;
  }
  argv[k] = NULL;
  double t0 = bench_wall_s();
  pid_t pid = bench_spawn(argv);
  if (on &&
      (pipe(sc.stop_fd) || pthread_create(&sc.th, NULL, scrape_main, &sc)))
    cli_die(&app, CLI_SOFTWARE, "no scraper thread");
  bench_run r;
  int status = bench_finish(pid, t0, &r);
  if (on) {
    if (write(sc.stop_fd[1], "x", 1) != 1)
      cli_die(&app, CLI_SOFTWARE, "cannot stop the scraper");
    pthread_join(sc.th, NULL);
    close(sc.stop_fd[0]);
    close(sc.stop_fd[1]);
  }
  if (status)
    cli_die(&app, CLI_SOFTWARE, "%s failed (status %d)", name, status);
  if (on && sc.scrapes < 1)
    cli_die(&app, CLI_SOFTWARE, "%s: /metrics never answered: run too short",
            name);
  return r;
}

static bench_run send_run(const char *q, long n, int on) {
  char ns[32];
  snprintf(ns, sizeof(ns), "%ld", n);
  char *args[] = {"--url",
                  (char *)cli_url(&app),
                  "--queue",
                  (char *)q,
                  "--count",
                  ns,
                  "--body-size",
                  "256",
                  "--confirm-window",
                  "1024",
                  "--quiet",
                  NULL};
  return run_prog("edp-forward-sender", on, args);
}

static bench_run receive_run(const char *q, long n, int on) {
  char ns[32];
  snprintf(ns, sizeof(ns), "%ld", n);
  char *args[] = {
      "--url", (char *)cli_url(&app), "--queue", (char *)q, "--count",
      ns,      "--prefetch",          "1000",    "--quiet", NULL};
  return run_prog("edp-forward-receiver", on, args);
}

/* One timed run of the case: the sender into a fresh queue, or the
 * receiver draining a queue filled beforehand (untimed, without metrics). */
static bench_run one_run(int receiver, long n, int on) {
  char q[128];
  fresh_queue(q, sizeof(q));
  if (receiver)
    send_run(q, n, 0);
  bench_run r = receiver ? receive_run(q, n, on) : send_run(q, n, on);
  drop_queue(q);
  return r;
}

/* ---------- rounds and ratios ---------- */

typedef struct ratios {
  double rate[ROUNDS], cpu[ROUNDS]; /* of one kind against OFF */
} ratios;

typedef struct row {
  ratios vs_off[KINDS]; /* [ON] and [OFF_AGAIN] used */
  double off_rate[ROUNDS], off_cpu_us[ROUNDS];
  int rounds;
} row;

static row compare(int receiver, long n, int rounds) {
  row w;
  memset(&w, 0, sizeof(w));
  w.rounds = rounds;
  for (int i = 0; i < rounds; i++) {
    fprintf(stderr, "metrics: %s, round %d of %d...\n",
            receiver ? "receiver" : "sender", i + 1, rounds);
    bench_run r[KINDS];
    for (int j = 0; j < KINDS; j++) {
      int kind = (i + j) % KINDS;
      r[kind] = one_run(receiver, n, kind == ON);
    }
    w.off_rate[i] = n / r[OFF].wall;
    w.off_cpu_us[i] = r[OFF].cpu * 1e6 / n;
    for (int kind = ON; kind < KINDS; kind++) {
      w.vs_off[kind].rate[i] = r[OFF].wall / r[kind].wall;
      w.vs_off[kind].cpu[i] = r[kind].cpu / r[OFF].cpu;
    }
  }
  return w;
}

/* Median of v[0..n) (sorts it); its range into *lo, *hi. */
static double median_range(double *v, int n, double *lo, double *hi) {
  qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
  *lo = v[0];
  *hi = v[n - 1];
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Prints the rows of one case; returns the metrics cost in % of
 * throughput (1 - median on/off). */
static double print_case(const char *name, row *w) {
  double lo, hi, rlo, rhi, clo, chi;
  double off_rate = median_range(w->off_rate, w->rounds, &lo, &hi);
  double off_cpu = median_range(w->off_cpu_us, w->rounds, &lo, &hi);
  printf("| %s, off | %.0f | %.1f | 1 | 1 |\n", name, off_rate, off_cpu);
  static const char *label[KINDS] = {NULL, "metrics on and scraped",
                                     "off again (A/A control)"};
  double cost = 0;
  for (int kind = ON; kind < KINDS; kind++) {
    double rate = median_range(w->vs_off[kind].rate, w->rounds, &rlo, &rhi);
    double cpu = median_range(w->vs_off[kind].cpu, w->rounds, &clo, &chi);
    printf("| %s, %s | %.0f | %.1f | **%.3f** (%.3f-%.3f) | **%.3f** "
           "(%.3f-%.3f) |\n",
           name, label[kind], off_rate * rate, off_cpu * cpu, rate, rlo, rhi,
           cpu, clo, chi);
    if (kind == ON)
      cost = 100.0 * (1.0 - rate);
  }
  return cost;
}

int main(int argc, char **argv) {
  cli_init(&app, "edp-bench-metrics");
  (void)argc;
  (void)argv;
  edp_bin =
      getenv("EDP_BIN") && getenv("EDP_BIN")[0] ? getenv("EDP_BIN") : "bin";
  int quick = bench_quick();
  int rounds = quick ? 3 : ROUNDS;
  long n = quick ? 20000 : 80000;
  row s = compare(0, n, rounds);
  row r = compare(1, n, rounds);
  printf("## Metrics cost (`edp-bench-metrics`)\n\n");
  printf("The programs as users run them, on one node: `edp-forward-sender` "
         "(%ld persistent 256-byte messages, confirm window 1024) and "
         "`edp-forward-receiver` (draining %ld such messages, prefetch 1000, "
         "an ack per message), without `--metrics` (the counters are kept "
         "all the same) and with `--metrics 127.0.0.1:PORT` (the latency "
         "histograms kept, libmicrohttpd serving) while the bench fetches "
         "`/metrics` every 100 ms, a hundred times as often as Prometheus "
         "would. Each round runs off, on, and off again (the A/A control: "
         "what two runs with nothing changed differ by), the order "
         "rotating every round; the ratios are taken within a round, "
         "medians of %d rounds with their range in brackets. msg/s from the "
         "whole program's wall time (start to exit), CPU per message "
         "user + system of the whole process (wait4).\n\n",
         n, n, rounds);
  printf("| run | msg/s | CPU us/msg | msg/s vs off | CPU vs off |\n"
         "|---|---:|---:|---:|---:|\n");
  double cs = print_case("sender", &s);
  double cr = print_case("receiver", &r);
  double worst = cs > cr ? cs : cr;
  printf("\nTarget: metrics cost at most 3%% of throughput: **%s** (worst "
         "%.1f%%; compare the A/A rows for the noise of this run).\n",
         worst <= 3.0 ? "met" : "missed", worst);
  return 0;
}
