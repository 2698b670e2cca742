/*
 * test_keeperd: the keeper server on a real SoftHSM2 token, a real registry file and a
 * real Unix socket, each test with its own. kpd_serve runs in a thread of its own; the
 * tests are the front, speaking the keeper protocol over SOCK_SEQPACKET connections.
 */
#include "appliance/keeperd.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "appliance/config.h"
#include "appliance/kproto.h"
#include "appliance/registry.h"
#include "tests/unit/testenv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#define SESSIONS 12 /* max_pkcs11_sessions of the default fixture */
#define LIMITED 2   /* ... and of the connection-limit fixture */
#define CONCURRENT 8
#define SIGNS_PER_THREAD 20
#define OVERSIZED_LEN (100 * 1024 + 123)
#define REPLY_TIMEOUT_S 60
#define T0 1700000000

typedef struct {
    char dir[PATH_MAX];
    cfg c;
    reg *r;
    kpd *d;
    pthread_t serve_th;
    int serving;
    int serve_rc;
} fixture;

/* ---- the keeper under test ----------------------------------------------------------- */

static void *serve_main(void *arg)
{
    fixture *fx = arg;
    fx->serve_rc = kpd_serve(fx->d);
    return NULL;
}

static void start_keeper(fixture *fx)
{
    char err[CFG_ERR_MAX];
    err[0] = '\0';
    int rc = kpd_open(&fx->c, &fx->d, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "kpd_open: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(fx->d);
    assert_int_equal(pthread_create(&fx->serve_th, NULL, serve_main, fx), 0);
    fx->serving = 1;
}

/* kpd_stop, then kpd_serve must return 0 and kpd_close join everything. */
static void stop_keeper(fixture *fx)
{
    if (fx->d == NULL)
        return;
    kpd_stop(fx->d);
    if (fx->serving) {
        pthread_join(fx->serve_th, NULL);
        fx->serving = 0;
        assert_int_equal(fx->serve_rc, 0);
    }
    kpd_close(fx->d);
    fx->d = NULL;
}

/* dst = dir/name, which must fit. */
static void path_in(char *dst, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(dst, cap, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < cap);
}

static int setup_with(void **state, unsigned sessions)
{
    fixture *fx = calloc(1, sizeof(*fx));
    if (fx == NULL || testenv_token(fx->dir) != 0) {
        free(fx);
        return -1;
    }
    cfg_defaults(&fx->c, fx->dir);
    snprintf(fx->c.pkcs11_module, sizeof(fx->c.pkcs11_module), "%s", HSM_DEFAULT_MODULE);
    snprintf(fx->c.token, sizeof(fx->c.token), "%s", TESTENV_LABEL);
    path_in(fx->c.pin_file, sizeof(fx->c.pin_file), fx->dir, "pin");
    path_in(fx->c.database, sizeof(fx->c.database), fx->dir, "appliance.db");
    path_in(fx->c.keeper_socket, sizeof(fx->c.keeper_socket), fx->dir, "keeper.sock");
    fx->c.max_pkcs11_sessions = sessions;
    if (reg_open(fx->c.database, 100, &fx->r) != REG_OK) {
        testenv_cleanup(fx->dir);
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, SESSIONS);
}

static int setup_limited(void **state)
{
    return setup_with(state, LIMITED);
}

static int teardown(void **state)
{
    fixture *fx = *state;
    stop_keeper(fx);
    reg_close(fx->r);
    testenv_cleanup(fx->dir);
    free(fx);
    return 0;
}

/* ---- the front's side of the protocol ------------------------------------------------ */

static int try_connect(const fixture *fx)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = REPLY_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int sndbuf = 1024 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx->c.keeper_socket);
    if (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int connect_keeper(const fixture *fx)
{
    int fd = try_connect(fx);
    assert_true(fd >= 0);
    return fd;
}

/* Sends len bytes as one datagram and receives the reply into rep (KPP_MSG_MAX + 1
 * bytes): its length, 0 when the keeper closed the connection, -1 on an error. */
static ssize_t roundtrip(int fd, const void *req, size_t len, uint8_t *rep)
{
    ssize_t n = send(fd, req, len, MSG_NOSIGNAL);
    if (n != (ssize_t)len)
        return -1;
    do
        n = recv(fd, rep, KPP_MSG_MAX + 1, MSG_TRUNC);
    while (n < 0 && errno == EINTR);
    return n;
}

/* One request of op, its reply decoded into *r (rep holds it). The reply's status. */
static uint32_t call(int fd, const uint8_t *req, size_t len, kpp_op op, uint8_t *rep, kpp_reply *r)
{
    assert_true(len > 0);
    ssize_t n = roundtrip(fd, req, len, rep);
    assert_true(n > 0);
    assert_int_equal(kpp_decode_reply(rep, (size_t)n, op, r), 0);
    return r->status;
}

/* Per-caller buffers: a message is too big for many of them on a stack. */
typedef struct {
    uint8_t req[KPP_MSG_MAX];
    uint8_t rep[KPP_MSG_MAX + 1];
} bufs;

static bufs *bufs_new(void)
{
    bufs *b = malloc(sizeof(*b));
    assert_non_null(b);
    return b;
}

static uint32_t do_generate(int fd, bufs *b, const hsm_kid *kid, unsigned bits, hsm_pubkey *pub)
{
    kpp_reply r;
    size_t len = kpp_encode_generate(b->req, sizeof(b->req), kid, bits);
    uint32_t st = call(fd, b->req, len, KPP_OP_GENERATE, b->rep, &r);
    if (st == 0)
        assert_int_equal(kpp_reply_pubkey(&r, pub), 0);
    return st;
}

static uint32_t do_sign(int fd, bufs *b, const hsm_kid *kid, const void *msg, size_t msg_len,
                        uint8_t sig[HSM_SIG_MAX], size_t *sig_len)
{
    kpp_reply r;
    size_t len = kpp_encode_sign(b->req, sizeof(b->req), kid, msg, msg_len);
    uint32_t st = call(fd, b->req, len, KPP_OP_SIGN, b->rep, &r);
    if (st == 0)
        assert_int_equal(kpp_reply_sig(&r, sig, sig_len), 0);
    return st;
}

static uint32_t do_ping(int fd, bufs *b, const hsm_kid *kid)
{
    kpp_reply r;
    size_t len = kpp_encode_ping(b->req, sizeof(b->req), kid);
    return call(fd, b->req, len, KPP_OP_PING, b->rep, &r);
}

static uint32_t do_kid_op(int fd, bufs *b, kpp_op op, const hsm_kid *kid, hsm_pubkey *pub)
{
    kpp_reply r;
    size_t len = kpp_encode_kid_op(b->req, sizeof(b->req), op, kid);
    uint32_t st = call(fd, b->req, len, op, b->rep, &r);
    if (st == 0 && op == KPP_OP_PUBLIC_KEY)
        assert_int_equal(kpp_reply_pubkey(&r, pub), 0);
    return st;
}

static unsigned do_sessions(int fd, bufs *b)
{
    kpp_reply r;
    size_t len = kpp_encode_sessions(b->req, sizeof(b->req));
    assert_int_equal(call(fd, b->req, len, KPP_OP_SESSIONS, b->rep, &r), 0);
    uint32_t v = 0;
    assert_int_equal(kpp_reply_u32(&r, &v), 0);
    return v;
}

/* A key the way a create makes it: generated through the keeper, then inserted. */
static void create_key(fixture *fx, int fd, bufs *b, hsm_kid *kid, hsm_pubkey *pub)
{
    testenv_kid(kid);
    assert_int_equal(do_generate(fd, b, kid, 2048, pub), HSM_OK);
    reg_key k;
    memset(&k, 0, sizeof(k));
    k.kid = *kid;
    k.bits = pub->bits;
    k.created_at = T0;
    snprintf(k.label, sizeof(k.label), "test");
    snprintf(k.n_b64, sizeof(k.n_b64), "n");
    snprintf(k.e_b64, sizeof(k.e_b64), "AQAB");
    assert_int_equal(reg_reserve(fx->r), REG_OK);
    assert_int_equal(reg_insert(fx->r, &k), REG_OK);
}

/* The raw header of an error reply: op and status, and the body must be empty. */
static void assert_error_reply(const uint8_t *rep, ssize_t n, uint16_t op, uint32_t status)
{
    assert_int_equal(n, KPP_HDR_LEN);
    assert_int_equal(rep[0], KPP_MAGIC);
    assert_int_equal(rep[1], KPP_VERSION);
    assert_int_equal((unsigned)rep[2] << 8 | rep[3], op);
    uint32_t st = (uint32_t)rep[4] << 24 | (uint32_t)rep[5] << 16 | (uint32_t)rep[6] << 8 | rep[7];
    if (st != status)
        fprintf(stderr, "status %s, expected %s\n", kpp_status_name(st), kpp_status_name(status));
    assert_int_equal(st, status);
    assert_int_equal(rep[8] | rep[9] | rep[10] | rep[11], 0);
}

/* ---- OpenSSL: the signatures are real RS256 ------------------------------------------ */

static EVP_PKEY *evp_from_pubkey(const hsm_pubkey *pk)
{
    EVP_PKEY *key = NULL;
    BIGNUM *n = BN_bin2bn(pk->n, (int)pk->n_len, NULL);
    BIGNUM *e = BN_bin2bn(pk->e, (int)pk->e_len, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (n != NULL && e != NULL && bld != NULL && ctx != NULL &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) == 1 &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return key;
}

static int rs256_verifies(const hsm_pubkey *pub, const void *msg, size_t msg_len,
                          const uint8_t *sig, size_t sig_len)
{
    EVP_PKEY *key = evp_from_pubkey(pub);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = key != NULL && md != NULL &&
             EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(md, sig, sig_len, msg, msg_len) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    return ok;
}

/* ---- tests --------------------------------------------------------------------------- */

static void
test_a_generated_key_signs_through_the_socket_and_verifies_with_its_public_key(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    struct stat sb;
    assert_int_equal(lstat(fx->c.keeper_socket, &sb), 0);
    assert_true(S_ISSOCK(sb.st_mode));
    assert_int_equal(sb.st_mode & 0777, 0600);

    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    hsm_kid kid;
    hsm_pubkey pub, again;
    create_key(fx, fd, b, &kid, &pub);
    assert_int_equal(pub.bits, 2048);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_PUBLIC_KEY, &kid, &again), HSM_OK);
    assert_int_equal(again.n_len, pub.n_len);
    assert_memory_equal(again.n, pub.n, pub.n_len);
    assert_memory_equal(again.e, pub.e, pub.e_len);

    uint8_t sig[HSM_SIG_MAX];
    size_t sig_len = 0;
    const char *msg = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0";
    assert_int_equal(do_sign(fd, b, &kid, msg, strlen(msg), sig, &sig_len), HSM_OK);
    assert_int_equal(sig_len, 256);
    assert_true(rs256_verifies(&pub, msg, strlen(msg), sig, sig_len));
    assert_false(rs256_verifies(&pub, "other", 5, sig, sig_len));

    /* The longest message the protocol carries, and the empty one. */
    uint8_t *big = malloc(KPP_SIGN_MAX);
    assert_non_null(big);
    for (size_t i = 0; i < KPP_SIGN_MAX; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    assert_int_equal(do_sign(fd, b, &kid, big, KPP_SIGN_MAX, sig, &sig_len), HSM_OK);
    assert_true(rs256_verifies(&pub, big, KPP_SIGN_MAX, sig, sig_len));
    free(big);
    assert_int_equal(do_sign(fd, b, &kid, "", 0, sig, &sig_len), HSM_OK);
    assert_true(rs256_verifies(&pub, "", 0, sig, sig_len));

    /* A second key on a second connection signs too, with its own key. */
    int fd2 = connect_keeper(fx);
    hsm_kid kid2;
    hsm_pubkey pub2;
    create_key(fx, fd2, b, &kid2, &pub2);
    assert_int_equal(do_sign(fd2, b, &kid2, msg, strlen(msg), sig, &sig_len), HSM_OK);
    assert_true(rs256_verifies(&pub2, msg, strlen(msg), sig, sig_len));
    assert_false(rs256_verifies(&pub, msg, strlen(msg), sig, sig_len));
    close(fd2);
    close(fd);
    free(b);
}

static void test_a_kid_not_active_in_the_registry_is_refused_though_the_token_has_it(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    uint8_t sig[HSM_SIG_MAX];
    size_t sig_len;
    const char *msg = "payload";

    /* Generated on the token, never inserted in the registry. */
    hsm_kid never;
    hsm_pubkey pub;
    testenv_kid(&never);
    assert_int_equal(do_generate(fd, b, &never, 2048, &pub), HSM_OK);
    assert_int_equal(do_sign(fd, b, &never, msg, 7, sig, &sig_len), HSM_ERR_KEY_NOT_FOUND);
    /* The token has it: the probe (no registry check) signs with it. */
    assert_int_equal(do_ping(fd, b, &never), HSM_OK);

    /* Active, then revoked through the registry's own handle. */
    hsm_kid revoked;
    create_key(fx, fd, b, &revoked, &pub);
    assert_int_equal(do_sign(fd, b, &revoked, msg, 7, sig, &sig_len), HSM_OK);
    assert_int_equal(reg_revoke(fx->r, &revoked, "compromised", T0 + 1, NULL), REG_OK);
    assert_int_equal(do_sign(fd, b, &revoked, msg, 7, sig, &sig_len), HSM_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_ping(fd, b, &revoked), HSM_OK);

    /* Active, then broken. */
    hsm_kid broken;
    create_key(fx, fd, b, &broken, &pub);
    assert_int_equal(reg_mark_broken(fx->r, &broken), REG_OK);
    assert_int_equal(do_sign(fd, b, &broken, msg, 7, sig, &sig_len), HSM_ERR_KEY_NOT_FOUND);

    /* Neither on the token nor in the registry. */
    hsm_kid unknown;
    testenv_kid(&unknown);
    assert_int_equal(do_sign(fd, b, &unknown, msg, 7, sig, &sig_len), HSM_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_ping(fd, b, &unknown), HSM_ERR_KEY_NOT_FOUND);
    close(fd);
    free(b);
}

/* Sends a malformed request, checks its error reply, then that a PING still works. */
static void malformed(int fd, bufs *b, const void *req, size_t len, uint16_t op, uint32_t status)
{
    ssize_t n = roundtrip(fd, req, len, b->rep);
    assert_error_reply(b->rep, n, op, status);
    assert_int_equal(do_ping(fd, b, NULL), HSM_OK);
}

static void
test_malformed_requests_get_an_error_reply_and_the_connection_keeps_serving(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    hsm_kid kid;
    testenv_kid(&kid);

    malformed(fd, b, "K\x01\x00", 3, 0, KPP_ERR_SHORT);

    uint8_t *huge = calloc(1, OVERSIZED_LEN);
    assert_non_null(huge);
    size_t len = kpp_encode_sign(huge, OVERSIZED_LEN, &kid, "x", 1);
    assert_true(len > 0);
    malformed(fd, b, huge, OVERSIZED_LEN, KPP_OP_SIGN, KPP_ERR_OVERSIZED);
    free(huge);

    len = kpp_encode_sessions(b->req, sizeof(b->req));
    b->req[2] = 0x00;
    b->req[3] = 0x63; /* op 99 */
    malformed(fd, b, b->req, len, 99, KPP_ERR_UNKNOWN_OP);

    len = kpp_encode_ping(b->req, sizeof(b->req), NULL);
    b->req[1] = KPP_VERSION + 1;
    malformed(fd, b, b->req, len, KPP_OP_PING, KPP_ERR_VERSION);

    len = kpp_encode_ping(b->req, sizeof(b->req), NULL);
    b->req[0] = 'X';
    malformed(fd, b, b->req, len, 0, KPP_ERR_MAGIC);

    len = kpp_encode_generate(b->req, sizeof(b->req), &kid, 2048);
    b->req[len - 2] = 0x04; /* bits 0x00000800 (2048) -> 0x00000401 (1025) */
    b->req[len - 1] = 0x01;
    malformed(fd, b, b->req, len, KPP_OP_GENERATE, KPP_ERR_BAD_BODY);

    len = kpp_encode_ping(b->req, sizeof(b->req), NULL);
    b->req[KPP_HDR_LEN] = 2; /* has_kid neither 0 nor 1 */
    malformed(fd, b, b->req, len, KPP_OP_PING, KPP_ERR_BAD_BODY);

    len = kpp_encode_kid_op(b->req, sizeof(b->req), KPP_OP_DESTROY, &kid);
    malformed(fd, b, b->req, len - 1, KPP_OP_DESTROY, KPP_ERR_SHORT); /* a byte missing */

    len = kpp_encode_ping(b->req, sizeof(b->req), NULL);
    b->req[7] = 1; /* a status in a request */
    malformed(fd, b, b->req, len, KPP_OP_PING, KPP_ERR_NOT_REQUEST);

    /* An empty datagram is a short message, not the end of the connection. */
    malformed(fd, b, "", 0, 0, KPP_ERR_SHORT);

    /* None of it touched the token: the kid was never generated. */
    hsm_pubkey pub;
    assert_int_equal(do_kid_op(fd, b, KPP_OP_PUBLIC_KEY, &kid, &pub), HSM_ERR_KEY_NOT_FOUND);
    close(fd);
    free(b);
}

/* 1 when the keeper closed fd without answering: EOF or a reset, no reply. */
static int closed_by_keeper(int fd, bufs *b)
{
    size_t len = kpp_encode_ping(b->req, sizeof(b->req), NULL);
    ssize_t n = roundtrip(fd, b->req, len, b->rep);
    return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE));
}

