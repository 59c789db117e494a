/*
 * benchdata.h - the data behind the plots of `make bench`. Each bench
 * program writes the series its plot needs as CSV into the directory
 * named by EDP_BENCH_DATA (tests/bench.sh sets it to docs/img), and
 * tests/plots.sh draws them with gnuplot. Without EDP_BENCH_DATA no file
 * is written and the programs print their tables only.
 *
 * EDP_BENCH_QUICK=1 asks a program for a reduced run (smaller sizes, for
 * development); its CSV files say so in their first line, and the plots
 * drawn from them carry that note in their titles, so a reduced run is
 * never mistaken for the real benchmark.
 */
#ifndef EDP_BENCHDATA_H
#define EDP_BENCHDATA_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* CPU seconds (user + system) this process used so far. */
static inline double bench_self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static inline int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The p-th percentile (nearest rank, 1 <= p <= 100) of v[0..n), which it
 * sorts; p = 50 is the (lower) median. -1 for n == 0. */
static inline double bench_percentile(double *v, size_t n, int p) {
  if (!n)
    return -1;
  qsort(v, n, sizeof(double), bench_cmp_double);
  size_t rank = (n * (size_t)p + 99) / 100;
  return v[rank ? rank - 1 : 0];
}

/* The 1-minute load average, or -1. */
static inline double bench_loadavg(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &l) != 1)
      l = -1;
    fclose(f);
  }
  return l;
}

static inline int bench_quick(void) {
  const char *e = getenv("EDP_BENCH_QUICK");
  return e && e[0] && strcmp(e, "0") != 0;
}

/* Opens $EDP_BENCH_DATA/name for writing and writes a comment line (the
 * program, the time, full or reduced run) and the header line. Returns
 * NULL when EDP_BENCH_DATA is unset or the file can't be written (with a
 * warning on stderr: the tables matter more than the plots). */
static inline FILE *bench_csv_open(const char *name, const char *prog,
                                   const char *header) {
  const char *dir = getenv("EDP_BENCH_DATA");
  if (!dir || !dir[0])
    return NULL;
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "%s: cannot write %s: plot data skipped\n", prog, path);
    return NULL;
  }
  char when[64];
  time_t now = time(NULL);
  struct tm tm;
  strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", gmtime_r(&now, &tm));
  fprintf(f, "# %s, %s, %s\n%s\n", prog, when,
          bench_quick() ? "reduced run (EDP_BENCH_QUICK=1)" : "full run",
          header);
  return f;
}

/* ---------- a program run as a user runs it ---------- */

/* wait4 (the child's own rusage) needs _GNU_SOURCE, which the programs
 * that run others define before any include. */
#ifdef _GNU_SOURCE

/* One program run: wall seconds, CPU seconds (user + system of the whole
 * process, from wait4), peak RSS in KiB. */
typedef struct bench_run {
  double wall, cpu;
  long rss_kb;
} bench_run;

static inline double bench_wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Starts argv[0] (a path) with stdout on /dev/null; its pid, -1 on
 * failure. */
static inline pid_t bench_spawn(char *const argv[]) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
      dup2(null, 1);
      close(null);
    }
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

/* Waits for pid, started at bench_wall_s() == t0, into *r. Returns 0 when
 * it exited 0, else its wait status (or -1). */
static inline int bench_finish(pid_t pid, double t0, bench_run *r) {
  int status = 0;
  struct rusage ru;
  if (pid < 0 || wait4(pid, &status, 0, &ru) < 0)
    return -1;
  r->wall = bench_wall_s() - t0;
  r->cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  r->rss_kb = ru.ru_maxrss;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0
         : status                                      ? status
                                                       : -1;
}
#endif

/* Closes f (NULL is fine), reporting a failed write. */
static inline void bench_csv_close(FILE *f, const char *prog) {
  if (f && fclose(f) != 0)
    fprintf(stderr, "%s: writing plot data failed\n", prog);
}

#endif
