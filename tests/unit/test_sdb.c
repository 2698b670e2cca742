/*
 * sdb, the store interface: its contract (sdb.h), each test run on both backends, a real
 * SQLite file and a real PostgreSQL server this process starts (testdb).
 */
#include "appliance/store/sdb.h"
#include "tests/unit/testdb.h"
#include "tests/unit/testenv.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int pg;
    char dir[64];
    char loc[SDB_LOCATOR_MAX];
} fx;

static int setup(void **state, int pg)
{
    fx *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    f->pg = pg;
    snprintf(f->dir, sizeof(f->dir), "/tmp/signd-sdb-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    int rc = pg ? testdb_pg_locator(f->loc, sizeof(f->loc))
                : (snprintf(f->loc, sizeof(f->loc), "%s/appliance.db", f->dir), 0);
    *state = f;
    return rc;
}
static int setup_lite(void **state)
{
    return setup(state, 0);
}
static int setup_pg(void **state)
{
    return setup(state, 1);
}
static int teardown(void **state)
{
    fx *f = *state;
    testenv_cleanup(f->dir);
    free(f);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static sdb *open_db(const fx *f, int timeout_ms)
{
    sdb *db = NULL;
    char err[256] = "";
    sdb_status st = sdb_open(f->loc, SDB_OPEN_CREATE, timeout_ms, &db, err, sizeof(err));
    if (st != SDB_OK)
        fprintf(stderr, "open: %s\n", err);
    assert_int_equal(st, SDB_OK);
    assert_int_equal(sdb_kind_of(db), f->pg ? SDB_POSTGRES : SDB_SQLITE);
    return db;
}

static void exec_ok(sdb *db, const char *sql)
{
    char err[256] = "";
    sdb_status st = sdb_exec(db, sql, "exec", err, sizeof(err));
    if (st != SDB_OK)
        fprintf(stderr, "%s: %s\n", sql, err);
    assert_int_equal(st, SDB_OK);
}

static sdb_stmt *prep(sdb *db, const char *sql)
{
    sdb_stmt *s = NULL;
    char err[256] = "";
    sdb_status st = sdb_prepare(db, sql, &s, "prepare", err, sizeof(err));
    if (st != SDB_OK)
        fprintf(stderr, "%s: %s\n", sql, err);
    assert_int_equal(st, SDB_OK);
    return s;
}

static int64_t count(sdb *db, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM %s", table);
    sdb_stmt *s = prep(db, sql);
    assert_int_equal(sdb_step(s), SDB_ROW);
    int64_t n = sdb_column_int64(s, 0);
    sdb_finalize(s);
    return n;
}

/* One table t(k TEXT PRIMARY KEY, i integer, b blob) in the backend's spelling. */
static void make_table(const fx *f, sdb *db)
{
    exec_ok(db, f->pg ? "CREATE TABLE t (k TEXT PRIMARY KEY, i BIGINT, b BYTEA); "
                        "CREATE TABLE u (x BIGINT)"
                      : "CREATE TABLE t (k TEXT PRIMARY KEY, i INTEGER, b BLOB); "
                        "CREATE TABLE u (x INTEGER)");
}

static void test_placeholders(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 2000);
    make_table(f, db);
    /* ?2 then ?1 again, a bare ? after ?2 is 3, and '?' / "?" inside quotes stay. */
    sdb_stmt *s = prep(db, "INSERT INTO t (k, i) VALUES (?2 || '?' || ?1 || ?1 || ?, ?4)");
    sdb_bind_text(s, 1, "a", -1);
    sdb_bind_text(s, 2, "b", -1);
    sdb_bind_text(s, 3, "c", -1);
    sdb_bind_int64(s, 4, 7);
    char err[256];
    assert_int_equal(sdb_step_done(s, "insert", err, sizeof(err)), SDB_OK);
    s = prep(db, "SELECT k, i, 'x?y', \"k\" FROM t WHERE i = ? AND k <> '?'");
    sdb_bind_int64(s, 1, 7);
    assert_int_equal(sdb_step(s), SDB_ROW);
    assert_string_equal(sdb_column_text(s, 0), "b?aac");
    assert_int_equal(sdb_column_int64(s, 1), 7);
    assert_string_equal(sdb_column_text(s, 2), "x?y");
    assert_string_equal(sdb_column_text(s, 3), "b?aac");
    assert_int_equal(sdb_step(s), SDB_DONE);
    /* reset keeps the bindings: the same row again */
    sdb_reset(s);
    assert_int_equal(sdb_step(s), SDB_ROW);
    char k[8];
    assert_int_equal(sdb_column_copy(s, 0, k, sizeof(k)), 0);
    assert_string_equal(k, "b?aac");
    assert_int_equal(sdb_column_copy(s, 0, k, 5), -1);
    sdb_finalize(s);
    /* the parameter patterns the stores use, typed alike on both: an int64 beside a small
     * literal (a time in ms past 2^31), an optional filter that may be NULL */
    const char *filters[] = {"SELECT COUNT(*) FROM t WHERE (?1 = 0 OR i <= ?1)"
                             " AND (k = ?2 OR ?2 IS NULL)",
                             "SELECT COUNT(*) FROM t WHERE (?1 = 0 OR i <= ?1)"
                             " AND (CAST(?2 AS TEXT) IS NULL OR k = ?2)",
                             "SELECT COUNT(*) FROM t WHERE (?1 = 0 OR i <= ?1)"
                             " AND (?2 is  not\n null AND k = ?2 OR ?2 IS NULL)",
                             "SELECT COUNT(*) FROM t WHERE (?1 = 0 OR i <= ?1)"
                             " AND (?2 IS NULL OR k = ?2)"};
    for (int i = 0; i < 4; i++) {
        s = prep(db, filters[i]);
        sdb_bind_int64(s, 1, 1700000000000LL);
        sdb_bind_null(s, 2);
        assert_int_equal(sdb_step(s), SDB_ROW);
        assert_int_equal(sdb_column_int64(s, 0), 1);
        sdb_reset(s);
        sdb_bind_int64(s, 1, 0);
        sdb_bind_text(s, 2, "nope", -1);
        assert_int_equal(sdb_step(s), SDB_ROW);
        assert_int_equal(sdb_column_int64(s, 0), 0);
        sdb_finalize(s);
    }
    /* a number skipped (?1 never named), a '?' in a comment */
    s = prep(db, "SELECT k FROM t WHERE i = ?2 -- which one?\n AND k = ?3");
    sdb_bind_text(s, 1, "unused", -1);
    sdb_bind_int64(s, 2, 7);
    sdb_bind_text(s, 3, "b?aac", -1);
    assert_int_equal(sdb_step(s), SDB_ROW);
    assert_string_equal(sdb_column_text(s, 0), "b?aac");
    sdb_finalize(s);
    sdb_close(db);
}

static void test_values_round_trip(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 2000);
    make_table(f, db);
    static const unsigned char blob[] = {0, 1, 0, 0xff, 0x5c, 0x78, 0};
    const char *utf8 = "gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x94\x91";
    const int64_t ints[] = {INT64_MIN, INT64_MAX, 0, -1};
    const char *keys[] = {"min", "max", "zero", "neg"};
    for (int i = 0; i < 4; i++) {
        sdb_stmt *s = prep(db, "INSERT INTO t (k, i, b) VALUES (?1, ?2, ?3)");
        sdb_bind_text(s, 1, keys[i], -1);
        sdb_bind_int64(s, 2, ints[i]);
        if (i == 0)
            sdb_bind_blob(s, 3, blob, sizeof(blob));
        else if (i == 1)
            sdb_bind_blob(s, 3, "", 0);
        else
            sdb_bind_null(s, 3);
        char err[256];
        assert_int_equal(sdb_step_done(s, "insert", err, sizeof(err)), SDB_OK);
        assert_int_equal(sdb_changes(db), 1);
    }
    sdb_stmt *s = prep(db, "INSERT INTO t (k, i) VALUES (?1, NULL)");
    sdb_bind_text(s, 1, utf8, -1);
    assert_int_equal(sdb_step(s), SDB_DONE);
    sdb_finalize(s);

    s = prep(db, "SELECT i, b FROM t WHERE k = ?1");
    for (int i = 0; i < 4; i++) {
        sdb_reset(s);
        sdb_bind_text(s, 1, keys[i], -1);
        assert_int_equal(sdb_step(s), SDB_ROW);
        assert_true(sdb_column_int64(s, 0) == ints[i]);
        if (i == 0) {
            assert_int_equal(sdb_column_bytes(s, 1), sizeof(blob));
            assert_memory_equal(sdb_column_blob(s, 1), blob, sizeof(blob));
        } else if (i == 1) {
            assert_false(sdb_column_is_null(s, 1));
            assert_int_equal(sdb_column_bytes(s, 1), 0);
            assert_null(sdb_column_blob(s, 1));
        } else {
            assert_true(sdb_column_is_null(s, 1));
            assert_null(sdb_column_blob(s, 1));
            assert_null(sdb_column_text(s, 1));
        }
        assert_int_equal(sdb_step(s), SDB_DONE);
    }
    sdb_finalize(s);

    s = prep(db, "SELECT k, i FROM t WHERE i IS NULL");
    assert_int_equal(sdb_step(s), SDB_ROW);
    assert_string_equal(sdb_column_text(s, 0), utf8);
    assert_int_equal(sdb_column_bytes(s, 0), strlen(utf8));
    assert_true(sdb_column_is_null(s, 1));
    assert_int_equal(sdb_column_int64(s, 1), 0);
    assert_int_equal(sdb_step(s), SDB_DONE);
    sdb_finalize(s);

    /* changes() counts an UPDATE's rows */
    exec_ok(db, "UPDATE t SET i = 5 WHERE i IS NOT NULL");
    assert_int_equal(sdb_changes(db), 4);
    s = prep(db, "DELETE FROM t WHERE i = ?");
    sdb_bind_int64(s, 1, 5);
    assert_int_equal(sdb_step(s), SDB_DONE);
    assert_int_equal(sdb_changes(db), 4);
    sdb_finalize(s);
    sdb_close(db);
}

