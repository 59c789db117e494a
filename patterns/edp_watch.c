/*
 * edp_watch.c - the watch pattern's config server (see edp_watch.h for
 * the contract and the wire format, docs/watch.md for the threat model).
 *
 * Requests are served in batches: each is checked (edp_watch_registry.c),
 * then judged against the registry (who owns the queue, the quotas); the
 * accepted ones change the registry in memory, the store is written once
 * for the batch, and only then are the replies published, confirmed, and
 * the requests acked. A crash anywhere before the acks redelivers the
 * batch; a redelivered request of the watch's own creator is answered
 * again, so no registration is lost or answered before it is durable.
 *
 * The server publishes into a queue only when the queue is not registered
 * yet (the first registration and its error replies) or when the request
 * carries the owner's user_id and token; a change goes to the registered
 * queues only. An orphan (a queue gone while no change was due) is found
 * by a rate-limited ping: a mandatory message a basic.return reports.
 */
#include "edp_watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_file.h"
#include "edp_util.h"
#include "edp_watch_internal.h"

#define MAX_STORE ((size_t)256 << 20)
#define CONFIRM_TIMEOUT_MS 30000
#define SERVE_MAX (8 * EDP_WATCH_BATCH) /* requests per serve call */

struct edp_watch_server {
  edp_conn *c;
  edp_watch_server_opts o;
  char *store_path, *request_queue, *prefix, *user;
  edp__watch_reg r;
  /* filled by the confirm callback: queues a basic.return said are gone */
  char **gone;
  size_t n_gone, cap_gone;
  size_t ping_next;          /* round-robin cursor over the watches */
  int64_t ping_ms;           /* when the last ping step ran */
  double ping_credit;        /* pings earned by elapsed time, not yet sent */
  edp_watch_server_stats st; /* single-writer: this server's thread */
};

/* One request of a batch and what became of it. */
struct item {
  edp_delivery d;
  json_t *reply; /* NULL: no reply (nowhere we may publish) */
  const char *why;
  int registered; /* the registry changed for it */
};

/* Counts every event here, before the caller hears of it: a counter read
 * after an event was seen includes it. */
static void emit(edp_watch_server *s, int event, const char *queue,
                 const char *service, const char *key, int64_t version,
                 const char *detail, const char *user) {
  edp_watch_server_stats *st = &s->st;
  uint64_t *n = event == EDP_WATCH_REGISTERED ? &st->registrations
                : event == EDP_WATCH_NOTIFIED ? &st->notified
                : event == EDP_WATCH_REMOVED  ? &st->removed
                : event == EDP_WATCH_REJECTED ? &st->rejected
                : event == EDP_WATCH_CHANGED  ? &st->changes
                                              : &st->saves;
  edp_count_add(n, 1);
  if (!s->o.on_event)
    return;
  edp_watch_info info = {event, queue, service, key, version, detail, user};
  s->o.on_event(s->o.ud, &info);
}

/* The gauges follow the registry: set after each change to it. */
static void sync_gauges(edp_watch_server *s) {
  edp_gauge_set(&s->st.watches, (int)s->r.n_w);
  edp_gauge_set(&s->st.keys, (int)json_object_size(s->r.values));
}

/* ---------- the store ---------- */

static int save_store(edp_watch_server *s, const char *why) {
  char *text = edp__watch_store_dump(&s->r);
  int rc = text ? edp_file_write_atomic(s->store_path, text, strlen(text), 0600)
                : EDP_ENOMEM;
  free(text);
  if (!rc)
    emit(s, EDP_WATCH_SAVED, NULL, NULL, NULL, (int64_t)s->r.n_w, why, NULL);
  else
    edp_count_add(&s->st.save_errors, 1);
  return rc;
}

/* Loads the store into a fresh registry; a missing file is an empty one. */
static int load_store(edp_watch_server *s, edp__watch_reg *r) {
  int rc = edp__watch_reg_init(r);
  char *text = NULL;
  if (!rc)
    rc = edp_file_read(s->store_path, MAX_STORE, &text, NULL);
  if (rc == EDP_ENOTFOUND)
    return 0;
  if (!rc)
    rc = edp__watch_store_parse(r, text, strlen(text), s->prefix);
  free(text);
  if (rc)
    edp__watch_reg_free(r);
  return rc == EDP_ETOOBIG ? EDP_EBADDATA : rc;
}

