/*
 * edp_multi_broker.c - spreading one logical queue over several
 * independent brokers, and surviving the loss of some of them.
 *
 * The producer owns all its connections on one thread, so there is no
 * locking: every call (publish, poll, flush) first "services" the brokers:
 * retries the down ones whose time came (a single connect attempt each,
 * bounded by connect_timeout_ms, because edp_conn_reconnect's own backoff
 * would stall the live brokers), notices stalled ones, and in round-robin
 * mode moves the unconfirmed messages of lost brokers to live ones
 * (edp_conn_take_unconfirmed). In key mode a down broker keeps its lost
 * messages inside its edp_conn (republished after the reconnect, in
 * order) and new messages for its keys wait in a bounded FIFO behind
 * them, so per-key order holds across the outage.
 *
 * The consumer is one thread per broker, each the owner of its connection;
 * the only shared state is the handler mutex and the counters.
 */
#include "edp_multi_broker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edp_conn_group.h"
#include "edp_trace.h"
#include "edp_util.h"

/* ---------- shared helpers ---------- */

static void mlog(edp_log_fn fn, void *ud, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void mlog(edp_log_fn fn, void *ud, int level, const char *fmt, ...) {
  if (!fn)
    return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  fn(ud, level, buf);
}

static int check_urls(const char *const *urls, size_t n, char *err_text,
                      size_t err_len) {
  if (!urls || n == 0 || n > EDP_MULTI_MAX_BROKERS)
    return EDP_EINVAL;
  for (size_t i = 0; i < n; i++) {
    edp_url u;
    char why[200];
    if (!urls[i])
      return EDP_EINVAL;
    if (edp_url_parse(urls[i], &u, why, sizeof(why))) {
      char m[512];
      if (err_text && err_len)
        snprintf(err_text, err_len, "bad URL %s: %s",
                 edp_url_mask(urls[i], m, sizeof(m)), why);
      return EDP_EURL;
    }
  }
  return 0;
}

/* FNV-1a: stable across runs and processes, so every producer maps a key
 * to the same broker. */
static uint32_t key_hash(const char *k) {
  uint32_t h = 2166136261u;
  for (; *k; k++)
    h = (h ^ (uint8_t)*k) * 16777619u;
  return h;
}

/* ---------- held messages (key mode) ---------- */

struct held {
  struct held *next;
  edp_msg *m; /* edp_msg_dup() copy */
};

static struct held *held_copy(const edp_msg *m) {
  struct held *h = malloc(sizeof(*h));
  if (!h)
    return NULL;
  h->next = NULL;
  if (!(h->m = edp_msg_dup(m))) {
    free(h);
    return NULL;
  }
  return h;
}

static void held_free(struct held *h) {
  free(h->m);
  free(h);
}

/* Attaches broker idx's connection to a pattern's group as the series
 * "broker-<idx>" (producer and consumer alike); without it the connection
 * still works, only its series is missing, which is logged. */
static void attach_series(edp_conn_group *g, int idx, const edp_conn *c,
                          edp_log_fn log, void *log_ud) {
  char series[32];
  snprintf(series, sizeof(series), "broker-%d", idx);
  if (edp_conn_group_attach(g, series, c))
    mlog(log, log_ud, EDP_LOG_WARN, "broker %d: its connection has no metrics",
         idx);
}

/* ---------- producer ---------- */

struct pbroker {
  struct edp_multi_producer *p;
  int idx;
  char *url;
  edp_conn *c; /* NULL until the first successful connect */
  int live;
  int retrying; /* quiets edp_conn's logs of failed attempts */
  int64_t next_retry, down_since, last_progress;
  int delay;
  struct held *h_head, *h_tail;
  size_t n_held;
  size_t resent; /* published again by edp_conn's own recovery, not logged */
  /* A message came back unroutable: the queue is gone on this broker. */
  int redeclare;
  int64_t next_redeclare;
  /* Single-writer (the producer's thread): counters and the live gauge in
   * st, the unconfirmed and held gauges in g_* (st's are not read). */
  edp_multi_broker_stats st;
  uint64_t g_unconfirmed, g_held;
};

struct edp_multi_producer {
  edp_multi_producer_opts o;
  char *queue, *client_name;
  edp_queue_opts qo;
  int has_qo;
  struct pbroker *b;
  size_t n, n_live, rr;
  int64_t all_down_since;
  int need_reroute;
  int64_t last_pump;
  unsigned rand_state;
  /* "broker-<idx>": each broker's connection, for the metrics thread,
   * which must never read one being destroyed. */
  edp_conn_group *conns;
};

/* The in-flight and held gauges other threads read (stats_get): set from
 * the owner's exact numbers at the end of every service round and after
 * each publish, so they trail by one producer call at most. */
static void sync_gauges(struct pbroker *b) {
  edp_count_set(&b->g_unconfirmed, b->c ? edp_conn_unconfirmed(b->c) : 0);
  edp_count_set(&b->g_held, b->n_held);
}

/* Declares the queue as the user asked (qo may be NULL); a queue whose
 * dead letters go to another queue (a quorum queue's delivery limit)
 * gets that one first, of the same type, so nothing dead-lettered is
 * dropped for want of a target. */
static int declare_queue(edp_conn *c, const char *queue,
                         const edp_queue_opts *qo) {
  if (qo && qo->dead_letter_routing_key && qo->dead_letter_routing_key[0]) {
    edp_queue_opts dq;
    edp_queue_opts_init(&dq);
    dq.queue_type = qo->queue_type;
    int rc = edp_conn_queue_declare(c, qo->dead_letter_routing_key, &dq, NULL,
                                    0, NULL, NULL);
    if (rc)
      return rc;
  }
  return edp_conn_queue_declare(c, queue, qo, NULL, 0, NULL, NULL);
}

void edp_multi_producer_opts_init(edp_multi_producer_opts *o) {
  memset(o, 0, sizeof(*o));
  o->mode = EDP_MULTI_ROUND_ROBIN;
  o->window = 1024;
  o->confirm_timeout_ms = 5000;
  o->connect_timeout_ms = 1000;
  o->retry_initial_ms = 250;
  o->retry_max_ms = 2000;
  o->down_max_ms = 30000;
  o->hold_max = 10000;
  o->heartbeat_s = 10;
  o->stop_fd = -1;
}

static void p_event(edp_multi_producer *p, struct pbroker *b, int ev,
                    size_t count) {
  if (p->o.on_event)
    p->o.on_event(p->o.ud, b->idx, ev, count);
}

/* edp_conn logs through here: while a down broker is retried, each failed
 * single attempt would log "giving up reconnecting"; that is our retry
 * schedule, not an error, so it goes out as debug. */
static void p_conn_log(void *ud, int level, const char *msg) {
  struct pbroker *b = ud;
  if (b->retrying && level < EDP_LOG_DEBUG)
    level = EDP_LOG_DEBUG;
  if (b->p->o.log)
    b->p->o.log(b->p->o.log_ud, level, msg);
}

/* Appends h to the messages b keeps, in order. */
static void held_push(struct pbroker *b, struct held *h) {
  if (b->h_tail)
    b->h_tail->next = h;
  else
    b->h_head = h;
  b->h_tail = h;
  b->n_held++;
}

/* A message for the producer's own queue, which it publishes mandatory. */
static int to_our_queue(const edp_multi_producer *p, const edp_msg *m) {
  return (!m->exchange || !m->exchange[0]) && m->routing_key &&
         !strcmp(m->routing_key, p->queue);
}

static void p_confirmed(void *ud, const edp_confirm *cf) {
  struct pbroker *b = ud;
  b->last_progress = edp_now_ms();
  /* Our queue is gone on this broker (an operator, a policy, an
   * auto-delete): the broker acks a message it dropped. Keep it, behind
   * any kept before it; service() declares the queue again and sends it,
   * so no confirm covers a lost message. */
  struct held *h = NULL;
  if (cf->status == EDP_CONFIRM_RETURNED && cf->msg &&
      to_our_queue(b->p, cf->msg) && (h = held_copy(cf->msg))) {
    held_push(b, h);
    edp_count_add(&b->st.returned, 1);
    b->redeclare = 1;
    return;
  }
  if (cf->status == EDP_CONFIRM_ACK)
    edp_count_add(&b->st.confirmed, 1);
  else
    edp_count_add(&b->st.nacked, 1);
  if (b->p->o.on_confirm)
    b->p->o.on_confirm(b->p->o.ud, b->idx, cf);
}

/* A reconnect or a restored channel publishes the messages its broker
 * left unconfirmed again by itself (edp_conn's recovery sequence): they
 * are publishes on this broker too. */
static void p_conn_event(void *ud, const edp_conn_event *ev) {
  struct pbroker *b = ud;
  if (ev->type == EDP_CONN_RECONNECTED || ev->type == EDP_CONN_CHANNEL_RESTORED)
    edp_count_add(&b->st.published, ev->republished);
  if (ev->type == EDP_CONN_RECONNECTED) /* by try_up: send_kept logs it */
    b->resent += ev->republished;
}

static int retry_delay(edp_multi_producer *p, struct pbroker *b) {
  /* Jitter over the upper half, so producers do not return in lockstep. */
  int d = b->delay / 2 +
          (int)(rand_r(&p->rand_state) % (unsigned)(b->delay / 2 + 1));
  b->delay =
      b->delay > p->o.retry_max_ms / 2 ? p->o.retry_max_ms : b->delay * 2;
  return d;
}

static void broker_down(edp_multi_producer *p, struct pbroker *b,
                        const char *why) {
  if (!b->live)
    return;
  if (b->c)
    edp_conn_abandon(b->c); /* its unconfirmed move to the lost list */
  b->live = 0;
  edp_gauge_set(&b->st.live, 0);
  edp_count_add(&b->st.downs, 1);
  int64_t now = edp_now_ms();
  b->down_since = now;
  b->delay = p->o.retry_initial_ms;
  b->next_retry = now + retry_delay(p, b);
  if (--p->n_live == 0)
    p->all_down_since = now;
  size_t unconf = b->c ? edp_conn_unconfirmed(b->c) : 0;
  mlog(p->o.log, p->o.log_ud, EDP_LOG_WARN,
       "broker %d (%s) down: %s; %zu unconfirmed; retrying with backoff",
       b->idx, b->c ? edp_conn_url(b->c) : "?", why, unconf);
  p_event(p, b, EDP_MULTI_DOWN, unconf);
  if (p->o.mode == EDP_MULTI_ROUND_ROBIN && unconf)
    p->need_reroute = 1;
}

static int p_open(edp_multi_producer *p, struct pbroker *b, char *why,
                  size_t why_len) {
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = b->url;
  co.heartbeat_s = p->o.heartbeat_s;
  co.connect_timeout_ms = p->o.connect_timeout_ms;
  /* A retry must not stall the live brokers: every step of it gets the
   * same short bound as the connect (the login through edp_conn's
   * handshake timeout; channel.open, confirm.select and queue.declare
   * through rpc_timeout_ms). */
  co.rpc_timeout_ms = p->o.connect_timeout_ms;
  co.reconnect_max_ms = 0; /* one attempt per edp_conn_reconnect call */
  /* A publish that cannot go out at once (the broker blocks publishing
   * under a resource alarm, or its socket is full) returns EDP_ETIMEOUT
   * instead of waiting: this one thread serves every broker, and waiting
   * for one would stop them all. The caller goes to another broker, or
   * holds the message in key mode. */
  co.blocked_timeout_ms = 0;
  co.stop_fd = p->o.stop_fd;
  co.client_name = p->client_name;
  co.log = p_conn_log;
  co.log_ud = b;
  co.on_event = p->o.on_conn_event;
  co.on_event_ud = p->o.on_conn_event_ud;
  edp_conn *c = NULL;
  int rc = edp_conn_open(&co, &c, why, why_len);
  if (rc)
    return rc;
  edp_conn_on_confirm(c, p_confirmed, b);
  edp_conn_on_event(c, p_conn_event, b);
  rc = edp_conn_confirm_select(c);
  if (!rc)
    rc = declare_queue(c, p->queue, p->has_qo ? &p->qo : NULL);
  if (rc) {
    snprintf(why, why_len, "%s: setting up queue %s: %s (%d %s)",
             edp_conn_url(c), p->queue, edp_strerror(rc),
             edp_conn_reply_code(c), edp_conn_reply_text(c));
    edp_conn_destroy(&c);
    return rc;
  }
  attach_series(p->conns, b->idx, c, p->o.log, p->o.log_ud);
  b->c = c;
  return 0;
}

static void mark_up(edp_multi_producer *p, struct pbroker *b) {
  b->live = 1;
  edp_gauge_set(&b->st.live, 1);
  edp_count_add(&b->st.ups, 1);
  b->delay = p->o.retry_initial_ms;
  b->last_progress = edp_now_ms();
  p->n_live++;
  p->all_down_since = -1;
}

/* Publishes what a broker kept while it was down, in order: first the
 * messages its lost channel left unconfirmed (the reconnect published
 * those again already; any left come from an interrupted one), then the
 * held ones. */
static int send_kept(edp_multi_producer *p, struct pbroker *b) {
  size_t n = 0;
  int rc = edp_conn_republish_unconfirmed(b->c, &n);
  edp_count_add(&b->st.published, n);
  n += b->resent;
  b->resent = 0;
  while (!rc && b->h_head) {
    struct held *h = b->h_head;
    rc = edp_conn_publish(b->c, h->m, NULL);
    if (rc)
      break;
    b->h_head = h->next;
    if (!b->h_head)
      b->h_tail = NULL;
    b->n_held--;
    edp_count_add(&b->st.published, 1);
    held_free(h);
    n++;
  }
  if (n)
    mlog(p->o.log, p->o.log_ud, EDP_LOG_INFO,
         "broker %d: sent %zu messages kept while it was down", b->idx, n);
  return rc;
}

/* One connect attempt, never more: the caller's other brokers wait. */
static void try_up(edp_multi_producer *p, struct pbroker *b) {
  char why[600] = "";
  int rc;
  b->retrying = 1;
  if (!b->c) {
    rc = p_open(p, b, why, sizeof(why));
  } else {
    rc = edp_conn_reconnect(b->c);
    if (rc)
      snprintf(why, sizeof(why), "%s", edp_strerror(rc));
  }
  b->retrying = 0;
  int64_t now = edp_now_ms();
  if (rc) {
    b->next_retry = now + retry_delay(p, b);
    mlog(p->o.log, p->o.log_ud, EDP_LOG_DEBUG,
         "broker %d still down: %s; next attempt in %lld ms", b->idx, why,
         (long long)(b->next_retry - now));
    return;
  }
  mark_up(p, b);
  size_t kept = edp_conn_unconfirmed(b->c) + b->n_held;
  mlog(p->o.log, p->o.log_ud, EDP_LOG_WARN,
       "broker %d (%s) up again after %lld ms", b->idx, edp_conn_url(b->c),
       (long long)(now - b->down_since));
  p_event(p, b, EDP_MULTI_UP, kept);
  /* EDP_ETIMEOUT: blocked or full; the rest stays held (service). */
  rc = send_kept(p, b);
  if (rc && rc != EDP_ETIMEOUT)
    broker_down(p, b, "lost while resending");
}

static struct pbroker *next_live(edp_multi_producer *p,
                                 const struct pbroker * not ) {
  for (size_t k = 0; k < p->n; k++) {
    struct pbroker *b = &p->b[(p->rr + k) % p->n];
    if (b->live && b != not && !edp_conn_is_blocked(b->c)) {
      p->rr = (size_t)(b - p->b) + 1;
      return b;
    }
  }
  return NULL;
}

struct reroute_ctx {
  edp_multi_producer *p;
  struct pbroker *from;
};

static int reroute_to(struct reroute_ctx *x, const edp_msg *m);

/* edp_conn_take_unconfirmed callback: one lost message to a live broker.
 * A broker that fails here is only marked down (its own messages are
 * moved on the next round), so the lists are never re-entered. */
static int reroute_one(void *ud, const edp_msg *m) {
  struct reroute_ctx *x = ud;
  /* The resend is a new hop of the message's trace: the same trace id, a
   * new span id (without memory it goes out as it was). */
  edp_msg hop;
  edp_header *hop_headers = NULL;
  char tp[EDP_TRACEPARENT_LEN + 1];
  edp_trace_msg_hop(m, &hop, &hop_headers, tp);
  int taken = reroute_to(x, &hop);
  free(hop_headers);
  return taken;
}

static int reroute_to(struct reroute_ctx *x, const edp_msg *m) {
  for (;;) {
    struct pbroker *to = next_live(x->p, x->from);
    if (!to)
      return 1; /* keep it; it moves when some broker is up */
    int rc = edp_conn_publish(to->c, m, NULL);
    if (!rc) {
      if (edp_conn_unconfirmed(to->c) == 1)
        to->last_progress = edp_now_ms();
      edp_count_add(&to->st.published, 1);
      return 0;
    }
    if (rc != EDP_ECLOSED)
      return 1;
    broker_down(x->p, to, "connection lost");
  }
}

static void reroute(edp_multi_producer *p) {
  while (p->need_reroute && p->n_live) {
    p->need_reroute = 0;
    size_t moved = 0;
    for (size_t i = 0; i < p->n; i++) {
      struct pbroker *b = &p->b[i];
      if (b->live || !b->c || !edp_conn_unconfirmed(b->c))
        continue;
      struct reroute_ctx x = {p, b};
      size_t n = edp_conn_take_unconfirmed(b->c, reroute_one, &x);
      moved += n;
      if (n) {
        edp_count_add(&b->st.rerouted, n);
        mlog(p->o.log, p->o.log_ud, EDP_LOG_WARN,
             "broker %d: %zu unconfirmed messages resent to other brokers",
             b->idx, n);
        p_event(p, b, EDP_MULTI_REROUTED, n);
      }
      if (edp_conn_unconfirmed(b->c))
        p->need_reroute = 1;
      if (!p->n_live)
        break;
    }
    /* Nothing could move now (every live broker blocked or full): the
     * next call tries again, rather than this one spinning. */
    if (!moved)
      break;
  }
}

/* Whether edp_conn_wait's result means the broker is lost. EDP_ECHANNEL
 * is not: the broker closed the channel (e.g. a publish to a missing
 * exchange) and the call restored it, its unconfirmed messages published
 * again and the poison ones reported nacked. */
static int lost(int rc) {
  return rc < 0 && rc != EDP_ESTOPPED && rc != EDP_ECHANNEL;
}

/* Declares the queue again, waits until every message published before
 * that was confirmed or came back (a return comes before its ack), then
 * sends the returned ones in their order. */
static int requeue_returned(edp_multi_producer *p, struct pbroker *b) {
  b->redeclare = 0;
  int rc = declare_queue(b->c, p->queue, p->has_qo ? &p->qo : NULL);
  if (!rc)
    rc = edp_conn_wait_confirms(b->c, 0, p->o.confirm_timeout_ms);
  if (!rc) {
    mlog(p->o.log, p->o.log_ud, EDP_LOG_WARN,
         "broker %d: queue %s was gone (%zu message(s) came back "
         "unroutable); declared it again",
         b->idx, p->queue, b->n_held);
    rc = send_kept(p, b);
  }
  if (rc && !lost(rc)) {
    mlog(p->o.log, p->o.log_ud, EDP_LOG_WARN,
         "broker %d: cannot declare queue %s again and resend to it: %s "
         "(%d %s); retrying",
         b->idx, p->queue, edp_strerror(rc), edp_conn_reply_code(b->c),
         edp_conn_reply_text(b->c));
    b->redeclare = 1;
    b->next_redeclare = edp_now_ms() + 1000;
  }
  return rc;
}

/* Retries, stall detection and rerouting; cheap enough for every call. */
static void service(edp_multi_producer *p) {
  int64_t now = edp_now_ms();
  /* rabbitmq-c sends heartbeats only inside calls on a connection; in key
   * mode a broker may get no message for long, so read every live one at
   * least once a second (this also picks up confirms). */
  int pump_all = now - p->last_pump >= 1000;
  if (pump_all)
    p->last_pump = now;
  for (size_t i = 0; i < p->n; i++) {
    struct pbroker *b = &p->b[i];
    if (pump_all && b->live) {
      int rc = edp_conn_wait(b->c, -1, 0);
      if (lost(rc))
        broker_down(p, b, edp_strerror(rc));
    }
    if (b->live && b->redeclare && now >= b->next_redeclare) {
      int rc = requeue_returned(p, b);
      if (lost(rc))
        broker_down(p, b, edp_strerror(rc));
      now = edp_now_ms();
    }
    if (b->live && b->n_held && !edp_conn_is_blocked(b->c)) {
      /* Key mode: messages held while the broker blocked publishing. */
      int rc = send_kept(p, b);
      if (rc && rc != EDP_ETIMEOUT)
        broker_down(p, b, edp_strerror(rc));
      now = edp_now_ms();
    }
    if (!b->live && now >= b->next_retry) {
      try_up(p, b);
      now = edp_now_ms();
    } else if (b->live && edp_conn_unconfirmed(b->c) &&
               now - b->last_progress > p->o.confirm_timeout_ms) {
      /* The caller may simply not have called us for a while: read what
       * is there before calling the broker stalled. */
      int rc = edp_conn_wait(b->c, -1, 0);
      if (lost(rc))
        broker_down(p, b, edp_strerror(rc));
      else if (edp_conn_unconfirmed(b->c) &&
               edp_now_ms() - b->last_progress > p->o.confirm_timeout_ms)
        broker_down(p, b, "no confirm within confirm_timeout_ms");
    }
  }
  if (p->o.mode == EDP_MULTI_ROUND_ROBIN)
    reroute(p);
  for (size_t i = 0; i < p->n; i++)
    sync_gauges(&p->b[i]);
}

static int64_t next_retry_at(const edp_multi_producer *p) {
  int64_t t = -1;
  for (size_t i = 0; i < p->n; i++)
    if (!p->b[i].live && (t < 0 || p->b[i].next_retry < t))
      t = p->b[i].next_retry;
  return t;
}

/* The producer's only blocking point besides a full window: poll every
 * live socket and the stop fd, at most until the next retry is due. */
static int wait_any(edp_multi_producer *p, int timeout_ms) {
  struct pollfd fds[EDP_MULTI_MAX_BROKERS + 1];
  size_t nf = 0;
  int64_t now = edp_now_ms();
  int64_t t = next_retry_at(p);
  int slice = timeout_ms < 1000 ? timeout_ms : 1000; /* heartbeats */
  if (t >= 0 && t - now < slice)
    slice = t > now ? (int)(t - now) : 0;
  if (slice < 0)
    slice = 0;
  for (size_t i = 0; i < p->n; i++)
    if (p->b[i].live)
      fds[nf++] = (struct pollfd){edp_conn_fd(p->b[i].c), POLLIN, 0};
  fds[nf++] = (struct pollfd){p->o.stop_fd, POLLIN, 0};
  int r = poll(fds, nf, slice);
  if (r < 0 && errno != EINTR)
    return EDP_EIO;
  if (r > 0 && (fds[nf - 1].revents & POLLIN))
    return EDP_ESTOPPED;
  /* Read whatever each live broker sent; edp_conn_wait with timeout 0
   * also lets rabbitmq-c send a due heartbeat. */
  for (size_t i = 0; i < p->n; i++) {
    struct pbroker *b = &p->b[i];
    if (!b->live)
      continue;
    int rc = edp_conn_wait(b->c, -1, 0);
    if (rc == EDP_ESTOPPED)
      return rc;
    if (lost(rc))
      broker_down(p, b, edp_strerror(rc));
  }
  service(p);
  return 0;
}

int edp_multi_producer_new(const edp_multi_producer_opts *o,
                           edp_multi_producer **out, char *err_text,
                           size_t err_len) {
  if (!o || !out || !o->queue || !o->queue[0] || o->window == 0 ||
      o->confirm_timeout_ms <= 0 || o->connect_timeout_ms <= 0 ||
      o->retry_initial_ms <= 0 || o->retry_max_ms < o->retry_initial_ms ||
      o->down_max_ms < 0 ||
      (o->mode != EDP_MULTI_ROUND_ROBIN && o->mode != EDP_MULTI_KEY))
    return EDP_EINVAL;
  *out = NULL;
  int rc = check_urls(o->urls, o->n_urls, err_text, err_len);
  if (rc)
    return rc;
  edp_multi_producer *p = calloc(1, sizeof(*p));
  if (!p)
    return EDP_ENOMEM;
  p->o = *o;
  p->o.urls = NULL;
  p->n = o->n_urls;
  p->queue = strdup(o->queue);
  p->client_name = strdup(o->client_name ? o->client_name : "edp-multi");
  p->b = calloc(p->n, sizeof(*p->b));
  p->rand_state = (unsigned)edp_now_ms() ^ (unsigned)getpid();
  p->all_down_since = edp_now_ms();
  if (o->queue_opts) {
    p->qo = *o->queue_opts; /* its strings stay the caller's: documented */
    p->has_qo = 1;
  }
  if (!p->queue || !p->client_name || !p->b ||
      edp_conn_group_new(p->client_name, &p->conns)) {
    edp_multi_producer_destroy(&p);
    return EDP_ENOMEM;
  }
  for (size_t i = 0; i < p->n; i++) {
    struct pbroker *b = &p->b[i];
    b->p = p;
    b->idx = (int)i;
    b->delay = o->retry_initial_ms;
    if (!(b->url = strdup(o->urls[i]))) {
      edp_multi_producer_destroy(&p);
      return EDP_ENOMEM;
    }
  }
  for (size_t i = 0; i < p->n; i++) {
    struct pbroker *b = &p->b[i];
    char why[600] = "";
    b->retrying = 1;
    rc = p_open(p, b, why, sizeof(why));
    b->retrying = 0;
    if (rc == EDP_EAUTH || rc == EDP_EACCESS || rc == EDP_EPRECONDITION ||
        rc == EDP_ENOMEM || rc == EDP_ESTOPPED) {
      if (err_text && err_len)
        snprintf(err_text, err_len, "%s", why);
      edp_multi_producer_destroy(&p);
      return rc;
    }
    if (rc) {
      int64_t now = edp_now_ms();
      b->down_since = now;
      b->next_retry = now + retry_delay(p, b);
      mlog(o->log, o->log_ud, EDP_LOG_WARN, "broker %zu down: %s", i, why);
      p_event(p, b, EDP_MULTI_DOWN, 0);
      continue;
    }
    mark_up(p, b);
    edp_count_set(&b->st.ups, 0); /* the first connect is not a recovery */
    p_event(p, b, EDP_MULTI_UP, 0);
  }
  *out = p;
  return 0;
}

void edp_multi_producer_destroy(edp_multi_producer **pp) {
  if (!pp || !*pp)
    return;
  edp_multi_producer *p = *pp;
  for (size_t i = 0; p->b && i < p->n; i++) {
    struct pbroker *b = &p->b[i];
    edp_conn_group_detach(p->conns, b->c);
    edp_conn_destroy(&b->c);
    while (b->h_head) {
      struct held *h = b->h_head;
      b->h_head = h->next;
      held_free(h);
    }
    free(b->url);
  }
  edp_conn_group_destroy(&p->conns);
  free(p->b);
  free(p->queue);
  free(p->client_name);
  free(p);
  *pp = NULL;
}

static int hold(edp_multi_producer *p, struct pbroker *b, const edp_msg *m) {
  size_t kept = b->n_held + (b->c ? edp_conn_unconfirmed(b->c) : 0);
  if (kept >= p->o.hold_max)
    return EDP_ECONNECT;
  struct held *h = held_copy(m);
  if (!h)
    return EDP_ENOMEM;
  held_push(b, h);
  sync_gauges(b);
  if (b->n_held == 1)
    p_event(p, b, EDP_MULTI_HELD, kept + 1);
  return 0;
}

int edp_multi_publish(edp_multi_producer *p, const edp_msg *m,
                      const char *key) {
  if (!p || !m || (p->o.mode == EDP_MULTI_KEY && !key))
    return EDP_EINVAL;
  edp_msg mm = *m;
  if (!mm.routing_key && (!mm.exchange || !mm.exchange[0]))
    mm.routing_key = p->queue;
  if (to_our_queue(p, &mm))
    mm.mandatory = 1; /* a queue deleted under us returns, see p_confirmed */
  service(p);
  struct pbroker *skip = NULL; /* round-robin: full a moment ago */
  size_t full = 0;
  for (;;) {
    struct pbroker *b;
    if (p->o.mode == EDP_MULTI_KEY) {
      b = &p->b[key_hash(key) % p->n];
      /* Behind held messages a new one must wait too, or it would
       * overtake them. A broker that blocks publishing (resource alarm)
       * holds them as a down one does: the other keys go on. */
      if (!b->live || b->n_held || edp_conn_is_blocked(b->c))
        return hold(p, b, &mm);
    } else if (!(b = next_live(p, skip))) {
      if (!p->n_live && edp_now_ms() - p->all_down_since > p->o.down_max_ms)
        return EDP_ECONNECT;
      /* None is down for good: wait for a confirm, an unblock or a
       * broker back, as long as it takes (the stop fd ends it). */
      skip = NULL;
      int rc = wait_any(p, 1000);
      if (rc)
        return rc;
      continue;
    }
    if (edp_conn_unconfirmed(b->c) >= p->o.window) {
      int rc = edp_conn_wait_confirms(b->c, p->o.window * 3 / 4,
                                      p->o.confirm_timeout_ms);
      if (rc == EDP_ESTOPPED)
        return rc;
      if (rc) {
        broker_down(
            p, b, rc == EDP_ETIMEOUT ? "confirms timed out" : edp_strerror(rc));
        service(p);
        continue;
      }
    }
    int rc = edp_conn_publish(b->c, &mm, NULL);
    if (rc == EDP_ECLOSED) {
      broker_down(p, b, "connection lost");
      service(p);
      continue;
    }
    if (rc == EDP_ETIMEOUT) {
      /* Nothing was sent: b blocks publishing or its socket is full.
       * Another broker takes it; when every live one was full in turn,
       * wait for their confirms (key mode: for this broker's) first. */
      if (p->o.mode == EDP_MULTI_KEY && edp_conn_is_blocked(b->c))
        return hold(p, b, &mm);
      skip = b;
      if (p->o.mode == EDP_MULTI_KEY || ++full >= p->n_live) {
        skip = NULL;
        full = 0;
        if ((rc = wait_any(p, 100)))
          return rc;
      }
      continue;
    }
    if (rc)
      return rc;
    if (edp_conn_unconfirmed(b->c) == 1)
      b->last_progress = edp_now_ms();
    edp_count_add(&b->st.published, 1);
    sync_gauges(b);
    return 0;
  }
}

int edp_multi_poll(edp_multi_producer *p, int timeout_ms) {
  if (!p)
    return EDP_EINVAL;
  int64_t deadline = edp_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    int64_t left = deadline - edp_now_ms();
    int rc = wait_any(p, left > 0 ? (int)left : 0);
    if (rc || left <= 0)
      return rc;
  }
}

