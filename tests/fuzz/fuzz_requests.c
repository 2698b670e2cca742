/*
 * fuzz_requests: libFuzzer target for the HTTP API's request-body parsers (the _parse
 * functions of api/api.h: bytes -> validated struct, before a handler acts). Input: one
 * selector byte, then the body as the server hands it over (NUL-terminated, at most
 * API_BODY_MAX bytes). The selector's low three bits pick the body:
 *   0 POST /v1/keys        1 POST /v1/keys/{kid}/rotate   2 DELETE /v1/keys/{kid}
 *   3 POST /v1/keys/{kid}/sign   4 POST /v1/tokens   5 POST /v1/credentials
 *   6 DELETE /v1/credentials/{id}   7 POST /v1/tokens/redeem, or with bit 6 set
 *   POST /v1/subjects/revoke
 * bit 3 makes the caller a signer with its own max_ttl (600 s), bit 4 sets tls_client_ca
 * (so client_subject is allowed). Bit 5 instead makes the input a request head for the front's
 * framing check (srv_check_head, SECURITY.md "HTTP framing"): one line each, the method, the
 * HTTP version ("1.1"), then "name: value" fields, split as CivetWeb splits them. The environment
 * has a configuration and nothing else: registry, keeper, credential store and audit are NULL, so a
 * parse that reached for any of them would crash here. Invariants, beyond the sanitizers (a head:
 * an acceptance has exactly one framing, no body on GET or HEAD, and no content coding on POST or
 * DELETE; a refusal is 400 bad_framing or 415 unsupported_content_encoding with a message):
 *   - a refusal is an error of the table with a message, a 4xx (or internal_error, which
 *     only running out of memory gives), and leaves the struct zeroed (credentials: but for
 *     the well-formed kids before a bad one);
 *   - an acceptance holds only what the handler may act on: the bounds the API documents,
 *     and for a signature payload bytes that are exactly what the body's base64url says.
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_requests, seeds tests/fuzz/corpus/requests/,
 * dictionary tests/fuzz/requests.dict); its seeds and regression inputs are replayed by
 * `make test` (build/tests/test_fuzz_requests, tests/fuzz/replay.c).
 */
#include "api/api.h"
#include "appliance/front/server.h"
#include "jose/jose.h"

#include "civetweb.h"

#include <stdint.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1700000000
#define SIGNER_MAX_TTL 600

static cfg conf, conf_mtls;
static api_env env, env_mtls;
static cred_record signer;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_requests: %s\n", what);
        abort();
    }
}

static int all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return 0;
    return 1;
}

