/*
 * unit_faultproxy.c - the fault proxy of tests/faultproxy.h, without a
 * broker: each test runs a small echo server thread on loopback behind a
 * proxy and checks what a client and the server really see: the bytes
 * (intact, in order), the time a round trip takes under latency, reads
 * that time out while stalled, exactly n bytes and then EOF after a cut,
 * ECONNRESET after a reset, refused connections, and the counters.
 */
#define _GNU_SOURCE /* accept4, pipe2, SOCK_CLOEXEC */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "edp.h"
#include "edp_util.h"
#include "faultproxy.h"

/* ---- an echo server on loopback, one thread, poll() ---- */

#define ECHO_MAX 16

typedef struct echo {
  int lfd, port, ctl[2]; /* ctl: 'x' stops the thread, 'w' wakes it */
  int sink;              /* count what arrives, never answer */
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* Guarded by mu. */
  int paused; /* leave the connections unread, so the proxy's writes fill */
  int accepted, ended_eof, ended_err, last_err;
  size_t received;
} echo;

static int send_all(int fd, const void *buf, size_t len) {
  const unsigned char *b = buf;
  while (len) {
    ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
    if (n < 0)
      return -1;
    b += n;
    len -= (size_t)n;
  }
  return 0;
}

static void echo_end(echo *e, int fd, int err) {
  pthread_mutex_lock(&e->mu);
  if (err) {
    e->ended_err++;
    e->last_err = err;
  } else {
    e->ended_eof++;
  }
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
  close(fd);
}

static void *echo_main(void *arg) {
  echo *e = arg;
  int fds[ECHO_MAX], n = 0;
  unsigned char buf[65536];
  for (;;) {
    pthread_mutex_lock(&e->mu);
    int paused = e->paused;
    pthread_mutex_unlock(&e->mu);
    struct pollfd pf[2 + ECHO_MAX];
    pf[0] = (struct pollfd){e->ctl[0], POLLIN, 0};
    pf[1] = (struct pollfd){n < ECHO_MAX ? e->lfd : -1, POLLIN, 0};
    for (int i = 0; i < n; i++)
      pf[2 + i] = (struct pollfd){paused ? -1 : fds[i], POLLIN, 0};
    if (poll(pf, (nfds_t)(2 + n), 1000) < 0)
      break;
    if (pf[0].revents) {
      char cmd = 0;
      if (read(e->ctl[0], &cmd, 1) == 1 && cmd == 'x')
        break;
      continue; /* 'w': a wakeup to look at paused again */
    }
    /* Backwards, so that moving the last fd into a closed slot only moves
     * one whose events were handled already. */
    for (int i = n - 1; i >= 0; i--) {
      if (!pf[2 + i].revents)
        continue;
      ssize_t r = recv(fds[i], buf, sizeof(buf), 0);
      int err = r < 0 ? errno : 0;
      if (r > 0) {
        pthread_mutex_lock(&e->mu);
        e->received += (size_t)r;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        if (e->sink || send_all(fds[i], buf, (size_t)r) == 0)
          continue;
        err = errno;
      }
      echo_end(e, fds[i], err);
      fds[i] = fds[--n];
    }
    if (pf[1].revents & POLLIN) {
      int fd = accept4(e->lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        /* A client that stops reading must not hang the server. */
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        fds[n++] = fd;
        pthread_mutex_lock(&e->mu);
        e->accepted++;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
      }
    }
  }
  for (int i = 0; i < n; i++)
    close(fds[i]);
  return NULL;
}

enum { ECHO_SINK = 1, ECHO_SMALL_RCVBUF = 2 };

