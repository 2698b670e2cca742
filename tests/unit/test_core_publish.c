/*
 * test_core_publish: the publication handle (appliance/core/publish.h) without HTTP. Keys
 * are made and revoked through key lifecycle (keys.h) on a real SoftHSM2 token (in-process
 * keeper, kp_open) and a real SQLite file; the documents are read back as a verifier
 * would: the JWKS's keys, the revocation list's sequence and deltas, the signed feed and
 * the status lists checked against the publication key and their bits inflated.
 */
#include "appliance/core/publish.h"

#include "appliance/common/config.h"
#include "appliance/core/keys.h"
#include "appliance/core/reconcile.h"
#include "jose/jose.h"
#include "appliance/keeper/inproc.h"
#include "tests/unit/testenv.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#define T0 1700000000

typedef testenv_world fixture;

static int setup(void **state)
{
    *state = testenv_world_new(TESTENV_REG | TESTENV_TKS | TESTENV_PUB, NULL);
    return *state != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    testenv_world_free(*state);
    return 0;
}

static reg_key create_ok(fixture *fx)
{
    reg_key k;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_create(&fx->e, 2048, "", T0, &k, &pub, &why), CK_OK);
    return k;
}

/* A document's JSON (a new reference); d is released. */
static json_t *doc_json(pub_doc *d)
{
    assert_non_null(d);
    size_t len;
    const char *body = pub_doc_body(d, &len);
    assert_int_equal(strlen(body), len);
    json_t *j = json_loadb(body, len, 0, NULL);
    assert_non_null(j);
    pub_doc_put(d);
    return j;
}

/* The JWKS's kids, as hex, in *kids (n of them). */
static size_t jwks_kids(fixture *fx, char kids[8][2 * SK_KID_LEN + 1])
{
    json_t *j = doc_json(pub_jwks(fx->p));
    json_t *keys = json_object_get(j, "keys");
    assert_true(json_is_array(keys));
    size_t n = json_array_size(keys);
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        json_t *k = json_array_get(keys, i);
        assert_string_equal(json_string_value(json_object_get(k, "kty")), "RSA");
        assert_string_equal(json_string_value(json_object_get(k, "use")), "sig");
        assert_string_equal(json_string_value(json_object_get(k, "alg")), "RS256");
        assert_non_null(json_string_value(json_object_get(k, "n")));
        assert_string_equal(json_string_value(json_object_get(k, "e")), "AQAB");
        snprintf(kids[i], 2 * SK_KID_LEN + 1, "%s", json_string_value(json_object_get(k, "kid")));
    }
    json_decref(j);
    return n;
}

static int has_kid(char kids[8][2 * SK_KID_LEN + 1], size_t n, const sk_kid *kid)
{
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(kid, hex);
    for (size_t i = 0; i < n; i++)
        if (strcmp(kids[i], hex) == 0)
            return 1;
    return 0;
}

/* A signed document's payload after checking its header and its signature against the
 * publication key (a new reference); d is released. */
static json_t *signed_payload(fixture *fx, pub_doc *d, const char *header)
{
    assert_non_null(d);
    size_t len;
    const char *body = pub_doc_body(d, &len);
    jose_jws p;
    assert_int_equal(jose_jws_parse(body, len, &p), 0);
    json_t *want = json_loads(header, 0, NULL);
    assert_true(json_equal(p.header, want));
    json_decref(want);
    sk_pubkey pk;
    assert_int_equal(kp_svc_public_key(fx->k, KP_SVC_PUBLISH, &pk), SK_OK);
    assert_int_equal(jose_rs256_verify(pk.n, pk.n_len, pk.e, pk.e_len, body, p.signing_input_len,
                                       p.sig, p.sig_len),
                     1);
    json_t *j = json_loadb((const char *)p.payload, p.payload_len, 0, NULL);
    assert_non_null(j);
    jose_jws_free(&p);
    pub_doc_put(d);
    return j;
}

static int64_t int_of(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    assert_true(json_is_integer(v));
    return (int64_t)json_integer_value(v);
}

/* ---- the JWKS ---------------------------------------------------------------------------- */

