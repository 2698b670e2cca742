/*
 * test_front: the HTTPS front (appliance/front/server.h). First the route table read as the
 * authorization matrix: every route with its method and the roles that may call it, 404 for
 * a path no route has, 405 with the methods a path takes, path parameters as sent; the
 * error document; the content type and the framing the front accepts. Then the real server:
 * CivetWeb on 127.0.0.1 port 0 with a self-signed certificate, an in-process keeper on a
 * fresh SoftHSM2 token and a SQLite file with one credential per role, spoken to over HTTPS
 * with libcurl: each role on each route gets exactly what the matrix says (401 and 403 as
 * JSON error documents, WWW-Authenticate on 401), and the refusals the front makes before
 * any handler (invalid kid, 413, 415, 405's Allow) carry their status, code and headers.
 */
#include "appliance/front/server.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "appliance/core/audit.h"
#include "appliance/core/publish.h"
#include "appliance/front/tls.h"
#include "civetweb.h"
#include "tests/unit/testcert.h"
#include "appliance/keeper/inproc.h"
#include "tests/unit/testenv.h"

#define ZERO_KID "00000000000000000000000000000000"
#define ADMIN (1u << CRED_ROLE_ADMIN)
#define SIGNER (1u << CRED_ROLE_SIGNER)
#define AUDITOR (1u << CRED_ROLE_AUDITOR)
#define REDEEMER (1u << CRED_ROLE_REDEEMER)
#define PUBLIC 0u

/* The authorization matrix as SECURITY.md and docs/openapi.yaml state it: a request for
 * each route (a path that fills its parameters), its template and who may call it. */
static const struct {
    const char *method, *path, *template;
    unsigned roles;
} matrix[] = {
    {"POST", "/v1/keys", "/v1/keys", ADMIN},
    {"GET", "/v1/keys", "/v1/keys", ADMIN | AUDITOR},
    {"GET", "/v1/keys/" ZERO_KID, "/v1/keys/{kid}", ADMIN | AUDITOR},
    {"DELETE", "/v1/keys/" ZERO_KID, "/v1/keys/{kid}", ADMIN},
    {"POST", "/v1/keys/" ZERO_KID "/rotate", "/v1/keys/{kid}/rotate", ADMIN},
    {"POST", "/v1/keys/" ZERO_KID "/sign", "/v1/keys/{kid}/sign", SIGNER},
    {"POST", "/v1/tokens", "/v1/tokens", SIGNER},
    {"DELETE", "/v1/tokens/x", "/v1/tokens/{jti}", ADMIN | SIGNER},
    {"POST", "/v1/tokens/redeem", "/v1/tokens/redeem", REDEEMER},
    {"POST", "/v1/subjects/revoke", "/v1/subjects/revoke", ADMIN | SIGNER},
    {"GET", "/v1/status-lists/0", "/v1/status-lists/{n}", PUBLIC},
    {"POST", "/v1/credentials", "/v1/credentials", ADMIN},
    {"GET", "/v1/credentials", "/v1/credentials", ADMIN},
    {"GET", "/v1/credentials/0000000000000000", "/v1/credentials/{id}", ADMIN},
    {"DELETE", "/v1/credentials/0000000000000000", "/v1/credentials/{id}", ADMIN},
    {"GET", "/v1/audit", "/v1/audit", ADMIN | AUDITOR},
    {"GET", "/v1/audit/export", "/v1/audit/export", ADMIN | AUDITOR},
    {"GET", "/v1/audit/key", "/v1/audit/key", PUBLIC},
    {"GET", "/.well-known/jwks.json", "/.well-known/jwks.json", PUBLIC},
    {"GET", "/v1/revocations", "/v1/revocations", PUBLIC},
    {"GET", "/v1/revocations/feed", "/v1/revocations/feed", PUBLIC},
    {"GET", "/v1/revocations/key", "/v1/revocations/key", PUBLIC},
    {"GET", "/v1/revocations/events", "/v1/revocations/events", PUBLIC},
    {"GET", "/healthz", "/healthz", PUBLIC},
    {"GET", "/readyz", "/readyz", PUBLIC},
    {"GET", "/metrics", "/metrics", ADMIN | AUDITOR},
    {"GET", "/v1/whoami", "/v1/whoami", ADMIN | SIGNER | AUDITOR | REDEEMER},
    {"GET", "/console", "/console", PUBLIC},
    {"HEAD", "/console", "/console", PUBLIC},
    {"GET", "/console/", "/console/", PUBLIC},
    {"HEAD", "/console/", "/console/", PUBLIC},
    {"GET", "/console/app.js", "/console/{file}", PUBLIC},
    {"HEAD", "/console/app.js", "/console/{file}", PUBLIC},
};
#define N_MATRIX (sizeof(matrix) / sizeof(matrix[0]))

/* ---- the route table ------------------------------------------------------------------- */

static void test_every_route_has_the_roles_of_the_matrix(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_MATRIX; i++) {
        srv_lookup_result lk;
        if (srv_lookup(matrix[i].method, matrix[i].path, &lk) != API_OK)
            fail_msg("no route for %s %s", matrix[i].method, matrix[i].path);
        assert_string_equal(lk.template, matrix[i].template);
        if (lk.roles != matrix[i].roles)
            fail_msg("%s %s: roles 0x%x, the matrix says 0x%x", matrix[i].method,
                     matrix[i].template, lk.roles, matrix[i].roles);
        for (int r = 0; r < CRED_ROLE_COUNT_; r++)
            assert_int_equal(srv_roles_allow(lk.roles, (cred_role)r), (matrix[i].roles >> r) & 1u);
    }
}

