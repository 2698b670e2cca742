/* reg: the key registry, SQLite behind an in-memory mirror. See registry.h. */
#include "appliance/store/registry.h"

#include "appliance/store/chain.h"
#include "appliance/store/db.h"
#include "base/clock.h"
#include "base/errbuf.h"
#include "base/names.h"
#include "base/lock.h"

#include <sqlite3.h>

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

/* One key as the mirror keeps it: the row plus its insertion order. */
typedef struct {
    reg_key k;
    int64_t id; /* keys.id: breaks created_at ties for reg_newest_active */
} reg_row;

struct reg {
    sqlite3 *db; /* under write_mu */
    char path[PATH_MAX];
    unsigned max_active;

    pthread_mutex_t write_mu;   /* SQLite and every change; first in the lock order */
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
    uint64_t seq_hi; /* the highest seq ever assigned in the file */

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
    " retire_at INTEGER," /* schema 2, rotation: NULL for a key never rotated */
    " successor TEXT,"    /* kid hex of the key that replaced this one, or NULL */
    " predecessor TEXT);" /* kid hex of the key this one replaced, or NULL */
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

static _Thread_local char reg_errbuf[REG_ERR_MSG_MAX];

/* ---- errors ---------------------------------------------------------------------------- */

static reg_status reg_fail(const char *path, reg_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a failure for reg_last_error() and stderr, naming the file; returns st. */
static reg_status reg_fail(const char *path, reg_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eb_vset(reg_errbuf, sizeof(reg_errbuf), "registry", path, fmt, ap);
    va_end(ap);
    return st;
}

/* A failed SQLite step: what we were doing and SQLite's message. */
static reg_status reg_fail_sql(const reg *r, const char *what)
{
    return reg_fail(r->path, REG_ERR_IO, "%s: %s", what, sqlite3_errmsg(r->db));
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

/* ---- SQLite helpers --------------------------------------------------------------------- */

static reg_status reg_exec(reg *r, const char *sql, const char *what)
{
    if (sqlite3_exec(r->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return reg_fail_sql(r, what);
    return REG_OK;
}

static reg_status reg_prepare(reg *r, const char *sql, sqlite3_stmt **s, const char *what)
{
    if (sqlite3_prepare_v2(r->db, sql, -1, s, NULL) != SQLITE_OK)
        return reg_fail_sql(r, what);
    return REG_OK;
}

/* Runs a statement that returns no row, then finalises it. */
static reg_status reg_step_done(reg *r, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    reg_status st = rc == SQLITE_DONE ? REG_OK : reg_fail_sql(r, what);
    sqlite3_finalize(s);
    return st;
}

/* Ends a write transaction: COMMIT when st is REG_OK (fsynced on return), else ROLLBACK.
 * The error was recorded before the rollback, so SQLite's message is the one that
 * mattered. */
static reg_status reg_tx_end(reg *r, reg_status st)
{
    if (st == REG_OK && reg_exec(r, "COMMIT", "commit") == REG_OK)
        return REG_OK;
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    return st == REG_OK ? REG_ERR_IO : st;
}

/* ---- open: pragmas, schema, load -------------------------------------------------------- */

/* Sets *has when table `keys` has a column named col. */
static reg_status reg_keys_has_column(reg *r, const char *col, int *has)
{
    sqlite3_stmt *s;
    reg_status st = reg_prepare(r, "SELECT 1 FROM pragma_table_info('keys') WHERE name = ?", &s,
                                "read the keys table's columns");
    if (st != REG_OK)
        return st;
    sqlite3_bind_text(s, 1, col, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    *has = rc == SQLITE_ROW;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        st = reg_fail_sql(r, "read the keys table's columns");
    sqlite3_finalize(s);
    return st;
}

/* Schema 1 -> 2, inside reg_schema's transaction: the rotation columns. Version 1 made
 * `state` a plain TEXT column (no CHECK), so ADD COLUMN is enough: no table rebuild, every
 * row keeps its id (the tie-break of reg_newest_active) and the revocations' foreign keys
 * stay as they are. A column already there (a half-known file) is left alone. */
static reg_status reg_migrate_v2(reg *r)
{
    static const struct {
        const char *name, *sql;
    } cols[] = {
        {"retire_at", "ALTER TABLE keys ADD COLUMN retire_at INTEGER"},
        {"successor", "ALTER TABLE keys ADD COLUMN successor TEXT"},
        {"predecessor", "ALTER TABLE keys ADD COLUMN predecessor TEXT"},
    };
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        int has = 0;
        reg_status st = reg_keys_has_column(r, cols[i].name, &has);
        if (st == REG_OK && !has)
            st = reg_exec(r, cols[i].sql, "migrate schema 1 to 2");
        if (st != REG_OK)
            return st;
    }
    return REG_OK;
}

/* Creates the tables when missing, migrates an older schema in place and refuses a newer
 * one, all in one transaction. */
static reg_status reg_schema(reg *r)
{
    reg_status st = reg_exec(r, "BEGIN IMMEDIATE", "begin schema transaction");
    if (st != REG_OK)
        return st;
    sqlite3_stmt *s;
    int version = -1;
    st = reg_prepare(r, "PRAGMA user_version", &s, "read schema version");
    if (st == REG_OK) {
        if (sqlite3_step(s) == SQLITE_ROW)
            version = sqlite3_column_int(s, 0);
        else
            st = reg_fail_sql(r, "read schema version");
        sqlite3_finalize(s);
    }
    if (st == REG_OK && (version < 0 || version > REG_SCHEMA_VERSION))
        st = reg_fail(r->path, REG_ERR_IO, "schema version %d is not one this build knows (%d)",
                      version, REG_SCHEMA_VERSION);
    if (st == REG_OK)
        st = reg_exec(r, reg_schema_sql, "create tables");
    if (st == REG_OK && version == 1)
        st = reg_migrate_v2(r);
    /* A kid still pending was reserved by a create that never finished: its object, if
     * the keeper made one, is an orphan for reconcile, and the keeper never generates
     * under that kid again (kstate.h). */
    if (st == REG_OK)
        st = reg_exec(r, "DELETE FROM pending_keys", "clear pending kids");
    char aerr[256];
    if (st == REG_OK && chn_schema(r->db, aerr, sizeof(aerr)) != 0)
        st = reg_fail(r->path, REG_ERR_IO, "%s", aerr);
    if (st == REG_OK && version < REG_SCHEMA_VERSION) {
        char sql[64];
        snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", REG_SCHEMA_VERSION);
        st = reg_exec(r, sql, "set schema version");
    }
    return reg_tx_end(r, st);
}

/* An optional kid column (successor, predecessor): *has 0 for NULL, else 1 and *kid set;
 * -1 when the text is not a kid. */
static int reg_col_kid(sqlite3_stmt *s, int col, int *has, sk_kid *kid)
{
    *has = sqlite3_column_type(s, col) != SQLITE_NULL;
    if (!*has)
        return 0;
    return sk_kid_parse_n((const char *)sqlite3_column_text(s, col),
                          (size_t)sqlite3_column_bytes(s, col), kid);
}

/* One row of the keys LEFT JOIN revocations query into *row; REG_ERR_IO names what is
 * wrong with it. */
static reg_status reg_load_key(reg *r, sqlite3_stmt *s, reg_row *row)
{
    memset(row, 0, sizeof(*row));
    row->id = sqlite3_column_int64(s, 0);
    const char *kid = (const char *)sqlite3_column_text(s, 1);
    if (sk_kid_parse_n(kid, (size_t)sqlite3_column_bytes(s, 1), &row->k.kid) != 0)
        return reg_fail(r->path, REG_ERR_IO, "key id %lld: kid is not 32 lowercase hex digits",
                        (long long)row->id);
    const char *state = (const char *)sqlite3_column_text(s, 2);
    sqlite3_int64 bits = sqlite3_column_int64(s, 3);
    if (reg_state_parse(state, &row->k.state) != 0)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: unknown state '%s'", kid,
                        state ? state : "NULL");
    if (bits < 0 || bits > UINT_MAX)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: bits out of range", kid);
    row->k.bits = (unsigned)bits;
    row->k.created_at = sqlite3_column_int64(s, 5);
    if (db_col_text(s, 4, row->k.label, sizeof(row->k.label)) != 0 ||
        db_col_text(s, 6, row->k.n_b64, sizeof(row->k.n_b64)) != 0 ||
        db_col_text(s, 7, row->k.e_b64, sizeof(row->k.e_b64)) != 0)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: label or public key missing or too long",
                        kid);
    int has_rev = sqlite3_column_type(s, 8) != SQLITE_NULL;
    if (has_rev != (row->k.state == REG_REVOKED))
        return reg_fail(r->path, REG_ERR_IO,
                        has_rev ? "kid %s: has a revocation record but is not revoked"
                                : "kid %s: is revoked but has no revocation record",
                        kid);
    if (has_rev) {
        row->k.revocation_seq = (uint64_t)sqlite3_column_int64(s, 8);
        row->k.revoked_at = sqlite3_column_int64(s, 9);
        if (db_col_text(s, 10, row->k.reason, sizeof(row->k.reason)) != 0)
            return reg_fail(r->path, REG_ERR_IO, "kid %s: reason missing or too long", kid);
    }
    row->k.retire_at = sqlite3_column_int64(s, 11); /* NULL reads as 0 */
    if (reg_col_kid(s, 12, &row->k.has_successor, &row->k.successor) != 0 ||
        reg_col_kid(s, 13, &row->k.has_predecessor, &row->k.predecessor) != 0)
        return reg_fail(r->path, REG_ERR_IO, "kid %s: successor or predecessor is not a kid", kid);
    /* The scheduler revokes a retiring key at retire_at; without one it would stay
     * published forever, so such a row is refused like any other inconsistency. */
    if (row->k.state == REG_RETIRING &&
        (sqlite3_column_type(s, 11) == SQLITE_NULL || !row->k.has_successor))
        return reg_fail(r->path, REG_ERR_IO, "kid %s: retiring without retire_at or successor",
                        kid);
    return REG_OK;
}

static reg_status reg_load_keys(reg *r)
{
    sqlite3_stmt *s;
    reg_status st = reg_prepare(r,
                                "SELECT k.id, k.kid, k.state, k.bits, k.label, k.created_at, k.n,"
                                " k.e, v.seq, v.revoked_at, v.reason, k.retire_at, k.successor,"
                                " k.predecessor"
                                " FROM keys k LEFT JOIN revocations v ON v.kid = k.kid",
                                &s, "read keys");
    int rc = SQLITE_DONE;
    while (st == REG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        reg_row row;
        st = reg_load_key(r, s, &row);
        if (st == REG_OK)
            st = reg_grow(r, r->n_rows + 1, 0);
        if (st == REG_OK && reg_find(r, &row.k.kid) >= 0)
            st = reg_fail(r->path, REG_ERR_IO, "kid %.32s: two rows",
                          (const char *)sqlite3_column_text(s, 1));
        if (st == REG_OK) {
            r->rows[r->n_rows] = row;
            reg_index_put(r, r->n_rows);
            r->n_rows++;
        }
    }
    if (st == REG_OK && rc != SQLITE_DONE)
        st = reg_fail_sql(r, "read keys");
    sqlite3_finalize(s);
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

static reg_status reg_load_revocations(reg *r)
{
    sqlite3_stmt *s;
    reg_status st =
        reg_prepare(r, "SELECT seq, kid, revoked_at, reason FROM revocations ORDER BY seq", &s,
                    "read revocations");
    int rc = SQLITE_DONE;
    while (st == REG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st = reg_grow(r, 0, r->n_revs + 1);
        if (st != REG_OK)
            break;
        reg_revocation *v = &r->revs[r->n_revs];
        memset(v, 0, sizeof(*v));
        v->seq = (uint64_t)sqlite3_column_int64(s, 0);
        v->revoked_at = sqlite3_column_int64(s, 2);
        if (sk_kid_parse_n((const char *)sqlite3_column_text(s, 1),
                           (size_t)sqlite3_column_bytes(s, 1), &v->kid) != 0 ||
            db_col_text(s, 3, v->reason, sizeof(v->reason)) != 0 || v->seq == 0)
            st = reg_fail(r->path, REG_ERR_IO, "revocation %llu: bad kid, reason or seq",
                          (unsigned long long)v->seq);
        else
            r->n_revs++;
    }
    if (st == REG_OK && rc != SQLITE_DONE)
        st = reg_fail_sql(r, "read revocations");
    sqlite3_finalize(s);
    if (st != REG_OK)
        return st;
    r->seq_hi = r->n_revs ? r->revs[r->n_revs - 1].seq : 0;
    /* AUTOINCREMENT's own counter: the highest seq ever handed out, even if deleted since. */
    st = reg_prepare(r, "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'", &s,
                     "read revocation counter");
    if (st != REG_OK)
        return st;
    if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        sqlite3_int64 hi = sqlite3_column_int64(s, 0);
        if (hi > 0 && (uint64_t)hi > r->seq_hi)
            r->seq_hi = (uint64_t)hi;
    } else if (rc != SQLITE_DONE) {
        st = reg_fail_sql(r, "read revocation counter");
    }
    sqlite3_finalize(s);
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
    sqlite3_stmt *s;
    reg_status st =
        reg_prepare(r, "SELECT seq, sub, before, revoked_at FROM subject_revocations ORDER BY seq",
                    &s, "read subject revocations");
    int rc = SQLITE_DONE;
    while (st == REG_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if ((st = reg_subs_room(r)) != REG_OK)
            break;
        reg_subject *v = &r->subs[r->n_subs];
        memset(v, 0, sizeof(*v));
        v->seq = (uint64_t)sqlite3_column_int64(s, 0);
        v->before = sqlite3_column_int64(s, 2);
        v->revoked_at = sqlite3_column_int64(s, 3);
        if (db_col_text(s, 1, v->sub, sizeof(v->sub)) != 0 || v->sub[0] == '\0' || v->seq == 0)
            st = reg_fail(r->path, REG_ERR_IO, "subject revocation %llu: bad sub or seq",
                          (unsigned long long)v->seq);
        else
            r->n_subs++;
    }
    if (st == REG_OK && rc != SQLITE_DONE)
        st = reg_fail_sql(r, "read subject revocations");
    sqlite3_finalize(s);
    /* The counter is advanced with each row, but a row is the proof: never below it. */
    if (st == REG_OK && r->n_subs > 0 && r->subs[r->n_subs - 1].seq > r->seq_hi)
        r->seq_hi = r->subs[r->n_subs - 1].seq;
    return st;
}

reg_status reg_open(const char *path, unsigned max_active, reg **out)
{
    if (out == NULL)
        return reg_fail(path, REG_ERR_INVALID, "no handle to return");
    *out = NULL;
    if (path == NULL || path[0] == '\0' || strlen(path) >= PATH_MAX)
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
    char err[256];
    /* db_open creates the file 0600 (SQLite gives its -wal and -shm the same mode). */
    if (db_open(path, REG_BUSY_TIMEOUT_MS, &r->db, err, sizeof(err)) != 0)
        st = reg_fail(path, REG_ERR_IO, "%s", err);
    if (st == REG_OK)
        st = reg_exec(r, "PRAGMA foreign_keys=ON", "set pragmas");
    if (st == REG_OK)
        st = reg_schema(r);
    if (st == REG_OK)
        st = reg_load_keys(r);
    if (st == REG_OK)
        st = reg_load_revocations(r);
    if (st == REG_OK)
        st = reg_load_subjects(r);
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
    sqlite3_close(r->db); /* checkpoints the WAL; NULL is a no-op */
    pthread_mutex_destroy(&r->write_mu);
    pthread_rwlock_destroy(&r->mirror_rw);
    pthread_mutex_destroy(&r->slot_mu);
    pthread_mutex_destroy(&r->change_mu);
    pthread_cond_destroy(&r->change_cv);
    free(r->rows);
    free(r->order);
    free(r->index);
    free(r->revs);
    free(r->subs);
    free(r);
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
    char hex[REG_KID_HEX + 1], err[256];
    if (kid != NULL)
        sk_kid_hex(kid, hex);
    int rc = chn_append_tx(r->db, time, action, kid ? hex : NULL, details, err, sizeof(err));
    json_decref(details);
    return rc == 0 ? REG_OK : reg_fail(r->path, REG_ERR_IO, "%s", err);
}

reg_status reg_audit(reg *r, int64_t time, const char *action, const sk_kid *kid, json_t *details)
{
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_exec(r, "BEGIN IMMEDIATE", "begin audit event");
    if (st == REG_OK)
        st = reg_tx_end(r, reg_audit_tx(r, time, action, kid, details));
    else
        json_decref(details);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* Inserts k as an active row; predecessor (may be NULL) is the key it replaces. */
static reg_status reg_sql_insert(reg *r, const reg_key *k, const sk_kid *predecessor, int64_t *id)
{
    char hex[REG_KID_HEX + 1], pred[REG_KID_HEX + 1];
    sk_kid_hex(&k->kid, hex);
    if (predecessor != NULL)
        sk_kid_hex(predecessor, pred);
    sqlite3_stmt *s;
    reg_status st =
        reg_prepare(r,
                    "INSERT INTO keys (kid, state, bits, label, created_at, n, e, predecessor)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    &s, "insert key");
    if (st != REG_OK)
        return st;
    if (predecessor != NULL)
        sqlite3_bind_text(s, 8, pred, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 8);
    sqlite3_bind_text(s, 1, hex, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, reg_state_name(REG_ACTIVE), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, k->bits);
    sqlite3_bind_text(s, 4, k->label, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, k->created_at);
    sqlite3_bind_text(s, 6, k->n_b64, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 7, k->e_b64, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        *id = sqlite3_last_insert_rowid(r->db);
    else if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        st = REG_ERR_EXISTS;
    else
        st = reg_fail_sql(r, "insert key");
    sqlite3_finalize(s);
    /* The kid is a key now, no longer pending: in the same transaction. */
    if (st == REG_OK)
        st = reg_prepare(r, "DELETE FROM pending_keys WHERE kid = ?", &s, "unpend kid");
    if (st == REG_OK) {
        sqlite3_bind_text(s, 1, hex, -1, SQLITE_STATIC);
        st = reg_step_done(r, s, "unpend kid");
    }
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
        memset(&row->k.predecessor, 0, sizeof(row->k.predecessor));
}

reg_status reg_insert(reg *r, const reg_key *k)
{
    if (k == NULL || !reg_key_terminated(k)) {
        reg_unreserve(r);
        return REG_ERR_INVALID;
    }
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_slot_claim(r);
    if (st == REG_OK && reg_find(r, &k->kid) >= 0)
        st = REG_ERR_EXISTS;
    if (st == REG_OK)
        st = reg_mirror_room(r, 1, 0);
    reg_row row;
    reg_row_fresh(&row, k, NULL);
    if (st == REG_OK && (st = reg_exec(r, "BEGIN IMMEDIATE", "begin insert")) == REG_OK) {
        st = reg_sql_insert(r, k, NULL, &row.id);
        if (st == REG_OK)
            st = reg_audit_tx(r, k->created_at, CHN_KEY_CREATED, &k->kid,
                              json_pack("{s:i, s:s}", "bits", (int)k->bits, "label", k->label));
        reg_status end = reg_tx_end(r, st);
        if (st == REG_OK)
            st = end;
    }
    if (st == REG_OK) {
        pthread_rwlock_wrlock(&r->mirror_rw);
        reg_mirror_add(r, &row);
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
    }
    if (st != REG_ERR_LIMIT)
        reg_slot_settle(r, st == REG_OK);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* reg_rotate's transaction: the successor's row, the old row's move (only while it is
 * still active: the mirror said so under write_mu, the WHERE says it again), and both
 * events. */
static reg_status reg_sql_rotate(reg *r, const sk_kid *old_kid, const reg_key *k, int64_t retire_at,
                                 int64_t *id)
{
    char old_hex[REG_KID_HEX + 1], new_hex[REG_KID_HEX + 1];
    sk_kid_hex(old_kid, old_hex);
    sk_kid_hex(&k->kid, new_hex);
    reg_status st = reg_exec(r, "BEGIN IMMEDIATE", "begin rotation");
    if (st != REG_OK)
        return st;
    st = reg_sql_insert(r, k, old_kid, id);
    sqlite3_stmt *s;
    if (st == REG_OK)
        st = reg_prepare(r,
                         "UPDATE keys SET state = ?1, retire_at = ?2, successor = ?3"
                         " WHERE kid = ?4 AND state = ?5",
                         &s, "retire key");
    if (st == REG_OK) {
        sqlite3_bind_text(s, 1, reg_state_name(REG_RETIRING), -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, retire_at);
        sqlite3_bind_text(s, 3, new_hex, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, old_hex, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 5, reg_state_name(REG_ACTIVE), -1, SQLITE_STATIC);
        st = reg_step_done(r, s, "retire key");
    }
    if (st == REG_OK && sqlite3_changes(r->db) != 1)
        st = reg_fail(r->path, REG_ERR_IO, "rotate key %s: its active row is missing from the file",
                      old_hex);
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

reg_status reg_rotate(reg *r, const sk_kid *old_kid, const reg_key *successor, int64_t retire_at,
                      reg_key *old_out, reg_key *new_out)
{
    if (old_kid == NULL || successor == NULL || !reg_key_terminated(successor)) {
        reg_unreserve(r);
        return REG_ERR_INVALID;
    }
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_slot_claim(r);
    long old = -1;
    if (st == REG_OK) {
        old = reg_find(r, old_kid);
        if (old < 0)
            st = REG_ERR_NOT_FOUND;
        else if (r->rows[old].k.state != REG_ACTIVE)
            st = REG_ERR_STATE;
        else if (reg_find(r, &successor->kid) >= 0)
            st = REG_ERR_EXISTS;
    }
    if (st == REG_OK)
        st = reg_mirror_room(r, 1, 0);
    reg_row row;
    reg_row_fresh(&row, successor, old_kid);
    if (st == REG_OK)
        st = reg_sql_rotate(r, old_kid, successor, retire_at, &row.id);
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
    if (st != REG_ERR_LIMIT)
        reg_slot_settle(r, st == REG_OK);
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* ---- changes ---------------------------------------------------------------------------- */

static reg_status reg_sql_revoke(reg *r, const sk_kid *kid, const char *reason, int64_t now,
                                 uint64_t *seq)
{
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    reg_status st = reg_exec(r, "BEGIN IMMEDIATE", "begin revocation");
    if (st != REG_OK)
        return st;
    sqlite3_stmt *s;
    st = reg_prepare(r, "UPDATE keys SET state = ? WHERE kid = ?", &s, "revoke key");
    if (st == REG_OK) {
        sqlite3_bind_text(s, 1, reg_state_name(REG_REVOKED), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, hex, -1, SQLITE_STATIC);
        st = reg_step_done(r, s, "revoke key");
    }
    if (st == REG_OK && sqlite3_changes(r->db) != 1)
        st = reg_fail(r->path, REG_ERR_IO, "revoke key %s: row missing from the file", hex);
    if (st == REG_OK)
        st = reg_prepare(r, "INSERT INTO revocations (kid, revoked_at, reason) VALUES (?, ?, ?)",
                         &s, "append revocation");
    if (st == REG_OK) {
        sqlite3_bind_text(s, 1, hex, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, now);
        sqlite3_bind_text(s, 3, reason, -1, SQLITE_STATIC);
        st = reg_step_done(r, s, "append revocation");
    }
    if (st == REG_OK) {
        *seq = (uint64_t)sqlite3_last_insert_rowid(r->db);
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
    long s = reg_find(r, kid);
    reg_status st = s < 0 ? REG_ERR_NOT_FOUND : REG_OK;
    if (st == REG_OK && r->rows[s].k.state == REG_REVOKED) {
        if (out != NULL)
            *out = r->rows[s].k; /* the first record, untouched */
        pthread_mutex_unlock(&r->write_mu);
        return REG_OK;
    }
    if (st == REG_OK)
        st = reg_mirror_room(r, 0, 1);
    uint64_t seq = 0;
    if (st == REG_OK)
        st = reg_sql_revoke(r, kid, reason, now, &seq);
    if (st == REG_OK) {
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

/* The SQL half of reg_revoke_subject: the row, the shared counter moved to its seq, the
 * expired rows gone and the audit event, in one transaction. */
static reg_status reg_sql_revoke_subject(reg *r, const reg_subject *v, int64_t expired_before)
{
    reg_status st = reg_exec(r, "BEGIN IMMEDIATE", "begin subject revocation");
    if (st != REG_OK)
        return st;
    sqlite3_stmt *s;
    st = reg_prepare(r,
                     "INSERT INTO subject_revocations (seq, sub, before, revoked_at) "
                     "VALUES (?, ?, ?, ?)",
                     &s, "append subject revocation");
    if (st == REG_OK) {
        sqlite3_bind_int64(s, 1, (sqlite3_int64)v->seq);
        sqlite3_bind_text(s, 2, v->sub, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, v->before);
        sqlite3_bind_int64(s, 4, v->revoked_at);
        st = reg_step_done(r, s, "append subject revocation");
    }
    /* AUTOINCREMENT takes max(counter, largest seq) + 1 for the next key revocation: moving
     * the counter here is what makes the sequence one. The table exists (revocations is
     * AUTOINCREMENT) but has no row before the first revocation. */
    if (st == REG_OK)
        st = reg_prepare(r, "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'revocations'", &s,
                         "advance revocation counter");
    if (st == REG_OK) {
        sqlite3_bind_int64(s, 1, (sqlite3_int64)v->seq);
        st = reg_step_done(r, s, "advance revocation counter");
    }
    if (st == REG_OK && sqlite3_changes(r->db) == 0) {
        st = reg_prepare(r, "INSERT INTO sqlite_sequence (name, seq) VALUES ('revocations', ?1)",
                         &s, "start revocation counter");
        if (st == REG_OK) {
            sqlite3_bind_int64(s, 1, (sqlite3_int64)v->seq);
            st = reg_step_done(r, s, "start revocation counter");
        }
    }
    if (st == REG_OK)
        st = reg_prepare(r, "DELETE FROM subject_revocations WHERE before <= ?", &s,
                         "drop expired subject revocations");
    if (st == REG_OK) {
        sqlite3_bind_int64(s, 1, expired_before);
        st = reg_step_done(r, s, "drop expired subject revocations");
    }
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
    v.seq = r->seq_hi + 1; /* seq_hi changes only under write_mu */
    snprintf(v.sub, sizeof(v.sub), "%s", sub);
    v.before = before;
    v.revoked_at = now;
    reg_status st = reg_subs_room(r);
    if (st == REG_OK)
        st = reg_sql_revoke_subject(r, &v, expired_before);
    if (st == REG_OK) {
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
        if (out != NULL)
            *out = v;
    }
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

/* One statement on kid's row (sql binds the state as ?1 when state is not NULL, the kid
 * as ?2) and the audit event that records it, in one transaction. details is consumed. */
static reg_status reg_sql_kid_change(reg *r, const char *sql, const char *state, const sk_kid *kid,
                                     const char *action, json_t *details, const char *what)
{
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    reg_status st = reg_exec(r, "BEGIN IMMEDIATE", what);
    if (st != REG_OK) {
        json_decref(details);
        return st;
    }
    sqlite3_stmt *q;
    st = reg_prepare(r, sql, &q, what);
    if (st == REG_OK) {
        if (state != NULL)
            sqlite3_bind_text(q, 1, state, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, hex, -1, SQLITE_STATIC);
        st = reg_step_done(r, q, what);
    }
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
    reg_status st = reg_find_unrevoked(r, kid, &s);
    if (st != REG_OK || r->rows[s].k.state == REG_BROKEN) {
        pthread_mutex_unlock(&r->write_mu);
        return st;
    }
    st = reg_sql_kid_change(r, "UPDATE keys SET state = ?1 WHERE kid = ?2",
                            reg_state_name(REG_BROKEN), kid, CHN_KEY_BROKEN,
                            json_pack("{s:s}", "why", "the token has no object for this kid"),
                            "mark key broken");
    if (st == REG_OK) {
        pthread_rwlock_wrlock(&r->mirror_rw);
        reg_mirror_set_state(r, (size_t)s, REG_BROKEN);
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
        reg_slot_active_gone(r);
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
    reg_status st = reg_find_unrevoked(r, kid, &s);
    /* Either half of a rotation stays: deleting it would leave the other half's link
     * pointing at nothing (and a rotation never needs undoing: it is one transaction). */
    if (st == REG_OK && (r->rows[s].k.state == REG_RETIRING || r->rows[s].k.has_predecessor))
        st = REG_ERR_STATE;
    if (st == REG_OK)
        st = reg_sql_kid_change(r, "DELETE FROM keys WHERE kid = ?2", NULL, kid, CHN_KEY_DELETED,
                                NULL, "delete key");
    if (st == REG_OK) {
        reg_state was = r->rows[s].k.state;
        pthread_rwlock_wrlock(&r->mirror_rw);
        reg_mirror_remove(r, (size_t)s);
        reg_bump(r);
        pthread_rwlock_unlock(&r->mirror_rw);
        if (was == REG_ACTIVE)
            reg_slot_active_gone(r);
    }
    pthread_mutex_unlock(&r->write_mu);
    return st;
}

/* ---- pending kids ------------------------------------------------------------------------ */

reg_status reg_pending_add(reg *r, const sk_kid *kid, int64_t now)
{
    if (kid == NULL)
        return REG_ERR_INVALID;
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&r->write_mu);
    reg_status st = reg_find(r, kid) >= 0 ? REG_ERR_EXISTS : REG_OK;
    sqlite3_stmt *s;
    if (st == REG_OK && (st = reg_exec(r, "BEGIN IMMEDIATE", "begin pending kid")) == REG_OK) {
        st = reg_prepare(r, "INSERT OR IGNORE INTO pending_keys (kid, created_at) VALUES (?, ?)",
                         &s, "pend kid");
        if (st == REG_OK) {
            sqlite3_bind_text(s, 1, hex, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s, 2, now);
            st = reg_step_done(r, s, "pend kid");
        }
        if (st == REG_OK && sqlite3_changes(r->db) != 1)
            st = REG_ERR_EXISTS;
        st = reg_tx_end(r, st);
    }
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
    sqlite3_stmt *s;
    if (reg_prepare(r, "DELETE FROM pending_keys WHERE kid = ?", &s, "drop pending kid") ==
        REG_OK) {
        sqlite3_bind_text(s, 1, hex, -1, SQLITE_STATIC);
        reg_step_done(r, s, "drop pending kid");
    }
    pthread_mutex_unlock(&r->write_mu);
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
    pthread_mutex_t mu; /* db: one caller at a time */
    sqlite3 *db;
    char path[PATH_MAX];
};

static reg_status reg_reader_fail_sql(const reg_reader *rr, const char *what)
{
    return reg_fail(rr->path, REG_ERR_IO, "%s: %s", what,
                    rr->db ? sqlite3_errmsg(rr->db) : "out of memory");
}

/* The file's schema version must be one this build wrote: 0 is a file reg_open never
 * finished, above REG_SCHEMA_VERSION one a newer build owns. */
static reg_status reg_reader_check_schema(reg_reader *rr)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(rr->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
        return reg_reader_fail_sql(rr, "read schema version");
    int rc = sqlite3_step(s);
    int version = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) : -1;
    reg_status st = rc == SQLITE_ROW ? REG_OK : reg_reader_fail_sql(rr, "read schema version");
    sqlite3_finalize(s);
    if (st == REG_OK && (version < 1 || version > REG_SCHEMA_VERSION))
        st = reg_fail(rr->path, REG_ERR_IO, "schema version %d is not one this build knows (%d)",
                      version, REG_SCHEMA_VERSION);
    return st;
}

reg_status reg_reader_open(const char *path, reg_reader **out)
{
    if (out == NULL)
        return reg_fail(path, REG_ERR_INVALID, "no handle to return");
    *out = NULL;
    if (path == NULL || path[0] == '\0' || strlen(path) >= PATH_MAX)
        return reg_fail(path, REG_ERR_INVALID, "path missing or too long");
    reg_errbuf[0] = '\0';

    char err[256];
    sqlite3 *db = NULL;
    if (db_open_ro(path, REG_BUSY_TIMEOUT_MS, &db, err, sizeof(err)) != 0)
        return reg_fail(path, REG_ERR_IO, "%s", err);
    reg_reader *rr = calloc(1, sizeof(*rr));
    if (rr == NULL) {
        sqlite3_close(db);
        return reg_fail(path, REG_ERR_IO, "out of memory");
    }
    rr->db = db;
    snprintf(rr->path, sizeof(rr->path), "%s", path);
    pthread_mutex_init(&rr->mu, NULL);
    reg_status st = reg_reader_check_schema(rr);
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
    uint64_t v = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(rr->db, "PRAGMA data_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = (uint64_t)sqlite3_column_int64(st, 0);
    else
        reg_reader_fail_sql(rr, "read data_version");
    sqlite3_finalize(st);
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
    sqlite3_stmt *st = NULL;
    sk_kid *kids = NULL;
    size_t have = 0, cap = 0;
    if (sqlite3_prepare_v2(rr->db, sql, -1, &st, NULL) != SQLITE_OK) {
        result = reg_reader_fail_sql(rr, "prepare the active listing");
        goto out;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *hex = (const char *)sqlite3_column_text(st, 0);
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
    if (rc != SQLITE_DONE) {
        result = reg_reader_fail_sql(rr, "list the active keys");
        goto out;
    }
    if (have > 1)
        qsort(kids, have, sizeof(*kids), sk_kid_cmp);
    *out = kids;
    *n = have;
    kids = NULL;
out:
    free(kids);
    sqlite3_finalize(st); /* ends the read transaction */
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
    char hex[REG_KID_HEX + 1];
    sk_kid_hex(kid, hex);
    pthread_mutex_lock(&rr->mu);
    sqlite3_stmt *st = NULL;
    reg_status result;
    /* One statement, one read transaction: both answers of the same moment. */
    if (sqlite3_prepare_v2(rr->db,
                           "SELECT (SELECT COUNT(*) FROM pending_keys WHERE kid = ?1),"
                           " (SELECT COUNT(*) FROM keys WHERE kid = ?1)",
                           -1, &st, NULL) != SQLITE_OK) {
        result = reg_reader_fail_sql(rr, "prepare the pending check");
    } else {
        sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW)
            result = reg_reader_fail_sql(rr, "read the pending check");
        else if (sqlite3_column_int64(st, 1) != 0)
            result = REG_ERR_EXISTS;
        else
            result = sqlite3_column_int64(st, 0) != 0 ? REG_OK : REG_ERR_NOT_FOUND;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&rr->mu);
    return result;
}

void reg_reader_close(reg_reader *rr)
{
    if (rr == NULL)
        return;
    sqlite3_close(rr->db);
    pthread_mutex_destroy(&rr->mu);
    free(rr);
}
