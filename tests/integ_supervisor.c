/*
 * integ_supervisor.c - the supervisor consumer pattern against a real
 * broker, through the programs: edp-load publishes, edp-supervisor
 * processes and reports every scale decision and processed message as
 * JSON lines, which the tests read as they come (never sleeping for a
 * guessed time).
 *
 * What is asserted: a burst raises the consumers at once and within two
 * intervals, never above max, the backlog drains and the consumers return
 * to min only after the keep-alive; every message is processed exactly
 * once (ids) and none is requeued by a scale-down, over several scale
 * cycles with a prefetch above 1; the supervisor survives the broker
 * closing its connection while the consumers keep working; the static
 * baseline keeps its count; bad options exit 64. Through the library: a
 * handler that outlasts several heartbeat intervals keeps its consumer's
 * connection, also when the consumer is stopped while it runs (issue 11).
 */
#define _DEFAULT_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "edp_idset.h"
#include "t_calls.h"
#include "testlib.h"

typedef struct sup_watch {
  t_proc p;
  int min, max;
  char prefix[64];
  long expected; /* ids are prefix-1 .. prefix-expected */
  edp_idset *seen;
  long processed, redelivered, dups, foreign, null_latency;
  long long max_latency;
  long scale_events, starts, retires, stopped_err;
  long sup_reconnects, consumer_reconnects;
  int max_consumers, max_live, max_broker, lag;
  int consumers, live;
  long long depth;
  long long t_first_rise, t_last_want_max, t_first_retire, t_sup_reconnect;
  long processed_at_reconnect;
  long scales_after_reconnect;
  json_t *summary;
} sup_watch;

