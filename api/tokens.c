/* api: JWT minting (POST /v1/tokens). The hot path of the appliance: one JSON parse, one
 * registry lookup from memory, one signature on this thread's own token session. */
#include "api/api.h"

#include "jose/jose.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_CLAIMS_DEPTH_MAX 16
#define API_JTI_BYTES 16

/* Claims the appliance sets itself; a caller's claims may not carry them. */
static const char *const api_reserved_claims[] = {"iss", "sub", "iat", "nbf", "exp", "jti", NULL};

static int api_depth_ok(json_t *j, int depth)
{
    if (depth > API_CLAIMS_DEPTH_MAX)
        return 0;
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_object(j)) {
        json_object_foreach(j, k, v) if (!api_depth_ok(v, depth + 1)) return 0;
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v) if (!api_depth_ok(v, depth + 1)) return 0;
    }
    return 1;
}

/* The newest active key the caller may use: the registry's newest for an unscoped caller,
 * else the newest active one among its list and the list's successors (a kid rotated away
 * hands its signers to the key that replaced it: api_check_kid_scope). At most
 * CRED_KIDS_MAX * API_LINEAGE_MAX lookups in memory, one per kid while nothing rotated. */
static int api_newest_usable(const api_req *q, hsm_kid *out)
{
    reg_key k;
    if (q->caller == NULL || q->caller->all_kids) {
        if (reg_newest_active(q->env->reg, &k) != REG_OK)
            return -1;
        *out = k.kid;
        return 0;
    }
    int found = 0;
    int64_t newest = 0;
    for (size_t i = 0; i < q->caller->n_kids; i++) {
        if (reg_get(q->env->reg, &q->caller->kids[i], &k) != REG_OK)
            continue;
        /* Only the last of a lineage can be active: every key before it was rotated. */
        for (int d = 0; d < API_LINEAGE_MAX && k.has_successor; d++) {
            hsm_kid next = k.successor;
            if (reg_get(q->env->reg, &next, &k) != REG_OK)
                break;
        }
        if (k.state != REG_ACTIVE)
            continue;
        if (!found || k.created_at >= newest) {
            found = 1;
            newest = k.created_at;
            *out = k.kid;
        }
    }
    return found ? 0 : -1;
}

api_err api_tokens_mint_parse(const api_req *q, api_resp *r, api_tokens_mint_body *out)
{
    static const char *const fields[] = {"kid", "sub", "ttl", "nbf", "claims", NULL};
    const cfg *c = q->env->cfg;
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 1, &body);
    if (e != API_OK)
        return e;

    const char *kid_text = NULL, *sub = NULL;
    int64_t ttl = c->token_ttl_default, nbf = -1;
    if ((e = api_get_string(body, "kid", 64, &kid_text, r)) != API_OK ||
        (e = api_get_string(body, "sub", API_SUB_MAX, &sub, r)) != API_OK ||
        (e = api_get_int(body, "nbf", 0, INT64_MAX / 2, &nbf, r)) != API_OK)
        goto out;
    /* A signer with its own max_ttl gets that as its ceiling, and as its default when the
     * appliance's default is longer: asking for nothing must not be an error. */
    unsigned own_max = q->caller != NULL ? q->caller->max_ttl : 0;
    if (own_max != 0 && ttl > own_max)
        ttl = own_max;
    json_t *ttl_j = json_object_get(body, "ttl");
    if (ttl_j != NULL && !json_is_integer(ttl_j)) {
        e = api_fail(r, API_ERR_WRONG_TYPE, "'ttl' must be an integer number of seconds");
        goto out;
    }
    if (ttl_j != NULL)
        ttl = json_integer_value(ttl_j);
    if (ttl < c->token_ttl_min || ttl > c->token_ttl_max) {
        e = api_fail(r, API_ERR_TTL_OUT_OF_RANGE, "'ttl' must be between %u and %u seconds",
                     (unsigned)c->token_ttl_min, (unsigned)c->token_ttl_max);
        goto out;
    }
    if (own_max != 0 && ttl > own_max) {
        e = api_fail(r, API_ERR_TTL_TOO_LONG, "this credential may ask for at most %u seconds",
                     own_max);
        goto out;
    }
    int64_t exp = q->now + ttl;
    if (nbf >= exp) {
        e = api_fail(r, API_ERR_OUT_OF_RANGE, "'nbf' must be before the token expires");
        goto out;
    }
    json_t *claims = json_object_get(body, "claims");
    if (claims != NULL && !json_is_object(claims)) {
        e = api_fail(r, API_ERR_WRONG_TYPE, "'claims' must be a JSON object");
        goto out;
    }
    if (claims != NULL && !api_depth_ok(claims, 0)) {
        e = api_fail(r, API_ERR_OUT_OF_RANGE, "'claims' nests deeper than %d levels",
                     API_CLAIMS_DEPTH_MAX);
        goto out;
    }
    for (size_t i = 0; claims != NULL && api_reserved_claims[i] != NULL; i++) {
        if (json_object_get(claims, api_reserved_claims[i]) != NULL) {
            e = api_fail(r, API_ERR_RESERVED_CLAIM,
                         "claim '%s' is set by the appliance and cannot be given in 'claims'",
                         api_reserved_claims[i]);
            goto out;
        }
    }
    if (kid_text != NULL && hsm_kid_parse(kid_text, &out->kid) != 0) {
        e = api_fail(r, API_ERR_INVALID_KID, "'kid' must be 32 lowercase hex characters");
        goto out;
    }
    out->has_kid = kid_text != NULL;
    out->has_sub = sub != NULL;
    snprintf(out->sub, sizeof(out->sub), "%s", sub != NULL ? sub : "");
    out->ttl = ttl;
    out->nbf = nbf;
    out->exp = exp;
    out->claims = json_incref(claims);
