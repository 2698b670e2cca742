/*
 * serve (prefix vsv_): the verifier as a sub-request authentication daemon
 * (`signd-verify --serve ADDR`), for nginx auth_request, HAProxy or Envoy ext_authz in
 * HTTP mode. It answers every request on any path, from what one vfy handle holds (the
 * JWKS, the signed feed, the event stream, the status lists): no network call per request
 * but those the library makes itself (a JWKS refetch on an unknown kid, bounded by its
 * cooldown; a status list the first time a token names it).
 *
 * Per request:
 *   1. The original URI: the X-Original-URI header (nginx: proxy_set_header X-Original-URI
 *      $request_uri), or the request's own target when the header is absent (a proxy that
 *      forwards the path as is). At most VSV_URI_MAX bytes.
 *   2. The token: the first path segment when it has the shape of a compact JWS
 *      (/<token>/video-123/seg0.ts, the resource path is then what follows it), else the
 *      query parameter token (/video-123/seg0.ts?token=<token>, the resource path is the
 *      whole path). Both at once, or the parameter twice, is bad_uri: one request, one token.
 *   3. The path must be canonical (starts with '/', visible ASCII only, no empty segment but
 *      a trailing one, no "." or ".." segment, no backslash, no percent-encoded '.', '/',
 *      '\\' or NUL): the web server serves the path after it resolves these, so a path the
 *      daemon would read differently from the server is refused (bad_uri), never guessed at.
 *   4. The request's origin: the Origin header, else the scheme://host[:port] of the Referer,
 *      else the --origin fallback, else none. The library compares it with the token's
 *      origin claim; a token bound to an origin asked for with no origin at all is
 *      origin_required (fail closed: the binding cannot be checked).
 *   5. vfy_verify_ex, then, with sub_segment N > 0, the token's sub must equal segment N
 *      (1-based) of the resource path byte for byte (wrong_resource otherwise).
 *
 * Answers (no body): 200 with X-Signd-Sub, X-Signd-Jti and X-Signd-Exp (claims a proxy may
 * pass on; a value that is not a short line of visible ASCII is left out), or an error with
 * X-Signd-Reason: <reason>. See vsv_status for the status of each reason.
 */
#ifndef VERIFIER_SERVE_H
#define VERIFIER_SERVE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "verifier/verifier.h"

#define VSV_URI_MAX (VFY_TOKEN_MAX + 4096) /* bytes of the original URI: a token and a path */
/* CivetWeb's max_request_size: the request line and X-Original-URI may each hold a URI. */
#define VSV_REQUEST_MAX (2 * VSV_URI_MAX + 8192)
#define VSV_ORIGIN_MAX 255 /* bytes of an origin, as vfy_origin_ok */
#define VSV_ADDR_MAX 64    /* bytes of the --serve address */
#define VSV_SEGMENT_MAX 32 /* --sub-from-path: 1..32 */
/* Threads: CivetWeb holds one per open connection, kept-alive ones included, so this must
 * be above the connections the proxy keeps open to it (nginx: upstream keepalive). */
#define VSV_THREADS_DEFAULT 32
#define VSV_THREADS_MAX 256          /* --serve-threads: 1..256 */
#define VSV_HEADER_VALUE_MAX 512     /* bytes of one X-Signd-* value */
#define VSV_REQUEST_TIMEOUT_MS 10000 /* a proxy on loopback sends its headers at once */

/* Where the token sits in a URI, and the resource path it guards. Pointers into the URI. */
typedef struct {
    const char *token;
    size_t token_len;
    const char *path; /* the resource path: starts with '/'; the token segment taken out */
    size_t path_len;
} vsv_target;

typedef enum {
    VSV_URI_OK = 0,
    VSV_URI_NO_TOKEN, /* neither a token-shaped first segment nor a token parameter */
    VSV_URI_BAD,      /* too long, not canonical (see the head), or two tokens */
} vsv_uri_status;

/* Parses len bytes of an original URI (path and optional query) into *out. */
vsv_uri_status vsv_parse_uri(const char *uri, size_t len, vsv_target *out);

/* Segment n (1-based) of a resource path: true and *seg, *seg_len, or false when the path
 * has fewer segments. */
bool vsv_path_segment(const char *path, size_t len, unsigned n, const char **seg, size_t *seg_len);

/* The request's origin into buf (cap >= VSV_ORIGIN_MAX + 1): origin_hdr when not NULL,
 * else the scheme://authority of referer when not NULL (up to the next '/', '?' or '#'),
 * else fallback; returns buf, or NULL when all three are NULL. A header value longer than
 * VSV_ORIGIN_MAX (or a Referer without "://") gives "", which matches no token's origin. */
const char *vsv_request_origin(const char *origin_hdr, const char *referer, const char *fallback,
                               char *buf, size_t cap);

/* A claim as a header value into buf: a string of visible ASCII and spaces (no CR, LF or
 * other control) or an integer in decimal, at most min(cap - 1, VSV_HEADER_VALUE_MAX)
 * bytes. false (buf "") when absent or anything else. */
bool vsv_claim_header(const json_t *claims, const char *name, char *buf, size_t cap);

/* The answer to one request: status and reason ("ok" with 200), and on 200 the claims
 * (a reference the caller releases with json_decref). */
typedef struct {
    int status;
    const char *reason;
    json_t *claims;
} vsv_answer;

/* The HTTP status of a reason: 200 ok; 401 missing_token, malformed, alg_not_allowed,
 * unknown_kid, bad_signature, expired, not_yet_valid (no valid token: get a new one); 403
 * revoked_kid, revoked_token, revoked_subject, wrong_origin, origin_required, wrong_audience,
 * wrong_resource, bad_uri, already_used (a valid token, refused here; revoked_subject,
 * wrong_audience and origin_required are names the library may give too); 503 feed_stale,
 * redeem_failed and anything else (the verifier cannot decide; fail closed). */
int vsv_status(const char *reason);

typedef struct {
    unsigned sub_segment; /* 0: sub not checked; N: sub must be segment N of the path */
    const char *fallback; /* origin for a request with neither Origin nor Referer, or NULL */
} vsv_policy;

/* One request's whole decision (steps 2 to 5 of the head) against v. */
vsv_answer vsv_check(vfy *v, const vsv_policy *p, const char *uri, size_t uri_len,
                     const char *origin_hdr, const char *referer);

typedef struct {
    const char *addr; /* HOST:PORT to listen on (plain HTTP) */
    unsigned threads; /* 1..VSV_THREADS_MAX */
    vsv_policy policy;
} vsv_config;

/* Is addr of the form HOST:PORT (IPv4 or [IPv6]) that --serve takes, at most VSV_ADDR_MAX? */
bool vsv_addr_ok(const char *addr);

/* Opens the verifier (vfy_open with vcfg), listens on cfg->addr, prints "serving HOST:PORT"
 * on stdout once it does, and answers until SIGTERM or SIGINT; then stops and closes all.
 * 0 after a signal, 2 on a setup error (one line in err). SIGINT and SIGTERM are blocked in
 * every thread it starts (they are taken with sigwait). */
int vsv_run(const vfy_config *vcfg, const vsv_config *cfg, char *err, size_t errlen);

#endif
