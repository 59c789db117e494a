/*
 * integ_forwarding.c - the event forwarding pattern end to end against the
 * harness's private broker, through the real programs: nothing lost on a
 * receiver crash, a broker-closed connection or a broker restart; poison
 * messages dead-lettered with their reason; bad input answered with the
 * documented exit codes. Through the library: a handler that outlasts
 * several heartbeat intervals keeps its connection (issue 11).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edp.h"
#include "edp_conn_internal.h"
#include "faultproxy.h"
#include "t_calls.h"
#include "testlib.h"

/* Counts events per message id; ids are PREFIX-SEQ with SEQ in 1..n. */
typedef struct tally {
  const char *prefix;
  int n;
  int *processed;  /* per seq */
  int redelivered; /* processed events with redelivered true */
  int retried, dead, received, confirmed, foreign;
  long long reconnects;
  json_t *last_summary;
} tally;

static void tally_init(tally *t, const char *prefix, int n) {
  memset(t, 0, sizeof(*t));
  t->prefix = prefix;
  t->n = n;
  t->processed = calloc((size_t)n + 1, sizeof(int));
}

static void tally_free(tally *t) {
  free(t->processed);
  if (t->last_summary)
    json_decref(t->last_summary);
}

static int seq_in(tally *t, const char *id) {
  size_t pl = strlen(t->prefix);
  if (!id || strncmp(id, t->prefix, pl) || id[pl] != '-')
    return -1;
  int seq = atoi(id + pl + 1);
  return seq >= 1 && seq <= t->n ? seq : -1;
}

static void on_event(void *ud, json_t *ev) {
  tally *t = ud;
  const char *kind = json_string_value(json_object_get(ev, "event"));
  const char *id = json_string_value(json_object_get(ev, "message_id"));
  if (!kind)
    return;
  int seq = seq_in(t, id);
  if (!strcmp(kind, "summary")) {
    if (t->last_summary)
      json_decref(t->last_summary);
    t->last_summary = json_incref(ev);
    t->reconnects = json_integer_value(json_object_get(ev, "reconnects"));
    return;
  }
  if (seq < 0 && id) {
    t->foreign++;
    return;
  }
  if (!strcmp(kind, "processed")) {
    t->processed[seq]++;
    if (json_is_true(json_object_get(ev, "redelivered")))
      t->redelivered++;
  } else if (!strcmp(kind, "confirmed")) {
    t->confirmed++;
  } else if (!strcmp(kind, "retried")) {
    t->retried++;
  } else if (!strcmp(kind, "dead_lettered")) {
    t->dead++;
  } else if (!strcmp(kind, "received")) {
    t->received++;
  }
}

static int run_sender(const char *queue, const char *prefix, const char *extra1,
                      const char *extra2, int count, tally *t) {
  char n[32];
  snprintf(n, sizeof(n), "%d", count);
  char *argv[] = {(char *)t_bin("edp-forward-sender"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)queue,
                  "--id-prefix",
                  (char *)prefix,
                  "--count",
                  n,
                  "--json",
                  (char *)extra1,
                  (char *)extra2,
                  NULL};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  return t_collect(&p, 120000, on_event, t);
}

static void start_receiver(t_proc *p, const char *queue, char **extra) {
  char *argv[24] = {(char *)t_bin("edp-forward-receiver"),
                    "--url",
                    (char *)t_url(),
                    "--queue",
                    (char *)queue,
                    "--json"};
  int n = 6;
  for (; extra && *extra && n < 22; extra++)
    argv[n++] = *extra;
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn(p, argv, NULL), 0);
}

/* Waits for the next event of kind on p's stdout, feeding every event to t.
 * Returns 1 when seen, 0 on EOF or timeout. */
static int await_event(t_proc *p, tally *t, const char *kind, int timeout_ms) {
  char line[8192];
  long long deadline = t_now_ms() + timeout_ms;
  for (;;) {
    long long left = deadline - t_now_ms();
    if (left <= 0 || t_readline(p, line, sizeof(line), (int)left) != 1)
      return 0;
    json_t *ev = json_loads(line, 0, NULL);
    if (!ev)
      continue;
    on_event(t, ev);
    int hit =
        !strcmp(json_string_value(json_object_get(ev, "event")) ?: "", kind);
    json_decref(ev);
    if (hit)
      return 1;
  }
}

static edp_conn *open_conn_at(const char *url) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  return c;
}

static edp_conn *open_conn(void) { return open_conn_at(t_url()); }

static uint32_t depth(const char *queue) {
  edp_conn *c = open_conn();
  uint32_t msgs = 0;
  ck_assert_int_eq(edp_conn_queue_inspect(c, queue, &msgs, NULL), 0);
  edp_conn_destroy(&c);
  return msgs;
}

/* Lent bodies (edp_fwd_send_lent): each is given back once, only after
 * its confirm, and a connection cut with messages in flight republishes
 * them from the lent memory itself, intact. */
#define LENT_N 600
#define LENT_LEN 4096

typedef struct lent_run {
  int confirmed[LENT_N], done[LENT_N], early;
} lent_run;

static int lent_index(const char *s) {
  int i = -1;
  return s && sscanf(s, "lent-%d", &i) == 1 && i >= 0 && i < LENT_N ? i : -1;
}

static void lent_confirmed(void *ud, const edp_confirm *cf) {
  lent_run *l = ud;
  int i = lent_index(cf->message_id);
  if (i >= 0 && cf->status == EDP_CONFIRM_ACK)
    l->confirmed[i]++;
}

static void lent_done(void *ud, const void *body) {
  lent_run *l = ud;
  int i = lent_index(body);
  ck_assert_int_ge(i, 0);
  l->early += !l->confirmed[i];
  l->done[i]++;
  /* Whatever the library would still send from here is garbage now. */
  memset((void *)body, 'X', LENT_LEN);
  free((void *)body);
}

static void count_done(void *ud, const void *body) {
  (void)body;
  (*(int *)ud)++;
}

