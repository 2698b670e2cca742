/* api: liveness and readiness. */
#include "api/api.h"

#include "appliance/core/probe.h"
#include "appliance/core/watch.h"

api_err api_healthz(const api_req *q, api_resp *r)
{
    (void)q;
    return api_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* Ready when the last background probe had the token sign with the newest active key (or,
 * with no key yet, answer a session query, logged in) and no probe is late (probe.h): a logged-out,
 * unplugged or stalled token makes the appliance unready. Never waits for the token, so a
 * load balancer's check always gets an answer at once. */
api_err api_readyz(const api_req *q, api_resp *r)
{
    if (q->env->probe == NULL)
        return api_fail(r, API_ERR_HSM_UNAVAILABLE, "token not ready: no readiness probe");
    /* A cluster node that cannot reach the shared database, or has not reloaded what the
     * others changed while it was away, is not ready: the load balancer routes around it. */
    if (!wch_healthy(q->env->watch)) {
        api_header(r, "Retry-After: %u", API_HSM_RETRY_AFTER);
        return api_fail(r, API_ERR_STORAGE_UNAVAILABLE,
                        "store not ready: the shared database cannot be reached");
    }
    prb_state ps;
    prb_read(q->env->probe, &ps);
    if (!ps.ready) {
        api_header(r, "Retry-After: %u", API_HSM_RETRY_AFTER);
        return api_fail(r,
                        ps.status == SK_ERR_TIMEOUT ? API_ERR_HSM_TIMEOUT : API_ERR_HSM_UNAVAILABLE,
                        "token not ready: %s", sk_strerror(ps.status));
    }
    return api_json(r, 200,
                    json_pack("{s:s, s:I}", "status", "ready", "active_keys",
                              (json_int_t)reg_count(q->env->reg, REG_ACTIVE)));
}
