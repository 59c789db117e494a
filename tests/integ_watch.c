/*
 * integ_watch.c - the watch notification pattern through its programs and
 * a real broker: changes reach every service once and in order, a killed
 * service leaves the registry at the next change, the registry survives a
 * server restart, and hostile registration requests change nothing.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edp.h"
#include "faultproxy.h"
#include "testlib.h"

static char store_dir[] = "/tmp/edp-watch-XXXXXX";

/* The dir is made in main(), before Check forks a process per test. */
static const char *store_path(void) {
  static char p[256];
  snprintf(p, sizeof(p), "%s/%s", store_dir, t_unique("store"));
  return p;
}

/* Starts the config server; extra (may be NULL) adds options. */
static void start_server_with(t_proc *p, const char *store, const char *rq,
                              const char *const *extra) {
  char *argv[24] = {(char *)t_bin("edp-config-server"),
                    "--url",
                    (char *)t_url(),
                    "--store",
                    (char *)store,
                    "--request-queue",
                    (char *)rq,
                    "--json"};
  int n = 8;
  for (; extra && *extra && n < 23; extra++)
    argv[n++] = (char *)*extra;
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn_stdin(p, argv), 0);
}

static void start_server(t_proc *p, const char *store, const char *rq) {
  start_server_with(p, store, rq, NULL);
}

/* SIGTERM: the server stops cleanly with 130. */
static void stop_server(t_proc *p) {
  t_signal(p, SIGTERM);
  ck_assert_int_eq(t_wait(p, 15000), 130);
}

static void start_service(t_proc *p, const char *name, const char *rq,
                          const char *keys, const char *count) {
  char *argv[14] = {(char *)t_bin("edp-watch-service"),
                    "--url",
                    (char *)t_url(),
                    "--name",
                    (char *)name,
                    "--request-queue",
                    (char *)rq,
                    "--json"};
  int n = 8;
  if (keys) {
    argv[n++] = "--keys";
    argv[n++] = (char *)keys;
  }
  if (count) {
    argv[n++] = "--count";
    argv[n++] = (char *)count;
  }
  argv[n] = NULL;
  ck_assert_int_eq(t_spawn(p, argv, NULL), 0);
}

/* Reads events of p until one has event == kind (and, if field, the given
 * field value); returns it (caller decrefs) or NULL on EOF/timeout. */
static json_t *await_json(t_proc *p, const char *kind, const char *field,
                          const char *value, int timeout_ms) {
  static char line[65536];
  long long deadline = t_now_ms() + timeout_ms;
  for (;;) {
    long long left = deadline - t_now_ms();
    if (left <= 0 || t_readline(p, line, sizeof(line), (int)left) != 1)
      return NULL;
    json_t *ev = json_loads(line, 0, NULL);
    const char *k = json_string_value(json_object_get(ev, "event"));
    if (k && !strcmp(k, kind) &&
        (!field ||
         !strcmp(json_string_value(json_object_get(ev, field)) ?: "", value)))
      return ev;
    json_decref(ev);
  }
}

/* The registered queue name of a service, from its "registered" event. */
static void await_registered(t_proc *svc, char *queue, size_t len) {
  json_t *ev = await_json(svc, "registered", NULL, NULL, 20000);
  ck_assert_msg(ev != NULL, "service did not register");
  snprintf(queue, len, "%s", json_string_value(json_object_get(ev, "queue")));
  json_decref(ev);
}

static edp_conn *open_conn(void) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = t_url();
  edp_conn *c = NULL;
  ck_assert_int_eq(edp_conn_open(&o, &c, NULL, 0), 0);
  return c;
}

/* A killed service's exclusive queue is deleted by the broker shortly
 * after its connection dropped; wait (bounded) until it is gone. */
static void await_queue_gone(const char *queue) {
  edp_conn *c = open_conn();
  long long deadline = t_now_ms() + 10000;
  int rc = 0;
  while ((rc = edp_conn_queue_inspect(c, queue, NULL, NULL)) == 0 &&
         t_now_ms() < deadline)
    edp_sleep_ms(20, -1);
  ck_assert_int_eq(rc, EDP_ENOTFOUND);
  edp_conn_destroy(&c);
}

/* Collects a service's change events: key:version pairs in arrival order. */
typedef struct changes {
  char seen[64][64];
  int n;
} changes;

static void on_change(void *ud, json_t *ev) {
  changes *c = ud;
  const char *k = json_string_value(json_object_get(ev, "event"));
  if (!k || strcmp(k, "config") || json_is_true(json_object_get(ev, "initial")))
    return;
  if (c->n < 64)
    snprintf(c->seen[c->n++], 64, "%s:%lld",
             json_string_value(json_object_get(ev, "key")),
             (long long)json_integer_value(json_object_get(ev, "version")));
}

START_TEST(changes_reach_every_service_once_in_order) {
  const char *rq = t_unique("config.q");
  t_proc srv, a, b;
  start_server(&srv, store_path(), rq);
  start_service(&a, "svc-a", rq, NULL, "4");
  start_service(&b, "svc-b", rq, "color,size", "4");
  char qa[256], qb[256];
  await_registered(&a, qa, sizeof(qa));
  await_registered(&b, qb, sizeof(qb));
  ck_assert_int_eq(t_write(&srv, "set color blue\nset size 3\nset color red\n"
                                 "set size {\"w\":4}\n"),
                   0);
  changes ca = {0}, cb = {0};
  ck_assert_int_eq(t_collect(&a, 30000, on_change, &ca), 0);
  ck_assert_int_eq(t_collect(&b, 30000, on_change, &cb), 0);
  const char *want[] = {"color:1", "size:2", "color:3", "size:4"};
  ck_assert_int_eq(ca.n, 4);
  ck_assert_int_eq(cb.n, 4);
  for (int i = 0; i < 4; i++) {
    ck_assert_str_eq(ca.seen[i], want[i]);
    ck_assert_str_eq(cb.seen[i], want[i]);
  }
  stop_server(&srv);
}
END_TEST

