/* api: the key lifecycle (create, list, show, rotate, revoke) and raw RS256 signing. */
#include "api/api.h"

#include "appliance/common/metrics.h"
#include "appliance/core/audit.h"
#include "appliance/core/keys.h"
#include "jose/jose.h"
#include "base/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_REASON_DEFAULT "unspecified"
#define API_SIGN_PAYLOAD_MAX (48 * 1024) /* decoded bytes; the body bound is 64 KiB */
/* grace_seconds of a rotation: at most a year, the bound of token_ttl_max and of the
 * rotation_grace_seconds setting (raw signatures have no exp, so an operator may want the
 * old key published longer than any token lives). */
#define API_GRACE_MAX 31536000

api_err api_hsm_error(api_resp *r, sk_status st)
{
    api_err e;
    switch (st) {
    case SK_ERR_KEY_NOT_FOUND:
        e = API_ERR_KEY_NOT_FOUND;
        break;
    case SK_ERR_TOKEN_FULL:
        e = API_ERR_TOKEN_FULL;
        break;
    case SK_ERR_SESSION_COUNT:
        e = API_ERR_HSM_BUSY;
        break;
    case SK_ERR_TIMEOUT:
        e = API_ERR_HSM_TIMEOUT;
        break;
    case SK_ERR_KEY_SIZE:
        /* The token's own range (tpm2-pkcs11 makes RSA 1024 to 3072): the caller asks for
         * another size, nothing is wrong with the token. */
        e = API_ERR_KEY_SIZE_UNSUPPORTED;
        break;
    default:
        e = API_ERR_HSM_UNAVAILABLE;
    }
    /* Every 503 of the token's is worth retrying: a stall passes, the watchdog restarts a
     * wedged keeper, a session frees up. A client (or load balancer) told when retries
     * rather than hammers. */
    if (api_err_table(e)->http_status == 503)
        api_header(r, "Retry-After: %u", API_HSM_RETRY_AFTER);
    return api_fail(r, e, "%s", sk_strerror(st));
}

/* The lifecycle's view of the appliance (appliance/core/keys.h). */
static ck_env api_ck(const api_env *env)
{
    return (ck_env){.reg = env->reg, .kp = env->kp, .pub = env->pub};
}

api_err api_key_state_error(api_resp *r, reg_state s)
{
    switch (s) {
    case REG_REVOKED:
        return api_fail(r, API_ERR_KEY_REVOKED, "this kid was revoked and can no longer sign");
    case REG_RETIRING:
        return api_fail(r, API_ERR_KEY_RETIRING,
                        "this kid was rotated: it still verifies until its retire_at, but its "
                        "successor signs now");
    case REG_BROKEN:
        return api_fail(r, API_ERR_KEY_BROKEN, "this kid's key is missing from the token");
    default:
        return api_fail(r, API_ERR_INTERNAL, "unexpected key state");
    }
}

/* A failed create or rotate as its answer; what is the registry's refusal of the final
 * row ("the new key", "the rotation"). */
static api_err api_ck_error(const api_req *q, api_resp *r, ck_status cs, const ck_fail *why,
                            const char *what)
{
    unsigned max = q->env->cfg->max_active_keys;
    switch (cs) {
    case CK_ERR_NOT_FOUND:
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    case CK_ERR_STATE:
        return api_key_state_error(r, why->state);
    case CK_ERR_NO_SLOT:
        return api_fail(r, API_ERR_KEY_LIMIT_REACHED,
                        "the appliance holds %u keys in the token (active and retiring), its limit",
                        max);
    case CK_ERR_LIMIT:
        return api_fail(r, API_ERR_KEY_LIMIT_REACHED, "the appliance holds %u keys, its limit",
                        max);
    case CK_ERR_KID:
        return api_fail(r, API_ERR_STORAGE, "the key registry refused the new kid");
    case CK_ERR_TOKEN:
        /* A key being made is no key the caller named: a handle the token lost right after
         * making it (opencryptoki, once in a thousand concurrent creates) is the token's
         * failure, 503, never 404 key_not_found. */
        return api_hsm_error(r, why->st == SK_ERR_KEY_NOT_FOUND ? SK_ERR_DEVICE : why->st);
    case CK_ERR_INTERNAL:
        return api_fail(r, API_ERR_INTERNAL, "public key does not fit");
    default:
        return api_fail(r, API_ERR_STORAGE, "the key registry refused %s", what);
    }
}

