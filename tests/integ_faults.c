/*
 * integ_faults.c - the recovery core under faults nobody asked for, against
 * a real broker: channel errors in the middle of synchronous calls with
 * confirms and deliveries in flight, queues deleted under consumers and
 * while the connection was down, a poison publish, a lost connection
 * under wait_confirms, a memory alarm, a consumer_timeout.
 *
 * Every test checks by accounting (which ids were confirmed, returned,
 * nacked, delivered, acked; what the queue holds afterwards), never by
 * reading logs, and each writes one row of the fault matrix
 * (docs/faults.md) when EDP_FAULTS_REPORT names a file.
 *
 * Tiers: `make check` runs the representative tier; EDP_FAULTS_FULL=1
 * (`make faults`) adds the slow faults (consumer_timeout: the broker checks
 * it once a minute).
 */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "edp.h"
#include "faultproxy.h"
#include "testlib.h"

/* ---------- accounting ---------- */

#define MAXIDS 4096

typedef struct stopper {
  int fd, after_ms;
} stopper;

static void *stop_later(void *arg) {
  stopper *s = arg;
  struct timespec ts = {s->after_ms / 1000, (s->after_ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  uint64_t one = 1;
  ssize_t w = write(s->fd, &one, sizeof(one));
  (void)w;
  return NULL;
}

typedef struct ledger {
  stopper *stop_when_blocked; /* fires its fd after_ms after "blocked" */
  pthread_t stopper_thread;
  int stopper_started;
  long long blocked_at;
  int ack[MAXIDS], nack[MAXIDS], ret[MAXIDS];
  int n_ack, n_nack, n_ret, unknown;
  int events[8];
  char cancelled_queue[256];
  char renamed_to[256];
  int renames;
} ledger;

static int id_index(const char *id) {
  /* ids are "m<N>" */
  if (!id || id[0] != 'm')
    return -1;
  int i = atoi(id + 1);
  return i >= 0 && i < MAXIDS ? i : -1;
}

static void on_confirm(void *ud, const edp_confirm *cf) {
  ledger *l = ud;
  int i = id_index(cf->message_id);
  if (i < 0) {
    l->unknown++;
    return;
  }
  if (cf->status == EDP_CONFIRM_ACK) {
    l->ack[i]++;
    l->n_ack++;
  } else if (cf->status == EDP_CONFIRM_NACK) {
    l->nack[i]++;
    l->n_nack++;
  } else {
    l->ret[i]++;
    l->n_ret++;
  }
}

static void on_event(void *ud, const edp_conn_event *ev) {
  ledger *l = ud;
  if (ev->type > 0 && ev->type < 8)
    l->events[ev->type]++;
  if (ev->type == EDP_CONN_BLOCKED && l->stop_when_blocked &&
      !l->stopper_started) {
    l->blocked_at = t_now_ms();
    l->stopper_started = !pthread_create(&l->stopper_thread, NULL, stop_later,
                                         l->stop_when_blocked);
  }
  if (ev->type == EDP_CONN_CONSUMER_CANCELLED && ev->queue)
    snprintf(l->cancelled_queue, sizeof(l->cancelled_queue), "%s", ev->queue);
}

static void on_rename(void *ud, const char *old_name, const char *new_name) {
  ledger *l = ud;
  (void)old_name;
  l->renames++;
  snprintf(l->renamed_to, sizeof(l->renamed_to), "%s", new_name);
}

/* ---------- helpers ---------- */

static edp_conn *open_url(const char *url, const char *name, ledger *l,
                          int stop_fd) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.client_name = name;
  o.reconnect_max_ms = 20000;
  o.stop_fd = stop_fd;
  edp_conn *c = NULL;
  char why[300];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  ck_assert_msg(rc == 0, "open: %s", why);
  if (l) {
    edp_conn_on_confirm(c, on_confirm, l);
    edp_conn_on_event(c, on_event, l);
    edp_conn_on_queue_renamed(c, on_rename, l);
  }
  return c;
}

static edp_conn *open_conn(const char *name, ledger *l, int stop_fd) {
  return open_url(t_url(), name, l, stop_fd);
}

/* Every message_id in q, consumed (and acked) through a fresh direct
 * connection; counts[i] says how often m<i> was there. */
static int drain_ids(const char *q, int *counts, int n) {
  edp_conn *c = open_conn("f-drain", NULL, -1);
  ck_assert_int_eq(edp_conn_qos(c, 500), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  int total = 0;
  edp_delivery d;
  while (edp_conn_receive(c, &d, 1500) == 0) {
    int i = id_index(d.message_id);
    if (i >= 0 && i < n)
      counts[i]++;
    total++;
    ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
    edp_delivery_clear(&d);
  }
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  return total;
}

static int publish_id(edp_conn *c, const char *exchange, const char *rk, int i,
                      int mandatory) {
  char id[16];
  snprintf(id, sizeof(id), "m%d", i);
  edp_msg m;
  edp_msg_init(&m);
  m.exchange = exchange;
  m.routing_key = rk;
  m.body = id;
  m.body_len = strlen(id);
  m.message_id = id;
  m.mandatory = mandatory;
  return edp_conn_publish(c, &m, NULL);
}

static uint32_t depth(edp_conn *c, const char *q) {
  uint32_t n = 0;
  ck_assert_int_eq(edp_conn_queue_inspect(c, q, &n, NULL), 0);
  return n;
}

/* ---------- channel errors inside synchronous calls ---------- */

/* Confirms in flight when a passive declare of a missing queue closes the
 * channel: the acks rabbitmq-c queued during the RPC belong to the old
 * channel. The old core applied them to the new channel's numbers, so an
 * unroutable message published after the reopen was reported acked. */
START_TEST(channel_error_with_confirms_in_flight) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *c = open_conn("f-stale-acks", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.acks");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  long long t0 = t_now_ms();
  const int n = 300;
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(publish_id(c, "", q, i, 0), 0);
  uint32_t e0 = edp_conn_epoch(c);
  ck_assert_int_eq(
      edp_conn_queue_inspect(c, t_unique("faults.missing"), NULL, NULL),
      EDP_ENOTFOUND);
  ck_assert_uint_gt(edp_conn_epoch(c), e0);
  ck_assert_int_eq(l->events[EDP_CONN_CHANNEL_RESTORED], 1);
  /* First message on the new channel: unroutable, so it must come back
   * returned, never acked. */
  ck_assert_int_eq(publish_id(c, "", t_unique("faults.nowhere"), n, 1), 0);
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 15000), 0);
  ck_assert_int_eq(l->ret[n], 1);
  ck_assert_int_eq(l->ack[n], 0);
  ck_assert_int_eq(l->unknown, 0);
  /* Every message confirmed exactly once; the broker holds each at least
   * once (those whose ack the close overtook were published again). */
  for (int i = 0; i < n; i++)
    ck_assert_msg(l->ack[i] == 1 && !l->nack[i] && !l->ret[i],
                  "m%d: ack %d nack %d ret %d", i, l->ack[i], l->nack[i],
                  l->ret[i]);
  uint32_t d = depth(c, q);
  ck_assert_uint_ge(d, (uint32_t)n);
  ck_assert_uint_le(d, (uint32_t)(2 * n));
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d confirmed once, %u in queue (%u dup), unroutable "
           "returned not acked",
           n, n, d, d - n);
  t_fault_row("core (edp_conn)", "channel error in a sync call",
              "confirms in flight", outcome, t_now_ms() - t0);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

