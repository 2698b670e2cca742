/*
 * test_core_keys: key lifecycle (appliance/core/keys.h) without HTTP: create, rotate and
 * revoke against a real SoftHSM2 token through the in-process keeper (kp_open) and a real
 * SQLite registry file, with the publication handle refreshed as the front has it. The
 * token is read back with kp_list, the audit events with SQLite, and the scheduler's
 * revocation at retire_at through rot_start (rotation.h).
 */
#include "appliance/core/keys.h"

#include "appliance/common/config.h"
#include "appliance/core/audit.h"
#include "appliance/core/reconcile.h"
#include "appliance/core/rotation.h"
#include "jose/jose.h"
#include "appliance/keeper/inproc.h"
#include "tests/unit/testenv.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T0 1700000000
#define LIMIT 1000 /* max_active_keys' default, the limit the appliance ships with */

typedef testenv_world fixture;

static int setup(void **state)
{
    fixture *fx = testenv_world_new(TESTENV_REG | TESTENV_TKS | TESTENV_PUB, NULL);
    if (fx != NULL && fx->c.max_active_keys != LIMIT) {
        fprintf(stderr, "setup: max_active_keys' default is %u, not %d\n",
                (unsigned)fx->c.max_active_keys, LIMIT);
        testenv_world_free(fx);
        fx = NULL;
    }
    *state = fx;
    return fx != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    chn_set_actor(NULL);
    testenv_world_free(*state); /* first the deferred destroys: the set is process-wide */
    return 0;
}

/* Client key objects in the token. */
static size_t on_token_count(kp *k)
{
    sk_key_entry objs[64];
    size_t n = 0;
    assert_int_equal(kp_list(k, objs, 64, &n), SK_OK);
    size_t clients = 0;
    for (size_t i = 0; i < n && i < 64; i++)
        clients += !kp_is_reserved(&objs[i].kid);
    return clients;
}

/* Audit rows with this action (and, when not NULL, this kid and this actor). */
static int audit_rows(const fixture *fx, const char *action, const sk_kid *kid, const char *actor)
{
    char hex[2 * SK_KID_LEN + 1] = "";
    if (kid != NULL)
        sk_kid_hex(kid, hex);
    return (int)testenv_sql_int(fx->db,
                                "SELECT count(*) FROM audit WHERE action = ?1 "
                                "AND (?2 IS NULL OR kid = ?2) AND (?3 IS NULL OR actor = ?3)",
                                3, action, kid != NULL ? hex : NULL, actor);
}

static int audit_total(const fixture *fx)
{
    return (int)testenv_sql_int(fx->db, "SELECT count(*) FROM audit", 0);
}

static reg_key create_ok(fixture *fx, const char *label, int64_t now, sk_pubkey *pub)
{
    reg_key k;
    sk_pubkey local;
    ck_fail why;
    assert_int_equal(ck_create(&fx->e, 2048, label, now, &k, pub ? pub : &local, &why), CK_OK);
    return k;
}

/* ---- create ------------------------------------------------------------------------------ */

static void test_a_created_key_is_an_active_row_with_its_object_in_the_token(void **state)
{
    fixture *fx = *state;
    chn_set_actor("c0ffee0000000001");
    sk_pubkey pub;
    reg_key k = create_ok(fx, "billing", T0, &pub);
    assert_int_equal(k.state, REG_ACTIVE);
    /* What the token holds, read back through the keeper, is in the row (issue 21). */
    reg_key stored;
    assert_int_equal(reg_get(fx->e.reg, &k.kid, &stored), REG_OK);
    assert_int_equal(stored.token_attrs, SK_ATTR_READ | SK_ATTR_SENSITIVE |
                                             SK_ATTR_NEVER_EXTRACTABLE | SK_ATTR_SIGN_ONLY);
    assert_int_equal(k.bits, 2048);
    assert_int_equal(pub.bits, 2048);
    assert_string_equal(k.label, "billing");
    assert_int_equal(k.created_at, T0);
    assert_false(kp_is_reserved(&k.kid));
    assert_int_equal(testenv_on_token(fx->k, &k.kid), 1);
    /* The row is durable and carries the public key the token made. */
    reg_key row;
    assert_int_equal(reg_get(fx->rg, &k.kid, &row), REG_OK);
    assert_int_equal(row.state, REG_ACTIVE);
    assert_string_equal(row.n_b64, k.n_b64);
    char n_b64[REG_N_B64_MAX];
    assert_true(jose_b64url_encode(pub.n, pub.n_len, n_b64, sizeof(n_b64)) > 0);
    assert_string_equal(row.n_b64, n_b64);
    /* The key signs, and what it signs verifies under the published modulus. */
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    assert_int_equal(kp_sign(fx->k, &k.kid, "x", 1, sig, &sig_len), SK_OK);
    assert_int_equal(jose_rs256_verify(pub.n, pub.n_len, pub.e, pub.e_len, "x", 1, sig, sig_len),
                     1);
    /* One key.created, under the calling thread's actor. */
    assert_int_equal(audit_rows(fx, CHN_KEY_CREATED, &k.kid, "c0ffee0000000001"), 1);
    assert_int_equal(audit_total(fx), 1);
}

