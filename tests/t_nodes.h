/*
 * t_nodes.h - suites that need several RabbitMQ nodes of their own (the
 * multi-broker suite's independent brokers, the HA suite's cluster):
 * started in parallel in a temp dir, stopped at exit (also on SIGINT and
 * SIGTERM) by the process that started them, never by name.
 */
#ifndef EDP_T_NODES_H
#define EDP_T_NODES_H

#include <sys/types.h>

#define T_NODES_MAX 3

/* Each node's dir (for tests/broker.sh) and URL (a TLS node's names its
 * files). */
extern char t_node_dir[T_NODES_MAX][300];
extern char t_node_url[T_NODES_MAX][512];

/* Starts n nodes (EDP_TLS as tests/broker.sh reads it) in
 * /tmp/edp-<label>.XXXXXX; exits the process if one does not start. */
void t_nodes_start(int n, const char *label);

/* The same in two halves, so that the nodes boot while other tests run:
 * begin starts them and returns at once; ready waits until they run (and
 * exits the process, as t_nodes_start, if one does not start). */
void t_nodes_begin(int n, const char *label);
void t_nodes_ready(void);

/* Stops every node (SIGKILL for one that won't stop) and removes the dir;
 * a no-op in a forked child. */
void t_nodes_stop(void);

/* Runs tests/broker.sh cmd dir [arg] in the background, its stdout to
 * /dev/null; t_pid_wait() returns its exit code (128+signal if killed,
 * -1 if there is no such child). */
pid_t t_broker_spawn(const char *cmd, const char *dir, const char *arg);
int t_pid_wait(pid_t pid);

/* tests/broker.sh cmd on node (start, stop, kill, join ...); its code. */
int t_node_cmd(const char *cmd, int node, const char *arg);

/* rabbitmqctl args (words split by the shell) against node; its code. */
int t_node_ctl(int node, const char *args);

/* An open connection to node (a Check assertion fails if it can't). */
struct edp_conn;
struct edp_conn *t_node_conn(int node);

#endif