/* Deliveries in flight when a channel error closes the channel: those
 * rabbitmq-c queued for the old channel must not come out stamped with the
 * new epoch (acking them would ack the broker's redelivered copies before
 * anyone processed them, then 406 unknown delivery tag). */
START_TEST(channel_error_with_deliveries_in_flight) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *c = open_conn("f-stale-deliveries", l, -1);
  const char *q = t_unique("faults.deliveries");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  const int n = 200;
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(publish_id(c, "", q, i, 0), 0);
  ck_assert_int_eq(edp_conn_qos(c, 50), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  long long t0 = t_now_ms();
  edp_delivery held;
  ck_assert_int_eq(edp_conn_receive(c, &held, 5000), 0);
  /* Let the prefetch window fill rabbitmq-c's frame queue. */
  ck_assert_int_eq(
      edp_conn_queue_inspect(c, t_unique("faults.missing"), NULL, NULL),
      EDP_ENOTFOUND);
  uint32_t epoch = edp_conn_epoch(c);
  ck_assert_int_eq(edp_conn_ack(c, held.epoch, held.tag, 0), EDP_ESTALE);
  int seen[MAXIDS] = {0};
  int processed = 0, stale = 0;
  while (processed < n) {
    edp_delivery d;
    int rc = edp_conn_receive(c, &d, 10000);
    ck_assert_msg(rc == 0, "receive: %s after %d", edp_strerror(rc), processed);
    int rc_ack = edp_conn_ack(c, d.epoch, d.tag, 0);
    if (rc_ack == EDP_ESTALE) {
      stale++;
    } else {
      ck_assert_int_eq(rc_ack, 0);
      ck_assert_uint_eq(d.epoch, epoch);
      int i = id_index(d.message_id);
      ck_assert_int_ge(i, 0);
      ck_assert_int_eq(seen[i]++, 0);
      processed++;
    }
    edp_delivery_clear(&d);
  }
  /* No 406 on an ack: the channel never closed again. */
  ck_assert_uint_eq(edp_conn_epoch(c), epoch);
  ck_assert_int_eq(stale, 0);
  ck_assert_uint_eq(depth(c, q), 0);
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d processed once, old delivery ack refused "
           "(ESTALE), no 406",
           processed, n);
  t_fault_row("core (edp_conn)", "channel error in a sync call",
              "deliveries in flight", outcome, t_now_ms() - t0);
  edp_delivery_clear(&held);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

