/* cred: API credentials, the store (sdb.h) behind an in-memory mirror. See credentials.h. */
#include "appliance/store/credentials.h"

#include "appliance/store/chain.h"
#include "appliance/store/sdb.h"

#include "jose/jose.h"
#include "base/hex.h"
#include "base/text.h"
#include "base/errbuf.h"
#include "base/names.h"
#include "base/lock.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CRED_ERR_MSG_MAX 1024
#define CRED_ROWS_MAX (1u << 24) /* index slots are uint32; far above any real count */
#define CRED_GROW_MIN 16
#define CRED_HASH_LEN 32
#define CRED_HASH_HEX (2 * CRED_HASH_LEN)
#define CRED_KID_HEX (2 * SK_KID_LEN)
#define CRED_KIDS_TEXT_MAX (CRED_KIDS_MAX * (CRED_KID_HEX + 1)) /* "hex,hex,...", with NUL */
#define CRED_ID_BYTES (CRED_ID_LEN / 2)
#define CRED_ID_POS CRED_PREFIX_LEN
#define CRED_SEP_POS (CRED_PREFIX_LEN + CRED_ID_LEN)
#define CRED_RAND_POS (CRED_SEP_POS + 1)
#define CRED_ID_TRIES 8 /* 64-bit random ids: a second try is already a one-in-2^40 event */

/* One credential as the mirror keeps it: the record, its secret's hash, its id as a
 * number for the hash index. */
typedef struct {
    cred_record rec;
    uint8_t hash[CRED_HASH_LEN];
    uint64_t key;
} cred_row;

struct cred_store {
    sdb *db; /* under write_mu */
    char path[PATH_MAX];
    EVP_MD *sha256; /* fetched once: the implicit fetch takes global locks on every call */

    pthread_mutex_t write_mu;   /* SQLite and every change; first in the lock order */
    pthread_rwlock_t mirror_rw; /* everything below */

    cred_row *rows; /* n_rows used of cap_rows, ordered by (created_at, insertion) */
    size_t n_rows, cap_rows;
    uint32_t *index;  /* open addressing, linear probing: slot + 1, 0 empty; load <= 1/2 */
    size_t index_cap; /* a power of two >= 2 * cap_rows */
    size_t active[CRED_ROLE_COUNT_];
};

static const char *const cred_role_names[CRED_ROLE_COUNT_] = {
    [CRED_ROLE_ADMIN] = "admin",
    [CRED_ROLE_SIGNER] = "signer",
    [CRED_ROLE_AUDITOR] = "auditor",
    [CRED_ROLE_REDEEMER] = "redeemer",
};

static const char *const cred_status_names[CRED_ERR_COUNT_] = {
    [CRED_OK] = "ok",
    [CRED_ERR_NOT_FOUND] = "no credential with this id",
    [CRED_ERR_UNKNOWN] = "unknown credential",
    [CRED_ERR_REVOKED] = "the credential is revoked",
    [CRED_ERR_INVALID] = "invalid argument",
    [CRED_ERR_IO] = "the credentials could not be read or written",
    [CRED_ERR_LAST_ADMIN] = "the last active admin credential",
};

static const char cred_schema_lite[] =
    "CREATE TABLE IF NOT EXISTS credentials ("
    " id TEXT PRIMARY KEY CHECK (length(id) = 16),"
    " role TEXT NOT NULL," /* no CHECK: new roles need no table rebuild */
    " label TEXT NOT NULL,"
    " secret_sha256 TEXT NOT NULL CHECK (length(secret_sha256) = 64),"
    " all_kids INTEGER NOT NULL,"
    " kids TEXT NOT NULL," /* comma-separated lowercase hex kids, "" for none */
    " max_ttl INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " revoked_at INTEGER NOT NULL DEFAULT 0,"
    " client_subject TEXT NOT NULL DEFAULT '');";

/* The same table on PostgreSQL, shared by every node. ord replaces SQLite's rowid as the
 * tie-break of the order (credentials are never deleted, and inserts run under
 * SDB_LOCK_CREDENTIALS, so max(ord) + 1 is unique and in commit order). */
static const char cred_schema_pg[] =
    "CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS credentials ("
    " id TEXT PRIMARY KEY CHECK (length(id) = 16),"
    " role TEXT NOT NULL,"
    " label TEXT NOT NULL,"
    " secret_sha256 TEXT NOT NULL CHECK (length(secret_sha256) = 64),"
    " all_kids BIGINT NOT NULL,"
    " kids TEXT NOT NULL,"
    " max_ttl BIGINT NOT NULL,"
    " created_at BIGINT NOT NULL,"
    " revoked_at BIGINT NOT NULL DEFAULT 0,"
    " client_subject TEXT NOT NULL DEFAULT '',"
    " ord BIGINT NOT NULL);"
    "INSERT INTO schema_versions (store, version) VALUES ('credentials', 1)"
    " ON CONFLICT (store) DO NOTHING;";

static _Thread_local char cred_errbuf[CRED_ERR_MSG_MAX];

/* ---- errors ---------------------------------------------------------------------------- */

