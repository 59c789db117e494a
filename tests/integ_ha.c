/*
 * integ_ha.c - high availability on a 3-node cluster of private nodes
 * (issue 14): quorum queues whose leader node is SIGKILLed mid-run, with
 * the programs connected to the surviving nodes. Forwarding: nothing
 * confirmed is lost. Thread delegate: the active dispatcher carries on
 * through the leader's loss, and when it is SIGKILLed in turn its standby
 * on the third node takes over with per-account order held.
 *
 * The queue's leader is made on node 0 (declared through it: RabbitMQ
 * places a quorum queue's leader on the declaring client's node) and read
 * back from rabbitmqctl before it is killed; each test revives it.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "t_nodes.h"
#include "t_trades.h"
#include "testlib.h"

#define NODES 3

static const edp_queue_kind quorum = {"quorum", 20, 0};

/* The node (index) that leads queue q, from rabbitmqctl on a live node;
 * -1 if none is named. */
static int leader_of(const char *q, int ask) {
  char cmd[1024], line[1024];
  snprintf(cmd, sizeof(cmd),
           "tests/broker.sh ctl '%s' list_queues name leader "
           "--no-table-headers --silent 2>/dev/null",
           t_node_dir[ask]);
  FILE *f = popen(cmd, "r");
  ck_assert_ptr_nonnull(f);
  char leader[512] = "";
  size_t ql = strlen(q);
  while (fgets(line, sizeof(line), f))
    if (!strncmp(line, q, ql) && line[ql] == '\t')
      snprintf(leader, sizeof(leader), "%s", line + ql + 1);
  pclose(f);
  leader[strcspn(leader, "\r\n")] = '\0';
  for (int i = 0; leader[0] && i < NODES; i++) {
    char env[1024], want[1024];
    snprintf(env, sizeof(env), "%s/node.env", t_node_dir[i]);
    FILE *e = fopen(env, "r");
    if (!e)
      continue;
    snprintf(want, sizeof(want), "NODE=%s\n", leader);
    int hit = 0;
    while (!hit && fgets(line, sizeof(line), e))
      hit = !strcmp(line, want);
    fclose(e);
    if (hit)
      return i;
  }
  return -1;
}

/* ---------- forwarding ---------- */

typedef struct fwd_count {
  const char *prefix;
  int n, confirmed, *processed;
} fwd_count;

static void count_fwd(void *ud, json_t *ev) {
  fwd_count *t = ud;
  const char *kind = json_string_value(json_object_get(ev, "event"));
  const char *id = json_string_value(json_object_get(ev, "message_id"));
  size_t pl = strlen(t->prefix);
  if (!kind || !id || strncmp(id, t->prefix, pl) || id[pl] != '-')
    return;
  int seq = atoi(id + pl + 1);
  if (seq < 1 || seq > t->n)
    return;
  if (!strcmp(kind, "confirmed"))
    t->confirmed++;
  else if (!strcmp(kind, "processed"))
    t->processed[seq]++;
}

START_TEST(forwarding_survives_leader_killed) {
  const char *q = t_unique("ha.fwd"), *prefix = t_unique("hf");
  edp_conn *c = t_node_conn(0);
  ck_assert_int_eq(edp_fwd_declare(c, q, &quorum), 0);
  edp_conn_destroy(&c);
  ck_assert_int_eq(leader_of(q, 1), 0);
  const int n = 4000;
  fwd_count t = {prefix, n, 0, calloc(n + 1, sizeof(int))};
  char *rargs[] = {(char *)t_bin("edp-forward-receiver"),
                   "--url",
                   t_node_url[2],
                   "-q",
                   (char *)q,
                   "--queue-type",
                   "quorum",
                   "--json",
                   "--idle-timeout",
                   "15000",
                   NULL};
  char *sargs[] = {(char *)t_bin("edp-forward-sender"),
                   "--url",
                   t_node_url[1],
                   "-q",
                   (char *)q,
                   "--queue-type",
                   "quorum",
                   "--json",
                   "--id-prefix",
                   (char *)prefix,
                   "-n",
                   "4000",
                   "--rate",
                   "800",
                   NULL};
  t_proc r, s;
  ck_assert_int_eq(t_spawn(&r, rargs, NULL), 0);
  ck_assert_int_eq(t_spawn(&s, sargs, NULL), 0);
  char line[4096];
  while (t.confirmed < 1500) {
    ck_assert_int_eq(t_readline(&s, line, sizeof(line), 30000), 1);
    json_t *j = json_loads(line, 0, NULL);
    if (j) {
      count_fwd(&t, j);
      json_decref(j);
    }
  }
  long long killed = t_now_ms();
  ck_assert_int_eq(t_node_cmd("kill", 0, NULL), 0);
  ck_assert_int_eq(t_collect(&s, 120000, count_fwd, &t), 0);
  long long sent = t_now_ms();
  ck_assert_int_eq(t.confirmed, n);
  ck_assert_int_eq(t_collect(&r, 120000, count_fwd, &t), 0);
  int missing = 0, repeated = 0;
  for (int i = 1; i <= n; i++) {
    missing += t.processed[i] == 0;
    repeated += t.processed[i] > 1;
  }
  ck_assert_msg(missing == 0, "%d confirmed messages lost", missing);
  fprintf(stderr,
          "forwarding, leader killed after 1500 confirms: %d confirmed, "
          "%d processed twice, sender done %lld ms after the kill\n",
          t.confirmed, repeated, sent - killed);
  free(t.processed);
  ck_assert_int_eq(t_node_cmd("start", 0, NULL), 0);
}
END_TEST

