/* tks: status lists and redeemed jtis (tokstate.h). */
#include "appliance/store/tokstate.h"

#include "appliance/store/chain.h"
#include "appliance/store/db.h"
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

static const char tks_schema_sql[] =
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

typedef struct {
    uint8_t *bits;     /* TKS_LIST_BYTES */
    uint32_t reserved; /* end of the last block reserved on disk */
    uint64_t revoked;
    int64_t expires; /* on disk: every token handed out from the list expires by then */
    uint32_t epoch;  /* on disk: reclaims so far; in the MAC of the list's jtis */
} tks_list;

/* One redeem waiting for a group commit; lives on its caller's stack until done. */
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
    sqlite3 *db;
    pthread_mutex_t assign_mu, write_mu, batch_mu;
    pthread_cond_t batch_cv;
    pthread_rwlock_t mirror_rw;
    /* Mirror (mirror_rw). n_lists and a list's reserved change only under assign_mu too,
     * so tks_assign reads them without the rwlock. */
    tks_list lists[TKS_LISTS_MAX];
    uint32_t n_lists;
    tks_revocation *revs; /* ordered by seq */
    size_t n_revs, cap_revs;
    atomic_uint_fast64_t generation;
    uint32_t cur;      /* assign_mu: the list indexes are handed out from */
    uint32_t next_idx; /* assign_mu: the next index of list cur */
    /* assign_mu: a thread is writing the next block's reservation with assign_mu released
     * (tks_assign reserves ahead); reserve_cv is broadcast when it is done. */
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

/* ---- open and close --------------------------------------------------------------------- */

/* A file from before reclaiming: token_lists gets expires and epoch, the old lists an
 * expiry no token of theirs can outlive. */
static tks_status tks_migrate_lists(tks *t)
{
    char err[256];
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(t->db, "SELECT expires, epoch FROM token_lists LIMIT 0", -1, &s, NULL) ==
        SQLITE_OK) {
        sqlite3_finalize(s);
        return TKS_OK;
    }
    sqlite3_finalize(s);
    char sql[256];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE;"
             "ALTER TABLE token_lists ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;"
             "ALTER TABLE token_lists ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;"
             "UPDATE token_lists SET expires = %lld;"
             "COMMIT;",
             (long long)time(NULL) + TKS_EXPIRES_UNKNOWN);
    if (db_exec(t->db, sql, "add expires and epoch to token_lists", err, sizeof(err)) != 0) {
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    }
    return TKS_OK;
}