/* The matrix above names every route the server has, each once: none escapes the test. */
static void test_the_matrix_names_every_route_of_the_table(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(srv_print_routes(f), 0);
    fclose(f);
    size_t lines = 0;
    for (char *line = text, *end; (end = strchr(line, '\n')) != NULL; line = end + 1) {
        *end = '\0';
        char method[16], template[128];
        assert_int_equal(sscanf(line, "%15s %127s", method, template), 2);
        int found = 0;
        for (size_t i = 0; i < N_MATRIX; i++)
            found +=
                strcmp(matrix[i].method, method) == 0 && strcmp(matrix[i].template, template) == 0;
        if (found != 1)
            fail_msg("route %s %s is in the matrix %d times", method, template, found);
        lines++;
    }
    assert_int_equal(lines, N_MATRIX);
    free(text);
}

static void test_the_route_listing_names_roles_or_public(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_int_equal(srv_print_routes(f), 0);
    fclose(f);
    assert_non_null(strstr(text, "GET /v1/keys admin,auditor\n"));
    assert_non_null(strstr(text, "DELETE /v1/tokens/{jti} admin,signer\n"));
    assert_non_null(strstr(text, "GET /healthz public\n"));
    free(text);
}

static void test_a_path_no_route_has_is_not_found(void **state)
{
    (void)state;
    static const char *const paths[] = {
        "",
        "/",
        "/v1",
        "/v1/",
        "/v1/keys/",
        "/v1/keysx",
        "/V1/keys",
        "/v1/keys//sign",
        "/v1/keys/" ZERO_KID "/",
        "/v1/keys/" ZERO_KID "/verify",
        "/v1/keys/" ZERO_KID "/sign/x",
        "/v1/credentials/x/y",
        "/v1/tokens/x/redeem",
        "/v1/status-lists/",
        "/healthz/",
        "/.well-known/jwks",
        "/v1/audit/",
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        srv_lookup_result lk;
        if (srv_lookup("GET", paths[i], &lk) != API_ERR_NOT_FOUND)
            fail_msg("found a route for '%s'", paths[i]);
        assert_int_equal(lk.route, -1);
        assert_null(lk.template);
    }
}