/* ---------- publishing ---------- */

static void server_confirmed(void *ud, const edp_confirm *cf) {
  edp_watch_server *s = ud;
  const char *q = cf->msg->routing_key;
  const char *type = cf->msg->type ? cf->msg->type : "";
  if (cf->status == EDP_CONFIRM_RETURNED) {
    if (!strcmp(type, TYPE_CHANGE))
      edp_count_add(&s->st.notify_returned, 1);
    else if (!strcmp(type, TYPE_PING))
      edp_count_add(&s->st.ping_returned, 1);
    if (edp__watch_grow((void **)&s->gone, &s->cap_gone, s->n_gone,
                        sizeof(*s->gone), 8))
      return; /* the watch stays; the next ping retries its removal */
    if ((s->gone[s->n_gone] = strdup(q)))
      s->n_gone++;
  } else if (cf->status == EDP_CONFIRM_ACK && !strcmp(type, TYPE_CHANGE)) {
    /* The change says which key and version it carries: one published
     * again after a reconnect may be confirmed during a later call. Read
     * only for an event callback; emit counts it either way. */
    json_t *j = s->o.on_event
                    ? json_loadb(cf->msg->body, cf->msg->body_len, 0, NULL)
                    : NULL;
    const char *key = json_string_value(json_object_get(j, "key"));
    json_t *version = json_object_get(j, "version");
    struct edp__watch *w = edp__watch_find(&s->r, q);
    emit(s, EDP_WATCH_NOTIFIED, q, w ? w->service : NULL, key,
         json_is_integer(version) ? json_integer_value(version) : 0, NULL,
         NULL);
    json_decref(j);
  }
}

/* Publishes one message of the server (mandatory, confirmed later by
 * settle_confirms). A lost connection is recovered on the way: the
 * reconnect publishes the messages sent before and not yet confirmed
 * again, then this one goes out on the new connection. */
static int publish_text(edp_watch_server *s, const char *queue,
                        const char *type, const char *correlation_id,
                        const char *text, size_t len) {
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = queue;
  m.body = text;
  m.body_len = len;
  m.mandatory = 1;
  m.content_type = "application/json";
  m.type = type;
  m.correlation_id = correlation_id;
  m.user_id = s->user;
  /* Window 0: no wait for earlier confirms, only the recovery. */
  return edp_conn_publish_window(s->c, &m, 0, CONFIRM_TIMEOUT_MS, NULL);
}

static int publish_json(edp_watch_server *s, const char *queue,
                        const char *type, const char *correlation_id,
                        json_t *body) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (!text)
    return EDP_ENOMEM;
  int rc = publish_text(s, queue, type, correlation_id, text, strlen(text));
  free(text);
  return rc;
}

/* Removes the watches whose queue a basic.return said is gone. */
static int remove_gone(edp_watch_server *s) {
  int removed = 0;
  for (size_t i = 0; i < s->n_gone; i++) {
    struct edp__watch *w = edp__watch_find(&s->r, s->gone[i]);
    if (w) {
      /* The gauge first: whoever saw the event sees it smaller. */
      edp_gauge_set(&s->st.watches, (int)s->r.n_w - 1);
      emit(s, EDP_WATCH_REMOVED, w->queue, w->service, NULL, 0,
           "queue not found", w->user);
      edp__watch_remove(&s->r, s->gone[i]);
      removed++;
    }
    free(s->gone[i]);
  }
  s->n_gone = 0;
  return removed ? save_store(s, "removed watches") : 0;
}

/* Waits for every confirm, reconnecting if the connection drops (the
 * reconnect publishes the unconfirmed messages again); then removes the
 * watches whose queue was gone. */
static int settle_confirms(edp_watch_server *s) {
  int rc = edp_conn_wait_confirms_recover(s->c, 0, CONFIRM_TIMEOUT_MS, NULL);
  int src = remove_gone(s);
  return rc ? rc : src;
}