static cred_status cred_fail(const char *path, cred_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a failure for cred_last_error() and stderr, naming the file; returns st. */
static cred_status cred_fail(const char *path, cred_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eb_vset(cred_errbuf, sizeof(cred_errbuf), "credentials", path, fmt, ap);
    va_end(ap);
    return st;
}

/* A failed store call: err holds "what: the backend's message". */
static cred_status cred_fail_db(const cred_store *cs, const char *err)
{
    return cred_fail(cs->path, CRED_ERR_IO, "%s", err);
}

/* ---- small parsers ---------------------------------------------------------------------- */

/* Exactly CRED_ID_LEN lowercase hex digits at s (len bytes): 0 and *key, else -1. */
static int cred_id_parse(const char *s, size_t len, uint64_t *key)
{
    uint8_t b[CRED_ID_LEN / 2];
    if (hex_decode(s, len, b, sizeof(b)) != 0)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(b); i++)
        v = v << 8 | b[i];
    *key = v;
    return 0;
}

static int cred_is_b64url(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* A presented secret of the right shape: 0 and the id's key, else -1. */
static int cred_secret_parse(const char *p, size_t len, uint64_t *key)
{
    if (p == NULL || len != CRED_SECRET_LEN || memcmp(p, CRED_PREFIX, CRED_PREFIX_LEN) != 0 ||
        p[CRED_SEP_POS] != '_' || cred_id_parse(p + CRED_ID_POS, CRED_ID_LEN, key) != 0)
        return -1;
    for (size_t i = CRED_RAND_POS; i < CRED_SECRET_LEN; i++)
        if (!cred_is_b64url((unsigned char)p[i]))
            return -1;
    return 0;
}

/* NULL or at most max bytes of printable ASCII. */
static int cred_text_ok(const char *text, size_t max)
{
    if (text == NULL)
        return 1;
    size_t n = strnlen(text, max + 1);
    return n <= max && txt_printable(text, n);
}

static int cred_label_ok(const char *label)
{
    return cred_text_ok(label, CRED_LABEL_MAX);
}

static int cred_subject_ok(const char *subject)
{
    return cred_text_ok(subject, CRED_SUBJECT_MAX);
}

/* The kid list as its column text: "hex,hex,...". out holds CRED_KIDS_TEXT_MAX. */
static void cred_kids_text(const cred_record *rec, char *out)
{
    out[0] = '\0';
    for (size_t i = 0; i < rec->n_kids; i++) {
        char *p = out + i * (CRED_KID_HEX + 1);
        if (i > 0)
            p[-1] = ',';
        sk_kid_hex(&rec->kids[i], p);
    }
}

/* The inverse of cred_kids_text: 0, or -1 for a malformed list or more than
 * CRED_KIDS_MAX kids. */
static int cred_kids_parse(const char *s, size_t len, cred_record *rec)
{
    rec->n_kids = 0;
    if (len == 0)
        return 0;
    if (s == NULL || (len + 1) % (CRED_KID_HEX + 1) != 0 ||
        (len + 1) / (CRED_KID_HEX + 1) > CRED_KIDS_MAX)
        return -1;
    size_t n = (len + 1) / (CRED_KID_HEX + 1);
    for (size_t i = 0; i < n; i++) {
        const char *p = s + i * (CRED_KID_HEX + 1);
        if (i + 1 < n && p[CRED_KID_HEX] != ',')
            return -1;
        if (sk_kid_parse_n(p, CRED_KID_HEX, &rec->kids[i]) != 0)
            return -1;
    }
    rec->n_kids = n;
    return 0;
}

/* The role's rules for kids and max_ttl (see cred_create): 1 when rec obeys them. */
static int cred_scope_ok(const cred_record *rec)
{
    if (rec->role != CRED_ROLE_SIGNER)
        return rec->n_kids == 0 && rec->all_kids == 0 && rec->max_ttl == 0;
    if (rec->all_kids != 0)
        return rec->all_kids == 1 && rec->n_kids == 0;
    if (rec->n_kids == 0 || rec->n_kids > CRED_KIDS_MAX)
        return 0;
    for (size_t i = 0; i < rec->n_kids; i++)
        for (size_t j = 0; j < i; j++)
            if (memcmp(rec->kids[i].b, rec->kids[j].b, SK_KID_LEN) == 0)
                return 0;
    return 1;
}

/* ---- the mirror: hash index and order ----------------------------------------------------- */

static size_t cred_hash(uint64_t x)
{
    /* splitmix64's finaliser: ids are random in use, but tests and tools make neat ones. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (size_t)x;
}

/* The slot holding key, or -1. Caller holds the read lock or write_mu. */
static long cred_find(const cred_store *cs, uint64_t key)
{
    if (cs->index_cap == 0)
        return -1;
    size_t mask = cs->index_cap - 1;
    for (size_t i = cred_hash(key) & mask;; i = (i + 1) & mask) {
        uint32_t v = cs->index[i];
        if (v == 0)
            return -1;
        if (cs->rows[v - 1].key == key)
            return (long)v - 1;
    }
}

/* The slot of the credential named by the string id, or -1 (malformed ids too). */
static long cred_find_id(const cred_store *cs, const char *id)
{
    uint64_t key;
    if (cred_id_parse(id, strnlen(id, CRED_ID_LEN + 1), &key) != 0)
        return -1;
    return cred_find(cs, key);
}

static void cred_index_put(cred_store *cs, size_t slot)
{
    size_t mask = cs->index_cap - 1;
    size_t i = cred_hash(cs->rows[slot].key) & mask;
    while (cs->index[i] != 0)
        i = (i + 1) & mask;
    cs->index[i] = (uint32_t)slot + 1;
}

/* Refills the index from the rows, in place (no allocation). */
static void cred_index_refill(cred_store *cs)
{
    memset(cs->index, 0, cs->index_cap * sizeof(*cs->index));
    for (size_t s = 0; s < cs->n_rows; s++)
        cred_index_put(cs, s);
}

/* Grows the arrays to hold at least need rows. Nothing changes on failure. Caller holds
 * the write lock (or is cred_open). */
static cred_status cred_grow(cred_store *cs, size_t need)
{
    if (need <= cs->cap_rows)
        return CRED_OK;
    if (need > CRED_ROWS_MAX)
        return cred_fail(cs->path, CRED_ERR_IO, "more than %u credentials", CRED_ROWS_MAX);
    size_t cap = cs->cap_rows ? cs->cap_rows : CRED_GROW_MIN;
    while (cap < need)
        cap *= 2;
    size_t icap = 16;
    while (icap < 2 * cap)
        icap *= 2;
    cred_row *rows = realloc(cs->rows, cap * sizeof(*rows));
    if (rows == NULL)
        return cred_fail(cs->path, CRED_ERR_IO, "out of memory for %zu credentials", cap);
    cs->rows = rows;
    uint32_t *index = calloc(icap, sizeof(*index));
    if (index == NULL)
        return cred_fail(cs->path, CRED_ERR_IO, "out of memory for %zu credentials", cap);
    free(cs->index);
    cs->index = index;
    cs->index_cap = icap;
    cs->cap_rows = cap;
    cred_index_refill(cs);
    return CRED_OK;
}

/* Adds a committed row after every row with created_at <= its own. Caller holds write_mu
 * and the write lock; room was made. */
static void cred_mirror_add(cred_store *cs, const cred_row *row)
{
    size_t lo = 0, hi = cs->n_rows;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cs->rows[mid].rec.created_at <= row->rec.created_at)
            lo = mid + 1;
        else
            hi = mid;
    }
    memmove(cs->rows + lo + 1, cs->rows + lo, (cs->n_rows - lo) * sizeof(*cs->rows));
    cs->rows[lo] = *row;
    cs->n_rows++;
    if (lo + 1 == cs->n_rows)
        cred_index_put(cs, lo); /* the usual case: the newest, no slot moved */
    else
        cred_index_refill(cs);
    if (row->rec.revoked_at == 0)
        cs->active[row->rec.role]++;
}