static void test_another_method_on_a_known_path_is_405_naming_the_methods_it_takes(void **state)
{
    (void)state;
    srv_lookup_result lk;
    assert_int_equal(srv_lookup("PUT", "/v1/keys", &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_string_equal(lk.allow, "POST, GET");
    assert_int_equal(lk.route, -1);
    assert_int_equal(srv_lookup("GET", "/v1/keys/" ZERO_KID "/sign", &lk),
                     API_ERR_METHOD_NOT_ALLOWED);
    assert_string_equal(lk.allow, "POST");
    assert_int_equal(srv_lookup("POST", "/v1/keys/" ZERO_KID, &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_string_equal(lk.allow, "GET, DELETE");
    assert_int_equal(srv_lookup("HEAD", "/healthz", &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_string_equal(lk.allow, "GET");
    /* Methods are case-sensitive (RFC 9110 section 9.1). */
    assert_int_equal(srv_lookup("get", "/healthz", &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_int_equal(srv_lookup("DELETE", "/v1/tokens", &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_string_equal(lk.allow, "POST");
    assert_int_equal(srv_lookup("POST", "/.well-known/jwks.json", &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_string_equal(lk.allow, "GET");
    assert_int_equal(srv_lookup("PATCH", "/v1/keys/" ZERO_KID, &lk), API_ERR_METHOD_NOT_ALLOWED);
    assert_int_equal(srv_lookup("DELETE", "/v1/credentials/abc", &lk), API_OK);
    assert_string_equal(lk.allow, "GET, DELETE");
}

static void test_path_parameters_are_the_segment_as_sent(void **state)
{
    (void)state;
    srv_lookup_result lk;
    assert_int_equal(srv_lookup("GET", "/v1/keys/not-a-kid", &lk), API_OK);
    assert_string_equal(lk.seg, "not-a-kid"); /* checked later: invalid_kid, not 404 */
    assert_int_equal(srv_lookup("POST", "/v1/keys/abc/sign", &lk), API_OK);
    assert_string_equal(lk.seg, "abc");
    assert_string_equal(lk.template, "/v1/keys/{kid}/sign");
    assert_int_equal(srv_lookup("POST", "/v1/keys/abc/rotate", &lk), API_OK);
    assert_string_equal(lk.template, "/v1/keys/{kid}/rotate");
    assert_int_equal(srv_lookup("GET", "/v1/status-lists/17", &lk), API_OK);
    assert_string_equal(lk.seg, "17");
    assert_int_equal(srv_lookup("GET", "/v1/keys", &lk), API_OK);
    assert_string_equal(lk.seg, "");
    /* A jti (64 characters) fits; anything past the bound becomes "!", which no check
     * accepts, rather than a truncated prefix that one might. */
    char path[256], seg[SRV_SEG_MAX + 8];
    memset(seg, 'a', 64);
    seg[64] = '\0';
    snprintf(path, sizeof(path), "/v1/tokens/%s", seg);
    assert_int_equal(srv_lookup("DELETE", path, &lk), API_OK);
    assert_string_equal(lk.seg, seg);
    memset(seg, 'a', SRV_SEG_MAX);
    seg[SRV_SEG_MAX] = '\0';
    snprintf(path, sizeof(path), "/v1/tokens/%s", seg);
    assert_int_equal(srv_lookup("DELETE", path, &lk), API_OK);
    assert_string_equal(lk.seg, "!");
}

static void test_no_role_passes_a_route_that_does_not_name_it(void **state)
{
    (void)state;
    assert_false(srv_roles_allow(PUBLIC, CRED_ROLE_ADMIN));
    assert_true(srv_roles_allow(ADMIN | AUDITOR, CRED_ROLE_AUDITOR));
    assert_false(srv_roles_allow(ADMIN | AUDITOR, CRED_ROLE_SIGNER));
    assert_false(srv_roles_allow(~0u, CRED_ROLE_COUNT_));
    assert_false(srv_roles_allow(~0u, (cred_role)-1));
}

/* ---- the error table and document -------------------------------------------------------- */

static void test_every_error_has_its_own_snake_case_code_and_an_error_status(void **state)
{
    (void)state;
    for (int e = 1; e < API_ERR_COUNT_; e++) {
        const api_err_info *info = api_err_table((api_err)e);
        if (e != API_ERR_INTERNAL && strcmp(info->code, "internal_error") == 0)
            fail_msg("api_err %d has no entry in the table", e);
        assert_true(info->http_status >= 400 && info->http_status <= 599);
        assert_int_equal(strspn(info->code, "abcdefghijklmnopqrstuvwxyz0123456789_"),
                         strlen(info->code));
        for (int o = 1; o < e; o++)
            if (strcmp(api_err_table((api_err)o)->code, info->code) == 0)
                fail_msg("api_err %d and %d share the code %s", o, e, info->code);
    }
    assert_int_equal(api_err_table(API_OK)->http_status, 200);
    /* Out of range: internal_error, never a read past the table. */
    assert_string_equal(api_err_table(API_ERR_COUNT_)->code, "internal_error");
    assert_string_equal(api_err_table((api_err)-1)->code, "internal_error");
}

static void test_errors_map_to_their_statuses(void **state)
{
    (void)state;
    static const struct {
        api_err e;
        int status;
        const char *code;
    } pinned[] = {
        {API_ERR_BAD_REQUEST, 400, "bad_request"},
        {API_ERR_UNAUTHORIZED, 401, "unauthorized"},
        {API_ERR_FORBIDDEN, 403, "forbidden"},
        {API_ERR_KID_NOT_ALLOWED, 403, "kid_not_allowed"},
        {API_ERR_NOT_FOUND, 404, "not_found"},
        {API_ERR_KEY_NOT_FOUND, 404, "key_not_found"},
        {API_ERR_METHOD_NOT_ALLOWED, 405, "method_not_allowed"},
        {API_ERR_REQUEST_TIMEOUT, 408, "request_timeout"},
        {API_ERR_KEY_REVOKED, 409, "key_revoked"},
        {API_ERR_LAST_ADMIN, 409, "last_admin"},
        {API_ERR_BODY_TOO_LARGE, 413, "body_too_large"},
        {API_ERR_UNSUPPORTED_MEDIA_TYPE, 415, "unsupported_media_type"},
        {API_ERR_UNSUPPORTED_CONTENT_ENCODING, 415, "unsupported_content_encoding"},
        {API_ERR_RATE_LIMITED, 429, "rate_limited"},
        {API_ERR_HEADERS_TOO_LARGE, 431, "headers_too_large"},
        {API_ERR_BAD_FRAMING, 400, "bad_framing"},
        {API_ERR_INTERNAL, 500, "internal_error"},
        {API_ERR_STORAGE, 500, "storage_error"},
        {API_ERR_HSM_BUSY, 503, "hsm_busy"},
        {API_ERR_HSM_TIMEOUT, 503, "hsm_timeout"},
        {API_ERR_STORAGE_UNAVAILABLE, 503, "storage_unavailable"},
        {API_ERR_UNAVAILABLE, 503, "unavailable"},
        {API_ERR_HTTP_VERSION_NOT_SUPPORTED, 505, "http_version_not_supported"},
        {API_ERR_TOKEN_FULL, 507, "token_full"},
        {API_ERR_STATUS_LISTS_FULL, 507, "status_lists_full"},
    };
    for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++) {
        assert_int_equal(api_err_table(pinned[i].e)->http_status, pinned[i].status);
        assert_string_equal(api_err_table(pinned[i].e)->code, pinned[i].code);
    }
}

/* What CivetWeb answers by itself gets the generic error of its status. */
static void test_civetweb_statuses_become_their_generic_errors(void **state)
{
    (void)state;
    assert_int_equal(api_err_from_status(400), API_ERR_BAD_REQUEST);
    assert_int_equal(api_err_from_status(401), API_ERR_UNAUTHORIZED);
    assert_int_equal(api_err_from_status(403), API_ERR_FORBIDDEN);
    assert_int_equal(api_err_from_status(404), API_ERR_NOT_FOUND);
    assert_int_equal(api_err_from_status(405), API_ERR_METHOD_NOT_ALLOWED);
    assert_int_equal(api_err_from_status(408), API_ERR_REQUEST_TIMEOUT);
    assert_int_equal(api_err_from_status(413), API_ERR_BODY_TOO_LARGE);
    assert_int_equal(api_err_from_status(415), API_ERR_UNSUPPORTED_MEDIA_TYPE);
    assert_int_equal(api_err_from_status(431), API_ERR_HEADERS_TOO_LARGE);
    assert_int_equal(api_err_from_status(503), API_ERR_UNAVAILABLE);
    assert_int_equal(api_err_from_status(505), API_ERR_HTTP_VERSION_NOT_SUPPORTED);
    /* Others: a client's fault stays a 4xx, the server's a 5xx. */
    assert_int_equal(api_err_from_status(411), API_ERR_BAD_REQUEST);
    assert_int_equal(api_err_from_status(418), API_ERR_BAD_REQUEST);
    assert_int_equal(api_err_from_status(500), API_ERR_INTERNAL);
    assert_int_equal(api_err_from_status(502), API_ERR_INTERNAL);
}

static void test_the_error_document_is_code_and_message(void **state)
{
    (void)state;
    char *b = srv_error_body(API_ERR_FORBIDDEN, "this credential's role may not call this route");
    assert_string_equal(
        b, "{\"error\":{\"code\":\"forbidden\",\"message\":\"this credential's role may not call "
           "this route\"}}");
    free(b);
    /* Without a message, the code is the message. */
    b = srv_error_body(API_ERR_NOT_FOUND, NULL);
    assert_string_equal(b, "{\"error\":{\"code\":\"not_found\",\"message\":\"not_found\"}}");
    free(b);
    b = srv_error_body(API_ERR_NOT_FOUND, "");
    assert_string_equal(b, "{\"error\":{\"code\":\"not_found\",\"message\":\"not_found\"}}");
    free(b);
    /* A message quoting what the client sent stays one valid JSON string. */
    b = srv_error_body(API_ERR_UNKNOWN_FIELD, "unknown field '\"}\n'");
    json_error_t je;
    json_t *j = json_loads(b, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
                        "unknown field '\"}\n'");
    json_decref(j);
    free(b);
}

static void test_only_application_json_is_a_json_body(void **state)
{
    (void)state;
    assert_true(srv_is_json("application/json"));
    assert_true(srv_is_json("Application/JSON"));
    assert_true(srv_is_json("application/json; charset=utf-8"));
    assert_true(srv_is_json("application/json;charset=UTF-8"));
    assert_false(srv_is_json(NULL));
    assert_false(srv_is_json(""));
    assert_false(srv_is_json("text/plain"));
    assert_false(srv_is_json("text/json"));
    assert_false(srv_is_json("application/jsonx"));
    assert_false(srv_is_json("application/json-patch+json"));
    assert_false(srv_is_json("application/x-www-form-urlencoded"));
}

/* ---- the head of a request (SECURITY.md, "HTTP framing") --------------------------------- */

/* A request head: method, version, then "Name: value" pairs up to NULL. */
static api_err head(const char **msg, const char *method, const char *version, ...)
{
    static struct mg_request_info ri;
    memset(&ri, 0, sizeof(ri));
    ri.request_method = method;
    ri.http_version = version;
    ri.content_length = -1;
    va_list ap;
    va_start(ap, version);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        ri.http_headers[ri.num_headers].name = name;
        ri.http_headers[ri.num_headers].value = value;
        ri.num_headers++;
        if (strcasecmp(name, "Content-Length") == 0)
            ri.content_length = strtoll(value, NULL, 10);
    }
    va_end(ap);
    return srv_check_head(&ri, msg);
}

static void test_one_framing_per_request_passes(void **state)
{
    (void)state;
    const char *msg;
    assert_int_equal(head(&msg, "GET", "1.1", NULL), API_OK);
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "2", NULL), API_OK);
    assert_int_equal(head(&msg, "POST", "1.1", "Transfer-Encoding", "chunked", NULL), API_OK);
    assert_int_equal(head(&msg, "POST", "1.1", "Transfer-Encoding", "Chunked  ", NULL), API_OK);
    assert_int_equal(head(&msg, "POST", "1.0", "Content-Length", "0", NULL), API_OK);
    assert_int_equal(head(&msg, "GET", "1.1", "Content-Length", "0", NULL), API_OK);
    assert_int_equal(
        head(&msg, "POST", "1.1", "Content-Encoding", "identity", "Content-Length", "2", NULL),
        API_OK);
    /* Only bodies the appliance reads have their coding checked. */
    assert_int_equal(head(&msg, "GET", "1.1", "Content-Encoding", "gzip", NULL), API_OK);
}

static void test_ambiguous_framing_is_bad_framing(void **state)
{
    (void)state;
    const char *msg;
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "5", "Content-Length", "5", NULL),
                     API_ERR_BAD_FRAMING);
    assert_string_equal(msg, "Content-Length is given more than once");
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "2x", NULL), API_ERR_BAD_FRAMING);
    assert_string_equal(msg, "Content-Length is not a decimal number");
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "+5", NULL), API_ERR_BAD_FRAMING);
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "0x10", NULL),
                     API_ERR_BAD_FRAMING);
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "5, 5", NULL),
                     API_ERR_BAD_FRAMING);
    assert_int_equal(head(&msg, "POST", "1.1", "Content-Length", "", NULL), API_ERR_BAD_FRAMING);
    assert_int_equal(
        head(&msg, "POST", "1.1", "Content-Length", "5", "Transfer-Encoding", "chunked", NULL),
        API_ERR_BAD_FRAMING);
    assert_string_equal(msg, "a request has Content-Length or Transfer-Encoding, not both");
    assert_int_equal(head(&msg, "POST", "1.1", "Transfer-Encoding", "chunked", "Transfer-Encoding",
                          "chunked", NULL),
                     API_ERR_BAD_FRAMING);
    assert_string_equal(msg, "Transfer-Encoding is given more than once");
    static const char *const codings[] = {
        "gzip", "identity", "chunked, gzip", "gzip, chunked", "xchunked", "chunkedx", ""};
    for (size_t i = 0; i < sizeof(codings) / sizeof(codings[0]); i++) {
        if (head(&msg, "POST", "1.1", "Transfer-Encoding", codings[i], NULL) != API_ERR_BAD_FRAMING)
            fail_msg("Transfer-Encoding: %s accepted", codings[i]);
        assert_string_equal(msg, "the only transfer coding accepted is chunked");
    }
    assert_int_equal(head(&msg, "POST", "1.0", "Transfer-Encoding", "chunked", NULL),
                     API_ERR_BAD_FRAMING);
    assert_string_equal(msg, "HTTP/1.0 has no Transfer-Encoding");
}

