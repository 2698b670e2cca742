/* api: the error table, strict JSON parsing and response helpers. See api.h. */
#include "api/api.h"

#include "appliance/store/sdb.h"

#include "jose/jose.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const api_err_info api_errors[API_ERR_COUNT_] = {
    [API_OK] = {200, "ok"},
    [API_ERR_BAD_REQUEST] = {400, "bad_request"},
    [API_ERR_NOT_FOUND] = {404, "not_found"},
    [API_ERR_METHOD_NOT_ALLOWED] = {405, "method_not_allowed"},
    [API_ERR_UNAUTHORIZED] = {401, "unauthorized"},
    [API_ERR_FORBIDDEN] = {403, "forbidden"},
    [API_ERR_REQUEST_TIMEOUT] = {408, "request_timeout"},
    [API_ERR_BODY_TOO_LARGE] = {413, "body_too_large"},
    [API_ERR_HEADERS_TOO_LARGE] = {431, "headers_too_large"},
    [API_ERR_UNSUPPORTED_MEDIA_TYPE] = {415, "unsupported_media_type"},
    [API_ERR_BAD_FRAMING] = {400, "bad_framing"},
    [API_ERR_HTTP_VERSION_NOT_SUPPORTED] = {505, "http_version_not_supported"},
    [API_ERR_UNSUPPORTED_CONTENT_ENCODING] = {415, "unsupported_content_encoding"},
    [API_ERR_INVALID_JSON] = {400, "invalid_json"},
    [API_ERR_INVALID_UTF8] = {400, "invalid_utf8"},
    [API_ERR_DUPLICATE_KEY] = {400, "duplicate_key"},
    [API_ERR_NOT_AN_OBJECT] = {400, "not_an_object"},
    [API_ERR_UNKNOWN_FIELD] = {400, "unknown_field"},
    [API_ERR_MISSING_FIELD] = {400, "missing_field"},
    [API_ERR_WRONG_TYPE] = {400, "wrong_type"},
    [API_ERR_OUT_OF_RANGE] = {400, "out_of_range"},
    [API_ERR_INVALID_KID] = {400, "invalid_kid"},
    [API_ERR_INVALID_BASE64URL] = {400, "invalid_base64url"},
    [API_ERR_INVALID_QUERY] = {400, "invalid_query"},
    [API_ERR_INVALID_LABEL] = {400, "invalid_label"},
    [API_ERR_INVALID_REASON] = {400, "invalid_reason"},
    [API_ERR_RESERVED_CLAIM] = {400, "reserved_claim"},
    [API_ERR_TTL_OUT_OF_RANGE] = {400, "ttl_out_of_range"},
    [API_ERR_KEY_NOT_FOUND] = {404, "key_not_found"},
    [API_ERR_KEY_REVOKED] = {409, "key_revoked"},
    [API_ERR_KEY_BROKEN] = {409, "key_broken"},
    [API_ERR_KEY_RETIRING] = {409, "key_retiring"},
    [API_ERR_KEY_LIMIT_REACHED] = {409, "key_limit_reached"},
    [API_ERR_NO_ACTIVE_KEY] = {409, "no_active_key"},
    [API_ERR_TOKEN_FULL] = {507, "token_full"},
    [API_ERR_HSM_BUSY] = {503, "hsm_busy"},
    [API_ERR_HSM_UNAVAILABLE] = {503, "hsm_unavailable"},
    [API_ERR_STORAGE] = {500, "storage_error"},
    [API_ERR_INTERNAL] = {500, "internal_error"},
    [API_ERR_UNAVAILABLE] = {503, "unavailable"},
    [API_ERR_RATE_LIMITED] = {429, "rate_limited"},
    [API_ERR_TTL_TOO_LONG] = {400, "ttl_too_long"},
    [API_ERR_KID_NOT_ALLOWED] = {403, "kid_not_allowed"},
    [API_ERR_INVALID_ROLE] = {400, "invalid_role"},
    [API_ERR_INVALID_CREDENTIAL_ID] = {400, "invalid_credential_id"},
    [API_ERR_CREDENTIAL_NOT_FOUND] = {404, "credential_not_found"},
    [API_ERR_LAST_ADMIN] = {409, "last_admin"},
    [API_ERR_TOO_MANY_SUBSCRIBERS] = {503, "too_many_subscribers"},
    [API_ERR_INVALID_LAST_EVENT_ID] = {400, "invalid_last_event_id"},
    [API_ERR_INVALID_ORIGIN] = {400, "invalid_origin"},
    [API_ERR_INVALID_TOKEN] = {400, "invalid_token"},
    [API_ERR_TOKEN_EXPIRED] = {409, "token_expired"},
    [API_ERR_TOKEN_NOT_YET_VALID] = {409, "token_not_yet_valid"},
    [API_ERR_TOKEN_REVOKED] = {409, "token_revoked"},
    [API_ERR_WRONG_ORIGIN] = {409, "wrong_origin"},
    [API_ERR_TOKEN_ALREADY_USED] = {409, "token_already_used"},
    [API_ERR_INVALID_JTI] = {400, "invalid_jti"},
    [API_ERR_TOKEN_NOT_FOUND] = {404, "token_not_found"},
    [API_ERR_TOKEN_NOT_OWNED] = {403, "token_not_owned"},
    [API_ERR_INVALID_STATUS_LIST] = {400, "invalid_status_list"},
    [API_ERR_STATUS_LIST_NOT_FOUND] = {404, "status_list_not_found"},
    [API_ERR_STATUS_LISTS_FULL] = {507, "status_lists_full"},
    [API_ERR_HSM_TIMEOUT] = {503, "hsm_timeout"},
    [API_ERR_STORAGE_UNAVAILABLE] = {503, "storage_unavailable"},
    [API_ERR_SIGNING_BUDGET_EXHAUSTED] = {503, "signing_budget_exhausted"},
    [API_ERR_CONFLICTING_FIELDS] = {400, "conflicting_fields"},
    [API_ERR_NBF_OUT_OF_RANGE] = {400, "nbf_out_of_range"},
    [API_ERR_ORIGIN_REQUIRED] = {409, "origin_required"},
    [API_ERR_WRONG_AUDIENCE] = {409, "wrong_audience"},
    [API_ERR_SUBJECT_REVOKED] = {409, "subject_revoked"},
    [API_ERR_KEY_SIZE_UNSUPPORTED] = {400, "key_size_unsupported"},
    [API_ERR_TOKEN_TOO_LARGE] = {400, "token_too_large"},
};