static void test_a_connection_beyond_the_limit_is_closed_and_a_freed_slot_is_reused(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    bufs *b = bufs_new();
    int fds[LIMITED];
    for (int i = 0; i < LIMITED; i++) {
        fds[i] = connect_keeper(fx);
        assert_int_equal(do_ping(fds[i], b, NULL), HSM_OK); /* admitted and served */
    }
    int extra = connect_keeper(fx); /* the backlog takes it; the keeper closes it */
    assert_true(closed_by_keeper(extra, b));
    close(extra);
    /* The admitted ones are untouched. */
    for (int i = 0; i < LIMITED; i++)
        assert_int_equal(do_ping(fds[i], b, NULL), HSM_OK);
    assert_true(do_sessions(fds[0], b) <= LIMITED);

    /* A connection that ends gives its slot back (its thread finishes first: retry). */
    close(fds[0]);
    int served = 0;
    for (int attempt = 0; attempt < 200 && !served; attempt++) {
        int fd = connect_keeper(fx);
        size_t len = kpp_encode_ping(b->req, sizeof(b->req), NULL);
        ssize_t n = roundtrip(fd, b->req, len, b->rep);
        if (n > 0) {
            kpp_reply r;
            assert_int_equal(kpp_decode_reply(b->rep, (size_t)n, KPP_OP_PING, &r), 0);
            assert_int_equal(r.status, HSM_OK);
            served = 1;
            fds[0] = fd;
        } else {
            close(fd);
            struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_true(served);
    for (int i = 0; i < LIMITED; i++)
        close(fds[i]);
    free(b);
}

typedef struct {
    fixture *fx;
    const hsm_kid *kid;
    const hsm_pubkey *pub;
    int index;
    int ok; /* signatures that verified */
    pthread_barrier_t *done;
} signer;

static void *signer_main(void *arg)
{
    signer *s = arg;
    int fd = try_connect(s->fx);
    bufs *b = malloc(sizeof(*b));
    if (fd >= 0 && b != NULL) {
        for (int i = 0; i < SIGNS_PER_THREAD; i++) {
            char msg[64];
            int len = snprintf(msg, sizeof(msg), "thread %d message %d", s->index, i);
            size_t elen = kpp_encode_sign(b->req, sizeof(b->req), s->kid, msg, (size_t)len);
            ssize_t n = roundtrip(fd, b->req, elen, b->rep);
            kpp_reply r;
            uint8_t sig[HSM_SIG_MAX];
            size_t sig_len;
            if (n > 0 && kpp_decode_reply(b->rep, (size_t)n, KPP_OP_SIGN, &r) == 0 &&
                r.status == 0 && kpp_reply_sig(&r, sig, &sig_len) == 0 &&
                rs256_verifies(s->pub, msg, (size_t)len, sig, sig_len))
                s->ok++;
        }
    }
    /* Stay connected until the main thread has counted the sessions. */
    pthread_barrier_wait(s->done);
    pthread_barrier_wait(s->done);
    if (fd >= 0)
        close(fd);
    free(b);
    return NULL;
}

static void test_eight_connections_sign_concurrently_and_release_their_sessions(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    hsm_kid kids[2];
    hsm_pubkey pubs[2];
    create_key(fx, fd, b, &kids[0], &pubs[0]);
    create_key(fx, fd, b, &kids[1], &pubs[1]);
    close(fd); /* its session goes too */

    pthread_barrier_t done;
    pthread_barrier_init(&done, NULL, CONCURRENT + 1);
    signer s[CONCURRENT];
    pthread_t th[CONCURRENT];
    for (int i = 0; i < CONCURRENT; i++) {
        s[i] =
            (signer){.fx = fx, .kid = &kids[i % 2], .pub = &pubs[i % 2], .index = i, .done = &done};
        assert_int_equal(pthread_create(&th[i], NULL, signer_main, &s[i]), 0);
    }
    pthread_barrier_wait(&done);
    int watch = connect_keeper(fx); /* SESSIONS opens no session of its own */
    unsigned open_now = do_sessions(watch, b);
    pthread_barrier_wait(&done);
    for (int i = 0; i < CONCURRENT; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].ok, SIGNS_PER_THREAD);
    }
    pthread_barrier_destroy(&done);
    assert_true(open_now >= CONCURRENT);
    assert_true(open_now <= SESSIONS);

    /* Every signer's connection closed: its thread released its token session. */
    unsigned left = open_now;
    for (int attempt = 0; attempt < 500 && left > 0; attempt++) {
        left = do_sessions(watch, b);
        if (left > 0) {
            struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(left, 0);
    close(watch);
    free(b);
}

static void test_list_reports_every_key_with_its_halves_and_destroy_removes_them(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    hsm_kid kids[3];
    hsm_pubkey pub;
    for (int i = 0; i < 3; i++)
        create_key(fx, fd, b, &kids[i], &pub);

    kpp_reply r;
    hsm_key_entry e[8];
    uint32_t total = 0;
    size_t n = 0;
    size_t len = kpp_encode_list(b->req, sizeof(b->req), 0);
    assert_int_equal(call(fd, b->req, len, KPP_OP_LIST, b->rep, &r), 0);
    assert_int_equal(kpp_reply_list(&r, e, 8, &total, &n), 0);
    assert_int_equal(total, 3);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        int found = 0;
        for (size_t j = 0; j < n; j++)
            if (memcmp(e[j].kid.b, kids[i].b, HSM_KID_LEN) == 0 && e[j].has_private &&
                e[j].has_public)
                found = 1;
        assert_true(found);
    }
    /* Past the end: no entries, the same total. */
    len = kpp_encode_list(b->req, sizeof(b->req), 3);
    assert_int_equal(call(fd, b->req, len, KPP_OP_LIST, b->rep, &r), 0);
    assert_int_equal(kpp_reply_list(&r, e, 8, &total, &n), 0);
    assert_int_equal(total, 3);
    assert_int_equal(n, 0);

    /* An active key is never destroyed, whatever the front asks; once revoked it is. */
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kids[1], NULL), HSM_ERR_BAD_ARGUMENT);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_PUBLIC_KEY, &kids[1], &pub), HSM_OK);
    assert_int_equal(reg_revoke(fx->r, &kids[1], "retired", T0 + 1, NULL), REG_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kids[1], NULL), HSM_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kids[1], NULL), HSM_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_PUBLIC_KEY, &kids[1], &pub), HSM_ERR_KEY_NOT_FOUND);
    len = kpp_encode_list(b->req, sizeof(b->req), 0);
    assert_int_equal(call(fd, b->req, len, KPP_OP_LIST, b->rep, &r), 0);
    assert_int_equal(kpp_reply_list(&r, e, 8, &total, &n), 0);
    assert_int_equal(total, 2);
    uint8_t sig[HSM_SIG_MAX];
    size_t sig_len;
    assert_int_equal(do_sign(fd, b, &kids[1], "m", 1, sig, &sig_len), HSM_ERR_KEY_NOT_FOUND);
    /* A kid that exists cannot be generated again. */
    assert_int_equal(do_generate(fd, b, &kids[0], 2048, &pub), HSM_ERR_KEY_EXISTS);
    close(fd);
    free(b);
}

