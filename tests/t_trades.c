/*
 * t_trades.c - the thread delegate's programs for the suites (t_trades.h).
 */
#include "t_trades.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *t_trades_url;
const char *t_trades_queue_type;

static int acct_index(const char *a) {
  if (!a || strlen(a) < 3)
    return -1;
  int i = atoi(a + 2) - 100;
  return i >= 0 && i < MAXA ? i : -1;
}

void col_init(col *c) {
  memset(c, 0, sizeof(*c));
  c->e = calloc(MAXE, sizeof(*c->e));
  ck_assert_ptr_nonnull(c->e);
}

void collect_ev(void *ud, json_t *j) {
  col *c = ud;
  const char *type = json_string_value(json_object_get(j, "event"));
  if (!type)
    return;
  if (!strcmp(type, "standby") || !strcmp(type, "active")) {
    if (type[0] == 's') {
      c->standby = 1;
    } else {
      c->active = 1;
      c->takeover = json_is_true(json_object_get(j, "takeover"));
      c->active_us = json_integer_value(json_object_get(j, "at_us"));
    }
    return;
  }
  if (!strcmp(type, "summary")) {
    c->summary = 1;
    c->contexts = (int)json_integer_value(json_object_get(j, "contexts"));
    c->in_flight = (int)json_integer_value(json_object_get(j, "in_flight"));
    c->s_processed = json_integer_value(json_object_get(j, "processed"));
    c->s_dead = json_integer_value(json_object_get(j, "dead_lettered"));
    c->s_redelivered = json_integer_value(json_object_get(j, "redelivered"));
    c->s_reconnects = json_integer_value(json_object_get(j, "reconnects"));
    return;
  }
  int t = !strcmp(type, "processed")       ? E_PROCESSED
          : !strcmp(type, "dead_lettered") ? E_DEAD
          : !strcmp(type, "requeued")      ? E_REQUEUED
          : !strcmp(type, "map")           ? E_MAP
          : !strcmp(type, "sent")          ? E_PROCESSED
                                           : -1;
  if (t < 0)
    return;
  ck_assert_int_lt(c->n, MAXE);
  ev *e = &c->e[c->n++];
  e->type = t;
  e->acct = acct_index(json_string_value(json_object_get(j, "account")));
  ck_assert_int_ge(e->acct, 0);
  e->seq = (int)json_integer_value(json_object_get(j, "seq"));
  e->worker = (int)json_integer_value(json_object_get(j, "worker"));
  e->attempts = (int)json_integer_value(json_object_get(j, "attempts"));
  e->redelivered = json_is_true(json_object_get(j, "redelivered"));
  e->in_flight = (int)json_integer_value(json_object_get(j, "in_flight"));
  e->start = json_integer_value(json_object_get(j, "start_us"));
  e->end = json_integer_value(json_object_get(j, "end_us"));
  e->settled = json_integer_value(json_object_get(j, "settled_us"));
}

/* Sends count trades over accounts with the sender; returns each
 * account's number of confirmed trades in per_acct. */
void send_trades(const char *ex, const char *q, int accounts, int count,
                 const char *shards, int *per_acct) {
  char a[16], n[16];
  snprintf(a, sizeof(a), "%d", accounts);
  snprintf(n, sizeof(n), "%d", count);
  char *argv[18] = {(char *)t_bin("edp-trade-sender"),
                    "--json",
                    "-e",
                    (char *)ex,
                    "-q",
                    (char *)q,
                    "--accounts",
                    a,
                    "--count",
                    n,
                    NULL};
  int n_args = 10;
  if (shards) {
    argv[n_args++] = "--shards";
    argv[n_args++] = (char *)shards;
  }
  if (t_trades_url) {
    argv[n_args++] = "--url";
    argv[n_args++] = (char *)t_trades_url;
  }
  if (t_trades_queue_type) {
    argv[n_args++] = "--queue-type";
    argv[n_args++] = (char *)t_trades_queue_type;
  }
  argv[n_args] = NULL;
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  col c;
  col_init(&c);
  ck_assert_int_eq(t_collect(&p, 120000, collect_ev, &c), 0);
  ck_assert_int_eq(c.n, count);
  memset(per_acct, 0, sizeof(int) * MAXA);
  for (int i = 0; i < c.n; i++) {
    /* seq counts per account from 1, in sending order. */
    ck_assert_int_eq(c.e[i].seq, per_acct[c.e[i].acct] + 1);
    per_acct[c.e[i].acct]++;
  }
  free(c.e);
}