/* ---------- thread delegate ---------- */

START_TEST(dispatchers_survive_leader_then_active_killed) {
  const char *ex = t_unique("ha.ex"), *q = t_unique("ha.td");
  edp_conn *c = t_node_conn(0);
  ck_assert_int_eq(edp_td_declare(c, ex, q, "trade.eq.*", &quorum), 0);
  edp_conn_destroy(&c);
  ck_assert_int_eq(leader_of(q, 1), 0);
  static int per_acct[MAXA];
  t_trades_url = t_node_url[1];
  t_trades_queue_type = "quorum";
  send_trades(ex, q, 100, 3000, NULL, per_acct);
  const char *ea[] = {"--workers", "4", "--work-ms", "3", NULL};
  const char *eb[] = {"--workers",      "4",    "--work-ms", "1",
                      "--idle-timeout", "5000", NULL};
  t_proc a, b;
  col ca, cb;
  col_init(&ca);
  col_init(&cb);
  spawn_dispatcher(&a, ex, q, ea);
  read_until(&a, &ca, 0, 1);
  ck_assert(ca.active);
  t_trades_url = t_node_url[2];
  spawn_dispatcher(&b, ex, q, eb);
  read_until(&b, &cb, 0, 1);
  ck_assert(cb.standby);
  t_trades_url = NULL;
  read_until(&a, &ca, 500, 0);
  ck_assert_int_eq(t_node_cmd("kill", 0, NULL), 0);
  /* The active dispatcher goes on through the leader election. */
  read_until(&a, &ca, 1500, 0);
  long long killed_us = edp_now_us(); /* before the signal, as in TD */
  t_signal(&a, SIGKILL);
  ck_assert_int_eq(t_collect(&a, 30000, collect_ev, &ca), 128 + SIGKILL);
  ck_assert_int_eq(t_collect(&b, 120000, collect_ev, &cb), 0);
  ck_assert(cb.takeover);
  ck_assert_int_gt(cb.n, 0);
  ck_assert_int_ge(cb.e[0].start, killed_us);
  int repeats = assert_taken_over(&ca, &cb, per_acct, 100, 3000, 4 * 64);
  fprintf(stderr,
          "thread delegate, leader killed, then the active dispatcher: "
          "active settled %d, standby %d, %d repeated, takeover %lld ms\n",
          ca.n, cb.n, repeats, (cb.e[0].start - killed_us) / 1000);
  free(ca.e);
  free(cb.e);
  ck_assert_int_eq(t_node_cmd("start", 0, NULL), 0);
}
END_TEST

int main(void) {
  t_nodes_start(NODES, "ha");
  for (int i = 1; i < NODES; i++)
    if (t_node_cmd("join", i, t_node_dir[0]) != 0) {
      fprintf(stderr, "node %d did not join the cluster\n", i);
      return EXIT_FAILURE; /* atexit stops the nodes */
    }
  Suite *su = suite_create("ha");
  TCase *tc = tcase_create("cluster");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, forwarding_survives_leader_killed);
  tcase_add_test(tc, dispatchers_survive_leader_then_active_killed);
  suite_add_tcase(su, tc);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  t_nodes_stop();
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