START_TEST(lent_bodies_republished_after_a_cut) {
  lent_run *l = calloc(1, sizeof(*l));
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_conn *c = open_conn_at(url);
  const char *q = t_unique("fwd.lent");
  edp_fwd_sender_opts so;
  edp_fwd_sender_opts_init(&so);
  so.queue = q;
  so.confirm_window = 256;
  so.on_confirm = lent_confirmed;
  so.ud = l;
  edp_fwd_sender *s = NULL;
  ck_assert_int_eq(edp_fwd_sender_new(c, &so, &s), 0);
  ck_assert_int_eq(edp_fwd_send_lent(s, "x", "b", 1, NULL, NULL, NULL, NULL),
                   EDP_EINVAL);
  for (int i = 0; i < LENT_N; i++) {
    if (i == LENT_N / 2) /* mid-frame, with up to 256 unconfirmed */
      ck_assert_int_eq(fp_cut_once(p, 3000, FP_C2S), 0);
    char *b = malloc(LENT_LEN), id[32];
    ck_assert_ptr_nonnull(b);
    memset(b, 'a' + i % 26, LENT_LEN);
    int k = snprintf(b, 32, "lent-%d", i);
    b[k] = '.';
    snprintf(id, sizeof(id), "lent-%d", i);
    int rc =
        edp_fwd_send_lent(s, id, b, LENT_LEN, "text/plain", NULL, lent_done, l);
    ck_assert_msg(rc == 0, "send %d: %s", i, edp_strerror(rc));
  }
  ck_assert_int_eq(edp_fwd_flush(s), 0);
  edp_fwd_sender_stats st;
  edp_fwd_sender_stats_get(s, &st);
  ck_assert_uint_ge(st.reconnects, 1);
  ck_assert_uint_ge(st.republished, 1);
  for (int i = 0; i < LENT_N; i++) {
    ck_assert_msg(l->confirmed[i] == 1, "lent-%d confirmed %d times", i,
                  l->confirmed[i]);
    ck_assert_msg(l->done[i] == 1, "lent-%d given back %d times", i,
                  l->done[i]);
  }
  ck_assert_int_eq(l->early, 0);
  edp_fwd_sender_destroy(&s);
  edp_conn_destroy(&c);
  fp_stop(&p);

  /* Every message is in the queue with its own body, none of them 'X'. */
  c = open_conn();
  ck_assert_int_eq(edp_conn_qos(c, 500), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  int seen[LENT_N] = {0}, total = 0;
  edp_delivery d;
  while (edp_conn_receive(c, &d, 2000) == 0) {
    int i = lent_index(d.message_id);
    ck_assert_int_ge(i, 0);
    ck_assert_uint_eq(d.body_len, LENT_LEN);
    ck_assert_int_eq(lent_index(d.body), i);
    ck_assert_int_eq(((const char *)d.body)[LENT_LEN - 1], 'a' + i % 26);
    seen[i]++;
    total++;
    ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  for (int i = 0; i < LENT_N; i++)
    ck_assert_msg(seen[i] >= 1, "lent-%d is not in the queue", i);

  /* Without confirm mode nothing is kept: the body is given back once
   * written. A NULL done and an invalid message are refused and take
   * nothing. */
  edp_conn *plain = open_conn();
  int given = 0;
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = q;
  m.body = "plain";
  m.body_len = 5;
  ck_assert_int_eq(edp_conn_publish_lent(plain, &m, NULL, NULL, NULL),
                   EDP_EINVAL);
  ck_assert_int_eq(edp_conn_publish_lent(plain, &m, count_done, &given, NULL),
                   0);
  ck_assert_int_eq(given, 1);
  m.body = NULL; /* invalid: body_len without a body */
  ck_assert_int_eq(edp_conn_publish_lent(plain, &m, count_done, &given, NULL),
                   EDP_EINVAL);
  ck_assert_int_eq(given, 1);
  edp_conn_destroy(&plain);
  fprintf(stderr,
          "lent_bodies_republished_after_a_cut: %d sent, %llu republished "
          "after %llu reconnect(s), %d in the queue\n",
          LENT_N, (unsigned long long)st.republished,
          (unsigned long long)st.reconnects, total);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

START_TEST(ten_thousand_exactly_once) {
  const char *q = t_unique("fwd.10k");
  tally t;
  tally_init(&t, "tk", 10000);
  ck_assert_int_eq(run_sender(q, "tk", NULL, NULL, 10000, &t), 0);
  ck_assert_int_eq(t.confirmed, 10000);
  t_proc r;
  char *extra[] = {"--idle-timeout", "5000", NULL};
  start_receiver(&r, q, extra);
  ck_assert_int_eq(t_collect(&r, 120000, on_event, &t), 0);
  int missing = 0, dup = 0;
  for (int i = 1; i <= 10000; i++) {
    missing += t.processed[i] == 0;
    dup += t.processed[i] > 1;
  }
  ck_assert_int_eq(missing, 0);
  ck_assert_int_eq(dup, 0);
  ck_assert_int_eq(t.foreign, 0);
  ck_assert_uint_eq(depth(q), 0);
  tally_free(&t);
}
END_TEST

START_TEST(receiver_killed_mid_message) {
  const char *q = t_unique("fwd.kill");
  tally t;
  tally_init(&t, "kl", 3);
  ck_assert_int_eq(run_sender(q, "kl", NULL, NULL, 3, &t), 0);
  t_proc r;
  char *slow[] = {"--work-ms", "30000", "--prefetch", "1", NULL};
  start_receiver(&r, q, slow);
  ck_assert_msg(await_event(&r, &t, "received", 20000), "no message received");
  ck_assert_int_eq(t.processed[1], 0);
  t_signal(&r, SIGKILL);
  ck_assert_int_eq(t_wait(&r, 10000), 128 + SIGKILL);

  char *fast[] = {"--idle-timeout", "3000", NULL};
  start_receiver(&r, q, fast);
  ck_assert_int_eq(t_collect(&r, 60000, on_event, &t), 0);
  for (int i = 1; i <= 3; i++)
    ck_assert_int_eq(t.processed[i], 1);
  /* the message in the killed receiver's hands came back redelivered */
  ck_assert_int_ge(t.redelivered, 1);
  tally_free(&t);
}
END_TEST

/* Coalesced acks (one multiple ack per batch): a receiver killed in the
 * middle of a stream loses nothing; what it handled without its ack
 * comes back, and a second one drains the queue. */
START_TEST(coalesced_acks_survive_a_kill) {
  const char *q = t_unique("fwd.coalesce");
  const int n = 5000;
  tally t;
  tally_init(&t, "co", n);
  ck_assert_int_eq(run_sender(q, "co", NULL, NULL, n, &t), 0);
  t_proc r;
  char *first[] = {"--coalesce-acks", "--prefetch", "500", NULL};
  start_receiver(&r, q, first);
  int seen = 0;
  while (seen < 1000 && await_event(&r, &t, "processed", 20000))
    seen++;
  ck_assert_int_eq(seen, 1000);
  t_signal(&r, SIGKILL);
  /* Its events still in the pipe count: those messages were handled. */
  ck_assert_int_eq(t_collect(&r, 10000, on_event, &t), 128 + SIGKILL);

  char *second[] = {"--coalesce-acks", "--idle-timeout", "3000", NULL};
  start_receiver(&r, q, second);
  ck_assert_int_eq(t_collect(&r, 120000, on_event, &t), 0);
  int missing = 0;
  for (int i = 1; i <= n; i++)
    missing += t.processed[i] == 0;
  ck_assert_int_eq(missing, 0);
  ck_assert_int_eq(t.foreign, 0);
  ck_assert_uint_eq(depth(q), 0);
  tally_free(&t);
}
END_TEST

START_TEST(sigterm_finishes_in_flight) {
  const char *q = t_unique("fwd.term");
  tally t;
  tally_init(&t, "tm", 5);
  ck_assert_int_eq(run_sender(q, "tm", NULL, NULL, 5, &t), 0);
  t_proc r;
  char *slow[] = {"--work-ms", "1500", "--prefetch", "1", NULL};
  start_receiver(&r, q, slow);
  ck_assert(await_event(&r, &t, "received", 20000));
  long long t0 = t_now_ms();
  t_signal(&r, SIGTERM);
  ck_assert_int_eq(t_collect(&r, 20000, on_event, &t), 130);
  ck_assert_int_lt(t_now_ms() - t0, 10000);
  /* the message in hand was finished and acked, the rest stay queued */
  ck_assert_int_eq(t.processed[1], 1);
  ck_assert_uint_eq(depth(q), 4);
  tally_free(&t);
}
END_TEST

START_TEST(broker_closes_connection_mid_send) {
  const char *q = t_unique("fwd.close");
  const int n = 20000;
  tally t;
  tally_init(&t, "cl", n);
  char *argv[] = {(char *)t_bin("edp-forward-sender"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)q,
                  "--id-prefix",
                  "cl",
                  "--count",
                  "20000",
                  "--rate",
                  "4000",
                  "--json",
                  NULL};
  t_proc s;
  ck_assert_int_eq(t_spawn(&s, argv, NULL), 0);
  for (int i = 0; i < 2000; i++)
    ck_assert(await_event(&s, &t, "confirmed", 30000));
  char closed[64];
  ck_assert_int_eq(
      t_broker("close-conns", "edp-forward-sender", closed, sizeof(closed)), 0);
  ck_assert_str_eq(closed, "1");
  ck_assert_int_eq(t_collect(&s, 120000, on_event, &t), 0);
  ck_assert_int_ge(t.reconnects, 1);

  memset(t.processed, 0, sizeof(int) * (n + 1));
  t_proc r;
  char *extra[] = {"--idle-timeout", "5000", NULL};
  start_receiver(&r, q, extra);
  ck_assert_int_eq(t_collect(&r, 120000, on_event, &t), 0);
  int missing = 0, dups = 0;
  for (int i = 1; i <= n; i++) {
    missing += t.processed[i] == 0;
    dups += t.processed[i] > 1 ? t.processed[i] - 1 : 0;
  }
  fprintf(stderr,
          "broker_closes_connection_mid_send: %d messages, %lld reconnect(s), "
          "%d duplicate(s) received, %d missing\n",
          n, t.reconnects, dups, missing);
  ck_assert_int_eq(missing, 0);
  ck_assert_int_le(dups, 1024); /* at most the confirm window resent */
  tally_free(&t);
}
END_TEST

START_TEST(poison_message_dead_lettered) {
  const char *q = t_unique("fwd.poison");
  tally t;
  tally_init(&t, "ps", 6);
  char *argv[] = {(char *)t_bin("edp-forward-sender"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)q,
                  "--id-prefix",
                  "ps",
                  "--json",
                  NULL};
  t_proc s;
  ck_assert_int_eq(
      t_spawn(&s, argv,
              "good 1\nPOISON pill\ngood 2\ngood 3\ngood 4\ngood 5\n"),
      0);
  ck_assert_int_eq(t_collect(&s, 30000, on_event, &t), 0);
  ck_assert_int_eq(t.confirmed, 6);

  t_proc r;
  char *extra[] = {
      "--fail-match", "POISON", "--max-retries", "2", "--idle-timeout",
      "3000",         NULL};
  start_receiver(&r, q, extra);
  ck_assert_int_eq(t_collect(&r, 60000, on_event, &t), 0);
  ck_assert_int_eq(t.processed[2], 0);
  for (int i = 1; i <= 6; i++)
    if (i != 2)
      ck_assert_int_eq(t.processed[i], 1);
  ck_assert_int_eq(t.retried, 2);
  ck_assert_int_eq(t.dead, 1);
  ck_assert_uint_eq(depth(q), 0);

  /* the poison message sits in the .dlq with its reason and count */
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_conn_consume(c, dlq, NULL, NULL, 0), 0);
  edp_delivery d;
  ck_assert_int_eq(edp_conn_receive(c, &d, 10000), 0);
  ck_assert_str_eq(d.message_id, "ps-2");
  ck_assert_str_eq((char *)d.body, "POISON pill");
  const char *why = edp_delivery_header_str(&d, EDP_FWD_HDR_REASON);
  ck_assert_ptr_nonnull(why);
  ck_assert_ptr_nonnull(strstr(why, "POISON"));
  int64_t retries = 0;
  ck_assert_int_eq(edp_delivery_header_int(&d, EDP_FWD_HDR_RETRIES, &retries),
                   0);
  ck_assert_int_eq(retries, 3);
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_QUEUE), q);
  ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
  edp_delivery_clear(&d);
  ck_assert_int_eq(edp_conn_receive(c, &d, 300), EDP_ETIMEOUT);
  edp_conn_destroy(&c);
  tally_free(&t);
}
END_TEST

