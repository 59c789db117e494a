/*
 * faultproxy.c - see faultproxy.h. The rules promise that a lost broker, a
 * half-open connection or a stream cut mid-frame ends in a bounded error,
 * never in a hang. Stopping the broker shows only one of these, slowly,
 * and the others need root (iptables, tc). This proxy sits between a
 * client and the broker inside the test process and produces each fault
 * on demand, on exactly the connections of that test.
 *
 * One thread owns every socket: the listening one and two per connection
 * (client side, server side). It waits in poll() on them and on a wake
 * pipe. The settings live under a mutex with a generation number: a
 * setter changes them, bumps the generation, writes a byte to the pipe and
 * waits (bounded) until the thread has copied them, so that the new mode
 * is in force when the setter returns. Each direction of a connection
 * keeps a FIFO of chunks as they were read, each with the time it is due
 * (the read time plus the latency then in force); only the head chunk is
 * written, so latency never reorders bytes. Reading stops while a
 * direction holds FP_QUEUE_MAX bytes, so a slow reader pushes back on the
 * writer as a TCP path would, and a stall simply stops reading and writing
 * altogether.
 */
/* accept4 and SOCK_CLOEXEC: programs that tests spawn must not inherit
 * proxy sockets and keep connections open behind the proxy's back. */
#define _GNU_SOURCE
#include "faultproxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FP_CHUNK 65536             /* bytes per read */
#define FP_QUEUE_MAX (1024 * 1024) /* per direction, before reading stops */
#define FP_ANSWER_MS 5000          /* how long a setter waits for the thread */
#define FP_DRAIN_READS 64          /* bound on discarding input before a cut */

enum { MODE_PASS, MODE_LATENCY, MODE_STALL, MODE_CUT };

typedef struct chunk {
  struct chunk *next;
  int64_t due_us; /* not written before this time (latency) */
  size_t len, off;
  unsigned char data[];
} chunk;

/* One direction of a connection: flow 0 reads the client socket and writes
 * the server socket, flow 1 the other way round. */
typedef struct flow {
  chunk *head, *tail;
  size_t queued; /* bytes read but not yet written */
  int eof;       /* the source returned EOF */
  int shut;      /* the EOF was passed on with shutdown(SHUT_WR) */
} flow;

typedef struct conn {
  struct conn *next;
  int fd[2];       /* [0] client side, [1] server side */
  int connecting;  /* the non-blocking connect to the target is under way */
  flow fl[2];      /* [0] client -> server, [1] server -> client */
  size_t cut_left; /* bytes still forwarded in MODE_CUT */
  int done;        /* closed this round; freed at the end of the round */
  short ev[2];     /* poll events wanted this round, per side */
  int slot[2];     /* index in the pollfd array, -1 if not polled */
} conn;

typedef struct settings {
  int mode;
  int latency_ms;
  size_t cut_bytes;
  int cut_dir;        /* FP_C2S, FP_S2C or FP_BOTH */
  uint64_t cut_gen;   /* bumped by fp_cut_after: re-arms current conns */
  int cut_once;       /* fp_cut_once: later connections are not cut */
  uint64_t reset_gen; /* bumped by fp_reset */
  int refuse;
  int stop;
} settings;

struct fp_proxy {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* a setting was taken, or a counter changed */
  /* Guarded by mu. */
  settings set;
  uint64_t gen, applied; /* setting generations requested and taken */
  uint64_t connections, active, bytes[2];
  /* Fixed after fp_start. */
  int listen_fd, wake[2], port;
  struct sockaddr_storage target;
  socklen_t target_len;
  pthread_t thread;
  /* Owned by the proxy thread. */
  settings cur;
  conn *conns;
  struct pollfd *pfd;
  size_t pfd_cap;
  unsigned char buf[FP_CHUNK];
};

/* Microseconds: with whole milliseconds a chunk could leave up to 1 ms
 * before its delay is over. */
