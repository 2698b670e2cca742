/* mint: a JWT made and signed for a caller. See mint.h. */
#include "appliance/core/mint.h"

#include "jose/jose.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kid that signs: the one asked for, if the caller may use it and it is active, else
 * the newest the caller may use. */
static mint_status mint_choose_kid(const mint_env *e, const mint_req *m, sk_kid *kid,
                                   mint_fail *why)
{
    if (!m->has_kid)
        return ck_newest_usable(e->reg, m->caller, kid) == 0 ? MINT_OK : MINT_ERR_NO_ACTIVE_KEY;
    *kid = m->kid;
    if (!ck_may_use(e->reg, m->caller, kid))
        return MINT_ERR_KID_NOT_ALLOWED;
    why->cs = ck_signing_state(e->reg, kid, &why->state);
    return why->cs == CK_OK ? MINT_OK : MINT_ERR_KEY;
}

/* The jti, and for a revocable token its status index and list uri. */
static mint_status mint_jti(const mint_env *e, const mint_req *m, mint_token *t)
{
    if (!m->revocable)
        return jose_random_hex(t->jti, MINT_JTI_BYTES) == 0 ? MINT_OK : MINT_ERR_RANDOM;
    /* A revocable token's jti names its status index under a MAC (tks_jti_make): its
     * revocation needs nothing stored per token. */
    tks_status ts = tks_assign(e->tks, m->iat, m->exp, &t->ix);
    if (ts == TKS_ERR_FULL)
        return MINT_ERR_LISTS_FULL;
    if (ts != TKS_OK ||
        tks_jti_make(e->tks, t->ix, m->caller ? m->caller->id : NULL, t->jti) != TKS_OK)
        return MINT_ERR_STATUS_INDEX;
    pub_status_list_uri(e->cfg, t->ix.list, t->uri);
    return MINT_OK;
}

/* The payload, claims in their documented order; NULL when out of memory. */
static json_t *mint_payload(const mint_env *e, const mint_req *m, const mint_token *t)
{
    json_t *payload = json_object();
    if (payload == NULL)
        return NULL;
    if (e->cfg->token_issuer[0] != '\0')
        json_object_set_new(payload, "iss", json_string(e->cfg->token_issuer));
    if (m->sub != NULL)
        json_object_set_new(payload, "sub", json_string(m->sub));
    json_object_set_new(payload, "iat", json_integer(m->iat));
    if (m->nbf >= 0)
        json_object_set_new(payload, "nbf", json_integer(m->nbf));
    json_object_set_new(payload, "exp", json_integer(m->exp));
    json_object_set_new(payload, "jti", json_string(t->jti));
    if (m->aud != NULL)
        json_object_set_new(payload, "aud", json_string(m->aud));
    if (m->origin != NULL)
        json_object_set_new(payload, "origin", json_string(m->origin));
    if (m->n_origins > 0) {
        json_t *list = json_array();
        for (size_t i = 0; i < m->n_origins; i++)
            json_array_append_new(list, json_string(m->origins[i]));
        json_object_set_new(payload, "origins", list);
    }
    if (m->single_use)
        json_object_set_new(payload, "single_use", json_true());
    if (m->revocable)
        json_object_set_new(payload, "status",
                            json_pack("{s:{s:I, s:s}}", "status_list", "idx", (json_int_t)t->ix.idx,
                                      "uri", t->uri));
    if (m->claims != NULL) /* no reserved name can be overwritten: the parser checked */
        json_object_update(payload, (json_t *)m->claims);
    return payload;
}

/* Signs t's token (kid, jti and status set) and records the signature. */
static mint_status mint_sign(const mint_env *e, const mint_req *m, mint_token *out, mint_fail *why)
{
    mint_status ms = MINT_OK;
    char *jws = NULL;
    char header[96];
    int hlen = snprintf(header, sizeof(header),
                        "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", out->kid_hex);
    json_t *payload = mint_payload(e, m, out);
    char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    if (text == NULL) {
        ms = MINT_ERR_NO_MEMORY;
        goto out;
    }
    size_t plen = strlen(text);
    size_t cap = jose_jws_max_len((size_t)hlen, plen, SK_SIG_MAX);
    size_t signing_len, total;
    jws = malloc(cap);
    if (jws == NULL ||
        jose_jws_begin(header, (size_t)hlen, text, plen, jws, cap, &signing_len) != 0) {
        ms = MINT_ERR_NO_FIT;
        goto out;
    }
    /* The body bound (64 KiB) does not bound the token: claims come back re-serialised
     * (1e9 as 1000000000.0) and base64url adds a third. The caller's to fix, not the
     * token's failure. */
    if (signing_len > KP_SIGN_MAX) {
        why->signing_len = signing_len;
        ms = MINT_ERR_TOO_LARGE;
        goto out;
    }
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    sk_status st = kp_sign(e->kp, &out->kid, jws, signing_len, sig, &sig_len);
    if (st == SK_ERR_KEY_NOT_FOUND) {
        /* It changed state since the check (rotated, revoked: the keeper checks the
         * registry itself), or its object is gone. */
        reg_key k;
        if (reg_get(e->reg, &out->kid, &k) == REG_OK && k.state != REG_ACTIVE) {
            why->has_state = 1;
            why->state = k.state;
        }
        ms = MINT_ERR_SIGN_REFUSED;
        goto out;
    }
    if (st != SK_OK) {
        why->st = st;
        ms = MINT_ERR_TOKEN;
        goto out;
    }
    if (jose_jws_finish(jws, cap, signing_len, sig, sig_len, &total) != 0) {
        ms = MINT_ERR_NO_FIT;
        goto out;
    }
    if (audit_signature(e->audit, out->kid_hex, m->caller ? m->caller->id : NULL, jws, signing_len,
                        out->jti) != 0) {
        ms = MINT_ERR_AUDIT;
        goto out;
    }
    out->token = jws;
    out->len = total;
    jws = NULL;
out:
    free(jws);
    free(text);
    return ms;
}

mint_status mint_make(const mint_env *e, const mint_req *m, mint_token *out, mint_fail *why)
{
    memset(out, 0, sizeof(*out));
    memset(why, 0, sizeof(*why));
    mint_status ms = mint_choose_kid(e, m, &out->kid, why);
    why->kid = out->kid;
    if (ms == MINT_OK) {
        sk_kid_hex(&out->kid, out->kid_hex);
        ms = mint_jti(e, m, out);
    }
    if (ms == MINT_OK)
        ms = mint_sign(e, m, out, why);
    if (ms != MINT_OK) {
        mint_token_free(out);
        memset(out, 0, sizeof(*out));
    }
    return ms;
}

void mint_token_free(mint_token *t)
{
    free(t->token);
    t->token = NULL;
}