START_TEST(killed_service_is_removed_at_next_change) {
  const char *rq = t_unique("config.q");
  const char *store = store_path();
  t_proc srv, a, b;
  start_server(&srv, store, rq);
  start_service(&a, "svc-a", rq, NULL, NULL);
  start_service(&b, "svc-b", rq, NULL, "1");
  char qa[256], qb[256];
  await_registered(&a, qa, sizeof(qa));
  await_registered(&b, qb, sizeof(qb));
  t_signal(&a, SIGKILL);
  ck_assert_int_eq(t_wait(&a, 10000), 128 + SIGKILL);
  await_queue_gone(qa);
  ck_assert_int_eq(t_write(&srv, "set color green\n"), 0);
  json_t *ev = await_json(&srv, "removed", "queue", qa, 20000);
  ck_assert_msg(ev != NULL, "the dead service was not removed");
  json_decref(ev);
  changes cb = {0};
  ck_assert_int_eq(t_collect(&b, 30000, on_change, &cb), 0);
  ck_assert_int_eq(cb.n, 1);
  ck_assert_str_eq(cb.seen[0], "color:1");
  stop_server(&srv);
  /* exactly the dead service left the stored registry */
  json_t *st = json_load_file(store, 0, NULL);
  ck_assert_ptr_nonnull(st);
  json_t *w = json_object_get(st, "watches");
  ck_assert_uint_eq(json_array_size(w), 1);
  ck_assert_str_eq(
      json_string_value(json_object_get(json_array_get(w, 0), "queue")), qb);
  json_decref(st);
}
END_TEST

START_TEST(registry_survives_server_restart) {
  const char *rq = t_unique("config.q");
  const char *store = store_path();
  t_proc srv, live, late;
  start_server(&srv, store, rq);
  start_service(&live, "svc-live", rq, NULL, "2");
  char ql[256];
  await_registered(&live, ql, sizeof(ql));
  ck_assert_int_eq(t_write(&srv, "set mode fast\n"), 0);
  json_t *ev = await_json(&srv, "notified", "queue", ql, 20000);
  ck_assert_ptr_nonnull(ev);
  json_decref(ev);
  stop_server(&srv);

  /* registered while the server is down: the request waits in the queue */
  start_service(&late, "svc-late", rq, NULL, "1");
  start_server(&srv, store, rq);
  char qlate[256];
  await_registered(&late, qlate, sizeof(qlate));
  ck_assert_int_eq(t_write(&srv, "set mode safe\n"), 0);
  changes cl = {0}, cn = {0};
  ck_assert_int_eq(t_collect(&live, 30000, on_change, &cl), 0);
  ck_assert_int_eq(t_collect(&late, 30000, on_change, &cn), 0);
  ck_assert_int_eq(cl.n, 2);
  ck_assert_str_eq(cl.seen[0], "mode:1");
  ck_assert_str_eq(cl.seen[1], "mode:2"); /* values and versions survived */
  ck_assert_int_eq(cn.n, 1);
  ck_assert_str_eq(cn.seen[0], "mode:2");
  stop_server(&srv);
}
END_TEST

/* Publishes a raw registration request. */
static void send_as(edp_conn *c, const char *rq, const char *body, size_t len,
                    const char *reply_to, const char *corr,
                    const char *user_id) {
  edp_msg m;
  edp_msg_init(&m);
  m.user_id = user_id;
  m.routing_key = rq;
  m.body = body;
  m.body_len = len;
  m.reply_to = reply_to;
  m.correlation_id = corr;
  ck_assert_int_eq(edp_conn_publish(c, &m, NULL), 0);
}

static void send_raw(edp_conn *c, const char *rq, const char *body, size_t len,
                     const char *reply_to, const char *corr) {
  send_as(c, rq, body, len, reply_to, corr, NULL);
}