/* ---------- server API ---------- */

void edp_watch_server_opts_init(edp_watch_server_opts *o) {
  memset(o, 0, sizeof(*o));
  o->request_queue = EDP_WATCH_REQUEST_QUEUE;
  o->max_watches = 10000;
  o->max_per_user = 1000;
  o->prune_interval_ms = 30000;
  o->prune_rate = 500;
}

/* Declares the request queue and consumes it, bodies over the request
 * limit left unread: at the start, and again when the broker ended the
 * consumer (someone deleted the queue). */
static int serve_requests(edp_watch_server *s) {
  int rc =
      edp_conn_queue_declare(s->c, s->request_queue, NULL, NULL, 0, NULL, NULL);
  edp_consume_opts co;
  edp_consume_opts_init(&co);
  co.max_body = EDP_WATCH_MAX_REQUEST;
  if (!rc)
    rc = edp_conn_consume(s->c, s->request_queue, &co, NULL, 0);
  return rc;
}

int edp_watch_server_new(edp_conn *c, const edp_watch_server_opts *o,
                         edp_watch_server **out) {
  if (!c || !o || !out || !o->store_path || !o->store_path[0] ||
      !o->request_queue || !o->request_queue[0] || o->prune_interval_ms < 0 ||
      o->prune_rate < 0)
    return EDP_EINVAL;
  *out = NULL;
  edp_watch_server *s = calloc(1, sizeof(*s));
  if (!s)
    return EDP_ENOMEM;
  s->c = c;
  s->o = *o;
  s->store_path = strdup(o->store_path);
  s->request_queue = strdup(o->request_queue);
  s->prefix = o->queue_prefix ? strdup(o->queue_prefix) : NULL;
  s->user = edp_conn_user(c)[0] ? strdup(edp_conn_user(c)) : NULL;
  int rc = s->store_path && s->request_queue &&
                   (!o->queue_prefix || s->prefix) &&
                   (!edp_conn_user(c)[0] || s->user)
               ? 0
               : EDP_ENOMEM;
  if (!rc)
    rc = load_store(s, &s->r);
  s->ping_ms = edp_now_ms();
  for (size_t i = 0; !rc && i < s->r.n_w; i++)
    s->r.w[i].checked_ms = s->ping_ms;
  if (!rc)
    rc = edp_conn_qos(c, EDP_WATCH_BATCH);
  if (!rc)
    rc = edp_conn_confirm_select(c);
  if (!rc)
    rc = serve_requests(s);
  if (rc) {
    edp_watch_server_destroy(&s);
    return rc;
  }
  sync_gauges(s);
  edp_conn_on_confirm(c, server_confirmed, s);
  *out = s;
  return 0;
}

void edp_watch_server_destroy(edp_watch_server **sp) {
  if (!sp || !*sp)
    return;
  edp_watch_server *s = *sp;
  edp_conn_on_confirm(s->c, NULL, NULL);
  edp__watch_reg_free(&s->r);
  for (size_t i = 0; i < s->n_gone; i++)
    free(s->gone[i]);
  free(s->gone);
  free(s->store_path);
  free(s->request_queue);
  free(s->prefix);
  free(s->user);
  free(s);
  *sp = NULL;
}

size_t edp_watch_server_watch_count(const edp_watch_server *s) {
  return s ? s->r.n_w : 0;
}

size_t edp_watch_server_key_count(const edp_watch_server *s) {
  return s ? json_object_size(s->r.values) : 0;
}

void edp_watch_server_stats_get(const edp_watch_server *s,
                                edp_watch_server_stats *out) {
  if (!out)
    return;
  memset(out, 0, sizeof(*out));
  if (!s)
    return;
  const edp_watch_server_stats *st = &s->st;
  out->watches = edp_gauge_read(&st->watches);
  out->keys = edp_gauge_read(&st->keys);
  out->registrations = edp_count_read(&st->registrations);
  out->rejected = edp_count_read(&st->rejected);
  out->changes = edp_count_read(&st->changes);
  out->notified = edp_count_read(&st->notified);
  out->notify_returned = edp_count_read(&st->notify_returned);
  out->pings = edp_count_read(&st->pings);
  out->ping_returned = edp_count_read(&st->ping_returned);
  out->removed = edp_count_read(&st->removed);
  out->saves = edp_count_read(&st->saves);
  out->save_errors = edp_count_read(&st->save_errors);
}

