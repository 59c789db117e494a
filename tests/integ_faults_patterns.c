/*
 * integ_faults_patterns.c - the pattern rows of the fault matrix: the
 * forwarding receiver (with dedup), the thread delegate, the ambulance
 * and the supervisor driven through their library API (and a program where
 * the program adds behaviour: signal handling) while faults hit them at
 * the moments that matter: a TCP reset of the consuming connection through
 * the fault proxy mid-stream, a channel error with deliveries in flight, a
 * queue the pattern declared deleted under it, SIGTERM while a handler
 * runs.
 *
 * Every test checks by accounting: which message ids the handler saw and
 * how often, in which order per context, what is left in the queue once
 * every connection of the pattern is closed (a message acked without being
 * processed would be neither processed nor left), and how long the
 * recovery took, against a stated bound. Each writes one row of the fault
 * matrix (docs/faults.md) when EDP_FAULTS_REPORT names a file.
 */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "edp.h"
#include "edp_ambulance.h"
#include "edp_forwarding.h"
#include "edp_supervisor.h"
#include "edp_thread_delegate.h"
#include "faultproxy.h"
#include "testlib.h"

/* ---------- helpers ---------- */

#define MAXIDS 4096

static int id_index(const char *id) {
  /* ids are "m<N>" */
  if (!id || id[0] != 'm')
    return -1;
  int i = atoi(id + 1);
  return i >= 0 && i < MAXIDS ? i : -1;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1)
    ;
}

static edp_conn *open_url(const char *url, const char *name) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.client_name = name;
  o.reconnect_max_ms = 20000;
  edp_conn *c = NULL;
  char why[300];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  ck_assert_msg(rc == 0, "open: %s", why);
  return c;
}

static edp_conn *admin_conn(void) { return open_url(t_url(), "rows-admin"); }

static void publish_id(edp_conn *c, const char *exchange, const char *rk,
                       int i) {
  char id[16];
  snprintf(id, sizeof(id), "m%d", i);
  edp_msg m;
  edp_msg_init(&m);
  m.exchange = exchange;
  m.routing_key = rk;
  m.body = id;
  m.body_len = strlen(id);
  m.message_id = id;
  m.persistent = 1;
  ck_assert_int_eq(edp_conn_publish(c, &m, NULL), 0);
}

/* Publishes m0 .. m<n-1> to queue q with confirms. */
static void publish_ids(edp_conn *c, const char *q, int from, int n) {
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  for (int i = from; i < from + n; i++)
    publish_id(c, "", q, i);
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 15000), 0);
}

static uint32_t depth(edp_conn *c, const char *q) {
  uint32_t n = 0;
  ck_assert_int_eq(edp_conn_queue_inspect(c, q, &n, NULL), 0);
  return n;
}

/* Every message_id left in q, consumed and acked through c; counts[i]
 * says how often m<i> was there. Returns how many messages there were. */
static int drain_ids(edp_conn *c, const char *q, int *counts, int n) {
  char tag[256];
  ck_assert_int_eq(edp_conn_qos(c, 500), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, tag, sizeof(tag)), 0);
  int total = 0;
  edp_delivery d;
  while (edp_conn_receive(c, &d, 1000) == 0) {
    int i = id_index(d.message_id);
    if (i >= 0 && i < n)
      counts[i]++;
    total++;
    ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  ck_assert_int_eq(edp_conn_cancel(c, tag), 0);
  return total;
}

/* ---------- forwarding receiver (dedup) ---------- */

typedef struct fwd_ledger {
  int calls[MAXIDS]; /* handler calls per id */
  atomic_int handled;
  int reset_at; /* the handler resets the proxy at this call (1-based) */
  fp_proxy *p;
  long long t_fault;
  int work_ms;
  atomic_int in_handler; /* id + 1 of the message in the handler, or 0 */
  int dups[MAXIDS];
} fwd_ledger;

static int fwd_handler(void *ud, const edp_delivery *d, char *reason,
                       size_t reason_len) {
  fwd_ledger *l = ud;
  (void)reason;
  (void)reason_len;
  int i = id_index(d->message_id);
  atomic_store(&l->in_handler, i + 1);
  if (i >= 0)
    l->calls[i]++;
  int n = atomic_fetch_add(&l->handled, 1) + 1;
  if (l->p && n == l->reset_at) {
    /* The moment: a handler in progress, deliveries prefetched, acks of
     * earlier messages just sent. */
    ck_assert_int_eq(fp_reset(l->p), 0);
    l->t_fault = t_now_ms();
  }
  if (l->work_ms)
    sleep_ms(l->work_ms);
  atomic_store(&l->in_handler, 0);
  return 0;
}

static void fwd_event(void *ud, int ev, const edp_delivery *d,
                      const char *reason) {
  fwd_ledger *l = ud;
  (void)reason;
  int i = id_index(d->message_id);
  if (ev == EDP_FWD_DUPLICATE && i >= 0)
    l->dups[i]++;
}

