/* srv: CivetWeb, routing, authentication, responses. See server.h. */
#include "appliance/server.h"

#include "civetweb.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SRV_HEAD_MAX 1024
#define SRV_TLS12_CIPHERS                                                                          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define SRV_ONE_WRITE_MAX (64 * 1024) /* responses up to this go out in a single write */

struct srv {
    struct mg_context *ctx;
    const api_env *env;
    const auth_state *auth;
    int port;
};

typedef enum {
    SRV_P_KEYS,
    SRV_P_KEY,
    SRV_P_KEY_SIGN,
    SRV_P_TOKENS,
    SRV_P_JWKS,
    SRV_P_REVOCATIONS,
    SRV_P_HEALTHZ,
    SRV_P_READYZ,
    SRV_P_NONE
} srv_path;

typedef struct {
    srv_path path;
    const char *method;
    api_err (*handler)(const api_req *, api_resp *);
    int needs_auth;
} srv_route;

/* Every route, its method, and whether it needs the admin credential. Public: JWKS,
 * revocations and health. */
static const srv_route srv_routes[] = {
    {SRV_P_KEYS, "POST", api_keys_create, 1},   {SRV_P_KEYS, "GET", api_keys_list, 1},
    {SRV_P_KEY, "GET", api_keys_get, 1},        {SRV_P_KEY, "DELETE", api_keys_revoke, 1},
    {SRV_P_KEY_SIGN, "POST", api_keys_sign, 1}, {SRV_P_TOKENS, "POST", api_tokens_mint, 1},
    {SRV_P_JWKS, "GET", api_jwks, 0},           {SRV_P_REVOCATIONS, "GET", api_revocations, 0},
    {SRV_P_HEALTHZ, "GET", api_healthz, 0},     {SRV_P_READYZ, "GET", api_readyz, 0},
};

static const char *srv_reason(int status)
{
    const char *r = mg_get_response_code_text(NULL, status);
    return r ? r : "Unknown";
}

/* Writes status, headers and body; a single write when it fits in SRV_ONE_WRITE_MAX (with
 * tcp_nodelay a split response costs a packet, without it a 40 ms delayed ACK). */
static void srv_send(struct mg_connection *c, int status, const char *extra, const char *body,
                     size_t len, int close)
{
    char head[SRV_HEAD_MAX];
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 %d %s\r\n"
                        "Content-Type: application/json\r\n"
                        "Content-Length: %zu\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "%s%s%s\r\n",
                        status, srv_reason(status), status == 304 ? 0 : len,
                        strstr(extra, "Cache-Control:") ? "" : "Cache-Control: no-store\r\n",
                        close ? "Connection: close\r\n" : "", extra);
    if (hlen < 0 || hlen >= (int)sizeof(head))
        return;
    if (status == 304 || len == 0) {
        mg_write(c, head, (size_t)hlen);
        return;
    }
    if ((size_t)hlen + len <= SRV_ONE_WRITE_MAX) {
        char buf[SRV_ONE_WRITE_MAX];
        memcpy(buf, head, (size_t)hlen);
        memcpy(buf + hlen, body, len);
        mg_write(c, buf, (size_t)hlen + len);
    } else {
        mg_write(c, head, (size_t)hlen);
        mg_write(c, body, len);
    }
}

/* The JSON error document for e with message msg. */
static int srv_send_error(struct mg_connection *c, api_err e, const char *msg, const char *extra,
                          int close)
{
    const api_err_info *info = api_err_table(e);
    json_t *j = json_pack("{s:{s:s, s:s}}", "error", "code", info->code, "message",
                          msg && *msg ? msg : info->code);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    const char *fallback = "{\"error\":{\"code\":\"internal_error\",\"message\":\"oom\"}}";
    srv_send(c, info->http_status, extra ? extra : "", body ? body : fallback,
             strlen(body ? body : fallback), close);
    free(body);
    return info->http_status;
}

/* Splits the path into a route and, for /v1/keys/{kid}..., the kid text. */
static srv_path srv_match(const char *uri, char kid[64])
{
    kid[0] = '\0';
    static const struct {
        const char *path;
        srv_path id;
    } fixed[] = {
        {"/v1/keys", SRV_P_KEYS},
        {"/v1/tokens", SRV_P_TOKENS},
        {"/.well-known/jwks.json", SRV_P_JWKS},
        {"/v1/revocations", SRV_P_REVOCATIONS},
        {"/healthz", SRV_P_HEALTHZ},
        {"/readyz", SRV_P_READYZ},
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strcmp(uri, fixed[i].path) == 0)
            return fixed[i].id;
    if (strncmp(uri, "/v1/keys/", 9) != 0)
        return SRV_P_NONE;
    const char *seg = uri + 9;
    size_t n = strcspn(seg, "/");
    if (n == 0 || n >= 64)
        return n == 0 ? SRV_P_NONE : (snprintf(kid, 64, "%s", "-"), SRV_P_KEY);
    memcpy(kid, seg, n);
    kid[n] = '\0';
    if (seg[n] == '\0')
        return SRV_P_KEY;
    if (strcmp(seg + n, "/sign") == 0)
        return SRV_P_KEY_SIGN;
    return SRV_P_NONE;
}

