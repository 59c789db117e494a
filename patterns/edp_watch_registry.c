/*
 * edp_watch_registry.c - the watch pattern's untrusted inputs and the
 * state they may change: registration requests (from anyone who can
 * publish to config.q) and the store (from disk, possibly damaged or
 * edited by hand). Every byte is checked before it reaches the registry;
 * both parsers are fuzzed (tests/fuzz/fuzz_watch_request.c and
 * fuzz_watch_store.c).
 *
 * The registry is an array of watches with two jansson hash tables beside
 * it: queue -> index (a lookup per request, not a scan of 10,000 watches)
 * and user -> number of watches (the per-user quota).
 */
#include "edp_watch_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "edp_error.h"

#define STORE_FORMAT_1 "edp-watch-store-1"
#define STORE_FORMAT "edp-watch-store-2"
/* Versions only grow; a store claiming more than this is not ours (and
 * incrementing it could overflow). */
#define MAX_VERSION ((int64_t)1 << 53)

/* ---------- validation ---------- */

int edp__watch_printable(const char *s, size_t max) {
  if (!s)
    return 0;
  size_t n = strlen(s);
  if (n == 0 || n > max)
    return 0;
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      return 0;
  return 1;
}

int edp__watch_queue_allowed(const char *prefix, const char *q) {
  if (!q || !edp__watch_printable(q, 255))
    return 0;
  if (!strncmp(q, "amq.gen-", 8) && q[8]) {
    for (const char *p = q + 8; *p; p++)
      if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
        return 0;
    return 1;
  }
  return prefix && prefix[0] && !strncmp(q, prefix, strlen(prefix)) &&
         strlen(q) > strlen(prefix);
}

int edp__watch_key_valid(const char *k) {
  return edp__watch_printable(k, EDP_WATCH_MAX_KEY_LEN);
}

static int token_valid(const char *t) {
  if (!t || strlen(t) != EDP__WATCH_TOKEN_HEX)
    return 0;
  for (; *t; t++)
    if (!isxdigit((unsigned char)*t) || isupper((unsigned char)*t))
      return 0;
  return 1;
}

int edp__watch_token_eq(const char *a, const char *b) {
  if (!a || !b || strlen(a) != EDP__WATCH_TOKEN_HEX ||
      strlen(b) != EDP__WATCH_TOKEN_HEX)
    return 0;
  unsigned char diff = 0;
  for (size_t i = 0; i < EDP__WATCH_TOKEN_HEX; i++)
    diff |= (unsigned char)(a[i] ^ b[i]);
  return diff == 0;
}

int edp__watch_random_hex(char *out, size_t hex_len) {
  unsigned char raw[64];
  size_t n = (hex_len + 1) / 2;
  if (n > sizeof(raw) || getrandom(raw, n, 0) != (ssize_t)n)
    return EDP_EIO;
  for (size_t i = 0; i < hex_len; i++)
    out[i] = "0123456789abcdef"[(raw[i / 2] >> (i % 2 ? 0 : 4)) & 15];
  out[hex_len] = '\0';
  return 0;
}

/* A JSON string's value, NULL if not a string or if it holds a NUL (the
 * C string would say less than the JSON did). */
static const char *clean_str(json_t *v) {
  const char *s = json_string_value(v);
  return s && strlen(s) == json_string_length(v) ? s : NULL;
}

static int keys_valid(json_t *keys) {
  if (!keys)
    return 1;
  if (!json_is_array(keys) || json_array_size(keys) > EDP_WATCH_MAX_KEYS)
    return 0;
  size_t i;
  json_t *k;
  json_array_foreach(keys, i, k) {
    if (!edp__watch_key_valid(clean_str(k)))
      return 0;
  }
  return 1;
}

/* ---------- requests ---------- */

void edp__watch_req_clear(edp__watch_req *req) {
  if (!req)
    return;
  json_decref(req->j);
  memset(req, 0, sizeof(*req));
}

const char *edp__watch_parse_request(const void *body, size_t len,
                                     const char *reply_to, const char *prefix,
                                     edp__watch_req *req) {
  memset(req, 0, sizeof(*req));
  if (!reply_to)
    return "no reply_to";
  if (!edp__watch_queue_allowed(prefix, reply_to))
    return "reply_to is not a server-named (amq.gen-) or allowed queue";
  if (len > EDP_WATCH_MAX_REQUEST)
    return "request too large";
  json_error_t err;
  json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
  if (!j)
    return "not JSON";
  req->j = j;
  if (!json_is_object(j))
    return "request is not a JSON object";
  const char *field;
  json_t *v;
  json_object_foreach(j, field, v) {
    if (strcmp(field, "queue") && strcmp(field, "service") &&
        strcmp(field, "keys") && strcmp(field, "token"))
      return "unknown field in request";
  }
  json_t *service = json_object_get(j, "service");
  json_t *token = json_object_get(j, "token");
  req->queue = clean_str(json_object_get(j, "queue"));
  if (!req->queue)
    return "\"queue\" must be a string";
  if (strcmp(req->queue, reply_to))
    return "\"queue\" must be the request's reply_to queue";
  if (service &&
      !edp__watch_printable(clean_str(service), EDP_WATCH_MAX_NAME_LEN))
    return "\"service\" must be a short printable string";
  req->service = clean_str(service);
  if (token && !token_valid(clean_str(token)))
    return "\"token\" must be the 32 hex digits of a registration reply";
  req->token = clean_str(token);
  req->keys = json_object_get(j, "keys");
  if (!keys_valid(req->keys))
    return "\"keys\" must be an array of at most 64 short printable strings";
  return NULL;
}

