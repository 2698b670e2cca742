/*
 * test_chain: the audit chain's storage (appliance/store/chain.h) on a real database
 * (testenv's: a SQLite file, or PostgreSQL with SIGND_TEST_BACKEND=postgres): events
 * appended inside the caller's transaction link by base/chainhash.h's rule, a rollback
 * takes the event with the change, the thread's actor and the node are recorded, details
 * that cannot be hashed canonically are refused, and two "nodes" appending at once on
 * their own connections make one unbroken chain; two audit writers (core/audit.h) on one
 * database write one trail whose export verifies with the audit key alone.
 */
#include "appliance/common/jlog.h"
#include "appliance/core/audit.h"
#include "appliance/store/chain.h"
#include "appliance/store/sdb.h"
#include "jose/jose.h"
#include "tests/unit/testenv.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sdb *open_db(const char *locator)
{
    sdb *db = NULL;
    char err[256];
    assert_int_equal(sdb_open(locator, SDB_OPEN_CREATE, 5000, &db, err, sizeof(err)), SDB_OK);
    return db;
}

static sdb *open_chain(void **state)
{
    testenv_db *t = *state;
    sdb *db = open_db(t->db);
    char err[256];
    assert_int_equal(chn_schema(db, err, sizeof(err)), 0);
    assert_int_equal(chn_schema(db, err, sizeof(err)), 0); /* IF NOT EXISTS: again is fine */
    return db;
}

static void begin(sdb *db, int lock)
{
    char err[256];
    assert_int_equal(sdb_begin_write(db, lock, err, sizeof(err)), SDB_OK);
}

static void commit(sdb *db)
{
    char err[256];
    assert_int_equal(sdb_commit(db, err, sizeof(err)), SDB_OK);
}

static void test_appends_link_by_the_hash_rule_with_the_threads_actor(void **state)
{
    sdb *db = open_chain(state);
    chn_set_node(NULL);
    uint64_t seq;
    char head[CHN_HASH_HEX + 1], err[256];
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 0);
    assert_string_equal(head, CHN_ZERO_HASH);

    json_t *d = json_pack("{s:s}", "label", "k1");
    begin(db, SDB_LOCK_REGISTRY); /* a store's transaction: the append takes the audit lock */
    chn_set_actor("0123456789abcdef");
    assert_int_equal(chn_append_tx(db, 1700000000, CHN_KEY_CREATED,
                                   "00112233445566778899aabbccddeeff", d, err, sizeof(err)),
                     0);
    chn_set_actor(NULL);
    assert_string_equal(chn_actor(), CHN_SYSTEM);
    assert_int_equal(chn_append_tx(db, 1700000001, CHN_STARTED, NULL, NULL, err, sizeof(err)), 0);
    commit(db);

    char h1[CHN_HASH_HEX + 1], h2[CHN_HASH_HEX + 1];
    json_t *empty = json_object();
    assert_int_equal(chash_event(CHN_ZERO_HASH, 1, 1700000000, "0123456789abcdef", CHN_KEY_CREATED,
                                 "00112233445566778899aabbccddeeff", d, h1),
                     0);
    assert_int_equal(chash_event(h1, 2, 1700000001, CHN_SYSTEM, CHN_STARTED, "", empty, h2), 0);
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 2);
    assert_string_equal(head, h2);

    sdb_stmt *s;
    assert_int_equal(sdb_prepare(db,
                                 "SELECT actor, kid, prev_hash, hash, details FROM audit"
                                 " WHERE seq = 1",
                                 &s, "read", err, sizeof(err)),
                     SDB_OK);
    assert_int_equal(sdb_step(s), SDB_ROW);
    assert_string_equal(sdb_column_text(s, 0), "0123456789abcdef");
    assert_string_equal(sdb_column_text(s, 1), "00112233445566778899aabbccddeeff");
    assert_string_equal(sdb_column_text(s, 2), CHN_ZERO_HASH);
    assert_string_equal(sdb_column_text(s, 3), h1);
    assert_string_equal(sdb_column_text(s, 4), "{\"label\":\"k1\"}"); /* no node set: none */
    sdb_finalize(s);
    json_decref(d);
    json_decref(empty);
    sdb_close(db);
}