/* Messages not confirmed yet that wait on broker b, and whether they can
 * still go out: a down broker's are stuck in key mode, and in round-robin
 * mode while no broker is up. */
static size_t outstanding(const struct pbroker *b) {
  return (b->c ? edp_conn_unconfirmed(b->c) : 0) + b->n_held;
}

int edp_multi_flush(edp_multi_producer *p, int timeout_ms) {
  if (!p)
    return EDP_EINVAL;
  int64_t deadline = timeout_ms < 0 ? -1 : edp_now_ms() + timeout_ms;
  for (;;) {
    service(p);
    size_t total = 0;
    int64_t now = edp_now_ms(), stuck_since = -1;
    for (size_t i = 0; i < p->n; i++) {
      struct pbroker *b = &p->b[i];
      size_t n = outstanding(b);
      total += n;
      if (n && !b->live && p->o.mode == EDP_MULTI_KEY &&
          (stuck_since < 0 || b->down_since < stuck_since))
        stuck_since = b->down_since;
    }
    if (total == 0)
      return 0;
    if (p->o.mode == EDP_MULTI_ROUND_ROBIN && !p->n_live)
      stuck_since = p->all_down_since;
    if (stuck_since >= 0 && now - stuck_since > p->o.down_max_ms)
      return EDP_ECONNECT;
    if (deadline >= 0 && now >= deadline)
      return EDP_ETIMEOUT;
    int left = deadline < 0 ? 1000 : (int)(deadline - now);
    int rc = wait_any(p, left);
    if (rc)
      return rc;
  }
}