START_TEST(hostile_requests_change_nothing) {
  const char *rq = t_unique("config.q");
  const char *store = store_path();
  t_proc srv;
  start_server(&srv, store, rq);
  ck_assert_int_eq(t_write(&srv, "set color blue\n"), 0);
  json_t *ev = await_json(&srv, "changed", NULL, NULL, 20000);
  ck_assert_ptr_nonnull(ev);
  json_decref(ev);
  char *before = NULL;
  ck_assert_int_eq(edp_file_read(store, 1 << 20, &before, NULL), 0);

  edp_conn *c = open_conn();
  edp_queue_opts tmp;
  edp_queue_opts_init(&tmp);
  tmp.durable = 0;
  tmp.exclusive = 1;
  tmp.auto_delete = 1;
  char mine[256], other[256];
  ck_assert_int_eq(
      edp_conn_queue_declare(c, "", &tmp, mine, sizeof(mine), NULL, NULL), 0);
  ck_assert_int_eq(
      edp_conn_queue_declare(c, "", &tmp, other, sizeof(other), NULL, NULL), 0);
  const char *victim = t_unique("victim.q");
  ck_assert_int_eq(edp_conn_queue_declare(c, victim, NULL, NULL, 0, NULL, NULL),
                   0);

  char body[80000];
  const char *cases[] = {
      "hello",
      "",
      "[]",
      "\"x\"",
      "{\"queue\":5}",
      NULL, /* queue is another amq.gen queue than reply_to */
      NULL, /* keys not an array */
      NULL, /* keys not strings */
      NULL, /* 65 keys */
      NULL, /* a 300-character key */
      NULL, /* a key with a control character */
      NULL, /* service a number */
      NULL, /* a 200-character service name */
      NULL, /* an unknown field */
      NULL, /* 70 KiB */
      NULL, /* duplicate field */
      "{\"queue\":\"\xff\xfe\"}",
      NULL, /* deep nesting */
  };
  const int n = (int)(sizeof(cases) / sizeof(cases[0]));
  for (int i = 0; i < n; i++) {
    char corr[16];
    snprintf(corr, sizeof(corr), "bad-%d", i);
    const char *b = cases[i];
    if (!b) {
      b = body;
      switch (i) {
      case 5:
        snprintf(body, sizeof(body), "{\"queue\":\"%s\"}", other);
        break;
      case 6:
        snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"keys\":\"color\"}",
                 mine);
        break;
      case 7:
        snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"keys\":[1,2]}", mine);
        break;
      case 8: {
        int o =
            snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"keys\":[", mine);
        for (int k = 0; k < 65; k++)
          o += snprintf(body + o, sizeof(body) - (size_t)o, "%s\"k%d\"",
                        k ? "," : "", k);
        snprintf(body + o, sizeof(body) - (size_t)o, "]}");
        break;
      }
      case 9: {
        int o = snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"keys\":[\"",
                         mine);
        memset(body + o, 'k', 300);
        snprintf(body + o + 300, sizeof(body) - (size_t)o - 300, "\"]}");
        break;
      }
      case 10:
        snprintf(body, sizeof(body),
                 "{\"queue\":\"%s\",\"keys\":[\"a\\u0001b\"]}", mine);
        break;
      case 11:
        snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"service\":7}", mine);
        break;
      case 12: {
        int o = snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"service\":\"",
                         mine);
        memset(body + o, 's', 200);
        snprintf(body + o + 200, sizeof(body) - (size_t)o - 200, "\"}");
        break;
      }
      case 13:
        snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"admin\":true}", mine);
        break;
      case 14: {
        int o = snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"service\":\"",
                         mine);
        memset(body + o, 'x', 70000);
        snprintf(body + o + 70000, sizeof(body) - (size_t)o - 70000, "\"}");
        break;
      }
      case 15:
        snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"queue\":\"%s\"}",
                 mine, mine);
        break;
      case 17: {
        int o =
            snprintf(body, sizeof(body), "{\"queue\":\"%s\",\"keys\":", mine);
        for (int k = 0; k < 5000; k++)
          body[o++] = '[';
        for (int k = 0; k < 5000; k++)
          body[o++] = ']';
        snprintf(body + o, sizeof(body) - (size_t)o, "}");
        break;
      }
      }
    }
    send_raw(c, rq, b, strlen(b), mine, corr);
  }
  /* without reply_to, and into someone else's queue: no reply anywhere */
  char ok_body[512];
  snprintf(ok_body, sizeof(ok_body), "{\"queue\":\"%s\"}", mine);
  send_raw(c, rq, ok_body, strlen(ok_body), NULL, "no-reply-to");
  snprintf(ok_body, sizeof(ok_body), "{\"queue\":\"%s\"}", victim);
  send_raw(c, rq, ok_body, strlen(ok_body), victim, "victim");

  int rejected = 0;
  for (int i = 0; i < n + 2; i++) {
    ev = await_json(&srv, "rejected", NULL, NULL, 20000);
    ck_assert_msg(ev != NULL, "only %d of %d requests rejected", rejected,
                  n + 2);
    json_decref(ev);
    rejected++;
  }
  /* one error reply per request that had an allowed reply_to */
  ck_assert_int_eq(edp_conn_consume(c, mine, NULL, NULL, 0), 0);
  int replies = 0;
  edp_delivery d;
  while (edp_conn_receive(c, &d, 1500) == 0) {
    json_t *r = json_loadb(d.body, d.body_len, 0, NULL);
    ck_assert(json_is_false(json_object_get(r, "ok")));
    ck_assert_ptr_nonnull(json_string_value(json_object_get(r, "error")));
    ck_assert_int_eq(strncmp(d.correlation_id, "bad-", 4), 0);
    json_decref(r);
    edp_conn_ack(c, d.epoch, d.tag, 0);
    edp_delivery_clear(&d);
    replies++;
  }
  ck_assert_int_eq(replies, n);
  uint32_t victim_depth = 99;
  ck_assert_int_eq(edp_conn_queue_inspect(c, victim, &victim_depth, NULL), 0);
  ck_assert_uint_eq(victim_depth, 0);

  /* the server still serves, and the store did not change */
  char *after = NULL;
  ck_assert_int_eq(edp_file_read(store, 1 << 20, &after, NULL), 0);
  ck_assert_str_eq(before, after);
  free(before);
  free(after);
  t_proc ok;
  start_service(&ok, "svc-ok", rq, NULL, NULL);
  char q[256];
  await_registered(&ok, q, sizeof(q));
  t_signal(&ok, SIGTERM);
  ck_assert_int_eq(t_wait(&ok, 10000), 130);
  edp_conn_queue_delete(c, victim);
  edp_conn_destroy(&c);
  stop_server(&srv);
}
END_TEST

START_TEST(service_started_before_any_server) {
  /* a fresh request queue that no server declared yet */
  const char *rq = t_unique("config.q");
  t_proc svc, srv;
  start_service(&svc, "svc-early", rq, NULL, "1");
  json_t *ev = await_json(&svc, "registered", NULL, NULL, 1500);
  ck_assert_ptr_null(ev); /* nobody answers yet */
  start_server(&srv, store_path(), rq);
  char q[256];
  await_registered(&svc, q, sizeof(q));
  ck_assert_int_eq(t_write(&srv, "set k v\n"), 0);
  changes c = {0};
  ck_assert_int_eq(t_collect(&svc, 30000, on_change, &c), 0);
  ck_assert_int_eq(c.n, 1);
  ck_assert_str_eq(c.seen[0], "k:1");
  stop_server(&srv);
}
END_TEST

START_TEST(corrupt_store_refused) {
  const char *store = store_path();
  ck_assert_int_eq(edp_file_write_atomic(store, "{\"format\":1}", 12, 0600), 0);
  t_proc srv;
  start_server(&srv, store, t_unique("config.q"));
  ck_assert_int_eq(t_wait(&srv, 15000), 65);
  char *text = NULL;
  ck_assert_int_eq(edp_file_read(store, 1000, &text, NULL), 0);
  ck_assert_str_eq(text, "{\"format\":1}"); /* untouched */
  free(text);
}
END_TEST

/* ---------- the server's connection under network faults ---------- */

#define WATCHERS 3

/* What the server and its connection reported, for accounting. */
typedef struct srv_ledger {
  int notified; /* NOTIFIED events of the version watched */
  int64_t watch_version;
  int reconnects, lost;
} srv_ledger;

static void srv_event(void *ud, const edp_watch_info *in) {
  srv_ledger *l = ud;
  if (in->event == EDP_WATCH_NOTIFIED && in->version == l->watch_version)
    l->notified++;
}

static void srv_conn_event(void *ud, const edp_conn_event *ev) {
  srv_ledger *l = ud;
  if (ev->type == EDP_CONN_RECONNECTED)
    l->reconnects++;
  else if (ev->type == EDP_CONN_LOST)
    l->lost++;
}

static edp_conn *open_url(const char *url, const char *name,
                          int reconnect_max_ms) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url;
  o.client_name = name;
  o.reconnect_max_ms = reconnect_max_ms;
  o.backoff_initial_ms = 50;
  o.backoff_max_ms = 500;
  edp_conn *c = NULL;
  char why[300];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  ck_assert_msg(rc == 0, "open: %s", why);
  return c;
}

/* Waits for an update of cl: key NULL (the registration marker) or a
 * change (not an initial value) of key at version. 1 if it came. */