START_TEST(persistent_survive_restart_transient_do_not) {
  const char *qp = t_unique("fwd.durable");
  const char *qt = t_unique("fwd.transient");
  tally t;
  tally_init(&t, "dp", 50);
  ck_assert_int_eq(run_sender(qp, "dp", "--persistent", NULL, 50, &t), 0);
  ck_assert_int_eq(run_sender(qt, "dp", "--transient", NULL, 50, &t), 0);
  ck_assert_int_eq(t.confirmed, 100);
  ck_assert_uint_eq(depth(qp), 50);
  ck_assert_uint_eq(depth(qt), 50);
  ck_assert_int_eq(t_broker("restart", NULL, NULL, 0), 0);
  /* both queues are durable and come back; only persistent messages do */
  ck_assert_uint_eq(depth(qp), 50);
  ck_assert_uint_eq(depth(qt), 0);
  t_proc r;
  char *extra[] = {"--idle-timeout", "2000", NULL};
  start_receiver(&r, qp, extra);
  ck_assert_int_eq(t_collect(&r, 60000, on_event, &t), 0);
  for (int i = 1; i <= 50; i++)
    ck_assert_int_eq(t.processed[i], 1);
  tally_free(&t);
}
END_TEST

/* Runs the sender with args and returns its exit code; the run must end
 * within bound_ms. */
static int sender_exit(char **args, const char *stdin_data, int bound_ms) {
  char *argv[24] = {(char *)t_bin("edp-forward-sender")};
  int n = 1;
  for (; *args && n < 23; args++)
    argv[n++] = *args;
  argv[n] = NULL;
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, stdin_data), 0);
  long long t0 = t_now_ms();
  char line[256];
  while (t_readline(&p, line, sizeof(line), bound_ms) == 1)
    ;
  int rc = t_wait(&p, bound_ms);
  ck_assert_int_lt(t_now_ms() - t0, bound_ms);
  return rc;
}

START_TEST(bad_input_exit_codes) {
  const char *q = t_unique("fwd.bad");
  /* The broker's URL with another password or vhost; the scheme and the
   * query (a TLS node's CA and client certificate) stay. */
  const char *url = t_url();
  const char *auth = strstr(url, "://") + 3;
  size_t auth_len = strcspn(auth, "/?");
  const char *query = auth + auth_len + strcspn(auth + auth_len, "?");
  char wrongpw[1200], novhost[1200];
  /* Queue kinds the broker would refuse are usage errors (64) before any
   * connection: a delivery limit on a classic queue, an unknown type. */
  char *classic_limit[] = {
      "--url", (char *)url, "-q", (char *)q, "--delivery-limit",
      "3",     "x",         NULL};
  ck_assert_int_eq(sender_exit(classic_limit, NULL, 10000), 64);
  char *stream[] = {"--url",        (char *)url, "-q", (char *)q,
                    "--queue-type", "stream",    "x",  NULL};
  ck_assert_int_eq(sender_exit(stream, NULL, 10000), 64);
  t_url_as("guest", "wrong", wrongpw, sizeof(wrongpw));
  snprintf(novhost, sizeof(novhost), "%.*s/no-such-vhost%s",
           (int)(auth + auth_len - url), url, query);

  char *malformed[] = {"--url", "amqp://guest:guest@host:port/", "x", NULL};
  ck_assert_int_eq(sender_exit(malformed, NULL, 5000), 64);
  char *badpw[] = {"--url", wrongpw, "--queue", (char *)q, "x", NULL};
  ck_assert_int_eq(sender_exit(badpw, NULL, 15000), 77);
  char *nobroker[] = {"--url", "amqp://guest:guest@127.0.0.1:1/", "x", NULL};
  ck_assert_int_eq(sender_exit(nobroker, NULL, 15000), 69);
  char *vhost[] = {"--url", novhost, "--queue", (char *)q, "x", NULL};
  ck_assert_int_eq(sender_exit(vhost, NULL, 15000), 77);
  char *badopt[] = {"--count", "many", NULL};
  ck_assert_int_eq(sender_exit(badopt, NULL, 5000), 64);
  char *unknown[] = {"--frobnicate", NULL};
  ck_assert_int_eq(sender_exit(unknown, NULL, 5000), 64);
  char *help[] = {"--help", NULL};
  ck_assert_int_eq(sender_exit(help, NULL, 5000), 0);

  /* 5 MiB: over the harness broker's max_message_size (4 MiB) */
  size_t big = 5u << 20;
  char *body = malloc(big + 2);
  memset(body, 'a', big);
  body[big] = '\n';
  body[big + 1] = '\0';
  char *client_limit[] = {"--url",      (char *)url, "--queue", (char *)q,
                          "--max-body", "1048576",   NULL};
  ck_assert_int_eq(sender_exit(client_limit, body, 15000), 65);
  char *broker_limit[] = {"--url",      (char *)url, "--queue", (char *)q,
                          "--max-body", "0",         NULL};
  ck_assert_int_eq(sender_exit(broker_limit, body, 15000), 65);
  free(body);
  /* Without --max-body the client's limit is 16 MiB (RabbitMQ 4.x's
   * max_message_size): one byte more is refused before it is sent. */
  char *default_limit[] = {"--url",       (char *)url, "--queue",
                           (char *)q,     "--count",   "1",
                           "--body-size", "16777217",  NULL};
  ck_assert_int_eq(sender_exit(default_limit, NULL, 15000), 65);
  /* nothing half-sent sits in the queue */
  ck_assert_uint_eq(depth(q), 0);
}
END_TEST

/* ---- the library: handlers run in batches ---- */

typedef struct batch_log {
  int attempts[301]; /* by seq */
  int calls;
} batch_log;

static int fail_tenth(void *ud, const edp_delivery *d, char *reason,
                      size_t reason_len) {
  batch_log *l = ud;
  const char *dash = d->message_id ? strrchr(d->message_id, '-') : NULL;
  long seq = dash ? atol(dash + 1) : 0;
  l->calls++;
  if (seq >= 1 && seq <= 300)
    l->attempts[seq]++;
  if (seq % 10 == 0) {
    snprintf(reason, reason_len, "every tenth fails");
    return -1;
  }
  return 0;
}

START_TEST(batched_handlers_lose_nothing) {
  const char *q = t_unique("fwd.batch");
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  /* 300 ids, and b-151 (one that succeeds) twice in a row: the second
   * copy falls into the same batch as the first and must still be seen as
   * a duplicate. */
  for (int i = 1; i <= 301; i++) {
    char id[32], body[32];
    snprintf(id, sizeof(id), "b-%d", i <= 151 ? i : i - 1);
    snprintf(body, sizeof(body), "body %d", i);
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.message_id = id;
    m.body = body;
    m.body_len = strlen(body);
    m.persistent = 1;
    ck_assert_int_eq(edp_conn_publish(c, &m, NULL), 0);
  }
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 10000), 0);
  edp_conn_destroy(&c);

  c = open_conn();
  batch_log l = {0};
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.prefetch = 500;
  ro.max_retries = 0;
  ro.dedup_window = 1000;
  ro.handler = fail_tenth;
  ro.ud = &l;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  edp_fwd_receiver_stats st;
  long long deadline = t_now_ms() + 30000;
  int calls = 0;
  do {
    int rc = edp_fwd_receive_batch(r, 1000, 64);
    ck_assert(rc == 0 || rc == EDP_ETIMEOUT);
    calls += rc == 0;
    edp_fwd_receiver_stats_get(r, &st);
  } while (st.processed + st.dead_lettered + st.duplicates < 301 &&
           t_now_ms() < deadline);
  ck_assert_uint_eq(st.processed, 270);
  ck_assert_uint_eq(st.dead_lettered, 30);
  ck_assert_uint_eq(st.duplicates, 1);
  for (int i = 1; i <= 300; i++)
    ck_assert_int_eq(l.attempts[i], 1);
  /* Batches happened: far fewer calls than messages. */
  ck_assert_int_lt(calls, 300);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  ck_assert_uint_eq(depth(q), 0);
  ck_assert_uint_eq(depth(dlq), 30);
}
END_TEST

static int count_ok(void *ud, const edp_delivery *d, char *reason,
                    size_t reason_len) {
  (void)d;
  (void)reason;
  (void)reason_len;
  (*(int *)ud)++;
  return 0;
}

/* Declares q as the forwarding programs do and puts n persistent
 * messages "c-0".. "c-<n-1>" of size bytes in it, confirmed. */
