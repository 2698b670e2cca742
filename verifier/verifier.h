/*
 * verifier (prefix vfy_): the reference verifier of the appliance's RS256 tokens. It checks
 * a compact JWS token against the appliance's JWKS and drops every kid that the SIGNED
 * revocation feed names. A CDN edge, a player backend or an upload endpoint links it; the
 * CLI signd-verify (verifier/signd-verify.c) is a thin shell around it.
 *
 * What it owns, per vfy handle:
 *   - the pinned publication key, read once from a PEM file the operator gives: the only
 *     key a revocation feed is checked with (GET /v1/revocations/key is never trusted at
 *     run time, so a man in the middle cannot swap the key together with the feed);
 *   - the client keys of the JWKS (only entries with use "sig" and alg "RS256": the
 *     publication key can never verify a token), replaced wholesale on each fetch;
 *   - the revoked kids: the union of every accepted feed (a kid is never un-revoked), and
 *     the accepted feed's seq, iat, exp and ttl; a feed with a lower seq is a rollback and
 *     is refused;
 *   - the subject revocations of the accepted feed (sub, before), replaced by each feed
 *     accepted (every copy carries all those that can still match a live token);
 *   - the signed status lists of revocable tokens, cached by uri (at most
 *     VFY_STATUS_CACHE_MAX, the oldest dropped), checked with the same pinned key; a token
 *     is only ever checked against <url>/v1/status-lists/<n> of the configured url (a token
 *     naming any other uri is malformed: no URL a token makes up is fetched), and a list's
 *     set bits are never cleared (an older copy cannot un-revoke a token);
 *   - the secret of a redeemer credential (cfg.redeem_credential, read from a file once,
 *     wiped by vfy_close) for vfy_redeem, which asks the appliance to consume a token;
 *   - one background thread (libcurl multi, started by vfy_open, stopped and joined by
 *     vfy_close) that keeps a Server-Sent Events subscription to /v1/revocations/events
 *     (reconnects with backoff and Last-Event-ID: <seq>), fetches the signed feed
 *     (?after=<seq>) when an event says there is news and every poll interval (the feed's
 *     ttl bounded by poll_min..poll_max, by half its remaining lifetime, and, while the
 *     stream is down, by a third of max_feed_age) so that iat stays fresh; it refreshes
 *     each cached status list by the same rule, and at once when a token-revocation event
 *     names its uri (and all of them after a reconnection). An event only makes it fetch
 *     sooner: nothing is revoked on the word of the unsigned stream.
 *
 * Threads: vfy_verify, vfy_stats and vfy_wait_seq may be called from any number of threads
 * at once. The key set, the revoked set and the feed's fields sit behind one rwlock
 * (writers preferred, so a verification flood cannot starve an update); vfy_verify copies
 * the key it needs under the read lock and checks the RSA signature outside it. A JWKS
 * refetch (on an unknown kid) runs in the calling thread under a mutex that also makes
 * concurrent callers share one fetch; at most one refetch happens per jwks_cooldown
 * seconds whatever the number of unknown kids. A status list missing or stale when a
 * token needs it is fetched the same way (its own mutex, one fetch for all waiting
 * callers, at most one a second per list after a failure). vfy_redeem may be called from
 * any thread too (one HTTPS request of its own per call).
 *
 * Failure modes: setup (vfy_open) fails with a vfy_err and a one-line message when a
 * setting is wrong, the pinned key is unreadable, or the appliance is unreachable, fails
 * TLS, or serves a JWKS or a feed that does not check out. After setup it never fails:
 * network trouble only makes the feed older, and verification fails closed with
 * VFY_FEED_STALE once now >= the feed's exp, or once its iat is older than max_feed_age
 * while the stream is down, or once the stream announced a seq above the feed's (a
 * revocation or a hello) and behind_grace seconds passed without a feed that reaches it
 * (the feed unfetchable: the appliance's keeper down, or someone resetting only the feed's
 * connections). A refused feed (bad signature, wrong typ, rollback, expired)
 * is counted and otherwise ignored; a gap (a delta that starts past our seq) makes the
 * next fetch a full one. Status lists fail closed the same way, per token: feed_stale for
 * a token whose list is past its exp (or too old while the stream is down) and cannot be
 * fetched again, or whose list a token-revocation event named behind_grace seconds ago
 * without a copy having the announced bit set since.
 *
 * Bounds: a token is at most VFY_TOKEN_MAX bytes, a JWKS or a feed at most VFY_DOC_MAX
 * bytes, a status list document VFY_STATUS_DOC_MAX and its inflated bits exactly
 * VFY_STATUS_LIST_BYTES, an SSE line at most VFY_SSE_LINE_MAX bytes; anything longer is
 * refused unread (or, inflating, uninflated).
 *
 *   vfy_config cfg;
 *   vfy_config_default(&cfg);
 *   cfg.url = "https://signd.example:8443"; cfg.cacert = "ca.pem"; cfg.feed_key = "pub.pem";
 *   vfy *v; char err[256];
 *   if (vfy_open(&cfg, &v, err, sizeof(err)) != VFY_E_OK) ... report err ...
 *   json_t *claims;
 *   if (vfy_verify(v, token, &claims) == VFY_OK) { ... json_decref(claims); }
 *   if (vfy_verify_ex(v, token, "https://shop.example", NULL) == VFY_WRONG_ORIGIN) ...
 *   vfy_close(v);
 */
