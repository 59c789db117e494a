/*
 * edp_trace.h - W3C Trace Context (https://www.w3.org/TR/trace-context/)
 * carried in message headers: "traceparent" (version 00:
 * 00-<trace-id>-<parent-id>-<flags>, lower-case hex) and "tracestate"
 * (opaque, copied unchanged). docs/wire.md says where each pattern puts
 * them.
 *
 * A sender starts a trace (edp_trace_new) or continues one (a child of a
 * context it was given); every hop that handles a message continues it
 * with a child: the same trace id and a new span id, whose parent is the
 * span on the message. The hops are: a receiver's handling of a delivery
 * (the handler reads it with edp_trace_current()), a retry or dead-letter
 * copy, a thread delegate worker, a multi-broker resend. No tracing SDK is
 * involved: the ids travel, and the programs report them in --json
 * events for whatever collects those.
 */
#ifndef EDP_TRACE_H
#define EDP_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "edp_conn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EDP_TRACE_HDR_PARENT "traceparent"
#define EDP_TRACE_HDR_STATE "tracestate"

/* A span's context. The strings are NUL-terminated lower-case hex. */
typedef struct edp_trace {
  char trace_id[33];
  char span_id[17];
  char parent_id[17]; /* the span this one continues; "" for a root */
  uint8_t flags;      /* bit 0: sampled */
} edp_trace;

/* The length of a traceparent value (version 00), without the NUL. */
#define EDP_TRACEPARENT_LEN 55

/* Starts a trace: random trace and span ids, no parent, sampled. */
void edp_trace_new(edp_trace *t);

/* A child of parent: the same trace id and flags, a new random span id,
 * parent_id = parent's span id. child may be parent. */
void edp_trace_child(const edp_trace *parent, edp_trace *child);

/* Parses a traceparent value into *t (span_id = its parent-id field,
 * parent_id ""). Accepts version 00 exactly and, as the specification
 * asks, a later version's first four fields. Returns 0 or EDP_EBADDATA
 * (wrong length or characters, version ff, an all-zero id). */
int edp_trace_parse(const char *traceparent, size_t len, edp_trace *t);

/* Writes t's traceparent ("00-trace-span-flags") into buf (at least
 * EDP_TRACEPARENT_LEN + 1 bytes). Returns buf, or "" if it does not fit. */
const char *edp_trace_format(const edp_trace *t, char *buf, size_t len);

/* The context a delivery carries (its traceparent header, a string or
 * byte array). Returns 0, EDP_ENOTFOUND (no header) or EDP_EBADDATA (a
 * header that does not parse: a receiver then starts no trace from it). */
int edp_trace_from_delivery(const edp_delivery *d, edp_trace *t);

/* The span of a hop that handles the delivery d: a child of the context
 * d carries (edp_trace_from_delivery). Returns 1 with *span set, or 0
 * when d carries no valid context (then there is no span). */
int edp_trace_delivery_span(const edp_delivery *d, edp_trace *span);

/* The context a message to publish carries: its last traceparent among
 * m->headers, else the table's (a copy of a delivery). Returns 0,
 * EDP_ENOTFOUND or EDP_EBADDATA. */
int edp_trace_from_msg(const edp_msg *m, edp_trace *t);

/* A copy of m for the next hop of its trace: *out points into m except
 * for its headers, a new array (free() it: *headers) in which the
 * traceparent is a child of m's. Returns 0, EDP_ENOTFOUND (m carries no
 * valid trace: *out is m unchanged, *headers NULL) or EDP_ENOMEM. tp
 * (EDP_TRACEPARENT_LEN + 1 bytes) holds the new value. */
int edp_trace_msg_hop(const edp_msg *m, edp_msg *out, edp_header **headers,
                      char *tp);

/* The span the calling thread's handler runs in: the patterns set it on
 * the thread that calls a handler (a child of the delivery's context) and
 * clear it after; NULL outside a handler or for a message without a
 * trace. Thread-local. */
const edp_trace *edp_trace_current(void);

/* Sets (t != NULL, copied) or clears the calling thread's current span;
 * for code that calls handlers. */
void edp_trace_set_current(const edp_trace *t);

#ifdef __cplusplus
}
#endif
#endif
