/*
 * srv: the HTTPS front. Owns the CivetWeb context, the route table (every route with its
 * methods and whether it needs a credential), authentication, request bounding (64 KiB
 * bodies, JSON content type) and the writing of every response, errors included, as
 * {"error":{"code","message"}} in one write.
 *
 * Worker threads are bounded by configuration; each gets its own token session on first
 * use, released by CivetWeb's exit_thread callback.
 */
#ifndef APPLIANCE_SERVER_H
#define APPLIANCE_SERVER_H

#include "api/api.h"
#include "appliance/auth.h"

typedef struct srv srv;

/* Starts serving. env and auth must outlive the server. On failure writes one line naming
 * the problem into err and returns NULL. */
srv *srv_start(const api_env *env, const auth_state *auth, char *err, size_t errlen);

/* The port actually bound (useful with port 0). */
int srv_port(const srv *s);

/* Stops accepting, lets in-flight requests finish, joins every worker. */
void srv_stop(srv *s);

#endif