static edp_fwd_receiver *fwd_receiver(edp_conn *c, const char *q, fwd_ledger *l,
                                      int prefetch) {
  edp_fwd_receiver_opts o;
  edp_fwd_receiver_opts_init(&o);
  o.queue = q;
  o.prefetch = prefetch;
  o.dedup_window = 4096;
  o.handler = fwd_handler;
  o.on_event = fwd_event;
  o.ud = l;
  edp_fwd_receiver *r = NULL;
  ck_assert_int_eq(edp_fwd_receiver_new(c, &o, &r), 0);
  return r;
}

/* Receives until every one of n ids was handled, at most bound_ms. */
static void fwd_until_all(edp_fwd_receiver *r, fwd_ledger *l, int n,
                          long long bound_ms) {
  long long t0 = t_now_ms();
  for (;;) {
    int distinct = 0;
    for (int i = 0; i < n; i++)
      distinct += l->calls[i] > 0;
    if (distinct == n)
      break;
    ck_assert_msg(t_now_ms() - t0 < bound_ms, "only %d/%d handled in %lld ms",
                  distinct, n, bound_ms);
    int rc = edp_fwd_receive(r, 1000);
    ck_assert_msg(rc == 0 || rc == EDP_ETIMEOUT, "receive: %s",
                  edp_strerror(rc));
  }
}

/* After the receiver's connection closed (its unacked messages back in the
 * queue): every id handled exactly once, and the queue empty, so no ack
 * went out for a message the handler did not finish. */
static void fwd_account(edp_conn *admin, const char *q, fwd_ledger *l, int n) {
  for (int i = 0; i < n; i++)
    ck_assert_msg(l->calls[i] == 1, "m%d handled %d times", i, l->calls[i]);
  ck_assert_uint_eq(depth(admin, q), 0);
}

/* A TCP reset of the receiver's connection while a handler runs, with a
 * prefetch window of deliveries in flight: the receiver reconnects by
 * itself; the message in the handler loses its ack and comes back
 * redelivered, and dedup drops it, so each id is handled exactly once. */
START_TEST(fwd_reset_mid_stream) {
  const int n = 600;
  fwd_ledger *l = calloc(1, sizeof(*l));
  const char *q = t_unique("rows.fwd.rst");
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_fwd_declare(admin, q, NULL), 0);
  publish_ids(admin, q, 0, n);
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_conn *c = open_url(url, "rows-fwd-rst");
  edp_fwd_receiver *r = fwd_receiver(c, q, l, 32);
  l->p = p;
  l->reset_at = n / 2;
  long long t0 = t_now_ms();
  fwd_until_all(r, l, n, 30000);
  long long ms = t_now_ms() - l->t_fault;
  edp_fwd_receiver_stats st;
  edp_fwd_receiver_stats_get(r, &st);
  ck_assert_uint_ge(st.reconnects, 1);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  fwd_account(admin, q, l, n);
  int dups = 0;
  for (int i = 0; i < n; i++)
    dups += l->dups[i];
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d handled exactly once (dedup dropped %d "
           "redelivered), %llu reconnect(s), %llu redelivered, queue empty",
           n, n, dups, (unsigned long long)st.reconnects,
           (unsigned long long)st.redelivered);
  t_fault_row("forwarding (receiver, dedup)", "TCP reset (RST)",
              "handler running, prefetch in flight", outcome, ms);
  (void)t0;
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_conn_destroy(&admin);
  fp_stop(&p);
  free(l);
}
END_TEST

/* A channel error on the receiver's connection between two messages, with
 * deliveries prefetched (and held by the worker): those of the old channel
 * are dropped, the broker redelivers them, each id is handled once. */
START_TEST(fwd_channel_error_mid_stream) {
  const int n = 600;
  fwd_ledger *l = calloc(1, sizeof(*l));
  const char *q = t_unique("rows.fwd.ch");
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_fwd_declare(admin, q, NULL), 0);
  publish_ids(admin, q, 0, n);
  edp_conn *c = open_url(t_url(), "rows-fwd-ch");
  edp_fwd_receiver *r = fwd_receiver(c, q, l, 32);
  while (atomic_load(&l->handled) < n / 2)
    ck_assert_int_eq(edp_fwd_receive(r, 5000), 0);
  long long t0 = t_now_ms();
  uint32_t e0 = edp_conn_epoch(c);
  ck_assert_int_eq(
      edp_conn_queue_inspect(c, t_unique("rows.missing"), NULL, NULL),
      EDP_ENOTFOUND);
  ck_assert_uint_gt(edp_conn_epoch(c), e0);
  fwd_until_all(r, l, n, 30000);
  long long ms = t_now_ms() - t0;
  edp_fwd_receiver_stats st;
  edp_fwd_receiver_stats_get(r, &st);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  fwd_account(admin, q, l, n);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d handled exactly once, %llu redelivered after "
           "the channel came back, %llu dedup drops, queue empty",
           n, n, (unsigned long long)st.redelivered,
           (unsigned long long)st.duplicates);
  t_fault_row("forwarding (receiver, dedup)", "channel error",
              "between messages, prefetch in flight", outcome, ms);
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_conn_destroy(&admin);
  free(l);
}
END_TEST

