/* tks: status lists and redeemed jtis (tokstate.h). */
#include "appliance/store/tokstate.h"

#include "appliance/store/chain.h"
#include "appliance/store/sdb.h"
#include "base/signkey.h"
#include "jose/jose.h"
#include "base/hex.h"
#include "base/errbuf.h"
#include "base/lock.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TKS_ERR_MSG_MAX 512
#define TKS_PRUNE_EVERY 60 /* seconds between the prunes redeems do on the side */
/* A list's expires is written ahead by this much when a token outlives it, so that minting
 * costs an fsync at most once an hour per list for that. */
#define TKS_EXPIRES_STEP 3600
/* Lists made before their expiry was recorded: no token lives longer than a year
 * (token_ttl_max's bound), so they are reclaimable a year and a day after the upgrade. */
#define TKS_EXPIRES_UNKNOWN (366 * 86400)

static const char tks_schema_lite[] =
    "CREATE TABLE IF NOT EXISTS token_lists ("
    " list INTEGER PRIMARY KEY,"
    " reserved INTEGER NOT NULL,"
    " expires INTEGER NOT NULL DEFAULT 0," /* no token handed out from it lives past this */
    " epoch INTEGER NOT NULL DEFAULT 0);"  /* times the list was reclaimed */
    "CREATE TABLE IF NOT EXISTS token_revocations ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " list INTEGER NOT NULL,"
    " idx INTEGER NOT NULL,"
    " jti TEXT NOT NULL,"
    " kid TEXT NOT NULL,"
    " revoked_at INTEGER NOT NULL,"
    " UNIQUE (list, idx));"
    "CREATE TABLE IF NOT EXISTS token_redeemed ("
    " jti TEXT PRIMARY KEY,"
    " exp INTEGER NOT NULL,"
    " redeemed_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS token_redeemed_exp ON token_redeemed (exp);"
    /* The key of the revocable jtis' MAC: made once, kept with the state it protects. */
    "CREATE TABLE IF NOT EXISTS token_secret ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " mac_key BLOB NOT NULL);";

/* The same tables on PostgreSQL, shared by every node. The revocation seq comes from the
 * counter row token_counters('revocation_seq'), raised under SDB_LOCK_TOKENS: no gap, no
 * reuse, in commit order. */
static const char tks_schema_pg[] =
    "CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS token_lists ("
    " list BIGINT PRIMARY KEY,"
    " reserved BIGINT NOT NULL,"
    " expires BIGINT NOT NULL DEFAULT 0,"
    " epoch BIGINT NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS token_revocations ("
    " seq BIGINT PRIMARY KEY,"
    " list BIGINT NOT NULL,"
    " idx BIGINT NOT NULL,"
    " jti TEXT NOT NULL,"
    " kid TEXT NOT NULL,"
    " revoked_at BIGINT NOT NULL,"
    " UNIQUE (list, idx));"
    "CREATE TABLE IF NOT EXISTS token_redeemed ("
    " jti TEXT PRIMARY KEY,"
    " exp BIGINT NOT NULL,"
    " redeemed_at BIGINT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS token_redeemed_exp ON token_redeemed (exp);"
    "CREATE TABLE IF NOT EXISTS token_secret ("
    " id BIGINT PRIMARY KEY CHECK (id = 1),"
    " mac_key BYTEA NOT NULL);"
    "CREATE TABLE IF NOT EXISTS token_counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);"
    "INSERT INTO token_counters (name, value) VALUES ('revocation_seq', 0)"
    " ON CONFLICT (name) DO NOTHING;"
    "INSERT INTO schema_versions (store, version) VALUES ('tokstate', 1)"
    " ON CONFLICT (store) DO NOTHING;";

typedef struct {
    uint8_t *bits;     /* TKS_LIST_BYTES */
    uint32_t reserved; /* in the database: end of the last block any node reserved */
    uint64_t revoked;
    int64_t expires; /* on disk: every token handed out from the list expires by then */
    uint32_t epoch;  /* on disk: reclaims so far; in the MAC of the list's jtis */
} tks_list;

/* One redeem waiting for a group commit; lives on its caller's stack until done. */
/* A block of status indexes this node hands out from memory: [next, end) of list, reserved
 * in the database at the list's epoch. Empty when next == end. */
typedef struct {
    uint32_t list, next, end, epoch;
} tks_block;

typedef struct tks_waiter {
    const char *jti;
    const char *kid;
    char row_key[TKS_KID_HEX + 1 + TKS_JTI_MAX + 1]; /* "<kid>:<jti>", or the jti alone */
    int64_t exp;
    int64_t now;
    char actor[CHN_ACTOR_MAX];
    tks_status result;
    int done;
    struct tks_waiter *next;
} tks_waiter;

struct tks {
    char path[PATH_MAX];
    sdb *db; /* write_mu */
    pthread_mutex_t assign_mu, write_mu, batch_mu;
    pthread_cond_t batch_cv;
    pthread_rwlock_t mirror_rw;
    /* Mirror (mirror_rw, changed only with write_mu held too): the database's lists and
     * revocations, as of this node's last transaction on them or tks_refresh. */
    tks_list lists[TKS_LISTS_MAX];
    uint32_t n_lists;
    tks_revocation *revs; /* ordered by seq */
    size_t n_revs, cap_revs;
    atomic_uint_fast64_t generation;
    /* assign_mu: this node's own blocks, the one indexes are handed out from and the next,
     * reserved ahead (tks_reserve_ahead). Other nodes have theirs: blocks are reserved in
     * the database under SDB_LOCK_TOKENS, so no two overlap. */
    tks_block blk, ahead;
    /* assign_mu: a thread is reserving the next block with assign_mu released;
     * reserve_cv is broadcast when it is done. */
    int reserving;
    pthread_cond_t reserve_cv;
    /* Group commit (batch_mu). */
    tks_waiter *queue_head, *queue_tail;
    int leading;
    int64_t last_prune;               /* write_mu */
    uint8_t mac_key[TKS_MAC_KEY_LEN]; /* revocable jtis (tks_jti_make); wiped by tks_close */
};

static _Thread_local char tks_errbuf[TKS_ERR_MSG_MAX];

