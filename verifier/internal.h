/*
 * verifier/internal.h: private to the verifier's C files, not part of the interface (that is
 * verifier.h). The vfy handle's layout, shared by verifier.c (state, verification), feed.c
 * (JWS splitting, the pure feed check) and net.c (libcurl, the event stream, the
 * background thread).
 *
 * Locks and what they guard (taken in this order, never the reverse; jwks_mu and sl_mu are
 * never held together):
 *   jwks_mu  the JWKS refetch: jwks_curl, last_refetch_ms, refetched
 *   sl_mu    the synchronous status list fetch: sl_curl (one fetch shared by the callers
 *            that need a list at the same time)
 *   lock     (rwlock) keys, n_keys, jwks_gen, revoked, n_revoked, seq, iat, exp, ttl,
 *            announced_seq, behind_ms, slists, n_slists, slist_born (every field of every
 *            cached list)
 *   seq_mu   applied_seq and seq_cv (vfy_wait_seq)
 * stream_up, stop and the counters are atomics read without a lock. Everything under
 * "background" belongs to the background thread alone once it runs.
 */
#ifndef VERIFIER_INTERNAL_H
#define VERIFIER_INTERNAL_H

#include "verifier/verifier.h"

#include <pthread.h>
#include <stdatomic.h>

#include <curl/curl.h>

#define VFY_SSE_DATA_MAX 4096 /* bytes of data one event may carry: a revocation is ~150 */
#define VFY_SSE_EVENT_MAX 64  /* bytes of an event type */
#define VFY_SL_PENDING_MAX 16 /* announced status bits remembered per list; more: by time */

/* A compact JWS split into its parts, each decoded. */
typedef struct {
    json_t *header;       /* a JSON object */
    uint8_t *payload_raw; /* decoded payload bytes, malloc'd, NUL after the last */
    size_t payload_raw_len;
    json_t *payload;           /* NULL until vfy_jws_payload parsed payload_raw */
    uint8_t sig[JOSE_SIG_MAX]; /* may be empty: "alg":"none" tokens end in '.' */
    size_t sig_len;
    size_t signing_input_len; /* bytes before the second '.' */
} vfy_jws;

/* Splits len bytes (at most max) of compact JWS: exactly two dots, each part strict
 * base64url, a header that is a JSON object without duplicate keys, a signature of at most
 * JOSE_SIG_MAX bytes. The payload is decoded but not parsed, so that a caller may check the
 * signature before it reads signed data. 0, or -1 with *out zeroed; vfy_jws_free releases
 * it (also after -1). */
int vfy_jws_split(const char *s, size_t len, size_t max, vfy_jws *out);
/* Parses the payload as a JSON object without duplicate keys into j->payload: 0 or -1. */
int vfy_jws_payload(vfy_jws *j);
void vfy_jws_free(vfy_jws *j);

/* The envelope of a document the publication key signs (the feed, a status list): splits
 * len bytes of jws (at most max) into *j, then checks alg exactly RS256 and typ exactly
 * typ (else VFY_FEED_BAD_HEADER), the RS256 signature under key (else
 * VFY_FEED_BAD_SIGNATURE), and only then parses the payload (else VFY_FEED_MALFORMED; also
 * for a NULL key or a split that fails). VFY_FEED_OK with j->payload set. The caller
 * releases *j with vfy_jws_free whatever the answer. */
vfy_feed_status vfy_signed_doc(const vfy_pubkey *key, const char *jws, size_t len, size_t max,
                               const char *typ, vfy_jws *j);

/* One RS256 signing key of the JWKS; n and e point into one malloc'd block (ne). */
typedef struct {
    char kid[VFY_KID_LEN + 1];
    uint8_t *ne;
    size_t n_len, e_len;
} vfy_key;