static void echo_start(echo *e, int flags) {
  memset(e, 0, sizeof(*e));
  e->sink = (flags & ECHO_SINK) != 0;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&e->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&e->mu, NULL);
  ck_assert_int_eq(pipe2(e->ctl, O_CLOEXEC), 0);
  e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(e->lfd, 0);
  if (flags & ECHO_SMALL_RCVBUF) {
    /* Inherited by accepted sockets: a small window keeps the sender's
     * buffer small too, so its writes come up short. */
    int sz = 4096;
    ck_assert_int_eq(setsockopt(e->lfd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)),
                     0);
  }
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  ck_assert_int_eq(bind(e->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ck_assert_int_eq(listen(e->lfd, 16), 0);
  ck_assert_int_eq(getsockname(e->lfd, (struct sockaddr *)&sa, &len), 0);
  e->port = ntohs(sa.sin_port);
  ck_assert_int_eq(pthread_create(&e->th, NULL, echo_main, e), 0);
}

static void echo_pause(echo *e, int paused) {
  pthread_mutex_lock(&e->mu);
  e->paused = paused;
  pthread_mutex_unlock(&e->mu);
  ck_assert_int_eq(write(e->ctl[1], "w", 1), 1);
}

static void echo_stop(echo *e) {
  ck_assert_int_eq(write(e->ctl[1], "x", 1), 1);
  pthread_join(e->th, NULL);
  close(e->lfd);
  close(e->ctl[0]);
  close(e->ctl[1]);
  pthread_cond_destroy(&e->cv);
  pthread_mutex_destroy(&e->mu);
}

/* Waits until the server received at least `received` bytes in all and at
 * least `ended` connections ended. Returns 0, or -1 on timeout. */
static int echo_wait(echo *e, size_t received, int ended, int timeout_ms) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L)
    until.tv_sec++, until.tv_nsec -= 1000000000L;
  int rc = 0;
  pthread_mutex_lock(&e->mu);
  while (e->received < received || e->ended_eof + e->ended_err < ended) {
    if (pthread_cond_timedwait(&e->cv, &e->mu, &until) == ETIMEDOUT) {
      rc = -1;
      break;
    }
  }
  pthread_mutex_unlock(&e->mu);
  return rc;
}

typedef struct echo_stats {
  int accepted, ended_eof, ended_err, last_err;
  size_t received;
} echo_stats;

/* The server's counters, read under its lock. */
static echo_stats stats(echo *e) {
  pthread_mutex_lock(&e->mu);
  echo_stats st = {e->accepted, e->ended_eof, e->ended_err, e->last_err,
                   e->received};
  pthread_mutex_unlock(&e->mu);
  return st;
}

/* ---- the client side ---- */

/* Connects to 127.0.0.1:port; returns the fd, or -1 with errno. */
static int cli_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* One recv after waiting up to timeout_ms: bytes, 0 on EOF, -1 on error
 * (errno), -2 on timeout. */
static ssize_t recv_within(int fd, void *buf, size_t len, int timeout_ms) {
  struct pollfd pf = {fd, POLLIN, 0};
  int r = poll(&pf, 1, timeout_ms);
  if (r == 0)
    return -2;
  if (r < 0)
    return -1;
  return recv(fd, buf, len, MSG_DONTWAIT);
}

/* Reads up to len bytes, stopping at EOF, an error or after timeout_ms.
 * Returns the count read; *end is 0 for EOF, an errno, or -2 if the time
 * ran out (or len bytes came first: then it is -3). */
static size_t recv_until(int fd, void *buf, size_t len, int timeout_ms,
                         int *end) {
  int64_t until = edp_now_ms() + timeout_ms;
  size_t got = 0;
  *end = -3;
  while (got < len) {
    int64_t left = until - edp_now_ms();
    ssize_t r =
        recv_within(fd, (char *)buf + got, len - got, left > 0 ? (int)left : 0);
    if (r == -2) {
      *end = -2;
      break;
    }
    if (r == 0) {
      *end = 0;
      break;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR)
        continue;
      *end = errno;
      break;
    }
    got += (size_t)r;
  }
  return got;
}

/* Reads until EOF or an error, at most timeout_ms, discarding. Returns 0
 * for EOF, the errno, or -2 on timeout; *extra counts the bytes that came
 * before the end. */