typedef struct del_arg {
  const char *q;
  fwd_ledger *l;
  long long t;
  int rc;
} del_arg;

/* Deletes a->q through a connection of its own once a handler runs. */
static void *delete_in_handler(void *arg) {
  del_arg *a = arg;
  edp_conn *c = open_url(t_url(), "rows-deleter");
  long long t0 = t_now_ms();
  while (!atomic_load(&a->l->in_handler) && t_now_ms() - t0 < 10000)
    sleep_ms(1);
  a->t = t_now_ms();
  a->rc = edp_conn_queue_delete(c, a->q);
  edp_conn_destroy(&c);
  return NULL;
}

/* The receiver's own queue deleted while a handler runs: the handler
 * finishes, and so do the deliveries already in hand (the broker dropped
 * them with the queue: handling them is their only chance), none twice;
 * then the receive reports EDP_ENOTFOUND (the consumer is gone; not
 * retried forever) and the next one is quiet. */
START_TEST(fwd_queue_deleted_under_receiver) {
  const int n = 30;
  fwd_ledger *l = calloc(1, sizeof(*l));
  const char *q = t_unique("rows.fwd.del");
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_fwd_declare(admin, q, NULL), 0);
  publish_ids(admin, q, 0, n);
  edp_conn *c = open_url(t_url(), "rows-fwd-del");
  edp_fwd_receiver *r = fwd_receiver(c, q, l, 8);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(edp_fwd_receive(r, 5000), 0);
  /* The delete comes from another thread (its own connection) while the
   * next handler runs. */
  l->work_ms = 200;
  int depth_before = (int)depth(admin, q);
  del_arg a = {q, l, 0, -1};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, delete_in_handler, &a), 0);
  int rc = edp_fwd_receive(r, 5000);
  /* A delivery already prefetched may still be handled; the cancel comes
   * next, at once. */
  int after = 0;
  while (rc == 0 && after < 10) {
    after++;
    rc = edp_fwd_receive(r, 5000);
  }
  pthread_join(th, NULL);
  long long ms = t_now_ms() - a.t;
  ck_assert_int_eq(a.rc, 0);
  ck_assert_int_eq(rc, EDP_ENOTFOUND);
  ck_assert_int_lt(ms, 10 * 200 + 2000);
  /* Reported once; then nothing more comes, no hang, no spin. */
  long long t1 = t_now_ms();
  rc = edp_fwd_receive(r, 300);
  ck_assert_int_eq(rc, EDP_ETIMEOUT);
  ck_assert_int_lt(t_now_ms() - t1, 1500);
  edp_fwd_receiver_stats st;
  edp_fwd_receiver_stats_get(r, &st);
  for (int i = 0; i < n; i++)
    ck_assert_int_le(l->calls[i], 1);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "reported: EDP_ENOTFOUND (programs: exit 69) once the %d "
           "deliveries in hand (prefetch 8) were handled, none twice; then "
           "quiet; %d ready messages went with the queue",
           after, depth_before);
  t_fault_row("forwarding (receiver, dedup)", "queue deleted",
              "under the consumer, prefetch in flight", outcome, ms);
  edp_fwd_receiver_destroy(&r);
  edp_conn_destroy(&c);
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  edp_conn_queue_delete(admin, dlq);
  edp_conn_destroy(&admin);
  free(l);
}
END_TEST

/* The program: SIGTERM while a handler runs (--work-ms 400). The handler
 * finishes and is acked, the rest stays in the queue: what was processed
 * and what is left are disjoint and together every id, exit 130. */