static long long jint(json_t *ev, const char *key) {
  json_t *v = json_object_get(ev, key);
  return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static void ingest(void *ud, json_t *ev) {
  sup_watch *w = ud;
  const char *type = json_string_value(json_object_get(ev, "event"));
  if (!type)
    return;
  long long now = t_now_ms();
  if (!strcmp(type, "processed")) {
    w->processed++;
    if (json_is_true(json_object_get(ev, "redelivered")))
      w->redelivered++;
    json_t *lat = json_object_get(ev, "latency_ms");
    if (json_is_integer(lat)) {
      if (json_integer_value(lat) > w->max_latency)
        w->max_latency = json_integer_value(lat);
    } else {
      w->null_latency++;
    }
    const char *id = json_string_value(json_object_get(ev, "message_id"));
    size_t plen = strlen(w->prefix);
    long seq = id && !strncmp(id, w->prefix, plen) && id[plen] == '-'
                   ? strtol(id + plen + 1, NULL, 10)
                   : 0;
    if (seq < 1 || seq > w->expected)
      w->foreign++;
    else if (edp_idset_contains(w->seen, id))
      w->dups++;
    else
      edp_idset_add(w->seen, id);
  } else if (!strcmp(type, "scale")) {
    w->scale_events++;
    w->consumers = (int)jint(ev, "consumers");
    w->live = (int)jint(ev, "live");
    w->depth = jint(ev, "depth");
    int wanted = (int)jint(ev, "wanted");
    int broker = (int)jint(ev, "broker_consumers");
    if (w->consumers > w->max_consumers)
      w->max_consumers = w->consumers;
    if (w->live > w->max_live)
      w->max_live = w->live;
    if (broker > w->max_broker)
      w->max_broker = broker;
    /* Scale-up never lags: the count reaches what the depth asks for in
     * the same tick, unless max (retiring consumers included) stops it. */
    if (w->consumers < wanted && w->live < w->max)
      w->lag++;
    if (w->consumers > w->min && !w->t_first_rise)
      w->t_first_rise = now;
    if (wanted >= w->max)
      w->t_last_want_max = now;
    if (w->t_sup_reconnect)
      w->scales_after_reconnect++;
  } else if (!strcmp(type, "start")) {
    w->starts++;
  } else if (!strcmp(type, "retire")) {
    w->retires++;
    if (!w->t_first_retire)
      w->t_first_retire = now;
  } else if (!strcmp(type, "consumer_stopped")) {
    if (json_object_get(ev, "error"))
      w->stopped_err++;
  } else if (!strcmp(type, "reconnected")) {
    if (jint(ev, "consumer") == 0) {
      w->sup_reconnects++;
      w->t_sup_reconnect = now;
    } else {
      w->consumer_reconnects++;
    }
  } else if (!strcmp(type, "summary")) {
    json_decref(w->summary);
    w->summary = json_incref(ev);
  }
}

/* Reads lines until pred holds; returns 1, or 0 at the deadline / EOF. */
static int watch_until(sup_watch *w, int (*pred)(sup_watch *), int timeout_ms) {
  long long deadline = t_now_ms() + timeout_ms;
  char line[4096];
  while (!pred(w)) {
    long long left = deadline - t_now_ms();
    if (left <= 0)
      return 0;
    int rc = t_readline(&w->p, line, sizeof(line), (int)left);
    if (rc <= 0)
      return 0;
    json_t *ev = json_loads(line, 0, NULL);
    if (ev) {
      ingest(w, ev);
      json_decref(ev);
    }
  }
  return 1;
}

static int seen_scale(sup_watch *w) { return w->scale_events > 0; }
static int all_processed(sup_watch *w) { return w->processed >= w->expected; }
static int back_to_min(sup_watch *w) {
  return w->processed >= w->expected && w->consumers == w->min &&
         w->live == w->min;
}

static void watch_start(sup_watch *w, const char *queue, const char *name,
                        int min, int max, const char *extra[]) {
  memset(w, 0, sizeof(*w));
  w->min = min;
  w->max = max;
  ck_assert_int_eq(edp_idset_new(100000, &w->seen), 0);
  char smin[16], smax[16];
  snprintf(smin, sizeof(smin), "%d", min);
  snprintf(smax, sizeof(smax), "%d", max);
  const char *argv[40] = {t_bin("edp-supervisor"),
                          "--json",
                          "--url",
                          t_url(),
                          "--queue",
                          queue,
                          "--name",
                          name,
                          "--min",
                          smin,
                          "--max",
                          smax};
  int n = 12;
  for (int i = 0; extra && extra[i]; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn(&w->p, (char *const *)argv, NULL), 0);
  ck_assert_msg(watch_until(w, seen_scale, 20000),
                "no scale event from edp-supervisor");
}

/* SIGTERM, read the rest, expect exit 130 and a summary. */
static void watch_stop(sup_watch *w) {
  t_signal(&w->p, SIGTERM);
  int code = t_collect(&w->p, 30000, ingest, w);
  ck_assert_int_eq(code, 130);
  ck_assert_ptr_nonnull(w->summary);
}

static void watch_free(sup_watch *w) {
  edp_idset_destroy(&w->seen);
  json_decref(w->summary);
}

/* max_redelivered: 0 on a classic queue, where a scale-down finishes
 * what it holds and nothing comes back requeued. */
static void expect_exactly_once_but(sup_watch *w, int max_redelivered) {
  ck_assert_int_eq(w->processed, w->expected);
  ck_assert_int_eq((long)edp_idset_size(w->seen), w->expected);
  ck_assert_int_eq(w->dups, 0);
  ck_assert_int_eq(w->foreign, 0);
  ck_assert_int_eq(w->null_latency, 0);
  ck_assert_int_le(w->redelivered, max_redelivered);
  ck_assert_int_eq(jint(w->summary, "processed"), w->expected);
}

static void expect_exactly_once(sup_watch *w) { expect_exactly_once_but(w, 0); }

static void spawn_load(t_proc *p, const char *queue, const char *prefix,
                       const char *a1, const char *v1, const char *a2,
                       const char *v2) {
  const char *argv[] = {t_bin("edp-load"),
                        "--url",
                        t_url(),
                        "--queue",
                        queue,
                        "--id-prefix",
                        prefix,
                        a1,
                        v1,
                        a2,
                        v2,
                        NULL};
  ck_assert_int_eq(t_spawn(p, (char *const *)argv, NULL), 0);
}

/* The queue is empty and has no consumer left. */
static void expect_queue_empty(const char *queue) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  uint32_t msgs = 99, cons = 99;
  ck_assert_int_eq(edp_conn_queue_inspect(c, queue, &msgs, &cons), 0);
  ck_assert_int_eq(msgs, 0);
  ck_assert_int_eq(cons, 0);
  ck_assert_int_eq(edp_conn_queue_delete(c, queue), 0);
  edp_conn_destroy(&c);
}