/* One cached status list (verifier/status.c), under lock. */
typedef struct {
    char *uri;             /* malloc'd: <url>/v1/status-lists/<n>, checked */
    uint8_t *bits;         /* VFY_STATUS_LIST_BYTES, malloc'd; NULL until a copy is accepted */
    int64_t iat, exp, ttl; /* of the newest accepted copy */
    uint64_t born;         /* order of arrival: the smallest is dropped when the cache is full */
    int64_t next_ms;       /* monotonic ms of the next background refresh */
    int64_t failed_ms;     /* monotonic ms of the last fetch that failed; 0: none since */
    unsigned backoff_ms;   /* the background's delay after failures, doubling */
    bool refresh;          /* an event (or a stream reconnection) asks for a refresh now */
    /* Bits a token-revocation event announced that no accepted copy has set yet; while
     * any is pending past behind_grace, the list answers feed_stale. */
    uint32_t pending[VFY_SL_PENDING_MAX];
    size_t n_pending;
    int64_t pending_overflow_at; /* more than fit: revoked_at of the newest, cleared by a
                                    copy signed after it; 0: none */
    int64_t behind_ms;           /* monotonic ms of the oldest pending announcement; 0: none */
} vfy_slist;

#define VFY_SECRET_MAX 256 /* bytes of a redeem credential secret, with its NUL */

/* A growing byte buffer for a response body, refused past max. */
typedef struct {
    char *data;
    size_t len, cap, max;
    bool overflow;
} vfy_buf;

/* The event-stream parser (WHATWG Server-Sent Events, the parts we need). */
typedef struct {
    char line[VFY_SSE_LINE_MAX];
    size_t line_len;
    bool after_cr; /* the last byte was CR: a following LF ends nothing */
    char event[VFY_SSE_EVENT_MAX];
    char data[VFY_SSE_DATA_MAX];
    size_t data_len;
    bool data_overflow;
    long retry_ms; /* the server's last retry: field, or -1 */
} vfy_sse;

struct vfy {
    vfy_config cfg; /* strings point to the copies below */
    char *url, *cacert, *feed_key;
    char aud[VFY_AUD_MAX + 1]; /* cfg.aud's copy; cfg.aud points here when it was given */
    vfy_pubkey pin;
    bool offline; /* vfy_open_documents: no network, no thread */

    pthread_rwlock_t lock;
    vfy_key *keys; /* sorted by kid */
    size_t n_keys;
    uint64_t jwks_gen;                /* bumped on every JWKS applied */
    char (*revoked)[VFY_KID_LEN + 1]; /* sorted, distinct */
    size_t n_revoked;
    vfy_subject *subjects; /* the accepted feed's, sorted by sub, one per sub (latest before) */
    size_t n_subjects;
    uint64_t seq;
    int64_t iat, exp, ttl;
    uint64_t announced_seq; /* highest seq the stream announced */
    int64_t behind_ms;      /* monotonic ms since announced_seq > seq; 0: not behind */

    pthread_mutex_t jwks_mu;
    CURL *jwks_curl;
    int64_t last_refetch_ms; /* monotonic ms of the last refetch for an unknown kid */
    bool refetched;

    vfy_slist slists[VFY_STATUS_CACHE_MAX]; /* n_slists used, in no order */
    size_t n_slists;
    uint64_t slist_born;

    pthread_mutex_t sl_mu;
    CURL *sl_curl;

    pthread_mutex_t seq_mu;
    pthread_cond_t seq_cv; /* on CLOCK_MONOTONIC */
    uint64_t applied_seq;

    /* The redeem credential: read once by vfy_open, wiped by vfy_close, never changed. */
    char secret[VFY_SECRET_MAX];
    size_t secret_len;

    atomic_bool stream_up;
    atomic_bool stop;
    atomic_uint_fast64_t jwks_fetches, feed_fetches, feeds_refused, stream_connects;
    atomic_uint_fast64_t status_fetches, status_refused;

    /* background */
    bool thread_started;
    pthread_t thread;
    CURLM *multi;
    CURL *feed_curl, *stream_curl;
    struct curl_slist *stream_headers;
    vfy_buf feed_body;
    vfy_sse sse;
    bool feed_active, stream_active;
    bool stream_ok;       /* this connection answered 200 text/event-stream */
    bool fetch_soon;      /* an event (or a reconnect) asks for a feed fetch */
    bool fetch_full;      /* the last delta left a gap: fetch the full list */
    int64_t next_poll_ms; /* monotonic ms of the next periodic feed fetch */
    int64_t reconnect_ms; /* monotonic ms of the next stream connection attempt */
    unsigned stream_backoff_ms, feed_backoff_ms;
    char curl_err[CURL_ERROR_SIZE];
    CURL *sl_bg_curl; /* the background's status list refresh, one at a time */
    vfy_buf sl_body;
    char *sl_bg_uri; /* malloc'd copy of the uri being refreshed */
    bool sl_active;
};