#ifndef VERIFIER_VERIFIER_H
#define VERIFIER_VERIFIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "jose/jose.h"

#define VFY_TOKEN_MAX 16384    /* bytes of a token vfy_verify will look at */
#define VFY_DOC_MAX (8u << 20) /* bytes of a JWKS or a feed document */
#define VFY_SSE_LINE_MAX 8192  /* bytes of one line of the event stream */
#define VFY_KID_LEN 32         /* a client kid: 32 lowercase hex characters */
#define VFY_MIN_RSA_BYTES 256  /* RFC 7518 section 3.3: RS256 keys are 2048 bits or more */
#define VFY_FEED_TYP "kid-revocation+jwt"
#define VFY_ORIGINS_MAX 16 /* origins one token may be bound to (claim "origins") */
#define VFY_AUD_MAX 256    /* bytes of cfg.aud, as the appliance bounds a minted aud */

/* ---- results ------------------------------------------------------------------------- */

/* What vfy_verify answers: exactly one, checked in this order (the first that applies).
 * The token's own status list is looked at only once its signature and times check out:
 * nothing is fetched on the word of a token the appliance did not sign. */
typedef enum {
    VFY_OK = 0,
    VFY_MALFORMED,       /* not 3 base64url parts of JSON objects, no kid, exp not a number;
                            an origin that is not a string; a status claim out of shape or
                            whose uri is not <url>/v1/status-lists/<0..1023> of our url */
    VFY_ALG_NOT_ALLOWED, /* header alg is not exactly "RS256" ("none", "HS256", ...) */
    VFY_FEED_STALE,      /* fail closed: the revocation feed is expired or too old; or, after
                            the checks above, the token's status list is (or cannot be had) */
    VFY_UNKNOWN_KID,     /* no RS256 signing key with that kid, even after a JWKS refetch */
    VFY_REVOKED_KID,     /* the signed feed revokes the kid */
    VFY_BAD_SIGNATURE,   /* the RS256 signature does not verify under the kid's key */
    VFY_EXPIRED,         /* now >= exp + leeway */
    VFY_NOT_YET_VALID,   /* now + leeway < nbf */
    VFY_REVOKED_TOKEN,   /* the token's bit in its signed status list is set */
    VFY_WRONG_ORIGIN,    /* an expected origin was given and the token's origin differs */
    VFY_ALREADY_USED,    /* vfy_redeem only: the appliance says the single-use token is spent */
    VFY_REDEEM_FAILED,   /* vfy_redeem only: the appliance could not be asked, or answered
                            something else (no credential, 401/403, 5xx, invalid_token) */
    /* Appended, not inserted, so the values above keep their numbers. In the check order
     * they come with wrong_origin: origin_required and wrong_origin, then wrong_audience. */
    VFY_ORIGIN_REQUIRED, /* the token is bound to an origin (or origins) and the check named
                            none: fail closed, a bound token is not valid from anywhere */
    VFY_WRONG_AUDIENCE,  /* cfg.aud is set and the token's aud is not it (nor an array
                            holding it), or the token has no aud */
    VFY_REVOKED_SUBJECT, /* the signed feed revokes the token's sub for tokens with an iat
                            before a time, and its iat is before it (or not a number). In
                            the check order: after not_yet_valid, before revoked_token */
} vfy_result;

