/* srv: CivetWeb, routing, authentication, responses. See server.h. */
#include "appliance/front/server.h"

#include "appliance/store/sdb.h"
#include "appliance/common/jlog.h"
#include "appliance/common/metrics.h"
#include "appliance/common/ratelimit.h"
#include "appliance/core/audit.h"
#include "appliance/core/publish.h"
#include "appliance/front/console.h"
#include "appliance/front/tls.h"

#include "civetweb.h"
#include "base/text.h"
#include "base/clock.h"

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SRV_HEAD_MAX 1024
#define SRV_ONE_WRITE_MAX (64 * 1024) /* responses up to this go out in a single write */

struct srv {
    struct mg_context *ctx;
    const api_env *env;
    rl_table *per_credential; /* requests per credential id */
    rl_table *per_address;    /* bad credentials per client address */
    int port;
    char hsts[64]; /* the Strict-Transport-Security header line, or "" */
    /* Stopping: CivetWeb's mg_stop makes every later write a no-op, so a request still
     * running would lose its response (its change committed, its caller never told).
     * srv_stop first refuses new requests and waits for these to reach zero. */
    atomic_int inflight;
    atomic_int draining;
    atomic_uint subscribers; /* event streams open now, at most events_max_subscribers */
    /* CivetWeb gives each connection a thread of its own for its whole life, idle keep-alive
     * included: past keepalive_max connections on threads, a response closes its connection
     * (srv_send), so that the connections queued behind them get a thread within a request's
     * time rather than after keep_alive_timeout_ms. */
    atomic_int connections;
    int keepalive_max;
    char boot_id[9]; /* request ids: "<boot_id>-<n>", unique across restarts */
    atomic_ullong requests;
};

/* The id of the request this CivetWeb worker thread is answering: sent back as
 * X-Request-Id on every response and written as request_id in its log line, so that an app
 * server can quote the one and an operator find the other. "<boot_id>-<n>": at most 8 + 1 +
 * 20 characters. A worker answers one request at a time, so a thread-local needs no lock. */
#define SRV_REQUEST_ID_MAX 32
static _Thread_local char srv_request_id[SRV_REQUEST_ID_MAX];

/* Gives the request this thread is about to answer the next id. */
static void srv_next_request_id(srv *s)
{
    snprintf(srv_request_id, sizeof(srv_request_id), "%s-%llu", s->boot_id,
             (unsigned long long)atomic_fetch_add(&s->requests, 1) + 1);
}

/* How long srv_stop waits for requests in flight before it stops anyway. */
#define SRV_DRAIN_MS 30000

/* Bearer secrets longer than this are not credentials: refused before hashing. */
#define SRV_BEARER_MAX 256
/* Buckets in each rate-limit table: well above the credentials and the addresses active
 * within one refill period (see ratelimit.h for what eviction costs). */
#define SRV_RL_SLOTS 65536

typedef enum {
    SRV_P_KEYS,
    SRV_P_KEY,
    SRV_P_KEY_SIGN,
    SRV_P_KEY_ROTATE,
    SRV_P_TOKENS,
    SRV_P_JWKS,
    SRV_P_REVOCATIONS,
    SRV_P_HEALTHZ,
    SRV_P_READYZ,
    SRV_P_CREDENTIALS,
    SRV_P_CREDENTIAL,
    SRV_P_AUDIT,
    SRV_P_AUDIT_EXPORT,
    SRV_P_AUDIT_KEY,
    SRV_P_REVOCATION_FEED,
    SRV_P_REVOCATION_KEY,
    SRV_P_REVOCATION_EVENTS,
    SRV_P_METRICS,
    SRV_P_TOKEN_REDEEM,
    SRV_P_SUBJECT_REVOKE,
    SRV_P_TOKEN,
    SRV_P_STATUS_LIST,
    SRV_P_WHOAMI,
    SRV_P_CONSOLE_ROOT,
    SRV_P_CONSOLE_INDEX,
    SRV_P_CONSOLE_FILE,
    SRV_P_NONE
} srv_path;

/* Role sets: bit r stands for cred_role r. PUBLIC needs no credential at all. */
#define SRV_PUBLIC 0u
#define SRV_ADMIN (1u << CRED_ROLE_ADMIN)
#define SRV_SIGNER (1u << CRED_ROLE_SIGNER)
#define SRV_AUDITOR (1u << CRED_ROLE_AUDITOR)
#define SRV_REDEEMER (1u << CRED_ROLE_REDEEMER)

typedef struct {
    srv_path path;
    const char *method;
    api_err (*handler)(const api_req *, api_resp *);
    unsigned roles; /* who may call it; SRV_PUBLIC: anyone, no credential */
    /* Instead of handler: a response streamed on the connection (the event stream), which
     * returns the status it sent. */
    int (*stream)(struct mg_connection *c, srv *s, const api_req *q);
} srv_route;

static int srv_events(struct mg_connection *c, srv *s, const api_req *q);
static api_err srv_whoami(const api_req *q, api_resp *r);

#define SRV_ANY_ROLE (SRV_ADMIN | SRV_SIGNER | SRV_AUDITOR | SRV_REDEEMER)

/* The authorization matrix: every route, its method and the roles that may call it. This
 * is the only place a role is checked; handlers add only what depends on the request (a
 * signer's kids and max_ttl). Admins manage keys and credentials but do not sign
 * (separation of duties: a leaked admin secret mints no tokens); auditors read. */
static const srv_route srv_routes[] = {
    {SRV_P_KEYS, "POST", api_keys_create, SRV_ADMIN, NULL},
    {SRV_P_KEYS, "GET", api_keys_list, SRV_ADMIN | SRV_AUDITOR, NULL},
    {SRV_P_KEY, "GET", api_keys_get, SRV_ADMIN | SRV_AUDITOR, NULL},
    {SRV_P_KEY, "DELETE", api_keys_revoke, SRV_ADMIN, NULL},
    {SRV_P_KEY_ROTATE, "POST", api_keys_rotate, SRV_ADMIN, NULL},
    {SRV_P_KEY_SIGN, "POST", api_keys_sign, SRV_SIGNER, NULL},
    {SRV_P_TOKENS, "POST", api_tokens_mint, SRV_SIGNER, NULL},
    /* A signer revokes the tokens it minted (checked in the handler), an admin any. */
    {SRV_P_TOKEN, "DELETE", api_tokens_revoke, SRV_ADMIN | SRV_SIGNER, NULL},
    {SRV_P_TOKEN_REDEEM, "POST", api_tokens_redeem, SRV_REDEEMER, NULL},
    /* A signer only when its kids are "all" (checked in the handler), an admin always. */
    {SRV_P_SUBJECT_REVOKE, "POST", api_subjects_revoke, SRV_ADMIN | SRV_SIGNER, NULL},
    {SRV_P_STATUS_LIST, "GET", api_status_list, SRV_PUBLIC, NULL},
    {SRV_P_CREDENTIALS, "POST", api_credentials_create, SRV_ADMIN, NULL},
    {SRV_P_CREDENTIALS, "GET", api_credentials_list, SRV_ADMIN, NULL},
    {SRV_P_CREDENTIAL, "GET", api_credentials_get, SRV_ADMIN, NULL},
    {SRV_P_CREDENTIAL, "DELETE", api_credentials_revoke, SRV_ADMIN, NULL},
    {SRV_P_AUDIT, "GET", api_audit_list, SRV_ADMIN | SRV_AUDITOR, NULL},
    {SRV_P_AUDIT_EXPORT, "GET", api_audit_export, SRV_ADMIN | SRV_AUDITOR, NULL},
    {SRV_P_AUDIT_KEY, "GET", api_audit_key, SRV_PUBLIC, NULL},
    {SRV_P_JWKS, "GET", api_jwks, SRV_PUBLIC, NULL},
    {SRV_P_REVOCATIONS, "GET", api_revocations, SRV_PUBLIC, NULL},
    {SRV_P_REVOCATION_FEED, "GET", api_revocations_feed, SRV_PUBLIC, NULL},
    {SRV_P_REVOCATION_KEY, "GET", api_revocations_key, SRV_PUBLIC, NULL},
    {SRV_P_REVOCATION_EVENTS, "GET", NULL, SRV_PUBLIC, srv_events},
    {SRV_P_HEALTHZ, "GET", api_healthz, SRV_PUBLIC, NULL},
    {SRV_P_READYZ, "GET", api_readyz, SRV_PUBLIC, NULL},
    /* Not public: per-kid signature counts and key states are operational data. Prometheus
     * scrapes with an auditor credential (bearer_token_file). */
    {SRV_P_METRICS, "GET", api_metrics, SRV_ADMIN | SRV_AUDITOR, NULL},
    /* The caller's own credential and the routes of this table its role may call: what the
     * console shows follows from it, so the console hides only what would be 403. */
    {SRV_P_WHOAMI, "GET", srv_whoami, SRV_ANY_ROLE, NULL},
    /* The web console's files (console.h): public, since the page has no credential until
     * one is pasted into it; the API calls it then makes are checked as any other. HEAD is
     * routed here only: these are the files a browser or a proxy may probe. */
    {SRV_P_CONSOLE_ROOT, "GET", con_redirect, SRV_PUBLIC, NULL},
    {SRV_P_CONSOLE_ROOT, "HEAD", con_redirect, SRV_PUBLIC, NULL},
    {SRV_P_CONSOLE_INDEX, "GET", con_get, SRV_PUBLIC, NULL},
    {SRV_P_CONSOLE_INDEX, "HEAD", con_get, SRV_PUBLIC, NULL},
    {SRV_P_CONSOLE_FILE, "GET", con_get, SRV_PUBLIC, NULL},
    {SRV_P_CONSOLE_FILE, "HEAD", con_get, SRV_PUBLIC, NULL},
};

