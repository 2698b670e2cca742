/* api: subject revocation (POST /v1/subjects/revoke): every token minted for one sub
 * before a time, revoked at once, without knowing their jtis or keys. What a publisher
 * does when a video is rotated: the old URLs die, new tokens for it mint at once. */
#include "api/api.h"

#include <stdio.h>
#include <string.h>

api_err api_subjects_revoke_parse(const api_req *q, api_resp *r, api_subjects_revoke_body *out)
{
    static const char *const fields[] = {"sub", "before", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 0, &body);
    if (e != API_OK)
        return e;
    const char *sub = NULL;
    int64_t before = q->now;
    /* A future before would refuse tokens not minted yet: minting for the subject must
     * work again at once, so it is at most now. */
    if ((e = api_get_string(body, "sub", API_SUB_MAX, &sub, r)) == API_OK &&
        (e = api_get_int(body, "before", 1, q->now, &before, r)) == API_OK) {
        if (sub == NULL)
            e = api_fail(r, API_ERR_MISSING_FIELD, "'sub' is required");
        else if (sub[0] == '\0')
            e = api_fail(r, API_ERR_OUT_OF_RANGE, "'sub' must not be empty");
    }
    if (e == API_OK) {
        snprintf(out->sub, sizeof(out->sub), "%s", sub);
        out->before = before;
    }
    json_decref(body);
    return e;
}

api_err api_subjects_revoke(const api_req *q, api_resp *r)
{
    /* A subject is not tied to a kid (nothing is stored per token), so a signer scoped to
     * some kids would revoke the tokens other apps minted under theirs: only an admin or a
     * signer that may use every kid may. */
    if (q->caller != NULL && q->caller->role == CRED_ROLE_SIGNER && !q->caller->all_kids)
        return api_fail(r, API_ERR_FORBIDDEN,
                        "a subject's tokens may come from any kid: only an admin or a signer "
                        "whose kids are \"all\" may revoke a subject");
    api_subjects_revoke_body b;
    api_err e = api_subjects_revoke_parse(q, r, &b);
    if (e != API_OK)
        return e;
    int64_t ttl_max = (int64_t)q->env->cfg->token_ttl_max;
    reg_subject s;
    reg_status st = reg_revoke_subject(q->env->reg, b.sub, b.before, q->now, q->now - ttl_max, &s);
    if (st != REG_OK)
        return api_fail(r, API_ERR_STORAGE, "the subject revocation could not be recorded");
    /* Committed (fsynced) above; the feed and the stream see it through the generation. */
    json_t *j = pub_subject_json(&s);
    if (j != NULL) {
        json_object_set_new(j, "revoked_at", json_integer(s.revoked_at));
        json_object_set_new(j, "expires_at", json_integer(s.before + ttl_max));
    }
    return api_json(r, 200, j);
}
