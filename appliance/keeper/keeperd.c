/* kpd: the keeper process's server. See keeperd.h. */
#include "appliance/keeper/keeperd.h"

#include "appliance/core/audit.h"
#include "appliance/keeper/inproc.h"
#include "appliance/kproto/keeper.h"
#include "appliance/kproto/kproto.h"
#include "appliance/keeper/kstate.h"
#include "appliance/store/registry.h"
#include "appliance/store/sdb.h"
#include "hsm/hsm.h"
#include "jose/jose.h"
#include "base/hex.h"
#include "base/clock.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Entries one LIST scan holds: reconcile's own bound (REC_LIST_MAX), so that whenever the
 * token holds more, the front learns the real total and refuses to reconcile rather than
 * act on a partial view. */
#define KPD_LIST_CAP 8192
#define KPD_BACKLOG 64
#define KPD_PROBE "readyz"
#define KPD_OPEN_TRIES 10 /* token_not_found: 200 ms apart, 2 s in all (kpd_open) */
/* A token shared by a cluster's nodes: token_not_found or device_error, 10 s in all. */
#define KPD_OPEN_TRIES_SHARED 50
/* How long accept waits after running out of file descriptors or memory. */
#define KPD_ACCEPT_PAUSE_NS (100 * 1000 * 1000L)

#define KPD_LOG(...) fprintf(stderr, "signd-keeper: " __VA_ARGS__)

/* One accepted connection. Its requests are served one at a time, each by whichever pool
 * thread epoll hands the connection to (EPOLLONESHOT: armed again only once the reply is
 * sent), or by a thread of its own for a GENERATE. */
typedef struct kpd_conn {
    struct kpd *d;
    int fd;
    pid_t peer_pid; /* SO_PEERCRED at accept: named in the log of each refusal */
    /* Held while a request is served. Only one thread serves a connection at a time
     * (EPOLLONESHOT), so it is never contended: it orders list and pending between the
     * threads that serve the connection in turn, in a way TSan sees (epoll is not). */
    pthread_mutex_t mu;
    struct kpd_conn *next; /* d->conns, under d->mu */
    /* A LIST snapshot: taken at offset 0, served slice by slice, so that the pages of one
     * listing agree even if keys come and go in between. */
    sk_key_entry *list;
    size_t list_total; /* hsm_list's count, which may exceed KPD_LIST_CAP */
    /* A revocation feed's signing input so far (PUBLISH_PART), up to KP_PUBLISH_SIGN_MAX;
     * PUBLISH_SIGN consumes it. */
    uint8_t *pending;
    size_t pending_len;
    /* The GENERATE request its own thread serves (a copy of the datagram). */
    uint8_t *gen_req;
    size_t gen_len;
} kpd_conn;

struct kpd {
    hsm *h;
    char db_path[CFG_PATH_MAX];
    int listen_fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t sock_dev; /* the socket file we bound, so kpd_close unlinks only that one */
    ino_t sock_ino;
    unsigned max_conns;
    /* The front's account when it has its own (kpd_allow_peer); else only our own uid. */
    uid_t peer_uid;
    int has_peer;

    /* The pool: n_pool threads wait in epoll_wait on epfd for a connection with a request
     * (or the end of one) and serve it. One thread per connection cost the split about a
     * tenth of its throughput: under load every signature woke a sleeping thread, and 64
     * threads signing at once contend on the module's and OpenSSL's locks. A few busy
     * threads per CPU find the next request already waiting instead. A GENERATE (hundreds
     * of milliseconds) gets a thread of its own, so that key creation never stalls
     * signing. stop_fd (an eventfd, level-triggered) wakes every pool thread to leave. */
    int epfd;
    int stop_fd;
    pthread_t *pool;
    unsigned n_pool;

    atomic_int stopping;
    pthread_mutex_t mu; /* conns, live, full_logged, gen_running */
    pthread_cond_t gen_done;
    kpd_conn *conns;
    unsigned live;               /* connections open */
    unsigned gen_running;        /* GENERATE threads not finished */
    int full_logged;             /* the limit was logged since a connection last ended */
    long long proto_window_ms;   /* start of the second protocol errors are counted in */
    unsigned proto_logged;       /* lines logged in it */
    unsigned long proto_dropped; /* errors not logged in it */

    /* The active kids, as the registry last said: a sorted array read under active_rw.
     * A SQLite read transaction per signature cost about a third of what the split costs
     * (every lookup takes SQLite's process-wide VFS mutex; one shared reader convoyed, one
     * per connection still cost 3 % of the throughput), so the set is kept in memory and
     * re-read when the file changed: refresh_mu's holder asks the reader for the file's
     * data_version at most every KPD_ACTIVE_CHECK_MS, and at once when a kid is not in the
     * set (a key just created) or is about to be destroyed. */
    pthread_rwlock_t active_rw;
    sk_kid *active; /* sorted by sk_kid_cmp */
    size_t n_active;
    pthread_mutex_t refresh_mu; /* reader, data_version, loaded */
    reg_reader *reader;
    uint64_t data_version;
    int loaded;
    atomic_llong checked_ms; /* CLOCK_MONOTONIC ms of the last data_version check */
    long long read_ms;       /* CLOCK_MONOTONIC ms the set was last read whole, 0: never */
    int shared_db;           /* the registry is on PostgreSQL: KPD_OUTAGE_GRACE_MS applies */

    /* The keeper's own memory (kstate.h), and the newest point of the audit chain it
     * verified and signed: the next checkpoint is checked from there (audit_chain_walk),
     * under cp_mu, so one checkpoint at a time walks. */
    kst *st;
    pthread_mutex_t cp_mu;
    uint64_t cp_seq;
    char cp_hash[CHN_HASH_HEX + 1];

    atomic_int weak_warned; /* a key that is not sign-only was logged (once per process) */
};

/* A key the token would not make sign-only (tpm2-pkcs11 refuses CKA_DECRYPT = FALSE): it
 * is used, its record says so (token_attributes), and the log says it once. */
static void kpd_warn_weak(kpd *d, const sk_kid *kid)
{
    if (atomic_exchange(&d->weak_warned, 1))
        return;
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(kid, hex);
    KPD_LOG("warning: the token holds kid %s as a key that is not sign-only (it could also "
            "decrypt or unwrap; the appliance never asks it to): this module cannot enforce the "
            "restriction, see SECURITY.md; each key's token_attributes says what it holds "
            "(logged once)\n",
            hex);
}

/* One line of what hsm_open found out about the module and the token (hsm_caps), once at
 * start: what an operator needs to know differs from SoftHSM2. */
static void kpd_log_caps(hsm *h)
{
    hsm_caps c;
    hsm_info(h, &c);
    KPD_LOG("token \"%s\" (%s %s; module %s %u.%u, %s): signs with %s; RSA key sizes %u-%u; "
            "PIN length %u-%u; sessions at most %u (token: %lu, read-write %lu, 0: no limit)\n",
            c.label, c.manufacturer, c.model, c.library_manufacturer, c.library_version_major,
            c.library_version_minor, c.library_description,
            c.sign_mechanism == HSM_MECH_SHA256_RSA_PKCS ? "CKM_SHA256_RSA_PKCS"
                                                         : "CKM_RSA_PKCS over a SHA-256 DigestInfo",
            c.rsa_min_bits, c.rsa_max_bits, c.pin_min, c.pin_max, c.max_sessions,
            c.token_max_sessions, c.token_max_rw_sessions);
}