/* The watch client's queue: exclusive, auto-delete, server-named, with a
 * consumer. A channel error cancels the consumer, which deletes the queue;
 * the old core then recursed (restore -> 404 -> restore ...) until SIGSEGV.
 * Now the queue is declared anew, the consumer follows the new name. */
START_TEST(channel_error_deletes_autodelete_queue) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *c = open_conn("f-autodelete", l, -1);
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  qo.durable = 0;
  qo.exclusive = 1;
  qo.auto_delete = 1;
  char q[256];
  ck_assert_int_eq(edp_conn_queue_declare(c, "", &qo, q, sizeof(q), NULL, NULL),
                   0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  long long t0 = t_now_ms();
  uint32_t e0 = edp_conn_epoch(c);
  ck_assert_int_eq(
      edp_conn_queue_inspect(c, t_unique("faults.missing"), NULL, NULL),
      EDP_ENOTFOUND);
  ck_assert(edp_conn_is_open(c));
  /* One channel for the error, one for the passive check that found the
   * queue gone: bounded, no storm of channel openings. */
  ck_assert_uint_le(edp_conn_epoch(c) - e0, 3);
  ck_assert_int_eq(l->renames, 1);
  ck_assert_str_ne(l->renamed_to, q);
  ck_assert_int_eq(publish_id(c, "", l->renamed_to, 1, 0), 0);
  edp_delivery d;
  ck_assert_int_eq(edp_conn_receive(c, &d, 5000), 0);
  ck_assert_str_eq(d.message_id, "m1");
  ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
  edp_delivery_clear(&d);
  t_fault_row("core (edp_conn)", "channel error in a sync call",
              "consumer on an auto-delete queue",
              "recovered: queue declared anew, consumer follows, 1 rename, "
              "<= 3 channel openings",
              t_now_ms() - t0);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

/* A consumer whose queue was deleted while the connection was down: the
 * reconnect drops it, reports it once, and the rest of the session works. */
START_TEST(consumer_queue_deleted_while_down) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *admin = open_conn("f-admin", NULL, -1);
  const char *gone = t_unique("faults.gone");
  const char *stays = t_unique("faults.stays");
  ck_assert_int_eq(
      edp_conn_queue_declare(admin, gone, NULL, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(
      edp_conn_queue_declare(admin, stays, NULL, NULL, 0, NULL, NULL), 0);
  edp_conn *c = open_conn("f-down", l, -1);
  ck_assert_int_eq(edp_conn_consume(c, gone, NULL, NULL, 0), 0);
  ck_assert_int_eq(edp_conn_consume(c, stays, NULL, NULL, 0), 0);
  long long t0 = t_now_ms();
  edp_conn_abandon(c);
  ck_assert_int_eq(edp_conn_queue_delete(admin, gone), 0);
  ck_assert_int_eq(edp_conn_reconnect(c), 0);
  ck_assert_int_eq(l->events[EDP_CONN_CONSUMER_CANCELLED], 1);
  ck_assert_str_eq(l->cancelled_queue, gone);
  ck_assert_int_eq(l->events[EDP_CONN_RECONNECTED], 1);
  edp_delivery d;
  ck_assert_int_eq(edp_conn_receive(c, &d, 1000), EDP_ENOTFOUND);
  ck_assert_int_eq(publish_id(admin, "", stays, 7, 0), 0);
  ck_assert_int_eq(edp_conn_receive(c, &d, 5000), 0);
  ck_assert_str_eq(d.message_id, "m7");
  ck_assert_int_eq(edp_conn_ack(c, d.epoch, d.tag, 0), 0);
  edp_delivery_clear(&d);
  t_fault_row("core (edp_conn)", "queue deleted", "while disconnected",
              "consumer dropped and reported once (event + ENOTFOUND), "
              "other consumer restored",
              t_now_ms() - t0);
  ck_assert_int_eq(edp_conn_queue_delete(admin, stays), 0);
  edp_conn_destroy(&c);
  edp_conn_destroy(&admin);
  free(l);
}
END_TEST

/* A queue deleted under its consumer: basic.cancel from the broker. */
START_TEST(queue_deleted_under_consumer) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *admin = open_conn("f-admin2", NULL, -1);
  const char *q = t_unique("faults.deleted");
  ck_assert_int_eq(edp_conn_queue_declare(admin, q, NULL, NULL, 0, NULL, NULL),
                   0);
  edp_conn *c = open_conn("f-cancel", l, -1);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  long long t0 = t_now_ms();
  ck_assert_int_eq(edp_conn_queue_delete(admin, q), 0);
  edp_delivery d;
  ck_assert_int_eq(edp_conn_receive(c, &d, 5000), EDP_ENOTFOUND);
  ck_assert_int_eq(l->events[EDP_CONN_CONSUMER_CANCELLED], 1);
  ck_assert_str_eq(l->cancelled_queue, q);
  /* Reported once; the connection stays usable and reconnects without
   * bringing the consumer back. */
  ck_assert_int_eq(edp_conn_receive(c, &d, 300), EDP_ETIMEOUT);
  ck_assert_int_eq(edp_conn_reconnect(c), 0);
  ck_assert_int_eq(l->events[EDP_CONN_CONSUMER_CANCELLED], 1);
  t_fault_row("core (edp_conn)", "queue deleted", "under a consumer",
              "reported once (event consumer_cancelled + ENOTFOUND), not "
              "restored",
              t_now_ms() - t0);
  edp_conn_destroy(&c);
  edp_conn_destroy(&admin);
  free(l);
}
END_TEST

/* ---------- lost connection, poison publish ---------- */

/* After a lost connection the unconfirmed messages sit in the lost list:
 * waiting for confirms must say the connection is gone, not succeed. The
 * publishes go through a stalled proxy, so no confirm can come before the
 * loss (on a direct connection the broker confirmed one of the five
 * first, once in CI). */
START_TEST(wait_confirms_after_loss) {
  ledger *l = calloc(1, sizeof(*l));
  char url[600];
  fp_proxy *p = t_proxy(NULL, url, sizeof(url));
  edp_conn *c = open_url(url, "f-waitloss", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.waitloss");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(fp_stall(p), 0);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(publish_id(c, "", q, i, 0), 0);
  long long t0 = t_now_ms();
  edp_conn_abandon(c);
  ck_assert_uint_eq(edp_conn_unconfirmed(c), 5);
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 1000), EDP_ECLOSED);
  ck_assert_int_eq(l->events[EDP_CONN_LOST], 1);
  /* The stalled bytes may still reach the broker on the old connection:
   * at least once, so the queue holds 5 or more. */
  ck_assert_int_eq(fp_pass(p), 0);
  edp_recovery r = {0};
  ck_assert_int_eq(edp_conn_wait_confirms_recover(c, 0, 10000, &r), 0);
  ck_assert_uint_eq(r.reconnects, 1);
  ck_assert_uint_eq(r.republished, 5);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(l->ack[i], 1);
  ck_assert_uint_ge(depth(c, q), 5);
  t_fault_row("core (edp_conn)", "connection lost", "confirms in flight",
              "wait_confirms returns ECLOSED; recover republishes 5/5, all "
              "confirmed",
              t_now_ms() - t0);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  fp_stop(&p);
  free(l);
}
END_TEST