START_TEST(burst_scales_up_drains_and_returns_to_min) {
  const char *q = t_unique("sup.burst"), *name = t_unique("sup-burst");
  const int interval = 200, keep = 1500;
  const char *extra[] = {"--per-consumer",
                         "50",
                         "--interval-ms",
                         "200",
                         "--keep-alive-ms",
                         "1500",
                         "--work-ms",
                         "10",
                         NULL};
  sup_watch w;
  watch_start(&w, q, name, 1, 6, extra);
  ck_assert_int_eq(w.consumers, 1);
  snprintf(w.prefix, sizeof(w.prefix), "%s", t_unique("B"));
  w.expected = 2000;
  t_proc load;
  long long t0 = t_now_ms();
  spawn_load(&load, q, w.prefix, "--rate", "5000", "--duration", "400ms");
  ck_assert_msg(watch_until(&w, all_processed, 90000),
                "only %ld of 2000 processed", w.processed);
  ck_assert_int_eq(t_wait(&load, 30000), 0); /* all 2000 confirmed */
  /* Up within two intervals of the first messages (plus start-up and
   * scheduling slack), and to max: 2000 queued want 40. */
  ck_assert_int_gt(w.t_first_rise, 0);
  ck_assert_int_le(w.t_first_rise - t0, 2 * interval + 1500);
  ck_assert_int_eq(w.max_consumers, 6);
  ck_assert_int_eq(w.lag, 0);
  /* Back to min after the keep-alive, not before it. */
  ck_assert_msg(watch_until(&w, back_to_min, keep * 4 + 10000),
                "consumers stayed at %d (live %d)", w.consumers, w.live);
  ck_assert_int_gt(w.t_first_retire, 0);
  ck_assert_int_ge(w.t_first_retire - w.t_last_want_max, keep - interval - 300);
  ck_assert_int_ge(w.retires, 5);
  /* Max never exceeded, counting retiring consumers and the broker's
   * own count. */
  ck_assert_int_le(w.max_live, 6);
  ck_assert_int_le(w.max_broker, 6);
  watch_stop(&w);
  expect_exactly_once(&w);
  ck_assert_int_eq(w.stopped_err, 0);
  ck_assert_int_eq(jint(w.summary, "peak"), 6);
  expect_queue_empty(q);
  watch_free(&w);
}
END_TEST

/* queue_type: NULL, or "quorum" (issue 14): the same guarantees. */
static void scale_cycles(const char *queue_type) {
  const char *q = t_unique("sup.cycles"), *name = t_unique("sup-cycles");
  /* Prefetch 3: a retiring consumer holds deliveries it has not started,
   * which it must process (not requeue) after its basic.cancel. */
  const char *extra[] = {"--per-consumer",
                         "5",
                         "--interval-ms",
                         "100",
                         "--keep-alive-ms",
                         "300",
                         "--work-ms",
                         "10",
                         "--prefetch",
                         "3",
                         queue_type ? "--queue-type" : NULL,
                         queue_type,
                         NULL};
  sup_watch w;
  watch_start(&w, q, name, 1, 8, extra);
  snprintf(w.prefix, sizeof(w.prefix), "%s", t_unique("C"));
  w.expected = 1200;
  t_proc load;
  spawn_load(&load, q, w.prefix, "--profile",
             "400:1000ms,0:1500ms,400:1000ms,0:1500ms,400:1000ms",
             queue_type ? "--queue-type" : NULL, queue_type);
  ck_assert_msg(watch_until(&w, all_processed, 90000),
                "only %ld of 1200 processed", w.processed);
  ck_assert_int_eq(t_wait(&load, 30000), 0);
  ck_assert_msg(watch_until(&w, back_to_min, 20000), "not back to min");
  /* Three bursts with idle gaps longer than the keep-alive: at least two
   * scale-downs happened between scale-ups. */
  ck_assert_int_ge(w.retires, 3);
  ck_assert_int_ge(w.starts, 4);
  ck_assert_int_le(w.max_live, 8);
  ck_assert_int_le(w.max_broker, 8);
  ck_assert_int_eq(w.lag, 0);
  watch_stop(&w);
  /* A quorum queue answers a retiring consumer's cancel while messages
   * are on their way to it; its channel hands those back, and they come
   * again, flagged redelivered, to another consumer: processed once all
   * the same. At most the prefetch of each retirement. */
  expect_exactly_once_but(&w, queue_type ? 3 * (int)w.retires : 0);
  if (queue_type)
    fprintf(stderr,
            "scale cycles on a quorum queue: %ld retirements, %ld "
            "message(s) handed back and redelivered\n",
            w.retires, w.redelivered);
  ck_assert_int_eq(w.stopped_err, 0);
  expect_queue_empty(q);
  watch_free(&w);
}