static void fill_queue_sized(const char *q, int n, size_t size) {
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  char *body = malloc(size);
  ck_assert_ptr_nonnull(body);
  memset(body, 'c', size);
  size_t window = size > 4096 ? 64 : 512;
  for (int i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof(id), "c-%d", i);
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.message_id = id;
    m.body = body;
    m.body_len = size;
    m.persistent = 1;
    ck_assert_int_eq(edp_conn_publish_window(c, &m, window, 10000, NULL), 0);
  }
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 20000), 0);
  free(body);
  edp_conn_destroy(&c);
}

static void fill_queue(const char *q, int n) { fill_queue_sized(q, n, 100); }

/* The acks of a batch are written under TCP_CORK and must leave when the
 * batch is settled, not when the kernel's 200 ms hold runs out: with a
 * prefetch of 20 the broker sends the next messages only for those acks,
 * so 2,000 messages take 100 batches or more, and a held cork would make
 * that 20 s at least. Also batches of more than 64 (the cap is 256). */
START_TEST(batch_acks_leave_at_once) {
  const char *q = t_unique("fwd.cork");
  fill_queue(q, 2300);

  edp_conn *c = open_conn();
  int handled = 0;
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.prefetch = 20;
  ro.handler = count_ok;
  ro.ud = &handled;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  long long t0 = t_now_ms();
  while (handled < 2000 && t_now_ms() - t0 < 60000)
    ck_assert_int_eq(edp_fwd_receive_batch(r, 5000, 256), 0);
  long long ms = t_now_ms() - t0;
  fprintf(stderr,
          "batch_acks_leave_at_once: 2000 messages, prefetch 20, "
          "%lld ms\n",
          ms);
  ck_assert_int_ge(handled, 2000);
  ck_assert_int_lt(ms, 15000);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);

  /* The other 300 or so, all already here: a batch of more than 64. */
  c = open_conn();
  ro.prefetch = 1000;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  long long deadline = t_now_ms() + 10000;
  size_t left = (size_t)(2300 - handled); /* the first batches ran over */
  while (edp_conn_pending_deliveries(c) < left && t_now_ms() < deadline)
    edp_conn_service(c, -1, 50);
  ck_assert_uint_ge(edp_conn_pending_deliveries(c), left);
  ck_assert_uint_gt(left, 200);
  /* A batch stops starting handlers after 2 ms, which a preempted worker
   * may reach: the biggest of a few calls counts. */
  int most = 0;
  for (int i = 0; i < 5 && handled < 2300; i++) {
    int before = handled;
    ck_assert_int_eq(edp_fwd_receive_batch(r, 5000, 1000), 0);
    most = handled - before > most ? handled - before : most;
  }
  ck_assert_int_gt(most, 64);
  ck_assert_int_le(most, 256);
  edp_fwd_receiver_destroy(&r);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
}
END_TEST

/* The connection is cut while a batch's acks are held under TCP_CORK: the
 * 50th handler of the first batch arms a cut 200 bytes into the acks
 * that follow (a basic.ack is 21 bytes), so the corked burst is cut off
 * mid-frame after about nine of them. The acks that never arrived give
 * their messages back to the queue; after the recovery (a new socket, not
 * corked: the cork died with the old one) they come back redelivered and
 * the dedup window, which took each id once its handler succeeded, drops
 * them: every message handled exactly once, nothing left in the queue. */
typedef struct cut_run {
  fp_proxy *p;
  int calls, armed;
  int seen[600];
} cut_run;

static int cut_in_acks(void *ud, const edp_delivery *d, char *reason,
                       size_t reason_len) {
  (void)reason;
  (void)reason_len;
  cut_run *cr = ud;
  int i = d->message_id ? atoi(d->message_id + 2) : -1;
  ck_assert(i >= 0 && i < 600);
  cr->seen[i]++;
  if (++cr->calls == 50 && !cr->armed) {
    ck_assert_int_eq(fp_cut_once(cr->p, 200, FP_C2S), 0);
    cr->armed = 1;
  }
  return 0;
}

START_TEST(cut_while_acks_are_corked) {
  const char *q = t_unique("fwd.corkcut");
  fill_queue(q, 600);
  cut_run *cr = calloc(1, sizeof(*cr));
  char url[600];
  cr->p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_conn *c = open_conn_at(url);
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.prefetch = 300;
  ro.handler = cut_in_acks;
  ro.ud = cr;
  ro.dedup_window = 1000;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  /* All 300 prefetched before the first batch, so it is a big one. */
  long long deadline = t_now_ms() + 10000;
  while (edp_conn_pending_deliveries(c) < 300 && t_now_ms() < deadline)
    edp_conn_service(c, -1, 50);
  ck_assert_uint_ge(edp_conn_pending_deliveries(c), 300);
  edp_fwd_receiver_stats st = {0};
  int missing = 600;
  deadline = t_now_ms() + 60000;
  while (missing && t_now_ms() < deadline) {
    int rc = edp_fwd_receive_batch(r, 2000, 256);
    ck_assert_msg(rc == 0 || rc == EDP_ETIMEOUT, "receive: %s",
                  edp_strerror(rc));
    missing = 0;
    for (int i = 0; i < 600; i++)
      missing += cr->seen[i] == 0;
  }
  edp_fwd_receiver_stats_get(r, &st);
  fprintf(stderr,
          "cut_while_acks_are_corked: handled %d times, %llu reconnects, "
          "%llu redelivered, %llu duplicates\n",
          cr->calls, (unsigned long long)st.reconnects,
          (unsigned long long)st.redelivered,
          (unsigned long long)st.duplicates);
  ck_assert_int_eq(missing, 0);
  ck_assert_int_eq(cr->armed, 1);
  ck_assert_uint_ge(st.reconnects, 1);
  /* Acks were lost with the cut: their messages came back, and were
   * dropped as duplicates, not handled again. */
  ck_assert_uint_ge(st.redelivered, 1);
  ck_assert_uint_ge(st.duplicates, 1);
  for (int i = 0; i < 600; i++)
    ck_assert_msg(cr->seen[i] == 1, "c-%d handled %d times", i, cr->seen[i]);
  ck_assert_int_eq(cr->calls, 600);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  fp_stop(&cr->p);
  /* Nothing left: every message was acked on the new connection. */
  ck_assert_uint_eq(depth(q), 0);
  c = open_conn();
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(cr);
}
END_TEST

/* The receiver reads no further ahead of its handler than the
 * connection's read_ahead_bytes: 120 bodies of 64 KiB with prefetch 120
 * and a read-ahead of 512 KiB, at heartbeat=1 through a fault proxy. The
 * first handler waits until the connection has read what it should
 * (wait_for), then 3 s more (three heartbeat intervals), and reads the
 * count again: its batch gathered at most 8 (512 KiB), the queue took at
 * most 8 more while it ran, and then reading stopped; the broker still
 * heard our heartbeats, so the connection is the one we opened. With no
 * limit (read_ahead_bytes 0) the same run reads all 120 ahead. With a
 * reset (RST) while reads are held, the heartbeat sent during the hold
 * finds the loss before the handler returns; the receiver reconnects and
 * the dedup window drops what comes again. Each message handled once. */
#define RA_N 120
#define RA_BODY (64 * 1024)

typedef struct ahead_run {
  edp_conn *c;
  fp_proxy *p;
  uint64_t wait_for; /* deliveries read before the hold is timed */
  int reset;         /* reset the connection while reads are held */
  int calls, in_order, seen[RA_N];
  uint64_t delivered_after_wait, lost_in_handler;
} ahead_run;

static int ahead_handler(void *ud, const edp_delivery *d, char *reason,
                         size_t reason_len) {
  (void)reason;
  (void)reason_len;
  ahead_run *ar = ud;
  int i = d->message_id ? atoi(d->message_id + 2) : -1;
  ck_assert(i >= 0 && i < RA_N && d->body_len == RA_BODY);
  ar->seen[i]++;
  ar->in_order += i == ar->calls;
  if (ar->calls++ == 0) {
    edp_conn_stats st;
    long long deadline = t_now_ms() + 10000;
    do {
      edp_sleep_ms(20, -1);
      ck_assert_int_eq(edp_conn_stats_get(ar->c, &st), 0);
    } while (st.delivered < ar->wait_for && t_now_ms() < deadline);
    if (ar->reset)
      ck_assert_int_eq(fp_reset(ar->p), 0);
    edp_sleep_ms(3000, -1); /* the handler's work: reads stay held */
    ck_assert_int_eq(edp_conn_stats_get(ar->c, &st), 0);
    ar->delivered_after_wait = st.delivered;
    ar->lost_in_handler = st.lost;
  }
  return 0;
}