static int wait_end(int fd, int timeout_ms, size_t *extra) {
  static char sink[65536];
  int end;
  *extra = 0;
  for (;;) {
    size_t n = recv_until(fd, sink, sizeof(sink), timeout_ms, &end);
    *extra += n;
    if (end != -3)
      return end;
  }
}

/* Sends msg and expects it back within timeout_ms. */
static void round_trip(int fd, const char *msg, int timeout_ms) {
  size_t len = strlen(msg);
  char back[256];
  ck_assert_uint_lt(len, sizeof(back));
  ck_assert_int_eq(send_all(fd, msg, len), 0);
  int end;
  ck_assert_uint_eq(recv_until(fd, back, len, timeout_ms, &end), len);
  ck_assert(memcmp(back, msg, len) == 0);
}

/* True for how a cut or refused connection may end on the client side:
 * EOF, or a reset if the kernel had to answer unread data with one. */
static int ended_abruptly(int end) { return end == 0 || end == ECONNRESET; }

/* Sends tx[sent..n) while reading the echo into rx[got..n), both at once
 * (the echo fills the way back while we send), within timeout_ms.
 * Returns the bytes received. */
static size_t duplex(int fd, const unsigned char *tx, unsigned char *rx,
                     size_t n, size_t sent, size_t got, int timeout_ms) {
  int64_t until = edp_now_ms() + timeout_ms;
  while (got < n) {
    int64_t left = until - edp_now_ms();
    if (left <= 0)
      break;
    struct pollfd pf = {fd, (short)(POLLIN | (sent < n ? POLLOUT : 0)), 0};
    if (poll(&pf, 1, (int)left) != 1)
      break;
    if (pf.revents & POLLOUT) {
      size_t chunk = n - sent < 65536 ? n - sent : 65536;
      ssize_t w = send(fd, tx + sent, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && errno != EAGAIN)
        break;
      if (w > 0)
        sent += (size_t)w;
    }
    if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = recv(fd, rx + got, n - got, MSG_DONTWAIT);
      if (r == 0 || (r < 0 && errno != EAGAIN))
        break;
      if (r > 0)
        got += (size_t)r;
    }
  }
  return got;
}

