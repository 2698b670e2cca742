/*
 * sdb: the store interface. Every durable table of the appliance is reached through it,
 * so that one store module (registry, credentials, token state, the audit chain, the
 * keeper's state) runs unchanged on either backend:
 *
 *  - SQLite, the embedded default: `database = /path/appliance.db`, one file per node,
 *    WAL, synchronous=FULL (a COMMIT is on disk before it returns);
 *  - PostgreSQL, for cluster mode: `database = postgresql://...` (or `postgres://...`),
 *    shared by every node. libpq reads the connection URI; a password never sits in it
 *    (the URI names a `passfile=`, or the server trusts the Unix socket's peer).
 *
 * The seam is the SQL connection, not each store's functions: the stores' logic (limits,
 * sequences, mirrors, invariants) is written once, and only what the two dialects spell
 * differently is asked of sdb_kind_of() (the schema text, a sequence). SQL passed to
 * sdb_prepare is written for SQLite with numbered parameters (`?1`, `?2`, or plain `?`
 * numbered left to right); the PostgreSQL backend rewrites them to `$1`, `$2` outside
 * quoted text. Both backends accept `INSERT ... ON CONFLICT ... DO NOTHING / DO UPDATE`
 * and `RETURNING`.
 *
 * Transactions. sdb_begin_write(db, lock) starts a write transaction that excludes every
 * other writer holding the same lock, on this node and, on PostgreSQL, on every node:
 * SQLite's BEGIN IMMEDIATE (one writer per file), PostgreSQL's BEGIN + a
 * transaction-scoped advisory lock (pg_advisory_xact_lock) numbered by lock. Each store
 * uses its own lock number (SDB_LOCK_*), so a read-then-write (the key limit, the next
 * revocation seq, the audit chain's head) is as serial across a cluster as it is in one
 * SQLite file. sdb_begin_read starts a read transaction that sees one consistent moment.
 *
 * Change notes. A writer calls sdb_notify(db, channel, payload) inside its transaction; on
 * PostgreSQL it is NOTIFY (delivered at COMMIT, to every node, dropped on ROLLBACK); on
 * SQLite it does nothing (one node: the writer updates its own mirror). A reader calls
 * sdb_listen(db, channel) once, then sdb_changed(db) (never blocks, no round trip: it
 * reads what the socket already holds) or sdb_wait(db, timeout_ms). On SQLite,
 * sdb_changed reports whether another connection committed to the file since the last
 * call (PRAGMA data_version), whatever the channel.
 *
 * Failures. Every function that can fail returns SDB_OK (0) or a negative sdb_status and
 * fills the caller's err as "<what>: <backend's message>". SDB_ERR_UNAVAILABLE is "try
 * again later" (SQLite: a lock wait ran past busy_timeout_ms; PostgreSQL: the server is
 * unreachable or the connection broke): the API answers it 503 storage_unavailable with
 * Retry-After. A broken PostgreSQL connection is reset on the next call (connect_timeout
 * bounded), so a store recovers by itself once the server is back; a reader that uses
 * sdb_listen sees sdb_changed return SDB_RESYNC after a reset, since notes sent while it
 * was away are lost, and reloads everything.
 *
 * Thread safety: one sdb and its statements belong to one thread at a time (each store
 * serialises its own connection with its own mutex), as SQLite's NOMUTEX connections.
 *
 *   sdb *db;
 *   char err[256];
 *   if (sdb_open(path, SDB_OPEN_CREATE, 5000, &db, err, sizeof(err)) != SDB_OK) ...
 *   sdb_stmt *s;
 *   if (sdb_prepare(db, "SELECT state FROM keys WHERE kid = ?1", &s, "read key", err,
 *                   sizeof(err)) == SDB_OK) {
 *       sdb_bind_text(s, 1, kid_hex, -1);
 *       while (sdb_step(s) == SDB_ROW) ... sdb_column_text(s, 0) ...
 *       sdb_finalize(s);
 *   }
 */
#ifndef APPLIANCE_SDB_H
#define APPLIANCE_SDB_H