static void test_a_body_on_get_or_head_is_bad_framing(void **state)
{
    (void)state;
    const char *msg;
    assert_int_equal(head(&msg, "GET", "1.1", "Content-Length", "3", NULL), API_ERR_BAD_FRAMING);
    assert_string_equal(msg, "a GET or HEAD request carries no body");
    assert_int_equal(head(&msg, "HEAD", "1.1", "Content-Length", "1", NULL), API_ERR_BAD_FRAMING);
    assert_int_equal(head(&msg, "GET", "1.1", "Transfer-Encoding", "chunked", NULL),
                     API_ERR_BAD_FRAMING);
}

static void test_a_content_coding_the_appliance_does_not_decode_is_refused(void **state)
{
    (void)state;
    const char *msg;
    static const char *const codings[] = {"gzip", "deflate", "br", "identity, gzip", "x"};
    for (size_t i = 0; i < sizeof(codings) / sizeof(codings[0]); i++) {
        assert_int_equal(
            head(&msg, "POST", "1.1", "Content-Encoding", codings[i], "Content-Length", "2", NULL),
            API_ERR_UNSUPPORTED_CONTENT_ENCODING);
        assert_int_equal(head(&msg, "DELETE", "1.1", "Content-Encoding", codings[i], NULL),
                         API_ERR_UNSUPPORTED_CONTENT_ENCODING);
    }
    assert_string_equal(msg, "the appliance decodes no Content-Encoding but identity");
}