static void test_each_create_makes_a_new_kid(void **state)
{
    fixture *fx = *state;
    reg_key a = create_ok(fx, "", T0, NULL);
    reg_key b = create_ok(fx, "", T0, NULL);
    assert_memory_not_equal(a.kid.b, b.kid.b, SK_KID_LEN);
    assert_int_equal(reg_count(fx->rg, REG_ACTIVE), 2);
    assert_int_equal(on_token_count(fx->k), 2);
}

static void test_the_thousandth_key_is_made_and_the_next_is_refused(void **state)
{
    fixture *fx = *state;
    /* 998 slots held as by creates in flight: the next create is the 999th key, then the
     * 1,000th; the limit counts reservations and rows alike. */
    for (int i = 0; i < LIMIT - 2; i++)
        assert_int_equal(reg_reserve(fx->rg), REG_OK);
    reg_key a = create_ok(fx, "", T0, NULL);
    reg_key b = create_ok(fx, "", T0, NULL);
    int events = audit_total(fx);
    reg_key k;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_create(&fx->e, 2048, "", T0, &k, &pub, &why), CK_ERR_NO_SLOT);
    /* Refused before the token is asked: no object, no row, no event. */
    assert_int_equal(on_token_count(fx->k), 2);
    assert_int_equal(reg_count(fx->rg, REG_ACTIVE), 2);
    assert_int_equal(audit_total(fx), events);
    /* A revocation frees its slot. */
    assert_int_equal(ck_revoke(&fx->e, &a.kid, "done", T0, NULL), CK_OK);
    create_ok(fx, "", T0, NULL);
    assert_int_equal(ck_create(&fx->e, 2048, "", T0, &k, &pub, &why), CK_ERR_NO_SLOT);
    (void)b;
    for (int i = 0; i < LIMIT - 2; i++)
        reg_unreserve(fx->rg);
}

static void test_a_size_the_token_refuses_leaves_nothing_held(void **state)
{
    fixture *fx = *state;
    reg_key k;
    sk_pubkey pub;
    ck_fail why;
    for (int i = 0; i < LIMIT - 1; i++)
        assert_int_equal(reg_reserve(fx->rg), REG_OK);
    assert_int_equal(ck_create(&fx->e, 1024, "", T0, &k, &pub, &why), CK_ERR_TOKEN);
    assert_int_equal(why.st, SK_ERR_BAD_ARGUMENT);
    assert_int_equal(on_token_count(fx->k), 0);
    assert_int_equal(audit_total(fx), 0);
    /* The one slot left was given back: the next create takes it. */
    create_ok(fx, "", T0, NULL);
    for (int i = 0; i < LIMIT - 1; i++)
        reg_unreserve(fx->rg);
}

static void test_a_keeper_that_is_gone_leaves_its_kid_to_the_destroyer(void **state)
{
    fixture *fx = *state;
    char sock[PATH_MAX + 16], err[256];
    snprintf(sock, sizeof(sock), "%s/no-keeper.sock", fx->dir);
    kp *away = NULL;
    assert_int_equal(kp_connect(sock, NULL, &away, err, sizeof(err)), SK_OK);
    ck_env e = {.reg = fx->rg, .kp = away, .pub = fx->p};
    reg_key k;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_create(&e, 2048, "", T0, &k, &pub, &why), CK_ERR_TOKEN);
    assert_int_equal(why.st, SK_ERR_DEVICE);
    /* The generation's answer was lost: its object may exist, so its kid waits for the
     * destroyer, while no row was written. */
    assert_int_equal(rec_retry_deferred(away, stderr), 1);
    kp_close(away);
    assert_int_equal(reg_count(fx->rg, REG_ACTIVE), 0);
    assert_int_equal(audit_total(fx), 0);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
}

/* ---- revoke ------------------------------------------------------------------------------ */

