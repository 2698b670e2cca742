/*
 * sdb_pg: the PostgreSQL backend of sdb.h (sdb_impl.h), on libpq.
 *
 * Every call runs synchronously (pg_exec: PQsendQuery / PQsendQueryParams, waited for) with
 * parameters and results in text format, but for blobs, sent as binary bytea parameters; a bytea
 * column comes back as `\x<hex>` text and is decoded on demand. SQL written for SQLite (`?`, `?N`)
 * is rewritten once, at prepare, to `$N`.
 *
 * No call can hang: the connection is opened with connect_timeout, and the session's
 * lock_timeout, statement_timeout and idle_in_transaction_session_timeout bound the
 * server's side. A connection found broken at the start of a call outside a transaction
 * is reset once (its session settings and LISTENs are made again, and the next sdb_wait
 * says SDB_RESYNC, since notes sent meanwhile are lost); inside a transaction the call
 * fails SDB_ERR_UNAVAILABLE, as the transaction went with the connection.
 *
 * A call the server never answered (pg_exec's own deadline) fails SDB_ERR_UNAVAILABLE; for
 * a COMMIT that means "unknown", as with any client whose server went away at that moment:
 * a store that must know reads its row again once the server is back.
 *
 * The URI is handed to libpq and never copied into a message: libpq's own messages name
 * the host or socket, never a password.
 */
#include "appliance/store/sdb_impl.h"

#include <libpq-fe.h>

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#define PG_BYTEA_OID 17
#define PG_TEXT_OID 25
#define PG_INT8_OID 20
#define PG_MAX_PARAM 32766
/* pg_advisory_xact_lock takes one bigint: the high 32 bits ("SIGN") keep our lock numbers
 * apart from any other application's advisory locks on the same database. */
#define PG_LOCK_NAMESPACE 0x5349474ELL

typedef struct {
    PGconn *c;
    int timeout_ms;
    unsigned flags;
    int resync;    /* reset since the last sdbpg_wait */
    int timed_out; /* the last pg_exec gave the server up (db->msg says so) */
    char **chans;  /* channels listened to, for re-LISTEN after a reset */
    int nchans;
} pgdb;

typedef struct {
    char *sql; /* rewritten to $N */
    int nparams;
    char **vals;
    int *lens;
    int *fmts;
    Oid *types;
    unsigned char *pflags; /* per parameter: pg_rewrite's used[] */
    PGresult *res;
    int started;
    int row;
    int nrows;
    int ncols;
    unsigned char **dec; /* decoded bytea per column of the current row */
    size_t *declen;
} pgstmt;

static pgdb *P(sdb *db)
{
    return (pgdb *)db->pg;
}

static void pg_quiet(void *arg, const char *message)
{
    /* NOTICEs ("relation already exists, skipping") are not errors: libpq's default prints
     * them on stderr. */
    (void)arg, (void)message;
}

/* db->msg = text without its trailing newline(s). */
static void pg_set_msg(sdb *db, const char *text)
{
    snprintf(db->msg, sizeof(db->msg), "%s", text != NULL && text[0] != '\0' ? text : "failed");
    size_t n = strlen(db->msg);
    while (n > 0 && (db->msg[n - 1] == '\n' || db->msg[n - 1] == '\r'))
        db->msg[--n] = '\0';
    /* libpq's messages run over several lines: one line, for the logs */
    for (char *p = db->msg; *p != '\0'; p++)
        if (*p == '\n' || *p == '\t' || *p == '\r')
            *p = ' ';
}

static int pg_bad(sdb *db)
{
    return P(db)->c == NULL || PQstatus(P(db)->c) != CONNECTION_OK;
}

/* The status of a failed result r (NULL: no result at all), its message into db->msg. */
static sdb_status pg_fail(sdb *db, PGresult *r)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (r == NULL && P(db)->timed_out)
        return SDB_ERR_UNAVAILABLE;
    if (primary != NULL)
        pg_set_msg(db, primary);
    else
        pg_set_msg(db, P(db)->c != NULL ? PQerrorMessage(P(db)->c) : "out of memory");
    if (pg_bad(db))
        return SDB_ERR_UNAVAILABLE;
    if (state == NULL || strlen(state) != 5)
        return SDB_ERR;
    if (strncmp(state, "23", 2) == 0)
        return SDB_ERR_CONSTRAINT;
    /* lock_not_available (lock_timeout), query_canceled (statement_timeout), serialization
     * and deadlock failures, connection exceptions, the server shutting down, too many
     * connections: all "try again later". */
    if (strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0 || strcmp(state, "40001") == 0 ||
        strcmp(state, "40P01") == 0 || strncmp(state, "08", 2) == 0 ||
        strncmp(state, "57P", 3) == 0 || strncmp(state, "53", 2) == 0)
        return SDB_ERR_UNAVAILABLE;
    return SDB_ERR;
}

