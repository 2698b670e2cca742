/* chain: the audit chain's storage. See chain.h. */
#include "appliance/store/chain.h"

#include "appliance/common/config.h"
#include "appliance/common/jlog.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char chn_schema_sql[] =
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

static const char chn_zero_hash[CHN_HASH_HEX + 1] = CHN_ZERO_HASH;

int chn_schema(sqlite3 *db, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, chn_schema_sql, NULL, NULL, &msg) != SQLITE_OK) {
        cfg_errorf(err, errlen, "audit schema: %s", msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* ---- the actor ---------------------------------------------------------------------------- */

static _Thread_local char chn_actor_buf[CHN_ACTOR_MAX];

void chn_set_actor(const char *actor)
{
    snprintf(chn_actor_buf, sizeof(chn_actor_buf), "%s", actor ? actor : "");
}

const char *chn_actor(void)
{
    return chn_actor_buf[0] ? chn_actor_buf : CHN_SYSTEM;
}

/* ---- the JSON log of events (jlog.h) ------------------------------------------------------- */

/* Set by the trail's writer from its options: process-wide, since the registry's, the
 * credential store's and the token state's connections append events too. */
static atomic_int chn_log_on;

void chn_log_events(int on)
{
    atomic_store(&chn_log_on, on ? 1 : 0);
}
/* Lines of the events appended by this thread's open transaction: written by the commit
 * hook of that connection (the transaction commits on the thread that built it), dropped
 * by its rollback hook, so the log never shows an event the trail does not hold. */
static _Thread_local json_t *chn_log_staged;

static int chn_log_commit(void *unused)
{
    (void)unused;
    json_t *staged = chn_log_staged;
    chn_log_staged = NULL;
    size_t i;
    json_t *line;
    json_array_foreach(staged, i, line) jlog_write(json_incref(line));
    json_decref(staged);
    return 0; /* never vetoes the commit */
}

static void chn_log_rollback(void *unused)
{
    (void)unused;
    json_decref(chn_log_staged);
    chn_log_staged = NULL;
}

/* Stages event seq's line: {"time","log":"event","event","seq","actor","kid"?,"details"}.
 * details is what the trail records, which never holds a secret (a credential's id and
 * role, never its secret). */
static void chn_log_stage(sqlite3 *db, uint64_t seq, const char *actor, const char *action,
                          const char *kid, json_t *details)
{
    char now[JLOG_TIME_LEN];
    jlog_time(now);
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:s, s:O}", "time", now, "log", "event", "event",
                          action, "seq", (json_int_t)seq, "actor", actor, "details", details);
    if (j != NULL && kid[0] != '\0')
        json_object_set_new(j, "kid", json_string(kid));
    if (chn_log_staged == NULL)
        chn_log_staged = json_array();
    if (j == NULL || json_array_append_new(chn_log_staged, j) != 0)
        return;
    sqlite3_commit_hook(db, chn_log_commit, NULL);
    sqlite3_rollback_hook(db, chn_log_rollback, NULL);
}

/* ---- appending ---------------------------------------------------------------------------- */

int chn_head(sqlite3 *db, uint64_t *seq, char hash[CHN_HASH_HEX + 1])
{
    sqlite3_stmt *s;
    *seq = 0;
    memcpy(hash, chn_zero_hash, sizeof(chn_zero_hash));
    if (sqlite3_prepare_v2(db, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", -1, &s,
                           NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *seq = (uint64_t)sqlite3_column_int64(s, 0);
        const char *h = (const char *)sqlite3_column_text(s, 1);
        if (h == NULL || strlen(h) != CHN_HASH_HEX)
            rc = SQLITE_CORRUPT;
        else
            memcpy(hash, h, CHN_HASH_HEX + 1);
    }
    sqlite3_finalize(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

int chn_append_tx(sqlite3 *db, int64_t time, const char *action, const char *kid_hex,
                  json_t *details, char *err, size_t errlen)
{
    json_t *empty = NULL;
    if (details == NULL)
        details = empty = json_object();
    if (details == NULL || !json_is_object(details) || !chash_details_ok(details)) {
        json_decref(empty);
        cfg_errorf(err, errlen, "audit: details must be a JSON object without reals");
        return -1;
    }
    const char *actor = chn_actor();
    const char *kid = kid_hex ? kid_hex : "";
    uint64_t seq;
    char prev[CHN_HASH_HEX + 1], hash[CHN_HASH_HEX + 1];
    char *details_text = json_dumps(details, CHASH_JSON_FLAGS);
    int rc = -1;
    if (details_text == NULL || strlen(details_text) > CHN_DETAILS_MAX) {
        cfg_errorf(err, errlen, "audit: details missing or over %d bytes", CHN_DETAILS_MAX);
    } else if (chn_head(db, &seq, prev) != 0) {
        cfg_errorf(err, errlen, "audit: read head: %s", sqlite3_errmsg(db));
    } else if (chash_event(prev, seq + 1, time, actor, action, kid, details, hash) != 0) {
        cfg_errorf(err, errlen, "audit: hashing failed");
    } else {
        sqlite3_stmt *s;
        if (sqlite3_prepare_v2(db,
                               "INSERT INTO audit (seq, time, actor, action, kid, details,"
                               " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               -1, &s, NULL) == SQLITE_OK) {
            sqlite3_bind_int64(s, 1, (sqlite3_int64)(seq + 1));
            sqlite3_bind_int64(s, 2, time);
            sqlite3_bind_text(s, 3, actor, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 4, action, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 5, kid, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 6, details_text, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 7, prev, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 8, hash, -1, SQLITE_STATIC);
            rc = sqlite3_step(s) == SQLITE_DONE ? 0 : -1;
            sqlite3_finalize(s);
        }
        if (rc != 0)
            cfg_errorf(err, errlen, "audit: insert: %s", sqlite3_errmsg(db));
        else if (atomic_load_explicit(&chn_log_on, memory_order_relaxed))
            chn_log_stage(db, seq + 1, actor, action, kid, details);
    }
    free(details_text);
    json_decref(empty);
    return rc;
}