/* One line per re-open of the module (hsm.h, "Re-opening"): rare (tpm2-pkcs11 at its bound
 * on loaded keys, every few dozen keys made), so each is worth a line; a refused one (past
 * HSM_REOPEN_PER_MIN) is logged once for the keeper's life. */
static void kpd_log_reopen(void *arg, unsigned long ckr, sk_status st, unsigned long reopens)
{
    (void)arg;
    if (st == SK_OK)
        KPD_LOG("the token failed with PKCS#11 rv 0x%lx (out of loaded objects): re-opened the "
                "module (%lu re-opens so far)\n",
                ckr, reopens);
    else if (st == SK_ERR_SESSION_COUNT)
        KPD_LOG("the token failed with PKCS#11 rv 0x%lx again: more than %d re-opens in a minute, "
                "the error stands (logged once)\n",
                ckr, HSM_REOPEN_PER_MIN);
    else
        KPD_LOG("re-opening the module after PKCS#11 rv 0x%lx failed: %s (rv 0x%lx)\n", ckr,
                sk_status_name(st), hsm_last_ckr());
}

/* ---- one request ------------------------------------------------------------------------- */

/* A service key's public half, the key made on first use (kp_svc_hsm_public_key). The
 * nodes of a cluster share one token and may all start at the same moment: there the
 * first use runs under a cluster-wide lock (SDB_LOCK_SERVICE_KEYS, a transaction on the
 * shared database that writes nothing), so one keeper generates the key and every other
 * finds it in the token (hsm_lookup looks there on a miss), never two keys under the one
 * kid. One node (SQLite) has one keeper, whose threads the in-process mutex orders. */
/* How long a keeper waits for another node's keeper generating a service key (RSA-3072
 * in a busy token takes seconds). */
#define KPD_SVC_LOCK_MS 30000

static sk_status kpd_svc_public_key(kpd *d, kp_svc svc, sk_pubkey *pub)
{
    sk_kid kid;
    unsigned bits;
    if (kp_svc_params(svc, &kid, &bits) != SK_OK)
        return SK_ERR_BAD_ARGUMENT;
    sk_status st = hsm_public_key(d->h, &kid, pub);
    if (st != SK_ERR_KEY_NOT_FOUND || !sdb_is_postgres(d->db_path))
        return st == SK_ERR_KEY_NOT_FOUND ? kp_svc_hsm_public_key(d->h, svc, pub) : st;
    sdb *db = NULL;
    char err[256];
    if (sdb_open(d->db_path, 0, KPD_SVC_LOCK_MS, &db, err, sizeof(err)) != SDB_OK ||
        sdb_begin_write(db, SDB_LOCK_SERVICE_KEYS, err, sizeof(err)) != SDB_OK) {
        fprintf(stderr, "signd-keeper: service key: cannot take the cluster's lock: %s\n", err);
        sdb_close(db);
        return SK_ERR_DEVICE; /* the caller asks again later: nothing was generated */
    }
    st = kp_svc_hsm_public_key(d->h, svc, pub);
    sdb_rollback(db); /* wrote nothing: ending the transaction releases the lock */
    sdb_close(db);
    return st;
}

/* Re-reads the active set when the file changed since the last look (or was never read).
 * Caller holds refresh_mu. 0, or -1 when the registry cannot be read: the set is then
 * emptied, so that the keeper fails closed; on a cluster node only once the set is
 * KPD_OUTAGE_GRACE_MS old (keeperd.h), so a database restart does not stop minting.
 * force: list the kids even when the version did not move. */
static int kpd_active_refresh_locked(kpd *d, int force)
{
    long long now = clk_now_ms();
    atomic_store(&d->checked_ms, now);
    if (d->reader == NULL && reg_reader_open(d->db_path, &d->reader) != REG_OK)
        goto fail;
    /* The version first: a commit between it and the listing is seen by the listing and
     * read again next time, never missed. */
    uint64_t v = reg_reader_data_version(d->reader);
    if (v == 0)
        goto fail;
    if (d->loaded && v == d->data_version && !force) {
        d->read_ms = now;
        return 0;
    }
    sk_kid *kids = NULL;
    size_t n = 0;
    if (reg_reader_active_kids(d->reader, &kids, &n) != REG_OK)
        goto fail;
    pthread_rwlock_wrlock(&d->active_rw);
    sk_kid *old = d->active;
    d->active = kids;
    d->n_active = n;
    pthread_rwlock_unlock(&d->active_rw);
    free(old);
    d->data_version = v;
    d->loaded = 1;
    d->read_ms = now;
    return 0;
fail:
    /* A reader that failed once is reopened next time (the file may have been replaced,
     * the server restarted). */
    reg_reader_close(d->reader);
    d->reader = NULL;
    d->loaded = 0; /* the next read that succeeds lists the kids again */
    if (d->shared_db && d->read_ms != 0 && now - d->read_ms < KPD_OUTAGE_GRACE_MS)
        return -1; /* the set read before the outage stands, within the grace */
    pthread_rwlock_wrlock(&d->active_rw);
    free(d->active);
    d->active = NULL;
    d->n_active = 0;
    pthread_rwlock_unlock(&d->active_rw);
    return -1;
}

static int kpd_active_has(kpd *d, const sk_kid *kid)
{
    pthread_rwlock_rdlock(&d->active_rw);
    int found = d->n_active > 0 &&
                bsearch(kid, d->active, d->n_active, sizeof(*d->active), sk_kid_cmp) != NULL;
    pthread_rwlock_unlock(&d->active_rw);
    return found;
}

/* 1 when kid is active in the registry, 0 for anything else, a registry that cannot be read
 * included (fail closed). fresh: the answer must hold as of now (a DESTROY); otherwise it
 * may be up to KPD_ACTIVE_CHECK_MS old for a kid that stopped being active (a revocation:
 * the front destroys the revoked key's object right after, and a front that skips that
 * step owns the file anyway, see SECURITY.md), and is always current for a kid that just
 * became active. */
static int kpd_is_active(kpd *d, const sk_kid *kid, int fresh)
{
    if (!fresh && clk_now_ms() - atomic_load(&d->checked_ms) >= KPD_ACTIVE_CHECK_MS &&
        pthread_mutex_trylock(&d->refresh_mu) == 0) {
        kpd_active_refresh_locked(d, 0); /* one thread looks; the others keep signing */
        pthread_mutex_unlock(&d->refresh_mu);
    }
    if (!fresh && kpd_active_has(d, kid))
        return 1;
    /* On PostgreSQL the version moves when another connection's note has reached this
     * one, which may be a moment after the commit that made the kid active (the front
     * answers 201 at its commit): a kid not in the set, or a DESTROY, reads the set
     * itself. SQLite's data_version moves at the commit. */
    pthread_mutex_lock(&d->refresh_mu);
    kpd_active_refresh_locked(d, sdb_is_postgres(d->db_path));
    pthread_mutex_unlock(&d->refresh_mu);
    return kpd_active_has(d, kid);
}

/* The CKR behind st, for an error reply (kproto.h): read right after the hsm call that
 * returned st, before any other call on this thread overwrites it; 0 for success. */
