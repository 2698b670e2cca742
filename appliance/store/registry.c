/* reg: the key registry, a store (sdb.h: SQLite or PostgreSQL) behind an in-memory mirror.
 * See registry.h. */
#include "appliance/store/registry.h"

#include "appliance/store/chain.h"
#include "appliance/store/sdb.h"
#include "base/clock.h"
#include "base/errbuf.h"
#include "base/names.h"
#include "base/lock.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REG_ERR_MSG_MAX 1024
#define REG_ROWS_MAX (1u << 24) /* mirror slots are uint32; far above any real registry */
#define REG_GROW_MIN 64
#define REG_KID_HEX (2 * SK_KID_LEN) /* characters, without the NUL */
#define REG_CHANNEL "signd_keys"     /* the change notes of keys and revocations */
/* A write found the database ahead of the mirror (another node's change): roll back,
 * refresh, decide again. Never returned to a caller. */
#define REG_STALE_ ((reg_status)100)

/* One key as the mirror keeps it: the row plus its insertion order. */
typedef struct {
    reg_key k;
    int64_t id; /* keys.id: breaks created_at ties for reg_newest_active */
} reg_row;

struct reg {
    sdb *db; /* under write_mu */
    char path[SDB_LOCATOR_MAX];
    unsigned max_active;
    char node[REG_NODE_MAX + 1]; /* under write_mu */
    int64_t started_ms;          /* wall clock at reg_open: this node's start */
    int listening;               /* reg_refresh_if_changed listens on db; under write_mu */

    pthread_mutex_t write_mu;   /* the database and every change; first in the lock order */
    pthread_rwlock_t mirror_rw; /* everything below up to `generation` */
    pthread_mutex_t slot_mu;    /* slots_active, slots_reserved; last in the lock order */

    unsigned slots_active; /* active and retiring keys: each holds an object in the token */
    unsigned slots_reserved;

    reg_row *rows; /* n_rows used of cap_rows; a row's slot moves only on delete */
    size_t n_rows, cap_rows;
    uint32_t *order;  /* the n_rows slots sorted by (created_at, kid) */
    uint32_t *index;  /* open addressing, linear probing: slot + 1, 0 empty; load <= 1/2 */
    size_t index_cap; /* a power of two >= 2 * cap_rows */
    size_t counts[REG_STATE_COUNT_];
    long newest; /* slot of the newest active key, -1 if none */

    reg_revocation *revs; /* ascending by seq */
    size_t n_revs, cap_revs;
    reg_subject *subs; /* ascending by seq; rows expired are dropped by reg_revoke_subject */
    size_t n_subs, cap_subs;
    uint64_t seq_hi; /* the highest seq ever assigned in the database */

    _Atomic uint64_t generation;
    _Atomic uint64_t pokes; /* reg_poke: news from outside the registry */
    /* Waiters for a change (reg_wait_change): a bump broadcasts under change_mu. */
    pthread_mutex_t change_mu;
    pthread_cond_t change_cv;
};

static const char *const reg_state_names[REG_STATE_COUNT_] = {
    [REG_ACTIVE] = "active",
    [REG_REVOKED] = "revoked",
    [REG_BROKEN] = "broken",
    [REG_RETIRING] = "retiring",
};

static const char *const reg_status_names[REG_ERR_COUNT_] = {
    [REG_OK] = "ok",
    [REG_ERR_NOT_FOUND] = "no key with this kid",
    [REG_ERR_EXISTS] = "a key with this kid already exists",
    [REG_ERR_LIMIT] = "the limit of active keys is reached",
    [REG_ERR_STATE] = "the key's state does not allow this",
    [REG_ERR_INVALID] = "invalid argument",
    [REG_ERR_IO] = "the registry file could not be read or written",
};