static uint64_t xorshift(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* ---- tests ---- */

START_TEST(pass_through_1mib) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  ck_assert_int_gt(fp_port(p), 0);
  ck_assert_int_ne(fp_port(p), e.port);

  enum { N = 1 << 20 };
  unsigned char *tx = malloc(N), *rx = malloc(N);
  ck_assert(tx && rx);
  uint64_t seed = (uint64_t)edp_now_us() | 1, s = seed;
  for (size_t i = 0; i < N; i++)
    tx[i] = (unsigned char)(xorshift(&s) >> 32);

  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  ck_assert_uint_eq(duplex(fd, tx, rx, N, 0, 0, 15000), N);
  ck_assert_msg(memcmp(tx, rx, N) == 0, "echo differs (seed %llu)",
                (unsigned long long)seed);
  ck_assert_uint_eq(fp_bytes(p, FP_C2S), N);
  ck_assert_uint_eq(fp_bytes(p, FP_S2C), N);
  ck_assert_uint_eq(fp_bytes(p, FP_BOTH), 2 * N);
  ck_assert_uint_eq(fp_connections(p), 1);
  ck_assert_uint_eq(fp_active(p), 1);
  /* Our EOF travels through the proxy; the server's close comes back. */
  ck_assert_int_eq(shutdown(fd, SHUT_WR), 0);
  size_t extra;
  ck_assert_int_eq(wait_end(fd, 5000, &extra), 0);
  ck_assert_uint_eq(extra, 0);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  ck_assert_int_eq(stats(&e).ended_eof, 1);
  close(fd);
  free(tx);
  free(rx);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(backpressure_and_partial_writes) {
  echo e;
  echo_start(&e, ECHO_SMALL_RCVBUF);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "go", 5000);

  /* With the server not reading, the proxy's writes to it come up short
   * and it must wait for POLLOUT; its queue is bounded, so the client's
   * sends block in the end. */
  echo_pause(&e, 1);
  enum { N = 24 << 20 }; /* about 3 times what the buffers take */
  unsigned char *tx = malloc(N), *rx = malloc(N);
  ck_assert(tx && rx);
  uint64_t seed = (uint64_t)edp_now_us() | 1, s = seed;
  for (size_t i = 0; i < N; i++)
    tx[i] = (unsigned char)(xorshift(&s) >> 40);
  size_t sent = 0;
  while (sent < N) {
    ssize_t w = send(fd, tx + sent, N - sent < 65536 ? N - sent : 65536,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      ck_assert_int_eq(errno, EAGAIN);
      break;
    }
    sent += (size_t)w;
  }
  ck_assert_msg(sent < N, "all %d bytes went into a path that does not drain",
                N);
  ck_assert_uint_lt(fp_bytes(p, FP_C2S), 2 + sent);

  /* The server reads again: everything arrives, intact and in order. The
   * bound is generous: under valgrind on a loaded 2-core machine (make
   * check inside make fresh-check's container) 24 MiB took over 30 s. */
  echo_pause(&e, 0);
  ck_assert_uint_eq(duplex(fd, tx, rx, N, sent, 0, 120000), N);
  ck_assert_msg(memcmp(tx, rx, N) == 0, "echo differs (seed %llu)",
                (unsigned long long)seed);
  ck_assert_uint_eq(fp_bytes(p, FP_C2S), 2 + (uint64_t)N);
  free(tx);
  free(rx);
  close(fd);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(latency_lower_bound_and_order) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "warm", 5000);

  ck_assert_int_eq(fp_latency(p, 150), 0);
  /* Delayed on the way there and on the way back. */
  int64_t t0 = edp_now_us();
  round_trip(fd, "ping", 5000);
  int64_t took_ms = (edp_now_us() - t0) / 1000;
  ck_assert_msg(took_ms >= 300, "round trip took %lld ms, want >= 300",
                (long long)took_ms);

  /* A chunk read under the delay is not overtaken by one read after the
   * delay was lifted. The read that times out also gives the proxy time to
   * take "A" in while the delay holds. */
  ck_assert_int_eq(send_all(fd, "A", 1), 0);
  char back[4];
  ck_assert_int_eq(recv_within(fd, back, sizeof(back), 50), -2);
  ck_assert_int_eq(fp_pass(p), 0);
  ck_assert_int_eq(send_all(fd, "B", 1), 0);
  int end;
  ck_assert_uint_eq(recv_until(fd, back, 2, 5000, &end), 2);
  ck_assert(memcmp(back, "AB", 2) == 0);
  close(fd);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(stall_holds_then_resumes) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "hi", 5000);

  /* A read times out while stalled; the data comes after fp_pass. */
  ck_assert_int_eq(fp_stall(p), 0);
  ck_assert_int_eq(send_all(fd, "stalled", 7), 0);
  char b[8];
  ck_assert_int_eq(recv_within(fd, b, sizeof(b), 300), -2);
  ck_assert_uint_eq(stats(&e).received, 2);
  ck_assert_uint_eq(fp_active(p), 1); /* nothing was closed */
  ck_assert_int_eq(fp_pass(p), 0);
  int end;
  ck_assert_uint_eq(recv_until(fd, b, 7, 5000, &end), 7);
  ck_assert(memcmp(b, "stalled", 7) == 0);

  /* What the proxy holds already stays there too: "held" waits out a
   * delay inside the proxy when the stall begins, and is not written when
   * the delay is over. */
  ck_assert_int_eq(fp_latency(p, 100), 0);
  ck_assert_int_eq(send_all(fd, "held", 4), 0);
  ck_assert_int_eq(recv_within(fd, b, sizeof(b), 50), -2);
  ck_assert_int_eq(fp_stall(p), 0);
  ck_assert_int_eq(recv_within(fd, b, sizeof(b), 300), -2);
  ck_assert_uint_eq(stats(&e).received, 9);
  ck_assert_int_eq(fp_pass(p), 0);
  ck_assert_uint_eq(recv_until(fd, b, 4, 5000, &end), 4);
  ck_assert(memcmp(b, "held", 4) == 0);

  /* Like a dead network: the client's sends block once the buffers on the
   * way are full. */
  ck_assert_int_eq(fp_stall(p), 0);
  enum { CAP = 64 << 20 };
  static unsigned char pat[65536];
  for (size_t i = 0; i < sizeof(pat); i++)
    pat[i] = (unsigned char)(i * 131 + 7);
  size_t filled = 0;
  int blocked = 0;
  while (filled < CAP) {
    ssize_t w = send(fd, pat, sizeof(pat), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      ck_assert_int_eq(errno, EAGAIN);
      blocked = 1;
      break;
    }
    filled += (size_t)w;
    /* Every send starts at pat[0]; a partial one ends the fill, so the
     * stream is pat repeated. */
    if ((size_t)w < sizeof(pat)) {
      blocked = 1;
      break;
    }
  }
  ck_assert_msg(blocked, "sent %zu bytes into a stalled path", filled);
  ck_assert_uint_eq(stats(&e).received, 13);

  /* Nothing of it was lost. */
  ck_assert_int_eq(fp_pass(p), 0);
  unsigned char *back = malloc(filled);
  ck_assert_ptr_nonnull(back);
  ck_assert_uint_eq(recv_until(fd, back, filled, 15000, &end), filled);
  /* One assertion, not one per byte: each Check assertion costs a write
   * to the runner. */
  size_t bad = 0;
  while (bad < filled && back[bad] == pat[bad % sizeof(pat)])
    bad++;
  ck_assert_msg(bad == filled, "byte %zu of %zu differs", bad, filled);
  ck_assert_uint_eq(fp_bytes(p, FP_C2S), 13 + filled);
  ck_assert_uint_eq(fp_bytes(p, FP_S2C), 13 + filled);
  free(back);
  close(fd);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(cut_after_client_to_server) {
  echo e;
  echo_start(&e, ECHO_SINK); /* only what arrives matters */
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  ck_assert_int_eq(fp_cut_after(p, 100, FP_C2S), 0);
  char data[1000];
  memset(data, 'x', sizeof(data));
  /* The mode holds for every new connection: each one is cut. */
  for (int round = 1; round <= 2; round++) {
    int fd = cli_connect(fp_port(p));
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(send_all(fd, data, sizeof(data)), 0);
    ck_assert_int_eq(echo_wait(&e, 0, round, 5000), 0);
    ck_assert_uint_eq(stats(&e).received, 100 * (size_t)round);
    ck_assert_int_eq(stats(&e).ended_eof, round); /* EOF, no error */
    size_t extra;
    int end = wait_end(fd, 5000, &extra);
    ck_assert_msg(ended_abruptly(end), "client end: %d", end);
    ck_assert_uint_eq(extra, 0);
    close(fd);
  }
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  ck_assert_uint_eq(fp_bytes(p, FP_C2S), 200);

  ck_assert_int_eq(fp_pass(p), 0);
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(send_all(fd, data, sizeof(data)), 0);
  close(fd);
  ck_assert_int_eq(echo_wait(&e, 1200, 3, 5000), 0);
  ck_assert_uint_eq(stats(&e).received, 1200);
  ck_assert_int_eq(stats(&e).ended_err, 0);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  ck_assert_uint_eq(fp_bytes(p, FP_C2S), 1200);
  ck_assert_uint_eq(fp_connections(p), 3);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(cut_server_to_client_counts_from_now) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  char big[201];
  memset(big, 'a', 200);
  big[200] = '\0';
  round_trip(fd, big, 5000);

  /* The budget starts at the call, not at the connection's start. */
  ck_assert_int_eq(fp_cut_after(p, 10, FP_S2C), 0);
  const char *msg = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN";
  ck_assert_int_eq(send_all(fd, msg, strlen(msg)), 0);
  char back[64];
  int end;
  size_t got = recv_until(fd, back, sizeof(back), 5000, &end);
  ck_assert_uint_eq(got, 10);
  ck_assert(memcmp(back, msg, 10) == 0);
  ck_assert_msg(ended_abruptly(end), "client end: %d", end);
  ck_assert_uint_eq(fp_bytes(p, FP_S2C), 210);
  close(fd);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);

  /* A budget of 0 cuts an idle connection at once. */
  ck_assert_int_eq(fp_pass(p), 0);
  fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "idle", 5000);
  ck_assert_int_eq(fp_cut_after(p, 0, FP_BOTH), 0);
  size_t extra;
  end = wait_end(fd, 5000, &extra);
  ck_assert_msg(ended_abruptly(end), "client end: %d", end);
  ck_assert_uint_eq(extra, 0);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  close(fd);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(reset_sends_rst) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "x", 5000);

  ck_assert_int_eq(fp_reset(p), 0);
  ck_assert_uint_eq(fp_active(p), 0); /* done when fp_reset returns */
  char b;
  ssize_t r = recv_within(fd, &b, 1, 5000);
  int err = errno;
  ck_assert_int_eq(r, -1);
  ck_assert_int_eq(err, ECONNRESET);
  /* Both sides: the server saw the reset too. */
  ck_assert_int_eq(echo_wait(&e, 0, 1, 5000), 0);
  ck_assert_int_eq(stats(&e).ended_err, 1);
  ck_assert_int_eq(stats(&e).last_err, ECONNRESET);
  close(fd);

  /* A reset is an action, not a mode: the next connection works. */
  fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "again", 5000);
  ck_assert_uint_eq(fp_connections(p), 2);
  ck_assert_uint_eq(fp_active(p), 1);

  /* A reset by a peer reaches the other peer as a reset, not as EOF. */
  struct linger lg = {1, 0};
  ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
  close(fd);
  ck_assert_int_eq(echo_wait(&e, 0, 2, 5000), 0);
  ck_assert_int_eq(stats(&e).ended_err, 2);
  ck_assert_int_eq(stats(&e).last_err, ECONNRESET);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(refuse_and_dead_target) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  ck_assert_int_eq(fp_refuse(p, 1), 0);
  int fd = cli_connect(fp_port(p));
  if (fd < 0) {
    ck_assert_msg(errno == ECONNREFUSED || errno == ECONNRESET, "connect: %s",
                  strerror(errno));
  } else {
    size_t extra;
    int end = wait_end(fd, 5000, &extra);
    ck_assert_msg(ended_abruptly(end), "client end: %d", end);
    ck_assert_uint_eq(extra, 0);
    close(fd);
  }
  ck_assert_int_eq(fp_wait_connections(p, 1, 5000), 0);
  ck_assert_uint_eq(fp_active(p), 0);
  ck_assert_int_eq(stats(&e).accepted, 0); /* nothing reached it */

  ck_assert_int_eq(fp_refuse(p, 0), 0);
  fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "open again", 5000);
  ck_assert_int_eq(stats(&e).accepted, 1);
  ck_assert_uint_eq(fp_connections(p), 2);
  ck_assert_uint_eq(fp_active(p), 1);
  close(fd);
  fp_stop(&p);
  echo_stop(&e);

  /* A target that refuses: the proxy resets the client, as a down broker
   * refuses it. A port we bound and closed without listening is free. */
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  ck_assert_int_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ck_assert_int_eq(getsockname(s, (struct sockaddr *)&sa, &len), 0);
  ck_assert_int_eq(fp_start("127.0.0.1", ntohs(sa.sin_port), &p), 0);
  close(s);
  fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  size_t extra;
  int end = wait_end(fd, 5000, &extra);
  ck_assert_msg(ended_abruptly(end), "client end: %d", end);
  ck_assert_int_eq(fp_wait_connections(p, 1, 5000), 0);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  close(fd);
  fp_stop(&p);
}
END_TEST