START_TEST(exactly_once_through_scale_cycles) { scale_cycles(NULL); }
END_TEST

START_TEST(exactly_once_through_scale_cycles_quorum) { scale_cycles("quorum"); }
END_TEST

static int many_processed(sup_watch *w) { return w->processed >= 60; }
static int sup_back(sup_watch *w) {
  return w->sup_reconnects >= 1 && w->scales_after_reconnect >= 3;
}

START_TEST(supervisor_connection_lost) {
  const char *q = t_unique("sup.lost"), *name = t_unique("sup-lost");
  const char *extra[] = {"--per-consumer",
                         "20",
                         "--interval-ms",
                         "200",
                         "--keep-alive-ms",
                         "1000",
                         "--work-ms",
                         "10",
                         NULL};
  sup_watch w;
  watch_start(&w, q, name, 2, 4, extra);
  snprintf(w.prefix, sizeof(w.prefix), "%s", t_unique("R"));
  w.expected = 500;
  t_proc load;
  spawn_load(&load, q, w.prefix, "--rate", "100", "--duration", "5s");
  ck_assert(watch_until(&w, many_processed, 30000));
  char sup_conn[300], out[64] = "";
  snprintf(sup_conn, sizeof(sup_conn), "%s-supervisor", name);
  ck_assert_int_eq(t_broker("close-conns", sup_conn, out, sizeof(out)), 0);
  ck_assert_str_eq(out, "1");
  long before = w.processed;
  ck_assert_msg(watch_until(&w, sup_back, 30000),
                "supervisor did not come back (%ld reconnects)",
                w.sup_reconnects);
  /* The consumers never noticed: they kept processing and none of them
   * had to reconnect. */
  ck_assert_int_gt(w.processed, before);
  ck_assert_int_eq(w.consumer_reconnects, 0);
  ck_assert(watch_until(&w, all_processed, 60000));
  ck_assert_int_eq(t_wait(&load, 30000), 0);
  watch_stop(&w);
  expect_exactly_once(&w);
  ck_assert_int_eq(w.sup_reconnects, 1);
  ck_assert_int_eq(jint(w.summary, "sup_reconnects"), 1);
  t_fault_row("supervisor (edp-supervisor)", "close_connection (rabbitmqctl)",
              "the supervisor's connection, under load",
              "recovered: 1 supervisor reconnect, consumers never noticed (0 "
              "consumer reconnects), 500/500 processed exactly once; then "
              "SIGTERM: exit 130 with a summary",
              0);
  ck_assert_int_eq(w.stopped_err, 0);
  ck_assert_int_le(w.max_live, 4);
  expect_queue_empty(q);
  watch_free(&w);
}
END_TEST

static int static_done(sup_watch *w) { return w->processed >= w->expected; }

static int risen(sup_watch *w) { return w->consumers > w->min; }

START_TEST(backlog_hint_scales_up_before_the_interval) {
  const char *q = t_unique("sup.hint"), *name = t_unique("sup-hint");
  /* Readings every 20 s only: without the consumers' hint the first
   * rise could not come before 20 s after the start. Max 4 is reached in
   * the first hinted reading (300 queued want 60). */
  const char *extra[] = {
      "--per-consumer",  "5",     "--interval-ms", "20000", "--hint-ms", "20",
      "--keep-alive-ms", "60000", "--work-ms",     "10",    NULL};
  sup_watch w;
  long long t_start = t_now_ms();
  watch_start(&w, q, name, 1, 4, extra);
  snprintf(w.prefix, sizeof(w.prefix), "%s", t_unique("H"));
  w.expected = 300;
  t_proc load;
  long long t0 = t_now_ms();
  long scales0 = w.scale_events;
  spawn_load(&load, q, w.prefix, "--rate", "3000", "--duration", "100ms");
  ck_assert_msg(watch_until(&w, risen, 15000),
                "no scale-up within 15 s (interval 20 s)");
  ck_assert_int_lt(w.t_first_rise - t_start, 15000);
  ck_assert_int_le(w.t_first_rise - t0, 5000);
  ck_assert_int_le(w.max_live, 4);
  ck_assert_int_eq(w.lag, 0);
  ck_assert(watch_until(&w, static_done, 60000));
  /* 300 queued want 60, clamped to max 4 in one reading; at max, further
   * hints are ignored until the next interval, so draining the backlog
   * (about 0.75 s, a hint per delivery) takes a handful of readings, not
   * one per hint_ms. */
  if (t_now_ms() - t_start < 19000)
    ck_assert_int_le(w.scale_events - scales0, 10);
  ck_assert_int_eq(t_wait(&load, 30000), 0);
  watch_stop(&w);
  expect_exactly_once(&w);
  expect_queue_empty(q);
  watch_free(&w);
}
END_TEST

