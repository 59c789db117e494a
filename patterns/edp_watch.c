/*
 * edp_watch.c - watch notification (see edp_watch.h for the contract and
 * the wire format).
 *
 * Everything that comes from the network is checked before it can change
 * the registry: a request must be a small JSON object of known fields, and
 * the queue it registers (which is also where the reply goes) must be a
 * server-named "amq.gen-" queue or carry the configured prefix. Otherwise
 * anyone able to publish to config.q could make the server write into any
 * queue of the vhost. The store is saved atomically before a registration
 * is acknowledged, so a crash loses no acknowledged registration.
 */
#include "edp_watch.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_file.h"
#include "edp_util.h"

#define TYPE_REPLY "edp.watch.reply"
#define TYPE_CHANGE "edp.watch.change"
#define STORE_FORMAT "edp-watch-store-1"
#define MAX_STORE ((size_t)256 << 20)
#define CONFIRM_TIMEOUT_MS 30000

struct watch {
  char *queue, *service; /* service may be NULL */
  char **keys;           /* n_keys == 0: every key */
  size_t n_keys;
};

struct edp_watch_server {
  edp_conn *c;
  edp_watch_server_opts o;
  char *store_path, *request_queue, *prefix;
  json_t *values; /* key -> {"value": V, "version": n} */
  int64_t version;
  struct watch *w;
  size_t n_w, cap_w;
  /* filled by the confirm callback while a change is published */
  char **gone;
  size_t n_gone, cap_gone;
};

/* ---------- validation ---------- */

static int printable(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max)
    return 0;
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      return 0;
  return 1;
}

/* A queue name the server may publish into: server-named, or with the
 * configured prefix. */
static int queue_allowed(const edp_watch_server *s, const char *q) {
  if (!q || !printable(q, 255))
    return 0;
  if (!strncmp(q, "amq.gen-", 8) && q[8]) {
    for (const char *p = q + 8; *p; p++)
      if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
        return 0;
    return 1;
  }
  return s->prefix && s->prefix[0] &&
         !strncmp(q, s->prefix, strlen(s->prefix)) &&
         strlen(q) > strlen(s->prefix);
}

static int key_valid(const char *k) {
  return k && printable(k, EDP_WATCH_MAX_KEY_LEN);
}

/* ---------- registry and store ---------- */

static void free_watch(struct watch *w) {
  free(w->queue);
  free(w->service);
  for (size_t i = 0; i < w->n_keys; i++)
    free(w->keys[i]);
  free(w->keys);
}

static int watches_key(const struct watch *w, const char *key) {
  if (w->n_keys == 0)
    return 1;
  for (size_t i = 0; i < w->n_keys; i++)
    if (!strcmp(w->keys[i], key))
      return 1;
  return 0;
}

static struct watch *find_watch(edp_watch_server *s, const char *queue) {
  for (size_t i = 0; i < s->n_w; i++)
    if (!strcmp(s->w[i].queue, queue))
      return &s->w[i];
  return NULL;
}

static void remove_watch(edp_watch_server *s, const char *queue) {
  struct watch *w = find_watch(s, queue);
  if (!w)
    return;
  free_watch(w);
  *w = s->w[--s->n_w];
}

/* Builds a watch from already validated JSON (queue string, optional
 * service string, optional keys array of strings). */
static int watch_from_json(struct watch *w, const char *queue,
                           const char *service, json_t *keys) {
  memset(w, 0, sizeof(*w));
  w->queue = strdup(queue);
  w->service = service ? strdup(service) : NULL;
  size_t n = keys ? json_array_size(keys) : 0;
  w->keys = n ? calloc(n, sizeof(char *)) : NULL;
  if (!w->queue || (service && !w->service) || (n && !w->keys)) {
    free_watch(w);
    return EDP_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    if (!(w->keys[i] = strdup(json_string_value(json_array_get(keys, i))))) {
      free_watch(w);
      return EDP_ENOMEM;
    }
    w->n_keys++;
  }
  return 0;
}