START_TEST(counters_and_waits) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("localhost", e.port, &p), 0); /* resolved */
  static const size_t sizes[3] = {10, 200, 3000};
  int fds[3];
  char *buf = malloc(3001);
  ck_assert_ptr_nonnull(buf);
  for (int i = 0; i < 3; i++) {
    fds[i] = cli_connect(fp_port(p));
    ck_assert_int_ge(fds[i], 0);
    memset(buf, 'a' + i, sizes[i]);
    buf[sizes[i]] = '\0';
    ck_assert_int_eq(send_all(fds[i], buf, sizes[i]), 0);
  }
  for (int i = 0; i < 3; i++) {
    int end;
    ck_assert_uint_eq(recv_until(fds[i], buf, sizes[i], 5000, &end), sizes[i]);
    ck_assert_int_eq(buf[0], 'a' + i);
    ck_assert_int_eq(buf[sizes[i] - 1], 'a' + i);
  }
  free(buf);
  ck_assert_int_eq(fp_wait_connections(p, 3, 5000), 0);
  int64_t t0 = edp_now_us();
  ck_assert_int_eq(fp_wait_connections(p, 4, 100), -1);
  ck_assert_int_ge((edp_now_us() - t0) / 1000, 100);
  ck_assert_uint_eq(fp_connections(p), 3);
  ck_assert_uint_eq(fp_active(p), 3);
  ck_assert_uint_eq(fp_bytes(p, FP_C2S), 3210);
  ck_assert_uint_eq(fp_bytes(p, FP_S2C), 3210);
  ck_assert_uint_eq(fp_bytes(p, FP_BOTH), 6420);
  close(fds[0]);
  ck_assert_int_eq(fp_wait_active(p, 2, 5000), 0);
  close(fds[1]);
  close(fds[2]);
  ck_assert_int_eq(fp_wait_active(p, 0, 5000), 0);
  ck_assert_int_eq(echo_wait(&e, 3210, 3, 5000), 0);
  ck_assert_int_eq(stats(&e).ended_eof, 3);
  ck_assert_uint_eq(fp_connections(p), 3);
  fp_stop(&p);
  echo_stop(&e);
}
END_TEST

