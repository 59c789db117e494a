/*
 * edp_metrics.c - latency histograms and the registry that renders the
 * counters of many objects as one Prometheus scrape.
 *
 * The counting itself happens in the objects (edp_conn, the patterns)
 * with single-writer stores; this file only reads. A render asks every
 * registered object for its samples, keeps them in a list, and prints the
 * list family by family: the text format wants each family's samples in
 * one block under one # HELP and # TYPE, while one object contributes to
 * many families and one family gathers samples from many objects (one
 * connection per broker, per consumer thread...). The registry's lock is
 * held for the whole render, which is what lets edp_metrics_remove()
 * promise that no render reads an object after it returned.
 */
#include "edp_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edp_error.h"

/* Bucket upper bounds in microseconds and as the le label prints them. */
static const int64_t bound_us[EDP_HIST_BUCKETS - 1] = {
    500,    1000,   2500,   5000,    10000,   25000,   50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
static const char *const bound_text[EDP_HIST_BUCKETS - 1] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};

double edp_hist_bound(int i) {
  return i >= 0 && i < EDP_HIST_BUCKETS - 1 ? (double)bound_us[i] / 1e6
                                            : INFINITY;
}

void edp_hist_observe(edp_hist *h, int64_t us) {
  if (us < 0)
    us = 0; /* a monotonic clock does not go back; be safe anyway */
  int i = 0;
  while (i < EDP_HIST_BUCKETS - 1 && us > bound_us[i])
    i++;
  edp_count_add(&h->bucket[i], 1);
  edp_count_add(&h->sum_us, (uint64_t)us);
  /* count last: a reader that sees it sees the bucket too (near enough
   * for a scrape; the reads are relaxed). */
  edp_count_add(&h->count, 1);
}

void edp_hist_read(const edp_hist *h, edp_hist *out) {
  for (int i = 0; i < EDP_HIST_BUCKETS; i++)
    out->bucket[i] = edp_count_read(&h->bucket[i]);
  out->sum_us = edp_count_read(&h->sum_us);
  out->count = edp_count_read(&h->count);
}

/* ---------- the registry ---------- */

struct entry {
  const void *obj;
  edp_metrics_collect_fn fn;
};

struct edp_metrics {
  pthread_mutex_t lock;
  struct entry *e;
  size_t n, cap;
};

/* S_COUNTER_F: a counter whose value is the double d. */
enum { S_COUNTER, S_GAUGE, S_HIST, S_COUNTER_F };

struct sample {
  const char *name, *help;
  int kind;
  char *labels;
  uint64_t u;
  double d;
  edp_hist h;
};

struct edp_metrics_out {
  struct sample *s;
  size_t n, cap;
  int failed;
};

int edp_metrics_new(edp_metrics **out) {
  if (!out)
    return EDP_EINVAL;
  *out = calloc(1, sizeof(**out));
  if (!*out)
    return EDP_ENOMEM;
  pthread_mutex_init(&(*out)->lock, NULL);
  return 0;
}

void edp_metrics_destroy(edp_metrics **m) {
  if (!m || !*m)
    return;
  pthread_mutex_destroy(&(*m)->lock);
  free((*m)->e);
  free(*m);
  *m = NULL;
}

int edp_metrics_add(edp_metrics *m, const void *obj,
                    edp_metrics_collect_fn fn) {
  if (!m || !obj || !fn)
    return EDP_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&m->lock);
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 8;
    struct entry *e = realloc(m->e, cap * sizeof(*e));
    if (e) {
      m->e = e;
      m->cap = cap;
    } else {
      rc = EDP_ENOMEM;
    }
  }
  if (!rc)
    m->e[m->n++] = (struct entry){obj, fn};
  pthread_mutex_unlock(&m->lock);
  return rc;
}

void edp_metrics_remove(edp_metrics *m, const void *obj) {
  if (!m)
    return;
  pthread_mutex_lock(&m->lock);
  size_t k = 0;
  for (size_t i = 0; i < m->n; i++)
    if (m->e[i].obj != obj)
      m->e[k++] = m->e[i];
  m->n = k;
  pthread_mutex_unlock(&m->lock);
}