static uint32_t kpd_ckr(sk_status st)
{
    /* CKR values are 32-bit in practice (vendor codes start at 0x80000000); a wider one
     * would be no code a table names, so it is truncated rather than refused. */
    return st == SK_OK ? 0 : (uint32_t)hsm_last_ckr();
}

static size_t kpd_list(kpd_conn *cn, const kpp_request *q, uint8_t *rep, size_t cap)
{
    kpd *d = cn->d;
    if (q->offset == 0 || cn->list == NULL) {
        if (cn->list == NULL) {
            cn->list = calloc(KPD_LIST_CAP, sizeof(*cn->list));
            if (cn->list == NULL)
                return kpp_encode_error(rep, cap, KPP_OP_LIST, SK_ERR_DEVICE,
                                        0); /* not the token */
        }
        sk_status st = hsm_list(d->h, cn->list, KPD_LIST_CAP, &cn->list_total);
        if (st != SK_OK) {
            uint32_t ckr = kpd_ckr(st);
            free(cn->list);
            cn->list = NULL;
            return kpp_encode_error(rep, cap, KPP_OP_LIST, st, ckr);
        }
    }
    size_t have = cn->list_total < KPD_LIST_CAP ? cn->list_total : KPD_LIST_CAP;
    size_t off = q->offset, n = 0;
    if (off < have)
        n = have - off < KPP_LIST_MAX ? have - off : KPP_LIST_MAX;
    uint32_t total = cn->list_total > UINT32_MAX ? UINT32_MAX : (uint32_t)cn->list_total;
    size_t len = kpp_encode_list_reply(rep, cap, total, n ? cn->list + off : NULL, n);
    if (off + n >= have) { /* the last page: the snapshot has served its purpose */
        free(cn->list);
        cn->list = NULL;
    }
    return len;
}

static void kpd_pending_drop(kpd_conn *cn)
{
    free(cn->pending);
    cn->pending = NULL;
    cn->pending_len = 0;
}

/* Appends to the pending feed input: 1, or 0 (and the input dropped) past the bound. */
static int kpd_pending_add(kpd_conn *cn, const uint8_t *part, size_t len)
{
    if (len > KP_PUBLISH_SIGN_MAX - cn->pending_len) {
        kpd_pending_drop(cn);
        return 0;
    }
    if (len == 0)
        return 1;
    uint8_t *p = realloc(cn->pending, cn->pending_len + len);
    if (p == NULL) {
        kpd_pending_drop(cn);
        return 0;
    }
    memcpy(p + cn->pending_len, part, len);
    cn->pending = p;
    cn->pending_len += len;
    return 1;
}

/* The audit key's second check, after kp_svc_input_ok's shape: a checkpoint names the
 * chain's own head as the keeper computes it from the audit table, and never contradicts
 * a checkpoint the keeper signed before. The payload must be {"hash","seq","time"} (hash
 * 64 lowercase hex, seq >= 1, time an integer, nothing else); then either (seq, hash) is
 * one the keeper signed already (a retry: signed again), or seq is past the newest one it
 * signed and hash is what audit_chain_walk computes from there. A front that rewrote the
 * table and recomputed every hash gets a chain that no longer runs from what the keeper
 * signed, and nothing signed. 1 (recorded in kstate before the caller signs), or 0 with
 * why. */
static int kpd_checkpoint_ok(kpd *d, const uint8_t *msg, size_t len, char *why, size_t whylen)
{
    const uint8_t *dot = memchr(msg, '.', len);
    if (dot == NULL) /* kp_svc_input_ok saw to it; checked again rather than assumed */
        return !cfg_errorf(why, whylen, "not a JWS signing input");
    const char *b64 = (const char *)dot + 1;
    size_t b64_len = len - (size_t)(b64 - (const char *)msg);
    uint8_t payload[KP_AUDIT_SIGN_MAX];
    size_t plen = 0;
    if (jose_b64url_decode(b64, b64_len, payload, sizeof(payload), &plen) != 0)
        return !cfg_errorf(why, whylen, "payload is not base64url");
    json_error_t je;
    json_t *p = json_loadb((const char *)payload, plen, JSON_REJECT_DUPLICATES, &je);
    json_t *hj = json_object_get(p, "hash"), *sj = json_object_get(p, "seq"),
           *tj = json_object_get(p, "time");
    const char *hash = json_string_value(hj);
    int shape = json_is_object(p) && json_object_size(p) == 3 && hex_string(hash, CHN_HASH_HEX) &&
                json_is_integer(sj) && json_integer_value(sj) >= 1 && json_is_integer(tj);
    uint64_t seq = shape ? (uint64_t)json_integer_value(sj) : 0;
    char want[CHN_HASH_HEX + 1];
    if (shape)
        memcpy(want, hash, CHN_HASH_HEX + 1);
    json_decref(p);
    if (!shape)
        return !cfg_errorf(why, whylen, "payload is not {\"hash\",\"seq\",\"time\"}");

    int ok = 0;
    char signed_hash[CHN_HASH_HEX + 1], computed[CHN_HASH_HEX + 1];
    pthread_mutex_lock(&d->cp_mu);
    int had = kst_checkpoint_at(d->st, seq, signed_hash);
    if (had < 0) {
        cfg_errorf(why, whylen, "keeper state unreadable");
    } else if (had == 1) {
        ok = strcmp(signed_hash, want) == 0;
        if (!ok)
            cfg_errorf(why, whylen, "seq %" PRIu64 " was signed before with another hash", seq);
    } else if (seq <= d->cp_seq) {
        cfg_errorf(why, whylen,
                   "seq %" PRIu64 " is behind the newest checkpoint signed (%" PRIu64 ")", seq,
                   d->cp_seq);
    } else if (audit_chain_walk(d->db_path, d->cp_seq, d->cp_hash, seq, computed, why, whylen) !=
               0) {
        /* why says where the chain broke */
    } else if (strcmp(computed, want) != 0) {
        cfg_errorf(why, whylen, "hash is not the chain's at seq %" PRIu64, seq);
    } else if (kst_checkpoint_add(d->st, seq, want) != 0) {
        cfg_errorf(why, whylen, "cannot record the checkpoint in the keeper state");
    } else {
        d->cp_seq = seq;
        memcpy(d->cp_hash, want, sizeof(d->cp_hash));
        ok = 1;
    }
    pthread_mutex_unlock(&d->cp_mu);
    return ok;
}

/* May the keeper generate under kid? Only when the registry holds it as pending (a create
 * or rotation reserved it, and it has no row in any state) and the keeper never generated
 * under it nor saw it in the registry (kstate.h): so a revoked, broken or active kid, or
 * one whose row a front deleted, is never made again. The kid is recorded before the
 * caller generates. SK_OK, or the refusal (KEY_EXISTS for a kid that existed,
 * BAD_ARGUMENT for one not pending, DEVICE when a file cannot be read) with why. */
