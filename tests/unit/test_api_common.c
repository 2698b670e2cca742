/*
 * test_api_common: what every API handler parses and writes with (api/common.c). Strict body
 * parsing (an object of known fields; empty, too deep, duplicate keys, invalid UTF-8, NUL
 * bytes and trailing bytes each refused with their own code), the typed field readers, the
 * response writers (compact JSON, header lines that never go out half written, the error
 * message) and the JSON form of a key row.
 */
#include "api/api.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const allowed[] = {"a", "b", NULL};

/* api_parse_object on text: its result, with *out and r's message. */
static api_err parse(const char *text, size_t len, int empty_ok, json_t **out, api_resp *r)
{
    api_req q = {.body = text, .body_len = len};
    memset(r, 0, sizeof(*r));
    return api_parse_object(&q, r, allowed, empty_ok, out);
}

static api_err parse_str(const char *text, json_t **out, api_resp *r)
{
    return parse(text, text ? strlen(text) : 0, 0, out, r);
}

static void test_an_object_of_known_fields_is_parsed(void **state)
{
    (void)state;
    json_t *j;
    api_resp r;
    assert_int_equal(parse_str("{\"a\":1,\"b\":\"x\"}", &j, &r), API_OK);
    assert_int_equal(json_integer_value(json_object_get(j, "a")), 1);
    json_decref(j);
    assert_int_equal(parse_str("  {}  ", &j, &r), API_OK);
    assert_int_equal(json_object_size(j), 0);
    json_decref(j);
}

static void test_an_empty_body_is_an_empty_object_only_when_allowed(void **state)
{
    (void)state;
    json_t *j;
    api_resp r;
    assert_int_equal(parse(NULL, 0, 1, &j, &r), API_OK);
    assert_true(json_is_object(j) && json_object_size(j) == 0);
    json_decref(j);
    assert_int_equal(parse("", 0, 0, &j, &r), API_ERR_INVALID_JSON);
    assert_null(j);
    assert_string_equal(r.errmsg, "a JSON object body is required");
}

static void test_each_malformed_body_gets_its_own_code(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t len; /* 0: strlen */
        api_err e;
    } bad[] = {
        {"{", 0, API_ERR_INVALID_JSON},
        {"{\"a\":1} x", 0, API_ERR_INVALID_JSON},
        {"{\"a\":1}{}", 0, API_ERR_INVALID_JSON},
        {"{'a':1}", 0, API_ERR_INVALID_JSON},
        {"{\"a\":1,\"a\":2}", 0, API_ERR_DUPLICATE_KEY},
        {"{\"a\":\"\xff\"}", 0, API_ERR_INVALID_UTF8},
        {"{\"a\":\"\xc0\xaf\"}", 0, API_ERR_INVALID_UTF8},
        {"{\"a\":\"x\\u0000y\"}", 0, API_ERR_INVALID_JSON},
        {"{\"a\":1}\0", 8, API_ERR_INVALID_JSON},
        {"[]", 0, API_ERR_NOT_AN_OBJECT},
        {"\"a\"", 0, API_ERR_NOT_AN_OBJECT},
        {"1", 0, API_ERR_NOT_AN_OBJECT},
        {"null", 0, API_ERR_NOT_AN_OBJECT},
        {"{\"c\":1}", 0, API_ERR_UNKNOWN_FIELD},
        {"{\"a\":1,\"A\":1}", 0, API_ERR_UNKNOWN_FIELD},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j;
        api_resp r;
        size_t len = bad[i].len ? bad[i].len : strlen(bad[i].text);
        api_err e = parse(bad[i].text, len, 0, &j, &r);
        if (e != bad[i].e)
            fail_msg("body %zu: %s, want %s (%s)", i, api_err_table(e)->code,
                     api_err_table(bad[i].e)->code, r.errmsg);
        assert_null(j);
        assert_true(r.errmsg[0] != '\0');
    }
}

static void test_an_unknown_field_is_named_and_bounded(void **state)
{
    (void)state;
    json_t *j;
    api_resp r;
    assert_int_equal(parse_str("{\"secret\":1}", &j, &r), API_ERR_UNKNOWN_FIELD);
    assert_string_equal(r.errmsg, "unknown field 'secret'");
    char body[512];
    snprintf(body, sizeof(body), "{\"%0200d\":1}", 0);
    assert_int_equal(parse_str(body, &j, &r), API_ERR_UNKNOWN_FIELD);
    assert_int_equal(strlen(r.errmsg), strlen("unknown field ''") + 64);
}