START_TEST(url_rewrite) {
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start("127.0.0.1", 5672, &p), 0);
  char want[256], out[256];
  int port = fp_port(p);

  ck_assert_int_eq(
      fp_url(p, "amqp://guest:guest@127.0.0.1:5672/", out, sizeof(out)), 0);
  snprintf(want, sizeof(want), "amqp://guest:guest@127.0.0.1:%d/", port);
  ck_assert_str_eq(out, want);

  /* Credentials (an encoded '@' too), vhost and query are kept. */
  ck_assert_int_eq(fp_url(p,
                          "amqp://bob:p%40ss@broker.example:5673/prod"
                          "?heartbeat=5&connection_timeout=2000",
                          out, sizeof(out)),
                   0);
  snprintf(want, sizeof(want),
           "amqp://bob:p%%40ss@127.0.0.1:%d/prod"
           "?heartbeat=5&connection_timeout=2000",
           port);
  ck_assert_str_eq(out, want);
  edp_url u;
  ck_assert_int_eq(edp_url_parse(out, &u, NULL, 0), 0);
  ck_assert_int_eq(u.port, port);
  ck_assert_str_eq(u.host, "127.0.0.1");
  ck_assert_str_eq(u.pass, "p@ss");
  ck_assert_str_eq(u.vhost, "prod");
  ck_assert_int_eq(u.heartbeat_s, 5);

  /* No credentials, port or path; an IPv6 host; an encoded vhost. */
  ck_assert_int_eq(fp_url(p, "amqp://localhost", out, sizeof(out)), 0);
  snprintf(want, sizeof(want), "amqp://127.0.0.1:%d", port);
  ck_assert_str_eq(out, want);
  ck_assert_int_eq(fp_url(p, "amqp://u@[::1]:5672/%2f", out, sizeof(out)), 0);
  snprintf(want, sizeof(want), "amqp://u@127.0.0.1:%d/%%2f", port);
  ck_assert_str_eq(out, want);

  /* TLS: the proxy relays the bytes; the scheme and the CA stay. */
  ck_assert_int_eq(
      fp_url(p, "amqps://u:p@localhost:5671/?cacertfile=/c.pem", out,
             sizeof(out)),
      0);
  snprintf(want, sizeof(want), "amqps://u:p@127.0.0.1:%d/?cacertfile=/c.pem",
           port);
  ck_assert_str_eq(out, want);

  ck_assert_int_eq(fp_url(p, "http://h:1/", out, sizeof(out)), -1);
  ck_assert_int_eq(fp_url(p, "amqp://h:1/", out, 10), -1);
  ck_assert_str_eq(out, "");
  ck_assert_int_eq(fp_url(NULL, "amqp://h/", out, sizeof(out)), -1);
  fp_stop(&p);
}
END_TEST