/* A new key's JSON: the row, its PEM, and Location. */
static json_t *api_new_key_json(api_resp *r, const reg_key *k, const sk_pubkey *pub)
{
    json_t *j = api_key_json(k);
    char *pem = jose_rsa_public_pem(pub->n, pub->n_len, pub->e, pub->e_len);
    if (j != NULL && pem != NULL)
        json_object_set_new(j, "pem", json_string(pem));
    free(pem);
    char kid[2 * SK_KID_LEN + 1];
    sk_kid_hex(&k->kid, kid);
    api_header(r, "Location: /v1/keys/%s", kid);
    return j;
}

api_err api_keys_create_parse(const api_req *q, api_resp *r, api_keys_create_body *out)
{
    static const char *const fields[] = {"bits", "label", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 1, &body);
    if (e != API_OK)
        return e;
    int64_t bits = q->env->cfg->default_key_bits;
    const char *label = "";
    if ((e = api_get_int(body, "bits", 0, INT32_MAX, &bits, r)) != API_OK ||
        (e = api_get_string(body, "label", API_LABEL_MAX, &label, r)) != API_OK)
        goto out;
    if (bits != 2048 && bits != 3072 && bits != 4096) {
        e = api_fail(r, API_ERR_OUT_OF_RANGE, "'bits' must be 2048, 3072 or 4096");
        goto out;
    }
    if (!txt_printable_str(label)) {
        e = api_fail(r, API_ERR_INVALID_LABEL, "'label' must be printable ASCII");
        goto out;
    }
    out->bits = (unsigned)bits;
    snprintf(out->label, sizeof(out->label), "%s", label);
out:
    json_decref(body);
    return e;
}

api_err api_keys_create(const api_req *q, api_resp *r)
{
    api_keys_create_body b;
    api_err e = api_keys_create_parse(q, r, &b);
    if (e != API_OK)
        return e;
    ck_env ce = api_ck(q->env);
    reg_key k;
    sk_pubkey pub;
    ck_fail why;
    ck_status cs = ck_create(&ce, b.bits, b.label, q->now, &k, &pub, &why);
    if (cs != CK_OK)
        return api_ck_error(q, r, cs, &why, "the new key");
    return api_json(r, 201, api_new_key_json(r, &k, &pub));
}

/* The rotation's grace when the request names none: rotation_grace_seconds, whose 0 means
 * the longest token ttl (every token already out stays verifiable until it expires). */
static int64_t api_default_grace(const cfg *c)
{
    return c->rotation_grace_seconds != 0 ? c->rotation_grace_seconds : c->token_ttl_max;
}

api_err api_keys_rotate_parse(const api_req *q, api_resp *r, api_keys_rotate_body *out)
{
    static const char *const fields[] = {"grace_seconds", "label", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 1, &body);
    if (e != API_OK)
        return e;
    int64_t grace = api_default_grace(q->env->cfg);
    const char *label = NULL;
    if ((e = api_get_int(body, "grace_seconds", 0, API_GRACE_MAX, &grace, r)) != API_OK ||
        (e = api_get_string(body, "label", API_LABEL_MAX, &label, r)) != API_OK)
        goto out;
    if (label != NULL && !txt_printable_str(label)) {
        e = api_fail(r, API_ERR_INVALID_LABEL, "'label' must be printable ASCII");
        goto out;
    }
    out->grace = grace;
    out->has_label = label != NULL;
    snprintf(out->label, sizeof(out->label), "%s", label != NULL ? label : "");
out:
    json_decref(body);
    return e;
}

