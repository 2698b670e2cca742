/* api: liveness and readiness. */
#include "api/api.h"

#include <pthread.h>
#include <time.h>

/* /readyz is public: without a cache every anonymous call would cost a token signature,
 * so the answer of one probe stands for API_READY_CACHE_NS. */
#define API_READY_CACHE_NS 1000000000ull

static pthread_mutex_t api_ready_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t api_ready_at; /* monotonic ns of the last probe, 0 = none */
static hsm_status api_ready_status;

static uint64_t api_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

api_err api_healthz(const api_req *q, api_resp *r)
{
    (void)q;
    return api_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* Ready when the token answers a signature with the newest active key (or, with no key
 * yet, answers a listing): a logged-out or unplugged token makes the appliance unready.
 * One probe at a time, at most one a second; callers in between get its answer. */
api_err api_readyz(const api_req *q, api_resp *r)
{
    pthread_mutex_lock(&api_ready_mu);
    uint64_t now = api_mono_ns();
    if (api_ready_at == 0 || now - api_ready_at >= API_READY_CACHE_NS) {
        reg_key newest;
        int have = reg_newest_active(q->env->reg, &newest) == REG_OK;
        api_ready_status = kp_ping(q->env->kp, have ? &newest.kid : NULL);
        api_ready_at = api_mono_ns();
    }
    hsm_status st = api_ready_status;
    pthread_mutex_unlock(&api_ready_mu);
    if (st != HSM_OK)
        return api_fail(r, API_ERR_HSM_UNAVAILABLE, "token not ready: %s", hsm_strerror(st));
    return api_json(r, 200,
                    json_pack("{s:s, s:I}", "status", "ready", "active_keys",
                              (json_int_t)reg_count(q->env->reg, REG_ACTIVE)));
}
