/*
 * integ_thread_delegate.c - the thread delegate pattern against a real
 * broker, through the programs: per-account order under load with 16
 * workers, a dispatcher SIGKILLed and restarted, in-place retries and
 * dead letters that never let a later trade overtake, two dispatchers on
 * two consistent-hash shards, messages without a context, bad options.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "t_trades.h"
#include "testlib.h"

START_TEST(order_500_accounts_16_workers) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 500, 20000, NULL, per_acct);
  for (int a = 0; a < 500; a++)
    ck_assert_int_eq(per_acct[a], 40);
  t_proc p;
  const char *extra[] = {
      "--workers", "16", "--work-jitter-ms", "2", "--idle-timeout",
      "3000",      NULL};
  spawn_dispatcher(&p, ex, q, extra);
  col c;
  col_init(&c);
  ck_assert_int_eq(t_collect(&p, 180000, collect_ev, &c), 0);
  ck_assert(c.summary);
  /* Exactly once and in order: 20,000 settled, each seq of each account
   * once, in seq order; none failed, none redelivered. */
  ck_assert_int_eq(c.n, 20000);
  ck_assert_int_eq(c.s_processed, 20000);
  assert_in_order_once(&c, per_acct);
  /* Idle: the allocation map is empty, nothing in flight. */
  ck_assert_int_eq(c.contexts, 0);
  ck_assert_int_eq(c.in_flight, 0);
  /* A context never runs on two workers at once: the handler intervals of
   * an account never overlap, even when it moves to another worker. */
  static long long last_end[MAXA];
  static int last_worker[MAXA];
  int moves = 0, used[17] = {0};
  for (int i = 0; i < c.n; i++) {
    const ev *e = &c.e[i];
    ck_assert_int_eq(e->redelivered, 0);
    ck_assert(e->worker >= 1 && e->worker <= 16);
    used[e->worker] = 1;
    if (last_end[e->acct]) {
      ck_assert_msg(e->start >= last_end[e->acct],
                    "account %d overlaps on workers %d and %d", e->acct,
                    last_worker[e->acct], e->worker);
      moves += e->worker != last_worker[e->acct];
    }
    ck_assert_int_ge(e->end, e->start);
    last_end[e->acct] = e->end;
    last_worker[e->acct] = e->worker;
  }
  for (int w = 1; w <= 16; w++)
    ck_assert_msg(used[w], "worker %d never used", w);
  /* Idle accounts are re-placed, so they do move between workers. */
  ck_assert_int_gt(moves, 0);
  free(c.e);
}
END_TEST

/* Hot standby (issue 14): a second dispatcher on the same queue (or on
 * each shard) waits while the first runs, and takes over when the first
 * is SIGKILLed: every trade processed, per account in order, repeats only
 * of trades whose ack died with the first. 3,000 trades over 100
 * accounts. Returns after printing the takeover times. */
