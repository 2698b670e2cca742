/* kst: the keeper's own state file. See kstate.h. */
#include "appliance/keeper/kstate.h"

#include "appliance/common/config.h"
#include "appliance/store/sdb.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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
    sdb *db;
};

/* state_dir + "/" KST_DIR: 0, or -1 when it does not fit. */
static int kst_dir_of(const char *state_dir, char *out, size_t cap)
{
    int n = state_dir[0] == '\0' ? snprintf(out, cap, "%s", KST_DIR)
                                 : snprintf(out, cap, "%s/%s", state_dir, KST_DIR);
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

int kst_open(const char *state_dir, kst **out, int *fresh, char *err, size_t errlen)
{
    *out = NULL;
    if (fresh != NULL)
        *fresh = 0;
    char dir[CFG_PATH_MAX], file[CFG_PATH_MAX + 16];
    if (state_dir == NULL || kst_dir_of(state_dir, dir, sizeof(dir)) != 0)
        return cfg_errorf(err, errlen, "keeper state: path too long");
    if (kst_dir_ready(dir, err, errlen) != 0)
        return -1;
    snprintf(file, sizeof(file), "%s/%s", dir, KST_FILE);
    kst *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return cfg_errorf(err, errlen, "out of memory");
    /* Always a SQLite file of this node's, whatever the appliance's database is: the
     * keeper's memory is its own, never shared. sdb_open creates the file 0600 and
     * refuses anything but a regular file (a PostgreSQL URI cannot get here: file is a
     * path under state_dir). */
    char derr[256] = "not a file";
    if (sdb_is_postgres(file) ||
        sdb_open(file, SDB_OPEN_CREATE, KST_BUSY_MS, &s->db, derr, sizeof(derr)) != SDB_OK) {
        cfg_errorf(err, errlen, "keeper state %s: %s", file, derr);
        free(s);
        return -1;
    }
    if (sdb_exec(s->db, kst_schema, "schema", derr, sizeof(derr)) != SDB_OK) {
        cfg_errorf(err, errlen, "keeper state %s: %s", file, derr);
        sdb_close(s->db);
        free(s);
        return -1;
    }
    pthread_mutex_init(&s->mu, NULL);
    /* Fresh: no kid recorded yet. So a seed that failed half-way (rolled back) is tried
     * again at the next start, and an empty registry costs nothing to seed again. */
    sdb_stmt *st;
    int empty = -1;
    if (sdb_prepare(s->db, "SELECT NOT EXISTS (SELECT 1 FROM kids)", &st, "read kids", derr,
                    sizeof(derr)) == SDB_OK) {
        if (sdb_step(st) == SDB_ROW)
            empty = (int)sdb_column_int64(st, 0);
        else
            snprintf(derr, sizeof(derr), "read kids: %s", sdb_stmt_error(st));
        sdb_finalize(st);
    }
    if (empty < 0) {
        cfg_errorf(err, errlen, "keeper state %s: %s", file, derr);
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
    sdb_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* One row's hash column into hash: 1, 0 for no row, -1 on failure. Caller holds mu. */
static int kst_hash_row(sdb_stmt *st, uint64_t *seq, char hash[KST_HASH_HEX + 1])
{
    sdb_status rc = sdb_step(st);
    if (rc == SDB_DONE)
        return 0;
    if (rc != SDB_ROW || sdb_column_copy(st, 1, hash, KST_HASH_HEX + 1) != 0 ||
        strlen(hash) != KST_HASH_HEX)
        return -1;
    if (seq != NULL)
        *seq = (uint64_t)sdb_column_int64(st, 0);
    return 1;
}

/* Prepares sql on s's connection (caller holds mu): the statement, or NULL. */
static sdb_stmt *kst_prepare(kst *s, const char *sql)
{
    sdb_stmt *st = NULL;
    char err[256];
    return sdb_prepare(s->db, sql, &st, "keeper state", err, sizeof(err)) == SDB_OK ? st : NULL;
}

int kst_last_checkpoint(kst *s, uint64_t *seq, char hash[KST_HASH_HEX + 1])
{
    *seq = 0;
    hash[0] = '\0';
    pthread_mutex_lock(&s->mu);
    int rc = -1;
    sdb_stmt *st = kst_prepare(s, "SELECT seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1");
    if (st != NULL) {
        rc = kst_hash_row(st, seq, hash) < 0 ? -1 : 0;
        sdb_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_checkpoint_at(kst *s, uint64_t seq, char hash[KST_HASH_HEX + 1])
{
    pthread_mutex_lock(&s->mu);
    int rc = -1;
    sdb_stmt *st = kst_prepare(s, "SELECT seq, hash FROM checkpoints WHERE seq = ?");
    if (st != NULL) {
        sdb_bind_int64(st, 1, (int64_t)seq);
        rc = kst_hash_row(st, NULL, hash);
        sdb_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_checkpoint_add(kst *s, uint64_t seq, const char *hash)
{
    if (hash == NULL || strlen(hash) != KST_HASH_HEX)
        return -1;
    pthread_mutex_lock(&s->mu);
    char err[256];
    int rc = -1;
    /* Plain INSERT: a second hash for a seq is a constraint failure, never a replacement. */
    sdb_stmt *st = kst_prepare(s, "INSERT INTO checkpoints (seq, hash) VALUES (?, ?)");
    if (st != NULL) {
        sdb_bind_int64(st, 1, (int64_t)seq);
        sdb_bind_text(st, 2, hash, -1);
        rc = sdb_step_done(st, "record checkpoint", err, sizeof(err)) == SDB_OK ? 0 : -1;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_kid_known(kst *s, const sk_kid *kid)
{
    pthread_mutex_lock(&s->mu);
    int rc = -1;
    sdb_stmt *st = kst_prepare(s, "SELECT 1 FROM kids WHERE kid = ?");
    if (st != NULL) {
        sdb_bind_blob(st, 1, kid->b, SK_KID_LEN);
        sdb_status step = sdb_step(st);
        rc = step == SDB_ROW ? 1 : step == SDB_DONE ? 0 : -1;
        sdb_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_kids_add(kst *s, const sk_kid *kids, size_t n)
{
    pthread_mutex_lock(&s->mu);
    char err[256];
    sdb_stmt *st = NULL;
    /* One transaction (one fsync) for a seed of a thousand kids. The lock number is
     * nominal: this file has one writer, the keeper. */
    int rc = sdb_begin_write(s->db, SDB_LOCK_SCHEMA, err, sizeof(err)) == SDB_OK &&
                     (st = kst_prepare(s, "INSERT INTO kids (kid) VALUES (?)"
                                          " ON CONFLICT (kid) DO NOTHING")) != NULL
                 ? 0
                 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sdb_bind_blob(st, 1, kids[i].b, SK_KID_LEN);
        sdb_status step = sdb_step(st);
        rc = step == SDB_DONE ? 0 : -1;
        sdb_reset(st);
    }
    sdb_finalize(st);
    if (rc == 0 && sdb_commit(s->db, err, sizeof(err)) != SDB_OK)
        rc = -1;
    else if (rc != 0 && sdb_in_transaction(s->db))
        sdb_rollback(s->db);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int kst_kid_add(kst *s, const sk_kid *kid)
{
    return kst_kids_add(s, kid, 1);
}
