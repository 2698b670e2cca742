/* audit: the hash-chained, checkpointed trail. See audit.h. */
#include "appliance/core/audit.h"

#include "appliance/common/config.h"
#include "jose/jose.h"
#include "base/hex.h"
#include "base/clock.h"
#include "appliance/store/sdb.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define AUDIT_FLAGS CHASH_JSON_FLAGS
#define AUDIT_BUSY_MS 10000

/* ---- the writer ----------------------------------------------------------------------------- */

typedef struct {
    char action[CHN_ACTION_MAX];
    char actor[CHN_ACTOR_MAX];
    char kid[2 * SK_KID_LEN + 1];
    json_t *details;
    int64_t time;
    uint64_t ticket; /* every_signature: who waits for it; 0 for queued failures */
} audit_pending;

struct audit {
    sdb *db;
    kp *k;
    audit_options o;
    char node[CHN_NODE_MAX]; /* o.node's copy; "": the process's */
    pthread_mutex_t db_mu;   /* the connection: one transaction at a time */

    pthread_mutex_t mu; /* everything below */
    pthread_cond_t wake, done;
    audit_pending *q;
    size_t n_q, cap_q;
    size_t n_fail; /* queued failure events (ticket 0): the only ones AUDIT_QUEUE_MAX bounds */
    uint64_t dropped;
    json_t *by_kid, *by_cred; /* signature counts since the last flush */
    uint64_t counted;         /* signatures in them (audit_lag) */
    int64_t counted_since;    /* time of the first of them */
    uint64_t next_ticket, committed_ticket;
    uint64_t failed_upto; /* tickets at or below this were in a commit that failed */
    int stop;
    pthread_t thread;

    /* The newest checkpoint in the table, whichever node signed it, and when this writer
     * first saw it: with several nodes on one chain, a checkpoint another node signed
     * counts as this one's (no node signs the same stretch again). */
    uint64_t last_cp_seq;
    int64_t last_cp, last_flush; /* clk_now_ms */
};

static int64_t audit_now(void)
{
    return (int64_t)time(NULL);
}

/* The database as a message names it: a file's path, or "the PostgreSQL database" (a URI
 * may carry a user name and options that have no place in a log). */
static const char *audit_where(const char *db_path)
{
    return sdb_is_postgres(db_path) ? "the PostgreSQL database" : db_path;
}

/* Commits the pending events (and the counts when with_counts) in one transaction. */
static int audit_commit(audit *a, audit_pending *items, size_t n, json_t *by_kid, json_t *by_cred,
                        uint64_t dropped)
{
    char err[256], caller[CHN_ACTOR_MAX];
    snprintf(caller, sizeof(caller), "%s", chn_actor()); /* restored before return */
    int rc = 0;
    if (a->node[0] != '\0')
        chn_set_thread_node(a->node);
    pthread_mutex_lock(&a->db_mu);
    if (sdb_begin_write(a->db, SDB_LOCK_AUDIT, err, sizeof(err)) != SDB_OK) {
        pthread_mutex_unlock(&a->db_mu);
        fprintf(stderr, "signd: audit: %s\n", err);
        return -1;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        chn_set_actor(items[i].actor);
        rc = chn_append_tx(a->db, items[i].time, items[i].action,
                           items[i].kid[0] ? items[i].kid : NULL, items[i].details, err,
                           sizeof(err));
    }
    if (rc == 0 && (json_object_size(by_kid) > 0 || dropped > 0)) {
        chn_set_actor(NULL);
        json_t *d = json_pack("{s:O, s:O}", "by_kid", by_kid, "by_credential", by_cred);
        if (dropped > 0)
            json_object_set_new(d, "failure_events_dropped", json_integer((json_int_t)dropped));
        rc = chn_append_tx(a->db, audit_now(), CHN_SIGN_COUNTS, NULL, d, err, sizeof(err));
        json_decref(d);
    }
    chn_set_actor(caller);
    if (a->node[0] != '\0')
        chn_set_thread_node(NULL);
    if (rc == 0 && sdb_commit(a->db, err, sizeof(err)) != SDB_OK)
        rc = -1;
    else if (rc != 0)
        sdb_rollback(a->db);
    if (rc != 0)
        fprintf(stderr, "signd: audit: %s\n", err);
    pthread_mutex_unlock(&a->db_mu);
    return rc;
}

