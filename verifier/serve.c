/* serve: see serve.h. The parsing is pure (tests/unit/test_serve.c); vsv_run is the glue. */
#include "verifier/serve.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "civetweb.h"
#include "base/text.h"

#define VSV_TOKEN_PARAM "token="

static bool vsv_b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* A compact JWS: three non-empty base64url parts, at most VFY_TOKEN_MAX bytes. A path
 * segment of this shape is taken for the token; anything else is a file or directory. */
static bool vsv_jws_shaped(const char *s, size_t len)
{
    if (len == 0 || len > VFY_TOKEN_MAX)
        return false;
    unsigned dots = 0;
    size_t part = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            if (part == 0)
                return false;
            dots++;
            part = 0;
        } else if (vsv_b64url_char(s[i])) {
            part++;
        } else {
            return false;
        }
    }
    return dots == 2 && part > 0;
}

static char vsv_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Is p (a '%' with two bytes after it) the escape enc, hex digits in either case? */
static bool vsv_hex_is(const char *p, const char *enc)
{
    return vsv_lower(p[1]) == vsv_lower(enc[0]) && vsv_lower(p[2]) == vsv_lower(enc[1]);
}

/* Canonical, as the head of serve.h says: what the daemon reads is what the server serves. */
static bool vsv_path_canonical(const char *p, size_t len)
{
    if (len == 0 || p[0] != '/')
        return false;
    size_t seg_start = 1;
    for (size_t i = 0; i <= len; i++) {
        if (i < len) {
            unsigned char c = (unsigned char)p[i];
            if (!txt_is_visible((char)c) || c == '\\')
                return false;
            if (c == '%') {
                if (i + 2 >= len)
                    return false;
                /* %2e '.', %2f '/', %5c '\\', %00: decoded by the server, so refused here */
                if (vsv_hex_is(p + i, "2E") || vsv_hex_is(p + i, "2F") || vsv_hex_is(p + i, "5C") ||
                    vsv_hex_is(p + i, "00"))
                    return false;
            }
        }
        if (i == len || p[i] == '/') {
            if (i == 0)
                continue;
            size_t n = i - seg_start;
            const char *s = p + seg_start;
            if (n == 0 && i < len)
                return false; /* an empty segment; only a trailing '/' is fine */
            if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
                return false;
            seg_start = i + 1;
        }
    }
    return true;
}

vsv_uri_status vsv_parse_uri(const char *uri, size_t len, vsv_target *out)
{
    memset(out, 0, sizeof(*out));
    if (uri == NULL || len == 0 || len > VSV_URI_MAX)
        return VSV_URI_BAD;
    const char *q = memchr(uri, '?', len);
    size_t path_len = q != NULL ? (size_t)(q - uri) : len;
    if (!vsv_path_canonical(uri, path_len))
        return VSV_URI_BAD;

    /* The token parameter: exactly one, never together with a token segment. */
    const char *param = NULL;
    size_t param_len = 0;
    if (q != NULL) {
        const char *end = uri + len;
        for (const char *f = q + 1; f < end;) {
            const char *amp = memchr(f, '&', (size_t)(end - f));
            const char *fe = amp != NULL ? amp : end;
            size_t klen = sizeof(VSV_TOKEN_PARAM) - 1;
            if ((size_t)(fe - f) >= klen && memcmp(f, VSV_TOKEN_PARAM, klen) == 0) {
                if (param != NULL)
                    return VSV_URI_BAD;
                param = f + klen;
                param_len = (size_t)(fe - param);
            }
            f = fe + 1;
        }
    }

    const char *seg1 = uri + 1;
    const char *slash = memchr(seg1, '/', path_len - 1);
    size_t seg1_len = slash != NULL ? (size_t)(slash - seg1) : path_len - 1;
    if (vsv_jws_shaped(seg1, seg1_len)) {
        if (param != NULL)
            return VSV_URI_BAD;
        out->token = seg1;
        out->token_len = seg1_len;
        out->path = slash != NULL ? slash : "/";
        out->path_len = slash != NULL ? path_len - 1 - seg1_len : 1;
        return VSV_URI_OK;
    }
    out->path = uri;
    out->path_len = path_len;
    if (param == NULL || param_len == 0)
        return VSV_URI_NO_TOKEN;
    out->token = param;
    out->token_len = param_len;
    return VSV_URI_OK;
}

