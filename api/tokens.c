/* api: JWT minting (POST /v1/tokens), redemption and token revocation. Minting is the hot
 * path of the appliance: one JSON parse here, then appliance/core/mint.h (one registry
 * lookup from memory, one signature on this thread's own token session). */
#include "api/api.h"

#include "appliance/core/mint.h"
#include "jose/jose.h"
#include "base/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_CLAIMS_DEPTH_MAX 16

/* Claims the appliance sets itself; a caller's claims may not carry them (nor "aud" when
 * the request's own aud is given). */
static const char *const api_reserved_claims[] = {
    "iss", "sub", "iat", "nbf", "exp", "jti", "status", "single_use", "origin", "origins", NULL};

/* An optional boolean field: API_OK and *v (unchanged when absent), or wrong_type. */
static api_err api_get_bool(json_t *o, const char *name, int *v, api_resp *r)
{
    json_t *j = json_object_get(o, name);
    if (j == NULL)
        return API_OK;
    if (!json_is_boolean(j))
        return api_fail(r, API_ERR_WRONG_TYPE, "'%s' must be true or false", name);
    *v = json_is_true(j);
    return API_OK;
}

/* An optional origin field: API_OK with out filled and *has set, or invalid_origin. */
static api_err api_get_origin(json_t *o, char out[CFG_ORIGIN_MAX + 1], int *has, api_resp *r)
{
    const char *origin = NULL;
    api_err e = api_get_string(o, "origin", CFG_ORIGIN_MAX, &origin, r);
    if (e != API_OK)
        return e == API_ERR_OUT_OF_RANGE
                   ? api_fail(r, API_ERR_INVALID_ORIGIN, "'origin' is longer than %d bytes",
                              CFG_ORIGIN_MAX)
                   : e;
    *has = origin != NULL;
    if (origin == NULL)
        return API_OK;
    if (!cfg_origin_ok(origin))
        return api_fail(r, API_ERR_INVALID_ORIGIN,
                        "'origin' must be https://host[:port] (or http://), lowercase, with no "
                        "path, query or trailing slash");
    snprintf(out, CFG_ORIGIN_MAX + 1, "%s", origin);
    return API_OK;
}

/* An optional "origins" field: 1 to API_ORIGINS_MAX distinct origins, each as "origin" is
 * checked. API_OK with out and *n filled (0 when absent), or the first error. */
static api_err api_get_origins(json_t *o, char out[API_ORIGINS_MAX][CFG_ORIGIN_MAX + 1], size_t *n,
                               api_resp *r)
{
    *n = 0;
    json_t *list = json_object_get(o, "origins");
    if (list == NULL)
        return API_OK;
    if (!json_is_array(list))
        return api_fail(r, API_ERR_WRONG_TYPE, "'origins' must be an array of origins");
    if (json_array_size(list) < 1 || json_array_size(list) > API_ORIGINS_MAX)
        return api_fail(r, API_ERR_OUT_OF_RANGE, "'origins' must hold 1 to %d origins",
                        API_ORIGINS_MAX);
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (!json_is_string(v))
            return api_fail(r, API_ERR_WRONG_TYPE, "'origins' must be an array of strings");
        const char *origin = json_string_value(v);
        if (json_string_length(v) > CFG_ORIGIN_MAX || !cfg_origin_ok(origin))
            return api_fail(r, API_ERR_INVALID_ORIGIN,
                            "'origins'[%zu] must be https://host[:port] (or http://), "
                            "lowercase, with no path, query or trailing slash",
                            i);
        for (size_t k = 0; k < i; k++)
            if (strcmp(out[k], origin) == 0)
                return api_fail(r, API_ERR_INVALID_ORIGIN, "'origins'[%zu] repeats an origin", i);
        snprintf(out[i], CFG_ORIGIN_MAX + 1, "%s", origin);
    }
    *n = json_array_size(list);
    return API_OK;
}