#define SRV_N_ROUTES (sizeof(srv_routes) / sizeof(srv_routes[0]))
_Static_assert(SRV_N_ROUTES < MET_ROUTE_UNMATCHED, "every route has its own metrics index");

/* What srv_route_request learnt about a request, for its metrics and its log line. */
typedef struct {
    char caller_id[CRED_ID_LEN + 1]; /* "" when none authenticated */
    int route;                       /* index in srv_routes, -1 when none matched */
    sk_kid kid;                      /* the path's kid, when has_kid */
    int has_kid;
    int handled; /* the handler ran and answered result */
    api_err result;
} srv_outcome;

static const char *srv_reason(int status)
{
    const char *r = mg_get_response_code_text(NULL, status);
    return r ? r : "Unknown";
}

/* A body read failed on its framing (srv_send_body_error): srv_drain must not read on. */
static _Thread_local int srv_body_unframed;

/* What srv_drain reads and drops of a request body left unread, at most. */
#define SRV_DRAIN_BYTES (1024 * 1024)
#define SRV_DRAIN_BODY_MS 1000

/* After the response (srv_dispatch, so that its buffer reuses stack the response already
 * touched rather than adding pages to every worker): reads and drops what is left of the request
 * body (refused before it was read: 401, 413, ...), so that a client still sending it reads the
 * response rather than a reset. 0 when the body ended; -1 past SRV_DRAIN_BYTES or SRV_DRAIN_BODY_MS
 * (plus one read's request_timeout_ms), and the connection is to be closed: left to itself,
 * CivetWeb reads the whole body however large or slow it is, holding the thread. */
static int srv_drain(struct mg_connection *c)
{
    if (srv_body_unframed) { /* nothing after a malformed body is a body: close */
        srv_body_unframed = 0;
        return -1;
    }
    /* No body announced, or a request CivetWeb could not parse (its headers are reset): a
     * read would wait for bytes that are not a body. */
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (ri == NULL || (ri->content_length <= 0 && mg_get_header(c, "Transfer-Encoding") == NULL))
        return 0;
    char buf[8192];
    int64_t t0 = clk_now_ms();
    size_t dropped = 0;
    for (;;) {
        int r = mg_read(c, buf, sizeof(buf));
        if (r == 0)
            return 0;
        if (r < 0)
            return -1;
        dropped += (size_t)r;
        if (dropped >= SRV_DRAIN_BYTES || clk_ms_since(t0) > SRV_DRAIN_BODY_MS)
            return -1;
    }
}

/* 1 when the comma-separated header value v holds token (case-insensitive). */
static int srv_has_token(const char *v, const char *token)
{
    size_t n = strlen(token);
    while (*v != '\0') {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *end = v;
        while (*end != '\0' && *end != ',')
            end++;
        const char *last = end;
        while (last > v && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - v) == n && strncasecmp(v, token, n) == 0)
            return 1;
        v = end;
    }
    return 0;
}

/* 1 when the client asked that its connection end with this answer ("Connection: close",
 * or HTTP/1.0 without keep-alive): CivetWeb then closes it, so the answer says so too (RFC
 * 9112 section 9.6). Without it a client that pools connections (python-requests) takes the
 * connection for a kept-alive one, sends its next request on it and finds it closed with
 * no answer: about 1 request in 100 under a few concurrent clients. */
static int srv_client_closes(const struct mg_connection *c)
{
    const char *v = mg_get_header(c, "Connection");
    if (v != NULL && srv_has_token(v, "close"))
        return 1;
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (ri != NULL && ri->http_version != NULL && strcmp(ri->http_version, "1.0") == 0)
        return v == NULL || !srv_has_token(v, "keep-alive");
    return 0;
}

/* Writes status, headers and body; a single write when it fits in SRV_ONE_WRITE_MAX (with
 * tcp_nodelay a split response costs a packet, without it a 40 ms delayed ACK). wipe: the
 * body holds a secret, so the stack copy is wiped after the write. */
static void srv_send(struct mg_connection *c, int status, const char *extra, const char *body,
                     size_t len, int close, int wipe)
{
    srv *s = mg_get_user_data(mg_get_context(c));
    if ((s != NULL && atomic_load(&s->connections) > s->keepalive_max) || srv_client_closes(c))
        close = 1;
    char rid[SRV_REQUEST_ID_MAX + 20] = "";
    if (srv_request_id[0] != '\0')
        snprintf(rid, sizeof(rid), "X-Request-Id: %s\r\n", srv_request_id);
    char head[SRV_HEAD_MAX];
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 %d %s\r\n"
                        "%s"
                        "Content-Length: %zu\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "%s%s%s%s%s\r\n",
                        status, srv_reason(status),
                        strstr(extra, "Content-Type:") ? "" : "Content-Type: application/json\r\n",
                        status == 304 ? 0 : len, rid, s != NULL ? s->hsts : "",
                        strstr(extra, "Cache-Control:") ? "" : "Cache-Control: no-store\r\n",
                        close ? "Connection: close\r\n" : "", extra);
    if (hlen < 0 || hlen >= (int)sizeof(head))
        return;
    /* HEAD: the same head, Content-Length included, and never a body (RFC 9110 9.3.2). */
    const struct mg_request_info *ri = mg_get_request_info(c);
    int head_only =
        ri != NULL && ri->request_method != NULL && strcmp(ri->request_method, "HEAD") == 0;
    if (status == 304 || len == 0 || head_only) {
        mg_write(c, head, (size_t)hlen);
    } else if ((size_t)hlen + len <= SRV_ONE_WRITE_MAX) {
        char buf[SRV_ONE_WRITE_MAX];
        memcpy(buf, head, (size_t)hlen);
        memcpy(buf + hlen, body, len);
        mg_write(c, buf, (size_t)hlen + len);
        if (wipe)
            OPENSSL_cleanse(buf, (size_t)hlen + len);
    } else {
        mg_write(c, head, (size_t)hlen);
        mg_write(c, body, len);
    }
    /* "Connection: close" alone does not end it: CivetWeb would wait for the next request
     * on it (a request refused while draining, a CivetWeb error) until keep_alive_timeout_ms,
     * holding a worker thread for a client that has been told to go. */
    if (close)
        mg_disable_connection_keep_alive(c);
}

