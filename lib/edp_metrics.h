/*
 * edp_metrics.h - counters, latency histograms and their rendering in the
 * Prometheus text exposition format (version 0.0.4).
 *
 * The objects that count (an edp_conn, a forwarding sender or receiver)
 * keep their own counters, written by the thread that owns the object
 * with plain single-writer stores: no lock and no allocation per message.
 * Any other thread may read them at any time through the object's
 * *_stats_get() function or through a registry (edp_metrics) that renders
 * every object added to it, grouped by metric family, as one scrape.
 *
 * A registry does not own its objects: remove an object (or destroy the
 * registry) before destroying the object. The metric names and labels are
 * listed in docs/metrics.md.
 */
#ifndef EDP_METRICS_H
#define EDP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A counter of the single-writer kind: only its owner thread adds, with
 * edp_count_add(); any thread reads it with edp_count_read(). Both are
 * relaxed atomic accesses, plain loads and stores on x86-64 and arm64: no
 * lock, no read-modify-write instruction. */
static inline void edp_count_add(uint64_t *x, uint64_t n) {
  __atomic_store_n(x, *x + n, __ATOMIC_RELAXED);
}
static inline void edp_count_set(uint64_t *x, uint64_t v) {
  __atomic_store_n(x, v, __ATOMIC_RELAXED);
}
static inline uint64_t edp_count_read(const uint64_t *x) {
  return __atomic_load_n(x, __ATOMIC_RELAXED);
}
/* An int gauge of the same kind: set by its owner, read by anyone. */
static inline void edp_gauge_set(int *x, int v) {
  __atomic_store_n(x, v, __ATOMIC_RELAXED);
}
static inline int edp_gauge_read(const int *x) {
  return __atomic_load_n(x, __ATOMIC_RELAXED);
}

/* A latency histogram with fixed buckets (seconds): 0.0005, 0.001,
 * 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 and
 * +Inf. bucket[i] counts the observations that fell into bucket i alone
 * (not cumulative); the renderer makes them cumulative. */
#define EDP_HIST_BUCKETS 15
typedef struct edp_hist {
  uint64_t count;
  uint64_t sum_us; /* sum of the observations in microseconds */
  uint64_t bucket[EDP_HIST_BUCKETS];
} edp_hist;

/* The upper bound of bucket i in seconds (i < EDP_HIST_BUCKETS - 1). */
double edp_hist_bound(int i);

/* Adds one observation of us microseconds. Single writer: the thread that
 * owns h; readers use edp_hist_read(). */
void edp_hist_observe(edp_hist *h, int64_t us);

/* Copies h as seen by another thread (each field read atomically). */
void edp_hist_read(const edp_hist *h, edp_hist *out);

/* ---- the registry ---- */

typedef struct edp_metrics edp_metrics;

/* Where a collect function writes its samples (see edp_metrics_add). */
typedef struct edp_metrics_out edp_metrics_out;

/* Writes obj's samples with edp_metrics_counter/_gauge/_histogram. Runs on
 * the thread that renders, while obj's owner keeps working: it must read
 * obj only through thread-safe accessors (the *_stats_get functions). */
typedef void (*edp_metrics_collect_fn)(const void *obj, edp_metrics_out *out);

/* Creates an empty registry. Returns 0, EDP_EINVAL or EDP_ENOMEM. */
int edp_metrics_new(edp_metrics **out);

/* Frees the registry (not its objects), sets *m to NULL; accepts NULL. */
void edp_metrics_destroy(edp_metrics **m);

/* Adds obj with the function that collects its samples; obj must stay
 * valid until it is removed or the registry destroyed. Returns 0,
 * EDP_EINVAL or EDP_ENOMEM. Thread-safe. */
int edp_metrics_add(edp_metrics *m, const void *obj, edp_metrics_collect_fn fn);

/* Removes every entry of obj (none: no-op). Returns once no render reads
 * obj any more, so obj may be destroyed right after. Thread-safe. */
void edp_metrics_remove(edp_metrics *m, const void *obj);

/* Renders every object's samples in the Prometheus text format, each
 * family once (# HELP, # TYPE, then its samples from every object), into
 * a NUL-terminated buffer *text of *len bytes (free() it). Thread-safe.
 * Returns 0, EDP_EINVAL or EDP_ENOMEM. */
int edp_metrics_render(edp_metrics *m, char **text, size_t *len);

/* Sample writers for collect functions. name is the family's name (base
 * units; counters end in _total), help one line; labels is the label set
 * without braces, e.g. queue="orders" (build it with edp_metrics_label),
 * or "" for none. A family's help and type are taken from its first
 * sample. Out of memory, a sample is dropped and the render fails. */
void edp_metrics_counter(edp_metrics_out *o, const char *name, const char *help,
                         const char *labels, uint64_t v);
/* A counter of a fractional quantity, e.g. seconds spent blocked. */
void edp_metrics_counter_f(edp_metrics_out *o, const char *name,
                           const char *help, const char *labels, double v);
void edp_metrics_gauge(edp_metrics_out *o, const char *name, const char *help,
                       const char *labels, double v);
void edp_metrics_histogram(edp_metrics_out *o, const char *name,
                           const char *help, const char *labels,
                           const edp_hist *h);

/* The edp_messages_<kind>_total counters the patterns share, each with
 * one help text wherever it comes from (docs/metrics.md). */
enum edp_msgs_kind {
  EDP_MSGS_SENT,          /* a sender published it */
  EDP_MSGS_PROCESSED,     /* handler succeeded, acked */
  EDP_MSGS_FAILED,        /* handler calls that failed */
  EDP_MSGS_RETRIED,       /* failed and retried */
  EDP_MSGS_DEAD_LETTERED, /* moved to the dead-letter queue */
  EDP_MSGS_DUPLICATES,    /* dropped as duplicates */
  EDP_MSGS_REDELIVERED,   /* delivered with the redelivered flag */
  EDP_MSGS_REQUEUED       /* left unacked for redelivery */
};
void edp_metrics_messages(edp_metrics_out *o, int kind, const char *labels,
                          uint64_t v);

/* Appends key="value" to the label set in buf (cap bytes), with a comma
 * if buf is not empty, escaping backslash, double quote and newline as
 * the format requires. Returns 0, or EDP_ETOOBIG when it does not fit
 * (buf is then unchanged). */
int edp_metrics_label(char *buf, size_t cap, const char *key,
                      const char *value);

#ifdef __cplusplus
}
#endif
#endif
