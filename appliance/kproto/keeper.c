/* kp: the keeper interface, remote (the keeper protocol to the keeper process) or over an
 * in-process implementation plugged in by kp_wrap_local (appliance/keeper/inproc.c). See
 * keeper.h. */
#include "appliance/kproto/keeper.h"

#include "appliance/kproto/kproto.h"
#include "appliance/common/metrics.h"
#include "base/clock.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(KP_AUDIT_ID) == SK_KID_LEN + 1, "KP_AUDIT_ID must be 16 bytes");
_Static_assert(KP_AUDIT_SIGN_MAX == KPP_AUDIT_SIGN_MAX, "the protocol carries the audit bound");
_Static_assert(KP_SIGN_MAX == KPP_SIGN_MAX, "the protocol carries the signing bound");
_Static_assert(sizeof(KP_AUDIT_HEADER_B64) - 1 == (4 * (sizeof(KP_AUDIT_HEADER) - 1) + 2) / 3,
               "KP_AUDIT_HEADER_B64 has the length of KP_AUDIT_HEADER's base64url");
_Static_assert(sizeof(KP_PUBLISH_ID) == SK_KID_LEN + 1, "KP_PUBLISH_ID must be 16 bytes");
_Static_assert(sizeof(KP_PUBLISH_HEADER_B64) - 1 == (4 * (sizeof(KP_PUBLISH_HEADER) - 1) + 2) / 3,
               "KP_PUBLISH_HEADER_B64 has the length of KP_PUBLISH_HEADER's base64url");
_Static_assert(KP_PUBLISH_SIGN_MAX <= UINT32_MAX, "PUBLISH_SIGN's total is a u32");

/* One thread's connection to the keeper and its message buffers (KPP_MSG_MAX each: too
 * big for a worker's stack many times over, so on the heap, once per thread). */
typedef struct {
    int fd;
    uint8_t req[KPP_MSG_MAX];
    uint8_t rep[KPP_MSG_MAX + 1];
} kp_conn;

struct kp {
    const kp_local_ops *local; /* in-process; NULL when remote */
    void *ctx;                 /* local's */
    struct sockaddr_un addr;
    pthread_key_t conn_key; /* remote: this thread's kp_conn */
    unsigned timeout_ms;    /* remote: the deadline of one request (KP_TIMEOUT_DEFAULT_MS) */
    unsigned generate_ms;   /* remote: GENERATE's, which takes seconds for RSA-4096 */
    /* The service keys' public halves, once read: they never change, and a public route
     * that shows them (GET /v1/audit/key, /v1/revocations/key) must not wait for a stalled
     * token. Under svc_mu. */
    pthread_mutex_t svc_mu;
    int svc_have[KP_SVC_COUNT_];
    sk_pubkey svc_pub[KP_SVC_COUNT_];
};

static void kp_conn_free(void *p)
{
    kp_conn *c = p;
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

sk_status kp_wrap_local(const kp_local_ops *ops, void *ctx, kp **out)
{
    *out = NULL;
    kp *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return SK_ERR_DEVICE;
    pthread_mutex_init(&k->svc_mu, NULL);
    k->local = ops;
    k->ctx = ctx;
    *out = k;
    return SK_OK;
}

sk_status kp_connect(const char *socket_path, const kp_deadlines *dl, kp **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    kp *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        snprintf(err, errlen, "out of memory");
        return SK_ERR_DEVICE;
    }
    pthread_mutex_init(&k->svc_mu, NULL);
    k->addr.sun_family = AF_UNIX;
    if (socket_path == NULL || strlen(socket_path) >= sizeof(k->addr.sun_path)) {
        snprintf(err, errlen, "keeper socket path missing or longer than %zu bytes",
                 sizeof(k->addr.sun_path) - 1);
        free(k);
        return SK_ERR_BAD_ARGUMENT;
    }
    memcpy(k->addr.sun_path, socket_path, strlen(socket_path) + 1);
    k->timeout_ms = dl != NULL && dl->timeout_ms > 0 ? dl->timeout_ms : KP_TIMEOUT_DEFAULT_MS;
    k->generate_ms = dl != NULL && dl->generate_ms > 0 ? dl->generate_ms : KP_GENERATE_DEFAULT_MS;
    if (k->generate_ms < k->timeout_ms)
        k->generate_ms = k->timeout_ms;
    if (pthread_key_create(&k->conn_key, kp_conn_free) != 0) {
        snprintf(err, errlen, "pthread_key_create failed");
        free(k);
        return SK_ERR_DEVICE;
    }
    *out = k;
    return SK_OK;
}