static int await_update(edp_watch_client *cl, const char *key, int64_t version,
                        int timeout_ms) {
  long long deadline = t_now_ms() + timeout_ms;
  for (;;) {
    long long left = deadline - t_now_ms();
    if (left <= 0)
      return 0;
    edp_watch_update u;
    if (edp_watch_client_next(cl, &u, (int)left) != 0)
      return 0;
    int hit =
        key ? u.key && !u.initial && !strcmp(u.key, key) && u.version == version
            : !u.key;
    edp_watch_update_clear(&u);
    if (hit)
      return 1;
  }
}

/* A server on a connection through a fault proxy, WATCHERS registered
 * services on direct connections (all in this process: one thread, so
 * nothing notices a fault before the call under test does). */
typedef struct watch_rig {
  char rq[256];
  fp_proxy *p;
  char url[600];
  edp_conn *sc, *wc[WATCHERS];
  edp_watch_server *s;
  edp_watch_client *cl[WATCHERS];
  srv_ledger l;
} watch_rig;

static void rig_start(watch_rig *r, int reconnect_max_ms) {
  memset(r, 0, sizeof(*r));
  snprintf(r->rq, sizeof(r->rq), "%s", t_unique("config.q"));
  const char *rq = r->rq;
  r->p = t_proxy(NULL, r->url, sizeof(r->url));
  r->sc = open_url(r->url, "w-server", reconnect_max_ms);
  edp_conn_on_event(r->sc, srv_conn_event, &r->l);
  edp_watch_server_opts so;
  edp_watch_server_opts_init(&so);
  so.store_path = store_path();
  so.request_queue = rq;
  so.on_event = srv_event;
  so.ud = &r->l;
  ck_assert_int_eq(edp_watch_server_new(r->sc, &so, &r->s), 0);
  const char *keys[] = {"k"};
  for (int i = 0; i < WATCHERS; i++) {
    r->wc[i] = open_url(t_url(), "w-service", 20000);
    ck_assert_int_eq(
        edp_watch_client_new(r->wc[i], "svc", keys, 1, rq, &r->cl[i]), 0);
  }
  long long deadline = t_now_ms() + 20000;
  while (edp_watch_server_watch_count(r->s) < WATCHERS &&
         t_now_ms() < deadline) {
    int rc = edp_watch_server_serve(r->s, 1000);
    ck_assert_msg(rc == 0 || rc == EDP_ETIMEOUT, "serve: %s", edp_strerror(rc));
  }
  ck_assert_uint_eq(edp_watch_server_watch_count(r->s), WATCHERS);
  for (int i = 0; i < WATCHERS; i++)
    ck_assert_msg(await_update(r->cl[i], NULL, 0, 10000),
                  "watcher %d got no registration reply", i);
}

static void rig_stop(watch_rig *r) {
  for (int i = 0; i < WATCHERS; i++) {
    edp_watch_client_destroy(&r->cl[i]);
    edp_conn_destroy(&r->wc[i]);
  }
  edp_watch_server_destroy(&r->s);
  edp_conn_destroy(&r->sc);
  fp_stop(&r->p);
}

/* Sets k and counts the watchers that get exactly that version; the set's
 * own duration goes to *set_ms (may be NULL). */
static int set_and_count(watch_rig *r, const char *value, int64_t *version,
                         int *set_rc, long long *set_ms) {
  long long t0 = t_now_ms();
  *set_rc = edp_watch_server_set(r->s, "k", value, version);
  if (set_ms)
    *set_ms = t_now_ms() - t0;
  int got = 0;
  for (int i = 0; i < WATCHERS; i++)
    got += await_update(r->cl[i], "k", *version, *set_rc ? 1500 : 10000);
  return got;
}

/* Issue 11: the server's connection reset before a set, unnoticed. The
 * first publish of the change met the dead socket; the set went on as if
 * the reconnect would republish, but the message had been dropped and the
 * other watchers skipped: success, and 0 of 3 watchers told. Now the
 * change reaches every watcher (republished after the reconnect). */
START_TEST(set_after_unnoticed_reset_reaches_every_watcher) {
  watch_rig *r = calloc(1, sizeof(*r));
  rig_start(r, 20000);
  int64_t v0 = 0;
  int rc = 0;
  ck_assert_int_eq(set_and_count(r, "1", &v0, &rc, NULL), WATCHERS);
  ck_assert_int_eq(rc, 0);

  long long t0 = t_now_ms();
  ck_assert_int_eq(fp_reset(r->p), 0);
  int64_t v = 0;
  r->l.watch_version = v0 + 1;
  int got = set_and_count(r, "42", &v, &rc, NULL);
  long long ms = t_now_ms() - t0;
  ck_assert_msg(rc == 0, "set after the reset: %s", edp_strerror(rc));
  ck_assert_int_eq(v, v0 + 1);
  ck_assert_msg(got == WATCHERS, "%d of %d watchers got version %lld", got,
                WATCHERS, (long long)v);
  ck_assert_int_eq(r->l.notified, WATCHERS);
  ck_assert_int_eq(r->l.reconnects, 1);
  /* Once each: the watchers drop nothing newer than they saw, and nothing
   * older comes again. */
  for (int i = 0; i < WATCHERS; i++)
    ck_assert_int_eq(await_update(r->cl[i], "k", v, 300), 0);
  /* The server goes on: the next change is the next version, for all. */
  int64_t v2 = 0;
  ck_assert_int_eq(set_and_count(r, "43", &v2, &rc, NULL), WATCHERS);
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(v2, v + 1);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "recovered: %d/%d watchers got version %lld once, %d NOTIFIED, "
           "%d reconnect",
           got, WATCHERS, (long long)v, r->l.notified, r->l.reconnects);
  t_fault_row("watch notification", "TCP reset (RST)",
              "server connection, unnoticed, then a set", outcome, ms);
  rig_stop(r);
  free(r);
}
END_TEST

/* The same reset with the broker unreachable until the reconnect gives
 * up: the set fails (never success with nobody notified); once the broker
 * is back the server recovers and the next set reaches every watcher. */
