/*
 * integ_trace.c - W3C trace context through the patterns, against the
 * harness's broker: one trace id survives publish -> handler failure ->
 * retry -> dead-letter (each hop a new span whose parent is the one
 * before, tracestate unchanged), publish -> thread delegate -> worker
 * (the sender continuing a given trace), and a multi-broker failover
 * resend (a broker stalled behind a fault proxy, its unconfirmed messages
 * resent to the other with new span ids).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp.h"
#include "faultproxy.h"
#include "testlib.h"

static edp_conn *open_conn(void) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  return c;
}

/* The next delivery of queue (consumed with c), within 10 s. */
static void take_one(edp_conn *c, const char *queue, edp_delivery *d) {
  ck_assert_int_eq(edp_conn_consume(c, queue, NULL, NULL, 0), 0);
  ck_assert_int_eq(edp_conn_receive(c, d, 10000), 0);
  ck_assert_int_eq(edp_conn_ack(c, d->epoch, d->tag, 0), 0);
}

static const char *str(json_t *ev, const char *key) {
  const char *s = json_string_value(json_object_get(ev, key));
  return s ? s : "";
}

/* Reads every event of p until EOF into a JSON array (returned). */
static json_t *events(t_proc *p, int timeout_ms) {
  json_t *all = json_array();
  char line[8192];
  long long deadline = t_now_ms() + timeout_ms;
  for (;;) {
    long long left = deadline - t_now_ms();
    if (left <= 0 || t_readline(p, line, sizeof(line), (int)left) != 1)
      break;
    json_t *ev = json_loads(line, 0, NULL);
    if (ev)
      json_array_append_new(all, ev);
  }
  return all;
}

START_TEST(forwarding_retry_dead_letter) {
  const char *q = t_unique("trace.fwd");
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  edp_trace root;
  edp_trace_new(&root);
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_header h[2] = {
      {EDP_TRACE_HDR_PARENT, edp_trace_format(&root, tp, sizeof(tp)), 0},
      {EDP_TRACE_HDR_STATE, "vendor=abc,other=1", 0}};
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = q;
  m.body = "poison";
  m.body_len = 6;
  m.persistent = 1;
  m.message_id = "traced-1";
  m.headers = h;
  m.n_headers = 2;
  ck_assert_int_eq(edp_conn_publish_confirmed(c, &m, 10000), 0);

  char *argv[] = {(char *)t_bin("edp-forward-receiver"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)q,
                  "--json",
                  "--fail-match",
                  "poison",
                  "--max-retries",
                  "2",
                  "--idle-timeout",
                  "2000",
                  NULL};
  t_proc r;
  ck_assert_int_eq(t_spawn(&r, argv, NULL), 0);
  json_t *all = events(&r, 60000);
  ck_assert_int_eq(t_wait(&r, 10000), 0);
  /* received, retried, received, retried, received, dead_lettered: each
   * attempt a span of the one trace, its parent the attempt before. */
  const char *parent = root.span_id, *last = NULL;
  int received = 0, retried = 0, dead = 0;
  size_t i;
  json_t *ev;
  json_array_foreach(all, i, ev) {
    const char *kind = str(ev, "event");
    if (!strcmp(kind, "received")) {
      ck_assert_str_eq(str(ev, "trace_id"), root.trace_id);
      ck_assert_str_eq(str(ev, "parent_span_id"), parent);
      ck_assert_str_ne(str(ev, "span_id"), parent);
      ck_assert_str_eq(str(ev, "messaging.system"), "rabbitmq");
      last = str(ev, "span_id");
      received++;
    } else if (!strcmp(kind, "retried") || !strcmp(kind, "dead_lettered")) {
      ck_assert_ptr_nonnull(last);
      ck_assert_str_eq(str(ev, "trace_id"), root.trace_id);
      ck_assert_str_eq(str(ev, "span_id"), last);
      retried += !strcmp(kind, "retried");
      dead += !strcmp(kind, "dead_lettered");
      parent = last; /* the copy continues from this attempt's span */
    }
  }
  ck_assert_int_eq(received, 3);
  ck_assert_int_eq(retried, 2);
  ck_assert_int_eq(dead, 1);
  /* The dead-letter copy: the trace and its last span, tracestate as
   * sent. */
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_delivery d;
  take_one(c, dlq, &d);
  edp_trace t;
  ck_assert_int_eq(edp_trace_from_delivery(&d, &t), 0);
  ck_assert_str_eq(t.trace_id, root.trace_id);
  ck_assert_str_eq(t.span_id, last);
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_TRACE_HDR_STATE),
                   "vendor=abc,other=1");
  edp_delivery_clear(&d);
  json_decref(all);
  edp_conn_queue_delete(c, q);
  edp_conn_queue_delete(c, dlq);
  edp_conn_destroy(&c);
}
END_TEST

