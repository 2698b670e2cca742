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

/* The port actually bound (useful with port 0). */
int srv_port(const srv *s);

/* Lets in-flight requests finish and answers new ones 503 unavailable meanwhile (at most
 * 30 s), then stops accepting and joins every worker. */
void srv_stop(srv *s);

#endif