/* ---------- the registry ---------- */

int edp__watch_grow(void **arr, size_t *cap, size_t n, size_t elem,
                    size_t first) {
  if (n < *cap)
    return 0;
  size_t c = *cap ? *cap * 2 : first;
  void *p = realloc(*arr, c * elem);
  if (!p)
    return EDP_ENOMEM;
  *arr = p;
  *cap = c;
  return 0;
}

void edp__watch_free(struct edp__watch *w) {
  free(w->queue);
  free(w->service);
  free(w->user);
  free(w->corr);
  for (size_t i = 0; i < w->n_keys; i++)
    free(w->keys[i]);
  free(w->keys);
  memset(w, 0, sizeof(*w));
}

int edp__watch_reg_init(edp__watch_reg *r) {
  memset(r, 0, sizeof(*r));
  r->values = json_object();
  r->by_queue = json_object();
  r->by_user = json_object();
  if (r->values && r->by_queue && r->by_user)
    return 0;
  edp__watch_reg_free(r);
  return EDP_ENOMEM;
}

void edp__watch_reg_free(edp__watch_reg *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->n_w; i++)
    edp__watch_free(&r->w[i]);
  free(r->w);
  json_decref(r->values);
  json_decref(r->by_queue);
  json_decref(r->by_user);
  memset(r, 0, sizeof(*r));
}

struct edp__watch *edp__watch_find(const edp__watch_reg *r, const char *queue) {
  json_t *i = json_object_get(r->by_queue, queue);
  return i ? &r->w[json_integer_value(i)] : NULL;
}

int edp__watch_wants(const struct edp__watch *w, const char *key) {
  if (w->n_keys == 0)
    return 1;
  for (size_t i = 0; i < w->n_keys; i++)
    if (!strcmp(w->keys[i], key))
      return 1;
  return 0;
}

size_t edp__watch_user_count(const edp__watch_reg *r, const char *user) {
  return (size_t)json_integer_value(json_object_get(r->by_user, user));
}

static int count_user(edp__watch_reg *r, const char *user, int delta) {
  json_int_t n = (json_int_t)edp__watch_user_count(r, user) + delta;
  if (n <= 0)
    return json_object_del(r->by_user, user), 0;
  return json_object_set_new(r->by_user, user, json_integer(n)) ? EDP_ENOMEM
                                                                : 0;
}

int edp__watch_put(edp__watch_reg *r, struct edp__watch *w) {
  struct edp__watch *old = edp__watch_find(r, w->queue);
  if (old) {
    if (count_user(r, w->user, 1))
      return EDP_ENOMEM;
    count_user(r, old->user, -1);
    edp__watch_free(old);
    *old = *w;
    return 0;
  }
  if (edp__watch_grow((void **)&r->w, &r->cap_w, r->n_w, sizeof(*r->w), 16))
    return EDP_ENOMEM;
  if (json_object_set_new(r->by_queue, w->queue,
                          json_integer((json_int_t)r->n_w)))
    return EDP_ENOMEM;
  if (count_user(r, w->user, 1)) {
    json_object_del(r->by_queue, w->queue);
    return EDP_ENOMEM;
  }
  r->w[r->n_w++] = *w;
  return 0;
}

void edp__watch_remove(edp__watch_reg *r, const char *queue) {
  struct edp__watch *w = edp__watch_find(r, queue);
  if (!w)
    return;
  size_t i = (size_t)(w - r->w);
  count_user(r, w->user, -1);
  json_object_del(r->by_queue, w->queue);
  edp__watch_free(w);
  r->w[i] = r->w[--r->n_w];
  /* The moved watch's index entry changes in place: no allocation, so
   * the index cannot be left pointing past the end. */
  if (i < r->n_w)
    json_integer_set(json_object_get(r->by_queue, r->w[i].queue),
                     (json_int_t)i);
}

/* ---------- the store ---------- */