int audit_record(audit *a, const char *action, const char *kid_hex, json_t *details)
{
    audit_pending p;
    memset(&p, 0, sizeof(p));
    snprintf(p.action, sizeof(p.action), "%s", action);
    snprintf(p.actor, sizeof(p.actor), "%s", chn_actor());
    snprintf(p.kid, sizeof(p.kid), "%s", kid_hex ? kid_hex : "");
    p.details = details; /* borrowed: audit_commit does not consume items */
    p.time = audit_now();
    json_t *none = json_object();
    int rc = none != NULL ? audit_commit(a, &p, 1, none, none, 0) : -1;
    json_decref(none);
    return rc;
}

/* The newest checkpoint's seq in the table (0 when none), on the writer's connection
 * (caller holds db_mu). 0, or -1. */
static int audit_cp_newest(audit *a, uint64_t *seq)
{
    sdb_stmt *s;
    char err[256];
    *seq = 0;
    if (sdb_prepare(a->db, "SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints", &s,
                    "audit checkpoints", err, sizeof(err)) != SDB_OK)
        return -1;
    sdb_status st = sdb_step(s);
    if (st == SDB_ROW)
        *seq = (uint64_t)sdb_column_int64(s, 0);
    sdb_finalize(s);
    return st == SDB_ROW ? 0 : -1;
}

/* The chain's head (chn_head) read on the writer's connection, under its lock, and the
 * newest checkpoint any node signed: one that moved past last_cp_seq restarts the
 * checkpoint clock (audit_checkpoint_seconds counts from the cluster's last checkpoint). */
static int audit_head(audit *a, uint64_t *seq, char hash[CHN_HASH_HEX + 1])
{
    uint64_t cp = 0;
    pthread_mutex_lock(&a->db_mu);
    int rc = chn_head(a->db, seq, hash);
    if (rc == 0 && audit_cp_newest(a, &cp) == 0 && cp > a->last_cp_seq) {
        a->last_cp_seq = cp;
        a->last_cp = clk_now_ms();
    }
    pthread_mutex_unlock(&a->db_mu);
    return rc;
}

/* Signs a checkpoint of the current head now, if there are events since the last one.
 * 0 (done or nothing to do), or -1. */