static sk_status kpd_generate_allowed(kpd *d, const sk_kid *kid, char *why, size_t whylen)
{
    int known = kst_kid_known(d->st, kid);
    if (known != 0) {
        cfg_errorf(why, whylen,
                   known > 0 ? "the keeper generated under it before, or the "
                               "registry held it"
                             : "keeper state unreadable");
        return known > 0 ? SK_ERR_KEY_EXISTS : SK_ERR_DEVICE;
    }
    pthread_mutex_lock(&d->refresh_mu);
    reg_status rs = REG_ERR_IO;
    /* A reader that fails is closed and, once, opened again at once: on a cluster node
     * its connection dies with every restart of the database server, and the first create
     * after the server's return must not fail for that. */
    for (int attempt = 0; attempt < 2; attempt++) {
        if (d->reader != NULL || reg_reader_open(d->db_path, &d->reader) == REG_OK)
            rs = reg_reader_pending(d->reader, kid);
        if (rs == REG_OK || rs == REG_ERR_EXISTS || rs == REG_ERR_NOT_FOUND)
            break;
        reg_reader_close(d->reader);
        d->reader = NULL;
        d->loaded = 0; /* the active set's next look lists it again from the new reader */
    }
    pthread_mutex_unlock(&d->refresh_mu);
    if (rs == REG_ERR_EXISTS) {
        cfg_errorf(why, whylen, "the registry has a row for it");
        return SK_ERR_KEY_EXISTS;
    }
    if (rs == REG_ERR_NOT_FOUND) {
        cfg_errorf(why, whylen, "not pending in the registry");
        return SK_ERR_BAD_ARGUMENT;
    }
    if (rs != REG_OK || kst_kid_add(d->st, kid) != 0) {
        cfg_errorf(why, whylen, "registry or keeper state unreadable");
        return SK_ERR_DEVICE;
    }
    return SK_OK;
}

/* Runs a decoded request and writes its reply into rep: the reply's length, 0 only if no
 * reply could be encoded at all. */
static size_t kpd_execute(kpd_conn *cn, const kpp_request *q, uint8_t *rep, size_t cap)
{
    kpd *d = cn->d;
    sk_status st = SK_ERR_DEVICE;
    uint32_t ckr = 0; /* set only right after the hsm call that failed: see kpd_ckr */
    size_t len = 0;
    switch (q->op) {
    case KPP_OP_SIGN: {
        /* The audit key signs checkpoints only (AUDIT_SIGN), whatever the registry says:
         * refused before the registry is even asked. */
        if (kp_is_reserved(&q->kid)) {
            st = SK_ERR_KEY_NOT_FOUND;
            break;
        }
        /* The keeper's own check: the front's word is not enough to sign. */
        if (!kpd_is_active(d, &q->kid, 0)) {
            st = SK_ERR_KEY_NOT_FOUND;
            break;
        }
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        st = hsm_sign_rs256(d->h, &q->kid, q->msg, q->msg_len, sig, &sig_len);
        ckr = kpd_ckr(st);
        if (st == SK_OK)
            len = kpp_encode_sig_reply(rep, cap, KPP_OP_SIGN, sig, sig_len);
        break;
    }
    case KPP_OP_GENERATE: {
        /* The audit key is made by AUDIT_PUBKEY/AUDIT_SIGN, at the keeper's size, only. */
        if (kp_is_reserved(&q->kid)) {
            st = SK_ERR_BAD_ARGUMENT;
            break;
        }
        char why[96];
        if ((st = kpd_generate_allowed(d, &q->kid, why, sizeof(why))) != SK_OK) {
            char hex[2 * SK_KID_LEN + 1];
            sk_kid_hex(&q->kid, hex);
            KPD_LOG("security: refused to generate kid %s for pid %d: %s\n", hex, (int)cn->peer_pid,
                    why);
            break;
        }
        sk_pubkey pub;
        hsm_attrs attrs;
        st = hsm_generate_attrs(d->h, &q->kid, q->bits, &attrs);
        if (st == SK_ERR_KEY_NOT_FOUND) {
            /* The token lost a handle it had just given (seen once in a thousand concurrent
             * creates on opencryptoki's soft token): whatever it kept under the kid goes,
             * and the kid, still pending, is made once more. */
            hsm_destroy(d->h, &q->kid);
            st = hsm_generate_attrs(d->h, &q->kid, q->bits, &attrs);
        }
        ckr = kpd_ckr(st);
        if (st == SK_OK && !attrs.sign_only)
            kpd_warn_weak(d, &q->kid);
        if (st == SK_ERR_KEY_WEAK) {
            char hex[2 * SK_KID_LEN + 1];
            sk_kid_hex(&q->kid, hex);
            KPD_LOG("security: the token made kid %s not sensitive or extractable: destroyed, "
                    "the key is refused\n",
                    hex);
        }
        if (st == SK_OK) {
            st = hsm_public_key(d->h, &q->kid, &pub);
            ckr = kpd_ckr(st); /* the failed call's, not the clean-up's below */
            if (st != SK_OK)
                hsm_destroy(d->h, &q->kid); /* a key we cannot publish must not stay behind */
        }
        if (st == SK_OK)
            len = kpp_encode_generate_reply(rep, cap, &pub, hsm_attrs_bits(&attrs));
        break;
    }
    case KPP_OP_TOKEN_INFO: {
        sk_token_info ti;
        hsm_token_info(d->h, &ti);
        len = kpp_encode_token_info_reply(rep, cap, &ti);
        st = SK_OK;
        break;
    }
    case KPP_OP_KEY_ATTRS: {
        /* Read-only and about the token's own flags: no registry check needed, but the
         * service keys are not the front's to ask about. */
        if (kp_is_reserved(&q->kid)) {
            st = SK_ERR_KEY_NOT_FOUND;
            break;
        }
        hsm_attrs attrs;
        st = hsm_key_attrs(d->h, &q->kid, &attrs);
        ckr = kpd_ckr(st);
        if (st == SK_OK) {
            if (!attrs.sign_only)
                kpd_warn_weak(d, &q->kid);
            len = kpp_encode_attrs_reply(rep, cap, hsm_attrs_bits(&attrs));
        }
        break;
    }
    case KPP_OP_DESTROY:
        /* Destroying is for what the registry no longer lists as active (a revoked key, an
         * orphan of a crash, a key whose row never got written): a front that asks for an
         * active key is wrong or compromised, and the key stays. The audit key has no row
         * and is never destroyed: refused before the registry is asked. */
        if (kp_is_reserved(&q->kid) || kpd_is_active(d, &q->kid, 1)) {
            st = SK_ERR_BAD_ARGUMENT;
        } else {
            st = hsm_destroy(d->h, &q->kid);
            ckr = kpd_ckr(st);
        }
        break;
    case KPP_OP_LIST:
        return kpd_list(cn, q, rep, cap);
    case KPP_OP_PING:
        if (q->has_kid && kp_is_reserved(&q->kid)) {
            st = SK_ERR_KEY_NOT_FOUND; /* the probe would be a non-checkpoint signature */
        } else if (q->has_kid) {
            uint8_t sig[SK_SIG_MAX];
            size_t sig_len;
            st = hsm_sign_rs256(d->h, &q->kid, KPD_PROBE, strlen(KPD_PROBE), sig, &sig_len);
            ckr = kpd_ckr(st);
        } else {
            /* Cheap whatever the token holds: the supervisor's watchdog asks every second. */
            st = hsm_ping(d->h);
            ckr = kpd_ckr(st);
        }
        break;
    case KPP_OP_SESSIONS:
        return kpp_encode_u32_reply(rep, cap, KPP_OP_SESSIONS, hsm_sessions_open(d->h));
    case KPP_OP_REOPENS:
        return kpp_encode_u32_reply(rep, cap, KPP_OP_REOPENS, (uint32_t)hsm_reopens(d->h));
    case KPP_OP_AUDIT_PUBKEY:
    case KPP_OP_PUBLISH_PUBKEY: {
        sk_pubkey pub; /* created on first use */
        st = kpd_svc_public_key(d, q->op == KPP_OP_AUDIT_PUBKEY ? KP_SVC_AUDIT : KP_SVC_PUBLISH,
                                &pub);
        ckr = kpd_ckr(st); /* a valid kp_svc: every failure is a token call's */
        if (st == SK_OK)
            len = kpp_encode_pubkey_reply(rep, cap, q->op, &pub);
        break;
    }
    case KPP_OP_AUDIT_SIGN: {
        /* kp_svc_input_ok, keeper.c's one policy: checkpoint-shaped inputs only. */
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        st = SK_ERR_BAD_ARGUMENT; /* a refused input touches no token: its CKR stays 0 */
        char why[192] = "not checkpoint-shaped";
        if (kp_svc_input_ok(KP_SVC_AUDIT, q->msg, q->msg_len) &&
            kpd_checkpoint_ok(d, q->msg, q->msg_len, why, sizeof(why))) {
            st = kp_svc_hsm_sign(d->h, KP_SVC_AUDIT, q->msg, q->msg_len, sig, &sig_len);
            ckr = kpd_ckr(st);
        } else
            KPD_LOG("security: refused an audit checkpoint from pid %d: %s\n", (int)cn->peer_pid,
                    why);
        if (st == SK_OK)
            len = kpp_encode_sig_reply(rep, cap, KPP_OP_AUDIT_SIGN, sig, sig_len);
        break;
    }
    case KPP_OP_PUBLISH_PART:
        st = kpd_pending_add(cn, q->msg, q->msg_len) ? SK_OK : SK_ERR_BAD_ARGUMENT;
        break;
    case KPP_OP_PUBLISH_SIGN: {
        /* The whole input or nothing: a part lost on the way (a reconnect) shows as a
         * total that does not match, and nothing is signed. */
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        st = SK_ERR_BAD_ARGUMENT;
        if (kpd_pending_add(cn, q->msg, q->msg_len) && cn->pending_len == q->total &&
            kp_svc_input_ok(KP_SVC_PUBLISH, cn->pending, cn->pending_len)) {
            st = kp_svc_hsm_sign(d->h, KP_SVC_PUBLISH, cn->pending, cn->pending_len, sig, &sig_len);
            ckr = kpd_ckr(st);
        }
        kpd_pending_drop(cn);
        if (st == SK_OK)
            len = kpp_encode_sig_reply(rep, cap, KPP_OP_PUBLISH_SIGN, sig, sig_len);
        break;
    }
    }
    if (len != 0)
        return len;
    /* An error, a success with an empty body (DESTROY, PING), or a reply that would not
     * encode (never expected: every hsm value fits its field). */
    if (st == SK_OK && q->op != KPP_OP_DESTROY && q->op != KPP_OP_PING &&
        q->op != KPP_OP_PUBLISH_PART) {
        st = SK_ERR_DEVICE;
        ckr = 0; /* our own encoding failed, not the token */
    }
    if (st == SK_OK)
        return kpp_encode_status(rep, cap, (uint16_t)q->op, SK_OK);
    return kpp_encode_error(rep, cap, (uint16_t)q->op, (uint32_t)st, ckr);
}