/* ---- store helpers ---------------------------------------------------------------------- */

static cred_status cred_begin(cred_store *cs)
{
    char err[256];
    return sdb_begin_write(cs->db, SDB_LOCK_CREDENTIALS, err, sizeof(err)) == SDB_OK
               ? CRED_OK
               : cred_fail_db(cs, err);
}

/* Ends a write transaction: COMMIT when st is CRED_OK, else ROLLBACK. */
static cred_status cred_tx_end(cred_store *cs, cred_status st)
{
    char err[256];
    if (st == CRED_OK) {
        if (sdb_commit(cs->db, err, sizeof(err)) == SDB_OK)
            return CRED_OK;
        return cred_fail_db(cs, err); /* sdb_commit rolled back */
    }
    sdb_rollback(cs->db);
    return st;
}

/* The audit event of this transaction's change (audit.h); details is consumed. */
static cred_status cred_audit_tx(cred_store *cs, int64_t now, const char *action, json_t *details)
{
    char err[256];
    int rc = chn_append_tx(cs->db, now, action, NULL, details, err, sizeof(err));
    json_decref(details);
    return rc == 0 ? CRED_OK : cred_fail(cs->path, CRED_ERR_IO, "%s", err);
}

/* A change other nodes must see: a note on "signd_credentials" with the id, sent at COMMIT
 * (dropped on ROLLBACK); their watcher calls cred_refresh. */
static cred_status cred_notify_tx(cred_store *cs, const char *id)
{
    char err[256];
    return sdb_notify(cs->db, CRED_NOTIFY_CHANNEL, id, err, sizeof(err)) == SDB_OK
               ? CRED_OK
               : cred_fail_db(cs, err);
}

static cred_status cred_prepare(cred_store *cs, const char *sql, sdb_stmt **s, const char *what)
{
    char err[256];
    if (sdb_prepare(cs->db, sql, s, what, err, sizeof(err)) != SDB_OK)
        return cred_fail_db(cs, err);
    return CRED_OK;
}

/* Runs a statement that returns no row, then finalises it. */
static cred_status cred_step_done(cred_store *cs, sdb_stmt *s, const char *what)
{
    char err[256];
    return sdb_step_done(s, what, err, sizeof(err)) == SDB_OK ? CRED_OK : cred_fail_db(cs, err);
}

/* ---- open: pragmas, schema, load -------------------------------------------------------- */

