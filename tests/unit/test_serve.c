/*
 * test_serve: the pure parts of signd-verify --serve (verifier/serve.h): where the token sits
 * in a URI and which resource path it guards, the canonical-path rule that keeps the daemon
 * reading what the web server serves, path segments, the request's origin, claims as header
 * values, the --serve address, and the status of each reason; and vsv_check, the whole
 * decision, against a verifier built from documents (vfy_open_documents: keys generated and
 * tokens signed here, no network).
 */
#include "verifier/serve.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "jose/jose.h"

#define KID "0123456789abcdef0123456789abcdef"
#define PUB_KID "signd-publication-v1"
#define ORIGIN_A "https://a.example"
#define ORIGIN_B "https://b.example"
#define TOK "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ2aWRlby0xMjMifQ.c2lnbmF0dXJl"

static vsv_uri_status parse(const char *uri, vsv_target *t)
{
    return vsv_parse_uri(uri, strlen(uri), t);
}

static void assert_span(const char *p, size_t len, const char *want)
{
    assert_int_equal(len, strlen(want));
    assert_memory_equal(p, want, len);
}

static void test_token_in_the_first_segment_leaves_the_rest_as_the_resource_path(void **state)
{
    (void)state;
    vsv_target t;
    assert_int_equal(parse("/" TOK "/video-123/seg0.ts", &t), VSV_URI_OK);
    assert_span(t.token, t.token_len, TOK);
    assert_span(t.path, t.path_len, "/video-123/seg0.ts");
    assert_int_equal(parse("/" TOK, &t), VSV_URI_OK);
    assert_span(t.path, t.path_len, "/");
    assert_int_equal(parse("/" TOK "/v/seg.ts?foo=bar", &t), VSV_URI_OK);
    assert_span(t.path, t.path_len, "/v/seg.ts");
}

static void test_token_parameter_leaves_the_whole_path_as_the_resource_path(void **state)
{
    (void)state;
    vsv_target t;
    assert_int_equal(parse("/video-123/seg0.ts?a=1&token=" TOK "&b=2", &t), VSV_URI_OK);
    assert_span(t.token, t.token_len, TOK);
    assert_span(t.path, t.path_len, "/video-123/seg0.ts");
    /* Only a parameter named exactly token: mytoken= is another. */
    assert_int_equal(parse("/video-123/seg0.ts?mytoken=" TOK, &t), VSV_URI_NO_TOKEN);
}

static void test_no_token_anywhere_is_no_token(void **state)
{
    (void)state;
    vsv_target t;
    assert_int_equal(parse("/video-123/seg0.ts", &t), VSV_URI_NO_TOKEN);
    assert_int_equal(parse("/", &t), VSV_URI_NO_TOKEN);
    assert_int_equal(parse("/video-123/seg0.ts?token=", &t), VSV_URI_NO_TOKEN);
    /* Two dots but an empty part, or a character outside base64url: not a token segment. */
    assert_int_equal(parse("/a..b/seg0.ts", &t), VSV_URI_NO_TOKEN);
    assert_int_equal(parse("/index.m3u8", &t), VSV_URI_NO_TOKEN);
    assert_int_equal(parse("/a.b+c.d/x", &t), VSV_URI_NO_TOKEN);
}

static void test_two_tokens_in_one_request_are_bad(void **state)
{
    (void)state;
    vsv_target t;
    assert_int_equal(parse("/" TOK "/v/seg.ts?token=" TOK, &t), VSV_URI_BAD);
    assert_int_equal(parse("/v/seg.ts?token=" TOK "&token=" TOK, &t), VSV_URI_BAD);
}

static void test_paths_the_server_would_read_differently_are_bad(void **state)
{
    (void)state;
    vsv_target t;
    static const char *const bad[] = {
        "/" TOK "/video-123/../video-456/seg0.ts",
        "/" TOK "/video-123/./seg0.ts",
        "/" TOK "/video-123/%2e%2e/video-456/seg0.ts",
        "/" TOK "/video-123/%2E%2E/video-456/seg0.ts",
        "/" TOK "/video-123%2f..%2fvideo-456/seg0.ts",
        "/" TOK "/video-123%5C../seg0.ts",
        "/" TOK "/video-123%00/seg0.ts",
        "/" TOK "//video-456/seg0.ts",
        "/" TOK "/video-123\\..\\video-456/seg0.ts",
        "/" TOK "/video 123/seg0.ts",
        "/" TOK "/video-123/seg0.ts%",
        "/" TOK "/..",
        "video-123/seg0.ts?token=" TOK,
        "http://host/" TOK "/video-123/seg0.ts",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parse(bad[i], &t) != VSV_URI_BAD)
            fail_msg("not refused: %s", bad[i]);
    /* Other escapes are names the server decodes the same way whatever we do: fine. */
    assert_int_equal(parse("/" TOK "/video-123/seg%200.ts", &t), VSV_URI_OK);
    /* A trailing '/' is a directory, not an empty segment in the middle. */
    assert_int_equal(parse("/" TOK "/video-123/", &t), VSV_URI_OK);
}