static uint64_t run_ahead(const char *q, size_t read_ahead, uint64_t wait_for,
                          int reset) {
  fill_queue_sized(q, RA_N, RA_BODY);
  ahead_run *ar = calloc(1, sizeof(*ar));
  ar->wait_for = wait_for;
  ar->reset = reset;
  char url[600];
  ar->p = t_proxy("?heartbeat=1", url, sizeof(url));
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.read_ahead_bytes = read_ahead;
  ck_assert_int_eq(edp_conn_open(&o, &ar->c, NULL, 0), 0);
  ck_assert_uint_eq(edp_conn_read_ahead(ar->c), read_ahead);
  uint32_t epoch0 = edp_conn_epoch(ar->c);
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.prefetch = RA_N;
  ro.handler = ahead_handler;
  ro.ud = ar;
  ro.dedup_window = 1000;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(ar->c, &ro, &r), 0);
  long long deadline = t_now_ms() + 60000;
  int handled = 0;
  while (handled < RA_N && t_now_ms() < deadline) {
    int rc = edp_fwd_receive_batch(r, 2000, 256);
    ck_assert_msg(rc == 0 || rc == EDP_ETIMEOUT, "receive: %s",
                  edp_strerror(rc));
    handled = 0;
    for (int i = 0; i < RA_N; i++)
      handled += ar->seen[i] > 0;
  }
  edp_fwd_receiver_stats st;
  edp_fwd_receiver_stats_get(r, &st);
  fprintf(stderr,
          "read_ahead_is_bounded: read_ahead %zu%s: %llu of %d read during "
          "the hold, lost during it %llu; %d handler calls, %llu reconnects, "
          "%llu duplicates dropped\n",
          read_ahead, reset ? ", reset while held" : "",
          (unsigned long long)ar->delivered_after_wait, RA_N,
          (unsigned long long)ar->lost_in_handler, ar->calls,
          (unsigned long long)st.reconnects,
          (unsigned long long)st.duplicates);
  for (int i = 0; i < RA_N; i++)
    ck_assert_msg(ar->seen[i] == 1, "c-%d handled %d times", i, ar->seen[i]);
  if (reset) {
    /* Found by the heartbeat sent while reads were held. */
    ck_assert_uint_eq(ar->lost_in_handler, 1);
    ck_assert_uint_ge(st.reconnects, 1);
  } else {
    ck_assert_int_eq(ar->in_order, RA_N);
    ck_assert_uint_eq(ar->lost_in_handler, 0);
    ck_assert_uint_eq(st.reconnects, 0);
    ck_assert_uint_eq(st.redelivered, 0);
    ck_assert_uint_eq(edp_conn_epoch(ar->c), epoch0);
  }
  ck_assert(edp_conn_is_open(ar->c));
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&ar->c);
  fp_stop(&ar->p);
  ck_assert_uint_eq(depth(q), 0);
  uint64_t delivered = ar->delivered_after_wait;
  free(ar);
  return delivered;
}

START_TEST(read_ahead_is_bounded) {
  const char *q = t_unique("fwd.ahead");
  /* The first one, up to 8 more in its batch, up to 8 in the queue. */
  uint64_t bounded = run_ahead(q, 512 * 1024, 9, 0);
  ck_assert_uint_ge(bounded, 9);
  ck_assert_uint_le(bounded, 17);
  ck_assert_uint_eq(run_ahead(q, 0, RA_N, 0), RA_N);
  run_ahead(q, 512 * 1024, 9, 1);
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
}
END_TEST

typedef struct stop_log {
  int calls, stop_w;
} stop_log;

/* The third handler of a batch asks to stop and takes 5 ms: the batch
 * ends after it (no handler starts 2 ms into a batch). */
static int stop_third(void *ud, const edp_delivery *d, char *reason,
                      size_t reason_len) {
  (void)d;
  (void)reason;
  (void)reason_len;
  stop_log *l = ud;
  if (++l->calls == 3) {
    ck_assert_int_eq(write(l->stop_w, "x", 1), 1);
    edp_sleep_ms(5, -1); /* its work */
  }
  return 0;
}

START_TEST(batch_stop_requeues_the_unstarted) {
  const char *q = t_unique("fwd.batchstop");
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  for (int i = 0; i < 20; i++) {
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.body = "x";
    m.body_len = 1;
    ck_assert_int_eq(edp_conn_publish(c, &m, NULL), 0);
  }
  /* Every message is in the queue before the receiver starts. */
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 10000), 0);
  edp_conn_destroy(&c);

  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  o.stop_fd = fds[0];
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  stop_log l = {0, fds[1]};
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.prefetch = 100;
  ro.handler = stop_third;
  ro.ud = &l;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  /* Wait until all 20 were delivered, so the batch can take them. */
  long long deadline = t_now_ms() + 10000;
  while (edp_conn_pending_deliveries(c) < 20 && t_now_ms() < deadline)
    edp_conn_service(c, -1, 50);
  int rc = 0;
  edp_fwd_receiver_stats st;
  do {
    rc = edp_fwd_receive_batch(r, 2000, 64);
    edp_fwd_receiver_stats_get(r, &st);
  } while (rc == 0 && st.processed < 3);
  /* The three that ran were acked; no other handler started. */
  ck_assert_int_eq(l.calls, 3);
  ck_assert_uint_eq(st.processed, 3);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  close(fds[0]);
  close(fds[1]);
  /* The 17 others are back in the queue (the broker may take a moment
   * to count the requeued ones after the close). */
  deadline = t_now_ms() + 10000;
  while (depth(q) != 17 && t_now_ms() < deadline)
    edp_sleep_ms(50, -1);
  ck_assert_uint_eq(depth(q), 17);
}
END_TEST

/* ---- the library: a handler longer than two heartbeat intervals ---- */

static int fwd_slow(void *ud, const edp_delivery *d, char *reason,
                    size_t reason_len) {
  (void)reason;
  (void)reason_len;
  return t_calls_work(ud, d);
}

static void fwd_event(void *ud, int ev, const edp_delivery *d,
                      const char *reason) {
  (void)d;
  (void)reason;
  if (ev == EDP_FWD_PROCESSED)
    t_calls_event(ud, 0);
}

/* heartbeat=1 and a 4 s handler: before the handler ran on a worker, the
 * broker dropped the silent connection and the message came again. Now
 * the receiving thread services the connection while the handler works:
 * each message is processed once, nothing is redelivered, the connection
 * (and its channel epoch) is the one we opened, and a message published
 * while the handler runs waits its turn and is processed after it. */
START_TEST(long_handler_keeps_connection) {
  const char *q = t_unique("fwd.hb");
  char url[600];
  edp_conn *c = open_conn_at(t_hb_url(url, sizeof(url), 1));
  uint32_t epoch0 = edp_conn_epoch(c);
  t_calls log;
  t_calls_init(&log, 4000);
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.handler = fwd_slow;
  ro.on_event = fwd_event;
  ro.ud = &log;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  ck_assert_int_eq(t_publish_one(q, "hb-1"), 0);
  t_later later;
  ck_assert_int_eq(t_later_start(&later, &log, 1, q, "hb-2"), 0);

  long long t0 = t_now_ms();
  ck_assert_int_eq(edp_fwd_receive(r, 20000), 0);
  ck_assert_int_eq(edp_fwd_receive(r, 20000), 0);
  long long took = t_now_ms() - t0;
  pthread_join(later.th, NULL);
  ck_assert_int_eq(later.rc, 0);
  /* Nothing comes again. */
  ck_assert_int_eq(edp_fwd_receive(r, 2500), EDP_ETIMEOUT);

  ck_assert_int_eq(log.n, 2);
  ck_assert_int_eq(log.events, 2);
  t_call a = t_calls_get(&log, 0), b = t_calls_get(&log, 1);
  ck_assert_str_eq(a.id, "hb-1");
  ck_assert_str_eq(b.id, "hb-2");
  ck_assert_int_eq(a.redelivered, 0);
  ck_assert_int_eq(b.redelivered, 0);
  ck_assert_int_ge(a.end_ms - a.start_ms, 4000);
  /* hb-2 was published while hb-1's handler ran, and started after it. */
  ck_assert_int_lt(later.at_ms, a.end_ms);
  ck_assert_int_ge(b.start_ms, a.end_ms);
  /* Both ran on the receiver's one worker thread, not on ours. */
  ck_assert(!pthread_equal(a.thread, pthread_self()));
  ck_assert(pthread_equal(a.thread, b.thread));
  ck_assert_uint_eq(a.epoch, epoch0);
  ck_assert_uint_eq(b.epoch, epoch0);

  edp_fwd_receiver_stats st;
  edp_fwd_receiver_stats_get(r, &st);
  ck_assert_uint_eq(st.processed, 2);
  ck_assert_uint_eq(st.redelivered, 0);
  ck_assert_uint_eq(st.retried, 0);
  ck_assert_uint_eq(st.dead_lettered, 0);
  ck_assert_uint_eq(st.reconnects, 0);
  ck_assert(edp_conn_is_open(c));
  ck_assert_uint_eq(edp_conn_epoch(c), epoch0);
  fprintf(stderr,
          "long_handler_keeps_connection: 2 x %d ms handlers at heartbeat=1 "
          "in %lld ms, 0 reconnects\n",
          log.work_ms, took);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  /* Both were acked: closing the channel gave nothing back. */
  ck_assert_int_eq(t_depth(q), 0);
  t_calls_free(&log);
}
END_TEST