/* ---- one connection ---------------------------------------------------------------------- */

/* After recv returned 0: has the peer (or kpd_stop) ended the connection? recv returns 0
 * for an empty datagram too, which is a malformed request (KPP_ERR_SHORT), not the end. */
static int kpd_hung_up(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return 1;
    return n == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* Hands the connection back to the pool for its next request (op: EPOLL_CTL_ADD the first
 * time, EPOLL_CTL_MOD after). 0, or -1. */
static int kpd_arm(kpd_conn *cn, int op)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, .data.ptr = cn};
    return epoll_ctl(cn->d->epfd, op, cn->fd, &ev);
}

static void kpd_conn_free(kpd_conn *cn)
{
    if (cn->fd >= 0)
        close(cn->fd); /* also takes it out of the epoll set */
    free(cn->list);
    kpd_pending_drop(cn);
    free(cn->gen_req);
    pthread_mutex_destroy(&cn->mu);
    free(cn);
}

/* Ends a connection: takes it off d->conns (so kpd_stop no longer sees it), closes and
 * frees it. The caller holds cn->mu and the connection is not armed, so no other thread
 * can reach it. */
static void kpd_conn_end(kpd_conn *cn)
{
    kpd *d = cn->d;
    pthread_mutex_lock(&d->mu);
    for (kpd_conn **p = &d->conns; *p != NULL; p = &(*p)->next) {
        if (*p == cn) {
            *p = cn->next;
            break;
        }
    }
    d->live--;
    d->full_logged = 0;
    pthread_mutex_unlock(&d->mu);
    pthread_mutex_unlock(&cn->mu);
    kpd_conn_free(cn);
}

/* Hands a connection whose request is done back to the pool, or ends it when it cannot be
 * armed again. The caller holds cn->mu. Armed while still held: the next thread to serve
 * it takes cn->mu first, so it sees everything this one did in a way TSan sees too (it
 * does not see through epoll). */
static void kpd_conn_release(kpd_conn *cn)
{
    if (kpd_arm(cn, EPOLL_CTL_MOD) != 0) {
        kpd_conn_end(cn);
        return;
    }
    pthread_mutex_unlock(&cn->mu);
}

/* Sends a reply. 1, or 0 when it could not be sent: the connection is then over. */
static int kpd_reply(kpd_conn *cn, const kpp_request *q, uint32_t bad, const uint8_t *rep,
                     size_t len)
{
    if (len == 0)
        return 0;
    ssize_t sent;
    do
        sent = send(cn->fd, rep, len, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent == (ssize_t)len)
        return 1;
    /* A key made for a front that is gone (killed mid-request, or it gave up waiting) will
     * never get its row, and that front's successor may have reconciled before the key
     * existed: the keeper is the last one who knows. */
    kpp_reply r;
    if (bad == 0 && q->op == KPP_OP_GENERATE &&
        kpp_decode_reply(rep, len, KPP_OP_GENERATE, &r) == 0 && r.status == 0) {
        char hex[2 * SK_KID_LEN + 1];
        sk_kid_hex(&q->kid, hex);
        sk_status st = hsm_destroy(cn->d->h, &q->kid);
        KPD_LOG("kid %s: generated for a front that did not take the answer: %s\n", hex,
                st == SK_OK ? "destroyed" : sk_strerror(st));
    }
    return 0;
}

/* A GENERATE's own thread: serves the request saved in gen_req, then hands the connection
 * back to the pool. Leaves the module (its token session) before it is counted out, so
 * that kpd_close finalises only after it. */