static void standby_takes_over(int shards) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 100, 3000, shards ? "2" : NULL, per_acct);
  int slots = shards ? shards : 1;
  t_proc act[2], stb[2];
  col ca[2], cb[2];
  for (int k = 0; k < slots; k++) {
    char shard[8];
    snprintf(shard, sizeof(shard), "%d", k + 1);
    const char *e1[] = {
        "--workers", "4", "--work-ms", "3", shards ? "--shard" : NULL,
        shard,       NULL};
    const char *e2[] = {"--workers",
                        "4",
                        "--work-ms",
                        "1",
                        "--idle-timeout",
                        "3000",
                        shards ? "--shard" : NULL,
                        shard,
                        NULL};
    col_init(&ca[k]);
    col_init(&cb[k]);
    spawn_dispatcher(&act[k], ex, q, e1);
    read_until(&act[k], &ca[k], 0, 1);
    ck_assert_msg(ca[k].active && !ca[k].takeover,
                  "the first dispatcher is not active");
    spawn_dispatcher(&stb[k], ex, q, e2);
    read_until(&stb[k], &cb[k], 0, 1);
    ck_assert_msg(cb[k].standby, "the second dispatcher is not a standby");
  }
  long long killed_us[2];
  for (int k = 0; k < slots; k++) {
    read_until(&act[k], &ca[k], 300, 0);
    /* Read the clock before the signal: on a busy machine the test can be
     * descheduled after kill() for longer than the takeover takes. */
    killed_us[k] = edp_now_us();
    t_signal(&act[k], SIGKILL);
    ck_assert_int_eq(t_collect(&act[k], 30000, collect_ev, &ca[k]),
                     128 + SIGKILL);
  }
  for (int k = 0; k < slots; k++) {
    ck_assert_int_eq(t_collect(&stb[k], 120000, collect_ev, &cb[k]), 0);
    ck_assert_msg(cb[k].active && cb[k].takeover, "no takeover event");
    ck_assert_int_gt(cb[k].n, 0);
    /* The standby processed nothing while the active one lived. */
    ck_assert_int_ge(cb[k].e[0].start, killed_us[k]);
    static int mine[MAXA];
    int total = 0;
    for (int a = 0; a < MAXA; a++) {
      mine[a] = 0;
      for (int i = 0; i < ca[k].n && !mine[a]; i++)
        mine[a] = ca[k].e[i].acct == a;
      for (int i = 0; i < cb[k].n && !mine[a]; i++)
        mine[a] = cb[k].e[i].acct == a;
      mine[a] = mine[a] ? per_acct[a] : 0;
      total += mine[a];
    }
    int repeats = assert_taken_over(&ca[k], &cb[k], mine, MAXA, total, 4 * 64);
    fprintf(stderr,
            "standby%s: active settled %d, standby %d, %d repeated; takeover "
            "%lld ms (kill to first trade started)\n",
            shards ? " on a shard" : "", ca[k].n, cb[k].n, repeats,
            (cb[k].e[0].start - killed_us[k]) / 1000);
    free(ca[k].e);
    free(cb[k].e);
  }
}

START_TEST(standby_takes_over_in_order) { standby_takes_over(0); }
END_TEST

START_TEST(standby_takes_over_on_each_shard) { standby_takes_over(2); }
END_TEST

START_TEST(sigkill_and_restart) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 50, 2000, NULL, per_acct);
  t_proc p;
  const char *extra[] = {"--workers", "8", "--work-ms", "3", NULL};
  spawn_dispatcher(&p, ex, q, extra);
  col c1;
  col_init(&c1);
  char line[4096];
  while (c1.n < 500) {
    ck_assert_int_eq(t_readline(&p, line, sizeof(line), 60000), 1);
    json_t *j = json_loads(line, 0, NULL);
    if (j) {
      collect_ev(&c1, j);
      json_decref(j);
    }
  }
  t_signal(&p, SIGKILL);
  ck_assert_int_eq(t_collect(&p, 30000, collect_ev, &c1), 128 + SIGKILL);
  ck_assert_int_lt(c1.n, 2000);

  const char *extra2[] = {"--workers",      "8",    "--work-ms", "1",
                          "--idle-timeout", "3000", NULL};
  spawn_dispatcher(&p, ex, q, extra2);
  col c2;
  col_init(&c2);
  ck_assert_int_eq(t_collect(&p, 120000, collect_ev, &c2), 0);
  ck_assert_int_eq(c2.contexts, 0);

  int repeats = assert_taken_over(&c1, &c2, per_acct, 50, 2000, 128);
  fprintf(stderr, "sigkill: run 1 settled %d, run 2 %d, %d repeated\n", c1.n,
          c2.n, repeats);
  free(c1.e);
  free(c2.e);
}
END_TEST

/* Per account: every seq 1..n settled; a seq may repeat only as a
 * redelivery (its ack was lost), and the repeats come in order too. */