static void test_a_rollback_takes_the_event_and_bad_details_are_refused(void **state)
{
    sdb *db = open_chain(state);
    char err[256], head[CHN_HASH_HEX + 1];
    uint64_t seq;
    begin(db, SDB_LOCK_AUDIT);
    assert_int_equal(chn_append_tx(db, 1, CHN_KEY_REVOKED, NULL, NULL, err, sizeof(err)), 0);
    sdb_rollback(db);
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 0);

    begin(db, SDB_LOCK_AUDIT);
    json_t *real = json_pack("{s:f}", "x", 1.5);
    err[0] = '\0';
    assert_int_equal(chn_append_tx(db, 1, CHN_KEY_REVOKED, NULL, real, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "without reals"));
    json_t *array = json_array();
    assert_int_equal(chn_append_tx(db, 1, CHN_KEY_REVOKED, NULL, array, err, sizeof(err)), -1);
    char big[CHN_DETAILS_MAX + 8];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    json_t *large = json_pack("{s:s}", "x", big);
    assert_int_equal(chn_append_tx(db, 1, CHN_KEY_REVOKED, NULL, large, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "over"));
    commit(db);
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 0);
    /* Outside a transaction an append is refused: the head could move under it. */
    assert_int_equal(chn_append_tx(db, 1, CHN_KEY_REVOKED, NULL, NULL, err, sizeof(err)), -1);
    json_decref(real);
    json_decref(array);
    json_decref(large);
    sdb_close(db);
}

/* The details column of seq as JSON. */
static json_t *details_at(sdb *db, uint64_t seq)
{
    sdb_stmt *s;
    char err[256];
    assert_int_equal(
        sdb_prepare(db, "SELECT details FROM audit WHERE seq = ?1", &s, "read", err, sizeof(err)),
        SDB_OK);
    sdb_bind_int64(s, 1, (int64_t)seq);
    assert_int_equal(sdb_step(s), SDB_ROW);
    json_error_t je;
    json_t *d = json_loads(sdb_column_text(s, 0), 0, &je);
    assert_non_null(d);
    sdb_finalize(s);
    return d;
}

static void test_every_event_names_the_node_and_the_hash_covers_it(void **state)
{
    testenv_db *t = *state;
    sdb *db = open_chain(state);
    char err[256], out[CHN_HASH_HEX + 1], why[256];
    chn_set_node("node-1");
    assert_string_equal(chn_node(), "node-1");
    json_t *d = json_pack("{s:s}", "label", "k1");
    json_t *theirs = json_pack("{s:s}", "node", "given");
    begin(db, SDB_LOCK_CREDENTIALS);
    assert_int_equal(chn_append_tx(db, 5, CHN_CRED_CREATED, NULL, d, err, sizeof(err)), 0);
    assert_int_equal(chn_append_tx(db, 6, CHN_CRED_CREATED, NULL, theirs, err, sizeof(err)), 0);
    commit(db);
    chn_set_thread_node("node-2"); /* over the process's, on this thread */
    begin(db, SDB_LOCK_AUDIT);
    assert_int_equal(chn_append_tx(db, 7, CHN_STARTED, NULL, NULL, err, sizeof(err)), 0);
    commit(db);
    chn_set_thread_node(NULL);
    chn_set_node(NULL);
    assert_int_equal(json_object_size(d), 1); /* the caller's details are not changed */

    json_t *e1 = details_at(db, 1), *e2 = details_at(db, 2), *e3 = details_at(db, 3);
    assert_string_equal(json_string_value(json_object_get(e1, "node")), "node-1");
    assert_string_equal(json_string_value(json_object_get(e1, "label")), "k1");
    assert_string_equal(json_string_value(json_object_get(e2, "node")), "given");
    assert_string_equal(json_string_value(json_object_get(e3, "node")), "node-2");
    /* The stored hash is over the details with the node: the keeper's walk agrees. */
    assert_int_equal(audit_chain_walk(t->db, 0, NULL, 3, out, why, sizeof(why)), 0);
    char h1[CHN_HASH_HEX + 1];
    assert_int_equal(chash_event(CHN_ZERO_HASH, 1, 5, CHN_SYSTEM, CHN_CRED_CREATED, "", e1, h1), 0);
    assert_int_equal(audit_chain_walk(t->db, 1, h1, 3, out, why, sizeof(why)), 0);
    json_decref(e1);
    json_decref(e2);
    json_decref(e3);
    json_decref(d);
    json_decref(theirs);
    sdb_close(db);
}