static int audit_checkpoint(audit *a)
{
    uint64_t seq;
    char hash[CHN_HASH_HEX + 1];
    int rc = audit_head(a, &seq, hash);
    if (rc != 0 || seq == 0 || seq <= a->last_cp_seq)
        return rc;
    int64_t now = audit_now();
    json_t *p =
        json_pack("{s:s, s:I, s:I}", "hash", hash, "seq", (json_int_t)seq, "time", (json_int_t)now);
    char *payload = p ? json_dumps(p, AUDIT_FLAGS) : NULL;
    json_decref(p);
    if (payload == NULL)
        return -1;
    size_t cap = jose_jws_max_len(strlen(KP_AUDIT_HEADER), strlen(payload), SK_SIG_MAX);
    char *jws = malloc(cap);
    size_t input_len = 0, total = 0;
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    sk_status st = SK_ERR_DEVICE;
    rc = -1;
    if (jws != NULL &&
        jose_jws_begin(KP_AUDIT_HEADER, strlen(KP_AUDIT_HEADER), payload, strlen(payload), jws, cap,
                       &input_len) == 0 &&
        (st = kp_svc_sign(a->k, KP_SVC_AUDIT, jws, input_len, sig, &sig_len)) == SK_OK &&
        jose_jws_finish(jws, cap, input_len, sig, sig_len, &total) == 0) {
        /* Another node may have signed the same head first: one row per seq, theirs kept
         * (the same hash: one chain). */
        char err[256];
        pthread_mutex_lock(&a->db_mu);
        sdb_stmt *s;
        if (sdb_begin_write(a->db, SDB_LOCK_AUDIT, err, sizeof(err)) == SDB_OK) {
            if (sdb_prepare(a->db,
                            "INSERT INTO audit_checkpoints (seq, hash, time, jws)"
                            " VALUES (?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
                            &s, "audit checkpoint", err, sizeof(err)) == SDB_OK) {
                sdb_bind_int64(s, 1, (int64_t)seq);
                sdb_bind_text(s, 2, hash, -1);
                sdb_bind_int64(s, 3, now);
                sdb_bind_text(s, 4, jws, (int)total);
                rc = sdb_step_done(s, "audit checkpoint", err, sizeof(err)) == SDB_OK ? 0 : -1;
            }
            if (rc == 0)
                rc = sdb_commit(a->db, err, sizeof(err)) == SDB_OK ? 0 : -1;
            else
                sdb_rollback(a->db);
        }
        pthread_mutex_unlock(&a->db_mu);
    }
    if (rc == 0) {
        if (seq > a->last_cp_seq)
            a->last_cp_seq = seq;
        a->last_cp = clk_now_ms();
    } else {
        fprintf(stderr, "signd: audit: checkpoint at seq %" PRIu64 " failed (%s)\n", seq,
                st == SK_OK ? "storage" : sk_status_name(st));
    }
    free(jws);
    free(payload);
    return rc;
}

/* Events since the last checkpoint (0 when that cannot be read). */
static uint64_t audit_unsigned(audit *a)
{
    uint64_t seq;
    char hash[CHN_HASH_HEX + 1];
    int rc = audit_head(a, &seq, hash);
    return rc == 0 && seq > a->last_cp_seq ? seq - a->last_cp_seq : 0;
}

/* Takes what is pending (all of it, or only the signature events when !flush_all). */
static void audit_flush(audit *a, int flush_all)
{
    pthread_mutex_lock(&a->mu);
    audit_pending *items = a->q;
    size_t n = a->n_q;
    uint64_t upto = a->next_ticket;
    json_t *by_kid = NULL, *by_cred = NULL;
    uint64_t dropped = 0;
    if (!flush_all) {
        /* keep queued failures for the timed flush: move only ticketed ones */
        size_t keep = 0, take = 0;
        audit_pending *taken = malloc(sizeof(*taken) * (n ? n : 1));
        for (size_t i = 0; taken != NULL && i < n; i++) {
            if (a->q[i].ticket)
                taken[take++] = a->q[i];
            else
                a->q[keep++] = a->q[i];
        }
        if (taken == NULL) {
            pthread_mutex_unlock(&a->mu);
            return;
        }
        a->n_q = keep;
        items = taken;
        n = take;
    } else {
        a->q = NULL;
        a->n_q = a->cap_q = 0;
        a->n_fail = 0;
        by_kid = a->by_kid;
        by_cred = a->by_cred;
        a->by_kid = json_object();
        a->by_cred = json_object();
        a->counted = 0;
        dropped = a->dropped;
        a->dropped = 0;
    }
    pthread_mutex_unlock(&a->mu);

    int rc = 0;
    if (n > 0 || (by_kid != NULL && (json_object_size(by_kid) > 0 || dropped > 0))) {
        /* Only the timed flush carries counts; a group commit passes empty maps. */
        json_t *none_k = by_kid ? NULL : json_object(), *none_c = by_cred ? NULL : json_object();
        rc = audit_commit(a, items, n, by_kid ? by_kid : none_k, by_cred ? by_cred : none_c,
                          dropped);
        json_decref(none_k);
        json_decref(none_c);
    }
    for (size_t i = 0; i < n; i++)
        json_decref(items[i].details);
    free(items);
    json_decref(by_kid);
    json_decref(by_cred);
    pthread_mutex_lock(&a->mu);
    if (upto > a->committed_ticket)
        a->committed_ticket = upto;
    if (rc != 0)
        a->failed_upto = upto;
    pthread_cond_broadcast(&a->done);
    pthread_mutex_unlock(&a->mu);
}

