/*
 * edp_trace.c - W3C traceparent values: parse, format, start and continue
 * a trace.
 *
 * Span ids are made per message, so their source must be cheap: a
 * per-thread splitmix64 generator seeded once from getrandom() (with the
 * clock and the thread's address as a fallback). The ids need to be
 * unique, not secret; the specification asks for randomness so that ids
 * from unrelated systems do not collide, which 128 and 64 random bits
 * give.
 */
#define _GNU_SOURCE /* getrandom */
#include "edp_trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "edp_util.h"

static _Thread_local uint64_t rng_state;
static _Thread_local int rng_seeded;
static _Thread_local edp_trace current;
static _Thread_local int has_current;

static uint64_t next_random(void) {
  if (!rng_seeded) {
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
      seed = (uint64_t)edp_now_us() ^ (uint64_t)(uintptr_t)&rng_state;
    rng_state = seed;
    rng_seeded = 1;
  }
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* 16 hex digits of a random non-zero value. */
static void random_hex16(char *out) {
  uint64_t v;
  while (!(v = next_random()))
    ;
  snprintf(out, 17, "%016llx", (unsigned long long)v);
}

void edp_trace_new(edp_trace *t) {
  random_hex16(t->trace_id);
  random_hex16(t->trace_id + 16);
  random_hex16(t->span_id);
  t->parent_id[0] = '\0';
  t->flags = 1;
}

void edp_trace_child(const edp_trace *parent, edp_trace *child) {
  edp_trace p = *parent;
  memcpy(child->trace_id, p.trace_id, sizeof(child->trace_id));
  memcpy(child->parent_id, p.span_id, sizeof(child->parent_id));
  child->flags = p.flags;
  random_hex16(child->span_id);
}

static int is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Copies n lower-case hex digits to out (NUL-terminated); -1 if one is
 * not, or all are zero (an invalid id). */
static int hex_field(const char *s, size_t n, char *out) {
  int nonzero = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!is_hex(c))
      return -1;
    nonzero |= c != '0';
    if (out)
      out[i] = c;
  }
  if (out)
    out[n] = '\0';
  return nonzero ? 0 : -1;
}

int edp_trace_parse(const char *s, size_t len, edp_trace *t) {
  if (!s || !t || len < EDP_TRACEPARENT_LEN)
    return EDP_EBADDATA;
  if (!is_hex(s[0]) || !is_hex(s[1]) || !is_hex(s[53]) || !is_hex(s[54]))
    return EDP_EBADDATA;
  int v00 = s[0] == '0' && s[1] == '0';
  /* Version 00 is exactly 55 characters; a later version may append
   * fields after a dash, which we do not read. ff is invalid. */
  if ((s[0] == 'f' && s[1] == 'f') || (v00 && len != EDP_TRACEPARENT_LEN) ||
      (!v00 && len > EDP_TRACEPARENT_LEN && s[EDP_TRACEPARENT_LEN] != '-'))
    return EDP_EBADDATA;
  if (s[2] != '-' || s[35] != '-' || s[52] != '-')
    return EDP_EBADDATA;
  edp_trace r;
  if (hex_field(s + 3, 32, r.trace_id) || hex_field(s + 36, 16, r.span_id))
    return EDP_EBADDATA;
  unsigned flags = 0;
  char fl[3] = {s[53], s[54], '\0'};
  sscanf(fl, "%2x", &flags);
  r.flags = (uint8_t)flags;
  r.parent_id[0] = '\0';
  *t = r;
  return 0;
}

const char *edp_trace_format(const edp_trace *t, char *buf, size_t len) {
  if (!buf || !len)
    return "";
  if (!t || len < EDP_TRACEPARENT_LEN + 1) {
    buf[0] = '\0';
    return buf;
  }
  snprintf(buf, len, "00-%s-%s-%02x", t->trace_id, t->span_id, t->flags);
  return buf;
}

int edp_trace_from_delivery(const edp_delivery *d, edp_trace *t) {
  const edp_value *v = edp_delivery_header(d, EDP_TRACE_HDR_PARENT);
  if (!v)
    return EDP_ENOTFOUND;
  if (v->kind != EDP_FIELD_STRING && v->kind != EDP_FIELD_BYTES)
    return EDP_EBADDATA;
  return edp_trace_parse(v->v.bytes.ptr, v->v.bytes.len, t);
}

int edp_trace_delivery_span(const edp_delivery *d, edp_trace *span) {
  edp_trace in;
  if (edp_trace_from_delivery(d, &in))
    return 0;
  edp_trace_child(&in, span);
  return 1;
}

int edp_trace_from_msg(const edp_msg *m, edp_trace *t) {
  for (size_t i = m->n_headers; i-- > 0;)
    if (m->headers[i].key && m->headers[i].str &&
        !strcmp(m->headers[i].key, EDP_TRACE_HDR_PARENT))
      return edp_trace_parse(m->headers[i].str, strlen(m->headers[i].str), t);
  for (size_t i = 0; i < m->n_table; i++) {
    const edp_field *f = &m->table[i];
    if (f->key && !strcmp(f->key, EDP_TRACE_HDR_PARENT) &&
        (f->value.kind == EDP_FIELD_STRING || f->value.kind == EDP_FIELD_BYTES))
      return edp_trace_parse(f->value.v.bytes.ptr, f->value.v.bytes.len, t);
  }
  return EDP_ENOTFOUND;
}

int edp_trace_msg_hop(const edp_msg *m, edp_msg *out, edp_header **headers,
                      char *tp) {
  *out = *m;
  *headers = NULL;
  edp_trace t;
  if (edp_trace_from_msg(m, &t))
    return EDP_ENOTFOUND;
  edp_trace_child(&t, &t);
  edp_trace_format(&t, tp, EDP_TRACEPARENT_LEN + 1);
  /* The simple headers without their traceparent, then the new one: it
   * replaces a table entry of the same key too. */
  edp_header *h = malloc((m->n_headers + 1) * sizeof(*h));
  if (!h)
    return EDP_ENOMEM;
  size_t n = 0;
  for (size_t i = 0; i < m->n_headers; i++)
    if (!m->headers[i].key || strcmp(m->headers[i].key, EDP_TRACE_HDR_PARENT))
      h[n++] = m->headers[i];
  h[n++] = (edp_header){EDP_TRACE_HDR_PARENT, tp, 0};
  out->headers = h;
  out->n_headers = n;
  *headers = h;
  return 0;
}

const edp_trace *edp_trace_current(void) {
  return has_current ? &current : NULL;
}

void edp_trace_set_current(const edp_trace *t) {
  has_current = t != NULL;
  if (t)
    current = *t;
}