static int assert_in_order_with_repeats(const col *c, const int *per_acct) {
  static int hi[MAXA], cur[MAXA];
  memset(hi, 0, sizeof(hi));
  memset(cur, 0, sizeof(cur));
  int repeats = 0;
  for (int i = 0; i < c->n; i++) {
    const ev *e = &c->e[i];
    if (e->type != E_PROCESSED && e->type != E_DEAD)
      continue;
    int a = e->acct;
    if (e->seq != cur[a] + 1) {
      ck_assert_msg(e->seq <= hi[a] && e->redelivered,
                    "account %d: seq %d after %d (highest %d)", a, e->seq,
                    cur[a], hi[a]);
    }
    if (e->seq <= hi[a])
      repeats++;
    cur[a] = e->seq;
    if (e->seq > hi[a])
      hi[a] = e->seq;
  }
  for (int a = 0; a < MAXA; a++)
    ck_assert_int_eq(hi[a], per_acct[a]);
  return repeats;
}

START_TEST(connection_lost_and_restored) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 50, 6000, NULL, per_acct);
  t_proc p;
  const char *extra[] = {"--workers",      "8",    "--work-ms", "5",
                         "--idle-timeout", "3000", NULL};
  spawn_dispatcher(&p, ex, q, extra);
  col c;
  col_init(&c);
  char line[4096];
  while (c.n < 300) {
    ck_assert_int_eq(t_readline(&p, line, sizeof(line), 60000), 1);
    json_t *j = json_loads(line, 0, NULL);
    if (j) {
      collect_ev(&c, j);
      json_decref(j);
    }
  }
  char closed[64];
  ck_assert_int_eq(
      t_broker("close-conns", "edp-trade-dispatcher", closed, sizeof(closed)),
      0);
  ck_assert_int_eq(atoi(closed), 1);
  ck_assert_int_eq(t_collect(&p, 120000, collect_ev, &c), 0);
  ck_assert(c.summary);
  ck_assert_int_lt(c.n - 300, 6000); /* the close came mid-run */
  int repeats = assert_in_order_with_repeats(&c, per_acct);
  ck_assert_int_le(repeats, 8 * 16);
  ck_assert_int_gt(c.s_redelivered, 0);
  ck_assert_int_eq(c.s_reconnects, 1);
  ck_assert_int_eq(c.contexts, 0);
  fprintf(stderr, "reconnect: %d settled, %d repeated, %lld redelivered\n", c.n,
          repeats, c.s_redelivered);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "recovered: 6000/6000 settled over 50 accounts in order, %d "
           "repeated (acks lost with the connection), %lld redelivered, 1 "
           "reconnect",
           repeats, c.s_redelivered);
  t_fault_row("thread delegate (edp-trade-dispatcher)",
              "close_connection (rabbitmqctl)", "8 workers busy", outcome, 0);
  free(c.e);
}
END_TEST

/* SIGINT: the running trades finish and are acked, the rest go back to
 * the queue, exit 130; a second dispatcher settles the rest with no trade
 * repeated (a graceful stop loses no ack) and none skipped. */
START_TEST(sigint_is_graceful) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 4, 40, NULL, per_acct);
  t_proc p;
  const char *extra[] = {"--workers", "4", "--work-ms", "300", NULL};
  spawn_dispatcher(&p, ex, q, extra);
  col c;
  col_init(&c);
  char line[4096];
  while (c.n < 4) {
    ck_assert_int_eq(t_readline(&p, line, sizeof(line), 30000), 1);
    json_t *j = json_loads(line, 0, NULL);
    if (j) {
      collect_ev(&c, j);
      json_decref(j);
    }
  }
  long long t0 = t_now_ms();
  t_signal(&p, SIGINT);
  ck_assert_int_eq(t_collect(&p, 10000, collect_ev, &c), 130);
  /* At most the 4 running trades (300 ms each) were finished. */
  ck_assert_int_lt(t_now_ms() - t0, 5000);
  int settled1 = 0, requeued = 0;
  for (int i = 0; i < c.n; i++) {
    settled1 += c.e[i].type == E_PROCESSED;
    requeued += c.e[i].type == E_REQUEUED;
  }
  ck_assert_int_le(settled1, 8);
  ck_assert_int_eq(settled1 + requeued, 40); /* every delivery reported */
  long long stop_ms = t_now_ms() - t0;
  const char *extra2[] = {"--workers", "4", "--idle-timeout", "1500", NULL};
  spawn_dispatcher(&p, ex, q, extra2);
  ck_assert_int_eq(t_collect(&p, 60000, collect_ev, &c), 0);
  int repeats = assert_in_order_with_repeats(&c, per_acct);
  ck_assert_int_eq(repeats, 0);
  int settled = 0;
  for (int i = 0; i < c.n; i++)
    settled += c.e[i].type == E_PROCESSED;
  ck_assert_int_eq(settled, 40);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "exit 130 in %lld ms: %d running trades finished and acked, %d "
           "requeued; a second dispatcher settled the rest, 40/40, in "
           "order, none repeated",
           stop_ms, settled1, requeued);
  t_fault_row("thread delegate (edp-trade-dispatcher)", "SIGINT",
              "4 workers busy (--work-ms 300)", outcome, stop_ms);
  free(c.e);
}
END_TEST

