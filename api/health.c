/* api: liveness and readiness. */
#include "api/api.h"

api_err api_healthz(const api_req *q, api_resp *r)
{
    (void)q;
    return api_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* Ready when the token answers a signature with the newest active key (or, with no key
 * yet, answers a listing): a logged-out or unplugged token makes the appliance unready. */
api_err api_readyz(const api_req *q, api_resp *r)
{
    reg_key newest;
    int have = reg_newest_active(q->env->reg, &newest) == REG_OK;
    hsm_status st = kp_ping(q->env->kp, have ? &newest.kid : NULL);
    if (st != HSM_OK)
        return api_fail(r, API_ERR_HSM_UNAVAILABLE, "token not ready: %s", hsm_strerror(st));
    return api_json(r, 200,
                    json_pack("{s:s, s:I}", "status", "ready", "active_keys",
                              (json_int_t)reg_count(q->env->reg, REG_ACTIVE)));
}
