/*
 * integ_ambulance.c - the ambulance pattern against a real broker, through
 * the programs: the talk's demo order in fifo, carpool and ambulance mode;
 * priority messages overtaking a 2,000-message backlog in ambulance,
 * carpool and native mode (and not in fifo, the control); standard work
 * flowing while the priority lane is never empty; SIGINT losing nothing;
 * bad input; a failing handler's message in the dead-letter queue; a
 * handler that outlasts several heartbeat intervals keeping its
 * connection (issue 11).
 */
#include <check.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "t_calls.h"
#include "testlib.h"

#define MAX_EV 4096

typedef struct ev {
  char id[32];
  int prio;
  char thread[32];
  long long sent_us, start_us, end_us;
  int redelivered;
} ev;

typedef struct evs {
  ev v[MAX_EV];
  int n;
  int ready;
} evs;

static void on_json(void *ud, json_t *o) {
  evs *e = ud;
  const char *event = json_string_value(json_object_get(o, "event"));
  if (!event || strcmp(event, "processed") || e->n >= MAX_EV)
    return;
  ev *x = &e->v[e->n++];
  snprintf(x->id, sizeof(x->id), "%s",
           json_string_value(json_object_get(o, "id")));
  x->prio = !strcmp(json_string_value(json_object_get(o, "kind")), "priority");
  snprintf(x->thread, sizeof(x->thread), "%s",
           json_string_value(json_object_get(o, "thread")));
  x->sent_us = json_integer_value(json_object_get(o, "sent_us"));
  x->start_us = json_integer_value(json_object_get(o, "start_us"));
  x->end_us = json_integer_value(json_object_get(o, "end_us"));
  x->redelivered = json_is_true(json_object_get(o, "redelivered"));
}

/* Starts a receiver with --json and waits for its "ready" line. */
/* The --queue-type both programs get (NULL: none). */
static const char *amb_queue_type;

static void start_receiver(t_proc *p, const char *mode, const char *base,
                           const char *threads, const char *work,
                           const char *count) {
  char *argv[] = {(char *)t_bin("edp-ambulance-receiver"),
                  "--mode",
                  (char *)mode,
                  "--queue",
                  (char *)base,
                  "--threads",
                  (char *)threads,
                  "--work-ms",
                  (char *)work,
                  "--count",
                  (char *)count,
                  "--json",
                  amb_queue_type ? "--queue-type" : NULL,
                  (char *)amb_queue_type,
                  NULL};
  ck_assert_int_eq(t_spawn(p, argv, NULL), 0);
  char line[4096];
  ck_assert_int_eq(t_readline(p, line, sizeof(line), 30000), 1);
  ck_assert_msg(strstr(line, "\"ready\""), "expected ready, got %s", line);
}

static void spawn_sender(t_proc *p, char *const extra[]) {
  char *argv[32] = {(char *)t_bin("edp-ambulance-sender"), "--json"};
  int n = 2;
  for (int i = 0; extra[i] && n < 31; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn(p, argv, NULL), 0);
}

static void ignore_json(void *ud, json_t *o) {
  (void)ud;
  (void)o;
}

/* Reads the sender's and the receiver's output at the same time until
 * both end: a receiver whose stdout pipe is not read blocks on it, which
 * would stall its consumer threads and distort every timing. Returns the
 * receiver's exit code; the sender's must be 0. */
static int collect_both(t_proc *snd, t_proc *rcv, evs *e, int timeout_ms) {
  long long deadline = t_now_ms() + timeout_ms;
  t_proc *ps[2] = {snd, rcv};
  int open[2] = {1, 1};
  static char line[65536];
  while ((open[0] || open[1]) && t_now_ms() < deadline) {
    struct pollfd fds[2];
    for (int i = 0; i < 2; i++)
      fds[i] = (struct pollfd){open[i] ? ps[i]->out_fd : -1, POLLIN, 0};
    poll(fds, 2, 100);
    for (int i = 0; i < 2; i++) {
      if (!open[i] || !fds[i].revents)
        continue;
      int r;
      while ((r = t_readline(ps[i], line, sizeof(line), 1)) == 1) {
        json_t *o = i ? json_loads(line, 0, NULL) : NULL;
        if (o) {
          on_json(e, o);
          json_decref(o);
        }
      }
      if (r == 0)
        open[i] = 0;
    }
  }
  ck_assert_int_eq(t_wait(snd, 5000), 0);
  long long left = deadline - t_now_ms();
  return t_wait(rcv, left > 5000 ? (int)left : 5000);
}