/* SQLite: the schema of every file this build or an older one made, unchanged. */
static const char reg_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS keys ("
    " id INTEGER PRIMARY KEY,"
    " kid TEXT NOT NULL UNIQUE CHECK (length(kid) = 32),"
    " state TEXT NOT NULL," /* no CHECK: new states need no table rebuild */
    " bits INTEGER NOT NULL,"
    " label TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " n TEXT NOT NULL,"
    " e TEXT NOT NULL,"
    " retire_at INTEGER,"    /* schema 2, rotation: NULL for a key never rotated */
    " successor TEXT,"       /* kid hex of the key that replaced this one, or NULL */
    " predecessor TEXT,"     /* kid hex of the key this one replaced, or NULL */
    " token_attrs INTEGER);" /* base/signkey.h SK_ATTR_*, read back; NULL: never read */
    "CREATE TABLE IF NOT EXISTS revocations ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kid TEXT NOT NULL UNIQUE REFERENCES keys(kid),"
    " revoked_at INTEGER NOT NULL,"
    " reason TEXT NOT NULL);"
    /* A kid reserved by a create or rotation before the keeper generates under it: the
     * keeper generates for a pending kid only (keeperd.c). Emptied at every open. */
    /* Subject revocations (issue 24): no AUTOINCREMENT of their own, seq is taken from
     * the revocations' counter (sqlite_sequence), which reg_revoke_subject advances, so
     * both kinds share one sequence. Created when missing: no schema version bump, and an
     * older build ignores the table and still numbers key revocations above it. */
    "CREATE TABLE IF NOT EXISTS subject_revocations ("
    " seq INTEGER PRIMARY KEY,"
    " sub TEXT NOT NULL CHECK (length(sub) BETWEEN 1 AND 256),"
    " before INTEGER NOT NULL,"
    " revoked_at INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS pending_keys ("
    " kid TEXT PRIMARY KEY CHECK (length(kid) = 32),"
    " created_at INTEGER NOT NULL);";

/* SQLite: pending_keys' columns of issue 20 (whose record, since when), added when missing
 * with defaults: no schema version bump, an older build's INSERT (kid, created_at) still
 * works and the table is emptied at every open anyway. */
/* keys' token_attrs (issue 21): what the token holds for the private half, read back when
 * the key was made; added when missing, NULL for every older key, no version bump (an
 * older build ignores it, and its INSERTs leave it NULL). */
static const char *const reg_keys_cols[][2] = {
    {"token_attrs", "ALTER TABLE keys ADD COLUMN token_attrs INTEGER"},
};

static const char *const reg_pending_cols[][2] = {
    {"node", "ALTER TABLE pending_keys ADD COLUMN node TEXT NOT NULL DEFAULT ''"},
    {"started_ms", "ALTER TABLE pending_keys ADD COLUMN started_ms INTEGER NOT NULL DEFAULT 0"},
};

/* PostgreSQL: the same tables in its dialect (BIGINT for every integer), the revocations'
 * seq from a counter row instead of AUTOINCREMENT (reg_next_seq), the version in
 * schema_versions. Shared by every node: created under SDB_LOCK_SCHEMA. */
static const char reg_schema_pg[] =
    "CREATE TABLE IF NOT EXISTS keys ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " kid TEXT NOT NULL UNIQUE CHECK (length(kid) = 32),"
    " state TEXT NOT NULL,"
    " bits BIGINT NOT NULL,"
    " label TEXT NOT NULL,"
    " created_at BIGINT NOT NULL,"
    " n TEXT NOT NULL,"
    " e TEXT NOT NULL,"
    " retire_at BIGINT,"
    " successor TEXT,"
    " predecessor TEXT,"
    " token_attrs BIGINT);"
    /* A database an older build made: the column of issue 21 (reg_keys_cols). */
    "ALTER TABLE keys ADD COLUMN IF NOT EXISTS token_attrs BIGINT;"
    "CREATE TABLE IF NOT EXISTS revocations ("
    " seq BIGINT PRIMARY KEY,"
    " kid TEXT NOT NULL UNIQUE REFERENCES keys(kid),"
    " revoked_at BIGINT NOT NULL,"
    " reason TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS subject_revocations ("
    " seq BIGINT PRIMARY KEY,"
    " sub TEXT NOT NULL CHECK (length(sub) BETWEEN 1 AND 256),"
    " before BIGINT NOT NULL,"
    " revoked_at BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS pending_keys ("
    " kid TEXT PRIMARY KEY CHECK (length(kid) = 32),"
    " created_at BIGINT NOT NULL,"
    " node TEXT NOT NULL DEFAULT '',"
    " started_ms BIGINT NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);"
    "INSERT INTO counters (name, value) VALUES ('revocations', 0)"
    " ON CONFLICT (name) DO NOTHING;"
    "CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version BIGINT);";

static _Thread_local char reg_errbuf[REG_ERR_MSG_MAX];

/* ---- errors ---------------------------------------------------------------------------- */

static reg_status reg_fail(const char *path, reg_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a failure for reg_last_error() and stderr, naming the database; returns st. */
static reg_status reg_fail(const char *path, reg_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eb_vset(reg_errbuf, sizeof(reg_errbuf), "registry", path, fmt, ap);
    va_end(ap);
    return st;
}

/* A failed store call: err is sdb's "what: message". */
static reg_status reg_fail_db(const reg *r, const char *err)
{
    return reg_fail(r->path, REG_ERR_IO, "%s", err);
}

/* A failed step of s: what we were doing and the backend's message. */
static reg_status reg_fail_step(const reg *r, const sdb_stmt *s, const char *what)
{
    return reg_fail(r->path, REG_ERR_IO, "%s: %s", what, sdb_stmt_error(s));
}

static int64_t reg_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the mirror: hash index, order, newest --------------------------------------------- */

static size_t reg_hash(const sk_kid *kid)
{
    uint64_t a, b;
    memcpy(&a, kid->b, 8);
    memcpy(&b, kid->b + 8, 8);
    /* splitmix64's finaliser: kids are random in use, but tests and tools make neat ones. */
    uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ull);
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (size_t)x;
}

/* The slot holding kid, or -1. Caller holds the read lock or write_mu. */
static long reg_find(const reg *r, const sk_kid *kid)
{
    if (r->index_cap == 0)
        return -1;
    size_t mask = r->index_cap - 1;
    for (size_t i = reg_hash(kid) & mask;; i = (i + 1) & mask) {
        uint32_t v = r->index[i];
        if (v == 0)
            return -1;
        if (memcmp(r->rows[v - 1].k.kid.b, kid->b, SK_KID_LEN) == 0)
            return (long)v - 1;
    }
}

static void reg_index_put(reg *r, size_t slot)
{
    size_t mask = r->index_cap - 1;
    size_t i = reg_hash(&r->rows[slot].k.kid) & mask;
    while (r->index[i] != 0)
        i = (i + 1) & mask;
    r->index[i] = (uint32_t)slot + 1;
}

/* Refills the index from the rows, in place (no allocation). */
static void reg_index_refill(reg *r)
{
    memset(r->index, 0, r->index_cap * sizeof(*r->index));
    for (size_t s = 0; s < r->n_rows; s++)
        reg_index_put(r, s);
}

/* The list order: created_at, then kid. */
static int reg_key_cmp(const reg_key *a, const reg_key *b)
{
    if (a->created_at != b->created_at)
        return a->created_at < b->created_at ? -1 : 1;
    return memcmp(a->kid.b, b->kid.b, SK_KID_LEN);
}

static int reg_slot_cmp(const void *a, const void *b, void *ctx)
{
    const reg_row *rows = ctx;
    return reg_key_cmp(&rows[*(const uint32_t *)a].k, &rows[*(const uint32_t *)b].k);
}

/* The first of the first n order positions whose row is not below k. */
static size_t reg_order_pos(const reg *r, size_t n, const reg_key *k)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (reg_key_cmp(&r->rows[r->order[mid]].k, k) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Is a newer than b for reg_newest_active: created later, or at the same second inserted
 * later. */
static int reg_newer(const reg_row *a, const reg_row *b)
{
    if (a->k.created_at != b->k.created_at)
        return a->k.created_at > b->k.created_at;
    return a->id > b->id;
}

static long reg_newest_scan(const reg *r)
{
    long best = -1;
    for (size_t s = 0; s < r->n_rows; s++)
        if (r->rows[s].k.state == REG_ACTIVE &&
            (best < 0 || reg_newer(&r->rows[s], &r->rows[best])))
            best = (long)s;
    return best;
}

/* Grows the arrays to hold at least need_rows keys and need_revs revocations. Nothing
 * changes on failure. Caller holds the write lock (or is reg_open). */
static reg_status reg_grow(reg *r, size_t need_rows, size_t need_revs)
{
    if (need_rows > r->cap_rows) {
        if (need_rows > REG_ROWS_MAX)
            return reg_fail(r->path, REG_ERR_IO, "more than %u keys", REG_ROWS_MAX);
        size_t cap = r->cap_rows ? r->cap_rows : REG_GROW_MIN;
        while (cap < need_rows)
            cap *= 2;
        size_t icap = 16;
        while (icap < 2 * cap)
            icap *= 2;
        reg_row *rows = realloc(r->rows, cap * sizeof(*rows));
        if (rows == NULL)
            return reg_fail(r->path, REG_ERR_IO, "out of memory for %zu keys", cap);
        r->rows = rows;
        uint32_t *order = realloc(r->order, cap * sizeof(*order));
        if (order == NULL)
            return reg_fail(r->path, REG_ERR_IO, "out of memory for %zu keys", cap);
        r->order = order;
        uint32_t *index = calloc(icap, sizeof(*index));
        if (index == NULL)
            return reg_fail(r->path, REG_ERR_IO, "out of memory for %zu keys", cap);
        free(r->index);
        r->index = index;
        r->index_cap = icap;
        r->cap_rows = cap;
        reg_index_refill(r);
    }
    if (need_revs > r->cap_revs) {
        size_t cap = r->cap_revs ? r->cap_revs : REG_GROW_MIN;
        while (cap < need_revs)
            cap *= 2;
        if (cap > SIZE_MAX / sizeof(reg_revocation))
            return reg_fail(r->path, REG_ERR_IO, "too many revocations");
        reg_revocation *revs = realloc(r->revs, cap * sizeof(*revs));
        if (revs == NULL)
            return reg_fail(r->path, REG_ERR_IO, "out of memory for %zu revocations", cap);
        r->revs = revs;
        r->cap_revs = cap;
    }
    return REG_OK;
}

/* Makes room before a commit, so that copying the committed change into the mirror
 * cannot fail. Caller holds write_mu. */
static reg_status reg_mirror_room(reg *r, size_t more_rows, size_t more_revs)
{
    if (r->n_rows + more_rows <= r->cap_rows && r->n_revs + more_revs <= r->cap_revs)
        return REG_OK;
    pthread_rwlock_wrlock(&r->mirror_rw);
    reg_status st = reg_grow(r, r->n_rows + more_rows, r->n_revs + more_revs);
    pthread_rwlock_unlock(&r->mirror_rw);
    return st;
}

/* Adds a committed row. Caller holds write_mu and the write lock; room was made. */
static void reg_mirror_add(reg *r, const reg_row *row)
{
    size_t slot = r->n_rows;
    size_t pos = reg_order_pos(r, r->n_rows, &row->k);
    r->rows[slot] = *row;
    memmove(r->order + pos + 1, r->order + pos, (r->n_rows - pos) * sizeof(*r->order));
    r->order[pos] = (uint32_t)slot;
    r->n_rows++;
    reg_index_put(r, slot);
    r->counts[row->k.state]++;
    if (row->k.state == REG_ACTIVE && (r->newest < 0 || reg_newer(row, &r->rows[r->newest])))
        r->newest = (long)slot;
}

/* Removes the row in slot s; the last slot moves into the hole. Same locks as add. */
static void reg_mirror_remove(reg *r, size_t s)
{
    size_t last = r->n_rows - 1;
    size_t pos = reg_order_pos(r, r->n_rows, &r->rows[s].k);
    memmove(r->order + pos, r->order + pos + 1, (last - pos) * sizeof(*r->order));
    r->counts[r->rows[s].k.state]--;
    if (s != last) {
        r->order[reg_order_pos(r, last, &r->rows[last].k)] = (uint32_t)s;
        r->rows[s] = r->rows[last];
    }
    r->n_rows--;
    reg_index_refill(r);
    if (r->newest == (long)s)
        r->newest = reg_newest_scan(r);
    else if (r->newest == (long)last)
        r->newest = (long)s;
}

/* Moves slot s to state `to` (the caller fills the revocation fields). Same locks as add. */
static void reg_mirror_set_state(reg *r, size_t s, reg_state to)
{
    r->counts[r->rows[s].k.state]--;
    r->counts[to]++;
    r->rows[s].k.state = to;
    if (r->newest == (long)s && to != REG_ACTIVE)
        r->newest = reg_newest_scan(r);
}

static void reg_bump(reg *r)
{
    pthread_mutex_lock(&r->change_mu);
    atomic_fetch_add_explicit(&r->generation, 1, memory_order_release);
    pthread_cond_broadcast(&r->change_cv);
    pthread_mutex_unlock(&r->change_mu);
}

/* ---- slots ------------------------------------------------------------------------------ */

static void reg_slot_active_gone(reg *r)
{
    pthread_mutex_lock(&r->slot_mu);
    if (r->slots_active > 0)
        r->slots_active--;
    pthread_mutex_unlock(&r->slot_mu);
}

/* For reg_insert: use an outstanding reservation, or take one now if there is room. */
static reg_status reg_slot_claim(reg *r)
{
    reg_status st = REG_OK;
    pthread_mutex_lock(&r->slot_mu);
    if (r->slots_reserved == 0) {
        if (r->slots_active >= r->max_active)
            st = REG_ERR_LIMIT;
        else
            r->slots_reserved++;
    }
    pthread_mutex_unlock(&r->slot_mu);
    return st;
}

/* Ends a claimed reservation: it becomes an active key, or is given back. */
static void reg_slot_settle(reg *r, int became_active)
{
    pthread_mutex_lock(&r->slot_mu);
    if (r->slots_reserved > 0)
        r->slots_reserved--;
    if (became_active)
        r->slots_active++;
    pthread_mutex_unlock(&r->slot_mu);
}

/* ---- store helpers ------------------------------------------------------------------------ */

static reg_status reg_exec(reg *r, const char *sql, const char *what)
{
    char err[512];
    return sdb_exec(r->db, sql, what, err, sizeof(err)) == SDB_OK ? REG_OK : reg_fail_db(r, err);
}

static reg_status reg_prepare(reg *r, const char *sql, sdb_stmt **s, const char *what)
{
    char err[512];
    return sdb_prepare(r->db, sql, s, what, err, sizeof(err)) == SDB_OK ? REG_OK
                                                                        : reg_fail_db(r, err);
}

/* Runs a statement that returns no row, then finalises it. */
static reg_status reg_step_done(reg *r, sdb_stmt *s, const char *what)
{
    char err[512];
    return sdb_step_done(s, what, err, sizeof(err)) == SDB_OK ? REG_OK : reg_fail_db(r, err);
}

/* Runs a statement that returns one row of one integer (a count, a RETURNING), finalises
 * it: REG_OK and *v, or REG_ERR_IO (no row is an error too). */
static reg_status reg_step_int(reg *r, sdb_stmt *s, const char *what, int64_t *v)
{
    sdb_status rc = sdb_step(s);
    reg_status st = REG_OK;
    if (rc == SDB_ROW) {
        *v = sdb_column_int64(s, 0);
        if ((rc = sdb_step(s)) != SDB_DONE)
            st = reg_fail_step(r, s, what);
    } else {
        st = rc == SDB_DONE ? reg_fail(r->path, REG_ERR_IO, "%s: no row", what)
                            : reg_fail_step(r, s, what);
    }
    sdb_finalize(s);
    return st;
}

/* A write transaction: excludes every other registry writer, of this process, of this
 * file's other processes, and on PostgreSQL of every node (SDB_LOCK_REGISTRY). */
static reg_status reg_begin(reg *r, const char *what)
{
    char err[512];
    if (sdb_begin_write(r->db, SDB_LOCK_REGISTRY, err, sizeof(err)) == SDB_OK)
        return REG_OK;
    return reg_fail(r->path, REG_ERR_IO, "%s: %s", what, err);
}

/* Ends a transaction: COMMIT when st is REG_OK (durable on return), else ROLLBACK. The
 * error was recorded before the rollback, so the message is the one that mattered. */
static reg_status reg_tx_end(reg *r, reg_status st)
{
    char err[512];
    if (st == REG_OK && sdb_commit(r->db, err, sizeof(err)) == SDB_OK)
        return REG_OK;
    if (st == REG_OK)
        return reg_fail_db(r, err); /* sdb_commit rolled back */
    sdb_rollback(r->db);
    return st;
}

/* The change note of a committed change of kid (NULL: a subject revocation), sent with the
 * transaction's COMMIT (PostgreSQL: every node's watcher and keeper hear it). */
static reg_status reg_notify(reg *r, const sk_kid *kid)
{
    char hex[REG_KID_HEX + 1] = "", err[256];
    if (kid != NULL)
        sk_kid_hex(kid, hex);
    if (sdb_notify(r->db, REG_CHANNEL, hex, err, sizeof(err)) != SDB_OK)
        return reg_fail_db(r, err);
    return REG_OK;
}

/* The audit chain's handle: the registry's connection, in the registry's transaction. */
typedef sdb reg_chain_handle;
static reg_chain_handle *reg_chain_db(reg *r)
{
    return r->db;
}

/* A text column into dst, as db_col_text was: 0, or -1 when NULL or too long. */
static int reg_col_text(sdb_stmt *s, int col, char *dst, size_t cap)
{
    return sdb_column_copy(s, col, dst, cap);
}

/* ---- open: schema, load ------------------------------------------------------------------ */

/* SQLite: sets *has when table has a column named col. */
static reg_status reg_has_column(reg *r, const char *table, const char *col, int *has)
{
    sdb_stmt *s;
    reg_status st = reg_prepare(r, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", &s,
                                "read a table's columns");
    if (st != REG_OK)
        return st;
    sdb_bind_text(s, 1, table, -1);
    sdb_bind_text(s, 2, col, -1);
    sdb_status rc = sdb_step(s);
    *has = rc == SDB_ROW;
    if (rc != SDB_ROW && rc != SDB_DONE)
        st = reg_fail_step(r, s, "read a table's columns");
    sdb_finalize(s);
    return st;
}

/* SQLite: adds each of cols (name, ALTER TABLE) that table lacks. */
static reg_status reg_add_columns(reg *r, const char *table, const char *const (*cols)[2], size_t n,
                                  const char *what)
{
    for (size_t i = 0; i < n; i++) {
        int has = 0;
        reg_status st = reg_has_column(r, table, cols[i][0], &has);
        if (st == REG_OK && !has)
            st = reg_exec(r, cols[i][1], what);
        if (st != REG_OK)
            return st;
    }
    return REG_OK;
}

/* Schema 1 -> 2, inside reg_schema's transaction: the rotation columns. Version 1 made
 * `state` a plain TEXT column (no CHECK), so ADD COLUMN is enough: no table rebuild, every
 * row keeps its id (the tie-break of reg_newest_active) and the revocations' foreign keys
 * stay as they are. A column already there (a half-known file) is left alone. */
static reg_status reg_migrate_v2(reg *r)
{
    static const char *const cols[][2] = {
        {"retire_at", "ALTER TABLE keys ADD COLUMN retire_at INTEGER"},
        {"successor", "ALTER TABLE keys ADD COLUMN successor TEXT"},
        {"predecessor", "ALTER TABLE keys ADD COLUMN predecessor TEXT"},
    };
    return reg_add_columns(r, "keys", cols, sizeof(cols) / sizeof(cols[0]),
                           "migrate schema 1 to 2");
}

static reg_status reg_version_check(reg *r, int64_t version)
{
    if (version < 0 || version > REG_SCHEMA_VERSION)
        return reg_fail(r->path, REG_ERR_IO, "schema version %lld is not one this build knows (%d)",
                        (long long)version, REG_SCHEMA_VERSION);
    return REG_OK;
}

/* The audit chain's tables, in the schema transaction (chain.h). */
static reg_status reg_chain_schema(reg *r)
{
    char aerr[256];
    reg_chain_handle *c = reg_chain_db(r);
    if (c != NULL && chn_schema(c, aerr, sizeof(aerr)) != 0)
        return reg_fail(r->path, REG_ERR_IO, "%s", aerr);
    return REG_OK;
}

/* SQLite: creates the tables when missing, migrates an older schema in place and refuses
 * a newer one, all in one transaction. */
static reg_status reg_schema_lite(reg *r)
{
    reg_status st = reg_begin(r, "begin schema transaction");
    if (st != REG_OK)
        return st;
    sdb_stmt *s;
    int64_t version = -1;
    st = reg_prepare(r, "PRAGMA user_version", &s, "read schema version");
    if (st == REG_OK)
        st = reg_step_int(r, s, "read schema version", &version);
    if (st == REG_OK)
        st = reg_version_check(r, version);
    if (st == REG_OK)
        st = reg_exec(r, reg_schema_sql, "create tables");
    if (st == REG_OK && version == 1)
        st = reg_migrate_v2(r);
    if (st == REG_OK)
        st = reg_add_columns(r, "keys", reg_keys_cols,
                             sizeof(reg_keys_cols) / sizeof(reg_keys_cols[0]),
                             "add keys' token_attrs");
    if (st == REG_OK)
        st = reg_add_columns(r, "pending_keys", reg_pending_cols,
                             sizeof(reg_pending_cols) / sizeof(reg_pending_cols[0]),
                             "add pending_keys' node and start");
    /* A kid still pending was reserved by a create that never finished (one node per
     * file: every create of this file's node started before this open): its object, if
     * the keeper made one, is an orphan for reconcile, and the keeper never generates
     * under that kid again (kstate.h). */
    if (st == REG_OK)
        st = reg_exec(r, "DELETE FROM pending_keys", "clear pending kids");
    if (st == REG_OK)
        st = reg_chain_schema(r);
    if (st == REG_OK && version < REG_SCHEMA_VERSION) {
        char sql[64];
        snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", REG_SCHEMA_VERSION);
        st = reg_exec(r, sql, "set schema version");
    }
    return reg_tx_end(r, st);
}

/* PostgreSQL: the same, under the schema lock (every node may start at once), the version
 * in schema_versions. Pending records are not cleared: other nodes' creates may be under
 * way; reconcile tells orphans apart (reg_kid_orphan). */
static reg_status reg_schema_pg_tx(reg *r)
{
    char err[512];
    if (sdb_begin_write(r->db, SDB_LOCK_SCHEMA, err, sizeof(err)) != SDB_OK)
        return reg_fail(r->path, REG_ERR_IO, "begin schema transaction: %s", err);
    reg_status st = reg_exec(r, reg_schema_pg, "create tables");
    sdb_stmt *s;
    int64_t version = 0;
    if (st == REG_OK)
        st = reg_prepare(r, "SELECT version FROM schema_versions WHERE store = 'registry'", &s,
                         "read schema version");
    if (st == REG_OK) {
        sdb_status rc = sdb_step(s);
        if (rc == SDB_ROW)
            version = sdb_column_int64(s, 0);
        else if (rc != SDB_DONE)
            st = reg_fail_step(r, s, "read schema version");
        sdb_finalize(s);
    }
    if (st == REG_OK)
        st = reg_version_check(r, version);
    if (st == REG_OK)
        st = reg_chain_schema(r);
    if (st == REG_OK && version < REG_SCHEMA_VERSION)
        st = reg_prepare(r,
                         "INSERT INTO schema_versions (store, version) VALUES ('registry', ?1)"
                         " ON CONFLICT (store) DO UPDATE SET version = excluded.version",
                         &s, "set schema version");
    if (st == REG_OK && version < REG_SCHEMA_VERSION) {
        sdb_bind_int64(s, 1, REG_SCHEMA_VERSION);
        st = reg_step_done(r, s, "set schema version");
    }
    return reg_tx_end(r, st);
}

/* An optional kid column (successor, predecessor): *has 0 for NULL, else 1 and *kid set;
 * -1 when the text is not a kid. */
static int reg_col_kid(sdb_stmt *s, int col, int *has, sk_kid *kid)
{
    *has = !sdb_column_is_null(s, col);
    if (!*has)
        return 0;
    return sk_kid_parse_n(sdb_column_text(s, col), sdb_column_bytes(s, col), kid);
}

/* One row of the keys LEFT JOIN revocations query into *row; REG_ERR_IO names what is
 * wrong with it. */
static reg_status reg_load_key(reg *r, sdb_stmt *s, reg_row *row)
{
    memset(row, 0, sizeof(*row));
    row->id = sdb_column_int64(s, 0);
    const char *kid = sdb_column_text(s, 1);
    if (kid == NULL || sk_kid_parse_n(kid, sdb_column_bytes(s, 1), &row->k.kid) != 0)
        return reg_fail(r->path, REG_ERR_IO, "key id %lld: kid is not 32 lowercase hex digits",
                        (long long)row->id);
    const char *state = sdb_column_text(s, 2);
    int64_t bits = sdb_column_int64(s, 3);
    if (reg_state_parse(state, &row->k.state) != 0)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: unknown state '%s'", kid,
                        state ? state : "NULL");
    if (bits < 0 || bits > UINT_MAX)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: bits out of range", kid);
    row->k.bits = (unsigned)bits;
    row->k.created_at = sdb_column_int64(s, 5);
    if (reg_col_text(s, 4, row->k.label, sizeof(row->k.label)) != 0 ||
        reg_col_text(s, 6, row->k.n_b64, sizeof(row->k.n_b64)) != 0 ||
        reg_col_text(s, 7, row->k.e_b64, sizeof(row->k.e_b64)) != 0)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: label or public key missing or too long",
                        kid);
    int has_rev = !sdb_column_is_null(s, 8);
    if (has_rev != (row->k.state == REG_REVOKED))
        return reg_fail(r->path, REG_ERR_IO,
                        has_rev ? "kid %s: has a revocation record but is not revoked"
                                : "kid %s: is revoked but has no revocation record",
                        kid);
    if (has_rev) {
        row->k.revocation_seq = (uint64_t)sdb_column_int64(s, 8);
        row->k.revoked_at = sdb_column_int64(s, 9);
        if (reg_col_text(s, 10, row->k.reason, sizeof(row->k.reason)) != 0)
            return reg_fail(r->path, REG_ERR_IO, "kid %s: reason missing or too long", kid);
    }
    row->k.retire_at = sdb_column_int64(s, 11); /* NULL reads as 0 */
    if (reg_col_kid(s, 12, &row->k.has_successor, &row->k.successor) != 0 ||
        reg_col_kid(s, 13, &row->k.has_predecessor, &row->k.predecessor) != 0)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: successor or predecessor is not a kid", kid);
    /* The scheduler revokes a retiring key at retire_at; without one it would stay
     * published forever, so such a row is refused like any other inconsistency. */
    if (row->k.state == REG_RETIRING && (sdb_column_is_null(s, 11) || !row->k.has_successor))
        return reg_fail(r->path, REG_ERR_IO, "kid %s: retiring without retire_at or successor",
                        kid);
    if (!sdb_column_is_null(s, 14)) {
        int64_t a = sdb_column_int64(s, 14);
        if (a < 0 || (a & ~(int64_t)SK_ATTR_ALL) != 0 || !(a & SK_ATTR_READ))
            return reg_fail(r->path, REG_ERR_IO, "kid %s: token_attrs %lld is not an attribute set",
                            kid, (long long)a);
        row->k.token_attrs = (sk_attrs)a;
    }
    return REG_OK;
}