START_TEST(thread_delegate_handoff) {
  const char *q = t_unique("trace.td");
  const char *x = t_unique("trace.tdx");
  edp_trace root;
  edp_trace_new(&root);
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_trace_format(&root, tp, sizeof(tp));
  char *sargv[] = {(char *)t_bin("edp-trade-sender"),
                   "--url",
                   (char *)t_url(),
                   "--exchange",
                   (char *)x,
                   "--queue",
                   (char *)q,
                   "--accounts",
                   "2",
                   "--count",
                   "6",
                   "--json",
                   "--traceparent",
                   tp,
                   NULL};
  t_proc s;
  ck_assert_int_eq(t_spawn(&s, sargv, NULL), 0);
  json_t *sent = events(&s, 30000);
  ck_assert_int_eq(t_wait(&s, 10000), 0);
  /* The sender continued our trace: one child span per message. */
  json_t *span_of = json_object();
  size_t i;
  json_t *ev;
  json_array_foreach(sent, i, ev) {
    if (strcmp(str(ev, "event"), "sent"))
      continue;
    ck_assert_str_eq(str(ev, "trace_id"), root.trace_id);
    ck_assert_str_eq(str(ev, "parent_span_id"), root.span_id);
    json_object_set(span_of, str(ev, "message_id"),
                    json_object_get(ev, "span_id"));
  }
  ck_assert_int_eq(json_object_size(span_of), 6);
  char *dargv[] = {(char *)t_bin("edp-trade-dispatcher"),
                   "--url",
                   (char *)t_url(),
                   "--exchange",
                   (char *)x,
                   "--queue",
                   (char *)q,
                   "--json",
                   "--workers",
                   "3",
                   "--poison-seq",
                   "2",
                   "--max-retries",
                   "1",
                   "--retry-delay-ms",
                   "0",
                   "--idle-timeout",
                   "1500",
                   NULL};
  t_proc d;
  ck_assert_int_eq(t_spawn(&d, dargv, NULL), 0);
  json_t *done = events(&d, 60000);
  ck_assert_int_eq(t_wait(&d, 10000), 0);
  int processed = 0, dead = 0;
  const char *dead_span = NULL;
  json_array_foreach(done, i, ev) {
    const char *kind = str(ev, "event");
    if (strcmp(kind, "processed") && strcmp(kind, "dead_lettered"))
      continue;
    /* The worker's span: same trace, its parent the sender's span. */
    const char *sender_span =
        json_string_value(json_object_get(span_of, str(ev, "message_id")));
    ck_assert_ptr_nonnull(sender_span);
    ck_assert_str_eq(str(ev, "trace_id"), root.trace_id);
    ck_assert_str_eq(str(ev, "parent_span_id"), sender_span);
    ck_assert_str_ne(str(ev, "span_id"), sender_span);
    if (!strcmp(kind, "dead_lettered")) {
      dead++;
      dead_span = str(ev, "span_id");
    } else {
      processed++;
    }
  }
  ck_assert_int_eq(processed, 4);
  ck_assert_int_eq(dead, 2);
  edp_conn *c = open_conn();
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_delivery dd;
  take_one(c, dlq, &dd);
  edp_trace t;
  ck_assert_int_eq(edp_trace_from_delivery(&dd, &t), 0);
  ck_assert_str_eq(t.trace_id, root.trace_id);
  /* One of the two dead-letter spans (their order in the .dlq is the
   * order they were copied in, which the events also follow). */
  ck_assert_ptr_nonnull(dead_span);
  int match = 0;
  json_array_foreach(done, i, ev) match |=
      !strcmp(str(ev, "event"), "dead_lettered") &&
      !strcmp(str(ev, "span_id"), t.span_id);
  ck_assert(match);
  edp_delivery_clear(&dd);
  json_decref(sent);
  json_decref(done);
  json_decref(span_of);
  edp_conn_queue_delete(c, q);
  edp_conn_queue_delete(c, dlq);
  edp_conn_exchange_delete(c, x);
  edp_conn_destroy(&c);
}
END_TEST

/* ---------- multi-broker ---------- */

#define MB_N 40

typedef struct mb_ledger {
  int rerouted;
} mb_ledger;

