/*
 * edp_allocmap.h - the thread delegate's allocation map: which worker a
 * context (an account) is on, and how many of its messages are in flight.
 *
 * The rule that keeps per-context order: a context with messages in
 * flight stays on its worker (each worker processes in arrival order); a
 * context with none in flight goes to the least-loaded worker, where load
 * is the number of messages in flight on that worker. An entry disappears
 * when its last message is released, so the map holds at most one entry
 * per message in flight and is empty when the dispatcher is idle.
 *
 * Not thread-safe: the dispatcher thread alone uses it. No broker needed,
 * which is what makes the allocation logic unit-testable.
 */
#ifndef EDP_ALLOCMAP_H
#define EDP_ALLOCMAP_H

#include <stddef.h>

#include "edp_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edp_allocmap edp_allocmap;

/* Creates an empty map over workers workers (1..4096). Returns 0,
 * EDP_EINVAL or EDP_ENOMEM. */
int edp_allocmap_new(int workers, edp_allocmap **out);

/* Frees the map and sets *m to NULL; accepts NULL. */
void edp_allocmap_destroy(edp_allocmap **m);

/* Places one more message of context ctx: on the context's worker if it
 * has messages in flight, else on the least-loaded worker (ties go to the
 * next worker after the last one chosen, so idle workers take turns).
 * *worker receives the worker (0-based), *in_flight (may be NULL) the
 * context's count after this message. Returns 0, EDP_EINVAL or EDP_ENOMEM
 * (then nothing changed). */
int edp_allocmap_assign(edp_allocmap *m, const char *ctx, int *worker,
                        int *in_flight);

/* Releases one message of ctx (its worker finished or dropped it).
 * *worker and *in_flight (may be NULL) receive the worker and the count
 * left; at 0 the entry is gone. Returns 0, or EDP_ENOTFOUND if ctx has
 * nothing in flight. */
int edp_allocmap_release(edp_allocmap *m, const char *ctx, int *worker,
                         int *in_flight);

/* The worker and count of ctx; EDP_ENOTFOUND if it has nothing in flight. */
int edp_allocmap_lookup(const edp_allocmap *m, const char *ctx, int *worker,
                        int *in_flight);

/* Contexts with messages in flight (entries in the map). */
size_t edp_allocmap_size(const edp_allocmap *m);

/* Messages in flight on worker w (0 for an invalid w). */
int edp_allocmap_load(const edp_allocmap *m, int w);

#ifdef __cplusplus
}
#endif
#endif
