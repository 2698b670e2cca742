/*
 * sdb_impl: what the two backends of sdb.h share, private to appliance/store/sdb*.c.
 * sdb.c holds the public functions and the SQLite backend; sdb_pg.c the PostgreSQL one,
 * behind the sdbpg_* functions below, each called only for a connection of SDB_POSTGRES.
 */
#ifndef APPLIANCE_SDB_IMPL_H
#define APPLIANCE_SDB_IMPL_H

#include "appliance/store/sdb.h"

#include <sqlite3.h>

#define SDB_ERRMSG_MAX 512

struct sdb {
    sdb_kind kind;
    int in_tx;
    int64_t changes;
    char msg[SDB_ERRMSG_MAX]; /* the backend's last message */
    char version[48];
    void (*end_fn)(void *arg, int committed); /* sdb_on_end */
    void *end_arg;
    /* SQLite */
    sqlite3 *lite;
    int64_t data_version; /* for sdb_changed */
    /* PostgreSQL (sdb_pg.c) */
    void *pg;
};

struct sdb_stmt {
    sdb *db;
    char err[SDB_ERRMSG_MAX];
    /* SQLite */
    sqlite3_stmt *lite;
    /* PostgreSQL (sdb_pg.c) */
    void *pg;
};

/* Notes SDB_ERR_UNAVAILABLE on the calling thread for sdb_gave_up(). */
void sdb_note_gave_up(void);

/* The PostgreSQL backend: same contracts as the sdb_* of the same name. db->kind is
 * SDB_POSTGRES; a failure writes the server's or libpq's message into db->msg (and the
 * statement's err), the public layer adds "what: ". */
sdb_status sdbpg_open(sdb *db, const char *uri, unsigned flags, int timeout_ms);
void sdbpg_close(sdb *db);
sdb_status sdbpg_exec(sdb *db, const char *sql);
sdb_status sdbpg_begin_write(sdb *db, int lock);
sdb_status sdbpg_begin_read(sdb *db);
sdb_status sdbpg_lock(sdb *db, int lock); /* inside a write transaction */
sdb_status sdbpg_commit(sdb *db);
void sdbpg_rollback(sdb *db);
sdb_status sdbpg_prepare(sdb_stmt *s, const char *sql);
void sdbpg_bind(sdb_stmt *s, int idx, const void *v, size_t len, int is_blob, int is_null);
sdb_status sdbpg_step(sdb_stmt *s);
void sdbpg_reset(sdb_stmt *s);
int sdbpg_column_is_null(sdb_stmt *s, int col);
const char *sdbpg_column_text(sdb_stmt *s, int col); /* NULL for NULL */
size_t sdbpg_column_bytes(sdb_stmt *s, int col);
const void *sdbpg_column_blob(sdb_stmt *s, int col);
void sdbpg_finalize(sdb_stmt *s);
sdb_status sdbpg_notify(sdb *db, const char *channel, const char *payload);
sdb_status sdbpg_listen(sdb *db, const char *channel);
sdb_status sdbpg_wait(sdb *db, int timeout_ms); /* 0: never blocks */

#endif