/* The stable name of a result: "ok", "malformed", "alg_not_allowed", "feed_stale",
 * "unknown_kid", "revoked_kid", "bad_signature", "expired", "not_yet_valid",
 * "revoked_token", "wrong_origin", "already_used", "redeem_failed", "origin_required",
 * "wrong_audience", "revoked_subject" ("invalid" for a value outside the enum). */
const char *vfy_result_name(vfy_result r);

/* Why vfy_open (or a loader) failed. */
typedef enum {
    VFY_E_OK = 0,
    VFY_E_CONFIG,     /* a setting is missing or out of range, or the URL is not https:// */
    VFY_E_KEY,        /* the pinned publication key: unreadable file, not an RSA public PEM */
    VFY_E_NET,        /* the appliance is unreachable, or TLS failed (certificate, version) */
    VFY_E_HTTP,       /* the appliance answered with a status other than 200 */
    VFY_E_JWKS,       /* the JWKS is not a {"keys":[...]} document */
    VFY_E_FEED,       /* the signed feed was refused (see vfy_feed_check) */
    VFY_E_SYSTEM,     /* out of memory, or a thread or lock could not be made */
    VFY_E_CREDENTIAL, /* the redeem credential file: unreadable, empty, too long, not ASCII */
} vfy_err;

/* "ok", "config", "key", "network", "http", "jwks", "feed", "system", "credential". */
const char *vfy_err_name(vfy_err e);

/* ---- the pinned publication key --------------------------------------------------------- */

typedef struct {
    uint8_t n[JOSE_RSA_MAX]; /* big-endian modulus, no leading zero bytes */
    size_t n_len;
    uint8_t e[JOSE_RSA_MAX]; /* big-endian public exponent */
    size_t e_len;
} vfy_pubkey;

/* Reads the PEM SubjectPublicKeyInfo (RSA, at least 2048 bits) in the file at path, at most
 * 64 KiB. VFY_E_OK, or VFY_E_KEY with a message naming the file and what is wrong. */
vfy_err vfy_pubkey_load(const char *path, vfy_pubkey *out, char *err, size_t errlen);

/* ---- the signed revocation feed (pure: no network, no state) ------------------------- */

typedef enum {
    VFY_FEED_OK = 0,
    VFY_FEED_MALFORMED,     /* not a compact JWS of JSON objects, or a payload out of shape */
    VFY_FEED_BAD_HEADER,    /* alg not exactly RS256, or typ not exactly kid-revocation+jwt */
    VFY_FEED_BAD_SIGNATURE, /* does not verify under the pinned key */
    VFY_FEED_EXPIRED,       /* now >= exp */
    VFY_FEED_ROLLBACK,      /* seq below the seq already accepted */
    VFY_FEED_GAP,           /* a delta whose after is past the seq already accepted */
} vfy_feed_status;

/* "ok", "malformed", "bad_header", "bad_signature", "expired", "rollback", "gap". */
const char *vfy_feed_status_name(vfy_feed_status s);

typedef struct {
    char kid[VFY_KID_LEN + 1];
    uint64_t seq;
    int64_t revoked_at;
} vfy_revocation;

#define VFY_SUB_MAX 256 /* bytes of a subject in the feed (the appliance's bound on sub) */

/* A subject revocation: tokens with this sub and an iat before `before` are revoked. */
typedef struct {
    char sub[VFY_SUB_MAX + 1];
    int64_t before;
    uint64_t seq; /* from the same sequence as the key revocations */
} vfy_subject;

/* A feed that vfy_feed_check accepted. */
typedef struct {
    uint64_t seq;   /* highest revocation sequence number, 0 when none */
    uint64_t after; /* revoked holds every revocation with seq > after; 0: the full list */
    int64_t iat, exp, ttl;
    size_t n_revoked;
    vfy_revocation *revoked; /* n_revoked entries, malloc'd; vfy_feed_free releases them */
    /* Every subject revocation still able to match a live token, whatever `after` (the
     * appliance drops one once before + its token_ttl_max has passed); empty for a feed
     * without "subjects" (an appliance from before them). Malloc'd; vfy_feed_free. */
    size_t n_subjects;
    vfy_subject *subjects;
} vfy_feed;