/* One row of the load query into *row; CRED_ERR_IO names what is wrong with it. */
static cred_status cred_load_row(cred_store *cs, sdb_stmt *s, cred_row *row)
{
    memset(row, 0, sizeof(*row));
    cred_record *rec = &row->rec;
    const char *id = sdb_column_text(s, 0);
    if (id == NULL || cred_id_parse(id, sdb_column_bytes(s, 0), &row->key) != 0)
        return cred_fail(cs->path, CRED_ERR_IO, "a credential id is not 16 lowercase hex digits");
    memcpy(rec->id, id, CRED_ID_LEN);
    rec->id[CRED_ID_LEN] = '\0';
    const char *role = sdb_column_text(s, 1);
    if (cred_role_parse(role, &rec->role) != 0)
        return cred_fail(cs->path, CRED_ERR_IO, "credential %s: unknown role '%s'", rec->id,
                         role ? role : "NULL");
    if (sdb_column_copy(s, 2, rec->label, sizeof(rec->label)) != 0 || !cred_label_ok(rec->label))
        return cred_fail(cs->path, CRED_ERR_IO, "credential %s: label missing or invalid", rec->id);
    if (sdb_column_copy(s, 9, rec->client_subject, sizeof(rec->client_subject)) != 0 ||
        !cred_subject_ok(rec->client_subject))
        return cred_fail(cs->path, CRED_ERR_IO, "credential %s: client_subject invalid", rec->id);
    const char *hash = sdb_column_text(s, 3);
    if (hash == NULL || hex_decode(hash, sdb_column_bytes(s, 3), row->hash, CRED_HASH_LEN) != 0)
        return cred_fail(cs->path, CRED_ERR_IO, "credential %s: secret hash is not 64 hex digits",
                         rec->id);
    int64_t all = sdb_column_int64(s, 4);
    int64_t ttl = sdb_column_int64(s, 6);
    rec->all_kids = all == 1;
    rec->max_ttl = ttl >= 0 && ttl <= UINT_MAX ? (unsigned)ttl : 0;
    rec->created_at = sdb_column_int64(s, 7);
    rec->revoked_at = sdb_column_int64(s, 8);
    if ((all != 0 && all != 1) || ttl < 0 || ttl > UINT_MAX || rec->revoked_at < 0 ||
        sdb_column_text(s, 5) == NULL ||
        cred_kids_parse(sdb_column_text(s, 5), sdb_column_bytes(s, 5), rec) != 0 ||
        !cred_scope_ok(rec))
        return cred_fail(cs->path, CRED_ERR_IO,
                         "credential %s: kids, all_kids, max_ttl or revoked_at invalid", rec->id);
    return CRED_OK;
}

/* Loads every row into cs's (empty) mirror. cs may be a scratch store that shares the
 * connection (cred_refresh). Caller holds write_mu, or is cred_open. */
static cred_status cred_load(cred_store *cs)
{
    sdb_stmt *s;
    cred_status st = cred_prepare(cs,
                                  sdb_kind_of(cs->db) == SDB_POSTGRES
                                      ? "SELECT id, role, label, secret_sha256, all_kids, kids,"
                                        " max_ttl, created_at, revoked_at, client_subject"
                                        " FROM credentials ORDER BY created_at, ord"
                                      : "SELECT id, role, label, secret_sha256, all_kids, kids,"
                                        " max_ttl, created_at, revoked_at, client_subject"
                                        " FROM credentials ORDER BY created_at, rowid",
                                  &s, "read credentials");
    if (st != CRED_OK)
        return st;
    sdb_status rc = SDB_DONE;
    while (st == CRED_OK && (rc = sdb_step(s)) == SDB_ROW) {
        cred_row row;
        st = cred_load_row(cs, s, &row);
        if (st == CRED_OK)
            st = cred_grow(cs, cs->n_rows + 1);
        if (st == CRED_OK && cred_find(cs, row.key) >= 0)
            st = cred_fail(cs->path, CRED_ERR_IO, "credential %s: two rows", row.rec.id);
        if (st == CRED_OK) { /* in order already: appends, one probe into the index */
            cs->rows[cs->n_rows++] = row;
            if (row.rec.revoked_at == 0)
                cs->active[row.rec.role]++;
            cred_index_put(cs, cs->n_rows - 1);
        }
        OPENSSL_cleanse(&row, sizeof(row));
    }
    if (st == CRED_OK && rc != SDB_DONE)
        st = cred_fail(cs->path, CRED_ERR_IO, "read credentials: %s", sdb_stmt_error(s));
    sdb_finalize(s);
    return st;
}

/* Creates the table when missing. On PostgreSQL under SDB_LOCK_SCHEMA: nodes starting at
 * once would race on CREATE TABLE IF NOT EXISTS. The audit tables come from the chain. */
static cred_status cred_schema(cred_store *cs)
{
    char err[256];
    if (sdb_kind_of(cs->db) == SDB_SQLITE) {
        if (sdb_exec(cs->db, cred_schema_lite, "create tables", err, sizeof(err)) != SDB_OK ||
            chn_schema(cs->db, err, sizeof(err)) != 0)
            return cred_fail_db(cs, err);
        return CRED_OK;
    }
    if (sdb_begin_write(cs->db, SDB_LOCK_SCHEMA, err, sizeof(err)) != SDB_OK)
        return cred_fail_db(cs, err);
    if (sdb_exec(cs->db, cred_schema_pg, "create tables", err, sizeof(err)) != SDB_OK ||
        chn_schema(cs->db, err, sizeof(err)) != 0 ||
        sdb_commit(cs->db, err, sizeof(err)) != SDB_OK) {
        sdb_rollback(cs->db);
        return cred_fail_db(cs, err);
    }
    return CRED_OK;
}