/* The depth is counted over the whole body, outside strings, before jansson sees it. */
static void test_json_nests_at_most_32_levels(void **state)
{
    (void)state;
    char body[256];
    json_t *j;
    api_resp r;
    for (int depth = API_JSON_DEPTH_MAX; depth <= API_JSON_DEPTH_MAX + 1; depth++) {
        size_t n = 0;
        n += (size_t)snprintf(body + n, sizeof(body) - n, "{\"a\":");
        for (int d = 1; d < depth; d++)
            body[n++] = '[';
        body[n++] = '1';
        for (int d = 1; d < depth; d++)
            body[n++] = ']';
        body[n++] = '}';
        body[n] = '\0';
        api_err e = parse_str(body, &j, &r);
        if (depth <= API_JSON_DEPTH_MAX) {
            assert_int_equal(e, API_OK);
            json_decref(j);
        } else {
            assert_int_equal(e, API_ERR_INVALID_JSON);
            assert_string_equal(r.errmsg, "JSON nests deeper than 32 levels");
        }
    }
    /* Brackets inside strings, escaped quotes included, are not nesting. */
    char str[256] = "{\"a\":\"\\\"";
    size_t at = strlen(str);
    memset(str + at, '[', 100);
    strcpy(str + at + 100, "\"}");
    assert_int_equal(parse_str(str, &j, &r), API_OK);
    json_decref(j);
}

static void test_integer_fields_are_typed_and_bounded(void **state)
{
    (void)state;
    json_t *o =
        json_pack("{s:i, s:s, s:f, s:I}", "n", 5, "s", "5", "f", 5.0, "big", (json_int_t)1 << 40);
    api_resp r;
    memset(&r, 0, sizeof(r));
    int64_t v = -1;
    assert_int_equal(api_get_int(o, "absent", 0, 10, &v, &r), API_OK);
    assert_int_equal(v, -1); /* the default stays */
    assert_int_equal(api_get_int(o, "n", 0, 10, &v, &r), API_OK);
    assert_int_equal(v, 5);
    assert_int_equal(api_get_int(o, "n", 5, 5, &v, &r), API_OK);
    assert_int_equal(api_get_int(o, "n", 6, 10, &v, &r), API_ERR_OUT_OF_RANGE);
    assert_string_equal(r.errmsg, "'n' must be between 6 and 10");
    assert_int_equal(api_get_int(o, "n", 0, 4, &v, &r), API_ERR_OUT_OF_RANGE);
    assert_int_equal(api_get_int(o, "s", 0, 10, &v, &r), API_ERR_WRONG_TYPE);
    assert_string_equal(r.errmsg, "'s' must be an integer");
    assert_int_equal(api_get_int(o, "f", 0, 10, &v, &r), API_ERR_WRONG_TYPE);
    assert_int_equal(api_get_int(o, "big", 0, INT32_MAX, &v, &r), API_ERR_OUT_OF_RANGE);
    assert_int_equal(v, 5); /* untouched by a refusal */
    json_decref(o);
}

static void test_string_fields_are_typed_and_bounded(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:s, s:i, s:n}", "s", "four", "n", 4, "z");
    api_resp r;
    memset(&r, 0, sizeof(r));
    const char *v = "default";
    assert_int_equal(api_get_string(o, "absent", 10, &v, &r), API_OK);
    assert_string_equal(v, "default");
    assert_int_equal(api_get_string(o, "s", 4, &v, &r), API_OK);
    assert_string_equal(v, "four");
    assert_int_equal(api_get_string(o, "s", 3, &v, &r), API_ERR_OUT_OF_RANGE);
    assert_string_equal(r.errmsg, "'s' is longer than 3 bytes");
    assert_int_equal(api_get_string(o, "n", 10, &v, &r), API_ERR_WRONG_TYPE);
    assert_string_equal(r.errmsg, "'n' must be a string");
    assert_int_equal(api_get_string(o, "z", 10, &v, &r), API_ERR_WRONG_TYPE);
    json_decref(o);
}