#include <stddef.h>
#include <stdint.h>

typedef struct sdb sdb;
typedef struct sdb_stmt sdb_stmt;

typedef enum { SDB_SQLITE = 1, SDB_POSTGRES = 2 } sdb_kind;

typedef enum {
    SDB_OK = 0,
    SDB_ROW = 1,             /* sdb_step: a row is ready */
    SDB_DONE = 2,            /* sdb_step: no (more) rows */
    SDB_RESYNC = 3,          /* sdb_changed/sdb_wait: the connection was reset, notes may be lost */
    SDB_ERR = -1,            /* anything else (err says what) */
    SDB_ERR_CONSTRAINT = -2, /* a UNIQUE, PRIMARY KEY, CHECK or foreign key refused it */
    SDB_ERR_UNAVAILABLE = -3, /* busy past the timeout, or the server is unreachable */
    SDB_ERR_INVALID = -4,     /* a bad argument: NULL, an over-long locator */
} sdb_status;

/* sdb_open flags */
#define SDB_OPEN_CREATE 1u /* SQLite: create the file (mode 0600) when absent */
#define SDB_OPEN_READONLY                                                                          \
    2u /* SQLite: read-only, never created; PostgreSQL: read-only                                  \
        * transactions by default (default_transaction_read_only) */

/* Lock numbers for sdb_begin_write, one per store. */
#define SDB_LOCK_REGISTRY 1
#define SDB_LOCK_CREDENTIALS 2
#define SDB_LOCK_TOKENS 3
#define SDB_LOCK_AUDIT 4
#define SDB_LOCK_SCHEMA 5       /* creating or migrating a schema */
#define SDB_LOCK_SERVICE_KEYS 6 /* a keeper generating a service key in a shared token */

#define SDB_LOCATOR_MAX 1024

/* 1 when database names a PostgreSQL server (postgresql:// or postgres://), else 0. */
int sdb_is_postgres(const char *database);

/* Opens one connection. database: a file path (SQLite) or a PostgreSQL URI. SQLite: the
 * file is never opened through a symlink and must be a regular file; created with
 * SDB_OPEN_CREATE (mode 0600, its directory fsynced); WAL (checked), synchronous=FULL,
 * foreign_keys=ON and busy_timeout_ms for the other connections' locks. PostgreSQL:
 * connect_timeout is min(busy_timeout_ms, 5 s); lock waits are bounded by
 * lock_timeout = busy_timeout_ms and statements by statement_timeout = 4 x that, so
 * no call hangs on a stalled server. SDB_OK and *out, or an error with *out NULL. */
sdb_status sdb_open(const char *database, unsigned flags, int busy_timeout_ms, sdb **out, char *err,
                    size_t errlen);
/* Closes the connection and finalises nothing: finalise every statement first. NULL ok. */
void sdb_close(sdb *db);
sdb_kind sdb_kind_of(const sdb *db);

/* Runs sql: one or more statements that return no rows (a schema, BEGIN, COMMIT). */
sdb_status sdb_exec(sdb *db, const char *sql, const char *what, char *err, size_t errlen);

/* Transactions (see the top). sdb_rollback never fails from the caller's view (a
 * connection that cannot roll back is reset). */
sdb_status sdb_begin_write(sdb *db, int lock, char *err, size_t errlen);
sdb_status sdb_begin_read(sdb *db, char *err, size_t errlen);
sdb_status sdb_commit(sdb *db, char *err, size_t errlen);
void sdb_rollback(sdb *db);
/* 1 inside a transaction begun by sdb_begin_*, else 0. */
int sdb_in_transaction(const sdb *db);
/* Inside a write transaction, also takes lock (another store's SDB_LOCK_*) until the
 * transaction ends: a store's write that appends to the audit chain takes SDB_LOCK_AUDIT
 * so, and the chain's head is as serial as the audit writer's own appends. Locks are taken
 * in one order only, the store's own at sdb_begin_write and then SDB_LOCK_AUDIT, never the
 * other way round, so no two transactions wait for each other. SQLite: nothing to do (the
 * transaction holds the file's one write lock already). SDB_OK, or an error (the caller
 * rolls back). */