static const ev *find(const evs *e, const char *id) {
  for (int i = 0; i < e->n; i++)
    if (!strcmp(e->v[i].id, id))
      return &e->v[i];
  return NULL;
}

/* Every id of S1..Sns and P1..Pnp processed exactly once, nothing else. */
static void assert_exactly_once(const evs *e, int ns, int np) {
  ck_assert_int_eq(e->n, ns + np);
  char *seen = calloc((size_t)(ns + np), 1);
  for (int i = 0; i < e->n; i++) {
    const ev *x = &e->v[i];
    int num = atoi(x->id + 1);
    int ok = (x->id[0] == 'S' && !x->prio && num >= 1 && num <= ns) ||
             (x->id[0] == 'P' && x->prio && num >= 1 && num <= np);
    ck_assert_msg(ok, "unexpected message %s", x->id);
    int slot = x->id[0] == 'S' ? num - 1 : ns + num - 1;
    ck_assert_msg(!seen[slot], "message %s processed twice", x->id);
    seen[slot] = 1;
  }
  free(seen);
}

/* Standard messages that started after p was sent and before p started,
 * on only_thread (NULL: any): the ones p failed to overtake. */
static int overtaken_by(const evs *e, const ev *p, const char *only_thread) {
  int n = 0;
  for (int i = 0; i < e->n; i++) {
    const ev *x = &e->v[i];
    if (!x->prio && x->start_us > p->sent_us && x->start_us < p->start_us &&
        (!only_thread || !strcmp(x->thread, only_thread)))
      n++;
  }
  return n;
}

/* ---- the talk's demo ---- */

START_TEST(demo_order) {
  static const char *modes[3] = {"fifo", "carpool", "ambulance"};
  static evs e[3];
  t_proc rcv[3], snd[3];
  char base[3][128];
  /* The three modes run side by side to keep the test short: each run
   * takes 8 to 12 s of two-second work. */
  for (int m = 0; m < 3; m++) {
    snprintf(base[m], sizeof(base[m]), "%s", t_unique("amb.demo"));
    memset(&e[m], 0, sizeof(e[m]));
    start_receiver(&rcv[m], modes[m], base[m], "1", "2000", "8");
  }
  for (int m = 0; m < 3; m++) {
    char *extra[] = {"--mode", (char *)modes[m], "--queue", base[m], NULL};
    spawn_sender(&snd[m], extra);
  }
  for (int m = 0; m < 3; m++)
    ck_assert_int_eq(t_collect(&snd[m], 30000, ignore_json, NULL), 0);
  for (int m = 0; m < 3; m++)
    ck_assert_int_eq(t_collect(&rcv[m], 40000, on_json, &e[m]), 0);
  for (int m = 0; m < 3; m++)
    assert_exactly_once(&e[m], 6, 2);

  /* fifo: P1 waits its turn behind S1..S3; starts follow the send order. */
  const evs *f = &e[0];
  static const char *order[] = {"S1", "S2", "S3", "P1", "S4", "S5", "S6", "P2"};
  for (int i = 1; i < 8; i++)
    ck_assert_msg(find(f, order[i - 1])->start_us < find(f, order[i])->start_us,
                  "fifo: %s started before %s", order[i], order[i - 1]);

  /* carpool: P1 and P2 start on the idle priority thread as they arrive,
   * before the standard messages that were waiting (S2, S3). */
  const evs *c = &e[1];
  for (int i = 0; i < c->n; i++)
    ck_assert_str_eq(c->v[i].thread, c->v[i].prio ? "priority" : "standard-1");
  const ev *p1 = find(c, "P1"), *p2 = find(c, "P2");
  ck_assert_int_lt(p1->start_us - p1->sent_us, 500000);
  ck_assert_int_lt(p2->start_us - p2->sent_us, 500000);
  ck_assert_int_lt(p1->start_us, find(c, "S2")->start_us);
  ck_assert_int_lt(p2->start_us, find(c, "S3")->start_us);

  /* ambulance: each P is the next message the priority thread starts. */
  const evs *a = &e[2];
  const char *ps[] = {"P1", "P2"};
  for (int k = 0; k < 2; k++) {
    const ev *p = find(a, ps[k]);
    ck_assert_str_eq(p->thread, "priority");
    const ev *next = NULL;
    for (int i = 0; i < a->n; i++) {
      const ev *x = &a->v[i];
      if (!strcmp(x->thread, "priority") && x->start_us > p->sent_us &&
          (!next || x->start_us < next->start_us))
        next = x;
    }
    ck_assert_str_eq(next->id, p->id);
    ck_assert_int_lt(p->start_us - p->sent_us, 2000000 + 500000);
  }
}
END_TEST

