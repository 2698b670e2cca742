/*
 * met: the appliance's counters and their Prometheus text exposition (GET /metrics).
 *
 * What it owns: process-wide counters in fixed static arrays, every one a C11 atomic
 * updated with relaxed ordering. Nothing on the signing path takes a lock, allocates or
 * makes a system call here:
 *  - requests: per route (an index the server gives, its template and method registered
 *    once) a count per HTTP status and a latency histogram with MET_BUCKETS fixed bounds;
 *  - signatures: per kid and result, in an open-addressed table of MET_KIDS_MAX slots that
 *    a kid claims once with a compare-and-swap and never gives back. Past that many kids
 *    the rest count under kid="other"; requests refused before a kid was known count
 *    under kid="none". Callers pass a kid only for results that prove it names a key of
 *    the registry, so a client sending random kids cannot fill the table;
 *  - PKCS#11 failures: per CKR value and sk_status (its class), in a table of MET_CKR_MAX
 *    slots that a CKR value claims once with a compare-and-swap and never gives back; past
 *    that many values the rest count under ckr="other", so a module returning random
 *    codes cannot grow the series. MET_KEEPER_UNREACHABLE (the keeper process did not
 *    answer) is counted apart, with no CKR.
 * Rendering (met_render) reads those and the gauges the caller samples at scrape time
 * (sessions, keys by state, revocation sequence, audit lag) and is the only part that
 * allocates. A histogram's buckets are read one by one while others count, so its _count
 * is computed from the buckets it printed: +Inf always equals _count.
 *
 * Thread safety: every function from any thread; met_route before requests are counted.
 */
#ifndef APPLIANCE_METRICS_H
#define APPLIANCE_METRICS_H

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

#define MET_ROUTES_MAX 48 /* route indexes 0..MET_ROUTES_MAX-2; the last is "unmatched" */
#define MET_ROUTE_UNMATCHED (MET_ROUTES_MAX - 1)
#define MET_KIDS_MAX 4096  /* distinct kids with series of their own */
#define MET_RESULTS_MAX 80 /* signature results: 0 is "ok", the rest the API's error codes */
#define MET_BUCKETS 14     /* latency bounds, seconds, from 0.5 ms to 10 s, then +Inf */
#define MET_KEEPER_UNREACHABLE SK_ERR_COUNT_   /* a pkcs11 error code beyond sk_status */
#define MET_KEEPER_TIMEOUT (SK_ERR_COUNT_ + 1) /* the keeper missed its deadline */
#define MET_CKR_MAX 32                         /* distinct CKR values with series of their own */

/* Names route index i (< MET_ROUTE_UNMATCHED): its template ("/v1/keys/{kid}/sign", never
 * a raw path) and method. Both are kept as pointers: string literals. */
void met_route(unsigned i, const char *route, const char *method);

/* One request answered: route index (MET_ROUTE_UNMATCHED for paths no route matched),
 * HTTP status, and its latency in nanoseconds. */
void met_request(unsigned route, int status, uint64_t ns);

/* One signing request (raw signature or token) that reached its handler: kid NULL when no
 * key was known, result 0 for a signature made, else an error index < MET_RESULTS_MAX. */
void met_signature(const sk_kid *kid, unsigned result);

/* One failed token operation: code an sk_status other than SK_OK (its class), or
 * MET_KEEPER_UNREACHABLE; ckr the PKCS#11 return value behind it, 0 when none or unknown
 * (ignored for MET_KEEPER_UNREACHABLE). Rendered as ckr="CKR_DEVICE_ERROR" for the codes
 * a fixed table names, "0x%08lx" for the others, "unknown" for 0, "other" past MET_CKR_MAX
 * distinct values. SK_ERR_KEY_NOT_FOUND and SK_ERR_KEY_EXISTS are ordinary answers (a
 * revoked kid, a kid taken), not failures: not counted, and they claim no slot.
 *   met_pkcs11_error(SK_ERR_DEVICE, hsm_last_ckr());
 *   met_pkcs11_error(MET_KEEPER_UNREACHABLE, 0);
 * MET_KEEPER_TIMEOUT: a reply that missed keeper_timeout_ms, ckr="none",class="keeper_timeout". */
void met_pkcs11_error(unsigned code, unsigned long ckr);

/* Counts a restart of the keeper (keeper 1) or the front (0) by the supervisor, by cause
 * ("exited", "signal", "watchdog"; anything else is not counted):
 * signd_restarts_total{process,cause}. Told by the supervisor (probe.h). */
void met_restart(int keeper, const char *cause);

/* The keeper's count of module re-opens (hsm_reopens, read by the readiness probe through
 * kp_reopens), as it reads now: signd_hsm_reopens_total adds what it grew by since the
 * last reading, and the whole of it after a keeper restart (a count lower than the last
 * one is a new keeper's), so the total keeps counting across keeper restarts. */
void met_hsm_reopens(unsigned long keeper_count);

/* The label met_pkcs11_error renders for a CKR value (its ckr_name in the table, or NULL
 * when the table has none: then the hex form). For tests and the docs' table. */
const char *met_ckr_name(unsigned long ckr);

/* The calling thread's signing kid: noted by the keeper interface when it is asked to
 * sign, or by the signing check when it refuses a registry key (revoked, retiring,
 * broken), taken (and cleared) by the server at the end of the request. met_take_kid
 * returns 1 and fills *out when a kid was noted since the last take. */
void met_note_kid(const sk_kid *kid);
int met_take_kid(sk_kid *out);

/* What the keeper probed about the token (kp_token_info), recorded once the front has it:
 * signd_token_info from then on (absent before). Any thread. */
void met_token_info(const sk_token_info *ti);

/* What is sampled at scrape time and passed to met_render. */
#define MET_STATES_MAX 8
typedef struct {
    unsigned sessions_in_use, sessions_max;
    const char *state_name[MET_STATES_MAX]; /* keys by state */
    uint64_t state_keys[MET_STATES_MAX];
    size_t n_states;
    uint64_t revocation_seq;
    int ready;                      /* the readiness probe's answer (probe.h) */
    uint64_t audit_lag_events;      /* accepted, not yet committed to the trail */
    double audit_lag_seconds;       /* age of the oldest of those; 0 when none */
    unsigned long long log_dropped; /* JSON log lines lost */
    const char *version;            /* build_info labels */
    const char *openssl, *sqlite, *jansson;
} met_gauges;

/* The whole exposition (text/plain; version=0.0.4) as a malloc'd NUL-terminated buffer,
 * *len its length; NULL when out of memory. result_name(i) names signature result i. */
char *met_render(const met_gauges *g, const char *(*result_name)(unsigned), size_t *len);

/* The process's start (Unix seconds), set the first time any met_ function is called
 * or met_start is. */
void met_start(void);

/* The exposition's content type. */
#define MET_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