static void test_stop_with_connections_open_returns_and_close_joins_every_thread(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    bufs *b = bufs_new();
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = connect_keeper(fx);
        assert_int_equal(do_ping(fds[i], b, NULL), HSM_OK);
    }
    kpd_stop(fx->d);
    pthread_join(fx->serve_th, NULL);
    fx->serving = 0;
    assert_int_equal(fx->serve_rc, 0);
    /* Every connection was shut down: each sees the end, no reply. */
    for (int i = 0; i < 3; i++) {
        ssize_t n;
        do
            n = recv(fds[i], b->rep, KPP_MSG_MAX + 1, 0);
        while (n < 0 && errno == EINTR);
        assert_int_equal(n, 0);
    }
    kpd_stop(fx->d); /* a second stop is harmless */
    kpd_close(fx->d);
    fx->d = NULL;
    assert_int_equal(access(fx->c.keeper_socket, F_OK), -1); /* unlinked */
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    free(b);
}

static void test_stop_before_serve_makes_serve_return_at_once(void **state)
{
    fixture *fx = *state;
    char err[CFG_ERR_MAX];
    assert_int_equal(kpd_open(&fx->c, &fx->d, err, sizeof(err)), 0);
    kpd_stop(fx->d);
    assert_int_equal(kpd_serve(fx->d), 0);
    kpd_close(fx->d);
    fx->d = NULL;
    kpd_close(NULL);
}