static reg_status reg_load_keys(reg *r)
{
    sdb_stmt *s;
    reg_status st = reg_prepare(r,
                                "SELECT k.id, k.kid, k.state, k.bits, k.label, k.created_at, k.n,"
                                " k.e, v.seq, v.revoked_at, v.reason, k.retire_at, k.successor,"
                                " k.predecessor, k.token_attrs"
                                " FROM keys k LEFT JOIN revocations v ON v.kid = k.kid",
                                &s, "read keys");
    if (st != REG_OK)
        return st;
    sdb_status rc = SDB_DONE;
    while (st == REG_OK && (rc = sdb_step(s)) == SDB_ROW) {
        reg_row row;
        st = reg_load_key(r, s, &row);
        if (st == REG_OK)
            st = reg_grow(r, r->n_rows + 1, 0);
        if (st == REG_OK && reg_find(r, &row.k.kid) >= 0)
            st = reg_fail(r->path, REG_ERR_IO, "kid %.32s: two rows", sdb_column_text(s, 1));
        if (st == REG_OK) {
            r->rows[r->n_rows] = row;
            reg_index_put(r, r->n_rows);
            r->n_rows++;
        }
    }
    if (st == REG_OK && rc != SDB_DONE)
        st = reg_fail_step(r, s, "read keys");
    sdb_finalize(s);
    if (st != REG_OK)
        return st;
    for (size_t i = 0; i < r->n_rows; i++) {
        r->order[i] = (uint32_t)i;
        r->counts[r->rows[i].k.state]++;
    }
    if (r->n_rows > 0)
        qsort_r(r->order, r->n_rows, sizeof(*r->order), reg_slot_cmp, r->rows);
    r->newest = reg_newest_scan(r);
    return REG_OK;
}

/* The revocations' counter: the highest seq ever handed out, even if its row is gone
 * since (SQLite: AUTOINCREMENT's own; PostgreSQL: the counters row). 0 when none. */
static reg_status reg_read_counter(reg *r, int64_t *hi)
{
    sdb_stmt *s;
    *hi = 0;
    reg_status st = reg_prepare(r,
                                sdb_kind_of(r->db) == SDB_POSTGRES
                                    ? "SELECT value FROM counters WHERE name = 'revocations'"
                                    : "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'",
                                &s, "read revocation counter");
    if (st != REG_OK)
        return st;
    sdb_status rc = sdb_step(s);
    if (rc == SDB_ROW)
        *hi = sdb_column_int64(s, 0);
    else if (rc != SDB_DONE)
        st = reg_fail_step(r, s, "read revocation counter");
    sdb_finalize(s);
    return st;
}

static reg_status reg_load_revocations(reg *r)
{
    sdb_stmt *s;
    reg_status st =
        reg_prepare(r, "SELECT seq, kid, revoked_at, reason FROM revocations ORDER BY seq", &s,
                    "read revocations");
    if (st != REG_OK)
        return st;
    sdb_status rc = SDB_DONE;
    while (st == REG_OK && (rc = sdb_step(s)) == SDB_ROW) {
        st = reg_grow(r, 0, r->n_revs + 1);
        if (st != REG_OK)
            break;
        reg_revocation *v = &r->revs[r->n_revs];
        memset(v, 0, sizeof(*v));
        v->seq = (uint64_t)sdb_column_int64(s, 0);
        v->revoked_at = sdb_column_int64(s, 2);
        const char *kid = sdb_column_text(s, 1);
        if (kid == NULL || sk_kid_parse_n(kid, sdb_column_bytes(s, 1), &v->kid) != 0 ||
            reg_col_text(s, 3, v->reason, sizeof(v->reason)) != 0 || v->seq == 0)
            st = reg_fail(r->path, REG_ERR_IO, "revocation %llu: bad kid, reason or seq",
                          (unsigned long long)v->seq);
        else
            r->n_revs++;
    }
    if (st == REG_OK && rc != SDB_DONE)
        st = reg_fail_step(r, s, "read revocations");
    sdb_finalize(s);
    if (st != REG_OK)
        return st;
    r->seq_hi = r->n_revs ? r->revs[r->n_revs - 1].seq : 0;
    int64_t hi;
    st = reg_read_counter(r, &hi);
    if (st == REG_OK && hi > 0 && (uint64_t)hi > r->seq_hi)
        r->seq_hi = (uint64_t)hi;
    return st;
}

