/*
 * edp_util.h - clocks and waits shared by libedp and its programs.
 */
#ifndef EDP_UTIL_H
#define EDP_UTIL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Milliseconds of CLOCK_MONOTONIC: for deadlines and durations. */
int64_t edp_now_ms(void);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME): for timestamps that
 * cross processes, such as a message's send time. */
int64_t edp_wall_ms(void);

/* Microseconds of CLOCK_MONOTONIC / CLOCK_REALTIME, for latencies too
 * short for milliseconds. */
int64_t edp_now_us(void);
int64_t edp_wall_us(void);

/* Sleeps ms milliseconds, or until stop_fd (-1: none) becomes readable.
 * Returns 0 after the full sleep, 1 if stopped early. */
int edp_sleep_ms(int ms, int stop_fd);

#ifdef __cplusplus
}
#endif
#endif