static void test_a_response_is_compact_json_with_its_status(void **state)
{
    (void)state;
    api_resp r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(api_json(&r, 201, json_pack("{s:i, s:[i,i]}", "a", 1, "b", 2, 3)), API_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "{\"a\":1,\"b\":[2,3]}");
    assert_int_equal(r.len, strlen(r.body));
    /* A second document replaces the first. */
    assert_int_equal(api_json(&r, 200, json_object()), API_OK);
    assert_string_equal(r.body, "{}");
    api_resp_free(&r);
    /* No document (out of memory upstream): an internal error, not a crash. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(api_json(&r, 200, NULL), API_ERR_INTERNAL);
    assert_string_equal(r.errmsg, "out of memory");
}

static void test_header_lines_are_appended_whole_or_not_at_all(void **state)
{
    (void)state;
    api_resp r;
    memset(&r, 0, sizeof(r));
    api_header(&r, "ETag: \"%d\"", 7);
    api_header(&r, "Cache-Control: max-age=%u", 60u);
    assert_string_equal(r.headers, "ETag: \"7\"\r\nCache-Control: max-age=60\r\n");
    char big[API_HEADERS_MAX];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    api_header(&r, "X-Big: %s", big);
    assert_string_equal(r.headers, "ETag: \"7\"\r\nCache-Control: max-age=60\r\n");
    /* Filling to the last byte: a line that would leave no room for its CRLF is dropped. */
    size_t used = strlen(r.headers);
    size_t room = sizeof(r.headers) - used;
    big[room - 2 - strlen("X: ")] = '\0';
    api_header(&r, "X: %s", big);
    assert_int_equal(strlen(r.headers), used);
    big[room - 3 - strlen("X: ")] = '\0';
    api_header(&r, "X: %s", big);
    assert_int_equal(strlen(r.headers), sizeof(r.headers) - 1);
    assert_memory_equal(r.headers + sizeof(r.headers) - 3, "\r\n", 2);
}

static void test_a_failure_keeps_its_error_and_message(void **state)
{
    (void)state;
    api_resp r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(api_fail(&r, API_ERR_INVALID_LABEL, "label %s", "bad"), API_ERR_INVALID_LABEL);
    assert_string_equal(r.errmsg, "label bad");
    char longer[API_ERRMSG_MAX * 2];
    memset(longer, 'm', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    api_fail(&r, API_ERR_BAD_REQUEST, "%s", longer);
    assert_int_equal(strlen(r.errmsg), API_ERRMSG_MAX - 1);
    /* A storage error with no lock wait behind it stays a storage error, no Retry-After. */
    assert_int_equal(api_fail(&r, API_ERR_STORAGE, "disk"), API_ERR_STORAGE);
    assert_string_equal(r.headers, "");
}

static void test_decimals_are_digits_only_and_bounded(void **state)
{
    (void)state;
    uint64_t v = 42;
    assert_int_equal(api_parse_decimal("0", 15, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(api_parse_decimal("999999999999999", 15, &v), 0);
    assert_int_equal(v, 999999999999999ull);
    static const char *const bad[] = {"", "1000000000000000", "-1", "+1", " 1", "1 ", "0x1", "1e3",
                                      "١"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        if (api_parse_decimal(bad[i], 15, &v) != -1)
            fail_msg("'%s' taken as a decimal", bad[i]);
        assert_int_equal(v, 42);
    }
    assert_int_equal(api_parse_decimal(NULL, 15, &v), -1);
}

static reg_key sample_key(reg_state state)
{
    reg_key k;
    memset(&k, 0, sizeof(k));
    for (int i = 0; i < SK_KID_LEN; i++)
        k.kid.b[i] = (uint8_t)i;
    k.state = state;
    k.bits = 2048;
    snprintf(k.label, sizeof(k.label), "edge");
    k.created_at = 1700000000;
    snprintf(k.n_b64, sizeof(k.n_b64), "nnnn");
    snprintf(k.e_b64, sizeof(k.e_b64), "AQAB");
    return k;
}

static void test_a_key_row_is_its_json_with_the_fields_of_its_state(void **state)
{
    (void)state;
    reg_key k = sample_key(REG_ACTIVE);
    json_t *j = api_key_json(&k);
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"bits\":2048,\"created_at\":1700000000,\"jwk\":{\"alg\":\"RS256\","
                              "\"e\":\"AQAB\",\"kid\":\"000102030405060708090a0b0c0d0e0f\","
                              "\"kty\":\"RSA\",\"n\":\"nnnn\",\"use\":\"sig\"},\"kid\":"
                              "\"000102030405060708090a0b0c0d0e0f\",\"label\":\"edge\",\"state\":"
                              "\"active\"}");
    free(text);
    json_decref(j);

    k = sample_key(REG_REVOKED);
    k.revoked_at = 1700000100;
    k.revocation_seq = 3;
    k.retire_at = 1700000050; /* was retiring: no longer a promise */
    snprintf(k.reason, sizeof(k.reason), "compromised");
    k.has_predecessor = 1;
    memset(k.predecessor.b, 0xab, SK_KID_LEN);
    j = api_key_json(&k);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "revoked");
    assert_int_equal(json_integer_value(json_object_get(j, "revoked_at")), 1700000100);
    assert_int_equal(json_integer_value(json_object_get(j, "revocation_seq")), 3);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "compromised");
    assert_null(json_object_get(j, "retire_at"));
    assert_null(json_object_get(j, "successor"));
    assert_string_equal(json_string_value(json_object_get(j, "predecessor")),
                        "abababababababababababababababab");
    json_decref(j);

    k = sample_key(REG_RETIRING);
    k.retire_at = 1700000050;
    k.has_successor = 1;
    memset(k.successor.b, 0xcd, SK_KID_LEN);
    j = api_key_json(&k);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "retiring");
    assert_int_equal(json_integer_value(json_object_get(j, "retire_at")), 1700000050);
    assert_string_equal(json_string_value(json_object_get(j, "successor")),
                        "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd");
    assert_null(json_object_get(j, "revoked_at"));
    assert_null(json_object_get(j, "reason"));
    assert_null(json_object_get(j, "token_attributes")); /* never read: absent */
    json_decref(j);

    /* What the token holds, as read back: each bit its boolean. */
    k = sample_key(REG_ACTIVE);
    k.token_attrs = SK_ATTR_READ | SK_ATTR_SENSITIVE | SK_ATTR_NEVER_EXTRACTABLE;
    j = api_key_json(&k);
    text = json_dumps(json_object_get(j, "token_attributes"), JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(text, "{\"extractable\":false,\"never_extractable\":true,"
                              "\"sensitive\":true,\"sign_only\":false}");
    free(text);
    json_decref(j);
}