static void test_the_jwks_follows_create_rotate_and_revoke(void **state)
{
    fixture *fx = *state;
    char kids[8][2 * SK_KID_LEN + 1];
    assert_int_equal(jwks_kids(fx, kids), 0);
    reg_key a = create_ok(fx);
    reg_key b = create_ok(fx);
    size_t n = jwks_kids(fx, kids);
    assert_int_equal(n, 2);
    assert_true(has_kid(kids, n, &a.kid) && has_kid(kids, n, &b.kid));
    /* A rotated key stays published (it verifies the tokens already out)... */
    reg_key was, made;
    sk_pubkey pub;
    ck_fail why;
    assert_int_equal(ck_rotate(&fx->e, &a.kid, NULL, T0, T0 + 60, &was, &made, &pub, &why), CK_OK);
    n = jwks_kids(fx, kids);
    assert_int_equal(n, 3);
    assert_true(has_kid(kids, n, &a.kid) && has_kid(kids, n, &made.kid));
    /* ...a revoked one does not, and the publication key never is. */
    assert_int_equal(ck_revoke(&fx->e, &a.kid, "rotated", T0 + 60, NULL), CK_OK);
    assert_int_equal(ck_revoke(&fx->e, &b.kid, "compromised", T0 + 61, NULL), CK_OK);
    n = jwks_kids(fx, kids);
    assert_int_equal(n, 1);
    assert_true(has_kid(kids, n, &made.kid));
    for (size_t i = 0; i < n; i++)
        assert_string_not_equal(kids[i], KP_PUBLISH_KID);
}

static void test_the_jwks_etag_moves_with_its_content_only(void **state)
{
    fixture *fx = *state;
    create_ok(fx);
    pub_doc *d1 = pub_jwks(fx->p), *d2 = pub_jwks(fx->p);
    /* Unchanged: one shared document, not a copy per reader. */
    assert_ptr_equal(d1, d2);
    char etag[64];
    snprintf(etag, sizeof(etag), "%s", pub_doc_etag(d1));
    assert_int_equal(strlen(etag), 34);
    assert_true(etag[0] == '"' && etag[33] == '"');
    pub_doc_put(d1);
    create_ok(fx);
    pub_doc *d3 = pub_jwks(fx->p);
    assert_string_not_equal(pub_doc_etag(d3), etag);
    /* A reader keeps its copy across a refresh. */
    size_t len;
    assert_non_null(pub_doc_body(d2, &len));
    pub_doc_put(d2);
    pub_doc_put(d3);
}

/* ---- the revocation list ----------------------------------------------------------------- */

static void test_the_revocation_list_counts_every_revocation_in_order(void **state)
{
    fixture *fx = *state;
    reg_key a = create_ok(fx), b = create_ok(fx);
    json_t *j = doc_json(pub_revocations(fx->p, 0));
    assert_int_equal(int_of(j, "sequence"), 0);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 0);
    json_decref(j);
    assert_int_equal(ck_revoke(&fx->e, &a.kid, "one", T0 + 1, NULL), CK_OK);
    assert_int_equal(ck_revoke(&fx->e, &b.kid, "two", T0 + 2, NULL), CK_OK);
    reg_subject s;
    int64_t now = (int64_t)time(NULL);
    assert_int_equal(reg_revoke_subject(fx->rg, "user-7", now, now, 0, &s), REG_OK);
    j = doc_json(pub_revocations(fx->p, 0));
    assert_int_equal(int_of(j, "sequence"), 3);
    json_t *rev = json_object_get(j, "revoked");
    assert_int_equal(json_array_size(rev), 2);
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(&a.kid, hex);
    assert_int_equal(int_of(json_array_get(rev, 0), "seq"), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rev, 0), "kid")), hex);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rev, 0), "reason")),
                        "one");
    assert_int_equal(int_of(json_array_get(rev, 0), "revoked_at"), T0 + 1);
    assert_int_equal(int_of(json_array_get(rev, 1), "seq"), 2);
    json_t *subs = json_object_get(j, "subjects");
    assert_int_equal(json_array_size(subs), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(subs, 0), "sub")),
                        "user-7");
    assert_int_equal(int_of(json_array_get(subs, 0), "seq"), 3);
    json_decref(j);
    /* A delta holds what came after, and the subjects whatever the after. */
    j = doc_json(pub_revocations(fx->p, 1));
    assert_int_equal(int_of(j, "sequence"), 3);
    rev = json_object_get(j, "revoked");
    assert_int_equal(json_array_size(rev), 1);
    assert_int_equal(int_of(json_array_get(rev, 0), "seq"), 2);
    assert_int_equal(json_array_size(json_object_get(j, "subjects")), 1);
    json_decref(j);
    /* An after beyond the newest is an empty delta from it. */
    j = doc_json(pub_revocations(fx->p, 1000));
    assert_int_equal(int_of(j, "sequence"), 3);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 0);
    json_decref(j);
}

