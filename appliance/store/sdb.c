/* sdb: the store interface's public functions and its SQLite backend (sdb.h). */
#include "appliance/store/sdb_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

static _Thread_local int sdb_tl_gave_up;

void sdb_note_gave_up(void)
{
    sdb_tl_gave_up = 1;
}

int sdb_gave_up(void)
{
    int was = sdb_tl_gave_up;
    sdb_tl_gave_up = 0;
    return was;
}

int sdb_is_postgres(const char *database)
{
    return database != NULL && (strncmp(database, "postgresql://", 13) == 0 ||
                                strncmp(database, "postgres://", 11) == 0);
}

/* ---- SQLite ------------------------------------------------------------------------- */

static sdb_status lite_status(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
        return SDB_OK;
    case SQLITE_ROW:
        return SDB_ROW;
    case SQLITE_DONE:
        return SDB_DONE;
    case SQLITE_CONSTRAINT:
        return SDB_ERR_CONSTRAINT;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        sdb_note_gave_up();
        return SDB_ERR_UNAVAILABLE;
    default:
        return SDB_ERR;
    }
}

static void lite_msg(sdb *db)
{
    snprintf(db->msg, sizeof(db->msg), "%s",
             db->lite != NULL ? sqlite3_errmsg(db->lite) : "out of memory");
}

/* SQLite's busy handler, as sqlite3_busy_timeout's (sleeps growing from 1 ms to 100 ms,
 * in all at most the connection's timeout), but a wait that runs out is "unavailable"
 * (503, retry), not a broken file (500). */
static int lite_busy(void *arg, int count)
{
    static const int delays[] = {1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100};
    const int n = (int)(sizeof(delays) / sizeof(delays[0]));
    const long timeout_ms = (long)(intptr_t)arg;
    long waited = 0;
    for (int i = 0; i < count; i++)
        waited += delays[i < n ? i : n - 1];
    int delay = delays[count < n ? count : n - 1];
    if (waited + delay > timeout_ms) {
        delay = (int)(timeout_ms - waited);
        if (delay <= 0)
            return 0;
    }
    struct timespec ts = {.tv_sec = delay / 1000, .tv_nsec = (long)(delay % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return 1;
}

/* A new file's directory entry is durable only once the directory itself is fsynced. */
static int lite_sync_dir(sdb *db, const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(db->msg, sizeof(db->msg), "open directory %.400s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) {
        snprintf(db->msg, sizeof(db->msg), "fsync directory %.400s: %s", dir, strerror(e));
        return -1;
    }
    return 0;
}

static int lite_pragma_text(sdb *db, const char *sql, char *out, size_t cap)
{
    sqlite3_stmt *s = NULL;
    int ok = sqlite3_prepare_v2(db->lite, sql, -1, &s, NULL) == SQLITE_OK &&
             sqlite3_step(s) == SQLITE_ROW;
    const unsigned char *t = ok ? sqlite3_column_text(s, 0) : NULL;
    snprintf(out, cap, "%s", t != NULL ? (const char *)t : "");
    if (!ok)
        lite_msg(db);
    sqlite3_finalize(s);
    return ok ? 0 : -1;
}

/* The file is opened here first, not by SQLite: to create it with mode 0600 whatever the
 * umask, to refuse a symlink, and to name a directory, a FIFO or a device as what it is. */
static sdb_status lite_open(sdb *db, const char *path, unsigned flags, int timeout_ms)
{
    int rw = (flags & SDB_OPEN_READONLY) == 0;
    int create = rw && (flags & SDB_OPEN_CREATE) != 0;
    const char *what = rw ? "open" : "open read-only";
    if (path[0] == '\0' || strlen(path) >= PATH_MAX) {
        snprintf(db->msg, sizeof(db->msg), "path missing or too long");
        return SDB_ERR_INVALID;
    }
    int fd = open(path,
                  (rw ? O_RDWR : O_RDONLY) | (create ? O_CREAT : 0) | O_NOFOLLOW | O_NONBLOCK |
                      O_CLOEXEC,
                  0600);
    if (fd < 0) {
        snprintf(db->msg, sizeof(db->msg), "%s: %s", what, strerror(errno));
        return SDB_ERR;
    }
    struct stat sb;
    int regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
    int created = create && regular && sb.st_size == 0;
    close(fd);
    if (!regular) {
        snprintf(db->msg, sizeof(db->msg), "not a regular file");
        return SDB_ERR;
    }
    int oflags = (rw ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY) | SQLITE_OPEN_NOFOLLOW |
                 SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &db->lite, oflags, NULL) != SQLITE_OK) {
        lite_msg(db);
        return SDB_ERR;
    }
    sqlite3_extended_result_codes(db->lite, 1);
    if (sqlite3_busy_handler(db->lite, lite_busy, (void *)(intptr_t)timeout_ms) != SQLITE_OK) {
        lite_msg(db);
        return SDB_ERR;
    }
    snprintf(db->version, sizeof(db->version), "sqlite %s", sqlite3_libversion());
    if (!rw)
        return SDB_OK;
    char mode[16];
    if (lite_pragma_text(db, "PRAGMA journal_mode=WAL", mode, sizeof(mode)) != 0)
        return SDB_ERR;
    if (strcmp(mode, "wal") != 0) {
        snprintf(db->msg, sizeof(db->msg), "journal mode is '%s', not 'wal'", mode);
        return SDB_ERR;
    }
    if (sqlite3_exec(db->lite, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", NULL, NULL,
                     NULL) != SQLITE_OK) {
        lite_msg(db);
        return SDB_ERR;
    }
    if (created && lite_sync_dir(db, path) != 0)
        return SDB_ERR;
    return SDB_OK;
}