/* ---- a backlog of 2,000 ---- */

/* Runs 2,000 standard then 20 priority messages (20/s) through mode with 2
 * standard threads and 5 ms of work; returns the events in e. */
static void backlog_run(const char *mode, evs *e) {
  const char *base = t_unique("amb.backlog");
  memset(e, 0, sizeof(*e));
  t_proc rcv, snd;
  start_receiver(&rcv, mode, base, "2", "5", "2020");
  char *extra[] = {"--mode",
                   (char *)mode,
                   "--queue",
                   (char *)base,
                   "--standard",
                   "2000",
                   "--priority",
                   "20",
                   "--rate",
                   "20",
                   amb_queue_type ? "--queue-type" : NULL,
                   (char *)amb_queue_type,
                   NULL};
  spawn_sender(&snd, extra);
  ck_assert_int_eq(collect_both(&snd, &rcv, e, 120000), 0);
  assert_exactly_once(e, 2000, 20);
}

/* A priority message overtakes the backlog: it starts before every
 * standard message that was not already being processed, up to the
 * messages other threads start while it reaches its consumer. In carpool
 * it goes to the idle priority thread, in native to the next free worker;
 * in ambulance it waits for the handler the priority thread is running
 * (5 ms here) while the two standard threads, which never take priority
 * work, start a message or two each. Measured: 0 to 4 in all modes. The
 * bound leaves room for scheduling stalls on a shared 2-core machine (the
 * count, unlike a time bound, does not grow when the whole machine
 * stalls); fifo's control run has over a thousand. On the ambulance
 * thread itself at most one standard message may start after the priority
 * message was sent: the one chosen before it arrived. */
#define OVERTAKE_BOUND 15

static void check_overtaking(const char *mode) {
  static evs e;
  backlog_run(mode, &e);
  int worst = 0;
  for (int i = 0; i < e.n; i++) {
    const ev *p = &e.v[i];
    if (!p->prio)
      continue;
    int n = overtaken_by(&e, p, NULL);
    worst = n > worst ? n : worst;
    ck_assert_msg(n <= OVERTAKE_BOUND,
                  "%s: %s started after %d standard messages sent before it",
                  mode, p->id, n);
    if (!strcmp(mode, "ambulance"))
      ck_assert_int_le(overtaken_by(&e, p, "priority"), 1);
    if (strcmp(mode, "native"))
      ck_assert_str_eq(p->thread, "priority");
  }
  fprintf(stderr,
          "%s: at most %d standard message(s) started before a "
          "priority message\n",
          mode, worst);
  for (int i = 0; i < e.n; i++) {
    const ev *p = &e.v[i];
    if (p->prio && overtaken_by(&e, p, NULL) == worst && worst > 4) {
      fprintf(stderr, "  %s waited %lld us:", p->id, p->start_us - p->sent_us);
      for (int j = 0; j < e.n; j++)
        if (!e.v[j].prio && e.v[j].start_us > p->sent_us &&
            e.v[j].start_us < p->start_us)
          fprintf(stderr, " %s@%s+%lld", e.v[j].id, e.v[j].thread,
                  e.v[j].start_us - p->sent_us);
      fprintf(stderr, "\n");
    }
  }
}

START_TEST(backlog_ambulance) { check_overtaking("ambulance"); }
END_TEST
START_TEST(backlog_carpool) { check_overtaking("carpool"); }
END_TEST
START_TEST(backlog_native) { check_overtaking("native"); }
END_TEST
/* The lanes as quorum queues (issue 14): the same guarantees. */
START_TEST(backlog_carpool_quorum) {
  amb_queue_type = "quorum";
  check_overtaking("carpool");
}
END_TEST