cred_status cred_open(const char *db_path, cred_store **out)
{
    if (out == NULL)
        return cred_fail(db_path, CRED_ERR_INVALID, "no handle to return");
    *out = NULL;
    if (db_path == NULL || db_path[0] == '\0' || strlen(db_path) >= PATH_MAX)
        return cred_fail(db_path, CRED_ERR_INVALID, "path missing or too long");
    cred_errbuf[0] = '\0';

    cred_store *cs = calloc(1, sizeof(*cs));
    if (cs == NULL)
        return cred_fail(db_path, CRED_ERR_IO, "out of memory");
    snprintf(cs->path, sizeof(cs->path), "%s", db_path);
    pthread_mutex_init(&cs->write_mu, NULL);
    /* Writer-preferring: a stream of authentications must not starve a create or revoke. */
    lk_rwlock_init(&cs->mirror_rw);

    cred_status st = CRED_OK;
    cs->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (cs->sha256 == NULL)
        st = cred_fail(db_path, CRED_ERR_IO, "OpenSSL has no SHA-256");
    char derr[256];
    if (st == CRED_OK && sdb_open(db_path, SDB_OPEN_CREATE, CRED_BUSY_TIMEOUT_MS, &cs->db, derr,
                                  sizeof(derr)) != SDB_OK)
        st = cred_fail(db_path, CRED_ERR_IO, "%s", derr);
    if (st == CRED_OK)
        st = cred_schema(cs);
    if (st == CRED_OK)
        st = cred_load(cs);
    if (st != CRED_OK) {
        cred_close(cs);
        return st;
    }
    *out = cs;
    return CRED_OK;
}

/* Frees a mirror's arrays, wiping the hashes. */
static void cred_free_mirror(cred_store *cs)
{
    if (cs->rows != NULL)
        OPENSSL_cleanse(cs->rows, cs->cap_rows * sizeof(*cs->rows));
    free(cs->rows);
    free(cs->index);
    cs->rows = NULL;
    cs->index = NULL;
}

void cred_close(cred_store *cs)
{
    if (cs == NULL)
        return;
    sdb_close(cs->db); /* NULL is a no-op */
    EVP_MD_free(cs->sha256);
    pthread_mutex_destroy(&cs->write_mu);
    pthread_rwlock_destroy(&cs->mirror_rw);
    cred_free_mirror(cs);
    free(cs);
}

cred_status cred_refresh(cred_store *cs)
{
    if (cs == NULL)
        return CRED_ERR_INVALID;
    /* The table is read into a scratch mirror on the same connection, then swapped in under
     * the write lock: readers see the old table or the new one, never a half. write_mu keeps
     * this node's own creates and revokes out meanwhile. */
    cred_store *fresh = calloc(1, sizeof(*fresh));
    if (fresh == NULL)
        return cred_fail(cs->path, CRED_ERR_IO, "out of memory");
    memcpy(fresh->path, cs->path, sizeof(fresh->path));
    pthread_mutex_lock(&cs->write_mu);
    fresh->db = cs->db;
    cred_status st = cred_load(fresh);
    if (st == CRED_OK) {
        pthread_rwlock_wrlock(&cs->mirror_rw);
        cred_row *old_rows = cs->rows;
        size_t old_cap = cs->cap_rows;
        uint32_t *old_index = cs->index;
        cs->rows = fresh->rows;
        cs->n_rows = fresh->n_rows;
        cs->cap_rows = fresh->cap_rows;
        cs->index = fresh->index;
        cs->index_cap = fresh->index_cap;
        memcpy(cs->active, fresh->active, sizeof(cs->active));
        pthread_rwlock_unlock(&cs->mirror_rw);
        fresh->rows = old_rows;
        fresh->cap_rows = old_cap;
        fresh->index = old_index;
    }
    pthread_mutex_unlock(&cs->write_mu);
    cred_free_mirror(fresh);
    free(fresh);
    return st;
}

/* ---- names and errors ------------------------------------------------------------------- */

const char *cred_role_name(cred_role r)
{
    return nm_name(cred_role_names, CRED_ROLE_COUNT_, (unsigned)r, "unknown");
}

int cred_role_parse(const char *s, cred_role *out)
{
    int i = nm_find(cred_role_names, CRED_ROLE_COUNT_, s);
    if (i < 0)
        return -1;
    *out = (cred_role)i;
    return 0;
}

const char *cred_strerror(cred_status st)
{
    return nm_name(cred_status_names, CRED_ERR_COUNT_, (unsigned)st, "unknown credentials status");
}

const char *cred_last_error(void)
{
    return cred_errbuf;
}

/* ---- create ----------------------------------------------------------------------------- */

/* SHA-256 of len bytes at p into md: 0, else -1. */
static int cred_digest(const cred_store *cs, const char *p, size_t len, uint8_t md[CRED_HASH_LEN])
{
    unsigned int mdlen = 0;
    return EVP_Digest(p, len, md, &mdlen, cs->sha256, NULL) && mdlen == CRED_HASH_LEN ? 0 : -1;
}