void kp_close(kp *k)
{
    if (k == NULL)
        return;
    if (k->local != NULL) {
        k->local->close(k->ctx);
    } else {
        kp_conn_free(pthread_getspecific(k->conn_key));
        pthread_setspecific(k->conn_key, NULL);
        pthread_key_delete(k->conn_key);
    }
    pthread_mutex_destroy(&k->svc_mu);
    free(k);
}

/* ---- remote ------------------------------------------------------------------------------ */

/* This thread's connection, connected; NULL when the keeper cannot be reached. */
static kp_conn *kp_conn_get(kp *k)
{
    kp_conn *c = pthread_getspecific(k->conn_key);
    if (c == NULL) {
        c = malloc(sizeof(*c));
        if (c == NULL)
            return NULL;
        c->fd = -1;
        if (pthread_setspecific(k->conn_key, c) != 0) {
            free(c);
            return NULL;
        }
    }
    if (c->fd >= 0)
        return c;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    /* Bounds connect (a keeper that stopped accepting: its backlog full) and send (its
     * socket buffer full) by the request deadline; the reply is bounded by kp_wait. */
    struct timeval tv = {.tv_sec = k->timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(k->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&k->addr, sizeof(k->addr)) != 0) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    return c;
}

static void kp_conn_drop(kp_conn *c)
{
    close(c->fd);
    c->fd = -1;
}

/* Counts a failed token operation for GET /metrics (metrics.h), with the CKR value
 * behind it (0: none or unknown), and returns st. */
static sk_status kp_counted(sk_status st, unsigned long ckr)
{
    if (st != SK_OK)
        met_pkcs11_error(st, ckr);
    return st;
}

/* The keeper did not answer (down, restarting, stuck): counted apart from the token's own
 * failures, which it reports in its replies. */
static sk_status kp_unreachable(void)
{
    met_pkcs11_error(MET_KEEPER_UNREACHABLE, 0);
    return SK_ERR_DEVICE;
}

/* The keeper took longer than its deadline: counted apart from an absent keeper. */
static sk_status kp_timed_out(void)
{
    met_pkcs11_error(MET_KEEPER_TIMEOUT, 0);
    return SK_ERR_TIMEOUT;
}

/* Waits until fd has something to read, at most ms: 1, or 0 on the deadline, -1 on error.
 * poll, not SO_RCVTIMEO: one absolute deadline whatever signals interrupt the wait. */
static int kp_wait(int fd, unsigned ms)
{
    const int64_t until = clk_now_ms() + ms;
    for (;;) {
        int64_t now = clk_now_ms();
        if (now >= until)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)(until - now));
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* Sends c->req (len bytes) and receives the reply for op into *r, waiting at most the
 * op's deadline. A connection that turns out dead before the request went out (the keeper
 * restarted since its last use) is replaced once: the request never reached anyone, so
 * resending is safe for every op. Past the deadline the connection is dropped (its late
 * reply must never be read as the answer to a later request) and SK_ERR_TIMEOUT returned:
 * the worker is free again, and its next call connects afresh. */
static sk_status kp_call(kp *k, kp_conn *c, size_t len, kpp_op op, kpp_reply *r)
{
    for (int attempt = 0;; attempt++) {
        ssize_t n = send(c->fd, c->req, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)len) {
            int stale = n < 0 && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN);
            int full = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
            kp_conn_drop(c);
            if (attempt == 0 && stale && kp_conn_get(k) == c)
                continue;
            return full ? kp_timed_out() : kp_unreachable();
        }
        break;
    }
    /* Generating takes seconds: a key's, and a service key's on its first use (the front
     * asks for both service keys' public halves before it serves, so their signatures
     * never wait for a generation). */
    int slow = op == KPP_OP_GENERATE || op == KPP_OP_AUDIT_PUBKEY || op == KPP_OP_PUBLISH_PUBKEY;
    int ready = kp_wait(c->fd, slow ? k->generate_ms : k->timeout_ms);
    if (ready == 0) {
        kp_conn_drop(c);
        return kp_timed_out();
    }
    ssize_t got = -1;
    if (ready > 0)
        do
            got = recv(c->fd, c->rep, sizeof(c->rep), MSG_TRUNC | MSG_DONTWAIT);
        while (got < 0 && errno == EINTR);
    if (got <= 0) { /* keeper gone or stuck: the answer is lost, do not guess */
        kp_conn_drop(c);
        return kp_unreachable();
    }
    if (kpp_decode_reply(c->rep, (size_t)got, op, r) != 0) {
        kp_conn_drop(c); /* out of step with the keeper: start afresh */
        return kp_unreachable();
    }
    if (r->status == 0)
        return SK_OK;
    /* An sk_status travels as is, with the keeper's CKR for it; a protocol error means we
     * sent something wrong, and no token call is behind it. */
    if (r->status >= SK_ERR_COUNT_)
        return kp_counted(SK_ERR_BAD_ARGUMENT, 0);
    return kp_counted((sk_status)r->status, r->ckr);
}

