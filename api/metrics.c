/* api: GET /metrics, the Prometheus text exposition. See api.h and appliance/common/metrics.h. */
#include "api/api.h"

#include "appliance/common/jlog.h"
#include "appliance/common/metrics.h"
#include "appliance/core/audit.h"
#include "appliance/core/probe.h"

#include <openssl/crypto.h>

#ifndef SIGND_VERSION
#define SIGND_VERSION "dev"
#endif

static const char *api_metrics_result(unsigned i)
{
    return api_err_table((api_err)i)->code; /* API_OK's code is "ok" */
}

api_err api_metrics(const api_req *q, api_resp *r)
{
    const api_env *env = q->env;
    if (q->query != NULL && q->query[0] != '\0')
        return api_fail(r, API_ERR_INVALID_QUERY, "/metrics takes no query");
    /* The keeper's session count as the readiness probe last saw it: a scrape never waits
     * for the token, so it still answers while the token stalls. */
    prb_state ps = {0};
    if (env->probe != NULL)
        prb_read(env->probe, &ps);
    met_gauges g = {
        .sessions_in_use = ps.sessions,
        .ready = ps.ready,
        .sessions_max = cfg_pkcs11_sessions(env->cfg),
        .revocation_seq = reg_revocation_seq(env->reg),
        .log_dropped = jlog_dropped(),
        .version = SIGND_VERSION,
        .openssl = OpenSSL_version(OPENSSL_VERSION_STRING),
        .sqlite = audit_backend_version(env->audit),
        .jansson = jansson_version_str(),
    };
    for (int s = 0; s < REG_STATE_COUNT_ && s < MET_STATES_MAX; s++) {
        g.state_name[g.n_states] = reg_state_name((reg_state)s);
        g.state_keys[g.n_states++] = reg_count(env->reg, (reg_state)s);
    }
    audit_lag(env->audit, &g.audit_lag_events, &g.audit_lag_seconds);
    size_t len = 0;
    char *text = met_render(&g, api_metrics_result, &len);
    if (text == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    r->status = 200;
    r->body = text;
    r->len = len;
    api_header(r, "Content-Type: " MET_CONTENT_TYPE);
    return API_OK;
}