START_TEST(failures_keep_order) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 20, 200, NULL, per_acct);
  t_proc p;
  const char *extra[] = {"--workers",
                         "4",
                         "--fail-every",
                         "3",
                         "--poison-seq",
                         "5",
                         "--max-retries",
                         "2",
                         "--retry-delay-ms",
                         "20",
                         "--work-jitter-ms",
                         "3",
                         "--prefetch",
                         "200",
                         "--display",
                         "--idle-timeout",
                         "2000",
                         NULL};
  spawn_dispatcher(&p, ex, q, extra);
  col c;
  col_init(&c);
  ck_assert_int_eq(t_collect(&p, 120000, collect_ev, &c), 0);
  assert_in_order_once(&c, per_acct);
  int dead = 0, map_worker[MAXA] = {0}, map_n[MAXA] = {0};
  static long long dead5_at[MAXA];
  for (int i = 0; i < c.n; i++) {
    const ev *e = &c.e[i];
    if (e->type == E_MAP) {
      /* The map moves an account only when it had nothing in flight. */
      if (map_n[e->acct] > 0)
        ck_assert_int_eq(e->worker, map_worker[e->acct]);
      map_worker[e->acct] = e->worker;
      map_n[e->acct] = e->in_flight;
      continue;
    }
    if (e->seq == 5) {
      /* Poison: tried 1 + 2 times, then dead-lettered. */
      ck_assert_int_eq(e->type, E_DEAD);
      ck_assert_int_eq(e->attempts, 3);
      ck_assert_int_gt(e->settled, 0);
      dead5_at[e->acct] = e->settled;
      dead++;
    } else {
      /* Seq 6 began only after seq 5 was safely in the .dlq. */
      if (e->seq == 6)
        ck_assert_msg(e->start >= dead5_at[e->acct],
                      "account %d: seq 6 began %lld us before seq 5 was "
                      "dead-lettered",
                      e->acct, dead5_at[e->acct] - e->start);
      ck_assert_int_eq(e->type, E_PROCESSED);
      ck_assert_int_eq(e->attempts, e->seq % 3 == 0 ? 2 : 1);
    }
  }
  ck_assert_int_eq(dead, 20);
  for (int a = 0; a < 20; a++)
    ck_assert_int_eq(map_n[a], 0); /* every account left the map */
  ck_assert_int_eq(c.contexts, 0);

  /* The dead letters are in <queue>.dlq with the reason and account. */
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *conn = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &conn, NULL, 0), 0);
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  uint32_t msgs = 0;
  ck_assert_int_eq(edp_conn_queue_inspect(conn, dlq, &msgs, NULL), 0);
  ck_assert_int_eq(msgs, 20);
  ck_assert_int_eq(edp_conn_consume(conn, dlq, NULL, NULL, 0), 0);
  for (int i = 0; i < 20; i++) {
    edp_delivery d;
    ck_assert_int_eq(edp_conn_receive(conn, &d, 10000), 0);
    int64_t seq = 0, retries = -1;
    ck_assert_int_eq(edp_delivery_header_int(&d, "seq", &seq), 0);
    ck_assert_int_eq(seq, 5);
    ck_assert_int_eq(edp_delivery_header_int(&d, EDP_FWD_HDR_RETRIES, &retries),
                     0);
    ck_assert_int_eq(retries, 2);
    const char *ctx = edp_delivery_header_str(&d, EDP_TD_HDR_CONTEXT);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_str_eq(ctx, edp_delivery_header_str(&d, "account"));
    ck_assert_ptr_nonnull(
        strstr(edp_delivery_header_str(&d, EDP_FWD_HDR_REASON), "poison"));
    /* Where it came from (issue 12): the trade exchange and its
     * trade.eq.<account> key, not the .dlq's default-exchange hop. */
    char rk[300];
    snprintf(rk, sizeof(rk), "trade.eq.%s", ctx);
    ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_ROUTING_KEY), rk);
    ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_EXCHANGE), ex);
    ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_QUEUE), q);
    ck_assert_int_eq(edp_conn_ack(conn, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  edp_conn_destroy(&conn);
  free(c.e);
}
END_TEST

/* Issue 12: SIGINT while a trade fails its last attempt. The dead-letter
 * copy is not published once stopped: the trade goes back to the queue,
 * and the .dlq stays empty; never both. */
static long depth_of(const char *queue) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  uint32_t msgs = 0;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  ck_assert_int_eq(edp_conn_queue_inspect(c, queue, &msgs, NULL), 0);
  edp_conn_destroy(&c);
  return (long)msgs;
}

