/*
 * benchnodes.h - private RabbitMQ nodes a bench program starts for itself
 * (with tests/broker.sh, run from the source tree) and always stops: at
 * exit, on SIGINT/SIGTERM, and only in the process that started them.
 * The nodes start in parallel, plain (no TLS: EDP_TLS is cleared for
 * them), on the default epmd unless EDP_EPMD_PORT says otherwise, so
 * that bench_nodes_cluster() can join them into one cluster.
 */
#ifndef EDP_BENCHNODES_H
#define EDP_BENCHNODES_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BENCH_NODES_MAX 5

typedef struct bench_nodes {
  int n;
  char base[256]; /* mkdtemp dir holding n0, n1 ... */
  char dir[BENCH_NODES_MAX][300];
  char url[BENCH_NODES_MAX][512];
  char name[BENCH_NODES_MAX][128]; /* edpPORT@localhost */
  pid_t owner;
} bench_nodes;

static bench_nodes *bench_nodes_live; /* stopped at exit or on a signal */

/* Runs `tests/broker.sh cmd dir [arg]` in a child (stdout discarded). */
static inline pid_t bench_broker_spawn(const char *cmd, const char *dir,
                                       const char *arg) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout))
      _exit(127);
    setenv("EDP_TLS", "0", 1);
    execl("tests/broker.sh", "broker.sh", cmd, dir, arg, (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* Exit code of pid, 128 + signal, or -1. */
static inline int bench_wait_pid(pid_t pid) {
  int st = 0;
  if (pid <= 0 || waitpid(pid, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int bench_broker(bench_nodes *ns, const char *cmd, int node,
                               const char *arg) {
  return bench_wait_pid(bench_broker_spawn(cmd, ns->dir[node], arg));
}

static inline void bench_nodes_stop(bench_nodes *ns) {
  if (!ns || !ns->base[0] || getpid() != ns->owner)
    return;
  pid_t p[BENCH_NODES_MAX];
  for (int i = 0; i < ns->n; i++)
    p[i] = bench_broker_spawn("stop", ns->dir[i], NULL);
  for (int i = 0; i < ns->n; i++)
    if (bench_wait_pid(p[i]) != 0)
      bench_broker(ns, "kill", i, NULL);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", ns->base);
  if (system(cmd) != 0)
    fprintf(stderr, "bench: could not remove %s\n", ns->base);
  ns->base[0] = '\0';
}

static inline void bench_nodes_atexit(void) {
  bench_nodes_stop(bench_nodes_live);
}

static inline void bench_nodes_on_signal(int sig) {
  bench_nodes_stop(bench_nodes_live); /* not async-signal-safe; we exit */
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Reads the first line of dir/file into out, without its newline. */
static inline int bench_node_file(const char *dir, const char *file, char *out,
                                  size_t len) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", dir, file);
  FILE *f = fopen(path, "r");
  int ok = f && fgets(out, (int)len, f);
  if (f)
    fclose(f);
  if (ok)
    out[strcspn(out, "\n")] = '\0';
  return ok ? 0 : -1;
}

/* Starts n nodes (in parallel) under a new $TMPDIR/<prefix>.XXXXXX and
 * fills ns (urls, node names). Returns 0, or -1 with the reason on stderr
 * (the nodes that did start are stopped at exit). */
static inline int bench_nodes_start(bench_nodes *ns, int n,
                                    const char *prefix) {
  memset(ns, 0, sizeof(*ns));
  if (n < 1 || n > BENCH_NODES_MAX)
    return -1;
  const char *tmp = getenv("TMPDIR");
  snprintf(ns->base, sizeof(ns->base), "%s/%s.XXXXXX",
           tmp && tmp[0] ? tmp : "/tmp", prefix);
  if (!mkdtemp(ns->base)) {
    fprintf(stderr, "bench: mkdtemp %s: %s\n", ns->base, strerror(errno));
    ns->base[0] = '\0';
    return -1;
  }
  ns->n = n;
  ns->owner = getpid();
  bench_nodes_live = ns;
  atexit(bench_nodes_atexit);
  signal(SIGINT, bench_nodes_on_signal);
  signal(SIGTERM, bench_nodes_on_signal);
  pid_t p[BENCH_NODES_MAX];
  for (int i = 0; i < n; i++) {
    snprintf(ns->dir[i], sizeof(ns->dir[i]), "%s/n%d", ns->base, i);
    p[i] = bench_broker_spawn("start", ns->dir[i], NULL);
  }
  int rc = 0;
  for (int i = 0; i < n; i++) {
    if (bench_wait_pid(p[i]) != 0) {
      fprintf(stderr, "bench: node %d did not start\n", i);
      rc = -1;
      continue;
    }
    char env[128];
    if (bench_node_file(ns->dir[i], "url", ns->url[i], sizeof(ns->url[i])) ||
        bench_node_file(ns->dir[i], "node.env", env, sizeof(env)) ||
        strncmp(env, "NODE=", 5)) {
      fprintf(stderr, "bench: no URL or node name for node %d\n", i);
      rc = -1;
      continue;
    }
    snprintf(ns->name[i], sizeof(ns->name[i]), "%s", env + 5);
  }
  return rc;
}

/* Joins nodes 1 .. n-1 to node 0's cluster (one after another: a join
 * restarts the joining node's app). Returns 0 or -1. */
static inline int bench_nodes_cluster(bench_nodes *ns) {
  for (int i = 1; i < ns->n; i++)
    if (bench_broker(ns, "join", i, ns->dir[0]) != 0) {
      fprintf(stderr, "bench: node %d could not join node 0\n", i);
      return -1;
    }
  return 0;
}

#endif