/* net.c */
void vfy_net_init(void);
/* A new easy handle with the TLS policy (https only, TLS 1.2+, peer and host verified
 * against cfg.cacert), no redirects, no signals; NULL when out of memory. */
CURL *vfy_curl_new(vfy *v);
/* GET url+path into out (bounded by VFY_DOC_MAX) on handle c: VFY_E_OK on a 200, else
 * VFY_E_NET or VFY_E_HTTP with a message. */
vfy_err vfy_http_get(vfy *v, CURL *c, const char *path, vfy_buf *out, char *err, size_t errlen);
void vfy_buf_free(vfy_buf *b);
size_t vfy_buf_write(char *p, size_t size, size_t nmemb, void *ud);
/* The event-stream parser: feeds n bytes of the stream (as they arrive, in any pieces) to
 * v->sse, splitting lines at LF, CR LF or CR; each complete event may set v->fetch_soon,
 * nothing else. 0, or -1 on a line longer than VFY_SSE_LINE_MAX (the caller drops the
 * connection). Background thread only (and tests/fuzz/fuzz_sse.c on an offline handle). */
int vfy_sse_bytes(vfy *v, const char *p, size_t n);
int vfy_bg_start(vfy *v);
void vfy_bg_stop(vfy *v);

/* How long until a document with this ttl and exp should be fetched again, in ms: ttl
 * within poll_min..poll_max, at most half its remaining life, and while the stream is
 * down at most a third of max_feed_age; at least 1 s. */
int64_t vfy_poll_interval_ms(vfy *v, int64_t ttl, int64_t exp);

/* verifier.c, for net.c */
uint64_t vfy_current_seq(vfy *v);
/* The stream announced seq (a revocation, or a hello): when it is above the feed's, the
 * verifier is behind from now (unless it already was) until a feed reaching it is
 * accepted. */
void vfy_announce_seq(vfy *v, uint64_t seq);
/* Is the verifier behind (an announced seq above its feed's)? */
bool vfy_behind(vfy *v);
/* Has it been behind for behind_grace or longer, at monotonic now_ms? Under lock. */
bool vfy_behind_too_long(const vfy *v, int64_t since_ms, int64_t now_ms);

/* status.c, for verifier.c and net.c */
/* The token's status claim (NULL: none): VFY_OK with *uri (into payload) and *idx set or
 * left NULL, or VFY_MALFORMED. */
vfy_result vfy_status_claim(const vfy *v, const json_t *payload, const char **uri, uint32_t *idx);
/* The bit of idx in the list at uri, fetched in the calling thread when it is missing or
 * stale: VFY_OK, VFY_REVOKED_TOKEN or VFY_FEED_STALE. */
vfy_result vfy_status_lookup(vfy *v, const char *uri, uint32_t idx);
/* Background thread: a refresh to start (a malloc'd uri, or NULL) and when the next one is
 * due (monotonic ms; INT64_MAX: none); marks every list for a refresh; the answer of one. */
char *vfy_status_due(vfy *v, int64_t now_ms, int64_t *next_ms);
void vfy_status_refresh_all(vfy *v);
/* A token-revocation event named uri and (when has_idx) bit idx, revoked at revoked_at: a
 * kept list is refreshed now and, until a copy with that bit set is accepted, counts as
 * behind (see vfy_slist). A list not kept is fetched on first need anyway. */
void vfy_status_announce(vfy *v, const char *uri, bool has_idx, uint32_t idx, int64_t revoked_at);
void vfy_status_fetched(vfy *v, const char *uri, bool answered, const char *body, size_t len);
void vfy_status_free_all(vfy *v);
/* Reads the redeem credential file into v->secret: VFY_E_OK or VFY_E_CREDENTIAL. */
vfy_err vfy_secret_load(vfy *v, const char *path, char *err, size_t errlen);

#endif
