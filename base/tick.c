/* tick: a background thread of passes. See tick.h. */
#include "base/tick.h"

#include "base/clock.h"

#include <errno.h>

static void *tick_main(void *arg)
{
    tick *t = arg;
    if (t->ops->enter != NULL)
        t->ops->enter(t->ctx);
    for (;;) {
        int64_t ms = t->ops->pass(t->ctx, t);
        pthread_mutex_lock(&t->mu);
        if (!t->first_done) {
            t->first_done = 1;
            pthread_cond_broadcast(&t->cv);
        }
        struct timespec until = clk_deadline(ms);
        while (!t->stop && pthread_cond_timedwait(&t->cv, &t->mu, &until) != ETIMEDOUT)
            ;
        int stop = t->stop;
        pthread_mutex_unlock(&t->mu);
        if (stop)
            break;
    }
    if (t->ops->leave != NULL)
        t->ops->leave(t->ctx);
    return NULL;
}

int tick_start(tick *t, const tick_ops *ops, void *ctx)
{
    t->ops = ops;
    t->ctx = ctx;
    t->stop = 0;
    t->first_done = 0;
    pthread_mutex_init(&t->mu, NULL);
    clk_cond_init(&t->cv);
    int rc = pthread_create(&t->thread, NULL, tick_main, t);
    if (rc != 0) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        return rc;
    }
    pthread_mutex_lock(&t->mu);
    while (!t->first_done)
        pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int tick_stopping(tick *t)
{
    pthread_mutex_lock(&t->mu);
    int stop = t->stop;
    pthread_mutex_unlock(&t->mu);
    return stop;
}

void tick_stop(tick *t)
{
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
}
