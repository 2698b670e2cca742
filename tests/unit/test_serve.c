/*
 * test_serve: the pure parts of signd-verify --serve (verifier/serve.h): where the token sits
 * in a URI and which resource path it guards, the canonical-path rule that keeps the daemon
 * reading what the web server serves, path segments, the request's origin, claims as header
 * values, the --serve address, and the status of each reason. No network, no verifier.
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
    static const char *const forbidden[] = {"revoked_kid",    "revoked_token", "wrong_origin",
                                            "wrong_resource", "bad_uri",       "already_used"};
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