bool vsv_path_segment(const char *path, size_t len, unsigned n, const char **seg, size_t *seg_len)
{
    if (n == 0 || len == 0 || path[0] != '/')
        return false;
    size_t i = 1;
    for (unsigned k = 1;; k++) {
        if (i > len)
            return false;
        const char *slash = memchr(path + i, '/', len - i);
        size_t end = slash != NULL ? (size_t)(slash - path) : len;
        if (k == n) {
            *seg = path + i;
            *seg_len = end - i;
            return true;
        }
        if (slash == NULL)
            return false;
        i = end + 1;
    }
}

const char *vsv_request_origin(const char *origin_hdr, const char *referer, const char *fallback,
                               char *buf, size_t cap)
{
    if (cap < VSV_ORIGIN_MAX + 1)
        return NULL;
    buf[0] = '\0';
    if (origin_hdr != NULL) {
        size_t n = strnlen(origin_hdr, VSV_ORIGIN_MAX + 1);
        if (n <= VSV_ORIGIN_MAX)
            memcpy(buf, origin_hdr, n + 1);
        return buf;
    }
    if (referer != NULL) {
        const char *sep = strstr(referer, "://");
        if (sep == NULL)
            return buf;
        size_t n = (size_t)(sep - referer) + 3;
        n += strcspn(referer + n, "/?#");
        if (n <= VSV_ORIGIN_MAX) {
            memcpy(buf, referer, n);
            buf[n] = '\0';
        }
        return buf;
    }
    if (fallback != NULL) {
        size_t n = strnlen(fallback, VSV_ORIGIN_MAX + 1);
        if (n <= VSV_ORIGIN_MAX)
            memcpy(buf, fallback, n + 1);
        return buf;
    }
    return NULL;
}

bool vsv_claim_header(const json_t *claims, const char *name, char *buf, size_t cap)
{
    if (cap == 0)
        return false;
    buf[0] = '\0';
    const json_t *c = json_object_get(claims, name);
    size_t max = cap - 1 < VSV_HEADER_VALUE_MAX ? cap - 1 : VSV_HEADER_VALUE_MAX;
    if (json_is_integer(c)) {
        int n = snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(c));
        if (n < 0 || (size_t)n > max) {
            buf[0] = '\0';
            return false;
        }
        return true;
    }
    if (!json_is_string(c))
        return false;
    const char *s = json_string_value(c);
    size_t n = json_string_length(c);
    if (n == 0 || n > max)
        return false;
    if (!txt_printable(s, n))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return true;
}

int vsv_status(const char *reason)
{
    static const char *const unauthorized[] = {"missing_token", "malformed",     "alg_not_allowed",
                                               "unknown_kid",   "bad_signature", "expired",
                                               "not_yet_valid"};
    static const char *const forbidden[] = {"revoked_kid",    "revoked_token",   "revoked_subject",
                                            "wrong_origin",   "origin_required", "wrong_audience",
                                            "wrong_resource", "bad_uri",         "already_used"};
    if (strcmp(reason, "ok") == 0)
        return 200;
    for (size_t i = 0; i < sizeof(unauthorized) / sizeof(unauthorized[0]); i++)
        if (strcmp(reason, unauthorized[i]) == 0)
            return 401;
    for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
        if (strcmp(reason, forbidden[i]) == 0)
            return 403;
    return 503;
}

static vsv_answer vsv_refuse(const char *reason, json_t *claims)
{
    json_decref(claims);
    return (vsv_answer){.status = vsv_status(reason), .reason = reason, .claims = NULL};
}

