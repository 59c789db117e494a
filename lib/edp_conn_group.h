/*
 * edp_conn_group.h - the connections a pattern owns, as one set of metric
 * series (docs/metrics.md, "Connections a pattern owns").
 *
 * The ambulance receiver, the supervisor and the multi-broker consumer
 * each open connections of their own on their own threads, and those
 * threads close them when they end: a supervisor consumer that retires, a
 * receiver that stops while its final counts are still served. A metrics
 * registry must never read a connection that is gone, so the pattern does
 * not register its connections; it attaches each one to a group under a
 * series name ("monitor", "consumer-3", "broker-1") and detaches it just
 * before destroying it. Detaching folds the connection's final counts into
 * its series, so a series' counters only grow: the next connection
 * attached under the same name (the supervisor reuses a retired
 * consumer's slot) continues them, and Prometheus never sees a counter
 * reset because a connection came or went. The gauges (up, blocked,
 * consumers) are written only while a connection is attached.
 *
 * Every function is thread-safe.
 */
#ifndef EDP_CONN_GROUP_H
#define EDP_CONN_GROUP_H

#include "edp_conn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edp_conn_group edp_conn_group;

/* Creates an empty group whose series carry the label connection (NULL:
 * "edp"). Returns 0, EDP_EINVAL or EDP_ENOMEM. */
int edp_conn_group_new(const char *connection, edp_conn_group **out);

/* Frees the group, sets *g to NULL; accepts NULL. Detach every connection
 * and remove the group (or the object that collects it) from any
 * registry first. */
void edp_conn_group_destroy(edp_conn_group **g);

/* Attaches c (not owned; it must stay valid until detached) as the
 * connection of the series name (1 to 63 characters), created on first
 * use. Returns 0, EDP_EINVAL (bad name, or the series has a connection
 * attached already) or EDP_ENOMEM. */
int edp_conn_group_attach(edp_conn_group *g, const char *name,
                          const edp_conn *c);

/* Detaches c: its counts stay in its series. Call it before destroying c;
 * once it returned no collect reads c. No-op for NULL or a connection not
 * attached. */
void edp_conn_group_detach(edp_conn_group *g, const edp_conn *c);

/* The edp_metrics_collect_fn of a group (obj is the edp_conn_group): the
 * connection families of docs/metrics.md per series, labelled connection,
 * broker (host:port) and conn (the series name). */
void edp_conn_group_collect(const void *group, edp_metrics_out *out);

#ifdef __cplusplus
}
#endif
#endif