static long long pg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for the socket (POLLIN or POLLOUT) until the deadline: 1 ready, 0 timed out. */
static int pg_poll(PGconn *c, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - pg_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = PQsocket(c), .events = events};
        int rc = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return 1; /* let libpq find what is wrong */
    }
}

/* PQexec / PQexecParams, but bounded on our side too: statement_timeout is the server's,
 * and a server that stalls (stopped, a partition that drops packets, a Unix socket whose
 * backend hangs) answers nothing at all. Past 4 x the timeout + 2 s the connection is
 * given up (its socket shut down, so libpq marks it bad and the next call resets it).
 * sql with n < 0: the simple protocol (several statements allowed). Returns the first
 * failed result, else the last one; NULL when nothing came (PQerrorMessage says why). */
static PGresult *pg_exec(sdb *db, const char *sql, int n, const Oid *types, const char *const *vals,
                         const int *lens, const int *fmts)
{
    pgdb *p = P(db);
    PGconn *c = p->c;
    p->timed_out = 0;
    int sent =
        n < 0 ? PQsendQuery(c, sql) : PQsendQueryParams(c, sql, n, types, vals, lens, fmts, 0);
    if (!sent)
        return NULL;
    long t = p->timeout_ms > 0 ? p->timeout_ms : 1;
    long long deadline = pg_now_ms() + 4LL * t + 2000;
    int late = 0;
    while (PQflush(c) == 1)
        if (!pg_poll(c, POLLOUT, deadline)) {
            late = 1;
            break;
        }
    PGresult *keep = NULL, *r;
    int keep_failed = 0;
    for (;;) {
        /* every result waited for under the deadline: PQgetResult would block */
        while (!late && PQisBusy(c)) {
            if (!pg_poll(c, POLLIN, deadline))
                late = 1;
            else if (!PQconsumeInput(c))
                break;
        }
        if (late && PQstatus(c) == CONNECTION_OK) {
            shutdown(PQsocket(c), SHUT_RDWR);
            PQconsumeInput(c); /* reads the end: the connection is bad from now on */
        }
        if ((r = PQgetResult(c)) == NULL)
            break;
        ExecStatusType st = PQresultStatus(r);
        if (keep_failed) {
            PQclear(r); /* the first failure is the one to tell */
            continue;
        }
        PQclear(keep);
        keep = r;
        keep_failed = st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY;
    }
    if (late) {
        PQclear(keep);
        p->timed_out = 1;
        snprintf(db->msg, sizeof(db->msg), "the server did not answer within %lld ms",
                 4LL * t + 2000);
        return NULL;
    }
    return keep;
}

/* Runs sql that returns no rows (or rows we do not read). */
static sdb_status pg_run(sdb *db, const char *sql)
{
    PGresult *r = pg_exec(db, sql, -1, NULL, NULL, NULL, NULL);
    ExecStatusType t = PQresultStatus(r);
    sdb_status st = SDB_OK;
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK)
        st = pg_fail(db, r);
    else
        db->changes = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return st;
}