static void mb_event(void *ud, int broker, int ev, size_t count) {
  (void)broker;
  mb_ledger *l = ud;
  if (ev == EDP_MULTI_REROUTED)
    l->rerouted += (int)count;
}

START_TEST(multi_broker_failover_resend) {
  const char *q = t_unique("trace.multi");
  char proxied[1200];
  fp_proxy *fp = t_proxy(NULL, proxied, sizeof(proxied));
  const char *urls[2] = {t_url(), proxied};
  mb_ledger l = {0};
  edp_multi_producer_opts o;
  edp_multi_producer_opts_init(&o);
  o.urls = urls;
  o.n_urls = 2;
  o.queue = q;
  o.confirm_timeout_ms = 800;
  o.on_event = mb_event;
  o.ud = &l;
  edp_multi_producer *p = NULL;
  ck_assert_int_eq(edp_multi_producer_new(&o, &p, NULL, 0), 0);
  ck_assert_uint_eq(edp_multi_producer_live(p), 2);
  /* Broker 1 takes messages but never confirms them: stalled, then given
   * up, its unconfirmed messages resent through broker 0. */
  ck_assert_int_eq(fp_stall(fp), 0);
  edp_trace sent[MB_N];
  for (int i = 0; i < MB_N; i++) {
    char id[32], tp[EDP_TRACEPARENT_LEN + 1];
    snprintf(id, sizeof(id), "mb-%d", i);
    edp_trace_new(&sent[i]);
    edp_header h = {EDP_TRACE_HDR_PARENT,
                    edp_trace_format(&sent[i], tp, sizeof(tp)), 0};
    edp_msg m;
    edp_msg_init(&m);
    m.body = id;
    m.body_len = strlen(id);
    m.persistent = 1;
    m.message_id = id;
    m.headers = &h;
    m.n_headers = 1;
    ck_assert_int_eq(edp_multi_publish(p, &m, NULL), 0);
  }
  ck_assert_int_eq(edp_multi_flush(p, 30000), 0);
  ck_assert_int_gt(l.rerouted, 0);
  edp_multi_producer_destroy(&p);
  fp_stop(&fp);

  /* Every message once from broker 0 at least; the resent ones with the
   * same trace id and a new span whose parent is the span sent. */
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  int seen[MB_N] = {0}, resent = 0;
  edp_delivery d;
  while (edp_conn_receive(c, &d, 2000) == 0) {
    int i = atoi(d.message_id + 3);
    ck_assert(i >= 0 && i < MB_N);
    edp_trace t;
    ck_assert_int_eq(edp_trace_from_delivery(&d, &t), 0);
    ck_assert_str_eq(t.trace_id, sent[i].trace_id);
    if (strcmp(t.span_id, sent[i].span_id))
      resent++;
    seen[i]++;
    ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  for (int i = 0; i < MB_N; i++)
    ck_assert_int_ge(seen[i], 1);
  ck_assert_int_eq(resent, l.rerouted);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
}
END_TEST

START_TEST(traceparent_parsing) {
  edp_trace t;
  const char *ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  ck_assert_int_eq(edp_trace_parse(ok, strlen(ok), &t), 0);
  ck_assert_str_eq(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  ck_assert_str_eq(t.span_id, "00f067aa0ba902b7");
  ck_assert_int_eq(t.flags, 1);
  const char *bad[] = {
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* upper */
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
      "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
      ""};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(edp_trace_parse(bad[i], strlen(bad[i]), &t) == EDP_EBADDATA,
                  "accepted %s", bad[i]);
  /* A later version may append fields. */
  const char *v1 =
      "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
  ck_assert_int_eq(edp_trace_parse(v1, strlen(v1), &t), 0);
  ck_assert_int_eq(t.flags, 0);
  edp_trace c;
  edp_trace_child(&t, &c);
  ck_assert_str_eq(c.trace_id, t.trace_id);
  ck_assert_str_eq(c.parent_id, t.span_id);
  ck_assert_str_ne(c.span_id, t.span_id);
  char buf[EDP_TRACEPARENT_LEN + 1];
  ck_assert_int_eq(strlen(edp_trace_format(&c, buf, sizeof(buf))),
                   EDP_TRACEPARENT_LEN);
  ck_assert_str_eq(edp_trace_format(&c, buf, 10), "");
}
END_TEST

/* ---------- ambulance and supervisor consumers ---------- */

/* Runs argv to its end and returns its events. */
static json_t *run_events(char **argv, int timeout_ms) {
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  json_t *all = events(&p, timeout_ms);
  ck_assert_int_eq(t_wait(&p, 10000), 0);
  return all;
}

/* The span ids of the sender's events of kind, checked against root (the
 * --traceparent given): same trace, parent the root's span, a new span
 * each; by the message id under id_key, into span_of. Returns how many. */
static int sender_spans(json_t *all, const char *kind, const char *id_key,
                        const edp_trace *root, json_t *span_of) {
  size_t i;
  json_t *ev;
  int n = 0;
  json_array_foreach(all, i, ev) {
    if (strcmp(str(ev, "event"), kind))
      continue;
    ck_assert_str_eq(str(ev, "trace_id"), root->trace_id);
    ck_assert_str_eq(str(ev, "parent_span_id"), root->span_id);
    ck_assert_str_ne(str(ev, "span_id"), root->span_id);
    ck_assert_int_eq(strlen(str(ev, "span_id")), 16);
    ck_assert_ptr_null(json_object_get(span_of, str(ev, id_key)));
    json_object_set(span_of, str(ev, id_key), json_object_get(ev, "span_id"));
    n++;
  }
  return n;
}

/* A consumer's processed event: the trace of root, its parent the span the
 * sender gave the message, its own span new (seen holds every span id so
 * far: none repeats). */
static void check_hop(json_t *ev, const char *id_key, const edp_trace *root,
                      json_t *span_of, json_t *seen) {
  const char *id = str(ev, id_key);
  const char *sender_span = json_string_value(json_object_get(span_of, id));
  ck_assert_msg(sender_span, "message %s was not sent", id);
  ck_assert_str_eq(str(ev, "trace_id"), root->trace_id);
  ck_assert_str_eq(str(ev, "parent_span_id"), sender_span);
  const char *span = str(ev, "span_id");
  ck_assert_int_eq(strlen(span), 16);
  ck_assert_str_ne(span, sender_span);
  ck_assert_str_ne(span, root->span_id);
  ck_assert_msg(!json_object_get(seen, span), "span %s twice", span);
  json_object_set_new(seen, span, json_true());
  ck_assert_str_eq(str(ev, "messaging.system"), "rabbitmq");
}

/* edp-ambulance-sender continues a trace; the ambulance receiver's
 * priority thread and standard thread each handle messages of both lanes
 * in a child span of the sender's. */
START_TEST(ambulance_lanes_trace) {
  const char *q = t_unique("trace.amb");
  edp_trace root;
  edp_trace_new(&root);
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_trace_format(&root, tp, sizeof(tp));
  char *sargv[] = {(char *)t_bin("edp-ambulance-sender"),
                   "--url",
                   (char *)t_url(),
                   "--queue",
                   (char *)q,
                   "--standard",
                   "12",
                   "--priority",
                   "6",
                   "--rate",
                   "0",
                   "--json",
                   "--traceparent",
                   tp,
                   NULL};
  json_t *sent = run_events(sargv, 30000);
  json_t *span_of = json_object();
  ck_assert_int_eq(sender_spans(sent, "sent", "id", &root, span_of), 18);
  char *rargv[] = {(char *)t_bin("edp-ambulance-receiver"),
                   "--url",
                   (char *)t_url(),
                   "--queue",
                   (char *)q,
                   "--work-ms",
                   "5",
                   "--count",
                   "18",
                   "--json",
                   NULL};
  json_t *done = run_events(rargv, 60000);
  json_t *seen = json_object();
  int by_kind[2] = {0}, processed = 0;
  char lane[2][256];
  snprintf(lane[EDP_AMB_STANDARD], sizeof(lane[0]), "%s.standard", q);
  snprintf(lane[EDP_AMB_PRIORITY], sizeof(lane[0]), "%s.priority", q);
  size_t i;
  json_t *ev;
  json_array_foreach(done, i, ev) {
    if (strcmp(str(ev, "event"), "processed"))
      continue;
    check_hop(ev, "id", &root, span_of, seen);
    int k = !strcmp(str(ev, "kind"), "priority");
    ck_assert_str_eq(str(ev, "messaging.destination.name"), lane[k]);
    by_kind[k]++;
    processed++;
  }
  ck_assert_int_eq(processed, 18);
  ck_assert_int_eq(by_kind[EDP_AMB_PRIORITY], 6);
  ck_assert_int_eq(by_kind[EDP_AMB_STANDARD], 12);
  json_decref(sent);
  json_decref(done);
  json_decref(span_of);
  json_decref(seen);
  edp_conn *c = open_conn();
  for (int k = 0; k < 2; k++)
    edp_conn_queue_delete(c, lane[k]);
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn_queue_delete(c, dlq);
  edp_conn_destroy(&c);
}
END_TEST

typedef struct sup_run {
  int processed, started, retired;
} sup_run;

/* Reads the supervisor's events into all until done(r) holds. */
static int sup_await(t_proc *p, json_t *all, sup_run *r,
                     int (*done)(const sup_run *)) {
  char line[8192];
  long long deadline = t_now_ms() + 60000;
  while (!done(r)) {
    long long left = deadline - t_now_ms();
    if (left <= 0 || t_readline(p, line, sizeof(line), (int)left) != 1)
      return 0;
    json_t *ev = json_loads(line, 0, NULL);
    if (!ev)
      continue;
    r->processed += !strcmp(str(ev, "event"), "processed");
    r->started += !strcmp(str(ev, "event"), "start");
    r->retired += !strcmp(str(ev, "event"), "retire");
    json_array_append_new(all, ev);
  }
  return 1;
}

static int first_wave_retired(const sup_run *r) {
  return r->processed >= 60 && r->retired >= 1;
}
static int second_wave_done(const sup_run *r) { return r->processed >= 100; }

/* edp-forward-sender continues a trace into a queue that a supervisor
 * drains while it scales up, down (keep-alive 300 ms) and up again for a
 * second wave: every consumer, whatever its lifetime, handles its message
 * in a child span of the sender's. */
START_TEST(supervisor_scaling_trace) {
  const char *q = t_unique("trace.sup");
  edp_trace root;
  edp_trace_new(&root);
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_trace_format(&root, tp, sizeof(tp));
  char *w1[] = {(char *)t_bin("edp-forward-sender"),
                "--url",
                (char *)t_url(),
                "--queue",
                (char *)q,
                "--count",
                "60",
                "--id-prefix",
                "w1",
                "--json",
                "--traceparent",
                tp,
                NULL};
  json_t *sent = run_events(w1, 30000);
  json_t *span_of = json_object();
  ck_assert_int_eq(
      sender_spans(sent, "confirmed", "message_id", &root, span_of), 60);
  json_decref(sent);
  char *sargv[] = {(char *)t_bin("edp-supervisor"),
                   "--url",
                   (char *)t_url(),
                   "--queue",
                   (char *)q,
                   "--min",
                   "1",
                   "--max",
                   "4",
                   "--per-consumer",
                   "5",
                   "--interval-ms",
                   "100",
                   "--keep-alive-ms",
                   "300",
                   "--work-ms",
                   "10",
                   "--count",
                   "100",
                   "--json",
                   NULL};
  t_proc sp;
  ck_assert_int_eq(t_spawn(&sp, sargv, NULL), 0);
  json_t *all = json_array();
  sup_run r = {0};
  ck_assert(sup_await(&sp, all, &r, first_wave_retired));
  ck_assert_int_ge(r.started, 2);
  int started_before = r.started;
  char *w2[] = {(char *)t_bin("edp-forward-sender"),
                "--url",
                (char *)t_url(),
                "--queue",
                (char *)q,
                "--count",
                "40",
                "--id-prefix",
                "w2",
                "--json",
                "--traceparent",
                tp,
                NULL};
  sent = run_events(w2, 30000);
  ck_assert_int_eq(
      sender_spans(sent, "confirmed", "message_id", &root, span_of), 40);
  json_decref(sent);
  ck_assert(sup_await(&sp, all, &r, second_wave_done));
  ck_assert_int_eq(t_wait(&sp, 20000), 0);
  /* Scaled up again for the second wave. */
  ck_assert_int_gt(r.started, started_before);
  json_t *seen = json_object();
  size_t i;
  json_t *ev;
  int processed = 0;
  json_array_foreach(all, i, ev) {
    if (strcmp(str(ev, "event"), "processed"))
      continue;
    check_hop(ev, "message_id", &root, span_of, seen);
    ck_assert_str_eq(str(ev, "messaging.destination.name"), q);
    processed++;
  }
  /* Each message once: spans are unique, and there are 100 of them. */
  ck_assert_int_eq(processed, 100);
  ck_assert_int_eq(json_object_size(seen), 100);
  json_decref(all);
  json_decref(seen);
  json_decref(span_of);
  edp_conn *c = open_conn();
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("trace");
  TCase *tc = tcase_create("trace");
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, traceparent_parsing);
  tcase_add_test(tc, forwarding_retry_dead_letter);
  tcase_add_test(tc, thread_delegate_handoff);
  tcase_add_test(tc, multi_broker_failover_resend);
  tcase_add_test(tc, ambulance_lanes_trace);
  tcase_add_test(tc, supervisor_scaling_trace);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
