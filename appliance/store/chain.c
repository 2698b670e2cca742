/* chain: the audit chain's storage. See chain.h. */
#include "appliance/store/chain.h"

#include "appliance/common/config.h"
#include "appliance/common/jlog.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLite: the schema existing files were made with, unchanged. */
static const char chn_schema_lite_sql[] =
    "CREATE TABLE IF NOT EXISTS audit ("
    " seq INTEGER PRIMARY KEY,"
    " time INTEGER NOT NULL,"
    " actor TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " kid TEXT NOT NULL,"
    " details TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),"
    " hash TEXT NOT NULL CHECK (length(hash) = 64));"
    "CREATE INDEX IF NOT EXISTS audit_kid ON audit (kid) WHERE kid != '';"
    "CREATE TABLE IF NOT EXISTS audit_checkpoints ("
    " seq INTEGER PRIMARY KEY,"
    " hash TEXT NOT NULL CHECK (length(hash) = 64),"
    " time INTEGER NOT NULL,"
    " jws TEXT NOT NULL);";

/* PostgreSQL: the same tables, BIGINT for every integer; the version in schema_versions. */
static const char chn_schema_pg_sql[] =
    "CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version BIGINT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS audit ("
    " seq BIGINT PRIMARY KEY,"
    " time BIGINT NOT NULL,"
    " actor TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " kid TEXT NOT NULL,"
    " details TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),"
    " hash TEXT NOT NULL CHECK (length(hash) = 64));"
    "CREATE INDEX IF NOT EXISTS audit_kid ON audit (kid) WHERE kid <> '';"
    "CREATE TABLE IF NOT EXISTS audit_checkpoints ("
    " seq BIGINT PRIMARY KEY,"
    " hash TEXT NOT NULL CHECK (length(hash) = 64),"
    " time BIGINT NOT NULL,"
    " jws TEXT NOT NULL);"
    "INSERT INTO schema_versions (store, version) VALUES ('audit', 1)"
    " ON CONFLICT (store) DO NOTHING;";

static const char chn_zero_hash[CHN_HASH_HEX + 1] = CHN_ZERO_HASH;

int(chn_schema)(sdb *db, char *err, size_t errlen)
{
    char e[256];
    int pg = sdb_kind_of(db) == SDB_POSTGRES;
    const char *sql = pg ? chn_schema_pg_sql : chn_schema_lite_sql;
    if (sdb_in_transaction(db))
        return sdb_exec(db, sql, "audit schema", err, errlen) == SDB_OK ? 0 : -1;
    /* Several nodes start at once: CREATE TABLE IF NOT EXISTS races on PostgreSQL. */
    if (sdb_begin_write(db, SDB_LOCK_SCHEMA, e, sizeof(e)) != SDB_OK)
        return cfg_errorf(err, errlen, "audit schema: %s", e);
    if (sdb_exec(db, sql, "audit schema", err, errlen) != SDB_OK) {
        sdb_rollback(db);
        return -1;
    }
    if (sdb_commit(db, e, sizeof(e)) != SDB_OK)
        return cfg_errorf(err, errlen, "audit schema: %s", e);
    return 0;
}

/* ---- the actor and the node ------------------------------------------------------------- */

static _Thread_local char chn_actor_buf[CHN_ACTOR_MAX];

void chn_set_actor(const char *actor)
{
    snprintf(chn_actor_buf, sizeof(chn_actor_buf), "%s", actor ? actor : "");
}

const char *chn_actor(void)
{
    return chn_actor_buf[0] ? chn_actor_buf : CHN_SYSTEM;
}

/* Written once at start, before any appending thread runs; read by every append. */
static char chn_node_buf[CHN_NODE_MAX];

static _Thread_local char chn_thread_node[CHN_NODE_MAX];
static _Thread_local int chn_thread_node_set;

void chn_set_node(const char *node)
{
    snprintf(chn_node_buf, sizeof(chn_node_buf), "%s", node ? node : "");
}

void chn_set_thread_node(const char *node)
{
    chn_thread_node_set = node != NULL;
    snprintf(chn_thread_node, sizeof(chn_thread_node), "%s", node ? node : "");
}

const char *chn_node(void)
{
    return chn_thread_node_set ? chn_thread_node : chn_node_buf;
}

/* ---- the JSON log of events (jlog.h) ------------------------------------------------------- */

/* Set by the trail's writer from its options: process-wide, since the registry's, the
 * credential store's and the token state's connections append events too. */
static atomic_int chn_log_on;

void chn_log_events(int on)
{
    atomic_store(&chn_log_on, on ? 1 : 0);
}
/* Lines of the events appended by this thread's open transaction: written when that
 * transaction commits (it commits on the thread that built it), dropped when it rolls
 * back (sdb_on_end), so the log never shows an event the trail does not hold. */
static _Thread_local json_t *chn_log_staged;

static void chn_log_end(void *unused, int committed)
{
    (void)unused;
    json_t *staged = chn_log_staged;
    chn_log_staged = NULL;
    size_t i;
    json_t *line;
    if (committed)
        json_array_foreach(staged, i, line) jlog_write(json_incref(line));
    json_decref(staged);
}