size_t edp_multi_producer_brokers(const edp_multi_producer *p) {
  return p ? p->n : 0;
}

size_t edp_multi_producer_live(const edp_multi_producer *p) {
  return p ? p->n_live : 0;
}

int edp_multi_producer_stats_get(const edp_multi_producer *p, size_t broker,
                                 edp_multi_broker_stats *out) {
  if (!p || !out || broker >= p->n)
    return EDP_EINVAL;
  const struct pbroker *b = &p->b[broker];
  const edp_multi_broker_stats *st = &b->st;
  memset(out, 0, sizeof(*out));
  out->live = edp_gauge_read(&st->live);
  out->published = edp_count_read(&st->published);
  out->confirmed = edp_count_read(&st->confirmed);
  out->nacked = edp_count_read(&st->nacked);
  out->returned = edp_count_read(&st->returned);
  out->rerouted = edp_count_read(&st->rerouted);
  out->downs = edp_count_read(&st->downs);
  out->ups = edp_count_read(&st->ups);
  out->unconfirmed = (size_t)edp_count_read(&b->g_unconfirmed);
  out->held = (size_t)edp_count_read(&b->g_held);
  return 0;
}

int edp_multi_producer_stats(const edp_multi_producer *p, size_t broker,
                             edp_multi_broker_stats *out) {
  int rc = edp_multi_producer_stats_get(p, broker, out);
  if (rc)
    return rc;
  const struct pbroker *b = &p->b[broker];
  out->unconfirmed = b->c ? edp_conn_unconfirmed(b->c) : 0;
  out->held = b->n_held;
  return 0;
}

