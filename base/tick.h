/*
 * tick: a background thread that runs a pass, waits until the deadline the pass asked for
 * or until told to stop, and runs the next. The readiness probe and the rotation scheduler
 * are both this; each keeps its own state and lock, the tick holds only stop and the end
 * of the first pass. The wait reads CLOCK_MONOTONIC (clock.h), so a wall-clock jump
 * neither stalls nor hurries it.
 */
#ifndef BASE_TICK_H
#define BASE_TICK_H

#include <pthread.h>
#include <stdint.h>

typedef struct tick tick;

typedef struct {
    void (*enter)(void *ctx);            /* on the thread, before the first pass; NULL: nothing */
    int64_t (*pass)(void *ctx, tick *t); /* one round; returns the ms to wait for the next */
    void (*leave)(void *ctx);            /* on the thread, once stopping; NULL: nothing */
} tick_ops;

/* Embedded in its owner, so that a pass may ask tick_stopping before tick_start returns. */
struct tick {
    const tick_ops *ops;
    void *ctx;
    pthread_t thread;
    pthread_mutex_t mu; /* stop, first_done */
    pthread_cond_t cv;  /* CLOCK_MONOTONIC: stop, and the end of the first pass */
    int stop;
    int first_done;
};

/* Starts the thread and returns once its first pass has finished: 0, or the pthread error
 * number (then nothing is left to stop). */
int tick_start(tick *t, const tick_ops *ops, void *ctx);

/* Whether tick_stop has begun: a long pass looks between its steps. */
int tick_stopping(tick *t);

/* Wakes the thread, waits for its pass to end and its leave to run, and frees what
 * tick_start made. */
void tick_stop(tick *t);

#endif
