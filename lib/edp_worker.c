/*
 * edp_worker.c - one persistent thread that runs a handler while the
 * connection's owner thread keeps servicing the connection (contract in
 * edp_worker.h).
 *
 * Why it exists: rabbitmq-c services heartbeats only inside its own calls,
 * so a handler called on the owner thread silences the connection for as
 * long as it runs. With a heartbeat of a few seconds and a handler of a
 * few more, the broker drops the connection, the message comes back, and a
 * receiver can loop forever on it (issue 11). Handlers take minutes in
 * real services, so every pattern runs them here.
 *
 * The fast path costs one handoff per message and no thread creation: the
 * owner posts the job under the mutex and signals the worker's condition
 * variable; the worker runs fn, stores the result and writes the eventfd,
 * which is the wake fd of the owner's edp_conn_wait(). The owner reads
 * the eventfd once per run, after it saw the job done, so the fd is never
 * readable between runs. When the connection can no longer be serviced
 * the owner blocks on a second condition variable instead: no polling.
 * The owner services the connection with edp_conn_service(), which keeps
 * reading frames while deliveries wait in the connection's own queue.
 */
#define _GNU_SOURCE
#include "edp_worker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Bounds one edp_conn_wait() of a run; the run waits again until fn is
 * done, so this only limits how long a wait may be (rule 5), and
 * edp_conn_wait() services heartbeats in slices of its own. */
#define SLICE_MS 1000

/* A run keeps servicing an open connection after a channel or consumer
 * error, and after a stop hook cleared the stop signal; each comes from
 * an event, never from a loop, so these bounds only guard against a
 * connection (or hook) that reports the same error at once again. */
#define MAX_OPEN_ERRORS 16
#define MAX_STOP_HOOKS 16

enum { IDLE = 0, POSTED = 1, DONE = 2 };

struct edp_worker {
  pthread_mutex_t mu;
  pthread_cond_t job_cv;  /* the worker waits for a job or quit */
  pthread_cond_t done_cv; /* the owner waits for fn when it can't pump */
  pthread_t th;
  int efd; /* readable once fn returned, until the owner reads it */
  int state, quit;
  edp_worker_fn fn;
  void *ud;
  int result;
  /* Owner thread only. */
  int held_err; /* an error seen during a run, reported once */
  uint32_t held_err_epoch;
  edp_worker_stop_fn on_stop;
  void *on_stop_ud;
};

static void *worker_main(void *arg) {
  edp_worker *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (w->state != POSTED && !w->quit)
      pthread_cond_wait(&w->job_cv, &w->mu);
    if (w->state != POSTED)
      break;
    edp_worker_fn fn = w->fn;
    void *ud = w->ud;
    pthread_mutex_unlock(&w->mu);
    int res = fn(ud);
    pthread_mutex_lock(&w->mu);
    w->result = res;
    w->state = DONE;
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof(one));
    (void)n; /* cannot fail: the counter is read after every run */
    pthread_cond_signal(&w->done_cv);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* Creates the thread with the asynchronous signals blocked, so that a
 * process-directed SIGINT or SIGTERM goes to a thread that waits in poll()
 * on the stop pipe rather than interrupting a handler's sleep or read. */
static int start_thread(edp_worker *w) {
  sigset_t all, old;
  sigfillset(&all);
  /* Faults are the thread's own and must reach their handlers. */
  int sync_sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
  for (size_t i = 0; i < sizeof(sync_sigs) / sizeof(sync_sigs[0]); i++)
    sigdelset(&all, sync_sigs[i]);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&w->th, NULL, worker_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc ? EDP_EIO : 0;
}

int edp_worker_new(edp_worker **out) {
  if (!out)
    return EDP_EINVAL;
  *out = NULL;
  edp_worker *w = calloc(1, sizeof(*w));
  if (!w)
    return EDP_ENOMEM;
  w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (w->efd < 0) {
    free(w);
    return EDP_EIO;
  }
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->job_cv, NULL);
  pthread_cond_init(&w->done_cv, NULL);
  int rc = start_thread(w);
  if (rc) {
    pthread_cond_destroy(&w->done_cv);
    pthread_cond_destroy(&w->job_cv);
    pthread_mutex_destroy(&w->mu);
    close(w->efd);
    free(w);
    return rc;
  }
  *out = w;
  return 0;
}