char *srv_error_body(api_err e, const char *msg)
{
    const api_err_info *info = api_err_table(e);
    json_t *j = json_pack("{s:{s:s, s:s}}", "error", "code", info->code, "message",
                          msg && *msg ? msg : info->code);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return body;
}

/* The JSON error document for e with message msg. */
static int srv_send_error(struct mg_connection *c, api_err e, const char *msg, const char *extra,
                          int close)
{
    const api_err_info *info = api_err_table(e);
    char *body = srv_error_body(e, msg);
    const char *fallback = "{\"error\":{\"code\":\"internal_error\",\"message\":\"oom\"}}";
    srv_send(c, info->http_status, extra ? extra : "", body ? body : fallback,
             strlen(body ? body : fallback), close, 0);
    free(body);
    return info->http_status;
}

/* The paths without a parameter, for srv_match and srv_print_routes alike. */
static const struct {
    const char *path;
    srv_path id;
} srv_fixed[] = {
    {"/v1/keys", SRV_P_KEYS},
    {"/v1/tokens", SRV_P_TOKENS},
    {"/v1/tokens/redeem", SRV_P_TOKEN_REDEEM},
    {"/v1/subjects/revoke", SRV_P_SUBJECT_REVOKE},
    {"/v1/credentials", SRV_P_CREDENTIALS},
    {"/v1/audit", SRV_P_AUDIT},
    {"/v1/audit/export", SRV_P_AUDIT_EXPORT},
    {"/v1/audit/key", SRV_P_AUDIT_KEY},
    {"/.well-known/jwks.json", SRV_P_JWKS},
    {"/v1/revocations", SRV_P_REVOCATIONS},
    {"/v1/revocations/feed", SRV_P_REVOCATION_FEED},
    {"/v1/revocations/key", SRV_P_REVOCATION_KEY},
    {"/v1/revocations/events", SRV_P_REVOCATION_EVENTS},
    {"/healthz", SRV_P_HEALTHZ},
    {"/readyz", SRV_P_READYZ},
    {"/metrics", SRV_P_METRICS},
    {"/v1/whoami", SRV_P_WHOAMI},
    {"/console", SRV_P_CONSOLE_ROOT},
    {"/console/", SRV_P_CONSOLE_INDEX},
};

/* The paths with a parameter, as srv_print_routes names them; srv_match parses these. */
static const struct {
    const char *path;
    srv_path id;
} srv_templates[] = {
    {"/v1/keys/{kid}", SRV_P_KEY},
    {"/v1/keys/{kid}/sign", SRV_P_KEY_SIGN},
    {"/v1/keys/{kid}/rotate", SRV_P_KEY_ROTATE},
    {"/v1/credentials/{id}", SRV_P_CREDENTIAL},
    {"/v1/tokens/{jti}", SRV_P_TOKEN},
    {"/v1/status-lists/{n}", SRV_P_STATUS_LIST},
    {"/console/{file}", SRV_P_CONSOLE_FILE},
};

/* Splits the path into a route and, for /v1/keys/{kid}..., /v1/credentials/{id},
 * /v1/tokens/{jti} and /v1/status-lists/{n}, the segment's text (checked by the caller or
 * the handler; "!" when it is too long to be anything, so that it fails every check). */
static srv_path srv_match(const char *uri, char seg_out[SRV_SEG_MAX])
{
    static const struct {
        const char *prefix;
        srv_path id;
    } params[] = {{"/v1/keys/", SRV_P_KEY},
                  {"/v1/credentials/", SRV_P_CREDENTIAL},
                  {"/v1/tokens/", SRV_P_TOKEN},
                  {"/v1/status-lists/", SRV_P_STATUS_LIST},
                  {"/console/", SRV_P_CONSOLE_FILE}};
    seg_out[0] = '\0';
    for (size_t i = 0; i < sizeof(srv_fixed) / sizeof(srv_fixed[0]); i++)
        if (strcmp(uri, srv_fixed[i].path) == 0)
            return srv_fixed[i].id;
    const char *seg = NULL;
    srv_path leaf = SRV_P_NONE;
    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]) && seg == NULL; i++) {
        size_t plen = strlen(params[i].prefix);
        if (strncmp(uri, params[i].prefix, plen) == 0) {
            seg = uri + plen;
            leaf = params[i].id;
        }
    }
    if (seg == NULL)
        return SRV_P_NONE;
    int keys = leaf == SRV_P_KEY;
    size_t n = strcspn(seg, "/");
    if (n == 0)
        return SRV_P_NONE;
    if (n >= SRV_SEG_MAX)
        snprintf(seg_out, SRV_SEG_MAX, "%s", "!");
    else {
        memcpy(seg_out, seg, n);
        seg_out[n] = '\0';
    }
    if (seg[n] == '\0')
        return leaf;
    if (keys && strcmp(seg + n, "/sign") == 0)
        return SRV_P_KEY_SIGN;
    if (keys && strcmp(seg + n, "/rotate") == 0)
        return SRV_P_KEY_ROTATE;
    return SRV_P_NONE;
}

/* The template of path p ("/v1/keys/{kid}"), or NULL for one no table names. */
static const char *srv_template(srv_path p)
{
    for (size_t i = 0; i < sizeof(srv_fixed) / sizeof(srv_fixed[0]); i++)
        if (srv_fixed[i].id == p)
            return srv_fixed[i].path;
    for (size_t i = 0; i < sizeof(srv_templates) / sizeof(srv_templates[0]); i++)
        if (srv_templates[i].id == p)
            return srv_templates[i].path;
    return NULL;
}

api_err srv_lookup(const char *method, const char *uri, srv_lookup_result *out)
{
    memset(out, 0, sizeof(*out));
    out->route = -1;
    srv_path path = srv_match(uri, out->seg);
    if (path == SRV_P_NONE)
        return API_ERR_NOT_FOUND;
    for (size_t i = 0; i < SRV_N_ROUTES; i++) {
        if (srv_routes[i].path != path)
            continue;
        if (strcmp(srv_routes[i].method, method) == 0) {
            out->route = (int)i;
            out->roles = srv_routes[i].roles;
            out->template = srv_template(path);
        }
        if (out->allow[0] != '\0')
            strcat(out->allow, ", ");
        strcat(out->allow, srv_routes[i].method);
    }
    return out->route >= 0 ? API_OK : API_ERR_METHOD_NOT_ALLOWED;
}

int srv_roles_allow(unsigned roles, cred_role role)
{
    return (unsigned)role < CRED_ROLE_COUNT_ && (roles & (1u << role)) != 0;
}

/* GET /v1/whoami: the caller's credential (api_credential_json) and "operations", every
 * route of srv_routes its role may call as {"method", "path"} (the template), in the
 * table's order; public routes, open to anyone, are not listed. */
