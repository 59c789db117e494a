/*
 * edp_file.h - crash-safe file replacement, for stores such as the watch
 * pattern's registry.
 */
#ifndef EDP_FILE_H
#define EDP_FILE_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Replaces path with data[0..len) so that a crash at any moment leaves
 * either the old file or the new one, never a mix: writes a temp file in
 * the same directory (created with mode), fsyncs it, renames it over path
 * and fsyncs the directory. Returns 0, EDP_EINVAL or EDP_EIO (errno set;
 * the temp file is removed). */
int edp_file_write_atomic(const char *path, const void *data, size_t len,
                          mode_t mode);

/* Reads a whole file of at most max bytes into a NUL-terminated malloc'd
 * buffer (*out, *len may be NULL). Returns 0, EDP_ENOTFOUND (no such
 * file), EDP_ETOOBIG, EDP_ENOMEM or EDP_EIO. */
int edp_file_read(const char *path, size_t max, char **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