static int printable(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static void check_refusal(api_err e, const api_resp *r)
{
    check(e > API_OK && e < API_ERR_COUNT_, "error outside the table");
    const api_err_info *info = api_err_table(e);
    check(info->http_status >= 400 && (info->http_status < 500 || e == API_ERR_INTERNAL),
          "a body was refused with a status other than 4xx");
    check(r->errmsg[0] != '\0', "a refusal without a message");
    check(r->status == 0 && r->body == NULL, "a parse wrote a response");
}

/* The body's "payload" string, as jansson reads it (the bytes must be its decoding). */
static void check_sign_payload(const api_req *q, const api_keys_sign_body *b)
{
    json_t *j = json_loadb(q->body, q->body_len, JSON_REJECT_DUPLICATES, NULL);
    const char *text = json_string_value(json_object_get(j, "payload"));
    check(text != NULL, "accepted a body without a payload string");
    size_t len = strlen(text);
    char *enc = malloc(len + 1);
    check(enc != NULL, "oom");
    check(jose_b64url_encode(b->bytes, b->len, enc, len + 1) == len && memcmp(enc, text, len) == 0,
          "payload bytes are not the body's base64url");
    free(enc);
    json_decref(j);
}

static void fuzz_body(int which, const api_req *q)
{
    api_resp r;
    memset(&r, 0, sizeof(r));
    api_err e;
    const cfg *c = q->env->cfg;
    switch (which) {
    case 0: {
        api_keys_create_body b;
        if ((e = api_keys_create_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "create: refusal left data");
            break;
        }
        check(b.bits == 2048 || b.bits == 3072 || b.bits == 4096, "create: bits");
        check(printable(b.label, API_LABEL_MAX), "create: label");
        break;
    }
    case 1: {
        api_keys_rotate_body b;
        if ((e = api_keys_rotate_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "rotate: refusal left data");
            break;
        }
        check(b.grace >= 0 && b.grace <= 31536000, "rotate: grace");
        check(printable(b.label, API_LABEL_MAX) && (b.has_label || b.label[0] == '\0'),
              "rotate: label");
        break;
    }
    case 2: {
        api_keys_revoke_body b;
        if ((e = api_keys_revoke_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "revoke: refusal left data");
            break;
        }
        check(b.reason[0] != '\0' && printable(b.reason, REG_REASON_MAX), "revoke: reason");
        break;
    }
    case 3: {
        api_keys_sign_body b;
        if ((e = api_keys_sign_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "sign: refusal left data");
            break;
        }
        check(b.bytes != NULL && b.len <= API_BODY_MAX, "sign: bytes");
        check_sign_payload(q, &b);
        api_keys_sign_body_free(&b);
        api_keys_sign_body_free(&b);
        break;
    }
    case 4: {
        api_tokens_mint_body b;
        if ((e = api_tokens_mint_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "tokens: refusal left data");
            break;
        }
        unsigned own = q->caller ? q->caller->max_ttl : 0;
        check(b.ttl >= c->token_ttl_min && b.ttl <= c->token_ttl_max, "tokens: ttl bounds");
        check(own == 0 || b.ttl <= own, "tokens: ttl above the caller's max_ttl");
        check(b.exp == q->now + b.ttl && b.nbf >= -1 && b.nbf < b.exp, "tokens: nbf, exp");
        check(b.nbf == -1 || b.nbf >= q->now - API_NBF_LEEWAY, "tokens: nbf in the past");
        check(!(b.has_origin && b.n_origins > 0) && b.n_origins <= API_ORIGINS_MAX,
              "tokens: origin and origins");
        for (size_t i = 0; i < b.n_origins; i++) {
            check(cfg_origin_ok(b.origins[i]), "tokens: origins");
            for (size_t k = 0; k < i; k++)
                check(strcmp(b.origins[i], b.origins[k]) != 0, "tokens: an origin twice");
        }
        check(b.has_sub || b.sub[0] == '\0', "tokens: sub");
        check(strnlen(b.sub, sizeof(b.sub)) <= API_SUB_MAX, "tokens: sub length");
        check(b.claims == NULL || json_is_object(b.claims), "tokens: claims");
        static const char *const reserved[] = {"iss", "sub",    "iat",        "nbf",    "exp",
                                               "jti", "status", "single_use", "origin", "origins"};
        for (size_t i = 0; b.claims != NULL && i < sizeof(reserved) / sizeof(reserved[0]); i++)
            check(json_object_get(b.claims, reserved[i]) == NULL, "tokens: reserved claim");
        check(!b.has_aud || json_object_get(b.claims, "aud") == NULL, "tokens: aud twice");
        check(b.has_aud ? b.aud[0] != '\0' && printable(b.aud, API_AUD_MAX) : b.aud[0] == '\0',
              "tokens: aud");
        check(b.has_origin ? cfg_origin_ok(b.origin) : b.origin[0] == '\0', "tokens: origin");
        check((b.single_use == 0 || b.single_use == 1) && (b.revocable == 0 || b.revocable == 1),
              "tokens: flags");
        api_tokens_mint_body_free(&b);
        api_tokens_mint_body_free(&b);
        break;
    }
    case 5: {
        api_credentials_create_body b;
        if ((e = api_credentials_create_parse(q, &r, &b)) != API_OK) {
            check(b.n_kids < CRED_KIDS_MAX, "credentials: kids before the bad one");
            check(all_zero(&b.kids[b.n_kids], sizeof(b.kids[0]) * (CRED_KIDS_MAX - b.n_kids)),
                  "credentials: refusal left kids after the bad one");
            check(b.role == 0 && !b.has_label && !b.has_subject && !b.all_kids && b.max_ttl == 0,
                  "credentials: refusal left data");
            break;
        }
        check((unsigned)b.role < CRED_ROLE_COUNT_, "credentials: role");
        check(printable(b.label, CRED_LABEL_MAX) && (b.has_label || b.label[0] == '\0'),
              "credentials: label");
        if (b.has_subject)
            check(c->tls_client_ca[0] != '\0' && b.client_subject[0] != '\0' &&
                      printable(b.client_subject, CRED_SUBJECT_MAX),
                  "credentials: client_subject");
        else
            check(b.client_subject[0] == '\0', "credentials: client_subject without has");
        if (b.role != CRED_ROLE_SIGNER) {
            check(!b.all_kids && b.n_kids == 0 && b.max_ttl == 0, "credentials: kids of a "
                                                                  "non-signer");
            break;
        }
        check(b.all_kids ? b.n_kids == 0 : b.n_kids >= 1 && b.n_kids <= CRED_KIDS_MAX,
              "credentials: kids");
        for (size_t i = 0; i < b.n_kids; i++)
            for (size_t k = 0; k < i; k++)
                check(memcmp(&b.kids[i], &b.kids[k], sizeof(b.kids[i])) != 0,
                      "credentials: a kid twice");
        check(b.max_ttl == 0 || (b.max_ttl >= c->token_ttl_min && b.max_ttl <= c->token_ttl_max),
              "credentials: max_ttl");
        break;
    }
    case 6:
        e = api_credentials_revoke_parse(q, &r);
        break;
    case 8: {
        api_subjects_revoke_body b;
        if ((e = api_subjects_revoke_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "subjects: refusal left data");
            break;
        }
        check(b.sub[0] != '\0' && strnlen(b.sub, sizeof(b.sub)) <= API_SUB_MAX, "subjects: sub");
        check(b.before >= 1 && b.before <= q->now, "subjects: before");
        break;
    }
    default: {
        api_tokens_redeem_body b;
        if ((e = api_tokens_redeem_parse(q, &r, &b)) != API_OK) {
            check(all_zero(&b, sizeof(b)), "redeem: refusal left data");
            break;
        }
        check(b.token != NULL && b.token_len <= API_TOKEN_MAX && strlen(b.token) == b.token_len,
              "redeem: token");
        check(b.has_origin ? cfg_origin_ok(b.origin) : b.origin[0] == '\0', "redeem: origin");
        check(b.has_aud ? b.aud[0] != '\0' && printable(b.aud, API_AUD_MAX) : b.aud[0] == '\0',
              "redeem: aud");
        api_tokens_redeem_body_free(&b);
        api_tokens_redeem_body_free(&b);
        break;
    }
    }
    if (e != API_OK)
        check_refusal(e, &r);
    api_resp_free(&r);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cfg_defaults(&conf, "/srv/signd");
    conf_mtls = conf;
    snprintf(conf_mtls.tls_client_ca, sizeof(conf_mtls.tls_client_ca), "/srv/signd/ca.pem");
    env.cfg = &conf;
    env_mtls.cfg = &conf_mtls;
    snprintf(signer.id, sizeof(signer.id), "0123456789abcdef");
    signer.role = CRED_ROLE_SIGNER;
    signer.all_kids = 1;
    signer.max_ttl = SIGNER_MAX_TTL;
    return 0;
}

/* v is want (any case) then only spaces and tabs. */
static int head_value_is(const char *v, const char *want)
{
    size_t n = strlen(want);
    return strncasecmp(v, want, n) == 0 && v[n + strspn(v + n, " \t")] == '\0';
}

/* The framing check on a head (text: NUL-terminated, changed in place), held to RFC 9112's
 * rules as SECURITY.md states them, counted here independently of server.c. */
static void fuzz_head(char *text)
{
    struct mg_request_info ri;
    memset(&ri, 0, sizeof(ri));
    ri.content_length = -1;
    char *save = NULL;
    char *line = strtok_r(text, "\n", &save);
    ri.request_method = line ? line : "";
    line = strtok_r(NULL, "\n", &save);
    ri.http_version = line ? line : "1.1";
    while ((line = strtok_r(NULL, "\n", &save)) != NULL && ri.num_headers < MG_MAX_HEADERS) {
        char *colon = strchr(line, ':');
        const char *value = "";
        if (colon != NULL) {
            *colon = '\0';
            value = colon + 1 + strspn(colon + 1, " \t"); /* CivetWeb drops leading OWS */
        }
        ri.http_headers[ri.num_headers].name = line;
        ri.http_headers[ri.num_headers].value = value;
        ri.num_headers++;
    }
    int cl = 0, te = 0, coded = 0, te_chunked = 0, cl_digits = 0;
    for (int i = 0; i < ri.num_headers; i++) {
        const char *n = ri.http_headers[i].name, *v = ri.http_headers[i].value;
        if (strcasecmp(n, "Content-Length") == 0) {
            size_t d = strspn(v, "0123456789");
            cl_digits = d > 0 && v[d + strspn(v + d, " \t")] == '\0';
            if (cl++ == 0 && cl_digits) /* as CivetWeb: the first one's value */
                ri.content_length = strtoll(v, NULL, 10);
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            te++;
            te_chunked = head_value_is(v, "chunked");
        } else if (strcasecmp(n, "Content-Encoding") == 0 && !head_value_is(v, "identity")) {
            coded = 1;
        }
    }
    const char *msg = NULL;
    api_err e = srv_check_head(&ri, &msg);
    if (e != API_OK) {
        check(e == API_ERR_BAD_FRAMING || e == API_ERR_UNSUPPORTED_CONTENT_ENCODING,
              "head: refused with another error");
        check(msg != NULL && msg[0] != '\0', "head: a refusal without a message");
        check(api_err_table(e)->http_status / 100 == 4, "head: a refusal that is not a 4xx");
        return;
    }
    const char *m = ri.request_method;
    check(cl <= 1 && te <= 1 && !(cl && te), "head: accepted more than one framing");
    check(!cl || cl_digits, "head: accepted a Content-Length that is not digits");
    check(!te || te_chunked, "head: accepted a transfer coding other than chunked");
    check(!te || strcmp(ri.http_version, "1.0") != 0, "head: accepted chunked in HTTP/1.0");
    check((strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) || (!te && ri.content_length <= 0),
          "head: accepted a body on GET or HEAD");
    check((strcmp(m, "POST") != 0 && strcmp(m, "DELETE") != 0) || !coded,
          "head: accepted a content coding");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > API_BODY_MAX)
        return 0;
    uint8_t sel = data[0];
    size_t len = size - 1;
    /* The server's buffer: the body and a NUL after it. */
    char *body = malloc(len + 1);
    check(body != NULL, "oom");
    memcpy(body, data + 1, len);
    body[len] = '\0';
    api_req q;
    memset(&q, 0, sizeof(q));
    q.env = sel & 0x10 ? &env_mtls : &env;
    q.method = "POST";
    q.caller = sel & 0x08 ? &signer : NULL;
    q.body = body;
    q.body_len = len;
    q.now = NOW;
    if (sel & 0x20)
        fuzz_head(body);
    else
        /* 7 with bit 6: the subject revocation body (added after the seeds were made). */
        fuzz_body((sel & 7) == 7 && (sel & 0x40) ? 8 : sel & 7, &q);
    free(body);
    return 0;
}
