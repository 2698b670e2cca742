/*
 * test_core_mint: minting (appliance/core/mint.h) without HTTP, on a real SoftHSM2 token
 * through the in-process keeper (kp_open), a real SQLite file and the audit writer with
 * one event per signature. A token is checked as a relying party would: its signature
 * under the key's public half, its claims, its status index; the refusals by status.
 */
#include "appliance/core/mint.h"

#include "appliance/core/reconcile.h"
#include "jose/jose.h"
#include "appliance/keeper/inproc.h"
#include "tests/unit/testenv.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    testenv_world w;
    mint_env me;
    int64_t now;
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    audit_options ao = {.flush_seconds = 1,
                        .checkpoint_events = 1000,
                        .checkpoint_seconds = 3600,
                        .every_signature = 1};
    if (fx == NULL ||
        testenv_world_open(&fx->w, TESTENV_REG | TESTENV_TKS | TESTENV_AUDIT, &ao) != 0) {
        free(fx);
        return -1;
    }
    testenv_world *w = &fx->w;
    snprintf(w->c.token_issuer, sizeof(w->c.token_issuer), "https://issuer.example");
    fx->me = (mint_env){.cfg = &w->c, .reg = w->rg, .kp = w->k, .tks = w->ts, .audit = w->au};
    fx->now = (int64_t)time(NULL);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    testenv_world_close(&fx->w);
    free(fx);
    return 0;
}

static reg_key create_ok(fixture *fx, int64_t created_at, sk_pubkey *pub)
{
    reg_key k;
    sk_pubkey local;
    ck_fail why;
    assert_int_equal(ck_create(&fx->w.e, 2048, "", created_at, &k, pub ? pub : &local, &why),
                     CK_OK);
    return k;
}

/* A signer credential scoped to kid (kid NULL: every kid). */
static cred_record signer(const sk_kid *kid)
{
    cred_record c;
    memset(&c, 0, sizeof(c));
    snprintf(c.id, sizeof(c.id), "00112233aabbccdd");
    c.role = CRED_ROLE_SIGNER;
    c.all_kids = kid == NULL;
    if (kid != NULL) {
        c.n_kids = 1;
        c.kids[0] = *kid;
    }
    return c;
}

/* The token's payload, after checking its header and its signature under pub. */
static json_t *verified_payload(const mint_token *t, const sk_pubkey *pub)
{
    jose_jws p;
    assert_int_equal(jose_jws_parse(t->token, t->len, &p), 0);
    assert_string_equal(json_string_value(json_object_get(p.header, "alg")), "RS256");
    assert_string_equal(json_string_value(json_object_get(p.header, "typ")), "JWT");
    assert_string_equal(json_string_value(json_object_get(p.header, "kid")), t->kid_hex);
    assert_int_equal(jose_rs256_verify(pub->n, pub->n_len, pub->e, pub->e_len, t->token,
                                       p.signing_input_len, p.sig, p.sig_len),
                     1);
    json_t *j = json_loadb((const char *)p.payload, p.payload_len, JSON_PRESERVE_ORDER, NULL);
    assert_non_null(j);
    jose_jws_free(&p);
    return j;
}

static int sign_events(const fixture *fx, const char *kid_hex, const char *jti)
{
    /* The jti as the details' JSON spells it: a LIKE runs on both backends (SQLite's
     * json_extract is not PostgreSQL's); a jti is base64url, no LIKE wildcard but '_',
     * which at worst matches more, never fewer. */
    char pattern[160];
    snprintf(pattern, sizeof(pattern), "%%\"jti\":\"%s\"%%", jti);
    return (int)testenv_sql_int(fx->w.db,
                                "SELECT count(*) FROM audit WHERE action = 'sign' AND "
                                "kid = ?1 AND details LIKE ?2",
                                2, kid_hex, pattern);
}

static void test_a_token_is_signed_by_the_kid_asked_for_with_its_claims_in_order(void **state)
{
    fixture *fx = *state;
    sk_pubkey pub;
    reg_key k = create_ok(fx, fx->now, &pub);
    cred_record caller = signer(&k.kid);
    json_t *claims = json_pack("{s:s}", "role", "reader");
    mint_req m = {.caller = &caller,
                  .has_kid = 1,
                  .kid = k.kid,
                  .sub = "user-1",
                  .iat = fx->now,
                  .nbf = fx->now,
                  .exp = fx->now + 300,
                  .claims = claims,
                  .single_use = 1,
                  .aud = "api",
                  .origin = "https://app.example"};
    mint_token t;
    mint_fail why;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_OK);
    assert_memory_equal(t.kid.b, k.kid.b, SK_KID_LEN);
    assert_int_equal(strlen(t.jti), 2 * MINT_JTI_BYTES);
    json_t *j = verified_payload(&t, &pub);
    const char *want[] = {"iss", "sub", "iat",    "nbf",        "exp",
                          "jti", "aud", "origin", "single_use", "role"};
    assert_int_equal(json_object_size(j), sizeof(want) / sizeof(want[0]));
    size_t i = 0;
    for (void *it = json_object_iter(j); it != NULL; it = json_object_iter_next(j, it))
        assert_string_equal(json_object_iter_key(it), want[i++]);
    assert_string_equal(json_string_value(json_object_get(j, "iss")), "https://issuer.example");
    assert_int_equal(json_integer_value(json_object_get(j, "exp")), fx->now + 300);
    assert_string_equal(json_string_value(json_object_get(j, "jti")), t.jti);
    json_decref(j);
    /* One sign event per token, its jti recorded, committed before mint_make returned. */
    assert_int_equal(sign_events(fx, t.kid_hex, t.jti), 1);
    mint_token_free(&t);
    json_decref(claims);
}