static struct sample *add_sample(edp_metrics_out *o, const char *name,
                                 const char *help, int kind,
                                 const char *labels) {
  if (!o || !name || o->failed)
    return NULL;
  if (o->n == o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 64;
    struct sample *s = realloc(o->s, cap * sizeof(*s));
    if (!s) {
      o->failed = 1;
      return NULL;
    }
    o->s = s;
    o->cap = cap;
  }
  struct sample *s = &o->s[o->n];
  memset(s, 0, sizeof(*s));
  s->name = name;
  s->help = help ? help : "";
  s->kind = kind;
  if (!(s->labels = strdup(labels ? labels : ""))) {
    o->failed = 1;
    return NULL;
  }
  o->n++;
  return s;
}

void edp_metrics_counter(edp_metrics_out *o, const char *name, const char *help,
                         const char *labels, uint64_t v) {
  struct sample *s = add_sample(o, name, help, S_COUNTER, labels);
  if (s)
    s->u = v;
}

void edp_metrics_counter_f(edp_metrics_out *o, const char *name,
                           const char *help, const char *labels, double v) {
  struct sample *s = add_sample(o, name, help, S_COUNTER_F, labels);
  if (s)
    s->d = v;
}

void edp_metrics_gauge(edp_metrics_out *o, const char *name, const char *help,
                       const char *labels, double v) {
  struct sample *s = add_sample(o, name, help, S_GAUGE, labels);
  if (s)
    s->d = v;
}

void edp_metrics_histogram(edp_metrics_out *o, const char *name,
                           const char *help, const char *labels,
                           const edp_hist *h) {
  struct sample *s = add_sample(o, name, help, S_HIST, labels);
  if (s && h)
    edp_hist_read(h, &s->h);
}

void edp_metrics_messages(edp_metrics_out *o, int kind, const char *labels,
                          uint64_t v) {
  static const struct {
    const char *name, *help;
  } k[] = {
      [EDP_MSGS_SENT] = {"edp_messages_sent_total",
                         "Messages a sender published (edp_fwd_send ...)."},
      [EDP_MSGS_PROCESSED] = {"edp_messages_processed_total",
                              "Messages whose handler succeeded (acked)."},
      [EDP_MSGS_FAILED] = {"edp_messages_failed_total",
                           "Handler calls that failed."},
      [EDP_MSGS_RETRIED] = {"edp_messages_retried_total",
                            "Failed messages retried: requeued with a retry "
                            "count (forwarding) or run again in place "
                            "(thread delegate, one per extra attempt)."},
      [EDP_MSGS_DEAD_LETTERED] = {"edp_messages_dead_lettered_total",
                                  "Failed messages moved to the dead-letter "
                                  "queue."},
      [EDP_MSGS_DUPLICATES] = {"edp_messages_duplicates_total",
                               "Duplicates dropped by message_id (dedup)."},
      [EDP_MSGS_REDELIVERED] = {"edp_messages_redelivered_total",
                                "Deliveries the broker marked redelivered."},
      [EDP_MSGS_REQUEUED] = {"edp_messages_requeued_total",
                             "Messages left unacked for redelivery (lost "
                             "connection, stop)."}};
  if (kind >= 0 && kind < (int)(sizeof(k) / sizeof(k[0])))
    edp_metrics_counter(o, k[kind].name, k[kind].help, labels, v);
}

int edp_metrics_label(char *buf, size_t cap, const char *key,
                      const char *value) {
  if (!buf || !cap || !key)
    return EDP_EINVAL;
  size_t len = strnlen(buf, cap);
  if (len == cap)
    return EDP_EINVAL;
  size_t o = len;
#define PUT(ch)                                                                \
  do {                                                                         \
    if (o + 1 >= cap) {                                                        \
      buf[len] = '\0';                                                         \
      return EDP_ETOOBIG;                                                      \
    }                                                                          \
    buf[o++] = (ch);                                                           \
  } while (0)
  if (len)
    PUT(',');
  for (const char *k = key; *k; k++)
    PUT(*k);
  PUT('=');
  PUT('"');
  for (const char *v = value ? value : ""; *v; v++) {
    if (*v == '\\' || *v == '"') {
      PUT('\\');
      PUT(*v);
    } else if (*v == '\n') {
      PUT('\\');
      PUT('n');
    } else {
      PUT(*v);
    }
  }
  PUT('"');
#undef PUT
  buf[o] = '\0';
  return 0;
}

/* ---------- rendering ---------- */

typedef struct text {
  char *p;
  size_t len, cap;
  int failed;
} text;

