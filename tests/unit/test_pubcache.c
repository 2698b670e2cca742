/*
 * test_pubcache: the rule that decides, for one cached signed public document (the feed, a
 * status list), whether a request is served from the copy, signs a new one, or is refused
 * (appliance/core/pubcache.h). Pure: times and versions are given, nothing signs.
 */
#include "appliance/core/pubcache.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#define T0 1800000000
#define RESIGN 60 /* api_resign_after: re-sign a copy of unchanged content after this */
#define LIFE 900  /* revocation_feed_lifetime: a copy's exp - iat */

static pc_entry copy_of(uint64_t version, int64_t iat)
{
    pc_entry e = {.has = true, .version = version, .iat = iat, .exp = iat + LIFE};
    return e;
}

static void test_a_current_fresh_copy_is_served_without_signing_even_with_no_budget(void **state)
{
    (void)state;
    pc_entry e = copy_of(3, T0);
    assert_int_equal(pc_decide(&e, 3, T0, RESIGN, true, true), PC_SERVE);
    assert_int_equal(pc_decide(&e, 3, T0 + RESIGN - 1, RESIGN, false, false), PC_SERVE);
    e.signing = true;
    assert_int_equal(pc_decide(&e, 3, T0 + 1, RESIGN, true, true), PC_SERVE);
}

static void test_a_change_of_content_or_age_signs_again(void **state)
{
    (void)state;
    pc_entry e = copy_of(3, T0);
    assert_int_equal(pc_decide(&e, 4, T0 + 1, RESIGN, true, true), PC_SIGN);
    assert_int_equal(pc_decide(&e, 3, T0 + RESIGN, RESIGN, true, true), PC_SIGN);
    /* A clock gone back is no reason to trust the copy as fresh. */
    assert_int_equal(pc_decide(&e, 3, T0 - 5, RESIGN, true, true), PC_SIGN);
    pc_entry none = {0};
    assert_int_equal(pc_decide(&none, 0, T0, RESIGN, true, true), PC_SIGN);
}

static void test_without_budget_the_valid_copy_is_served_until_its_exp_then_503(void **state)
{
    (void)state;
    pc_entry e = copy_of(3, T0);
    /* Out of date (a revocation since) or old: still the newest thing signed. */
    assert_int_equal(pc_decide(&e, 4, T0 + 1, RESIGN, true, false), PC_SERVE_OLD);
    assert_int_equal(pc_decide(&e, 3, T0 + LIFE - 1, RESIGN, true, false), PC_SERVE_OLD);
    /* Past its exp a copy proves nothing: refused, never served. */
    assert_int_equal(pc_decide(&e, 3, T0 + LIFE, RESIGN, true, false), PC_REFUSE_BUDGET);
    pc_entry none = {0};
    assert_int_equal(pc_decide(&none, 0, T0, RESIGN, true, false), PC_REFUSE_BUDGET);
}

static void test_while_the_keeper_fails_the_valid_copy_is_served_then_503(void **state)
{
    (void)state;
    pc_entry e = copy_of(3, T0);
    assert_int_equal(pc_decide(&e, 4, T0 + 5, RESIGN, false, true), PC_SERVE_OLD);
    assert_int_equal(pc_decide(&e, 4, T0 + LIFE, RESIGN, false, true), PC_REFUSE_KEEPER);
    pc_entry none = {0};
    assert_int_equal(pc_decide(&none, 0, T0, RESIGN, false, true), PC_REFUSE_KEEPER);
}

static void test_one_request_signs_and_the_others_get_the_copy_or_wait(void **state)
{
    (void)state;
    pc_entry e = copy_of(3, T0);
    e.signing = true;
    assert_int_equal(pc_decide(&e, 4, T0 + 1, RESIGN, true, true), PC_SERVE_OLD);
    e.exp = T0;
    assert_int_equal(pc_decide(&e, 4, T0 + 1, RESIGN, true, true), PC_WAIT);
    pc_entry none = {.signing = true};
    assert_int_equal(pc_decide(&none, 0, T0, RESIGN, true, true), PC_WAIT);
}

static void test_action_names_are_stable(void **state)
{
    (void)state;
    assert_string_equal(pc_action_name(PC_SERVE), "serve");
    assert_string_equal(pc_action_name(PC_REFUSE_BUDGET), "refuse_budget");
    assert_string_equal(pc_action_name((pc_action)99), "invalid");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_current_fresh_copy_is_served_without_signing_even_with_no_budget),
        cmocka_unit_test(test_a_change_of_content_or_age_signs_again),
        cmocka_unit_test(test_without_budget_the_valid_copy_is_served_until_its_exp_then_503),
        cmocka_unit_test(test_while_the_keeper_fails_the_valid_copy_is_served_then_503),
        cmocka_unit_test(test_one_request_signs_and_the_others_get_the_copy_or_wait),
        cmocka_unit_test(test_action_names_are_stable),
    };
    return cmocka_run_group_tests_name("pubcache", tests, NULL, NULL);
}