void edp_worker_destroy(edp_worker **wp) {
  if (!wp || !*wp)
    return;
  edp_worker *w = *wp;
  pthread_mutex_lock(&w->mu);
  w->quit = 1;
  pthread_cond_signal(&w->job_cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->th, NULL);
  pthread_cond_destroy(&w->done_cv);
  pthread_cond_destroy(&w->job_cv);
  pthread_mutex_destroy(&w->mu);
  close(w->efd);
  free(w);
  *wp = NULL;
}

void edp_worker_on_stop(edp_worker *w, edp_worker_stop_fn fn, void *ud) {
  if (!w)
    return;
  w->on_stop = fn;
  w->on_stop_ud = fn ? ud : NULL;
}

/* The error held from a run, once; dropped if the channel changed since
 * (a reconnect answered it) and kept while the connection is down (the
 * connection reports that itself). */
static int take_held_err(edp_worker *w, edp_conn *conn) {
  if (!w->held_err || !edp_conn_is_open(conn))
    return 0;
  int e = w->held_err_epoch == edp_conn_epoch(conn) ? w->held_err : 0;
  w->held_err = 0;
  return e;
}

int edp_worker_run(edp_worker *w, edp_conn *conn, edp_worker_fn fn, void *ud,
                   int *fn_result) {
  if (!w || !fn)
    return EDP_EINVAL;
  pthread_mutex_lock(&w->mu);
  w->fn = fn;
  w->ud = ud;
  w->state = POSTED;
  pthread_cond_signal(&w->job_cv);
  pthread_mutex_unlock(&w->mu);

  int err = 0, stopped = 0, open_errors = 0, hooks = 0;
  for (int serve = conn != NULL; serve;) {
    int rc = edp_conn_service(conn, w->efd, SLICE_MS);
    if (rc == EDP_READY_WAKE)
      break;
    if (rc == 0)
      continue;
    if (rc == EDP_ESTOPPED) {
      stopped = 1;
      serve = w->on_stop && hooks++ < MAX_STOP_HOOKS &&
              w->on_stop(w->on_stop_ud) == 0;
      continue;
    }
    if (!err)
      err = rc;
    /* A channel error (the channel is already restored) or a consumer
     * cancelled by the broker leaves the connection open: keep servicing
     * it, and let the consumer loop see the error later. */
    serve = edp_conn_is_open(conn) && open_errors++ < MAX_OPEN_ERRORS;
    if (serve && !w->held_err) {
      w->held_err = rc;
      w->held_err_epoch = edp_conn_epoch(conn);
    }
  }

  /* fn may still run: wait for it without servicing anything. */
  pthread_mutex_lock(&w->mu);
  while (w->state != DONE)
    pthread_cond_wait(&w->done_cv, &w->mu);
  int res = w->result;
  w->state = IDLE;
  w->fn = NULL;
  w->ud = NULL;
  pthread_mutex_unlock(&w->mu);
  uint64_t v;
  ssize_t n = read(w->efd, &v, sizeof(v)); /* the run's one write */
  (void)n;
  if (fn_result)
    *fn_result = res;
  return err ? err : stopped ? EDP_ESTOPPED : 0;
}

int edp_worker_receive(edp_worker *w, edp_conn *conn, edp_delivery *d,
                       int timeout_ms) {
  if (!w || !conn || !d)
    return EDP_EINVAL;
  int e = take_held_err(w, conn);
  if (e) {
    memset(d, 0, sizeof(*d));
    return e;
  }
  return edp_conn_receive(conn, d, timeout_ms);
}

int edp_worker_wait(edp_worker *w, edp_conn *conn, int wake_fd,
                    int timeout_ms) {
  if (!w || !conn)
    return EDP_EINVAL;
  int e = take_held_err(w, conn);
  return e ? e : edp_conn_wait(conn, wake_fd, timeout_ms);
}