START_TEST(fwd_program_sigterm_in_handler) {
  const int n = 30;
  const char *q = t_unique("rows.fwd.sig");
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_fwd_declare(admin, q, NULL), 0);
  publish_ids(admin, q, 0, n);
  char *argv[] = {(char *)t_bin("edp-forward-receiver"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)q,
                  "--work-ms",
                  "400",
                  "--dedup",
                  "100",
                  "--json",
                  NULL};
  t_proc pr;
  ck_assert_int_eq(t_spawn(&pr, argv, NULL), 0);
  int processed[MAXIDS] = {0}, received[MAXIDS] = {0};
  char line[4096];
  int n_proc = 0, term_sent = 0;
  long long t_term = 0;
  long long t0 = t_now_ms();
  while (t_now_ms() - t0 < 20000 &&
         t_readline(&pr, line, sizeof(line), 5000) == 1) {
    json_error_t je;
    json_t *ev = json_loads(line, 0, &je);
    if (!ev)
      continue;
    const char *e = json_string_value(json_object_get(ev, "event"));
    int i = id_index(json_string_value(json_object_get(ev, "message_id")));
    if (e && i >= 0 && !strcmp(e, "processed")) {
      processed[i]++;
      n_proc++;
    }
    if (e && i >= 0 && !strcmp(e, "received")) {
      received[i]++;
      /* The receiver writes "received" from inside the handler, before
       * its work: the fourth message is in its handler now. */
      if (n_proc == 3 && !term_sent) {
        t_signal(&pr, SIGTERM);
        t_term = t_now_ms();
        term_sent = 1;
      }
    }
    json_decref(ev);
  }
  int code = t_wait(&pr, 5000);
  long long exit_ms = t_now_ms() - t_term;
  ck_assert(term_sent);
  ck_assert_int_eq(code, 130);
  ck_assert_int_lt(exit_ms, 400 + 2000);
  int left[MAXIDS] = {0};
  int total_left = drain_ids(admin, q, left, n);
  int n_done = 0;
  for (int i = 0; i < n; i++) {
    ck_assert_msg(received[i] == processed[i], "m%d received %d processed %d",
                  i, received[i], processed[i]);
    ck_assert_msg(processed[i] + left[i] == 1, "m%d processed %d left %d", i,
                  processed[i], left[i]);
    n_done += processed[i];
  }
  ck_assert_int_eq(n_done, 4);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "exit 130 in %lld ms; the message in its handler finished and "
           "acked; %d processed + %d left = %d/%d, none twice",
           exit_ms, n_done, total_left, n_done + total_left, n);
  t_fault_row("forwarding (edp-forward-receiver)", "SIGTERM",
              "handler running (--work-ms 400)", outcome, exit_ms);
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_conn_destroy(&admin);
}
END_TEST

/* ---------- thread delegate ---------- */

#define TD_ACCOUNTS 8
#define TD_PER_ACCOUNT 100
#define TD_N (TD_ACCOUNTS * TD_PER_ACCOUNT)

/* m<i> belongs to account A<i % TD_ACCOUNTS> with sequence number
 * i / TD_ACCOUNTS; it is published in i order. */
typedef struct td_ledger {
  pthread_mutex_t mu;
  int seq[TD_ACCOUNTS][4 * TD_PER_ACCOUNT]; /* handler calls, in order */
  int n_seq[TD_ACCOUNTS];
  int busy[TD_ACCOUNTS];
  int calls[TD_N];
  int overlaps, bad_context;
  atomic_int handled;
  int reset_at;
  fp_proxy *p;
  long long t_fault;
} td_ledger;

static int td_handler(void *ud, int worker, const char *context,
                      const edp_delivery *d, int attempt, char *reason,
                      size_t reason_len) {
  td_ledger *l = ud;
  (void)worker;
  (void)attempt;
  (void)reason;
  (void)reason_len;
  int i = id_index(d->message_id);
  if (i < 0 || i >= TD_N)
    return 0;
  int a = i % TD_ACCOUNTS;
  char want[16];
  snprintf(want, sizeof(want), "A%d", a);
  pthread_mutex_lock(&l->mu);
  if (strcmp(context, want))
    l->bad_context++;
  if (l->busy[a]++)
    l->overlaps++; /* two workers on one account at once */
  if (l->n_seq[a] < 4 * TD_PER_ACCOUNT)
    l->seq[a][l->n_seq[a]++] = i / TD_ACCOUNTS;
  l->calls[i]++;
  pthread_mutex_unlock(&l->mu);
  int n = atomic_fetch_add(&l->handled, 1) + 1;
  if (l->p && n == l->reset_at) {
    fp_reset(l->p);
    l->t_fault = t_now_ms();
  }
  sleep_ms(1);
  pthread_mutex_lock(&l->mu);
  l->busy[a]--;
  pthread_mutex_unlock(&l->mu);
  return 0;
}

static void td_publish(edp_conn *admin, const char *ex) {
  ck_assert_int_eq(edp_conn_confirm_select(admin), 0);
  for (int i = 0; i < TD_N; i++) {
    char rk[32];
    snprintf(rk, sizeof(rk), "trade.eq.A%d", i % TD_ACCOUNTS);
    publish_id(admin, ex, rk, i);
  }
  ck_assert_int_eq(edp_conn_wait_confirms(admin, 0, 15000), 0);
}

static edp_td *td_start(edp_conn *c, const char *q, td_ledger *l) {
  edp_td_opts o;
  edp_td_opts_init(&o);
  o.queue = q;
  o.workers = 4;
  o.prefetch = 64;
  o.handler = td_handler;
  o.ud = l;
  edp_td *td = NULL;
  ck_assert_int_eq(edp_td_new(c, &o, &td), 0);
  return td;
}

static int td_distinct(td_ledger *l) {
  int n = 0;
  pthread_mutex_lock(&l->mu);
  for (int i = 0; i < TD_N; i++)
    n += l->calls[i] > 0;
  pthread_mutex_unlock(&l->mu);
  return n;
}

/* The order that survives a redelivery, per account: the handler saw
 * 0, 1, ..., a, then b, b+1, ..., TD_PER_ACCOUNT - 1 with b <= a + 1 (the
 * messages b..a, whose acks the fault lost, a second time and in order,
 * before anything newer), at most max_restarts such steps back per
 * account; never a step forward past the next one (no skip), never two
 * workers on one account. Returns the number of repeated calls. */