static int quote_ident_ok(const char *ch)
{
    for (const char *p = ch; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
            return 0;
    return ch[0] != '\0';
}

static sdb_status pg_listen_sql(sdb *db, const char *channel)
{
    if (!quote_ident_ok(channel)) {
        pg_set_msg(db, "bad channel");
        return SDB_ERR_INVALID;
    }
    char sql[64];
    snprintf(sql, sizeof(sql), "LISTEN \"%s\"", channel);
    return pg_run(db, sql);
}

/* The session's settings, on a fresh or reset connection. */
static sdb_status pg_session(sdb *db)
{
    pgdb *p = P(db);
    PQsetNoticeProcessor(p->c, pg_quiet, NULL);
    long t = p->timeout_ms > 0 ? p->timeout_ms : 1;
    /* A transaction left idle (a store's thread stuck between two statements) would hold
     * its advisory lock for ever: the server ends it, at no less than 10 s. */
    long idle = 4 * t > 10000 ? 4 * t : 10000;
    char sql[400];
    snprintf(sql, sizeof(sql),
             "SET client_encoding = 'UTF8'; SET bytea_output = 'hex'; "
             "SET lock_timeout = %ld; SET statement_timeout = %ld; "
             "SET idle_in_transaction_session_timeout = %ld%s",
             t, 4 * t, idle,
             (p->flags & SDB_OPEN_READONLY) ? "; SET default_transaction_read_only = on" : "");
    sdb_status st = pg_run(db, sql);
    for (int i = 0; st == SDB_OK && i < p->nchans; i++)
        st = pg_listen_sql(db, p->chans[i]);
    return st;
}

/* At the start of every call: a connection the server closed meanwhile (a restart, a
 * failover) is found by reading what the socket holds (never blocks; notes read are kept
 * for PQnotifies), and reset once outside a transaction. */
static sdb_status pg_ready(sdb *db)
{
    pgdb *p = P(db);
    if (p->c == NULL) {
        pg_set_msg(db, "out of memory");
        return SDB_ERR;
    }
    if (PQstatus(p->c) == CONNECTION_OK && !PQisBusy(p->c))
        PQconsumeInput(p->c);
    if (PQstatus(p->c) == CONNECTION_OK)
        return SDB_OK;
    if (db->in_tx) {
        pg_set_msg(db, "the connection to the server was lost inside a transaction");
        return SDB_ERR_UNAVAILABLE;
    }
    PQreset(p->c);
    if (PQstatus(p->c) != CONNECTION_OK) {
        pg_set_msg(db, PQerrorMessage(p->c));
        return SDB_ERR_UNAVAILABLE;
    }
    p->resync = 1;
    sdb_status st = pg_session(db);
    if (st != SDB_OK)
        return st == SDB_ERR_INVALID ? SDB_ERR : SDB_ERR_UNAVAILABLE;
    return SDB_OK;
}

sdb_status sdbpg_open(sdb *db, const char *uri, unsigned flags, int timeout_ms)
{
    pgdb *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        pg_set_msg(db, "out of memory");
        return SDB_ERR;
    }
    db->pg = p;
    p->timeout_ms = timeout_ms;
    p->flags = flags;
    /* connect_timeout is in whole seconds: min(timeout, 5 s), at least 1 (libpq reads
     * values below 2 as 2). Later keywords override what the URI says. */
    int secs = (timeout_ms + 999) / 1000;
    if (secs > 5)
        secs = 5;
    if (secs < 1)
        secs = 1;
    char ct[16];
    snprintf(ct, sizeof(ct), "%d", secs);
    /* TCP keepalives first (the URI may set its own): a peer gone without a word (a
     * partition, a powered-off host) is found within about 25 s even by a listener that
     * only waits. connect_timeout last: ours bounds the connect whatever the URI says. */
    const char *keys[] = {"keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "dbname",
                          "connect_timeout",
                          NULL};
    const char *vals[] = {"1", "10", "5", "3", uri, ct, NULL};
    p->c = PQconnectdbParams(keys, vals, 1);
    if (p->c == NULL) {
        pg_set_msg(db, "out of memory");
        return SDB_ERR;
    }
    if (PQstatus(p->c) != CONNECTION_OK) {
        pg_set_msg(db, PQerrorMessage(p->c));
        /* An unparsable URI is a configuration error; a server not there is "later". */
        return strstr(db->msg, "invalid") != NULL ? SDB_ERR : SDB_ERR_UNAVAILABLE;
    }
    sdb_status st = pg_session(db);
    if (st != SDB_OK)
        return st;
    snprintf(db->version, sizeof(db->version), "postgresql %d", PQserverVersion(p->c));
    return SDB_OK;
}

void sdbpg_close(sdb *db)
{
    pgdb *p = P(db);
    if (p == NULL)
        return;
    if (p->c != NULL)
        PQfinish(p->c);
    for (int i = 0; i < p->nchans; i++)
        free(p->chans[i]);
    free(p->chans);
    free(p);
    db->pg = NULL;
}