/* Checks len bytes of a feed document (the response body of /v1/revocations/feed) and
 * parses it into *out. In order: at most VFY_DOC_MAX bytes, a compact JWS whose header is
 * a JSON object (else MALFORMED); alg exactly "RS256" and typ exactly "kid-revocation+jwt"
 * (else BAD_HEADER); an RS256 signature under key (else BAD_SIGNATURE); a payload object
 * with iss (string), seq, after <= seq, iat, exp > iat and ttl (non-negative integers), and
 * revoked, an array of {seq, kid (32 lowercase hex), revoked_at, reason (string)} whose
 * seqs are distinct and in (after, seq], and, when present, subjects, an array of {seq,
 * sub (1..VFY_SUB_MAX bytes), before (non-negative integer)} whose seqs are distinct and
 * in [1, seq] (else MALFORMED); now < exp (else EXPIRED);
 * seq >= current_seq (else ROLLBACK); after <= current_seq (else GAP). Unknown members are
 * ignored. Only VFY_FEED_OK fills *out; on any other status *out is zeroed (vfy_feed_free
 * on it is still safe).
 *
 *   vfy_feed f;
 *   if (vfy_feed_check(&pin, body, body_len, time(NULL), my_seq, &f) == VFY_FEED_OK) ...
 *   vfy_feed_free(&f);
 */
vfy_feed_status vfy_feed_check(const vfy_pubkey *key, const char *jws, size_t len, int64_t now,
                               uint64_t current_seq, vfy_feed *out);

/* Releases what vfy_feed_check allocated and zeroes *f; NULL and twice are fine. */
void vfy_feed_free(vfy_feed *f);

/* ---- signed token status lists (pure: no network, no state) -------------------------- */

#define VFY_STATUS_LIST_TYP "statuslist+jwt"
#define VFY_STATUS_LIST_BYTES 131072u /* inflated: one bit for each of 1,048,576 tokens */
#define VFY_STATUS_DOC_MAX (1u << 20) /* bytes of a status list document */
#define VFY_STATUS_PATH "/v1/status-lists/"
#define VFY_STATUS_LIST_NUM_MAX 1023u  /* list numbers the appliance hands out: 0..1023 */
#define VFY_STATUS_URI_MAX (2048 + 32) /* bytes of a list's uri: the url and the path */
#define VFY_STATUS_CACHE_MAX 64        /* lists one vfy handle keeps; the oldest goes */

/* A status list that vfy_status_list_check accepted. Bit i (token idx i) is byte i / 8,
 * bit i % 8 counted from the least significant; set means revoked. */
typedef struct {
    char sub[VFY_STATUS_URI_MAX + 1]; /* the uri the list says it is served at */
    int64_t iat, exp, ttl;
    uint8_t *bits; /* VFY_STATUS_LIST_BYTES bytes, malloc'd; vfy_status_list_free */
} vfy_status_list;

/* Checks len bytes of a status list document (the body of GET /v1/status-lists/{n}) and
 * parses it into *out. In order: at most VFY_STATUS_DOC_MAX bytes, a compact JWS whose
 * header is a JSON object (else MALFORMED); alg exactly "RS256" and typ exactly
 * "statuslist+jwt" (else BAD_HEADER); an RS256 signature under key, the pinned publication
 * key of the feed (else BAD_SIGNATURE); a payload object with sub (string of at most
 * VFY_STATUS_URI_MAX bytes), iat, exp > iat and ttl (non-negative integers), iss (a string
 * when present) and status_list {bits: 1, lst: base64url of a zlib stream that inflates to
 * exactly VFY_STATUS_LIST_BYTES bytes with nothing after the stream} (else MALFORMED: the
 * inflater writes into one buffer of that size and stops there, so a zip bomb costs no
 * memory); now < exp (else EXPIRED). Other statuses never come back. The caller checks sub
 * against the uri it fetched. Only VFY_FEED_OK fills *out; otherwise *out is zeroed.
 *
 *   vfy_status_list l;
 *   if (vfy_status_list_check(&pin, body, len, time(NULL), &l) == VFY_FEED_OK &&
 *       strcmp(l.sub, uri) == 0) ... vfy_status_list_bit(&l, idx) ...
 *   vfy_status_list_free(&l);
 */