/* An optional aud field: 1 to API_AUD_MAX printable ASCII. */
static api_err api_get_aud(json_t *o, const char **aud, api_resp *r)
{
    api_err e = api_get_string(o, "aud", API_AUD_MAX, aud, r);
    if (e != API_OK || *aud == NULL)
        return e;
    if (!txt_printable_str(*aud))
        return api_fail(r, API_ERR_OUT_OF_RANGE, "'aud' must be printable ASCII");
    if ((*aud)[0] == '\0')
        return api_fail(r, API_ERR_OUT_OF_RANGE, "'aud' must not be empty");
    return API_OK;
}

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

api_err api_tokens_mint_parse(const api_req *q, api_resp *r, api_tokens_mint_body *out)
{
    static const char *const fields[] = {"kid", "sub",    "ttl",        "exp",
                                         "nbf", "claims", "single_use", "revocable",
                                         "aud", "origin", "origins",    NULL};
    const cfg *c = q->env->cfg;
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 1, &body);
    if (e != API_OK)
        return e;

    const char *kid_text = NULL, *sub = NULL, *aud = NULL;
    int64_t ttl = c->token_ttl_default, nbf = -1;
    if ((e = api_get_string(body, "kid", 64, &kid_text, r)) != API_OK ||
        (e = api_get_string(body, "sub", API_SUB_MAX, &sub, r)) != API_OK ||
        (e = api_get_int(body, "nbf", 0, INT64_MAX / 2, &nbf, r)) != API_OK ||
        (e = api_get_bool(body, "single_use", &out->single_use, r)) != API_OK ||
        (e = api_get_bool(body, "revocable", &out->revocable, r)) != API_OK ||
        (e = api_get_aud(body, &aud, r)) != API_OK ||
        (e = api_get_origin(body, out->origin, &out->has_origin, r)) != API_OK ||
        (e = api_get_origins(body, out->origins, &out->n_origins, r)) != API_OK)
        goto out;
    /* One binding: with both, which one holds would be the verifier's guess. */
    if (out->has_origin && out->n_origins > 0) {
        e = api_fail(r, API_ERR_CONFLICTING_FIELDS, "give 'origin' or 'origins', not both");
        goto out;
    }
    json_t *exp_j = json_object_get(body, "exp");
    if (exp_j != NULL && json_object_get(body, "ttl") != NULL) {
        e = api_fail(r, API_ERR_CONFLICTING_FIELDS, "give 'ttl' or 'exp', not both");
        goto out;
    }
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
    /* An absolute exp (as Cloudflare's signing utility takes it) is a ttl from now, held to
     * the same bounds: it buys no longer token than ttl would. */
    if (exp_j != NULL && !json_is_integer(exp_j)) {
        e = api_fail(r, API_ERR_WRONG_TYPE, "'exp' must be an integer Unix time");
        goto out;
    }
    if (exp_j != NULL) {
        json_int_t x = json_integer_value(exp_j);
        /* Clamped so that a huge exp cannot overflow the subtraction. */
        ttl = x < q->now ? -1 : x - q->now > INT32_MAX ? INT32_MAX : x - q->now;
    }
    if (ttl < c->token_ttl_min || ttl > c->token_ttl_max) {
        e = api_fail(r, API_ERR_TTL_OUT_OF_RANGE,
                     exp_j != NULL ? "'exp' must be between now + %u and now + %u seconds"
                                   : "'ttl' must be between %u and %u seconds",
                     (unsigned)c->token_ttl_min, (unsigned)c->token_ttl_max);
        goto out;
    }
    if (own_max != 0 && ttl > own_max) {
        e = api_fail(r, API_ERR_TTL_TOO_LONG,
                     exp_j != NULL ? "this credential may ask for an 'exp' at most %u seconds "
                                     "from now"
                                   : "this credential may ask for at most %u seconds",
                     own_max);
        goto out;
    }
    int64_t exp = q->now + ttl;
    if (nbf >= 0 && (nbf >= exp || nbf < q->now - API_NBF_LEEWAY)) {
        e = api_fail(r, API_ERR_NBF_OUT_OF_RANGE,
                     "'nbf' must be at least now - %d seconds and before the token expires "
                     "(%lld)",
                     API_NBF_LEEWAY, (long long)exp);
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
    if (claims != NULL && aud != NULL && json_object_get(claims, "aud") != NULL) {
        e = api_fail(r, API_ERR_RESERVED_CLAIM,
                     "claim 'aud' is given as the request's 'aud' and cannot also be in 'claims'");
        goto out;
    }
    if (kid_text != NULL && sk_kid_parse(kid_text, &out->kid) != 0) {
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
    out->has_aud = aud != NULL;
    snprintf(out->aud, sizeof(out->aud), "%s", aud != NULL ? aud : "");
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

/* A refused mint as its answer. */
static api_err api_mint_error(api_resp *r, mint_status ms, const mint_fail *why)
{
    switch (ms) {
    case MINT_ERR_KID_NOT_ALLOWED:
        return api_fail(r, API_ERR_KID_NOT_ALLOWED, "this credential may not use this kid");
    case MINT_ERR_KEY:
        return api_signing_refusal(r, &why->kid, why->cs, why->state);
    case MINT_ERR_NO_ACTIVE_KEY:
        return api_fail(r, API_ERR_NO_ACTIVE_KEY, "no active key this credential may sign with");
    case MINT_ERR_LISTS_FULL:
        return api_fail(r, API_ERR_STATUS_LISTS_FULL, "every status-list index is in use");
    case MINT_ERR_STATUS_INDEX:
        return api_fail(r, API_ERR_STORAGE, "no status-list index could be reserved");
    case MINT_ERR_RANDOM:
        return api_fail(r, API_ERR_INTERNAL, "no randomness for jti");
    case MINT_ERR_NO_MEMORY:
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    case MINT_ERR_TOO_LARGE:
        return api_fail(r, API_ERR_TOKEN_TOO_LARGE,
                        "the token's signing input is %zu bytes, over the %u the appliance signs: "
                        "shorten 'claims'",
                        why->signing_len, (unsigned)KP_SIGN_MAX);
    case MINT_ERR_SIGN_REFUSED:
        if (why->has_state)
            return api_key_state_error(r, why->state);
        return api_fail(r, API_ERR_KEY_REVOKED, "this kid can no longer sign");
    case MINT_ERR_TOKEN:
        return api_hsm_error(r, why->st);
    case MINT_ERR_AUDIT:
        return api_fail(r, API_ERR_STORAGE, "the token could not be recorded in the audit trail");
    default:
        return api_fail(r, API_ERR_INTERNAL, "token does not fit");
    }
}

api_err api_tokens_mint(const api_req *q, api_resp *r)
{
    api_tokens_mint_body b;
    api_err e = api_tokens_mint_parse(q, r, &b);
    if (e != API_OK)
        return e;
    const api_env *env = q->env;
    mint_env me = {
        .cfg = env->cfg, .reg = env->reg, .kp = env->kp, .tks = env->tks, .audit = env->audit};
    mint_req m = {.caller = q->caller,
                  .has_kid = b.has_kid,
                  .kid = b.kid,
                  .sub = b.has_sub ? b.sub : NULL,
                  .iat = q->now,
                  .nbf = b.nbf,
                  .exp = b.exp,
                  .claims = b.claims,
                  .single_use = b.single_use,
                  .revocable = b.revocable,
                  .aud = b.has_aud ? b.aud : NULL,
                  .origin = b.has_origin ? b.origin : NULL,
                  .n_origins = b.n_origins,
                  .origins = b.origins};
    mint_token t;
    mint_fail why;
    mint_status ms = mint_make(&me, &m, &t, &why);
    if (ms != MINT_OK) {
        e = api_mint_error(r, ms, &why);
        goto out;
    }
    json_t *resp =
        json_pack("{s:s, s:s, s:s, s:I, s:I, s:b, s:b}", "token", t.token, "kid", t.kid_hex, "jti",
                  t.jti, "iat", (json_int_t)q->now, "exp", (json_int_t)b.exp, "single_use",
                  b.single_use, "revocable", b.revocable);
    if (resp != NULL && b.revocable)
        json_object_set_new(resp, "status",
                            json_pack("{s:I, s:I, s:s}", "list", (json_int_t)t.ix.list, "idx",
                                      (json_int_t)t.ix.idx, "uri", t.uri));
    e = api_json(r, 200, resp);
    mint_token_free(&t);
out:
    api_tokens_mint_body_free(&b);
    return e;
}

/* ---- redeem: a token checked online, a single-use one consumed ------------------------- */

api_err api_tokens_redeem_parse(const api_req *q, api_resp *r, api_tokens_redeem_body *out)
{
    static const char *const fields[] = {"token", "origin", "aud", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 0, &body);
    if (e != API_OK)
        return e;
    const char *token = NULL, *aud = NULL;
    if ((e = api_get_string(body, "token", API_TOKEN_MAX, &token, r)) == API_OK &&
        (e = api_get_origin(body, out->origin, &out->has_origin, r)) == API_OK &&
        (e = api_get_aud(body, &aud, r)) == API_OK && token == NULL)
        e = api_fail(r, API_ERR_MISSING_FIELD, "'token' is required");
    if (e == API_OK && aud != NULL) {
        out->has_aud = 1;
        snprintf(out->aud, sizeof(out->aud), "%s", aud);
    }
    if (e == API_OK) {
        out->token_len = strlen(token);
        out->token = malloc(out->token_len + 1);
        if (out->token == NULL)
            e = api_fail(r, API_ERR_INTERNAL, "out of memory");
        else
            memcpy(out->token, token, out->token_len + 1);
    }
    if (e != API_OK)
        api_tokens_redeem_body_free(out);
    json_decref(body);
    return e;
}

void api_tokens_redeem_body_free(api_tokens_redeem_body *b)
{
    free(b->token);
    memset(b, 0, sizeof(*b));
}

/* 1 when the RS256 signature of p (over token's signing input) verifies under k's public
 * key, else 0. */
static int api_token_signed_by(const reg_key *k, const char *token, const jose_jws *p)
{
    uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX];
    size_t n_len = 0, e_len = 0;
    if (jose_b64url_decode(k->n_b64, strlen(k->n_b64), n, sizeof(n), &n_len) != 0 ||
        jose_b64url_decode(k->e_b64, strlen(k->e_b64), e, sizeof(e), &e_len) != 0)
        return 0;
    return jose_rs256_verify(n, n_len, e, e_len, token, p->signing_input_len, p->sig, p->sig_len) ==
           1;
}

/* An optional integer claim: 1 and *v when present and an integer, 0 when absent, -1 when
 * present but not an integer. */
static int api_int_claim(json_t *claims, const char *name, int64_t *v)
{
    json_t *j = json_object_get(claims, name);
    if (j == NULL)
        return 0;
    if (!json_is_integer(j))
        return -1;
    *v = json_integer_value(j);
    return 1;
}

/* 1 when origin is the token's "origin" claim or one of its "origins" (claims the
 * appliance signed: a string, an array of strings). */
static int api_origin_bound(const json_t *one, const json_t *list, const char *origin)
{
    if (json_is_string(one))
        return strcmp(json_string_value(one), origin) == 0;
    size_t i;
    const json_t *o;
    json_array_foreach(list, i, o) if (json_is_string(o) &&
                                       strcmp(json_string_value(o), origin) == 0) return 1;
    return 0;
}

/* 1 when aud (a claim: a string, or an array of strings as RFC 7519 allows) names want. */
static int api_aud_names(const json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    size_t i;
    const json_t *a;
    json_array_foreach(aud, i, a) if (json_is_string(a) &&
                                      strcmp(json_string_value(a), want) == 0) return 1;
    return 0;
}

/* The checks of POST /v1/tokens/redeem up to (not including) consumption, in the contract's
 * order: form and signature, key state, time, subject, status, origin, audience. API_OK with
 * *claims (a new reference), *kid and, for a revocable token, *ix. */
static api_err api_redeem_check(const api_req *q, api_resp *r, const api_tokens_redeem_body *b,
                                json_t **claims_out, sk_kid *kid)
{
    *claims_out = NULL;
    jose_jws p;
    if (jose_jws_parse(b->token, b->token_len, &p) != 0)
        return api_fail(r, API_ERR_INVALID_TOKEN, "'token' is not a compact JWS");
    api_err e = API_OK;
    json_t *claims = NULL;
    const char *alg = json_string_value(json_object_get(p.header, "alg"));
    const char *kid_text = json_string_value(json_object_get(p.header, "kid"));
    reg_key k;
    int64_t exp = 0, nbf = 0;
    if (alg == NULL || strcmp(alg, "RS256") != 0) {
        e = api_fail(r, API_ERR_INVALID_TOKEN, "the token's alg is not RS256");
        goto out;
    }
    if (kid_text == NULL || sk_kid_parse(kid_text, kid) != 0) {
        e = api_fail(r, API_ERR_INVALID_TOKEN, "the token names no kid of this appliance");
        goto out;
    }
    json_error_t je;
    claims = json_loadb((const char *)p.payload, p.payload_len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(claims) || api_int_claim(claims, "exp", &exp) != 1 ||
        api_int_claim(claims, "nbf", &nbf) < 0) {
        e = api_fail(r, API_ERR_INVALID_TOKEN,
                     "the token's payload is not a JSON object with an integer exp");
        goto out;
    }
    if (reg_get(q->env->reg, kid, &k) != REG_OK) {
        e = api_fail(r, API_ERR_INVALID_TOKEN, "the token's kid is not a key of this appliance");
        goto out;
    }
    if (!api_token_signed_by(&k, b->token, &p)) {
        e = api_fail(r, API_ERR_INVALID_TOKEN, "the token's signature does not verify");
        goto out;
    }
    /* From here on the claims are the appliance's own: it signed them. */
    if (k.state == REG_REVOKED) {
        e = api_fail(r, API_ERR_KEY_REVOKED, "the key that signed this token is revoked");
        goto out;
    }
    if (q->now >= exp) {
        e = api_fail(r, API_ERR_TOKEN_EXPIRED, "the token expired at %lld", (long long)exp);
        goto out;
    }
    if (json_object_get(claims, "nbf") != NULL && q->now < nbf) {
        e = api_fail(r, API_ERR_TOKEN_NOT_YET_VALID, "the token is not valid before %lld",
                     (long long)nbf);
        goto out;
    }
    /* A subject revocation covers every token of its sub minted before its `before`; a
     * token without an integer iat cannot show it came after, so it is covered too. */
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    int64_t iat = 0;
    if (sub != NULL &&
        (api_int_claim(claims, "iat", &iat) != 1 || reg_subject_revokes(q->env->reg, sub, iat))) {
        e = api_fail(r, API_ERR_SUBJECT_REVOKED, "the tokens of this subject were revoked");
        goto out;
    }
    if (json_object_get(claims, "status") != NULL) {
        /* Where the index is: the jti says it under the appliance's MAC, whatever the uri
         * (public_url may have changed since). */
        tks_index ix;
        char owner[2 * TKS_OWNER_BYTES + 1];
        const char *jti = json_string_value(json_object_get(claims, "jti"));
        if (jti == NULL || tks_jti_read(q->env->tks, jti, &ix, owner) != TKS_OK) {
            e = api_fail(r, API_ERR_INVALID_TOKEN, "the token's status names no index");
            goto out;
        }
        if (tks_is_revoked(q->env->tks, ix)) {
            e = api_fail(r, API_ERR_TOKEN_REVOKED, "this token was revoked");
            goto out;
        }
    }
    /* Fail closed: a bound token redeemed without an origin is refused, or binding would
     * be up to whoever calls. */
    const json_t *one = json_object_get(claims, "origin"),
                 *list = json_object_get(claims, "origins");
    if ((one != NULL || list != NULL) && !b->has_origin) {
        e = api_fail(r, API_ERR_ORIGIN_REQUIRED,
                     "this token is bound to an origin: give the 'origin' it is used from");
        goto out;
    }
    if ((one != NULL || list != NULL) && !api_origin_bound(one, list, b->origin)) {
        e = api_fail(r, API_ERR_WRONG_ORIGIN, "this token is bound to another origin");
        goto out;
    }
    if (b->has_aud && !api_aud_names(json_object_get(claims, "aud"), b->aud)) {
        e = api_fail(r, API_ERR_WRONG_AUDIENCE, "this token is not for audience '%s'", b->aud);
        goto out;
    }
out:
    jose_jws_free(&p);
    if (e == API_OK)
        *claims_out = claims;
    else
        json_decref(claims);
    return e;
}

api_err api_tokens_redeem(const api_req *q, api_resp *r)
{
    api_tokens_redeem_body b;
    api_err e = api_tokens_redeem_parse(q, r, &b);
    if (e != API_OK)
        return e;
    json_t *claims = NULL;
    sk_kid kid;
    if ((e = api_redeem_check(q, r, &b, &claims, &kid)) != API_OK) {
        api_tokens_redeem_body_free(&b);
        return e;
    }
    char kid_hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(&kid, kid_hex);
    const char *jti = json_string_value(json_object_get(claims, "jti"));
    int64_t exp = json_integer_value(json_object_get(claims, "exp"));
    int single = json_is_true(json_object_get(claims, "single_use"));
    if (single) {
        tks_status ts =
            tks_jti_ok(jti) ? tks_redeem(q->env->tks, jti, exp, kid_hex, q->now) : TKS_ERR_INVALID;
        if (ts == TKS_ERR_USED)
            e = api_fail(r, API_ERR_TOKEN_ALREADY_USED, "this single-use token was redeemed");
        else if (ts == TKS_ERR_INVALID)
            e = api_fail(r, API_ERR_INVALID_TOKEN, "the token's jti cannot be redeemed");
        else if (ts != TKS_OK)
            e = api_fail(r, API_ERR_STORAGE, "the redemption could not be recorded");
    }
    if (e == API_OK)
        e = api_json(r, 200,
                     json_pack("{s:s?, s:s, s:I, s:b, s:b, s:O}", "jti", jti, "kid", kid_hex, "exp",
                               (json_int_t)exp, "single_use", single, "redeemed", single, "claims",
                               claims));
    json_decref(claims);
    api_tokens_redeem_body_free(&b);
    return e;
}

/* ---- revoking one token ----------------------------------------------------------------- */

json_t *api_token_revocation_json(const cfg *c, const tks_revocation *rv)
{
    char uri[PUB_URI_MAX];
    pub_status_list_uri(c, rv->ix.list, uri);
    return json_pack("{s:I, s:s, s:I, s:I, s:s, s:I}", "seq", (json_int_t)rv->seq, "jti", rv->jti,
                     "list", (json_int_t)rv->ix.list, "idx", (json_int_t)rv->ix.idx, "uri", uri,
                     "revoked_at", (json_int_t)rv->revoked_at);
}

api_err api_tokens_revoke(const api_req *q, api_resp *r)
{
    static const char *const none[] = {NULL};
    json_t *body;
    api_err e = api_parse_object(q, r, none, 1, &body);
    if (e != API_OK)
        return e;
    json_decref(body);
    tks_index ix;
    char owner[2 * TKS_OWNER_BYTES + 1];
    tks_status ts = tks_jti_read(q->env->tks, q->id, &ix, owner);
    if (ts == TKS_ERR_INVALID)
        return api_fail(r, API_ERR_INVALID_JTI, "a jti is 1 to %d characters of A-Z a-z 0-9 _ -",
                        TKS_JTI_MAX);
    if (ts != TKS_OK)
        return api_fail(r, API_ERR_TOKEN_NOT_FOUND, "no revocable token has this jti");
    /* A signer revokes only what it minted; an admin anything. */
    if (q->caller != NULL && q->caller->role != CRED_ROLE_ADMIN &&
        strcmp(owner, q->caller->id) != 0)
        return api_fail(r, API_ERR_TOKEN_NOT_OWNED, "this token was minted by another credential");
    tks_revocation rv;
    ts = tks_revoke(q->env->tks, ix, q->id, NULL, q->now, &rv);
    if (ts == TKS_ERR_NOT_FOUND || ts == TKS_ERR_NOT_ISSUED)
        return api_fail(r, API_ERR_TOKEN_NOT_FOUND, "no revocable token has this jti");
    if (ts != TKS_OK && ts != TKS_ERR_REVOKED)
        return api_fail(r, API_ERR_STORAGE, "the revocation could not be recorded");
    if (ts == TKS_OK)
        reg_poke(q->env->reg); /* the event stream announces it */
    return api_json(r, 200, api_token_revocation_json(q->env->cfg, &rv));
}