static void test_uri_longer_than_the_bound_is_bad_unread(void **state)
{
    (void)state;
    size_t len = VSV_URI_MAX + 1;
    char *uri = malloc(len + 1);
    assert_non_null(uri);
    memset(uri, 'a', len);
    uri[0] = '/';
    uri[len] = '\0';
    vsv_target t;
    assert_int_equal(vsv_parse_uri(uri, len, &t), VSV_URI_BAD);
    assert_int_equal(vsv_parse_uri(uri, VSV_URI_MAX, &t), VSV_URI_NO_TOKEN);
    free(uri);
}

static void test_path_segment_counts_from_one_after_the_token(void **state)
{
    (void)state;
    const char *seg;
    size_t n;
    const char *p = "/video-123/720p/seg0.ts";
    assert_true(vsv_path_segment(p, strlen(p), 1, &seg, &n));
    assert_span(seg, n, "video-123");
    assert_true(vsv_path_segment(p, strlen(p), 2, &seg, &n));
    assert_span(seg, n, "720p");
    assert_true(vsv_path_segment(p, strlen(p), 3, &seg, &n));
    assert_span(seg, n, "seg0.ts");
    assert_false(vsv_path_segment(p, strlen(p), 4, &seg, &n));
    assert_false(vsv_path_segment(p, strlen(p), 0, &seg, &n));
    assert_true(vsv_path_segment("/", 1, 1, &seg, &n));
    assert_int_equal(n, 0);
    assert_false(vsv_path_segment("/", 1, 2, &seg, &n));
}

static void test_request_origin_is_origin_then_referer_then_the_fallback(void **state)
{
    (void)state;
    char buf[VSV_ORIGIN_MAX + 1];
    assert_string_equal(
        vsv_request_origin("https://a.example", "https://b.example/x", NULL, buf, sizeof(buf)),
        "https://a.example");
    assert_string_equal(vsv_request_origin(NULL, "https://b.example:8443/watch?v=1",
                                           "https://c.example", buf, sizeof(buf)),
                        "https://b.example:8443");
    assert_string_equal(vsv_request_origin(NULL, "https://b.example?x", NULL, buf, sizeof(buf)),
                        "https://b.example");
    assert_string_equal(vsv_request_origin(NULL, NULL, "https://c.example", buf, sizeof(buf)),
                        "https://c.example");
    assert_null(vsv_request_origin(NULL, NULL, NULL, buf, sizeof(buf)));
}

static void test_unusable_origin_headers_become_an_origin_that_matches_nothing(void **state)
{
    (void)state;
    char buf[VSV_ORIGIN_MAX + 1];
    char longer[VSV_ORIGIN_MAX + 32];
    memset(longer, 'a', sizeof(longer) - 1);
    memcpy(longer, "https://", 8);
    longer[sizeof(longer) - 1] = '\0';
    assert_string_equal(vsv_request_origin(longer, NULL, NULL, buf, sizeof(buf)), "");
    assert_string_equal(vsv_request_origin(NULL, longer, NULL, buf, sizeof(buf)), "");
    assert_string_equal(vsv_request_origin(NULL, "not a url", NULL, buf, sizeof(buf)), "");
    assert_string_equal(vsv_request_origin("null", NULL, NULL, buf, sizeof(buf)), "null");
}