/* On a quorum queue, a delivery that ended with its dispatcher's death
 * (x-delivery-count) is a failed attempt: a poison trade whose first
 * dispatcher was SIGKILLed holding it gets max_retries attempts in all
 * from the next one, not max_retries + 1 more. */
START_TEST(crashed_delivery_counts_as_attempt) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  t_trades_queue_type = "quorum";
  send_trades(ex, q, 1, 1, NULL, per_acct);
  const char *slow[] = {"--work-ms", "60000", "--display", NULL};
  t_proc p;
  spawn_dispatcher(&p, ex, q, slow);
  /* The map line comes when the trade is handed to its worker: it was
   * delivered, and the crash below ends that delivery unsettled. */
  char line[4096];
  do
    ck_assert_int_eq(t_readline(&p, line, sizeof(line), 30000), 1);
  while (!strstr(line, "\"map\""));
  t_signal(&p, SIGKILL);
  ck_assert_int_eq(t_wait(&p, 10000), 128 + SIGKILL);
  const char *poison[] = {"--poison-seq",
                          "1",
                          "--max-retries",
                          "3",
                          "--retry-delay-ms",
                          "10",
                          "--count",
                          "1",
                          NULL};
  spawn_dispatcher(&p, ex, q, poison);
  col c;
  col_init(&c);
  ck_assert_int_eq(t_collect(&p, 60000, collect_ev, &c), 0);
  ck_assert_int_eq(c.n, 1);
  ck_assert_int_eq(c.e[0].type, E_DEAD);
  ck_assert_int_eq(c.e[0].attempts, 3);
  free(c.e);
}
END_TEST

START_TEST(sigint_during_last_failure_settles_once) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 1, 3, NULL, per_acct);
  t_proc p;
  const char *extra[] = {"--workers",    "1", "--work-ms",     "1500",
                         "--poison-seq", "1", "--max-retries", "0",
                         "--display",    NULL};
  spawn_dispatcher(&p, ex, q, extra);
  char line[4096];
  /* The map line comes when trade 1 is handed to its worker. */
  do
    ck_assert_int_eq(t_readline(&p, line, sizeof(line), 30000), 1);
  while (!strstr(line, "\"map\""));
  t_signal(&p, SIGINT);
  col c;
  col_init(&c);
  ck_assert_int_eq(t_collect(&p, 20000, collect_ev, &c), 130);
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  long in_q = depth_of(q), in_dlq = depth_of(dlq);
  fprintf(stderr, "sigint_during_last_failure: %ld in queue, %ld in .dlq\n",
          in_q, in_dlq);
  ck_assert_int_eq(in_q + in_dlq, 3);
  ck_assert_int_eq(in_dlq, 0);
  for (int i = 0; i < c.n; i++)
    ck_assert_int_ne(c.e[i].type, E_DEAD);
  free(c.e);
}
END_TEST