/* Content-Type is application/json, parameters (charset) allowed. */
static int srv_is_json(const char *ct)
{
    if (ct == NULL)
        return 0;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* Reads the body into buf (API_BODY_MAX + 1 bytes); -1 when it exceeds the bound. */
static long srv_read_body(struct mg_connection *c, const struct mg_request_info *ri, char *buf)
{
    if (ri->content_length > API_BODY_MAX)
        return -1;
    size_t got = 0;
    for (;;) {
        int r = mg_read(c, buf + got, API_BODY_MAX + 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got > API_BODY_MAX)
            return -1;
    }
    buf[got] = '\0';
    return (long)got;
}

/* One JSON line per request on stderr: never a header, a body or a credential. */
static void srv_log_request(struct mg_connection *c, int status, const struct timespec *t0)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
    json_t *j = json_pack("{s:I, s:s, s:s%, s:i, s:f}", "time", (json_int_t)time(NULL), "method",
                          ri->request_method, "path", ri->local_uri ? ri->local_uri : "",
                          strnlen(ri->local_uri ? ri->local_uri : "", 128), "status", status,
                          "latency_ms", ms);
    char *line = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (line != NULL)
        fprintf(stderr, "%s\n", line);
    free(line);
    json_decref(j);
}

static int srv_route_request(struct mg_connection *c, srv *s)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    char kid_text[64];
    srv_path path = srv_match(ri->local_uri ? ri->local_uri : "", kid_text);
    if (path == SRV_P_NONE)
        return srv_send_error(c, API_ERR_NOT_FOUND, "no such resource", NULL, 0);

    const srv_route *route = NULL;
    char allow[128] = "Allow: ";
    for (size_t i = 0; i < sizeof(srv_routes) / sizeof(srv_routes[0]); i++) {
        if (srv_routes[i].path != path)
            continue;
        if (strcmp(srv_routes[i].method, ri->request_method) == 0)
            route = &srv_routes[i];
        if (strlen(allow) > 7)
            strcat(allow, ", ");
        strcat(allow, srv_routes[i].method);
    }
    if (route == NULL) {
        strcat(allow, "\r\n");
        return srv_send_error(c, API_ERR_METHOD_NOT_ALLOWED, "method not allowed here", allow, 0);
    }
    if (route->needs_auth && !auth_check_bearer(s->auth, mg_get_header(c, "Authorization")))
        return srv_send_error(c, API_ERR_UNAUTHORIZED, "a valid bearer credential is required",
                              "WWW-Authenticate: Bearer realm=\"signd\"\r\n", 0);

    api_req q = {.env = s->env, .method = ri->request_method, .query = ri->query_string};
    q.if_none_match = mg_get_header(c, "If-None-Match");
    q.now = (int64_t)time(NULL);
    if (path == SRV_P_KEY || path == SRV_P_KEY_SIGN) {
        if (hsm_kid_parse(kid_text, &q.kid) != 0)
            return srv_send_error(c, API_ERR_INVALID_KID,
                                  "a kid is 32 lowercase hexadecimal characters", NULL, 0);
        q.has_kid = 1;
    }

    static _Thread_local char body[API_BODY_MAX + 1];
    if (strcmp(ri->request_method, "POST") == 0 || strcmp(ri->request_method, "DELETE") == 0) {
        long n = srv_read_body(c, ri, body);
        if (n < 0)
            return srv_send_error(c, API_ERR_BODY_TOO_LARGE, "request bodies are limited to 64 KiB",
                                  NULL, 1);
        if (n > 0 && !srv_is_json(mg_get_header(c, "Content-Type")))
            return srv_send_error(c, API_ERR_UNSUPPORTED_MEDIA_TYPE,
                                  "the body must be sent as Content-Type: application/json", NULL,
                                  0);
        q.body = body;
        q.body_len = (size_t)n;
    }

    api_resp r;
    memset(&r, 0, sizeof(r));
    api_err e = route->handler(&q, &r);
    int status;
    if (e != API_OK) {
        status = srv_send_error(c, e, r.errmsg, r.headers, 0);
    } else {
        status = r.status;
        srv_send(c, r.status, r.headers, r.body ? r.body : "", r.body ? r.len : 0, 0);
    }
    api_resp_free(&r);
    return status;
}