static void *audit_main(void *arg)
{
    audit *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        int has_tickets = 0;
        for (size_t i = 0; i < a->n_q && !has_tickets; i++)
            has_tickets = a->q[i].ticket != 0;
        if (!has_tickets && !a->stop) {
            struct timespec until = clk_deadline(1000);
            pthread_cond_timedwait(&a->wake, &a->mu, &until);
        }
        int stop = a->stop;
        pthread_mutex_unlock(&a->mu);

        audit_flush(a, 0); /* signature events: group commit, now */
        if (stop || clk_ms_since(a->last_flush) >= (int64_t)a->o.flush_seconds * 1000) {
            audit_flush(a, 1);
            a->last_flush = clk_now_ms();
        }
        uint64_t pending = audit_unsigned(a);
        if (pending > 0 && (stop || pending >= a->o.checkpoint_events ||
                            clk_ms_since(a->last_cp) >= (int64_t)a->o.checkpoint_seconds * 1000))
            audit_checkpoint(a);
        if (stop)
            break;
    }
    kp_thread_done(a->k);
    return NULL;
}

int audit_open(const char *db_path, kp *k, const audit_options *o, audit **out, char *err,
               size_t errlen)
{
    *out = NULL;
    audit *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        cfg_errorf(err, errlen, "out of memory");
        return -1;
    }
    a->k = k;
    a->o = *o;
    snprintf(a->node, sizeof(a->node), "%s", o->node ? o->node : "");
    a->o.node = NULL;
    chn_log_events(o->log_events != 0);
    if (a->o.flush_seconds == 0)
        a->o.flush_seconds = 1;
    if (a->o.checkpoint_events == 0)
        a->o.checkpoint_events = 1;
    if (a->o.checkpoint_seconds == 0)
        a->o.checkpoint_seconds = 1;
    char derr[256];
    if (sdb_open(db_path, SDB_OPEN_CREATE, AUDIT_BUSY_MS, &a->db, derr, sizeof(derr)) != SDB_OK) {
        cfg_errorf(err, errlen, "%s: %s", audit_where(db_path), derr);
        free(a);
        return -1;
    }
    if (chn_schema(a->db, derr, sizeof(derr)) != 0) {
        cfg_errorf(err, errlen, "%s: %s", audit_where(db_path), derr);
        sdb_close(a->db);
        free(a);
        return -1;
    }
    (void)audit_cp_newest(a, &a->last_cp_seq);
    a->last_cp = clk_now_ms();
    a->last_flush = a->last_cp;
    pthread_mutex_init(&a->db_mu, NULL);
    pthread_mutex_init(&a->mu, NULL);
    clk_cond_init(&a->wake);
    pthread_cond_init(&a->done, NULL);
    a->by_kid = json_object();
    a->by_cred = json_object();
    if (pthread_create(&a->thread, NULL, audit_main, a) != 0) {
        cfg_errorf(err, errlen, "cannot start the audit thread");
        json_decref(a->by_kid);
        json_decref(a->by_cred);
        sdb_close(a->db);
        free(a);
        return -1;
    }
    *out = a;
    return 0;
}

void audit_close(audit *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_broadcast(&a->wake);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    for (size_t i = 0; i < a->n_q; i++)
        json_decref(a->q[i].details);
    free(a->q);
    json_decref(a->by_kid);
    json_decref(a->by_cred);
    sdb_close(a->db);
    pthread_mutex_destroy(&a->db_mu);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->wake);
    pthread_cond_destroy(&a->done);
    free(a);
}