/* Adds or replaces the watch of queue. The new watch is moved in. */
static int put_watch(edp_watch_server *s, struct watch *nw) {
  struct watch *old = find_watch(s, nw->queue);
  if (old) {
    free_watch(old);
    *old = *nw;
    return 0;
  }
  if (s->n_w == s->cap_w) {
    size_t cap = s->cap_w ? s->cap_w * 2 : 16;
    struct watch *n = realloc(s->w, cap * sizeof(*n));
    if (!n)
      return EDP_ENOMEM;
    s->w = n;
    s->cap_w = cap;
  }
  s->w[s->n_w++] = *nw;
  return 0;
}

static json_t *store_json(const edp_watch_server *s) {
  json_t *watches = json_array();
  for (size_t i = 0; i < s->n_w; i++) {
    json_t *keys = json_array();
    for (size_t k = 0; k < s->w[i].n_keys; k++)
      json_array_append_new(keys, json_string(s->w[i].keys[k]));
    json_t *w = json_pack("{s:s,s:o}", "queue", s->w[i].queue, "keys", keys);
    if (s->w[i].service)
      json_object_set_new(w, "service", json_string(s->w[i].service));
    json_array_append_new(watches, w);
  }
  return json_pack("{s:s,s:I,s:O,s:o}", "format", STORE_FORMAT, "version",
                   (json_int_t)s->version, "values", s->values, "watches",
                   watches);
}

static int save_store(edp_watch_server *s) {
  json_t *j = store_json(s);
  char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
  json_decref(j);
  if (!text)
    return EDP_ENOMEM;
  int rc = edp_file_write_atomic(s->store_path, text, strlen(text), 0600);
  free(text);
  return rc;
}

static int keys_valid(json_t *keys) {
  if (!keys)
    return 1;
  if (!json_is_array(keys) || json_array_size(keys) > EDP_WATCH_MAX_KEYS)
    return 0;
  size_t i;
  json_t *k;
  json_array_foreach(keys, i, k) {
    if (!json_is_string(k) || !key_valid(json_string_value(k)))
      return 0;
  }
  return 1;
}

/* Loads and validates the store; a missing file is an empty store. */
static int load_store(edp_watch_server *s) {
  char *text = NULL;
  int rc = edp_file_read(s->store_path, MAX_STORE, &text, NULL);
  if (rc == EDP_ENOTFOUND) {
    s->values = json_object();
    return s->values ? 0 : EDP_ENOMEM;
  }
  if (rc)
    return rc == EDP_ETOOBIG ? EDP_EBADDATA : rc;
  json_t *j = json_loads(text, 0, NULL);
  free(text);
  json_t *values = json_object_get(j, "values");
  json_t *watches = json_object_get(j, "watches");
  json_t *version = json_object_get(j, "version");
  const char *format = json_string_value(json_object_get(j, "format"));
  rc = json_is_object(values) && json_is_array(watches) &&
               json_is_integer(version) && json_integer_value(version) >= 0 &&
               format && !strcmp(format, STORE_FORMAT)
           ? 0
           : EDP_EBADDATA;
  const char *key;
  json_t *v;
  json_object_foreach(rc ? NULL : values, key, v) {
    if (!key_valid(key) || !json_is_object(v) || !json_object_get(v, "value") ||
        !json_is_integer(json_object_get(v, "version")))
      rc = EDP_EBADDATA;
  }
  size_t i;
  json_array_foreach(rc ? NULL : watches, i, v) {
    const char *q = json_string_value(json_object_get(v, "queue"));
    json_t *service = json_object_get(v, "service");
    json_t *keys = json_object_get(v, "keys");
    struct watch w;
    if (!queue_allowed(s, q) || (service && !json_is_string(service)) ||
        !keys_valid(keys)) {
      rc = EDP_EBADDATA;
      break;
    }
    rc = watch_from_json(&w, q, json_string_value(service), keys);
    if (!rc && (rc = put_watch(s, &w)))
      free_watch(&w);
    if (rc)
      break;
  }
  if (!rc) {
    s->values = json_incref(values);
    s->version = json_integer_value(version);
  }
  json_decref(j);
  return rc;
}