START_TEST(set_with_broker_unreachable_fails) {
  watch_rig *r = calloc(1, sizeof(*r));
  rig_start(r, 1500);
  ck_assert_int_eq(fp_refuse(r->p, 1), 0);
  ck_assert_int_eq(fp_reset(r->p), 0);
  int64_t v = 0;
  int rc = 0;
  long long ms = 0;
  int got = set_and_count(r, "42", &v, &rc, &ms);
  ck_assert_msg(rc != 0, "set returned success with %d of %d watchers told",
                got, WATCHERS);
  ck_assert_msg(rc == EDP_ECONNECT, "set: %s", edp_strerror(rc));
  ck_assert_int_eq(got, 0);
  ck_assert_int_eq(fp_refuse(r->p, 0), 0);
  int src = edp_watch_server_serve(r->s, 500);
  ck_assert_msg(src == 0 || src == EDP_ETIMEOUT, "serve: %s",
                edp_strerror(src));
  int64_t v2 = 0;
  int rc2 = 0;
  ck_assert_int_eq(set_and_count(r, "43", &v2, &rc2, NULL), WATCHERS);
  ck_assert_int_eq(rc2, 0);
  ck_assert_int_eq(v2, v + 1);
  char outcome[200];
  snprintf(outcome, sizeof(outcome),
           "set failed (%s), 0/%d told; next set after the broker came back "
           "reached %d/%d",
           edp_strerror(rc), WATCHERS, WATCHERS, WATCHERS);
  t_fault_row("watch notification", "TCP reset (RST), broker unreachable",
              "server connection, unnoticed, then a set", outcome, ms);
  rig_stop(r);
  free(r);
}
END_TEST

/* The server's own request queue deleted under it: the next serve() (the
 * broker's cancel notice may already have been taken by the program's
 * edp_conn_wait) declares and consumes it again, and a new service can
 * register. */
START_TEST(request_queue_deleted_is_served_again) {
  watch_rig *r = calloc(1, sizeof(*r));
  rig_start(r, 20000);
  long long t0 = t_now_ms();
  edp_conn *admin = open_conn();
  ck_assert_int_eq(edp_conn_queue_delete(admin, r->rq), 0);
  /* The owner's own wait takes the notice, as edp-config-server's loop
   * does; the server object never sees it. */
  ck_assert_int_eq(edp_conn_wait(r->sc, -1, 5000), EDP_ENOTFOUND);
  ck_assert_uint_eq(edp_conn_consumers(r->sc), 0);
  int rc = edp_watch_server_serve(r->s, 200);
  ck_assert_msg(rc == 0 || rc == EDP_ETIMEOUT, "serve: %s", edp_strerror(rc));
  ck_assert_uint_eq(edp_conn_consumers(r->sc), 1);
  long long back_ms = t_now_ms() - t0;
  const char *keys[] = {"k"};
  edp_conn *wc = open_url(t_url(), "w-late", 20000);
  edp_watch_client *cl = NULL;
  ck_assert_int_eq(edp_watch_client_new(wc, "late", keys, 1, r->rq, &cl), 0);
  long long deadline = t_now_ms() + 20000;
  while (edp_watch_server_watch_count(r->s) < WATCHERS + 1 &&
         t_now_ms() < deadline) {
    rc = edp_watch_server_serve(r->s, 1000);
    ck_assert_msg(rc == 0 || rc == EDP_ETIMEOUT, "serve: %s", edp_strerror(rc));
  }
  ck_assert_uint_eq(edp_watch_server_watch_count(r->s), WATCHERS + 1);
  ck_assert(await_update(cl, NULL, 0, 10000));
  char outcome[160];
  snprintf(outcome, sizeof(outcome),
           "request queue declared and consumed again at the next serve() "
           "(%lld ms); a new service registered (%d watches)",
           back_ms, WATCHERS + 1);
  t_fault_row("watch notification", "queue deleted",
              "its own request queue, notice taken by the owner's wait",
              outcome, back_ms);
  edp_watch_client_destroy(&cl);
  edp_conn_destroy(&wc);
  edp_conn_queue_delete(admin, r->rq);
  edp_conn_destroy(&admin);
  rig_stop(r);
  free(r);
}
END_TEST

/* ---------- hostile clients: hijack, forgery, exhaustion ---------- */

/* The second user main() creates: an attacker with its own login. */
#define MALLORY "edp-mallory"

/* t_url() with another user's credentials. */
static const char *url_as(const char *user) {
  static char url[1200];
  return t_url_as(user, user, url, sizeof(url));
}

static edp_conn *open_as(const char *user) {
  edp_conn_opts o;
  edp_conn_opts_init(&o);
  o.url = url_as(user);
  edp_conn *c = NULL;
  char why[300];
  int rc = edp_conn_open(&o, &c, why, sizeof(why));
  ck_assert_msg(rc == 0, "open as %s: %s", user, why);
  return c;
}

/* A temporary queue as a service declares it. */
static void tmp_queue(edp_conn *c, char *name, size_t len) {
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  qo.durable = 0;
  qo.exclusive = 1;
  qo.auto_delete = 1;
  ck_assert_int_eq(edp_conn_queue_declare(c, "", &qo, name, len, NULL, NULL),
                   0);
}

/* Declares the request queue as a service does, so that a request sent
 * before the server declared it waits instead of being dropped. */
static void declare_rq(edp_conn *c, const char *rq) {
  ck_assert_int_eq(edp_conn_queue_declare(c, rq, NULL, NULL, 0, NULL, NULL), 0);
}

/* Registers queue q as user (its connection c), {"queue":q}. */
static void register_raw(edp_conn *c, const char *rq, const char *q,
                         const char *corr) {
  char body[400];
  snprintf(body, sizeof(body), "{\"queue\":\"%s\"}", q);
  send_as(c, rq, body, strlen(body), q, corr, edp_conn_user(c));
}

/* Takes the replies waiting in queues q[0..n) (consumed on c): for each,
 * 1 ok, 0 error (its text in err[i] if err), -1 none within timeout. */
static void take_replies(edp_conn *c, char q[][256], int n, int *ok,
                         char err[][128], int timeout_ms) {
  for (int i = 0; i < n; i++) {
    ok[i] = -1;
    ck_assert_int_eq(edp_conn_consume(c, q[i], NULL, NULL, 0), 0);
  }
  int got = 0;
  edp_delivery d;
  while (got < n && edp_conn_receive(c, &d, timeout_ms) == 0) {
    for (int i = 0; i < n; i++) {
      if (strcmp(q[i], d.routing_key))
        continue;
      json_t *r = json_loadb(d.body, d.body_len, 0, NULL);
      ck_assert_str_eq(d.type, "edp.watch.reply");
      ok[i] = json_is_true(json_object_get(r, "ok"));
      if (err)
        snprintf(err[i], 128, "%s",
                 json_string_value(json_object_get(r, "error")) ?: "");
      json_decref(r);
      got++;
    }
    edp_conn_ack(c, d.epoch, d.tag, 0);
    edp_delivery_clear(&d);
  }
}