/* The labels of broker i: queue, broker (the index) and host (host:port,
 * never the URL: it may hold credentials). */
static void broker_labels(const char *queue, size_t i, const char *url, char *l,
                          size_t len) {
  char idx[24], host[300] = "?";
  edp_url u;
  if (!edp_url_parse(url, &u, NULL, 0))
    snprintf(host, sizeof(host), "%s:%d", u.host, u.port);
  snprintf(idx, sizeof(idx), "%zu", i);
  l[0] = '\0';
  edp_metrics_label(l, len, "queue", queue);
  edp_metrics_label(l, len, "broker", idx);
  edp_metrics_label(l, len, "host", host);
}

/* Families shared by the producer and the consumer, one help text each. */
#define HELP_UP                                                                \
  "1 while this broker is in use (producer: in rotation; consumer: consumed)."
#define HELP_DOWNS "Times this broker was lost."
#define HELP_UPS "Times this broker came back."

void edp_multi_producer_collect(const void *producer, edp_metrics_out *out) {
  const edp_multi_producer *p = producer;
  for (size_t i = 0; i < p->n; i++) {
    edp_multi_broker_stats st;
    if (edp_multi_producer_stats_get(p, i, &st))
      continue;
    char l[600];
    broker_labels(p->queue, i, p->b[i].url, l, sizeof(l));
    edp_metrics_gauge(out, "edp_multi_broker_up", HELP_UP, l, st.live);
    const struct {
      const char *name, *help;
      uint64_t v;
    } c[] = {{"edp_multi_broker_published_total",
              "Publishes on this broker, resends included.", st.published},
             {"edp_multi_broker_confirmed_total", "Messages this broker acked.",
              st.confirmed},
             {"edp_multi_broker_nacked_total",
              "Messages this broker nacked (or returned from another route).",
              st.nacked},
             {"edp_multi_broker_returned_total",
              "Messages returned because the queue was gone on this broker "
              "(declared again and sent again).",
              st.returned},
             {"edp_multi_broker_rerouted_total",
              "Unconfirmed messages of this broker sent to other brokers after "
              "it was lost.",
              st.rerouted},
             {"edp_multi_broker_downs_total", HELP_DOWNS, st.downs},
             {"edp_multi_broker_ups_total", HELP_UPS, st.ups}};
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++)
      edp_metrics_counter(out, c[k].name, c[k].help, l, c[k].v);
    edp_metrics_gauge(out, "edp_multi_broker_unconfirmed",
                      "Messages published to this broker, not yet confirmed "
                      "(or lost with its connection).",
                      l, (double)st.unconfirmed);
    edp_metrics_gauge(out, "edp_multi_broker_held",
                      "Key mode: messages waiting for this broker to return.",
                      l, (double)st.held);
  }
  edp_conn_group_collect(p->conns, out);
}