/* The token's refusal of a size is the caller's 400, not a 503 of the token's. */
static void test_a_size_the_token_cannot_make_is_a_400_key_size_unsupported(void **state)
{
    (void)state;
    api_resp r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(api_hsm_error(&r, SK_ERR_KEY_SIZE), API_ERR_KEY_SIZE_UNSUPPORTED);
    assert_int_equal(api_err_table(API_ERR_KEY_SIZE_UNSUPPORTED)->http_status, 400);
    assert_string_equal(api_err_table(API_ERR_KEY_SIZE_UNSUPPORTED)->code, "key_size_unsupported");
    assert_string_equal(r.headers, ""); /* no Retry-After: retrying cannot help */
    memset(&r, 0, sizeof(r));
    assert_int_equal(api_hsm_error(&r, SK_ERR_KEY_WEAK), API_ERR_HSM_UNAVAILABLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_an_object_of_known_fields_is_parsed),
        cmocka_unit_test(test_a_size_the_token_cannot_make_is_a_400_key_size_unsupported),
        cmocka_unit_test(test_an_empty_body_is_an_empty_object_only_when_allowed),
        cmocka_unit_test(test_each_malformed_body_gets_its_own_code),
        cmocka_unit_test(test_an_unknown_field_is_named_and_bounded),
        cmocka_unit_test(test_json_nests_at_most_32_levels),
        cmocka_unit_test(test_integer_fields_are_typed_and_bounded),
        cmocka_unit_test(test_string_fields_are_typed_and_bounded),
        cmocka_unit_test(test_a_response_is_compact_json_with_its_status),
        cmocka_unit_test(test_header_lines_are_appended_whole_or_not_at_all),
        cmocka_unit_test(test_a_failure_keeps_its_error_and_message),
        cmocka_unit_test(test_decimals_are_digits_only_and_bounded),
        cmocka_unit_test(test_a_key_row_is_its_json_with_the_fields_of_its_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