static api_err srv_whoami(const api_req *q, api_resp *r)
{
    if (q->query != NULL && q->query[0] != '\0')
        return api_fail(r, API_ERR_INVALID_QUERY, "whoami takes no query");
    json_t *j = api_credential_json(q->caller);
    json_t *ops = json_array();
    if (j == NULL || ops == NULL || json_object_set_new(j, "operations", ops) != 0) {
        json_decref(j);
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    }
    for (size_t i = 0; i < SRV_N_ROUTES; i++) {
        const srv_route *rt = &srv_routes[i];
        if (rt->roles == SRV_PUBLIC || !srv_roles_allow(rt->roles, q->caller->role))
            continue;
        if (json_array_append_new(ops, json_pack("{s:s, s:s}", "method", rt->method, "path",
                                                 srv_template(rt->path))) != 0) {
            json_decref(j);
            return api_fail(r, API_ERR_INTERNAL, "out of memory");
        }
    }
    return api_json(r, 200, j);
}

int srv_print_routes(FILE *f)
{
    for (size_t i = 0; i < sizeof(srv_routes) / sizeof(srv_routes[0]); i++) {
        const srv_route *r = &srv_routes[i];
        const char *t = srv_template(r->path);
        if (t == NULL)
            return -1; /* a route srv_match can never reach: a bug to report, not to hide */
        fprintf(f, "%s %s ", r->method, t);
        if (r->roles == SRV_PUBLIC)
            fputs("public", f);
        for (int role = 0, first = 1; role < CRED_ROLE_COUNT_; role++) {
            if (!(r->roles & (1u << role)))
                continue;
            fprintf(f, "%s%s", first ? "" : ",", cred_role_name((cred_role)role));
            first = 0;
        }
        fputc('\n', f);
    }
    return fflush(f) == 0 && !ferror(f) ? 0 : -1;
}

int srv_is_json(const char *ct)
{
    if (ct == NULL)
        return 0;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* ---- HTTP framing ------------------------------------------------------------------------ */

/* With a load balancer in front, a request the appliance frames differently from the balancer
 * leaves bytes that one of them reads as another request (request smuggling). CivetWeb 1.15 is
 * lenient: it takes the first of several Content-Length headers, reads "2x" as 2, lets
 * Transfer-Encoding: chunked override a Content-Length, and reads Transfer-Encoding: identity
 * as none. So the front accepts exactly one framing per request (RFC 9112 section 6.3): no
 * body, one Content-Length of plain digits, or one Transfer-Encoding that is exactly chunked,
 * never both; anything else is 400 bad_framing and the connection is closed, since no byte
 * after it can be trusted to start a request. SECURITY.md, "HTTP framing", lists it all. */

/* A refusal: the error and its message, or API_OK. */
typedef struct {
    api_err err;
    const char *msg;
} srv_refusal;

/* v is the token want, in any case, followed by nothing but the whitespace CivetWeb leaves at
 * the end of a value (it drops the leading). */
static int srv_value_is(const char *v, const char *want)
{
    size_t n = strlen(want);
    if (v == NULL || strncasecmp(v, want, n) != 0)
        return 0;
    v += n;
    v += strspn(v, " \t");
    return *v == '\0';
}

/* RFC 9110 section 8.6: Content-Length = 1*DIGIT. No sign, no list, no "0x". */
static int srv_is_content_length(const char *v)
{
    size_t n = strspn(v, "0123456789");
    if (n == 0)
        return 0;
    v += n;
    v += strspn(v, " \t");
    return *v == '\0';
}

/* RFC 9112 section 2.3: HTTP-version's number is DIGIT "." DIGIT. */
static int srv_is_http_version(const char *v)
{
    return v != NULL && v[0] >= '0' && v[0] <= '9' && v[1] == '.' && v[2] >= '0' && v[2] <= '9' &&
           v[3] == '\0';
}

/* The framing of the request's headers: Content-Length and Transfer-Encoding. */
static srv_refusal srv_framing_check(const struct mg_request_info *ri)
{
    int cl = 0, te = 0;
    const char *cl_value = NULL, *te_value = NULL;
    for (int i = 0; i < ri->num_headers; i++) {
        const char *name = ri->http_headers[i].name;
        if (name != NULL && strcasecmp(name, "Content-Length") == 0) {
            cl++;
            cl_value = ri->http_headers[i].value;
        } else if (name != NULL && strcasecmp(name, "Transfer-Encoding") == 0) {
            te++;
            te_value = ri->http_headers[i].value;
        }
    }
    /* Even two equal ones: a balancer that joins them reads "5, 5", which is no length. */
    if (cl > 1)
        return (srv_refusal){API_ERR_BAD_FRAMING, "Content-Length is given more than once"};
    if (cl == 1 && !srv_is_content_length(cl_value))
        return (srv_refusal){API_ERR_BAD_FRAMING, "Content-Length is not a decimal number"};
    if (cl > 0 && te > 0)
        return (srv_refusal){API_ERR_BAD_FRAMING,
                             "a request has Content-Length or Transfer-Encoding, not both"};
    /* Two headers make one list ("chunked, chunked" or "chunked, gzip"): chunked must be the
     * only coding and come once. */
    if (te > 1)
        return (srv_refusal){API_ERR_BAD_FRAMING, "Transfer-Encoding is given more than once"};
    /* 400 rather than RFC 9112's 501 for a coding it does not know: a client must not be able
     * to make the appliance answer 5xx at will (a balancer counts 5xx against the backend,
     * and may retry a request it thinks failed there). */
    if (te == 1 && !srv_value_is(te_value, "chunked"))
        return (srv_refusal){API_ERR_BAD_FRAMING, "the only transfer coding accepted is chunked"};
    /* RFC 9112 section 6.1: HTTP/1.0 has no transfer coding; its framing is to be treated as
     * faulty. */
    if (te == 1 && ri->http_version != NULL && strcmp(ri->http_version, "1.0") == 0)
        return (srv_refusal){API_ERR_BAD_FRAMING, "HTTP/1.0 has no Transfer-Encoding"};
    return (srv_refusal){API_OK, NULL};
}

/* The appliance decodes no content coding: a body whose Content-Encoding is anything but
 * identity would be parsed as the wrong bytes, so it is refused rather than ignored. */
static int srv_content_coding_ok(const struct mg_request_info *ri)
{
    for (int i = 0; i < ri->num_headers; i++) {
        const char *name = ri->http_headers[i].name;
        if (name != NULL && strcasecmp(name, "Content-Encoding") == 0 &&
            !srv_value_is(ri->http_headers[i].value, "identity"))
            return 0;
    }
    return 1;
}

/* What the whole request's head says, before anything else looks at it: its framing; a body on
 * GET or HEAD, which the appliance never reads (RFC 9110 section 9.3.1 names it a smuggling
 * risk); and, for the methods whose body it reads, the content coding. */
static srv_refusal srv_request_check(const struct mg_request_info *ri)
{
    srv_refusal f = srv_framing_check(ri);
    if (f.err != API_OK)
        return f;
    const char *m = ri->request_method ? ri->request_method : "";
    int chunked = 0;
    for (int i = 0; i < ri->num_headers; i++)
        if (ri->http_headers[i].name != NULL &&
            strcasecmp(ri->http_headers[i].name, "Transfer-Encoding") == 0)
            chunked = 1;
    if ((ri->content_length > 0 || chunked) && (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0))
        return (srv_refusal){API_ERR_BAD_FRAMING, "a GET or HEAD request carries no body"};
    if ((strcmp(m, "POST") == 0 || strcmp(m, "DELETE") == 0) && !srv_content_coding_ok(ri))
        return (srv_refusal){API_ERR_UNSUPPORTED_CONTENT_ENCODING,
                             "the appliance decodes no Content-Encoding but identity"};
    return (srv_refusal){API_OK, NULL};
}

api_err srv_check_head(const struct mg_request_info *ri, const char **msg)
{
    srv_refusal r = srv_request_check(ri);
    *msg = r.msg;
    return r.err;
}

/* The error for a status CivetWeb raises itself. Its 400 and 411 for a request whose head it
 * parsed may be framing it refused (a Transfer-Encoding other than chunked, a Content-Length it
 * cannot read): bad_framing says which. Its 505 is for any version but 1.0 and 1.1, a malformed
 * one included, which is a bad request rather than an unsupported version. */
static srv_refusal srv_civetweb_refusal(struct mg_connection *c, int status, const char *msg)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (ri != NULL && status == 505 && !srv_is_http_version(ri->http_version))
        return (srv_refusal){API_ERR_BAD_REQUEST, "the HTTP version is malformed"};
    if (ri != NULL && (status == 400 || status == 411)) {
        srv_refusal f = srv_framing_check(ri);
        if (f.err != API_OK)
            return f;
    }
    return (srv_refusal){api_err_from_status(status), msg};
}

