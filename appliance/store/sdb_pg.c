/* sdb_pg: the PostgreSQL backend of sdb.h (sdb_impl.h). Not built yet: every call fails. */
#include "appliance/store/sdb_impl.h"

#include <stdio.h>

static sdb_status pg_absent(sdb *db)
{
    snprintf(db->msg, sizeof(db->msg), "the PostgreSQL backend is not built");
    return SDB_ERR;
}

sdb_status sdbpg_open(sdb *db, const char *uri, unsigned flags, int timeout_ms)
{
    (void)uri, (void)flags, (void)timeout_ms;
    return pg_absent(db);
}
void sdbpg_close(sdb *db)
{
    (void)db;
}
sdb_status sdbpg_exec(sdb *db, const char *sql)
{
    (void)sql;
    return pg_absent(db);
}
sdb_status sdbpg_begin_write(sdb *db, int lock)
{
    (void)lock;
    return pg_absent(db);
}
sdb_status sdbpg_lock(sdb *db, int lock)
{
    (void)lock;
    return pg_absent(db);
}
sdb_status sdbpg_begin_read(sdb *db)
{
    return pg_absent(db);
}
sdb_status sdbpg_commit(sdb *db)
{
    return pg_absent(db);
}
void sdbpg_rollback(sdb *db)
{
    (void)db;
}
sdb_status sdbpg_prepare(sdb_stmt *s, const char *sql)
{
    (void)sql;
    return pg_absent(s->db);
}
void sdbpg_bind(sdb_stmt *s, int idx, const void *v, size_t len, int is_blob, int is_null)
{
    (void)s, (void)idx, (void)v, (void)len, (void)is_blob, (void)is_null;
}
sdb_status sdbpg_step(sdb_stmt *s)
{
    return pg_absent(s->db);
}
void sdbpg_reset(sdb_stmt *s)
{
    (void)s;
}
int sdbpg_column_is_null(sdb_stmt *s, int col)
{
    (void)s, (void)col;
    return 1;
}
const char *sdbpg_column_text(sdb_stmt *s, int col)
{
    (void)s, (void)col;
    return NULL;
}
size_t sdbpg_column_bytes(sdb_stmt *s, int col)
{
    (void)s, (void)col;
    return 0;
}
const void *sdbpg_column_blob(sdb_stmt *s, int col)
{
    (void)s, (void)col;
    return NULL;
}
void sdbpg_finalize(sdb_stmt *s)
{
    (void)s;
}
sdb_status sdbpg_notify(sdb *db, const char *channel, const char *payload)
{
    (void)channel, (void)payload;
    return pg_absent(db);
}
sdb_status sdbpg_listen(sdb *db, const char *channel)
{
    (void)channel;
    return pg_absent(db);
}
sdb_status sdbpg_wait(sdb *db, int timeout_ms)
{
    (void)timeout_ms;
    return pg_absent(db);
}
