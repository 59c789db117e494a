/*
 * edp_idset.h - a bounded set of recently seen ids (message_ids), for
 * receivers that drop duplicates. When full, the oldest id is forgotten,
 * so memory stays bounded whatever the traffic.
 */
#ifndef EDP_IDSET_H
#define EDP_IDSET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edp_idset edp_idset;

/* Creates a set remembering the last capacity ids (capacity >= 1).
 * Returns 0, EDP_EINVAL or EDP_ENOMEM. */
int edp_idset_new(size_t capacity, edp_idset **out);

/* Frees the set and sets *s to NULL; accepts NULL. */
void edp_idset_destroy(edp_idset **s);

/* Returns 1 if id is in the set, 0 if not. */
int edp_idset_contains(const edp_idset *s, const char *id);

/* Adds id (copied), evicting the oldest when full. Returns 1 if it was
 * new, 0 if already present, EDP_ENOMEM. */
int edp_idset_add(edp_idset *s, const char *id);

size_t edp_idset_size(const edp_idset *s);

#ifdef __cplusplus
}
#endif
#endif