/* ---------- publishing ---------- */

static void emit(edp_watch_server *s, int event, const char *queue,
                 const char *service, const char *key, int64_t version,
                 const char *detail) {
  if (!s->o.on_event)
    return;
  edp_watch_info info = {event, queue, service, key, version, detail};
  s->o.on_event(s->o.ud, &info);
}

static void server_confirmed(void *ud, const edp_confirm *cf) {
  edp_watch_server *s = ud;
  const char *q = cf->msg->routing_key;
  if (cf->status == EDP_CONFIRM_RETURNED) {
    if (s->n_gone == s->cap_gone) {
      size_t cap = s->cap_gone ? s->cap_gone * 2 : 8;
      char **n = realloc(s->gone, cap * sizeof(*n));
      if (!n)
        return; /* the watch stays; the next change retries its removal */
      s->gone = n;
      s->cap_gone = cap;
    }
    if ((s->gone[s->n_gone] = strdup(q)))
      s->n_gone++;
  } else if (cf->status == EDP_CONFIRM_ACK && cf->msg->type &&
             !strcmp(cf->msg->type, TYPE_CHANGE)) {
    /* The change says which key and version it carries: one published
     * again after a reconnect may be confirmed during a later call. */
    json_t *j = json_loadb(cf->msg->body, cf->msg->body_len, 0, NULL);
    const char *key = json_string_value(json_object_get(j, "key"));
    json_t *version = json_object_get(j, "version");
    struct watch *w = find_watch(s, q);
    emit(s, EDP_WATCH_NOTIFIED, q, w ? w->service : NULL, key,
         json_is_integer(version) ? json_integer_value(version) : 0, NULL);
    json_decref(j);
  }
}

/* Publishes one message of the server (mandatory, confirmed later by
 * settle_confirms). A lost connection is recovered on the way: the
 * reconnect publishes the messages sent before and not yet confirmed
 * again, then this one goes out on the new connection. The message is
 * never dropped for a dead socket: it is sent, or the error says that the
 * connection could not be restored. */
static int publish_text(edp_watch_server *s, const char *queue,
                        const char *type, const char *correlation_id,
                        const char *text) {
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = queue;
  m.body = text;
  m.body_len = strlen(text);
  m.mandatory = 1;
  m.content_type = "application/json";
  m.type = type;
  m.correlation_id = correlation_id;
  /* Window 0: no wait for earlier confirms, only the recovery. */
  return edp_conn_publish_window(s->c, &m, 0, CONFIRM_TIMEOUT_MS, NULL);
}

static int publish_json(edp_watch_server *s, const char *queue,
                        const char *type, const char *correlation_id,
                        json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  if (!text)
    return EDP_ENOMEM;
  int rc = publish_text(s, queue, type, correlation_id, text);
  free(text);
  return rc;
}

/* Removes the watches whose queue a basic.return said is gone. */
static int remove_gone(edp_watch_server *s) {
  int removed = 0;
  for (size_t i = 0; i < s->n_gone; i++) {
    struct watch *w = find_watch(s, s->gone[i]);
    if (w) {
      emit(s, EDP_WATCH_REMOVED, w->queue, w->service, NULL, 0,
           "queue not found");
      remove_watch(s, s->gone[i]);
      removed = 1;
    }
    free(s->gone[i]);
  }
  s->n_gone = 0;
  return removed ? save_store(s) : 0;
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
}

/* Declares the request queue and consumes it: at the start, and again
 * when the broker ended the consumer (someone deleted the queue), which the
 * server may learn from its connection at any later call. */
