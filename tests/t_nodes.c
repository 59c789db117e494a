/*
 * t_nodes.c - private RabbitMQ nodes of a suite's own (t_nodes.h).
 */
#include "t_nodes.h"

#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "edp.h"

static char base_dir[256];
static pid_t owner; /* Check forks a child per test: only we clean up */
char t_node_dir[T_NODES_MAX][300];
char t_node_url[T_NODES_MAX][512];
static int n_nodes;
static pid_t start_pids[T_NODES_MAX]; /* started, not yet awaited */

pid_t t_broker_spawn(const char *cmd, const char *dir, const char *arg) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", 1);
    if (null >= 0)
      dup2(null, 1);
    execl("tests/broker.sh", "broker.sh", cmd, dir, arg, (char *)NULL);
    _exit(127);
  }
  return pid;
}

int t_pid_wait(pid_t pid) {
  int st = 0;
  if (pid <= 0 || waitpid(pid, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int t_node_ctl(int node, const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "tests/broker.sh ctl '%s' %s >/dev/null 2>&1",
           t_node_dir[node], args);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

edp_conn *t_node_conn(int node) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_node_url[node];
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  return c;
}

int t_node_cmd(const char *cmd, int node, const char *arg) {
  return t_pid_wait(t_broker_spawn(cmd, t_node_dir[node], arg));
}

void t_nodes_stop(void) {
  if (!base_dir[0] || getpid() != owner)
    return;
  for (int i = 0; i < n_nodes; i++) /* begun, never awaited: let it boot */
    if (start_pids[i])
      t_pid_wait(start_pids[i]);
  pid_t pids[n_nodes];
  for (int i = 0; i < n_nodes; i++)
    pids[i] = t_broker_spawn("stop", t_node_dir[i], NULL);
  for (int i = 0; i < n_nodes; i++)
    if (t_pid_wait(pids[i]) != 0)
      t_node_cmd("kill", i, NULL);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", base_dir);
  base_dir[0] = '\0';
}

static void on_signal(int sig) {
  t_nodes_stop(); /* not async-signal-safe, but we exit right after */
  signal(sig, SIG_DFL);
  raise(sig);
}

void t_nodes_start(int n, const char *label) {
  t_nodes_begin(n, label);
  t_nodes_ready();
}

void t_nodes_begin(int n, const char *label) {
  if (n < 1 || n > T_NODES_MAX) {
    fprintf(stderr, "t_nodes_start: 1 to %d nodes\n", T_NODES_MAX);
    exit(EXIT_FAILURE);
  }
  owner = getpid();
  n_nodes = n;
  snprintf(base_dir, sizeof(base_dir), "/tmp/edp-%s.XXXXXX", label);
  if (!mkdtemp(base_dir)) {
    perror("mkdtemp");
    exit(EXIT_FAILURE);
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  atexit(t_nodes_stop);
  fprintf(stderr, "starting %d RabbitMQ nodes in %s...\n", n_nodes, base_dir);
  /* In parallel: about 15 s for three instead of 25 s one after another. */
  for (int i = 0; i < n_nodes; i++) {
    snprintf(t_node_dir[i], sizeof(t_node_dir[i]), "%s/n%d", base_dir, i);
    start_pids[i] = t_broker_spawn("start", t_node_dir[i], NULL);
  }
}

void t_nodes_ready(void) {
  for (int i = 0; i < n_nodes; i++) {
    if (!start_pids[i])
      continue;
    int rc = t_pid_wait(start_pids[i]);
    start_pids[i] = 0;
    if (rc != 0) {
      fprintf(stderr, "node %d did not start\n", i);
      exit(EXIT_FAILURE); /* atexit stops the others */
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/url", t_node_dir[i]);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(t_node_url[i], sizeof(t_node_url[i]), f)) {
      fprintf(stderr, "no URL for node %d\n", i);
      exit(EXIT_FAILURE);
    }
    fclose(f);
    t_node_url[i][strcspn(t_node_url[i], "\n")] = '\0';
  }
}