START_TEST(static_baseline_keeps_its_count) {
  const char *q = t_unique("sup.static"), *name = t_unique("sup-static");
  const char *extra[] = {"--no-supervisor",
                         "--per-consumer",
                         "1",
                         "--interval-ms",
                         "100",
                         "--work-ms",
                         "5",
                         NULL};
  sup_watch w;
  /* max 3 too: static mode ignores --max, and wanted (up to 300) is far
   * above it, so "lag" means nothing here. */
  watch_start(&w, q, name, 3, 3, extra);
  snprintf(w.prefix, sizeof(w.prefix), "%s", t_unique("S"));
  w.expected = 300;
  t_proc load;
  spawn_load(&load, q, w.prefix, "--rate", "3000", "--duration", "100ms");
  ck_assert(watch_until(&w, static_done, 60000));
  ck_assert_int_eq(t_wait(&load, 30000), 0);
  watch_stop(&w);
  expect_exactly_once(&w);
  ck_assert_int_eq(w.max_consumers, 3);
  ck_assert_int_eq(w.consumers, 3);
  ck_assert_int_eq(w.retires, 0);
  ck_assert_int_eq(w.starts, 3);
  expect_queue_empty(q);
  watch_free(&w);
}
END_TEST

static int some_processed(sup_watch *w) { return w->processed >= 30; }

START_TEST(stop_finishes_in_flight_work) {
  const char *q = t_unique("sup.stop"), *name = t_unique("sup-stop");
  const char *extra[] = {"--no-supervisor", "--work-ms", "50",
                         "--prefetch",      "2",         NULL};
  char prefix[64];
  snprintf(prefix, sizeof(prefix), "%s", t_unique("T"));
  t_proc load;
  spawn_load(&load, q, prefix, "--rate", "3000", "--duration", "100ms");
  ck_assert_int_eq(t_wait(&load, 30000), 0); /* 300 queued, confirmed */
  sup_watch w;
  watch_start(&w, q, name, 3, 3, extra);
  snprintf(w.prefix, sizeof(w.prefix), "%s", prefix);
  w.expected = 300;
  ck_assert(watch_until(&w, some_processed, 30000));
  /* Stop with every consumer busy: each finishes and acks its message and
   * the one prefetched behind it, then exits 130. */
  watch_stop(&w);
  long first = w.processed;
  ck_assert_int_lt(first, 300);
  ck_assert_int_eq(jint(w.summary, "processed"), first);
  ck_assert_int_eq(w.dups, 0);
  ck_assert_int_eq(w.redelivered, 0);
  /* A second run takes the rest: together every id exactly once, and
   * nothing the first run held came back redelivered. */
  const char *extra2[] = {"--no-supervisor", "--idle-timeout", "1500", NULL};
  sup_watch w2;
  watch_start(&w2, q, name, 1, 1, extra2);
  edp_idset_destroy(&w2.seen);
  w2.seen = w.seen;
  w.seen = NULL;
  snprintf(w2.prefix, sizeof(w2.prefix), "%s", prefix);
  w2.expected = 300;
  ck_assert_int_eq(t_collect(&w2.p, 60000, ingest, &w2), 0);
  ck_assert_int_eq(first + w2.processed, 300);
  ck_assert_int_eq((long)edp_idset_size(w2.seen), 300);
  ck_assert_int_eq(w2.dups, 0);
  ck_assert_int_eq(w2.foreign, 0);
  ck_assert_int_eq(w2.redelivered, 0);
  expect_queue_empty(q);
  watch_free(&w);
  watch_free(&w2);
}
END_TEST