/* The watch of queue in the store file (a new reference) or NULL. */
static json_t *stored_watch(const char *store, const char *queue) {
  json_t *j = json_load_file(store, 0, NULL);
  json_t *found = NULL, *w;
  size_t i;
  json_array_foreach(json_object_get(j, "watches"), i, w) {
    if (!strcmp(json_string_value(json_object_get(w, "queue")), queue))
      found = json_incref(w);
  }
  json_decref(j);
  return found;
}

START_TEST(hijack_attempts_change_nothing_and_get_no_reply) {
  const char *rq = t_unique("config.q");
  const char *store = store_path();
  t_proc srv, victim;
  start_server(&srv, store, rq);
  start_service(&victim, "svc-victim", rq, "color", "1");
  char q[256];
  await_registered(&victim, q, sizeof(q));
  json_t *before = stored_watch(store, q);
  ck_assert_ptr_nonnull(before);

  /* Another user, the same user (every service logs in as guest), no
   * user_id, a guessed token: each tries to take the victim's queue. */
  edp_conn *mallory = open_as(MALLORY), *guest = open_conn();
  char body[600];
  snprintf(body, sizeof(body),
           "{\"service\":\"evil\",\"queue\":\"%s\",\"keys\":[\"nokey\"]}", q);
  send_as(mallory, rq, body, strlen(body), q, "h1", MALLORY);
  send_as(guest, rq, body, strlen(body), q, "h2", "guest");
  send_as(guest, rq, body, strlen(body), q, "h3", NULL);
  snprintf(body, sizeof(body),
           "{\"service\":\"evil\",\"queue\":\"%s\",\"keys\":[\"nokey\"],"
           "\"token\":\"0123456789abcdef0123456789abcdef\"}",
           q);
  send_as(guest, rq, body, strlen(body), q, "h4", "guest");
  /* A user_id that is not the login user: the broker refuses it. */
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = rq;
  m.body = body;
  m.body_len = strlen(body);
  m.reply_to = q;
  m.user_id = "guest";
  ck_assert_int_eq(edp_conn_confirm_select(mallory), 0);
  ck_assert_int_eq(edp_conn_publish_confirmed(mallory, &m, 10000),
                   EDP_EPRECONDITION);
  for (int i = 0; i < 4; i++) {
    json_t *ev = await_json(&srv, "rejected", NULL, NULL, 20000);
    ck_assert_msg(ev != NULL, "hijack %d not rejected", i + 1);
    ck_assert_ptr_null(json_object_get(ev, "queue")); /* no reply sent */
    ck_assert_ptr_nonnull(
        strstr(json_string_value(json_object_get(ev, "reason")),
               "registered by another client"));
    json_decref(ev);
  }
  /* The victim's watch is as it was, and it still gets its key. */
  json_t *after = stored_watch(store, q);
  ck_assert(json_equal(before, after));
  json_decref(before);
  json_decref(after);
  ck_assert_int_eq(t_write(&srv, "set color red\n"), 0);
  json_t *ev = await_json(&victim, "config", "key", "color", 20000);
  ck_assert_ptr_nonnull(ev);
  ck_assert_str_eq(json_string_value(json_object_get(ev, "value")), "red");
  json_decref(ev);
  /* It exits after its one change; no message it had to drop came. */
  ck_assert_int_eq(t_wait(&victim, 10000), 0);
  ck_assert_ptr_null(await_json(&victim, "dropped", NULL, NULL, 100));
  edp_conn_destroy(&mallory);
  edp_conn_destroy(&guest);
  stop_server(&srv);
}
END_TEST

START_TEST(forged_changes_are_dropped_and_poison_nothing) {
  const char *rq = t_unique("config.q");
  t_proc srv;
  start_server(&srv, store_path(), rq);
  edp_conn *wc = open_conn(), *evil = open_as(MALLORY);
  const char *keys[] = {"color"};
  edp_watch_client *cl = NULL;
  ck_assert_int_eq(edp_watch_client_new(wc, "svc", keys, 1, rq, &cl), 0);
  ck_assert(await_update(cl, NULL, 0, 20000));
  const char *q = edp_watch_client_queue(cl);
  /* A change with a huge version and no token, one with a wrong token, a
   * reply that answers nothing we asked. */
  const char *forged[] = {
      "{\"key\":\"color\",\"value\":\"evil\",\"version\":9000000000000000}",
      "{\"key\":\"color\",\"value\":\"evil\",\"version\":9000000000000000,"
      "\"token\":\"0123456789abcdef0123456789abcdef\"}",
      "{\"ok\":true,\"version\":1,\"token\":\"0123456789abcdef0123456789abcd"
      "ef\",\"values\":{\"color\":{\"value\":\"evil\",\"version\":99}}}"};
  const char *types[] = {"edp.watch.change", "edp.watch.change",
                         "edp.watch.reply"};
  for (int i = 0; i < 3; i++) {
    edp_msg m;
    edp_msg_init(&m);
    m.routing_key = q;
    m.body = forged[i];
    m.body_len = strlen(forged[i]);
    m.type = types[i];
    m.correlation_id = "guess";
    ck_assert_int_eq(edp_conn_publish(evil, &m, NULL), 0);
  }
  /* Two real changes after them: both arrive, in order. */
  ck_assert_int_eq(t_write(&srv, "set color red\nset color blue\n"), 0);
  edp_watch_update u;
  int64_t last = 0;
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(edp_watch_client_next(cl, &u, 20000), 0);
    ck_assert_str_eq(u.key, "color");
    ck_assert_str_eq(u.value, i ? "\"blue\"" : "\"red\"");
    ck_assert_int_gt(u.version, last);
    ck_assert_int_lt(u.version, 1000);
    last = u.version;
    edp_watch_update_clear(&u);
  }
  ck_assert_uint_eq(edp_watch_client_dropped(cl), 3);
  edp_watch_client_destroy(&cl);
  edp_conn_destroy(&wc);
  edp_conn_destroy(&evil);
  stop_server(&srv);
}
END_TEST