static void *kpd_gen_main(void *arg)
{
    kpd_conn *cn = arg;
    kpd *d = cn->d;
    uint8_t *rep = malloc(KPP_MSG_MAX);
    pthread_mutex_lock(&cn->mu);
    kpp_request q;
    uint16_t echo = 0;
    uint32_t bad = kpp_decode_request(cn->gen_req, cn->gen_len, &q, &echo);
    size_t len = 0;
    if (rep != NULL)
        len = bad != 0 ? kpp_encode_status(rep, KPP_MSG_MAX, echo, bad)
                       : kpd_execute(cn, &q, rep, KPP_MSG_MAX);
    int ok = rep != NULL && kpd_reply(cn, &q, bad, rep, len);
    free(cn->gen_req);
    cn->gen_req = NULL;
    free(rep);
    if (ok)
        kpd_conn_release(cn);
    else
        kpd_conn_end(cn);
    hsm_thread_done(d->h);
    pthread_mutex_lock(&d->mu);
    d->gen_running--;
    pthread_cond_broadcast(&d->gen_done);
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Starts a GENERATE's own thread for the datagram in req. 1, or 0 when no thread could be
 * started (the caller then serves it itself). Called with cn->mu held, which the new
 * thread takes once the caller lets it go. */
static int kpd_gen_start(kpd_conn *cn, const uint8_t *req, size_t len)
{
    kpd *d = cn->d;
    /* Every thread holds a token session: past the bound, the pool thread serves the
     * GENERATE itself (signing on that thread waits; nothing fails). */
    pthread_mutex_lock(&d->mu);
    int room = d->n_pool + d->gen_running < d->max_conns;
    if (room)
        d->gen_running++;
    pthread_mutex_unlock(&d->mu);
    if (!room)
        return 0;
    int rc = ENOMEM;
    cn->gen_req = malloc(len);
    pthread_attr_t a;
    if (cn->gen_req != NULL && (rc = pthread_attr_init(&a)) == 0) {
        memcpy(cn->gen_req, req, len);
        cn->gen_len = len;
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        rc = pthread_create(&t, &a, kpd_gen_main, cn);
        pthread_attr_destroy(&a);
    }
    if (rc == 0)
        return 1;
    free(cn->gen_req);
    cn->gen_req = NULL;
    pthread_mutex_lock(&d->mu);
    d->gen_running--;
    pthread_cond_broadcast(&d->gen_done);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

/* A request the keeper could not decode is a security event: the front never sends one,
 * so whoever did is broken or hostile. One line naming the peer's pid, within
 * KPD_PROTO_LOG_PER_S: a peer that floods malformed requests must not flood the log, so
 * the excess is counted and the count logged with the first error of a later second. */
static void kpd_log_protocol_error(kpd_conn *cn, uint32_t status, uint16_t op, size_t len)
{
    kpd *d = cn->d;
    long long now = clk_now_ms();
    unsigned long dropped = 0;
    pthread_mutex_lock(&d->mu);
    if (now - d->proto_window_ms >= 1000) {
        dropped = d->proto_dropped;
        d->proto_window_ms = now;
        d->proto_logged = 0;
        d->proto_dropped = 0;
    }
    int log = d->proto_logged < KPD_PROTO_LOG_PER_S;
    if (log)
        d->proto_logged++;
    else
        d->proto_dropped++;
    pthread_mutex_unlock(&d->mu);
    if (dropped > 0)
        KPD_LOG("security: %lu more keeper protocol errors were not logged (over %d a second)\n",
                dropped, KPD_PROTO_LOG_PER_S);
    if (log)
        KPD_LOG("security: keeper protocol error from pid %d: %s (op %u, %zu bytes)\n",
                (int)cn->peer_pid, kpp_status_name(status), (unsigned)op, len);
}

/* Serves what epoll found on a connection: one request and its reply, or the end of the
 * connection. req and rep are the pool thread's buffers. */
static void kpd_conn_ready(kpd_conn *cn, uint8_t *req, uint8_t *rep)
{
    pthread_mutex_lock(&cn->mu);
    /* MSG_TRUNC: the real datagram length, so an oversized one is seen as such. */
    ssize_t got;
    do
        got = recv(cn->fd, req, KPP_MSG_MAX + 1, MSG_TRUNC | MSG_DONTWAIT);
    while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        kpd_conn_release(cn);
        return;
    }
    if (got < 0 || (got == 0 && kpd_hung_up(cn->fd))) {
        kpd_conn_end(cn); /* peer closed, kpd_stop, or a failed connection */
        return;
    }
    kpp_request q;
    uint16_t echo = 0;
    uint32_t bad = kpp_decode_request(req, (size_t)got, &q, &echo);
    if (bad != 0)
        kpd_log_protocol_error(cn, bad, echo, (size_t)got);
    if (bad == 0 && q.op == KPP_OP_GENERATE && (size_t)got <= KPP_MSG_MAX &&
        kpd_gen_start(cn, req, (size_t)got)) {
        pthread_mutex_unlock(&cn->mu); /* the GENERATE thread takes it from here */
        return;
    }
    size_t len = bad != 0 ? kpp_encode_status(rep, KPP_MSG_MAX, echo, bad)
                          : kpd_execute(cn, &q, rep, KPP_MSG_MAX);
    if (kpd_reply(cn, &q, bad, rep, len))
        kpd_conn_release(cn);
    else
        kpd_conn_end(cn);
}

static void *kpd_pool_main(void *arg)
{
    kpd *d = arg;
    uint8_t *req = malloc(KPP_MSG_MAX + 1);
    uint8_t *rep = malloc(KPP_MSG_MAX);
    while (req != NULL && rep != NULL) {
        /* One event at a time: each ready connection goes to the first free thread. */
        struct epoll_event ev;
        int n = epoll_wait(d->epfd, &ev, 1, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            KPD_LOG("epoll_wait: %s: a pool thread stops\n", strerror(errno));
            break;
        }
        if (n == 0)
            continue;
        if (ev.data.ptr == NULL)
            break; /* stop_fd: kpd_stop */
        kpd_conn_ready(ev.data.ptr, req, rep);
    }
    free(req);
    free(rep);
    hsm_thread_done(d->h); /* this thread's token session */
    return NULL;
}

/* Refuses a peer of another uid, and one beyond the connection limit; else gives it to the
 * pool. Takes ownership of fd. */
static void kpd_admit(kpd *d, int fd)
{
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || clen != sizeof(cred)) {
        KPD_LOG("refused a connection: cannot read its credentials: %s\n", strerror(errno));
        close(fd);
        return;
    }
    /* With a peer account: it, and root, which could read the token files anyway (the
     * supervisor runs as root then, and may ask the keeper how it is). */
    if (cred.uid != geteuid() && !(d->has_peer && (cred.uid == d->peer_uid || cred.uid == 0))) {
        KPD_LOG("refused a connection from uid %u (pid %d): not uid %u\n", (unsigned)cred.uid,
                (int)cred.pid, d->has_peer ? (unsigned)d->peer_uid : (unsigned)geteuid());
        close(fd);
        return;
    }
    kpd_conn *cn = calloc(1, sizeof(*cn));
    if (cn == NULL) {
        KPD_LOG("refused a connection: out of memory\n");
        close(fd);
        return;
    }
    cn->d = d;
    cn->fd = fd;
    cn->peer_pid = cred.pid;
    pthread_mutex_init(&cn->mu, NULL);
    pthread_mutex_lock(&d->mu);
    if (atomic_load(&d->stopping)) {
        pthread_mutex_unlock(&d->mu);
        kpd_conn_free(cn);
        return;
    }
    if (d->live >= d->max_conns) {
        if (!d->full_logged)
            KPD_LOG("connection limit (%u) reached: closing new connections\n", d->max_conns);
        d->full_logged = 1;
        pthread_mutex_unlock(&d->mu);
        kpd_conn_free(cn);
        return;
    }
    /* Listed before it is armed: once armed, a pool thread may end it at once. Armed with
     * cn->mu held, for the reason kpd_conn_release gives (and d->mu not held: the pool
     * takes them the other way round). */
    cn->next = d->conns;
    d->conns = cn;
    d->live++;
    pthread_mutex_unlock(&d->mu);
    pthread_mutex_lock(&cn->mu);
    int rc = kpd_arm(cn, EPOLL_CTL_ADD);
    int e = errno;
    pthread_mutex_unlock(&cn->mu);
    if (rc == 0)
        return;
    KPD_LOG("refused a connection: epoll_ctl: %s\n", strerror(e));
    pthread_mutex_lock(&cn->mu);
    kpd_conn_end(cn); /* never armed: still ours alone */
}