static int serve_requests(edp_watch_server *s) {
  int rc =
      edp_conn_queue_declare(s->c, s->request_queue, NULL, NULL, 0, NULL, NULL);
  if (!rc)
    rc = edp_conn_consume(s->c, s->request_queue, NULL, NULL, 0);
  return rc;
}

int edp_watch_server_new(edp_conn *c, const edp_watch_server_opts *o,
                         edp_watch_server **out) {
  if (!c || !o || !out || !o->store_path || !o->store_path[0] ||
      !o->request_queue || !o->request_queue[0])
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
  int rc = s->store_path && s->request_queue && (!o->queue_prefix || s->prefix)
               ? 0
               : EDP_ENOMEM;
  if (!rc)
    rc = load_store(s);
  if (!rc)
    rc = edp_conn_qos(c, 32);
  if (!rc)
    rc = edp_conn_confirm_select(c);
  if (!rc)
    rc = serve_requests(s);
  if (rc) {
    edp_watch_server_destroy(&s);
    return rc;
  }
  edp_conn_on_confirm(c, server_confirmed, s);
  *out = s;
  return 0;
}

void edp_watch_server_destroy(edp_watch_server **sp) {
  if (!sp || !*sp)
    return;
  edp_watch_server *s = *sp;
  edp_conn_on_confirm(s->c, NULL, NULL);
  for (size_t i = 0; i < s->n_w; i++)
    free_watch(&s->w[i]);
  free(s->w);
  for (size_t i = 0; i < s->n_gone; i++)
    free(s->gone[i]);
  free(s->gone);
  json_decref(s->values);
  free(s->store_path);
  free(s->request_queue);
  free(s->prefix);
  free(s);
  *sp = NULL;
}

size_t edp_watch_server_watch_count(const edp_watch_server *s) {
  return s ? s->n_w : 0;
}

size_t edp_watch_server_key_count(const edp_watch_server *s) {
  return s ? json_object_size(s->values) : 0;
}

/* The current values a watch of keys (NULL/empty = all) should get. */
static json_t *values_for(edp_watch_server *s, json_t *keys) {
  if (!keys || json_array_size(keys) == 0)
    return json_deep_copy(s->values);
  json_t *out = json_object();
  size_t i;
  json_t *k;
  json_array_foreach(keys, i, k) {
    json_t *v = json_object_get(s->values, json_string_value(k));
    if (v)
      json_object_set(out, json_string_value(k), v);
  }
  return out;
}

/* Checks a request; returns NULL if good, else the reason. */
static const char *check_request(edp_watch_server *s, const edp_delivery *d,
                                 json_t **req) {
  *req = NULL;
  if (!d->reply_to)
    return "no reply_to";
  if (!queue_allowed(s, d->reply_to))
    return "reply_to is not a server-named (amq.gen-) or allowed queue";
  if (d->body_len > EDP_WATCH_MAX_REQUEST)
    return "request too large";
  json_error_t err;
  json_t *j = json_loadb(d->body, d->body_len, JSON_REJECT_DUPLICATES, &err);
  if (!j)
    return "not JSON";
  *req = j;
  if (!json_is_object(j))
    return "request is not a JSON object";
  const char *field;
  json_t *v;
  json_object_foreach(j, field, v) {
    if (strcmp(field, "queue") && strcmp(field, "service") &&
        strcmp(field, "keys"))
      return "unknown field in request";
  }
  json_t *queue = json_object_get(j, "queue");
  json_t *service = json_object_get(j, "service");
  if (!json_is_string(queue))
    return "\"queue\" must be a string";
  if (strcmp(json_string_value(queue), d->reply_to))
    return "\"queue\" must be the request's reply_to queue";
  if (service &&
      (!json_is_string(service) ||
       !printable(json_string_value(service), EDP_WATCH_MAX_NAME_LEN)))
    return "\"service\" must be a short printable string";
  if (!keys_valid(json_object_get(j, "keys")))
    return "\"keys\" must be an array of at most 64 short printable strings";
  if (!find_watch(s, d->reply_to) && s->n_w >= s->o.max_watches)
    return "registry full";
  return NULL;
}