START_TEST(quotas_refuse_with_clear_errors) {
  const char *rq = t_unique("config.q");
  t_proc srv;
  const char *extra[] = {"--max-per-user", "3", "--max-watches", "5", NULL};
  start_server_with(&srv, store_path(), rq, extra);
  edp_conn *guest = open_conn(), *mallory = open_as(MALLORY);
  declare_rq(guest, rq);
  char q[8][256];
  for (int i = 0; i < 8; i++) {
    edp_conn *c = i < 4 ? guest : mallory;
    tmp_queue(c, q[i], sizeof(q[i]));
  }
  /* One at a time, so the order (and so who hits which bound) is fixed. */
  int ok[8];
  char err[8][128];
  for (int i = 0; i < 8; i++) {
    edp_conn *c = i < 4 ? guest : mallory;
    register_raw(c, rq, q[i], "quota");
    take_replies(c, &q[i], 1, &ok[i], &err[i], 20000);
  }
  /* guest: 3 watches, then its quota; mallory: 2 more make 5 in all. */
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(ok[i], 1);
  ck_assert_int_eq(ok[3], 0);
  ck_assert_ptr_nonnull(strstr(err[3], "quota exceeded"));
  ck_assert_int_eq(ok[4], 1);
  ck_assert_int_eq(ok[5], 1);
  for (int i = 6; i < 8; i++) {
    ck_assert_int_eq(ok[i], 0);
    ck_assert_str_eq(err[i], "registry full");
  }
  edp_conn_destroy(&guest);
  edp_conn_destroy(&mallory);
  stop_server(&srv);
}
END_TEST

/* Peak resident memory of a process, in KiB (VmHWM), -1 if unknown. */
static long peak_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kib = -1;
  while (f && fgets(line, sizeof(line), f))
    sscanf(line, "VmHWM: %ld kB", &kib);
  if (f)
    fclose(f);
  return kib;
}

START_TEST(oversize_request_is_not_read) {
  const char *rq = t_unique("config.q");
  t_proc srv;
  start_server(&srv, store_path(), rq);
  edp_conn *c = open_conn();
  declare_rq(c, rq);
  char q[1][256], big_q[256];
  tmp_queue(c, q[0], sizeof(q[0]));
  tmp_queue(c, big_q, sizeof(big_q));
  ck_assert_int_eq(edp_conn_consume(c, big_q, NULL, NULL, 0), 0);
  /* Settle the server's start before measuring its peak. */
  register_raw(c, rq, q[0], "first");
  int ok;
  take_replies(c, q, 1, &ok, NULL, 20000);
  ck_assert_int_eq(ok, 1);
  long base = peak_kib(srv.pid);
  const size_t big = 4000000; /* the test node allows 4 MiB */
  char *body = malloc(big);
  ck_assert_ptr_nonnull(body);
  memset(body, ' ', big);
  send_as(c, rq, body, big, big_q, "big", "guest");
  free(body);
  json_t *ev = await_json(&srv, "rejected", NULL, NULL, 60000);
  ck_assert_ptr_nonnull(ev);
  ck_assert_str_eq(json_string_value(json_object_get(ev, "reason")),
                   "request too large");
  json_decref(ev);
  long peak = peak_kib(srv.pid);
  fprintf(stderr,
          "oversize: server peak RSS %ld KiB before, %ld after a "
          "4 MB request\n",
          base, peak);
  ck_assert_int_lt(peak - base, 2 * 1024);
  edp_delivery d;
  ck_assert_int_eq(edp_conn_receive(c, &d, 20000), 0);
  ck_assert_ptr_nonnull(strstr(d.body, "request too large"));
  edp_delivery_clear(&d);
  edp_conn_destroy(&c);
  stop_server(&srv);
}
END_TEST

START_TEST(orphan_pruned_without_a_change) {
  const char *rq = t_unique("config.q");
  const char *store = store_path();
  t_proc srv;
  const char *extra[] = {"--prune-interval", "1", NULL};
  start_server_with(&srv, store, rq, extra);
  edp_conn *c = open_conn(), *live = open_conn();
  declare_rq(c, rq);
  char q[1][256], lq[1][256];
  tmp_queue(c, q[0], sizeof(q[0]));
  tmp_queue(live, lq[0], sizeof(lq[0]));
  int ok;
  register_raw(c, rq, q[0], "orphan");
  take_replies(c, q, 1, &ok, NULL, 20000);
  ck_assert_int_eq(ok, 1);
  register_raw(live, rq, lq[0], "live");
  take_replies(live, lq, 1, &ok, NULL, 20000);
  ck_assert_int_eq(ok, 1);
  long long t0 = t_now_ms();
  edp_conn_destroy(&c); /* the broker deletes its exclusive queue */
  json_t *ev = await_json(&srv, "removed", NULL, NULL, 20000);
  ck_assert_ptr_nonnull(ev);
  ck_assert_str_eq(json_string_value(json_object_get(ev, "queue")), q[0]);
  json_decref(ev);
  fprintf(stderr, "orphan: removed %lld ms after its connection closed\n",
          t_now_ms() - t0);
  ev = await_json(&srv, "saved", NULL, NULL, 20000);
  ck_assert_ptr_nonnull(ev);
  json_decref(ev);
  /* The live one stays (its pings are dropped by clients, here acked). */
  ck_assert_ptr_null(stored_watch(store, q[0]));
  json_t *w = stored_watch(store, lq[0]);
  ck_assert_ptr_nonnull(w);
  json_decref(w);
  edp_conn_destroy(&live);
  stop_server(&srv);
}
END_TEST

#define FLOOD_QUEUES 1500
#define FLOOD_JUNK 10000

static void count_saves(void *ud, json_t *ev) {
  int *n = ud;
  if (!ev)
    return;
  const char *k = json_string_value(json_object_get(ev, "event"));
  if (k && !strcmp(k, "saved"))
    n[0]++;
  else if (k && !strcmp(k, "registered"))
    n[1]++;
}