/* ---- the interface ----------------------------------------------------------------------- */

/* Makes way for our socket at d->path: nothing there, or a socket file no keeper answers
 * on (left by a dead one). Anything else is refused, and so is a live keeper's socket. */
static int kpd_clear_path(kpd *d, const struct sockaddr_un *sa, char *err, size_t errlen)
{
    struct stat sb;
    if (lstat(d->path, &sb) != 0) {
        if (errno == ENOENT)
            return 0;
        return cfg_errorf(err, errlen, "keeper socket %s: %s", d->path, strerror(errno));
    }
    if (!S_ISSOCK(sb.st_mode))
        return cfg_errorf(err, errlen,
                          "keeper socket %s: exists and is not a socket: refusing to "
                          "replace it",
                          d->path);
    int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return cfg_errorf(err, errlen, "socket: %s", strerror(errno));
    int live = connect(probe, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
    int cerr = errno;
    close(probe);
    if (live)
        return cfg_errorf(err, errlen, "keeper socket %s: another keeper is listening on it",
                          d->path);
    if (cerr != ECONNREFUSED)
        return cfg_errorf(err, errlen, "keeper socket %s: cannot tell whether it is stale: %s",
                          d->path, strerror(cerr));
    if (unlink(d->path) != 0 && errno != ENOENT)
        return cfg_errorf(err, errlen, "keeper socket %s: cannot remove the stale socket: %s",
                          d->path, strerror(errno));
    return 0;
}

static int kpd_listen(kpd *d, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, d->path, strlen(d->path) + 1);
    if (kpd_clear_path(d, &sa, err, errlen) != 0)
        return -1;
    d->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (d->listen_fd < 0)
        return cfg_errorf(err, errlen, "socket: %s", strerror(errno));
    /* umask is per process: kpd_open runs at start-up, before any other thread creates
     * files. The chmod below makes the mode certain whatever the umask was. */
    mode_t old = umask(077);
    int rc = bind(d->listen_fd, (const struct sockaddr *)&sa, sizeof(sa));
    int berr = errno;
    umask(old);
    if (rc != 0)
        return cfg_errorf(err, errlen, "keeper socket %s: bind: %s", d->path, strerror(berr));
    struct stat sb;
    if (chmod(d->path, 0600) != 0 || lstat(d->path, &sb) != 0 || !S_ISSOCK(sb.st_mode)) {
        int e = errno;
        unlink(d->path);
        return cfg_errorf(err, errlen, "keeper socket %s: chmod 0600: %s", d->path, strerror(e));
    }
    d->sock_dev = sb.st_dev;
    d->sock_ino = sb.st_ino;
    if (listen(d->listen_fd, KPD_BACKLOG) != 0) {
        int e = errno;
        unlink(d->path);
        return cfg_errorf(err, errlen, "keeper socket %s: listen: %s", d->path, strerror(e));
    }
    return 0;
}

/* Frees what kpd_open made; the socket file only when it is still ours. The pool threads
 * have been joined and no GENERATE thread runs. */
static void kpd_free(kpd *d)
{
    if (d->listen_fd >= 0) {
        close(d->listen_fd);
        struct stat sb;
        if (lstat(d->path, &sb) == 0 && S_ISSOCK(sb.st_mode) && sb.st_dev == d->sock_dev &&
            sb.st_ino == d->sock_ino)
            unlink(d->path);
    }
    while (d->conns != NULL) {
        kpd_conn *cn = d->conns;
        d->conns = cn->next;
        kpd_conn_free(cn);
    }
    hsm_close(d->h);
    reg_reader_close(d->reader);
    kst_close(d->st);
    pthread_mutex_destroy(&d->cp_mu);
    free(d->active);
    free(d->pool);
    if (d->epfd >= 0)
        close(d->epfd);
    if (d->stop_fd >= 0)
        close(d->stop_fd);
    pthread_rwlock_destroy(&d->active_rw);
    pthread_mutex_destroy(&d->refresh_mu);
    pthread_cond_destroy(&d->gen_done);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* Pool threads: a few per CPU, so that one waiting on the module (a lock, a file) leaves
 * work for the others, and never more than the token sessions allow. */
static unsigned kpd_pool_size(unsigned max_sessions)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = KPD_POOL_PER_CPU * (unsigned)(cpus > 0 && cpus < 256 ? cpus : 1);
    if (n > max_sessions)
        n = max_sessions;
    return n;
}

/* Wakes every pool thread to leave (each finishes the request it serves first) and joins
 * them; then waits for the GENERATE threads. After it no thread of ours is in the module. */
