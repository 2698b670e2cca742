/* kst: the keeper's own state file. See kstate.h. */
#include "appliance/keeper/kstate.h"

#include "appliance/common/config.h"
#include "appliance/store/db.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KST_BUSY_MS 5000

static const char kst_schema[] =
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " seq INTEGER PRIMARY KEY,"
    " hash TEXT NOT NULL CHECK (length(hash) = 64));"
    "CREATE TABLE IF NOT EXISTS kids (kid BLOB PRIMARY KEY CHECK (length(kid) = 16));";

struct kst {
    pthread_mutex_t mu;
    sqlite3 *db;
};

/* dir of db_path + "/" KST_DIR: 0, or -1 when it does not fit. */
static int kst_dir_of(const char *db_path, char *out, size_t cap)
{
    const char *slash = strrchr(db_path, '/');
    int n = slash == NULL ? snprintf(out, cap, "%s", KST_DIR)
                          : snprintf(out, cap, "%.*s/%s", (int)(slash - db_path), db_path, KST_DIR);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* The directory exists (made now if missing) and is ours alone. */
static int kst_dir_ready(const char *dir, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return cfg_errorf(err, errlen, "keeper state %s: mkdir: %s", dir, strerror(errno));
    struct stat sb;
    if (lstat(dir, &sb) != 0)
        return cfg_errorf(err, errlen, "keeper state %s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return cfg_errorf(err, errlen, "keeper state %s: not a directory (or a symlink)", dir);
    if (sb.st_uid != geteuid() || (sb.st_mode & 077) != 0)
        return cfg_errorf(err, errlen,
                          "keeper state %s: must be owned by uid %u with mode 0700 (chmod 700)",
                          dir, (unsigned)geteuid());
    return 0;
}

static int kst_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

int kst_open(const char *db_path, kst **out, int *fresh, char *err, size_t errlen)
{
    *out = NULL;
    if (fresh != NULL)
        *fresh = 0;
    char dir[CFG_PATH_MAX], file[CFG_PATH_MAX + 16];
    if (db_path == NULL || kst_dir_of(db_path, dir, sizeof(dir)) != 0)
        return cfg_errorf(err, errlen, "keeper state: path too long");
    if (kst_dir_ready(dir, err, errlen) != 0)
        return -1;
    snprintf(file, sizeof(file), "%s/%s", dir, KST_FILE);
    kst *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return cfg_errorf(err, errlen, "out of memory");
    /* db_open creates the file 0600 and refuses anything but a regular file. */
    char derr[256];
    if (db_open(file, KST_BUSY_MS, &s->db, derr, sizeof(derr)) != 0) {
        cfg_errorf(err, errlen, "keeper state %s: %s", file, derr);
        free(s);
        return -1;
    }
    if (kst_exec(s->db, kst_schema) != 0) {
        cfg_errorf(err, errlen, "keeper state %s: %s", file, sqlite3_errmsg(s->db));
        sqlite3_close(s->db);
        free(s);
        return -1;
    }
    pthread_mutex_init(&s->mu, NULL);
    /* Fresh: no kid recorded yet. So a seed that failed half-way (rolled back) is tried
     * again at the next start, and an empty registry costs nothing to seed again. */
    sqlite3_stmt *st;
    int empty = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT NOT EXISTS (SELECT 1 FROM kids)", -1, &st, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            empty = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    if (empty < 0) {
        cfg_errorf(err, errlen, "keeper state %s: %s", file, sqlite3_errmsg(s->db));
        kst_close(s);
        return -1;
    }
    if (fresh != NULL)
        *fresh = empty;
    *out = s;
    return 0;
}

void kst_close(kst *s)
{
    if (s == NULL)
        return;
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* One row's hash column into hash: 1, 0 for no row, -1 on failure. Caller holds mu. */
static int kst_hash_row(sqlite3_stmt *st, uint64_t *seq, char hash[KST_HASH_HEX + 1])
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    const char *h = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 1) : NULL;
    if (h == NULL || strlen(h) != KST_HASH_HEX)
        return -1;
    if (seq != NULL)
        *seq = (uint64_t)sqlite3_column_int64(st, 0);
    memcpy(hash, h, KST_HASH_HEX + 1);
    return 1;
}

int kst_last_checkpoint(kst *s, uint64_t *seq, char hash[KST_HASH_HEX + 1])
{
    *seq = 0;
    hash[0] = '\0';
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int rc = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1", -1,
                           &st, NULL) == SQLITE_OK) {
        rc = kst_hash_row(st, seq, hash) < 0 ? -1 : 0;
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_checkpoint_at(kst *s, uint64_t seq, char hash[KST_HASH_HEX + 1])
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int rc = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT seq, hash FROM checkpoints WHERE seq = ?", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
        rc = kst_hash_row(st, NULL, hash);
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Runs one INSERT OR IGNORE prepared from sql with its binding done by the caller. */
static int kst_step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    return rc;
}

int kst_checkpoint_add(kst *s, uint64_t seq, const char *hash)
{
    if (hash == NULL || strlen(hash) != KST_HASH_HEX)
        return -1;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int rc = -1;
    /* Plain INSERT: a second hash for a seq is a constraint failure, never a replacement. */
    if (sqlite3_prepare_v2(s->db, "INSERT INTO checkpoints (seq, hash) VALUES (?, ?)", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
        sqlite3_bind_text(st, 2, hash, -1, SQLITE_STATIC);
        rc = kst_step_done(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_kid_known(kst *s, const sk_kid *kid)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int rc = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM kids WHERE kid = ?", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_blob(st, 1, kid->b, SK_KID_LEN, SQLITE_STATIC);
        int step = sqlite3_step(st);
        rc = step == SQLITE_ROW ? 1 : step == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_kids_add(kst *s, const sk_kid *kids, size_t n)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    /* One transaction (one fsync) for a seed of a thousand kids. */
    int rc = kst_exec(s->db, "BEGIN IMMEDIATE") == 0 &&
                     sqlite3_prepare_v2(s->db, "INSERT OR IGNORE INTO kids (kid) VALUES (?)", -1,
                                        &st, NULL) == SQLITE_OK
                 ? 0
                 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sqlite3_bind_blob(st, 1, kids[i].b, SK_KID_LEN, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (rc == 0 && kst_exec(s->db, "COMMIT") != 0)
        rc = -1;
    if (rc != 0 && !sqlite3_get_autocommit(s->db))
        kst_exec(s->db, "ROLLBACK");
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_kid_add(kst *s, const sk_kid *kid)
{
    return kst_kids_add(s, kid, 1);
}