static int td_check_order(td_ledger *l, int max_restarts, int *restarts_out) {
  int repeats = 0, restarts = 0;
  ck_assert_int_eq(l->overlaps, 0);
  ck_assert_int_eq(l->bad_context, 0);
  for (int a = 0; a < TD_ACCOUNTS; a++) {
    int *s = l->seq[a], m = l->n_seq[a], r = 0;
    ck_assert_int_ge(m, TD_PER_ACCOUNT);
    ck_assert_int_eq(s[0], 0);
    int top = 0;
    for (int j = 1; j < m; j++) {
      if (s[j] == s[j - 1] + 1) {
        if (s[j] > top)
          top = s[j];
        continue;
      }
      ck_assert_msg(s[j] <= s[j - 1], "A%d: %d after %d (a skip)", a, s[j],
                    s[j - 1]);
      r++;
    }
    ck_assert_msg(r <= max_restarts, "A%d: %d steps back", a, r);
    ck_assert_int_eq(top, TD_PER_ACCOUNT - 1);
    ck_assert_int_eq(s[m - 1], TD_PER_ACCOUNT - 1);
    repeats += m - TD_PER_ACCOUNT;
    restarts += r;
  }
  *restarts_out = restarts;
  return repeats;
}

/* Runs until every id was handled, at most bound_ms; fault() is called
 * once when half of them were, between two runs. */
static void td_until_all(edp_td *td, td_ledger *l, long long bound_ms,
                         void (*fault)(edp_conn *c), edp_conn *c,
                         long long *t_fault) {
  long long t0 = t_now_ms();
  int faulted = fault == NULL;
  while (td_distinct(l) < TD_N) {
    ck_assert_msg(t_now_ms() - t0 < bound_ms, "only %d/%d handled",
                  td_distinct(l), TD_N);
    int rc = edp_td_run(td, 100);
    ck_assert_msg(rc == 0, "td_run: %s", edp_strerror(rc));
    if (!faulted && atomic_load(&l->handled) >= TD_N / 2) {
      *t_fault = t_now_ms();
      fault(c);
      faulted = 1;
    }
  }
}

static void td_account(edp_conn *admin, const char *q) {
  char dlq[300];
  snprintf(dlq, sizeof(dlq), "%s.dlq", q);
  ck_assert_uint_eq(depth(admin, q), 0);
  ck_assert_uint_eq(depth(admin, dlq), 0);
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  ck_assert_int_eq(edp_conn_queue_delete(admin, dlq), 0);
}

static void td_test(const char *name, int reset, void (*fault)(edp_conn *c),
                    const char *fault_name, const char *moment) {
  td_ledger *l = calloc(1, sizeof(*l));
  pthread_mutex_init(&l->mu, NULL);
  const char *q = t_unique(name);
  char ex[300];
  snprintf(ex, sizeof(ex), "%s.x", q);
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_td_declare(admin, ex, q, "trade.eq.*", NULL), 0);
  td_publish(admin, ex);
  char url[600] = "";
  fp_proxy *p = reset ? t_proxy("?heartbeat=2", url, sizeof(url)) : NULL;
  edp_conn *c = open_url(reset ? url : t_url(), "rows-td");
  edp_td *td = td_start(c, q, l);
  if (reset) {
    l->p = p;
    l->reset_at = TD_N / 2;
  }
  long long t_fault = 0;
  td_until_all(td, l, 30000, fault, c, &t_fault);
  if (reset)
    t_fault = l->t_fault;
  long long ms = t_now_ms() - t_fault;
  ck_assert_int_eq(edp_td_stop(td, 5000), 0);
  edp_td_stats st;
  edp_td_stats_get(td, &st);
  edp_td_destroy(&td);
  edp_conn_destroy(&c);
  if (reset)
    ck_assert_uint_ge(st.reconnects, 1);
  int restarts = 0;
  int repeats = td_check_order(l, 1, &restarts);
  td_account(admin, q);
  char ex_del[300];
  snprintf(ex_del, sizeof(ex_del), "%s", ex);
  edp_conn_exchange_delete(admin, ex_del);
  char outcome[300];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d handled, per account 0..a then b..%d with b <= "
           "a+1 (%d account(s) stepped back, %d calls repeated), never two "
           "workers on one account; %llu reconnect(s), queue and .dlq empty",
           TD_N, TD_N, TD_PER_ACCOUNT - 1, restarts, repeats,
           (unsigned long long)st.reconnects);
  t_fault_row("thread delegate", fault_name, moment, outcome, ms);
  edp_conn_destroy(&admin);
  fp_stop(&p);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

/* A TCP reset of the dispatcher's connection while workers run handlers
 * and a prefetch window is in flight. */
START_TEST(td_reset_mid_stream) {
  td_test("rows.td.rst", 1, NULL, "TCP reset (RST)",
          "4 workers busy, prefetch 64 in flight");
}
END_TEST