/* Writes a fresh secret for a new id (not in the mirror) to secret and fills row's key, id
 * and hash. Caller holds write_mu. The random bytes are wiped before return. */
static cred_status cred_mint(cred_store *cs, char secret[CRED_SECRET_MAX], cred_row *row)
{
    uint8_t rnd[CRED_ID_BYTES + CRED_RANDOM_BYTES];
    cred_status st = CRED_OK;
    int tries = 0;
    do {
        if (++tries > CRED_ID_TRIES) {
            st = cred_fail(cs->path, CRED_ERR_IO, "no unused credential id after %d tries",
                           CRED_ID_TRIES);
            break;
        }
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            st = cred_fail(cs->path, CRED_ERR_IO, "RAND_bytes failed");
            break;
        }
        row->key = 0;
        for (size_t i = 0; i < CRED_ID_BYTES; i++)
            row->key = row->key << 8 | rnd[i];
    } while (cred_find(cs, row->key) >= 0);
    if (st == CRED_OK) {
        memcpy(secret, CRED_PREFIX, CRED_PREFIX_LEN);
        hex_encode(rnd, CRED_ID_BYTES, secret + CRED_ID_POS);
        secret[CRED_SEP_POS] = '_';
        if (jose_b64url_encode(rnd + CRED_ID_BYTES, CRED_RANDOM_BYTES, secret + CRED_RAND_POS,
                               CRED_SECRET_MAX - CRED_RAND_POS) != CRED_RANDOM_B64)
            st = cred_fail(cs->path, CRED_ERR_IO, "base64url of the secret failed");
    }
    if (st == CRED_OK) {
        memcpy(row->rec.id, secret + CRED_ID_POS, CRED_ID_LEN);
        row->rec.id[CRED_ID_LEN] = '\0';
        if (cred_digest(cs, secret, CRED_SECRET_LEN, row->hash) != 0)
            st = cred_fail(cs->path, CRED_ERR_IO, "SHA-256 failed");
    }
    OPENSSL_cleanse(rnd, sizeof(rnd));
    return st;
}

static cred_status cred_sql_insert(cred_store *cs, const cred_row *row)
{
    char hash[CRED_HASH_HEX + 1];
    char kids[CRED_KIDS_TEXT_MAX];
    hex_encode(row->hash, CRED_HASH_LEN, hash);
    cred_kids_text(&row->rec, kids);
    sdb_stmt *s;
    cred_status st = cred_prepare(
        cs,
        sdb_kind_of(cs->db) == SDB_POSTGRES
            ? "INSERT INTO credentials (id, role, label, secret_sha256, all_kids, kids, max_ttl,"
              " created_at, revoked_at, client_subject, ord) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7,"
              " ?8, 0, ?9, coalesce(max(ord), 0) + 1 FROM credentials"
            : "INSERT INTO credentials (id, role, label, secret_sha256, all_kids, kids, max_ttl,"
              " created_at, revoked_at, client_subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
              " 0, ?9)",
        &s, "insert credential");
    if (st == CRED_OK) {
        sdb_bind_text(s, 1, row->rec.id, -1);
        sdb_bind_text(s, 2, cred_role_name(row->rec.role), -1);
        sdb_bind_text(s, 3, row->rec.label, -1);
        sdb_bind_text(s, 4, hash, -1);
        sdb_bind_int64(s, 5, row->rec.all_kids);
        sdb_bind_text(s, 6, kids, -1);
        sdb_bind_int64(s, 7, row->rec.max_ttl);
        sdb_bind_int64(s, 8, row->rec.created_at);
        sdb_bind_text(s, 9, row->rec.client_subject, -1);
        st = cred_step_done(cs, s, "insert credential");
    }
    OPENSSL_cleanse(hash, sizeof(hash));
    return st;
}

/* What a credential.created event records: everything but the secret and its hash. */
static json_t *cred_event_details(const cred_record *rec)
{
    json_t *d = json_pack("{s:s, s:s, s:s}", "credential", rec->id, "role",
                          cred_role_name(rec->role), "label", rec->label);
    if (d != NULL && rec->role == CRED_ROLE_SIGNER) {
        if (rec->all_kids) {
            json_object_set_new(d, "kids", json_string("all"));
        } else {
            json_t *kids = json_array();
            for (size_t i = 0; kids != NULL && i < rec->n_kids; i++) {
                char hex[2 * SK_KID_LEN + 1];
                sk_kid_hex(&rec->kids[i], hex);
                json_array_append_new(kids, json_string(hex));
            }
            json_object_set_new(d, "kids", kids);
        }
        json_object_set_new(d, "max_ttl", json_integer(rec->max_ttl));
    }
    if (d != NULL && rec->client_subject[0] != '\0')
        json_object_set_new(d, "client_subject", json_string(rec->client_subject));
    return d;
}

