/*
 * test_chain: the audit chain's storage (appliance/store/chain.h) on a real SQLite file:
 * events appended inside the caller's transaction link by base/chainhash.h's rule, a
 * rollback takes the event with the change, the thread's actor is recorded, and details
 * that cannot be hashed canonically are refused.
 */
#include "appliance/store/chain.h"
#include "appliance/store/db.h"
#include "tests/unit/testenv.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

static sqlite3 *open_chain(void **state)
{
    testenv_db *t = *state;
    sqlite3 *db = NULL;
    char err[256];
    assert_int_equal(db_open(t->db, 5000, &db, err, sizeof(err)), 0);
    assert_int_equal(chn_schema(db, err, sizeof(err)), 0);
    assert_int_equal(chn_schema(db, err, sizeof(err)), 0); /* IF NOT EXISTS: again is fine */
    return db;
}

static void exec(sqlite3 *db, const char *sql)
{
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
}

static void test_appends_link_by_the_hash_rule_with_the_threads_actor(void **state)
{
    sqlite3 *db = open_chain(state);
    uint64_t seq;
    char head[CHN_HASH_HEX + 1], err[256];
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 0);
    assert_string_equal(head, CHN_ZERO_HASH);

    json_t *d = json_pack("{s:s}", "label", "k1");
    exec(db, "BEGIN IMMEDIATE");
    chn_set_actor("0123456789abcdef");
    assert_int_equal(chn_append_tx(db, 1700000000, CHN_KEY_CREATED,
                                   "00112233445566778899aabbccddeeff", d, err, sizeof(err)),
                     0);
    chn_set_actor(NULL);
    assert_string_equal(chn_actor(), CHN_SYSTEM);
    assert_int_equal(chn_append_tx(db, 1700000001, CHN_STARTED, NULL, NULL, err, sizeof(err)), 0);
    exec(db, "COMMIT");

    char h1[CHN_HASH_HEX + 1], h2[CHN_HASH_HEX + 1];
    json_t *empty = json_object();
    assert_int_equal(chash_event(CHN_ZERO_HASH, 1, 1700000000, "0123456789abcdef", CHN_KEY_CREATED,
                                 "00112233445566778899aabbccddeeff", d, h1),
                     0);
    assert_int_equal(chash_event(h1, 2, 1700000001, CHN_SYSTEM, CHN_STARTED, "", empty, h2), 0);
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 2);
    assert_string_equal(head, h2);

    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT actor, kid, prev_hash, hash FROM audit"
                                        " WHERE seq = 1",
                                        -1, &s, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "0123456789abcdef");
    assert_string_equal((const char *)sqlite3_column_text(s, 1),
                        "00112233445566778899aabbccddeeff");
    assert_string_equal((const char *)sqlite3_column_text(s, 2), CHN_ZERO_HASH);
    assert_string_equal((const char *)sqlite3_column_text(s, 3), h1);
    sqlite3_finalize(s);
    json_decref(d);
    json_decref(empty);
    sqlite3_close(db);
}

static void test_a_rollback_takes_the_event_and_bad_details_are_refused(void **state)
{
    sqlite3 *db = open_chain(state);
    char err[256], head[CHN_HASH_HEX + 1];
    uint64_t seq;
    exec(db, "BEGIN IMMEDIATE");
    assert_int_equal(chn_append_tx(db, 1, CHN_KEY_REVOKED, NULL, NULL, err, sizeof(err)), 0);
    exec(db, "ROLLBACK");
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 0);

    exec(db, "BEGIN IMMEDIATE");
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
    exec(db, "COMMIT");
    assert_int_equal(chn_head(db, &seq, head), 0);
    assert_int_equal(seq, 0);
    json_decref(real);
    json_decref(array);
    json_decref(large);
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_appends_link_by_the_hash_rule_with_the_threads_actor,
                                        testenv_db_setup, testenv_db_teardown),
        cmocka_unit_test_setup_teardown(test_a_rollback_takes_the_event_and_bad_details_are_refused,
                                        testenv_db_setup, testenv_db_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
