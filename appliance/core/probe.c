/* prb: readiness from a background probe, and the supervisor's restart events. See
 * probe.h. */
#include "appliance/core/probe.h"

#include "appliance/common/events.h"
#include "appliance/common/metrics.h"
#include "base/clock.h"
#include "base/names.h"
#include "base/tick.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct prb {
    prb_options o;
    tick tk;
    pthread_mutex_t mu;
    /* Under mu: */
    sk_status status;
    unsigned sessions;
    uint64_t done_ms;    /* monotonic ms the last probe finished, 0: none yet */
    uint64_t started_ms; /* monotonic ms the probe in flight began, 0: none in flight */
};

/* Records every whole event waiting in the pipe; anything malformed is dropped, never
 * trusted. */
static void prb_drain_events(prb *p)
{
    evt_restart ev;
    while (evt_recv(p->o.events_fd, &ev)) {
        if (!evt_valid(&ev))
            continue;
        const char *role = ev.role == EVT_ROLE_KEEPER ? "keeper" : "front";
        const char *cause = evt_cause_name((evt_cause)ev.cause);
        met_restart(ev.role == EVT_ROLE_KEEPER, cause);
        if (p->o.audit == NULL)
            continue;
        json_t *d = json_pack("{s:s, s:i, s:I}", "cause", cause, "pid", (int)ev.pid,
                              ev.cause == EVT_CAUSE_EXITED   ? "exit_status"
                              : ev.cause == EVT_CAUSE_SIGNAL ? "signal"
                                                             : "silent_ms",
                              (json_int_t)ev.detail);
        audit_record(p->o.audit,
                     ev.role == EVT_ROLE_KEEPER ? CHN_KEEPER_RESTARTED : CHN_FRONT_RESTARTED, NULL,
                     d);
        json_decref(d);
        fprintf(stderr, "signd: %s pid %d was replaced (%s)\n", role, (int)ev.pid, cause);
    }
}

/* One probe: the same question /readyz used to ask inline. Returns its status. */
static sk_status prb_probe(prb *p)
{
    pthread_mutex_lock(&p->mu);
    p->started_ms = (uint64_t)clk_now_ms();
    pthread_mutex_unlock(&p->mu);

    reg_key newest;
    int have = reg_newest_active(p->o.reg, &newest) == REG_OK;
    sk_status st = kp_ping(p->o.kp, have ? &newest.kid : NULL);
    unsigned sessions = st == SK_OK ? kp_sessions_open(p->o.kp) : 0;
    unsigned long reopens = 0;
    /* Only a count the keeper gave: a 0 for "no answer" would read as a keeper restart. */
    if (st == SK_OK && kp_reopens(p->o.kp, &reopens) == SK_OK)
        met_hsm_reopens(reopens);

    pthread_mutex_lock(&p->mu);
    p->status = st;
    p->sessions = sessions; /* 0 while the keeper does not answer, as it holds none for us */
    p->done_ms = (uint64_t)clk_now_ms();
    p->started_ms = 0;
    pthread_mutex_unlock(&p->mu);
    return st;
}

/* A failing token is looked at again sooner. */
static int64_t prb_tick(void *ctx, tick *tk)
{
    (void)tk;
    prb *p = ctx;
    prb_drain_events(p);
    return prb_probe(p) == SK_OK ? PRB_INTERVAL_MS : PRB_RETRY_MS;
}

static void prb_leave(void *ctx)
{
    prb *p = ctx;
    kp_thread_done(p->o.kp); /* this thread's keeper connection or token session */
}

static const tick_ops prb_ops = {.pass = prb_tick, .leave = prb_leave};

int prb_start(const prb_options *o, prb **out, char *err, size_t errlen)
{
    *out = NULL;
    prb *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "readiness probe: out of memory");
        return -1;
    }
    p->o = *o;
    p->status = SK_ERR_DEVICE;
    pthread_mutex_init(&p->mu, NULL);
    int rc = tick_start(&p->tk, &prb_ops, p);
    if (rc != 0) {
        snprintf(err, errlen, "readiness probe: cannot start its thread: %s", strerror(rc));
        pthread_mutex_destroy(&p->mu);
        free(p);
        return -1;
    }
    *out = p;
    return 0;
}

void prb_stop(prb *p)
{
    if (p == NULL)
        return;
    tick_stop(&p->tk);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void prb_read(prb *p, prb_state *out)
{
    pthread_mutex_lock(&p->mu);
    uint64_t now = (uint64_t)clk_now_ms();
    int late = p->started_ms != 0 && now - p->started_ms > PRB_DEADLINE_MS;
    out->status = late ? SK_ERR_TIMEOUT : p->status;
    out->ready = !late && p->status == SK_OK && p->done_ms != 0;
    out->sessions = p->sessions;
    out->checked_ms = p->done_ms != 0 ? now - p->done_ms : UINT64_MAX;
    pthread_mutex_unlock(&p->mu);
}