sdb_status sdbpg_exec(sdb *db, const char *sql)
{
    sdb_status st = pg_ready(db);
    return st != SDB_OK ? st : pg_run(db, sql);
}

/* Takes the transaction-scoped advisory lock numbered lock (waits at most lock_timeout). */
static sdb_status pg_xact_lock(sdb *db, int lock)
{
    char key[32];
    snprintf(key, sizeof(key), "%lld", (long long)((PG_LOCK_NAMESPACE << 32) | (uint32_t)lock));
    const char *vals[] = {key};
    PGresult *r =
        pg_exec(db, "SELECT pg_advisory_xact_lock($1::bigint)", 1, NULL, vals, NULL, NULL);
    sdb_status st = PQresultStatus(r) == PGRES_TUPLES_OK ? SDB_OK : pg_fail(db, r);
    PQclear(r);
    return st;
}

sdb_status sdbpg_begin_write(sdb *db, int lock)
{
    sdb_status st = pg_ready(db);
    if (st != SDB_OK)
        return st;
    if ((st = pg_run(db, "BEGIN")) != SDB_OK)
        return st;
    if ((st = pg_xact_lock(db, lock)) != SDB_OK) {
        char keep[SDB_ERRMSG_MAX];
        memcpy(keep, db->msg, sizeof(keep));
        sdbpg_rollback(db);
        memcpy(db->msg, keep, sizeof(keep));
    }
    return st;
}

/* A second store's lock inside a write transaction (sdb_lock); the caller rolls back on
 * failure. */
sdb_status sdbpg_lock(sdb *db, int lock)
{
    sdb_status st = pg_ready(db);
    return st != SDB_OK ? st : pg_xact_lock(db, lock);
}

sdb_status sdbpg_begin_read(sdb *db)
{
    sdb_status st = pg_ready(db);
    return st != SDB_OK ? st : pg_run(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
}

sdb_status sdbpg_commit(sdb *db)
{
    sdb_status st = pg_ready(db);
    if (st != SDB_OK)
        return st;
    PGresult *r = pg_exec(db, "COMMIT", -1, NULL, NULL, NULL, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        st = pg_fail(db, r);
    } else if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        /* COMMIT of a transaction a failed statement aborted answers ROLLBACK. */
        pg_set_msg(db, "the transaction was aborted and rolled back");
        st = SDB_ERR;
    }
    PQclear(r);
    return st;
}

void sdbpg_rollback(sdb *db)
{
    pgdb *p = P(db);
    if (p == NULL || p->c == NULL || PQstatus(p->c) != CONNECTION_OK)
        return; /* the transaction went with the connection; the next call resets it */
    if (PQtransactionStatus(p->c) == PQTRANS_IDLE)
        return;
    PGresult *r = pg_exec(db, "ROLLBACK", -1, NULL, NULL, NULL, NULL);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        PQreset(p->c);
        if (PQstatus(p->c) == CONNECTION_OK) {
            p->resync = 1;
            int in_tx = db->in_tx;
            db->in_tx = 0;
            char keep[SDB_ERRMSG_MAX];
            memcpy(keep, db->msg, sizeof(keep));
            pg_session(db);
            memcpy(db->msg, keep, sizeof(keep));
            db->in_tx = in_tx;
        }
    }
}

/* ---- statements ---------------------------------------------------------------------- */

static pgstmt *S(sdb_stmt *s)
{
    return (pgstmt *)s->pg;
}

static void pg_drop_row(pgstmt *q)
{
    if (q->dec != NULL)
        for (int i = 0; i < q->ncols; i++) {
            free(q->dec[i]);
            q->dec[i] = NULL;
        }
}

static void pg_drop_result(pgstmt *q)
{
    pg_drop_row(q);
    free(q->dec);
    free(q->declen);
    q->dec = NULL;
    q->declen = NULL;
    PQclear(q->res);
    q->res = NULL;
    q->started = 0;
    q->row = q->nrows = q->ncols = 0;
}

/* SQLite's parameters to PostgreSQL's: `?N` is $N, a bare `?` one more than the largest
 * number so far (SQLite's rule). Quoted text ('...', "...") and -- comments stay as they
 * are; the stores use neither E'...' escapes nor $$ quoting, which this does not know. Returns the
 * new text (malloc) and the number of parameters, or NULL. */