/* A publish to a missing exchange closes the channel (404). The messages
 * to it are reported nacked, the others confirmed; nothing loops. */
START_TEST(publish_to_missing_exchange) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *c = open_conn("f-noexchange", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.good");
  const char *ex = t_unique("faults.noexchange");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  long long t0 = t_now_ms();
  int bad = 0;
  for (int i = 0; i < 100; i++) {
    int to_bad = i % 10 == 5;
    bad += to_bad;
    int rc = publish_id(c, to_bad ? ex : "", to_bad ? "k" : q, i, 0);
    ck_assert_msg(rc == 0, "publish %d: %s", i, edp_strerror(rc));
  }
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 20000), 0);
  for (int i = 0; i < 100; i++) {
    if (i % 10 == 5)
      ck_assert_msg(l->nack[i] == 1 && !l->ack[i], "m%d to the missing one", i);
    else
      ck_assert_msg(l->ack[i] == 1 && !l->nack[i], "m%d: ack %d nack %d", i,
                    l->ack[i], l->nack[i]);
  }
  ck_assert_int_ge(l->events[EDP_CONN_CHANNEL_RESTORED], 1);
  ck_assert_int_le(l->events[EDP_CONN_CHANNEL_RESTORED], bad);
  ck_assert_uint_ge(depth(c, q), 90);
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "%d to the missing exchange nacked, 90/90 others confirmed, %d "
           "channel restores",
           bad, l->events[EDP_CONN_CHANNEL_RESTORED]);
  t_fault_row("core (edp_conn)", "poison publish (404 exchange)",
              "publish burst", outcome, t_now_ms() - t0);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

/* A poison publish the close's text does not name (403: an internal
 * exchange): the channel closes on every republish of it, so after three
 * closes in a row with no ack between them the messages still unconfirmed
 * are reported nacked instead of being published a fourth time. Every
 * message ends confirmed or nacked exactly once; nothing loops. */
