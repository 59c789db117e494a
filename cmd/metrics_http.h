/*
 * metrics_http.h - the HTTP endpoint of the programs' --metrics option:
 * GET /metrics (the Prometheus text of an edp_metrics registry) and
 * GET /healthz (200 "ok", or 503 and a one-line reason), served by
 * libmicrohttpd on its own thread. cmd/ only.
 */
#ifndef EDP_METRICS_HTTP_H
#define EDP_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "cli.h"

/* The program's health: returns 200, or 503 with a one-line reason in
 * reason (len bytes). Runs on the HTTP thread: read only thread-safe
 * state (edp_conn_stats_get, cli_stopped). */
typedef int (*metrics_health_fn)(void *ud, char *reason, size_t len);

typedef struct metrics_http metrics_http;

/* Serves m and health on addr, "HOST:PORT", "[IPv6]:PORT" or "PORT"
 * (loopback, 127.0.0.1). Port 0 picks a free port. On success logs the URL
 * on stderr and, with --json, emits {"event":"metrics_listening","url":...}.
 * Dies with a usage error (64) for a bad address and 69 when it cannot
 * listen. */
metrics_http *metrics_http_start(const cli *c, const char *addr, edp_metrics *m,
                                 metrics_health_fn health, void *ud);

/* The port it listens on. */
int metrics_http_port(const metrics_http *h);

/* Stops serving (in-flight requests finish first), sets *h to NULL;
 * accepts NULL. */
void metrics_http_stop(metrics_http **h);

/* The health rule of a program that publishes and (consumers > 0) or not
 * (consumers == 0) consumes on conn: 503 while the program stops, while
 * the connection is down (reconnecting) or blocked by a resource alarm,
 * or when it runs fewer than `consumers` consumers; else 200. */
int metrics_conn_health(const edp_conn *conn, int consumers, char *reason,
                        size_t len);

/* For programs with one connection: the registry holds conn (and the
 * pattern object added by the caller); health is metrics_conn_health. */
typedef struct metrics_conn_health_arg {
  const edp_conn *conn;
  int consumers;
  int finished; /* set (atomically) once the program's work is done */
} metrics_conn_health_arg;
int metrics_conn_health_fn(void *ud, char *reason, size_t len);

/* What a one-connection program keeps for --metrics: the registry, the
 * server and the health rule's arguments. Zero it before use. */
typedef struct metrics_serve {
  edp_metrics *reg;
  metrics_http *http;
  metrics_conn_health_arg health;
  metrics_health_fn fn; /* metrics_serve_start_obj's rule, or NULL */
  void *fn_ud;
} metrics_serve;

/* With --metrics (c->metrics_addr), serves conn's counters and obj's
 * (collected by fn; obj may be NULL) with the health rule of
 * metrics_conn_health(conn, consumers); without it, does nothing. Dies as
 * metrics_http_start() does. */
void metrics_serve_start(metrics_serve *s, const cli *c, edp_conn *conn,
                         int consumers, const void *obj,
                         edp_metrics_collect_fn fn);

/* The same for a pattern that owns its connections: serves obj's
 * counters; /healthz says 503 while stopping or finished, else what
 * health says (NULL: 200). */
void metrics_serve_start_obj(metrics_serve *s, const cli *c, const void *obj,
                             edp_metrics_collect_fn fn,
                             metrics_health_fn health, void *ud);

/* Stops the server and frees the registry: call it before destroying the
 * objects it serves. With --metrics-hold it first serves the final counts
 * that long (health 503 "finished"; with --json, an event
 * {"event":"metrics_hold","ms":...} says it begins), or until SIGINT or
 * SIGTERM. Accepts a zeroed s. */
void metrics_serve_stop(metrics_serve *s, const cli *c);

/* A sender program's count of messages published, served as
 * edp_messages_sent_total{labels}: the sending thread adds with
 * edp_count_add(&x->n, 1), metrics_sent_collect reads it from any thread.
 * Build labels with edp_metrics_label. */
typedef struct metrics_sent {
  uint64_t n;
  char labels[600];
} metrics_sent;
void metrics_sent_collect(const void *sent, edp_metrics_out *out);

/* Serves one more object in a started s (without --metrics: nothing). */
void metrics_serve_add(metrics_serve *s, const cli *c, const void *obj,
                       edp_metrics_collect_fn fn);

#endif