void edp_watch_server_collect(const void *server, edp_metrics_out *out) {
  const edp_watch_server *s = server;
  edp_watch_server_stats st;
  edp_watch_server_stats_get(s, &st);
  char l[512] = "";
  edp_metrics_label(l, sizeof(l), "queue", s->request_queue);
  edp_metrics_gauge(out, "edp_watch_watches",
                    "Watches in the config server's registry.", l, st.watches);
  edp_metrics_gauge(out, "edp_watch_keys", "Values the config server stores.",
                    l, st.keys);
  const struct {
    const char *name, *help;
    uint64_t v;
  } c[] = {
      {"edp_watch_registrations_total",
       "Watches registered (or changed by their owner).", st.registrations},
      {"edp_watch_requests_rejected_total",
       "Registration requests refused: malformed, hijack attempts, quotas, "
       "store not writable.",
       st.rejected},
      {"edp_watch_changes_total", "Values set.", st.changes},
      {"edp_watch_notifications_sent_total",
       "Changes the broker confirmed into a watch's queue.", st.notified},
      {"edp_watch_notifications_returned_total",
       "Changes returned unroutable: the watch's queue is gone.",
       st.notify_returned},
      {"edp_watch_pings_total", "Orphan pings published to watch queues.",
       st.pings},
      {"edp_watch_pings_returned_total",
       "Orphan pings returned: the watch's queue is gone.", st.ping_returned},
      {"edp_watch_watches_removed_total",
       "Watches removed because their queue is gone.", st.removed},
      {"edp_watch_store_writes_total", "Store writes.", st.saves},
      {"edp_watch_store_write_errors_total", "Store writes that failed.",
       st.save_errors}};
  for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
    edp_metrics_counter(out, c[i].name, c[i].help, l, c[i].v);
}

/* The current values a watch of keys (NULL/empty = all) should get. */
static json_t *values_for(edp_watch_server *s, json_t *keys) {
  if (!keys || json_array_size(keys) == 0)
    return json_incref(s->r.values); /* read only, serialised at once */
  json_t *out = json_object();
  size_t i;
  json_t *k;
  json_array_foreach(keys, i, k) {
    json_t *v = json_object_get(s->r.values, json_string_value(k));
    if (v)
      json_object_set(out, json_string_value(k), v);
  }
  return out;
}

static json_t *ok_reply(edp_watch_server *s, const struct edp__watch *w,
                        json_t *keys) {
  return json_pack("{s:b,s:I,s:s,s:o}", "ok", 1, "version",
                   (json_int_t)s->r.version, "token", w->token, "values",
                   values_for(s, keys));
}

/* Registers (or, for its owner, changes) the watch the request asks for. */
static const char *register_watch(edp_watch_server *s, struct item *it,
                                  const edp__watch_req *req, const char *user,
                                  struct edp__watch *old) {
  if (!old && s->r.n_w >= s->o.max_watches)
    return "registry full";
  if (!old && edp__watch_user_count(&s->r, user) >= s->o.max_per_user)
    return "quota exceeded: this user_id holds its maximum of watches";
  struct edp__watch w;
  memset(&w, 0, sizeof(w));
  size_t n = req->keys ? json_array_size(req->keys) : 0;
  w.queue = strdup(req->queue);
  w.service = req->service ? strdup(req->service) : NULL;
  w.user = strdup(user);
  const char *corr = it->d.correlation_id ? it->d.correlation_id : "";
  w.corr = strdup(old ? old->corr : corr);
  w.keys = n ? calloc(n, sizeof(char *)) : NULL;
  int ok = w.queue && (!req->service || w.service) && w.user && w.corr &&
           (!n || w.keys);
  for (size_t i = 0; ok && i < n; i++) {
    ok = (w.keys[i] = strdup(json_string_value(json_array_get(req->keys, i))))
             ? 1
             : 0;
    w.n_keys += ok;
  }
  if (ok && old)
    memcpy(w.token, old->token, sizeof(w.token));
  else if (ok && edp__watch_random_hex(w.token, EDP__WATCH_TOKEN_HEX))
    ok = 0;
  w.checked_ms = edp_now_ms();
  if (!ok || edp__watch_put(&s->r, &w)) {
    edp__watch_free(&w);
    return "server out of memory";
  }
  sync_gauges(s);
  it->registered = 1;
  it->reply = ok_reply(s, edp__watch_find(&s->r, req->queue), req->keys);
  return NULL;
}