/* ---- faithful copies (issue 12) ---- */

int amqp_encode_table(amqp_bytes_t encoded, amqp_table_t *input,
                      size_t *offset);

/* The wire encoding of fields, minus those named x-edp-*. */
static size_t encode_foreign(const edp_field *f, size_t n, char *buf,
                             size_t cap) {
  edp_field keep[64];
  size_t k = 0;
  for (size_t i = 0; i < n && k < 64; i++)
    if (strncmp(f[i].key, "x-edp-", 6))
      keep[k++] = f[i];
  amqp_pool_t pool;
  init_amqp_pool(&pool, 4096);
  amqp_table_t t;
  ck_assert_int_eq(edp__fields_to_amqp(&pool, keep, k, &t), 0);
  size_t off = 0;
  amqp_bytes_t out = {cap, buf};
  ck_assert_int_eq(amqp_encode_table(out, &t, &off), 0);
  empty_amqp_pool(&pool);
  return off;
}

static const char gz_body[] = "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
                              "\xcb\x48\xcd\xc9\xc9\x07\x00\x86\xa6\x10\x36"
                              "\x05\x00\x00\x00";
static const edp_value death_keys[2] = {
    {.kind = EDP_FIELD_STRING, .v.bytes = {"orig.key", 8}},
    {.kind = EDP_FIELD_ARRAY, .v.array = {NULL, 0}}};
static const edp_field death[4] = {
    {"count", 0, {.kind = EDP_FIELD_I64, .v.i = 1}},
    {"reason", 0, {.kind = EDP_FIELD_STRING, .v.bytes = {"expired", 7}}},
    {"time", 0, {.kind = EDP_FIELD_TIMESTAMP, .v.u = 1764580000}},
    {"routing-keys", 0, {.kind = EDP_FIELD_ARRAY, .v.array = {death_keys, 2}}}};
static const edp_value deaths[1] = {
    {.kind = EDP_FIELD_TABLE, .v.table = {death, 4}}};
static const edp_field every_type[16] = {
    {"bool", 0, {.kind = EDP_FIELD_BOOL, .v.i = 1}},
    {"i8", 0, {.kind = EDP_FIELD_I8, .v.i = -7}},
    {"u8", 0, {.kind = EDP_FIELD_U8, .v.i = 200}},
    {"i16", 0, {.kind = EDP_FIELD_I16, .v.i = -300}},
    {"u16", 0, {.kind = EDP_FIELD_U16, .v.i = 60000}},
    {"i32", 0, {.kind = EDP_FIELD_I32, .v.i = -70000}},
    {"u32", 0, {.kind = EDP_FIELD_U32, .v.i = 4000000000LL}},
    {"i64", 0, {.kind = EDP_FIELD_I64, .v.i = -5000000000LL}},
    {"f32", 0, {.kind = EDP_FIELD_F32, .v.f32 = 1.25f}},
    {"f64", 0, {.kind = EDP_FIELD_F64, .v.f64 = -2.5e-300}},
    {"dec", 0, {.kind = EDP_FIELD_DECIMAL, .v.dec = {3, 1234567}}},
    {"bytes", 0, {.kind = EDP_FIELD_BYTES, .v.bytes = {"a\0b\xff", 4}}},
    {"when", 0, {.kind = EDP_FIELD_TIMESTAMP, .v.u = 1764582000}},
    {"nothing", 0, {.kind = EDP_FIELD_VOID}},
    {"x-death", 0, {.kind = EDP_FIELD_ARRAY, .v.array = {deaths, 1}}},
    {"tbl", 0, {.kind = EDP_FIELD_TABLE, .v.table = {death, 2}}}};

/* Publishes one message with every property and every header type through
 * amq.direct (bound to q with orig.key), as the guest user. */
static void publish_full(edp_conn *c, const char *id) {
  edp_msg m;
  edp_msg_init(&m);
  m.exchange = "amq.direct";
  m.routing_key = "orig.key";
  m.body = gz_body;
  m.body_len = sizeof(gz_body) - 1;
  m.message_id = id;
  m.content_type = "text/plain";
  m.content_encoding = "gzip";
  m.correlation_id = "corr-1";
  m.reply_to = "reply.q";
  m.type = "greeting";
  m.app_id = "app-1";
  m.user_id = "guest";
  m.expiration = "600000";
  m.delivery_mode = 1;
  m.priority = 7;
  m.timestamp = 1764582001;
  m.table = every_type;
  m.n_table = 16;
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  ck_assert_int_eq(edp_conn_publish_confirmed(c, &m, 10000), 0);
}

typedef struct copy_log {
  int attempts;
  char exp2[32], user2[32]; /* what the retry copy carried */
  int mode2;
} copy_log;

static int fail_always(void *ud, const edp_delivery *d, char *reason,
                       size_t reason_len) {
  copy_log *l = ud;
  if (++l->attempts == 2) {
    snprintf(l->exp2, sizeof(l->exp2), "%s", d->expiration ?: "(none)");
    snprintf(l->user2, sizeof(l->user2), "%s", d->user_id ?: "(none)");
    l->mode2 = d->delivery_mode;
  }
  snprintf(reason, reason_len, "always fails");
  return -1;
}

/* Runs a receiver as url until the .dlq holds want messages. */
static void fail_into_dlq(const char *url, const char *q, int max_retries,
                          copy_log *l, uint32_t want) {
  edp_conn *c = open_conn_at(url);
  edp_fwd_receiver_opts ro;
  edp_fwd_receiver_opts_init(&ro);
  ro.queue = q;
  ro.max_retries = max_retries;
  ro.handler = fail_always;
  ro.ud = l;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &ro, &r), 0);
  edp_fwd_receiver_stats st;
  long long deadline = t_now_ms() + 30000;
  do {
    int rc = edp_fwd_receive(r, 2000);
    ck_assert(rc == 0 || rc == EDP_ETIMEOUT);
    edp_fwd_receiver_stats_get(r, &st);
  } while (st.dead_lettered < want && t_now_ms() < deadline);
  ck_assert_uint_eq(st.dead_lettered, want);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
}

static void take_one(const char *queue, edp_delivery *d) {
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_conn_consume(c, queue, NULL, NULL, 0), 0);
  ck_assert_int_eq(edp_conn_receive(c, d, 10000), 0);
  ck_assert_int_eq(edp_conn_ack(c, d->epoch, d->tag, 0), 0);
  edp_conn_destroy(&c);
}

static int ctl(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "tests/broker.sh ctl '%s' %s >/dev/null 2>&1",
           t_broker_dir(), args);
  return system(cmd);
}

/* A retried and then dead-lettered message keeps its body, every property
 * and every header byte for byte, and gains where it came from; the user_id
 * of another user moves to a header (the broker would refuse it), the
 * dead-letter copy's expiration too (it would expire in the .dlq). */
START_TEST(copies_are_faithful) {
  const char *q = t_unique("fwd.copy");
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_queue_bind(c, q, "amq.direct", "orig.key"), 0);
  publish_full(c, "fc-1");

  /* Another user receives: guest's user_id is foreign to it. */
  ck_assert_int_eq(ctl("add_user edpcopier pw"), 0);
  ck_assert_int_eq(ctl("set_permissions -p / edpcopier '.*' '.*' '.*'"), 0);
  char url[1200];
  t_url_as("edpcopier", "pw", url, sizeof(url));
  copy_log l = {0};
  fail_into_dlq(url, q, 1, &l, 1);
  ck_assert_int_eq(l.attempts, 2);
  /* The retry copy kept its expiration and mode; the user_id moved. */
  ck_assert_str_eq(l.exp2, "600000");
  ck_assert_str_eq(l.user2, "(none)");
  ck_assert_int_eq(l.mode2, 1);
  ck_assert_uint_eq(depth(q), 0);

  edp_delivery d;
  take_one(dlq, &d);
  ck_assert_uint_eq(d.body_len, sizeof(gz_body) - 1);
  ck_assert(!memcmp(d.body, gz_body, d.body_len));
  ck_assert_str_eq(d.message_id, "fc-1");
  ck_assert_str_eq(d.content_type, "text/plain");
  ck_assert_str_eq(d.content_encoding, "gzip");
  ck_assert_str_eq(d.correlation_id, "corr-1");
  ck_assert_str_eq(d.reply_to, "reply.q");
  ck_assert_str_eq(d.type, "greeting");
  ck_assert_str_eq(d.app_id, "app-1");
  ck_assert_int_eq(d.delivery_mode, 1);
  ck_assert_int_eq(d.persistent, 0);
  ck_assert_int_eq(d.priority, 7);
  ck_assert_int_eq(d.timestamp, 1764582001);
  ck_assert_ptr_null(d.user_id);
  ck_assert_ptr_null(d.expiration);
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_USER_ID), "guest");
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_EXPIRATION),
                   "600000");
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_EXCHANGE),
                   "amq.direct");
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_ROUTING_KEY),
                   "orig.key");
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_QUEUE), q);
  ck_assert_str_eq(edp_delivery_header_str(&d, EDP_FWD_HDR_REASON),
                   "always fails");
  int64_t retries = 0;
  ck_assert_int_eq(edp_delivery_header_int(&d, EDP_FWD_HDR_RETRIES, &retries),
                   0);
  ck_assert_int_eq(retries, 2);
  /* Every original header, in order, encodes to the same bytes. */
  static char want[8192], got[8192];
  size_t wl = encode_foreign(every_type, 16, want, sizeof(want));
  size_t gl = encode_foreign(d.headers, d.n_headers, got, sizeof(got));
  ck_assert_uint_eq(gl, wl);
  ck_assert(!memcmp(got, want, wl));
  edp_delivery_clear(&d);

  /* The publisher's own user keeps its user_id on the copy. */
  publish_full(c, "fc-2");
  copy_log l2 = {0};
  fail_into_dlq(t_url(), q, 0, &l2, 1);
  take_one(dlq, &d);
  ck_assert_str_eq(d.message_id, "fc-2");
  ck_assert_str_eq(d.user_id, "guest");
  ck_assert_ptr_null(edp_delivery_header(&d, EDP_FWD_HDR_USER_ID));
  edp_delivery_clear(&d);
  edp_conn_destroy(&c);
  ck_assert_int_eq(ctl("delete_user edpcopier"), 0);
}
END_TEST

