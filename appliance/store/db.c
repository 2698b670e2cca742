/* db: opening the appliance's SQLite file and reporting a failed step (db.h). */
#include "appliance/store/db.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

int db_fail(sqlite3 *db, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", what, db != NULL ? sqlite3_errmsg(db) : "out of memory");
    return -1;
}

int db_exec(sqlite3 *db, const char *sql, const char *what, char *err, size_t errlen)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0
                                                                : db_fail(db, what, err, errlen);
}

int db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s, const char *what, char *err,
               size_t errlen)
{
    *s = NULL;
    return sqlite3_prepare_v2(db, sql, -1, s, NULL) == SQLITE_OK ? 0
                                                                 : db_fail(db, what, err, errlen);
}

int db_step_done(sqlite3 *db, sqlite3_stmt *s, const char *what, char *err, size_t errlen)
{
    int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : db_fail(db, what, err, errlen);
    sqlite3_finalize(s);
    return rc;
}

int db_col_text(sqlite3_stmt *s, int col, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    int n = sqlite3_column_bytes(s, col);
    if (t == NULL || n < 0 || (size_t)n >= cap)
        return -1;
    memcpy(dst, t, (size_t)n);
    dst[n] = '\0';
    return 0;
}

/* A new file's directory entry is durable only once the directory itself is fsynced. */
static int db_sync_dir(const char *path, char *err, size_t errlen)
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
        snprintf(err, errlen, "open directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) {
        snprintf(err, errlen, "fsync directory %s: %s", dir, strerror(e));
        return -1;
    }
    return 0;
}

/* Set on the thread whose wait for a lock ran out (db_busy_gave_up). */
static _Thread_local int db_tl_gave_up;

/* SQLite's busy handler, as sqlite3_busy_timeout's (sleeps growing from 1 ms to 100 ms,
 * in all at most the connection's timeout), but it notes on the calling thread when it
 * gives up: the store then reports an ordinary I/O error, and the API can still tell a
 * lock that outlasted its bound (503, retry) from a broken file (500). */
static int db_busy(void *arg, int count)
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
        if (delay <= 0) {
            db_tl_gave_up = 1;
            return 0;
        }
    }
    struct timespec ts = {.tv_sec = delay / 1000, .tv_nsec = (long)(delay % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return 1;
}

int db_busy_gave_up(void)
{
    int was = db_tl_gave_up;
    db_tl_gave_up = 0;
    return was;
}

static int db_pragmas(sqlite3 *db, int busy_timeout_ms, char *err, size_t errlen)
{
    if (sqlite3_busy_handler(db, db_busy, (void *)(intptr_t)busy_timeout_ms) != SQLITE_OK)
        return db_fail(db, "set busy timeout", err, errlen);
    sqlite3_stmt *s;
    if (db_prepare(db, "PRAGMA journal_mode=WAL", &s, "set WAL mode", err, errlen) != 0)
        return -1;
    int rc = sqlite3_step(s);
    const unsigned char *mode = rc == SQLITE_ROW ? sqlite3_column_text(s, 0) : NULL;
    int ret = 0;
    if (rc != SQLITE_ROW)
        ret = db_fail(db, "set WAL mode", err, errlen);
    else if (mode == NULL || strcmp((const char *)mode, "wal") != 0) {
        snprintf(err, errlen, "journal mode is '%s', not 'wal'", mode ? (const char *)mode : "?");
        ret = -1;
    }
    sqlite3_finalize(s);
    return ret == 0 ? db_exec(db, "PRAGMA synchronous=FULL", "set pragmas", err, errlen) : -1;
}

/* The checks and the SQLite open that db_open (rw) and db_open_ro share. The file is
 * opened here first, not by SQLite: to create it with mode 0600 whatever the umask (rw
 * only; read-only never creates), to refuse a symlink, and to name a directory, a FIFO or
 * a device as what it is. *created: rw, and the file was empty (new). */
static int db_open_file(const char *path, int rw, sqlite3 **out, int *created, char *err,
                        size_t errlen)
{
    *out = NULL;
    *created = 0;
    const char *what = rw ? "open" : "open read-only";
    if (path == NULL || path[0] == '\0' || strlen(path) >= PATH_MAX) {
        snprintf(err, errlen, "path missing or too long");
        return -1;
    }
    int fd = rw ? open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600)
                : open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", what, strerror(errno));
        return -1;
    }
    struct stat sb;
    int regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
    *created = rw && regular && sb.st_size == 0;
    close(fd);
    if (!regular) {
        snprintf(err, errlen, "not a regular file");
        return -1;
    }
    sqlite3 *db = NULL;
    int flags = (rw ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY) | SQLITE_OPEN_NOFOLLOW |
                SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        db_fail(db, what, err, errlen);
        sqlite3_close(db); /* NULL is a no-op */
        return -1;
    }
    sqlite3_extended_result_codes(db, 1);
    *out = db;
    return 0;
}

int db_open_ro(const char *path, int busy_timeout_ms, sqlite3 **out, char *err, size_t errlen)
{
    int created;
    if (db_open_file(path, 0, out, &created, err, errlen) != 0)
        return -1;
    if (sqlite3_busy_handler(*out, db_busy, (void *)(intptr_t)busy_timeout_ms) != SQLITE_OK) {
        db_fail(*out, "set busy timeout", err, errlen);
        sqlite3_close(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

int db_open(const char *path, int busy_timeout_ms, sqlite3 **out, char *err, size_t errlen)
{
    int created;
    if (db_open_file(path, 1, out, &created, err, errlen) != 0)
        return -1;
    int rc = db_pragmas(*out, busy_timeout_ms, err, errlen);
    if (rc == 0 && created)
        rc = db_sync_dir(path, err, errlen);
    if (rc != 0) {
        sqlite3_close(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}