api_err api_keys_rotate(const api_req *q, api_resp *r)
{
    api_keys_rotate_body b;
    api_err e = api_keys_rotate_parse(q, r, &b);
    if (e != API_OK)
        return e;
    ck_env ce = api_ck(q->env);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail why;
    ck_status cs = ck_rotate(&ce, &q->kid, b.has_label ? b.label : NULL, q->now, q->now + b.grace,
                             &was, &made, &pub, &why);
    if (cs != CK_OK)
        return api_ck_error(q, r, cs, &why, "the rotation");
    json_t *j = api_new_key_json(r, &made, &pub);
    if (j != NULL)
        json_object_set_new(j, "predecessor_key", api_key_json(&was));
    return api_json(r, 201, j);
}

api_err api_keys_list(const api_req *q, api_resp *r)
{
    int filter = -1;
    if (q->query != NULL && q->query[0] != '\0') {
        reg_state st;
        if (strncmp(q->query, "state=", 6) != 0 || reg_state_parse(q->query + 6, &st) != 0)
            return api_fail(r, API_ERR_INVALID_QUERY,
                            "the only query is state=active|retiring|revoked|broken");
        filter = (int)st;
    }
    size_t cap = 16; /* room for creates racing the counts */
    for (int s = 0; s < REG_STATE_COUNT_; s++)
        cap += reg_count(q->env->reg, (reg_state)s);
    reg_key *keys = calloc(cap, sizeof(*keys));
    if (keys == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    size_t n = reg_list(q->env->reg, filter, keys, cap);
    if (n > cap)
        n = cap;
    json_t *arr = json_array();
    for (size_t i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, api_key_json(&keys[i]));
    free(keys);
    return api_json(r, 200, json_pack("{s:o, s:I}", "keys", arr, "count", (json_int_t)n));
}

api_err api_keys_get(const api_req *q, api_resp *r)
{
    reg_key k;
    if (reg_get(q->env->reg, &q->kid, &k) != REG_OK)
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    return api_json(r, 200, api_key_json(&k));
}

api_err api_keys_revoke_parse(const api_req *q, api_resp *r, api_keys_revoke_body *out)
{
    static const char *const fields[] = {"reason", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 1, &body);
    if (e != API_OK)
        return e;
    const char *reason = API_REASON_DEFAULT;
    if ((e = api_get_string(body, "reason", REG_REASON_MAX, &reason, r)) != API_OK)
        goto out;
    if (reason[0] == '\0' || !txt_printable_str(reason)) {
        e = api_fail(r, API_ERR_INVALID_REASON, "'reason' must be non-empty printable ASCII");
        goto out;
    }
    snprintf(out->reason, sizeof(out->reason), "%s", reason);
out:
    json_decref(body);
    return e;
}

api_err api_keys_revoke(const api_req *q, api_resp *r)
{
    api_keys_revoke_body b;
    api_err e = api_keys_revoke_parse(q, r, &b);
    if (e != API_OK)
        return e;
    ck_env ce = api_ck(q->env);
    reg_key k;
    ck_status cs = ck_revoke(&ce, &q->kid, b.reason, q->now, &k);
    if (cs == CK_ERR_NOT_FOUND)
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    if (cs != CK_OK)
        return api_fail(r, API_ERR_STORAGE, "the revocation could not be recorded");
    return api_json(r, 200, api_key_json(&k));
}

api_err api_check_kid_scope(const api_req *q, api_resp *r, const sk_kid *kid)
{
    if (ck_may_use(q->env->reg, q->caller, kid))
        return API_OK;
    return api_fail(r, API_ERR_KID_NOT_ALLOWED, "this credential may not use this kid");
}

api_err api_signing_refusal(api_resp *r, const sk_kid *kid, ck_status cs, reg_state state)
{
    if (cs == CK_OK)
        return API_OK;
    if (cs != CK_ERR_STATE)
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    /* A registry key: its refusal is counted under its kid, also for a token request whose
     * kid came in the body (the server knows only the path's). */
    met_note_kid(kid);
    return api_key_state_error(r, state);
}

api_err api_check_signing_key(const api_req *q, api_resp *r, const sk_kid *kid)
{
    reg_state state = REG_ACTIVE;
    ck_status cs = ck_signing_state(q->env->reg, kid, &state); /* before state is read */
    return api_signing_refusal(r, kid, cs, state);
}

api_err api_sign_refused(const api_req *q, api_resp *r, const sk_kid *kid)
{
    reg_key k;
    if (reg_get(q->env->reg, kid, &k) == REG_OK && k.state != REG_ACTIVE)
        return api_key_state_error(r, k.state);
    return api_fail(r, API_ERR_KEY_REVOKED, "this kid can no longer sign");
}

api_err api_keys_sign_parse(const api_req *q, api_resp *r, api_keys_sign_body *out)
{
    static const char *const fields[] = {"payload", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 0, &body);
    if (e != API_OK)
        return e;
    const char *payload = NULL;
    uint8_t *bytes = NULL;
    size_t n = 0;
    if ((e = api_get_string(body, "payload", API_BODY_MAX, &payload, r)) != API_OK)
        goto out;
    if (payload == NULL) {
        e = api_fail(r, API_ERR_MISSING_FIELD, "'payload' (base64url bytes) is required");
        goto out;
    }
    size_t plen = strlen(payload);
    bytes = malloc(plen / 4 * 3 + 3);
    if (bytes == NULL) {
        e = api_fail(r, API_ERR_INTERNAL, "out of memory");
        goto out;
    }
    if (jose_b64url_decode(payload, plen, bytes, plen / 4 * 3 + 3, &n) != 0) {
        e = api_fail(r, API_ERR_INVALID_BASE64URL,
                     "'payload' must be unpadded base64url (RFC 4648 section 5)");
        goto out;
    }
    out->bytes = bytes;
    out->len = n;
    bytes = NULL;
out:
    free(bytes);
    json_decref(body);
    return e;
}

void api_keys_sign_body_free(api_keys_sign_body *b)
{
    free(b->bytes);
    memset(b, 0, sizeof(*b));
}

api_err api_keys_sign(const api_req *q, api_resp *r)
{
    api_keys_sign_body b;
    api_err e = api_check_kid_scope(q, r, &q->kid);
    if (e != API_OK)
        return e;
    if ((e = api_keys_sign_parse(q, r, &b)) != API_OK)
        return e;
    if ((e = api_check_signing_key(q, r, &q->kid)) != API_OK)
        goto out;
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    sk_status st = kp_sign(q->env->kp, &q->kid, b.bytes, b.len, sig, &sig_len);
    if (st != SK_OK) {
        e = st == SK_ERR_KEY_NOT_FOUND ? api_sign_refused(q, r, &q->kid) : api_hsm_error(r, st);
        goto out;
    }
    char sig_b64[SK_SIG_MAX * 4 / 3 + 4], kid[2 * SK_KID_LEN + 1];
    jose_b64url_encode(sig, sig_len, sig_b64, sizeof(sig_b64));
    sk_kid_hex(&q->kid, kid);
    if (audit_signature(q->env->audit, kid, q->caller ? q->caller->id : NULL, b.bytes, b.len,
                        NULL) != 0) {
        e = api_fail(r, API_ERR_STORAGE, "the signature could not be recorded in the audit trail");
        goto out;
    }
    e = api_json(r, 200,
                 json_pack("{s:s, s:s, s:s}", "kid", kid, "alg", "RS256", "signature", sig_b64));
out:
    api_keys_sign_body_free(&b);
    return e;
}