static int handle_request(edp_watch_server *s, const edp_delivery *d) {
  json_t *req = NULL;
  const char *why = check_request(s, d, &req);
  struct watch w;
  int rc = 0;
  if (!why) {
    rc = watch_from_json(&w, d->reply_to,
                         json_string_value(json_object_get(req, "service")),
                         json_object_get(req, "keys"));
    if (!rc && (rc = put_watch(s, &w)))
      free_watch(&w);
    if (!rc && (rc = save_store(s))) {
      remove_watch(s, d->reply_to);
      why = "store not writable";
    }
  }
  if (why) {
    emit(s, EDP_WATCH_REJECTED,
         d->reply_to && queue_allowed(s, d->reply_to) ? d->reply_to : NULL,
         NULL, NULL, 0, why);
    /* An error reply only where the server may publish: never into a
     * queue the request merely named. */
    if (d->reply_to && queue_allowed(s, d->reply_to))
      rc = publish_json(s, d->reply_to, TYPE_REPLY, d->correlation_id,
                        json_pack("{s:b,s:s}", "ok", 0, "error", why));
  } else if (!rc) {
    struct watch *nw = find_watch(s, d->reply_to);
    emit(s, EDP_WATCH_REGISTERED, nw->queue, nw->service, NULL, s->version,
         NULL);
    rc = publish_json(s, d->reply_to, TYPE_REPLY, d->correlation_id,
                      json_pack("{s:b,s:I,s:o}", "ok", 1, "version",
                                (json_int_t)s->version, "values",
                                values_for(s, json_object_get(req, "keys"))));
  }
  json_decref(req);
  return rc;
}

int edp_watch_server_serve(edp_watch_server *s, int timeout_ms) {
  if (!s)
    return EDP_EINVAL;
  int handled = 0;
  for (int attempts = 0; attempts < 10;) {
    if (edp_conn_consumers(s->c) == 0 && edp_conn_is_open(s->c)) {
      /* The request queue was deleted under us (the notice may have gone
       * to the owner's own edp_conn_wait): serve a new one. */
      attempts++;
      int rc = serve_requests(s);
      if (rc == EDP_ECLOSED)
        continue;
      if (rc)
        return rc;
    }
    edp_delivery d;
    int rc = edp_conn_receive(s->c, &d, handled ? 0 : timeout_ms);
    if (rc == EDP_ENOTFOUND)
      continue; /* the consumer ended: consumed again above */
    if (rc == EDP_ETIMEOUT && handled)
      break;
    if (rc == EDP_ECLOSED) {
      attempts++;
      if ((rc = edp_conn_reconnect(s->c)))
        return rc;
      continue;
    }
    if (rc == EDP_ECHANNEL)
      continue;
    if (rc)
      return rc;
    rc = handle_request(s, &d);
    /* The reply is confirmed (and the registration saved) before the
     * request is acked: a crash in between redelivers the request, and
     * registering again is harmless. */
    if (!rc)
      rc = settle_confirms(s);
    if (!rc)
      rc = edp_conn_ack(s->c, d.epoch, d.tag, 0);
    edp_delivery_clear(&d);
    if (rc == EDP_ESTALE)
      rc = 0;
    if (rc && rc != EDP_ECLOSED)
      return rc;
    handled++;
  }
  return 0;
}

