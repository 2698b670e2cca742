/*
 * api: the HTTP API's resources (keys, signing and tokens, publication, health), JSON in
 * and out. appliance/front/server.c owns CivetWeb, routing and authentication; it turns each
 * request into an api_req (body read and bounded, kid parsed) and calls one handler here.
 *
 * Errors: every handler returns an api_err. api_err_table() is the one place an error
 * becomes an HTTP status and a stable snake_case code; handlers only add a message.
 *
 * What the module owns: nothing but the answers. Key lifecycle is appliance/core/keys.h
 * (ck_), publication appliance/core/publish.h (pub_, a handle in api_env); the rest is
 * reached through the registry (reg_), the credentials (cred_), the token state (tks_) and
 * the keeper (kp_).
 */
#ifndef API_API_H
#define API_API_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "appliance/common/config.h"
#include "appliance/core/keys.h"
#include "appliance/store/credentials.h"
#include "appliance/kproto/keeper.h"
#include "appliance/core/publish.h"
#include "appliance/store/registry.h"
#include "appliance/store/tokstate.h"

/* The audit writer and the readiness probe are only handed through api_env here; the
 * handlers that call them include their headers (core/audit.h, core/probe.h). */
typedef struct audit audit;
typedef struct prb prb;
typedef struct wch wch;

#define API_BODY_MAX (64 * 1024)
/* Deepest nesting of [ and { a JSON body may have; deeper is invalid_json before jansson
 * sees it (its parser recurses per level, and a worker keeps the stack it touched). Above
 * the claims' own bound (tokens.c) plus the body object around them. */
#define API_JSON_DEPTH_MAX 32
#define API_ERRMSG_MAX 256
#define API_HEADERS_MAX 768 /* the console's answers carry a CSP (front/console.h) */
/* Seconds a 503 of the token's (hsm_busy, hsm_unavailable, hsm_timeout) or of the
 * database's (storage_unavailable) tells the client to wait before retrying. */
#define API_HSM_RETRY_AFTER 1

typedef enum {
    API_OK = 0,
    API_ERR_BAD_REQUEST,
    API_ERR_NOT_FOUND,
    API_ERR_METHOD_NOT_ALLOWED,
    API_ERR_UNAUTHORIZED,
    API_ERR_FORBIDDEN,
    API_ERR_REQUEST_TIMEOUT,
    API_ERR_BODY_TOO_LARGE,
    API_ERR_HEADERS_TOO_LARGE,
    API_ERR_UNSUPPORTED_MEDIA_TYPE,
    /* HTTP framing the front refuses (SECURITY.md, "HTTP framing"). */
    API_ERR_BAD_FRAMING,
    API_ERR_HTTP_VERSION_NOT_SUPPORTED,
    API_ERR_UNSUPPORTED_CONTENT_ENCODING,
    API_ERR_INVALID_JSON,
    API_ERR_INVALID_UTF8,
    API_ERR_DUPLICATE_KEY,
    API_ERR_NOT_AN_OBJECT,
    API_ERR_UNKNOWN_FIELD,
    API_ERR_MISSING_FIELD,
    API_ERR_WRONG_TYPE,
    API_ERR_OUT_OF_RANGE,
    API_ERR_INVALID_KID,
    API_ERR_INVALID_BASE64URL,
    API_ERR_INVALID_QUERY,
    API_ERR_INVALID_LABEL,
    API_ERR_INVALID_REASON,
    API_ERR_RESERVED_CLAIM,
    API_ERR_TTL_OUT_OF_RANGE,
    API_ERR_KEY_NOT_FOUND,
    API_ERR_KEY_REVOKED,
    API_ERR_KEY_BROKEN,
    API_ERR_KEY_RETIRING,
    API_ERR_KEY_LIMIT_REACHED,
    API_ERR_NO_ACTIVE_KEY,
    API_ERR_TOKEN_FULL,
    API_ERR_HSM_BUSY,
    API_ERR_HSM_UNAVAILABLE,
    API_ERR_STORAGE,
    API_ERR_INTERNAL,
    API_ERR_UNAVAILABLE,
    API_ERR_RATE_LIMITED,
    API_ERR_TTL_TOO_LONG,
    API_ERR_KID_NOT_ALLOWED,
    API_ERR_INVALID_ROLE,
    API_ERR_INVALID_CREDENTIAL_ID,
    API_ERR_CREDENTIAL_NOT_FOUND,
    API_ERR_LAST_ADMIN,
    API_ERR_TOO_MANY_SUBSCRIBERS,
    API_ERR_INVALID_LAST_EVENT_ID,
    /* Token-level control (single-use and revocable tokens, origin binding). */
    API_ERR_INVALID_ORIGIN,
    API_ERR_INVALID_TOKEN,
    API_ERR_TOKEN_EXPIRED,
    API_ERR_TOKEN_NOT_YET_VALID,
    API_ERR_TOKEN_REVOKED,
    API_ERR_WRONG_ORIGIN,
    API_ERR_TOKEN_ALREADY_USED,
    API_ERR_INVALID_JTI,
    API_ERR_TOKEN_NOT_FOUND,
    API_ERR_TOKEN_NOT_OWNED,
    API_ERR_INVALID_STATUS_LIST,
    API_ERR_STATUS_LIST_NOT_FOUND,
    API_ERR_STATUS_LISTS_FULL,
    API_ERR_HSM_TIMEOUT,         /* the keeper missed keeper_timeout_ms (Retry-After) */
    API_ERR_STORAGE_UNAVAILABLE, /* the database stayed locked past its busy timeout */
    /* Public routes that make the token sign (the feed, status lists) are budgeted. */
    API_ERR_SIGNING_BUDGET_EXHAUSTED,
    API_ERR_TOKEN_TOO_LARGE,    /* the token's signing input exceeds KP_SIGN_MAX */
    API_ERR_CONFLICTING_FIELDS, /* two fields that exclude each other: origin and origins,
                                   ttl and exp */
    API_ERR_NBF_OUT_OF_RANGE,   /* nbf before now - API_NBF_LEEWAY, or not before exp */
    API_ERR_ORIGIN_REQUIRED,    /* redeem: the token is origin-bound and no origin was given */
    API_ERR_WRONG_AUDIENCE,     /* redeem: aud given and the token is for another (or none) */
    API_ERR_SUBJECT_REVOKED,    /* redeem: a subject revocation covers the token's sub and iat */
    /* The token cannot make a key of the size asked for (its mechanism's range). */
    API_ERR_KEY_SIZE_UNSUPPORTED,
    API_ERR_COUNT_
} api_err;

