/*
 * clock: monotonic time (CLOCK_MONOTONIC), the only clock for timeouts, intervals and
 * durations: the wall clock may jump (NTP, an operator), a deadline on it would not hold.
 * Condition variables that wait with a deadline are made with clk_cond_init, so that
 * pthread_cond_timedwait reads the same clock as clk_deadline.
 */
#ifndef BASE_CLOCK_H
#define BASE_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Now, in nanoseconds and in milliseconds, from an arbitrary origin (boot). */
int64_t clk_now_ns(void);
int64_t clk_now_ms(void);

/* Milliseconds from start_ms (a clk_now_ms value) to now; 0 when start is in the future. */
int64_t clk_ms_since(int64_t start_ms);

/* Now plus ms (negative counts as 0) as a CLOCK_MONOTONIC timespec, the absolute deadline
 * for pthread_cond_timedwait on a condition made by clk_cond_init. */
struct timespec clk_deadline(int64_t ms);

/* Initialises cv to wait on CLOCK_MONOTONIC. 0, or the pthread error number. */
int clk_cond_init(pthread_cond_t *cv);

#endif