/* ---- the public functions ----------------------------------------------------------- */

static sdb_status sdb_fail(sdb *db, sdb_status st, const char *what, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s", what, db != NULL ? db->msg : "out of memory");
    if (st == SDB_ERR_UNAVAILABLE)
        sdb_note_gave_up();
    return st;
}

/* Fires the sdb_on_end hook, once. */
static void sdb_end(sdb *db, int committed)
{
    void (*fn)(void *, int) = db->end_fn;
    db->end_fn = NULL;
    if (fn != NULL)
        fn(db->end_arg, committed);
}

sdb_status sdb_open(const char *database, unsigned flags, int busy_timeout_ms, sdb **out, char *err,
                    size_t errlen)
{
    if (out != NULL)
        *out = NULL;
    if (database == NULL || out == NULL || strlen(database) >= SDB_LOCATOR_MAX) {
        snprintf(err, errlen, "open: database missing or too long");
        return SDB_ERR_INVALID;
    }
    sdb *db = calloc(1, sizeof(*db));
    if (db == NULL) {
        snprintf(err, errlen, "open: out of memory");
        return SDB_ERR;
    }
    sdb_status st;
    if (sdb_is_postgres(database)) {
        db->kind = SDB_POSTGRES;
        st = sdbpg_open(db, database, flags, busy_timeout_ms);
    } else {
        db->kind = SDB_SQLITE;
        st = lite_open(db, database, flags, busy_timeout_ms);
    }
    if (st != SDB_OK) {
        sdb_fail(db, st, "open", err, errlen);
        sdb_close(db);
        return st;
    }
    *out = db;
    return SDB_OK;
}

void sdb_close(sdb *db)
{
    if (db == NULL)
        return;
    sdb_end(db, 0); /* a transaction left open rolls back with the connection */
    if (db->kind == SDB_POSTGRES)
        sdbpg_close(db);
    else
        sqlite3_close(db->lite);
    free(db);
}

sdb_kind sdb_kind_of(const sdb *db)
{
    return db->kind;
}