static void channel_error(edp_conn *c) {
  uint32_t e0 = edp_conn_epoch(c);
  ck_assert_int_eq(
      edp_conn_queue_inspect(c, t_unique("rows.missing"), NULL, NULL),
      EDP_ENOTFOUND);
  ck_assert_uint_gt(edp_conn_epoch(c), e0);
}

/* A channel error on the dispatcher's connection between two runs, with
 * messages on the workers and their acks still to come. */
START_TEST(td_channel_error_mid_stream) {
  td_test("rows.td.ch", 0, channel_error, "channel error",
          "between runs, workers busy, acks pending");
}
END_TEST

/* ---------- shared ledger for the multi-threaded patterns ---------- */

typedef struct ledger {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls[MAXIDS];
  int order[4 * MAXIDS]; /* ids in the order handlers finished */
  int n_order;
  int handled;
  int work_ms;
  int stopped_notfound, stopped, started, reconnected;
} ledger;

static ledger *ledger_new(int work_ms) {
  ledger *l = calloc(1, sizeof(*l));
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  l->work_ms = work_ms;
  return l;
}

static void ledger_free(ledger *l) {
  pthread_cond_destroy(&l->cv);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

static void ledger_record(ledger *l, const edp_delivery *d) {
  if (l->work_ms)
    sleep_ms(l->work_ms);
  int i = id_index(d->message_id);
  pthread_mutex_lock(&l->mu);
  if (i >= 0) {
    l->calls[i]++;
    if (l->n_order < 4 * MAXIDS)
      l->order[l->n_order++] = i;
  }
  l->handled++;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

/* Waits until pred(l, arg) holds, at most ms; returns whether it does. */
static int ledger_await(ledger *l, int (*pred)(ledger *l, int arg), int arg,
                        int ms) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&l->mu);
  int ok;
  while (!(ok = pred(l, arg)) &&
         pthread_cond_timedwait(&l->cv, &l->mu, &until) == 0)
    ;
  ok = pred(l, arg);
  pthread_mutex_unlock(&l->mu);
  return ok;
}

static int handled_at_least(ledger *l, int n) { return l->handled >= n; }

/* Every id in [from, from + n) handled at least once. */
static int all_of(ledger *l, int from, int n) {
  for (int i = from; i < from + n; i++)
    if (!l->calls[i])
      return 0;
  return 1;
}

static int all_below(ledger *l, int n) { return all_of(l, 0, n); }

static int all_of_prio(ledger *l, int unused) {
  (void)unused;
  return all_of(l, 1000, 5);
}

static int all_of_back(ledger *l, int unused) {
  (void)unused;
  return all_of(l, 2000, 50);
}

/* ---------- ambulance ---------- */

#define AMB_STD 200
#define AMB_PRIO 5
#define AMB_PRIO_FIRST 1000

static int amb_handler(void *ud, const edp_amb_job *job) {
  ledger_record(ud, job->d);
  return 0;
}

static int all_amb(ledger *l, int unused) {
  (void)unused;
  return all_of(l, 0, AMB_STD) && all_of(l, AMB_PRIO_FIRST, AMB_PRIO);
}

/* A TCP reset of every consumer connection of an ambulance receiver in the
 * middle of a standard backlog; priority messages published right after
 * the reset still overtake the backlog once the threads reconnected. */