/* The control: in fifo a priority message waits behind the backlog, so
 * the same measure that the other modes pass fails by far here. */
START_TEST(backlog_fifo_control) {
  static evs e;
  backlog_run("fifo", &e);
  int worst = 0;
  for (int i = 0; i < e.n; i++)
    if (e.v[i].prio) {
      int n = overtaken_by(&e, &e.v[i], NULL);
      worst = n > worst ? n : worst;
    }
  fprintf(stderr, "fifo: up to %d standard messages before a priority one\n",
          worst);
  ck_assert_int_gt(worst, 100);
}
END_TEST

/* ---- no starvation ---- */

/* Priority messages arrive five times faster than the priority thread can
 * process them, so the priority lane is never empty for about 2 s: the
 * priority thread must take nothing but priority work, and the standard
 * threads must keep processing standard messages meanwhile. */
/* Runs 1,000 standard and 400 priority messages (1000/s) through ambulance
 * mode; returns how many standard messages the priority thread started
 * while priority messages were queued, and checks the standard flow. */
static int starvation_run(const char *prefetch, int lane_check) {
  const char *base = t_unique("amb.starve");
  static evs e;
  memset(&e, 0, sizeof(e));
  t_proc rcv, snd;
  char *argv[] = {(char *)t_bin("edp-ambulance-receiver"),
                  "--mode",
                  "ambulance",
                  "--queue",
                  (char *)base,
                  "--threads",
                  "2",
                  "--work-ms",
                  "5",
                  "--count",
                  "1400",
                  "--priority-prefetch",
                  (char *)prefetch,
                  "--json",
                  lane_check ? NULL : "--no-lane-check",
                  NULL};
  ck_assert_int_eq(t_spawn(&rcv, argv, NULL), 0);
  char line[4096];
  ck_assert_int_eq(t_readline(&rcv, line, sizeof(line), 30000), 1);
  ck_assert_msg(strstr(line, "\"ready\""), "expected ready, got %s", line);
  char *extra[] = {"--mode",     "ambulance", "--queue",    (char *)base,
                   "--standard", "1000",      "--priority", "400",
                   "--rate",     "1000",      NULL};
  spawn_sender(&snd, extra);
  ck_assert_int_eq(collect_both(&snd, &rcv, &e, 120000), 0);
  assert_exactly_once(&e, 1000, 400);
  long long first = -1, last = -1;
  for (int i = 0; i < e.n; i++)
    if (e.v[i].prio) {
      ck_assert_str_eq(e.v[i].thread, "priority");
      if (first < 0 || e.v[i].start_us < first)
        first = e.v[i].start_us;
      if (e.v[i].start_us > last)
        last = e.v[i].start_us;
    }
  int std_flow = 0, prio_thread_std = 0;
  for (int i = 0; i < e.n; i++) {
    const ev *x = &e.v[i];
    if (x->prio || x->start_us <= first || x->start_us >= last)
      continue;
    if (!strcmp(x->thread, "priority"))
      prio_thread_std++;
    else
      std_flow++;
  }
  fprintf(stderr,
          "no starvation (priority prefetch %s, lane check %s): %d standard "
          "messages processed during %lld ms of priority traffic; %d on the "
          "priority thread\n",
          prefetch, lane_check ? "on" : "off", std_flow, (last - first) / 1000,
          prio_thread_std);
  ck_assert_int_ge(last - first, 1000000);
  ck_assert_int_ge(std_flow, 100);
  return prio_thread_std;
}

/* Priority messages arrive five times faster than the priority thread can
 * process them, so the priority lane is never empty for about 2 s: the
 * priority thread must take nothing but priority work, and the standard
 * threads must keep processing standard messages meanwhile. Measured: 0
 * on the priority thread; 1 is allowed for a broker that takes longer than
 * the 100 ms lane check waits on a loaded machine. */
START_TEST(ambulance_no_starvation) {
  ck_assert_int_le(starvation_run("4", 1), 1);
}
END_TEST

/* The control: without the lane check and with a priority prefetch of 1
 * the next priority message is still on the wire after each ack, and
 * standard messages slip in between (about every other message), which
 * the measure above must see. */
START_TEST(ambulance_starvation_control) {
  ck_assert_int_ge(starvation_run("1", 0), 50);
}
END_TEST

