/*
 * edp_handoff.h - a thread-safe FIFO of pointers that one side can wait on
 * with poll() and the other with a condition variable.
 *
 * It is how work crosses threads in libedp without breaking the rule that
 * a connection belongs to one thread: a worker pushes a finished item, and
 * the connection's owner sees edp_handoff_fd() become readable inside its
 * single blocking point (edp_conn_wait's wake_fd). In the other direction
 * a worker thread blocks in edp_handoff_take() with a timeout.
 *
 * The fd is readable exactly while the queue holds items, so a poller never
 * misses an item and never spins on an empty queue.
 */
#ifndef EDP_HANDOFF_H
#define EDP_HANDOFF_H

#include <stddef.h>

#include "edp_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edp_handoff edp_handoff;

/* Creates an empty queue with its eventfd. Returns 0, EDP_ENOMEM or
 * EDP_EIO (no eventfd). */
int edp_handoff_new(edp_handoff **out);

/* Frees the queue and its fd and sets *h to NULL; accepts NULL. Items
 * still queued are not freed (they are the caller's). No thread may use
 * the queue any more. */
void edp_handoff_destroy(edp_handoff **h);

/* Appends item (any pointer, NULL allowed) and wakes one waiter. Returns
 * 0, EDP_ENOMEM, EDP_EINVAL, or EDP_ESTOPPED after edp_handoff_close(). */
int edp_handoff_push(edp_handoff *h, void *item);

/* Takes the oldest item into *item, waiting up to timeout_ms (0 = don't
 * wait, -1 = until an item comes or the queue is closed). Returns 0,
 * EDP_ETIMEOUT (still empty), EDP_ESTOPPED (closed and empty) or
 * EDP_EINVAL. Items pushed before close are still handed out. */
int edp_handoff_take(edp_handoff *h, void **item, int timeout_ms);

/* Refuses further pushes and wakes every waiter. */
void edp_handoff_close(edp_handoff *h);

/* A file descriptor that polls readable while items are queued. Do not
 * read it: edp_handoff_take() resets it. */
int edp_handoff_fd(const edp_handoff *h);

/* Items queued now. */
size_t edp_handoff_size(edp_handoff *h);

#ifdef __cplusplus
}
#endif
#endif
