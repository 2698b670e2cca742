/* rot: the retirement scheduler. See rotation.h. */
#include "appliance/core/rotation.h"
#include "base/tick.h"

#include "appliance/core/audit.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Wakes this long after a retire_at's second has begun, so that time() reads it. */
#define ROT_MARGIN_MS 5

struct rot {
    ck_env env;
    tick tk;
};

static int rot_stopping(rot *t)
{
    return tick_stopping(&t->tk);
}

/* Revokes kid if it is still retiring (a DELETE may have come first: then it is left as
 * that DELETE made it). */
static void rot_retire(rot *t, const sk_kid *kid, int64_t now)
{
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(kid, hex);
    reg_key k;
    if (reg_get(t->env.reg, kid, &k) != REG_OK || k.state != REG_RETIRING)
        return;
    if (ck_revoke(&t->env, kid, ROT_REASON, now, &k) != CK_OK) {
        fprintf(stderr, "signd: rotation: could not revoke kid %s yet (retry in %d ms): %s\n", hex,
                ROT_TICK_MS, reg_last_error());
        return;
    }
    fprintf(stderr, "signd: rotation: kid %s revoked at the end of its grace (retire_at %lld)\n",
            hex, (long long)k.retire_at);
}

/* One look at the schedule: revokes every retiring key due now. Returns the earliest
 * retire_at still ahead, 0 when none. */
static int64_t rot_pass(rot *t)
{
    sk_kid due[ROT_BATCH];
    int64_t next = 0;
    size_t before = SIZE_MAX;
    for (;;) {
        int64_t now = (int64_t)time(NULL);
        size_t n = reg_retiring_due(t->env.reg, now, due, ROT_BATCH, &next);
        /* Nothing due, or the last batch revoked nothing (the registry failed): the next
         * tick tries again. */
        if (n == 0 || n >= before)
            break;
        before = n;
        for (size_t i = 0; i < n && i < ROT_BATCH; i++) {
            if (rot_stopping(t)) /* SIGTERM: the rest stays due for the next start */
                return 0;
            rot_retire(t, &due[i], now);
        }
        if (n <= ROT_BATCH) /* else more than a batch was due: look again */
            break;
    }
    return next;
}

/* Milliseconds to the next look: at next (unix seconds, 0: none) or a tick. */
static int64_t rot_wait_ms(int64_t next)
{
    int64_t ms = ROT_TICK_MS;
    if (next > 0) {
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        int64_t ahead =
            (next - (int64_t)wall.tv_sec) * 1000 - wall.tv_nsec / 1000000 + ROT_MARGIN_MS;
        if (ahead < ms)
            ms = ahead > ROT_MARGIN_MS ? ahead : ROT_MARGIN_MS;
    }
    return ms;
}

/* Every revocation this thread makes is the scheduler's, not a credential's. */
static void rot_enter(void *ctx)
{
    (void)ctx;
    chn_set_actor(ROT_ACTOR);
}

static int64_t rot_tick(void *ctx, tick *tk)
{
    (void)tk;
    return rot_wait_ms(rot_pass(ctx));
}

static void rot_leave(void *ctx)
{
    rot *t = ctx;
    chn_set_actor(NULL);
    kp_thread_done(t->env.kp); /* this thread's token session (or keeper connection) */
}

static const tick_ops rot_ops = {.enter = rot_enter, .pass = rot_tick, .leave = rot_leave};

int rot_start(const ck_env *env, rot **out, char *err, size_t errlen)
{
    *out = NULL;
    rot *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "rotation scheduler: out of memory");
        return -1;
    }
    t->env = *env;
    /* What fell due while the appliance was down is revoked before anything is served:
     * tick_start returns after the first pass. */
    int rc = tick_start(&t->tk, &rot_ops, t);
    if (rc != 0) {
        snprintf(err, errlen, "rotation scheduler: cannot start its thread: %s", strerror(rc));
        free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void rot_stop(rot *t)
{
    if (t == NULL)
        return;
    tick_stop(&t->tk);
    free(t);
}