/* How srv_read_body fails. */
#define SRV_BODY_TOO_LARGE (-1)
#define SRV_BODY_UNFRAMED (-2) /* a chunk or trailer is malformed, or the body ended early */

/* Reads the body into buf (API_BODY_MAX + 1 bytes): its length, or SRV_BODY_TOO_LARGE past the
 * bound, or SRV_BODY_UNFRAMED. CivetWeb's mg_read answers -1 for a malformed chunked body and
 * 0 for a Content-Length body cut short: taking either as the end of the body would serve
 * what came so far (an empty body creates a key). */
static long srv_read_body(struct mg_connection *c, const struct mg_request_info *ri, char *buf)
{
    if (ri->content_length > API_BODY_MAX)
        return SRV_BODY_TOO_LARGE;
    size_t got = 0;
    for (;;) {
        int r = mg_read(c, buf + got, API_BODY_MAX + 1 - got);
        if (r < 0)
            return SRV_BODY_UNFRAMED;
        if (r == 0)
            break;
        got += (size_t)r;
        if (got > API_BODY_MAX)
            return SRV_BODY_TOO_LARGE;
    }
    if (ri->content_length >= 0 && (long long)got != ri->content_length)
        return SRV_BODY_UNFRAMED;
    buf[got] = '\0';
    return (long)got;
}

/* The error for srv_read_body's failure. Both close the connection; after a framing error
 * srv_drain reads nothing more (after a 413 it still drops up to SRV_DRAIN_BYTES). */
static int srv_send_body_error(struct mg_connection *c, long failure)
{
    if (failure == SRV_BODY_TOO_LARGE)
        return srv_send_error(c, API_ERR_BODY_TOO_LARGE, "request bodies are limited to 64 KiB",
                              NULL, 1);
    srv_body_unframed = 1;
    return srv_send_error(c, API_ERR_BAD_FRAMING,
                          "the body's framing is malformed: a chunk size, chunk extension or "
                          "trailer, or a body that ended before its Content-Length",
                          NULL, 1);
}

#define SRV_PATH_LOG_MAX 128

/* The decoded path as logs and audit events keep it: it may hold any byte, so printable
 * ASCII or '?', at most SRV_PATH_LOG_MAX bytes (a JSON string must be UTF-8, and a path
 * that is not must not make the record vanish). */
static void srv_printable_path(const struct mg_request_info *ri, char out[SRV_PATH_LOG_MAX + 1])
{
    txt_copy_printable(out, SRV_PATH_LOG_MAX + 1, ri->local_uri, SRV_PATH_LOG_MAX);
}

/* The request log line (jlog.h): never a header, a body or a secret; the caller's
 * credential id (not secret) when it authenticated, the route's template, and the kid the
 * request named in its path or signed with. */
static void srv_log_request(struct mg_connection *c, int status, uint64_t ns, const srv_outcome *o,
                            const sk_kid *signed_kid)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    char path[SRV_PATH_LOG_MAX + 1], now[JLOG_TIME_LEN];
    srv_printable_path(ri, path);
    jlog_time(now);
    const char *route = o->route >= 0 ? srv_template(srv_routes[o->route].path) : NULL;
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:f}", "time", now, "log", "request",
                          "request_id", srv_request_id, "method", ri->request_method, "route",
                          route ? route : "unmatched", "path", path, "status", status, "latency_ms",
                          (double)ns / 1e6);
    if (j != NULL && o->caller_id[0] != '\0')
        json_object_set_new(j, "credential", json_string(o->caller_id));
    const sk_kid *kid = o->has_kid ? &o->kid : signed_kid;
    if (j != NULL && kid != NULL) {
        char hex[2 * SK_KID_LEN + 1];
        sk_kid_hex(kid, hex);
        json_object_set_new(j, "kid", json_string(hex));
    }
    jlog_write(j);
}

/* Queues an auth.failed or authz.denied event (audit.h): never waits for the disk, so a
 * flood of bad requests cannot become a flood of fsyncs. who: the credential when known. */
static void srv_audit_failure(struct mg_connection *c, srv *s, const char *action,
                              const cred_record *who, const char *reason)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    char path[SRV_PATH_LOG_MAX + 1];
    srv_printable_path(ri, path);
    json_t *d = json_pack("{s:s, s:s, s:s, s:s}", "method", ri->request_method, "path", path,
                          "address", ri->remote_addr, "reason", reason);
    if (d != NULL && who != NULL)
        json_object_set_new(d, "role", json_string(cred_role_name(who->role)));
    audit_queue(s->env->audit, action, who ? who->id : NULL, d);
    json_decref(d);
}

/* Authenticates the bearer credential and checks it against route: 0 and *caller filled,
 * or the HTTP status of the error response already sent. Order: an address that has
 * presented too many bad credentials is refused before its credential is even looked at
 * (so guessing is slowed down whatever it guesses); then the credential (unknown, revoked,
 * or bound to another client certificate: one 401, nothing to tell them apart, and one
 * token from the address's failure bucket); then the role (403); then the credential's
 * own rate (429). */
static int srv_authorize(struct mg_connection *c, srv *s, const srv_route *route,
                         cred_record *caller)
{
    static const char bearer_hdr[] = "WWW-Authenticate: Bearer realm=\"signd\"\r\n";
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *addr = ri->remote_addr;
    size_t addr_len = strnlen(addr, sizeof(ri->remote_addr));
    char extra[64];
    uint64_t now = (uint64_t)clk_now_ns();
    unsigned wait = rl_peek(s->per_address, addr, addr_len, now);
    if (wait != 0) {
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", wait);
        return srv_send_error(c, API_ERR_RATE_LIMITED,
                              "too many bad credentials from this address: retry later", extra, 0);
    }
    const char *h = mg_get_header(c, "Authorization");
    if (h == NULL) {
        srv_audit_failure(c, s, CHN_AUTH_FAILED, NULL, "no credential");
        return srv_send_error(c, API_ERR_UNAUTHORIZED, "a bearer credential is required",
                              bearer_hdr, 0);
    }
    const char *secret = strncasecmp(h, "Bearer ", 7) == 0 ? h + 7 : NULL;
    size_t len = secret != NULL ? strnlen(secret, SRV_BEARER_MAX + 1) : 0;
    cred_status st = CRED_ERR_UNKNOWN;
    if (secret != NULL && len <= SRV_BEARER_MAX)
        st = cred_authenticate(s->env->creds, secret, len, caller);
    int wrong_cert = 0;
    if (st == CRED_OK && caller->client_subject[0] != '\0') {
        char subject[TLS_SUBJECT_MAX];
        wrong_cert = tls_peer_subject(c, subject, sizeof(subject)) != 0 ||
                     strcmp(subject, caller->client_subject) != 0;
    }
    if (st != CRED_OK || wrong_cert) {
        rl_take(s->per_address, addr, addr_len, now);
        /* The id of a revoked or wrongly bound credential is known and not secret; an
         * unknown one is not recorded (it could be a mistyped secret). */
        srv_audit_failure(c, s, CHN_AUTH_FAILED, st == CRED_ERR_UNKNOWN ? NULL : caller,
                          st == CRED_ERR_REVOKED ? "revoked credential"
                          : wrong_cert           ? "client certificate does not match"
                                                 : "unknown credential");
        return srv_send_error(c, API_ERR_UNAUTHORIZED,
                              "the credential is unknown, revoked, or not valid with this client "
                              "certificate",
                              bearer_hdr, 0);
    }
    if (!srv_roles_allow(route->roles, caller->role)) {
        srv_audit_failure(c, s, CHN_AUTHZ_DENIED, caller, "role may not call this route");
        return srv_send_error(c, API_ERR_FORBIDDEN,
                              "this credential's role may not call this route", NULL, 0);
    }
    wait = rl_take(s->per_credential, caller->id, CRED_ID_LEN, now);
    if (wait != 0) {
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", wait);
        return srv_send_error(c, API_ERR_RATE_LIMITED,
                              "this credential is over its request rate: retry later", extra, 0);
    }
    return 0;
}