vfy_feed_status vfy_status_list_check(const vfy_pubkey *key, const char *jws, size_t len,
                                      int64_t now, vfy_status_list *out);

/* Bit idx of an accepted list: 1 revoked, 0 not; -1 when idx is out of range or l has no
 * bits. */
int vfy_status_list_bit(const vfy_status_list *l, uint32_t idx);

/* Releases what vfy_status_list_check allocated and zeroes *l; NULL and twice are fine. */
void vfy_status_list_free(vfy_status_list *l);

/* ---- the verifier --------------------------------------------------------------------- */

typedef struct {
    const char *url;        /* https://host[:port] of the appliance (a trailing '/' is fine) */
    const char *cacert;     /* CA file (PEM) that the appliance's certificate chains to */
    const char *feed_key;   /* PEM file: the pinned publication key */
    unsigned max_feed_age;  /* seconds; a feed older than this is stale while the stream is
                               down. Default 300, 1..86400 */
    unsigned jwks_cooldown; /* seconds between two JWKS refetches on unknown kids. 10, 0..3600 */
    unsigned leeway;        /* seconds of clock skew allowed on exp and nbf. 0, 0..3600 */
    int64_t now;            /* token clock for exp and nbf (tests); 0: the system clock.
                               Feed freshness always uses the system clock */
    unsigned poll_min;      /* bounds on the feed poll interval, seconds. 1 and 300 */
    unsigned poll_max;
    unsigned http_timeout;         /* seconds for one JWKS or feed request. 10, 1..300 */
    unsigned behind_grace;         /* seconds a verifier told of a newer revocation (by the
                                      stream: a revocation or hello with a higher seq, a
                                      token-revocation for a list it keeps) may go on answering
                                      from what it holds while it fetches the signed copy; past
                                      it, feed_stale until it has that copy. 5, 1..3600 */
    const char *redeem_credential; /* file holding the secret of a redeemer credential, for
                                      vfy_redeem; NULL: vfy_redeem answers redeem_failed */
    const char *aud; /* the audience this verifier is: a token whose aud is not it (a string
                        equal to it, or an array holding it) is wrong_audience, one without
                        aud too. NULL: aud is not looked at. 1..256 printable ASCII */
} vfy_config;

/* Fills *cfg with the defaults above and NULL strings. */
void vfy_config_default(vfy_config *cfg);

typedef struct vfy vfy;

/* Loads the pinned key, fetches the JWKS and the full feed (synchronously, so a verifier
 * that opened has both), then starts the background thread. The strings of cfg are copied.
 * VFY_E_OK and *out, or an error, a NUL-terminated message in err (when errlen > 0) and
 * *out = NULL. Calls curl_global_init once per process (never cleaned up). */
vfy_err vfy_open(const vfy_config *cfg, vfy **out, char *err, size_t errlen);

/* A verifier without network and without a thread, from documents in memory: a JWKS and a
 * feed checked against key (cfg->cacert, feed_key and redeem_credential are ignored;
 * cfg->url, when given, is only the prefix a token's status list uri must have). For tests
 * and offline use: the stream counts as down, unknown kids are never refetched, new feeds
 * come only through vfy_apply_feed and status lists only through vfy_apply_status_list (a
 * token whose list is not there is feed_stale). Errors as vfy_open. */
vfy_err vfy_open_documents(const vfy_config *cfg, const vfy_pubkey *key, const char *jwks,
                           size_t jwks_len, const char *feed, size_t feed_len, vfy **out, char *err,
                           size_t errlen);

/* Checks a feed document against the pinned key and the current seq (vfy_feed_check with
 * the system clock) and, when it is accepted, applies it: its kids join the revoked set,
 * its seq, iat, exp and ttl become current (an older copy of the same seq never lowers iat
 * or exp), its subjects replace those held (each copy carries all that still matter), and
 * vfy_wait_seq waiters wake. Returns the check's status. */
vfy_feed_status vfy_apply_feed(vfy *v, const char *jws, size_t len);

/* Checks a status list document fetched from uri (vfy_status_list_check with the system
 * clock, and its sub must be uri) and, when accepted, caches it under uri: its set bits
 * join those already known for uri (a token is never un-revoked, so an older copy from a
 * cache cannot bring one back), and iat and exp never go down. When the cache is full the
 * list cached first is dropped. Returns the check's status (MALFORMED also for a sub that
 * is not uri, or out of memory). */