/* ---- the real server ------------------------------------------------------------------- */

enum {
    WHO_ADMIN,
    WHO_SIGNER,
    WHO_AUDITOR,
    WHO_REDEEMER,
    WHO_NONE,
    WHO_REVOKED,
    WHO_UNKNOWN,
    WHO_N
};
static const char *const who_name[WHO_N] = {"admin", "signer",  "auditor", "redeemer",
                                            "none",  "revoked", "unknown"};

typedef struct {
    char token_dir[PATH_MAX], pin[PATH_MAX];
    char dir[64];
    cfg c;
    kp *k;
    reg *rg;
    cred_store *cs;
    tks *ts;
    audit *au;
    api_env env;
    srv *s;
    char base[64];
    char secret[WHO_N][CRED_SECRET_MAX];
} world;

static void make_credential(world *w, int who, cred_role role)
{
    cred_spec sp = {.role = role, .all_kids = role == CRED_ROLE_SIGNER};
    cred_record rec;
    assert_int_equal(cred_create(w->cs, &sp, time(NULL), w->secret[who], &rec), CRED_OK);
    if (who == WHO_REVOKED)
        assert_int_equal(cred_revoke(w->cs, rec.id, time(NULL), NULL), CRED_OK);
}

static int world_setup(void **state)
{
    world *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    assert_int_equal(testenv_token(w->token_dir), 0);
    hsm_config hc = testenv_config(w->token_dir, w->pin);
    char err[TLS_ERR_MAX];
    assert_int_equal(kp_open(&hc, &w->k, err, sizeof(err)), SK_OK);
    snprintf(w->dir, sizeof(w->dir), "/tmp/signd-front-XXXXXX");
    assert_non_null(mkdtemp(w->dir));
    cfg_defaults(&w->c, w->dir);
    snprintf(w->c.listen_address, sizeof(w->c.listen_address), "127.0.0.1");
    w->c.port = 0;
    w->c.worker_threads = 4;
    w->c.log_requests = false;
    /* Hundreds of 401s come from one address here: no limits in the way. */
    w->c.rate_limit_per_second = 0;
    w->c.auth_failures_per_minute = 0;
    snprintf(w->c.database, sizeof(w->c.database), "%s/appliance.db", w->dir);
    testcert_make(w->dir, "server", "/CN=localhost", NULL, NULL, 0, w->c.tls_certificate,
                  w->c.tls_private_key);
    assert_int_equal(reg_open(w->c.database, w->c.max_active_keys, &w->rg), REG_OK);
    assert_int_equal(cred_open(w->c.database, &w->cs), CRED_OK);
    assert_int_equal(tks_open(w->c.database, &w->ts), TKS_OK);
    audit_options ao = {.flush_seconds = 1, .checkpoint_events = 1000, .checkpoint_seconds = 3600};
    assert_int_equal(audit_open(w->c.database, w->k, &ao, &w->au, err, sizeof(err)), 0);
    make_credential(w, WHO_ADMIN, CRED_ROLE_ADMIN);
    make_credential(w, WHO_SIGNER, CRED_ROLE_SIGNER);
    make_credential(w, WHO_AUDITOR, CRED_ROLE_AUDITOR);
    make_credential(w, WHO_REDEEMER, CRED_ROLE_REDEEMER);
    make_credential(w, WHO_REVOKED, CRED_ROLE_ADMIN);
    snprintf(w->secret[WHO_UNKNOWN], sizeof(w->secret[WHO_UNKNOWN]), "%s",
             "sgd_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    w->env = (api_env){
        .cfg = &w->c, .reg = w->rg, .kp = w->k, .creds = w->cs, .audit = w->au, .tks = w->ts};
    w->env.pub = pub_new(&w->c, w->rg, w->k, w->ts);
    assert_non_null(w->env.pub);
    w->s = srv_start(&w->env, err, sizeof(err));
    if (w->s == NULL)
        fail_msg("srv_start: %s", err);
    snprintf(w->base, sizeof(w->base), "https://127.0.0.1:%d", srv_port(w->s));
    *state = w;
    return 0;
}