static int srv_route_request(struct mg_connection *c, srv *s, srv_outcome *o)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    srv_lookup_result lk;
    api_err found = srv_lookup(ri->request_method, ri->local_uri ? ri->local_uri : "", &lk);
    if (found == API_ERR_NOT_FOUND)
        return srv_send_error(c, API_ERR_NOT_FOUND, "no such resource", NULL, 0);
    if (found != API_OK) {
        char allow[sizeof(lk.allow) + 16];
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", lk.allow);
        return srv_send_error(c, API_ERR_METHOD_NOT_ALLOWED, "method not allowed here", allow, 0);
    }
    const srv_route *route = &srv_routes[lk.route];
    srv_path path = route->path;
    const char *seg = lk.seg;
    o->route = lk.route;
    api_req q = {.env = s->env, .method = ri->request_method, .query = ri->query_string};
    cred_record caller;
    if (route->roles != SRV_PUBLIC) {
        int st = srv_authorize(c, s, route, &caller);
        if (st != 0)
            return st;
        q.caller = &caller;
        memcpy(o->caller_id, caller.id, sizeof(caller.id));
    }

    q.if_none_match = mg_get_header(c, "If-None-Match");
    q.now = (int64_t)time(NULL);
    if (path == SRV_P_KEY || path == SRV_P_KEY_SIGN || path == SRV_P_KEY_ROTATE) {
        if (sk_kid_parse(seg, &q.kid) != 0)
            return srv_send_error(c, API_ERR_INVALID_KID,
                                  "a kid is 32 lowercase hexadecimal characters", NULL, 0);
        q.has_kid = 1;
        o->kid = q.kid;
        o->has_kid = 1;
    }
    if (path == SRV_P_CREDENTIAL || path == SRV_P_TOKEN || path == SRV_P_STATUS_LIST ||
        path == SRV_P_CONSOLE_FILE)
        q.id = seg;

    static _Thread_local char body[API_BODY_MAX + 1];
    if (strcmp(ri->request_method, "POST") == 0 || strcmp(ri->request_method, "DELETE") == 0) {
        long n = srv_read_body(c, ri, body);
        if (n < 0)
            return srv_send_body_error(c, n);
        if (n > 0 && !srv_is_json(mg_get_header(c, "Content-Type")))
            return srv_send_error(c, API_ERR_UNSUPPORTED_MEDIA_TYPE,
                                  "the body must be sent as Content-Type: application/json", NULL,
                                  0);
        q.body = body;
        q.body_len = (size_t)n;
    }

    if (route->stream != NULL)
        return route->stream(c, s, &q);

    api_resp r;
    memset(&r, 0, sizeof(r));
    /* What the handler changes is recorded with the caller as actor (audit.h). */
    chn_set_actor(q.caller ? q.caller->id : NULL);
    /* An earlier request's lock wait on this thread is not ours. */
    (void)sdb_gave_up();
    api_err e = route->handler(&q, &r);
    chn_set_actor(NULL);
    o->handled = 1;
    o->result = e;
    if (e == API_ERR_KID_NOT_ALLOWED)
        srv_audit_failure(c, s, CHN_AUTHZ_DENIED, q.caller, "kid outside the credential's scope");
    else if (e == API_ERR_FORBIDDEN) /* a handler's own refusal: a scoped signer revoking a sub */
        srv_audit_failure(c, s, CHN_AUTHZ_DENIED, q.caller, "scope does not reach every kid");
    int status;
    if (e != API_OK) {
        status = srv_send_error(c, e, r.errmsg, r.headers, 0);
    } else {
        status = r.status;
        srv_send(c, r.status, r.headers, r.body ? r.body : "", r.body ? r.len : 0, 0, r.wipe);
    }
    api_resp_free(&r);
    return status;
}

/* ---- the revocation event stream ------------------------------------------------------- */

/* How long a subscriber sleeps at most before it looks at the stop flag again. */
#define SRV_EVENTS_WAKE_MS 1000
/* Revocations read from the registry per batch while catching a subscriber up. */
#define SRV_EVENTS_BATCH 256
#define SRV_TOKEN_EVENTS_BATCH 64   /* token revocations are larger: ~128 bytes each */
#define SRV_SUBJECT_EVENTS_BATCH 16 /* a reg_subject holds a 257-byte sub: kept off the stack */

/* Writes one chunk of the chunked response (the stream has no length): 0, or -1 when the
 * subscriber is gone. */
static int srv_chunk(struct mg_connection *c, const char *data, size_t len)
{
    char buf[SRV_HEAD_MAX + 16];
    int n = snprintf(buf, sizeof(buf), "%zx\r\n%.*s\r\n", len, (int)len, data);
    if (n < 0 || n >= (int)sizeof(buf))
        return -1;
    return mg_write(c, buf, (size_t)n) == n ? 0 : -1;
}

/* Writes one event: "id: <id>" first when id is not 0, the event's name, and j (consumed)
 * as its data. 0, or -1 when j is NULL, does not fit, or the subscriber is gone. */
static int srv_event(struct mg_connection *c, uint64_t id, const char *name, json_t *j)
{
    char *data = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    char idline[32] = "";
    if (id != 0)
        snprintf(idline, sizeof(idline), "id: %llu\n", (unsigned long long)id);
    char ev[SRV_HEAD_MAX];
    int len = data ? snprintf(ev, sizeof(ev), "%sevent: %s\ndata: %s\n\n", idline, name, data) : -1;
    free(data);
    if (len < 0 || len >= (int)sizeof(ev))
        return -1;
    return srv_chunk(c, ev, (size_t)len);
}

/* Sends every revocation after *sent as one event each, in seq order, advancing *sent: 0,
 * or -1. Key and subject revocations share the sequence, so the ids interleave: each
 * round sends the two batches merged and stops at the end of a batch that was cut. */