vsv_answer vsv_check(vfy *v, const vsv_policy *p, const char *uri, size_t uri_len,
                     const char *origin_hdr, const char *referer)
{
    vsv_target t;
    vsv_uri_status us = vsv_parse_uri(uri, uri_len, &t);
    if (us == VSV_URI_NO_TOKEN)
        return vsv_refuse("missing_token", NULL);
    if (us != VSV_URI_OK)
        return vsv_refuse("bad_uri", NULL);
    if (t.token_len > VFY_TOKEN_MAX)
        return vsv_refuse("malformed", NULL);
    char token[VFY_TOKEN_MAX + 1];
    memcpy(token, t.token, t.token_len);
    token[t.token_len] = '\0';

    char obuf[VSV_ORIGIN_MAX + 1];
    const char *origin = vsv_request_origin(origin_hdr, referer, p->fallback, obuf, sizeof(obuf));
    json_t *claims = NULL;
    vfy_result r = vfy_verify_ex(v, token, origin, &claims);
    if (r != VFY_OK)
        return vsv_refuse(vfy_result_name(r), claims);
    /* A bound token must be checked against the request's origin, so a request with none
     * cannot use it: origin_required, the name the library gives this case where it checks
     * it itself (a library that lets it through is not trusted to here). */
    if (origin == NULL &&
        (json_object_get(claims, "origin") != NULL || json_object_get(claims, "origins") != NULL))
        return vsv_refuse("origin_required", claims);
    if (p->sub_segment > 0) {
        const char *seg;
        size_t seg_len;
        const json_t *sub = json_object_get(claims, "sub");
        if (!json_is_string(sub) ||
            !vsv_path_segment(t.path, t.path_len, p->sub_segment, &seg, &seg_len) ||
            json_string_length(sub) != seg_len || memcmp(json_string_value(sub), seg, seg_len) != 0)
            return vsv_refuse("wrong_resource", claims);
    }
    return (vsv_answer){.status = 200, .reason = "ok", .claims = claims};
}

bool vsv_addr_ok(const char *addr)
{
    size_t n = strnlen(addr, VSV_ADDR_MAX + 1);
    if (n == 0 || n > VSV_ADDR_MAX)
        return false;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || colon[1] == '\0')
        return false;
    unsigned long port = 0;
    for (const char *c = colon + 1; *c != '\0'; c++) {
        if (*c < '0' || *c > '9')
            return false;
        port = port * 10 + (unsigned long)(*c - '0');
        if (port > 65535)
            return false;
    }
    if (port == 0)
        return false;
    bool v6 = addr[0] == '[';
    if (v6 && colon[-1] != ']')
        return false;
    /* Only the characters of an address: CivetWeb reads letters after the port as flags. */
    for (const char *c = addr; c < colon; c++) {
        bool ok = (*c >= '0' && *c <= '9') || *c == '.' ||
                  (v6 && ((*c >= 'a' && *c <= 'f') || *c == ':' || *c == '[' || *c == ']'));
        if (!ok)
            return false;
    }
    return true;
}

/* ---- the daemon ---------------------------------------------------------------------- */

typedef struct {
    vfy *v;
    vsv_policy policy;
} vsv_server;

static void vsv_send(struct mg_connection *conn, const vsv_answer *a)
{
    mg_response_header_start(conn, a->status);
    mg_response_header_add(conn, "Content-Length", "0", -1);
    mg_response_header_add(conn, "Cache-Control", "no-store", -1);
    if (a->status == 200) {
        static const struct {
            const char *claim, *header;
        } passed[] = {{"sub", "X-Signd-Sub"}, {"jti", "X-Signd-Jti"}, {"exp", "X-Signd-Exp"}};
        char value[VSV_HEADER_VALUE_MAX + 1];
        for (size_t i = 0; i < sizeof(passed) / sizeof(passed[0]); i++)
            if (vsv_claim_header(a->claims, passed[i].claim, value, sizeof(value)))
                mg_response_header_add(conn, passed[i].header, value, -1);
    } else {
        mg_response_header_add(conn, "X-Signd-Reason", a->reason, -1);
    }
    mg_response_header_send(conn);
}