/* With log_events, a line per event once its transaction commits; none for one that
 * rolled back (the log never shows an event the trail lacks). */
static void test_event_lines_are_logged_at_commit_and_dropped_at_rollback(void **state)
{
    testenv_db *t = *state;
    sdb *db = open_chain(state);
    char log[PATH_MAX + 16], err[256];
    snprintf(log, sizeof(log), "%s/events.log", t->dir);
    assert_int_equal(jlog_open(log, err, sizeof(err)), 0);
    chn_log_events(1);
    begin(db, SDB_LOCK_TOKENS);
    assert_int_equal(chn_append_tx(db, 1, "token.redeemed", NULL, NULL, err, sizeof(err)), 0);
    sdb_rollback(db);
    begin(db, SDB_LOCK_TOKENS);
    assert_int_equal(chn_append_tx(db, 2, CHN_KEY_REVOKED, NULL, NULL, err, sizeof(err)), 0);
    commit(db);
    chn_log_events(0);
    jlog_close();

    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[1024];
    int lines = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        lines++;
        assert_non_null(strstr(line, "\"event\":\"key.revoked\""));
        assert_non_null(strstr(line, "\"seq\":1"));
    }
    fclose(f);
    assert_int_equal(lines, 1);
    sdb_close(db);
}

/* ---- two nodes at once -------------------------------------------------------------------- */

#define NODE_EVENTS 150

typedef struct {
    const char *locator;
    const char *node;
    int lock; /* the store lock its transactions begin with */
    int failures;
} appender;

static void *append_main(void *arg)
{
    appender *ap = arg;
    sdb *db = NULL;
    char err[256];
    if (sdb_open(ap->locator, SDB_OPEN_CREATE, 10000, &db, err, sizeof(err)) != SDB_OK) {
        ap->failures = NODE_EVENTS;
        return NULL;
    }
    chn_set_thread_node(ap->node);
    for (int i = 0; i < NODE_EVENTS; i++) {
        json_t *d = json_pack("{s:i}", "i", i);
        int ok = sdb_begin_write(db, ap->lock, err, sizeof(err)) == SDB_OK;
        if (ok &&
            chn_append_tx(db, 1700000000 + i, CHN_KEY_REVOKED, NULL, d, err, sizeof(err)) != 0)
            ok = 0;
        if (ok)
            ok = sdb_commit(db, err, sizeof(err)) == SDB_OK;
        else if (sdb_in_transaction(db))
            sdb_rollback(db);
        if (!ok) {
            fprintf(stderr, "append %s %d: %s\n", ap->node, i, err);
            ap->failures++;
        }
        json_decref(d);
    }
    sdb_close(db);
    return NULL;
}