static int world_teardown(void **state)
{
    world *w = *state;
    srv_stop(w->s);
    pub_free(w->env.pub);
    audit_close(w->au);
    tks_close(w->ts);
    cred_close(w->cs);
    reg_close(w->rg);
    kp_close(w->k);
    testenv_cleanup(w->dir);
    testenv_cleanup(w->token_dir);
    free(w);
    return 0;
}

typedef struct {
    long status;
    char code[64];
    char headers[4096];
    char *body;
    size_t len;
} answer;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    answer *a = arg;
    char *b = realloc(a->body, a->len + size * n + 1);
    assert_non_null(b);
    memcpy(b + a->len, p, size * n);
    a->len += size * n;
    b[a->len] = '\0';
    a->body = b;
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    answer *a = arg;
    size_t used = strlen(a->headers);
    if (used + size * n < sizeof(a->headers))
        memcpy(a->headers + used, p, size * n), a->headers[used + size * n] = '\0';
    return size * n;
}

/* Sends one request (a NULL content_type: application/json when there is a body) and reads
 * the answer, its error code when it is an error document. */
static void call(const world *w, const char *method, const char *path, const char *secret,
                 const char *body, size_t body_len, const char *content_type, answer *a)
{
    memset(a, 0, sizeof(*a));
    CURL *h = curl_easy_init();
    assert_non_null(h);
    char url[512], auth[CRED_SECRET_MAX + 32], ct[128];
    snprintf(url, sizeof(url), "%s%s", w->base, path);
    struct curl_slist *hdr = NULL;
    if (secret != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", secret);
        hdr = curl_slist_append(hdr, auth);
    }
    snprintf(ct, sizeof(ct), "Content-Type: %s", content_type ? content_type : "application/json");
    hdr = curl_slist_append(hdr, ct);
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0) /* a head and no body: curl must not wait for one */
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_CAINFO, w->c.tls_certificate);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L); /* issued to localhost, asked by address */
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    if (body != NULL) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body_len);
    }
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a->status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    if (a->status >= 400) {
        json_t *j = a->body ? json_loads(a->body, 0, NULL) : NULL;
        const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
        if (code == NULL)
            fail_msg("%s %s: %ld without an error document: %s", method, path, a->status,
                     a->body ? a->body : "");
        snprintf(a->code, sizeof(a->code), "%s", code);
        json_decref(j);
    }
}

static void answer_free(answer *a)
{
    free(a->body);
    a->body = NULL;
}

static int has_header(const answer *a, const char *line)
{
    return strcasestr(a->headers, line) != NULL;
}

/* Every caller on every route: public routes take anyone (a credential, even a revoked one,
 * is not looked at); the others 401 without a valid credential, 403 for a role the route
 * does not name, and reach the handler for one it names. Bodies are "{" so that a handler
 * reached refuses it (invalid_json) and nothing changes. */