static void test_a_revocation_is_durable_then_the_object_goes(void **state)
{
    fixture *fx = *state;
    reg_key k = create_ok(fx, "", T0, NULL);
    chn_set_actor("c0ffee0000000002");
    reg_key out;
    assert_int_equal(ck_revoke(&fx->e, &k.kid, "compromised", T0 + 5, &out), CK_OK);
    assert_int_equal(out.state, REG_REVOKED);
    assert_string_equal(out.reason, "compromised");
    assert_int_equal(out.revoked_at, T0 + 5);
    assert_int_equal(out.revocation_seq, 1);
    assert_int_equal(reg_revocation_seq(fx->rg), 1);
    assert_int_equal(audit_rows(fx, CHN_KEY_REVOKED, &k.kid, "c0ffee0000000002"), 1);
    /* The keeper signs nothing for it any more... */
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    assert_false(reg_is_active(fx->rg, &k.kid));
    /* ...and its object is the destroyer's, which the next pass removes. */
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
    assert_int_equal(testenv_on_token(fx->k, &k.kid), 0);
    assert_int_equal(kp_sign(fx->k, &k.kid, "x", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
}

static void test_revoking_twice_answers_the_first_revocation(void **state)
{
    fixture *fx = *state;
    reg_key k = create_ok(fx, "", T0, NULL);
    reg_key first, again;
    assert_int_equal(ck_revoke(&fx->e, &k.kid, "first", T0 + 1, &first), CK_OK);
    assert_int_equal(ck_revoke(&fx->e, &k.kid, "second", T0 + 2, &again), CK_OK);
    assert_string_equal(again.reason, "first");
    assert_int_equal(again.revoked_at, T0 + 1);
    assert_int_equal(again.revocation_seq, first.revocation_seq);
    assert_int_equal(reg_revocation_seq(fx->rg), 1);
    assert_int_equal(audit_rows(fx, CHN_KEY_REVOKED, &k.kid, NULL), 1);
}

static void test_revoking_an_unknown_kid_changes_nothing(void **state)
{
    fixture *fx = *state;
    create_ok(fx, "", T0, NULL);
    sk_kid never;
    testenv_kid(&never);
    int events = audit_total(fx);
    assert_int_equal(ck_revoke(&fx->e, &never, "x", T0, NULL), CK_ERR_NOT_FOUND);
    assert_int_equal(reg_revocation_seq(fx->rg), 0);
    assert_int_equal(audit_total(fx), events);
}

/* ---- rotate ------------------------------------------------------------------------------ */

static void test_a_rotation_makes_a_successor_and_leaves_the_old_key_retiring(void **state)
{
    fixture *fx = *state;
    reg_key old = create_ok(fx, "orders", T0, NULL);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_rotate(&fx->e, &old.kid, NULL, T0 + 10, T0 + 100, &was, &made, &pub, &why),
                     CK_OK);
    assert_int_equal(was.state, REG_RETIRING);
    assert_int_equal(was.retire_at, T0 + 100);
    assert_true(was.has_successor);
    assert_memory_equal(was.successor.b, made.kid.b, SK_KID_LEN);
    assert_int_equal(made.state, REG_ACTIVE);
    assert_true(made.has_predecessor);
    assert_memory_equal(made.predecessor.b, old.kid.b, SK_KID_LEN);
    assert_int_equal(made.bits, old.bits);
    assert_string_equal(made.label, "orders"); /* none given: the old key's */
    assert_int_equal(made.created_at, T0 + 10);
    /* Both objects stay: the old key verifies the tokens already out until retire_at. */
    assert_int_equal(testenv_on_token(fx->k, &old.kid), 1);
    assert_int_equal(testenv_on_token(fx->k, &made.kid), 1);
    assert_int_equal(audit_rows(fx, CHN_KEY_CREATED, &made.kid, NULL), 1);
    assert_int_equal(audit_rows(fx, CHN_KEY_ROTATED, &old.kid, NULL), 1);
    /* A label given is the successor's. */
    reg_key was2, made2;
    assert_int_equal(
        ck_rotate(&fx->e, &made.kid, "orders-2", T0 + 20, T0 + 200, &was2, &made2, &pub, &why),
        CK_OK);
    assert_string_equal(made2.label, "orders-2");
}

static void test_only_an_active_key_rotates_and_a_refusal_generates_nothing(void **state)
{
    fixture *fx = *state;
    reg_key old = create_ok(fx, "", T0, NULL);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_rotate(&fx->e, &old.kid, NULL, T0, T0 + 100, &was, &made, &pub, &why),
                     CK_OK);
    size_t objects = on_token_count(fx->k);
    int events = audit_total(fx);
    reg_key w2, m2;
    assert_int_equal(ck_rotate(&fx->e, &old.kid, NULL, T0, T0 + 100, &w2, &m2, &pub, &why),
                     CK_ERR_STATE);
    assert_int_equal(why.state, REG_RETIRING);
    assert_int_equal(ck_revoke(&fx->e, &made.kid, "x", T0, NULL), CK_OK);
    events = audit_total(fx);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
    objects = on_token_count(fx->k);
    assert_int_equal(ck_rotate(&fx->e, &made.kid, NULL, T0, T0 + 100, &w2, &m2, &pub, &why),
                     CK_ERR_STATE);
    assert_int_equal(why.state, REG_REVOKED);
    sk_kid never;
    testenv_kid(&never);
    assert_int_equal(ck_rotate(&fx->e, &never, NULL, T0, T0 + 100, &w2, &m2, &pub, &why),
                     CK_ERR_NOT_FOUND);
    assert_int_equal(on_token_count(fx->k), objects);
    assert_int_equal(audit_total(fx), events);
}