/* Room for one more subject in the mirror. Caller holds write_mu. */
static reg_status reg_subs_room(reg *r)
{
    if (r->n_subs < r->cap_subs)
        return REG_OK;
    size_t cap = r->cap_subs ? 2 * r->cap_subs : REG_GROW_MIN;
    reg_subject *v = realloc(r->subs, cap * sizeof(*v));
    if (v == NULL)
        return reg_fail(r->path, REG_ERR_IO, "out of memory");
    r->subs = v;
    r->cap_subs = cap;
    return REG_OK;
}

static reg_status reg_load_subjects(reg *r)
{
    sdb_stmt *s;
    reg_status st =
        reg_prepare(r, "SELECT seq, sub, before, revoked_at FROM subject_revocations ORDER BY seq",
                    &s, "read subject revocations");
    if (st != REG_OK)
        return st;
    sdb_status rc = SDB_DONE;
    while (st == REG_OK && (rc = sdb_step(s)) == SDB_ROW) {
        if ((st = reg_subs_room(r)) != REG_OK)
            break;
        reg_subject *v = &r->subs[r->n_subs];
        memset(v, 0, sizeof(*v));
        v->seq = (uint64_t)sdb_column_int64(s, 0);
        v->before = sdb_column_int64(s, 2);
        v->revoked_at = sdb_column_int64(s, 3);
        if (reg_col_text(s, 1, v->sub, sizeof(v->sub)) != 0 || v->sub[0] == '\0' || v->seq == 0)
            st = reg_fail(r->path, REG_ERR_IO, "subject revocation %llu: bad sub or seq",
                          (unsigned long long)v->seq);
        else
            r->n_subs++;
    }
    if (st == REG_OK && rc != SDB_DONE)
        st = reg_fail_step(r, s, "read subject revocations");
    sdb_finalize(s);
    /* The counter is advanced with each row, but a row is the proof: never below it. */
    if (st == REG_OK && r->n_subs > 0 && r->subs[r->n_subs - 1].seq > r->seq_hi)
        r->seq_hi = r->subs[r->n_subs - 1].seq;
    return st;
}

/* Loads every table into r's (empty) mirror, in one read transaction: one moment of the
 * database. */
static reg_status reg_load(reg *r)
{
    char err[512];
    if (sdb_begin_read(r->db, err, sizeof(err)) != SDB_OK)
        return reg_fail_db(r, err);
    reg_status st = reg_load_keys(r);
    if (st == REG_OK)
        st = reg_load_revocations(r);
    if (st == REG_OK)
        st = reg_load_subjects(r);
    sdb_rollback(r->db); /* it changed nothing */
    return st;
}

static void reg_mirror_free(reg *r)
{
    free(r->rows);
    free(r->order);
    free(r->index);
    free(r->revs);
    free(r->subs);
}

/* Sets the slot count from the mirror's active and retiring keys (reservations kept). */
static void reg_slots_from_mirror(reg *r)
{
    pthread_mutex_lock(&r->slot_mu);
    r->slots_active = (unsigned)(r->counts[REG_ACTIVE] + r->counts[REG_RETIRING]);
    pthread_mutex_unlock(&r->slot_mu);
}

static void reg_node_default(char node[REG_NODE_MAX + 1])
{
    if (gethostname(node, REG_NODE_MAX + 1) != 0)
        node[0] = '\0';
    node[REG_NODE_MAX] = '\0';
}

reg_status reg_open(const char *path, unsigned max_active, reg **out)
{
    if (out == NULL)
        return reg_fail(path, REG_ERR_INVALID, "no handle to return");
    *out = NULL;
    if (path == NULL || path[0] == '\0' || strlen(path) >= SDB_LOCATOR_MAX)
        return reg_fail(path, REG_ERR_INVALID, "path missing or too long");
    if (max_active == 0)
        return reg_fail(path, REG_ERR_INVALID, "max_active must be at least 1");
    reg_errbuf[0] = '\0';

    reg *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return reg_fail(path, REG_ERR_IO, "out of memory");
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->max_active = max_active;
    r->newest = -1;
    /* A millisecond ahead: a record an earlier run of this node wrote in the same
     * millisecond is still from before this start (reg_kid_orphan), and this run's own
     * records are stamped at least started_ms (reg_sql_pending_add). */
    r->started_ms = reg_wall_ms() + 1;
    reg_node_default(r->node);
    atomic_init(&r->generation, 1);
    atomic_init(&r->pokes, 0);
    pthread_mutex_init(&r->write_mu, NULL);
    pthread_mutex_init(&r->change_mu, NULL);
    clk_cond_init(&r->change_cv);
    /* Writer-preferring: thousands of signatures a second reading the mirror must not
     * starve a revocation's write lock. */
    lk_rwlock_init(&r->mirror_rw);
    pthread_mutex_init(&r->slot_mu, NULL);

    reg_status st = REG_OK;
    char err[512];
    /* SQLite: the file is created 0600 (its -wal and -shm get the same mode), never
     * through a symlink; PostgreSQL: a connection, no file. */
    if (sdb_open(path, SDB_OPEN_CREATE, REG_BUSY_TIMEOUT_MS, &r->db, err, sizeof(err)) != SDB_OK)
        st = reg_fail(path, REG_ERR_IO, "%s", err);
    if (st == REG_OK)
        st = sdb_kind_of(r->db) == SDB_POSTGRES ? reg_schema_pg_tx(r) : reg_schema_lite(r);
    if (st == REG_OK)
        st = reg_load(r);
    if (st != REG_OK) {
        reg_close(r);
        return st;
    }
    /* A retiring key still holds its object in the token: it keeps its slot. */
    r->slots_active = (unsigned)(r->counts[REG_ACTIVE] + r->counts[REG_RETIRING]);
    *out = r;
    return REG_OK;
}

void reg_close(reg *r)
{
    if (r == NULL)
        return;
    sdb_close(r->db); /* SQLite checkpoints the WAL; NULL is a no-op */
    pthread_mutex_destroy(&r->write_mu);
    pthread_rwlock_destroy(&r->mirror_rw);
    pthread_mutex_destroy(&r->slot_mu);
    pthread_mutex_destroy(&r->change_mu);
    pthread_cond_destroy(&r->change_cv);
    reg_mirror_free(r);
    free(r);
}

reg_status reg_set_node(reg *r, const char *name)
{
    if (r == NULL || name == NULL || strlen(name) > REG_NODE_MAX)
        return REG_ERR_INVALID;
    for (const char *p = name; *p != '\0'; p++)
        if (*p < 0x21 || *p > 0x7e)
            return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    if (name[0] == '\0')
        reg_node_default(r->node);
    else
        snprintf(r->node, sizeof(r->node), "%s", name);
    pthread_mutex_unlock(&r->write_mu);
    return REG_OK;
}

/* ---- refresh: the mirror from the tables --------------------------------------------------- */

static int reg_key_same(const reg_row *a, const reg_row *b)
{
    const reg_key *x = &a->k, *y = &b->k;
    return a->id == b->id && memcmp(x->kid.b, y->kid.b, SK_KID_LEN) == 0 && x->state == y->state &&
           x->bits == y->bits && strcmp(x->label, y->label) == 0 &&
           x->created_at == y->created_at && x->revoked_at == y->revoked_at &&
           strcmp(x->reason, y->reason) == 0 && x->revocation_seq == y->revocation_seq &&
           x->retire_at == y->retire_at && x->has_successor == y->has_successor &&
           (!x->has_successor || memcmp(x->successor.b, y->successor.b, SK_KID_LEN) == 0) &&
           x->has_predecessor == y->has_predecessor &&
           (!x->has_predecessor || memcmp(x->predecessor.b, y->predecessor.b, SK_KID_LEN) == 0) &&
           strcmp(x->n_b64, y->n_b64) == 0 && strcmp(x->e_b64, y->e_b64) == 0 &&
           x->token_attrs == y->token_attrs;
}

/* Whether two mirrors hold the same rows, revocations and subjects. Caller holds write_mu
 * (the only writer of either). */
static int reg_mirror_same(const reg *a, const reg *b)
{
    if (a->n_rows != b->n_rows || a->n_revs != b->n_revs || a->n_subs != b->n_subs ||
        a->seq_hi != b->seq_hi)
        return 0;
    for (size_t i = 0; i < b->n_rows; i++) {
        long s = reg_find(a, &b->rows[i].k.kid);
        if (s < 0 || !reg_key_same(&a->rows[s], &b->rows[i]))
            return 0;
    }
    for (size_t i = 0; i < b->n_revs; i++) {
        const reg_revocation *x = &a->revs[i], *y = &b->revs[i];
        if (x->seq != y->seq || memcmp(x->kid.b, y->kid.b, SK_KID_LEN) != 0 ||
            x->revoked_at != y->revoked_at || strcmp(x->reason, y->reason) != 0)
            return 0;
    }
    for (size_t i = 0; i < b->n_subs; i++) {
        const reg_subject *x = &a->subs[i], *y = &b->subs[i];
        if (x->seq != y->seq || x->before != y->before || x->revoked_at != y->revoked_at ||
            strcmp(x->sub, y->sub) != 0)
            return 0;
    }
    return 1;
}

/* Reloads the mirror from the tables: built aside (readers go on meanwhile), swapped in
 * under the write lock, the generation moved only when something differs. Caller holds
 * write_mu, so no local writer runs between the load and the swap. */
static reg_status reg_refresh_locked(reg *r)
{
    reg *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return reg_fail(r->path, REG_ERR_IO, "out of memory");
    t->db = r->db;
    snprintf(t->path, sizeof(t->path), "%s", r->path);
    t->newest = -1;
    reg_status st = reg_load(t);
    if (st == REG_OK && !reg_mirror_same(r, t)) {
        pthread_rwlock_wrlock(&r->mirror_rw);
#define REG_SWAP(f)                                                                                \
    do {                                                                                           \
        __typeof__(r->f) tmp_ = r->f;                                                              \
        r->f = t->f;                                                                               \
        t->f = tmp_;                                                                               \
    } while (0)
        REG_SWAP(rows);
        REG_SWAP(n_rows);
        REG_SWAP(cap_rows);
        REG_SWAP(order);
        REG_SWAP(index);
        REG_SWAP(index_cap);
        REG_SWAP(newest);
        REG_SWAP(revs);
        REG_SWAP(n_revs);
        REG_SWAP(cap_revs);
        REG_SWAP(subs);
        REG_SWAP(n_subs);
        REG_SWAP(cap_subs);
        REG_SWAP(seq_hi);
#undef REG_SWAP
        memcpy(r->counts, t->counts, sizeof(r->counts));
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
        reg_slots_from_mirror(r);
    }
    reg_mirror_free(t);
    free(t);
    return st;
}

/* After one try of a write decided on the mirror: 1 when the mirror may have lagged
 * another node's change (the database's WHERE found nothing to change, REG_STALE_, or
 * the kid was missing) on the first try, and the mirror was reloaded, so the caller
 * decides once more; 0 to stop there. A reload that fails replaces *st with its failure:
 * unread is not absent, so a kid missing from the mirror is then no REG_ERR_NOT_FOUND (a
 * revoke of a key another node had just made answered 404 after the database's restart,
 * where it is 503). Caller holds write_mu. */
static int reg_try_again(reg *r, reg_status *st, int attempt)
{
    if (attempt != 0 || (*st != REG_STALE_ && *st != REG_ERR_NOT_FOUND))
        return 0;
    reg_status rf = reg_refresh_locked(r);
    if (rf != REG_OK)
        *st = rf;
    return rf == REG_OK;
}