/* Appends to the queue (caller holds mu). 0, or -1 when full. Failure events are bounded
 * by AUDIT_QUEUE_MAX (anyone can cause them); signature events are not, since each has a
 * request waiting for it, so there are at most as many as worker threads. */
static int audit_push(audit *a, const audit_pending *p)
{
    if (p->ticket == 0 && a->n_fail >= AUDIT_QUEUE_MAX)
        return -1;
    if (a->n_q == a->cap_q) {
        size_t cap = a->cap_q ? a->cap_q * 2 : 64;
        audit_pending *q = realloc(a->q, cap * sizeof(*q));
        if (q == NULL)
            return -1;
        a->q = q;
        a->cap_q = cap;
    }
    a->q[a->n_q++] = *p;
    if (p->ticket == 0)
        a->n_fail++;
    return 0;
}

void audit_queue(audit *a, const char *action, const char *actor, json_t *details)
{
    if (a == NULL)
        return;
    audit_pending p;
    memset(&p, 0, sizeof(p));
    snprintf(p.action, sizeof(p.action), "%s", action);
    snprintf(p.actor, sizeof(p.actor), "%s", actor && actor[0] ? actor : CHN_SYSTEM);
    p.details = details ? json_deep_copy(details) : json_object();
    p.time = audit_now();
    pthread_mutex_lock(&a->mu);
    if (p.details == NULL || audit_push(a, &p) != 0) {
        a->dropped++;
        json_decref(p.details);
    }
    pthread_mutex_unlock(&a->mu);
}

void audit_lag(audit *a, uint64_t *events, double *oldest_seconds)
{
    *events = 0;
    *oldest_seconds = 0;
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    int64_t oldest = a->counted > 0 ? a->counted_since : INT64_MAX;
    for (size_t i = 0; i < a->n_q; i++)
        if (a->q[i].time < oldest)
            oldest = a->q[i].time;
    *events = a->n_q + a->counted;
    pthread_mutex_unlock(&a->mu);
    int64_t now = audit_now();
    if (oldest != INT64_MAX && now > oldest)
        *oldest_seconds = (double)(now - oldest);
}

static void audit_count(json_t *map, const char *key)
{
    json_t *v = json_object_get(map, key);
    json_int_t n = v ? json_integer_value(v) : 0;
    if (v != NULL)
        json_integer_set(v, n + 1);
    else
        json_object_set_new(map, key, json_integer(1));
}

int audit_signature(audit *a, const char *kid_hex, const char *cred_id, const void *msg, size_t len,
                    const char *jti)
{
    if (a == NULL)
        return 0;
    const char *cred = cred_id && cred_id[0] ? cred_id : CHN_SYSTEM;
    if (!a->o.every_signature) {
        pthread_mutex_lock(&a->mu);
        audit_count(a->by_kid, kid_hex);
        audit_count(a->by_cred, cred);
        if (a->counted++ == 0)
            a->counted_since = audit_now();
        pthread_mutex_unlock(&a->mu);
        return 0;
    }
    uint8_t md[32];
    char digest[65];
    unsigned int mdlen = 0;
    if (EVP_Digest(msg, len, md, &mdlen, EVP_sha256(), NULL) != 1)
        return -1;
    hex_encode(md, 32, digest);
    audit_pending p;
    memset(&p, 0, sizeof(p));
    snprintf(p.action, sizeof(p.action), "%s", CHN_SIGN);
    snprintf(p.actor, sizeof(p.actor), "%s", cred);
    snprintf(p.kid, sizeof(p.kid), "%s", kid_hex);
    p.details = json_pack("{s:s}", "sha256", digest);
    if (p.details != NULL && jti != NULL)
        json_object_set_new(p.details, "jti", json_string(jti));
    p.time = audit_now();
    pthread_mutex_lock(&a->mu);
    p.ticket = ++a->next_ticket;
    if (p.details == NULL || audit_push(a, &p) != 0) {
        pthread_mutex_unlock(&a->mu);
        json_decref(p.details);
        return -1;
    }
    pthread_cond_signal(&a->wake);
    while (a->committed_ticket < p.ticket)
        pthread_cond_wait(&a->done, &a->mu);
    int failed = p.ticket <= a->failed_upto;
    pthread_mutex_unlock(&a->mu);
    return failed ? -1 : 0;
}