vfy_feed_status vfy_apply_status_list(vfy *v, const char *uri, const char *jws, size_t len);

/* Stops and joins the background thread (at once: it is woken, not waited for), then frees
 * everything, the redeem secret wiped. No other call on v may be running or follow. NULL
 * is fine. */
void vfy_close(vfy *v);

/* Verifies a NUL-terminated compact JWS token (see vfy_result for the checks and their
 * order). On VFY_OK, *claims_out (if claims_out is non-NULL) receives the payload object,
 * a new reference the caller releases with json_decref; on anything else it is set to NULL.
 * May refetch the JWKS in the calling thread (bounded by http_timeout) on an unknown kid.
 * Same as vfy_verify_ex(v, token, NULL, claims_out): no origin is checked. */
vfy_result vfy_verify(vfy *v, const char *token, json_t **claims_out);

/* vfy_verify, and then: a token with a "status" claim is looked up in its status list
 * (fetched in the calling thread the first time, one fetch shared by concurrent callers,
 * bounded by http_timeout; kept fresh by the background thread on the poll interval and
 * at once on a token-revocation event): revoked_token when its bit is set, feed_stale when
 * the list is past its exp (or older than max_feed_age while the stream is down) and no
 * fresh copy can be had. Then the origin: a token bound to one ("origin", a string) or to
 * several ("origins", an array of 1..16 strings) is origin_required when expected_origin
 * is NULL (fail closed: vfy_verify never passes a bound token), wrong_origin when
 * expected_origin is none of them byte for byte; a token bound to none passes anywhere.
 * Then, with cfg.aud set, the audience (wrong_audience).
 * "single_use" is not looked at: only the appliance knows whether a token was spent (see
 * vfy_redeem). */
vfy_result vfy_verify_ex(vfy *v, const char *token, const char *expected_origin,
                         json_t **claims_out);

/* Is origin of the form the appliance accepts: http:// or https://, a lowercase host of
 * [a-z0-9.-], an optional port 1..65535, nothing after, at most 255 bytes? */
bool vfy_origin_ok(const char *origin);

/* Redeems a token through the appliance: vfy_verify_ex first (a token that fails here is
 * never sent), then POST <url>/v1/tokens/redeem {"token", "origin" (when not NULL)} with
 * the secret of cfg.redeem_credential as a Bearer credential, in the calling thread
 * (bounded by http_timeout). 200 is ok (*claims_out as vfy_verify); 409 token_already_used
 * already_used, token_revoked revoked_token, wrong_origin wrong_origin, key_revoked
 * revoked_kid, token_expired expired, token_not_yet_valid not_yet_valid; anything else, or
 * no answer, is redeem_failed, with a line for a person in detail (when detail_len > 0).
 * A single-use token answers ok exactly once, whoever asks. */
vfy_result vfy_redeem(vfy *v, const char *token, const char *origin, json_t **claims_out,
                      char *detail, size_t detail_len);

/* A snapshot of the verifier's state (struct tag, so the name can also be the function). */
struct vfy_stats {
    uint64_t jwks_fetches;    /* JWKS requests made, the one of vfy_open included */
    uint64_t feed_fetches;    /* feed requests made, the one of vfy_open included */
    uint64_t feeds_refused;   /* feed documents that did not check out (or gaps) */
    uint64_t stream_connects; /* event-stream connections that were accepted */
    bool stream_up;           /* an event stream is connected right now */
    uint64_t seq;             /* seq of the accepted feed */
    uint64_t announced_seq;   /* highest seq the stream announced (0: none above seq) */
    bool behind;              /* told of a newer seq or status bit than it holds */
    int64_t feed_iat, feed_exp;
    size_t keys;             /* RS256 signing keys known from the JWKS */
    size_t revoked;          /* kids in the revoked set */
    uint64_t status_fetches; /* status list requests made (in callers and in the background) */
    uint64_t status_refused; /* status list documents that did not check out, or no answer */
    size_t status_lists;     /* status lists cached */
};

void vfy_stats(vfy *v, struct vfy_stats *out);

/* Waits until a feed with seq >= seq has been applied, at most timeout_ms milliseconds.
 * true when it has (at once if it already had), false on timeout. */
bool vfy_wait_seq(vfy *v, uint64_t seq, unsigned timeout_ms);

#endif