/* Judges one request: the reply (or none) and the registry change. */
static void judge(edp_watch_server *s, struct item *it) {
  const edp_delivery *d = &it->d;
  edp__watch_req req;
  const char *why =
      d->oversize ? "request too large"
                  : edp__watch_parse_request(d->body, d->body_len, d->reply_to,
                                             s->prefix, &req);
  if (d->oversize)
    memset(&req, 0, sizeof(req));
  /* Where a reply may go: an allowed queue nobody registered yet, or the
   * registered queue when the request proves it comes from its owner. */
  int may_reply = edp__watch_queue_allowed(s->prefix, d->reply_to);
  struct edp__watch *old =
      may_reply ? edp__watch_find(&s->r, d->reply_to) : NULL;
  const char *user = d->user_id;
  int owner = old && user && !strcmp(old->user, user);
  if (old &&
      !(owner && req.token && edp__watch_token_eq(req.token, old->token))) {
    /* The creator's request again, redelivered (the broker sets that
     * flag, no publisher can) after a crash before its ack: answer it. */
    if (owner && !why && d->redelivered && d->correlation_id &&
        !strcmp(d->correlation_id, old->corr))
      it->reply = ok_reply(s, old, req.keys);
    else if (!why)
      why = "queue is registered by another client (no reply sent)";
    may_reply = it->reply != NULL;
  }
  if (!why && !user)
    why = "no user_id: set the user_id property to your login user";
  json_t *user_json = why || !user ? NULL : json_string(user); /* UTF-8? */
  if (!why && (!edp__watch_printable(user, EDP__WATCH_MAX_USER) || !user_json))
    why = "user_id must be printable UTF-8";
  json_decref(user_json);
  if (!why && !it->reply)
    why = register_watch(s, it, &req, user, old);
  if (why) {
    it->why = why;
    emit(s, EDP_WATCH_REJECTED, may_reply ? d->reply_to : NULL, NULL, NULL, 0,
         why, user);
    if (may_reply)
      it->reply = json_pack("{s:b,s:s}", "ok", 0, "error", why);
  }
  edp__watch_req_clear(&req);
}

/* The replies of a batch whose store write failed become errors; the
 * registry goes back to what the store holds. */
static int refuse_batch(edp_watch_server *s, struct item *items, size_t n) {
  edp__watch_reg r;
  int rc = load_store(s, &r);
  if (rc)
    return rc;
  edp__watch_reg_free(&s->r);
  s->r = r;
  sync_gauges(s);
  for (size_t i = 0; i < n; i++) {
    if (!items[i].registered)
      continue;
    items[i].registered = 0;
    json_decref(items[i].reply);
    items[i].reply =
        json_pack("{s:b,s:s}", "ok", 0, "error", "store not writable");
    emit(s, EDP_WATCH_REJECTED, items[i].d.reply_to, NULL, NULL, 0,
         "store not writable", items[i].d.user_id);
  }
  return 0;
}

/* Publishes the batch's replies after its store write, waits for their
 * confirms, then acks its requests. */