static void test_each_caller_gets_exactly_what_the_matrix_says(void **state)
{
    world *w = *state;
    for (size_t i = 0; i < N_MATRIX; i++) {
        int post = strcmp(matrix[i].method, "POST") == 0 || strcmp(matrix[i].method, "DELETE") == 0;
        char path[256];
        /* The event stream never ends; with a query its handler refuses at once. */
        snprintf(path, sizeof(path), "%s%s", matrix[i].path,
                 strcmp(matrix[i].template, "/v1/revocations/events") == 0 ? "?x=1" : "");
        for (int who = 0; who < WHO_N; who++) {
            answer a;
            call(w, matrix[i].method, path, who == WHO_NONE ? NULL : w->secret[who],
                 post ? "{" : NULL, 1, NULL, &a);
            const char *id = who_name[who];
            if (matrix[i].roles == PUBLIC ||
                (who <= WHO_REDEEMER && ((matrix[i].roles >> who) & 1u))) {
                if (a.status == 401 || a.status == 403)
                    fail_msg("%s %s as %s: %ld %s", matrix[i].method, path, id, a.status, a.code);
            } else if (who >= WHO_NONE) {
                if (a.status != 401 || strcmp(a.code, "unauthorized") != 0)
                    fail_msg("%s %s as %s: %ld %s, not 401", matrix[i].method, path, id, a.status,
                             a.code);
                assert_true(has_header(&a, "WWW-Authenticate: Bearer realm=\"signd\"\r\n"));
            } else if (a.status != 403 || strcmp(a.code, "forbidden") != 0) {
                fail_msg("%s %s as %s: %ld %s, not 403", matrix[i].method, path, id, a.status,
                         a.code);
            }
            answer_free(&a);
        }
    }
}

static void test_a_path_no_route_has_is_a_404_error_document(void **state)
{
    world *w = *state;
    answer a;
    call(w, "GET", "/v1/nothing", NULL, NULL, 0, NULL, &a);
    assert_int_equal(a.status, 404);
    assert_string_equal(a.body, "{\"error\":{\"code\":\"not_found\",\"message\":\"no such "
                                "resource\"}}");
    assert_true(has_header(&a, "Content-Type: application/json\r\n"));
    assert_true(has_header(&a, "X-Content-Type-Options: nosniff\r\n"));
    assert_true(has_header(&a, "Cache-Control: no-store\r\n"));
    assert_true(has_header(&a, "X-Request-Id: "));
    answer_free(&a);
}

static void test_another_method_is_405_with_the_allow_header(void **state)
{
    world *w = *state;
    answer a;
    call(w, "PUT", "/v1/keys", w->secret[WHO_ADMIN], NULL, 0, NULL, &a);
    assert_int_equal(a.status, 405);
    assert_string_equal(a.code, "method_not_allowed");
    assert_true(has_header(&a, "Allow: POST, GET\r\n"));
    answer_free(&a);
    /* Before any credential is looked at. */
    call(w, "PATCH", "/healthz", NULL, NULL, 0, NULL, &a);
    assert_int_equal(a.status, 405);
    assert_true(has_header(&a, "Allow: GET\r\n"));
    answer_free(&a);
}