/* A revoked row made straight in the registry: what publication reads is the registry,
 * so a long revocation history needs no token objects. */
static void revoked_row(fixture *fx)
{
    reg_key k;
    memset(&k, 0, sizeof(k));
    testenv_kid(&k.kid);
    k.bits = 2048;
    k.created_at = T0;
    snprintf(k.n_b64, sizeof(k.n_b64), "AQAB");
    snprintf(k.e_b64, sizeof(k.e_b64), "AQAB");
    assert_int_equal(reg_insert(fx->rg, &k), REG_OK);
    assert_int_equal(ck_revoke(&fx->e, &k.kid, "x", T0, NULL), CK_OK);
}

/* Bounds what a client walking every `after` can make the appliance build and the token
 * sign: at most 66 documents per registry change. */
static void test_a_delta_further_back_than_64_revocations_is_the_full_list(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < 66; i++)
        revoked_row(fx);
    rec_retry_deferred(fx->k, stderr);
    int64_t now = (int64_t)time(NULL);
    pub_why why = {0};
    json_t *j = signed_payload(fx, pub_feed(fx->p, 1, now, &why), KP_PUBLISH_HEADER);
    assert_int_equal(int_of(j, "after"), 0);
    assert_int_equal(int_of(j, "seq"), 66);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 66);
    json_decref(j);
    j = signed_payload(fx, pub_feed(fx->p, 2, now, &why), KP_PUBLISH_HEADER);
    assert_int_equal(int_of(j, "after"), 2);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 64);
    json_decref(j);
    /* The unsigned list follows the same rule, built once per change and after. */
    j = doc_json(pub_revocations(fx->p, 1));
    assert_int_equal(int_of(j, "sequence"), 66);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 66);
    json_decref(j);
    pub_doc *d1 = pub_revocations(fx->p, 2), *d2 = pub_revocations(fx->p, 2);
    assert_ptr_equal(d1, d2);
    pub_doc_put(d2);
    j = doc_json(d1);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 64);
    json_decref(j);
    j = doc_json(pub_revocations(fx->p, 99));
    json_t *want = json_pack("{s:i, s:[], s:[]}", "sequence", 66, "revoked", "subjects");
    assert_true(json_equal(j, want));
    json_decref(want);
    json_decref(j);
}

/* ---- the signed feed --------------------------------------------------------------------- */