static tks_status tks_fail(const char *path, tks_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a failure for tks_last_error() and stderr, naming the file; returns st. */
static tks_status tks_fail(const char *path, tks_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eb_vset(tks_errbuf, sizeof(tks_errbuf), "token state", path, fmt, ap);
    va_end(ap);
    return st;
}

const char *tks_last_error(void)
{
    return tks_errbuf;
}

int tks_jti_ok(const char *jti)
{
    if (jti == NULL)
        return 0;
    size_t n = 0;
    for (; jti[n] != '\0'; n++) {
        char c = jti[n];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_';
        if (!ok || n >= TKS_JTI_MAX)
            return 0;
    }
    return n > 0;
}

static int tks_kid_ok(const char *kid_hex)
{
    sk_kid k;
    return kid_hex == NULL || sk_kid_parse(kid_hex, &k) == 0;
}

static int tks_bit(const tks_list *l, uint32_t idx)
{
    return (l->bits[idx / 8u] >> (idx % 8u)) & 1u;
}

/* ---- store helpers ---------------------------------------------------------------------- */

/* A store failure: err is "what: the backend's message". */
static tks_status tks_fail_db(const tks *t, const char *err)
{
    return tks_fail(t->path, TKS_ERR_IO, "%s", err);
}

/* Begins a write transaction under SDB_LOCK_TOKENS: every node's token-state writers
 * take turns. Caller holds write_mu. */
static tks_status tks_begin(tks *t)
{
    char err[256];
    return sdb_begin_write(t->db, SDB_LOCK_TOKENS, err, sizeof(err)) == SDB_OK
               ? TKS_OK
               : tks_fail_db(t, err);
}

/* Ends the transaction: COMMIT when st is TKS_OK, else ROLLBACK; returns the outcome. */
static tks_status tks_end(tks *t, tks_status st)
{
    char err[256];
    if (st != TKS_OK) {
        sdb_rollback(t->db);
        return st;
    }
    return sdb_commit(t->db, err, sizeof(err)) == SDB_OK ? TKS_OK : tks_fail_db(t, err);
}

/* Appends an audit event inside the open transaction (chain.h: under SDB_LOCK_AUDIT,
 * after this store's SDB_LOCK_TOKENS). 0, or -1 with err filled. */
static int tks_audit_tx(tks *t, int64_t time, const char *action, const char *kid, json_t *d,
                        char *err, size_t errlen)
{
    return chn_append_tx(t->db, time, action, kid, d, err, errlen);
}

/* ---- open and close --------------------------------------------------------------------- */

/* A file from before reclaiming: token_lists gets expires and epoch, the old lists an
 * expiry no token of theirs can outlive. SQLite only: PostgreSQL tables are born new. */
static tks_status tks_migrate_lists(tks *t)
{
    char err[256];
    sdb_stmt *s = NULL;
    if (sdb_prepare(t->db, "SELECT expires, epoch FROM token_lists LIMIT 0", &s, "probe", err,
                    sizeof(err)) == SDB_OK) {
        sdb_finalize(s);
        return TKS_OK;
    }
    char sql[256];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE;"
             "ALTER TABLE token_lists ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;"
             "ALTER TABLE token_lists ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;"
             "UPDATE token_lists SET expires = %lld;"
             "COMMIT;",
             (long long)time(NULL) + TKS_EXPIRES_UNKNOWN);
    if (sdb_exec(t->db, sql, "add expires and epoch to token_lists", err, sizeof(err)) != SDB_OK) {
        sdb_rollback(t->db);
        return tks_fail_db(t, err);
    }
    return TKS_OK;
}

/* Creates the tables when missing: SQLite as it always did (and its migration), PostgreSQL
 * under SDB_LOCK_SCHEMA, since nodes starting at once race on CREATE TABLE IF NOT EXISTS. */