typedef struct {
    int http_status;
    const char *code;
} api_err_info;

/* The status and code of e (API_ERR_INTERNAL's for out-of-range values). */
const api_err_info *api_err_table(api_err e);

/* The error for an HTTP status CivetWeb produced itself (malformed request line, headers
 * too large, timeouts): the inverse of the table, for the statuses it can produce. */
api_err api_err_from_status(int status);

/* Process-wide state the handlers use; set up once by the server before it serves. */
typedef struct {
    const cfg *cfg;
    reg *reg;
    kp *kp;
    cred_store *creds;
    audit *audit; /* the trail's writer; NULL only in tests that do without */
    tks *tks;     /* status lists and redeemed jtis (tokstate.h) */
    prb *probe;   /* readiness (probe.h); NULL: /readyz answers 503 */
    pub *pub;     /* the published documents (publish.h); NULL only where no route serves them */
    wch *watch;   /* a cluster node's listener (watch.h); NULL: one node, always in step */
} api_env;

typedef struct {
    const api_env *env;
    const char *method;
    const char *query; /* after '?', or NULL */
    sk_kid kid;        /* valid when has_kid */
    int has_kid;
    const char *id; /* the path's {id}, {jti} or {n} segment, or NULL */
    /* The authenticated caller; NULL on public routes. The server has checked its role
     * against the route; handlers check what depends on the request (kids, max_ttl). */
    const cred_record *caller;
    const char *body; /* NUL-terminated, at most API_BODY_MAX bytes; NULL if none */
    size_t body_len;
    const char *if_none_match; /* the header, or NULL */
    int64_t now;
} api_req;

typedef struct {
    int status; /* 2xx/3xx; for errors the server uses api_err_table */
    char *body; /* malloc'd, or borrowed from doc; api_resp_free releases it */
    size_t len;
    void *doc;                     /* a shared cached document body points into, or NULL */
    int wipe;                      /* the body holds a secret: wiped before it is freed */
    int borrowed;                  /* body points into constant data: never freed */
    char headers[API_HEADERS_MAX]; /* extra header lines, each ending in \r\n */
    char errmsg[API_ERRMSG_MAX];
} api_resp;