/* Whether text starts with (blanks) IS [NOT] NULL. */
static int pg_null_test(const char *t)
{
    static const char *const words[] = {"IS", "NOT", "NULL"};
    for (int w = 0; w < 3; w++) {
        while (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r')
            t++;
        size_t n = strlen(words[w]);
        if (strncasecmp(t, words[w], n) == 0 && !(t[n] == '_' || isalnum((unsigned char)t[n])))
            t += n;
        else if (w != 1) /* NOT is optional */
            return 0;
    }
    return 1;
}

/* used[N]: 0 never named, 1 named, 3 named first in `?N IS [NOT] NULL`. */
static char *pg_rewrite(const char *sql, int *nparams, unsigned char used[])
{
    size_t n = strlen(sql);
    char *out = malloc(n * 7 + 16); /* "?" -> "$32766" at worst */
    if (out == NULL)
        return NULL;
    size_t o = 0;
    int maxn = 0;
    char quote = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = sql[i];
        if (quote != 0) {
            out[o++] = ch;
            if (ch == quote)
                quote = 0; /* a doubled quote closes and reopens: same result */
            continue;
        }
        if (ch == '\'' || ch == '"') {
            quote = ch;
            out[o++] = ch;
            continue;
        }
        if (ch == '-' && sql[i + 1] == '-') {
            while (i < n && sql[i] != '\n')
                out[o++] = sql[i++];
            if (i < n)
                out[o++] = '\n';
            continue;
        }
        if (ch != '?') {
            out[o++] = ch;
            continue;
        }
        long num;
        if (sql[i + 1] >= '0' && sql[i + 1] <= '9') {
            char *end;
            num = strtol(sql + i + 1, &end, 10);
            i = (size_t)(end - sql) - 1;
            if (num < 1 || num > PG_MAX_PARAM) {
                free(out);
                return NULL;
            }
        } else {
            num = maxn + 1;
        }
        if (num > maxn)
            maxn = (int)num;
        if (used[num] == 0)
            used[num] = pg_null_test(sql + i + 1) ? 3 : 1;
        if (n * 7 + 16 - o < 8) {
            free(out);
            return NULL;
        }
        o += (size_t)snprintf(out + o, 8, "$%ld", num);
    }
    out[o] = '\0';
    *nparams = maxn;
    return out;
}

sdb_status sdbpg_prepare(sdb_stmt *s, const char *sql)
{
    pgstmt *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        pg_set_msg(s->db, "out of memory");
        return SDB_ERR;
    }
    s->pg = q;
    unsigned char *used = calloc(PG_MAX_PARAM + 1, 1);
    q->sql = used != NULL ? pg_rewrite(sql, &q->nparams, used) : NULL;
    if (q->sql == NULL) {
        free(used);
        pg_set_msg(s->db, "bad parameter number or out of memory");
        return SDB_ERR;
    }
    if (q->nparams > 0) {
        q->vals = calloc((size_t)q->nparams, sizeof(*q->vals));
        q->lens = calloc((size_t)q->nparams, sizeof(*q->lens));
        q->fmts = calloc((size_t)q->nparams, sizeof(*q->fmts));
        q->types = calloc((size_t)q->nparams, sizeof(*q->types));
        if (q->vals == NULL || q->lens == NULL || q->fmts == NULL || q->types == NULL) {
            free(used);
            pg_set_msg(s->db, "out of memory");
            return SDB_ERR;
        }
        /* SQLite lets a statement skip a number (?2 without ?1); PostgreSQL cannot type a
         * parameter the text never names: such a one is a NULL text, whatever is bound. */
        q->pflags = calloc((size_t)q->nparams, 1);
        if (q->pflags == NULL) {
            free(used);
            pg_set_msg(s->db, "out of memory");
            return SDB_ERR;
        }
        for (int i = 0; i < q->nparams; i++) {
            q->pflags[i] = used[i + 1];
            if (!used[i + 1])
                q->types[i] = PG_TEXT_OID;
        }
    }
    free(used);
    return SDB_OK;
}

/* is_blob: 0 text, 1 blob (sent binary, typed bytea), 2 an int64's decimal text (typed
 * bigint: left to the server, `?5 = 0` would type it integer, too small for times in ms).
 * Text and NULL are left for the server to type from where it first meets them, but for
 * a parameter first met in `?N IS [NOT] NULL`, where it cannot: text. So an optional
 * filter `(?2 IS NULL OR kid = ?2)` runs on a text column as it is; on a bigint column
 * with NULL bound it needs `CAST(?2 AS BIGINT) IS NULL`. */