/* ---------- consumer ---------- */

struct cbroker {
  struct edp_multi_consumer *mc;
  int idx;
  char *url;
  pthread_t th;
  int started;
  int error;                   /* fatal error, under mc->mu */
  edp_multi_consumer_stats st; /* under mc->mu */
};

struct edp_multi_consumer {
  edp_multi_consumer_opts o;
  char *queue, *client_name;
  edp_queue_opts qo;
  int has_qo;
  struct cbroker *b;
  size_t n;
  int stop_pipe[2];
  int stopped;
  pthread_mutex_t mu;    /* counters and error */
  pthread_mutex_t hmu;   /* the handler runs under it */
  edp_conn_group *conns; /* "broker-<idx>": the threads' connections */
};

void edp_multi_consumer_opts_init(edp_multi_consumer_opts *o) {
  memset(o, 0, sizeof(*o));
  o->prefetch = 200;
  o->connect_timeout_ms = 1000;
  o->retry_initial_ms = 250;
  o->retry_max_ms = 2000;
  o->heartbeat_s = 10;
}

static void c_event(struct cbroker *b, int ev) {
  edp_multi_consumer *mc = b->mc;
  pthread_mutex_lock(&mc->mu);
  if (ev == EDP_MULTI_UP) {
    b->st.live = 1;
    b->st.ups++;
  } else if (ev == EDP_MULTI_CANCELLED) {
    b->st.live = 0;
    b->st.cancels++;
  } else {
    b->st.live = 0;
    b->st.downs++;
  }
  pthread_mutex_unlock(&mc->mu);
  if (mc->o.on_event)
    mc->o.on_event(mc->o.ud, b->idx, ev, 0);
}