/* ---- SIGINT ---- */

START_TEST(sigint_loses_nothing) {
  const char *base = t_unique("amb.sig");
  static evs e;
  memset(&e, 0, sizeof(e));
  t_proc rcv, snd;
  start_receiver(&rcv, "ambulance", base, "1", "300", "1000");
  char *extra[] = {"--mode",     "ambulance", "--queue",    (char *)base,
                   "--standard", "10",        "--priority", "2",
                   "--rate",     "0",         NULL};
  spawn_sender(&snd, extra);
  ck_assert_int_eq(t_collect(&snd, 30000, ignore_json, NULL), 0);
  char line[4096];
  ck_assert_int_eq(t_readline(&rcv, line, sizeof(line), 10000), 1);
  json_t *o = json_loads(line, 0, NULL);
  on_json(&e, o);
  json_decref(o);
  ck_assert_int_eq(e.n, 1);
  t_signal(&rcv, SIGINT);
  ck_assert_int_eq(t_collect(&rcv, 10000, on_json, &e), 130);
  int first_run = e.n;
  ck_assert_int_lt(first_run, 12);
  /* A second receiver gets exactly the rest: the in-flight messages were
   * finished and acked, the prefetched ones went back to the queues. */
  char *argv[] = {(char *)t_bin("edp-ambulance-receiver"),
                  "--queue",
                  (char *)base,
                  "--work-ms",
                  "0",
                  "--idle-timeout",
                  "1500",
                  "--json",
                  NULL};
  ck_assert_int_eq(t_spawn(&rcv, argv, NULL), 0);
  ck_assert_int_eq(t_collect(&rcv, 30000, on_json, &e), 0);
  assert_exactly_once(&e, 10, 2);
}
END_TEST

/* ---- a lost connection ---- */

/* The broker closes the priority thread's connection in the middle of a
 * run: the thread reconnects (with both consumers and their prefetch) and
 * every message is still processed; the ones that were unacked on the lost
 * connection come again, marked redelivered (at-least-once). */
START_TEST(priority_thread_reconnects) {
  const char *base = t_unique("amb.reconn");
  static evs e;
  memset(&e, 0, sizeof(e));
  t_proc rcv, snd;
  char *argv[] = {(char *)t_bin("edp-ambulance-receiver"),
                  "--mode",
                  "ambulance",
                  "--queue",
                  (char *)base,
                  "--threads",
                  "1",
                  "--work-ms",
                  "20",
                  "--idle-timeout",
                  "3000",
                  "--json",
                  NULL};
  ck_assert_int_eq(t_spawn(&rcv, argv, NULL), 0);
  char line[4096];
  ck_assert_int_eq(t_readline(&rcv, line, sizeof(line), 30000), 1);
  ck_assert_msg(strstr(line, "\"ready\""), "expected ready, got %s", line);
  char *extra[] = {"--mode",     "ambulance", "--queue",    (char *)base,
                   "--standard", "300",       "--priority", "30",
                   "--rate",     "20",        NULL};
  spawn_sender(&snd, extra);
  while (e.n < 20) {
    ck_assert_int_eq(t_readline(&rcv, line, sizeof(line), 30000), 1);
    json_t *o = json_loads(line, 0, NULL);
    if (o) {
      on_json(&e, o);
      json_decref(o);
    }
  }
  char closed[64] = "";
  ck_assert_int_eq(
      t_broker("close-conns", "edp-ambulance priority", closed, sizeof(closed)),
      0);
  ck_assert_str_eq(closed, "1");
  ck_assert_int_eq(collect_both(&snd, &rcv, &e, 120000), 0);
  /* Every message at least once; a second processing only as a
   * redelivery. */
  int seen_s[301] = {0}, seen_p[31] = {0}, again = 0;
  for (int i = 0; i < e.n; i++) {
    int num = atoi(e.v[i].id + 1);
    int *slot = e.v[i].prio ? &seen_p[num] : &seen_s[num];
    if (*slot) {
      ck_assert_msg(e.v[i].redelivered, "%s twice, not redelivered", e.v[i].id);
      again++;
    }
    (*slot)++;
    if (e.v[i].prio)
      ck_assert_str_eq(e.v[i].thread, "priority");
  }
  for (int i = 1; i <= 300; i++)
    ck_assert_msg(seen_s[i], "S%d never processed", i);
  for (int i = 1; i <= 30; i++)
    ck_assert_msg(seen_p[i], "P%d never processed", i);
  fprintf(stderr, "reconnect: %d message(s) processed again\n", again);
}
END_TEST