/* The kid is checked once the caller is known: a stranger learns nothing from it. */
static void test_a_malformed_kid_is_invalid_kid_after_authorization(void **state)
{
    world *w = *state;
    answer a;
    call(w, "GET", "/v1/keys/NOT-A-KID", w->secret[WHO_AUDITOR], NULL, 0, NULL, &a);
    assert_int_equal(a.status, 400);
    assert_string_equal(a.code, "invalid_kid");
    answer_free(&a);
    call(w, "GET", "/v1/keys/NOT-A-KID", NULL, NULL, 0, NULL, &a);
    assert_int_equal(a.status, 401);
    answer_free(&a);
    /* 32 lowercase hex characters, nothing else, on every route that takes a kid. */
    static const char *const bad[][2] = {
        {"GET", "/v1/keys/XYZ"},
        {"GET", "/v1/keys/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
        {"GET", "/v1/keys/0000000000000000000000000000000"},
        {"GET", "/v1/keys/000000000000000000000000000000000"},
        {"DELETE", "/v1/keys/0123456789abcdef0123456789abcdeF"},
        {"POST", "/v1/keys/gggggggggggggggggggggggggggggggg/sign"},
        {"POST", "/v1/keys/" ZERO_KID "0/rotate"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int who = strstr(bad[i][1], "/sign") ? WHO_SIGNER : WHO_ADMIN;
        call(w, bad[i][0], bad[i][1], w->secret[who], strcmp(bad[i][0], "GET") ? "{}" : NULL, 2,
             NULL, &a);
        if (a.status != 400 || strcmp(a.code, "invalid_kid") != 0)
            fail_msg("%s %s: %ld %s", bad[i][0], bad[i][1], a.status, a.code);
        answer_free(&a);
    }
}

/* A role refused on a route is refused before its handler: with a well-formed body that the
 * handler would act on, nothing changes (a leaked signer's or auditor's secret manages no
 * credential and no key). */
static void test_a_refused_role_changes_nothing(void **state)
{
    world *w = *state;
    answer a;
    call(w, "POST", "/v1/keys", w->secret[WHO_ADMIN], "{\"label\":\"victim\"}", 18, NULL, &a);
    assert_int_equal(a.status, 201);
    json_t *key = json_loads(a.body, 0, NULL);
    char victim[256];
    snprintf(victim, sizeof(victim), "/v1/keys/%s", json_string_value(json_object_get(key, "kid")));
    json_decref(key);
    answer_free(&a);
    size_t creds = cred_list(w->cs, NULL, 0), active = reg_count(w->rg, REG_ACTIVE);
    static const char *const tries[][3] = {
        {"POST", "/v1/credentials", "{\"role\":\"admin\"}"},
        {"POST", "/v1/credentials", "{\"role\":\"signer\",\"kids\":\"all\"}"},
        {"GET", "/v1/credentials", NULL},
        {"DELETE", "/v1/credentials/0000000000000000", NULL},
        {"POST", "/v1/keys", "{}"},
        {"DELETE", "victim", "{\"reason\":\"leak\"}"},
        {"POST", "victim/rotate", "{}"},
    };
    for (int who = WHO_SIGNER; who <= WHO_AUDITOR; who++) {
        for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
            char path[300];
            if (strncmp(tries[i][1], "victim", 6) == 0)
                snprintf(path, sizeof(path), "%s%s", victim, tries[i][1] + 6);
            else
                snprintf(path, sizeof(path), "%s", tries[i][1]);
            const char *body = tries[i][2];
            call(w, tries[i][0], path, w->secret[who], body, body ? strlen(body) : 0, NULL, &a);
            if (a.status != 403 || strcmp(a.code, "forbidden") != 0)
                fail_msg("%s %s as %s: %ld %s", tries[i][0], path, who_name[who], a.status, a.code);
            answer_free(&a);
        }
    }
    /* An auditor signs nothing either. */
    call(w, "POST", "/v1/tokens", w->secret[WHO_AUDITOR], "{}", 2, NULL, &a);
    assert_int_equal(a.status, 403);
    answer_free(&a);
    assert_int_equal(cred_list(w->cs, NULL, 0), creds);
    assert_int_equal(reg_count(w->rg, REG_ACTIVE), active);
    call(w, "GET", victim, w->secret[WHO_AUDITOR], NULL, 0, NULL, &a);
    assert_int_equal(a.status, 200);
    assert_non_null(strstr(a.body, "\"state\":\"active\""));
    answer_free(&a);
}

static void test_a_body_not_sent_as_json_is_415(void **state)
{
    world *w = *state;
    answer a;
    call(w, "POST", "/v1/credentials", w->secret[WHO_ADMIN], "{\"role\":\"auditor\"}", 18,
         "text/plain", &a);
    assert_int_equal(a.status, 415);
    assert_string_equal(a.code, "unsupported_media_type");
    answer_free(&a);
    /* With the right type, the same body reaches the handler. */
    call(w, "POST", "/v1/credentials", w->secret[WHO_ADMIN], "{\"role\":\"auditor\"}", 18,
         "application/json; charset=utf-8", &a);
    assert_int_equal(a.status, 201);
    answer_free(&a);
}

static void test_a_body_over_64_kib_is_413(void **state)
{
    world *w = *state;
    size_t n = API_BODY_MAX + 1;
    char *body = malloc(n);
    assert_non_null(body);
    memset(body, ' ', n);
    body[0] = '{';
    body[n - 1] = '}';
    answer a;
    call(w, "POST", "/v1/credentials", w->secret[WHO_ADMIN], body, n, NULL, &a);
    assert_int_equal(a.status, 413);
    assert_string_equal(a.code, "body_too_large");
    answer_free(&a);
    /* Exactly the bound is read (and parsed: a body of blanks is no role). */
    call(w, "POST", "/v1/credentials", w->secret[WHO_ADMIN], body, n - 1, NULL, &a);
    assert_int_equal(a.status, 400);
    assert_string_equal(a.code, "invalid_json");
    answer_free(&a);
    free(body);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_every_route_has_the_roles_of_the_matrix),
        cmocka_unit_test(test_the_matrix_names_every_route_of_the_table),
        cmocka_unit_test(test_the_route_listing_names_roles_or_public),
        cmocka_unit_test(test_a_path_no_route_has_is_not_found),
        cmocka_unit_test(test_another_method_on_a_known_path_is_405_naming_the_methods_it_takes),
        cmocka_unit_test(test_path_parameters_are_the_segment_as_sent),
        cmocka_unit_test(test_no_role_passes_a_route_that_does_not_name_it),
        cmocka_unit_test(test_every_error_has_its_own_snake_case_code_and_an_error_status),
        cmocka_unit_test(test_errors_map_to_their_statuses),
        cmocka_unit_test(test_civetweb_statuses_become_their_generic_errors),
        cmocka_unit_test(test_the_error_document_is_code_and_message),
        cmocka_unit_test(test_only_application_json_is_a_json_body),
        cmocka_unit_test(test_one_framing_per_request_passes),
        cmocka_unit_test(test_ambiguous_framing_is_bad_framing),
        cmocka_unit_test(test_a_body_on_get_or_head_is_bad_framing),
        cmocka_unit_test(test_a_content_coding_the_appliance_does_not_decode_is_refused),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test(test_each_caller_gets_exactly_what_the_matrix_says),
        cmocka_unit_test(test_a_path_no_route_has_is_a_404_error_document),
        cmocka_unit_test(test_another_method_is_405_with_the_allow_header),
        cmocka_unit_test(test_a_malformed_kid_is_invalid_kid_after_authorization),
        cmocka_unit_test(test_a_refused_role_changes_nothing),
        cmocka_unit_test(test_a_body_not_sent_as_json_is_415),
        cmocka_unit_test(test_a_body_over_64_kib_is_413),
    };
    int failed = cmocka_run_group_tests_name("routes", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("server", live, world_setup, world_teardown);
    curl_global_cleanup();
    return failed;
}