START_TEST(two_shards) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 100, 2000, "2", per_acct);
  t_proc p1, p2;
  const char *e1[] = {
      "--shard",        "1",    "--workers", "4", "--work-jitter-ms", "1",
      "--idle-timeout", "3000", NULL};
  const char *e2[] = {
      "--shard",        "2",    "--workers", "4", "--work-jitter-ms", "1",
      "--idle-timeout", "3000", NULL};
  spawn_dispatcher(&p1, ex, q, e1);
  spawn_dispatcher(&p2, ex, q, e2);
  col c1, c2;
  col_init(&c1);
  col_init(&c2);
  /* Both run at once; the first collect lets the second's pipe buffer
   * fill meanwhile, which 2,000 short lines cannot overflow. */
  ck_assert_int_eq(t_collect(&p1, 120000, collect_ev, &c1), 0);
  ck_assert_int_eq(t_collect(&p2, 120000, collect_ev, &c2), 0);
  ck_assert_int_gt(c1.n, 0);
  ck_assert_int_gt(c2.n, 0);
  ck_assert_int_eq(c1.n + c2.n, 2000);
  static int on1[MAXA], on2[MAXA], s1[MAXA], s2[MAXA];
  for (int i = 0; i < c1.n; i++)
    on1[c1.e[i].acct]++;
  for (int i = 0; i < c2.n; i++)
    on2[c2.e[i].acct]++;
  for (int a = 0; a < 100; a++) {
    /* Every account's trades all landed on one shard. */
    ck_assert_msg(!on1[a] || !on2[a], "account %d on both shards", a);
    s1[a] = on1[a] ? per_acct[a] : 0;
    s2[a] = on2[a] ? per_acct[a] : 0;
  }
  assert_in_order_once(&c1, s1);
  assert_in_order_once(&c2, s2);
  free(c1.e);
  free(c2.e);
}
END_TEST

START_TEST(no_context_is_dead_lettered) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 2, 4, NULL, per_acct);
  /* The bodies are CSV, so a JSON context cannot be read. The account in
   * the events is then "", which acct_index rejects: read raw lines. */
  char *argv[] = {(char *)t_bin("edp-trade-dispatcher"),
                  "--json",
                  "-e",
                  (char *)ex,
                  "-q",
                  (char *)q,
                  "--context",
                  "json:account",
                  "--count",
                  "4",
                  NULL};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  char line[4096];
  int dead = 0;
  while (t_readline(&p, line, sizeof(line), 30000) == 1) {
    json_t *j = json_loads(line, 0, NULL);
    ck_assert_ptr_nonnull(j);
    const char *type = json_string_value(json_object_get(j, "event"));
    if (!strcmp(type, "dead_lettered")) {
      dead++;
      ck_assert_int_eq(json_integer_value(json_object_get(j, "worker")), 0);
      ck_assert_ptr_nonnull(strstr(
          json_string_value(json_object_get(j, "reason")), "no context"));
    }
    json_decref(j);
  }
  ck_assert_int_eq(t_wait(&p, 10000), 0);
  ck_assert_int_eq(dead, 4);
}
END_TEST

/* attempts[] by seq (0: no seq header); counts processed events. */
typedef struct seq_attempts {
  int attempts[4], processed;
} seq_attempts;