int edp_watch_server_set(edp_watch_server *s, const char *key,
                         const char *value, int64_t *version) {
  if (!s || !key_valid(key) || !value)
    return EDP_EINVAL;
  if (strlen(value) > EDP_WATCH_MAX_VALUE)
    return EDP_ETOOBIG;
  json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
  if (!v)
    v = json_string(value);
  if (!v)
    return EDP_EBADDATA; /* not UTF-8 */
  json_t *old = json_object_get(s->values, key);
  json_incref(old);
  s->version++;
  json_object_set_new(
      s->values, key,
      json_pack("{s:o,s:I}", "value", v, "version", (json_int_t)s->version));
  int rc = save_store(s);
  if (rc) {
    /* Not stored means not changed: nobody is told of a value that a
     * restart would forget. */
    s->version--;
    if (old)
      json_object_set(s->values, key, old);
    else
      json_object_del(s->values, key);
    json_decref(old);
    return rc;
  }
  json_decref(old);
  if (version)
    *version = s->version;
  emit(s, EDP_WATCH_CHANGED, NULL, NULL, key, s->version, NULL);
  json_t *entry = json_object_get(s->values, key);
  json_t *change = json_pack("{s:s,s:O,s:I}", "key", key, "value",
                             json_object_get(entry, "value"), "version",
                             (json_int_t)s->version);
  char *text = change ? json_dumps(change, JSON_COMPACT) : NULL;
  json_decref(change);
  rc = text ? 0 : EDP_ENOMEM;
  /* Every watch gets the change: a publish that meets a lost connection
   * recovers it (the changes already published to the watches before go
   * out again) and goes on with the same watch. Only when the connection
   * can't be restored does the set fail, and then it says so. */
  for (size_t i = 0; i < s->n_w && !rc; i++) {
    if (watches_key(&s->w[i], key))
      rc = publish_text(s, s->w[i].queue, TYPE_CHANGE, NULL, text);
  }
  free(text);
  if (!rc)
    rc = settle_confirms(s);
  else
    remove_gone(s); /* returns that came before the failure still count */
  return rc;
}

/* ---------- client ---------- */

struct edp_watch_client {
  edp_conn *c;
  char *service, *request_queue;
  char **keys;
  size_t n_keys;
  char queue[256];
  char correlation[64];
  int need_register;
  json_t *seen; /* key -> last version */
  edp_watch_update *pending;
  size_t n_pending, cap_pending, next_pending;
};

void edp_watch_update_clear(edp_watch_update *u) {
  if (!u)
    return;
  free(u->key);
  free(u->value);
  memset(u, 0, sizeof(*u));
}

static void client_renamed(void *ud, const char *old_name,
                           const char *new_name) {
  edp_watch_client *cl = ud;
  if (!strcmp(old_name, cl->queue)) {
    snprintf(cl->queue, sizeof(cl->queue), "%s", new_name);
    cl->need_register = 1;
  }
}

static int send_register(edp_watch_client *cl) {
  json_t *keys = json_array();
  for (size_t i = 0; i < cl->n_keys; i++)
    json_array_append_new(keys, json_string(cl->keys[i]));
  json_t *req = json_pack("{s:s,s:o}", "queue", cl->queue, "keys", keys);
  if (req && cl->service)
    json_object_set_new(req, "service", json_string(cl->service));
  char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  if (!text)
    return EDP_ENOMEM;
  snprintf(cl->correlation, sizeof(cl->correlation), "%llx-%llx",
           (unsigned long long)edp_wall_ms(),
           (unsigned long long)(uintptr_t)cl);
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = cl->request_queue;
  m.body = text;
  m.body_len = strlen(text);
  m.persistent = 1; /* waits in config.q through a server restart */
  m.reply_to = cl->queue;
  m.correlation_id = cl->correlation;
  m.content_type = "application/json";
  int rc = edp_conn_publish(cl->c, &m, NULL);
  free(text);
  if (!rc)
    cl->need_register = 0;
  return rc;
}