static int answer_batch(edp_watch_server *s, struct item *items, size_t n) {
  int dirty = 0, rc = 0;
  for (size_t i = 0; i < n; i++)
    dirty |= items[i].registered;
  char why[40];
  snprintf(why, sizeof(why), "batch of %zu", n);
  if (dirty && save_store(s, why) && (rc = refuse_batch(s, items, n)))
    return rc;
  for (size_t i = 0; i < n; i++) {
    struct item *it = &items[i];
    if (it->registered) {
      struct edp__watch *w = edp__watch_find(&s->r, it->d.reply_to);
      emit(s, EDP_WATCH_REGISTERED, w->queue, w->service, NULL, s->r.version,
           NULL, w->user);
    }
    int prc = it->reply ? publish_json(s, it->d.reply_to, TYPE_REPLY,
                                       it->d.correlation_id, it->reply)
                        : 0;
    if (prc)
      return prc;
  }
  int src = settle_confirms(s);
  if (src)
    return src;
  for (size_t i = 0; i < n; i++) {
    /* A request of a channel that is gone is the broker's again: it comes
     * back redelivered, and is answered again. */
    int arc = edp_conn_ack(s->c, items[i].d.epoch, items[i].d.tag, 0);
    if (arc && arc != EDP_ESTALE && arc != EDP_ECLOSED)
      return arc;
  }
  return rc;
}

/* Pings the watches that are due, as many as the rate earned since the
 * last step; a ping to a queue that is gone comes back as a return and
 * the watch leaves the registry when the confirms settle. */
static int prune_step(edp_watch_server *s) {
  int64_t now = edp_now_ms();
  if (!s->o.prune_interval_ms || !s->o.prune_rate || !s->r.n_w) {
    s->ping_ms = now;
    return 0;
  }
  s->ping_credit += (double)(now - s->ping_ms) * s->o.prune_rate / 1000.0;
  s->ping_ms = now;
  if (s->ping_credit > s->o.prune_rate)
    s->ping_credit = s->o.prune_rate; /* at most a second's worth at once */
  size_t sent = 0;
  for (size_t seen = 0; seen < s->r.n_w && s->ping_credit >= 1; seen++) {
    struct edp__watch *w = &s->r.w[s->ping_next++ % s->r.n_w];
    if (now - w->checked_ms < s->o.prune_interval_ms)
      continue;
    w->checked_ms = now;
    s->ping_credit -= 1;
    int rc = publish_text(s, w->queue, TYPE_PING, NULL, "{}", 2);
    if (rc)
      return rc;
    edp_count_add(&s->st.pings, 1);
    sent++;
  }
  s->ping_next %= s->r.n_w ? s->r.n_w : 1;
  return sent ? settle_confirms(s) : 0;
}

/* Collects up to EDP_WATCH_BATCH deliveries, waiting up to timeout_ms for
 * the first. Returns how many (>= 0) or an error. */
static int collect(edp_watch_server *s, struct item *items, int timeout_ms) {
  int n = 0, rc = 0;
  for (int attempts = 0; n < EDP_WATCH_BATCH && attempts < 10;) {
    if (edp_conn_consumers(s->c) == 0 && edp_conn_is_open(s->c)) {
      /* The request queue was deleted under us (the notice may have gone
       * to the owner's own edp_conn_wait): serve a new one. */
      attempts++;
      rc = serve_requests(s);
      if (rc == EDP_ECLOSED)
        continue;
      if (rc)
        goto fail;
    }
    memset(&items[n], 0, sizeof(items[n]));
    rc = edp_conn_receive(s->c, &items[n].d, n ? 0 : timeout_ms);
    if (rc == EDP_ENOTFOUND)
      continue; /* the consumer ended: consumed again above */
    if (rc == EDP_ETIMEOUT)
      break;
    if (rc == EDP_ECLOSED) {
      attempts++;
      if ((rc = edp_conn_reconnect(s->c)))
        goto fail;
      continue;
    }
    if (rc == EDP_ECHANNEL)
      continue;
    if (rc)
      goto fail;
    n++;
  }
  return n;
fail: /* unacked: the broker gives them again */
  while (n > 0)
    edp_delivery_clear(&items[--n].d);
  return rc;
}