/* ---- reading -------------------------------------------------------------------------------- */

/* A read-only connection of its own, for a reader beside the writer (the API's queries,
 * the keeper's walk): on PostgreSQL the cluster's one chain, whichever node wrote it. */
static sdb *audit_open_ro(const char *path, char *err, size_t errlen)
{
    sdb *db = NULL;
    return sdb_open(path, SDB_OPEN_READONLY, AUDIT_BUSY_MS, &db, err, errlen) == SDB_OK ? db : NULL;
}

static json_t *audit_row_json(sdb_stmt *s)
{
    json_error_t je;
    const char *details = sdb_column_text(s, 5);
    json_t *d = details ? json_loads(details, JSON_REJECT_DUPLICATES, &je) : NULL;
    json_t *j = json_pack("{s:I, s:I}", "seq", (json_int_t)sdb_column_int64(s, 0), "time",
                          (json_int_t)sdb_column_int64(s, 1));
    static const char *const text_cols[] = {"actor", "action", "kid"};
    for (int c = 0; j != NULL && c < 3; c++)
        json_object_set_new(j, text_cols[c], json_string(sdb_column_text(s, 2 + c)));
    if (j != NULL) {
        json_object_set_new(j, "details", d ? d : json_object());
        json_object_set_new(j, "prev_hash", json_string(sdb_column_text(s, 6)));
        json_object_set_new(j, "hash", json_string(sdb_column_text(s, 7)));
    } else {
        json_decref(d);
    }
    return j;
}

int audit_list(const char *db_path, const audit_query *q, json_t **out, uint64_t *next)
{
    *out = NULL;
    *next = 0;
    char err[256];
    sdb *db = audit_open_ro(db_path, err, sizeof(err));
    if (db == NULL)
        return -1;
    unsigned limit = q->limit < 1 ? 1 : q->limit > 1000 ? 1000 : q->limit;
    sdb_stmt *s;
    if (sdb_prepare(db,
                    "SELECT seq, time, actor, action, kid, details, prev_hash, hash"
                    " FROM audit WHERE seq > ?1"
                    /* Typed: PostgreSQL cannot tell a NULL's type from IS NULL. */
                    " AND (CAST(?2 AS TEXT) IS NULL OR kid = ?2)"
                    " AND (CAST(?3 AS TEXT) IS NULL OR action = ?3)"
                    " AND (CAST(?4 AS TEXT) IS NULL OR actor = ?4)"
                    " AND (CAST(?5 AS BIGINT) = 0 OR time >= ?5)"
                    " AND (CAST(?6 AS BIGINT) = 0 OR time <= ?6)"
                    " ORDER BY seq LIMIT ?7",
                    &s, "audit list", err, sizeof(err)) != SDB_OK) {
        fprintf(stderr, "signd: audit: %s\n", err);
        sdb_close(db);
        return -1;
    }
    sdb_bind_int64(s, 1, (int64_t)q->after);
    const char *texts[3] = {q->kid, q->action, q->actor};
    for (int i = 0; i < 3; i++) {
        if (texts[i] != NULL)
            sdb_bind_text(s, 2 + i, texts[i], -1);
        else
            sdb_bind_null(s, 2 + i);
    }
    sdb_bind_int64(s, 5, q->since);
    sdb_bind_int64(s, 6, q->until);
    sdb_bind_int64(s, 7, (int64_t)limit + 1);
    json_t *arr = json_array();
    unsigned n = 0;
    uint64_t last = 0;
    sdb_status rc = SDB_DONE;
    while (arr != NULL && (rc = sdb_step(s)) == SDB_ROW) {
        if (n == limit) { /* one more exists: there is a next page */
            *next = last;
            break;
        }
        last = (uint64_t)sdb_column_int64(s, 0);
        json_array_append_new(arr, audit_row_json(s));
        n++;
    }
    int ok = rc == SDB_ROW || rc == SDB_DONE;
    if (!ok)
        fprintf(stderr, "signd: audit: list: %s\n", sdb_stmt_error(s));
    sdb_finalize(s);
    sdb_close(db);
    if (!ok || arr == NULL) {
        json_decref(arr);
        return -1;
    }
    *out = arr;
    return 0;
}