static void kpd_pool_stop(kpd *d)
{
    uint64_t one = 1;
    if (d->stop_fd >= 0)
        (void)!write(d->stop_fd, &one, sizeof(one));
    for (unsigned i = 0; i < d->n_pool; i++)
        pthread_join(d->pool[i], NULL);
    d->n_pool = 0;
    pthread_mutex_lock(&d->mu);
    while (d->gen_running > 0)
        pthread_cond_wait(&d->gen_done, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

/* Starts the pool. 0, or -1 (nothing started, err set). */
static int kpd_pool_start(kpd *d, char *err, size_t errlen)
{
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    d->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->epfd < 0 || d->stop_fd < 0)
        return cfg_errorf(err, errlen, "epoll: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->stop_fd, &ev) != 0)
        return cfg_errorf(err, errlen, "epoll_ctl: %s", strerror(errno));
    unsigned want = kpd_pool_size(d->max_conns);
    d->pool = calloc(want, sizeof(*d->pool));
    if (d->pool == NULL)
        return cfg_errorf(err, errlen, "out of memory");
    for (; d->n_pool < want; d->n_pool++) {
        int rc = pthread_create(&d->pool[d->n_pool], NULL, kpd_pool_main, d);
        if (rc != 0) {
            kpd_pool_stop(d);
            return cfg_errorf(err, errlen, "cannot start a keeper thread: %s", strerror(rc));
        }
    }
    return 0;
}

int kpd_open(const cfg *c, kpd **out, char *err, size_t errlen)
{
    if (out == NULL || c == NULL)
        return cfg_errorf(err, errlen, "kpd_open: no configuration or no handle to return");
    *out = NULL;
    kpd *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return cfg_errorf(err, errlen, "out of memory");
    d->listen_fd = -1;
    d->epfd = -1;
    d->stop_fd = -1;
    d->max_conns = cfg_pkcs11_sessions(c);
    atomic_init(&d->stopping, 0);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->gen_done, NULL);
    pthread_rwlock_init(&d->active_rw, NULL);
    pthread_mutex_init(&d->refresh_mu, NULL);
    pthread_mutex_init(&d->cp_mu, NULL);
    atomic_init(&d->checked_ms, 0);
    if (c->keeper_socket[0] == '\0' || strlen(c->keeper_socket) >= sizeof(d->path)) {
        kpd_free(d);
        return cfg_errorf(err, errlen, "keeper socket path missing or longer than %zu bytes",
                          sizeof(d->path) - 1);
    }
    memcpy(d->path, c->keeper_socket, strlen(c->keeper_socket) + 1);
    if (d->max_conns == 0) {
        kpd_free(d);
        return cfg_errorf(err, errlen, "max_pkcs11_sessions allows no connection");
    }

    /* The socket first: a path we may not take, or another keeper alive on it, is found
     * before the module is loaded and the PIN read. Connections queue until kpd_serve. */
    if (kpd_listen(d, err, errlen) != 0) {
        kpd_free(d);
        return -1;
    }
    hsm_config hc = {
        .module_path = c->pkcs11_module[0] ? c->pkcs11_module : NULL,
        .token = c->token,
        .pin_file = c->pin_file,
        /* The pool's threads and the GENERATE threads together (kpd_gen_start). */
        .max_sessions = d->max_conns,
        .on_reopen = kpd_log_reopen,
    };
    if (hsm_mech_parse(c->pkcs11_sign_mechanism, &hc.sign_mechanism) != 0) {
        kpd_free(d);
        return cfg_errorf(err, errlen, "pkcs11_sign_mechanism %s: not a mechanism",
                          c->pkcs11_sign_mechanism);
    }
    unsigned long ckr = 0;
    sk_status st = hsm_open(&hc, &d->h, &ckr);
    /* A token shared by several nodes (cluster mode; SoftHSM2's token directory standing
     * in for a network HSM partition) may read as uninitialised, or fail a read with
     * CKR_GENERAL_ERROR, for a moment while another node's keeper rewrites its files
     * (seen under AddressSanitizer, where starts are slower: three nodes starting at once):
     * look again before giving up (a device error of one node's own token is final).
     */
    int shared = sdb_is_postgres(c->database);
    for (int tries = 0; (st == SK_ERR_TOKEN_NOT_FOUND || (shared && st == SK_ERR_DEVICE)) &&
                        tries < (shared ? KPD_OPEN_TRIES_SHARED : KPD_OPEN_TRIES);
         tries++) {
        struct timespec pause = {0, 200 * 1000 * 1000};
        if (tries == 0)
            KPD_LOG("the token is not there yet (%s): looking again\n", sk_status_name(st));
        nanosleep(&pause, NULL);
        st = hsm_open(&hc, &d->h, &ckr);
    }
    if (st != SK_OK) {
        const char *detail = hsm_open_detail();
        cfg_errorf(err, errlen, "%s: %s%s%s (token %s, module %s, PKCS#11 rv 0x%lx)",
                   sk_status_name(st), sk_strerror(st), *detail ? ": " : "", detail, hc.token,
                   hc.module_path ? hc.module_path : HSM_DEFAULT_MODULE, ckr);
        kpd_free(d);
        return -1;
    }
    kpd_log_caps(d->h);
    /* A token with a session limit below ours (a YubiHSM 2 has 16): connections, pool and
     * GENERATE threads each hold a session, so all of them stay within the token's. */
    hsm_caps caps;
    hsm_info(d->h, &caps);
    if (caps.max_sessions < d->max_conns)
        d->max_conns = caps.max_sessions;
    snprintf(d->db_path, sizeof(d->db_path), "%s", c->database);
    d->shared_db = sdb_is_postgres(d->db_path);
    /* The registry must be readable now, not at the first signature. */
    if (kpd_active_refresh_locked(d, 1) != 0) {
        cfg_errorf(err, errlen, "%s", reg_last_error());
        kpd_free(d);
        return -1;
    }
    /* The keeper's own memory: what it signed and generated (kstate.h). */
    int fresh = 0;
    char state_dir[CFG_PATH_MAX];
    if (cfg_state_dir(c, state_dir, sizeof(state_dir)) != 0) {
        cfg_errorf(err, errlen, "keeper state: state_directory is not set or too long");
        kpd_free(d);
        return -1;
    }
    if (kst_open(state_dir, &d->st, &fresh, err, errlen) != 0 ||
        kst_last_checkpoint(d->st, &d->cp_seq, d->cp_hash) != 0) {
        if (d->st != NULL)
            cfg_errorf(err, errlen, "keeper state: cannot read the last checkpoint");
        kpd_free(d);
        return -1;
    }
    /* A new state file learns every kid the registry holds now, so that no kid made
     * before the keeper kept its own list is ever made again either. */
    if (fresh) {
        sk_kid *all = NULL;
        size_t n = 0;
        int ok =
            reg_reader_all_kids(d->reader, &all, &n) == REG_OK && kst_kids_add(d->st, all, n) == 0;
        free(all);
        if (!ok) {
            cfg_errorf(err, errlen, "keeper state: cannot seed the kids from the registry");
            kpd_free(d);
            return -1;
        }
    }
    if (kpd_pool_start(d, err, errlen) != 0) {
        kpd_free(d);
        return -1;
    }
    *out = d;
    return 0;
}

int kpd_serve(kpd *d)
{
    KPD_LOG("listening on %s (at most %u connections, %u threads)\n", d->path, d->max_conns,
            d->n_pool);
    int rc = 0;
    while (!atomic_load(&d->stopping)) {
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            kpd_admit(d, fd);
            continue;
        }
        int e = errno;
        if (atomic_load(&d->stopping))
            break; /* kpd_stop's shutdown makes accept fail (EINVAL) */
        if (e == EINTR || e == ECONNABORTED || e == EPROTO)
            continue;
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
            struct timespec pause = {.tv_nsec = KPD_ACCEPT_PAUSE_NS};
            nanosleep(&pause, NULL);
            continue;
        }
        KPD_LOG("accept on %s: %s: no more connections\n", d->path, strerror(e));
        rc = -1;
        break;
    }
    return rc;
}

void kpd_stop(kpd *d)
{
    if (d == NULL || atomic_exchange(&d->stopping, 1))
        return;
    shutdown(d->listen_fd, SHUT_RDWR); /* wakes accept */
    pthread_mutex_lock(&d->mu);
    /* Each connection's pool thread ends it; one serving a request finishes that first. */
    for (kpd_conn *cn = d->conns; cn != NULL; cn = cn->next)
        shutdown(cn->fd, SHUT_RDWR);
    pthread_mutex_unlock(&d->mu);
}

void kpd_close(kpd *d)
{
    if (d == NULL)
        return;
    kpd_stop(d); /* a no-op after kpd_stop; else no thread may linger in the module */
    kpd_pool_stop(d);
    kpd_free(d);
}

int kpd_allow_peer(kpd *d, uid_t uid, char *err, size_t errlen)
{
    /* Before kpd_serve: admission reads these without a lock. The socket file's group is
     * its directory's (the data directory is setgid to the group both accounts share), so
     * 0660 lets exactly the two accounts connect, and SO_PEERCRED then the front's. */
    d->peer_uid = uid;
    d->has_peer = 1;
    if (chmod(d->path, 0660) != 0)
        return cfg_errorf(err, errlen, "keeper socket %s: chmod 0660: %s", d->path,
                          strerror(errno));
    return 0;
}