/* Runs one request built by the caller into c->req (len 0: the arguments were out of
 * bounds). */
#define KP_REMOTE(k, op, build, reply_var)                                                         \
    kp_conn *c = kp_conn_get(k);                                                                   \
    if (c == NULL)                                                                                 \
        return kp_unreachable();                                                                   \
    size_t req_len = (build);                                                                      \
    if (req_len == 0)                                                                              \
        return SK_ERR_BAD_ARGUMENT;                                                                \
    kpp_reply reply_var;                                                                           \
    sk_status st = kp_call(k, c, req_len, op, &reply_var);                                         \
    if (st != SK_OK)                                                                               \
    return st

/* ---- the service keys: the one policy, for both modes and the keeper --------------------- */

typedef struct {
    const char *id; /* KP_*_ID, 16 bytes */
    const char *header_b64;
    const char *header2_b64; /* a second document shape the key signs, or NULL */
    size_t sign_max;
    unsigned bits;
} kp_svc_info;

static const kp_svc_info kp_svcs[KP_SVC_COUNT_] = {
    [KP_SVC_AUDIT] = {KP_AUDIT_ID, KP_AUDIT_HEADER_B64, NULL, KP_AUDIT_SIGN_MAX, KP_AUDIT_BITS},
    [KP_SVC_PUBLISH] = {KP_PUBLISH_ID, KP_PUBLISH_HEADER_B64, KP_STATUS_LIST_HEADER_B64,
                        KP_PUBLISH_SIGN_MAX, KP_PUBLISH_BITS},
};

static const kp_svc_info *kp_svc_get(kp_svc s)
{
    return (unsigned)s < KP_SVC_COUNT_ ? &kp_svcs[s] : NULL;
}

static sk_kid kp_svc_kid(const kp_svc_info *info)
{
    sk_kid kid;
    memcpy(kid.b, info->id, SK_KID_LEN);
    return kid;
}

int kp_is_reserved(const sk_kid *kid)
{
    if (kid == NULL)
        return 0;
    for (size_t i = 0; i < KP_SVC_COUNT_; i++)
        if (memcmp(kid->b, kp_svcs[i].id, SK_KID_LEN) == 0)
            return 1;
    return 0;
}

static int kp_b64url_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int kp_svc_input_ok(kp_svc s, const void *msg, size_t len)
{
    const kp_svc_info *info = kp_svc_get(s);
    const uint8_t *p = msg;
    if (info == NULL || p == NULL)
        return 0;
    const char *hdr = info->header_b64;
    if (info->header2_b64 != NULL && len > 0 && strlen(info->header2_b64) < len &&
        memcmp(p, info->header2_b64, strlen(info->header2_b64)) == 0)
        hdr = info->header2_b64;
    const size_t hlen = strlen(hdr);
    if (len <= hlen + 1 || len > info->sign_max || memcmp(p, hdr, hlen) != 0 || p[hlen] != '.')
        return 0;
    /* The payload: base64url only, so no second "." (and no padding, space or NUL). */
    for (size_t i = hlen + 1; i < len; i++)
        if (!kp_b64url_char(p[i]))
            return 0;
    return 1;
}

sk_status kp_svc_params(kp_svc s, sk_kid *kid, unsigned *bits)
{
    const kp_svc_info *info = kp_svc_get(s);
    if (info == NULL)
        return SK_ERR_BAD_ARGUMENT;
    *kid = kp_svc_kid(info);
    *bits = info->bits;
    return SK_OK;
}

/* ---- the interface ----------------------------------------------------------------------- */

sk_status kp_sign(kp *k, const sk_kid *kid, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                  size_t *sig_len)
{
    if (kp_is_reserved(kid))
        return SK_ERR_KEY_NOT_FOUND; /* service keys sign through kp_svc_sign only */
    met_note_kid(kid);               /* the request's kid, for its log line and signature counter */
    if (k->local != NULL)
        return k->local->sign(k->ctx, kid, msg, len, sig, sig_len);
    if (len > KPP_SIGN_MAX)
        return SK_ERR_BAD_ARGUMENT;
    KP_REMOTE(k, KPP_OP_SIGN, kpp_encode_sign(c->req, sizeof(c->req), kid, msg, len), r);
    return kpp_reply_sig(&r, sig, sig_len) == 0 ? SK_OK : SK_ERR_DEVICE;
}

