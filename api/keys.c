/* api: the key lifecycle (create, list, show, rotate, revoke) and raw RS256 signing. */
#include "api/api.h"

#include "appliance/common/metrics.h"
#include "appliance/core/reconcile.h"
#include "jose/jose.h"
#include "base/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define API_REASON_DEFAULT "unspecified"
#define API_SIGN_PAYLOAD_MAX (48 * 1024) /* decoded bytes; the body bound is 64 KiB */
#define API_CREATE_TRIES 4
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

/* Destroys a generated key whose row was never written; if the keeper cannot do it now,
 * it is done once the keeper answers again (reconcile.h). */
static void api_destroy_unrecorded(const api_env *env, const sk_kid *kid)
{
    reg_pending_drop(env->reg, kid);
    sk_status st = kp_destroy(env->kp, kid);
    if (st != SK_OK && st != SK_ERR_KEY_NOT_FOUND)
        rec_defer_destroy(kid);
}

/* Reserves a slot and generates a key pair of `bits` under a fresh random kid in the
 * token, filling *k (kid, state active, bits, label, created_at now, n_b64, e_b64) and
 * *pub. API_OK with one reservation held and the object in the token: the caller inserts
 * the row (reg_insert or reg_rotate, which consume the reservation) or destroys the object.
 * Otherwise nothing is held and the error says why. */
static api_err api_make_key(const api_req *q, api_resp *r, unsigned bits, const char *label,
                            reg_key *k, sk_pubkey *pub)
{
    if (reg_reserve(q->env->reg) != REG_OK)
        return api_fail(r, API_ERR_KEY_LIMIT_REACHED,
                        "the appliance holds %u keys in the token (active and retiring), its limit",
                        q->env->cfg->max_active_keys);
    memset(k, 0, sizeof(*k));
    sk_status st = SK_ERR_KEY_EXISTS;
    /* A random 128-bit kid collides only by accident of a broken RNG; retry anyway. */
    for (int i = 0; i < API_CREATE_TRIES && st == SK_ERR_KEY_EXISTS; i++) {
        if (getrandom(k->kid.b, sizeof(k->kid.b), 0) != sizeof(k->kid.b))
            continue;
        /* Pending first: the keeper generates only under a kid the registry holds as
         * pending (keeperd.h), and never under one that ever had a row. */
        reg_status ps = reg_pending_add(q->env->reg, &k->kid, q->now);
        if (ps == REG_ERR_EXISTS)
            continue;
        if (ps != REG_OK) {
            reg_unreserve(q->env->reg);
            return api_fail(r, API_ERR_STORAGE, "the key registry refused the new kid");
        }
        st = kp_generate(q->env->kp, &k->kid, bits, pub);
        if (st != SK_OK)
            reg_pending_drop(q->env->reg, &k->kid);
    }
    if (st != SK_OK) {
        /* The keeper died or went silent mid-generation (or past its deadline): the object
         * may exist, and its row never will. */
        if (st == SK_ERR_DEVICE || st == SK_ERR_TIMEOUT)
            rec_defer_destroy(&k->kid);
        reg_unreserve(q->env->reg);
        return api_hsm_error(r, st);
    }
    api_fault_point("after_generate");
    k->state = REG_ACTIVE;
    k->bits = pub->bits;
    k->created_at = q->now;
    snprintf(k->label, sizeof(k->label), "%s", label);
    if (jose_b64url_encode(pub->n, pub->n_len, k->n_b64, sizeof(k->n_b64)) == 0 ||
        jose_b64url_encode(pub->e, pub->e_len, k->e_b64, sizeof(k->e_b64)) == 0) {
        reg_unreserve(q->env->reg);
        api_destroy_unrecorded(q->env, &k->kid);
        return api_fail(r, API_ERR_INTERNAL, "public key does not fit");
    }
    return API_OK;
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
    reg_key k;
    sk_pubkey pub;
    if ((e = api_make_key(q, r, b.bits, b.label, &k, &pub)) != API_OK)
        return e;
    if (reg_insert(q->env->reg, &k) != REG_OK) {
        /* Never acknowledged: the key must not outlive the failed row. */
        reg_pending_drop(q->env->reg, &k.kid);
        kp_destroy(q->env->kp, &k.kid);
        return api_fail(r, API_ERR_STORAGE, "the key registry refused the new key");
    }
    api_publish_refresh(q->env);
    return api_json(r, 201, api_new_key_json(r, &k, &pub));
}