const api_err_info *api_err_table(api_err e)
{
    if ((unsigned)e >= API_ERR_COUNT_ || api_errors[e].code == NULL)
        e = API_ERR_INTERNAL;
    return &api_errors[e];
}

api_err api_err_from_status(int status)
{
    /* The first generic entry with this status: the specific ones share statuses. */
    static const api_err generic[] = {API_ERR_BAD_REQUEST,        API_ERR_UNAUTHORIZED,
                                      API_ERR_FORBIDDEN,          API_ERR_NOT_FOUND,
                                      API_ERR_METHOD_NOT_ALLOWED, API_ERR_REQUEST_TIMEOUT,
                                      API_ERR_BODY_TOO_LARGE,     API_ERR_UNSUPPORTED_MEDIA_TYPE,
                                      API_ERR_HEADERS_TOO_LARGE,  API_ERR_UNAVAILABLE};
    for (size_t i = 0; i < sizeof(generic) / sizeof(generic[0]); i++)
        if (api_errors[generic[i]].http_status == status)
            return generic[i];
    if (status == 505) /* CivetWeb's answer to any HTTP version but 1.0 and 1.1 */
        return API_ERR_HTTP_VERSION_NOT_SUPPORTED;
    return status >= 500 ? API_ERR_INTERNAL : API_ERR_BAD_REQUEST;
}

api_err api_fail(api_resp *r, api_err e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof(r->errmsg), fmt, ap);
    va_end(ap);
    /* A store failed because another connection held the database past the busy timeout,
     * or the store could not reach its database (sdb.h): worth a retry, so 503 with
     * Retry-After rather than 500. */
    if (e == API_ERR_STORAGE && sdb_gave_up()) {
        api_header(r, "Retry-After: %u", API_HSM_RETRY_AFTER);
        snprintf(r->errmsg, sizeof(r->errmsg), "the database stayed locked: retry later");
        return API_ERR_STORAGE_UNAVAILABLE;
    }
    return e;
}