START_TEST(poison_publish_unnamed_by_the_close) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn *c = open_conn("f-poison", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.poison");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  long long t0 = t_now_ms();
  const int n = 20, bad = 10;
  for (int i = 0; i < n; i++) {
    int rc = publish_id(c, i == bad ? "amq.rabbitmq.trace" : "",
                        i == bad ? "k" : q, i, 0);
    ck_assert_msg(rc == 0, "publish %d: %s", i, edp_strerror(rc));
  }
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 20000), 0);
  /* Settled as soon as the last close was: the wait did not sit out its
   * timeout with nothing left (it did, before this test). */
  ck_assert_int_lt(t_now_ms() - t0, 5000);
  ck_assert_int_eq(edp_conn_reply_code(c), 403);
  ck_assert_int_eq(l->nack[bad], 1);
  ck_assert_int_eq(l->ack[bad], 0);
  int acked = 0;
  for (int i = 0; i < n; i++) {
    ck_assert_msg(l->ack[i] + l->nack[i] == 1, "m%d: ack %d nack %d", i,
                  l->ack[i], l->nack[i]);
    acked += l->ack[i];
  }
  /* At least three closes (one per publish of the poison) and bounded:
   * an ack in between starts the count again, so a close per message at
   * worst, never a loop. */
  int restores = l->events[EDP_CONN_CHANNEL_RESTORED];
  ck_assert_int_ge(restores, 3);
  ck_assert_int_le(restores, n + 1);
  ck_assert_uint_ge(depth(c, q), (uint32_t)acked);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "%d channel closes, then the %d left unconfirmed (the poison "
           "among them, and good ones whose confirm the close swallowed) "
           "reported nacked; %d/%d acked; none both",
           restores, n - acked, acked, n);
  t_fault_row("core (edp_conn)", "poison publish (403 internal exchange)",
              "publish burst", outcome, t_now_ms() - t0);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

/* ---------- memory alarm ---------- */

/* set_vm_memory_high_watermark 0: the broker blocks publishers and stops
 * reading their sockets. The old core kept writing and hung in a send that
 * no stop fd reached, destroy included. */
START_TEST(memory_alarm_blocks_publisher) {
  ledger *l = calloc(1, sizeof(*l));
  int stop = eventfd(0, EFD_CLOEXEC);
  edp_conn *c = open_conn("f-alarm", l, stop);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.alarm");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0"), 0);
  long long t0 = t_now_ms();
  /* Publish until the broker says blocked; a 64 KiB body fills socket
   * buffers quickly if we were still writing blind. */
  static char body[65536];
  memset(body, 'x', sizeof(body));
  int sent = 0, rc = 0;
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = q;
  m.body = body;
  m.body_len = sizeof(body);
  char id[16];
  m.message_id = id;
  stopper s = {stop, 500};
  l->stop_when_blocked = &s;
  while (t_now_ms() - t0 < 30000) {
    snprintf(id, sizeof(id), "m%d", sent);
    rc = edp_conn_publish(c, &m, NULL);
    if (rc)
      break;
    sent++;
  }
  long long stopped_at = t_now_ms();
  ck_assert_msg(l->stopper_started, "never blocked after %d messages", sent);
  ck_assert_int_eq(rc, EDP_ESTOPPED);
  ck_assert_int_eq(l->events[EDP_CONN_BLOCKED], 1);
  pthread_join(l->stopper_thread, NULL);
  /* The stop came 500 ms after "blocked": honoured well within 2 s. */
  long long stop_ms = stopped_at - l->blocked_at - 500;
  ck_assert_int_lt(stop_ms, 2000);
  long long blocked_ms = l->blocked_at - t0;
  /* Stopping is prompt, and so is destroy on a blocked connection. */
  long long td = t_now_ms();
  edp_conn_destroy(&c);
  long long destroy_ms = t_now_ms() - td;
  ck_assert_int_lt(destroy_ms, 2000);
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0.4"), 0);
  /* After the alarm: a new connection publishes and gets confirms. */
  uint64_t zero;
  ssize_t r = read(stop, &zero, sizeof(zero));
  (void)r;
  memset(l, 0, sizeof(*l));
  c = open_conn("f-alarm2", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(publish_id(c, "", q, i, 0), 0);
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 20000), 0);
  ck_assert_int_eq(l->n_ack, 10);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "blocked event after %d msgs; publish waits, stop_fd honoured "
           "in %lld ms (ESTOPPED), destroy %lld ms; after the alarm 10/10 "
           "confirmed",
           sent, stop_ms, destroy_ms);
  t_fault_row("core (edp_conn)", "memory alarm", "publish burst", outcome,
              blocked_ms);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  close(stop);
  free(l);
}
END_TEST

/* A blocked publish with a deadline gives EDP_ETIMEOUT, and resumes when
 * the alarm clears. */
static void alarm_deadline_then_resume(const char *fault, const char *raise,
                                       const char *clear) {
  ledger *l = calloc(1, sizeof(*l));
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  o.client_name = "f-alarm-deadline";
  o.blocked_timeout_ms = 700;
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  edp_conn_on_confirm(c, on_confirm, l);
  edp_conn_on_event(c, on_event, l);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.alarm2");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(t_ctl(raise), 0);
  long long t0 = t_now_ms();
  int i = 0, rc = 0;
  while (t_now_ms() - t0 < 30000 && !(rc = publish_id(c, "", q, i, 0)))
    i++;
  ck_assert_int_eq(rc, EDP_ETIMEOUT);
  ck_assert(edp_conn_is_blocked(c));
  ck_assert_int_eq(t_ctl(clear), 0);
  /* The one that timed out was not sent: send it again, then the rest. */
  for (int k = i; k < i + 10; k++) {
    rc = publish_id(c, "", q, k, 0);
    ck_assert_msg(rc == 0, "after unblock: %s", edp_strerror(rc));
  }
  ck_assert_int_eq(edp_conn_wait_confirms(c, 0, 20000), 0);
  ck_assert(!edp_conn_is_blocked(c));
  ck_assert_int_eq(l->events[EDP_CONN_UNBLOCKED], 1);
  ck_assert_int_eq(l->n_ack, i + 10);
  ck_assert_int_eq(l->n_nack, 0);
  ck_assert_uint_eq(depth(c, q), (uint32_t)(i + 10));
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "ETIMEOUT after blocked_timeout_ms; after unblock %d/%d "
           "confirmed, exactly once",
           i + 10, i + 10);
  t_fault_row("core (edp_conn)", fault, "deadline, then cleared", outcome,
              t_now_ms() - t0);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(l);
}