static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct timespec deadline_in(int timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  if (timeout_ms < 0)
    timeout_ms = 0;
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

static void set_nodelay(int fd) {
  /* Small AMQP frames should not wait for Nagle: the proxy must add no
   * delay of its own beyond the configured latency. */
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Closes fd so that the peer gets a RST instead of a FIN. */
static void close_rst(int fd) {
  if (fd < 0)
    return;
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(fd);
}

/* Closes fd with a FIN. Unread input would make the kernel send a RST
 * instead (and some stacks drop what they have not handed to the peer
 * yet on a RST), so it is discarded first, within a bound. */
static void close_fin(fp_proxy *p, int fd) {
  if (fd < 0)
    return;
  for (int i = 0; i < FP_DRAIN_READS; i++) {
    if (recv(fd, p->buf, sizeof(p->buf), MSG_DONTWAIT) <= 0)
      break;
  }
  close(fd);
}

static void flow_clear(flow *f) {
  while (f->head) {
    chunk *c = f->head;
    f->head = c->next;
    free(c);
  }
  f->tail = NULL;
  f->queued = 0;
}

enum { END_FIN, END_RST };

/* Ends a connection (both sides) this round; conn_sweep frees it. */
static void conn_end(fp_proxy *p, conn *c, int how) {
  if (c->done)
    return;
  for (int s = 0; s < 2; s++) {
    if (how == END_RST)
      close_rst(c->fd[s]);
    else
      close_fin(p, c->fd[s]);
    c->fd[s] = -1;
    flow_clear(&c->fl[s]);
  }
  c->done = 1;
}

/* Frees the connections ended this round and publishes the active count.
 * Called with mu held. */
static void conn_sweep_locked(fp_proxy *p) {
  uint64_t n = 0;
  for (conn **pc = &p->conns; *pc;) {
    conn *c = *pc;
    if (c->done) {
      *pc = c->next;
      free(c);
    } else {
      n++;
      pc = &c->next;
    }
  }
  if (n != p->active) {
    p->active = n;
    pthread_cond_broadcast(&p->cv);
  }
}

static int cut_counts(const fp_proxy *p, int f) {
  return p->cur.mode == MODE_CUT &&
         (p->cur.cut_dir & (f == 0 ? FP_C2S : FP_S2C));
}

/* Reads one chunk from the source of flow f. Returns 0, or -1 if the
 * connection failed (reset, or no memory for the chunk). */
static int flow_read(fp_proxy *p, conn *c, int f) {
  flow *fl = &c->fl[f];
  ssize_t n = recv(c->fd[f], p->buf, sizeof(p->buf), 0);
  if (n == 0) {
    fl->eof = 1;
    return 0;
  }
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  chunk *ch = malloc(sizeof(*ch) + (size_t)n);
  if (!ch)
    return -1;
  memcpy(ch->data, p->buf, (size_t)n);
  ch->len = (size_t)n;
  ch->off = 0;
  ch->next = NULL;
  ch->due_us =
      now_us() + (p->cur.mode == MODE_LATENCY ? p->cur.latency_ms * 1000LL : 0);
  if (fl->tail)
    fl->tail->next = ch;
  else
    fl->head = ch;
  fl->tail = ch;
  fl->queued += (size_t)n;
  return 0;
}

/* Writes the due chunks of flow f to its destination, as far as the
 * socket takes them and, in MODE_CUT, the budget allows. Returns 0, or -1
 * if the destination failed. */
static int flow_write(fp_proxy *p, conn *c, int f, int64_t now) {
  flow *fl = &c->fl[f];
  int to = c->fd[1 - f];
  int counted = cut_counts(p, f);
  while (fl->head && fl->head->due_us <= now) {
    chunk *ch = fl->head;
    size_t len = ch->len - ch->off;
    if (counted) {
      if (c->cut_left == 0)
        return 0;
      if (len > c->cut_left)
        len = c->cut_left;
    }
    /* The counter is updated under the same lock as the send, so a test
     * that has received the bytes reads a counter that includes them. */
    pthread_mutex_lock(&p->mu);
    ssize_t n = send(to, ch->data + ch->off, len, MSG_NOSIGNAL);
    if (n > 0)
      p->bytes[f] += (uint64_t)n;
    pthread_mutex_unlock(&p->mu);
    if (n < 0)
      return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    ch->off += (size_t)n;
    fl->queued -= (size_t)n;
    if (counted)
      c->cut_left -= (size_t)n;
    if (ch->off == ch->len) {
      fl->head = ch->next;
      if (!fl->head)
        fl->tail = NULL;
      free(ch);
    }
    if ((size_t)n < len)
      return 0; /* the socket is full: wait for POLLOUT */
  }
  return 0;
}

/* Passes a source's EOF on once everything before it was written, and
 * ends the connection when both directions are finished. */
static void conn_finish(fp_proxy *p, conn *c) {
  for (int f = 0; f < 2; f++) {
    flow *fl = &c->fl[f];
    if (fl->eof && !fl->head && !fl->shut) {
      shutdown(c->fd[1 - f], SHUT_WR);
      fl->shut = 1;
    }
  }
  if (c->fl[0].shut && c->fl[1].shut)
    conn_end(p, c, END_FIN);
}

/* Accepts every pending connection; refused ones are reset at once. */
static void accept_all(fp_proxy *p) {
  for (;;) {
    int cfd = accept4(p->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
      return; /* EAGAIN, or an aborted handshake: nothing to do */
    pthread_mutex_lock(&p->mu);
    p->connections++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->cur.refuse) {
      close_rst(cfd);
      continue;
    }
    conn *c = calloc(1, sizeof(*c));
    int sfd = c ? socket(p->target.ss_family,
                         SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
                : -1;
    if (sfd < 0) {
      free(c);
      close_rst(cfd);
      continue;
    }
    set_nodelay(cfd);
    set_nodelay(sfd);
    c->fd[0] = cfd;
    c->fd[1] = sfd;
    c->cut_left = p->cur.cut_once ? SIZE_MAX : p->cur.cut_bytes;
    c->next = p->conns;
    p->conns = c;
    if (connect(sfd, (struct sockaddr *)&p->target, p->target_len) == 0)
      c->connecting = 0;
    else if (errno == EINPROGRESS)
      c->connecting = 1;
    else
      conn_end(p, c, END_RST); /* the target refused: so do we */
  }
}

static int reading(const conn *c, int f) {
  return !c->fl[f].eof && c->fl[f].queued < FP_QUEUE_MAX;
}

/* Fills c->ev with the events wanted this round and lowers *deadline to
 * the time the next delayed chunk is due. */
static void conn_want(const fp_proxy *p, conn *c, int64_t now,
                      int64_t *deadline) {
  c->ev[0] = c->ev[1] = 0;
  if (c->connecting) {
    c->ev[1] = POLLOUT; /* completion of the connect, even when stalled */
    return;
  }
  if (p->cur.mode == MODE_STALL)
    return;
  for (int f = 0; f < 2; f++) {
    if (reading(c, f))
      c->ev[f] |= POLLIN;
    const chunk *h = c->fl[f].head;
    if (!h)
      continue;
    if (h->due_us <= now)
      c->ev[1 - f] |= POLLOUT;
    else if (*deadline < 0 || h->due_us < *deadline)
      *deadline = h->due_us;
  }
}

/* Handles one connection's poll results. */
static void conn_io(fp_proxy *p, conn *c, int64_t now) {
  short rev[2];
  for (int s = 0; s < 2; s++)
    rev[s] = c->slot[s] >= 0 ? p->pfd[c->slot[s]].revents : 0;
  if (c->connecting) {
    if (!rev[1])
      return;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err)
      conn_end(p, c, END_RST); /* the target refused: so do we */
    else
      c->connecting = 0;
    return;
  }
  const short in = POLLIN | POLLHUP | POLLERR,
              out = POLLOUT | POLLHUP | POLLERR;
  for (int f = 0; f < 2; f++) {
    /* A failed read or write is passed on as a reset of both sides, as a
     * broken path would look to either peer. */
    if ((c->ev[f] & POLLIN) && (rev[f] & in) && flow_read(p, c, f) < 0) {
      conn_end(p, c, END_RST);
      return;
    }
    if ((c->ev[1 - f] & POLLOUT) && (rev[1 - f] & out) &&
        flow_write(p, c, f, now) < 0) {
      conn_end(p, c, END_RST);
      return;
    }
  }
}

/* Grows the pollfd array to hold n entries. Returns 0 or -1. */
static int pfd_reserve(fp_proxy *p, size_t n) {
  if (n <= p->pfd_cap)
    return 0;
  size_t cap = p->pfd_cap ? p->pfd_cap * 2 : 64;
  while (cap < n)
    cap *= 2;
  struct pollfd *np = realloc(p->pfd, cap * sizeof(*np));
  if (!np)
    return -1;
  p->pfd = np;
  p->pfd_cap = cap;
  return 0;
}

/* Takes the settings the setters left (with mu held): applies a reset or
 * a new cut budget to the current connections, then acknowledges. */
static void take_settings_locked(fp_proxy *p) {
  settings old = p->cur;
  p->cur = p->set;
  if (p->cur.reset_gen != old.reset_gen) {
    for (conn *c = p->conns; c; c = c->next)
      conn_end(p, c, END_RST);
  }
  if (p->cur.cut_gen != old.cut_gen) {
    for (conn *c = p->conns; c; c = c->next)
      c->cut_left = p->cur.cut_bytes;
  }
  conn_sweep_locked(p);
  p->applied = p->gen;
  pthread_cond_broadcast(&p->cv);
}

static void *proxy_main(void *arg) {
  fp_proxy *p = arg;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    take_settings_locked(p);
    pthread_mutex_unlock(&p->mu);
    if (p->cur.stop)
      break;

    int64_t now = now_us();
    /* A cut whose budget is spent ends the connection before anything
     * else happens to it (n_bytes 0 cuts at once). */
    if (p->cur.mode == MODE_CUT) {
      for (conn *c = p->conns; c; c = c->next)
        if (!c->connecting && c->cut_left == 0)
          conn_end(p, c, END_FIN);
    }
    for (conn *c = p->conns; c; c = c->next)
      if (!c->done && !c->connecting && p->cur.mode != MODE_STALL)
        conn_finish(p, c);
    pthread_mutex_lock(&p->mu);
    conn_sweep_locked(p);
    pthread_mutex_unlock(&p->mu);

    size_t n = 2;
    for (conn *c = p->conns; c; c = c->next)
      n += 2;
    if (pfd_reserve(p, n) < 0) {
      /* Out of memory for the poll set: drop the connections; the proxy
       * itself keeps running (fp_start reserved room for itself). */
      for (conn *c = p->conns; c; c = c->next)
        conn_end(p, c, END_RST);
      pthread_mutex_lock(&p->mu);
      conn_sweep_locked(p);
      pthread_mutex_unlock(&p->mu);
      continue;
    }
    size_t k = 0;
    p->pfd[k++] = (struct pollfd){p->wake[0], POLLIN, 0};
    p->pfd[k++] = (struct pollfd){p->listen_fd, POLLIN, 0};
    int64_t deadline = -1;
    for (conn *c = p->conns; c; c = c->next) {
      conn_want(p, c, now, &deadline);
      for (int s = 0; s < 2; s++) {
        /* An fd with no wanted events stays out of the set: poll would
         * still report POLLHUP on it, and the loop would spin. */
        c->slot[s] = c->ev[s] ? (int)k : -1;
        if (c->ev[s])
          p->pfd[k++] = (struct pollfd){c->fd[s], c->ev[s], 0};
      }
    }
    /* The wake pipe ends the wait for any setting or stop; the 1 s bound
     * only keeps the rule that every wait has one. */
    int timeout = 1000;
    if (deadline >= 0 && (deadline - now + 999) / 1000 < timeout)
      timeout = (int)((deadline - now + 999) / 1000);
    if (poll(p->pfd, k, timeout) < 0) {
      if (errno == EINTR)
        continue;
      break; /* EFAULT/EINVAL cannot happen with our own array */
    }
    if (p->pfd[0].revents) {
      char junk[64];
      while (read(p->wake[0], junk, sizeof(junk)) > 0)
        ;
    }
    now = now_us();
    for (conn *c = p->conns; c; c = c->next)
      conn_io(p, c, now);
    if (p->pfd[1].revents & POLLIN)
      accept_all(p);
    pthread_mutex_lock(&p->mu);
    conn_sweep_locked(p);
    pthread_mutex_unlock(&p->mu);
  }
  return NULL;
}

/* Bumps the setting generation, wakes the thread and waits until it has
 * taken the settings. Called with mu held; returns 0 or -1 on timeout. */
static int commit_locked(fp_proxy *p) {
  uint64_t want = ++p->gen;
  ssize_t w = write(p->wake[1], "x", 1);
  (void)w; /* a full pipe already holds a wakeup */
  struct timespec until = deadline_in(FP_ANSWER_MS);
  while (p->applied < want) {
    if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT)
      return p->applied >= want ? 0 : -1;
  }
  return 0;
}

