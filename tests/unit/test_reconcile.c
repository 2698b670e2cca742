/* Unit tests of reconcile's deferred destroys (reconcile.h) on a real SoftHSM2 token,
 * in-process (kp_open), and against a keeper that is not there (kp_connect). */
#include "appliance/keeper/inproc.h"
#include "appliance/kproto/keeper.h"
#include "appliance/core/reconcile.h"
#include "tests/unit/testenv.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef testenv_world rec_fixture; /* the token and its in-process keeper only */

static int setup(void **state)
{
    *state = testenv_world_new(0, NULL);
    return *state != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    testenv_world_free(*state); /* first the deferred destroys: the set is process-wide */
    return 0;
}

static void test_a_deferred_kid_is_destroyed_at_the_next_retry_and_leaves_the_set(void **state)
{
    rec_fixture *fx = *state;
    sk_kid doomed, kept;
    sk_pubkey pub;
    testenv_kid(&doomed);
    testenv_kid(&kept);
    assert_int_equal(kp_generate(fx->k, &doomed, 2048, &pub), SK_OK);
    assert_int_equal(kp_generate(fx->k, &kept, 2048, &pub), SK_OK);
    rec_defer_destroy(&doomed);
    rec_defer_destroy(&doomed); /* once in the set, however often deferred */
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
    assert_int_equal(testenv_on_token(fx->k, &doomed), 0);
    assert_int_equal(testenv_on_token(fx->k, &kept), 1);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
}

static void test_a_deferred_kid_the_token_never_held_leaves_the_set(void **state)
{
    rec_fixture *fx = *state;
    sk_kid never;
    testenv_kid(&never);
    rec_defer_destroy(&never);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
}

static void test_deferred_kids_stay_while_the_keeper_is_away_and_go_once_it_answers(void **state)
{
    rec_fixture *fx = *state;
    char sock[PATH_MAX + 16], err[256];
    snprintf(sock, sizeof(sock), "%s/no-keeper.sock", fx->dir);
    kp *away = NULL;
    assert_int_equal(kp_connect(sock, NULL, &away, err, sizeof(err)), SK_OK);
    sk_kid kids[3];
    sk_pubkey pub;
    for (int i = 0; i < 3; i++) {
        testenv_kid(&kids[i]);
        assert_int_equal(kp_generate(fx->k, &kids[i], 2048, &pub), SK_OK);
        rec_defer_destroy(&kids[i]);
    }
    assert_int_equal(rec_retry_deferred(away, stderr), 3);
    assert_int_equal(rec_retry_deferred(away, stderr), 3);
    kp_close(away);
    for (int i = 0; i < 3; i++)
        assert_int_equal(testenv_on_token(fx->k, &kids[i]), 1);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(testenv_on_token(fx->k, &kids[i]), 0);
}

static void test_the_set_is_bounded_and_keeps_what_it_holds(void **state)
{
    rec_fixture *fx = *state;
    char sock[PATH_MAX + 16], err[256];
    snprintf(sock, sizeof(sock), "%s/no-keeper.sock", fx->dir);
    kp *away = NULL;
    assert_int_equal(kp_connect(sock, NULL, &away, err, sizeof(err)), SK_OK);
    for (int i = 0; i < REC_DEFER_MAX + 5; i++) {
        sk_kid kid;
        testenv_kid(&kid);
        rec_defer_destroy(&kid);
    }
    assert_int_equal(rec_retry_deferred(away, stderr), REC_DEFER_MAX);
    kp_close(away);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
}

/* A key made before the appliance recorded token attributes (a row without them, its key in
 * the token): rec_run reads them back once and records them; a later run changes nothing. */
static void test_reconcile_records_the_token_attributes_of_a_key_made_before(void **state)
{
    testenv_world *w = testenv_world_new(TESTENV_REG, NULL);
    assert_non_null(w);
    (void)state;
    reg_key k;
    memset(&k, 0, sizeof(k));
    sk_pubkey pub;
    testenv_kid(&k.kid);
    assert_int_equal(reg_pending_add(w->rg, &k.kid, 1700000000), REG_OK);
    assert_int_equal(kp_generate(w->k, &k.kid, 2048, &pub), SK_OK); /* no attributes kept */
    k.state = REG_ACTIVE;
    k.bits = 2048;
    k.created_at = 1700000000;
    snprintf(k.n_b64, sizeof(k.n_b64), "n");
    snprintf(k.e_b64, sizeof(k.e_b64), "AQAB");
    assert_int_equal(reg_reserve(w->rg), REG_OK);
    assert_int_equal(reg_insert(w->rg, &k), REG_OK);
    reg_key got;
    assert_int_equal(reg_get(w->rg, &k.kid, &got), REG_OK);
    assert_int_equal(got.token_attrs, 0);

    rec_report rep;
    assert_int_equal(rec_run(w->k, w->rg, stderr, &rep), 0);
    assert_int_equal(rep.attrs_read, 1);
    assert_int_equal(rep.not_sign_only, 0);
    assert_int_equal(rep.marked_broken, 0);
    assert_int_equal(reg_get(w->rg, &k.kid, &got), REG_OK);
    assert_int_equal(got.token_attrs, SK_ATTR_READ | SK_ATTR_SENSITIVE | SK_ATTR_NEVER_EXTRACTABLE |
                                          SK_ATTR_SIGN_ONLY);
    assert_int_equal(rec_run(w->k, w->rg, stderr, &rep), 0);
    assert_int_equal(rep.attrs_read, 0);
    testenv_world_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_deferred_kid_is_destroyed_at_the_next_retry_and_leaves_the_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_deferred_kid_the_token_never_held_leaves_the_set,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_deferred_kids_stay_while_the_keeper_is_away_and_go_once_it_answers, setup,
            teardown),
        cmocka_unit_test(test_reconcile_records_the_token_attributes_of_a_key_made_before),
        cmocka_unit_test_setup_teardown(test_the_set_is_bounded_and_keeps_what_it_holds, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