int edp_watch_client_new(edp_conn *c, const char *service,
                         const char *const *keys, size_t n_keys,
                         const char *request_queue, edp_watch_client **out) {
  if (!c || !out || (n_keys && !keys) || n_keys > EDP_WATCH_MAX_KEYS ||
      (service && !printable(service, EDP_WATCH_MAX_NAME_LEN)))
    return EDP_EINVAL;
  for (size_t i = 0; i < n_keys; i++)
    if (!key_valid(keys[i]))
      return EDP_EINVAL;
  *out = NULL;
  edp_watch_client *cl = calloc(1, sizeof(*cl));
  if (!cl)
    return EDP_ENOMEM;
  cl->c = c;
  cl->service = service ? strdup(service) : NULL;
  cl->request_queue =
      strdup(request_queue ? request_queue : EDP_WATCH_REQUEST_QUEUE);
  cl->keys = n_keys ? calloc(n_keys, sizeof(char *)) : NULL;
  cl->seen = json_object();
  int rc = cl->request_queue && cl->seen && (!service || cl->service) &&
                   (!n_keys || cl->keys)
               ? 0
               : EDP_ENOMEM;
  for (size_t i = 0; !rc && i < n_keys; i++) {
    if (!(cl->keys[i] = strdup(keys[i])))
      rc = EDP_ENOMEM;
    else
      cl->n_keys++;
  }
  edp_queue_opts qo;
  edp_queue_opts_init(&qo);
  qo.durable = 0;
  qo.exclusive = 1;
  qo.auto_delete = 1;
  /* Declaring the (durable) request queue too means a registration sent
   * before the server ever ran waits for it instead of being dropped. */
  if (!rc)
    rc =
        edp_conn_queue_declare(c, cl->request_queue, NULL, NULL, 0, NULL, NULL);
  if (!rc)
    rc = edp_conn_queue_declare(c, "", &qo, cl->queue, sizeof(cl->queue), NULL,
                                NULL);
  if (!rc)
    rc = edp_conn_consume(c, cl->queue, NULL, NULL, 0);
  if (!rc)
    rc = send_register(cl);
  if (rc) {
    edp_watch_client_destroy(&cl);
    return rc;
  }
  edp_conn_on_queue_renamed(c, client_renamed, cl);
  *out = cl;
  return 0;
}

void edp_watch_client_destroy(edp_watch_client **clp) {
  if (!clp || !*clp)
    return;
  edp_watch_client *cl = *clp;
  edp_conn_on_queue_renamed(cl->c, NULL, NULL);
  for (size_t i = 0; i < cl->n_keys; i++)
    free(cl->keys[i]);
  free(cl->keys);
  for (size_t i = cl->next_pending; i < cl->n_pending; i++)
    edp_watch_update_clear(&cl->pending[i]);
  free(cl->pending);
  json_decref(cl->seen);
  free(cl->service);
  free(cl->request_queue);
  free(cl);
  *clp = NULL;
}

const char *edp_watch_client_queue(const edp_watch_client *cl) {
  return cl ? cl->queue : "";
}

/* Records key's version; returns 1 if it is newer than what we saw. */
static int newer(edp_watch_client *cl, const char *key, int64_t version) {
  json_t *v = json_object_get(cl->seen, key);
  if (v && json_integer_value(v) >= version)
    return 0;
  json_object_set_new(cl->seen, key, json_integer(version));
  return 1;
}

static int make_update(edp_watch_update *u, const char *key, json_t *value,
                       int64_t version, int initial) {
  memset(u, 0, sizeof(*u));
  u->key = strdup(key);
  u->value = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
  u->version = version;
  u->initial = initial;
  if (!u->key || !u->value) {
    edp_watch_update_clear(u);
    return EDP_ENOMEM;
  }
  return 0;
}