static void test_claims_become_header_values_only_when_safe(void **state)
{
    (void)state;
    char buf[VSV_HEADER_VALUE_MAX + 1];
    json_t *c =
        json_pack("{s:s, s:I, s:s, s:s, s:b}", "sub", "video-123", "exp", (json_int_t)1700003600,
                  "evil", "a\r\nSet-Cookie: x=1", "utf8", "vid\xc3\xa9o", "flag", 1);
    assert_non_null(c);
    assert_true(vsv_claim_header(c, "sub", buf, sizeof(buf)));
    assert_string_equal(buf, "video-123");
    assert_true(vsv_claim_header(c, "exp", buf, sizeof(buf)));
    assert_string_equal(buf, "1700003600");
    assert_false(vsv_claim_header(c, "evil", buf, sizeof(buf)));
    assert_string_equal(buf, "");
    assert_false(vsv_claim_header(c, "utf8", buf, sizeof(buf)));
    assert_false(vsv_claim_header(c, "flag", buf, sizeof(buf)));
    assert_false(vsv_claim_header(c, "absent", buf, sizeof(buf)));
    /* Longer than the buffer: left out, never cut. */
    char small[4];
    assert_false(vsv_claim_header(c, "sub", small, sizeof(small)));
    json_decref(c);
}

static void test_each_reason_has_its_status(void **state)
{
    (void)state;
    assert_int_equal(vsv_status("ok"), 200);
    static const char *const unauthorized[] = {"missing_token", "malformed",     "alg_not_allowed",
                                               "unknown_kid",   "bad_signature", "expired",
                                               "not_yet_valid"};
    for (size_t i = 0; i < sizeof(unauthorized) / sizeof(unauthorized[0]); i++)
        assert_int_equal(vsv_status(unauthorized[i]), 401);
    static const char *const forbidden[] = {"revoked_kid",    "revoked_token",   "revoked_subject",
                                            "wrong_origin",   "origin_required", "wrong_audience",
                                            "wrong_resource", "bad_uri",         "already_used"};
    for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++)
        assert_int_equal(vsv_status(forbidden[i]), 403);
    assert_int_equal(vsv_status("feed_stale"), 503);
    assert_int_equal(vsv_status("redeem_failed"), 503);
    assert_int_equal(vsv_status("something_new"), 503);
    /* Every name the library has gets a deliberate status, not the fallback by accident. */
    for (int r = VFY_OK; r <= VFY_REDEEM_FAILED; r++) {
        const char *name = vfy_result_name((vfy_result)r);
        int s = vsv_status(name);
        if (r == VFY_FEED_STALE || r == VFY_REDEEM_FAILED)
            assert_int_equal(s, 503);
        else if (s == 503)
            fail_msg("%s falls through to 503", name);
    }
}

static void test_serve_address_is_host_and_port_only(void **state)
{
    (void)state;
    assert_true(vsv_addr_ok("127.0.0.1:8081"));
    assert_true(vsv_addr_ok("[::1]:8081"));
    assert_true(vsv_addr_ok("0.0.0.0:1"));
    assert_false(vsv_addr_ok("8081"));            /* no host: would be every interface */
    assert_false(vsv_addr_ok("127.0.0.1:"));      /* no port */
    assert_false(vsv_addr_ok("127.0.0.1:0"));     /* port 0 */
    assert_false(vsv_addr_ok("127.0.0.1:65536")); /* beyond the range */
    assert_false(vsv_addr_ok("127.0.0.1:443s"));  /* CivetWeb's TLS flag */
    assert_false(vsv_addr_ok("127.0.0.1:80,127.0.0.1:81"));
    assert_false(vsv_addr_ok("localhost:8081"));
    assert_false(vsv_addr_ok("[::1:8081"));
}

/* ---- vsv_check against a verifier from documents ------------------------------------- */

static struct {
    EVP_PKEY *client, *pub;
    vfy *v;
} fx;

static size_t bn_bytes(const EVP_PKEY *k, const char *name, uint8_t *out)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(k, name, &bn), 1);
    size_t len = (size_t)BN_bn2bin(bn, out);
    BN_free(bn);
    return len;
}

static json_t *jwk_of(const EVP_PKEY *k, const char *kid, const char *use)
{
    uint8_t n[JOSE_RSA_MAX], e[JOSE_RSA_MAX];
    size_t n_len = bn_bytes(k, OSSL_PKEY_PARAM_RSA_N, n);
    size_t e_len = bn_bytes(k, OSSL_PKEY_PARAM_RSA_E, e);
    json_t *j = jose_jwk_rsa(n, n_len, e, e_len, kid);
    assert_non_null(j);
    json_object_set_new(j, "use", json_string(use));
    return j;
}