static void test_constraint_and_errors(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 2000);
    make_table(f, db);
    exec_ok(db, "INSERT INTO t (k) VALUES ('a')");
    sdb_stmt *s = prep(db, "INSERT INTO t (k) VALUES (?1)");
    sdb_bind_text(s, 1, "a", -1);
    assert_int_equal(sdb_step(s), SDB_ERR_CONSTRAINT);
    assert_true(strlen(sdb_stmt_error(s)) > 0);
    sdb_finalize(s);
    /* ON CONFLICT DO NOTHING, on both */
    s = prep(db, "INSERT INTO t (k) VALUES (?1) ON CONFLICT DO NOTHING");
    sdb_bind_text(s, 1, "a", -1);
    assert_int_equal(sdb_step(s), SDB_DONE);
    assert_int_equal(sdb_changes(db), 0);
    sdb_finalize(s);
    char err[256] = "";
    assert_int_equal(sdb_exec(db, "SELEKT 1", "bad", err, sizeof(err)), SDB_ERR);
    assert_true(strncmp(err, "bad: ", 5) == 0);
    assert_int_equal(sdb_gave_up(), 0);
    /* RETURNING, on both */
    s = prep(db, "UPDATE t SET i = COALESCE(i, 0) + 1 WHERE k = ?1 RETURNING i");
    sdb_bind_text(s, 1, "a", -1);
    assert_int_equal(sdb_step(s), SDB_ROW);
    assert_int_equal(sdb_column_int64(s, 0), 1);
    sdb_finalize(s);
    sdb_close(db);
}