static void test_open_replaces_a_stale_socket_but_never_a_file_or_a_live_keeper(void **state)
{
    fixture *fx = *state;
    char err[CFG_ERR_MAX];
    kpd *d = NULL;

    /* A regular file where the socket goes: refused, and left alone. */
    int f = open(fx->c.keeper_socket, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(f >= 0);
    assert_int_equal(write(f, "keep", 4), 4);
    close(f);
    err[0] = '\0';
    assert_int_equal(kpd_open(&fx->c, &d, err, sizeof(err)), -1);
    assert_null(d);
    assert_non_null(strstr(err, "not a socket"));
    struct stat sb;
    assert_int_equal(lstat(fx->c.keeper_socket, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    assert_int_equal(sb.st_size, 4);
    assert_int_equal(unlink(fx->c.keeper_socket), 0);

    /* A symlink to a socket is not a socket either. */
    char target[PATH_MAX + 16];
    snprintf(target, sizeof(target), "%s/elsewhere.sock", fx->dir);
    assert_int_equal(symlink(target, fx->c.keeper_socket), 0);
    assert_int_equal(kpd_open(&fx->c, &d, err, sizeof(err)), -1);
    assert_int_equal(lstat(fx->c.keeper_socket, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    assert_int_equal(unlink(fx->c.keeper_socket), 0);

    /* A socket left by a dead keeper: bound, never listened on, closed. */
    int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    assert_true(s >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx->c.keeper_socket);
    assert_int_equal(bind(s, (const struct sockaddr *)&sa, sizeof(sa)), 0);
    close(s);
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    assert_int_equal(do_ping(fd, b, NULL), HSM_OK);

    /* A live keeper's socket is not taken over (refused before the token is opened). */
    err[0] = '\0';
    assert_int_equal(kpd_open(&fx->c, &d, err, sizeof(err)), -1);
    assert_null(d);
    assert_non_null(strstr(err, "another keeper"));
    assert_int_equal(do_ping(fd, b, NULL), HSM_OK); /* the first one is untouched */
    close(fd);
    free(b);
}

static void test_open_fails_with_one_line_for_a_bad_pin_file_or_a_missing_registry(void **state)
{
    fixture *fx = *state;
    char err[CFG_ERR_MAX];
    kpd *d = NULL;
    cfg c = fx->c;
    path_in(c.pin_file, sizeof(c.pin_file), fx->dir, "no-such-pin");
    assert_int_equal(kpd_open(&c, &d, err, sizeof(err)), -1);
    assert_null(d);
    assert_non_null(strstr(err, "pin_file"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(access(c.keeper_socket, F_OK), -1); /* nothing left behind */

    c = fx->c;
    path_in(c.database, sizeof(c.database), fx->dir, "no-such.db");
    assert_int_equal(kpd_open(&c, &d, err, sizeof(err)), -1);
    assert_null(d);
    assert_non_null(strstr(err, "no-such.db"));
    assert_int_equal(access(c.database, F_OK), -1); /* the reader creates nothing */
    assert_int_equal(access(c.keeper_socket, F_OK), -1);
}

static void test_a_peer_of_another_uid_is_refused(void **state)
{
    fixture *fx = *state;
    if (geteuid() != 0)
        skip(); /* needs to become another user */
    start_keeper(fx);
    /* Let the other user reach the socket: only SO_PEERCRED stands in its way now. */
    assert_int_equal(chmod(fx->c.keeper_socket, 0666), 0);
    assert_int_equal(chmod(fx->dir, 0755), 0);
    uint8_t req[64];
    size_t len = kpp_encode_ping(req, sizeof(req), NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Only async-signal-safe calls in the child of a threaded process. */
        if (setgid(65534) != 0 || setuid(65534) != 0)
            _exit(2);
        int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, fx->c.keeper_socket, strlen(fx->c.keeper_socket) + 1);
        if (fd < 0 || connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) != 0)
            _exit(3);
        uint8_t rep[64];
        ssize_t n = send(fd, req, len, MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            n = recv(fd, rep, sizeof(rep), 0);
        _exit(n > 0 ? 1 : 0); /* 0: closed without an answer */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* Our own uid is still served. */
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    assert_int_equal(do_ping(fd, b, NULL), HSM_OK);
    close(fd);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_a_generated_key_signs_through_the_socket_and_verifies_with_its_public_key),
        T(test_a_kid_not_active_in_the_registry_is_refused_though_the_token_has_it),
        T(test_malformed_requests_get_an_error_reply_and_the_connection_keeps_serving),
        cmocka_unit_test_setup_teardown(
            test_a_connection_beyond_the_limit_is_closed_and_a_freed_slot_is_reused, setup_limited,
            teardown),
        T(test_eight_connections_sign_concurrently_and_release_their_sessions),
        T(test_list_reports_every_key_with_its_halves_and_destroy_removes_them),
        T(test_stop_with_connections_open_returns_and_close_joins_every_thread),
        T(test_stop_before_serve_makes_serve_return_at_once),
        T(test_open_replaces_a_stale_socket_but_never_a_file_or_a_live_keeper),
        T(test_open_fails_with_one_line_for_a_bad_pin_file_or_a_missing_registry),
        T(test_a_peer_of_another_uid_is_refused),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
