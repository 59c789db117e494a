/*
 * edp_watch_internal.h - the parts of the watch pattern that turn network
 * and disk bytes into state: the registration request parser and the
 * registry with its store format (edp_watch_registry.c). Shared by the
 * server, the client and the fuzz targets (tests/fuzz/); not installed.
 */
#ifndef EDP_WATCH_INTERNAL_H
#define EDP_WATCH_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "edp_watch.h"

/* The message types of the watch protocol (docs/wire.md). */
#define TYPE_REPLY "edp.watch.reply"
#define TYPE_CHANGE "edp.watch.change"
#define TYPE_PING "edp.watch.ping"
#define EDP__WATCH_TOKEN_HEX 32 /* a watch's owner token: 128 random bits */
#define EDP__WATCH_MAX_USER 255 /* a user_id or correlation_id we keep */

struct edp__watch {
  char *queue, *service; /* service may be NULL */
  char *user;            /* user_id of the request that created it */
  char *corr;            /* its correlation_id ("" if none) */
  char token[EDP__WATCH_TOKEN_HEX + 1];
  char **keys; /* n_keys == 0: every key */
  size_t n_keys;
  int64_t checked_ms; /* last proof that the queue exists (not stored) */
};

/* What the store holds: the values and the watches, with indexes. */
typedef struct edp__watch_reg {
  json_t *values; /* key -> {"value": V, "version": n} */
  int64_t version;
  struct edp__watch *w;
  size_t n_w, cap_w;
  json_t *by_queue; /* queue -> index into w */
  json_t *by_user;  /* user -> number of its watches */
} edp__watch_reg;

/* A parsed request; the strings point into j. */
typedef struct edp__watch_req {
  json_t *j;
  const char *queue, *service, *token; /* service, token may be NULL */
  json_t *keys;                        /* NULL or an array of valid keys */
} edp__watch_req;

/* 1 if the server may publish into q: "amq.gen-" + [A-Za-z0-9_-]+, or
 * prefix (if not NULL or "") followed by at least one printable byte. */
int edp__watch_queue_allowed(const char *prefix, const char *q);
int edp__watch_key_valid(const char *k);
/* 1 if s is 1..max bytes with no control character. */
int edp__watch_printable(const char *s, size_t max);

/* Parses a registration body sent with reply_to (may be NULL). Returns
 * NULL when valid, else a one-line reason; either way *req is filled as
 * far as it got and must be cleared with edp__watch_req_clear(). */
const char *edp__watch_parse_request(const void *body, size_t len,
                                     const char *reply_to, const char *prefix,
                                     edp__watch_req *req);
void edp__watch_req_clear(edp__watch_req *req);

/* An empty registry (0 or EDP_ENOMEM) / frees one (and zeroes it). */
int edp__watch_reg_init(edp__watch_reg *r);
void edp__watch_reg_free(edp__watch_reg *r);

struct edp__watch *edp__watch_find(const edp__watch_reg *r, const char *queue);
/* Adds *w (moved in: the registry owns its strings) or replaces the watch
 * of the same queue. 0 or EDP_ENOMEM (then *w is still the caller's). */
int edp__watch_put(edp__watch_reg *r, struct edp__watch *w);
void edp__watch_remove(edp__watch_reg *r, const char *queue);
/* 1 if w watches key (a watch of no keys watches every key). */
int edp__watch_wants(const struct edp__watch *w, const char *key);
size_t edp__watch_user_count(const edp__watch_reg *r, const char *user);
void edp__watch_free(struct edp__watch *w);

/* Parses a store text into the empty registry r: 0, EDP_EBADDATA (not a
 * valid store: the caller refuses to start rather than overwrite it) or
 * EDP_ENOMEM. Store format 1 (no owners) is read too: its watches get
 * the user "" and a fresh token. */
int edp__watch_store_parse(edp__watch_reg *r, const char *text, size_t len,
                           const char *prefix);
/* The store text of r (malloc'd), NULL if out of memory. */
char *edp__watch_store_dump(const edp__watch_reg *r);

/* Makes room for one more element in *arr (n used of *cap, elem bytes
 * each), doubling from first. 0 or EDP_ENOMEM (*arr unchanged). */
int edp__watch_grow(void **arr, size_t *cap, size_t n, size_t elem,
                    size_t first);

/* hex_len random hex digits and a NUL into out (getrandom). 0 or EDP_EIO. */
int edp__watch_random_hex(char *out, size_t hex_len);
/* Compares two tokens in time independent of where they differ. */
int edp__watch_token_eq(const char *a, const char *b);

#endif
