/*
 * test_keeperd: the keeper server on a real SoftHSM2 token, a real registry file and a
 * real Unix socket, each test with its own. kpd_serve runs in a thread of its own; the
 * tests are the front, speaking the keeper protocol over SOCK_SEQPACKET connections.
 * The audit key's tests also go through kp_ (keeper.h) in both modes: remote (kp_connect
 * to the keeper under test) and in-process (kp_open on the fixture's token, no keeper
 * running: one hsm handle per process), and through reconcile (rec_run).
 */
#include "appliance/keeper/keeperd.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "appliance/core/audit.h"
#include "appliance/common/config.h"
#include "appliance/keeper/inproc.h"
#include "appliance/kproto/keeper.h"
#include "appliance/kproto/kproto.h"
#include "appliance/core/reconcile.h"
#include "appliance/store/registry.h"
#include "jose/jose.h"
#include "tests/unit/testdb.h"
#include "tests/unit/testenv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
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

static int setup_with_db(void **state, unsigned sessions, int postgres);

static int setup_with(void **state, unsigned sessions)
{
    return setup_with_db(state, sessions, 0);
}

/* The registry in a fresh database of a PostgreSQL server this process starts (a cluster
 * node's keeper), whatever SIGND_TEST_BACKEND says. */
static int setup_pg(void **state)
{
    return setup_with_db(state, SESSIONS, 1);
}

static int setup_with_db(void **state, unsigned sessions, int postgres)
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
    if (!postgres)
        path_in(fx->c.database, sizeof(fx->c.database), fx->dir, "appliance.db");
    else if (testdb_pg_locator(fx->c.database, sizeof(fx->c.database)) != 0) {
        testenv_cleanup(fx->dir);
        free(fx);
        return -1;
    } else
        snprintf(fx->c.state_directory, sizeof(fx->c.state_directory), "%s", fx->dir);
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

static uint32_t do_generate(int fd, bufs *b, const sk_kid *kid, unsigned bits, sk_pubkey *pub)
{
    kpp_reply r;
    size_t len = kpp_encode_generate(b->req, sizeof(b->req), kid, bits);
    uint32_t st = call(fd, b->req, len, KPP_OP_GENERATE, b->rep, &r);
    sk_attrs attrs = 0;
    if (st == 0) {
        assert_int_equal(kpp_reply_generate(&r, pub, &attrs), 0);
        /* SoftHSM2 makes what the template asks: read back, sensitive and sign-only. */
        assert_int_equal(attrs, SK_ATTR_READ | SK_ATTR_SENSITIVE | SK_ATTR_NEVER_EXTRACTABLE |
                                    SK_ATTR_SIGN_ONLY);
    }
    return st;
}

static uint32_t do_sign(int fd, bufs *b, const sk_kid *kid, const void *msg, size_t msg_len,
                        uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    kpp_reply r;
    size_t len = kpp_encode_sign(b->req, sizeof(b->req), kid, msg, msg_len);
    uint32_t st = call(fd, b->req, len, KPP_OP_SIGN, b->rep, &r);
    if (st == 0)
        assert_int_equal(kpp_reply_sig(&r, sig, sig_len), 0);
    return st;
}

static uint32_t do_ping(int fd, bufs *b, const sk_kid *kid)
{
    kpp_reply r;
    size_t len = kpp_encode_ping(b->req, sizeof(b->req), kid);
    return call(fd, b->req, len, KPP_OP_PING, b->rep, &r);
}