static void test_the_feed_is_signed_by_the_publication_key_and_follows_the_sequence(void **state)
{
    fixture *fx = *state;
    reg_key a = create_ok(fx), b = create_ok(fx);
    int64_t now = (int64_t)time(NULL);
    pub_why why = {0};
    json_t *j = signed_payload(fx, pub_feed(fx->p, 0, now, &why), KP_PUBLISH_HEADER);
    assert_string_equal(json_string_value(json_object_get(j, "iss")), PUB_FEED_ISSUER_DEFAULT);
    assert_int_equal(int_of(j, "seq"), 0);
    assert_int_equal(int_of(j, "after"), 0);
    assert_int_equal(int_of(j, "iat"), now);
    assert_int_equal(int_of(j, "exp"), now + fx->c.revocation_feed_lifetime);
    assert_int_equal(int_of(j, "ttl"), fx->c.revocations_max_age);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 0);
    json_decref(j);
    /* Unchanged content within its re-sign age: the same copy, not a new signature. */
    pub_doc *d1 = pub_feed(fx->p, 0, now, &why), *d2 = pub_feed(fx->p, 0, now + 1, &why);
    assert_ptr_equal(d1, d2);
    pub_doc_put(d1);
    pub_doc_put(d2);
    assert_int_equal(ck_revoke(&fx->e, &a.kid, "one", T0, NULL), CK_OK);
    assert_int_equal(ck_revoke(&fx->e, &b.kid, "two", T0, NULL), CK_OK);
    j = signed_payload(fx, pub_feed(fx->p, 0, now + 1, &why), KP_PUBLISH_HEADER);
    assert_int_equal(int_of(j, "seq"), 2);
    assert_int_equal(json_array_size(json_object_get(j, "revoked")), 2);
    json_decref(j);
    j = signed_payload(fx, pub_feed(fx->p, 1, now + 1, &why), KP_PUBLISH_HEADER);
    assert_int_equal(int_of(j, "seq"), 2);
    assert_int_equal(int_of(j, "after"), 1);
    json_t *rev = json_object_get(j, "revoked");
    assert_int_equal(json_array_size(rev), 1);
    assert_int_equal(int_of(json_array_get(rev, 0), "seq"), 2);
    json_decref(j);
}

static void test_a_spent_budget_serves_the_copy_held_and_refuses_what_has_none(void **state)
{
    fixture *fx = *state;
    pub_free(fx->p);
    fx->c.publication_signs_per_second = 1;
    fx->p = pub_new(&fx->c, fx->rg, fx->k, fx->ts);
    fx->e.pub = fx->p;
    reg_key a = create_ok(fx);
    int64_t now = (int64_t)time(NULL);
    tks_index ix;
    assert_int_equal(tks_assign(fx->ts, now, now + 60, &ix), TKS_OK);
    /* The publication key made beforehand: what follows is within the bucket's second. */
    sk_pubkey pk;
    assert_int_equal(kp_svc_public_key(fx->k, KP_SVC_PUBLISH, &pk), SK_OK);
    pub_why why = {0};
    json_t *j = signed_payload(fx, pub_feed(fx->p, 0, now, &why), KP_PUBLISH_HEADER);
    assert_int_equal(int_of(j, "seq"), 0);
    json_decref(j);
    /* The one signature a second is spent, and the list has no copy yet: refused, with
     * when to retry. */
    memset(&why, 0, sizeof(why));
    assert_null(pub_status_list(fx->p, ix.list, now, &why));
    assert_true(why.budget);
    assert_true(why.retry_after >= 1);
    /* The feed's content moves: the copy held, still valid, is served rather than
     * nothing. */
    assert_int_equal(ck_revoke(&fx->e, &a.kid, "x", T0, NULL), CK_OK);
    j = signed_payload(fx, pub_feed(fx->p, 0, now, &why), KP_PUBLISH_HEADER);
    assert_int_equal(int_of(j, "seq"), 0);
    json_decref(j);
}

static void test_a_keeper_that_cannot_sign_is_reported(void **state)
{
    fixture *fx = *state;
    char sock[PATH_MAX + 16], err[256];
    snprintf(sock, sizeof(sock), "%s/no-keeper.sock", fx->dir);
    kp *away = NULL;
    assert_int_equal(kp_connect(sock, NULL, &away, err, sizeof(err)), SK_OK);
    pub *p = pub_new(&fx->c, fx->rg, away, fx->ts);
    assert_non_null(p);
    pub_why why = {0};
    int64_t now = (int64_t)time(NULL);
    assert_null(pub_feed(p, 0, now, &why));
    assert_false(why.budget);
    assert_int_equal(why.st, SK_ERR_DEVICE);
    /* The unsigned documents need no keeper. */
    json_decref(doc_json(pub_jwks(p)));
    json_decref(doc_json(pub_revocations(p, 0)));
    pub_free(p);
    kp_close(away);
}

/* ---- status lists ------------------------------------------------------------------------ */