static int vsv_handle(struct mg_connection *conn, void *data)
{
    const vsv_server *s = data;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *orig = mg_get_header(conn, "X-Original-URI");
    char own[VSV_URI_MAX + 1];
    const char *uri = orig;
    size_t uri_len = 0;
    vsv_answer a;
    if (uri == NULL) {
        /* No proxy header: the request's own target (decode_url is off, so it is raw). */
        int n = snprintf(own, sizeof(own), "%s%s%s", ri->local_uri_raw ? ri->local_uri_raw : "",
                         ri->query_string ? "?" : "", ri->query_string ? ri->query_string : "");
        uri = n >= 0 && (size_t)n < sizeof(own) ? own : NULL;
    }
    if (uri != NULL)
        uri_len = strnlen(uri, VSV_URI_MAX + 1);
    if (uri == NULL || uri_len > VSV_URI_MAX)
        a = vsv_refuse("bad_uri", NULL);
    else
        a = vsv_check(s->v, &s->policy, uri, uri_len, mg_get_header(conn, "Origin"),
                      mg_get_header(conn, "Referer"));
    vsv_send(conn, &a);
    json_decref(a.claims);
    return a.status;
}

/* CivetWeb's errors and its own messages: one line on stderr, never the request. */
static int vsv_log(const struct mg_connection *conn, const char *message)
{
    (void)conn;
    fprintf(stderr, "signd-verify: http: %s\n", message);
    return 1;
}

int vsv_run(const vfy_config *vcfg, const vsv_config *cfg, char *err, size_t errlen)
{
    if (!vsv_addr_ok(cfg->addr)) {
        snprintf(err, errlen, "--serve must be HOST:PORT (IPv4 or [IPv6], port 1..65535)");
        return 2;
    }
    if (cfg->threads == 0 || cfg->threads > VSV_THREADS_MAX) {
        snprintf(err, errlen, "--serve-threads must be 1..%u", VSV_THREADS_MAX);
        return 2;
    }
    /* Blocked before any thread exists, so that every thread inherits it and sigwait below
     * is the one place that takes them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &stop, NULL) != 0) {
        snprintf(err, errlen, "cannot block SIGTERM");
        return 2;
    }
    vsv_server s = {.v = NULL, .policy = cfg->policy};
    if (vfy_open(vcfg, &s.v, err, errlen) != VFY_E_OK)
        return 2;

    char threads[16], reqmax[16], timeout[16];
    snprintf(threads, sizeof(threads), "%u", cfg->threads);
    snprintf(reqmax, sizeof(reqmax), "%u", (unsigned)VSV_REQUEST_MAX);
    snprintf(timeout, sizeof(timeout), "%u", (unsigned)VSV_REQUEST_TIMEOUT_MS);
    const char *options[] = {
        "listening_ports", cfg->addr, "num_threads", threads, "max_request_size", reqmax,
        "request_timeout_ms", timeout, "keep_alive_timeout_ms", timeout, "enable_keep_alive", "yes",
        "tcp_nodelay", "1",
        /* The raw target: the token and the path are read as the web server got them. */
        "decode_url", "no", NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.log_message = vsv_log;
    struct mg_init_data init = {
        .callbacks = &cb, .user_data = &s, .configuration_options = options};
    struct mg_error_data ed;
    char ebuf[256] = "";
    memset(&ed, 0, sizeof(ed));
    ed.text = ebuf;
    ed.text_buffer_size = sizeof(ebuf);
    mg_init_library(0);
    struct mg_context *ctx = mg_start2(&init, &ed);
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", cfg->addr, ebuf);
        vfy_close(s.v);
        return 2;
    }
    mg_set_request_handler(ctx, "/", vsv_handle, &s);
    struct mg_server_port sp[2];
    int np = mg_get_server_ports(ctx, 2, sp);
    printf("serving %.*s:%d\n", (int)(strrchr(cfg->addr, ':') - cfg->addr), cfg->addr,
           np > 0 ? sp[0].port : -1);
    fflush(stdout);

    int sig = 0;
    while (sigwait(&stop, &sig) != 0)
        ;
    mg_stop(ctx);
    vfy_close(s.v);
    return 0;
}