static int srv_events_send(struct mg_connection *c, reg *rg, uint64_t *sent)
{
    reg_revocation batch[SRV_EVENTS_BATCH];
    reg_subject subs[SRV_SUBJECT_EVENTS_BATCH];
    for (;;) {
        size_t n = reg_revocations_after(rg, *sent, batch, SRV_EVENTS_BATCH);
        size_t ns = reg_subjects_after(rg, *sent, subs, SRV_SUBJECT_EVENTS_BATCH);
        size_t m = n < SRV_EVENTS_BATCH ? n : SRV_EVENTS_BATCH;
        size_t ms = ns < SRV_SUBJECT_EVENTS_BATCH ? ns : SRV_SUBJECT_EVENTS_BATCH;
        size_t i = 0, j = 0;
        while (i < m || j < ms) {
            /* A batch that was cut may hide a lower seq than the other's next: refetch. */
            if ((i == m && n > m) || (j == ms && ns > ms))
                break;
            int err;
            if (j == ms || (i < m && batch[i].seq < subs[j].seq)) {
                err = srv_event(c, batch[i].seq, "revocation", pub_revocation_json(&batch[i]));
                *sent = batch[i++].seq;
            } else {
                err = srv_event(c, subs[j].seq, "subject-revocation", pub_subject_json(&subs[j]));
                *sent = subs[j++].seq;
            }
            if (err != 0)
                return -1;
        }
        if (n <= m && ns <= ms)
            return 0;
    }
}

/* Sends every token revocation after *sent as a token-revocation event without an id (the
 * ids are key-revocation seqs, what Last-Event-ID resumes), advancing *sent: 0, or -1. A
 * verifier that reconnects refetches the status lists it holds instead of a replay. */
static int srv_token_events_send(struct mg_connection *c, srv *s, uint64_t *sent)
{
    tks_revocation batch[SRV_TOKEN_EVENTS_BATCH];
    for (;;) {
        size_t n = tks_revocations_after(s->env->tks, *sent, batch, SRV_TOKEN_EVENTS_BATCH);
        for (size_t i = 0; i < n; i++) {
            if (srv_event(c, 0, "token-revocation",
                          api_token_revocation_json(s->env->cfg, &batch[i])) != 0)
                return -1;
            *sent = batch[i].seq;
        }
        if (n < SRV_TOKEN_EVENTS_BATCH)
            return 0;
    }
}

/* GET /v1/revocations/events: Server-Sent Events. A subscriber gets a hello with the
 * newest sequence number, then every revocation after its Last-Event-ID (none without
 * one), then each new revocation as it is committed, woken by the registry (no polling),
 * and a comment line every events_heartbeat_seconds so idle proxies keep the stream open.
 * Each subscriber holds one CivetWeb thread of its own: num_threads is worker_threads +
 * events_max_subscribers and subscribers past the bound get 503, so the stream can never
 * take the threads that sign. The stream ends when the subscriber goes or the appliance
 * stops. Token revocations (DELETE /v1/tokens/{jti}) ride the same stream as
 * token-revocation events, woken by reg_poke. The events only tell verifiers to fetch the
 * signed feed or status list sooner: they carry no signature and are not what a verifier
 * should believe. */
static int srv_events(struct mg_connection *c, srv *s, const api_req *q)
{
    const cfg *cf = s->env->cfg;
    reg *rg = s->env->reg;
    if (q->query != NULL && q->query[0] != '\0')
        return srv_send_error(c, API_ERR_INVALID_QUERY, "the event stream takes no query", NULL, 0);
    uint64_t top = reg_revocation_seq(rg);
    uint64_t sent = top;
    const char *last = mg_get_header(c, "Last-Event-ID");
    if (last != NULL) {
        uint64_t v;
        if (api_parse_decimal(last, API_SEQ_DIGITS_MAX, &v) != 0)
            return srv_send_error(c, API_ERR_INVALID_LAST_EVENT_ID,
                                  "Last-Event-ID must be a revocation sequence number", NULL, 0);
        sent = v < top ? v : top; /* from another appliance's numbering: nothing to replay */
    }
    if (atomic_fetch_add(&s->subscribers, 1) >= cf->events_max_subscribers) {
        atomic_fetch_sub(&s->subscribers, 1);
        return srv_send_error(c, API_ERR_TOO_MANY_SUBSCRIBERS,
                              "the event stream has all the subscribers it takes; poll "
                              "/v1/revocations/feed instead",
                              "Retry-After: 30\r\n", 0);
    }
    char head[SRV_HEAD_MAX];
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 200 OK\r\n"
                        "Content-Type: text/event-stream\r\n"
                        "Cache-Control: no-store\r\n"
                        "X-Accel-Buffering: no\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "X-Request-Id: %s\r\n"
                        "Transfer-Encoding: chunked\r\n"
                        "%s\r\n",
                        srv_request_id, s->hsts);
    uint64_t tsent = tks_seq(s->env->tks);
    char hello[160];
    int blen = snprintf(hello, sizeof(hello),
                        "retry: 1000\nevent: hello\ndata: {\"seq\":%llu,\"token_seq\":%llu}\n\n",
                        (unsigned long long)top, (unsigned long long)tsent);
    uint64_t seen = reg_generation(rg);
    int ok = hlen > 0 && hlen < (int)sizeof(head) && mg_write(c, head, (size_t)hlen) == hlen &&
             srv_chunk(c, hello, (size_t)blen) == 0 && srv_events_send(c, rg, &sent) == 0;
    int64_t beat_ms = (int64_t)cf->events_heartbeat_seconds * 1000;
    int64_t next_beat = clk_now_ms() + beat_ms;
    while (ok && !atomic_load(&s->draining)) {
        int64_t now_ms = clk_now_ms();
        if (now_ms >= next_beat) {
            static const char beat[] = ": keepalive\n\n";
            ok = srv_chunk(c, beat, sizeof(beat) - 1) == 0;
            next_beat = now_ms + beat_ms;
            continue;
        }
        int64_t wait = next_beat - now_ms;
        uint64_t gen = reg_wait_change(
            rg, seen, wait < SRV_EVENTS_WAKE_MS ? (unsigned)wait : SRV_EVENTS_WAKE_MS);
        if (gen != seen) {
            seen = gen;
            ok = srv_events_send(c, rg, &sent) == 0;
        }
        if (ok && tks_seq(s->env->tks) != tsent)
            ok = srv_token_events_send(c, s, &tsent) == 0;
    }
    if (ok)
        mg_write(c, "0\r\n\r\n", 5); /* the end of the chunked body: the connection stays usable */
    atomic_fetch_sub(&s->subscribers, 1);
    return 200;
}

_Static_assert(API_ERR_COUNT_ <= MET_RESULTS_MAX, "every api_err is a signature result");

/* Results that prove the kid names a registry key: only these get a series of their own,
 * so random kids sent by a client cannot grow the metrics (metrics.h). */
static int srv_result_names_key(api_err e)
{
    return e == API_OK || e == API_ERR_KEY_REVOKED || e == API_ERR_KEY_RETIRING ||
           e == API_ERR_KEY_BROKEN;
}

/* Counts the request (metrics.h) and logs it (log_requests). The signing kid of a token
 * request is the one noted (met_take_kid): asked of the keeper, or refused as a registry
 * key's state; a kid the registry does not know counts under kid="none". */
static void srv_account(struct mg_connection *c, srv *s, int status, int64_t t0_ns,
                        const srv_outcome *o)
{
    int64_t d = clk_now_ns() - t0_ns;
    uint64_t ns = d > 0 ? (uint64_t)d : 0;
    met_request(o->route >= 0 ? (unsigned)o->route : MET_ROUTE_UNMATCHED, status, ns);
    sk_kid signed_kid;
    int asked = met_take_kid(&signed_kid);
    if (o->handled && o->route >= 0 &&
        (srv_routes[o->route].path == SRV_P_KEY_SIGN ||
         srv_routes[o->route].path == SRV_P_TOKENS)) {
        const sk_kid *kid = o->has_kid ? &o->kid : asked ? &signed_kid : NULL;
        if (!asked && !srv_result_names_key(o->result))
            kid = NULL;
        met_signature(kid, (unsigned)o->result);
    }
    if (s->env->cfg->log_requests)
        srv_log_request(c, status, ns, o, asked ? &signed_kid : NULL);
}