static void put(text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
  if (t->failed)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = 1;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n;
    char *p = realloc(t->p, cap);
    if (!p) {
      t->failed = 1;
      return;
    }
    t->p = p;
    t->cap = cap;
  }
}

/* A gauge's value as the format spells it (NaN, +Inf, -Inf). */
static void put_double(text *t, double v) {
  if (isnan(v))
    put(t, "NaN");
  else if (isinf(v))
    put(t, v > 0 ? "+Inf" : "-Inf");
  else
    put(t, "%.15g", v);
}

/* Help text may not hold a raw newline or backslash. */
static void put_help(text *t, const char *name, const char *help) {
  put(t, "# HELP %s ", name);
  for (const char *h = help; *h; h++) {
    if (*h == '\\')
      put(t, "\\\\");
    else if (*h == '\n')
      put(t, "\\n");
    else
      put(t, "%c", *h);
  }
  put(t, "\n");
}

static void put_sample(text *t, const struct sample *s) {
  const char *l = s->labels;
  if (s->kind == S_COUNTER) {
    put(t, "%s%s%s%s %llu\n", s->name, l[0] ? "{" : "", l, l[0] ? "}" : "",
        (unsigned long long)s->u);
    return;
  }
  if (s->kind == S_GAUGE || s->kind == S_COUNTER_F) {
    put(t, "%s%s%s%s ", s->name, l[0] ? "{" : "", l, l[0] ? "}" : "");
    put_double(t, s->d);
    put(t, "\n");
    return;
  }
  /* Histogram buckets are cumulative; the +Inf bucket equals the count
   * (taken from the buckets, so that the lines agree with each other even
   * if an observation landed between the reads). */
  uint64_t cum = 0;
  for (int i = 0; i < EDP_HIST_BUCKETS; i++) {
    cum += s->h.bucket[i];
    put(t, "%s_bucket{%s%sle=\"%s\"} %llu\n", s->name, l, l[0] ? "," : "",
        i < EDP_HIST_BUCKETS - 1 ? bound_text[i] : "+Inf",
        (unsigned long long)cum);
  }
  put(t, "%s_sum%s%s%s %.6f\n", s->name, l[0] ? "{" : "", l, l[0] ? "}" : "",
      (double)s->h.sum_us / 1e6);
  put(t, "%s_count%s%s%s %llu\n", s->name, l[0] ? "{" : "", l, l[0] ? "}" : "",
      (unsigned long long)cum);
}

int edp_metrics_render(edp_metrics *m, char **out_text, size_t *out_len) {
  if (!m || !out_text)
    return EDP_EINVAL;
  *out_text = NULL;
  if (out_len)
    *out_len = 0;
  edp_metrics_out o = {0};
  pthread_mutex_lock(&m->lock);
  for (size_t i = 0; i < m->n; i++)
    m->e[i].fn(m->e[i].obj, &o);
  pthread_mutex_unlock(&m->lock);
  text t = {malloc(4096), 0, 4096, 0};
  t.failed = !t.p || o.failed;
  if (t.p)
    t.p[0] = '\0';
  /* Each family once, in the order of its first sample: the samples of a
   * family are printed when the first one is met and marked done by
   * clearing their name. */
  for (size_t i = 0; i < o.n && !t.failed; i++) {
    if (!o.s[i].name)
      continue;
    const char *name = o.s[i].name;
    static const char *const types[] = {"counter", "gauge", "histogram",
                                        "counter"};
    put_help(&t, name, o.s[i].help);
    put(&t, "# TYPE %s %s\n", name, types[o.s[i].kind]);
    for (size_t j = i; j < o.n; j++) {
      if (!o.s[j].name || strcmp(o.s[j].name, name))
        continue;
      /* A family has one type: a sample of another is dropped. */
      if ((o.s[j].kind == S_COUNTER_F ? S_COUNTER : o.s[j].kind) ==
          (o.s[i].kind == S_COUNTER_F ? S_COUNTER : o.s[i].kind))
        put_sample(&t, &o.s[j]);
      o.s[j].name = NULL;
    }
  }
  for (size_t i = 0; i < o.n; i++)
    free(o.s[i].labels);
  free(o.s);
  if (t.failed) {
    free(t.p);
    return EDP_ENOMEM;
  }
  *out_text = t.p;
  if (out_len)
    *out_len = t.len;
  return 0;
}