static tks_status tks_schema(tks *t)
{
    char err[256];
    if (sdb_kind_of(t->db) == SDB_SQLITE) {
        if (sdb_exec(t->db, tks_schema_lite, "create tables", err, sizeof(err)) != SDB_OK ||
            chn_schema(t->db, err, sizeof(err)) != 0)
            return tks_fail_db(t, err);
        return tks_migrate_lists(t);
    }
    if (sdb_begin_write(t->db, SDB_LOCK_SCHEMA, err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    if (sdb_exec(t->db, tks_schema_pg, "create tables", err, sizeof(err)) != SDB_OK ||
        chn_schema(t->db, err, sizeof(err)) != 0 || sdb_commit(t->db, err, sizeof(err)) != SDB_OK) {
        sdb_rollback(t->db);
        return tks_fail_db(t, err);
    }
    return TKS_OK;
}

static tks_status tks_push_rev(tks *t, const tks_revocation *r)
{
    if (t->n_revs == t->cap_revs) {
        size_t cap = t->cap_revs ? 2 * t->cap_revs : 64;
        tks_revocation *n = realloc(t->revs, cap * sizeof(*n));
        if (n == NULL)
            return tks_fail(t->path, TKS_ERR_IO, "out of memory");
        t->revs = n;
        t->cap_revs = cap;
    }
    t->revs[t->n_revs++] = *r;
    return TKS_OK;
}

/* One row of token_lists as read by tks_sync_tx. */
typedef struct {
    uint32_t reserved, epoch;
    int64_t expires;
} tks_list_row;

/* Reads token_lists into rows (TKS_LISTS_MAX of them); *n how many. Lists are opened in
 * order and never deleted, so the rows are 0, 1, 2, ... */
static tks_status tks_read_lists(tks *t, tks_list_row *rows, uint32_t *n)
{
    char err[256];
    sdb_stmt *s;
    if (sdb_prepare(t->db, "SELECT list, reserved, expires, epoch FROM token_lists ORDER BY list",
                    &s, "read token_lists", err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    tks_status st = TKS_OK;
    sdb_status rc;
    *n = 0;
    while ((rc = sdb_step(s)) == SDB_ROW) {
        int64_t list = sdb_column_int64(s, 0), reserved = sdb_column_int64(s, 1),
                epoch = sdb_column_int64(s, 3);
        if (list != (int64_t)*n || list >= TKS_LISTS_MAX || reserved <= 0 ||
            reserved > TKS_LIST_SIZE || reserved % TKS_BLOCK != 0 || epoch < 0 ||
            epoch > UINT32_MAX) {
            st = tks_fail(t->path, TKS_ERR_IO, "token_lists row %lld (reserved %lld) is invalid",
                          (long long)list, (long long)reserved);
            break;
        }
        rows[*n].reserved = (uint32_t)reserved;
        rows[*n].expires = sdb_column_int64(s, 2);
        rows[*n].epoch = (uint32_t)epoch;
        (*n)++;
    }
    if (st == TKS_OK && rc != SDB_DONE)
        st = tks_fail(t->path, TKS_ERR_IO, "read token_lists: %s", sdb_stmt_error(s));
    sdb_finalize(s);
    return st;
}

/* Reads the token_revocations rows with seq > after, oldest first, into a malloc'd *out
 * (*n of them), checked against the lists read in the same transaction. */
static tks_status tks_read_revocations(tks *t, uint64_t after, const tks_list_row *lists,
                                       uint32_t n_lists, tks_revocation **out, size_t *n)
{
    char err[256];
    sdb_stmt *s;
    *out = NULL;
    *n = 0;
    if (sdb_prepare(t->db,
                    "SELECT seq, list, idx, jti, kid, revoked_at FROM token_revocations"
                    " WHERE seq > ?1 ORDER BY seq",
                    &s, "read token_revocations", err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    sdb_bind_int64(s, 1, (int64_t)after);
    tks_status st = TKS_OK;
    size_t cap = 0;
    sdb_status rc;
    while ((rc = sdb_step(s)) == SDB_ROW) {
        tks_revocation r = {0};
        int64_t seq = sdb_column_int64(s, 0), list = sdb_column_int64(s, 1),
                idx = sdb_column_int64(s, 2);
        r.revoked_at = sdb_column_int64(s, 5);
        int ok = seq > 0 && list >= 0 && list < (int64_t)n_lists && idx >= 0 &&
                 idx < (int64_t)lists[list].reserved &&
                 sdb_column_copy(s, 3, r.jti, sizeof(r.jti)) == 0 && tks_jti_ok(r.jti) &&
                 sdb_column_copy(s, 4, r.kid, sizeof(r.kid)) == 0 &&
                 (r.kid[0] == '\0' || tks_kid_ok(r.kid));
        if (!ok) {
            st = tks_fail(t->path, TKS_ERR_IO, "token_revocations row %lld is invalid",
                          (long long)seq);
            break;
        }
        r.seq = (uint64_t)seq;
        r.ix.list = (uint32_t)list;
        r.ix.idx = (uint32_t)idx;
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            tks_revocation *g = realloc(*out, cap * sizeof(*g));
            if (g == NULL) {
                st = tks_fail(t->path, TKS_ERR_IO, "out of memory");
                break;
            }
            *out = g;
        }
        (*out)[(*n)++] = r;
    }
    if (st == TKS_OK && rc != SDB_DONE)
        st = tks_fail(t->path, TKS_ERR_IO, "read token_revocations: %s", sdb_stmt_error(s));
    sdb_finalize(s);
    if (st != TKS_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return st;
}

static void tks_set_bit(tks_list *l, uint32_t idx)
{
    l->bits[idx / 8u] |= (uint8_t)(1u << (idx % 8u));
    l->revoked++;
}

/* Brings the mirror up to the database: new lists, every list's reserved end, expiry and
 * epoch, and the revocations it does not have yet (seq above its newest; seqs are handed
 * out under SDB_LOCK_TOKENS, so in commit order and none is missed). A list whose epoch
 * moved was reclaimed by another node: then every revocation is read again. Everything is
 * read and checked first, so a bad row leaves the mirror as it was. Caller holds write_mu,
 * inside a transaction (one consistent moment). *changed (may be NULL): whether a bit, a
 * list or an epoch changed; the generation moves then. */
static tks_status tks_sync_tx(tks *t, int *changed)
{
    tks_list_row *rows = malloc(TKS_LISTS_MAX * sizeof(*rows));
    uint8_t *fresh[TKS_LISTS_MAX];
    uint32_t n = 0, n_fresh = 0;
    if (rows == NULL)
        return tks_fail(t->path, TKS_ERR_IO, "out of memory");
    tks_status st = tks_read_lists(t, rows, &n);
    /* n_lists and the epochs change only under write_mu, which the caller holds. */
    int full = t->n_lists == 0 || n < t->n_lists;
    for (uint32_t i = 0; st == TKS_OK && i < n && i < t->n_lists; i++)
        if (rows[i].epoch != t->lists[i].epoch)
            full = 1;
    for (uint32_t i = t->n_lists; st == TKS_OK && i < n; i++, n_fresh++)
        if ((fresh[n_fresh] = calloc(1, TKS_LIST_BYTES)) == NULL)
            st = tks_fail(t->path, TKS_ERR_IO, "out of memory");
    if (st == TKS_OK && n < t->n_lists)
        st = tks_fail(t->path, TKS_ERR_IO, "token_lists lost lists (%u, had %u)", n, t->n_lists);
    tks_revocation *revs = NULL;
    size_t n_revs = 0;
    uint64_t after = full || t->n_revs == 0 ? 0 : t->revs[t->n_revs - 1].seq;
    if (st == TKS_OK)
        st = tks_read_revocations(t, after, rows, n, &revs, &n_revs);
    if (st == TKS_OK && full && n_revs > t->cap_revs) {
        tks_revocation *g = realloc(t->revs, n_revs * sizeof(*g));
        if (g == NULL)
            st = tks_fail(t->path, TKS_ERR_IO, "out of memory");
        else {
            t->revs = g;
            t->cap_revs = n_revs;
        }
    }
    if (st != TKS_OK) {
        for (uint32_t i = 0; i < n_fresh; i++)
            free(fresh[i]);
        free(rows);
        free(revs);
        return st;
    }

    int moved = n != t->n_lists || n_revs > 0;
    pthread_rwlock_wrlock(&t->mirror_rw);
    for (uint32_t i = 0; i < n; i++) {
        tks_list *l = &t->lists[i];
        if (i >= t->n_lists)
            l->bits = fresh[i - t->n_lists];
        moved |= l->epoch != rows[i].epoch;
        l->reserved = rows[i].reserved;
        l->expires = rows[i].expires;
        l->epoch = rows[i].epoch;
        if (full) {
            memset(l->bits, 0, TKS_LIST_BYTES);
            l->revoked = 0;
        }
    }
    t->n_lists = n;
    if (full)
        t->n_revs = 0;
    for (size_t k = 0; k < n_revs; k++) {
        tks_list *l = &t->lists[revs[k].ix.list];
        if (!tks_bit(l, revs[k].ix.idx))
            tks_set_bit(l, revs[k].ix.idx);
        /* Durable already: should the array not grow, the bit is still set; only the event
         * stream's replay misses the row until the next full read. */
        (void)tks_push_rev(t, &revs[k]);
    }
    pthread_rwlock_unlock(&t->mirror_rw);
    if (moved)
        atomic_fetch_add(&t->generation, 1);
    if (changed != NULL)
        *changed = moved;
    free(rows);
    free(revs);
    return TKS_OK;
}

/* Reads the jti MAC key, making it when there is none: INSERT ... ON CONFLICT DO NOTHING,
 * then read back, in one transaction under SDB_LOCK_TOKENS. Of any number of processes or
 * nodes opening a new database at once, one key is written and every one reads that one. */
static tks_status tks_load_secret(tks *t)
{
    char err[256];
    uint8_t fresh[TKS_MAC_KEY_LEN];
    if (RAND_bytes(fresh, sizeof(fresh)) != 1)
        return tks_fail(t->path, TKS_ERR_IO, "no randomness for the jti key");
    sdb_stmt *s = NULL;
    tks_status st = tks_begin(t);
    if (st == TKS_OK) {
        if (sdb_prepare(t->db,
                        "INSERT INTO token_secret (id, mac_key) VALUES (1, ?1)"
                        " ON CONFLICT (id) DO NOTHING",
                        &s, "write token_secret", err, sizeof(err)) != SDB_OK)
            st = tks_fail_db(t, err);
        else {
            sdb_bind_blob(s, 1, fresh, sizeof(fresh));
            if (sdb_step_done(s, "write token_secret", err, sizeof(err)) != SDB_OK)
                st = tks_fail_db(t, err);
        }
    }
    OPENSSL_cleanse(fresh, sizeof(fresh));
    if (st == TKS_OK) {
        if (sdb_prepare(t->db, "SELECT mac_key FROM token_secret WHERE id = 1", &s,
                        "read token_secret", err, sizeof(err)) != SDB_OK)
            st = tks_fail_db(t, err);
        else {
            if (sdb_step(s) != SDB_ROW || sdb_column_bytes(s, 0) != TKS_MAC_KEY_LEN ||
                sdb_column_blob(s, 0) == NULL)
                st = tks_fail(t->path, TKS_ERR_IO, "token_secret holds no key of %d bytes",
                              TKS_MAC_KEY_LEN);
            else
                memcpy(t->mac_key, sdb_column_blob(s, 0), TKS_MAC_KEY_LEN);
            sdb_finalize(s);
        }
    }
    if (st == TKS_OK || sdb_in_transaction(t->db))
        st = tks_end(t, st);
    return st;
}

/* The first load: one read transaction. */
static tks_status tks_load(tks *t)
{
    char err[256];
    if (sdb_begin_read(t->db, err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    tks_status st = tks_sync_tx(t, NULL);
    if (st != TKS_OK) {
        sdb_rollback(t->db);
        return st;
    }
    if (sdb_commit(t->db, err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    /* What was reserved but not handed out before the last stop is skipped: nobody knows
     * how much of it was handed out. The next block comes from the last list first. */
    t->blk.list = t->ahead.list = t->n_lists > 0 ? t->n_lists - 1 : 0;
    return TKS_OK;
}

tks_status tks_open(const char *path, tks **out)
{
    *out = NULL;
    tks_errbuf[0] = '\0';
    if (path == NULL || path[0] == '\0' || strlen(path) >= PATH_MAX)
        return tks_fail(path, TKS_ERR_INVALID, "path missing or too long");
    tks *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return tks_fail(path, TKS_ERR_IO, "out of memory");
    snprintf(t->path, sizeof(t->path), "%s", path);
    pthread_mutex_init(&t->assign_mu, NULL);
    pthread_mutex_init(&t->write_mu, NULL);
    pthread_mutex_init(&t->batch_mu, NULL);
    pthread_cond_init(&t->batch_cv, NULL);
    pthread_cond_init(&t->reserve_cv, NULL);
    /* Writer-preferring: a stream of status checks must not starve a revocation. */
    lk_rwlock_init(&t->mirror_rw);
    atomic_init(&t->generation, 1);

    char err[256];
    tks_status st = TKS_OK;
    if (sdb_open(path, SDB_OPEN_CREATE, TKS_BUSY_TIMEOUT_MS, &t->db, err, sizeof(err)) != SDB_OK)
        st = tks_fail(path, TKS_ERR_IO, "%s", err);
    if (st == TKS_OK)
        st = tks_schema(t);
    if (st == TKS_OK)
        st = tks_load_secret(t);
    if (st == TKS_OK)
        st = tks_load(t);
    if (st != TKS_OK) {
        tks_close(t);
        return st;
    }
    *out = t;
    return TKS_OK;
}

void tks_close(tks *t)
{
    if (t == NULL)
        return;
    sdb_close(t->db); /* NULL is a no-op */
    for (uint32_t i = 0; i < t->n_lists; i++)
        free(t->lists[i].bits);
    free(t->revs);
    OPENSSL_cleanse(t->mac_key, sizeof(t->mac_key));
    pthread_mutex_destroy(&t->assign_mu);
    pthread_mutex_destroy(&t->write_mu);
    pthread_mutex_destroy(&t->batch_mu);
    pthread_cond_destroy(&t->batch_cv);
    pthread_cond_destroy(&t->reserve_cv);
    pthread_rwlock_destroy(&t->mirror_rw);
    free(t);
}

tks_status tks_refresh(tks *t)
{
    char err[256];
    pthread_mutex_lock(&t->write_mu);
    tks_status st = TKS_OK;
    if (sdb_begin_read(t->db, err, sizeof(err)) != SDB_OK)
        st = tks_fail_db(t, err);
    if (st == TKS_OK) {
        st = tks_sync_tx(t, NULL);
        if (st != TKS_OK)
            sdb_rollback(t->db);
        else if (sdb_commit(t->db, err, sizeof(err)) != SDB_OK)
            st = tks_fail_db(t, err);
    }
    pthread_mutex_unlock(&t->write_mu);
    return st;
}

/* ---- status indexes --------------------------------------------------------------------- */

/* Runs one statement with integer parameters inside the open transaction. */
static tks_status tks_exec_ints(tks *t, const char *sql, const char *what, int n, const int64_t *v)
{
    char err[256];
    sdb_stmt *s;
    if (sdb_prepare(t->db, sql, &s, what, err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    for (int i = 0; i < n; i++)
        sdb_bind_int64(s, i + 1, v[i]);
    return sdb_step_done(s, what, err, sizeof(err)) == SDB_OK ? TKS_OK : tks_fail_db(t, err);
}

/* Reserves this node's next block, in one transaction under SDB_LOCK_TOKENS that reads the
 * lists as the database holds them (tks_sync_tx), so no index is handed out twice by any
 * two nodes. Where from, in this order: the list prefer, while it has room; the first list
 * with room; a new list; once TKS_LISTS_MAX exist, the first list whose every token expired
 * more than TKS_RECLAIM_SLACK before now, reclaimed: its revocations deleted, its epoch
 * (in its jtis' MAC) moved on, one block reserved. Every token from the block expires by
 * expires (the list's expiry only grows). TKS_ERR_FULL when no list has room or is
 * reclaimable. Caller holds neither lock but may hold assign_mu. */
static tks_status tks_reserve(tks *t, uint32_t prefer, int64_t now, int64_t expires, tks_block *b)
{
    uint8_t *bits = calloc(1, TKS_LIST_BYTES); /* for a new list; before, not after, the commit */
    if (bits == NULL)
        return tks_fail(t->path, TKS_ERR_IO, "out of memory");
    pthread_mutex_lock(&t->write_mu);
    tks_status st = tks_begin(t);
    if (st == TKS_OK)
        st = tks_sync_tx(t, NULL);
    enum { TKS_GROW, TKS_NEW, TKS_RECLAIM } how = TKS_GROW;
    uint32_t list = 0, n = t->n_lists;
    if (st == TKS_OK) {
        if (prefer < n && t->lists[prefer].reserved < TKS_LIST_SIZE) {
            list = prefer;
        } else {
            list = n;
            for (uint32_t i = 0; i < n && list == n; i++)
                if (t->lists[i].reserved < TKS_LIST_SIZE)
                    list = i;
            if (list == n && n < TKS_LISTS_MAX) {
                how = TKS_NEW;
            } else if (list == n) {
                how = TKS_RECLAIM;
                st = TKS_ERR_FULL;
                for (uint32_t i = 0; i < n && st == TKS_ERR_FULL; i++)
                    if (t->lists[i].expires + TKS_RECLAIM_SLACK < now) {
                        list = i;
                        st = TKS_OK;
                    }
            }
        }
    }
    int64_t e = 0;
    if (st == TKS_OK) {
        tks_list *l = &t->lists[list];
        e = how == TKS_GROW && l->expires > expires ? l->expires : expires;
        b->list = list;
        uint32_t start = how == TKS_GROW ? l->reserved : 0;
        b->next = start;
        b->end = start + TKS_BLOCK;
        b->epoch = how == TKS_GROW ? l->epoch : how == TKS_NEW ? 0 : l->epoch + 1;
        if (how == TKS_GROW) {
            int64_t v[3] = {b->end, e, list};
            st = tks_exec_ints(t,
                               "UPDATE token_lists SET reserved = ?1, expires = ?2 WHERE list = ?3",
                               "reserve status indexes", 3, v);
        } else if (how == TKS_NEW) {
            int64_t v[3] = {list, b->end, e};
            st = tks_exec_ints(t,
                               "INSERT INTO token_lists (list, reserved, expires, epoch)"
                               " VALUES (?1, ?2, ?3, 0)",
                               "open a status list", 3, v);
        } else {
            int64_t v1[1] = {list}, v3[3] = {b->end, e, list};
            st = tks_exec_ints(t, "DELETE FROM token_revocations WHERE list = ?1",
                               "reclaim a status list", 1, v1);
            if (st == TKS_OK)
                st = tks_exec_ints(t,
                                   "UPDATE token_lists SET reserved = ?1, expires = ?2,"
                                   " epoch = epoch + 1 WHERE list = ?3",
                                   "reclaim a status list", 3, v3);
        }
    }
    if (sdb_in_transaction(t->db))
        st = tks_end(t, st);
    if (st == TKS_OK) {
        pthread_rwlock_wrlock(&t->mirror_rw);
        tks_list *l = &t->lists[list];
        if (how == TKS_NEW) {
            l->bits = bits;
            bits = NULL;
            l->epoch = 0;
            l->revoked = 0;
            t->n_lists = list + 1;
        } else if (how == TKS_RECLAIM) {
            memset(l->bits, 0, TKS_LIST_BYTES);
            l->revoked = 0;
            l->epoch++;
            size_t keep = 0;
            for (size_t k = 0; k < t->n_revs; k++)
                if (t->revs[k].ix.list != list)
                    t->revs[keep++] = t->revs[k];
            t->n_revs = keep;
        }
        l->reserved = b->end;
        l->expires = e;
        pthread_rwlock_unlock(&t->mirror_rw);
        if (how != TKS_GROW) /* a list appeared, or its bits were cleared */
            atomic_fetch_add(&t->generation, 1);
    }
    pthread_mutex_unlock(&t->write_mu);
    free(bits);
    return st;
}

/* Raises the expiry of the block's list to expires, durably, before an index goes to a
 * token expiring after what the list recorded (so the list is not reclaimed under it).
 * Only at the block's epoch: TKS_ERR_NOT_FOUND when another node reclaimed the list since
 * this node reserved the block (its tokens had all expired; the block is void). */
static tks_status tks_write_expires(tks *t, const tks_block *b, int64_t expires)
{
    pthread_mutex_lock(&t->write_mu);
    tks_status st = tks_begin(t);
    if (st == TKS_OK) {
        int64_t v[3] = {expires, b->list, b->epoch};
        st = tks_exec_ints(t,
                           "UPDATE token_lists SET expires = CASE WHEN expires < ?1 THEN ?1"
                           " ELSE expires END WHERE list = ?2 AND epoch = ?3",
                           "record a status list's expiry", 3, v);
        if (st == TKS_OK && sdb_changes(t->db) != 1)
            st = TKS_ERR_NOT_FOUND;
        st = tks_end(t, st);
    }
    if (st == TKS_OK) {
        pthread_rwlock_wrlock(&t->mirror_rw);
        if (t->lists[b->list].expires < expires)
            t->lists[b->list].expires = expires;
        pthread_rwlock_unlock(&t->mirror_rw);
    }
    pthread_mutex_unlock(&t->write_mu);
    return st;
}

/* Called with assign_mu held, right after an index was handed out: once half of the block
 * is gone, reserves the next one with assign_mu released, so the commit stalls only the
 * calling mint, not every other one (they keep handing out the rest of the block). A
 * failure is left to the next crossing, or to tks_assign's own reservation when the block
 * runs out. */
static void tks_reserve_ahead(tks *t, int64_t now)
{
    tks_block *b = &t->blk;
    if (t->reserving || t->ahead.next < t->ahead.end || b->end - b->next > TKS_BLOCK / 2)
        return;
    t->reserving = 1;
    uint32_t prefer = b->list;
    pthread_rwlock_rdlock(&t->mirror_rw);
    int64_t expires = t->lists[prefer].expires;
    pthread_rwlock_unlock(&t->mirror_rw);
    pthread_mutex_unlock(&t->assign_mu);
    tks_block next;
    tks_status st = tks_reserve(t, prefer, now, expires, &next);
    pthread_mutex_lock(&t->assign_mu);
    if (st == TKS_OK)
        t->ahead = next;
    t->reserving = 0;
    pthread_cond_broadcast(&t->reserve_cv);
}

tks_status tks_assign(tks *t, int64_t now, int64_t exp, tks_index *out)
{
    pthread_mutex_lock(&t->assign_mu);
    tks_status st = TKS_OK;
    int64_t expires = exp + TKS_EXPIRES_STEP;
    for (int tries = 0;; tries++) {
        /* The block ran out while its successor is being reserved: wait for that. */
        while (t->reserving && t->blk.next >= t->blk.end && t->ahead.next >= t->ahead.end)
            pthread_cond_wait(&t->reserve_cv, &t->assign_mu);
        if (t->blk.next >= t->blk.end) {
            if (t->ahead.next < t->ahead.end) {
                t->blk = t->ahead;
                t->ahead.next = t->ahead.end;
            } else {
                tks_block b;
                st = tks_reserve(t, t->blk.list, now, expires, &b);
                if (st != TKS_OK)
                    break;
                t->blk = b;
            }
        }
        /* The list must not be reclaimed before this token expires: its expiry in the
         * database covers exp before the index is handed out. */
        pthread_rwlock_rdlock(&t->mirror_rw);
        int64_t recorded = t->lists[t->blk.list].expires;
        uint32_t epoch = t->lists[t->blk.list].epoch;
        pthread_rwlock_unlock(&t->mirror_rw);
        if (exp <= recorded && epoch == t->blk.epoch)
            break;
        st = tks_write_expires(t, &t->blk, expires);
        if (st != TKS_ERR_NOT_FOUND || tries >= 2)
            break;
        /* Another node reclaimed the list under this block: drop it (and what was
         * reserved ahead in the same list) and reserve anew. */
        if (t->ahead.list == t->blk.list)
            t->ahead.next = t->ahead.end;
        t->blk.next = t->blk.end;
        st = TKS_OK;
    }
    if (st == TKS_ERR_NOT_FOUND)
        st =
            tks_fail(t->path, TKS_ERR_IO, "status list %u was reclaimed while in use", t->blk.list);
    if (st == TKS_OK) {
        out->list = t->blk.list;
        out->idx = t->blk.next++;
        tks_reserve_ahead(t, now);
    }
    pthread_mutex_unlock(&t->assign_mu);
    return st;
}

/* Under mirror_rw: TKS_OK when ix was handed out, else why not. */
static tks_status tks_issued(const tks *t, tks_index ix)
{
    if (ix.list >= t->n_lists)
        return TKS_ERR_NOT_FOUND;
    return ix.idx < t->lists[ix.list].reserved ? TKS_OK : TKS_ERR_NOT_ISSUED;
}

/* Under mirror_rw: the revocation of ix, which is revoked. Linear, but only a repeated
 * revocation asks. */
static void tks_find_rev(const tks *t, tks_index ix, tks_revocation *out)
{
    for (size_t i = t->n_revs; i-- > 0;) {
        if (t->revs[i].ix.list == ix.list && t->revs[i].ix.idx == ix.idx) {
            *out = t->revs[i];
            return;
        }
    }
}

/* Inside the revoke transaction: the row, its seq (SQLite: AUTOINCREMENT; PostgreSQL: the
 * counter row, under SDB_LOCK_TOKENS), its audit event and the note to the other nodes. */
static tks_status tks_revoke_rows(tks *t, tks_revocation *r)
{
    char err[256];
    sdb_stmt *s = NULL;
    int pg = sdb_kind_of(t->db) == SDB_POSTGRES;
    int64_t seq = 0;
    sdb_status rc = SDB_OK;
    if (pg) {
        rc = sdb_prepare(t->db,
                         "UPDATE token_counters SET value = value + 1"
                         " WHERE name = 'revocation_seq' RETURNING value",
                         &s, "next token revocation seq", err, sizeof(err));
        if (rc == SDB_OK) {
            if (sdb_step(s) == SDB_ROW)
                seq = sdb_column_int64(s, 0);
            else
                snprintf(err, sizeof(err), "next token revocation seq: %s", sdb_stmt_error(s));
            sdb_finalize(s);
            if (seq <= 0)
                rc = SDB_ERR;
        }
    }
    if (rc == SDB_OK)
        rc = sdb_prepare(t->db,
                         pg ? "INSERT INTO token_revocations (list, idx, jti, kid, revoked_at, seq)"
                              " VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING seq"
                            : "INSERT INTO token_revocations (list, idx, jti, kid, revoked_at)"
                              " VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
                         &s, "insert token revocation", err, sizeof(err));
    if (rc == SDB_OK) {
        sdb_bind_int64(s, 1, r->ix.list);
        sdb_bind_int64(s, 2, r->ix.idx);
        sdb_bind_text(s, 3, r->jti, -1);
        sdb_bind_text(s, 4, r->kid, -1);
        sdb_bind_int64(s, 5, r->revoked_at);
        if (pg)
            sdb_bind_int64(s, 6, seq);
        if (sdb_step(s) == SDB_ROW) {
            seq = sdb_column_int64(s, 0);
            rc = sdb_step(s) == SDB_DONE && seq > 0 ? SDB_OK : SDB_ERR;
        } else {
            rc = SDB_ERR;
        }
        if (rc != SDB_OK)
            snprintf(err, sizeof(err), "insert token revocation: %s", sdb_stmt_error(s));
        sdb_finalize(s);
    }
    if (rc != SDB_OK)
        return tks_fail_db(t, err);
    r->seq = (uint64_t)seq;
    json_t *d = json_pack("{s:s, s:I, s:I, s:I}", "jti", r->jti, "list", (json_int_t)r->ix.list,
                          "idx", (json_int_t)r->ix.idx, "token_seq", (json_int_t)seq);
    int arc = d == NULL ? -1
                        : tks_audit_tx(t, r->revoked_at, "token.revoked", r->kid[0] ? r->kid : NULL,
                                       d, err, sizeof(err));
    if (d == NULL)
        snprintf(err, sizeof(err), "out of memory");
    json_decref(d);
    if (arc != 0)
        return tks_fail_db(t, err);
    char note[32];
    snprintf(note, sizeof(note), "%u/%u", r->ix.list, r->ix.idx);
    if (sdb_notify(t->db, TKS_NOTIFY_CHANNEL, note, err, sizeof(err)) != SDB_OK)
        return tks_fail_db(t, err);
    return TKS_OK;
}

tks_status tks_revoke(tks *t, tks_index ix, const char *jti, const char *kid_hex, int64_t now,
                      tks_revocation *out)
{
    if (!tks_jti_ok(jti) || !tks_kid_ok(kid_hex))
        return TKS_ERR_INVALID;
    tks_revocation r = {.ix = ix, .revoked_at = now};
    snprintf(r.jti, sizeof(r.jti), "%s", jti);
    snprintf(r.kid, sizeof(r.kid), "%s", kid_hex ? kid_hex : "");

    /* Every revocation holds write_mu from its check to its mirror update, and the check
     * runs inside the transaction under SDB_LOCK_TOKENS after the mirror was brought up
     * to the database (another node's reservations and revocations included): what it
     * reads cannot change before it commits, on this node or any other. */
    pthread_mutex_lock(&t->write_mu);
    tks_status st = tks_begin(t);
    if (st == TKS_OK)
        st = tks_sync_tx(t, NULL);
    if (st == TKS_OK) {
        pthread_rwlock_rdlock(&t->mirror_rw);
        st = tks_issued(t, ix);
        if (st == TKS_OK && tks_bit(&t->lists[ix.list], ix.idx)) {
            st = TKS_ERR_REVOKED;
            if (out != NULL)
                tks_find_rev(t, ix, out);
        }
        pthread_rwlock_unlock(&t->mirror_rw);
    }
    if (st == TKS_OK)
        st = tks_revoke_rows(t, &r);
    if (sdb_in_transaction(t->db))
        st = tks_end(t, st);
    if (st == TKS_OK) {
        pthread_rwlock_wrlock(&t->mirror_rw);
        tks_set_bit(&t->lists[ix.list], ix.idx);
        /* Durable already: should the array not grow, the bit is still set and the row is
         * loaded at the next start; only the event stream's replay misses it until then. */
        (void)tks_push_rev(t, &r);
        pthread_rwlock_unlock(&t->mirror_rw);
        atomic_fetch_add(&t->generation, 1);
        if (out != NULL)
            *out = r;
    }
    pthread_mutex_unlock(&t->write_mu);
    return st;
}

int tks_is_revoked(tks *t, tks_index ix)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    int r = tks_issued(t, ix) == TKS_OK && tks_bit(&t->lists[ix.list], ix.idx);
    pthread_rwlock_unlock(&t->mirror_rw);
    return r;
}

uint32_t tks_list_count(tks *t)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    uint32_t n = t->n_lists;
    pthread_rwlock_unlock(&t->mirror_rw);
    return n;
}

/* A reclaimed list's count starts again from 0: the epoch above it keeps the version
 * rising, so a copy signed before the reclaim at the same count is not taken for current. */
static uint64_t tks_version(const tks_list *l)
{
    return (uint64_t)l->epoch << 32 | l->revoked;
}

tks_status tks_list_copy(tks *t, uint32_t list, uint8_t dst[TKS_LIST_BYTES], uint32_t *reserved,
                         uint64_t *revoked)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    tks_status st = list < t->n_lists ? TKS_OK : TKS_ERR_NOT_FOUND;
    if (st == TKS_OK) {
        memcpy(dst, t->lists[list].bits, TKS_LIST_BYTES);
        if (reserved != NULL)
            *reserved = t->lists[list].reserved;
        if (revoked != NULL)
            *revoked = tks_version(&t->lists[list]);
    }
    pthread_rwlock_unlock(&t->mirror_rw);
    return st;
}

uint64_t tks_list_revoked(tks *t, uint32_t list)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    uint64_t n = list < t->n_lists ? tks_version(&t->lists[list]) : 0;
    pthread_rwlock_unlock(&t->mirror_rw);
    return n;
}

uint64_t tks_generation(tks *t)
{
    return atomic_load(&t->generation);
}

uint64_t tks_seq(tks *t)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    uint64_t s = t->n_revs > 0 ? t->revs[t->n_revs - 1].seq : 0;
    pthread_rwlock_unlock(&t->mirror_rw);
    return s;
}

size_t tks_revocations_after(tks *t, uint64_t after, tks_revocation *out, size_t max)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    /* Ordered by seq: binary search for the first above after. */
    size_t lo = 0, hi = t->n_revs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->revs[mid].seq <= after)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t n = t->n_revs - lo < max ? t->n_revs - lo : max;
    if (n > 0)
        memcpy(out, &t->revs[lo], n * sizeof(*out));
    pthread_rwlock_unlock(&t->mirror_rw);
    return n;
}

/* ---- redeemed jtis ---------------------------------------------------------------------- */

/* Under write_mu, inside the open transaction. */
static int tks_prune_tx(tks *t, int64_t now, uint64_t *deleted, char *err, size_t errlen)
{
    sdb_stmt *s;
    if (sdb_prepare(t->db, "DELETE FROM token_redeemed WHERE exp < ?1", &s, "prune redeemed", err,
                    errlen) != SDB_OK)
        return -1;
    sdb_bind_int64(s, 1, now - TKS_PRUNE_SLACK);
    if (sdb_step_done(s, "prune redeemed", err, errlen) != SDB_OK)
        return -1;
    if (deleted != NULL)
        *deleted = (uint64_t)sdb_changes(t->db);
    t->last_prune = now;
    return 0;
}

/* Under write_mu, inside the open transaction: one waiter's row, and its event when it is
 * the first redemption. 0, or -1 with err filled. */
static int tks_redeem_one(tks *t, sdb_stmt *ins, tks_waiter *w, char *err, size_t errlen)
{
    sdb_reset(ins);
    sdb_bind_text(ins, 1, w->row_key, -1);
    sdb_bind_int64(ins, 2, w->exp);
    sdb_bind_int64(ins, 3, w->now);
    if (sdb_step(ins) != SDB_DONE) {
        snprintf(err, errlen, "insert redeemed: %s", sdb_stmt_error(ins));
        return -1;
    }
    /* The one winner, on every node at once: the database's primary key decides, not this
     * node's memory. */
    if (sdb_changes(t->db) == 0) {
        w->result = TKS_ERR_USED;
        return 0;
    }
    chn_set_actor(w->actor[0] ? w->actor : NULL);
    json_t *d = json_pack("{s:s, s:I}", "jti", w->jti, "exp", (json_int_t)w->exp);
    int rc = d == NULL ? -1 : tks_audit_tx(t, w->now, "token.redeemed", w->kid, d, err, errlen);
    if (d == NULL)
        snprintf(err, errlen, "out of memory");
    json_decref(d);
    w->result = TKS_OK;
    return rc;
}

/* Commits every waiter of the batch in one transaction; sets each one's result. */
static void tks_commit_batch(tks *t, tks_waiter *batch)
{
    char err[256], caller[CHN_ACTOR_MAX];
    const char *cur = chn_actor();
    snprintf(caller, sizeof(caller), "%s", strcmp(cur, CHN_SYSTEM) == 0 ? "" : cur);
    sdb_stmt *ins = NULL;
    pthread_mutex_lock(&t->write_mu);
    int rc = sdb_begin_write(t->db, SDB_LOCK_TOKENS, err, sizeof(err)) == SDB_OK ? 0 : -1;
    if (rc == 0)
        rc = sdb_prepare(t->db,
                         "INSERT INTO token_redeemed (jti, exp, redeemed_at) VALUES (?1, ?2, ?3) "
                         "ON CONFLICT (jti) DO NOTHING",
                         &ins, "insert redeemed", err, sizeof(err)) == SDB_OK
                 ? 0
                 : -1;
    for (tks_waiter *w = batch; rc == 0 && w != NULL; w = w->next)
        rc = tks_redeem_one(t, ins, w, err, sizeof(err));
    sdb_finalize(ins);
    if (rc == 0 && batch->now - t->last_prune >= TKS_PRUNE_EVERY)
        rc = tks_prune_tx(t, batch->now, NULL, err, sizeof(err));
    if (rc == 0)
        rc = sdb_commit(t->db, err, sizeof(err)) == SDB_OK ? 0 : -1;
    if (rc != 0) {
        sdb_rollback(t->db);
        tks_fail(t->path, TKS_ERR_IO, "%s", err);
        for (tks_waiter *w = batch; w != NULL; w = w->next)
            w->result = TKS_ERR_IO;
    }
    pthread_mutex_unlock(&t->write_mu);
    chn_set_actor(caller[0] ? caller : NULL);
}

tks_status tks_redeem(tks *t, const char *jti, int64_t exp, const char *kid_hex, int64_t now)
{
    if (!tks_jti_ok(jti) || !tks_kid_ok(kid_hex) || exp < now)
        return TKS_ERR_INVALID;
    tks_waiter w = {.jti = jti, .kid = kid_hex, .exp = exp, .now = now, .result = TKS_ERR_IO};
    /* Scoped by the key: a token signed by one key (crafted through a signer's raw /sign,
     * say) cannot use up the jti of another key's token. */
    if (kid_hex != NULL)
        snprintf(w.row_key, sizeof(w.row_key), "%s:%s", kid_hex, jti);
    else
        snprintf(w.row_key, sizeof(w.row_key), "%s", jti);
    const char *actor = chn_actor();
    snprintf(w.actor, sizeof(w.actor), "%s", strcmp(actor, CHN_SYSTEM) == 0 ? "" : actor);

    pthread_mutex_lock(&t->batch_mu);
    if (t->queue_tail != NULL)
        t->queue_tail->next = &w;
    else
        t->queue_head = &w;
    t->queue_tail = &w;
    while (!w.done) {
        if (t->leading) {
            pthread_cond_wait(&t->batch_cv, &t->batch_mu);
            continue;
        }
        /* Lead: take everything queued (this one included) and commit it while the next
         * arrivals queue up behind. */
        t->leading = 1;
        tks_waiter *batch = t->queue_head;
        t->queue_head = t->queue_tail = NULL;
        pthread_mutex_unlock(&t->batch_mu);
        tks_commit_batch(t, batch);
        pthread_mutex_lock(&t->batch_mu);
        for (tks_waiter *b = batch, *next; b != NULL; b = next) {
            next = b->next; /* b's owner may return as soon as done is seen */
            b->done = 1;
        }
        t->leading = 0;
        pthread_cond_broadcast(&t->batch_cv);
    }
    pthread_mutex_unlock(&t->batch_mu);
    return w.result;
}

tks_status tks_prune(tks *t, int64_t now, uint64_t *deleted)
{
    char err[256];
    pthread_mutex_lock(&t->write_mu);
    int rc = sdb_begin_write(t->db, SDB_LOCK_TOKENS, err, sizeof(err)) == SDB_OK ? 0 : -1;
    if (rc == 0)
        rc = tks_prune_tx(t, now, deleted, err, sizeof(err));
    if (rc == 0)
        rc = sdb_commit(t->db, err, sizeof(err)) == SDB_OK ? 0 : -1;
    if (rc != 0)
        sdb_rollback(t->db);
    pthread_mutex_unlock(&t->write_mu);
    return rc == 0 ? TKS_OK : tks_fail(t->path, TKS_ERR_IO, "%s", err);
}

tks_status tks_redeemed_count(tks *t, uint64_t *count)
{
    char err[256];
    sdb_stmt *s;
    pthread_mutex_lock(&t->write_mu);
    int rc = sdb_prepare(t->db, "SELECT count(*) FROM token_redeemed", &s, "count redeemed", err,
                         sizeof(err)) == SDB_OK
                 ? 0
                 : -1;
    if (rc == 0) {
        if (sdb_step(s) == SDB_ROW)
            *count = (uint64_t)sdb_column_int64(s, 0);
        else {
            snprintf(err, sizeof(err), "count redeemed: %s", sdb_stmt_error(s));
            rc = -1;
        }
        sdb_finalize(s);
    }
    pthread_mutex_unlock(&t->write_mu);
    return rc == 0 ? TKS_OK : tks_fail(t->path, TKS_ERR_IO, "%s", err);
}

/* ---- revocable jtis ------------------------------------------------------------------- */

/* The epoch of list (0 for one that does not exist). */
static uint32_t tks_epoch(tks *t, uint32_t list)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    uint32_t e = list < t->n_lists ? t->lists[list].epoch : 0;
    pthread_rwlock_unlock(&t->mirror_rw);
    return e;
}

/* The bytes a revocable jti encodes: list, idx (big-endian) and owner, then their MAC. */
#define TKS_JTI_BODY (4 + 4 + TKS_OWNER_BYTES)
#define TKS_JTI_BYTES (TKS_JTI_BODY + TKS_JTI_MAC_LEN)

/* The MAC of a jti's body, under the epoch of its list: after a reclaim (tks_reclaim) the
 * jtis of the list's earlier tokens no longer verify. Epoch 0 is the body alone, as before
 * lists were reclaimed, so those jtis stay valid. */
static void tks_jti_mac(const tks *t, const uint8_t body[TKS_JTI_BODY], uint32_t epoch,
                        uint8_t mac[TKS_JTI_MAC_LEN])
{
    uint8_t full[EVP_MAX_MD_SIZE], in[TKS_JTI_BODY + 4];
    unsigned len = 0;
    memcpy(in, body, TKS_JTI_BODY);
    for (int i = 0; i < 4; i++)
        in[TKS_JTI_BODY + i] = (uint8_t)(epoch >> (24 - 8 * i));
    HMAC(EVP_sha256(), t->mac_key, sizeof(t->mac_key), in, TKS_JTI_BODY + (epoch ? 4 : 0), full,
         &len);
    memcpy(mac, full, TKS_JTI_MAC_LEN);
    OPENSSL_cleanse(full, sizeof(full));
}

tks_status tks_jti_make(tks *t, tks_index ix, const char *owner_hex, char out[TKS_JTI_MAX + 1])
{
    uint8_t b[TKS_JTI_BYTES] = {0};
    if (ix.list >= TKS_LISTS_MAX || ix.idx >= TKS_LIST_SIZE)
        return TKS_ERR_INVALID;
    for (int i = 0; i < 4; i++) {
        b[i] = (uint8_t)(ix.list >> (24 - 8 * i));
        b[4 + i] = (uint8_t)(ix.idx >> (24 - 8 * i));
    }
    if (owner_hex != NULL && owner_hex[0] != '\0' &&
        hex_decode(owner_hex, strlen(owner_hex), b + 8, TKS_OWNER_BYTES) != 0)
        return TKS_ERR_INVALID;
    tks_jti_mac(t, b, tks_epoch(t, ix.list), b + TKS_JTI_BODY);
    out[0] = TKS_JTI_REVOCABLE_PREFIX;
    if (jose_b64url_encode(b, sizeof(b), out + 1, TKS_JTI_MAX) != TKS_JTI_REVOCABLE_LEN - 1)
        return TKS_ERR_INVALID;
    out[TKS_JTI_REVOCABLE_LEN] = '\0';
    return TKS_OK;
}

tks_status tks_jti_read(tks *t, const char *jti, tks_index *ix,
                        char owner_hex[2 * TKS_OWNER_BYTES + 1])
{
    if (!tks_jti_ok(jti))
        return TKS_ERR_INVALID;
    uint8_t b[TKS_JTI_BYTES + 3];
    size_t n = 0;
    if (strlen(jti) != TKS_JTI_REVOCABLE_LEN || jti[0] != TKS_JTI_REVOCABLE_PREFIX ||
        jose_b64url_decode(jti + 1, TKS_JTI_REVOCABLE_LEN - 1, b, sizeof(b), &n) != 0 ||
        n != TKS_JTI_BYTES)
        return TKS_ERR_NOT_FOUND;
    uint8_t mac[TKS_JTI_MAC_LEN];
    uint32_t list = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    tks_jti_mac(t, b, tks_epoch(t, list), mac);
    if (CRYPTO_memcmp(mac, b + TKS_JTI_BODY, TKS_JTI_MAC_LEN) != 0)
        return TKS_ERR_NOT_FOUND;
    ix->list = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    ix->idx = (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7];
    int owned = 0;
    for (int i = 0; i < TKS_OWNER_BYTES; i++) {
        owned |= b[8 + i];
        snprintf(owner_hex + 2 * i, 3, "%02x", b[8 + i]);
    }
    if (!owned)
        owner_hex[0] = '\0';
    return TKS_OK;
}