static int set_mode(fp_proxy *p, int mode, int latency_ms, size_t cut_bytes,
                    int cut_dir, int cut_once) {
  if (!p)
    return -1;
  pthread_mutex_lock(&p->mu);
  p->set.mode = mode;
  p->set.latency_ms = latency_ms;
  if (mode == MODE_CUT) {
    p->set.cut_bytes = cut_bytes;
    p->set.cut_dir = cut_dir;
    p->set.cut_once = cut_once;
    p->set.cut_gen++;
  }
  int rc = commit_locked(p);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

int fp_pass(fp_proxy *p) { return set_mode(p, MODE_PASS, 0, 0, 0, 0); }

int fp_latency(fp_proxy *p, int ms) {
  if (ms < 0)
    return -1;
  return set_mode(p, MODE_LATENCY, ms, 0, 0, 0);
}

int fp_stall(fp_proxy *p) { return set_mode(p, MODE_STALL, 0, 0, 0, 0); }

int fp_cut_after(fp_proxy *p, size_t n_bytes, fp_dir dir) {
  if (dir != FP_C2S && dir != FP_S2C && dir != FP_BOTH)
    return -1;
  return set_mode(p, MODE_CUT, 0, n_bytes, (int)dir, 0);
}

int fp_cut_once(fp_proxy *p, size_t n_bytes, fp_dir dir) {
  if (dir != FP_C2S && dir != FP_S2C && dir != FP_BOTH)
    return -1;
  return set_mode(p, MODE_CUT, 0, n_bytes, (int)dir, 1);
}

int fp_reset(fp_proxy *p) {
  if (!p)
    return -1;
  pthread_mutex_lock(&p->mu);
  p->set.reset_gen++;
  int rc = commit_locked(p);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

int fp_refuse(fp_proxy *p, int on) {
  if (!p)
    return -1;
  pthread_mutex_lock(&p->mu);
  p->set.refuse = on != 0;
  int rc = commit_locked(p);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

static uint64_t read_counter(fp_proxy *p, const uint64_t *v) {
  pthread_mutex_lock(&p->mu);
  uint64_t r = *v;
  pthread_mutex_unlock(&p->mu);
  return r;
}

uint64_t fp_connections(fp_proxy *p) {
  return p ? read_counter(p, &p->connections) : 0;
}

uint64_t fp_active(fp_proxy *p) { return p ? read_counter(p, &p->active) : 0; }

uint64_t fp_bytes(fp_proxy *p, fp_dir dir) {
  if (!p)
    return 0;
  pthread_mutex_lock(&p->mu);
  uint64_t r =
      ((dir & FP_C2S) ? p->bytes[0] : 0) + ((dir & FP_S2C) ? p->bytes[1] : 0);
  pthread_mutex_unlock(&p->mu);
  return r;
}

/* Waits until *v compares to n as asked (at_least, else equal). */
static int wait_counter(fp_proxy *p, const uint64_t *v, uint64_t n,
                        int at_least, int timeout_ms) {
  if (!p)
    return -1;
  struct timespec until = deadline_in(timeout_ms);
  pthread_mutex_lock(&p->mu);
  int rc = 0;
  while (at_least ? *v < n : *v != n) {
    if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT) {
      rc = (at_least ? *v >= n : *v == n) ? 0 : -1;
      break;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return rc;
}

int fp_wait_connections(fp_proxy *p, uint64_t n, int timeout_ms) {
  return p ? wait_counter(p, &p->connections, n, 1, timeout_ms) : -1;
}

int fp_wait_active(fp_proxy *p, uint64_t n, int timeout_ms) {
  return p ? wait_counter(p, &p->active, n, 0, timeout_ms) : -1;
}

int fp_port(const fp_proxy *p) { return p ? p->port : -1; }

int fp_url(const fp_proxy *p, const char *broker_url, char *out, size_t len) {
  if (!p || !broker_url || !out || !len)
    return -1;
  /* amqps:// too: the proxy relays TLS bytes it cannot read, and the test
   * certificates name 127.0.0.1. */
  const char *auth = !strncmp(broker_url, "amqp://", 7)    ? broker_url + 7
                     : !strncmp(broker_url, "amqps://", 8) ? broker_url + 8
                                                           : NULL;
  if (!auth)
    return -1;
  /* The authority runs to the first '/', '?' or '#'; the credentials end
   * at its last '@' (a literal '@' in a password is percent-encoded). */
  size_t auth_len = strcspn(auth, "/?#");
  const char *host = auth;
  for (size_t i = 0; i < auth_len; i++)
    if (auth[i] == '@')
      host = auth + i + 1;
  int n = snprintf(out, len, "%.*s127.0.0.1:%d%s", (int)(host - broker_url),
                   broker_url, p->port, auth + auth_len);
  if (n < 0 || (size_t)n >= len) {
    out[0] = '\0';
    return -1;
  }
  return 0;
}

/* Resolves the target once; IPv4 first, because a test broker listens on
 * 127.0.0.1 and "localhost" may resolve to ::1 before it. */
static int resolve(fp_proxy *p, const char *host, int port) {
  char service[16];
  snprintf(service, sizeof(service), "%d", port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, service, &hints, &res) != 0 || !res) {
    errno = EHOSTUNREACH;
    return -1;
  }
  const struct addrinfo *pick = res;
  for (const struct addrinfo *a = res; a; a = a->ai_next)
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  memcpy(&p->target, pick->ai_addr, pick->ai_addrlen);
  p->target_len = pick->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

static int listen_loopback(fp_proxy *p) {
  p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p->listen_fd < 0)
    return -1;
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0; /* ephemeral: tests run side by side */
  socklen_t len = sizeof(sa);
  if (bind(p->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
      listen(p->listen_fd, 128) < 0 ||
      getsockname(p->listen_fd, (struct sockaddr *)&sa, &len) < 0)
    return -1;
  p->port = ntohs(sa.sin_port);
  return 0;
}

static void proxy_free(fp_proxy *p) {
  for (conn *c = p->conns; c; c = c->next)
    conn_end(p, c, END_FIN);
  pthread_mutex_lock(&p->mu);
  conn_sweep_locked(p);
  pthread_mutex_unlock(&p->mu);
  if (p->listen_fd >= 0)
    close(p->listen_fd);
  for (int i = 0; i < 2; i++)
    if (p->wake[i] >= 0)
      close(p->wake[i]);
  free(p->pfd);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

int fp_start(const char *target_host, int target_port, fp_proxy **out) {
  if (!out)
    return -1;
  *out = NULL;
  if (!target_host || target_port <= 0 || target_port > 65535) {
    errno = EINVAL;
    return -1;
  }
  fp_proxy *p = calloc(1, sizeof(*p));
  if (!p)
    return -1;
  p->listen_fd = p->wake[0] = p->wake[1] = -1;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  /* Waits are measured on the monotonic clock, immune to clock steps. */
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&p->mu, NULL);
  if (resolve(p, target_host, target_port) < 0 || listen_loopback(p) < 0 ||
      pipe2(p->wake, O_NONBLOCK | O_CLOEXEC) < 0 || pfd_reserve(p, 64) < 0) {
    int e = errno;
    proxy_free(p);
    errno = e;
    return -1;
  }
  int e = pthread_create(&p->thread, NULL, proxy_main, p);
  if (e) {
    proxy_free(p);
    errno = e;
    return -1;
  }
  *out = p;
  return 0;
}

void fp_stop(fp_proxy **pp) {
  if (!pp || !*pp)
    return;
  fp_proxy *p = *pp;
  pthread_mutex_lock(&p->mu);
  p->set.stop = 1;
  p->gen++;
  ssize_t w = write(p->wake[1], "x", 1);
  (void)w;
  pthread_mutex_unlock(&p->mu);
  /* The thread only ever blocks in poll(), which the pipe ends. */
  pthread_join(p->thread, NULL);
  proxy_free(p);
  *pp = NULL;
}