static int c_setup(edp_multi_consumer *mc, edp_conn *c) {
  int rc = edp_conn_qos(c, mc->o.prefetch);
  if (!rc)
    rc = declare_queue(c, mc->queue, mc->has_qo ? &mc->qo : NULL);
  if (!rc)
    rc = edp_conn_consume(c, mc->queue, NULL, NULL, 0);
  return rc;
}

/* After the broker cancelled the consumer (its queue was deleted): the
 * thread declares the queue again and consumes it, as at the start. The
 * queue declare is recorded already; the consumer record is gone with the
 * cancel, so this consume makes a new one. */
static int c_resubscribe(edp_multi_consumer *mc, edp_conn *c) {
  int rc = declare_queue(c, mc->queue, mc->has_qo ? &mc->qo : NULL);
  if (!rc)
    rc = edp_conn_consume(c, mc->queue, NULL, NULL, 0);
  return rc;
}

static int fatal(int rc) {
  return rc == EDP_EAUTH || rc == EDP_EACCESS || rc == EDP_EPRECONDITION ||
         rc == EDP_ENOMEM;
}

/* Opens the broker's connection, retrying with backoff until it works, a
 * fatal error, or stop. Returns 0 or the error that ends the thread. */
static int c_connect(struct cbroker *b, edp_conn **out) {
  edp_multi_consumer *mc = b->mc;
  edp_conn_opts co;
  edp_conn_opts_init(&co);
  co.url = b->url;
  co.heartbeat_s = mc->o.heartbeat_s;
  co.connect_timeout_ms = mc->o.connect_timeout_ms;
  co.backoff_initial_ms = mc->o.retry_initial_ms;
  co.backoff_max_ms = mc->o.retry_max_ms;
  co.reconnect_max_ms = 60000;
  co.stop_fd = mc->stop_pipe[0];
  co.client_name = mc->client_name;
  co.log = mc->o.log;
  co.log_ud = mc->o.log_ud;
  co.on_event = mc->o.on_conn_event;
  co.on_event_ud = mc->o.on_conn_event_ud;
  int delay = mc->o.retry_initial_ms;
  for (int first = 1;; first = 0) {
    char why[600] = "";
    edp_conn *c = NULL;
    int rc = edp_conn_open(&co, &c, why, sizeof(why));
    if (!rc && (rc = c_setup(mc, c)))
      snprintf(why, sizeof(why), "setting up queue %s: %s (%d %s)", mc->queue,
               edp_strerror(rc), edp_conn_reply_code(c),
               edp_conn_reply_text(c));
    if (!rc) {
      *out = c;
      return 0;
    }
    edp_conn_destroy(&c);
    if (fatal(rc) || rc == EDP_ESTOPPED) {
      if (rc != EDP_ESTOPPED)
        mlog(mc->o.log, mc->o.log_ud, EDP_LOG_ERROR, "broker %d: %s", b->idx,
             why);
      return rc;
    }
    if (first) {
      mlog(mc->o.log, mc->o.log_ud, EDP_LOG_WARN,
           "broker %d down: %s; retrying with backoff", b->idx, why);
      c_event(b, EDP_MULTI_DOWN);
    }
    if (edp_sleep_ms(delay, mc->stop_pipe[0]))
      return EDP_ESTOPPED;
    delay = delay > mc->o.retry_max_ms / 2 ? mc->o.retry_max_ms : delay * 2;
  }
}