void sdbpg_bind(sdb_stmt *s, int idx, const void *v, size_t len, int is_blob, int is_null)
{
    pgstmt *q = S(s);
    if (idx < 1 || idx > q->nparams)
        return; /* as SQLite: out of range, ignored */
    int i = idx - 1;
    if (q->pflags[i] == 0)
        return; /* not in the text */
    free(q->vals[i]);
    q->vals[i] = NULL;
    q->lens[i] = 0;
    q->fmts[i] = 0;
    /* first met in `?N IS NULL`, the server cannot type it: text then (an optional filter
     * on a text column, the stores' one such use); an int64 is typed below */
    q->types[i] = q->pflags[i] == 3 ? PG_TEXT_OID : 0;
    if (is_null)
        return;
    q->vals[i] = malloc(len + 1);
    if (q->vals[i] == NULL)
        return; /* bound as NULL: the statement then fails its NOT NULL or its test */
    if (len > 0)
        memcpy(q->vals[i], v, len);
    q->vals[i][len] = '\0';
    q->lens[i] = (int)len;
    if (is_blob == 1) {
        q->fmts[i] = 1;
        q->types[i] = PG_BYTEA_OID;
    } else if (is_blob == 2) {
        q->types[i] = PG_INT8_OID;
    }
}

sdb_status sdbpg_step(sdb_stmt *s)
{
    sdb *db = s->db;
    pgstmt *q = S(s);
    pg_drop_row(q);
    if (!q->started) {
        sdb_status st = pg_ready(db);
        if (st != SDB_OK)
            return st;
        q->res = pg_exec(db, q->sql, q->nparams, q->types, (const char *const *)q->vals, q->lens,
                         q->fmts);
        ExecStatusType t = PQresultStatus(q->res);
        if (t != PGRES_TUPLES_OK && t != PGRES_COMMAND_OK) {
            st = pg_fail(db, q->res);
            PQclear(q->res);
            q->res = NULL;
            return st;
        }
        q->started = 1;
        q->row = -1;
        q->nrows = PQntuples(q->res);
        q->ncols = PQnfields(q->res);
        if (q->ncols > 0) {
            q->dec = calloc((size_t)q->ncols, sizeof(*q->dec));
            q->declen = calloc((size_t)q->ncols, sizeof(*q->declen));
            if (q->dec == NULL || q->declen == NULL) {
                pg_drop_result(q);
                pg_set_msg(db, "out of memory");
                return SDB_ERR;
            }
        }
    }
    if (q->row < q->nrows)
        q->row++;
    if (q->row < q->nrows)
        return SDB_ROW;
    db->changes = strtoll(PQcmdTuples(q->res), NULL, 10);
    return SDB_DONE;
}

void sdbpg_reset(sdb_stmt *s)
{
    pg_drop_result(S(s));
}

static int pg_has(pgstmt *q, int col)
{
    return q->res != NULL && q->row >= 0 && q->row < q->nrows && col >= 0 && col < q->ncols;
}

int sdbpg_column_is_null(sdb_stmt *s, int col)
{
    pgstmt *q = S(s);
    return !pg_has(q, col) || PQgetisnull(q->res, q->row, col);
}

const char *sdbpg_column_text(sdb_stmt *s, int col)
{
    pgstmt *q = S(s);
    if (sdbpg_column_is_null(s, col))
        return NULL;
    return PQgetvalue(q->res, q->row, col);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A bytea column's `\x<hex>` text, decoded once per row into the statement. */
static int pg_decode(pgstmt *q, int col)
{
    if (q->dec[col] != NULL)
        return 0;
    const char *t = PQgetvalue(q->res, q->row, col);
    size_t n = (size_t)PQgetlength(q->res, q->row, col);
    if (n < 2 || t[0] != '\\' || t[1] != 'x' || (n - 2) % 2 != 0)
        return -1;
    size_t len = (n - 2) / 2;
    unsigned char *b = malloc(len + 1);
    if (b == NULL)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(t[2 + 2 * i]), lo = hexval(t[3 + 2 * i]);
        if (hi < 0 || lo < 0) {
            free(b);
            return -1;
        }
        b[i] = (unsigned char)(hi << 4 | lo);
    }
    b[len] = 0;
    q->dec[col] = b;
    q->declen[col] = len;
    return 0;
}