const char *sdb_version(sdb *db)
{
    return db->version;
}

sdb_status sdb_exec(sdb *db, const char *sql, const char *what, char *err, size_t errlen)
{
    sdb_status st;
    if (db->kind == SDB_POSTGRES) {
        st = sdbpg_exec(db, sql);
    } else {
        st = lite_status(sqlite3_exec(db->lite, sql, NULL, NULL, NULL));
        if (st != SDB_OK)
            lite_msg(db);
        db->changes = sqlite3_changes(db->lite);
    }
    return st == SDB_OK ? SDB_OK : sdb_fail(db, st, what, err, errlen);
}

sdb_status sdb_begin_write(sdb *db, int lock, char *err, size_t errlen)
{
    sdb_status st = db->kind == SDB_POSTGRES ? sdbpg_begin_write(db, lock)
                                             : sdb_exec(db, "BEGIN IMMEDIATE", "begin", NULL, 0);
    if (st != SDB_OK)
        return sdb_fail(db, st, "begin", err, errlen);
    db->in_tx = 1;
    return SDB_OK;
}

sdb_status sdb_begin_read(sdb *db, char *err, size_t errlen)
{
    sdb_status st =
        db->kind == SDB_POSTGRES ? sdbpg_begin_read(db) : sdb_exec(db, "BEGIN", "begin", NULL, 0);
    if (st != SDB_OK)
        return sdb_fail(db, st, "begin", err, errlen);
    db->in_tx = 1;
    return SDB_OK;
}

sdb_status sdb_commit(sdb *db, char *err, size_t errlen)
{
    sdb_status st =
        db->kind == SDB_POSTGRES ? sdbpg_commit(db) : sdb_exec(db, "COMMIT", "commit", NULL, 0);
    if (st != SDB_OK) {
        sdb_fail(db, st, "commit", err, errlen);
        sdb_rollback(db);
        return st;
    }
    db->in_tx = 0;
    sdb_end(db, 1);
    return SDB_OK;
}

void sdb_rollback(sdb *db)
{
    if (db->kind == SDB_POSTGRES)
        sdbpg_rollback(db);
    else if (!sqlite3_get_autocommit(db->lite))
        sqlite3_exec(db->lite, "ROLLBACK", NULL, NULL, NULL);
    db->in_tx = 0;
    sdb_end(db, 0);
}

sdb_status sdb_lock(sdb *db, int lock, char *err, size_t errlen)
{
    if (!db->in_tx) {
        snprintf(db->msg, sizeof(db->msg), "not inside a write transaction");
        return sdb_fail(db, SDB_ERR_INVALID, "lock", err, errlen);
    }
    sdb_status st = db->kind == SDB_POSTGRES ? sdbpg_lock(db, lock) : SDB_OK;
    return st == SDB_OK ? SDB_OK : sdb_fail(db, st, "lock", err, errlen);
}

void sdb_on_end(sdb *db, void (*fn)(void *arg, int committed), void *arg)
{
    db->end_fn = fn;
    db->end_arg = arg;
}

int sdb_in_transaction(const sdb *db)
{
    return db->in_tx;
}

sdb_status sdb_prepare(sdb *db, const char *sql, sdb_stmt **out, const char *what, char *err,
                       size_t errlen)
{
    *out = NULL;
    sdb_stmt *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "%s: out of memory", what);
        return SDB_ERR;
    }
    s->db = db;
    sdb_status st;
    if (db->kind == SDB_POSTGRES) {
        st = sdbpg_prepare(s, sql);
    } else {
        st = lite_status(sqlite3_prepare_v2(db->lite, sql, -1, &s->lite, NULL));
        if (st != SDB_OK)
            lite_msg(db);
    }
    if (st != SDB_OK) {
        sdb_finalize(s);
        return sdb_fail(db, st, what, err, errlen);
    }
    *out = s;
    return SDB_OK;
}