sk_status kp_generate(kp *k, const sk_kid *kid, unsigned bits, sk_pubkey *pub)
{
    return kp_generate_attrs(k, kid, bits, pub, NULL);
}

sk_status kp_generate_attrs(kp *k, const sk_kid *kid, unsigned bits, sk_pubkey *pub,
                            sk_attrs *attrs)
{
    sk_attrs ignored;
    if (attrs == NULL)
        attrs = &ignored;
    *attrs = 0;
    if (kp_is_reserved(kid))
        return SK_ERR_BAD_ARGUMENT;
    if (k->local != NULL)
        return k->local->generate(k->ctx, kid, bits, pub, attrs);
    KP_REMOTE(k, KPP_OP_GENERATE, kpp_encode_generate(c->req, sizeof(c->req), kid, bits), r);
    return kpp_reply_generate(&r, pub, attrs) == 0 ? SK_OK : SK_ERR_DEVICE;
}

sk_status kp_token_info(kp *k, sk_token_info *out)
{
    memset(out, 0, sizeof(*out));
    if (k->local != NULL)
        return k->local->token_info(k->ctx, out);
    KP_REMOTE(k, KPP_OP_TOKEN_INFO, kpp_encode_token_info(c->req, sizeof(c->req)), r);
    return kpp_reply_token_info(&r, out) == 0 ? SK_OK : SK_ERR_DEVICE;
}

sk_status kp_key_attrs(kp *k, const sk_kid *kid, sk_attrs *attrs)
{
    *attrs = 0;
    if (kp_is_reserved(kid))
        return SK_ERR_BAD_ARGUMENT;
    if (k->local != NULL)
        return k->local->key_attrs(k->ctx, kid, attrs);
    KP_REMOTE(k, KPP_OP_KEY_ATTRS, kpp_encode_kid_op(c->req, sizeof(c->req), KPP_OP_KEY_ATTRS, kid),
              r);
    return kpp_reply_attrs(&r, attrs) == 0 ? SK_OK : SK_ERR_DEVICE;
}

sk_status kp_destroy(kp *k, const sk_kid *kid)
{
    if (kp_is_reserved(kid))
        return SK_ERR_BAD_ARGUMENT;
    if (k->local != NULL)
        return k->local->destroy(k->ctx, kid);
    KP_REMOTE(k, KPP_OP_DESTROY, kpp_encode_kid_op(c->req, sizeof(c->req), KPP_OP_DESTROY, kid), r);
    (void)r;
    return SK_OK;
}

sk_status kp_list(kp *k, sk_key_entry *out, size_t cap, size_t *count)
{
    if (k->local != NULL)
        return k->local->list(k->ctx, out, cap, count);
    /* In slices of KPP_LIST_MAX until the keeper's total is reached (or cap is full). */
    size_t have = 0;
    uint32_t total = 0;
    do {
        KP_REMOTE(k, KPP_OP_LIST, kpp_encode_list(c->req, sizeof(c->req), (uint32_t)have), r);
        size_t n = 0;
        if (kpp_reply_list(&r, have < cap ? out + have : NULL, have < cap ? cap - have : 0, &total,
                           &n) != 0)
            return SK_ERR_DEVICE;
        if (n == 0)
            break;
        have += n;
    } while (have < total);
    *count = total;
    return SK_OK;
}

sk_status kp_ping(kp *k, const sk_kid *probe_kid)
{
    if (kp_is_reserved(probe_kid))
        return SK_ERR_KEY_NOT_FOUND; /* its probe signature would be a non-checkpoint */
    if (k->local != NULL)
        return k->local->ping(k->ctx, probe_kid);
    KP_REMOTE(k, KPP_OP_PING, kpp_encode_ping(c->req, sizeof(c->req), probe_kid), r);
    (void)r;
    return SK_OK;
}

static sk_status kp_svc_public_key_asked(kp *k, kp_svc s, sk_pubkey *pub)
{
    if (k->local != NULL)
        return k->local->svc_public_key(k->ctx, s, pub);
    kpp_op op = s == KP_SVC_AUDIT ? KPP_OP_AUDIT_PUBKEY : KPP_OP_PUBLISH_PUBKEY;
    KP_REMOTE(k, op,
              s == KP_SVC_AUDIT ? kpp_encode_audit_pubkey(c->req, sizeof(c->req))
                                : kpp_encode_publish_pubkey(c->req, sizeof(c->req)),
              r);
    return kpp_reply_pubkey(&r, pub) == 0 ? SK_OK : SK_ERR_DEVICE;
}