/* Appends an initial update (key NULL: the registration marker). */
static int queue_update(edp_watch_client *cl, const char *key, json_t *value,
                        int64_t version) {
  if (cl->n_pending == cl->cap_pending) {
    size_t cap = cl->cap_pending ? cl->cap_pending * 2 : 8;
    edp_watch_update *n = realloc(cl->pending, cap * sizeof(*n));
    if (!n)
      return EDP_ENOMEM;
    cl->pending = n;
    cl->cap_pending = cap;
  }
  edp_watch_update *u = &cl->pending[cl->n_pending];
  if (key) {
    int rc = make_update(u, key, value, version, 1);
    if (rc)
      return rc;
  } else {
    memset(u, 0, sizeof(*u));
    u->version = version;
    u->initial = 1;
  }
  cl->n_pending++;
  return 0;
}

/* Queues the values of a registration reply as initial updates. */
static int take_reply(edp_watch_client *cl, json_t *reply,
                      edp_watch_update *err) {
  if (!json_is_true(json_object_get(reply, "ok"))) {
    const char *why = json_string_value(json_object_get(reply, "error"));
    memset(err, 0, sizeof(*err));
    err->value = strdup(why ? why : "registration refused");
    return EDP_EACCESS;
  }
  json_t *values = json_object_get(reply, "values");
  int rc = queue_update(cl, NULL, NULL,
                        json_integer_value(json_object_get(reply, "version")));
  const char *key;
  json_t *v;
  json_object_foreach(values, key, v) {
    json_int_t version = json_integer_value(json_object_get(v, "version"));
    if (rc)
      return rc;
    if (newer(cl, key, version))
      rc = queue_update(cl, key, json_object_get(v, "value"), version);
  }
  return rc;
}

int edp_watch_client_next(edp_watch_client *cl, edp_watch_update *u,
                          int timeout_ms) {
  if (!cl || !u)
    return EDP_EINVAL;
  memset(u, 0, sizeof(*u));
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (int recoveries = 0; recoveries < 10;) {
    if (cl->next_pending < cl->n_pending) {
      *u = cl->pending[cl->next_pending++];
      if (cl->next_pending == cl->n_pending)
        cl->next_pending = cl->n_pending = 0;
      return 0;
    }
    int rc = cl->need_register ? send_register(cl) : 0;
    edp_delivery d;
    if (!rc) {
      int left = -1;
      if (deadline >= 0) {
        int64_t l = deadline - edp_now_ms();
        left = l > 0 ? (int)l : 0;
      }
      rc = edp_conn_receive(cl->c, &d, left);
    }
    if (rc == EDP_ECLOSED) {
      recoveries++;
      if ((rc = edp_conn_reconnect(cl->c)))
        return rc;
      continue; /* client_renamed asked for a new registration */
    }
    if (rc == EDP_ECHANNEL)
      continue;
    if (rc)
      return rc;
    json_t *j = json_loadb(d.body, d.body_len, 0, NULL);
    if (d.type && !strcmp(d.type, TYPE_REPLY) && d.correlation_id &&
        !strcmp(d.correlation_id, cl->correlation)) {
      rc = take_reply(cl, j, u);
    } else if (d.type && !strcmp(d.type, TYPE_CHANGE)) {
      const char *key = json_string_value(json_object_get(j, "key"));
      json_t *version = json_object_get(j, "version");
      json_t *value = json_object_get(j, "value");
      if (key && json_is_integer(version) && value &&
          newer(cl, key, json_integer_value(version))) {
        rc = make_update(u, key, value, json_integer_value(version), 0);
        if (!rc)
          rc = 1; /* deliver it after the ack */
      }
    }
    /* Anything else (a stale reply, junk) is dropped: the queue is ours
     * and temporary, nothing in it is anyone else's message. */
    json_decref(j);
    int arc = edp_conn_ack(cl->c, d.epoch, d.tag, 0);
    edp_delivery_clear(&d);
    if (rc == 1)
      return 0;
    if (rc)
      return rc;
    if (arc && arc != EDP_ESTALE && arc != EDP_ECLOSED)
      return arc;
  }
  return EDP_ECONNECT;
}