/* Why a key in state s cannot sign or be rotated: the 409 that names its state. */
static api_err api_state_error(api_resp *r, reg_state s)
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
    /* Checked before generating (a second of token time for RSA-2048), and again by
     * reg_rotate under the writer lock, since a DELETE or another rotation may win the
     * race meanwhile. */
    reg_key old;
    if (reg_get(q->env->reg, &q->kid, &old) != REG_OK)
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    if (old.state != REG_ACTIVE)
        return api_state_error(r, old.state);
    reg_key k, was, made;
    sk_pubkey pub;
    if ((e = api_make_key(q, r, old.bits, b.has_label ? b.label : old.label, &k, &pub)) != API_OK)
        return e;
    reg_status rs = reg_rotate(q->env->reg, &q->kid, &k, q->now + b.grace, &was, &made);
    if (rs != REG_OK) {
        /* Never acknowledged: the successor must not outlive the failed rotation. */
        api_destroy_unrecorded(q->env, &k.kid);
        if (rs == REG_ERR_STATE && reg_get(q->env->reg, &q->kid, &old) == REG_OK)
            return api_state_error(r, old.state);
        if (rs == REG_ERR_NOT_FOUND)
            return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
        if (rs == REG_ERR_LIMIT)
            return api_fail(r, API_ERR_KEY_LIMIT_REACHED, "the appliance holds %u keys, its limit",
                            q->env->cfg->max_active_keys);
        return api_fail(r, API_ERR_STORAGE, "the key registry refused the rotation");
    }
    api_publish_refresh(q->env);
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
    reg_key k;
    reg_status rs = api_revoke_key(q->env, &q->kid, b.reason, q->now, &k);
    if (rs == REG_ERR_NOT_FOUND)
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    if (rs != REG_OK)
        return api_fail(r, API_ERR_STORAGE, "the revocation could not be recorded");
    return api_json(r, 200, api_key_json(&k));
}

reg_status api_revoke_key(const api_env *env, const sk_kid *kid, const char *reason, int64_t now,
                          reg_key *out)
{
    /* Durable first, then published, then the private key object destroyed. The answer
     * does not wait for the destroy: once the row says revoked the keeper signs nothing
     * for the kid, so the object is already unusable, and a stalled token must not hold a
     * revocation's answer. The destroyer (reconcile.h) does it at once, or once the keeper
     * answers again, or reconcile at the next start. */
    reg_status rs = reg_revoke(env->reg, kid, reason, now, out);
    if (rs != REG_OK)
        return rs;
    api_publish_refresh(env);
    api_fault_point("after_revoke_commit");
    rec_defer_destroy(kid);
    return REG_OK;
}

/* Is kid allowed to sign? API_OK, or the error that says why not. */
api_err api_check_kid_scope(const api_req *q, api_resp *r, const sk_kid *kid)
{
    if (q->caller == NULL || q->caller->role != CRED_ROLE_SIGNER ||
        cred_may_use_kid(q->caller, kid))
        return API_OK;
    /* A successor inherits its predecessors' signers: an admin rotating a key must not cut
     * off the app servers scoped to it. Only backwards (a credential scoped to the new key
     * gains nothing on the old one, which signs nothing anyway), and bounded. */
    reg_key k;
    sk_kid cur = *kid;
    for (int i = 0;
         i < API_LINEAGE_MAX && reg_get(q->env->reg, &cur, &k) == REG_OK && k.has_predecessor;
         i++) {
        if (cred_may_use_kid(q->caller, &k.predecessor))
            return API_OK;
        cur = k.predecessor;
    }
    return api_fail(r, API_ERR_KID_NOT_ALLOWED, "this credential may not use this kid");
}

api_err api_check_signing_key(const api_req *q, api_resp *r, const sk_kid *kid)
{
    reg_key k;
    if (reg_is_active(q->env->reg, kid))
        return API_OK;
    if (reg_get(q->env->reg, kid, &k) != REG_OK)
        return api_fail(r, API_ERR_KEY_NOT_FOUND, "no key with this kid");
    if (k.state == REG_ACTIVE) /* inserted between the two reads */
        return API_OK;
    /* A registry key: its refusal is counted under its kid, also for a token request whose
     * kid came in the body (the server knows only the path's). */
    met_note_kid(kid);
    return api_state_error(r, k.state);
}

api_err api_sign_refused(const api_req *q, api_resp *r, const sk_kid *kid)
{
    reg_key k;
    if (reg_get(q->env->reg, kid, &k) == REG_OK && k.state != REG_ACTIVE)
        return api_state_error(r, k.state);
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