void sdb_bind_int64(sdb_stmt *s, int idx, int64_t v)
{
    if (s->db->kind == SDB_POSTGRES) {
        char t[24];
        int n = snprintf(t, sizeof(t), "%lld", (long long)v);
        sdbpg_bind(s, idx, t, (size_t)n, 2, 0); /* 2: typed bigint (sdb_pg.c) */
    } else {
        sqlite3_bind_int64(s->lite, idx, v);
    }
}

void sdb_bind_text(sdb_stmt *s, int idx, const char *v, int len)
{
    if (v == NULL) {
        sdb_bind_null(s, idx);
        return;
    }
    size_t n = len < 0 ? strlen(v) : (size_t)len;
    if (s->db->kind == SDB_POSTGRES)
        sdbpg_bind(s, idx, v, n, 0, 0);
    else
        sqlite3_bind_text(s->lite, idx, v, (int)n, SQLITE_TRANSIENT);
}

void sdb_bind_blob(sdb_stmt *s, int idx, const void *v, size_t len)
{
    if (s->db->kind == SDB_POSTGRES)
        sdbpg_bind(s, idx, v, len, 1, 0);
    else
        sqlite3_bind_blob(s->lite, idx, v, (int)len, SQLITE_TRANSIENT);
}

void sdb_bind_null(sdb_stmt *s, int idx)
{
    if (s->db->kind == SDB_POSTGRES)
        sdbpg_bind(s, idx, NULL, 0, 0, 1);
    else
        sqlite3_bind_null(s->lite, idx);
}

sdb_status sdb_step(sdb_stmt *s)
{
    sdb *db = s->db;
    sdb_status st;
    if (db->kind == SDB_POSTGRES) {
        st = sdbpg_step(s);
    } else {
        st = lite_status(sqlite3_step(s->lite));
        if (st == SDB_DONE)
            db->changes = sqlite3_changes(db->lite);
        else if (st < 0)
            lite_msg(db);
    }
    if (st < 0) {
        snprintf(s->err, sizeof(s->err), "%s", db->msg);
        if (st == SDB_ERR_UNAVAILABLE)
            sdb_note_gave_up();
    }
    return st;
}

void sdb_reset(sdb_stmt *s)
{
    if (s->db->kind == SDB_POSTGRES)
        sdbpg_reset(s);
    else
        sqlite3_reset(s->lite);
}

const char *sdb_stmt_error(const sdb_stmt *s)
{
    return s->err;
}

int sdb_column_is_null(sdb_stmt *s, int col)
{
    return s->db->kind == SDB_POSTGRES ? sdbpg_column_is_null(s, col)
                                       : sqlite3_column_type(s->lite, col) == SQLITE_NULL;
}

int64_t sdb_column_int64(sdb_stmt *s, int col)
{
    if (s->db->kind != SDB_POSTGRES)
        return sqlite3_column_int64(s->lite, col);
    const char *t = sdbpg_column_text(s, col);
    if (t == NULL)
        return 0;
    if (t[0] == 't' || t[0] == 'f') /* a boolean column */
        return t[0] == 't';
    return strtoll(t, NULL, 10);
}

const char *sdb_column_text(sdb_stmt *s, int col)
{
    return s->db->kind == SDB_POSTGRES ? sdbpg_column_text(s, col)
                                       : (const char *)sqlite3_column_text(s->lite, col);
}

size_t sdb_column_bytes(sdb_stmt *s, int col)
{
    if (s->db->kind == SDB_POSTGRES)
        return sdbpg_column_bytes(s, col);
    int n = sqlite3_column_bytes(s->lite, col);
    return n > 0 ? (size_t)n : 0;
}

const void *sdb_column_blob(sdb_stmt *s, int col)
{
    return s->db->kind == SDB_POSTGRES ? sdbpg_column_blob(s, col)
                                       : sqlite3_column_blob(s->lite, col);
}