START_TEST(flood_is_batched_and_a_service_behind_it_registers) {
  const char *rq = t_unique("config.q");
  t_proc srv;
  start_server(&srv, store_path(), rq);
  /* The attacker: FLOOD_QUEUES real queues (over its 1000 quota), then
   * FLOOD_JUNK malformed requests, all queued before the service's. */
  edp_conn *m = open_as(MALLORY);
  declare_rq(m, rq);
  char(*q)[256] = calloc(FLOOD_QUEUES, sizeof(*q));
  ck_assert_ptr_nonnull(q);
  for (int i = 0; i < FLOOD_QUEUES; i++)
    tmp_queue(m, q[i], sizeof(q[i]));
  long long t0 = t_now_ms();
  for (int i = 0; i < FLOOD_QUEUES; i++)
    register_raw(m, rq, q[i], "flood");
  char junk_q[256];
  tmp_queue(m, junk_q, sizeof(junk_q)); /* unregistered: each gets a reply */
  for (int i = 0; i < FLOOD_JUNK; i++)
    send_as(m, rq, "{\"queue\":5}", 11, junk_q, "junk", MALLORY);
  t_proc svc;
  long long t1 = t_now_ms();
  start_service(&svc, "svc-late", rq, NULL, NULL);
  /* Read the server's events meanwhile: a server whose stdout nobody
   * reads stops at a full pipe. */
  int n[2] = {0, 0}, registered = 0;
  static char line[65536];
  while (!registered && t_now_ms() - t1 < 120000) {
    while (t_readline(&srv, line, sizeof(line), 20) == 1) {
      json_t *ev = json_loads(line, 0, NULL);
      count_saves(n, ev);
      json_decref(ev);
    }
    if (t_readline(&svc, line, sizeof(line), 20) == 1)
      registered = strstr(line, "\"registered\"") != NULL;
  }
  long long t2 = t_now_ms();
  ck_assert_msg(registered, "the service behind the flood did not register");
  fprintf(stderr,
          "flood: %d registrations + %d junk published in %lld ms; the "
          "service behind them registered %lld ms later\n",
          FLOOD_QUEUES, FLOOD_JUNK, t1 - t0, t2 - t1);
  t_signal(&svc, SIGTERM);
  ck_assert_int_eq(t_wait(&svc, 10000), 130);
  t_signal(&srv, SIGTERM);
  ck_assert_int_eq(t_collect(&srv, 20000, count_saves, n), 130);
  /* 1000 of the attacker's (its quota) and the service's; far fewer
   * store writes than registrations. */
  fprintf(stderr, "flood: %d registrations, %d store writes\n", n[1], n[0]);
  ck_assert_int_eq(n[1], 1001);
  ck_assert_int_lt(n[0], n[1] / 10);
  edp_conn_destroy(&m);
  free(q);
}
END_TEST

/* The server dies after the store write that holds a registration and
 * before the request's ack (a memory alarm holds its reply): the
 * restarted server gets the request again, redelivered, and answers its
 * creator with the token the store kept. */
START_TEST(crash_before_ack_answers_the_redelivered_request) {
  const char *rq = t_unique("config.q");
  const char *store = store_path();
  edp_conn *c = open_conn();
  declare_rq(c, rq);
  char q[1][256];
  tmp_queue(c, q[0], sizeof(q[0]));
  register_raw(c, rq, q[0], "crash-1");
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0"), 0);
  t_proc srv;
  start_server(&srv, store, rq);
  json_t *ev = await_json(&srv, "saved", NULL, NULL, 20000);
  t_signal(&srv, SIGKILL);
  t_wait(&srv, 10000);
  ck_assert_int_eq(t_ctl("set_vm_memory_high_watermark 0.4"), 0);
  ck_assert_ptr_nonnull(ev);
  json_decref(ev);
  json_t *w = stored_watch(store, q[0]);
  ck_assert_ptr_nonnull(w);
  start_server(&srv, store, rq);
  /* One reply at least (two if the first got out before the kill), each
   * ok with the stored token. */
  ck_assert_int_eq(edp_conn_consume(c, q[0], NULL, NULL, 0), 0);
  int replies = 0;
  edp_delivery d;
  while (edp_conn_receive(c, &d, replies ? 2000 : 20000) == 0) {
    json_t *r = json_loadb(d.body, d.body_len, 0, NULL);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    ck_assert_str_eq(json_string_value(json_object_get(r, "token")),
                     json_string_value(json_object_get(w, "token")));
    ck_assert_str_eq(d.correlation_id, "crash-1");
    json_decref(r);
    edp_conn_ack(c, d.epoch, d.tag, 0);
    edp_delivery_clear(&d);
    replies++;
  }
  ck_assert_int_ge(replies, 1);
  fprintf(stderr, "crash before ack: %d repl%s\n", replies,
          replies == 1 ? "y" : "ies");
  json_decref(w);
  edp_conn_destroy(&c);
  stop_server(&srv);
}
END_TEST

int main(void) {
  if (!mkdtemp(store_dir))
    return EXIT_FAILURE;
  /* The attacker's own login (password = name), before Check forks; it
   * may exist from an earlier run on the same node. */
  t_ctl("add_user " MALLORY " " MALLORY);
  if (t_ctl("set_permissions -p / " MALLORY " '.*' '.*' '.*'") != 0)
    return EXIT_FAILURE;
  Suite *s = suite_create("watch");
  TCase *tc = tcase_create("watch");
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, changes_reach_every_service_once_in_order);
  tcase_add_test(tc, killed_service_is_removed_at_next_change);
  tcase_add_test(tc, registry_survives_server_restart);
  tcase_add_test(tc, hostile_requests_change_nothing);
  tcase_add_test(tc, service_started_before_any_server);
  tcase_add_test(tc, corrupt_store_refused);
  tcase_add_test(tc, set_after_unnoticed_reset_reaches_every_watcher);
  tcase_add_test(tc, set_with_broker_unreachable_fails);
  tcase_add_test(tc, request_queue_deleted_is_served_again);
  suite_add_tcase(s, tc);
  /* CK_RUN_CASE=hostile runs these alone. */
  TCase *th = tcase_create("hostile");
  tcase_set_timeout(th, 240);
  tcase_add_test(th, hijack_attempts_change_nothing_and_get_no_reply);
  tcase_add_test(th, forged_changes_are_dropped_and_poison_nothing);
  tcase_add_test(th, quotas_refuse_with_clear_errors);
  tcase_add_test(th, oversize_request_is_not_read);
  tcase_add_test(th, orphan_pruned_without_a_change);
  tcase_add_test(th, flood_is_batched_and_a_service_behind_it_registers);
  tcase_add_test(th, crash_before_ack_answers_the_redelivered_request);
  suite_add_tcase(s, th);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", store_dir);
  if (system(cmd) != 0)
    failed++;
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