START_TEST(memory_alarm_deadline_then_resume) {
  alarm_deadline_then_resume("memory alarm", "set_vm_memory_high_watermark 0",
                             "set_vm_memory_high_watermark 0.4");
}
END_TEST

START_TEST(disk_alarm_deadline_then_resume) {
  alarm_deadline_then_resume("disk alarm", "set_disk_free_limit 100000GB",
                             "set_disk_free_limit 50MB");
}
END_TEST

/* The program, not just the library: edp-forward-sender under a memory
 * alarm says "blocked" as a --json event and honours SIGTERM within 2 s
 * (exit 130), where the old one hung in a write. */
START_TEST(forward_sender_sigterm_while_blocked) {
  const char *q = t_unique("faults.prog");
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0"), 0);
  char *argv[] = {(char *)t_bin("edp-forward-sender"),
                  "--url",
                  (char *)t_url(),
                  "--queue",
                  (char *)q,
                  "--count",
                  "1000000",
                  "--json",
                  NULL};
  t_proc p;
  ck_assert_int_eq(t_spawn(&p, argv, NULL), 0);
  char line[4096];
  int blocked = 0;
  long long t0 = t_now_ms();
  while (!blocked && t_now_ms() - t0 < 30000 &&
         t_readline(&p, line, sizeof(line), 30000) == 1)
    blocked = strstr(line, "\"event\":\"blocked\"") != NULL;
  ck_assert_msg(blocked, "no blocked event; last line: %s", line);
  long long t_term = t_now_ms();
  t_signal(&p, SIGTERM);
  /* Drain its output so a full pipe can't hold it up, bounded. */
  while (t_readline(&p, line, sizeof(line), 3000) == 1)
    ;
  int code = t_wait(&p, 3000);
  long long exit_ms = t_now_ms() - t_term;
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0.4"), 0);
  ck_assert_int_eq(code, 130);
  ck_assert_int_lt(exit_ms, 2000);
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "{\"event\":\"blocked\"} emitted; SIGTERM -> exit 130 in %lld ms",
           exit_ms);
  t_fault_row("forwarding (edp-forward-sender)", "memory alarm",
              "publish burst, then SIGTERM", outcome, exit_ms);
  edp_conn *c = open_conn("f-prog-cleanup", NULL, -1);
  edp_conn_queue_delete(c, q);
  edp_conn_destroy(&c);
}
END_TEST

/* ---------- network faults (tests/faultproxy) ---------- */

typedef struct burst {
  int n, fault_at;
  void (*fault)(fp_proxy *p);
  fp_proxy *p;
} burst;

static void do_reset(fp_proxy *p) { ck_assert_int_eq(fp_reset(p), 0); }
static void do_cut(fp_proxy *p) {
  /* Mid-frame: 1000 more bytes toward the broker, then the wire ends. */
  ck_assert_int_eq(fp_cut_once(p, 1000, FP_C2S), 0);
}

/* A persistent publish burst with a confirm window, the fault injected in
 * the middle: every message ends confirmed exactly once by the callback,
 * nothing confirmed is missing from the queue, duplicates only from the
 * republish. */