/* Records a message for the error e and returns e: `return api_fail(r, API_ERR_X, ...)`. */
api_err api_fail(api_resp *r, api_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets r's body to the compact serialisation of j (consumed) and status to status. */
api_err api_json(api_resp *r, int status, json_t *j);

/* Appends one header line ("Name: value") to r. */
void api_header(api_resp *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict body parsing: the body must be a JSON object (duplicate keys, invalid UTF-8 and
 * trailing bytes rejected) whose every key is in allowed (NULL-terminated). An empty body
 * gives an empty object when empty_ok. On success *out owns a reference. */
api_err api_parse_object(const api_req *q, api_resp *r, const char *const allowed[], int empty_ok,
                         json_t **out);

/* Typed field readers: absent fields keep the default and return API_OK. */
api_err api_get_int(json_t *o, const char *name, int64_t lo, int64_t hi, int64_t *v, api_resp *r);
api_err api_get_string(json_t *o, const char *name, size_t max_len, const char **v, api_resp *r);

/* The JSON form of a key row: kid, state, bits, label, created_at, and when revoked
 * revoked_at and reason, when retiring retire_at, successor and predecessor when the key
 * has them, plus the public JWK. */
json_t *api_key_json(const reg_key *k);

/* API_OK when kid may sign now, else key_not_found, key_revoked, key_broken or
 * key_retiring (rotated: its successor signs now). */
api_err api_check_signing_key(const api_req *q, api_resp *r, const sk_kid *kid);

/* The answer to ck_signing_state's cs and state for kid (keys.h): API_OK, key_not_found,
 * or the state's 409 (counted under kid in the metrics). */
api_err api_signing_refusal(api_resp *r, const sk_kid *kid, ck_status cs, reg_state state);

/* Why a key in state s cannot sign or be rotated: the 409 that names its state
 * (key_revoked, key_retiring, key_broken). */
api_err api_key_state_error(api_resp *r, reg_state s);

/* kp_sign answered SK_ERR_KEY_NOT_FOUND for kid: it changed state since
 * api_check_signing_key (rotated, revoked; the keeper checks the registry itself), or its
 * object is gone. The state's own 409 (key_retiring, ...), else key_revoked. */
api_err api_sign_refused(const api_req *q, api_resp *r, const sk_kid *kid);

/* A keeper failure as the API's error (key_not_found, token_full, hsm_busy, ...). */
api_err api_hsm_error(api_resp *r, sk_status st);

/* API_OK when the caller may use kid (ck_may_use: an admin or auditor reaching a key
 * route, or a signer whose scope holds kid or one of kid's predecessors), else
 * kid_not_allowed (403). */
api_err api_check_kid_scope(const api_req *q, api_resp *r, const sk_kid *kid);

/* ---- Request bodies: bytes -> validated struct ------------------------------------------
 * Each handler that takes a body first turns it into one of these, then acts on the struct
 * alone. A parse reads q->body, q->body_len, q->now, q->caller and q->env->cfg and nothing
 * else (no registry, keeper, token or audit: tests/fuzz/fuzz_requests.c calls them with
 * those NULL). API_OK with *out filled, or the error the handler returns as it is (the
 * message in r); *out is then zeroed and needs no release. A struct that holds a reference
 * or heap bytes has a _free, safe on a zeroed struct and twice.
 *
 *   api_keys_create_body b;
 *   if ((e = api_keys_create_parse(q, r, &b)) != API_OK)
 *       return e;
 *   ... b.bits, b.label ... */
#define API_LABEL_MAX 128 /* bytes of a key's label, without the NUL */
#define API_SUB_MAX 256   /* bytes of a token's sub, without the NUL */

/* POST /v1/keys {"bits", "label"}: bits 2048, 3072 or 4096 (default_key_bits when absent),
 * label printable ASCII ("" when absent). */
typedef struct {
    unsigned bits;
    char label[API_LABEL_MAX + 1];
} api_keys_create_body;
api_err api_keys_create_parse(const api_req *q, api_resp *r, api_keys_create_body *out);

/* POST /v1/keys/{kid}/rotate {"grace_seconds", "label"}: grace 0..a year (the configured
 * default when absent); a printable label, or has_label 0 (the old key's label). */
typedef struct {
    int64_t grace;
    int has_label;
    char label[API_LABEL_MAX + 1];
} api_keys_rotate_body;
api_err api_keys_rotate_parse(const api_req *q, api_resp *r, api_keys_rotate_body *out);

/* DELETE /v1/keys/{kid} {"reason"}: non-empty printable ASCII, "unspecified" when absent. */
typedef struct {
    char reason[REG_REASON_MAX + 1];
} api_keys_revoke_body;
api_err api_keys_revoke_parse(const api_req *q, api_resp *r, api_keys_revoke_body *out);

/* POST /v1/keys/{kid}/sign {"payload"}: the decoded bytes of the required base64url
 * payload (len may be 0), malloc'd. */
typedef struct {
    uint8_t *bytes;
    size_t len;
} api_keys_sign_body;
api_err api_keys_sign_parse(const api_req *q, api_resp *r, api_keys_sign_body *out);
void api_keys_sign_body_free(api_keys_sign_body *b);

/* POST /v1/tokens {"kid", "sub", "ttl", "exp", "nbf", "claims", "single_use", "revocable",
 * "aud", "origin", "origins"}: at most one of ttl and exp (exp a Unix time: ttl = exp -
 * q->now); ttl within the configured bounds and the caller's max_ttl (the default clipped
 * to it when absent), exp = q->now + ttl, nbf (-1 when absent) in [q->now -
 * API_NBF_LEEWAY, exp), claims (NULL when absent; a reference) an object of at most 16
 * levels naming no reserved claim (nor aud when aud is given), kid well formed when
 * given, aud printable ASCII, origin passing cfg_origin_ok, or instead of it origins: 1 to
 * API_ORIGINS_MAX distinct origins each passing it (n_origins 0 when absent). */
#define API_AUD_MAX 256    /* bytes of a token's aud, without the NUL */
#define API_ORIGINS_MAX 16 /* origins one token may be bound to */
#define API_NBF_LEEWAY 300 /* seconds an nbf may lie in the past: callers' clock skew */
typedef struct {
    int has_kid;
    sk_kid kid;
    int has_sub;
    char sub[API_SUB_MAX + 1];
    int64_t ttl, nbf, exp;
    json_t *claims;
    int single_use, revocable;
    int has_aud, has_origin;
    char aud[API_AUD_MAX + 1];
    char origin[CFG_ORIGIN_MAX + 1];
    size_t n_origins;
    char origins[API_ORIGINS_MAX][CFG_ORIGIN_MAX + 1];
} api_tokens_mint_body;
api_err api_tokens_mint_parse(const api_req *q, api_resp *r, api_tokens_mint_body *out);
void api_tokens_mint_body_free(api_tokens_mint_body *b);

/* POST /v1/tokens/redeem {"token", "origin", "aud"}: the token (required) at most
 * API_TOKEN_MAX bytes, copied; origin passing cfg_origin_ok, or has_origin 0; aud 1 to
 * API_AUD_MAX printable ASCII, or has_aud 0. Nothing about the token
 * is checked here but its size and type: that needs the registry and the state. */
#define API_TOKEN_MAX 16384
typedef struct {
    char *token; /* malloc'd */
    size_t token_len;
    int has_origin, has_aud;
    char origin[CFG_ORIGIN_MAX + 1];
    char aud[API_AUD_MAX + 1];
} api_tokens_redeem_body;
api_err api_tokens_redeem_parse(const api_req *q, api_resp *r, api_tokens_redeem_body *out);
void api_tokens_redeem_body_free(api_tokens_redeem_body *b);

/* POST /v1/subjects/revoke {"sub", "before"}: sub 1 to API_SUB_MAX bytes (required),
 * before a Unix time 1..q->now (q->now when absent: every token of sub minted until now). */
typedef struct {
    char sub[API_SUB_MAX + 1];
    int64_t before;
} api_subjects_revoke_body;
api_err api_subjects_revoke_parse(const api_req *q, api_resp *r, api_subjects_revoke_body *out);

/* POST /v1/credentials {"role", "label", "kids", "max_ttl", "client_subject"}: every field
 * bounded and well formed; kids are distinct but not yet known to exist (the handler asks
 * the registry). After an error in 'kids', n_kids counts the well-formed kids before the
 * bad one, so that the handler can still report an unknown kid that comes first in the
 * list (out is not zeroed then). */
typedef struct {
    cred_role role;
    int has_label, has_subject;
    char label[CRED_LABEL_MAX + 1];
    char client_subject[CRED_SUBJECT_MAX + 1];
    int all_kids;
    sk_kid kids[CRED_KIDS_MAX];
    size_t n_kids;
    unsigned max_ttl;
} api_credentials_create_body;
api_err api_credentials_create_parse(const api_req *q, api_resp *r,
                                     api_credentials_create_body *out);

/* DELETE /v1/credentials/{id}: no fields, but an empty object or no body at all. */
api_err api_credentials_revoke_parse(const api_req *q, api_resp *r);

/* Handlers. Each is called with a parsed request and fills r or returns an error. */
api_err api_keys_create(const api_req *q, api_resp *r);
api_err api_keys_list(const api_req *q, api_resp *r);
api_err api_keys_get(const api_req *q, api_resp *r);
api_err api_keys_revoke(const api_req *q, api_resp *r);
api_err api_keys_rotate(const api_req *q, api_resp *r);
api_err api_keys_sign(const api_req *q, api_resp *r);
api_err api_tokens_mint(const api_req *q, api_resp *r);
/* POST /v1/tokens/redeem (redeemer): checks a token online and consumes it when it is
 * single-use. DELETE /v1/tokens/{jti} (admin, or the signer that minted it): revokes one
 * revocable token. GET /v1/status-lists/{n}: the signed status list (api/publish.c). */
api_err api_tokens_redeem(const api_req *q, api_resp *r);
api_err api_tokens_revoke(const api_req *q, api_resp *r);
api_err api_subjects_revoke(const api_req *q, api_resp *r);
api_err api_status_list(const api_req *q, api_resp *r);
#define API_STATUS_LIST_TYP "statuslist+jwt"
#define API_STATUS_LIST_MEDIA_TYPE "application/" API_STATUS_LIST_TYP
/* A token revocation as the event stream and DELETE /v1/tokens/{jti} carry it: {"seq",
 * "jti", "list", "idx", "uri", "revoked_at"}. A new reference, NULL when out of memory. */
json_t *api_token_revocation_json(const cfg *c, const tks_revocation *rv);
api_err api_jwks(const api_req *q, api_resp *r);
api_err api_revocations(const api_req *q, api_resp *r);
/* The revocation list as a compact JWS signed by the publication key (keeper.h), for
 * verifiers that fetch it through caches: header KP_PUBLISH_HEADER, payload {"iss", "seq",
 * "after", "iat", "exp", "ttl", "revoked"}. Served as API_FEED_MEDIA_TYPE. */
api_err api_revocations_feed(const api_req *q, api_resp *r);
/* The publication key: {"kid", "alg", "typ", "jwk", "pem"}, for operators to pin. */
/* A revocation sequence number as clients send it (?after=, Last-Event-ID): at most this
 * many decimal digits. */
#define API_SEQ_DIGITS_MAX 15

/* text is 1..max_digits decimal digits and nothing else: 0 and *out, else -1 (*out
 * untouched). max_digits <= 18, so the value fits in int64. */
int api_parse_decimal(const char *text, size_t max_digits, uint64_t *out);

/* A service key's JWK with its use ("sig" for the audit key, API_PUBLICATION_USE for the
 * publication key). A new reference, NULL when out of memory. */
json_t *api_service_jwk(const sk_pubkey *pub, const char *kid, const char *use);

/* A service key's public half as {"kid", "alg", "jwk" (with use), "pem"} and, when typ is
 * not NULL, the "typ" of the documents it signs: GET /v1/audit/key, /v1/revocations/key. */
api_err api_service_key(const api_req *q, api_resp *r, kp_svc svc, const char *kid, const char *use,
                        const char *typ);
api_err api_revocations_key(const api_req *q, api_resp *r);
#define API_FEED_TYP "kid-revocation+jwt" /* its JWS typ (KP_PUBLISH_HEADER's) */
#define API_FEED_MEDIA_TYPE "application/" API_FEED_TYP
/* The JWKS `use` of the publication key: its own, so no verifier takes it for a token's. */
#define API_PUBLICATION_USE "kid-revocation"
api_err api_healthz(const api_req *q, api_resp *r);
/* GET /metrics: the Prometheus text exposition (appliance/common/metrics.h), with the gauges
 * sampled now (sessions, keys by state, revocation sequence, audit lag). */
api_err api_metrics(const api_req *q, api_resp *r);
api_err api_readyz(const api_req *q, api_resp *r);
/* A credential as GET /v1/credentials/{id} shows it: {"id", "role", "label", "state",
 * "created_at"}, a signer's "kids" ("all" or a list) and "max_ttl", "client_subject" and
 * "revoked_at" when set; never its secret or hash. A new reference, NULL when out of memory. */
json_t *api_credential_json(const cred_record *c);
api_err api_credentials_create(const api_req *q, api_resp *r);
api_err api_credentials_list(const api_req *q, api_resp *r);
api_err api_credentials_get(const api_req *q, api_resp *r);
api_err api_credentials_revoke(const api_req *q, api_resp *r);
api_err api_audit_list(const api_req *q, api_resp *r);
api_err api_audit_export(const api_req *q, api_resp *r);
api_err api_audit_key(const api_req *q, api_resp *r);

/* Does an If-None-Match header value name etag (quotes included), weakly or not, or "*"? */
int api_etag_matches(const char *inm, const char *etag);

/* Releases r's body (frees it, drops its reference on a cached document, or leaves it when
 * borrowed). */
void api_resp_free(api_resp *r);

#endif