static void count_attempts(void *ud, json_t *ev) {
  seq_attempts *a = ud;
  const char *type = json_string_value(json_object_get(ev, "event"));
  if (!type || strcmp(type, "processed"))
    return;
  json_int_t seq = json_integer_value(json_object_get(ev, "seq"));
  int n = (int)json_integer_value(json_object_get(ev, "attempts"));
  if (seq >= 0 && seq < 4 && n > a->attempts[seq])
    a->attempts[seq] = n;
  a->processed++;
}

/* A foreign producer's trades carry no seq header: --fail-every, which
 * fails the first attempt of every seq divisible by N, took them all for
 * seq 0 and failed every one (found by the interop suite). */
START_TEST(trades_without_seq_never_fail_every) {
  const char *ex = t_unique("td.ex"), *q = t_unique("td.q");
  static int per_acct[MAXA];
  send_trades(ex, q, 1, 2, NULL, per_acct); /* seq 1 and 2; the topology */
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  for (int i = 0; i < 4; i++) {
    edp_msg m;
    edp_msg_init(&m);
    m.exchange = ex;
    m.routing_key = "trade.eq.A-1";
    m.body = "X-1,BUY,AAPL,1 SHARES";
    m.body_len = strlen(m.body);
    m.persistent = 1;
    m.mandatory = 1;
    ck_assert_int_eq(edp_conn_publish_confirmed(c, &m, 5000), 0);
  }
  edp_conn_destroy(&c);
  const char *extra[] = {
      "--fail-every", "2", "--retry-delay-ms", "0", "--count", "6", NULL};
  t_proc p;
  spawn_dispatcher(&p, ex, q, extra);
  seq_attempts a = {0};
  ck_assert_int_eq(t_collect(&p, 60000, count_attempts, &a), 0);
  ck_assert_int_eq(a.processed, 6);
  ck_assert_int_eq(a.attempts[1], 1);
  ck_assert_int_eq(a.attempts[2], 2); /* seq 2 still fails once */
  ck_assert_int_eq(a.attempts[0], 1); /* no seq: never */
}
END_TEST

static int run_status(char *const argv[]) {
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  char line[1024];
  while (t_readline(&p, line, sizeof(line), 20000) == 1)
    ;
  return t_wait(&p, 20000);
}

START_TEST(bad_options) {
  const char *d = t_bin("edp-trade-dispatcher"), *s = t_bin("edp-trade-sender");
  char *a1[] = {(char *)d, "--workers", "0", NULL};
  ck_assert_int_eq(run_status(a1), 64);
  char *a2[] = {(char *)d, "--context", "body", NULL};
  ck_assert_int_eq(run_status(a2), 64);
  char *a3[] = {(char *)s, "--shards", "x", NULL};
  ck_assert_int_eq(run_status(a3), 64);
  char *a4[] = {(char *)s, "--url", "amqp://g:g@127.0.0.1:1/", NULL};
  ck_assert_int_eq(run_status(a4), 69);
  char *a5[] = {(char *)d, "--url", "nope://x", NULL};
  ck_assert_int_eq(run_status(a5), 64);
}
END_TEST

int main(void) {
  Suite *s = suite_create("thread_delegate");
  TCase *tc = tcase_create("thread_delegate");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, order_500_accounts_16_workers);
  tcase_add_test(tc, sigkill_and_restart);
  tcase_add_test(tc, connection_lost_and_restored);
  tcase_add_test(tc, sigint_is_graceful);
  tcase_add_test(tc, failures_keep_order);
  tcase_add_test(tc, two_shards);
  tcase_add_test(tc, standby_takes_over_in_order);
  tcase_add_test(tc, standby_takes_over_on_each_shard);
  tcase_add_test(tc, crashed_delivery_counts_as_attempt);
  tcase_add_test(tc, no_context_is_dead_lettered);
  tcase_add_test(tc, trades_without_seq_never_fail_every);
  tcase_add_test(tc, bad_options);
  suite_add_tcase(s, tc);
  TCase *copies = tcase_create("copies");
  tcase_set_timeout(copies, 120);
  tcase_add_test(copies, sigint_during_last_failure_settles_once);
  suite_add_tcase(s, copies);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