int edp_watch_server_serve(edp_watch_server *s, int timeout_ms) {
  if (!s)
    return EDP_EINVAL;
  int rc = prune_step(s);
  if (rc)
    return rc;
  struct item *items = calloc(EDP_WATCH_BATCH, sizeof(*items));
  if (!items)
    return EDP_ENOMEM;
  int handled = 0;
  for (;;) {
    int n = collect(s, items, handled ? 0 : timeout_ms);
    if (n <= 0) {
      rc = n;
      break;
    }
    for (int i = 0; i < n; i++)
      judge(s, &items[i]);
    rc = answer_batch(s, items, (size_t)n);
    for (int i = 0; i < n; i++) {
      edp_delivery_clear(&items[i].d);
      json_decref(items[i].reply);
    }
    if (rc == EDP_ECLOSED)
      rc = 0; /* the requests come back redelivered */
    if (rc)
      break;
    handled += n;
    /* A flood ends a call now and then, so that the caller's other work
     * (stdin commands, changes) and the pings keep their turn. */
    if (n < EDP_WATCH_BATCH || handled >= SERVE_MAX)
      break;
  }
  free(items);
  if (!rc && !handled)
    rc = EDP_ETIMEOUT;
  return rc;
}

/* The change text for one watch: the common part with its token spliced
 * in before the closing brace (one serialization for every watch). */
static char *change_for(const char *common, size_t len, const char *token,
                        size_t *out_len) {
  char *t = malloc(len + EDP__WATCH_TOKEN_HEX + 16);
  if (!t)
    return NULL;
  int n = snprintf(t, len + EDP__WATCH_TOKEN_HEX + 16, "%.*s,\"token\":\"%s\"}",
                   (int)(len - 1), common, token);
  *out_len = (size_t)n;
  return t;
}

int edp_watch_server_set(edp_watch_server *s, const char *key,
                         const char *value, int64_t *version) {
  if (!s || !edp__watch_key_valid(key) || !value)
    return EDP_EINVAL;
  if (strlen(value) > EDP_WATCH_MAX_VALUE)
    return EDP_ETOOBIG;
  json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
  if (!v)
    v = json_string(value);
  if (!v)
    return EDP_EBADDATA; /* not UTF-8 */
  json_t *old = json_object_get(s->r.values, key);
  json_incref(old);
  s->r.version++;
  json_object_set_new(
      s->r.values, key,
      json_pack("{s:o,s:I}", "value", v, "version", (json_int_t)s->r.version));
  int rc = save_store(s, "change");
  if (rc) {
    /* Not stored means not changed: nobody is told of a value that a
     * restart would forget. */
    s->r.version--;
    if (old)
      json_object_set(s->r.values, key, old);
    else
      json_object_del(s->r.values, key);
    json_decref(old);
    return rc;
  }
  json_decref(old);
  sync_gauges(s);
  if (version)
    *version = s->r.version;
  emit(s, EDP_WATCH_CHANGED, NULL, NULL, key, s->r.version, NULL, NULL);
  json_t *entry = json_object_get(s->r.values, key);
  json_t *change = json_pack("{s:s,s:O,s:I}", "key", key, "value",
                             json_object_get(entry, "value"), "version",
                             (json_int_t)s->r.version);
  char *text = change ? json_dumps(change, JSON_COMPACT) : NULL;
  json_decref(change);
  rc = text ? 0 : EDP_ENOMEM;
  /* Every watch gets the change: a publish that meets a lost connection
   * recovers it (the changes already published to the watches before go
   * out again) and goes on with the same watch. Only when the connection
   * can't be restored does the set fail, and then it says so. */
  size_t len = text ? strlen(text) : 0;
  for (size_t i = 0; i < s->r.n_w && !rc; i++) {
    if (!edp__watch_wants(&s->r.w[i], key))
      continue;
    size_t n;
    char *t = change_for(text, len, s->r.w[i].token, &n);
    rc = t ? publish_text(s, s->r.w[i].queue, TYPE_CHANGE, NULL, t, n)
           : EDP_ENOMEM;
    free(t);
  }
  free(text);
  if (!rc)
    rc = settle_confirms(s);
  else
    remove_gone(s); /* returns that came before the failure still count */
  return rc;
}