static tks_status tks_load_lists(tks *t)
{
    char err[256];
    sqlite3_stmt *s;
    if (db_prepare(t->db, "SELECT list, reserved, expires, epoch FROM token_lists ORDER BY list",
                   &s, "read token_lists", err, sizeof(err)) != 0)
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    tks_status st = TKS_OK;
    int rc;
    while (st == TKS_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        sqlite3_int64 list = sqlite3_column_int64(s, 0), reserved = sqlite3_column_int64(s, 1);
        /* Lists are opened in order and never deleted, so the rows are 0, 1, 2, ... */
        if (list != (sqlite3_int64)t->n_lists || list >= TKS_LISTS_MAX || reserved <= 0 ||
            reserved > TKS_LIST_SIZE || reserved % TKS_BLOCK != 0) {
            st = tks_fail(t->path, TKS_ERR_IO, "token_lists row %lld (reserved %lld) is invalid",
                          (long long)list, (long long)reserved);
            break;
        }
        tks_list *l = &t->lists[t->n_lists];
        l->bits = calloc(1, TKS_LIST_BYTES);
        if (l->bits == NULL) {
            st = tks_fail(t->path, TKS_ERR_IO, "out of memory");
            break;
        }
        l->reserved = (uint32_t)reserved;
        l->expires = sqlite3_column_int64(s, 2);
        l->epoch = (uint32_t)sqlite3_column_int64(s, 3);
        t->n_lists++;
    }
    if (st == TKS_OK && rc != SQLITE_DONE)
        st = tks_fail(t->path, TKS_ERR_IO, "read token_lists: %s", sqlite3_errmsg(t->db));
    sqlite3_finalize(s);
    /* What was reserved but not handed out before the last stop is skipped: nobody knows
     * how much of it was handed out. */
    t->cur = t->n_lists > 0 ? t->n_lists - 1 : 0;
    t->next_idx = t->n_lists > 0 ? t->lists[t->cur].reserved : 0;
    return st;
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

static tks_status tks_load_revocations(tks *t)
{
    char err[256];
    sqlite3_stmt *s;
    if (db_prepare(
            t->db,
            "SELECT seq, list, idx, jti, kid, revoked_at FROM token_revocations ORDER BY seq", &s,
            "read token_revocations", err, sizeof(err)) != 0)
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    tks_status st = TKS_OK;
    int rc;
    while (st == TKS_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        tks_revocation r = {0};
        sqlite3_int64 seq = sqlite3_column_int64(s, 0), list = sqlite3_column_int64(s, 1),
                      idx = sqlite3_column_int64(s, 2);
        r.revoked_at = sqlite3_column_int64(s, 5);
        int ok = seq > 0 && list >= 0 && list < (sqlite3_int64)t->n_lists && idx >= 0 &&
                 idx < (sqlite3_int64)t->lists[list].reserved &&
                 db_col_text(s, 3, r.jti, sizeof(r.jti)) == 0 && tks_jti_ok(r.jti) &&
                 db_col_text(s, 4, r.kid, sizeof(r.kid)) == 0 &&
                 (r.kid[0] == '\0' || tks_kid_ok(r.kid));
        if (!ok) {
            st = tks_fail(t->path, TKS_ERR_IO, "token_revocations row %lld is invalid",
                          (long long)seq);
            break;
        }
        r.seq = (uint64_t)seq;
        r.ix.list = (uint32_t)list;
        r.ix.idx = (uint32_t)idx;
        tks_list *l = &t->lists[list];
        l->bits[r.ix.idx / 8u] |= (uint8_t)(1u << (r.ix.idx % 8u));
        l->revoked++;
        st = tks_push_rev(t, &r);
    }
    if (st == TKS_OK && rc != SQLITE_DONE)
        st = tks_fail(t->path, TKS_ERR_IO, "read token_revocations: %s", sqlite3_errmsg(t->db));
    sqlite3_finalize(s);
    return st;
}

/* Reads the jti MAC key, making it on first open (INSERT OR IGNORE, then read back: a
 * second process opening the same new file at once ends up with the same key). */
static tks_status tks_load_secret(tks *t)
{
    char err[256];
    uint8_t fresh[TKS_MAC_KEY_LEN];
    if (RAND_bytes(fresh, sizeof(fresh)) != 1)
        return tks_fail(t->path, TKS_ERR_IO, "no randomness for the jti key");
    sqlite3_stmt *s;
    tks_status st = TKS_OK;
    if (db_prepare(t->db, "INSERT OR IGNORE INTO token_secret (id, mac_key) VALUES (1, ?1)", &s,
                   "write token_secret", err, sizeof(err)) != 0)
        st = tks_fail(t->path, TKS_ERR_IO, "%s", err);
    else {
        sqlite3_bind_blob(s, 1, fresh, sizeof(fresh), SQLITE_TRANSIENT);
        if (db_step_done(t->db, s, "write token_secret", err, sizeof(err)) != 0)
            st = tks_fail(t->path, TKS_ERR_IO, "%s", err);
    }
    OPENSSL_cleanse(fresh, sizeof(fresh));
    if (st != TKS_OK)
        return st;
    if (db_prepare(t->db, "SELECT mac_key FROM token_secret WHERE id = 1", &s, "read token_secret",
                   err, sizeof(err)) != 0)
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    if (sqlite3_step(s) != SQLITE_ROW || sqlite3_column_bytes(s, 0) != TKS_MAC_KEY_LEN)
        st =
            tks_fail(t->path, TKS_ERR_IO, "token_secret holds no key of %d bytes", TKS_MAC_KEY_LEN);
    else
        memcpy(t->mac_key, sqlite3_column_blob(s, 0), TKS_MAC_KEY_LEN);
    sqlite3_finalize(s);
    return st;
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
    if (db_open(path, TKS_BUSY_TIMEOUT_MS, &t->db, err, sizeof(err)) != 0 ||
        db_exec(t->db, tks_schema_sql, "create tables", err, sizeof(err)) != 0 ||
        chn_schema(t->db, err, sizeof(err)) != 0)
        st = tks_fail(path, TKS_ERR_IO, "%s", err);
    if (st == TKS_OK)
        st = tks_migrate_lists(t);
    if (st == TKS_OK)
        st = tks_load_secret(t);
    if (st == TKS_OK)
        st = tks_load_lists(t);
    if (st == TKS_OK)
        st = tks_load_revocations(t);
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
    sqlite3_close(t->db); /* NULL is a no-op */
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

/* ---- status indexes --------------------------------------------------------------------- */

/* Makes [0, end) of list reserved on disk, every token from it expiring by expires (one
 * autocommit statement: fsynced). Both only grow (max): a reservation written ahead with
 * assign_mu released and an expiry written meanwhile cannot undo each other. */
static tks_status tks_write_reserved(tks *t, uint32_t list, uint32_t end, int64_t expires)
{
    char err[256];
    sqlite3_stmt *s;
    pthread_mutex_lock(&t->write_mu);
    int rc = db_prepare(t->db,
                        "INSERT INTO token_lists (list, reserved, expires) VALUES (?1, ?2, ?3) "
                        "ON CONFLICT (list) DO UPDATE SET"
                        " reserved = max(reserved, excluded.reserved),"
                        " expires = max(expires, excluded.expires)",
                        &s, "reserve status indexes", err, sizeof(err));
    if (rc == 0) {
        sqlite3_bind_int64(s, 1, list);
        sqlite3_bind_int64(s, 2, end);
        sqlite3_bind_int64(s, 3, expires);
        rc = db_step_done(t->db, s, "reserve status indexes", err, sizeof(err));
    }
    pthread_mutex_unlock(&t->write_mu);
    return rc == 0 ? TKS_OK : tks_fail(t->path, TKS_ERR_IO, "%s", err);
}

/* Called with assign_mu held, right after an index was handed out: once half of the last
 * list's reserved block is gone, writes the next block's end with assign_mu released, so
 * the fsync stalls only the calling mint, not every other one (they keep handing out the
 * rest of the block). A failure is left to the next crossing, or to tks_assign's own
 * reservation when the block runs out. */
static void tks_reserve_ahead(tks *t)
{
    uint32_t list = t->cur, reserved = t->lists[list].reserved;
    if (t->reserving || reserved >= TKS_LIST_SIZE || reserved - t->next_idx > TKS_BLOCK / 2)
        return;
    t->reserving = 1;
    int64_t expires = t->lists[list].expires; /* changes only under assign_mu, with no
                                                 reservation running */
    pthread_mutex_unlock(&t->assign_mu);
    tks_status st = tks_write_reserved(t, list, reserved + TKS_BLOCK, expires);
    pthread_mutex_lock(&t->assign_mu);
    if (st == TKS_OK) {
        pthread_rwlock_wrlock(&t->mirror_rw);
        t->lists[list].reserved = reserved + TKS_BLOCK;
        pthread_rwlock_unlock(&t->mirror_rw);
    }
    t->reserving = 0;
    pthread_cond_broadcast(&t->reserve_cv);
}

/* Reclaims list i, every token of which has expired: in one transaction its revocations
 * go and it starts again at epoch + 1 with one block reserved, expiring by expires; then
 * the mirror. The epoch is in the MAC of its jtis (tks_jti_make), so an old token's jti no
 * longer names the index a new token holds. Caller holds assign_mu, no reservation runs. */
static tks_status tks_reclaim(tks *t, uint32_t i, int64_t expires)
{
    char err[256], sql[256];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE;"
             "DELETE FROM token_revocations WHERE list = %u;"
             "UPDATE token_lists SET reserved = %u, expires = %lld, epoch = epoch + 1"
             " WHERE list = %u;"
             "COMMIT;",
             i, TKS_BLOCK, (long long)expires, i);
    pthread_mutex_lock(&t->write_mu);
    int rc = db_exec(t->db, sql, "reclaim a status list", err, sizeof(err));
    if (rc != 0)
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
    pthread_mutex_unlock(&t->write_mu);
    if (rc != 0)
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    pthread_rwlock_wrlock(&t->mirror_rw);
    tks_list *l = &t->lists[i];
    memset(l->bits, 0, TKS_LIST_BYTES);
    l->revoked = 0;
    l->reserved = TKS_BLOCK;
    l->expires = expires;
    l->epoch++;
    size_t keep = 0;
    for (size_t k = 0; k < t->n_revs; k++)
        if (t->revs[k].ix.list != i)
            t->revs[keep++] = t->revs[k];
    t->n_revs = keep;
    t->cur = i;
    t->next_idx = 0;
    atomic_fetch_add(&t->generation, 1);
    pthread_rwlock_unlock(&t->mirror_rw);
    return TKS_OK;
}

tks_status tks_assign(tks *t, int64_t now, int64_t exp, tks_index *out)
{
    pthread_mutex_lock(&t->assign_mu);
    tks_status st = TKS_OK;
    uint32_t n = t->n_lists;
    /* The block ran out while its successor is being written: wait for that write. */
    while (t->reserving && n > 0 && t->next_idx >= t->lists[t->cur].reserved) {
        pthread_cond_wait(&t->reserve_cv, &t->assign_mu);
        n = t->n_lists;
    }
    int64_t expires = exp + TKS_EXPIRES_STEP;
    if (n == 0 || t->next_idx >= t->lists[t->cur].reserved) {
        int fresh = n == 0 || t->lists[t->cur].reserved >= TKS_LIST_SIZE;
        uint32_t list = fresh ? n : t->cur;
        uint32_t end = fresh ? TKS_BLOCK : t->lists[list].reserved + TKS_BLOCK;
        uint8_t *bits = NULL;
        if (fresh && list >= TKS_LISTS_MAX) {
            /* Every list exists: reuse the first whose tokens have all expired. */
            st = TKS_ERR_FULL;
            for (uint32_t i = 0; i < n && st == TKS_ERR_FULL; i++)
                if (t->lists[i].expires + TKS_RECLAIM_SLACK < now)
                    st = tks_reclaim(t, i, expires);
            fresh = 0;
        } else if (fresh && (bits = calloc(1, TKS_LIST_BYTES)) == NULL) {
            st = tks_fail(t->path, TKS_ERR_IO, "out of memory");
        } else {
            int64_t e =
                fresh || t->lists[list].expires < expires ? expires : t->lists[list].expires;
            st = tks_write_reserved(t, list, end, e);
            if (st == TKS_OK) {
                pthread_rwlock_wrlock(&t->mirror_rw);
                if (fresh) {
                    t->lists[list].bits = bits;
                    t->lists[list].epoch = 0;
                    t->n_lists = list + 1;
                    t->cur = list;
                    t->next_idx = 0;
                    bits = NULL;
                }
                t->lists[list].reserved = end;
                t->lists[list].expires = e;
                pthread_rwlock_unlock(&t->mirror_rw);
            }
        }
        free(bits);
    }
    /* The list must not be reclaimed before this token expires: its expiry on disk covers
     * exp before the index is handed out. */
    if (st == TKS_OK && exp > t->lists[t->cur].expires) {
        st = tks_write_reserved(t, t->cur, t->lists[t->cur].reserved, expires);
        if (st == TKS_OK) {
            pthread_rwlock_wrlock(&t->mirror_rw);
            t->lists[t->cur].expires = expires;
            pthread_rwlock_unlock(&t->mirror_rw);
        }
    }
    if (st == TKS_OK) {
        out->list = t->cur;
        out->idx = t->next_idx++;
        tks_reserve_ahead(t);
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

/* One transaction: the row and its audit event. */
static tks_status tks_revoke_tx(tks *t, const tks_revocation *r, uint64_t *seq)
{
    char err[256];
    sqlite3_stmt *s = NULL;
    if (db_exec(t->db, "BEGIN IMMEDIATE", "begin", err, sizeof(err)) != 0)
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    int rc = db_prepare(t->db,
                        "INSERT INTO token_revocations (list, idx, jti, kid, revoked_at) "
                        "VALUES (?1, ?2, ?3, ?4, ?5)",
                        &s, "insert token revocation", err, sizeof(err));
    if (rc == 0) {
        sqlite3_bind_int64(s, 1, r->ix.list);
        sqlite3_bind_int64(s, 2, r->ix.idx);
        sqlite3_bind_text(s, 3, r->jti, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, r->kid, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 5, r->revoked_at);
        rc = db_step_done(t->db, s, "insert token revocation", err, sizeof(err));
    }
    if (rc == 0) {
        *seq = (uint64_t)sqlite3_last_insert_rowid(t->db);
        json_t *d = json_pack("{s:s, s:I, s:I, s:I}", "jti", r->jti, "list", (json_int_t)r->ix.list,
                              "idx", (json_int_t)r->ix.idx, "token_seq", (json_int_t)*seq);
        rc = d == NULL ? -1
                       : chn_append_tx(t->db, r->revoked_at, "token.revoked",
                                       r->kid[0] ? r->kid : NULL, d, err, sizeof(err));
        if (d == NULL)
            snprintf(err, sizeof(err), "out of memory");
        json_decref(d);
    }
    if (rc == 0)
        rc = db_exec(t->db, "COMMIT", "commit", err, sizeof(err));
    if (rc != 0) {
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
        return tks_fail(t->path, TKS_ERR_IO, "%s", err);
    }
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

    /* Every revocation holds write_mu from its check to its mirror update, so what it
     * reads here cannot change before it commits. */
    pthread_mutex_lock(&t->write_mu);
    pthread_rwlock_rdlock(&t->mirror_rw);
    tks_status st = tks_issued(t, ix);
    if (st == TKS_OK && tks_bit(&t->lists[ix.list], ix.idx)) {
        st = TKS_ERR_REVOKED;
        if (out != NULL)
            tks_find_rev(t, ix, out);
    }
    pthread_rwlock_unlock(&t->mirror_rw);
    if (st == TKS_OK)
        st = tks_revoke_tx(t, &r, &r.seq);
    if (st == TKS_OK) {
        pthread_rwlock_wrlock(&t->mirror_rw);
        tks_list *l = &t->lists[ix.list];
        l->bits[ix.idx / 8u] |= (uint8_t)(1u << (ix.idx % 8u));
        l->revoked++;
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
            *revoked = t->lists[list].revoked;
    }
    pthread_rwlock_unlock(&t->mirror_rw);
    return st;
}

uint64_t tks_list_revoked(tks *t, uint32_t list)
{
    pthread_rwlock_rdlock(&t->mirror_rw);
    uint64_t n = list < t->n_lists ? t->lists[list].revoked : 0;
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
    sqlite3_stmt *s;
    if (db_prepare(t->db, "DELETE FROM token_redeemed WHERE exp < ?1", &s, "prune redeemed", err,
                   errlen) != 0)
        return -1;
    sqlite3_bind_int64(s, 1, now - TKS_PRUNE_SLACK);
    if (db_step_done(t->db, s, "prune redeemed", err, errlen) != 0)
        return -1;
    if (deleted != NULL)
        *deleted = (uint64_t)sqlite3_changes(t->db);
    t->last_prune = now;
    return 0;
}

/* Under write_mu, inside the open transaction: one waiter's row, and its event when it is
 * the first redemption. 0, or -1 with err filled. */
static int tks_redeem_one(tks *t, sqlite3_stmt *ins, tks_waiter *w, char *err, size_t errlen)
{
    sqlite3_reset(ins);
    sqlite3_bind_text(ins, 1, w->row_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ins, 2, w->exp);
    sqlite3_bind_int64(ins, 3, w->now);
    if (sqlite3_step(ins) != SQLITE_DONE)
        return db_fail(t->db, "insert redeemed", err, errlen);
    if (sqlite3_changes(t->db) == 0) {
        w->result = TKS_ERR_USED;
        return 0;
    }
    chn_set_actor(w->actor[0] ? w->actor : NULL);
    json_t *d = json_pack("{s:s, s:I}", "jti", w->jti, "exp", (json_int_t)w->exp);
    int rc =
        d == NULL ? -1 : chn_append_tx(t->db, w->now, "token.redeemed", w->kid, d, err, errlen);
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
    sqlite3_stmt *ins = NULL;
    pthread_mutex_lock(&t->write_mu);
    int rc = db_exec(t->db, "BEGIN IMMEDIATE", "begin", err, sizeof(err));
    if (rc == 0)
        rc = db_prepare(t->db,
                        "INSERT INTO token_redeemed (jti, exp, redeemed_at) VALUES (?1, ?2, ?3) "
                        "ON CONFLICT (jti) DO NOTHING",
                        &ins, "insert redeemed", err, sizeof(err));
    for (tks_waiter *w = batch; rc == 0 && w != NULL; w = w->next)
        rc = tks_redeem_one(t, ins, w, err, sizeof(err));
    sqlite3_finalize(ins);
    if (rc == 0 && batch->now - t->last_prune >= TKS_PRUNE_EVERY)
        rc = tks_prune_tx(t, batch->now, NULL, err, sizeof(err));
    if (rc == 0)
        rc = db_exec(t->db, "COMMIT", "commit", err, sizeof(err));
    if (rc != 0) {
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
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
    int rc = tks_prune_tx(t, now, deleted, err, sizeof(err));
    pthread_mutex_unlock(&t->write_mu);
    return rc == 0 ? TKS_OK : tks_fail(t->path, TKS_ERR_IO, "%s", err);
}

tks_status tks_redeemed_count(tks *t, uint64_t *count)
{
    char err[256];
    sqlite3_stmt *s;
    pthread_mutex_lock(&t->write_mu);
    int rc = db_prepare(t->db, "SELECT count(*) FROM token_redeemed", &s, "count redeemed", err,
                        sizeof(err));
    if (rc == 0) {
        if (sqlite3_step(s) == SQLITE_ROW)
            *count = (uint64_t)sqlite3_column_int64(s, 0);
        else
            rc = db_fail(t->db, "count redeemed", err, sizeof(err));
        sqlite3_finalize(s);
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