/* CivetWeb's handler for every path: route, then log. */
static int srv_dispatch(struct mg_connection *c, void *arg)
{
    srv *s = arg;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int status = srv_route_request(c, s);
    if (s->env->cfg->log_requests)
        srv_log_request(c, status, &t0);
    return status;
}

/* Errors CivetWeb raises itself (bad request line, headers too large, timeouts) get the
 * same JSON shape as ours. */
static int srv_http_error(struct mg_connection *c, int status, const char *msg)
{
    srv_send_error(c, api_err_from_status(status), msg, NULL, 1);
    return 0;
}

/* CivetWeb 1.15 wants certificate and key in one file; ours are two (tls/cert.pem and
 * tls/key.pem, so the key keeps its own 0600 file). Load both here and set the policy:
 * TLS 1.2 and up. Returning 0 lets CivetWeb go on with the rest of its set-up (the cipher
 * list, the session id context); with no ssl_certificate option it loads no file itself. */
static int srv_init_ssl(void *ssl_ctx, void *arg)
{
    SSL_CTX *ctx = ssl_ctx;
    const cfg *c = ((srv *)arg)->env->cfg;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, c->tls_certificate) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, c->tls_private_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "signd: TLS set-up failed: certificate %s, key %s: %s\n",
                c->tls_certificate, c->tls_private_key, ERR_reason_error_string(ERR_get_error()));
        return -1;
    }
    return 0;
}

static void srv_exit_thread(const struct mg_context *ctx, int type, void *unused)
{
    (void)unused;
    srv *s = mg_get_user_data(ctx);
    if (type == 1 && s != NULL)
        kp_thread_done(s->env->kp);
}

static int srv_log_message(const struct mg_connection *c, const char *msg)
{
    (void)c;
    fprintf(stderr, "signd: civetweb: %s\n", msg);
    return 1;
}

srv *srv_start(const api_env *env, const auth_state *auth, char *err, size_t errlen)
{
    const cfg *c = env->cfg;
    srv *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->env = env;
    s->auth = auth;
    if (!(mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS)) {
        snprintf(err, errlen, "CivetWeb was built without TLS");
        free(s);
        return NULL;
    }
    char ports[300], threads[16], req_to[16], ka_to[16];
    snprintf(ports, sizeof(ports), "%s:%us", c->listen_address, (unsigned)c->port);
    snprintf(threads, sizeof(threads), "%u", (unsigned)c->worker_threads);
    snprintf(req_to, sizeof(req_to), "%u", (unsigned)c->request_timeout_ms);
    snprintf(ka_to, sizeof(ka_to), "%u", (unsigned)c->keep_alive_timeout_ms);
    const char *options[] = {
        "listening_ports",
        ports,
        /* 4: no SSLv2/3, TLS 1.0 or 1.1; srv_init_ssl pins the minimum to TLS 1.2 too. */
        "ssl_cipher_list",
        SRV_TLS12_CIPHERS,
        "ssl_protocol_version",
        "4",
        "num_threads",
        threads,
        "request_timeout_ms",
        req_to,
        "keep_alive_timeout_ms",
        ka_to,
        "enable_keep_alive",
        "yes",
        "tcp_nodelay",
        "1",
        "decode_url",
        "yes",
        NULL,
    };
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.http_error = srv_http_error;
    cb.init_ssl = srv_init_ssl;
    cb.exit_thread = srv_exit_thread;
    cb.log_message = srv_log_message;
    struct mg_init_data init = {.callbacks = &cb, .user_data = s, .configuration_options = options};
    struct mg_error_data ed;
    char ebuf[256] = "";
    memset(&ed, 0, sizeof(ed));
    ed.text = ebuf;
    ed.text_buffer_size = sizeof(ebuf);
    s->ctx = mg_start2(&init, &ed);
    if (s->ctx == NULL) {
        snprintf(err, errlen, "cannot start HTTPS on %s: %s", ports, ebuf);
        free(s);
        return NULL;
    }
    mg_set_request_handler(s->ctx, "/", srv_dispatch, s);
    struct mg_server_port sp[4];
    int np = mg_get_server_ports(s->ctx, 4, sp);
    s->port = np > 0 ? sp[0].port : (int)c->port;
    return s;
}

int srv_port(const srv *s)
{
    return s->port;
}

void srv_stop(srv *s)
{
    if (s == NULL)
        return;
    mg_stop(s->ctx);
    mg_exit_library();
    free(s);
}
