/*
 * db: the SQLite plumbing every store of the appliance's one database file needs, written
 * once. Each store (registry, credentials, audit, token state) keeps its own connection,
 * its own tables and its own error type; what they share is how the file is opened and
 * how a failed step is reported.
 *
 * Errors are written into a caller's buffer as "<what>: <SQLite's message>", so that each
 * store can prefix them with its own name and keep its own *_last_error().
 *
 *   sqlite3 *db;
 *   char err[256];
 *   if (db_open(path, 5000, &db, err, sizeof(err)) != 0)
 *       return fail("%s", err);
 */
#ifndef APPLIANCE_DB_H
#define APPLIANCE_DB_H

#include <sqlite3.h>
#include <stddef.h>

/* Opens the database file at path for one store: created here when absent (mode 0600, so
 * no umask can widen it; never through a symlink; the directory fsynced after a create so
 * the file survives a crash), a regular file or an error, SQLITE_OPEN_NOMUTEX (each store
 * serialises its own writers), extended result codes, busy_timeout_ms for the other
 * stores' connections, WAL (checked: a file that cannot be WAL is refused) and
 * synchronous=FULL (a COMMIT is on disk before it returns). 0 and *out set, or -1 with
 * err filled and *out NULL. */
int db_open(const char *path, int busy_timeout_ms, sqlite3 **out, char *err, size_t errlen);

/* Opens an existing database file read-only, for a reader beside the stores (the
 * registry's reader in other processes, the audit log's queries): never created, never
 * through a symlink, a regular file or an error; SQLITE_OPEN_NOMUTEX, extended result
 * codes and the same busy handler as db_open with busy_timeout_ms. No pragma is set: WAL
 * and synchronous belong to the writer. 0 and *out set, or -1 with err filled and *out
 * NULL. */
int db_open_ro(const char *path, int busy_timeout_ms, sqlite3 **out, char *err, size_t errlen);

/* 1 when a wait of the calling thread for another connection's lock ran out of its
 * busy_timeout_ms since the last call (the statement then failed SQLITE_BUSY, which the
 * stores report as their I/O error), else 0; clears the note. The API's error table turns
 * such a storage error into 503 storage_unavailable with Retry-After, not 500. */
int db_busy_gave_up(void);

/* Runs sql (any number of statements returning no rows). 0, or -1 with err "what: msg". */
int db_exec(sqlite3 *db, const char *sql, const char *what, char *err, size_t errlen);

/* Prepares one statement. 0, or -1 with err "what: msg" and *s NULL. */
int db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s, const char *what, char *err,
               size_t errlen);

/* Steps a statement that returns no row and finalises it. 0, or -1 with err filled. */
int db_step_done(sqlite3 *db, sqlite3_stmt *s, const char *what, char *err, size_t errlen);

/* Copies a text column into dst (cap bytes with the NUL): 0, or -1 if NULL or too long. */
int db_col_text(sqlite3_stmt *s, int col, char *dst, size_t cap);

/* Fills err with "what: msg" from db's last error; returns -1. */
int db_fail(sqlite3 *db, const char *what, char *err, size_t errlen);

#endif