static void test_two_nodes_appending_at_once_make_one_unbroken_chain(void **state)
{
    testenv_db *t = *state;
    sdb *db = open_chain(state);
    /* Node a's transactions are a store's (the registry's lock, then the audit lock taken
     * by the append); node b's the audit writer's own: both serialise on the chain head. */
    appender ap[2] = {{t->db, "node-a", SDB_LOCK_REGISTRY, 0},
                      {t->db, "node-b", SDB_LOCK_AUDIT, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, append_main, &ap[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(ap[0].failures, 0);
    assert_int_equal(ap[1].failures, 0);

    uint64_t seq;
    char head[CHN_HASH_HEX + 1], out[CHN_HASH_HEX + 1], why[256];
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 2 * NODE_EVENTS);
    /* Every link and every hash, from the first event: one chain, no fork, no gap. */
    assert_int_equal(audit_chain_walk(t->db, 0, NULL, seq, out, why, sizeof(why)), 0);
    assert_string_equal(out, head);
    /* Each node's events are all there, in its own order, each naming it. */
    int next[2] = {0, 0};
    for (uint64_t s = 1; s <= seq; s++) {
        json_t *d = details_at(db, s);
        const char *node = json_string_value(json_object_get(d, "node"));
        assert_non_null(node);
        int which = strcmp(node, "node-a") == 0 ? 0 : strcmp(node, "node-b") == 0 ? 1 : -1;
        assert_true(which >= 0);
        assert_int_equal(json_integer_value(json_object_get(d, "i")), next[which]);
        next[which]++;
        json_decref(d);
    }
    assert_int_equal(next[0], NODE_EVENTS);
    assert_int_equal(next[1], NODE_EVENTS);
    sdb_close(db);
}

/* ---- two audit writers ------------------------------------------------------------------ */

#define WRITER_EVENTS 60

typedef struct {
    audit *au;
    int failures;
} recorder;

static void *record_main(void *arg)
{
    recorder *r = arg;
    for (int i = 0; i < WRITER_EVENTS; i++) {
        json_t *d = json_pack("{s:i}", "i", i);
        if (audit_record(r->au, CHN_SUBJECT_REVOKED, NULL, d) != 0)
            r->failures++;
        json_decref(d);
    }
    return NULL;
}

static void test_two_audit_writers_write_one_trail_that_verifies(void **state)
{
    (void)state;
    testenv_world w;
    /* Checkpoints every 7 events: both nodes sign some, on the one chain. */
    audit_options ao = {
        .flush_seconds = 1, .checkpoint_events = 7, .checkpoint_seconds = 1, .node = "node-a"};
    assert_int_equal(testenv_world_open(&w, TESTENV_AUDIT, &ao), 0);
    audit *second = NULL;
    char err[256];
    audit_options bo = ao;
    bo.node = "node-b";
    assert_int_equal(audit_open(w.db, w.k, &bo, &second, err, sizeof(err)), 0);

    recorder r[2] = {{w.au, 0}, {second, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, record_main, &r[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(r[0].failures, 0);
    assert_int_equal(r[1].failures, 0);
    audit_close(second); /* its last checkpoint: the head as it is now */

    /* The export (from any node: one table) verifies with the audit public key alone. */
    sk_pubkey pub;
    assert_int_equal(kp_svc_public_key(w.k, KP_SVC_AUDIT, &pub), SK_OK);
    char *pem = jose_rsa_public_pem(pub.n, pub.n_len, pub.e, pub.e_len);
    assert_non_null(pem);
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(audit_export(w.db, 0, 0, f), 0);
    rewind(f);
    av_verdict v;
    assert_int_equal(av_verify_export(f, pem, NULL, &v), 0);
    assert_true(v.events >= 2 * WRITER_EVENTS);
    assert_true(v.last_checkpoint >= 1);
    fclose(f);

    /* Every event of each writer is there, naming its node. */
    json_t *all = NULL;
    uint64_t next = 0;
    audit_query q = {.after = 0, .limit = 1000, .action = CHN_SUBJECT_REVOKED};
    assert_int_equal(audit_list(w.db, &q, &all, &next), 0);
    assert_int_equal(json_array_size(all), 2 * WRITER_EVENTS);
    int per[2] = {0, 0};
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        const char *node =
            json_string_value(json_object_get(json_object_get(e, "details"), "node"));
        assert_non_null(node);
        per[strcmp(node, "node-b") == 0]++;
    }
    assert_int_equal(per[0], WRITER_EVENTS);
    assert_int_equal(per[1], WRITER_EVENTS);
    json_decref(all);
    free(pem);
    testenv_world_close(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_appends_link_by_the_hash_rule_with_the_threads_actor,
                                        testenv_db_setup, testenv_db_teardown),
        cmocka_unit_test_setup_teardown(test_a_rollback_takes_the_event_and_bad_details_are_refused,
                                        testenv_db_setup, testenv_db_teardown),
        cmocka_unit_test_setup_teardown(test_every_event_names_the_node_and_the_hash_covers_it,
                                        testenv_db_setup, testenv_db_teardown),
        cmocka_unit_test_setup_teardown(
            test_event_lines_are_logged_at_commit_and_dropped_at_rollback, testenv_db_setup,
            testenv_db_teardown),
        cmocka_unit_test_setup_teardown(test_two_nodes_appending_at_once_make_one_unbroken_chain,
                                        testenv_db_setup, testenv_db_teardown),
        cmocka_unit_test(test_two_audit_writers_write_one_trail_that_verifies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