size_t sdbpg_column_bytes(sdb_stmt *s, int col)
{
    pgstmt *q = S(s);
    if (sdbpg_column_is_null(s, col))
        return 0;
    if (PQftype(q->res, col) == PG_BYTEA_OID)
        return pg_decode(q, col) == 0 ? q->declen[col] : 0;
    return (size_t)PQgetlength(q->res, q->row, col);
}

const void *sdbpg_column_blob(sdb_stmt *s, int col)
{
    pgstmt *q = S(s);
    if (sdbpg_column_is_null(s, col))
        return NULL;
    if (PQftype(q->res, col) != PG_BYTEA_OID)
        return PQgetlength(q->res, q->row, col) > 0 ? PQgetvalue(q->res, q->row, col) : NULL;
    if (pg_decode(q, col) != 0 || q->declen[col] == 0)
        return NULL;
    return q->dec[col];
}

void sdbpg_finalize(sdb_stmt *s)
{
    pgstmt *q = S(s);
    if (q == NULL)
        return;
    pg_drop_result(q);
    for (int i = 0; i < q->nparams && q->vals != NULL; i++)
        free(q->vals[i]);
    free(q->vals);
    free(q->lens);
    free(q->fmts);
    free(q->types);
    free(q->pflags);
    free(q->sql);
    free(q);
    s->pg = NULL;
}

/* ---- change notes ------------------------------------------------------------------- */

sdb_status sdbpg_notify(sdb *db, const char *channel, const char *payload)
{
    sdb_status st = pg_ready(db);
    if (st != SDB_OK)
        return st;
    const char *vals[] = {channel, payload};
    PGresult *r = pg_exec(db, "SELECT pg_notify($1, $2)", 2, NULL, vals, NULL, NULL);
    st = PQresultStatus(r) == PGRES_TUPLES_OK ? SDB_OK : pg_fail(db, r);
    PQclear(r);
    return st;
}

sdb_status sdbpg_listen(sdb *db, const char *channel)
{
    pgdb *p = P(db);
    sdb_status st = pg_ready(db);
    if (st != SDB_OK)
        return st;
    if ((st = pg_listen_sql(db, channel)) != SDB_OK)
        return st;
    for (int i = 0; i < p->nchans; i++)
        if (strcmp(p->chans[i], channel) == 0)
            return SDB_OK;
    char **grown = realloc(p->chans, (size_t)(p->nchans + 1) * sizeof(*grown));
    if (grown == NULL) {
        pg_set_msg(db, "out of memory");
        return SDB_ERR;
    }
    p->chans = grown;
    if ((p->chans[p->nchans] = strdup(channel)) == NULL) {
        pg_set_msg(db, "out of memory");
        return SDB_ERR;
    }
    p->nchans++;
    return SDB_OK;
}

/* Takes every note libpq holds: 1 if there was any. */
static int pg_drain(pgdb *p)
{
    int any = 0;
    PGnotify *n;
    while ((n = PQnotifies(p->c)) != NULL) {
        any = 1;
        PQfreemem(n);
    }
    return any;
}

sdb_status sdbpg_wait(sdb *db, int timeout_ms)
{
    pgdb *p = P(db);
    sdb_status st = pg_ready(db);
    if (st != SDB_OK)
        return st;
    if (p->resync) {
        p->resync = 0;
        pg_drain(p);
        return SDB_RESYNC;
    }
    if (pg_drain(p))
        return SDB_ROW;
    if (timeout_ms <= 0)
        return SDB_OK;
    struct pollfd pfd = {.fd = PQsocket(p->c), .events = POLLIN};
    int rc;
    do
        rc = poll(&pfd, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc > 0 && !PQconsumeInput(p->c)) {
        /* The server went away while we waited: reset now (outside a transaction). */
        st = pg_ready(db);
        if (st != SDB_OK)
            return st;
        if (p->resync) {
            p->resync = 0;
            pg_drain(p);
            return SDB_RESYNC;
        }
    }
    return pg_drain(p) ? SDB_ROW : SDB_OK;
}
