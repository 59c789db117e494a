/*
 * edp_worker.h - runs a long piece of user code (a message handler) on a
 * worker thread while the thread that owns a connection keeps servicing
 * it.
 *
 * rabbitmq-c sends and checks heartbeats only inside its own calls, so a
 * connection's owner thread must never block in user code (DESIGN.md rule
 * 2). edp_worker_run() hands fn(ud) to the worker's thread and, meanwhile,
 * waits in edp_conn_wait() on the connection: heartbeats, confirms and
 * deliveries keep flowing however long fn takes.
 *
 * Threading contract: fn runs on the worker thread, with the asynchronous
 * signals blocked; it must not touch the connection (or anything else the
 * owner thread uses while the run lasts). Everything else here is called
 * on the owner thread. Runs are sequential: one worker runs one fn at a
 * time, always on the same thread, created once by edp_worker_new().
 *
 * Deliveries that arrive during a run stay queued in the connection (the
 * run services it with edp_conn_service()). A consumer that uses a worker
 * receives through edp_worker_receive() and waits through
 * edp_worker_wait(): they are edp_conn_receive() and edp_conn_wait() that
 * first report, once, an error a run met. Use one worker per connection.
 */
#ifndef EDP_WORKER_H
#define EDP_WORKER_H

#include <stddef.h>

#include "edp_conn.h"
#include "edp_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edp_worker edp_worker;

/* The work to run on the worker thread; its return value is handed back
 * through edp_worker_run()'s fn_result. */
typedef int (*edp_worker_fn)(void *ud);

/* Called on the owner thread when the connection's stop_fd becomes
 * readable while fn runs. Return 0 after clearing the stop signal (e.g.
 * reading one's own eventfd) when the owner acts on it between messages
 * anyway: the run then keeps servicing the connection. Return non-zero to
 * leave it set: every wait on the connection would end at once, so the run
 * stops servicing it and just waits for fn. */
typedef int (*edp_worker_stop_fn)(void *ud);

/* Creates a worker and starts its thread. Returns 0, EDP_EINVAL (out is
 * NULL), EDP_ENOMEM, or EDP_EIO (no eventfd or no thread). */
int edp_worker_new(edp_worker **out);

/* Stops and joins the thread, frees the worker and sets *w to NULL.
 * Accepts NULL and *w == NULL. Not during a run. */
void edp_worker_destroy(edp_worker **w);

/* Sets (fn != NULL) or clears the stop hook above. Without one, a stop
 * ends the servicing of the connection for the rest of the run. */
void edp_worker_on_stop(edp_worker *w, edp_worker_stop_fn fn, void *ud);

/* Runs fn(ud) on the worker thread and returns once it has returned; its
 * result goes to *fn_result (may be NULL). Meanwhile the calling thread,
 * the owner of conn, services conn with edp_conn_service(). conn NULL:
 * nothing to service, the call just waits for fn.
 *
 * Returns 0 when conn was serviced throughout, or, in every case below
 * only after fn has returned:
 *  - EDP_ESTOPPED: the connection's stop_fd fired while fn ran. Settle the
 *    finished message, then stop.
 *  - EDP_ECLOSED or another error of edp_conn_service(): the first error
 *    seen.
 *    If the connection was lost, the run waited for fn without servicing
 *    it; the message's ack is then refused (EDP_ECLOSED, or EDP_ESTALE
 *    after a reconnect) and the broker redelivers it. If the connection
 *    is still open (a channel closed and was restored, a consumer was
 *    cancelled by the broker), the run went on servicing it, and the next
 *    edp_worker_wait() or edp_worker_receive() returns the error again, so
 *    a consumer loop meets it where it always did.
 * An error takes precedence over EDP_ESTOPPED (the stop fd stays readable
 * unless a stop hook cleared it). EDP_EINVAL (w or fn NULL) is the one
 * error with which fn did not run. */
int edp_worker_run(edp_worker *w, edp_conn *conn, edp_worker_fn fn, void *ud,
                   int *fn_result);

/* edp_conn_receive() that first returns, once, an error a run met while
 * the connection stayed open (dropped if the channel changed since).
 * Returns as edp_conn_receive(), or EDP_EINVAL. */
int edp_worker_receive(edp_worker *w, edp_conn *conn, edp_delivery *d,
                       int timeout_ms);

/* edp_conn_wait() that first returns a run's error once, as
 * edp_worker_receive(). Returns as edp_conn_wait(), or EDP_EINVAL. */
int edp_worker_wait(edp_worker *w, edp_conn *conn, int wake_fd, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