out:
    if (e != API_OK)
        memset(out, 0, sizeof(*out));
    json_decref(body);
    return e;
}

void api_tokens_mint_body_free(api_tokens_mint_body *b)
{
    json_decref(b->claims);
    memset(b, 0, sizeof(*b));
}

api_err api_tokens_mint(const api_req *q, api_resp *r)
{
    const cfg *c = q->env->cfg;
    json_t *payload = NULL;
    char *payload_text = NULL, *jws = NULL;
    api_tokens_mint_body b;
    api_err e = api_tokens_mint_parse(q, r, &b);
    if (e != API_OK)
        return e;

    hsm_kid kid = b.kid;
    if (b.has_kid) {
        if ((e = api_check_kid_scope(q, r, &kid)) != API_OK ||
            (e = api_check_signing_key(q, r, &kid)) != API_OK)
            goto out;
    } else if (api_newest_usable(q, &kid) != 0) {
        e = api_fail(r, API_ERR_NO_ACTIVE_KEY, "no active key this credential may sign with");
        goto out;
    }

    char kid_hex[2 * HSM_KID_LEN + 1], jti[2 * API_JTI_BYTES + 1], header[96];
    hsm_kid_hex(&kid, kid_hex);
    if (jose_random_hex(jti, API_JTI_BYTES) != 0) {
        e = api_fail(r, API_ERR_INTERNAL, "no randomness for jti");
        goto out;
    }
    int hlen = snprintf(header, sizeof(header),
                        "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid_hex);

    payload = json_object();
    if (c->token_issuer[0] != '\0')
        json_object_set_new(payload, "iss", json_string(c->token_issuer));
    if (b.has_sub)
        json_object_set_new(payload, "sub", json_string(b.sub));
    json_object_set_new(payload, "iat", json_integer(q->now));
    if (b.nbf >= 0)
        json_object_set_new(payload, "nbf", json_integer(b.nbf));
    json_object_set_new(payload, "exp", json_integer(b.exp));
    json_object_set_new(payload, "jti", json_string(jti));
    if (b.claims != NULL)
        json_object_update(payload, b.claims); /* no reserved name can be overwritten: checked */
    payload_text = json_dumps(payload, JSON_COMPACT);
    if (payload_text == NULL) {
        e = api_fail(r, API_ERR_INTERNAL, "out of memory");
        goto out;
    }
    size_t plen = strlen(payload_text);
    size_t cap = jose_jws_max_len((size_t)hlen, plen, HSM_SIG_MAX);
    size_t signing_len, total;
    jws = malloc(cap);
    if (jws == NULL ||
        jose_jws_begin(header, (size_t)hlen, payload_text, plen, jws, cap, &signing_len) != 0) {
        e = api_fail(r, API_ERR_INTERNAL, "token does not fit");
        goto out;
    }
    uint8_t sig[HSM_SIG_MAX];
    size_t sig_len;
    hsm_status st = kp_sign(q->env->kp, &kid, jws, signing_len, sig, &sig_len);
    if (st != HSM_OK) {
        e = st == HSM_ERR_KEY_NOT_FOUND ? api_sign_refused(q, r, &kid) : api_hsm_error(r, st);
        goto out;
    }
    if (jose_jws_finish(jws, cap, signing_len, sig, sig_len, &total) != 0) {
        e = api_fail(r, API_ERR_INTERNAL, "token does not fit");
        goto out;
    }
    if (audit_signature(q->env->audit, kid_hex, q->caller ? q->caller->id : NULL, jws, signing_len,
                        jti) != 0) {
        e = api_fail(r, API_ERR_STORAGE, "the token could not be recorded in the audit trail");
        goto out;
    }
    e = api_json(r, 200,
                 json_pack("{s:s, s:s, s:s, s:I, s:I}", "token", jws, "kid", kid_hex, "jti", jti,
                           "iat", (json_int_t)q->now, "exp", (json_int_t)b.exp));
out:
    free(jws);
    free(payload_text);
    json_decref(payload);
    api_tokens_mint_body_free(&b);
    return e;
}