START_TEST(stop_and_bad_arguments) {
  echo e;
  echo_start(&e, 0);
  fp_proxy *p = NULL;
  ck_assert_int_eq(fp_start(NULL, 5672, &p), -1);
  ck_assert_ptr_null(p);
  ck_assert_int_eq(fp_start("127.0.0.1", 0, &p), -1);
  ck_assert_int_eq(fp_start("127.0.0.1", 70000, &p), -1);
  ck_assert_ptr_null(p);
  ck_assert_int_eq(fp_start("127.0.0.1", e.port, NULL), -1);

  ck_assert_int_eq(fp_start("127.0.0.1", e.port, &p), 0);
  ck_assert_int_eq(fp_latency(p, -1), -1);
  ck_assert_int_eq(fp_cut_after(p, 1, (fp_dir)0), -1);
  ck_assert_int_eq(fp_pass(NULL), -1);
  ck_assert_int_eq(fp_reset(NULL), -1);
  ck_assert_int_eq(fp_wait_connections(NULL, 1, 10), -1);
  ck_assert_uint_eq(fp_bytes(NULL, FP_BOTH), 0);

  /* Stopping closes live connections: the client sees them end. */
  int fd = cli_connect(fp_port(p));
  ck_assert_int_ge(fd, 0);
  round_trip(fd, "bye", 5000);
  fp_stop(&p);
  ck_assert_ptr_null(p);
  size_t extra;
  int end = wait_end(fd, 5000, &extra);
  ck_assert_msg(ended_abruptly(end), "client end: %d", end);
  close(fd);
  fp_stop(&p);
  fp_stop(NULL);
  echo_stop(&e);
}
END_TEST

int main(void) {
  Suite *s = suite_create("faultproxy");
  TCase *tc = tcase_create("faultproxy");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, pass_through_1mib);
  tcase_add_test(tc, backpressure_and_partial_writes);
  tcase_add_test(tc, latency_lower_bound_and_order);
  tcase_add_test(tc, stall_holds_then_resumes);
  tcase_add_test(tc, cut_after_client_to_server);
  tcase_add_test(tc, cut_server_to_client_counts_from_now);
  tcase_add_test(tc, reset_sends_rst);
  tcase_add_test(tc, refuse_and_dead_target);
  tcase_add_test(tc, counters_and_waits);
  tcase_add_test(tc, url_rewrite);
  tcase_add_test(tc, stop_and_bad_arguments);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