/* Stages event seq's line: {"time","log":"event","event","seq","actor","kid"?,"details"}.
 * details is what the trail records, which never holds a secret (a credential's id and
 * role, never its secret). 0 when staged (the caller has the line written at its
 * transaction's end), -1 when not. */
static int chn_log_stage(uint64_t seq, const char *actor, const char *action, const char *kid,
                         json_t *details)
{
    char now[JLOG_TIME_LEN];
    jlog_time(now);
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:s, s:O}", "time", now, "log", "event", "event",
                          action, "seq", (json_int_t)seq, "actor", actor, "details", details);
    if (j != NULL && kid[0] != '\0')
        json_object_set_new(j, "kid", json_string(kid));
    if (chn_log_staged == NULL)
        chn_log_staged = json_array();
    return j != NULL && json_array_append_new(chn_log_staged, j) == 0 ? 0 : -1;
}

/* ---- appending ---------------------------------------------------------------------------- */

int chn_head(sdb *db, uint64_t *seq, char hash[CHN_HASH_HEX + 1])
{
    sdb_stmt *s;
    char err[256];
    *seq = 0;
    memcpy(hash, chn_zero_hash, sizeof(chn_zero_hash));
    if (sdb_prepare(db, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &s, "audit head",
                    err, sizeof(err)) != SDB_OK)
        return -1;
    sdb_status rc = sdb_step(s);
    if (rc == SDB_ROW) {
        *seq = (uint64_t)sdb_column_int64(s, 0);
        if (sdb_column_copy(s, 1, hash, CHN_HASH_HEX + 1) != 0 || strlen(hash) != CHN_HASH_HEX)
            rc = SDB_ERR;
    }
    sdb_finalize(s);
    return rc == SDB_ROW || rc == SDB_DONE ? 0 : -1;
}

/* details with the node added (a new reference), or NULL when it cannot be made. */
static json_t *chn_with_node(json_t *details)
{
    const char *node = chn_node();
    if (node[0] == '\0' || json_object_get(details, "node") != NULL)
        return json_incref(details);
    json_t *d = json_copy(details);
    if (d != NULL && json_object_set_new(d, "node", json_string(node)) != 0) {
        json_decref(d);
        return NULL;
    }
    return d;
}

int(chn_append_tx)(sdb *db, int64_t time, const char *action, const char *kid_hex, json_t *details,
                   char *err, size_t errlen)
{
    json_t *empty = NULL;
    if (details == NULL)
        details = empty = json_object();
    if (details == NULL || !json_is_object(details) || !chash_details_ok(details)) {
        json_decref(empty);
        return cfg_errorf(err, errlen, "audit: details must be a JSON object without reals");
    }
    json_t *d = chn_with_node(details);
    json_decref(empty);
    const char *actor = chn_actor();
    const char *kid = kid_hex ? kid_hex : "";
    uint64_t seq;
    char prev[CHN_HASH_HEX + 1], hash[CHN_HASH_HEX + 1], e[256];
    char *details_text = d != NULL ? json_dumps(d, CHASH_JSON_FLAGS) : NULL;
    int rc = -1;
    if (details_text == NULL || strlen(details_text) > CHN_DETAILS_MAX) {
        cfg_errorf(err, errlen, "audit: details missing or over %d bytes", CHN_DETAILS_MAX);
    } else if (sdb_lock(db, SDB_LOCK_AUDIT, e, sizeof(e)) != SDB_OK) {
        cfg_errorf(err, errlen, "audit: %s", e);
    } else if (chn_head(db, &seq, prev) != 0) {
        cfg_errorf(err, errlen, "audit: read head failed");
    } else if (chash_event(prev, seq + 1, time, actor, action, kid, d, hash) != 0) {
        cfg_errorf(err, errlen, "audit: hashing failed");
    } else {
        sdb_stmt *s;
        if (sdb_prepare(db,
                        "INSERT INTO audit (seq, time, actor, action, kid, details,"
                        " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        &s, "audit: insert", e, sizeof(e)) == SDB_OK) {
            sdb_bind_int64(s, 1, (int64_t)(seq + 1));
            sdb_bind_int64(s, 2, time);
            sdb_bind_text(s, 3, actor, -1);
            sdb_bind_text(s, 4, action, -1);
            sdb_bind_text(s, 5, kid, -1);
            sdb_bind_text(s, 6, details_text, -1);
            sdb_bind_text(s, 7, prev, -1);
            sdb_bind_text(s, 8, hash, -1);
            rc = sdb_step_done(s, "audit: insert", e, sizeof(e)) == SDB_OK ? 0 : -1;
        }
        if (rc != 0)
            cfg_errorf(err, errlen, "%s", e);
        else if (atomic_load_explicit(&chn_log_on, memory_order_relaxed) &&
                 chn_log_stage(seq + 1, actor, action, kid, d) == 0)
            sdb_on_end(db, chn_log_end, NULL);
    }
    free(details_text);
    json_decref(d);
    return rc;
}