static int audit_write_line(FILE *out, json_t *j)
{
    char *text = j ? json_dumps(j, AUDIT_FLAGS) : NULL;
    int rc = text != NULL && fprintf(out, "%s\n", text) > 0 ? 0 : -1;
    free(text);
    json_decref(j);
    return rc;
}

int audit_export(const char *db_path, uint64_t from_seq, uint64_t to_seq, FILE *out)
{
    char err[256];
    sdb *db = audit_open_ro(db_path, err, sizeof(err));
    if (db == NULL)
        return -1;
    if (to_seq == 0 || to_seq > INT64_MAX)
        to_seq = INT64_MAX;
    if (from_seq == 0)
        from_seq = 1;
    /* One read transaction: events and checkpoints from the same snapshot. */
    sdb_stmt *e = NULL, *c = NULL;
    int rc = sdb_begin_read(db, err, sizeof(err)) == SDB_OK &&
                     sdb_prepare(db,
                                 "SELECT seq, time, actor, action, kid, details, prev_hash,"
                                 " hash FROM audit WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
                                 &e, "audit export", err, sizeof(err)) == SDB_OK &&
                     sdb_prepare(db,
                                 "SELECT seq, hash, time, jws FROM audit_checkpoints"
                                 " WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
                                 &c, "audit export", err, sizeof(err)) == SDB_OK
                 ? 0
                 : -1;
    if (rc == 0) {
        sdb_bind_int64(e, 1, (int64_t)from_seq);
        sdb_bind_int64(e, 2, (int64_t)to_seq);
        sdb_bind_int64(c, 1, (int64_t)from_seq);
        sdb_bind_int64(c, 2, (int64_t)to_seq);
        sdb_status crc = sdb_step(c);
        sdb_status erc = SDB_DONE;
        while (rc == 0 && (erc = sdb_step(e)) == SDB_ROW) {
            uint64_t seq = (uint64_t)sdb_column_int64(e, 0);
            json_t *ev = audit_row_json(e);
            if (ev != NULL)
                json_object_set_new(ev, "type", json_string("event"));
            rc = audit_write_line(out, ev);
            while (rc == 0 && crc == SDB_ROW && (uint64_t)sdb_column_int64(c, 0) <= seq) {
                rc = audit_write_line(out,
                                      json_pack("{s:s, s:I, s:s, s:I, s:s}", "type", "checkpoint",
                                                "seq", (json_int_t)sdb_column_int64(c, 0), "hash",
                                                sdb_column_text(c, 1), "time",
                                                (json_int_t)sdb_column_int64(c, 2), "jws",
                                                sdb_column_text(c, 3)));
                crc = sdb_step(c);
            }
        }
        if (rc == 0 && (erc != SDB_DONE || (crc != SDB_ROW && crc != SDB_DONE)))
            rc = -1;
    }
    sdb_finalize(e);
    sdb_finalize(c);
    if (sdb_in_transaction(db))
        sdb_rollback(db); /* read only: nothing to keep */
    sdb_close(db);
    return rc == 0 && fflush(out) == 0 ? 0 : -1;
}

/* ---- the keeper's walk along the chain --------------------------------------------------- */