static int run(const char *argv[]) {
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, (char *const *)argv, NULL), 0);
  return t_wait(&p, 20000);
}

START_TEST(bad_options_exit_64) {
  const char *load = t_bin("edp-load"), *sup = t_bin("edp-supervisor");
  static const char *bad_profiles[] = {
      "50:10x", "",      "50:10s,", ":10s",           "50",
      "50:0s",  "-5:1s", "50:1.5s", "50:10s;500:10s", "200000:1s"};
  for (size_t i = 0; i < sizeof(bad_profiles) / sizeof(bad_profiles[0]); i++) {
    const char *argv[] = {load,        "--url",         t_url(),
                          "--profile", bad_profiles[i], NULL};
    ck_assert_msg(run(argv) == 64, "profile '%s' accepted", bad_profiles[i]);
  }
  const char *a1[] = {load, "--url", t_url(), "--rate", "5", NULL};
  ck_assert_int_eq(run(a1), 64);
  const char *a2[] = {load, "--url",      t_url(), "--rate",
                      "5",  "--duration", "3h",    NULL};
  ck_assert_int_eq(run(a2), 64);
  const char *a3[] = {load,         "--url", t_url(),     "--rate", "5",
                      "--duration", "1s",    "--profile", "5:1s",   NULL};
  ck_assert_int_eq(run(a3), 64);
  const char *s1[] = {sup, "--url", t_url(), "--min", "5", "--max", "2", NULL};
  ck_assert_int_eq(run(s1), 64);
  const char *s2[] = {sup, "--url", t_url(), "--per-consumer", "0", NULL};
  ck_assert_int_eq(run(s2), 64);
  const char *s3[] = {sup, "--url", t_url(), "--interval-ms", "abc", NULL};
  ck_assert_int_eq(run(s3), 64);
  const char *s4[] = {sup, "--url", "http://x/", NULL};
  ck_assert_int_eq(run(s4), 64);
  const char *s5[] = {sup, "--url", "amqp://127.0.0.1:1/", NULL};
  ck_assert_int_eq(run(s5), 69);
}
END_TEST

/* ---- the library: handlers longer than two heartbeat intervals ---- */

static int sup_slow(void *ud, int consumer, const edp_delivery *d) {
  (void)consumer;
  return t_calls_work(ud, d);
}

static void sup_event(void *ud, const edp_sup_event *ev) {
  if (ev->type == EDP_SUP_PROCESSED || ev->type == EDP_SUP_RECONNECTED)
    t_calls_event(ud, ev->type == EDP_SUP_RECONNECTED);
}

/* One static consumer (prefetch 2, so the second message reaches it while
 * the first one's handler runs) on connections with heartbeat=1, and a
 * 4 s handler. */
static edp_sup *start_slow_sup(const char *q, t_calls *log, char *url,
                               size_t url_len) {
  edp_sup_opts o;
  edp_sup_opts_init(&o);
  o.url = t_hb_url(url, url_len, 1);
  o.queue = q;
  o.name = t_unique("sup-hb");
  o.prefetch = 2;
  o.supervise = 0;
  o.policy.min = 1;
  o.policy.max = 1;
  o.handler = sup_slow;
  o.on_event = sup_event;
  o.ud = log;
  edp_sup *s = NULL;
  char err[300] = "";
  ck_assert_msg(edp_sup_new(&o, &s, err, sizeof(err)) == 0, "%s", err);
  return s;
}

/* Before the handler ran on a worker, the silent consumer connection was
 * dropped by the broker and the message came again. Now: each message is
 * processed once, not redelivered, on one channel (the same epoch), no
 * connection is restored, and a message published while the handler runs
 * is processed after it. */