void spawn_dispatcher(t_proc *p, const char *ex, const char *q,
                      const char *extra[]) {
  char *argv[40] = {(char *)t_bin("edp-trade-dispatcher"),
                    "--json",
                    "-e",
                    (char *)ex,
                    "-q",
                    (char *)q};
  int n = 6;
  if (t_trades_url) {
    argv[n++] = "--url";
    argv[n++] = (char *)t_trades_url;
  }
  if (t_trades_queue_type) {
    argv[n++] = "--queue-type";
    argv[n++] = (char *)t_trades_queue_type;
  }
  for (int i = 0; extra[i]; i++)
    argv[n++] = (char *)extra[i];
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn(p, argv, NULL), 0);
}

/* Per account: settled seqs form exactly 1..per_acct[a] in order. */
void assert_in_order_once(const col *c, const int *per_acct) {
  static int next[MAXA];
  for (int a = 0; a < MAXA; a++)
    next[a] = 1;
  for (int i = 0; i < c->n; i++) {
    const ev *e = &c->e[i];
    if (e->type != E_PROCESSED && e->type != E_DEAD)
      continue;
    ck_assert_msg(e->seq == next[e->acct],
                  "account %d: seq %d settled, expected %d", e->acct, e->seq,
                  next[e->acct]);
    next[e->acct]++;
  }
  for (int a = 0; a < MAXA; a++)
    ck_assert_int_eq(next[a] - 1, per_acct[a]);
}

/* A second run (a restart, or a standby taking over) after the first was
 * SIGKILLed. The guarantee: per account, run 1 settled 1..k in order; run 2
 * settles j..n in order with j <= k + 1 (nothing skipped), and every
 * message it repeats (seq <= k: its ack was lost in the crash) is flagged
 * redelivered; at most max_repeats repeat. A dispatcher reports a trade
 * before it acks it, so every trade has its line: a gap is a lost trade.
 * Returns the repeats. */
int assert_taken_over(const col *c1, const col *c2, const int *per_acct,
                      int accounts, int count, int max_repeats) {
  static int last1[MAXA], next2[MAXA];
  memset(last1, 0, sizeof(last1));
  memset(next2, 0, sizeof(next2));
  for (int i = 0; i < c1->n; i++) {
    const ev *e = &c1->e[i];
    ck_assert_int_eq(e->type, E_PROCESSED);
    ck_assert_int_eq(e->seq, last1[e->acct] + 1);
    last1[e->acct] = e->seq;
  }
  int repeats = 0;
  for (int i = 0; i < c2->n; i++) {
    const ev *e = &c2->e[i];
    ck_assert_int_eq(e->type, E_PROCESSED);
    if (!next2[e->acct]) {
      ck_assert_msg(e->seq <= last1[e->acct] + 1,
                    "account %d: gap, run 1 ended at %d, run 2 began at %d",
                    e->acct, last1[e->acct], e->seq);
    } else {
      ck_assert_int_eq(e->seq, next2[e->acct]);
    }
    if (e->seq <= last1[e->acct]) {
      ck_assert(e->redelivered);
      repeats++;
    }
    next2[e->acct] = e->seq + 1;
  }
  int total = 0;
  for (int a = 0; a < accounts; a++) {
    int last = next2[a] ? next2[a] - 1 : last1[a];
    ck_assert_int_eq(last, per_acct[a]);
    total += per_acct[a];
  }
  ck_assert_int_eq(total, count);
  ck_assert_int_le(repeats, max_repeats);
  ck_assert_int_eq(c1->n + c2->n - repeats, count);
  return repeats;
}

/* Reads p's lines into c until it holds at least n events or the role
 * event came (role set), up to 60 s. */
void read_until(t_proc *p, col *c, int n, int role) {
  char line[4096];
  long long deadline = t_now_ms() + 60000;
  while (c->n < n || (role && !c->active && !c->standby)) {
    ck_assert_msg(t_now_ms() < deadline, "no event in time");
    ck_assert_int_eq(t_readline(p, line, sizeof(line), 60000), 1);
    json_t *j = json_loads(line, 0, NULL);
    if (j) {
      collect_ev(c, j);
      json_decref(j);
    }
  }
}