/* A watch from store JSON; EDP_EBADDATA if any field is not valid. */
static int watch_from_store(struct edp__watch *w, json_t *v,
                            const char *prefix) {
  memset(w, 0, sizeof(*w));
  const char *q = clean_str(json_object_get(v, "queue"));
  json_t *service = json_object_get(v, "service");
  json_t *keys = json_object_get(v, "keys");
  json_t *user = json_object_get(v, "user");
  json_t *corr = json_object_get(v, "corr");
  json_t *token = json_object_get(v, "token");
  if (!json_is_object(v) || !edp__watch_queue_allowed(prefix, q) ||
      (service &&
       !edp__watch_printable(clean_str(service), EDP_WATCH_MAX_NAME_LEN)) ||
      !keys_valid(keys) ||
      (user &&
       (!clean_str(user) || json_string_length(user) > EDP__WATCH_MAX_USER)) ||
      (corr &&
       (!clean_str(corr) || json_string_length(corr) > EDP__WATCH_MAX_USER)) ||
      (token && !token_valid(clean_str(token))))
    return EDP_EBADDATA;
  if (token)
    memcpy(w->token, json_string_value(token), EDP__WATCH_TOKEN_HEX + 1);
  else if (edp__watch_random_hex(w->token, EDP__WATCH_TOKEN_HEX))
    return EDP_EIO;
  size_t n = keys ? json_array_size(keys) : 0;
  w->queue = strdup(q);
  w->service = service ? strdup(json_string_value(service)) : NULL;
  w->user = strdup(user ? json_string_value(user) : "");
  w->corr = strdup(corr ? json_string_value(corr) : "");
  w->keys = n ? calloc(n, sizeof(char *)) : NULL;
  int rc = w->queue && (!service || w->service) && w->user && w->corr &&
                   (!n || w->keys)
               ? 0
               : EDP_ENOMEM;
  for (size_t i = 0; !rc && i < n; i++) {
    if (!(w->keys[i] = strdup(json_string_value(json_array_get(keys, i)))))
      rc = EDP_ENOMEM;
    else
      w->n_keys++;
  }
  if (rc)
    edp__watch_free(w);
  return rc;
}

int edp__watch_store_parse(edp__watch_reg *r, const char *text, size_t len,
                           const char *prefix) {
  json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
  json_t *values = json_object_get(j, "values");
  json_t *watches = json_object_get(j, "watches");
  json_t *version = json_object_get(j, "version");
  const char *format = json_string_value(json_object_get(j, "format"));
  int rc =
      json_is_object(values) && json_is_array(watches) &&
              json_is_integer(version) && json_integer_value(version) >= 0 &&
              json_integer_value(version) < MAX_VERSION && format &&
              (!strcmp(format, STORE_FORMAT) || !strcmp(format, STORE_FORMAT_1))
          ? 0
          : EDP_EBADDATA;
  const char *key;
  json_t *v;
  json_object_foreach(rc ? NULL : values, key, v) {
    json_t *kv = json_object_get(v, "version");
    /* A value newer than the store would make the next change look old
     * to every client: such a store was not written by us. */
    if (!edp__watch_key_valid(key) || !json_is_object(v) ||
        json_object_size(v) != 2 || !json_object_get(v, "value") ||
        !json_is_integer(kv) || json_integer_value(kv) < 1 ||
        json_integer_value(kv) > json_integer_value(version))
      rc = EDP_EBADDATA;
  }
  size_t i;
  json_array_foreach(rc ? NULL : watches, i, v) {
    struct edp__watch w;
    if ((rc = watch_from_store(&w, v, prefix)))
      break;
    if (edp__watch_find(r, w.queue))
      rc = EDP_EBADDATA; /* one queue, one watch */
    else
      rc = edp__watch_put(r, &w);
    if (rc) {
      edp__watch_free(&w);
      break;
    }
  }
  if (!rc) {
    json_decref(r->values);
    r->values = json_incref(values);
    r->version = json_integer_value(version);
  }
  json_decref(j);
  return rc;
}

char *edp__watch_store_dump(const edp__watch_reg *r) {
  json_t *watches = json_array();
  for (size_t i = 0; watches && i < r->n_w; i++) {
    const struct edp__watch *w = &r->w[i];
    json_t *keys = json_array();
    for (size_t k = 0; keys && k < w->n_keys; k++)
      json_array_append_new(keys, json_string(w->keys[k]));
    json_t *o =
        json_pack("{s:s,s:o,s:s,s:s,s:s}", "queue", w->queue, "keys", keys,
                  "user", w->user, "corr", w->corr, "token", w->token);
    if (o && w->service)
      json_object_set_new(o, "service", json_string(w->service));
    if (!o || json_array_append_new(watches, o)) {
      json_decref(watches);
      return NULL;
    }
  }
  json_t *j = json_pack("{s:s,s:I,s:O,s:o}", "format", STORE_FORMAT, "version",
                        (json_int_t)r->version, "values", r->values, "watches",
                        watches);
  /* Compact: the store is rewritten whole, once per batch. */
  char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  json_decref(j);
  return text;
}