cred_status cred_create(cred_store *cs, const cred_spec *spec, int64_t now,
                        char secret[CRED_SECRET_MAX], cred_record *out)
{
    if (secret == NULL)
        return CRED_ERR_INVALID;
    OPENSSL_cleanse(secret, CRED_SECRET_MAX);
    if (cs == NULL || spec == NULL || (unsigned)spec->role >= CRED_ROLE_COUNT_ ||
        !cred_label_ok(spec->label) || !cred_subject_ok(spec->client_subject) ||
        spec->n_kids > CRED_KIDS_MAX || (spec->n_kids > 0 && spec->kids == NULL) || now < 0)
        return CRED_ERR_INVALID;

    cred_row row;
    memset(&row, 0, sizeof(row));
    row.rec.role = spec->role;
    snprintf(row.rec.label, sizeof(row.rec.label), "%s", spec->label ? spec->label : "");
    snprintf(row.rec.client_subject, sizeof(row.rec.client_subject), "%s",
             spec->client_subject ? spec->client_subject : "");
    row.rec.all_kids = spec->all_kids;
    row.rec.n_kids = spec->n_kids;
    if (spec->n_kids > 0)
        memcpy(row.rec.kids, spec->kids, spec->n_kids * sizeof(*spec->kids));
    row.rec.max_ttl = spec->max_ttl;
    row.rec.created_at = now;
    if (!cred_scope_ok(&row.rec))
        return CRED_ERR_INVALID;

    pthread_mutex_lock(&cs->write_mu);
    cred_status st = CRED_OK;
    if (cs->n_rows + 1 > cs->cap_rows) {
        pthread_rwlock_wrlock(&cs->mirror_rw);
        st = cred_grow(cs, cs->n_rows + 1);
        pthread_rwlock_unlock(&cs->mirror_rw);
    }
    if (st == CRED_OK)
        st = cred_mint(cs, secret, &row);
    if (st == CRED_OK)
        st = cred_begin(cs);
    if (st == CRED_OK) {
        st = cred_sql_insert(cs, &row);
        if (st == CRED_OK)
            st = cred_audit_tx(cs, now, CHN_CRED_CREATED, cred_event_details(&row.rec));
        if (st == CRED_OK)
            st = cred_notify_tx(cs, row.rec.id);
        st = cred_tx_end(cs, st);
    }
    if (st == CRED_OK) {
        pthread_rwlock_wrlock(&cs->mirror_rw);
        cred_mirror_add(cs, &row);
        pthread_rwlock_unlock(&cs->mirror_rw);
        if (out != NULL)
            *out = row.rec;
    }
    pthread_mutex_unlock(&cs->write_mu);
    OPENSSL_cleanse(&row, sizeof(row));
    if (st != CRED_OK)
        OPENSSL_cleanse(secret, CRED_SECRET_MAX);
    return st;
}

/* ---- revoke ----------------------------------------------------------------------------- */

/* Inside the revoke transaction: the revoked_at the database holds for id (another node's
 * revocation this one has not refreshed yet), into *at. */
static cred_status cred_sql_revoked_at(cred_store *cs, const char *id, int64_t *at)
{
    sdb_stmt *q;
    cred_status st =
        cred_prepare(cs, "SELECT revoked_at FROM credentials WHERE id = ?1", &q, "read credential");
    if (st != CRED_OK)
        return st;
    sdb_bind_text(q, 1, id, -1);
    sdb_status rc = sdb_step(q);
    if (rc == SDB_ROW)
        *at = sdb_column_int64(q, 0);
    else
        st = cred_fail(cs->path, CRED_ERR_IO, "read credential %s: %s", id,
                       rc == SDB_DONE ? "row missing from the database" : sdb_stmt_error(q));
    sdb_finalize(q);
    return st;
}

/* In cred_revoke's transaction, after its UPDATE: CRED_OK when an admin is still active
 * in the database, else CRED_ERR_LAST_ADMIN (the caller rolls back). */
static cred_status cred_other_admin_tx(cred_store *cs)
{
    sdb_stmt *q;
    cred_status st =
        cred_prepare(cs, "SELECT count(*) FROM credentials WHERE role = ?1 AND revoked_at = 0", &q,
                     "count admins");
    if (st != CRED_OK)
        return st;
    sdb_bind_text(q, 1, cred_role_name(CRED_ROLE_ADMIN), -1);
    sdb_status rc = sdb_step(q);
    int64_t n = rc == SDB_ROW ? sdb_column_int64(q, 0) : -1;
    if (rc != SDB_ROW)
        st = cred_fail(cs->path, CRED_ERR_IO, "count admins: %s", sdb_stmt_error(q));
    sdb_finalize(q);
    return st != CRED_OK ? st : n > 0 ? CRED_OK : CRED_ERR_LAST_ADMIN;
}

