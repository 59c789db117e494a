/*
 * edp_util.c - clocks and an interruptible sleep. The sleep waits in
 * poll() on the caller's stop fd so that a signal handler writing to a
 * self-pipe ends every wait at once (DESIGN.md rule 5).
 */

#include "edp_util.h"

#include <errno.h>
#include <poll.h>
#include <time.h>

int64_t edp_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t edp_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t edp_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t edp_wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int edp_sleep_ms(int ms, int stop_fd) {
  int64_t end = edp_now_ms() + ms;
  for (;;) {
    int64_t left = end - edp_now_ms();
    if (left <= 0)
      return 0;
    struct pollfd p = {stop_fd, POLLIN, 0};
    int n = poll(&p, 1, (int)left);
    if (n > 0 && (p.revents & POLLIN))
      return 1;
    if (n < 0 && errno != EINTR)
      return 0;
  }
}
