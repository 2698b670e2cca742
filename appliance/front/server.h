/*
 * srv: the HTTPS front. Owns the CivetWeb context, the route table (the authorization
 * matrix: every route with its method and the roles that may call it), authentication of
 * bearer credentials, rate limiting (per credential, and bad credentials per address),
 * request bounding (64 KiB bodies, JSON content type) and the writing of every response,
 * errors included, as {"error":{"code","message"}} in one write, with HSTS.
 *
 * Worker threads are bounded by configuration; each gets its own token session on first
 * use, released by CivetWeb's exit_thread callback.
 */
#ifndef APPLIANCE_SERVER_H
#define APPLIANCE_SERVER_H

#include "api/api.h"

#include <stdio.h>

typedef struct srv srv;

/* Starts serving. env (with its credential store) must outlive the server. On failure
 * writes one line naming the problem into err and returns NULL. */
srv *srv_start(const api_env *env, char *err, size_t errlen);

/* Writes the route table, one "METHOD /template roles" line per route (roles: "public",
 * or role names joined by ','; "GET /v1/keys admin,auditor"), for `signd --routes` and the
 * test that holds docs/openapi.yaml to it. 0, or -1 on a write error. */
int srv_print_routes(FILE *f);

struct mg_request_info;

/* The front's verdict on a request's head, before any route, credential or body (SECURITY.md,
 * "HTTP framing"): API_OK, or API_ERR_BAD_FRAMING (Content-Length, Transfer-Encoding, a body
 * on GET or HEAD) or API_ERR_UNSUPPORTED_CONTENT_ENCODING, with *msg saying why. Reads only
 * ri's request_method, http_version, content_length and headers. For tests/fuzz. */
api_err srv_check_head(const struct mg_request_info *ri, const char **msg);

/* ---- The route table and the error document, for tests ---------------------------------- */

/* The text a path parameter may hold: a jti (64) is the longest. */
#define SRV_SEG_MAX 72

typedef struct {
    int route;             /* the route's line in srv_print_routes' order; -1 when none */
    const char *template;  /* "/v1/keys/{kid}"; NULL when none */
    unsigned roles;        /* bit r: cred_role r may call it; 0: public, no credential */
    char seg[SRV_SEG_MAX]; /* the path parameter as sent, "" when none, "!" when too long */
    char allow[128];       /* the methods the path takes, "GET, POST" (the Allow header) */
} srv_lookup_result;

/* The route of method on uri (the decoded path, no query): API_OK; API_ERR_NOT_FOUND when no
 * route has that path; API_ERR_METHOD_NOT_ALLOWED when it has, for other methods (allow). */
api_err srv_lookup(const char *method, const char *uri, srv_lookup_result *out);

/* 1 when a route of roles (srv_lookup_result.roles) admits a credential of role. */
int srv_roles_allow(unsigned roles, cred_role role);

/* The error document {"error":{"code","message"}} of e (message msg, or the code when msg is
 * NULL or ""), compact, malloc'd; NULL when out of memory. Its status: api_err_table(e). */
char *srv_error_body(api_err e, const char *msg);

/* 1 when a Content-Type value is application/json (any case, parameters allowed). */
int srv_is_json(const char *content_type);

/* The port actually bound (useful with port 0). */
int srv_port(const srv *s);

/* Lets in-flight requests finish and answers new ones 503 unavailable meanwhile (at most
 * 30 s), then stops accepting and joins every worker. */
void srv_stop(srv *s);

#endif
