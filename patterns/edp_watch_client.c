/*
 * edp_watch_client.c - the service side of the watch pattern (see
 * edp_watch.h): a temporary queue, a registration, then the values and
 * every change.
 *
 * Anyone allowed to publish to the default exchange can put a message in
 * our queue, so nothing in it is believed for being there: the reply must
 * carry our correlation_id (128 random bits that travel only to the
 * server's request queue) and a change our token (sent by the server in
 * that reply, into the queue only this connection can read). A forged
 * change is dropped before its version is looked at, so it cannot make us
 * ignore later real ones.
 */
#include "edp_watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_util.h"
#include "edp_watch_internal.h"

struct edp_watch_client {
  edp_conn *c;
  char *service, *request_queue;
  char **keys;
  size_t n_keys;
  char queue[256];
  char correlation[EDP__WATCH_TOKEN_HEX + 1];
  char token[EDP__WATCH_TOKEN_HEX + 1]; /* "" until the reply came */
  int need_register;
  edp_watch_client_stats st; /* single-writer: the thread calling next */
  json_t *seen;              /* key -> last version */
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
    cl->token[0] = '\0'; /* a new queue: a new watch, a new token */
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
  int rc = edp__watch_random_hex(cl->correlation, EDP__WATCH_TOKEN_HEX);
  if (rc) {
    free(text);
    return rc;
  }
  edp_msg m;
  edp_msg_init(&m);
  m.routing_key = cl->request_queue;
  m.body = text;
  m.body_len = strlen(text);
  m.persistent = 1; /* waits in config.q through a server restart */
  m.reply_to = cl->queue;
  m.correlation_id = cl->correlation;
  m.content_type = "application/json";
  m.user_id =
      edp_conn_user(cl->c); /* the server wants it; the broker checks it */
  rc = edp_conn_publish(cl->c, &m, NULL);
  free(text);
  if (!rc)
    cl->need_register = 0;
  return rc;
}

int edp_watch_client_new(edp_conn *c, const char *service,
                         const char *const *keys, size_t n_keys,
                         const char *request_queue, edp_watch_client **out) {
  if (!c || !out || (n_keys && !keys) || n_keys > EDP_WATCH_MAX_KEYS ||
      (service && !edp__watch_printable(service, EDP_WATCH_MAX_NAME_LEN)))
    return EDP_EINVAL;
  for (size_t i = 0; i < n_keys; i++)
    if (!edp__watch_key_valid(keys[i]))
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

size_t edp_watch_client_dropped(const edp_watch_client *cl) {
  return cl ? (size_t)edp_count_read(&cl->st.dropped) : 0;
}

void edp_watch_client_stats_get(const edp_watch_client *cl,
                                edp_watch_client_stats *out) {
  if (!out)
    return;
  memset(out, 0, sizeof(*out));
  if (!cl)
    return;
  out->registrations = edp_count_read(&cl->st.registrations);
  out->values = edp_count_read(&cl->st.values);
  out->notifications = edp_count_read(&cl->st.notifications);
  out->stale = edp_count_read(&cl->st.stale);
  out->dropped = edp_count_read(&cl->st.dropped);
}

void edp_watch_client_collect(const void *client, edp_metrics_out *out) {
  const edp_watch_client *cl = client;
  edp_watch_client_stats st;
  edp_watch_client_stats_get(cl, &st);
  char l[512] = "";
  if (cl->service)
    edp_metrics_label(l, sizeof(l), "service", cl->service);
  edp_metrics_counter(out, "edp_watch_notifications_received_total",
                      "Changes received from the config server.", l,
                      st.notifications);
  edp_metrics_counter(out, "edp_watch_client_registrations_total",
                      "Registrations the config server confirmed (one more "
                      "after each reconnect).",
                      l, st.registrations);
  edp_metrics_counter(out, "edp_watch_client_values_total",
                      "Current values received with a registration.", l,
                      st.values);
  edp_metrics_counter(out, "edp_watch_client_stale_total",
                      "Changes dropped as not newer than one seen (sent "
                      "again after the server's reconnect).",
                      l, st.stale);
  edp_metrics_counter(out, "edp_watch_client_dropped_total",
                      "Messages in the watch queue not from the config "
                      "server (no correlation_id or token of ours).",
                      l, st.dropped);
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
  if (edp__watch_grow((void **)&cl->pending, &cl->cap_pending, cl->n_pending,
                      sizeof(*cl->pending), 8))
    return EDP_ENOMEM;
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
  const char *token = json_string_value(json_object_get(reply, "token"));
  if (!token || strlen(token) != EDP__WATCH_TOKEN_HEX) {
    memset(err, 0, sizeof(*err));
    err->value = strdup("the server's reply has no token (an older server?)");
    return EDP_EPROTOCOL;
  }
  memcpy(cl->token, token, sizeof(cl->token));
  edp_count_add(&cl->st.registrations, 1);
  json_t *values = json_object_get(reply, "values");
  int rc = queue_update(cl, NULL, NULL,
                        json_integer_value(json_object_get(reply, "version")));
  const char *key;
  json_t *v;
  json_object_foreach(values, key, v) {
    json_int_t version = json_integer_value(json_object_get(v, "version"));
    if (rc)
      return rc;
    if (newer(cl, key, version) &&
        !(rc = queue_update(cl, key, json_object_get(v, "value"), version)))
      edp_count_add(&cl->st.values, 1);
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
        !strcmp(d.correlation_id, cl->correlation) && !cl->token[0]) {
      rc = take_reply(cl, j, u);
    } else if (d.type && !strcmp(d.type, TYPE_CHANGE) && cl->token[0] &&
               edp__watch_token_eq(
                   json_string_value(json_object_get(j, "token")), cl->token)) {
      const char *key = json_string_value(json_object_get(j, "key"));
      json_t *version = json_object_get(j, "version");
      json_t *value = json_object_get(j, "value");
      if (key && json_is_integer(version) && value &&
          newer(cl, key, json_integer_value(version))) {
        rc = make_update(u, key, value, json_integer_value(version), 0);
        if (!rc) {
          edp_count_add(&cl->st.notifications, 1);
          rc = 1; /* deliver it after the ack */
        }
      } else if (key && json_is_integer(version) && value) {
        edp_count_add(&cl->st.stale, 1);
      }
    } else if (!d.type || strcmp(d.type, TYPE_PING)) {
      /* Not from the server (no reply we wait for, no change with our
       * token): anyone can publish into our queue. Counted, dropped. */
      edp_count_add(&cl->st.dropped, 1);
    }
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