static cred_status cred_revoke_as(cred_store *cs, const char *id, int64_t now, int keep_admin,
                                  cred_record *out)
{
    if (cs == NULL || id == NULL || now < 0)
        return CRED_ERR_INVALID;
    pthread_mutex_lock(&cs->write_mu);
    long s = cred_find_id(cs, id);
    if (s < 0 || cs->rows[s].rec.revoked_at != 0) {
        if (s >= 0 && out != NULL)
            *out = cs->rows[s].rec; /* the first record, untouched */
        pthread_mutex_unlock(&cs->write_mu);
        return s < 0 ? CRED_ERR_NOT_FOUND : CRED_OK;
    }
    /* 0 means active in the mirror and in the database: a revocation at the epoch is 1. */
    int64_t at = now > 0 ? now : 1;
    sdb_stmt *q;
    cred_status st = cred_begin(cs);
    if (st == CRED_OK) {
        /* Only an active row: another node may have revoked it first, and its revoked_at
         * stays the first one. */
        st = cred_prepare(cs,
                          "UPDATE credentials SET revoked_at = ?1 WHERE id = ?2 AND revoked_at = 0",
                          &q, "revoke credential");
        if (st == CRED_OK) {
            sdb_bind_int64(q, 1, at);
            sdb_bind_text(q, 2, cs->rows[s].rec.id, -1);
            st = cred_step_done(cs, q, "revoke credential");
        }
        int first = st == CRED_OK && sdb_changes(cs->db) == 1;
        if (first && keep_admin && cs->rows[s].rec.role == CRED_ROLE_ADMIN)
            st = cred_other_admin_tx(cs);
        if (st == CRED_OK && !first)
            st = cred_sql_revoked_at(cs, cs->rows[s].rec.id, &at);
        if (st == CRED_OK && at <= 0)
            st = cred_fail(cs->path, CRED_ERR_IO, "revoke credential %s: row not updated",
                           cs->rows[s].rec.id);
        if (st == CRED_OK && first)
            st = cred_audit_tx(cs, at, CHN_CRED_REVOKED,
                               json_pack("{s:s, s:s}", "credential", cs->rows[s].rec.id, "role",
                                         cred_role_name(cs->rows[s].rec.role)));
        if (st == CRED_OK && first)
            st = cred_notify_tx(cs, cs->rows[s].rec.id);
        st = cred_tx_end(cs, st);
    }
    if (st == CRED_OK) {
        pthread_rwlock_wrlock(&cs->mirror_rw);
        cred_record *rec = &cs->rows[s].rec;
        rec->revoked_at = at;
        cs->active[rec->role]--;
        pthread_rwlock_unlock(&cs->mirror_rw);
        if (out != NULL)
            *out = *rec;
    }
    pthread_mutex_unlock(&cs->write_mu);
    return st;
}

cred_status cred_revoke(cred_store *cs, const char *id, int64_t now, cred_record *out)
{
    return cred_revoke_as(cs, id, now, 0, out);
}

cred_status cred_revoke_keeping_an_admin(cred_store *cs, const char *id, int64_t now,
                                         cred_record *out)
{
    return cred_revoke_as(cs, id, now, 1, out);
}

/* ---- reads: from memory only, under the read lock ------------------------------------- */

cred_status cred_get(cred_store *cs, const char *id, cred_record *out)
{
    if (cs == NULL || id == NULL)
        return CRED_ERR_INVALID;
    pthread_rwlock_rdlock(&cs->mirror_rw);
    long s = cred_find_id(cs, id);
    if (s >= 0 && out != NULL)
        *out = cs->rows[s].rec;
    pthread_rwlock_unlock(&cs->mirror_rw);
    return s >= 0 ? CRED_OK : CRED_ERR_NOT_FOUND;
}

size_t cred_list(cred_store *cs, cred_record *out, size_t cap)
{
    if (out == NULL)
        cap = 0;
    pthread_rwlock_rdlock(&cs->mirror_rw);
    size_t n = cs->n_rows;
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = cs->rows[i].rec;
    pthread_rwlock_unlock(&cs->mirror_rw);
    return n;
}

size_t cred_count_active(cred_store *cs, cred_role role)
{
    if ((unsigned)role >= CRED_ROLE_COUNT_)
        return 0;
    pthread_rwlock_rdlock(&cs->mirror_rw);
    size_t n = cs->active[role];
    pthread_rwlock_unlock(&cs->mirror_rw);
    return n;
}

cred_status cred_authenticate(cred_store *cs, const char *presented, size_t len, cred_record *out)
{
    uint64_t key;
    if (cs == NULL || cred_secret_parse(presented, len, &key) != 0)
        return CRED_ERR_UNKNOWN;
    uint8_t md[CRED_HASH_LEN];
    if (cred_digest(cs, presented, len, md) != 0) {
        OPENSSL_cleanse(md, sizeof(md));
        return CRED_ERR_UNKNOWN;
    }
    cred_status st = CRED_ERR_UNKNOWN;
    pthread_rwlock_rdlock(&cs->mirror_rw);
    long s = cred_find(cs, key);
    if (s >= 0 && CRYPTO_memcmp(md, cs->rows[s].hash, sizeof(md)) == 0) {
        st = cs->rows[s].rec.revoked_at == 0 ? CRED_OK : CRED_ERR_REVOKED;
        if (out != NULL)
            *out = cs->rows[s].rec;
    }
    pthread_rwlock_unlock(&cs->mirror_rw);
    OPENSSL_cleanse(md, sizeof(md));
    return st;
}

int cred_may_use_kid(const cred_record *rec, const sk_kid *kid)
{
    if (rec == NULL || kid == NULL || rec->role != CRED_ROLE_SIGNER || rec->revoked_at != 0)
        return 0;
    if (rec->all_kids)
        return 1;
    size_t n = rec->n_kids < CRED_KIDS_MAX ? rec->n_kids : CRED_KIDS_MAX;
    for (size_t i = 0; i < n; i++)
        if (memcmp(rec->kids[i].b, kid->b, SK_KID_LEN) == 0)
            return 1;
    return 0;
}
