/*
 * edp_conn_stats.c - a connection's counters as others read them: the
 * thread-safe stats accessor and the connection's samples for a metrics
 * registry (edp_metrics.h).
 *
 * The owner thread writes the counters where things happen (edp_conn.c,
 * edp_publish.c, edp_consume.c) with single-writer stores; everything
 * here may run on another thread, so it reads each field atomically and
 * touches nothing else of the connection but its immutable name and URL.
 */
#include <stdio.h>

#include "edp_conn_internal.h"
#include "edp_util.h"

void edp__blocked_end(edp_conn *c) {
  uint64_t since = edp_count_read(&c->m.blocked_since_us);
  if (!since)
    return;
  int64_t now = edp_now_us();
  if ((uint64_t)now > since)
    edp_count_add(&c->m.blocked_us, (uint64_t)now - since);
  edp_count_set(&c->m.blocked_since_us, 0);
}

int edp_conn_stats_get(const edp_conn *c, edp_conn_stats *out) {
  if (!c || !out)
    return EDP_EINVAL;
  const struct edp__counters *m = &c->m;
  out->published = edp_count_read(&m->published);
  out->republished = edp_count_read(&c->republished);
  out->confirmed = edp_count_read(&m->confirmed);
  out->nacked = edp_count_read(&m->nacked);
  out->returned = edp_count_read(&m->returned);
  out->delivered = edp_count_read(&m->delivered);
  out->lost = edp_count_read(&m->lost);
  out->reconnects = edp_count_read(&m->reconnects);
  out->channel_restores = edp_count_read(&m->channel_restores);
  out->consumers_cancelled = edp_count_read(&m->consumers_cancelled);
  out->blocked_count = edp_count_read(&m->blocked_count);
  uint64_t us = edp_count_read(&m->blocked_us);
  uint64_t since = edp_count_read(&m->blocked_since_us);
  int64_t now = edp_now_us();
  if (since && (uint64_t)now > since)
    us += (uint64_t)now - since;
  out->blocked_seconds = (double)us / 1e6;
  out->state = edp_gauge_read(&m->state);
  out->consumers = edp_gauge_read(&m->consumers);
  edp_hist_read(&m->confirm_latency, &out->confirm_latency);
  return 0;
}

void edp_conn_set_timing(edp_conn *c, int on) {
  if (c)
    edp_gauge_set(&c->timing, on != 0);
}

int edp_conn_timing(const edp_conn *c) {
  return c ? edp_gauge_read(&c->timing) : 0;
}

void edp_conn_collect(const void *conn, edp_metrics_out *out) {
  const edp_conn *c = conn;
  edp_conn_stats s;
  if (edp_conn_stats_get(c, &s))
    return;
  char l[512] = "", hp[300];
  edp__conn_broker(c, hp, sizeof(hp));
  edp_metrics_label(l, sizeof(l), "connection",
                    c->client_name ? c->client_name : "edp");
  edp_metrics_label(l, sizeof(l), "broker", hp);
  edp__conn_stats_emit(out, l, &s, 1, edp_conn_timing(c));
}

void edp__conn_broker(const edp_conn *c, char *buf, size_t len) {
  snprintf(buf, len, "%s:%d", c->url.host, c->url.port);
}

void edp__conn_stats_emit(edp_metrics_out *out, const char *l,
                          const edp_conn_stats *s, int gauges, int timing) {
  edp_metrics_counter(out, "edp_messages_published_total",
                      "Messages published (first publish, not resends).", l,
                      s->published);
  edp_metrics_counter(out, "edp_messages_republished_total",
                      "Unconfirmed messages published again after a lost "
                      "connection or channel.",
                      l, s->republished);
  edp_metrics_counter(out, "edp_messages_confirmed_total",
                      "Publisher confirms: messages the broker acked.", l,
                      s->confirmed);
  edp_metrics_counter(out, "edp_messages_nacked_total",
                      "Messages the broker refused (basic.nack, or reported "
                      "nacked after closing the channel on them).",
                      l, s->nacked);
  edp_metrics_counter(out, "edp_messages_returned_total",
                      "Mandatory messages the broker returned as unroutable.",
                      l, s->returned);
  edp_metrics_counter(out, "edp_messages_delivered_total",
                      "Deliveries read from the broker.", l, s->delivered);
  edp_metrics_counter(out, "edp_connection_lost_total",
                      "Times the connection was lost.", l, s->lost);
  edp_metrics_counter(out, "edp_connection_reconnects_total",
                      "Successful reconnects (session restored).", l,
                      s->reconnects);
  edp_metrics_counter(out, "edp_channel_restores_total",
                      "Channels the broker closed and edp reopened.", l,
                      s->channel_restores);
  edp_metrics_counter(out, "edp_consumers_cancelled_total",
                      "Consumers ended by the broker or not restorable.", l,
                      s->consumers_cancelled);
  edp_metrics_counter(out, "edp_connection_blocked_total",
                      "Times the broker blocked publishing (resource alarm).",
                      l, s->blocked_count);
  edp_metrics_counter_f(out, "edp_connection_blocked_seconds_total",
                        "Time spent blocked by the broker, in seconds.", l,
                        s->blocked_seconds);
  /* A connection that is gone (a pattern's retired one) has no state. */
  if (gauges) {
    edp_metrics_gauge(out, "edp_connection_up",
                      "1 while the connection is open (blocked or not).", l,
                      s->state != EDP_CONN_STATE_DOWN);
    edp_metrics_gauge(out, "edp_connection_blocked",
                      "1 while the broker blocks the connection's publishing.",
                      l, s->state == EDP_CONN_STATE_BLOCKED);
    edp_metrics_gauge(out, "edp_consumers", "Consumers the connection runs.", l,
                      s->consumers);
  }
  if (timing)
    edp_metrics_histogram(out, "edp_confirm_latency_seconds",
                          "Time from publish to the broker's confirm.", l,
                          &s->confirm_latency);
}