/* Handles every queued delivery: handler under the mutex, then the ack
 * (or requeueing nack) here on the owner thread. */
static int c_drain(struct cbroker *b, edp_conn *c) {
  edp_multi_consumer *mc = b->mc;
  edp_delivery d;
  while (edp_conn_pending_deliveries(c) && edp_conn_receive(c, &d, 0) == 0) {
    /* The handler runs in the consumer's span for the message, a child
     * of the context it carries (edp_trace_current). */
    edp_trace span;
    int traced = edp_trace_delivery_span(&d, &span);
    pthread_mutex_lock(&mc->hmu);
    edp_trace_set_current(traced ? &span : NULL);
    int hr = mc->o.handler(mc->o.ud, b->idx, &d);
    edp_trace_set_current(NULL);
    pthread_mutex_unlock(&mc->hmu);
    int rc = hr == 0 ? edp_conn_ack(c, d.epoch, d.tag, 0)
                     : edp_conn_nack(c, d.epoch, d.tag, 0, 1);
    pthread_mutex_lock(&mc->mu);
    if (hr == 0)
      b->st.processed++;
    else
      b->st.failed++;
    if (d.redelivered)
      b->st.redelivered++;
    pthread_mutex_unlock(&mc->mu);
    edp_delivery_clear(&d);
    /* A stale ack means the channel was replaced: the broker redelivers,
     * nothing to do. A lost connection is noticed by the next wait. */
    if (rc && rc != EDP_ESTALE)
      return rc;
  }
  return 0;
}

/* Attempts in a row to consume the queue again after a cancel before the
 * thread reports the broker failed: a consumer that can't be restored is
 * reported, not retried forever. */
#define RESUBSCRIBE_TRIES 5

static void *c_thread(void *arg) {
  struct cbroker *b = arg;
  edp_multi_consumer *mc = b->mc;
  edp_conn *c = NULL;
  int rc = c_connect(b, &c);
  if (!rc) {
    attach_series(mc->conns, b->idx, c, mc->o.log, mc->o.log_ud);
    c_event(b, EDP_MULTI_UP);
  }
  int consuming = 1, tries = 0, delay = mc->o.retry_initial_ms;
  while (!rc) {
    if (!consuming) {
      rc = c_resubscribe(mc, c);
      if (!rc) {
        consuming = 1;
        tries = 0;
        delay = mc->o.retry_initial_ms;
        mlog(mc->o.log, mc->o.log_ud, EDP_LOG_INFO,
             "broker %d: queue %s declared again; consuming", b->idx,
             mc->queue);
        c_event(b, EDP_MULTI_UP);
        continue;
      }
      if (rc == EDP_ESTOPPED)
        break;
      if (rc != EDP_ECLOSED) {
        if (fatal(rc) || ++tries >= RESUBSCRIBE_TRIES) {
          mlog(mc->o.log, mc->o.log_ud, EDP_LOG_ERROR,
               "broker %d: cannot consume queue %s again: %s (%d %s); "
               "giving up on this broker",
               b->idx, mc->queue, edp_strerror(rc), edp_conn_reply_code(c),
               edp_conn_reply_text(c));
          break;
        }
        mlog(mc->o.log, mc->o.log_ud, EDP_LOG_WARN,
             "broker %d: cannot consume queue %s again: %s; retrying in %d ms",
             b->idx, mc->queue, edp_strerror(rc), delay);
        if (edp_sleep_ms(delay, mc->stop_pipe[0])) {
          rc = EDP_ESTOPPED;
          break;
        }
        delay = delay > mc->o.retry_max_ms / 2 ? mc->o.retry_max_ms : delay * 2;
        rc = 0;
        continue;
      }
      /* The connection is gone: reconnect below, then try again. */
    } else {
      rc = edp_conn_wait(c, -1, 1000);
      if (rc > 0 && (rc & EDP_READY_DELIVERY))
        rc = c_drain(b, c);
      /* EDP_ECHANNEL: the broker closed the channel and the wait restored
       * it with the consumer; only deliveries taken before are void (the
       * broker redelivers them). */
      if (rc > 0 || rc == EDP_ETIMEOUT || rc == EDP_ECHANNEL)
        rc = 0;
      if (rc == EDP_ENOTFOUND) {
        /* The broker cancelled the consumer (queue deleted) and edp_conn
         * dropped it: the connection is fine, the consumer is not. We own
         * the queue on this broker, so declare it again and consume. */
        mlog(mc->o.log, mc->o.log_ud, EDP_LOG_WARN,
             "broker %d: consumer of queue %s cancelled by the broker (%s); "
             "declaring it again",
             b->idx, mc->queue, edp_conn_reply_text(c));
        consuming = 0;
        c_event(b, EDP_MULTI_CANCELLED);
        rc = 0;
        continue;
      }
      if (rc == 0 || rc == EDP_ESTOPPED)
        continue;
    }
    /* Lost: reconnect; edp_conn_reconnect replays qos, the queue and the
     * consumer (if there is one). It gives up after reconnect_max_ms; a
     * broker may be down for longer, so try again. */
    mlog(mc->o.log, mc->o.log_ud, EDP_LOG_WARN,
         "broker %d lost (%s); reconnecting", b->idx, edp_strerror(rc));
    c_event(b, EDP_MULTI_DOWN);
    do
      rc = edp_conn_reconnect(c);
    while (rc && !fatal(rc) && rc != EDP_ESTOPPED);
    if (!rc && consuming)
      c_event(b, EDP_MULTI_UP); /* else UP once it consumes again */
  }
  if (rc != EDP_ESTOPPED) {
    pthread_mutex_lock(&mc->mu);
    b->error = rc;
    pthread_mutex_unlock(&mc->mu);
  }
  /* Closing the channel hands unhandled deliveries back to the broker.
   * The connection's counts stay in its series. */
  edp_conn_group_detach(mc->conns, c);
  edp_conn_destroy(&c);
  pthread_mutex_lock(&mc->mu);
  b->st.live = 0;
  pthread_mutex_unlock(&mc->mu);
  return NULL;
}

