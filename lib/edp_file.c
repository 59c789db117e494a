/*
 * edp_file.c - atomic replace by temp file + fsync + rename + directory
 * fsync, the only sequence POSIX guarantees to survive a crash or power
 * loss with either the old or the new content.
 */
#include "edp_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edp_error.h"

static int fsync_dir_of(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(dir, sizeof(dir), ".");
  else if (slash == path)
    snprintf(dir, sizeof(dir), "/");
  else
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

int edp_file_write_atomic(const char *path, const void *data, size_t len,
                          mode_t mode) {
  if (!path || !path[0] || (len && !data) || strlen(path) > 4000)
    return EDP_EINVAL;
  char tmp[4096 + 32];
  snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0)
    return EDP_EIO;
  /* open() applies the umask; the store must have exactly mode. */
  int failed = fchmod(fd, mode) != 0;
  const char *p = data;
  size_t left = len;
  while (!failed && left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      failed = 1;
      break;
    }
    p += n;
    left -= (size_t)n;
  }
  if (!failed && fsync(fd) != 0)
    failed = 1;
  if (close(fd) != 0)
    failed = 1;
  if (!failed && rename(tmp, path) != 0)
    failed = 1;
  if (failed) {
    int saved = errno;
    unlink(tmp);
    errno = saved;
    return EDP_EIO;
  }
  /* Without this the rename itself may be lost in a power failure. */
  return fsync_dir_of(path) == 0 ? 0 : EDP_EIO;
}

int edp_file_read(const char *path, size_t max, char **out, size_t *len) {
  if (!path || !out)
    return EDP_EINVAL;
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? EDP_ENOTFOUND : EDP_EIO;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return EDP_EIO;
  }
  if ((size_t)st.st_size > max) {
    close(fd);
    return EDP_ETOOBIG;
  }
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    return EDP_ENOMEM;
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  if (len)
    *len = got;
  return 0;
}