static uint32_t do_kid_op(int fd, bufs *b, kpp_op op, const sk_kid *kid, sk_pubkey *pub)
{
    kpp_reply r;
    size_t len = kpp_encode_kid_op(b->req, sizeof(b->req), op, kid);
    (void)pub; /* DESTROY's reply has no body */
    return call(fd, b->req, len, op, b->rep, &r);
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

/* A kid reserved the way a create reserves it: the keeper generates only under these. */
static void pend(fixture *fx, const sk_kid *kid)
{
    assert_int_equal(reg_pending_add(fx->r, kid, T0), REG_OK);
}

/* A key the way a create makes it: pending, generated through the keeper, inserted. */
static void create_key(fixture *fx, int fd, bufs *b, sk_kid *kid, sk_pubkey *pub)
{
    testenv_kid(kid);
    pend(fx, kid);
    assert_int_equal(do_generate(fd, b, kid, 2048, pub), SK_OK);
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

static int rs256_verifies(const sk_pubkey *pub, const void *msg, size_t msg_len, const uint8_t *sig,
                          size_t sig_len)
{
    EVP_PKEY *key = testenv_evp_from_pubkey(pub);
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
    sk_kid kid;
    sk_pubkey pub;
    create_key(fx, fd, b, &kid, &pub);
    assert_int_equal(pub.bits, 2048);
    assert_int_equal(do_ping(fd, b, &kid), SK_OK);

    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    const char *msg = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0";
    assert_int_equal(do_sign(fd, b, &kid, msg, strlen(msg), sig, &sig_len), SK_OK);
    assert_int_equal(sig_len, 256);
    assert_true(rs256_verifies(&pub, msg, strlen(msg), sig, sig_len));
    assert_false(rs256_verifies(&pub, "other", 5, sig, sig_len));

    /* The longest message the protocol carries, and the empty one. */
    uint8_t *big = malloc(KPP_SIGN_MAX);
    assert_non_null(big);
    for (size_t i = 0; i < KPP_SIGN_MAX; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    assert_int_equal(do_sign(fd, b, &kid, big, KPP_SIGN_MAX, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, big, KPP_SIGN_MAX, sig, sig_len));
    free(big);
    assert_int_equal(do_sign(fd, b, &kid, "", 0, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, "", 0, sig, sig_len));

    /* A second key on a second connection signs too, with its own key. */
    int fd2 = connect_keeper(fx);
    sk_kid kid2;
    sk_pubkey pub2;
    create_key(fx, fd2, b, &kid2, &pub2);
    assert_int_equal(do_sign(fd2, b, &kid2, msg, strlen(msg), sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub2, msg, strlen(msg), sig, sig_len));
    assert_false(rs256_verifies(&pub, msg, strlen(msg), sig, sig_len));
    close(fd2);
    close(fd);
    free(b);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void test_a_kid_not_active_in_the_registry_is_refused_though_the_token_has_it(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    const char *msg = "payload";

    /* Generated on the token, never inserted in the registry. */
    sk_kid never;
    sk_pubkey pub;
    testenv_kid(&never);
    pend(fx, &never);
    assert_int_equal(do_generate(fd, b, &never, 2048, &pub), SK_OK);
    assert_int_equal(do_sign(fd, b, &never, msg, 7, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    /* The token has it: the probe (no registry check) signs with it. */
    assert_int_equal(do_ping(fd, b, &never), SK_OK);

    /* Active, then revoked through the registry's own handle. */
    sk_kid revoked;
    create_key(fx, fd, b, &revoked, &pub);
    assert_int_equal(do_sign(fd, b, &revoked, msg, 7, sig, &sig_len), SK_OK);
    assert_int_equal(reg_revoke(fx->r, &revoked, "compromised", T0 + 1, NULL), REG_OK);
    /* The keeper's view may lag the file by KPD_ACTIVE_CHECK_MS, never more. */
    sleep_ms(KPD_ACTIVE_CHECK_MS + 20);
    assert_int_equal(do_sign(fd, b, &revoked, msg, 7, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_ping(fd, b, &revoked), SK_OK);

    /* Active, then broken. */
    sk_kid broken;
    create_key(fx, fd, b, &broken, &pub);
    assert_int_equal(reg_mark_broken(fx->r, &broken), REG_OK);
    sleep_ms(KPD_ACTIVE_CHECK_MS + 20);
    assert_int_equal(do_sign(fd, b, &broken, msg, 7, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);

    /* Neither on the token nor in the registry. */
    sk_kid unknown;
    testenv_kid(&unknown);
    assert_int_equal(do_sign(fd, b, &unknown, msg, 7, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_ping(fd, b, &unknown), SK_ERR_KEY_NOT_FOUND);

    /* A refusal of the keeper's own (the registry says revoked) blames no token call: the
     * error carries CKR 0, not whatever the thread's last token call returned. */
    kpp_reply r;
    size_t len = kpp_encode_sign(b->req, sizeof(b->req), &revoked, msg, 7);
    assert_int_equal(call(fd, b->req, len, KPP_OP_SIGN, b->rep, &r), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(r.body_len, 4);
    assert_int_equal(r.ckr, 0);
    close(fd);
    free(b);
}

/* KEY_ATTRS reads a key's attributes back from the token (reconcile asks it for keys made
 * before they were recorded): the generated key's, whatever its registry state; the
 * service keys are not the front's to ask about. */
static void test_key_attrs_reads_back_what_the_token_holds(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_kid kid;
    sk_pubkey pub;
    create_key(fx, fd, b, &kid, &pub);
    kpp_reply r;
    size_t len = kpp_encode_kid_op(b->req, sizeof(b->req), KPP_OP_KEY_ATTRS, &kid);
    assert_int_equal(call(fd, b->req, len, KPP_OP_KEY_ATTRS, b->rep, &r), SK_OK);
    sk_attrs a = 0;
    assert_int_equal(kpp_reply_attrs(&r, &a), 0);
    assert_int_equal(a, SK_ATTR_READ | SK_ATTR_SENSITIVE | SK_ATTR_NEVER_EXTRACTABLE |
                            SK_ATTR_SIGN_ONLY);
    sk_kid unknown;
    testenv_kid(&unknown);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_KEY_ATTRS, &unknown, NULL), SK_ERR_KEY_NOT_FOUND);
    sk_kid audit;
    memcpy(audit.b, KP_AUDIT_ID, SK_KID_LEN);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_KEY_ATTRS, &audit, NULL), SK_ERR_KEY_NOT_FOUND);

    /* And what it probed at start, from memory. */
    len = kpp_encode_token_info(b->req, sizeof(b->req));
    assert_int_equal(call(fd, b->req, len, KPP_OP_TOKEN_INFO, b->rep, &r), SK_OK);
    sk_token_info ti;
    assert_int_equal(kpp_reply_token_info(&r, &ti), 0);
    assert_string_equal(ti.sign_mechanism, "sha256_rsa_pkcs");
    assert_string_equal(ti.manufacturer, "SoftHSM project");
    assert_true(ti.rsa_min_bits <= 2048 && ti.rsa_max_bits >= 4096);
    assert_int_equal(ti.sign_only_refused, 0);
    close(fd);
    free(b);
}

/* PostgreSQL (a cluster node): with the shared database out of reach the keeper signs on
 * with the active kids it last read (KPD_OUTAGE_GRACE_MS), so minting outlives a database
 * restart; a kid it did not know stays refused; once the server is back, a revocation is
 * seen as before and a create's pending check works at the first try. */
static void test_a_cluster_keeper_signs_known_kids_through_a_database_restart(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    sk_kid known, unknown, later;
    sk_pubkey pub;
    create_key(fx, fd, b, &known, &pub);
    assert_int_equal(do_sign(fd, b, &known, "m", 1, sig, &sig_len), SK_OK);
    testenv_kid(&unknown);

    assert_int_equal(testdb_pg_stop(), 0);
    sleep_ms(KPD_ACTIVE_CHECK_MS + 20); /* the next sign looks at the registry: it fails */
    assert_int_equal(do_sign(fd, b, &known, "m", 1, sig, &sig_len), SK_OK);
    assert_int_equal(do_sign(fd, b, &unknown, "m", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(testdb_pg_start(), 0);

    create_key(fx, fd, b, &later, &pub); /* the pending check after the restart */
    assert_int_equal(do_sign(fd, b, &later, "m", 1, sig, &sig_len), SK_OK);
    assert_int_equal(reg_revoke(fx->r, &known, "", T0 + 1, NULL), REG_OK);
    sleep_ms(KPD_ACTIVE_CHECK_MS + 20);
    assert_int_equal(do_sign(fd, b, &known, "m", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    close(fd);
    free(b);
}

/* Sends a malformed request, checks its error reply, then that a PING still works. */
static void malformed(int fd, bufs *b, const void *req, size_t len, uint16_t op, uint32_t status)
{
    ssize_t n = roundtrip(fd, req, len, b->rep);
    assert_error_reply(b->rep, n, op, status);
    assert_int_equal(do_ping(fd, b, NULL), SK_OK);
}

static void
test_malformed_requests_get_an_error_reply_and_the_connection_keeps_serving(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_kid kid;
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

    /* Op 3, PUBLIC_KEY until it was removed, is retired: an unknown op. */
    uint8_t retired[KPP_HDR_LEN + SK_KID_LEN] = {
        KPP_MAGIC, KPP_VERSION, 0, KPP_OP_RETIRED, 0, 0, 0, 0, 0, 0, 0, SK_KID_LEN};
    memcpy(retired + KPP_HDR_LEN, kid.b, SK_KID_LEN);
    malformed(fd, b, retired, sizeof(retired), KPP_OP_RETIRED, KPP_ERR_UNKNOWN_OP);

    /* None of it touched the token: the kid was never generated. */
    assert_int_equal(do_ping(fd, b, &kid), SK_ERR_KEY_NOT_FOUND);
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
        assert_int_equal(do_ping(fds[i], b, NULL), SK_OK); /* admitted and served */
    }
    int extra = connect_keeper(fx); /* the backlog takes it; the keeper closes it */
    assert_true(closed_by_keeper(extra, b));
    close(extra);
    /* The admitted ones are untouched. */
    for (int i = 0; i < LIMITED; i++)
        assert_int_equal(do_ping(fds[i], b, NULL), SK_OK);
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
            assert_int_equal(r.status, SK_OK);
            served = 1;
            fds[0] = fd;
        } else {
            close(fd);
            struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_true(served);

    /* The pool's threads use up the session bound: a GENERATE is served by a pool thread
     * rather than a thread of its own, and the bound holds. */
    sk_kid kid;
    sk_pubkey pub;
    create_key(fx, fds[0], b, &kid, &pub);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    assert_int_equal(do_sign(fds[1], b, &kid, "x", 1, sig, &sig_len), SK_OK);
    assert_true(do_sessions(fds[1], b) <= LIMITED);
    for (int i = 0; i < LIMITED; i++)
        close(fds[i]);
    free(b);
}

typedef struct {
    fixture *fx;
    const sk_kid *kid;
    const sk_pubkey *pub;
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
            uint8_t sig[SK_SIG_MAX];
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

/* The keeper's pool: as many token sessions as pool threads, whatever the connections. */
static unsigned pool_sessions(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = KPD_POOL_PER_CPU * (unsigned)(cpus > 0 && cpus < 256 ? cpus : 1);
    return n < SESSIONS ? n : SESSIONS;
}

static void test_eight_connections_sign_concurrently_through_the_pool_sessions(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_kid kids[2];
    sk_pubkey pubs[2];
    create_key(fx, fd, b, &kids[0], &pubs[0]);
    create_key(fx, fd, b, &kids[1], &pubs[1]);
    close(fd);

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
    /* Eight connections signed at once, each signature verified, through no more token
     * sessions than the pool has threads (the GENERATE threads above gave theirs back). */
    assert_true(open_now >= 1);
    assert_true(open_now <= pool_sessions());
    assert_true(do_sessions(watch, b) <= pool_sessions());
    close(watch);
    free(b);
}

/* A GENERATE runs in a thread of its own: key creation on more connections than the pool
 * has threads neither stalls signing nor leaves a token session behind. */
static void test_generates_run_beside_the_pool_and_release_their_sessions(void **state)
{
    enum { GENS = 8 };
    fixture *fx = *state;
    start_keeper(fx);
    bufs *b = bufs_new();
    int sfd = connect_keeper(fx);
    sk_kid skid;
    sk_pubkey spub;
    create_key(fx, sfd, b, &skid, &spub);

    int fds[GENS];
    for (int i = 0; i < GENS; i++) {
        fds[i] = connect_keeper(fx);
        sk_kid kid;
        testenv_kid(&kid);
        pend(fx, &kid);
        size_t len = kpp_encode_generate(b->req, sizeof(b->req), &kid, 2048);
        assert_int_equal(send(fds[i], b->req, len, MSG_NOSIGNAL), (ssize_t)len);
    }
    /* A signature while they run: had the pool's threads served the GENERATEs, it would
     * wait for as many of them to finish as the pool has threads (each takes tens to
     * hundreds of milliseconds, a signature about one). */
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    assert_int_equal(do_sign(sfd, b, &skid, "x", 1, sig, &sig_len), SK_OK);
    unsigned finished = 0;
    for (int i = 0; i < GENS; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        finished += poll(&p, 1, 0) == 1;
    }
    assert_true(finished < pool_sessions());
    for (int i = 0; i < GENS; i++) {
        kpp_reply r;
        ssize_t n;
        do
            n = recv(fds[i], b->rep, KPP_MSG_MAX + 1, MSG_TRUNC);
        while (n < 0 && errno == EINTR);
        assert_true(n > 0);
        assert_int_equal(kpp_decode_reply(b->rep, (size_t)n, KPP_OP_GENERATE, &r), 0);
        assert_int_equal(r.status, 0);
        close(fds[i]);
    }
    /* Each GENERATE thread gave its session back as it finished. */
    unsigned left = do_sessions(sfd, b);
    for (int attempt = 0; attempt < 500 && left > pool_sessions(); attempt++) {
        struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        left = do_sessions(sfd, b);
    }
    assert_true(left <= pool_sessions());
    close(sfd);
    free(b);
}

static void test_list_reports_every_key_with_its_halves_and_destroy_removes_them(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_kid kids[3];
    sk_pubkey pub;
    for (int i = 0; i < 3; i++)
        create_key(fx, fd, b, &kids[i], &pub);

    kpp_reply r;
    sk_key_entry e[8];
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
            if (memcmp(e[j].kid.b, kids[i].b, SK_KID_LEN) == 0 && e[j].has_private &&
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
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kids[1], NULL), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(do_ping(fd, b, &kids[1]), SK_OK);
    assert_int_equal(reg_revoke(fx->r, &kids[1], "retired", T0 + 1, NULL), REG_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kids[1], NULL), SK_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kids[1], NULL), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_ping(fd, b, &kids[1]), SK_ERR_KEY_NOT_FOUND);
    len = kpp_encode_list(b->req, sizeof(b->req), 0);
    assert_int_equal(call(fd, b->req, len, KPP_OP_LIST, b->rep, &r), 0);
    assert_int_equal(kpp_reply_list(&r, e, 8, &total, &n), 0);
    assert_int_equal(total, 2);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    assert_int_equal(do_sign(fd, b, &kids[1], "m", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    /* A kid that exists cannot be generated again. */
    assert_int_equal(do_generate(fd, b, &kids[0], 2048, &pub), SK_ERR_KEY_EXISTS);
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
        assert_int_equal(do_ping(fds[i], b, NULL), SK_OK);
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
    assert_int_equal(do_ping(fd, b, NULL), SK_OK);

    /* A live keeper's socket is not taken over (refused before the token is opened). */
    err[0] = '\0';
    assert_int_equal(kpd_open(&fx->c, &d, err, sizeof(err)), -1);
    assert_null(d);
    assert_non_null(strstr(err, "another keeper"));
    assert_int_equal(do_ping(fd, b, NULL), SK_OK); /* the first one is untouched */
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
    assert_int_equal(do_ping(fd, b, NULL), SK_OK);
    close(fd);
    free(b);
}

/* ---- the audit key ------------------------------------------------------------------- */

#define AUDIT_THREADS 8
#define CHECKPOINT_MAX (KP_AUDIT_SIGN_MAX + 64)

static sk_kid audit_kid(void)
{
    sk_kid kid;
    memcpy(kid.b, KP_AUDIT_ID, SK_KID_LEN);
    return kid;
}

static void assert_same_pubkey(const sk_pubkey *a, const sk_pubkey *b)
{
    assert_int_equal(a->bits, b->bits);
    assert_int_equal(a->n_len, b->n_len);
    assert_memory_equal(a->n, b->n, a->n_len);
    assert_int_equal(a->e_len, b->e_len);
    assert_memory_equal(a->e, b->e, a->e_len);
}

/* The audit key as every caller must see it: RSA-KP_AUDIT_BITS, e = 65537. */
static void assert_audit_shape(const sk_pubkey *pub)
{
    assert_int_equal(pub->bits, KP_AUDIT_BITS);
    assert_int_equal(pub->n_len, KP_AUDIT_BITS / 8);
    assert_int_equal(pub->e_len, 3);
    assert_memory_equal(pub->e, "\x01\x00\x01", 3);
}

static uint32_t do_audit_pubkey(int fd, bufs *b, sk_pubkey *pub)
{
    kpp_reply r;
    size_t len = kpp_encode_audit_pubkey(b->req, sizeof(b->req));
    uint32_t st = call(fd, b->req, len, KPP_OP_AUDIT_PUBKEY, b->rep, &r);
    if (st == 0)
        assert_int_equal(kpp_reply_pubkey(&r, pub), 0);
    return st;
}

static uint32_t do_audit_sign(int fd, bufs *b, const void *in, size_t in_len,
                              uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    kpp_reply r;
    size_t len = kpp_encode_audit_sign(b->req, sizeof(b->req), in, in_len);
    uint32_t st = call(fd, b->req, len, KPP_OP_AUDIT_SIGN, b->rep, &r);
    if (st == 0)
        assert_int_equal(kpp_reply_sig(&r, sig, sig_len), 0);
    return st;
}

/* An AUDIT_SIGN of any length, built by hand (the encoder refuses 0 and more than the
 * bound): the reply's status. */
static uint32_t raw_audit_sign(int fd, bufs *b, const void *in, size_t in_len)
{
    b->req[0] = KPP_MAGIC;
    b->req[1] = KPP_VERSION;
    b->req[2] = 0;
    b->req[3] = KPP_OP_AUDIT_SIGN;
    memset(b->req + 4, 0, 4);
    b->req[8] = (uint8_t)(in_len >> 24);
    b->req[9] = (uint8_t)(in_len >> 16);
    b->req[10] = (uint8_t)(in_len >> 8);
    b->req[11] = (uint8_t)in_len;
    if (in_len)
        memcpy(b->req + KPP_HDR_LEN, in, in_len);
    kpp_reply r;
    return call(fd, b->req, KPP_HDR_LEN + in_len, KPP_OP_AUDIT_SIGN, b->rep, &r);
}

/* LIST from offset 0 into e (cap entries): the total; *reserved counts the audit key's. */
static uint32_t do_list(int fd, bufs *b, sk_key_entry *e, size_t cap, int *reserved)
{
    kpp_reply r;
    uint32_t total = 0;
    size_t n = 0;
    size_t len = kpp_encode_list(b->req, sizeof(b->req), 0);
    assert_int_equal(call(fd, b->req, len, KPP_OP_LIST, b->rep, &r), 0);
    assert_int_equal(kpp_reply_list(&r, e, cap, &total, &n), 0);
    *reserved = 0;
    for (size_t i = 0; i < n && i < cap; i++) {
        if (kp_is_reserved(&e[i].kid)) {
            assert_true(e[i].has_private && e[i].has_public);
            ++*reserved;
        }
    }
    return total;
}

/* A checkpoint's JWS signing input, as audit.c makes it: KP_AUDIT_HEADER_B64 "."
 * base64url({"hash":...,"seq":N,"time":T}). Its length. */
static size_t checkpoint_input(char *out, size_t cap, unsigned seq)
{
    char payload[160];
    int n = snprintf(payload, sizeof(payload), "{\"hash\":\"%064x\",\"seq\":%u,\"time\":%d}", seq,
                     seq, T0 + (int)seq);
    assert_true(n > 0 && (size_t)n < sizeof(payload));
    char b64[256];
    assert_true(jose_b64url_encode(payload, (size_t)n, b64, sizeof(b64)) > 0);
    n = snprintf(out, cap, "%s.%s", KP_AUDIT_HEADER_B64, b64);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* The audit chain's hash at seq in the fixture's registry file, events being appended
 * (as reconcile would, through the registry) until the chain reaches seq. */
static void chain_hash_at(fixture *fx, unsigned seq, char hash[CHN_HASH_HEX + 1])
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(fx->c.database, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    for (;;) {
        sqlite3_stmt *s;
        assert_int_equal(
            sqlite3_prepare_v2(db, "SELECT hash FROM audit WHERE seq = ?", -1, &s, NULL),
            SQLITE_OK);
        sqlite3_bind_int(s, 1, (int)seq);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            snprintf(hash, CHN_HASH_HEX + 1, "%s", (const char *)sqlite3_column_text(s, 0));
            sqlite3_finalize(s);
            break;
        }
        sqlite3_finalize(s);
        assert_int_equal(rc, SQLITE_DONE);
        assert_int_equal(reg_audit(fx->r, T0, CHN_STARTED, NULL, json_pack("{s:s}", "why", "test")),
                         REG_OK);
    }
    sqlite3_close(db);
}

/* A checkpoint of the fixture's real chain at seq, as audit.c makes it. */
static size_t real_checkpoint(fixture *fx, char *out, size_t cap, unsigned seq)
{
    char hash[CHN_HASH_HEX + 1], payload[160], b64[256];
    chain_hash_at(fx, seq, hash);
    int n = snprintf(payload, sizeof(payload), "{\"hash\":\"%s\",\"seq\":%u,\"time\":%d}", hash,
                     seq, T0 + (int)seq);
    assert_true(n > 0 && (size_t)n < sizeof(payload));
    assert_true(jose_b64url_encode(payload, (size_t)n, b64, sizeof(b64)) > 0);
    n = snprintf(out, cap, "%s.%s", KP_AUDIT_HEADER_B64, b64);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* An input of exactly len bytes, checkpoint-shaped: the header, ".", then 'A's. */
static size_t checkpoint_of_length(char *out, size_t len)
{
    size_t prefix = strlen(KP_AUDIT_HEADER_B64 ".");
    assert_true(len > prefix && len < CHECKPOINT_MAX);
    memcpy(out, KP_AUDIT_HEADER_B64 ".", prefix);
    memset(out + prefix, 'A', len - prefix);
    out[len] = '\0';
    return len;
}

/* Inputs the audit key must never sign, though each is 1..KP_AUDIT_SIGN_MAX bytes. */
typedef struct {
    const char *why;
    char in[CHECKPOINT_MAX];
    size_t len;
} bad_input;

#define BAD_INPUTS_MAX 32

static void bad_add(bad_input *t, size_t *k, const char *why, const void *in, size_t len)
{
    assert_true(*k < BAD_INPUTS_MAX && len > 0 && len <= KP_AUDIT_SIGN_MAX);
    t[*k].why = why;
    memcpy(t[*k].in, in, len);
    t[*k].len = len;
    ++*k;
}

static size_t bad_inputs(bad_input *t)
{
    size_t k = 0;
    char good[CHECKPOINT_MAX], x[CHECKPOINT_MAX * 2], b64[256];
    size_t g = checkpoint_input(good, sizeof(good), 7);
    const char *payload = strchr(good, '.') + 1;
    const size_t hlen = strlen(KP_AUDIT_HEADER_B64);

    /* Another header: a client token's, or the audit one with another typ or kid. */
    const char *headers[] = {
        "{\"alg\":\"RS256\"}",
        "{\"alg\":\"RS256\",\"kid\":\"signd-audit-v1\",\"typ\":\"JWT\"}",
        "{\"alg\":\"RS256\",\"kid\":\"00112233445566778899aabbccddeeff\","
        "\"typ\":\"signd-audit-checkpoint+jwt\"}",
        "{\"alg\":\"RS256\",\"kid\":\"signd-audit-v1\",\"typ\":\"signd-audit-checkpoint+jwt\"} ",
    };
    for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        size_t n = jose_b64url_encode(headers[i], strlen(headers[i]), b64, sizeof(b64));
        assert_true(n > 0);
        int len = snprintf(x, sizeof(x), "%s.%s", b64, payload);
        bad_add(t, &k, "wrong header", x, (size_t)len);
    }
    /* The header itself, without the ".", with nothing after it, truncated, preceded. */
    bad_add(t, &k, "header only", KP_AUDIT_HEADER_B64, hlen);
    bad_add(t, &k, "empty payload", KP_AUDIT_HEADER_B64 ".", hlen + 1);
    int len = snprintf(x, sizeof(x), "%s%s", KP_AUDIT_HEADER_B64, payload);
    bad_add(t, &k, "no dot", x, (size_t)len);
    len = snprintf(x, sizeof(x), "%.*s.%s", (int)hlen - 1, KP_AUDIT_HEADER_B64, payload);
    bad_add(t, &k, "header cut short", x, (size_t)len);
    len = snprintf(x, sizeof(x), "A%s", good);
    bad_add(t, &k, "a byte before the header", x, (size_t)len);
    /* Two dots: a whole compact JWS, a trailing dot, a dot inside the payload. */
    len = snprintf(x, sizeof(x), "%s.c2ln", good);
    bad_add(t, &k, "two dots (a signature)", x, (size_t)len);
    len = snprintf(x, sizeof(x), "%s.", good);
    bad_add(t, &k, "two dots (trailing)", x, (size_t)len);
    len = snprintf(x, sizeof(x), "%s.ab.cd", KP_AUDIT_HEADER_B64);
    bad_add(t, &k, "two dots (in the payload)", x, (size_t)len);
    len = snprintf(x, sizeof(x), "%s..%s", KP_AUDIT_HEADER_B64, payload);
    bad_add(t, &k, "two dots (adjacent)", x, (size_t)len);
    /* One byte outside base64url, in the middle of the payload or at its end. */
    const char odd[] = {'+', '/', '=', ' ', '\n', '\0', '"', '%', (char)0x80, (char)0xff};
    for (size_t i = 0; i < sizeof(odd); i++) {
        memcpy(x, good, g);
        x[g - 5] = odd[i];
        bad_add(t, &k, "a non-base64url byte in the payload", x, g);
    }
    memcpy(x, good, g);
    x[g] = '=';
    bad_add(t, &k, "padding", x, g + 1);
    return k;
}

static void test_audit_pubkey_creates_the_key_once_and_the_same_key_survives_a_restart(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_key_entry e[8];
    int reserved = 0;

    /* KP_AUDIT_HEADER_B64 is KP_AUDIT_HEADER's base64url, byte for byte. */
    char b64[256];
    size_t n = jose_b64url_encode(KP_AUDIT_HEADER, strlen(KP_AUDIT_HEADER), b64, sizeof(b64));
    assert_int_equal(n, strlen(KP_AUDIT_HEADER_B64));
    assert_string_equal(b64, KP_AUDIT_HEADER_B64);
    /* The same for the status list's header; the publication key signs that shape, the
     * audit key does not. */
    n = jose_b64url_encode(KP_STATUS_LIST_HEADER, strlen(KP_STATUS_LIST_HEADER), b64, sizeof(b64));
    assert_string_equal(b64, KP_STATUS_LIST_HEADER_B64);
    static const char status_list[] = KP_STATUS_LIST_HEADER_B64 ".eyJ4IjoxfQ";
    assert_true(kp_svc_input_ok(KP_SVC_PUBLISH, status_list, sizeof(status_list) - 1));
    assert_false(kp_svc_input_ok(KP_SVC_AUDIT, status_list, sizeof(status_list) - 1));
    assert_false(kp_svc_input_ok(KP_SVC_PUBLISH, KP_STATUS_LIST_HEADER_B64 ".a.b",
                                 strlen(KP_STATUS_LIST_HEADER_B64 ".a.b")));
    assert_false(kp_svc_input_ok(KP_SVC_PUBLISH, KP_STATUS_LIST_HEADER_B64,
                                 strlen(KP_STATUS_LIST_HEADER_B64)));
    sk_kid kid = audit_kid();
    assert_true(kp_is_reserved(&kid));
    kid.b[SK_KID_LEN - 1] ^= 1;
    assert_false(kp_is_reserved(&kid));
    assert_false(kp_is_reserved(NULL));

    /* A fresh token has no audit key: the first AUDIT_PUBKEY makes it. */
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 0);
    sk_pubkey pub, again;
    assert_int_equal(do_audit_pubkey(fd, b, &pub), SK_OK);
    assert_audit_shape(&pub);
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 1);
    assert_int_equal(reserved, 1);

    /* Later calls, on this connection and another, return it and make no other. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(do_audit_pubkey(fd, b, &again), SK_OK);
        assert_same_pubkey(&again, &pub);
    }
    int fd2 = connect_keeper(fx);
    assert_int_equal(do_audit_pubkey(fd2, b, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    close(fd2);
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 1);
    close(fd);

    /* A new keeper on the same token finds the same key, and makes no second one. */
    stop_keeper(fx);
    start_keeper(fx);
    fd = connect_keeper(fx);
    assert_int_equal(do_audit_pubkey(fd, b, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 1);
    assert_int_equal(reserved, 1);
    close(fd);
    free(b);
}

typedef struct {
    fixture *fx;
    pthread_barrier_t *go;
    int sign; /* first use through AUDIT_SIGN rather than AUDIT_PUBKEY */
    uint32_t st;
    sk_pubkey pub;
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
} first_user;

static void *first_user_main(void *arg)
{
    first_user *u = arg;
    int fd = try_connect(u->fx);
    bufs *b = malloc(sizeof(*b));
    pthread_barrier_wait(u->go);
    u->st = SK_ERR_DEVICE;
    if (fd >= 0 && b != NULL) {
        char in[CHECKPOINT_MAX];
        size_t len = real_checkpoint(u->fx, in, sizeof(in), 1);
        if (u->sign) {
            size_t elen = kpp_encode_audit_sign(b->req, sizeof(b->req), in, len);
            ssize_t n = roundtrip(fd, b->req, elen, b->rep);
            kpp_reply r;
            if (n > 0 && kpp_decode_reply(b->rep, (size_t)n, KPP_OP_AUDIT_SIGN, &r) == 0)
                u->st = r.status == 0 && kpp_reply_sig(&r, u->sig, &u->sig_len) != 0 ? SK_ERR_DEVICE
                                                                                     : r.status;
        } else {
            size_t elen = kpp_encode_audit_pubkey(b->req, sizeof(b->req));
            ssize_t n = roundtrip(fd, b->req, elen, b->rep);
            kpp_reply r;
            if (n > 0 && kpp_decode_reply(b->rep, (size_t)n, KPP_OP_AUDIT_PUBKEY, &r) == 0)
                u->st =
                    r.status == 0 && kpp_reply_pubkey(&r, &u->pub) != 0 ? SK_ERR_DEVICE : r.status;
        }
    }
    if (fd >= 0)
        close(fd);
    free(b);
    return NULL;
}

static void test_concurrent_first_uses_make_a_single_audit_key(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    char in[CHECKPOINT_MAX];
    size_t len = real_checkpoint(fx, in, sizeof(in), 1); /* the event, before the threads */
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, AUDIT_THREADS);
    static first_user u[AUDIT_THREADS];
    pthread_t th[AUDIT_THREADS];
    for (int i = 0; i < AUDIT_THREADS; i++) {
        memset(&u[i], 0, sizeof(u[i]));
        u[i].fx = fx;
        u[i].go = &go;
        u[i].sign = i % 2;
        assert_int_equal(pthread_create(&th[i], NULL, first_user_main, &u[i]), 0);
    }
    for (int i = 0; i < AUDIT_THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);

    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_pubkey pub;
    assert_int_equal(do_audit_pubkey(fd, b, &pub), SK_OK);
    assert_audit_shape(&pub);
    for (int i = 0; i < AUDIT_THREADS; i++) {
        assert_int_equal(u[i].st, SK_OK);
        if (u[i].sign)
            assert_true(rs256_verifies(&pub, in, len, u[i].sig, u[i].sig_len));
        else
            assert_same_pubkey(&u[i].pub, &pub);
    }
    sk_key_entry e[8];
    int reserved = 0;
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 1);
    assert_int_equal(reserved, 1);
    close(fd);
    free(b);
}

static void
test_audit_sign_signs_checkpoints_that_verify_and_refuses_every_other_input(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    static bad_input bad[BAD_INPUTS_MAX];
    size_t n_bad = bad_inputs(bad);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    sk_key_entry e[8];
    int reserved = 0;

    /* Refused inputs never reach the token: not even the key gets made. */
    for (size_t i = 0; i < n_bad; i++) {
        uint32_t st = do_audit_sign(fd, b, bad[i].in, bad[i].len, sig, &sig_len);
        if (st != SK_ERR_BAD_ARGUMENT)
            fail_msg("%s (input %zu): status %s", bad[i].why, i, kpp_status_name(st));
    }
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 0);

    /* A checkpoint is the first use: the key is made and signs it, RS256. */
    char in[CHECKPOINT_MAX];
    size_t len = real_checkpoint(fx, in, sizeof(in), 1);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    assert_int_equal(sig_len, KP_AUDIT_BITS / 8);
    sk_pubkey pub;
    assert_int_equal(do_audit_pubkey(fd, b, &pub), SK_OK);
    assert_audit_shape(&pub);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    assert_false(rs256_verifies(&pub, in, len - 1, sig, sig_len));
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 1);
    assert_int_equal(reserved, 1);

    /* The next checkpoint signs; the shortest and longest shapes pass the shape check but
     * are no checkpoint of the chain, and a made-up hash is not the chain's: refused. */
    len = real_checkpoint(fx, in, sizeof(in), 2);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    len = checkpoint_of_length(in, strlen(KP_AUDIT_HEADER_B64 ".") + 1);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    len = checkpoint_of_length(in, KP_AUDIT_SIGN_MAX);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    char head[CHN_HASH_HEX + 1];
    chain_hash_at(fx, 3, head);
    len = checkpoint_input(in, sizeof(in), 3);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);

    /* Past the bound, or empty: the protocol itself refuses (the encoder too). */
    len = checkpoint_of_length(in, KP_AUDIT_SIGN_MAX + 1);
    assert_int_equal(kpp_encode_audit_sign(b->req, sizeof(b->req), in, len), 0);
    assert_int_equal(raw_audit_sign(fd, b, in, len), KPP_ERR_BAD_BODY);
    assert_int_equal(raw_audit_sign(fd, b, in, 0), KPP_ERR_BAD_BODY);

    /* Every shape refusal again, with the key there, and the connection still serves. */
    for (size_t i = 0; i < n_bad; i++) {
        uint32_t st = do_audit_sign(fd, b, bad[i].in, bad[i].len, sig, &sig_len);
        if (st != SK_ERR_BAD_ARGUMENT)
            fail_msg("%s (input %zu): status %s", bad[i].why, i, kpp_status_name(st));
    }
    assert_int_equal(do_ping(fd, b, NULL), SK_OK);

    /* The same through kp_ in remote mode: the keeper's answers, passed on. */
    kp *k = NULL;
    char err[256];
    assert_int_equal(kp_connect(fx->c.keeper_socket, NULL, &k, err, sizeof(err)), SK_OK);
    sk_pubkey again;
    assert_int_equal(kp_svc_public_key(k, KP_SVC_AUDIT, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    len = real_checkpoint(fx, in, sizeof(in), 3);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    for (size_t i = 0; i < n_bad; i++)
        assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, bad[i].in, bad[i].len, sig, &sig_len),
                         SK_ERR_BAD_ARGUMENT);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, 0, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    len = checkpoint_of_length(in, KP_AUDIT_SIGN_MAX + 1);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    kp_close(k);
    close(fd);
    free(b);
}

/* What a front that owns appliance.db can do: edit event `from` and recompute the hash of
 * every event from there to the head with the chain's own rule, so the table is a whole
 * chain again (an export of it verifies link by link). */
static void rewrite_history(fixture *fx, unsigned from)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(fx->c.database, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE audit SET details = '{\"forged\":1}' WHERE seq = %u", from);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT seq, time, actor, action, kid, details, prev_hash"
                                        " FROM audit WHERE seq >= ? ORDER BY seq",
                                        -1, &s, NULL),
                     SQLITE_OK);
    sqlite3_bind_int(s, 1, (int)from);
    char prev[CHN_HASH_HEX + 1] = "";
    unsigned n = 0;
    struct {
        int64_t seq;
        char prev[CHN_HASH_HEX + 1], hash[CHN_HASH_HEX + 1];
    } rows[64];
    while (sqlite3_step(s) == SQLITE_ROW) {
        assert_true(n < 64);
        if (prev[0] == '\0')
            snprintf(prev, sizeof(prev), "%s", (const char *)sqlite3_column_text(s, 6));
        json_t *d = json_loads((const char *)sqlite3_column_text(s, 5), 0, NULL);
        rows[n].seq = sqlite3_column_int64(s, 0);
        memcpy(rows[n].prev, prev, sizeof(prev));
        assert_int_equal(chash_event(prev, (uint64_t)rows[n].seq, sqlite3_column_int64(s, 1),
                                     (const char *)sqlite3_column_text(s, 2),
                                     (const char *)sqlite3_column_text(s, 3),
                                     (const char *)sqlite3_column_text(s, 4), d, rows[n].hash),
                         0);
        json_decref(d);
        memcpy(prev, rows[n].hash, sizeof(prev));
        n++;
    }
    sqlite3_finalize(s);
    assert_true(n > 0);
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(
            sqlite3_prepare_v2(db, "UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", -1, &s,
                               NULL),
            SQLITE_OK);
        sqlite3_bind_text(s, 1, rows[i].prev, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, rows[i].hash, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, rows[i].seq);
        assert_int_equal(sqlite3_step(s), SQLITE_DONE);
        sqlite3_finalize(s);
    }
    sqlite3_close(db);
}

/* A checkpoint naming any hash at seq. */
static size_t checkpoint_naming(char *out, size_t cap, unsigned seq, const char *hash)
{
    char payload[160], b64[256];
    int n = snprintf(payload, sizeof(payload), "{\"hash\":\"%s\",\"seq\":%u,\"time\":%d}", hash,
                     seq, T0 + (int)seq);
    assert_true(n > 0 && (size_t)n < sizeof(payload));
    assert_true(jose_b64url_encode(payload, (size_t)n, b64, sizeof(b64)) > 0);
    n = snprintf(out, cap, "%s.%s", KP_AUDIT_HEADER_B64, b64);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

static void test_keeper_refuses_to_sign_a_checkpoint_of_a_rewritten_history(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    char in[CHECKPOINT_MAX], was5[CHN_HASH_HEX + 1], now5[CHN_HASH_HEX + 1];

    /* The honest trail: checkpoints at 3 and 5 sign. */
    size_t len = real_checkpoint(fx, in, sizeof(in), 3);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    len = real_checkpoint(fx, in, sizeof(in), 5);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    chain_hash_at(fx, 5, was5);

    /* Event 2 rewritten and the whole chain rehashed, then new events on top. */
    rewrite_history(fx, 2);
    chain_hash_at(fx, 5, now5);
    assert_string_not_equal(now5, was5);
    len = real_checkpoint(fx, in, sizeof(in), 7);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    /* Nor the rewritten hash at a seq signed before, nor a seq behind it; the same
     * statement as before is signed again (a retry). */
    len = checkpoint_naming(in, sizeof(in), 5, now5);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    len = real_checkpoint(fx, in, sizeof(in), 4);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    len = checkpoint_naming(in, sizeof(in), 5, was5);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    close(fd);

    /* A restarted keeper remembers: its state is its own file, not appliance.db. */
    stop_keeper(fx);
    char path[PATH_MAX + 32];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/keeper", fx->dir);
    assert_int_equal(lstat(path, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode) && (sb.st_mode & 0777) == 0700);
    snprintf(path, sizeof(path), "%s/keeper/state.db", fx->dir);
    assert_int_equal(lstat(path, &sb), 0);
    assert_true(S_ISREG(sb.st_mode) && (sb.st_mode & 077) == 0);
    start_keeper(fx);
    fd = connect_keeper(fx);
    len = real_checkpoint(fx, in, sizeof(in), 8);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(do_ping(fd, b, NULL), SK_OK);
    close(fd);
    free(b);
}

/* The walk starts at the newest checkpoint signed: rows before it are not read again (here
 * they are gone, as a pruned trail's would be), so a checkpoint costs the events since. */
static void test_checkpoints_are_checked_from_the_last_one_signed_not_from_seq_1(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    char in[CHECKPOINT_MAX];
    size_t len = real_checkpoint(fx, in, sizeof(in), 5);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(fx->c.database, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM audit WHERE seq < 5", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    len = real_checkpoint(fx, in, sizeof(in), 9);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    close(fd);
    free(b);
}

/* Cluster mode: each node's keeper has its own state (state_directory) and signs
 * checkpoints on the one shared chain. A keeper whose newest checkpoint is behind those
 * another node's keeper signed since still signs: it walks from its own newest one across
 * every event appended meanwhile, whichever node appended it. */
static void test_a_keeper_signs_after_another_nodes_keeper_signed_later_checkpoints(void **state)
{
    fixture *fx = *state;
    bufs *b = bufs_new();
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    char in[CHECKPOINT_MAX], node_b[CFG_PATH_MAX], path[CFG_PATH_MAX + 32];
    struct stat sb;

    /* Node a's keeper signs at 3. */
    start_keeper(fx);
    int fd = connect_keeper(fx);
    size_t len = real_checkpoint(fx, in, sizeof(in), 3);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    close(fd);
    stop_keeper(fx);

    /* Node b's keeper, its state elsewhere, signs at 5 and 9 on the same chain. */
    path_in(node_b, sizeof(node_b), fx->dir, "node-b");
    assert_int_equal(mkdir(node_b, 0700), 0);
    snprintf(fx->c.state_directory, sizeof(fx->c.state_directory), "%s", node_b);
    start_keeper(fx);
    fd = connect_keeper(fx);
    len = real_checkpoint(fx, in, sizeof(in), 5);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    len = real_checkpoint(fx, in, sizeof(in), 9);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    close(fd);
    stop_keeper(fx);
    snprintf(path, sizeof(path), "%s/keeper/state.db", node_b);
    assert_int_equal(lstat(path, &sb), 0);

    /* Node a's keeper again: its newest is 3, the chain's 9; 12 signs, walked from 3. */
    fx->c.state_directory[0] = '\0';
    start_keeper(fx);
    fd = connect_keeper(fx);
    len = real_checkpoint(fx, in, sizeof(in), 12);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    /* And its own rules still hold: nothing behind its own newest (12). */
    len = real_checkpoint(fx, in, sizeof(in), 10);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    close(fd);
    free(b);
}

/* What a front that owns appliance.db can do to bring a kid back: forget its row and its
 * revocation, and mark it pending. */
static void forge_pending(fixture *fx, const sk_kid *kid, int drop_row)
{
    char hex[2 * SK_KID_LEN + 1], sql[256];
    sk_kid_hex(kid, hex);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(fx->c.database, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (drop_row) {
        snprintf(sql, sizeof(sql),
                 "DELETE FROM revocations WHERE kid = '%s'; DELETE FROM keys WHERE kid = '%s';",
                 hex, hex);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    snprintf(sql, sizeof(sql),
             "INSERT OR IGNORE INTO pending_keys (kid, created_at) VALUES ('%s', 0)", hex);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_keeper_refuses_to_generate_under_a_revoked_kid(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_kid kid, stranger;
    sk_pubkey pub;

    /* A kid the registry never reserved: refused, nothing made. */
    testenv_kid(&stranger);
    assert_int_equal(do_generate(fd, b, &stranger, 2048, &pub), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(do_ping(fd, b, &stranger), SK_ERR_KEY_NOT_FOUND);

    /* A key made, revoked, its object destroyed. */
    create_key(fx, fd, b, &kid, &pub);
    assert_int_equal(reg_revoke(fx->r, &kid, "compromised", T0 + 1, NULL), REG_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kid, NULL), SK_OK);
    /* The registry will not mark it pending; forged as pending beside its revoked row, or
     * with its row and revocation deleted, the keeper still refuses. */
    assert_int_equal(reg_pending_add(fx->r, &kid, T0), REG_ERR_EXISTS);
    forge_pending(fx, &kid, 0);
    assert_int_equal(do_generate(fd, b, &kid, 2048, &pub), SK_ERR_KEY_EXISTS);
    forge_pending(fx, &kid, 1);
    assert_int_equal(do_generate(fd, b, &kid, 2048, &pub), SK_ERR_KEY_EXISTS);
    assert_int_equal(do_ping(fd, b, &kid), SK_ERR_KEY_NOT_FOUND);
    close(fd);

    /* A restarted keeper remembers. */
    stop_keeper(fx);
    start_keeper(fx);
    fd = connect_keeper(fx);
    assert_int_equal(do_generate(fd, b, &kid, 2048, &pub), SK_ERR_KEY_EXISTS);
    /* A kid pending and fresh is made once, and only once. */
    sk_kid fresh;
    testenv_kid(&fresh);
    pend(fx, &fresh);
    assert_int_equal(do_generate(fd, b, &fresh, 2048, &pub), SK_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &fresh, NULL), SK_OK);
    assert_int_equal(do_generate(fd, b, &fresh, 2048, &pub), SK_ERR_KEY_EXISTS);
    close(fd);
    free(b);
}

/* Kids the registry held before the keeper kept its own list (an upgrade): its new state
 * file learns them, so a revoked one is not made again either. */
static void test_a_new_keeper_state_learns_every_kid_the_registry_holds(void **state)
{
    fixture *fx = *state;
    sk_kid old;
    testenv_kid(&old);
    reg_key k;
    memset(&k, 0, sizeof(k));
    k.kid = old;
    k.bits = 2048;
    k.created_at = T0;
    snprintf(k.n_b64, sizeof(k.n_b64), "n");
    snprintf(k.e_b64, sizeof(k.e_b64), "AQAB");
    assert_int_equal(reg_reserve(fx->r), REG_OK);
    assert_int_equal(reg_insert(fx->r, &k), REG_OK);
    assert_int_equal(reg_revoke(fx->r, &old, "old", T0 + 1, NULL), REG_OK);
    start_keeper(fx);
    forge_pending(fx, &old, 1);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_pubkey pub;
    assert_int_equal(do_generate(fd, b, &old, 2048, &pub), SK_ERR_KEY_EXISTS);
    close(fd);
    free(b);
}

/* Runs the keeper with stderr (its log) going to DIR/keeper.log; restore_log puts stderr
 * back and returns the log's text (malloc'd). */
static int log_to_file(fixture *fx, char *path, size_t cap)
{
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    path_in(path, cap, fx->dir, "keeper.log");
    int f = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(f >= 0);
    assert_true(dup2(f, 2) == 2);
    close(f);
    return saved;
}

static char *restore_log(int saved, const char *path)
{
    fflush(stderr);
    assert_true(dup2(saved, 2) == 2);
    close(saved);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *text = calloc(1, 1 << 16);
    assert_non_null(text);
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static unsigned count_of(const char *text, const char *needle)
{
    unsigned n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void test_each_protocol_error_is_logged_as_a_security_event_with_the_peer_pid(void **state)
{
    fixture *fx = *state;
    char path[PATH_MAX + 16], want[128];
    int saved = log_to_file(fx, path, sizeof(path));
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    /* A short one and an unknown op; the connection still serves after each. */
    malformed(fd, b, "K\x01\x00", 3, 0, KPP_ERR_SHORT);
    size_t len = kpp_encode_sessions(b->req, sizeof(b->req));
    b->req[3] = 99;
    malformed(fd, b, b->req, len, 99, KPP_ERR_UNKNOWN_OP);
    sleep_ms(1100); /* a new second: the flood below starts with a full allowance */
    /* A flood: logged within the bound, and the excess counted, not dropped silently. */
    for (int i = 0; i < 40; i++)
        malformed(fd, b, "K\x01\x00", 3, 0, KPP_ERR_SHORT);
    sleep_ms(1100);
    malformed(fd, b, "K\x01\x00", 3, 0, KPP_ERR_SHORT);
    close(fd);
    free(b);
    stop_keeper(fx);
    char *log = restore_log(saved, path);
    snprintf(want, sizeof(want), "signd-keeper: security: keeper protocol error from pid %d: short",
             (int)getpid());
    assert_non_null(strstr(log, want));
    snprintf(want, sizeof(want),
             "signd-keeper: security: keeper protocol error from pid %d: unknown_op (op 99",
             (int)getpid());
    assert_non_null(strstr(log, want));
    unsigned lines = count_of(log, "keeper protocol error from pid");
    assert_true(lines >= 2 + 10 + 1 && lines <= 2 + 2 * 10 + 1);
    assert_non_null(strstr(log, "security: 30 more keeper protocol errors were not logged"));
    free(log);
}

/* A feed-shaped signing input of exactly len bytes (len > the header): the publication
 * header, ".", then base64url characters. */
static size_t feed_input(uint8_t *buf, size_t len)
{
    static const char hdr[] = KP_PUBLISH_HEADER_B64 ".";
    memcpy(buf, hdr, sizeof(hdr) - 1);
    for (size_t i = sizeof(hdr) - 1; i < len; i++)
        buf[i] =
            (uint8_t)("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i % 64]);
    return len;
}

static void
test_publication_key_signs_feeds_of_any_size_in_parts_and_refuses_a_lost_part(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    kp *k = NULL;
    char err[256];
    assert_int_equal(kp_connect(fx->c.keeper_socket, NULL, &k, err, sizeof(err)), SK_OK);
    sk_pubkey pub, audit;
    assert_int_equal(kp_svc_public_key(k, KP_SVC_PUBLISH, &pub), SK_OK);
    assert_int_equal(pub.bits, KP_PUBLISH_BITS);
    assert_int_equal(kp_svc_public_key(k, KP_SVC_AUDIT, &audit), SK_OK);
    assert_true(pub.n_len != audit.n_len || memcmp(pub.n, audit.n, pub.n_len) != 0);

    /* One part, several parts, a last part of every edge length: each verifies. */
    const size_t lens[] = {200,          KPP_PART_LAST,        KPP_PART_LAST + 1,
                           KPP_BODY_MAX, 2 * KPP_BODY_MAX + 7, 1000 * 1000};
    uint8_t *in = malloc(1000 * 1000 + 16);
    assert_non_null(in);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t len = feed_input(in, lens[i]);
        assert_int_equal(kp_svc_sign(k, KP_SVC_PUBLISH, in, len, sig, &sig_len), SK_OK);
        assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
        assert_false(rs256_verifies(&audit, in, len, sig, sig_len));
    }
    /* The publication key signs feeds only: a checkpoint or a token is refused. */
    size_t len = checkpoint_input((char *)in, 1000, 1);
    assert_int_equal(kp_svc_sign(k, KP_SVC_PUBLISH, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    len = feed_input(in, 300);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    in[250] = '.';
    assert_int_equal(kp_svc_sign(k, KP_SVC_PUBLISH, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    kp_close(k);

    /* By hand: a part, then a last part whose total says one part is missing. */
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    kpp_reply r;
    len = feed_input(in, 3000);
    size_t n = kpp_encode_publish_part(b->req, sizeof(b->req), in, 1000);
    assert_int_equal(call(fd, b->req, n, KPP_OP_PUBLISH_PART, b->rep, &r), SK_OK);
    n = kpp_encode_publish_sign(b->req, sizeof(b->req), 3000, in + 2000, 1000);
    assert_int_equal(call(fd, b->req, n, KPP_OP_PUBLISH_SIGN, b->rep, &r), SK_ERR_BAD_ARGUMENT);
    /* The pending input went with the refusal: a whole feed after it signs cleanly. */
    n = kpp_encode_publish_part(b->req, sizeof(b->req), in, 2000);
    assert_int_equal(call(fd, b->req, n, KPP_OP_PUBLISH_PART, b->rep, &r), SK_OK);
    n = kpp_encode_publish_sign(b->req, sizeof(b->req), 3000, in + 2000, 1000);
    assert_int_equal(call(fd, b->req, n, KPP_OP_PUBLISH_SIGN, b->rep, &r), SK_OK);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), 0);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    /* A middle part alone (its first part lost) is not feed-shaped. */
    n = kpp_encode_publish_sign(b->req, sizeof(b->req), 1000, in + 1000, 1000);
    assert_int_equal(call(fd, b->req, n, KPP_OP_PUBLISH_SIGN, b->rep, &r), SK_ERR_BAD_ARGUMENT);
    close(fd);
    free(b);
    free(in);
}

static void test_sign_ping_generate_and_destroy_refuse_the_reserved_kid(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_kid kid = audit_kid();
    sk_pubkey pub, again;
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    sk_key_entry e[8];
    int reserved = 0;

    /* GENERATE cannot make the audit key ahead of the keeper, at a size of its choosing. */
    assert_int_equal(do_generate(fd, b, &kid, 2048, &pub), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 0);
    assert_int_equal(do_audit_pubkey(fd, b, &pub), SK_OK);
    assert_int_equal(do_generate(fd, b, &kid, 4096, &again), SK_ERR_BAD_ARGUMENT);

    /* Even with an active registry row for the reserved kid (which no create can make),
     * SIGN refuses it before the registry is asked, and so does the probe. */
    reg_key row;
    memset(&row, 0, sizeof(row));
    row.kid = kid;
    row.bits = pub.bits;
    row.created_at = T0;
    snprintf(row.label, sizeof(row.label), "impostor");
    snprintf(row.n_b64, sizeof(row.n_b64), "n");
    snprintf(row.e_b64, sizeof(row.e_b64), "AQAB");
    assert_int_equal(reg_reserve(fx->r), REG_OK);
    assert_int_equal(reg_insert(fx->r, &row), REG_OK);
    char in[CHECKPOINT_MAX];
    size_t len = real_checkpoint(fx, in, sizeof(in), 1);
    assert_int_equal(do_sign(fd, b, &kid, in, len, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_sign(fd, b, &kid, "x", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(do_ping(fd, b, &kid), SK_ERR_KEY_NOT_FOUND);

    /* DESTROY refuses it whatever the registry says: active, or revoked. */
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kid, NULL), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(reg_revoke(fx->r, &kid, "retired", T0 + 1, NULL), REG_OK);
    assert_int_equal(do_kid_op(fd, b, KPP_OP_DESTROY, &kid, NULL), SK_ERR_BAD_ARGUMENT);

    /* The key survived it all and still signs checkpoints. */
    assert_int_equal(do_audit_pubkey(fd, b, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 1);
    assert_int_equal(reserved, 1);
    assert_int_equal(do_audit_sign(fd, b, in, len, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));

    /* kp_ refuses the same in remote mode before asking the keeper. */
    kp *k = NULL;
    char err[256];
    assert_int_equal(kp_connect(fx->c.keeper_socket, NULL, &k, err, sizeof(err)), SK_OK);
    assert_int_equal(kp_sign(k, &kid, in, len, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(kp_ping(k, &kid), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(kp_destroy(k, &kid), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(kp_generate(k, &kid, 2048, &again), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(kp_svc_public_key(k, KP_SVC_AUDIT, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    kp_close(k);
    close(fd);
    free(b);
}

/* Runs rec_run and asserts that its log never names the audit key. Its return value. */
static int reconcile_quietly(kp *k, reg *r, rec_report *rep)
{
    char *text = NULL;
    size_t text_len = 0;
    FILE *log = open_memstream(&text, &text_len);
    assert_non_null(log);
    int rc = rec_run(k, r, log, rep);
    fclose(log);
    sk_kid kid = audit_kid();
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(&kid, hex);
    if (text != NULL && strstr(text, hex) != NULL)
        fail_msg("reconcile logged the audit key: %s", text);
    free(text);
    return rc;
}

static void test_reconcile_through_the_keeper_leaves_the_audit_key_alone(void **state)
{
    fixture *fx = *state;
    start_keeper(fx);
    int fd = connect_keeper(fx);
    bufs *b = bufs_new();
    sk_pubkey pub, again, ignored;
    assert_int_equal(do_audit_pubkey(fd, b, &pub), SK_OK);
    sk_kid orphan, kept;
    testenv_kid(&orphan);
    pend(fx, &orphan);
    assert_int_equal(do_generate(fd, b, &orphan, 2048, &ignored), SK_OK);
    /* Its create died before the row: its record is gone (a live one would protect the
     * object from reconcile as a create under way, registry.h reg_kid_orphan). */
    reg_pending_drop(fx->r, &orphan);
    create_key(fx, fd, b, &kept, &ignored);

    kp *k = NULL;
    char err[256];
    assert_int_equal(kp_connect(fx->c.keeper_socket, NULL, &k, err, sizeof(err)), SK_OK);
    rec_report rep;
    assert_int_equal(reconcile_quietly(k, fx->r, &rep), 0);
    assert_int_equal(rep.orphans_destroyed, 1); /* the real orphan, not the audit key */
    assert_int_equal(rep.revoked_destroyed, 0);
    assert_int_equal(rep.marked_broken, 0);
    assert_int_equal(reconcile_quietly(k, fx->r, &rep), 0); /* and again: nothing to do */
    assert_int_equal(rep.orphans_destroyed, 0);
    kp_close(k);

    sk_key_entry e[8];
    int reserved = 0;
    assert_int_equal(do_list(fd, b, e, 8, &reserved), 2); /* the kept key, the audit key */
    assert_int_equal(reserved, 1);
    assert_int_equal(do_audit_pubkey(fd, b, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    assert_int_equal(do_ping(fd, b, &orphan), SK_ERR_KEY_NOT_FOUND);
    close(fd);
    free(b);
}

typedef struct {
    kp *k;
    pthread_barrier_t *go;
    sk_status st;
    sk_pubkey pub;
} inproc_user;

static void *inproc_user_main(void *arg)
{
    inproc_user *u = arg;
    pthread_barrier_wait(u->go);
    u->st = kp_svc_public_key(u->k, KP_SVC_AUDIT, &u->pub);
    kp_thread_done(u->k);
    return NULL;
}

static kp *open_in_process(fixture *fx)
{
    hsm_config hc = {
        .module_path = HSM_DEFAULT_MODULE,
        .token = TESTENV_LABEL,
        .pin_file = fx->c.pin_file,
        .max_sessions = SESSIONS,
    };
    kp *k = NULL;
    char err[512];
    err[0] = '\0';
    sk_status st = kp_open(&hc, &k, err, sizeof(err));
    if (st != SK_OK)
        fprintf(stderr, "kp_open: %s\n", err);
    assert_int_equal(st, SK_OK);
    assert_non_null(k);
    return k;
}

/* No keeper: kp_open in this process, the mode of process_model = single. */
static void test_in_process_audit_key_signs_checkpoints_only_and_reconcile_keeps_it(void **state)
{
    fixture *fx = *state;
    kp *k = open_in_process(fx);
    static bad_input bad[BAD_INPUTS_MAX];
    size_t n_bad = bad_inputs(bad);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    char in[CHECKPOINT_MAX];
    size_t len;
    sk_key_entry e[8];
    size_t count = 0;

    /* Refusals touch nothing. */
    for (size_t i = 0; i < n_bad; i++) {
        sk_status st = kp_svc_sign(k, KP_SVC_AUDIT, bad[i].in, bad[i].len, sig, &sig_len);
        if (st != SK_ERR_BAD_ARGUMENT)
            fail_msg("%s (input %zu): status %s", bad[i].why, i, sk_status_name(st));
    }
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, "", 0, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, NULL, 0, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    len = checkpoint_of_length(in, KP_AUDIT_SIGN_MAX + 1);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(kp_list(k, e, 8, &count), SK_OK);
    assert_int_equal(count, 0);

    /* First use from many threads at once: one key, the same for all. */
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, AUDIT_THREADS);
    inproc_user u[AUDIT_THREADS];
    pthread_t th[AUDIT_THREADS];
    for (int i = 0; i < AUDIT_THREADS; i++) {
        u[i] = (inproc_user){.k = k, .go = &go, .st = SK_ERR_DEVICE};
        assert_int_equal(pthread_create(&th[i], NULL, inproc_user_main, &u[i]), 0);
    }
    for (int i = 0; i < AUDIT_THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    sk_pubkey pub, again;
    assert_int_equal(kp_svc_public_key(k, KP_SVC_AUDIT, &pub), SK_OK);
    assert_audit_shape(&pub);
    for (int i = 0; i < AUDIT_THREADS; i++) {
        assert_int_equal(u[i].st, SK_OK);
        assert_same_pubkey(&u[i].pub, &pub);
    }
    assert_int_equal(kp_list(k, e, 8, &count), SK_OK);
    assert_int_equal(count, 1);
    assert_true(kp_is_reserved(&e[0].kid));

    /* Checkpoints sign and verify; everything else is refused, the key there or not. */
    len = checkpoint_input(in, sizeof(in), 1);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_OK);
    assert_int_equal(sig_len, KP_AUDIT_BITS / 8);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    len = checkpoint_of_length(in, KP_AUDIT_SIGN_MAX);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    for (size_t i = 0; i < n_bad; i++)
        assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, bad[i].in, bad[i].len, sig, &sig_len),
                         SK_ERR_BAD_ARGUMENT);

    /* The reserved kid is nobody's to sign with, probe, make or destroy. */
    sk_kid kid = audit_kid();
    assert_int_equal(kp_sign(k, &kid, in, len, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(kp_ping(k, &kid), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(kp_destroy(k, &kid), SK_ERR_BAD_ARGUMENT);
    assert_int_equal(kp_generate(k, &kid, 2048, &again), SK_ERR_BAD_ARGUMENT);

    /* Reconcile in-process: the orphan goes, the audit key stays. */
    sk_kid orphan;
    testenv_kid(&orphan);
    assert_int_equal(kp_generate(k, &orphan, 2048, &again), SK_OK);
    rec_report rep;
    assert_int_equal(reconcile_quietly(k, fx->r, &rep), 0);
    assert_int_equal(rep.orphans_destroyed, 1);
    assert_int_equal(kp_list(k, e, 8, &count), SK_OK);
    assert_int_equal(count, 1);
    assert_true(kp_is_reserved(&e[0].kid));
    kp_close(k);

    /* Reopened (a restart): the same key, found and not made again. */
    k = open_in_process(fx);
    assert_int_equal(kp_svc_public_key(k, KP_SVC_AUDIT, &again), SK_OK);
    assert_same_pubkey(&again, &pub);
    len = checkpoint_input(in, sizeof(in), 2);
    assert_int_equal(kp_svc_sign(k, KP_SVC_AUDIT, in, len, sig, &sig_len), SK_OK);
    assert_true(rs256_verifies(&pub, in, len, sig, sig_len));
    assert_int_equal(kp_list(k, e, 8, &count), SK_OK);
    assert_int_equal(count, 1);
    kp_close(k);
}

/* The policy alone, no token: exactly checkpoint-shaped inputs pass. */
static void test_audit_input_policy_accepts_exactly_checkpoint_shaped_inputs(void **state)
{
    (void)state;
    static bad_input bad[BAD_INPUTS_MAX];
    size_t n_bad = bad_inputs(bad);
    for (size_t i = 0; i < n_bad; i++)
        if (kp_svc_input_ok(KP_SVC_AUDIT, bad[i].in, bad[i].len))
            fail_msg("accepted %s (input %zu)", bad[i].why, i);
    char in[CHECKPOINT_MAX];
    for (unsigned seq = 1; seq < 2000; seq += 97) {
        size_t len = checkpoint_input(in, sizeof(in), seq);
        assert_true(kp_svc_input_ok(KP_SVC_AUDIT, in, len));
        assert_false(
            kp_svc_input_ok(KP_SVC_AUDIT, in, strlen(KP_AUDIT_HEADER_B64 "."))); /* no payload */
    }
    size_t prefix = strlen(KP_AUDIT_HEADER_B64 ".");
    for (size_t len = prefix + 1; len <= KP_AUDIT_SIGN_MAX; len += 61)
        assert_true(kp_svc_input_ok(KP_SVC_AUDIT, in, checkpoint_of_length(in, len)));
    assert_true(kp_svc_input_ok(KP_SVC_AUDIT, in, checkpoint_of_length(in, KP_AUDIT_SIGN_MAX)));
    assert_false(
        kp_svc_input_ok(KP_SVC_AUDIT, in, checkpoint_of_length(in, KP_AUDIT_SIGN_MAX + 1)));
    /* Every base64url character is allowed in the payload, and nothing else. */
    for (int c = 0; c < 256; c++) {
        size_t len = checkpoint_of_length(in, prefix + 4);
        in[prefix + 1] = (char)c;
        int b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (kp_svc_input_ok(KP_SVC_AUDIT, in, len) != b64)
            fail_msg("byte 0x%02x in the payload: %s", c, b64 ? "refused" : "accepted");
    }
    assert_false(kp_svc_input_ok(KP_SVC_AUDIT, NULL, 10));
    assert_false(kp_svc_input_ok(KP_SVC_AUDIT, in, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_a_generated_key_signs_through_the_socket_and_verifies_with_its_public_key),
        T(test_a_kid_not_active_in_the_registry_is_refused_though_the_token_has_it),
        T(test_key_attrs_reads_back_what_the_token_holds),
        T(test_malformed_requests_get_an_error_reply_and_the_connection_keeps_serving),
        cmocka_unit_test_setup_teardown(
            test_a_connection_beyond_the_limit_is_closed_and_a_freed_slot_is_reused, setup_limited,
            teardown),
        T(test_eight_connections_sign_concurrently_through_the_pool_sessions),
        T(test_generates_run_beside_the_pool_and_release_their_sessions),
        T(test_list_reports_every_key_with_its_halves_and_destroy_removes_them),
        T(test_stop_with_connections_open_returns_and_close_joins_every_thread),
        T(test_stop_before_serve_makes_serve_return_at_once),
        T(test_open_replaces_a_stale_socket_but_never_a_file_or_a_live_keeper),
        T(test_open_fails_with_one_line_for_a_bad_pin_file_or_a_missing_registry),
        T(test_a_peer_of_another_uid_is_refused),
        T(test_audit_pubkey_creates_the_key_once_and_the_same_key_survives_a_restart),
        T(test_concurrent_first_uses_make_a_single_audit_key),
        T(test_audit_sign_signs_checkpoints_that_verify_and_refuses_every_other_input),
        T(test_sign_ping_generate_and_destroy_refuse_the_reserved_kid),
        T(test_publication_key_signs_feeds_of_any_size_in_parts_and_refuses_a_lost_part),
        T(test_reconcile_through_the_keeper_leaves_the_audit_key_alone),
        T(test_in_process_audit_key_signs_checkpoints_only_and_reconcile_keeps_it),
        cmocka_unit_test(test_audit_input_policy_accepts_exactly_checkpoint_shaped_inputs),
        T(test_keeper_refuses_to_sign_a_checkpoint_of_a_rewritten_history),
        T(test_keeper_refuses_to_generate_under_a_revoked_kid),
        T(test_each_protocol_error_is_logged_as_a_security_event_with_the_peer_pid),
        T(test_a_new_keeper_state_learns_every_kid_the_registry_holds),
        T(test_checkpoints_are_checked_from_the_last_one_signed_not_from_seq_1),
        T(test_a_keeper_signs_after_another_nodes_keeper_signed_later_checkpoints),
        /* last: it stops and starts the PostgreSQL server */
        cmocka_unit_test_setup_teardown(
            test_a_cluster_keeper_signs_known_kids_through_a_database_restart, setup_pg, teardown),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