api_err api_json(api_resp *r, int status, json_t *j)
{
    if (j == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    free(r->body);
    r->body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (r->body == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    r->len = strlen(r->body);
    r->status = status;
    return API_OK;
}

void api_header(api_resp *r, const char *fmt, ...)
{
    size_t used = strlen(r->headers);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->headers + used, sizeof(r->headers) - used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n + 2 >= sizeof(r->headers) - used) {
        r->headers[used] = '\0'; /* never send half a header */
        return;
    }
    memcpy(r->headers + used + n, "\r\n", 3);
}

/* 1 when text nests [ or { deeper than limit (counted outside strings). jansson refuses
 * only past 2,048 levels, and its parser recurses once per level: about 250 bytes of stack
 * each, so a 60 KB body of '[' touched half a megabyte of a worker's stack, pages the
 * thread keeps for its life (RSS that never came back, measured by tests/hostile). Text
 * that is not JSON at all is jansson's to refuse. */
static int api_json_too_deep(const char *text, size_t len, int limit)
{
    int depth = 0, in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (in_string) {
            if (ch == '\\')
                i++; /* the escaped byte cannot end the string */
            else if (ch == '"')
                in_string = 0;
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == '[' || ch == '{') {
            if (++depth > limit)
                return 1;
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return 0;
}

api_err api_parse_object(const api_req *q, api_resp *r, const char *const allowed[], int empty_ok,
                         json_t **out)
{
    *out = NULL;
    if (q->body == NULL || q->body_len == 0) {
        if (!empty_ok)
            return api_fail(r, API_ERR_INVALID_JSON, "a JSON object body is required");
        *out = json_object();
        return *out ? API_OK : api_fail(r, API_ERR_INTERNAL, "out of memory");
    }
    if (api_json_too_deep(q->body, q->body_len, API_JSON_DEPTH_MAX))
        return api_fail(r, API_ERR_INVALID_JSON, "JSON nests deeper than %d levels",
                        API_JSON_DEPTH_MAX);
    json_error_t je;
    json_t *j = json_loadb(q->body, q->body_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (j == NULL) {
        switch (json_error_code(&je)) {
        case json_error_duplicate_key:
            return api_fail(r, API_ERR_DUPLICATE_KEY, "duplicate key in JSON body: %s", je.text);
        case json_error_invalid_utf8:
            return api_fail(r, API_ERR_INVALID_UTF8, "JSON body is not valid UTF-8");
        case json_error_null_character:
        case json_error_null_byte_in_key:
            return api_fail(r, API_ERR_INVALID_JSON, "NUL bytes are not allowed in JSON");
        default:
            return api_fail(r, API_ERR_INVALID_JSON, "invalid JSON at byte %d: %s", je.position,
                            je.text);
        }
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return api_fail(r, API_ERR_NOT_AN_OBJECT, "the body must be a JSON object");
    }
    const char *key;
    json_t *value;
    json_object_foreach(j, key, value)
    {
        size_t i = 0;
        while (allowed[i] != NULL && strcmp(allowed[i], key) != 0)
            i++;
        if (allowed[i] == NULL) {
            api_err e = api_fail(r, API_ERR_UNKNOWN_FIELD, "unknown field '%.64s'", key);
            json_decref(j);
            return e;
        }
    }
    *out = j;
    return API_OK;
}

api_err api_get_int(json_t *o, const char *name, int64_t lo, int64_t hi, int64_t *v, api_resp *r)
{
    json_t *f = json_object_get(o, name);
    if (f == NULL)
        return API_OK;
    if (!json_is_integer(f))
        return api_fail(r, API_ERR_WRONG_TYPE, "'%s' must be an integer", name);
    json_int_t x = json_integer_value(f);
    if (x < lo || x > hi)
        return api_fail(r, API_ERR_OUT_OF_RANGE, "'%s' must be between %lld and %lld", name,
                        (long long)lo, (long long)hi);
    *v = x;
    return API_OK;
}

api_err api_get_string(json_t *o, const char *name, size_t max_len, const char **v, api_resp *r)
{
    json_t *f = json_object_get(o, name);
    if (f == NULL)
        return API_OK;
    if (!json_is_string(f))
        return api_fail(r, API_ERR_WRONG_TYPE, "'%s' must be a string", name);
    if (json_string_length(f) > max_len)
        return api_fail(r, API_ERR_OUT_OF_RANGE, "'%s' is longer than %zu bytes", name, max_len);
    *v = json_string_value(f);
    return API_OK;
}

json_t *api_key_json(const reg_key *k)
{
    char kid[2 * SK_KID_LEN + 1];
    sk_kid_hex(&k->kid, kid);
    json_t *j = json_pack("{s:s, s:s, s:i, s:s, s:I, s:{s:s, s:s, s:s, s:s, s:s, s:s}}", "kid", kid,
                          "state", reg_state_name(k->state), "bits", (int)k->bits, "label",
                          k->label, "created_at", (json_int_t)k->created_at, "jwk", "kty", "RSA",
                          "use", "sig", "alg", "RS256", "kid", kid, "n", k->n_b64, "e", k->e_b64);
    if (j != NULL && k->state == REG_REVOKED) {
        json_object_set_new(j, "revoked_at", json_integer(k->revoked_at));
        json_object_set_new(j, "reason", json_string(k->reason));
        json_object_set_new(j, "revocation_seq", json_integer((json_int_t)k->revocation_seq));
    }
    /* retire_at only while it is a promise: once revoked (at it, or earlier by DELETE) the
     * revocation fields say what happened. The lineage stays. */
    if (j != NULL && k->state == REG_RETIRING)
        json_object_set_new(j, "retire_at", json_integer(k->retire_at));
    char link[2 * SK_KID_LEN + 1];
    if (j != NULL && k->has_successor) {
        sk_kid_hex(&k->successor, link);
        json_object_set_new(j, "successor", json_string(link));
    }
    if (j != NULL && k->has_predecessor) {
        sk_kid_hex(&k->predecessor, link);
        json_object_set_new(j, "predecessor", json_string(link));
    }
    /* What the token holds, read back, not what was asked for: a module that cannot make
     * a sign-only key (tpm2-pkcs11) says so here (SECURITY.md). Absent when never read. */
    if (j != NULL && (k->token_attrs & SK_ATTR_READ))
        json_object_set_new(j, "token_attributes",
                            json_pack("{s:b, s:b, s:b, s:b}", "sensitive",
                                      (k->token_attrs & SK_ATTR_SENSITIVE) != 0, "extractable",
                                      (k->token_attrs & SK_ATTR_EXTRACTABLE) != 0,
                                      "never_extractable",
                                      (k->token_attrs & SK_ATTR_NEVER_EXTRACTABLE) != 0,
                                      "sign_only", (k->token_attrs & SK_ATTR_SIGN_ONLY) != 0));
    return j;
}

int api_parse_decimal(const char *text, size_t max_digits, uint64_t *out)
{
    size_t n = text ? strnlen(text, max_digits + 1) : 0;
    if (n == 0 || n > max_digits || strspn(text, "0123456789") != n)
        return -1;
    *out = strtoull(text, NULL, 10);
    return 0;
}

json_t *api_service_jwk(const sk_pubkey *pub, const char *kid, const char *use)
{
    json_t *jwk = jose_jwk_rsa(pub->n, pub->n_len, pub->e, pub->e_len, kid);
    if (jwk != NULL)
        json_object_set_new(jwk, "use", json_string(use));
    return jwk;
}

api_err api_service_key(const api_req *q, api_resp *r, kp_svc svc, const char *kid, const char *use,
                        const char *typ)
{
    sk_pubkey pub;
    sk_status st = kp_svc_public_key(q->env->kp, svc, &pub);
    if (st != SK_OK)
        return api_hsm_error(r, st);
    json_t *jwk = api_service_jwk(&pub, kid, use);
    char *pem = jose_rsa_public_pem(pub.n, pub.n_len, pub.e, pub.e_len);
    json_t *doc = jwk && pem ? json_pack("{s:s, s:O, s:s, s:s}", "kid", kid, "jwk", jwk, "pem", pem,
                                         "alg", "RS256")
                             : NULL;
    json_decref(jwk);
    free(pem);
    if (doc == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    if (typ != NULL)
        json_object_set_new(doc, "typ", json_string(typ));
    return api_json(r, 200, doc);
}