/* ---- bad input ---- */

static int run_status(char *const argv[]) {
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  return t_collect(&p, 20000, ignore_json, NULL);
}

START_TEST(bad_input) {
  const char *r = t_bin("edp-ambulance-receiver");
  const char *s = t_bin("edp-ambulance-sender");
  char *a1[] = {(char *)r, "--mode", "express", NULL};
  ck_assert_int_eq(run_status(a1), 64);
  char *a2[] = {(char *)r, "--threads", "0", NULL};
  ck_assert_int_eq(run_status(a2), 64);
  char *a3[] = {(char *)s, "--mode", "lifo", NULL};
  ck_assert_int_eq(run_status(a3), 64);
  char *a4[] = {(char *)s, "--rate", "fast", NULL};
  ck_assert_int_eq(run_status(a4), 64);
  char *a5[] = {(char *)r, "--url", "http://x/", NULL};
  ck_assert_int_eq(run_status(a5), 64);
  char *a6[] = {(char *)r, "--url", "amqp://guest:guest@127.0.0.1:1/", NULL};
  ck_assert_int_eq(run_status(a6), 69);
  char *a7[] = {(char *)s, "--url", "amqp://guest:guest@127.0.0.1:1/", NULL};
  ck_assert_int_eq(run_status(a7), 69);
  /* A queue that exists with other arguments: a clean error, exit 65. */
  const char *base = t_unique("amb.bad");
  char q[256];
  snprintf(q, sizeof(q), "%s.fifo", base);
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&co, &c, NULL, 0), 0);
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  ck_assert_int_eq(edp_conn_queue_declare(c, q, &qo, NULL, 0, NULL, NULL), 0);
  char *a8[] = {(char *)s,    "--mode",     "fifo", "--queue",
                (char *)base, "--standard", "1",    NULL};
  ck_assert_int_eq(run_status(a8), 65);
  char *a9[] = {(char *)r,    "--mode",         "fifo", "--queue",
                (char *)base, "--idle-timeout", "100",  NULL};
  ck_assert_int_eq(run_status(a9), 65);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
}
END_TEST

/* ---- the library: a failing handler dead-letters ---- */

static int fail_s2(void *ud, const edp_amb_job *job) {
  (void)ud;
  return strcmp(job->d->message_id, "S2") == 0;
}

START_TEST(handler_failure_dead_letters) {
  const char *base = t_unique("amb.dlq");
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&co, &c, NULL, 0), 0);
  edp_amb_sender_opts so;
  edp_amb_sender_opts_init(&so);
  so.base = base;
  edp_amb_sender *s = NULL;
  ck_assert_int_eq(edp_amb_sender_new(c, &so, &s), 0);
  ck_assert_int_eq(edp_amb_send(s, EDP_AMB_STANDARD, "S1", "a", 1), 0);
  ck_assert_int_eq(edp_amb_send(s, EDP_AMB_STANDARD, "S2", "b", 1), 0);
  ck_assert_int_eq(edp_amb_send(s, EDP_AMB_PRIORITY, "P1", "c", 1), 0);
  ck_assert_int_eq(edp_amb_flush(s), 0);
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ro.base = base;
  ro.conn = &co;
  ro.handler = fail_s2;
  edp_amb_receiver *r = NULL;
  char err[300];
  ck_assert_int_eq(edp_amb_receiver_start(&ro, &r, err, sizeof(err)), 0);
  /* Wait (bounded) for the dead-lettered copy to reach the .dlq. */
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", base);
  uint32_t msgs = 0;
  long long deadline = t_now_ms() + 10000;
  edp_amb_receiver_stats st = {0};
  while (t_now_ms() < deadline) {
    edp_amb_receiver_stats_get(r, &st);
    ck_assert_int_eq(edp_conn_queue_inspect(c, dlq, &msgs, NULL), 0);
    if (msgs == 1 && st.processed[0] + st.processed[1] == 2)
      break;
    edp_conn_wait(c, -1, 50);
  }
  ck_assert_int_eq(msgs, 1);
  ck_assert_int_eq(st.processed[EDP_AMB_STANDARD], 1);
  ck_assert_int_eq(st.processed[EDP_AMB_PRIORITY], 1);
  ck_assert_int_eq(st.dead_lettered, 1);
  edp_amb_receiver_destroy(&r);
  ck_assert_ptr_null(r);
  edp_amb_sender_destroy(&s);
  edp_conn_destroy(&c);
}
END_TEST