START_TEST(amb_reset_then_priority_overtakes) {
  ledger *l = ledger_new(10);
  const char *base = t_unique("rows.amb");
  edp_conn *admin = admin_conn();
  edp_amb_sender_opts so;
  edp_amb_sender_opts_init(&so);
  so.mode = EDP_AMB_AMBULANCE;
  so.base = base;
  edp_amb_sender *snd = NULL;
  ck_assert_int_eq(edp_amb_sender_new(admin, &so, &snd), 0);
  for (int i = 0; i < AMB_STD; i++) {
    char id[16];
    snprintf(id, sizeof(id), "m%d", i);
    ck_assert_int_eq(edp_amb_send(snd, EDP_AMB_STANDARD, id, id, strlen(id)),
                     0);
  }
  ck_assert_int_eq(edp_amb_flush(snd), 0);
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = url;
  co.reconnect_max_ms = 20000;
  edp_amb_receiver_opts ro;
  edp_amb_receiver_opts_init(&ro);
  ro.mode = EDP_AMB_AMBULANCE;
  ro.base = base;
  ro.threads = 1;
  ro.conn = &co;
  ro.handler = amb_handler;
  ro.ud = l;
  edp_amb_receiver *r = NULL;
  char err[300];
  ck_assert_msg(edp_amb_receiver_start(&ro, &r, err, sizeof(err)) == 0, "%s",
                err);
  ck_assert(ledger_await(l, handled_at_least, 30, 10000));
  ck_assert_int_eq(fp_reset(p), 0);
  long long t_fault = t_now_ms();
  pthread_mutex_lock(&l->mu);
  int std_done_at_publish = l->n_order;
  pthread_mutex_unlock(&l->mu);
  for (int i = AMB_PRIO_FIRST; i < AMB_PRIO_FIRST + AMB_PRIO; i++) {
    char id[16];
    snprintf(id, sizeof(id), "m%d", i);
    ck_assert_int_eq(edp_amb_send(snd, EDP_AMB_PRIORITY, id, id, strlen(id)),
                     0);
  }
  ck_assert_int_eq(edp_amb_flush(snd), 0);
  ck_assert(ledger_await(l, all_of_prio, 0, 15000));
  long long prio_ms = t_now_ms() - t_fault;
  ck_assert(ledger_await(l, all_amb, 0, 30000));
  ck_assert_int_eq(edp_amb_receiver_error(r), 0);
  edp_amb_receiver_stats st;
  edp_amb_receiver_stats_get(r, &st);
  edp_amb_receiver_destroy(&r);
  /* Priority overtook: counted in finishing order, the standard messages
   * finished between the publish and the last priority one. */
  int last_prio = -1, std_before = 0;
  for (int k = 0; k < l->n_order; k++)
    if (l->order[k] >= AMB_PRIO_FIRST)
      last_prio = k;
  for (int k = std_done_at_publish; k < last_prio; k++)
    std_before += l->order[k] < AMB_PRIO_FIRST;
  int std_left = AMB_STD - std_done_at_publish;
  ck_assert_int_ge(std_left, 150);
  ck_assert_msg(std_before <= 40,
                "%d standard messages finished before the last priority one",
                std_before);
  ck_assert_uint_ge(st.reconnects, 1);
  char q[256];
  for (int kind = 0; kind < 2; kind++) {
    ck_assert_int_eq(
        edp_amb_queue_name(EDP_AMB_AMBULANCE, base, kind, q, sizeof(q)), 0);
    ck_assert_uint_eq(depth(admin, q), 0);
    edp_conn_queue_delete(admin, q);
  }
  snprintf(q, sizeof(q), "%s.dlq", base);
  ck_assert_uint_eq(depth(admin, q), 0);
  edp_conn_queue_delete(admin, q);
  int dup = l->n_order - AMB_STD - AMB_PRIO;
  char outcome[300];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d handled (%d twice), %llu reconnect(s); %d "
           "priority published after the reset all done in %lld ms with %d "
           "of %d waiting standard done before them; queues empty",
           AMB_STD + AMB_PRIO, AMB_STD + AMB_PRIO, dup,
           (unsigned long long)st.reconnects, AMB_PRIO, prio_ms, std_before,
           std_left);
  t_fault_row("ambulance (receiver)", "TCP reset (RST)",
              "standard backlog, priority right after", outcome, prio_ms);
  edp_amb_sender_destroy(&snd);
  edp_conn_destroy(&admin);
  fp_stop(&p);
  ledger_free(l);
}
END_TEST

/* ---------- supervisor ---------- */

static int sup_handler(void *ud, int consumer, const edp_delivery *d) {
  (void)consumer;
  ledger_record(ud, d);
  return 0;
}

static void sup_event(void *ud, const edp_sup_event *ev) {
  ledger *l = ud;
  pthread_mutex_lock(&l->mu);
  if (ev->type == EDP_SUP_STOPPED) {
    l->stopped++;
    l->stopped_notfound += ev->error == EDP_ENOTFOUND;
  } else if (ev->type == EDP_SUP_START) {
    l->started++;
  } else if (ev->type == EDP_SUP_RECONNECTED) {
    l->reconnected++;
  }
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

static edp_sup *sup_start(const char *url, const char *q, ledger *l) {
  edp_sup_opts o;
  edp_sup_opts_init(&o);
  o.url = url;
  o.queue = q;
  o.name = "rows-sup";
  o.interval_ms = 100;
  o.heartbeat_s = 2;
  o.policy.per_consumer = 50;
  o.policy.min = 1;
  o.policy.max = 4;
  o.policy.keep_alive_ms = 2000;
  o.handler = sup_handler;
  o.on_event = sup_event;
  o.ud = l;
  edp_sup *s = NULL;
  char err[300];
  ck_assert_msg(edp_sup_new(&o, &s, err, sizeof(err)) == 0, "%s", err);
  return s;
}

/* A TCP reset of every connection of the service (the supervisor's and
 * each consumer's) mid-drain: all reconnect by themselves, the queue is
 * drained, every id handled, none acked unhandled. */
START_TEST(sup_reset_mid_drain) {
  const int n = 600;
  ledger *l = ledger_new(2);
  const char *q = t_unique("rows.sup.rst");
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_conn_queue_declare(admin, q, NULL, NULL, 0, NULL, NULL),
                   0);
  publish_ids(admin, q, 0, n);
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_sup *s = sup_start(url, q, l);
  ck_assert(ledger_await(l, handled_at_least, n / 3, 15000));
  ck_assert_int_eq(fp_reset(p), 0);
  long long t_fault = t_now_ms();
  pthread_mutex_lock(&l->mu);
  int before = l->handled;
  pthread_mutex_unlock(&l->mu);
  ck_assert(ledger_await(l, all_below, n, 30000));
  long long ms = t_now_ms() - t_fault;
  edp_sup_stats st;
  edp_sup_stats_get(s, &st);
  ck_assert_int_ge(st.live, 1);
  edp_sup_stop(s);
  edp_sup_stats_get(s, &st);
  edp_sup_destroy(&s);
  ck_assert_uint_ge(st.consumer_reconnects, 1);
  ck_assert_uint_ge(st.sup_reconnects, 1);
  ck_assert_int_gt(l->handled, before);
  ck_assert_uint_eq(depth(admin, q), 0);
  char outcome[300];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d handled (%d twice), %llu consumer + %llu "
           "supervisor reconnect(s), queue drained to 0, peak %d consumers",
           n, n, l->handled - n, (unsigned long long)st.consumer_reconnects,
           (unsigned long long)st.sup_reconnects, st.peak);
  t_fault_row("supervisor", "TCP reset (RST)", "mid-drain, every connection",
              outcome, ms);
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_conn_destroy(&admin);
  fp_stop(&p);
  ledger_free(l);
}
END_TEST