int sdb_column_copy(sdb_stmt *s, int col, char *dst, size_t cap)
{
    const char *t = sdb_column_text(s, col);
    size_t n = sdb_column_bytes(s, col);
    if (t == NULL || n >= cap)
        return -1;
    memcpy(dst, t, n);
    dst[n] = '\0';
    return 0;
}

void sdb_finalize(sdb_stmt *s)
{
    if (s == NULL)
        return;
    if (s->db->kind == SDB_POSTGRES)
        sdbpg_finalize(s);
    else
        sqlite3_finalize(s->lite);
    free(s);
}

int64_t sdb_changes(sdb *db)
{
    return db->changes;
}

sdb_status sdb_step_done(sdb_stmt *s, const char *what, char *err, size_t errlen)
{
    sdb_status st = sdb_step(s);
    if (st == SDB_DONE) {
        st = SDB_OK;
    } else {
        if (st == SDB_ROW) {
            snprintf(s->db->msg, sizeof(s->db->msg), "the statement returned a row");
            st = SDB_ERR;
        }
        sdb_fail(s->db, st, what, err, errlen);
    }
    sdb_finalize(s);
    return st;
}

/* channel [a-z_]{1,40}, payload printable ASCII without a quote, at most 200 bytes: both
 * end up in SQL text on PostgreSQL (NOTIFY takes no parameter for the channel). */
static int sdb_note_ok(const char *channel, const char *payload)
{
    size_t n = channel != NULL ? strlen(channel) : 0;
    if (n == 0 || n > 40)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((channel[i] >= 'a' && channel[i] <= 'z') || channel[i] == '_'))
            return 0;
    if (payload == NULL)
        return 1;
    if (strlen(payload) > 200)
        return 0;
    for (const char *p = payload; *p != '\0'; p++)
        if (*p < 0x20 || *p > 0x7e || *p == '\'' || *p == '\\')
            return 0;
    return 1;
}

sdb_status sdb_notify(sdb *db, const char *channel, const char *payload, char *err, size_t errlen)
{
    if (!sdb_note_ok(channel, payload)) {
        snprintf(err, errlen, "notify: bad channel or payload");
        return SDB_ERR_INVALID;
    }
    if (db->kind != SDB_POSTGRES)
        return SDB_OK;
    sdb_status st = sdbpg_notify(db, channel, payload != NULL ? payload : "");
    return st == SDB_OK ? SDB_OK : sdb_fail(db, st, "notify", err, errlen);
}

sdb_status sdb_listen(sdb *db, const char *channel, char *err, size_t errlen)
{
    if (!sdb_note_ok(channel, NULL)) {
        snprintf(err, errlen, "listen: bad channel");
        return SDB_ERR_INVALID;
    }
    if (db->kind != SDB_POSTGRES) {
        sdb_changed(db); /* the baseline */
        return SDB_OK;
    }
    sdb_status st = sdbpg_listen(db, channel);
    return st == SDB_OK ? SDB_OK : sdb_fail(db, st, "listen", err, errlen);
}

static sdb_status lite_changed(sdb *db)
{
    sqlite3_stmt *s = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db->lite, "PRAGMA data_version", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    if (v < 0) {
        lite_msg(db);
        return SDB_ERR_UNAVAILABLE;
    }
    int moved = db->data_version != 0 && v != db->data_version;
    db->data_version = v;
    return moved ? SDB_ROW : SDB_OK;
}

sdb_status sdb_changed(sdb *db)
{
    return db->kind == SDB_POSTGRES ? sdbpg_wait(db, 0) : lite_changed(db);
}

sdb_status sdb_wait(sdb *db, int timeout_ms)
{
    if (db->kind == SDB_POSTGRES)
        return sdbpg_wait(db, timeout_ms);
    for (int waited = 0;; waited += 10) {
        sdb_status st = lite_changed(db);
        if (st != SDB_OK || waited >= timeout_ms)
            return st;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}