/* header.payload.RS256-signature by key, malloc'd. */
static char *jws_make(const char *hdr, const char *payload, EVP_PKEY *key)
{
    size_t hlen = strlen(hdr), plen = strlen(payload), slen, total;
    size_t cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX);
    char *jws = malloc(cap);
    assert_non_null(jws);
    assert_int_equal(jose_jws_begin(hdr, hlen, payload, plen, jws, cap, &slen), 0);
    uint8_t sig[JOSE_SIG_MAX];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, key, NULL), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, (const uint8_t *)jws, slen), 1);
    EVP_MD_CTX_free(md);
    assert_int_equal(jose_jws_finish(jws, cap, slen, sig, sig_len, &total), 0);
    return jws;
}

/* A token of KID with sub (and origin when not NULL), valid for an hour. */
static char *token_for(const char *sub, const char *origin)
{
    long now = (long)time(NULL);
    json_t *c = json_pack("{s:s, s:I, s:I, s:s}", "sub", sub, "iat", (json_int_t)now, "exp",
                          (json_int_t)(now + 3600), "jti", "00112233445566778899aabbccddeeff");
    if (origin != NULL)
        json_object_set_new(c, "origin", json_string(origin));
    char *claims = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    char *t =
        jws_make("{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"" KID "\"}", claims, fx.client);
    free(claims);
    return t;
}

static int group_setup(void **state)
{
    (void)state;
    fx.client = EVP_RSA_gen(2048);
    fx.pub = EVP_RSA_gen(2048);
    assert_non_null(fx.client);
    assert_non_null(fx.pub);
    json_t *keys = json_pack("[o, o]", jwk_of(fx.client, KID, "sig"),
                             jwk_of(fx.pub, PUB_KID, "kid-revocation"));
    json_t *doc = json_pack("{s:o}", "keys", keys);
    char *jwks = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    long now = (long)time(NULL);
    json_t *fp = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:[]}", "iss", "https://signd.test",
                           "seq", (json_int_t)0, "after", (json_int_t)0, "iat", (json_int_t)now,
                           "exp", (json_int_t)(now + 900), "ttl", (json_int_t)60, "revoked");
    char *payload = json_dumps(fp, JSON_COMPACT);
    json_decref(fp);
    char *feed =
        jws_make("{\"alg\":\"RS256\",\"typ\":\"" VFY_FEED_TYP "\",\"kid\":\"" PUB_KID "\"}",
                 payload, fx.pub);
    free(payload);
    vfy_pubkey pin;
    pin.n_len = bn_bytes(fx.pub, OSSL_PKEY_PARAM_RSA_N, pin.n);
    pin.e_len = bn_bytes(fx.pub, OSSL_PKEY_PARAM_RSA_E, pin.e);
    vfy_config cfg;
    vfy_config_default(&cfg);
    char err[256];
    vfy_err e = vfy_open_documents(&cfg, &pin, jwks, strlen(jwks), feed, strlen(feed), &fx.v, err,
                                   sizeof(err));
    free(jwks);
    free(feed);
    if (e != VFY_E_OK)
        fail_msg("vfy_open_documents: %s", err);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    vfy_close(fx.v);
    EVP_PKEY_free(fx.client);
    EVP_PKEY_free(fx.pub);
    return 0;
}

/* vsv_check on "/<token><rest>" with the given policy and headers; the answer's reason. */
static const char *check_reason(const char *token, const char *rest, unsigned sub_segment,
                                const char *fallback, const char *origin, const char *referer,
                                int *status)
{
    char uri[VSV_URI_MAX + 1];
    snprintf(uri, sizeof(uri), "/%s%s", token, rest);
    vsv_policy p = {.sub_segment = sub_segment, .fallback = fallback};
    vsv_answer a = vsv_check(fx.v, &p, uri, strlen(uri), origin, referer);
    *status = a.status;
    assert_true((a.status == 200) == (a.claims != NULL));
    json_decref(a.claims);
    return a.reason;
}

static void test_valid_token_for_its_video_is_200(void **state)
{
    (void)state;
    char *t = token_for("video-123", NULL);
    int st;
    assert_string_equal(check_reason(t, "/video-123/seg0.ts", 1, NULL, NULL, NULL, &st), "ok");
    assert_int_equal(st, 200);
    free(t);
}