int edp_multi_consumer_new(const edp_multi_consumer_opts *o,
                           edp_multi_consumer **out, char *err_text,
                           size_t err_len) {
  if (!o || !out || !o->queue || !o->queue[0] || !o->handler ||
      o->prefetch < 0 || o->connect_timeout_ms <= 0 ||
      o->retry_initial_ms <= 0 || o->retry_max_ms < o->retry_initial_ms)
    return EDP_EINVAL;
  *out = NULL;
  int rc = check_urls(o->urls, o->n_urls, err_text, err_len);
  if (rc)
    return rc;
  edp_multi_consumer *mc = calloc(1, sizeof(*mc));
  if (!mc)
    return EDP_ENOMEM;
  mc->o = *o;
  mc->o.urls = NULL;
  mc->n = o->n_urls;
  mc->stop_pipe[0] = mc->stop_pipe[1] = -1;
  pthread_mutex_init(&mc->mu, NULL);
  pthread_mutex_init(&mc->hmu, NULL);
  mc->queue = strdup(o->queue);
  mc->client_name = strdup(o->client_name ? o->client_name : "edp-multi");
  mc->b = calloc(mc->n, sizeof(*mc->b));
  if (o->queue_opts) {
    mc->qo = *o->queue_opts;
    mc->has_qo = 1;
  }
  if (!mc->queue || !mc->client_name || !mc->b ||
      edp_conn_group_new(mc->client_name, &mc->conns)) {
    edp_multi_consumer_destroy(&mc);
    return EDP_ENOMEM;
  }
  if (pipe(mc->stop_pipe)) {
    mc->stop_pipe[0] = mc->stop_pipe[1] = -1;
    edp_multi_consumer_destroy(&mc);
    return EDP_EINTERNAL;
  }
  for (size_t i = 0; i < mc->n; i++) {
    mc->b[i].mc = mc;
    mc->b[i].idx = (int)i;
    if (!(mc->b[i].url = strdup(o->urls[i]))) {
      edp_multi_consumer_destroy(&mc);
      return EDP_ENOMEM;
    }
  }
  for (size_t i = 0; i < mc->n; i++) {
    if (pthread_create(&mc->b[i].th, NULL, c_thread, &mc->b[i])) {
      edp_multi_consumer_destroy(&mc);
      return EDP_EINTERNAL;
    }
    mc->b[i].started = 1;
  }
  *out = mc;
  return 0;
}

void edp_multi_consumer_stop(edp_multi_consumer *mc) {
  if (!mc || mc->stopped)
    return;
  mc->stopped = 1;
  /* The pipe stays readable, so every thread's waits see it. */
  if (mc->stop_pipe[1] >= 0) {
    ssize_t w;
    do
      w = write(mc->stop_pipe[1], "x", 1);
    while (w < 0 && errno == EINTR);
  }
  for (size_t i = 0; mc->b && i < mc->n; i++)
    if (mc->b[i].started) {
      pthread_join(mc->b[i].th, NULL);
      mc->b[i].started = 0;
    }
}

void edp_multi_consumer_destroy(edp_multi_consumer **mp) {
  if (!mp || !*mp)
    return;
  edp_multi_consumer *mc = *mp;
  edp_multi_consumer_stop(mc);
  for (size_t i = 0; mc->b && i < mc->n; i++)
    free(mc->b[i].url);
  free(mc->b);
  if (mc->stop_pipe[0] >= 0)
    close(mc->stop_pipe[0]);
  if (mc->stop_pipe[1] >= 0)
    close(mc->stop_pipe[1]);
  pthread_mutex_destroy(&mc->mu);
  pthread_mutex_destroy(&mc->hmu);
  free(mc->queue);
  free(mc->client_name);
  edp_conn_group_destroy(&mc->conns);
  free(mc);
  *mp = NULL;
}

int edp_multi_consumer_error(const edp_multi_consumer *mc, size_t broker) {
  if (!mc || broker >= mc->n)
    return EDP_EINVAL;
  pthread_mutex_lock((pthread_mutex_t *)&mc->mu);
  int e = mc->b[broker].error;
  pthread_mutex_unlock((pthread_mutex_t *)&mc->mu);
  return e;
}

int edp_multi_consumer_stats_get(const edp_multi_consumer *mc, size_t broker,
                                 edp_multi_consumer_stats *out) {
  if (!mc || !out || broker >= mc->n)
    return EDP_EINVAL;
  pthread_mutex_lock((pthread_mutex_t *)&mc->mu);
  *out = mc->b[broker].st;
  pthread_mutex_unlock((pthread_mutex_t *)&mc->mu);
  return 0;
}

void edp_multi_consumer_collect(const void *consumer, edp_metrics_out *out) {
  const edp_multi_consumer *mc = consumer;
  for (size_t i = 0; i < mc->n; i++) {
    edp_multi_consumer_stats st;
    if (edp_multi_consumer_stats_get(mc, i, &st))
      continue;
    char l[600];
    broker_labels(mc->queue, i, mc->b[i].url, l, sizeof(l));
    edp_metrics_gauge(out, "edp_multi_broker_up", HELP_UP, l, st.live);
    edp_metrics_messages(out, EDP_MSGS_PROCESSED, l, st.processed);
    edp_metrics_messages(out, EDP_MSGS_FAILED, l, st.failed);
    edp_metrics_messages(out, EDP_MSGS_REDELIVERED, l, st.redelivered);
    edp_metrics_counter(out, "edp_multi_broker_downs_total", HELP_DOWNS, l,
                        st.downs);
    edp_metrics_counter(out, "edp_multi_broker_ups_total", HELP_UPS, l, st.ups);
  }
  edp_conn_group_collect(mc->conns, out);
}