/* x-edp-retries comes from any publisher: negative, too big, or not an
 * integer, it counts as exhausted. Each such message fails once and goes to
 * the .dlq with a reason that says why; none cycles. */
START_TEST(untrusted_retries_dead_letter_at_once) {
  const char *q = t_unique("fwd.badcount");
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  edp_field bad[6] = {
      {EDP_FWD_HDR_RETRIES, 0, {.kind = EDP_FIELD_I64, .v.i = -5}},
      {EDP_FWD_HDR_RETRIES, 0, {.kind = EDP_FIELD_I64, .v.i = INT64_MIN}},
      {EDP_FWD_HDR_RETRIES, 0, {.kind = EDP_FIELD_I64, .v.i = INT64_MAX}},
      {EDP_FWD_HDR_RETRIES, 0, {.kind = EDP_FIELD_U64, .v.u = UINT64_MAX}},
      {EDP_FWD_HDR_RETRIES, 0, {.kind = EDP_FIELD_STRING, .v.bytes = {"1", 1}}},
      {EDP_FWD_HDR_RETRIES, 0, {.kind = EDP_FIELD_F64, .v.f64 = 0.5}}};
  const char *why[6] = {"-5 is not in", "is not in", "is not in",
                        "type 'L'",     "type 'S'",  "type 'd'"};
  for (int i = 0; i < 6; i++) {
    char id[16];
    snprintf(id, sizeof(id), "bad-%d", i);
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.body = "x";
    m.body_len = 1;
    m.message_id = id;
    m.table = &bad[i];
    m.n_table = 1;
    ck_assert_int_eq(edp_conn_publish_confirmed(c, &m, 10000), 0);
  }
  copy_log l = {0};
  fail_into_dlq(t_url(), q, 3, &l, 6);
  ck_assert_int_eq(l.attempts, 6); /* once each, never retried */
  ck_assert_uint_eq(depth(q), 0);
  ck_assert_uint_eq(depth(dlq), 6);
  ck_assert_int_eq(edp_conn_consume(c, dlq, NULL, NULL, 0), 0);
  for (int i = 0; i < 6; i++) {
    edp_delivery d;
    ck_assert_int_eq(edp_conn_receive(c, &d, 10000), 0);
    int k = atoi(d.message_id + 4);
    const char *reason = edp_delivery_header_str(&d, EDP_FWD_HDR_REASON);
    ck_assert_msg(reason && strstr(reason, why[k]), "%s: %s", d.message_id,
                  reason ? reason : "(none)");
    ck_assert_ptr_nonnull(strstr(reason, "always fails"));
    int64_t n = 0;
    ck_assert_int_eq(edp_delivery_header_int(&d, EDP_FWD_HDR_RETRIES, &n), 0);
    ck_assert_int_eq(n, 4);
    ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  edp_conn_destroy(&c);
}
END_TEST

/* Publishes body under message_id id (either may be any bytes). */
static void publish_raw(edp_conn *c, const char *q, const char *id,
                        const char *body) {
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = q;
  m.message_id = id;
  m.body = body;
  m.body_len = strlen(body);
  ck_assert_int_eq(edp_conn_publish_confirmed(c, &m, 10000), 0);
}

/* Reads p's stdout to its end into buf (NUL-terminated); returns the exit
 * status. */
static int read_all(t_proc *p, char *buf, size_t cap) {
  size_t n = 0;
  char line[4096];
  while (t_readline(p, line, sizeof(line), 20000) == 1) {
    int w = snprintf(buf + n, cap - n, "%s\n", line);
    if (w > 0 && (size_t)w < cap - n)
      n += (size_t)w;
  }
  return t_wait(p, 10000);
}

/* Issue 12: a message_id that is not UTF-8 still gets its processed event
 * (lossless: message_id with U+FFFD, message_id_b64 exact); text mode
 * escapes a body's newline and terminal escapes, so it can't forge a
 * "Database commit." line; an empty message_id is no dedup key. */
START_TEST(hostile_ids_and_bodies_in_output) {
  const char *q = t_unique("fwd.bytes");
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), 0);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  publish_raw(c, q, "\xff\xfeid", "ok\nDatabase commit.\x1b[31m");
  t_proc r;
  char *json[] = {"--count", "1", NULL};
  start_receiver(&r, q, json);
  static char out[65536];
  ck_assert_int_eq(read_all(&r, out, sizeof(out)), 0);
  int processed = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    json_t *ev = json_loads(line, 0, NULL);
    ck_assert_msg(ev != NULL, "not JSON: %s", line);
    const char *kind = json_string_value(json_object_get(ev, "event"));
    ck_assert_str_ne(kind, "error");
    if (!strcmp(kind, "processed")) {
      processed++;
      ck_assert_str_eq(json_string_value(json_object_get(ev, "message_id")),
                       "\xef\xbf\xbd\xef\xbf\xbdid");
      ck_assert_str_eq(json_string_value(json_object_get(ev, "message_id_b64")),
                       "//5pZA==");
    }
    json_decref(ev);
  }
  ck_assert_int_eq(processed, 1);

  /* Text mode: one real "Database commit." line, no ESC byte. */
  publish_raw(c, q, "t-1", "ok\nDatabase commit.\x1b[31m");
  char *text[] = {(char *)t_bin("edp-forward-receiver"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)q,
                  "--count",
                  "1",
                  NULL};
  ck_assert_int_eq(t_spawn(&r, text, NULL), 0);
  ck_assert_int_eq(read_all(&r, out, sizeof(out)), 0);
  ck_assert_ptr_null(strchr(out, '\x1b'));
  ck_assert_ptr_nonnull(
      strstr(out, "Processing message: ok\\nDatabase commit.\\x1b[31m\n"));
  int commits = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
    commits += !strcmp(line, "Database commit.");
  ck_assert_int_eq(commits, 1);

  /* --dedup: two messages with an empty message_id are both processed. */
  publish_raw(c, q, "", "first");
  publish_raw(c, q, "", "second");
  char *dedup[] = {"--dedup", "100", "--idle-timeout", "2000", NULL};
  start_receiver(&r, q, dedup);
  ck_assert_int_eq(read_all(&r, out, sizeof(out)), 0);
  int dups = 0;
  processed = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    processed += strstr(line, "\"event\":\"processed\"") != NULL;
    dups += strstr(line, "\"event\":\"duplicate\"") != NULL;
  }
  ck_assert_int_eq(processed, 2);
  ck_assert_int_eq(dups, 0);
  ck_assert_uint_eq(depth(q), 0);
  edp_conn_destroy(&c);
}
END_TEST

/* Issue 12: SIGINT while a handler is failing its attempt. The message must
 * be settled exactly once: the retry copy confirmed and the original acked,
 * or no copy and the original requeued; never both in the queue. */
START_TEST(sigint_during_failing_attempt_settles_once) {
  for (int run = 0; run < 3; run++) {
    const char *q = t_unique("fwd.intfail");
    tally t;
    tally_init(&t, "if", 1);
    ck_assert_int_eq(run_sender(q, "if", NULL, NULL, 1, &t), 0);
    t_proc r;
    char *failing[] = {"--work-ms", "800", "--fail-every", "1", "--prefetch",
                       "1",         NULL};
    start_receiver(&r, q, failing);
    ck_assert(await_event(&r, &t, "received", 20000));
    t_signal(&r, SIGINT);
    ck_assert_int_eq(t_collect(&r, 20000, on_event, &t), 130);
    char dlq[300];
    snprintf(dlq, sizeof(dlq), "%s.dlq", q);
    uint32_t in_q = depth(q), in_dlq = depth(dlq);
    fprintf(stderr,
            "sigint_during_failing_attempt: run %d: %u in queue, %u in .dlq, "
            "%d retried event(s)\n",
            run, in_q, in_dlq, t.retried);
    ck_assert_uint_eq(in_q + in_dlq, 1);
    /* The stop came before the copy: the original went back, untouched. */
    ck_assert_uint_eq(in_q, 1);
    edp_conn *c = open_conn();
    ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
    edp_delivery d;
    ck_assert_int_eq(edp_conn_receive(c, &d, 10000), 0);
    ck_assert_str_eq(d.message_id, "if-1");
    ck_assert_int_eq(d.redelivered, 1);
    ck_assert_int_eq(edp_delivery_header_int(&d, EDP_FWD_HDR_RETRIES, NULL),
                     EDP_ENOTFOUND);
    edp_delivery_clear(&d);
    edp_conn_destroy(&c);
    tally_free(&t);
  }
}
END_TEST