START_TEST(long_handler_keeps_connection) {
  const char *q = t_unique("sup.hb");
  char url[600];
  t_calls log;
  t_calls_init(&log, 4000);
  edp_sup *s = start_slow_sup(q, &log, url, sizeof(url));
  long long t0 = t_now_ms();
  ck_assert_int_eq(t_publish_one(q, "hb-1"), 0);
  ck_assert_msg(t_calls_await(&log, &log.n, 1, 20000), "hb-1 never started");
  ck_assert_int_eq(t_publish_one(q, "hb-2"), 0);
  long long published2 = t_now_ms();
  ck_assert_msg(t_calls_await(&log, &log.events, 2, 30000),
                "only %d of 2 processed", log.events);
  long long took = t_now_ms() - t0;
  edp_sup_stats st;
  edp_sup_stats_get(s, &st);
  edp_sup_destroy(&s);

  t_call a = t_calls_get(&log, 0), b = t_calls_get(&log, 1);
  ck_assert_int_eq(log.n, 2);
  ck_assert_str_eq(a.id, "hb-1");
  ck_assert_str_eq(b.id, "hb-2");
  ck_assert_int_eq(a.redelivered, 0);
  ck_assert_int_eq(b.redelivered, 0);
  ck_assert_int_ge(a.end_ms - a.start_ms, 4000);
  ck_assert_int_lt(published2, a.end_ms);
  ck_assert_int_ge(b.start_ms, a.end_ms);
  ck_assert_uint_eq(a.epoch, b.epoch);
  ck_assert(!pthread_equal(a.thread, pthread_self()));
  ck_assert(pthread_equal(a.thread, b.thread));
  ck_assert_uint_eq(st.processed, 2);
  ck_assert_uint_eq(st.failed, 0);
  ck_assert_uint_eq(st.started, 1);
  ck_assert_uint_eq(st.consumer_reconnects, 0);
  ck_assert_uint_eq(st.sup_reconnects, 0);
  ck_assert_int_eq(log.reconnect, 0);
  fprintf(stderr,
          "sup long_handler_keeps_connection: 2 x %d ms handlers at "
          "heartbeat=1 in %lld ms, 0 reconnects\n",
          log.work_ms, took);
  expect_queue_empty(q);
  t_calls_free(&log);
}
END_TEST

/* A stop (a retire of every consumer) while a 4 s handler runs at
 * heartbeat=1: the consumer clears its retire signal and keeps servicing
 * the connection, so the finished message is acked, not requeued. */
START_TEST(stop_during_long_handler_keeps_connection) {
  const char *q = t_unique("sup.hbstop");
  char url[600];
  t_calls log;
  t_calls_init(&log, 4000);
  edp_sup *s = start_slow_sup(q, &log, url, sizeof(url));
  ck_assert_int_eq(t_publish_one(q, "hs-1"), 0);
  ck_assert_msg(t_calls_await(&log, &log.n, 1, 20000), "hs-1 never started");
  long long t0 = t_now_ms();
  edp_sup_stop(s);
  long long took = t_now_ms() - t0;
  edp_sup_stats st;
  edp_sup_stats_get(s, &st);
  edp_sup_destroy(&s);
  t_call a = t_calls_get(&log, 0);
  /* The stop waited for the handler. */
  ck_assert_int_gt(a.end_ms, 0);
  ck_assert_int_le(a.end_ms, t0 + took);
  ck_assert_int_eq(log.n, 1);
  ck_assert_int_eq(log.events, 1);
  ck_assert_uint_eq(st.processed, 1);
  ck_assert_uint_eq(st.consumer_reconnects, 0);
  ck_assert_int_eq(log.reconnect, 0);
  fprintf(stderr,
          "stop_during_long_handler_keeps_connection: stop took %lld ms\n",
          took);
  /* Acked on the live connection: nothing went back to the queue. */
  expect_queue_empty(q);
  t_calls_free(&log);
}
END_TEST

int main(void) {
  Suite *s = suite_create("supervisor-integration");
  TCase *tc = tcase_create("supervisor");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, bad_options_exit_64);
  tcase_add_test(tc, burst_scales_up_drains_and_returns_to_min);
  tcase_add_test(tc, exactly_once_through_scale_cycles);
  tcase_add_test(tc, exactly_once_through_scale_cycles_quorum);
  tcase_add_test(tc, supervisor_connection_lost);
  tcase_add_test(tc, static_baseline_keeps_its_count);
  tcase_add_test(tc, backlog_hint_scales_up_before_the_interval);
  tcase_add_test(tc, stop_finishes_in_flight_work);
  tcase_add_test(tc, long_handler_keeps_connection);
  tcase_add_test(tc, stop_during_long_handler_keeps_connection);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