sdb_status sdb_lock(sdb *db, int lock, char *err, size_t errlen);
/* Calls fn(arg, committed) once, when the current transaction ends: committed 1 after its
 * COMMIT succeeded, 0 after a rollback or a failed commit. One hook per transaction (a
 * second call replaces the first); cleared once it fired. The audit chain's JSON log lines
 * (chain.h) are written this way, so the log never shows an event the trail lacks. */
void sdb_on_end(sdb *db, void (*fn)(void *arg, int committed), void *arg);

/* Statements. Parameters are numbered from 1, columns from 0. A text or blob bound is
 * copied (the caller's buffer may go at once). len -1: text up to its NUL. */
sdb_status sdb_prepare(sdb *db, const char *sql, sdb_stmt **out, const char *what, char *err,
                       size_t errlen);
void sdb_bind_int64(sdb_stmt *s, int idx, int64_t v);
void sdb_bind_text(sdb_stmt *s, int idx, const char *v, int len);
void sdb_bind_blob(sdb_stmt *s, int idx, const void *v, size_t len);
void sdb_bind_null(sdb_stmt *s, int idx);
/* Runs the statement (first call) and moves to the next row: SDB_ROW, SDB_DONE, or an
 * error (sdb_stmt_error() says what; the statement's err). */
sdb_status sdb_step(sdb_stmt *s);
/* Back to before the first step, bindings kept, for running the statement again. */
void sdb_reset(sdb_stmt *s);
/* The text of the last failure of the statement (or of its connection), "" if none. */
const char *sdb_stmt_error(const sdb_stmt *s);
int sdb_column_is_null(sdb_stmt *s, int col);
int64_t sdb_column_int64(sdb_stmt *s, int col);
/* NUL-terminated text, valid until the next step, reset or finalise; NULL for NULL. */
const char *sdb_column_text(sdb_stmt *s, int col);
/* The column's bytes: text without its NUL, or a blob. */
size_t sdb_column_bytes(sdb_stmt *s, int col);
/* A blob's bytes, valid as sdb_column_text's; NULL for NULL or empty. */
const void *sdb_column_blob(sdb_stmt *s, int col);
/* Copies a text column into dst (cap bytes with the NUL): 0, or -1 if NULL or too long. */
int sdb_column_copy(sdb_stmt *s, int col, char *dst, size_t cap);
void sdb_finalize(sdb_stmt *s);

/* Rows changed by the last INSERT, UPDATE or DELETE step on db. */
int64_t sdb_changes(sdb *db);

/* Steps s, which must return no row, and finalises it: SDB_OK or an error in err
 * "what: message". */
sdb_status sdb_step_done(sdb_stmt *s, const char *what, char *err, size_t errlen);

/* Change notes (see the top). channel: [a-z_]{1,40}; payload: at most 200 printable ASCII
 * bytes (a kid in hex, a list number), may be "". */
sdb_status sdb_notify(sdb *db, const char *channel, const char *payload, char *err, size_t errlen);
sdb_status sdb_listen(sdb *db, const char *channel, char *err, size_t errlen);
/* Never blocks: SDB_OK (nothing new), SDB_ROW (something changed since the last call),
 * SDB_RESYNC (the connection was reset: reload everything), or SDB_ERR_UNAVAILABLE. */
sdb_status sdb_changed(sdb *db);
/* As sdb_changed, but waits up to timeout_ms for a note (SQLite: sleeps and checks). */
sdb_status sdb_wait(sdb *db, int timeout_ms);

/* 1 when the last failure on the calling thread was SDB_ERR_UNAVAILABLE since the last
 * call, else 0; clears the note. A store that reports its own status codes keeps the
 * unavailable case apart this way (the API: 503 storage_unavailable, not 500). */
int sdb_gave_up(void);

/* The backend's version, for /metrics: "sqlite 3.40.1" or "postgresql 150008". */
const char *sdb_version(sdb *db);

#endif