static void test_a_rotation_needs_a_free_slot(void **state)
{
    fixture *fx = *state;
    reg_key old = create_ok(fx, "", T0, NULL);
    for (int i = 0; i < LIMIT - 1; i++)
        assert_int_equal(reg_reserve(fx->rg), REG_OK);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_rotate(&fx->e, &old.kid, NULL, T0, T0 + 100, &was, &made, &pub, &why),
                     CK_ERR_NO_SLOT);
    assert_int_equal(on_token_count(fx->k), 1);
    reg_key row;
    assert_int_equal(reg_get(fx->rg, &old.kid, &row), REG_OK);
    assert_int_equal(row.state, REG_ACTIVE);
    for (int i = 0; i < LIMIT - 1; i++)
        reg_unreserve(fx->rg);
}

static void test_retiring_keys_count_toward_the_key_limit(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < LIMIT - 2; i++)
        assert_int_equal(reg_reserve(fx->rg), REG_OK);
    reg_key k1 = create_ok(fx, "", T0, NULL), k2 = create_ok(fx, "", T0, NULL);
    reg_key was, made, k;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_rotate(&fx->e, &k1.kid, NULL, T0, T0 + 600, &was, &made, &pub, &why),
                     CK_ERR_NO_SLOT);
    assert_true(reg_is_active(fx->rg, &k1.kid));
    assert_int_equal(ck_revoke(&fx->e, &k2.kid, "x", T0, NULL), CK_OK);
    assert_int_equal(ck_rotate(&fx->e, &k1.kid, NULL, T0, T0 + 600, &was, &made, &pub, &why),
                     CK_OK);
    /* The retiring key still holds its object in the token: the limit is reached. */
    assert_int_equal(ck_create(&fx->e, 2048, "", T0, &k, &pub, &why), CK_ERR_NO_SLOT);
    /* Revoking it early frees its slot, and leaves its successor active. */
    assert_int_equal(ck_revoke(&fx->e, &k1.kid, "early", T0, NULL), CK_OK);
    create_ok(fx, "", T0, NULL);
    assert_true(reg_is_active(fx->rg, &made.kid));
    for (int i = 0; i < LIMIT - 2; i++)
        reg_unreserve(fx->rg);
}

static void test_the_scheduler_revokes_a_key_whose_grace_ended(void **state)
{
    fixture *fx = *state;
    int64_t now = (int64_t)time(NULL);
    reg_key old = create_ok(fx, "", now - 10, NULL);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_rotate(&fx->e, &old.kid, NULL, now - 10, now - 1, &was, &made, &pub, &why),
                     CK_OK);
    /* rot_start returns once its first pass revoked what was due. */
    rot *rt = NULL;
    char err[256];
    assert_int_equal(rot_start(&fx->e, &rt, err, sizeof(err)), 0);
    reg_key row;
    assert_int_equal(reg_get(fx->rg, &old.kid, &row), REG_OK);
    assert_int_equal(row.state, REG_REVOKED);
    assert_string_equal(row.reason, ROT_REASON);
    assert_int_equal(audit_rows(fx, CHN_KEY_REVOKED, &old.kid, ROT_ACTOR), 1);
    assert_true(reg_is_active(fx->rg, &made.kid));
    rot_stop(rt);
    assert_int_equal(rec_retry_deferred(fx->k, stderr), 0);
    assert_int_equal(testenv_on_token(fx->k, &old.kid), 0);
    assert_int_equal(testenv_on_token(fx->k, &made.kid), 1);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_a_created_key_is_an_active_row_with_its_object_in_the_token),
        T(test_each_create_makes_a_new_kid),
        T(test_the_thousandth_key_is_made_and_the_next_is_refused),
        T(test_a_size_the_token_refuses_leaves_nothing_held),
        T(test_a_keeper_that_is_gone_leaves_its_kid_to_the_destroyer),
        T(test_a_revocation_is_durable_then_the_object_goes),
        T(test_revoking_twice_answers_the_first_revocation),
        T(test_revoking_an_unknown_kid_changes_nothing),
        T(test_a_rotation_makes_a_successor_and_leaves_the_old_key_retiring),
        T(test_only_an_active_key_rotates_and_a_refusal_generates_nothing),
        T(test_a_rotation_needs_a_free_slot),
        T(test_retiring_keys_count_toward_the_key_limit),
        T(test_the_scheduler_revokes_a_key_whose_grace_ended),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