static void publish_burst_through(const char *fault_name, burst *b,
                                  int pass_after) {
  ledger *l = calloc(1, sizeof(*l));
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  b->p = p;
  edp_conn *c = open_url(url, "f-burst", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.burst");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  long long t0 = t_now_ms(), t_fault = 0;
  edp_recovery r = {0};
  char body[256];
  memset(body, 'b', sizeof(body));
  for (int i = 0; i < b->n; i++) {
    if (i == b->fault_at) {
      b->fault(p);
      t_fault = t_now_ms();
    }
    if (pass_after && i == b->fault_at + pass_after)
      ck_assert_int_eq(fp_pass(p), 0);
    char id[16];
    snprintf(id, sizeof(id), "m%d", i);
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.body = body;
    m.body_len = sizeof(body);
    m.message_id = id;
    m.persistent = 1;
    int rc = edp_conn_publish_window(c, &m, 128, 10000, &r);
    ck_assert_msg(rc == 0, "publish %d: %s", i, edp_strerror(rc));
  }
  ck_assert_int_eq(edp_conn_wait_confirms_recover(c, 0, 15000, &r), 0);
  long long ms = t_now_ms() - t_fault;
  ck_assert_uint_ge(r.reconnects, 1);
  int nacked = 0;
  for (int i = 0; i < b->n; i++) {
    ck_assert_msg(l->ack[i] + l->nack[i] == 1, "m%d: ack %d nack %d", i,
                  l->ack[i], l->nack[i]);
    nacked += l->nack[i];
  }
  ck_assert_int_eq(nacked, 0);
  edp_conn_destroy(&c);
  int *counts = calloc((size_t)b->n, sizeof(int));
  int total = drain_ids(q, counts, b->n);
  for (int i = 0; i < b->n; i++)
    ck_assert_msg(counts[i] >= 1, "confirmed m%d is not in the queue", i);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d confirmed once, all in the queue (%d dup), %llu "
           "reconnect(s), %llu republished",
           b->n, b->n, total - b->n, (unsigned long long)r.reconnects,
           (unsigned long long)r.republished);
  t_fault_row("core (edp_conn)", fault_name,
              "publish burst, confirms in flight", outcome, ms);
  (void)t0;
  fp_stop(&p);
  free(counts);
  free(l);
}

START_TEST(tcp_reset_in_publish_burst) {
  burst b = {.n = 3000, .fault_at = 1500, .fault = do_reset};
  publish_burst_through("TCP reset (RST)", &b, 0);
}
END_TEST

START_TEST(tcp_cut_mid_frame_in_publish_burst) {
  burst b = {.n = 3000, .fault_at = 1500, .fault = do_cut};
  /* The cut closes this connection; the reconnect passes. */
  publish_burst_through("TCP cut mid-frame", &b, 0);
}
END_TEST

/* A half-open peer: nothing passes, nothing closes. Heartbeats (2 s) must
 * find it; then the network comes back and the publisher recovers. */
START_TEST(stalled_network_found_by_heartbeat) {
  ledger *l = calloc(1, sizeof(*l));
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_conn *c = open_url(url, "f-stall", l, -1);
  ck_assert_int_eq(edp_conn_confirm_select(c), 0);
  const char *q = t_unique("faults.stall");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(fp_stall(p), 0);
  long long t0 = t_now_ms();
  for (int i = 0; i < 20; i++)
    ck_assert_int_eq(publish_id(c, "", q, i, 0), 0);
  int rc = edp_conn_wait_confirms(c, 0, 30000);
  long long detect_ms = t_now_ms() - t0;
  ck_assert_int_eq(rc, EDP_ECLOSED);
  /* Two missed heartbeat intervals plus a slice. */
  ck_assert_int_le(detect_ms, 8000);
  ck_assert_int_eq(fp_pass(p), 0);
  edp_recovery r = {0};
  ck_assert_int_eq(edp_conn_wait_confirms_recover(c, 0, 15000, &r), 0);
  for (int i = 0; i < 20; i++)
    ck_assert_int_eq(l->ack[i], 1);
  edp_conn_destroy(&c);
  int counts[20] = {0};
  drain_ids(q, counts, 20);
  for (int i = 0; i < 20; i++)
    ck_assert_int_ge(counts[i], 1);
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "dead peer found by heartbeat in %lld ms (hb 2 s); 20/20 confirmed "
           "after the network came back",
           detect_ms);
  t_fault_row("core (edp_conn)", "network stall (half-open)",
              "confirms in flight", outcome, detect_ms);
  fp_stop(&p);
  free(l);
}
END_TEST

/* A consumer whose connection is reset mid-stream: every message is
 * processed at least once, acks of the dead connection's deliveries are
 * refused (ECLOSED, then ESTALE after the reconnect), the rest come
 * again redelivered. */