static void test_token_for_another_video_is_403_wrong_resource(void **state)
{
    (void)state;
    char *t = token_for("video-123", NULL);
    int st;
    assert_string_equal(check_reason(t, "/video-456/seg0.ts", 1, NULL, NULL, NULL, &st),
                        "wrong_resource");
    assert_int_equal(st, 403);
    /* Fewer segments than N: nothing to match, so refused too. */
    assert_string_equal(check_reason(t, "/video-123", 2, NULL, NULL, NULL, &st), "wrong_resource");
    /* A prefix is not the segment: video-12 is not video-123. */
    free(t);
    t = token_for("video-12", NULL);
    assert_string_equal(check_reason(t, "/video-123/seg0.ts", 1, NULL, NULL, NULL, &st),
                        "wrong_resource");
    /* Without --sub-from-path the path is not compared. */
    assert_string_equal(check_reason(t, "/video-123/seg0.ts", 0, NULL, NULL, NULL, &st), "ok");
    free(t);
}

static void test_bound_token_needs_a_matching_request_origin(void **state)
{
    (void)state;
    char *t = token_for("video-123", ORIGIN_A);
    int st;
    const char *rest = "/video-123/seg0.ts";
    assert_string_equal(check_reason(t, rest, 1, NULL, ORIGIN_A, NULL, &st), "ok");
    assert_string_equal(check_reason(t, rest, 1, NULL, NULL, ORIGIN_A "/watch", &st), "ok");
    assert_string_equal(check_reason(t, rest, 1, NULL, ORIGIN_B, NULL, &st), "wrong_origin");
    assert_int_equal(st, 403);
    /* No origin at all: the binding cannot be checked, so it is refused... */
    assert_string_equal(check_reason(t, rest, 1, NULL, NULL, NULL, &st), "origin_required");
    assert_int_equal(st, 403);
    /* ... unless the fallback stands in, which the request's own origin still overrides. */
    assert_string_equal(check_reason(t, rest, 1, ORIGIN_A, NULL, NULL, &st), "ok");
    assert_string_equal(check_reason(t, rest, 1, ORIGIN_A, ORIGIN_B, NULL, &st), "wrong_origin");
    free(t);
    /* An unbound token plays from anywhere, and from nowhere. */
    t = token_for("video-123", NULL);
    assert_string_equal(check_reason(t, rest, 1, NULL, ORIGIN_B, NULL, &st), "ok");
    assert_string_equal(check_reason(t, rest, 1, NULL, NULL, NULL, &st), "ok");
    free(t);
}

static void test_missing_forged_and_unreadable_requests_are_refused(void **state)
{
    (void)state;
    vsv_policy p = {.sub_segment = 1, .fallback = NULL};
    const char *none = "/video-123/seg0.ts";
    vsv_answer a = vsv_check(fx.v, &p, none, strlen(none), NULL, NULL);
    assert_string_equal(a.reason, "missing_token");
    assert_int_equal(a.status, 401);
    char *t = token_for("video-123", NULL);
    int st;
    assert_string_equal(
        check_reason(t, "/video-123/../video-456/seg0.ts", 1, NULL, NULL, NULL, &st), "bad_uri");
    assert_int_equal(st, 403);
    /* The signature of another payload: flip a character of the signature's middle. */
    size_t n = strlen(t);
    t[n - 10] = t[n - 10] == 'A' ? 'B' : 'A';
    assert_string_equal(check_reason(t, "/video-123/seg0.ts", 1, NULL, NULL, NULL, &st),
                        "bad_signature");
    assert_int_equal(st, 401);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_in_the_first_segment_leaves_the_rest_as_the_resource_path),
        cmocka_unit_test(test_token_parameter_leaves_the_whole_path_as_the_resource_path),
        cmocka_unit_test(test_no_token_anywhere_is_no_token),
        cmocka_unit_test(test_two_tokens_in_one_request_are_bad),
        cmocka_unit_test(test_paths_the_server_would_read_differently_are_bad),
        cmocka_unit_test(test_uri_longer_than_the_bound_is_bad_unread),
        cmocka_unit_test(test_path_segment_counts_from_one_after_the_token),
        cmocka_unit_test(test_request_origin_is_origin_then_referer_then_the_fallback),
        cmocka_unit_test(test_unusable_origin_headers_become_an_origin_that_matches_nothing),
        cmocka_unit_test(test_claims_become_header_values_only_when_safe),
        cmocka_unit_test(test_each_reason_has_its_status),
        cmocka_unit_test(test_serve_address_is_host_and_port_only),
        cmocka_unit_test(test_valid_token_for_its_video_is_200),
        cmocka_unit_test(test_token_for_another_video_is_403_wrong_resource),
        cmocka_unit_test(test_bound_token_needs_a_matching_request_origin),
        cmocka_unit_test(test_missing_forged_and_unreadable_requests_are_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