/* ---- edp_conn: per-consumer prefetch survives a reconnect ---- */

/* Counts the deliveries of each consumer that arrive within ms, acking
 * none: with prefetch limits the broker stops at the limit. */
static void count_held(edp_conn *c, const char *tag_a, int *a, int *b, int ms) {
  *a = *b = 0;
  long long deadline = t_now_ms() + ms;
  for (;;) {
    long long left = deadline - t_now_ms();
    if (left <= 0)
      break;
    edp_delivery d;
    int rc = edp_conn_receive(c, &d, (int)left);
    if (rc == EDP_ETIMEOUT)
      break;
    ck_assert_int_eq(rc, 0);
    if (!strcmp(d.consumer_tag, tag_a))
      (*a)++;
    else
      (*b)++;
    edp_delivery_clear(&d);
  }
}

START_TEST(reconnect_keeps_per_consumer_prefetch) {
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&co, &c, NULL, 0), 0);
  char qa[128], qb[128], ta[256], tb[256];
  snprintf(qa, sizeof(qa), "%s", t_unique("amb.qos.a"));
  snprintf(qb, sizeof(qb), "%s", t_unique("amb.qos.b"));
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  ck_assert_int_eq(edp_conn_queue_declare(c, qa, &qo, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(edp_conn_queue_declare(c, qb, &qo, NULL, 0, NULL, NULL), 0);
  for (int i = 0; i < 10; i++) {
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = i % 2 ? qa : qb;
    m.body = "x";
    m.body_len = 1;
    ck_assert_int_eq(edp_conn_publish(c, &m, NULL), 0);
  }
  ck_assert_int_eq(edp_conn_qos(c, 1), 0);
  ck_assert_int_eq(edp_conn_consume(c, qa, NULL, ta, sizeof(ta)), 0);
  ck_assert_int_eq(edp_conn_qos(c, 3), 0);
  ck_assert_int_eq(edp_conn_consume(c, qb, NULL, tb, sizeof(tb)), 0);
  int a, b;
  count_held(c, ta, &a, &b, 700);
  ck_assert_int_eq(a, 1);
  ck_assert_int_eq(b, 3);
  /* The unacked messages go back; the new channel must give consumer A
   * prefetch 1 again, not the channel's last value 3. */
  ck_assert_int_eq(edp_conn_reconnect(c), 0);
  count_held(c, ta, &a, &b, 700);
  ck_assert_int_eq(a, 1);
  ck_assert_int_eq(b, 3);
  edp_conn_queue_delete(c, qa);
  edp_conn_queue_delete(c, qb);
  edp_conn_destroy(&c);
}
END_TEST

/* ---- the library: a handler longer than two heartbeat intervals ---- */

typedef struct amb_slow_log {
  t_calls log;
  int on_priority_thread; /* calls that ran for thread 0 */
  int priority_kind;      /* calls of kind priority */
} amb_slow_log;

static int amb_slow(void *ud, const edp_amb_job *job) {
  amb_slow_log *l = ud;
  pthread_mutex_lock(&l->log.mu);
  l->on_priority_thread += job->thread == 0;
  l->priority_kind += job->kind == EDP_AMB_PRIORITY;
  pthread_mutex_unlock(&l->log.mu);
  return t_calls_work(&l->log, job->d);
}

static void amb_event(void *ud, int event, const edp_amb_job *job) {
  (void)job;
  amb_slow_log *l = ud;
  if (event == EDP_AMB_PROCESSED)
    t_calls_event(&l->log, 0);
}

/* Ambulance mode, heartbeat=1 on every receiver connection, a 4 s
 * handler. Before the handler ran on a worker, the priority thread lost
 * its connection during the handler, got the message again, lost it
 * again: forever. Now the priority message is processed once, not
 * redelivered, on one channel, and a second priority message published
 * while the handler runs (held by the thread, prefetch 4) is processed
 * after it by the same thread. */
START_TEST(long_handler_keeps_connection) {
  const char *base = t_unique("amb.hb");
  char url[600];
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = t_hb_url(url, sizeof(url), 1);
  amb_slow_log l = {0};
  t_calls_init(&l.log, 4000);
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ro.mode = EDP_AMB_AMBULANCE;
  ro.base = base;
  ro.conn = &co;
  ro.handler = amb_slow;
  ro.on_event = amb_event;
  ro.ud = &l;
  edp_amb_receiver *r = NULL;
  char err[300] = "";
  ck_assert_msg(edp_amb_receiver_start(&ro, &r, err, sizeof(err)) == 0, "%s",
                err);
  char pq[256];
  ck_assert_int_eq(edp_amb_queue_name(EDP_AMB_AMBULANCE, base, EDP_AMB_PRIORITY,
                                      pq, sizeof(pq)),
                   0);
  long long t0 = t_now_ms();
  ck_assert_int_eq(t_publish_one(pq, "P1"), 0);
  ck_assert_msg(t_calls_await(&l.log, &l.log.n, 1, 20000), "P1 never started");
  ck_assert_int_eq(t_publish_one(pq, "P2"), 0);
  long long published2 = t_now_ms();
  ck_assert_msg(t_calls_await(&l.log, &l.log.events, 2, 30000),
                "only %d of 2 processed", l.log.events);
  long long took = t_now_ms() - t0;
  edp_amb_receiver_stats st;
  edp_amb_receiver_stats_get(r, &st);
  int thread_err = edp_amb_receiver_error(r);
  edp_amb_receiver_destroy(&r);

  t_call a = t_calls_get(&l.log, 0), b = t_calls_get(&l.log, 1);
  ck_assert_int_eq(l.log.n, 2);
  ck_assert_str_eq(a.id, "P1");
  ck_assert_str_eq(b.id, "P2");
  ck_assert_int_eq(a.redelivered, 0);
  ck_assert_int_eq(b.redelivered, 0);
  ck_assert_int_eq(l.on_priority_thread, 2);
  ck_assert_int_eq(l.priority_kind, 2);
  ck_assert_int_ge(a.end_ms - a.start_ms, 4000);
  ck_assert_int_lt(published2, a.end_ms);
  ck_assert_int_ge(b.start_ms, a.end_ms);
  ck_assert_uint_eq(a.epoch, b.epoch);
  ck_assert(!pthread_equal(a.thread, pthread_self()));
  ck_assert(pthread_equal(a.thread, b.thread));
  ck_assert_uint_eq(st.processed[EDP_AMB_PRIORITY], 2);
  ck_assert_uint_eq(st.processed[EDP_AMB_STANDARD], 0);
  ck_assert_uint_eq(st.dead_lettered, 0);
  ck_assert_uint_eq(st.redelivered, 0);
  ck_assert_uint_eq(st.reconnects, 0);
  ck_assert_int_eq(thread_err, 0);
  fprintf(stderr,
          "amb long_handler_keeps_connection: 2 x %d ms handlers at "
          "heartbeat=1 in %lld ms, 0 reconnects\n",
          l.log.work_ms, took);
  /* Both were acked: closing the connections gave nothing back. */
  ck_assert_int_eq(t_depth(pq), 0);
  t_calls_free(&l.log);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ambulance");
  TCase *tc = tcase_create("broker");
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, bad_input);
  tcase_add_test(tc, handler_failure_dead_letters);
  tcase_add_test(tc, reconnect_keeps_per_consumer_prefetch);
  tcase_add_test(tc, demo_order);
  tcase_add_test(tc, backlog_ambulance);
  tcase_add_test(tc, backlog_carpool);
  tcase_add_test(tc, backlog_native);
  tcase_add_test(tc, backlog_carpool_quorum);
  tcase_add_test(tc, backlog_fifo_control);
  tcase_add_test(tc, ambulance_no_starvation);
  tcase_add_test(tc, ambulance_starvation_control);
  tcase_add_test(tc, sigint_loses_nothing);
  tcase_add_test(tc, priority_thread_reconnects);
  tcase_add_test(tc, long_handler_keeps_connection);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