/* The list's bits from a signed status list's payload, inflated. */
static void list_bits(json_t *payload, uint8_t *bits)
{
    json_t *sl = json_object_get(payload, "status_list");
    assert_int_equal(int_of(sl, "bits"), 1);
    const char *lst = json_string_value(json_object_get(sl, "lst"));
    assert_non_null(lst);
    size_t cap = strlen(lst), zlen = 0;
    uint8_t *z = malloc(cap);
    assert_non_null(z);
    assert_int_equal(jose_b64url_decode(lst, strlen(lst), z, cap, &zlen), 0);
    uLongf out = TKS_LIST_BYTES;
    assert_int_equal(uncompress(bits, &out, z, zlen), Z_OK);
    assert_int_equal(out, TKS_LIST_BYTES);
    free(z);
}

static int bit_of(const uint8_t *bits, uint32_t idx)
{
    return (bits[idx / 8] >> (idx % 8)) & 1;
}

static void test_a_status_list_has_the_bit_of_each_revoked_token(void **state)
{
    fixture *fx = *state;
    int64_t now = (int64_t)time(NULL);
    tks_index ix[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(tks_assign(fx->ts, now, now + 600, &ix[i]), TKS_OK);
    assert_int_equal(ix[0].list, ix[2].list);
    assert_int_equal(tks_revoke(fx->ts, ix[1], "jti-1", NULL, now, NULL), TKS_OK);
    pub_why why = {0};
    pub_doc *d = pub_status_list(fx->p, ix[0].list, now, &why);
    char etag[64];
    snprintf(etag, sizeof(etag), "%s", pub_doc_etag(d));
    json_t *j = signed_payload(fx, d, KP_STATUS_LIST_HEADER);
    char uri[PUB_URI_MAX];
    pub_status_list_uri(&fx->c, ix[0].list, uri);
    assert_string_equal(json_string_value(json_object_get(j, "sub")), uri);
    assert_string_equal(uri, "https://127.0.0.1:8443/v1/status-lists/0");
    assert_int_equal(int_of(j, "exp"), now + fx->c.revocation_feed_lifetime);
    uint8_t *bits = malloc(TKS_LIST_BYTES);
    assert_non_null(bits);
    list_bits(j, bits);
    json_decref(j);
    assert_false(bit_of(bits, ix[0].idx));
    assert_true(bit_of(bits, ix[1].idx));
    assert_false(bit_of(bits, ix[2].idx));
    /* Its own revocation makes a new copy; until then the one held is served. */
    d = pub_status_list(fx->p, ix[0].list, now + 1, &why);
    assert_string_equal(pub_doc_etag(d), etag);
    pub_doc_put(d);
    assert_int_equal(tks_revoke(fx->ts, ix[2], "jti-2", NULL, now, NULL), TKS_OK);
    j = signed_payload(fx, pub_status_list(fx->p, ix[0].list, now + 1, &why),
                       KP_STATUS_LIST_HEADER);
    list_bits(j, bits);
    json_decref(j);
    assert_false(bit_of(bits, ix[0].idx));
    assert_true(bit_of(bits, ix[1].idx));
    assert_true(bit_of(bits, ix[2].idx));
    free(bits);
}

static void test_the_public_url_names_the_status_lists(void **state)
{
    fixture *fx = *state;
    char uri[PUB_URI_MAX];
    snprintf(fx->c.public_url, sizeof(fx->c.public_url), "https://signd.example");
    pub_status_list_uri(&fx->c, 7, uri);
    assert_string_equal(uri, "https://signd.example/v1/status-lists/7");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_the_jwks_follows_create_rotate_and_revoke),
        T(test_the_jwks_etag_moves_with_its_content_only),
        T(test_the_revocation_list_counts_every_revocation_in_order),
        T(test_a_delta_further_back_than_64_revocations_is_the_full_list),
        T(test_the_feed_is_signed_by_the_publication_key_and_follows_the_sequence),
        T(test_a_spent_budget_serves_the_copy_held_and_refuses_what_has_none),
        T(test_a_keeper_that_cannot_sign_is_reported),
        T(test_a_status_list_has_the_bit_of_each_revoked_token),
        T(test_the_public_url_names_the_status_lists),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