/* CivetWeb's handler for every path: route, then count and log. */
static int srv_dispatch(struct mg_connection *c, void *arg)
{
    srv *s = arg;
    int64_t t0 = clk_now_ns();
    srv_outcome o = {.route = -1};
    srv_next_request_id(s);
    met_take_kid(NULL); /* nothing left over from another request on this thread */
    atomic_fetch_add(&s->inflight, 1);
    int status = atomic_load(&s->draining)
                     ? srv_send_error(c, API_ERR_UNAVAILABLE, "the appliance is stopping", NULL, 1)
                     : srv_route_request(c, s, &o);
    atomic_fetch_sub(&s->inflight, 1);
    srv_account(c, s, status, t0, &o);
    if (srv_drain(c) != 0)
        mg_disable_connection_keep_alive(c);
    return status;
}

/* Errors CivetWeb raises itself (bad request line, headers too large, timeouts) get the
 * same JSON shape as ours. */
static int srv_http_error(struct mg_connection *c, int status, const char *msg)
{
    srv *s = mg_get_user_data(mg_get_context(c));
    if (s != NULL)
        srv_next_request_id(s);
    else
        srv_request_id[0] = '\0';
    srv_refusal r = srv_civetweb_refusal(c, status, msg);
    srv_send_error(c, r.err, r.msg, NULL, 1);
    return 0;
}

/* CivetWeb's begin_request callback: every request whose head CivetWeb accepted, before any
 * route, credential or body. A refusal (srv_request_check) closes the connection, so CivetWeb
 * reads nothing more of it, and is counted and logged as an unmatched request. */
static int srv_framing_gate(struct mg_connection *c)
{
    srv *s = mg_get_user_data(mg_get_context(c));
    const struct mg_request_info *ri = mg_get_request_info(c);
    if (s == NULL || ri == NULL)
        return 0;
    srv_refusal r = srv_request_check(ri);
    if (r.err == API_OK)
        return 0;
    int64_t t0 = clk_now_ns();
    srv_outcome o = {.route = -1};
    srv_next_request_id(s);
    met_take_kid(NULL); /* as srv_dispatch: no kid left over on this thread is logged */
    int status = srv_send_error(c, r.err, r.msg, NULL, 1);
    srv_account(c, s, status, t0, &o);
    return status;
}

/* CivetWeb's init_ssl callback: the whole TLS policy (versions, checked cipher lists, the
 * certificate and the 0600 key, mutual TLS when tls_client_ca is set) is tls_configure's;
 * see tls.h for what CivetWeb 1.15 does before and after this callback. Returning 0 lets
 * CivetWeb set the session id context; with no ssl_certificate, ssl_cipher_list or
 * ssl_verify_peer option it changes nothing tls_configure set. */
static int srv_init_ssl(void *ssl_ctx, void *arg)
{
    char err[TLS_ERR_MAX];
    if (tls_configure(ssl_ctx, ((srv *)arg)->env->cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "signd: TLS set-up failed: %s\n", err);
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

/* A connection got a thread and finished its TLS handshake. The mark tells srv_conn_close
 * that it was counted (CivetWeb also closes connections whose handshake failed). */
static int srv_conn_open(const struct mg_connection *c, void **conn_data)
{
    srv *s = mg_get_user_data(mg_get_context(c));
    if (s != NULL) {
        atomic_fetch_add(&s->connections, 1);
        *conn_data = s;
    }
    return 0;
}

static void srv_conn_close(const struct mg_connection *c)
{
    srv *s = mg_get_user_connection_data(c);
    if (s != NULL)
        atomic_fetch_sub(&s->connections, 1);
}

static int srv_log_message(const struct mg_connection *c, const char *msg)
{
    (void)c;
    fprintf(stderr, "signd: civetweb: %s\n", msg);
    return 1;
}

static void srv_free(srv *s)
{
    rl_free(s->per_credential);
    rl_free(s->per_address);
    free(s);
}

srv *srv_start(const api_env *env, char *err, size_t errlen)
{
    const cfg *c = env->cfg;
    srv *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->env = env;
    uint8_t boot[4] = {0};
    (void)RAND_bytes(boot, sizeof(boot)); /* zeros still give ids unique within the run */
    snprintf(s->boot_id, sizeof(s->boot_id), "%02x%02x%02x%02x", boot[0], boot[1], boot[2],
             boot[3]);
    met_start();
    for (size_t i = 0; i < SRV_N_ROUTES; i++)
        met_route((unsigned)i, srv_template(srv_routes[i].path), srv_routes[i].method);
    if (c->hsts_max_age > 0)
        snprintf(s->hsts, sizeof(s->hsts), "Strict-Transport-Security: max-age=%u\r\n",
                 c->hsts_max_age);
    /* A quarter of the workers (at least 2) is kept for connections still queued. */
    unsigned reserve = c->worker_threads / 4 > 2 ? c->worker_threads / 4 : 2;
    s->keepalive_max = (int)(c->worker_threads + c->events_max_subscribers - reserve);
    /* Rate 0 means no limit: rl_new then keeps no buckets and allows everything. */
    s->per_credential =
        rl_new(SRV_RL_SLOTS, (double)c->rate_limit_per_second, (double)c->rate_limit_burst);
    s->per_address = rl_new(SRV_RL_SLOTS, (double)c->auth_failures_per_minute / 60.0,
                            (double)c->auth_failure_burst);
    if (s->per_credential == NULL || s->per_address == NULL) {
        snprintf(err, errlen, "cannot allocate the rate-limit tables");
        srv_free(s);
        return NULL;
    }
    if (!(mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS)) {
        snprintf(err, errlen, "CivetWeb was built without TLS");
        srv_free(s);
        return NULL;
    }
    char ports[300], threads[16], req_to[16], ka_to[16];
    snprintf(ports, sizeof(ports), "%s:%us", c->listen_address, (unsigned)c->port);
    /* Event-stream subscribers each hold a thread: theirs come on top of the workers'. */
    snprintf(threads, sizeof(threads), "%u",
             (unsigned)c->worker_threads + (unsigned)c->events_max_subscribers);
    snprintf(req_to, sizeof(req_to), "%u", (unsigned)c->request_timeout_ms);
    snprintf(ka_to, sizeof(ka_to), "%u", (unsigned)c->keep_alive_timeout_ms);
    const char *options[] = {
        "listening_ports",
        ports,
        /* No ssl_cipher_list, ssl_verify_peer or ssl_ca_file: CivetWeb would apply them after
         * srv_init_ssl, over the checked cipher list and the client CA trust store (tls.h).
         * The protocol floor is applied before it; tls_configure sets the same one again. */
        "ssl_protocol_version",
        tls_civetweb_protocol_version(c),
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
    cb.begin_request = srv_framing_gate;
    cb.init_ssl = srv_init_ssl;
    cb.exit_thread = srv_exit_thread;
    cb.log_message = srv_log_message;
    cb.init_connection = srv_conn_open;
    cb.connection_close = srv_conn_close;
    struct mg_init_data init = {.callbacks = &cb, .user_data = s, .configuration_options = options};
    struct mg_error_data ed;
    char ebuf[256] = "";
    memset(&ed, 0, sizeof(ed));
    ed.text = ebuf;
    ed.text_buffer_size = sizeof(ebuf);
    s->ctx = mg_start2(&init, &ed);
    if (s->ctx == NULL) {
        snprintf(err, errlen, "cannot start HTTPS on %s: %s", ports, ebuf);
        srv_free(s);
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
    atomic_store(&s->draining, 1);
    for (int waited = 0; atomic_load(&s->inflight) > 0 && waited < SRV_DRAIN_MS; waited += 10) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    mg_stop(s->ctx);
    mg_exit_library();
    srv_free(s);
}