static int started_at_least(ledger *l, int n) { return l->started >= n; }

static int consumers_gone(ledger *l, int n) {
  return l->stopped_notfound >= 1 && l->stopped >= n;
}

/* The service's queue deleted under its consumers mid-drain: each
 * consumer stops with EDP_ENOTFOUND (reported in its STOPPED event); the
 * supervisor, which declared the queue, brings it back and starts one
 * consumer that drains what is published next. */
START_TEST(sup_queue_deleted_then_back) {
  const int n = 200;
  ledger *l = ledger_new(5);
  const char *q = t_unique("rows.sup.del");
  edp_conn *admin = admin_conn();
  ck_assert_int_eq(edp_conn_queue_declare(admin, q, NULL, NULL, 0, NULL, NULL),
                   0);
  publish_ids(admin, q, 0, n);
  edp_sup *s = sup_start(t_url(), q, l);
  ck_assert(ledger_await(l, handled_at_least, 20, 10000));
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  long long t_fault = t_now_ms();
  pthread_mutex_lock(&l->mu);
  int started = l->started;
  pthread_mutex_unlock(&l->mu);
  edp_sup_stats st;
  edp_sup_stats_get(s, &st);
  ck_assert(ledger_await(l, consumers_gone, started, 5000));
  long long stop_ms = t_now_ms() - t_fault;
  /* The supervisor's next reading meets the 404, which closes its
   * channel; the restore replays its topology, which declares the queue
   * again (it declared it at start). A consumer then starts on the new,
   * empty queue: the service recovers by itself, with one start, not a
   * start/fail storm. */
  ck_assert(ledger_await(l, started_at_least, started + 1, 5000));
  long long back_ms = t_now_ms() - t_fault;
  sleep_ms(500);
  pthread_mutex_lock(&l->mu);
  int starts = l->started - started;
  pthread_mutex_unlock(&l->mu);
  ck_assert_int_eq(starts, 1);
  edp_sup_stats_get(s, &st);
  ck_assert_int_eq(st.live, 1);
  long long t_back = t_now_ms();
  publish_ids(admin, q, 2000, 50);
  ck_assert(ledger_await(l, all_of_back, 0, 10000));
  long long drain_ms = t_now_ms() - t_back;
  edp_sup_stop(s);
  edp_sup_destroy(&s);
  ck_assert_uint_eq(depth(admin, q), 0);
  for (int i = 0; i < n; i++)
    ck_assert_int_le(l->calls[i], 1);
  char outcome[300];
  snprintf(outcome, sizeof(outcome),
           "recovered: every consumer stopped with ENOTFOUND in %lld ms; "
           "the supervisor's 404 reading restored its channel, which "
           "declared the queue again; 1 consumer started at %lld ms; 50/50 "
           "published afterwards drained in %lld ms, queue 0 (messages "
           "queued at the delete went with it)",
           stop_ms, back_ms, drain_ms);
  t_fault_row("supervisor", "queue deleted", "mid-drain, consumers busy",
              outcome, stop_ms);
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_conn_destroy(&admin);
  ledger_free(l);
}
END_TEST

Suite *faults_patterns_suite(void) {
  Suite *s = suite_create("faults_patterns");
  TCase *tc = tcase_create("patterns");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, fwd_reset_mid_stream);
  tcase_add_test(tc, fwd_channel_error_mid_stream);
  tcase_add_test(tc, fwd_queue_deleted_under_receiver);
  tcase_add_test(tc, fwd_program_sigterm_in_handler);
  tcase_add_test(tc, td_reset_mid_stream);
  tcase_add_test(tc, td_channel_error_mid_stream);
  tcase_add_test(tc, amb_reset_then_priority_overtakes);
  tcase_add_test(tc, sup_reset_mid_drain);
  tcase_add_test(tc, sup_queue_deleted_then_back);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(faults_patterns_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