int audit_chain_walk(const char *db_path, uint64_t from_seq, const char *from_hash, uint64_t to_seq,
                     char out[CHN_HASH_HEX + 1], char *why, size_t whylen)
{
    if (from_seq == 0)
        from_hash = CHN_ZERO_HASH;
    if (db_path == NULL || from_hash == NULL || strlen(from_hash) != CHN_HASH_HEX ||
        to_seq < from_seq || to_seq > INT64_MAX) {
        cfg_errorf(why, whylen, "audit chain: bad arguments");
        return -1;
    }
    char running[CHN_HASH_HEX + 1];
    memcpy(running, from_hash, CHN_HASH_HEX + 1);
    if (to_seq == from_seq) {
        memcpy(out, running, CHN_HASH_HEX + 1);
        return 0;
    }
    char err[256];
    sdb *db = audit_open_ro(db_path, err, sizeof(err));
    if (db == NULL) {
        cfg_errorf(why, whylen, "audit chain: cannot open %s: %s", audit_where(db_path), err);
        return -1;
    }
    sdb_stmt *s = NULL;
    int rc = -1;
    uint64_t seq = from_seq;
    /* One read transaction: the rows of one moment of the chain. Rows past to_seq that
     * other nodes append meanwhile are not read: the walk ends at the seq asked for. */
    if (sdb_begin_read(db, err, sizeof(err)) != SDB_OK ||
        sdb_prepare(db,
                    "SELECT seq, time, actor, action, kid, details, prev_hash, hash"
                    " FROM audit WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
                    &s, "audit chain", err, sizeof(err)) != SDB_OK) {
        cfg_errorf(why, whylen, "audit chain: %s", err);
        goto out;
    }
    sdb_bind_int64(s, 1, (int64_t)from_seq);
    sdb_bind_int64(s, 2, (int64_t)to_seq);
    sdb_status step;
    while ((step = sdb_step(s)) == SDB_ROW) {
        uint64_t row = (uint64_t)sdb_column_int64(s, 0);
        const char *actor = sdb_column_text(s, 2);
        const char *action = sdb_column_text(s, 3);
        const char *kid = sdb_column_text(s, 4);
        const char *details = sdb_column_text(s, 5);
        const char *ph = sdb_column_text(s, 6);
        const char *h = sdb_column_text(s, 7);
        char computed[CHN_HASH_HEX + 1];
        json_error_t je;
        json_t *d = details ? json_loads(details, JSON_REJECT_DUPLICATES, &je) : NULL;
        int ok = 0;
        if (row != seq + 1)
            cfg_errorf(why, whylen, "audit chain: seq %" PRIu64 " is missing", seq + 1);
        else if (ph == NULL || strcmp(ph, running) != 0)
            cfg_errorf(why, whylen,
                       "audit chain: seq %" PRIu64 "'s prev_hash is not the hash of "
                       "seq %" PRIu64,
                       row, seq);
        else if (d == NULL || !chash_details_ok(d) ||
                 chash_event(running, row, sdb_column_int64(s, 1), actor, action, kid, d,
                             computed) != 0 ||
                 h == NULL || strcmp(h, computed) != 0)
            cfg_errorf(why, whylen,
                       "audit chain: seq %" PRIu64 "'s hash does not match its "
                       "contents",
                       row);
        else
            ok = 1;
        json_decref(d);
        if (!ok)
            goto out;
        memcpy(running, computed, CHN_HASH_HEX + 1);
        seq = row;
    }
    if (step != SDB_DONE) {
        cfg_errorf(why, whylen, "audit chain: %s", sdb_stmt_error(s));
        goto out;
    }
    if (seq != to_seq) {
        cfg_errorf(why, whylen, "audit chain: ends at seq %" PRIu64 ", before %" PRIu64, seq,
                   to_seq);
        goto out;
    }
    memcpy(out, running, CHN_HASH_HEX + 1);
    rc = 0;
out:
    sdb_finalize(s);
    if (sdb_in_transaction(db))
        sdb_rollback(db);
    sdb_close(db);
    return rc;
}

const char *audit_backend_version(audit *a)
{
    return a != NULL ? sdb_version(a->db) : "";
}