static void test_rollback_discards(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 2000);
    make_table(f, db);
    char err[256];
    assert_int_equal(sdb_begin_write(db, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    assert_true(sdb_in_transaction(db));
    exec_ok(db, "INSERT INTO u (x) VALUES (1)");
    sdb_rollback(db);
    assert_false(sdb_in_transaction(db));
    assert_int_equal(count(db, "u"), 0);
    assert_int_equal(sdb_begin_write(db, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    exec_ok(db, "INSERT INTO u (x) VALUES (1)");
    assert_int_equal(sdb_commit(db, err, sizeof(err)), SDB_OK);
    assert_int_equal(count(db, "u"), 1);
    /* a read transaction sees one moment */
    assert_int_equal(sdb_begin_read(db, err, sizeof(err)), SDB_OK);
    assert_int_equal(count(db, "u"), 1);
    assert_int_equal(sdb_commit(db, err, sizeof(err)), SDB_OK);
    if (f->pg) {
        /* a failed statement aborts the transaction: its COMMIT fails */
        assert_int_equal(sdb_begin_write(db, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
        exec_ok(db, "INSERT INTO u (x) VALUES (2)");
        assert_int_equal(sdb_exec(db, "SELEKT", "bad", err, sizeof(err)), SDB_ERR);
        assert_int_not_equal(sdb_commit(db, err, sizeof(err)), SDB_OK);
        assert_false(sdb_in_transaction(db));
        assert_int_equal(count(db, "u"), 1);
    }
    sdb_close(db);
}

typedef struct {
    const fx *f;
    int lock;
    sdb_status st;
    double waited;
} writer_arg;

static void *second_writer(void *arg)
{
    writer_arg *a = arg;
    sdb *db = NULL;
    char err[256];
    if (sdb_open(a->f->loc, 0, 5000, &db, err, sizeof(err)) != SDB_OK) {
        a->st = SDB_ERR;
        return NULL;
    }
    double t0 = now_s();
    a->st = sdb_begin_write(db, a->lock, err, sizeof(err));
    a->waited = now_s() - t0;
    if (a->st == SDB_OK) {
        sdb_exec(db, "INSERT INTO u (x) VALUES (2)", "insert", err, sizeof(err));
        sdb_commit(db, err, sizeof(err));
    }
    sdb_close(db);
    return NULL;
}

static void test_begin_write_excludes(void **state)
{
    fx *f = *state;
    sdb *a = open_db(f, 2000);
    make_table(f, a);
    sdb *b = open_db(f, 300);
    char err[256] = "";
    assert_int_equal(sdb_begin_write(a, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    exec_ok(a, "INSERT INTO u (x) VALUES (1)");
    /* the same lock held past b's timeout: unavailable, and noted for sdb_gave_up */
    double t0 = now_s();
    sdb_gave_up();
    assert_int_equal(sdb_begin_write(b, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_ERR_UNAVAILABLE);
    double waited = now_s() - t0;
    assert_true(waited >= 0.2 && waited < 10);
    assert_int_equal(sdb_gave_up(), 1);
    assert_int_equal(sdb_gave_up(), 0);
    assert_false(sdb_in_transaction(b));
    /* another lock number: PostgreSQL lets it through; SQLite has one writer per file */
    sdb_status other = sdb_begin_write(b, SDB_LOCK_TOKENS, err, sizeof(err));
    assert_int_equal(other, f->pg ? SDB_OK : SDB_ERR_UNAVAILABLE);
    if (other == SDB_OK)
        sdb_rollback(b);
    /* a writer on the same lock waits for the first one's commit */
    writer_arg w = {.f = f, .lock = SDB_LOCK_REGISTRY};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, second_writer, &w), 0);
    struct timespec ts = {0, 300 * 1000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(count(a, "u"), 1);
    assert_int_equal(sdb_commit(a, err, sizeof(err)), SDB_OK);
    pthread_join(th, NULL);
    assert_int_equal(w.st, SDB_OK);
    assert_true(w.waited >= 0.2);
    assert_int_equal(count(a, "u"), 2);
    sdb_close(b);
    sdb_close(a);
}

/* Read-then-write under the store's lock is serial: threads, each on its own connection,
 * read a counter and write it back plus one; no increment is lost. */
static void *incrementer(void *arg)
{
    writer_arg *a = arg;
    sdb *db = NULL;
    char err[256];
    a->st = sdb_open(a->f->loc, 0, 10000, &db, err, sizeof(err));
    for (int i = 0; a->st == SDB_OK && i < 15; i++) {
        if ((a->st = sdb_begin_write(db, SDB_LOCK_AUDIT, err, sizeof(err))) != SDB_OK)
            break;
        sdb_stmt *s = NULL;
        a->st = sdb_prepare(db, "SELECT x FROM u", &s, "read", err, sizeof(err));
        int64_t v = a->st == SDB_OK && sdb_step(s) == SDB_ROW ? sdb_column_int64(s, 0) : -1;
        sdb_finalize(s);
        if (a->st == SDB_OK && v >= 0 &&
            sdb_prepare(db, "UPDATE u SET x = ?1", &s, "write", err, sizeof(err)) == SDB_OK) {
            sched_yield();
            sdb_bind_int64(s, 1, v + 1);
            a->st = sdb_step_done(s, "write", err, sizeof(err));
        } else {
            a->st = SDB_ERR;
        }
        if (a->st == SDB_OK)
            a->st = sdb_commit(db, err, sizeof(err));
        else
            sdb_rollback(db);
    }
    if (a->st != SDB_OK)
        fprintf(stderr, "incrementer: %s\n", err);
    sdb_close(db);
    return NULL;
}

static void test_writers_are_serial(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 2000);
    make_table(f, db);
    exec_ok(db, "INSERT INTO u (x) VALUES (0)");
    enum { N = 4 };
    pthread_t th[N];
    writer_arg a[N];
    for (int i = 0; i < N; i++) {
        a[i] = (writer_arg){.f = f};
        assert_int_equal(pthread_create(&th[i], NULL, incrementer, &a[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].st, SDB_OK);
    }
    sdb_stmt *s = prep(db, "SELECT x FROM u");
    assert_int_equal(sdb_step(s), SDB_ROW);
    assert_int_equal(sdb_column_int64(s, 0), N * 15);
    sdb_finalize(s);
    sdb_close(db);
}

static void test_notes(void **state)
{
    fx *f = *state;
    sdb *w = open_db(f, 2000);
    make_table(f, w);
    sdb *l = open_db(f, 2000);
    char err[256];
    assert_int_equal(sdb_listen(l, "keys", err, sizeof(err)), SDB_OK);
    assert_int_equal(sdb_changed(l), SDB_OK);
    assert_int_equal(sdb_listen(l, "bad-channel", err, sizeof(err)), SDB_ERR_INVALID);
    assert_int_equal(sdb_notify(w, "keys", "it's", err, sizeof(err)), SDB_ERR_INVALID);

    assert_int_equal(sdb_begin_write(w, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    exec_ok(w, "INSERT INTO u (x) VALUES (1)");
    assert_int_equal(sdb_notify(w, "keys", "00ff", err, sizeof(err)), SDB_OK);
    assert_int_equal(sdb_wait(l, 200), SDB_OK); /* not before the commit */
    assert_int_equal(sdb_commit(w, err, sizeof(err)), SDB_OK);
    assert_int_equal(sdb_wait(l, 5000), SDB_ROW);
    assert_int_equal(sdb_changed(l), SDB_OK); /* taken */

    /* rolled back: no note (SQLite: nothing committed, nothing changed) */
    assert_int_equal(sdb_begin_write(w, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    exec_ok(w, "INSERT INTO u (x) VALUES (2)");
    assert_int_equal(sdb_notify(w, "keys", "", err, sizeof(err)), SDB_OK);
    sdb_rollback(w);
    assert_int_equal(sdb_wait(l, 300), SDB_OK);

    /* a commit without a note: SQLite sees the file change, PostgreSQL only notes */
    exec_ok(w, "INSERT INTO u (x) VALUES (3)");
    assert_int_equal(sdb_changed(l), f->pg ? SDB_OK : SDB_ROW);
    assert_int_equal(sdb_changed(l), SDB_OK);
    sdb_close(l);
    sdb_close(w);
}

static void test_exec_many_and_version(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 2000);
    exec_ok(db, "CREATE TABLE IF NOT EXISTS a (x TEXT); CREATE TABLE IF NOT EXISTS b (y TEXT);"
                "INSERT INTO a (x) VALUES ('1;2'); INSERT INTO b (y) VALUES ('x')");
    exec_ok(db, "CREATE TABLE IF NOT EXISTS a (x TEXT)"); /* a NOTICE on PostgreSQL */
    assert_int_equal(count(db, "a") + count(db, "b"), 2);
    /* testenv's own connections, on either backend */
    assert_int_equal(testenv_sql_exec(f->loc, "INSERT INTO a (x) VALUES ('2')"), 0);
    assert_int_equal(testenv_sql_int(f->loc, "SELECT COUNT(*) FROM a WHERE x <> ?1", 1, "z"), 2);
    assert_int_equal(testenv_sql_exec(f->loc, "SELEKT"), -1);
    assert_true(strncmp(sdb_version(db), f->pg ? "postgresql " : "sqlite ", f->pg ? 11 : 7) == 0);
    sdb_close(db);
}

/* PostgreSQL: a password in the URI never reaches a message. */
static void test_pg_uri_secret_not_echoed(void **state)
{
    (void)state;
    sdb *db = NULL;
    char err[512] = "";
    sdb_status st =
        sdb_open("postgresql://u:S3cretPW@127.0.0.1:1/x", 0, 1000, &db, err, sizeof(err));
    assert_int_equal(st, SDB_ERR_UNAVAILABLE);
    assert_null(db);
    assert_null(strstr(err, "S3cretPW"));
    assert_true(strlen(err) > 6);
}

/* PostgreSQL: what bounds a call. statement_timeout (4 x the timeout) ends a long
 * statement, the connection stays; a backend that answers nothing at all (stopped) is
 * given up on our side, and the next call resets the connection. */
static void test_pg_bounds(void **state)
{
    fx *f = *state;
    sdb *db = open_db(f, 100);
    char err[256] = "";
    sdb_gave_up();
    assert_int_equal(sdb_exec(db, "SELECT pg_sleep(3)", "sleep", err, sizeof(err)),
                     SDB_ERR_UNAVAILABLE);
    assert_int_equal(sdb_gave_up(), 1);
    exec_ok(db, "SELECT 1");

    sdb_stmt *s = prep(db, "SELECT pg_backend_pid()");
    assert_int_equal(sdb_step(s), SDB_ROW);
    pid_t backend = (pid_t)sdb_column_int64(s, 0);
    sdb_finalize(s);
    assert_true(backend > 0);
    assert_int_equal(kill(backend, SIGSTOP), 0);
    double t0 = now_s();
    sdb_status st = sdb_exec(db, "SELECT 1", "stalled", err, sizeof(err));
    double took = now_s() - t0;
    kill(backend, SIGCONT);
    fprintf(stderr, "stalled backend: %d in %.3f s (%s)\n", st, took, err);
    assert_int_equal(st, SDB_ERR_UNAVAILABLE);
    assert_true(took >= 0.3 && took < 10);
    exec_ok(db, "SELECT 1"); /* a new connection */
    assert_int_equal(sdb_changed(db), SDB_RESYNC);
    sdb_close(db);

    /* read-only: a write is refused */
    assert_int_equal(sdb_open(f->loc, SDB_OPEN_READONLY, 1000, &db, err, sizeof(err)), SDB_OK);
    exec_ok(db, "SELECT 1");
    assert_int_equal(sdb_exec(db, "CREATE TABLE ro (x BIGINT)", "create", err, sizeof(err)),
                     SDB_ERR);
    sdb_close(db);
}

/* PostgreSQL: the server stops; calls fail SDB_ERR_UNAVAILABLE in bounded time, then the
 * connection comes back by itself once the server is up, and a listener hears RESYNC. */
static void test_pg_server_restart(void **state)
{
    fx *f = *state;
    sdb *a = open_db(f, 2000);
    make_table(f, a);
    sdb *l = open_db(f, 2000);
    char err[256] = "";
    assert_int_equal(sdb_listen(l, "keys", err, sizeof(err)), SDB_OK);
    sdb_stmt *held = prep(a, "SELECT COUNT(*) FROM u");

    assert_int_equal(testdb_pg_stop(), 0);
    double t0 = now_s();
    sdb_gave_up();
    sdb_status st = sdb_exec(a, "INSERT INTO u (x) VALUES (1)", "insert", err, sizeof(err));
    double took = now_s() - t0;
    fprintf(stderr, "server down: exec %d in %.3f s (%s)\n", st, took, err);
    assert_int_equal(st, SDB_ERR_UNAVAILABLE);
    assert_true(took < 10);
    assert_int_equal(sdb_gave_up(), 1);
    assert_int_equal(sdb_step(held), SDB_ERR_UNAVAILABLE);
    assert_int_equal(sdb_begin_write(a, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_ERR_UNAVAILABLE);
    t0 = now_s();
    assert_int_equal(sdb_wait(l, 200), SDB_ERR_UNAVAILABLE);
    assert_true(now_s() - t0 < 10);
    sdb *down = NULL;
    assert_int_equal(sdb_open(f->loc, 0, 2000, &down, err, sizeof(err)), SDB_ERR_UNAVAILABLE);
    assert_null(down);

    assert_int_equal(testdb_pg_start(), 0);
    exec_ok(a, "INSERT INTO u (x) VALUES (1)");
    sdb_reset(held);
    assert_int_equal(sdb_step(held), SDB_ROW);
    assert_int_equal(sdb_column_int64(held, 0), 1);
    sdb_finalize(held);
    assert_int_equal(sdb_changed(l), SDB_RESYNC);
    assert_int_equal(sdb_changed(l), SDB_OK);
    assert_int_equal(sdb_notify(a, "keys", "again", err, sizeof(err)), SDB_OK);
    assert_int_equal(sdb_wait(l, 5000), SDB_ROW); /* the LISTEN was made again */

    /* broken inside a transaction: the call fails, the rollback clears it, the next works */
    assert_int_equal(sdb_begin_write(a, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    assert_int_equal(testdb_pg_stop(), 0);
    assert_int_equal(testdb_pg_start(), 0);
    assert_int_equal(sdb_exec(a, "INSERT INTO u (x) VALUES (2)", "insert", err, sizeof(err)),
                     SDB_ERR_UNAVAILABLE);
    sdb_rollback(a);
    assert_int_equal(count(a, "u"), 1);
    sdb_close(l);
    sdb_close(a);
}

/* PostgreSQL: connections left idle while the server restarts (fast shutdown, start) were
 * told "terminating connection due to administrator command", which they read only with
 * their next call: that first BEGIN, and the first SELECT outside a transaction, are asked
 * again on a new connection instead of failing (a node's first write and credential lookup
 * after the database's return failed, test_cluster_faults.py). */
static void test_pg_idle_connections_outlive_a_server_restart(void **state)
{
    fx *f = *state;
    sdb *a = open_db(f, 2000);
    make_table(f, a);
    sdb *b = open_db(f, 2000);
    sdb *c = open_db(f, 2000);
    exec_ok(b, "SELECT 1");
    exec_ok(c, "SELECT 1");
    assert_int_equal(testdb_pg_stop(), 0);
    assert_int_equal(testdb_pg_start(), 0);
    char err[256] = "";
    assert_int_equal(sdb_begin_write(a, SDB_LOCK_REGISTRY, err, sizeof(err)), SDB_OK);
    exec_ok(a, "INSERT INTO u (x) VALUES (7)");
    assert_int_equal(sdb_commit(a, err, sizeof(err)), SDB_OK);
    sdb_stmt *q = prep(b, "SELECT COUNT(*) FROM u");
    assert_int_equal(sdb_step(q), SDB_ROW);
    assert_int_equal(sdb_column_int64(q, 0), 1);
    sdb_finalize(q);
    assert_int_equal(sdb_begin_read(c, err, sizeof(err)), SDB_OK);
    sdb_rollback(c);
    sdb_close(c);
    sdb_close(b);
    sdb_close(a);
}

/* Each test twice, named by its backend. */
#define BOTH(fn)                                                                                   \
    {#fn " (sqlite)", fn, setup_lite, teardown, NULL},                                             \
    {                                                                                              \
#fn " (postgres)", fn, setup_pg, teardown, NULL                                            \
    }

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_placeholders),
        BOTH(test_values_round_trip),
        BOTH(test_constraint_and_errors),
        BOTH(test_rollback_discards),
        BOTH(test_begin_write_excludes),
        BOTH(test_writers_are_serial),
        BOTH(test_notes),
        BOTH(test_exec_many_and_version),
        cmocka_unit_test(test_pg_uri_secret_not_echoed),
        cmocka_unit_test_setup_teardown(test_pg_bounds, setup_pg, teardown),
        /* last: they stop and start this process's server */
        cmocka_unit_test_setup_teardown(test_pg_idle_connections_outlive_a_server_restart, setup_pg,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pg_server_restart, setup_pg, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
