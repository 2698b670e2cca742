/*
 * prb: the front's readiness, from a background probe, so that GET /readyz answers at once
 * whatever the token does.
 *
 * One thread asks the keeper, every PRB_INTERVAL_MS (PRB_RETRY_MS while unready), for what
 * /readyz once asked inline: a signature with the newest active key (when there is none, a
 * session query that must find the session logged in), and the keeper's session count for GET
 * /metrics. prb_read reports ready when the last probe succeeded and no probe has been waiting
 * longer than PRB_DEADLINE_MS: a stalled token makes the appliance unready within PRB_DEADLINE_MS
 * even before the keeper's own deadline (keeper_timeout_ms) ends the call, and with an
 * in-process keeper (kp_open), where a module call cannot be abandoned, even if the call never
 * returns. After a stall
 * the next probe (PRB_RETRY_MS later at most, once the stalled one gave up) makes it ready
 * again.
 *
 * The same thread drains the supervisor's event pipe (common/events.h, written by main.c when
 * it restarts the keeper or the front; spawn.h passes it to signd-front) into the audit trail
 * ("keeper.restarted", "front.restarted", with the cause) and the restart metric.
 *
 * State: one probe per front, its fields under its own mutex; prb_read is safe from any
 * thread.
 */
#ifndef APPLIANCE_PROBE_H
#define APPLIANCE_PROBE_H

#include "appliance/core/audit.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/registry.h"

#include <stdint.h>

#define PRB_INTERVAL_MS 500
#define PRB_RETRY_MS 200
#define PRB_DEADLINE_MS 800

typedef struct {
    kp *kp;
    reg *reg;
    audit *audit;  /* where restarts are recorded; NULL: not recorded */
    int events_fd; /* the supervisor's pipe, non-blocking, or -1 */
} prb_options;

typedef struct prb prb;

/* Starts the probe thread; its first probe has finished when this returns, so the first
 * /readyz already has an answer. -1 with err set when the thread cannot start. */
int prb_start(const prb_options *o, prb **out, char *err, size_t errlen);
/* Stops the thread (after its current probe, itself bounded by the keeper's deadline). */
void prb_stop(prb *p);

typedef struct {
    int ready;
    sk_status status;    /* the last probe's answer, or SK_ERR_TIMEOUT while one is late */
    unsigned sessions;   /* the keeper's open sessions at the last probe; 0 when it failed */
    uint64_t checked_ms; /* how long ago the last probe finished */
} prb_state;

/* The probe's state now. Never waits for the token. */
void prb_read(prb *p, prb_state *out);

#endif