START_TEST(tcp_reset_under_consumer) {
  ledger *l = calloc(1, sizeof(*l));
  const char *q = t_unique("faults.consumer");
  edp_conn *pub = open_conn("f-pub", NULL, -1);
  ck_assert_int_eq(edp_conn_queue_declare(pub, q, NULL, NULL, 0, NULL, NULL),
                   0);
  const int n = 1000;
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(publish_id(pub, "", q, i, 0), 0);
  char url[600];
  fp_proxy *p = t_proxy("?heartbeat=2", url, sizeof(url));
  edp_conn *c = open_url(url, "f-consumer", l, -1);
  ck_assert_int_eq(edp_conn_qos(c, 64), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  int *seen = calloc((size_t)n, sizeof(int));
  int distinct = 0, stale = 0, reconnects = 0, handled = 0;
  long long t0 = t_now_ms(), t_fault = 0;
  while (distinct < n && t_now_ms() - t0 < 60000) {
    edp_delivery d;
    int rc = edp_conn_receive(c, &d, 5000);
    if (rc == EDP_ECLOSED) {
      ck_assert_int_eq(edp_conn_reconnect(c), 0);
      reconnects++;
      continue;
    }
    ck_assert_msg(rc == 0, "receive: %s", edp_strerror(rc));
    if (++handled == n / 2) {
      ck_assert_int_eq(fp_reset(p), 0);
      t_fault = t_now_ms();
    }
    int i = id_index(d.message_id);
    ck_assert_int_ge(i, 0);
    rc = edp_conn_ack(c, d.epoch, d.tag, 0);
    if (rc == 0) {
      distinct += seen[i] == 0;
      seen[i]++;
    } else {
      ck_assert_msg(rc == EDP_ECLOSED || rc == EDP_ESTALE, "ack: %s",
                    edp_strerror(rc));
      stale++;
    }
    edp_delivery_clear(&d);
  }
  ck_assert_int_eq(distinct, n);
  ck_assert_int_eq(reconnects, 1);
  ck_assert_uint_eq(depth(pub, q), 0);
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d acked after processing, %d acks of the dead "
           "connection refused, 1 reconnect",
           n, n, stale);
  t_fault_row("core (edp_conn)", "TCP reset (RST)", "consumer, acks in flight",
              outcome, t_now_ms() - t_fault);
  ck_assert_int_eq(edp_conn_queue_delete(pub, q), 0);
  edp_conn_destroy(&c);
  edp_conn_destroy(&pub);
  fp_stop(&p);
  free(seen);
  free(l);
}
END_TEST

/* ---------- slow faults (make faults) ---------- */

/* A handler that outlives consumer_timeout: the broker closes the channel
 * with 406; the channel comes back with its consumer, the message is
 * redelivered and the late ack refused (ESTALE), never sent. */
START_TEST(consumer_timeout_recovered) {
  ledger *l = calloc(1, sizeof(*l));
  ck_assert_int_eq(
      t_ctl("eval 'application:set_env(rabbit, consumer_timeout, 1000).'"), 0);
  edp_conn *c = open_conn("f-ctimeout", l, -1);
  const char *q = t_unique("faults.ctimeout");
  ck_assert_int_eq(edp_conn_queue_declare(c, q, NULL, NULL, 0, NULL, NULL), 0);
  ck_assert_int_eq(publish_id(c, "", q, 1, 0), 0);
  ck_assert_int_eq(edp_conn_qos(c, 1), 0);
  ck_assert_int_eq(edp_conn_consume(c, q, NULL, NULL, 0), 0);
  edp_delivery held, again;
  ck_assert_int_eq(edp_conn_receive(c, &held, 5000), 0);
  long long t0 = t_now_ms();
  /* The broker checks once a minute. */
  ck_assert_int_eq(edp_conn_receive(c, &again, 90000), EDP_ECHANNEL);
  ck_assert_int_eq(edp_conn_reply_code(c), 406);
  ck_assert_int_eq(edp_conn_receive(c, &again, 10000), 0);
  ck_assert(again.redelivered);
  ck_assert_str_eq(again.message_id, "m1");
  ck_assert_int_eq(edp_conn_ack(c, held.epoch, held.tag, 0), EDP_ESTALE);
  ck_assert_int_eq(edp_conn_ack(c, again.epoch, again.tag, 0), 0);
  ck_assert_uint_eq(depth(c, q), 0);
  t_fault_row("core (edp_conn)", "consumer_timeout (406)", "inside a handler",
              "channel restored, message redelivered once, late ack refused "
              "(ESTALE), no exit",
              t_now_ms() - t0);
  t_ctl("eval 'application:set_env(rabbit, consumer_timeout, 1800000).'");
  edp_delivery_clear(&held);
  edp_delivery_clear(&again);
  ck_assert_int_eq(edp_conn_queue_delete(c, q), 0);
  edp_conn_destroy(&c);
  free(l);
}
END_TEST

Suite *faults_suite(void) {
  Suite *s = suite_create("faults");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, channel_error_with_confirms_in_flight);
  tcase_add_test(tc, channel_error_with_deliveries_in_flight);
  tcase_add_test(tc, channel_error_deletes_autodelete_queue);
  tcase_add_test(tc, consumer_queue_deleted_while_down);
  tcase_add_test(tc, queue_deleted_under_consumer);
  tcase_add_test(tc, wait_confirms_after_loss);
  tcase_add_test(tc, publish_to_missing_exchange);
  tcase_add_test(tc, poison_publish_unnamed_by_the_close);
  tcase_add_test(tc, memory_alarm_blocks_publisher);
  tcase_add_test(tc, memory_alarm_deadline_then_resume);
  tcase_add_test(tc, disk_alarm_deadline_then_resume);
  tcase_add_test(tc, forward_sender_sigterm_while_blocked);
  tcase_add_test(tc, tcp_reset_in_publish_burst);
  tcase_add_test(tc, tcp_cut_mid_frame_in_publish_burst);
  tcase_add_test(tc, stalled_network_found_by_heartbeat);
  tcase_add_test(tc, tcp_reset_under_consumer);
  if (getenv("EDP_FAULTS_FULL"))
    tcase_add_test(tc, consumer_timeout_recovered);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(faults_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