static void test_a_revocable_token_names_its_status_index_and_list(void **state)
{
    fixture *fx = *state;
    sk_pubkey pub;
    create_ok(fx, fx->now, &pub);
    mint_req m = {.iat = fx->now, .nbf = -1, .exp = fx->now + 60, .revocable = 1};
    mint_token t1, t2;
    mint_fail why;
    assert_int_equal(mint_make(&fx->me, &m, &t1, &why), MINT_OK);
    assert_int_equal(mint_make(&fx->me, &m, &t2, &why), MINT_OK);
    assert_int_equal(t1.ix.list, 0);
    assert_int_not_equal(t1.ix.idx, t2.ix.idx);
    assert_string_equal(t1.uri, "https://127.0.0.1:8443/v1/status-lists/0");
    json_t *j = verified_payload(&t1, &pub);
    json_t *sl = json_object_get(json_object_get(j, "status"), "status_list");
    assert_int_equal(json_integer_value(json_object_get(sl, "idx")), t1.ix.idx);
    assert_string_equal(json_string_value(json_object_get(sl, "uri")), t1.uri);
    assert_null(json_object_get(j, "nbf")); /* none asked for */
    json_decref(j);
    /* The jti names the index (under the MAC), so a revocation needs nothing stored. */
    tks_index back;
    char owner[2 * TKS_OWNER_BYTES + 1];
    assert_int_equal(tks_jti_read(fx->w.ts, t1.jti, &back, owner), TKS_OK);
    assert_int_equal(back.idx, t1.ix.idx);
    assert_string_equal(owner, "");
    mint_token_free(&t1);
    mint_token_free(&t2);
}

static void test_without_a_kid_the_newest_key_the_caller_may_use_signs(void **state)
{
    fixture *fx = *state;
    reg_key old = create_ok(fx, fx->now - 100, NULL);
    reg_key newer = create_ok(fx, fx->now - 50, NULL);
    mint_req m = {.iat = fx->now, .nbf = -1, .exp = fx->now + 60};
    mint_token t;
    mint_fail why;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_OK);
    assert_memory_equal(t.kid.b, newer.kid.b, SK_KID_LEN);
    mint_token_free(&t);
    /* A signer scoped to the old key gets it, and after its rotation the successor. */
    cred_record caller = signer(&old.kid);
    m.caller = &caller;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_OK);
    assert_memory_equal(t.kid.b, old.kid.b, SK_KID_LEN);
    mint_token_free(&t);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail cf;
    assert_int_equal(
        ck_rotate(&fx->w.e, &old.kid, NULL, fx->now, fx->now + 60, &was, &made, &pub, &cf), CK_OK);
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_OK);
    assert_memory_equal(t.kid.b, made.kid.b, SK_KID_LEN);
    mint_token_free(&t);
    /* ...and may name the successor, but not the key outside its lineage. */
    m.has_kid = 1;
    m.kid = made.kid;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_OK);
    mint_token_free(&t);
    m.kid = newer.kid;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_ERR_KID_NOT_ALLOWED);
    assert_null(t.token);
}

static void test_a_kid_that_cannot_sign_is_refused_with_its_state(void **state)
{
    fixture *fx = *state;
    reg_key k = create_ok(fx, fx->now, NULL);
    reg_key was, made;
    sk_pubkey pub;
    ck_fail cf;
    assert_int_equal(
        ck_rotate(&fx->w.e, &k.kid, NULL, fx->now, fx->now + 60, &was, &made, &pub, &cf), CK_OK);
    mint_req m = {.has_kid = 1, .kid = k.kid, .iat = fx->now, .nbf = -1, .exp = fx->now + 60};
    mint_token t;
    mint_fail why;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_ERR_KEY);
    assert_int_equal(why.cs, CK_ERR_STATE);
    assert_int_equal(why.state, REG_RETIRING);
    assert_memory_equal(why.kid.b, k.kid.b, SK_KID_LEN);
    assert_int_equal(ck_revoke(&fx->w.e, &made.kid, "x", fx->now, NULL), CK_OK);
    m.kid = made.kid;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_ERR_KEY);
    assert_int_equal(why.state, REG_REVOKED);
    testenv_kid(&m.kid);
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_ERR_KEY);
    assert_int_equal(why.cs, CK_ERR_NOT_FOUND);
    /* Nothing active at all: no kid to choose. */
    m.has_kid = 0;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_ERR_NO_ACTIVE_KEY);
}

static void test_a_token_past_what_the_keeper_signs_is_refused_with_its_size(void **state)
{
    fixture *fx = *state;
    create_ok(fx, fx->now, NULL);
    char *big = malloc(KP_SIGN_MAX);
    assert_non_null(big);
    memset(big, 'a', KP_SIGN_MAX - 1);
    big[KP_SIGN_MAX - 1] = '\0';
    json_t *claims = json_pack("{s:s}", "blob", big);
    free(big);
    mint_req m = {.iat = fx->now, .nbf = -1, .exp = fx->now + 60, .claims = claims};
    mint_token t;
    mint_fail why;
    assert_int_equal(mint_make(&fx->me, &m, &t, &why), MINT_ERR_TOO_LARGE);
    assert_true(why.signing_len > KP_SIGN_MAX);
    assert_null(t.token);
    json_decref(claims);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_a_token_is_signed_by_the_kid_asked_for_with_its_claims_in_order),
        T(test_a_revocable_token_names_its_status_index_and_list),
        T(test_without_a_kid_the_newest_key_the_caller_may_use_signs),
        T(test_a_kid_that_cannot_sign_is_refused_with_its_state),
        T(test_a_token_past_what_the_keeper_signs_is_refused_with_its_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