/* ---------- quorum queues (issue 14) ---------- */

/* The same run as ten_thousand_exactly_once on a quorum queue: every
 * message processed once, and the queue really is a quorum queue (a
 * classic declare of it is refused with the broker's explanation). */
START_TEST(quorum_queue_end_to_end) {
  const char *q = t_unique("fwd.qq");
  tally t;
  tally_init(&t, "qq", 3000);
  ck_assert_int_eq(run_sender(q, "qq", "--queue-type", "quorum", 3000, &t), 0);
  ck_assert_int_eq(t.confirmed, 3000);
  t_proc r;
  char *extra[] = {"--queue-type", "quorum", "--idle-timeout", "3000", NULL};
  start_receiver(&r, q, extra);
  ck_assert_int_eq(t_collect(&r, 120000, on_event, &t), 0);
  for (int i = 1; i <= 3000; i++)
    ck_assert_msg(t.processed[i] == 1, "seq %d processed %d times", i,
                  t.processed[i]);
  ck_assert_int_eq(t.foreign, 0);
  ck_assert_uint_eq(depth(q), 0);
  edp_conn *c = open_conn();
  ck_assert_int_eq(edp_fwd_declare(c, q, NULL), EDP_EPRECONDITION);
  ck_assert_ptr_nonnull(
      strstr(edp_conn_reply_text(c), "inequivalent arg 'x-queue-type'"));
  edp_conn_destroy(&c);
  tally_free(&t);
}
END_TEST

/* A message that kills its consumer on every delivery (a crash: no
 * handler failure, no retry copy ever written) ends in <queue>.dlq after
 * the queue's delivery limit, with the broker's reason; the others flow.
 * Delivery limit 2: three deliveries, three crashes, then the .dlq. */
START_TEST(crashing_message_reaches_dlq_after_delivery_limit) {
  const char *q = t_unique("fwd.crash");
  char *send[] = {"--url",
                  (char *)t_url(),
                  "-q",
                  (char *)q,
                  "--id-prefix",
                  "cr",
                  "--queue-type",
                  "quorum",
                  "--delivery-limit",
                  "2",
                  "a",
                  "b",
                  "poison",
                  "c",
                  "d",
                  NULL};
  ck_assert_int_eq(sender_exit(send, NULL, 30000), 0);
  int crashes = 0, processed = 0;
  for (int run = 0; run < 8; run++) {
    char *extra[] = {"--queue-type",
                     "quorum",
                     "--delivery-limit",
                     "2",
                     "--prefetch",
                     "1",
                     "--crash-match",
                     "poison",
                     "--idle-timeout",
                     "2000",
                     NULL};
    t_proc r;
    start_receiver(&r, q, extra);
    tally t;
    tally_init(&t, "cr", 5); /* poison is cr-3 */
    int rc = t_collect(&r, 60000, on_event, &t);
    for (int i = 1; i <= 5; i++)
      processed += t.processed[i];
    ck_assert_int_eq(t.processed[3], 0);
    tally_free(&t);
    if (rc == 70) {
      crashes++;
      continue;
    }
    ck_assert_int_eq(rc, 0);
    break;
  }
  ck_assert_int_eq(crashes, 3);
  ck_assert_int_eq(processed, 4);
  ck_assert_uint_eq(depth(q), 0);
  /* The .dlq holds the crasher with the broker's reason. */
  char dlq[256];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_delivery d;
  take_one(dlq, &d);
  ck_assert_int_eq((int)d.body_len, 6);
  ck_assert_int_eq(memcmp(d.body, "poison", 6), 0);
  ck_assert_str_eq(edp_fwd_dead_reason(&d), "delivery_limit");
  edp_delivery_clear(&d);
}
END_TEST

/* x-delivery-count is a failed attempt too: a message that crashed its
 * consumer twice and then fails in the handler is dead-lettered after
 * max_retries attempts in all, not max_retries more. */
START_TEST(delivery_count_counts_as_attempts) {
  const char *q = t_unique("fwd.dc");
  char *send[] = {"--url",        (char *)t_url(), "-q",
                  (char *)q,      "--id-prefix",   "dc",
                  "--queue-type", "quorum",        "--delivery-limit",
                  "10",           "poison",        NULL};
  ck_assert_int_eq(sender_exit(send, NULL, 30000), 0);
  for (int run = 0; run < 2; run++) {
    char *extra[] = {"--queue-type",
                     "quorum",
                     "--delivery-limit",
                     "10",
                     "--crash-match",
                     "poison",
                     "--idle-timeout",
                     "2000",
                     NULL};
    t_proc r;
    start_receiver(&r, q, extra);
    ck_assert_int_eq(t_wait(&r, 30000), 70);
  }
  tally t;
  tally_init(&t, "dc", 1);
  char *extra[] = {"--queue-type",
                   "quorum",
                   "--delivery-limit",
                   "10",
                   "--max-retries",
                   "3",
                   "--fail-match",
                   "poison",
                   "--idle-timeout",
                   "2000",
                   NULL};
  t_proc r;
  start_receiver(&r, q, extra);
  ck_assert_int_eq(t_collect(&r, 60000, on_event, &t), 0);
  /* Attempts 1 and 2 crashed; attempt 3 failed (a retry copy carrying
   * x-edp-retries 3); attempt 4 failed: the .dlq. */
  ck_assert_int_eq(t.retried, 1);
  ck_assert_int_eq(t.dead, 1);
  tally_free(&t);
}
END_TEST

/* A program declaring an existing queue with another type: exit 65 and a
 * line that names the queue and the difference. */
START_TEST(redeclare_with_other_type_is_explained) {
  const char *q = t_unique("fwd.redecl");
  tally t;
  tally_init(&t, "rd", 1);
  ck_assert_int_eq(run_sender(q, "rd", NULL, NULL, 1, &t), 0);
  tally_free(&t);
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "%s --url '%s' -q '%s' --queue-type quorum x 2>&1 >/dev/null",
           t_bin("edp-forward-sender"), t_url(), q);
  char *argv[] = {"/bin/sh", "-c", cmd, NULL};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  char out[8192];
  ck_assert_int_eq(read_all(&p, out, sizeof(out)), 65);
  char want[512];
  snprintf(want, sizeof(want),
           "queue '%s.dlq' exists with another x-queue-type", q);
  ck_assert_msg(strstr(out, want), "no explanation in: %s", out);
}
END_TEST

int main(void) {
  Suite *s = suite_create("forwarding");
  TCase *tc = tcase_create("forwarding");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, bad_input_exit_codes);
  tcase_add_test(tc, ten_thousand_exactly_once);
  tcase_add_test(tc, receiver_killed_mid_message);
  tcase_add_test(tc, coalesced_acks_survive_a_kill);
  tcase_add_test(tc, sigterm_finishes_in_flight);
  tcase_add_test(tc, poison_message_dead_lettered);
  tcase_add_test(tc, broker_closes_connection_mid_send);
  tcase_add_test(tc, persistent_survive_restart_transient_do_not);
  tcase_add_test(tc, long_handler_keeps_connection);
  tcase_add_test(tc, quorum_queue_end_to_end);
  tcase_add_test(tc, crashing_message_reaches_dlq_after_delivery_limit);
  tcase_add_test(tc, delivery_count_counts_as_attempts);
  tcase_add_test(tc, redeclare_with_other_type_is_explained);
  tcase_add_test(tc, batched_handlers_lose_nothing);
  tcase_add_test(tc, batch_stop_requeues_the_unstarted);
  tcase_add_test(tc, lent_bodies_republished_after_a_cut);
  tcase_add_test(tc, batch_acks_leave_at_once);
  tcase_add_test(tc, cut_while_acks_are_corked);
  tcase_add_test(tc, read_ahead_is_bounded);
  suite_add_tcase(s, tc);
  TCase *copies = tcase_create("copies");
  tcase_set_timeout(copies, 300);
  tcase_add_test(copies, sigint_during_failing_attempt_settles_once);
  tcase_add_test(copies, copies_are_faithful);
  tcase_add_test(copies, untrusted_retries_dead_letter_at_once);
  tcase_add_test(copies, hostile_ids_and_bodies_in_output);
  suite_add_tcase(s, copies);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