reg_status reg_refresh(reg *r)
{
    if (r == NULL)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_refresh_locked(r);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

reg_status reg_refresh_if_changed(reg *r)
{
    if (r == NULL)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    char err[256];
    reg_status st = REG_OK;
    if (!r->listening) {
        /* The first call: listen (SQLite: the data_version baseline), then load once, so
         * that nothing committed before the listening began is missed. */
        if (sdb_listen(r->db, REG_CHANNEL, err, sizeof(err)) != SDB_OK)
            st = reg_fail_db(r, err);
        else
            r->listening = 1;
        if (st == REG_OK)
            st = reg_refresh_locked(r);
    } else {
        sdb_status ch = sdb_changed(r->db);
        if (ch == SDB_ROW || ch == SDB_RESYNC)
            st = reg_refresh_locked(r);
        else if (ch != SDB_OK)
            st = reg_fail(r->path, REG_ERR_IO, "read change notes: the connection failed");
    }
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* ---- names and errors ------------------------------------------------------------------- */

const char *reg_state_name(reg_state s)
{
    return nm_name(reg_state_names, REG_STATE_COUNT_, (unsigned)s, "unknown");
}

int reg_state_parse(const char *s, reg_state *out)
{
    int i = nm_find(reg_state_names, REG_STATE_COUNT_, s);
    if (i < 0)
        return -1;
    *out = (reg_state)i;
    return 0;
}

const char *reg_strerror(reg_status st)
{
    return nm_name(reg_status_names, REG_ERR_COUNT_, (unsigned)st, "unknown registry status");
}

const char *reg_last_error(void)
{
    return reg_errbuf;
}

/* ---- creates ---------------------------------------------------------------------------- */

reg_status reg_reserve(reg *r)
{
    reg_status st = REG_OK;
    pthread_mutex_lock(&r->slot_mu);
    if ((unsigned long)r->slots_active + r->slots_reserved >= r->max_active)
        st = REG_ERR_LIMIT;
    else
        r->slots_reserved++;
    pthread_mutex_unlock(&r->slot_mu);
    return st;
}

void reg_unreserve(reg *r)
{
    pthread_mutex_lock(&r->slot_mu);
    if (r->slots_reserved > 0)
        r->slots_reserved--;
    pthread_mutex_unlock(&r->slot_mu);
}

/* Are k's strings terminated within their buffers? */
static int reg_key_terminated(const reg_key *k)
{
    return memchr(k->label, '\0', sizeof(k->label)) != NULL &&
           memchr(k->n_b64, '\0', sizeof(k->n_b64)) != NULL &&
           memchr(k->e_b64, '\0', sizeof(k->e_b64)) != NULL;
}

/* Appends the event that records this transaction's change (audit.h): same transaction,
 * so there is no change without its event and no event without its change. */
static reg_status reg_audit_tx(reg *r, int64_t time, const char *action, const sk_kid *kid,
                               json_t *details)
{
    reg_chain_handle *c = reg_chain_db(r);
    if (c == NULL) {
        json_decref(details);
        return REG_OK;
    }
    char hex[REG_KID_HEX + 1], err[256];
    if (kid != NULL)
        sk_kid_hex(kid, hex);
    int rc = chn_append_tx(c, time, action, kid ? hex : NULL, details, err, sizeof(err));
    json_decref(details);
    return rc == 0 ? REG_OK : reg_fail(r->path, REG_ERR_IO, "%s", err);
}

reg_status reg_audit(reg *r, int64_t time, const char *action, const sk_kid *kid, json_t *details)
{
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_begin(r, "begin audit event");
    if (st == REG_OK)
        st = reg_tx_end(r, reg_audit_tx(r, time, action, kid, details));
    else
        json_decref(details);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* The slots taken in the whole database, inside a write transaction (so no other node's
 * writer moves them before the commit): keys that hold an object in the token (active,
 * retiring) plus the pending records of creates under way on any node. A pending record
 * older than REG_PENDING_ORPHAN_MS is an orphan (its create died) and holds nothing. */
static reg_status reg_sql_slots_used(reg *r, int64_t *used)
{
    sdb_stmt *s;
    reg_status st =
        reg_prepare(r,
                    "SELECT (SELECT COUNT(*) FROM keys WHERE state IN ('active', 'retiring'))"
                    " + (SELECT COUNT(*) FROM pending_keys WHERE started_ms >= ?1)",
                    &s, "count the slots taken");
    if (st != REG_OK)
        return st;
    sdb_bind_int64(s, 1, reg_wall_ms() - REG_PENDING_ORPHAN_MS);
    return reg_step_int(r, s, "count the slots taken", used);
}

/* For an insert: the kid's pending record (its slot, reserved cluster-wide by
 * reg_pending_add) becomes its row; without one (a caller that skipped reg_pending_add)
 * the limit is checked here, in the same locked transaction. */
static reg_status reg_sql_take_slot(reg *r, const char *hex)
{
    sdb_stmt *s;
    reg_status st = reg_prepare(r, "DELETE FROM pending_keys WHERE kid = ?1", &s, "unpend kid");
    if (st != REG_OK)
        return st;
    sdb_bind_text(s, 1, hex, -1);
    if ((st = reg_step_done(r, s, "unpend kid")) != REG_OK || sdb_changes(r->db) == 1)
        return st;
    int64_t used = 0;
    st = reg_sql_slots_used(r, &used);
    if (st == REG_OK && used >= (int64_t)r->max_active)
        st = REG_ERR_LIMIT;
    return st;
}

/* Inserts k as an active row; predecessor (may be NULL) is the key it replaces. */
static reg_status reg_sql_insert(reg *r, const reg_key *k, const sk_kid *predecessor, int64_t *id)
{
    char hex[REG_KID_HEX + 1], pred[REG_KID_HEX + 1];
    sk_kid_hex(&k->kid, hex);
    if (predecessor != NULL)
        sk_kid_hex(predecessor, pred);
    reg_status st = reg_sql_take_slot(r, hex);
    sdb_stmt *s;
    if (st == REG_OK)
        st = reg_prepare(r,
                         "INSERT INTO keys (kid, state, bits, label, created_at, n, e, predecessor,"
                         " token_attrs) VALUES (?1, 'active', ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                         " RETURNING id",
                         &s, "insert key");
    if (st != REG_OK)
        return st;
    sdb_bind_text(s, 1, hex, -1);
    sdb_bind_int64(s, 2, k->bits);
    sdb_bind_text(s, 3, k->label, -1);
    sdb_bind_int64(s, 4, k->created_at);
    sdb_bind_text(s, 5, k->n_b64, -1);
    sdb_bind_text(s, 6, k->e_b64, -1);
    if (predecessor != NULL)
        sdb_bind_text(s, 7, pred, -1);
    else
        sdb_bind_null(s, 7);
    if (k->token_attrs & SK_ATTR_READ)
        sdb_bind_int64(s, 8, k->token_attrs & SK_ATTR_ALL);
    else
        sdb_bind_null(s, 8);
    sdb_status rc = sdb_step(s);
    if (rc == SDB_ROW) {
        *id = sdb_column_int64(s, 0);
        rc = sdb_step(s);
    }
    if (rc == SDB_ERR_CONSTRAINT)
        st = REG_ERR_EXISTS;
    else if (rc != SDB_DONE)
        st = reg_fail_step(r, s, "insert key");
    sdb_finalize(s);
    if (st == REG_OK)
        st = reg_notify(r, &k->kid);
    return st;
}

/* The mirror row of a key just inserted as active: k's own fields, every state-owned
 * field reset (a caller's stray revocation or rotation fields never reach the mirror). */
static void reg_row_fresh(reg_row *row, const reg_key *k, const sk_kid *predecessor)
{
    row->k = *k;
    row->k.state = REG_ACTIVE;
    row->k.revoked_at = 0;
    row->k.revocation_seq = 0;
    memset(row->k.reason, 0, sizeof(row->k.reason));
    row->k.retire_at = 0;
    row->k.has_successor = 0;
    memset(&row->k.successor, 0, sizeof(row->k.successor));
    row->k.has_predecessor = predecessor != NULL;
    if (predecessor != NULL)
        row->k.predecessor = *predecessor;
    else
        memset(&row->k.predecessor, 0,
               sizeof(row->k.predecessor)); /* As reg_sql_insert stored it: the known bits of a read
                                               value, or nothing. */
    row->k.token_attrs = (row->k.token_attrs & SK_ATTR_READ) ? row->k.token_attrs & SK_ATTR_ALL : 0;
}

reg_status reg_insert(reg *r, const reg_key *k)
{
    if (k == NULL || !reg_key_terminated(k)) {
        reg_unreserve(r);
        return REG_ERR_INVALID;
    }
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_slot_claim(r);
    int claimed = st == REG_OK;
    if (st == REG_OK && reg_find(r, &k->kid) >= 0)
        st = REG_ERR_EXISTS;
    if (st == REG_OK)
        st = reg_mirror_room(r, 1, 0);
    reg_row row;
    reg_row_fresh(&row, k, NULL);
    if (st == REG_OK && (st = reg_begin(r, "begin insert")) == REG_OK) {
        st = reg_sql_insert(r, k, NULL, &row.id);
        if (st == REG_OK)
            st = reg_audit_tx(r, k->created_at, CHN_KEY_CREATED, &k->kid,
                              json_pack("{s:i, s:s}", "bits", (int)k->bits, "label", k->label));
        st = reg_tx_end(r, st);
    }
    if (st == REG_OK) {
        pthread_rwlock_wrlock(&r->mirror_rw);
        reg_mirror_add(r, &row);
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
    }
    if (claimed)
        reg_slot_settle(r, st == REG_OK);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* reg_rotate's transaction: the successor's row, the old row's move (only while it is
 * still active: the mirror said so under write_mu, the WHERE says it again, for the
 * database: REG_STALE_ when another node moved it first), and both events. */
static reg_status reg_sql_rotate(reg *r, const sk_kid *old_kid, const reg_key *k, int64_t retire_at,
                                 int64_t *id)
{
    char old_hex[REG_KID_HEX + 1], new_hex[REG_KID_HEX + 1];
    sk_kid_hex(old_kid, old_hex);
    sk_kid_hex(&k->kid, new_hex);
    reg_status st = reg_begin(r, "begin rotation");
    if (st != REG_OK)
        return st;
    st = reg_sql_insert(r, k, old_kid, id);
    sdb_stmt *s;
    if (st == REG_OK)
        st = reg_prepare(r,
                         "UPDATE keys SET state = 'retiring', retire_at = ?1, successor = ?2"
                         " WHERE kid = ?3 AND state = 'active'",
                         &s, "retire key");
    if (st == REG_OK) {
        sdb_bind_int64(s, 1, retire_at);
        sdb_bind_text(s, 2, new_hex, -1);
        sdb_bind_text(s, 3, old_hex, -1);
        st = reg_step_done(r, s, "retire key");
    }
    if (st == REG_OK && sdb_changes(r->db) != 1)
        st = REG_STALE_;
    if (st == REG_OK)
        st = reg_notify(r, old_kid);
    if (st == REG_OK)
        st = reg_audit_tx(r, k->created_at, CHN_KEY_CREATED, &k->kid,
                          json_pack("{s:i, s:s, s:s}", "bits", (int)k->bits, "label", k->label,
                                    "predecessor", old_hex));
    if (st == REG_OK)
        st = reg_audit_tx(
            r, k->created_at, CHN_KEY_ROTATED, old_kid,
            json_pack("{s:s, s:I}", "successor", new_hex, "retire_at", (json_int_t)retire_at));
    return reg_tx_end(r, st);
}

/* reg_rotate's checks on the mirror. Caller holds write_mu. */
static reg_status reg_rotate_check(reg *r, const sk_kid *old_kid, const sk_kid *new_kid, long *old)
{
    *old = reg_find(r, old_kid);
    if (*old < 0)
        return REG_ERR_NOT_FOUND;
    if (r->rows[*old].k.state != REG_ACTIVE)
        return REG_ERR_STATE;
    return reg_find(r, new_kid) >= 0 ? REG_ERR_EXISTS : REG_OK;
}

reg_status reg_rotate(reg *r, const sk_kid *old_kid, const reg_key *successor, int64_t retire_at,
                      reg_key *old_out, reg_key *new_out)
{
    if (old_kid == NULL || successor == NULL || !reg_key_terminated(successor)) {
        reg_unreserve(r);
        return REG_ERR_INVALID;
    }
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_slot_claim(r);
    int claimed = st == REG_OK;
    long old = -1;
    reg_row row;
    reg_row_fresh(&row, successor, old_kid);
    /* The mirror may lag another node's change (NOT_FOUND, STATE, or the database's
     * WHERE disagreeing): refreshed once, then decided again. */
    for (int attempt = 0; st == REG_OK; attempt++) {
        st = reg_rotate_check(r, old_kid, &successor->kid, &old);
        if (st == REG_OK)
            st = reg_mirror_room(r, 1, 0);
        if (st == REG_OK)
            st = reg_sql_rotate(r, old_kid, successor, retire_at, &row.id);
        if (st == REG_ERR_STATE) /* a rotation's check reads the state the mirror holds */
            st = REG_STALE_;
        if (!reg_try_again(r, &st, attempt))
            break;
        st = REG_OK;
    }
    if (st == REG_STALE_)
        st = REG_ERR_STATE;
    if (st == REG_OK) {
        /* Both halves in one write-locked moment: no reader sees the successor without
         * the old key retiring, or the other way round. Adding appends a slot, so `old`
         * stays where it is. */
        pthread_rwlock_wrlock(&r->mirror_rw);
        reg_mirror_add(r, &row);
        reg_key *o = &r->rows[old].k;
        o->retire_at = retire_at;
        o->has_successor = 1;
        o->successor = successor->kid;
        reg_mirror_set_state(r, (size_t)old, REG_RETIRING);
        reg_bump(r);
        if (old_out != NULL)
            *old_out = *o;
        if (new_out != NULL)
            *new_out = row.k;
        pthread_rwlock_unlock(&r->mirror_rw);
    }
    /* The reservation becomes the successor's slot; the old key keeps its own. */
    if (claimed)
        reg_slot_settle(r, st == REG_OK);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* ---- changes ---------------------------------------------------------------------------- */

/* PostgreSQL: the next revocation seq, from the counter row, inside the registry's write
 * transaction: the advisory lock makes it one sequence for the cluster, the transaction
 * makes it gapless (a rollback takes the bump back). */
static reg_status reg_sql_bump_counter(reg *r, int64_t *seq)
{
    sdb_stmt *s;
    reg_status st = reg_prepare(r,
                                "UPDATE counters SET value = value + 1"
                                " WHERE name = 'revocations' RETURNING value",
                                &s, "advance revocation counter");
    return st == REG_OK ? reg_step_int(r, s, "advance revocation counter", seq) : st;
}

static reg_status reg_sql_revoke(reg *r, const sk_kid *kid, const char *reason, int64_t now,
                                 uint64_t *seq)
{
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    reg_status st = reg_begin(r, "begin revocation");
    if (st != REG_OK)
        return st;
    int pg = sdb_kind_of(r->db) == SDB_POSTGRES;
    sdb_stmt *s;
    st = reg_prepare(r, "UPDATE keys SET state = 'revoked' WHERE kid = ?1 AND state <> 'revoked'",
                     &s, "revoke key");
    if (st == REG_OK) {
        sdb_bind_text(s, 1, hex, -1);
        st = reg_step_done(r, s, "revoke key");
    }
    if (st == REG_OK && sdb_changes(r->db) != 1)
        st = REG_STALE_; /* revoked or gone on another node since the mirror's view */
    int64_t n = 0;
    if (st == REG_OK && pg)
        st = reg_sql_bump_counter(r, &n);
    if (st == REG_OK)
        st = reg_prepare(r,
                         pg ? "INSERT INTO revocations (kid, revoked_at, reason, seq)"
                              " VALUES (?1, ?2, ?3, ?4) RETURNING seq"
                            : "INSERT INTO revocations (kid, revoked_at, reason)"
                              " VALUES (?1, ?2, ?3) RETURNING seq",
                         &s, "append revocation");
    if (st == REG_OK) {
        sdb_bind_text(s, 1, hex, -1);
        sdb_bind_int64(s, 2, now);
        sdb_bind_text(s, 3, reason, -1);
        if (pg)
            sdb_bind_int64(s, 4, n);
        st = reg_step_int(r, s, "append revocation", &n);
    }
    if (st == REG_OK && n <= 0)
        st = reg_fail(r->path, REG_ERR_IO, "append revocation: seq %lld", (long long)n);
    if (st == REG_OK)
        st = reg_notify(r, kid);
    if (st == REG_OK) {
        *seq = (uint64_t)n;
        st = reg_audit_tx(
            r, now, CHN_KEY_REVOKED, kid,
            json_pack("{s:s, s:I}", "reason", reason, "revocation_seq", (json_int_t)*seq));
    }
    return reg_tx_end(r, st);
}

reg_status reg_revoke(reg *r, const sk_kid *kid, const char *reason, int64_t now, reg_key *out)
{
    if (kid == NULL)
        return REG_ERR_INVALID;
    if (reason == NULL)
        reason = "";
    if (strnlen(reason, REG_REASON_MAX + 1) > REG_REASON_MAX)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    long s = -1;
    uint64_t seq = 0;
    reg_status st = REG_OK;
    for (int attempt = 0;; attempt++) {
        s = reg_find(r, kid);
        st = s < 0 ? REG_ERR_NOT_FOUND : REG_OK;
        if (st == REG_OK && r->rows[s].k.state == REG_REVOKED) {
            if (out != NULL)
                *out = r->rows[s].k; /* the first record, untouched */
            pthread_mutex_unlock(&r->write_mu);
            return REG_OK;
        }
        if (st == REG_OK)
            st = reg_mirror_room(r, 0, 1);
        if (st == REG_OK)
            st = reg_sql_revoke(r, kid, reason, now, &seq);
        /* Not in the mirror, or the database disagrees: another node's change the mirror
         * has not seen yet. Refreshed once, decided again. */
        if (!reg_try_again(r, &st, attempt))
            break;
    }
    if (st == REG_STALE_)
        st = REG_ERR_STATE;
    if (st == REG_OK && seq != r->seq_hi + 1 && reg_refresh_locked(r) == REG_OK) {
        /* Other nodes revoked since the mirror's view: the whole mirror again (it holds
         * this revocation too), so that no reader sees seq n + 1 without n. */
        s = reg_find(r, kid);
        if (out != NULL && s >= 0)
            *out = r->rows[s].k;
    } else if (st == REG_OK) {
        reg_state was = r->rows[s].k.state;
        reg_revocation *v = &r->revs[r->n_revs];
        pthread_rwlock_wrlock(&r->mirror_rw);
        reg_key *k = &r->rows[s].k;
        reg_mirror_set_state(r, (size_t)s, REG_REVOKED);
        k->revoked_at = now;
        k->revocation_seq = seq;
        snprintf(k->reason, sizeof(k->reason), "%s", reason);
        memset(v, 0, sizeof(*v));
        v->seq = seq;
        v->kid = *kid;
        v->revoked_at = now;
        memcpy(v->reason, k->reason, sizeof(v->reason));
        r->n_revs++;
        if (seq > r->seq_hi)
            r->seq_hi = seq;
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
        if (was == REG_ACTIVE || was == REG_RETIRING)
            reg_slot_active_gone(r);
        if (out != NULL)
            *out = *k;
    }
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* SQLite: the next revocation seq, as AUTOINCREMENT would take it (the counter or the
 * largest seq, whichever is higher, + 1), subject revocations included. */
static reg_status reg_sql_next_seq_lite(reg *r, int64_t *seq)
{
    sdb_stmt *s;
    reg_status st = reg_prepare(
        r,
        "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'revocations'), 0),"
        " COALESCE((SELECT MAX(seq) FROM revocations), 0),"
        " COALESCE((SELECT MAX(seq) FROM subject_revocations), 0)) + 1",
        &s, "read revocation counter");
    return st == REG_OK ? reg_step_int(r, s, "read revocation counter", seq) : st;
}

/* The SQL half of reg_revoke_subject: the next seq of the shared sequence (into v->seq),
 * the row, the expired rows gone, the note and the audit event, in one transaction. */
static reg_status reg_sql_revoke_subject(reg *r, reg_subject *v, int64_t expired_before)
{
    reg_status st = reg_begin(r, "begin subject revocation");
    if (st != REG_OK)
        return st;
    int pg = sdb_kind_of(r->db) == SDB_POSTGRES;
    int64_t seq = 0;
    st = pg ? reg_sql_bump_counter(r, &seq) : reg_sql_next_seq_lite(r, &seq);
    v->seq = (uint64_t)seq;
    sdb_stmt *s;
    if (st == REG_OK)
        st = reg_prepare(r,
                         "INSERT INTO subject_revocations (seq, sub, before, revoked_at) "
                         "VALUES (?1, ?2, ?3, ?4)",
                         &s, "append subject revocation");
    if (st == REG_OK) {
        sdb_bind_int64(s, 1, seq);
        sdb_bind_text(s, 2, v->sub, -1);
        sdb_bind_int64(s, 3, v->before);
        sdb_bind_int64(s, 4, v->revoked_at);
        st = reg_step_done(r, s, "append subject revocation");
    }
    /* SQLite: AUTOINCREMENT takes max(counter, largest seq) + 1 for the next key
     * revocation: moving the counter here is what makes the sequence one. The table
     * exists (revocations is AUTOINCREMENT) but has no row before the first revocation. */
    if (st == REG_OK && !pg)
        st = reg_prepare(r, "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'revocations'", &s,
                         "advance revocation counter");
    if (st == REG_OK && !pg) {
        sdb_bind_int64(s, 1, seq);
        st = reg_step_done(r, s, "advance revocation counter");
    }
    if (st == REG_OK && !pg && sdb_changes(r->db) == 0) {
        st = reg_prepare(r, "INSERT INTO sqlite_sequence (name, seq) VALUES ('revocations', ?1)",
                         &s, "start revocation counter");
        if (st == REG_OK) {
            sdb_bind_int64(s, 1, seq);
            st = reg_step_done(r, s, "start revocation counter");
        }
    }
    if (st == REG_OK)
        st = reg_prepare(r, "DELETE FROM subject_revocations WHERE before <= ?1", &s,
                         "drop expired subject revocations");
    if (st == REG_OK) {
        sdb_bind_int64(s, 1, expired_before);
        st = reg_step_done(r, s, "drop expired subject revocations");
    }
    if (st == REG_OK)
        st = reg_notify(r, NULL);
    if (st == REG_OK)
        st = reg_audit_tx(r, v->revoked_at, CHN_SUBJECT_REVOKED, NULL,
                          json_pack("{s:s, s:I, s:I}", "sub", v->sub, "before",
                                    (json_int_t)v->before, "revocation_seq", (json_int_t)v->seq));
    return reg_tx_end(r, st);
}

reg_status reg_revoke_subject(reg *r, const char *sub, int64_t before, int64_t now,
                              int64_t expired_before, reg_subject *out)
{
    if (sub == NULL || sub[0] == '\0' || strnlen(sub, REG_SUB_MAX + 1) > REG_SUB_MAX)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    reg_subject v;
    memset(&v, 0, sizeof(v));
    snprintf(v.sub, sizeof(v.sub), "%s", sub);
    v.before = before;
    v.revoked_at = now;
    reg_status st = reg_subs_room(r);
    if (st == REG_OK)
        st = reg_sql_revoke_subject(r, &v, expired_before);
    /* As reg_revoke: a gap in the sequence is other nodes' revocations, read them too. */
    int refreshed = st == REG_OK && v.seq != r->seq_hi + 1 && reg_refresh_locked(r) == REG_OK;
    if (st == REG_OK && !refreshed) {
        pthread_rwlock_wrlock(&r->mirror_rw);
        size_t kept = 0;
        for (size_t i = 0; i < r->n_subs; i++)
            if (r->subs[i].before > expired_before)
                r->subs[kept++] = r->subs[i];
        r->n_subs = kept;
        r->subs[r->n_subs++] = v; /* room: reg_subs_room, and nothing grew since */
        r->seq_hi = v.seq;
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
    }
    if (st == REG_OK && out != NULL)
        *out = v;
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* The row of kid, for a change that a revoked key must never undergo (marking broken,
 * deleting): its index in *row, or REG_ERR_NOT_FOUND / REG_ERR_STATE. Caller holds
 * write_mu. */
static reg_status reg_find_unrevoked(reg *r, const sk_kid *kid, long *row)
{
    *row = reg_find(r, kid);
    if (*row < 0)
        return REG_ERR_NOT_FOUND;
    return r->rows[*row].k.state == REG_REVOKED ? REG_ERR_STATE : REG_OK;
}

/* One statement on kid's row (sql binds the kid as ?1 and names in its WHERE the states
 * the mirror allowed the move from: no row changed is REG_STALE_), its note and the audit
 * event that records it, in one transaction. details is consumed. */
static reg_status reg_sql_kid_change(reg *r, const char *sql, const sk_kid *kid, const char *action,
                                     json_t *details, const char *what)
{
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    reg_status st = reg_begin(r, what);
    if (st != REG_OK) {
        json_decref(details);
        return st;
    }
    sdb_stmt *q;
    st = reg_prepare(r, sql, &q, what);
    if (st == REG_OK) {
        sdb_bind_text(q, 1, hex, -1);
        st = reg_step_done(r, q, what);
    }
    if (st == REG_OK && sdb_changes(r->db) != 1)
        st = REG_STALE_;
    if (st == REG_OK)
        st = reg_notify(r, kid);
    if (st == REG_OK)
        st = reg_audit_tx(r, (int64_t)time(NULL), action, kid, details);
    else
        json_decref(details);
    return reg_tx_end(r, st);
}

reg_status reg_mark_broken(reg *r, const sk_kid *kid)
{
    if (kid == NULL)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    long s;
    reg_status st;
    for (int attempt = 0;; attempt++) {
        st = reg_find_unrevoked(r, kid, &s);
        if (st == REG_OK && r->rows[s].k.state == REG_BROKEN)
            break;
        if (st == REG_OK)
            st = reg_sql_kid_change(
                r,
                "UPDATE keys SET state = 'broken'"
                " WHERE kid = ?1 AND state IN ('active', 'retiring')",
                kid, CHN_KEY_BROKEN,
                json_pack("{s:s}", "why", "the token has no object for this kid"),
                "mark key broken");
        if (st == REG_OK) {
            pthread_rwlock_wrlock(&r->mirror_rw);
            reg_mirror_set_state(r, (size_t)s, REG_BROKEN);
            reg_bump(r);
            pthread_rwlock_unlock(&r->mirror_rw);
            reg_slot_active_gone(r);
        }
        if (!reg_try_again(r, &st, attempt))
            break;
    }
    if (st == REG_STALE_)
        st = REG_ERR_STATE;
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

reg_status reg_set_token_attrs(reg *r, const sk_kid *kid, sk_attrs attrs)
{
    if (kid == NULL || !(attrs & SK_ATTR_READ) || (attrs & ~SK_ATTR_ALL) != 0)
        return REG_ERR_INVALID;
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_find(r, kid) >= 0 ? REG_OK : REG_ERR_NOT_FOUND;
    if (st == REG_OK)
        st = reg_begin(r, "record token attributes");
    if (st == REG_OK) {
        sdb_stmt *q;
        /* Only where none is recorded: the read at generation is the one that counts. */
        st = reg_prepare(r,
                         "UPDATE keys SET token_attrs = ?2 WHERE kid = ?1 AND token_attrs IS NULL",
                         &q, "record token attributes");
        if (st == REG_OK) {
            sdb_bind_text(q, 1, hex, -1);
            sdb_bind_int64(q, 2, attrs);
            st = reg_step_done(r, q, "record token attributes");
        }
        int changed = st == REG_OK && sdb_changes(r->db) == 1;
        if (changed)
            st = reg_notify(r, kid);
        st = reg_tx_end(r, st);
        if (st == REG_OK && changed) {
            pthread_rwlock_wrlock(&r->mirror_rw);
            long i = reg_find(r, kid);
            if (i >= 0)
                r->rows[i].k.token_attrs = attrs;
            reg_bump(r);
            pthread_rwlock_unlock(&r->mirror_rw);
        }
    }
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

reg_status reg_delete(reg *r, const sk_kid *kid)
{
    if (kid == NULL)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&r->write_mu);
    long s;
    reg_status st;
    for (int attempt = 0;; attempt++) {
        st = reg_find_unrevoked(r, kid, &s);
        /* Either half of a rotation stays: deleting it would leave the other half's link
         * pointing at nothing (and a rotation never needs undoing: it is one
         * transaction). */
        if (st == REG_OK && (r->rows[s].k.state == REG_RETIRING || r->rows[s].k.has_predecessor))
            st = REG_ERR_STATE;
        if (st == REG_OK)
            st = reg_sql_kid_change(r,
                                    "DELETE FROM keys WHERE kid = ?1"
                                    " AND state IN ('active', 'broken') AND predecessor IS NULL",
                                    kid, CHN_KEY_DELETED, NULL, "delete key");
        if (st == REG_OK) {
            reg_state was = r->rows[s].k.state;
            pthread_rwlock_wrlock(&r->mirror_rw);
            reg_mirror_remove(r, (size_t)s);
            reg_bump(r);
            pthread_rwlock_unlock(&r->mirror_rw);
            if (was == REG_ACTIVE)
                reg_slot_active_gone(r);
        }
        if (!reg_try_again(r, &st, attempt))
            break;
    }
    if (st == REG_STALE_)
        st = REG_ERR_STATE;
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* ---- pending kids ------------------------------------------------------------------------ */

/* reg_pending_add's transaction: no row with kid in the database (the mirror may lag
 * another node), a free slot cluster-wide, then the record (this node's, started now). */
static reg_status reg_sql_pending_add(reg *r, const char *hex, int64_t now)
{
    reg_status st = reg_begin(r, "begin pending kid");
    if (st != REG_OK)
        return st;
    sdb_stmt *s;
    int64_t rows = 0, used = 0;
    st = reg_prepare(r, "SELECT COUNT(*) FROM keys WHERE kid = ?1", &s, "look up kid");
    if (st == REG_OK) {
        sdb_bind_text(s, 1, hex, -1);
        st = reg_step_int(r, s, "look up kid", &rows);
    }
    if (st == REG_OK && rows != 0)
        st = REG_ERR_EXISTS;
    if (st == REG_OK)
        st = reg_sql_slots_used(r, &used);
    if (st == REG_OK && used >= (int64_t)r->max_active)
        st = REG_ERR_LIMIT;
    if (st == REG_OK)
        st = reg_prepare(r,
                         "INSERT INTO pending_keys (kid, created_at, node, started_ms)"
                         " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (kid) DO NOTHING",
                         &s, "pend kid");
    if (st == REG_OK) {
        sdb_bind_text(s, 1, hex, -1);
        sdb_bind_int64(s, 2, now);
        sdb_bind_text(s, 3, r->node, -1);
        int64_t now_ms = reg_wall_ms();
        sdb_bind_int64(s, 4, now_ms > r->started_ms ? now_ms : r->started_ms);
        st = reg_step_done(r, s, "pend kid");
    }
    if (st == REG_OK && sdb_changes(r->db) != 1)
        st = REG_ERR_EXISTS;
    return reg_tx_end(r, st);
}

reg_status reg_pending_add(reg *r, const sk_kid *kid, int64_t now)
{
    if (kid == NULL)
        return REG_ERR_INVALID;
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_find(r, kid) >= 0 ? REG_ERR_EXISTS : REG_OK;
    if (st == REG_OK)
        st = reg_sql_pending_add(r, hex, now);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

void reg_pending_drop(reg *r, const sk_kid *kid)
{
    if (kid == NULL)
        return;
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&r->write_mu);
    sdb_stmt *s;
    reg_status st = reg_begin(r, "begin drop pending kid");
    if (st == REG_OK)
        st = reg_prepare(r, "DELETE FROM pending_keys WHERE kid = ?1", &s, "drop pending kid");
    if (st == REG_OK) {
        sdb_bind_text(s, 1, hex, -1);
        st = reg_step_done(r, s, "drop pending kid");
    }
    if (sdb_in_transaction(r->db))
        reg_tx_end(r, st);
    pthread_mutex_unlock(&r->write_mu);
}

reg_status reg_kid_orphan(reg *r, const sk_kid *kid, int64_t now_ms)
{
    if (r == NULL || kid == NULL)
        return REG_ERR_INVALID;
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&r->write_mu);
    sdb_stmt *s;
    /* One statement: the row and the record of one moment (a create removes its record in
     * the transaction that writes its row). */
    reg_status st = reg_prepare(r,
                                "SELECT (SELECT COUNT(*) FROM keys WHERE kid = ?1),"
                                " p.node, p.started_ms"
                                " FROM (SELECT 1 AS one) o"
                                " LEFT JOIN pending_keys p ON p.kid = ?1",
                                &s, "look up kid");
    if (st == REG_OK) {
        sdb_bind_text(s, 1, hex, -1);
        sdb_status rc = sdb_step(s);
        if (rc != SDB_ROW) {
            st = reg_fail_step(r, s, "look up kid");
        } else if (sdb_column_int64(s, 0) != 0) {
            st = REG_ERR_EXISTS;
        } else if (!sdb_column_is_null(s, 2)) {
            const char *node = sdb_column_text(s, 1);
            int64_t started = sdb_column_int64(s, 2);
            int mine_before = node != NULL && strcmp(node, r->node) == 0 && started < r->started_ms;
            if (started >= now_ms - REG_PENDING_ORPHAN_MS && !mine_before)
                st = REG_ERR_EXISTS; /* a create under way, here or on another node */
        }
        sdb_finalize(s);
    }
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* ---- reads ------------------------------------------------------------------------------ */

reg_status reg_get(reg *r, const sk_kid *kid, reg_key *out)
{
    if (kid == NULL)
        return REG_ERR_INVALID;
    pthread_rwlock_rdlock(&r->mirror_rw);
    long s = reg_find(r, kid);
    if (s >= 0 && out != NULL)
        *out = r->rows[s].k;
    pthread_rwlock_unlock(&r->mirror_rw);
    return s >= 0 ? REG_OK : REG_ERR_NOT_FOUND;
}

int reg_is_active(reg *r, const sk_kid *kid)
{
    if (kid == NULL)
        return 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    long s = reg_find(r, kid);
    int active = s >= 0 && r->rows[s].k.state == REG_ACTIVE;
    pthread_rwlock_unlock(&r->mirror_rw);
    return active;
}

reg_status reg_newest_active(reg *r, reg_key *out)
{
    pthread_rwlock_rdlock(&r->mirror_rw);
    long s = r->newest;
    if (s >= 0 && out != NULL)
        *out = r->rows[s].k;
    pthread_rwlock_unlock(&r->mirror_rw);
    return s >= 0 ? REG_OK : REG_ERR_NOT_FOUND;
}

size_t reg_count(reg *r, reg_state s)
{
    if ((unsigned)s >= REG_STATE_COUNT_)
        return 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    size_t n = r->counts[s];
    pthread_rwlock_unlock(&r->mirror_rw);
    return n;
}

size_t reg_list(reg *r, int state_filter, reg_key *out, size_t cap)
{
    if (out == NULL)
        cap = 0;
    size_t n = 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    for (size_t i = 0; i < r->n_rows; i++) {
        const reg_key *k = &r->rows[r->order[i]].k;
        if (state_filter == REG_LIST_LIVE ? k->state != REG_ACTIVE && k->state != REG_RETIRING
                                          : state_filter >= 0 && (int)k->state != state_filter)
            continue;
        if (n < cap)
            out[n] = *k;
        n++;
    }
    pthread_rwlock_unlock(&r->mirror_rw);
    return n;
}

size_t reg_retiring_due(reg *r, int64_t now, sk_kid *out, size_t cap, int64_t *next_at)
{
    if (out == NULL)
        cap = 0;
    size_t n = 0;
    int64_t next = 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    /* The common case, nothing rotated, costs one read of a count. */
    for (size_t s = 0; r->counts[REG_RETIRING] > 0 && s < r->n_rows; s++) {
        const reg_key *k = &r->rows[s].k;
        if (k->state != REG_RETIRING)
            continue;
        if (k->retire_at <= now) {
            if (n < cap)
                out[n] = k->kid;
            n++;
        } else if (next == 0 || k->retire_at < next) {
            next = k->retire_at;
        }
    }
    pthread_rwlock_unlock(&r->mirror_rw);
    if (next_at != NULL)
        *next_at = next;
    return n;
}

uint64_t reg_revocation_seq(reg *r)
{
    pthread_rwlock_rdlock(&r->mirror_rw);
    uint64_t seq = r->seq_hi;
    pthread_rwlock_unlock(&r->mirror_rw);
    return seq;
}

size_t reg_revocations_after(reg *r, uint64_t after, reg_revocation *out, size_t cap)
{
    if (out == NULL)
        cap = 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    size_t lo = 0, hi = r->n_revs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->revs[mid].seq <= after)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t n = r->n_revs - lo;
    size_t m = n < cap ? n : cap;
    if (m > 0)
        memcpy(out, r->revs + lo, m * sizeof(*out));
    pthread_rwlock_unlock(&r->mirror_rw);
    return n;
}

/* Copies into out (up to cap) the mirrored subject revocations whose `field` is above
 * floor, returns how many there are: the one filter reg_subjects_live and
 * reg_subjects_after share. */
typedef enum { REG_SUB_BY_BEFORE, REG_SUB_BY_SEQ } reg_sub_field;

static size_t reg_subjects_above(reg *r, reg_sub_field field, int64_t floor_before,
                                 uint64_t floor_seq, reg_subject *out, size_t cap)
{
    if (out == NULL)
        cap = 0;
    size_t n = 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    for (size_t i = 0; i < r->n_subs; i++) {
        const reg_subject *e = &r->subs[i];
        if (field == REG_SUB_BY_BEFORE ? e->before <= floor_before : e->seq <= floor_seq)
            continue;
        if (n < cap)
            out[n] = *e;
        n++;
    }
    pthread_rwlock_unlock(&r->mirror_rw);
    return n;
}

size_t reg_subjects_live(reg *r, int64_t expired_before, reg_subject *out, size_t cap)
{
    return reg_subjects_above(r, REG_SUB_BY_BEFORE, expired_before, 0, out, cap);
}

int reg_subject_revokes(reg *r, const char *sub, int64_t iat)
{
    int hit = 0;
    pthread_rwlock_rdlock(&r->mirror_rw);
    for (size_t i = 0; i < r->n_subs && !hit; i++)
        hit = iat < r->subs[i].before && strcmp(r->subs[i].sub, sub) == 0;
    pthread_rwlock_unlock(&r->mirror_rw);
    return hit;
}

size_t reg_subjects_after(reg *r, uint64_t after, reg_subject *out, size_t cap)
{
    return reg_subjects_above(r, REG_SUB_BY_SEQ, 0, after, out, cap);
}

uint64_t reg_generation(reg *r)
{
    return atomic_load_explicit(&r->generation, memory_order_acquire);
}

void reg_poke(reg *r)
{
    pthread_mutex_lock(&r->change_mu);
    atomic_fetch_add_explicit(&r->pokes, 1, memory_order_release);
    pthread_cond_broadcast(&r->change_cv);
    pthread_mutex_unlock(&r->change_mu);
}

uint64_t reg_wait_change(reg *r, uint64_t seen, unsigned timeout_ms)
{
    struct timespec until = clk_deadline(timeout_ms);
    pthread_mutex_lock(&r->change_mu);
    uint64_t gen, pokes = atomic_load_explicit(&r->pokes, memory_order_acquire);
    while ((gen = reg_generation(r)) == seen &&
           atomic_load_explicit(&r->pokes, memory_order_acquire) == pokes &&
           pthread_cond_timedwait(&r->change_cv, &r->change_mu, &until) == 0)
        ;
    pthread_mutex_unlock(&r->change_mu);
    return reg_generation(r);
}

/* ---- the read-only view ------------------------------------------------------------------ */

struct reg_reader {
    pthread_mutex_t mu; /* db and version: one caller at a time */
    sdb *db;
    uint64_t version; /* reg_reader_data_version's: moved by each change note */
    char path[SDB_LOCATOR_MAX];
};

static reg_status reg_reader_fail_step(const reg_reader *rr, const sdb_stmt *s, const char *what)
{
    return reg_fail(rr->path, REG_ERR_IO, "%s: %s", what, sdb_stmt_error(s));
}

/* The schema version must be one this build wrote: 0 (or none) is a database reg_open
 * never finished, above REG_SCHEMA_VERSION one a newer build owns. */
static reg_status reg_reader_check_schema(reg_reader *rr)
{
    sdb_stmt *s = NULL;
    char err[512];
    if (sdb_prepare(rr->db,
                    sdb_kind_of(rr->db) == SDB_POSTGRES
                        ? "SELECT version FROM schema_versions WHERE store = 'registry'"
                        : "PRAGMA user_version",
                    &s, "read schema version", err, sizeof(err)) != SDB_OK)
        return reg_fail(rr->path, REG_ERR_IO, "%s", err);
    sdb_status rc = sdb_step(s);
    int64_t version = rc == SDB_ROW ? sdb_column_int64(s, 0) : 0;
    reg_status st = rc == SDB_ROW || rc == SDB_DONE
                        ? REG_OK
                        : reg_reader_fail_step(rr, s, "read schema version");
    sdb_finalize(s);
    if (st == REG_OK && (version < 1 || version > REG_SCHEMA_VERSION))
        st = reg_fail(rr->path, REG_ERR_IO, "schema version %lld is not one this build knows (%d)",
                      (long long)version, REG_SCHEMA_VERSION);
    return st;
}

reg_status reg_reader_open(const char *path, reg_reader **out)
{
    if (out == NULL)
        return reg_fail(path, REG_ERR_INVALID, "no handle to return");
    *out = NULL;
    if (path == NULL || path[0] == '\0' || strlen(path) >= SDB_LOCATOR_MAX)
        return reg_fail(path, REG_ERR_INVALID, "path missing or too long");
    reg_errbuf[0] = '\0';

    char err[512];
    sdb *db = NULL;
    /* SQLite: never created, never through a symlink, a regular file; PostgreSQL:
     * read-only transactions. */
    if (sdb_open(path, SDB_OPEN_READONLY, REG_BUSY_TIMEOUT_MS, &db, err, sizeof(err)) != SDB_OK)
        return reg_fail(path, REG_ERR_IO, "%s", err);
    reg_reader *rr = calloc(1, sizeof(*rr));
    if (rr == NULL) {
        sdb_close(db);
        return reg_fail(path, REG_ERR_IO, "out of memory");
    }
    rr->db = db;
    rr->version = 1;
    snprintf(rr->path, sizeof(rr->path), "%s", path);
    pthread_mutex_init(&rr->mu, NULL);
    reg_status st = reg_reader_check_schema(rr);
    /* From here every committed change moves the version: PostgreSQL's notes arrive on
     * this connection, SQLite's data_version has its baseline. */
    if (st == REG_OK && sdb_listen(db, REG_CHANNEL, err, sizeof(err)) != SDB_OK)
        st = reg_fail(path, REG_ERR_IO, "%s", err);
    if (st != REG_OK) {
        reg_reader_close(rr);
        return st;
    }
    *out = rr;
    return REG_OK;
}

uint64_t reg_reader_data_version(reg_reader *rr)
{
    if (rr == NULL)
        return 0;
    pthread_mutex_lock(&rr->mu);
    /* No round trip: SQLite reads its data_version, PostgreSQL what the socket holds. A
     * reset connection may have lost notes: as good as a change. */
    sdb_status st = sdb_changed(rr->db);
    uint64_t v = 0;
    if (st == SDB_ROW || st == SDB_RESYNC)
        rr->version++;
    if (st == SDB_OK || st == SDB_ROW || st == SDB_RESYNC)
        v = rr->version;
    else
        reg_fail(rr->path, REG_ERR_IO, "read change notes: the connection failed");
    pthread_mutex_unlock(&rr->mu);
    return v;
}

/* The kids a query's first column names, sorted. */
static reg_status reg_reader_kids(reg_reader *rr, const char *sql, sk_kid **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (rr == NULL)
        return REG_ERR_INVALID;
    pthread_mutex_lock(&rr->mu);
    reg_status result = REG_OK;
    sdb_stmt *st = NULL;
    sk_kid *kids = NULL;
    size_t have = 0, cap = 0;
    char err[512];
    if (sdb_prepare(rr->db, sql, &st, "prepare the active listing", err, sizeof(err)) != SDB_OK) {
        result = reg_fail(rr->path, REG_ERR_IO, "%s", err);
        goto out;
    }
    sdb_status rc;
    while ((rc = sdb_step(st)) == SDB_ROW) {
        const char *hex = sdb_column_text(st, 0);
        sk_kid kid;
        if (hex == NULL || sk_kid_parse(hex, &kid) != 0)
            continue; /* not a kid this reader can answer for: never active */
        if (have == cap) {
            size_t ncap = cap ? 2 * cap : 1024;
            sk_kid *nk = realloc(kids, ncap * sizeof(*nk));
            if (nk == NULL) {
                result = reg_fail(rr->path, REG_ERR_IO, "out of memory");
                goto out;
            }
            kids = nk;
            cap = ncap;
        }
        kids[have++] = kid;
    }
    if (rc != SDB_DONE) {
        result = reg_reader_fail_step(rr, st, "list the active keys");
        goto out;
    }
    if (have > 1)
        qsort(kids, have, sizeof(*kids), sk_kid_cmp);
    *out = kids;
    *n = have;
    kids = NULL;
out:
    free(kids);
    sdb_finalize(st); /* ends the statement's read transaction */
    pthread_mutex_unlock(&rr->mu);
    return result;
}

reg_status reg_reader_active_kids(reg_reader *rr, sk_kid **out, size_t *n)
{
    return reg_reader_kids(rr, "SELECT kid FROM keys WHERE state = 'active'", out, n);
}

reg_status reg_reader_all_kids(reg_reader *rr, sk_kid **out, size_t *n)
{
    return reg_reader_kids(rr, "SELECT kid FROM keys", out, n);
}

reg_status reg_reader_pending(reg_reader *rr, const sk_kid *kid)
{
    if (rr == NULL || kid == NULL)
        return REG_ERR_INVALID;
    char hex[REG_KID_HEX + 1], err[512];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&rr->mu);
    sdb_stmt *st = NULL;
    reg_status result;
    /* One statement, one read transaction: both answers of the same moment. */
    if (sdb_prepare(rr->db,
                    "SELECT (SELECT COUNT(*) FROM pending_keys WHERE kid = ?1),"
                    " (SELECT COUNT(*) FROM keys WHERE kid = ?1)",
                    &st, "prepare the pending check", err, sizeof(err)) != SDB_OK) {
        result = reg_fail(rr->path, REG_ERR_IO, "%s", err);
    } else {
        sdb_bind_text(st, 1, hex, -1);
        if (sdb_step(st) != SDB_ROW)
            result = reg_reader_fail_step(rr, st, "read the pending check");
        else if (sdb_column_int64(st, 1) != 0)
            result = REG_ERR_EXISTS;
        else
            result = sdb_column_int64(st, 0) != 0 ? REG_OK : REG_ERR_NOT_FOUND;
    }
    sdb_finalize(st);
    pthread_mutex_unlock(&rr->mu);
    return result;
}

void reg_reader_close(reg_reader *rr)
{
    if (rr == NULL)
        return;
    sdb_close(rr->db);
    pthread_mutex_destroy(&rr->mu);
    free(rr);
}