sk_status kp_svc_public_key(kp *k, kp_svc s, sk_pubkey *pub)
{
    if (kp_svc_get(s) == NULL)
        return SK_ERR_BAD_ARGUMENT;
    pthread_mutex_lock(&k->svc_mu);
    int have = k->svc_have[s];
    if (have)
        *pub = k->svc_pub[s];
    pthread_mutex_unlock(&k->svc_mu);
    if (have)
        return SK_OK;
    sk_status st = kp_svc_public_key_asked(k, s, pub);
    if (st == SK_OK) {
        pthread_mutex_lock(&k->svc_mu);
        k->svc_pub[s] = *pub;
        k->svc_have[s] = 1;
        pthread_mutex_unlock(&k->svc_mu);
    }
    return st;
}

/* A feed's signing input in parts: every part but the last appended by PUBLISH_PART, the
 * last sent by PUBLISH_SIGN with the total, so a part lost to a reconnect is refused. */
static sk_status kp_publish_remote(kp *k, const uint8_t *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                                   size_t *sig_len)
{
    size_t off = 0;
    while (len - off > KPP_PART_LAST) {
        size_t part =
            len - off - KPP_PART_LAST < KPP_BODY_MAX ? len - off - KPP_PART_LAST : KPP_BODY_MAX;
        KP_REMOTE(k, KPP_OP_PUBLISH_PART,
                  kpp_encode_publish_part(c->req, sizeof(c->req), msg + off, part), r);
        (void)r;
        off += part;
    }
    KP_REMOTE(k, KPP_OP_PUBLISH_SIGN,
              kpp_encode_publish_sign(c->req, sizeof(c->req), (uint32_t)len, msg + off, len - off),
              r);
    return kpp_reply_sig(&r, sig, sig_len) == 0 ? SK_OK : SK_ERR_DEVICE;
}

sk_status kp_svc_sign(kp *k, kp_svc s, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                      size_t *sig_len)
{
    if (k->local != NULL)
        return k->local->svc_sign(k->ctx, s, msg, len, sig, sig_len);
    *sig_len = 0;
    /* The keeper applies kp_svc_input_ok itself: its word, not ours, is what counts. These
     * are only the bounds the protocol can carry. */
    const kp_svc_info *info = kp_svc_get(s);
    if (info == NULL || msg == NULL || len == 0 || len > info->sign_max)
        return SK_ERR_BAD_ARGUMENT;
    if (s == KP_SVC_PUBLISH)
        return kp_publish_remote(k, msg, len, sig, sig_len);
    KP_REMOTE(k, KPP_OP_AUDIT_SIGN, kpp_encode_audit_sign(c->req, sizeof(c->req), msg, len), r);
    return kpp_reply_sig(&r, sig, sig_len) == 0 ? SK_OK : SK_ERR_DEVICE;
}

void kp_thread_done(kp *k)
{
    if (k->local != NULL) {
        k->local->thread_done(k->ctx);
        return;
    }
    kp_conn_free(pthread_getspecific(k->conn_key));
    pthread_setspecific(k->conn_key, NULL);
}

sk_status kp_reopens(kp *k, unsigned long *out)
{
    if (k->local != NULL) {
        *out = k->local->reopens != NULL ? k->local->reopens(k->ctx) : 0;
        return SK_OK;
    }
    kp_conn *c = kp_conn_get(k);
    if (c == NULL)
        return SK_ERR_DEVICE;
    size_t len = kpp_encode_reopens(c->req, sizeof(c->req));
    kpp_reply r;
    uint32_t v = 0;
    if (len == 0)
        return SK_ERR_DEVICE;
    sk_status st = kp_call(k, c, len, KPP_OP_REOPENS, &r);
    if (st != SK_OK)
        return st;
    if (kpp_reply_u32(&r, &v) != 0)
        return SK_ERR_DEVICE;
    *out = v;
    return SK_OK;
}

unsigned kp_sessions_open(kp *k)
{
    if (k->local != NULL)
        return k->local->sessions_open(k->ctx);
    kp_conn *c = kp_conn_get(k);
    if (c == NULL)
        return 0;
    size_t len = kpp_encode_sessions(c->req, sizeof(c->req));
    kpp_reply r;
    uint32_t v = 0;
    if (len == 0 || kp_call(k, c, len, KPP_OP_SESSIONS, &r) != SK_OK || kpp_reply_u32(&r, &v) != 0)
        return 0;
    return v;
}
