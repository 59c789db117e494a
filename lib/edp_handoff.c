/*
 * edp_handoff.c - a mutex-protected ring of pointers with a condition
 * variable for threads that block and an eventfd for a thread that polls
 * (see edp_handoff.h).
 *
 * The eventfd is written when the ring goes from empty to non-empty and
 * read when it becomes empty again, both under the mutex, so its
 * readability always matches "items queued" and costs two system calls
 * per burst rather than per item.
 */
#define _GNU_SOURCE
#include "edp_handoff.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct edp_handoff {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  void **ring;
  size_t cap, head, len;
  int closed;
  int efd;
};

int edp_handoff_new(edp_handoff **out) {
  if (!out)
    return EDP_EINVAL;
  *out = NULL;
  edp_handoff *h = calloc(1, sizeof(*h));
  if (!h)
    return EDP_ENOMEM;
  h->cap = 64;
  h->ring = malloc(h->cap * sizeof(*h->ring));
  if (!h->ring) {
    free(h);
    return EDP_ENOMEM;
  }
  h->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (h->efd < 0) {
    free(h->ring);
    free(h);
    return EDP_EIO;
  }
  /* Waits use CLOCK_MONOTONIC so a wall clock jump cannot stretch them. */
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&h->mu, NULL);
  *out = h;
  return 0;
}

void edp_handoff_destroy(edp_handoff **hp) {
  if (!hp || !*hp)
    return;
  edp_handoff *h = *hp;
  close(h->efd);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->mu);
  free(h->ring);
  free(h);
  *hp = NULL;
}

/* Doubles the ring, unrolling it so head becomes 0. */
static int grow(edp_handoff *h) {
  size_t cap = h->cap * 2;
  void **r = malloc(cap * sizeof(*r));
  if (!r)
    return EDP_ENOMEM;
  for (size_t i = 0; i < h->len; i++)
    r[i] = h->ring[(h->head + i) % h->cap];
  free(h->ring);
  h->ring = r;
  h->cap = cap;
  h->head = 0;
  return 0;
}

int edp_handoff_push(edp_handoff *h, void *item) {
  if (!h)
    return EDP_EINVAL;
  pthread_mutex_lock(&h->mu);
  int rc = h->closed ? EDP_ESTOPPED : 0;
  if (!rc && h->len == h->cap)
    rc = grow(h);
  if (!rc) {
    h->ring[(h->head + h->len) % h->cap] = item;
    if (h->len++ == 0) {
      uint64_t one = 1;
      ssize_t n = write(h->efd, &one, sizeof(one));
      (void)n; /* cannot fail: the counter is at most 1 */
    }
    pthread_cond_signal(&h->cv);
  }
  pthread_mutex_unlock(&h->mu);
  return rc;
}

int edp_handoff_take(edp_handoff *h, void **item, int timeout_ms) {
  if (!h || !item)
    return EDP_EINVAL;
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  if (timeout_ms > 0) {
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000L;
    }
  }
  pthread_mutex_lock(&h->mu);
  int rc = 0;
  while (!h->len && !h->closed && timeout_ms != 0 && rc != ETIMEDOUT) {
    if (timeout_ms < 0)
      pthread_cond_wait(&h->cv, &h->mu);
    else
      rc = pthread_cond_timedwait(&h->cv, &h->mu, &dl);
  }
  if (h->len) {
    *item = h->ring[h->head];
    h->head = (h->head + 1) % h->cap;
    if (--h->len == 0) {
      uint64_t v;
      ssize_t n = read(h->efd, &v, sizeof(v));
      (void)n;
    }
    rc = 0;
  } else {
    rc = h->closed ? EDP_ESTOPPED : EDP_ETIMEOUT;
  }
  pthread_mutex_unlock(&h->mu);
  return rc;
}

void edp_handoff_close(edp_handoff *h) {
  if (!h)
    return;
  pthread_mutex_lock(&h->mu);
  h->closed = 1;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

int edp_handoff_fd(const edp_handoff *h) { return h ? h->efd : -1; }

size_t edp_handoff_size(edp_handoff *h) {
  if (!h)
    return 0;
  pthread_mutex_lock(&h->mu);
  size_t n = h->len;
  pthread_mutex_unlock(&h->mu);
  return n;
}
