/*
 * test_kproto: the keeper protocol's encoders and decoders (kproto.h), with no token and no
 * socket. Every message a decoder sees is copied into a heap buffer of exactly its length,
 * so under the ASan build (make SANITIZE=1 build/asan/tests/test_kproto) a read one byte
 * past a message fails the test. The randomized test uses a fixed seed: a failure repeats.
 */
#include "appliance/kproto/kproto.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALL_OPS_FIRST KPP_OP_FIRST
#define ALL_OPS_LAST KPP_OP_LAST

static uint8_t scratch[KPP_MSG_MAX + 64]; /* encoders' output */
static uint8_t reenc[KPP_MSG_MAX];        /* re-encodings */

/* ---- helpers ---------------------------------------------------------------------------- */

static sk_kid make_kid(uint8_t seed)
{
    sk_kid k;
    for (int i = 0; i < SK_KID_LEN; i++)
        k.b[i] = (uint8_t)(seed * 31 + i * 7 + 1);
    return k;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Writes a header with every field chosen by the caller; returns KPP_HDR_LEN. */
static size_t raw_header(uint8_t *buf, uint8_t magic, uint8_t version, uint16_t op, uint32_t status,
                         uint32_t body_len)
{
    buf[0] = magic;
    buf[1] = version;
    put16(buf + 2, op);
    put32(buf + 4, status);
    put32(buf + 8, body_len);
    return KPP_HDR_LEN;
}

/* A well-formed header followed by body_len bytes of body (copied from body, or zeros). */
static size_t raw_message(uint8_t *buf, uint16_t op, uint32_t status, const void *body,
                          size_t body_len)
{
    raw_header(buf, KPP_MAGIC, KPP_VERSION, op, status, (uint32_t)body_len);
    if (body != NULL)
        memcpy(buf + KPP_HDR_LEN, body, body_len);
    else
        memset(buf + KPP_HDR_LEN, 0, body_len);
    return KPP_HDR_LEN + body_len;
}

/* A heap copy of exactly len bytes (at least one byte allocated so len 0 has a pointer). */
static uint8_t *exact_copy(const uint8_t *src, size_t len)
{
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    if (len)
        memcpy(p, src, len);
    return p;
}

/* Decodes the len bytes of msg as a request from an exact-size heap copy. */
static uint32_t decode_req(const uint8_t *msg, size_t len, kpp_request *r, uint16_t *echo)
{
    uint8_t *copy = exact_copy(msg, len);
    uint32_t st = kpp_decode_request(copy, len, r, echo);
    if (st == 0 && r->msg != NULL) {
        /* r->msg points into the copy: rebase it onto msg before the copy goes. */
        r->msg = msg + (r->msg - copy);
    }
    free(copy);
    return st;
}

/* Asserts that the request refuses with status want and echoes op want_echo. */
#define assert_request_refused(msg, len, want, want_echo)                                          \
    do {                                                                                           \
        kpp_request r_;                                                                            \
        uint16_t echo_ = 0xdead;                                                                   \
        uint32_t st_ = decode_req((msg), (len), &r_, &echo_);                                      \
        if (st_ != (uint32_t)(want) || echo_ != (uint16_t)(want_echo))                             \
            fail_msg("got status %u (%s) echo %u, want %u (%s) echo %u", st_,                      \
                     kpp_status_name(st_), echo_, (unsigned)(want),                                \
                     kpp_status_name((uint32_t)(want)), (unsigned)(want_echo));                    \
    } while (0)

/* Decodes the len bytes of msg as a reply to op from an exact-size heap copy; r->body is
 * rebased onto msg. */
static uint32_t decode_rep(const uint8_t *msg, size_t len, kpp_op op, kpp_reply *r)
{
    uint8_t *copy = exact_copy(msg, len);
    uint32_t st = kpp_decode_reply(copy, len, op, r);
    if (st == 0)
        r->body = msg + (r->body - copy);
    free(copy);
    return st;
}

/* A reply record built by hand, as the body decoders see it. */
static kpp_reply reply_of(kpp_op op, uint32_t status, const uint8_t *body, size_t body_len)
{
    kpp_reply r = {.op = op, .status = status, .body = body, .body_len = body_len};
    return r;
}

static sk_pubkey sample_pubkey(unsigned bits)
{
    sk_pubkey p;
    memset(&p, 0, sizeof(p));
    p.bits = bits;
    p.n_len = bits / 8;
    for (size_t i = 0; i < p.n_len; i++)
        p.n[i] = (uint8_t)(0x80 + i * 13);
    p.e[0] = 0x01;
    p.e[1] = 0x00;
    p.e[2] = 0x01;
    p.e_len = 3;
    return p;
}

/* ---- request round trips ---------------------------------------------------------------- */

static void test_sign_request_round_trips_kid_and_message(void **state)
{
    (void)state;
    sk_kid kid = make_kid(1);
    const char *msg = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0";
    size_t n = kpp_encode_sign(scratch, sizeof(scratch), &kid, msg, strlen(msg));
    assert_int_equal(n, KPP_HDR_LEN + SK_KID_LEN + strlen(msg));

    kpp_request r;
    uint16_t echo = 0;
    assert_int_equal(decode_req(scratch, n, &r, &echo), 0);
    assert_int_equal(r.op, KPP_OP_SIGN);
    assert_int_equal(echo, KPP_OP_SIGN);
    assert_true(r.has_kid);
    assert_memory_equal(r.kid.b, kid.b, SK_KID_LEN);
    assert_int_equal(r.msg_len, strlen(msg));
    assert_memory_equal(r.msg, msg, strlen(msg));
    assert_ptr_equal(r.msg, scratch + KPP_HDR_LEN + SK_KID_LEN); /* points into the buffer */

    /* An empty message is a valid SIGN (and msg may then be NULL). */
    n = kpp_encode_sign(scratch, sizeof(scratch), &kid, NULL, 0);
    assert_int_equal(n, KPP_HDR_LEN + SK_KID_LEN);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.op, KPP_OP_SIGN);
    assert_int_equal(r.msg_len, 0);
    assert_memory_equal(r.kid.b, kid.b, SK_KID_LEN);
}

static void test_generate_request_round_trips_each_allowed_size(void **state)
{
    (void)state;
    const unsigned sizes[] = {2048, 3072, 4096};
    for (size_t i = 0; i < 3; i++) {
        sk_kid kid = make_kid((uint8_t)(10 + i));
        size_t n = kpp_encode_generate(scratch, sizeof(scratch), &kid, sizes[i]);
        assert_int_equal(n, KPP_HDR_LEN + 20);
        kpp_request r;
        assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
        assert_int_equal(r.op, KPP_OP_GENERATE);
        assert_int_equal(r.bits, sizes[i]);
        assert_true(r.has_kid);
        assert_memory_equal(r.kid.b, kid.b, SK_KID_LEN);
    }
}

static void test_destroy_requests_round_trip_the_kid_and_the_retired_op_3_is_unknown(void **state)
{
    (void)state;
    const kpp_op ops[] = {KPP_OP_DESTROY};
    /* Op 3 (PUBLIC_KEY until it was removed): no encoder makes it, no decoder takes it. */
    sk_kid k3 = make_kid(3);
    assert_int_equal(kpp_encode_kid_op(scratch, sizeof(scratch), (kpp_op)KPP_OP_RETIRED, &k3), 0);
    size_t n3 = raw_message(scratch, KPP_OP_RETIRED, 0, k3.b, SK_KID_LEN);
    assert_request_refused(scratch, n3, KPP_ERR_UNKNOWN_OP, KPP_OP_RETIRED);
    kpp_reply r3;
    n3 = kpp_encode_status(scratch, sizeof(scratch), KPP_OP_RETIRED, 0);
    assert_int_equal(decode_rep(scratch, n3, (kpp_op)KPP_OP_RETIRED, &r3), KPP_ERR_UNKNOWN_OP);
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        sk_kid kid = make_kid((uint8_t)(20 + i));
        size_t n = kpp_encode_kid_op(scratch, sizeof(scratch), ops[i], &kid);
        assert_int_equal(n, KPP_HDR_LEN + SK_KID_LEN);
        kpp_request r;
        uint16_t echo = 0;
        assert_int_equal(decode_req(scratch, n, &r, &echo), 0);
        assert_int_equal(r.op, ops[i]);
        assert_int_equal(echo, ops[i]);
        assert_true(r.has_kid);
        assert_memory_equal(r.kid.b, kid.b, SK_KID_LEN);
    }
}

static void test_list_request_round_trips_the_offset(void **state)
{
    (void)state;
    const uint32_t offsets[] = {0, 1, 1024, 0x01020304u, UINT32_MAX};
    for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
        size_t n = kpp_encode_list(scratch, sizeof(scratch), offsets[i]);
        assert_int_equal(n, KPP_HDR_LEN + 4);
        kpp_request r;
        assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
        assert_int_equal(r.op, KPP_OP_LIST);
        assert_int_equal(r.offset, offsets[i]);
        assert_false(r.has_kid);
    }
}

static void test_ping_request_round_trips_with_and_without_a_kid(void **state)
{
    (void)state;
    sk_kid kid = make_kid(30);
    size_t n = kpp_encode_ping(scratch, sizeof(scratch), &kid);
    assert_int_equal(n, KPP_HDR_LEN + 17);
    kpp_request r;
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.op, KPP_OP_PING);
    assert_int_equal(r.has_kid, 1);
    assert_memory_equal(r.kid.b, kid.b, SK_KID_LEN);

    n = kpp_encode_ping(scratch, sizeof(scratch), NULL);
    assert_int_equal(n, KPP_HDR_LEN + 17);
    assert_int_equal(scratch[KPP_HDR_LEN], 0);
    static const uint8_t zero[SK_KID_LEN];
    assert_memory_equal(scratch + KPP_HDR_LEN + 1, zero, SK_KID_LEN);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.op, KPP_OP_PING);
    assert_int_equal(r.has_kid, 0);
    assert_memory_equal(r.kid.b, zero, SK_KID_LEN);
}

static void test_ping_without_a_kid_ignores_the_kid_bytes(void **state)
{
    (void)state;
    uint8_t body[17];
    memset(body, 0xa5, sizeof(body));
    body[0] = 0;
    size_t n = raw_message(scratch, KPP_OP_PING, 0, body, sizeof(body));
    kpp_request r;
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.has_kid, 0);
    static const uint8_t zero[SK_KID_LEN];
    assert_memory_equal(r.kid.b, zero, SK_KID_LEN);
}

static void test_sessions_request_round_trips_with_an_empty_body(void **state)
{
    (void)state;
    size_t n = kpp_encode_sessions(scratch, sizeof(scratch));
    assert_int_equal(n, KPP_HDR_LEN);
    kpp_request r;
    uint16_t echo = 0;
    assert_int_equal(decode_req(scratch, n, &r, &echo), 0);
    assert_int_equal(r.op, KPP_OP_SESSIONS);
    assert_int_equal(echo, KPP_OP_SESSIONS);
}

static void test_audit_pubkey_request_round_trips_with_an_empty_body(void **state)
{
    (void)state;
    size_t n = kpp_encode_audit_pubkey(scratch, sizeof(scratch));
    assert_int_equal(n, KPP_HDR_LEN);
    const uint8_t want[] = {0x4b, 0x01, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(scratch, want, sizeof(want));
    kpp_request r;
    uint16_t echo = 0;
    assert_int_equal(decode_req(scratch, n, &r, &echo), 0);
    assert_int_equal(r.op, KPP_OP_AUDIT_PUBKEY);
    assert_int_equal(echo, KPP_OP_AUDIT_PUBKEY);
    assert_false(r.has_kid); /* the audit key has no kid on the wire */
    assert_null(r.msg);
}

static void test_audit_sign_request_round_trips_the_input(void **state)
{
    (void)state;
    const char *in = "eyJhbGciOiJSUzI1NiJ9.eyJzZXEiOjF9";
    size_t n = kpp_encode_audit_sign(scratch, sizeof(scratch), in, strlen(in));
    assert_int_equal(n, KPP_HDR_LEN + strlen(in));
    const uint8_t want_hdr[] = {0x4b, 0x01, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, (uint8_t)strlen(in)};
    assert_memory_equal(scratch, want_hdr, sizeof(want_hdr));
    assert_memory_equal(scratch + KPP_HDR_LEN, in, strlen(in)); /* no kid: the input only */

    kpp_request r;
    uint16_t echo = 0;
    assert_int_equal(decode_req(scratch, n, &r, &echo), 0);
    assert_int_equal(r.op, KPP_OP_AUDIT_SIGN);
    assert_int_equal(echo, KPP_OP_AUDIT_SIGN);
    assert_false(r.has_kid);
    assert_int_equal(r.msg_len, strlen(in));
    assert_memory_equal(r.msg, in, strlen(in));
    assert_ptr_equal(r.msg, scratch + KPP_HDR_LEN); /* points into the buffer */

    /* The codec bounds the length only; the keeper judges the shape. */
    n = kpp_encode_audit_sign(scratch, sizeof(scratch), "\0", 1);
    assert_int_equal(n, KPP_HDR_LEN + 1);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.msg_len, 1);
    assert_int_equal(r.msg[0], 0);
}

static void test_publish_parts_round_trip_and_a_total_below_the_last_part_is_refused(void **state)
{
    (void)state;
    kpp_request r;
    size_t n = kpp_encode_publish_pubkey(scratch, sizeof(scratch));
    assert_int_equal(n, KPP_HDR_LEN);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.op, KPP_OP_PUBLISH_PUBKEY);

    n = kpp_encode_publish_part(scratch, sizeof(scratch), "abc", 3);
    assert_int_equal(n, KPP_HDR_LEN + 3);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.op, KPP_OP_PUBLISH_PART);
    assert_int_equal(r.msg_len, 3);
    assert_memory_equal(r.msg, "abc", 3);
    /* An empty part carries nothing and is refused both ways. */
    assert_int_equal(kpp_encode_publish_part(scratch, sizeof(scratch), "abc", 0), 0);
    raw_header(scratch, KPP_MAGIC, KPP_VERSION, KPP_OP_PUBLISH_PART, 0, 0);
    assert_int_equal(decode_req(scratch, KPP_HDR_LEN, &r, NULL), KPP_ERR_BAD_BODY);

    n = kpp_encode_publish_sign(scratch, sizeof(scratch), 200000, "xyz", 3);
    assert_int_equal(n, KPP_HDR_LEN + 4 + 3);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.op, KPP_OP_PUBLISH_SIGN);
    assert_int_equal(r.total, 200000);
    assert_int_equal(r.msg_len, 3);
    assert_memory_equal(r.msg, "xyz", 3);
    /* The last part may be empty (the parts before it held everything). */
    n = kpp_encode_publish_sign(scratch, sizeof(scratch), 9, NULL, 0);
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.msg_len, 0);
    /* A total smaller than the last part alone cannot be true. */
    assert_int_equal(kpp_encode_publish_sign(scratch, sizeof(scratch), 2, "xyz", 3), 0);
    n = kpp_encode_publish_sign(scratch, sizeof(scratch), 3, "xyz", 3);
    scratch[KPP_HDR_LEN + 3] = 2; /* total 3 -> 2 */
    assert_int_equal(decode_req(scratch, n, &r, NULL), KPP_ERR_BAD_BODY);
    /* No room for the total at all. */
    raw_header(scratch, KPP_MAGIC, KPP_VERSION, KPP_OP_PUBLISH_SIGN, 0, 3);
    assert_int_equal(decode_req(scratch, KPP_HDR_LEN + 3, &r, NULL), KPP_ERR_BAD_BODY);
    /* The biggest parts fit in one message. */
    static uint8_t big[KPP_BODY_MAX];
    assert_int_equal(kpp_encode_publish_part(scratch, sizeof(scratch), big, KPP_BODY_MAX),
                     KPP_MSG_MAX);
    assert_int_equal(
        kpp_encode_publish_sign(scratch, sizeof(scratch), KPP_BODY_MAX, big, KPP_PART_LAST),
        KPP_MSG_MAX);
    assert_int_equal(
        kpp_encode_publish_sign(scratch, sizeof(scratch), KPP_BODY_MAX, big, KPP_PART_LAST + 1), 0);
}

static void test_audit_sign_accepts_1_to_KPP_AUDIT_SIGN_MAX_bytes_and_refuses_others(void **state)
{
    (void)state;
    static uint8_t in[KPP_AUDIT_SIGN_MAX + 2];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)('A' + i % 26);
    const size_t good[] = {1, 2, 100, KPP_AUDIT_SIGN_MAX - 1, KPP_AUDIT_SIGN_MAX};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        size_t n = kpp_encode_audit_sign(scratch, sizeof(scratch), in, good[i]);
        assert_int_equal(n, KPP_HDR_LEN + good[i]);
        kpp_request r;
        assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
        assert_int_equal(r.msg_len, good[i]);
        assert_memory_equal(r.msg, in, good[i]);
    }
    /* The encoder refuses nothing, one byte too many, and no input. */
    assert_int_equal(kpp_encode_audit_sign(scratch, sizeof(scratch), in, 0), 0);
    assert_int_equal(kpp_encode_audit_sign(scratch, sizeof(scratch), in, KPP_AUDIT_SIGN_MAX + 1),
                     0);
    assert_int_equal(kpp_encode_audit_sign(scratch, sizeof(scratch), in, SIZE_MAX), 0);
    assert_int_equal(kpp_encode_audit_sign(scratch, sizeof(scratch), NULL, 1), 0);
    assert_int_equal(kpp_encode_audit_sign(NULL, sizeof(scratch), in, 1), 0);

    /* So does the decoder, given the messages built by hand. */
    size_t n = raw_message(scratch, KPP_OP_AUDIT_SIGN, 0, NULL, 0);
    assert_request_refused(scratch, n, KPP_ERR_BAD_BODY, KPP_OP_AUDIT_SIGN);
    n = raw_message(scratch, KPP_OP_AUDIT_SIGN, 0, in, KPP_AUDIT_SIGN_MAX + 1);
    assert_request_refused(scratch, n, KPP_ERR_BAD_BODY, KPP_OP_AUDIT_SIGN);
    n = raw_message(scratch, KPP_OP_AUDIT_SIGN, 0, NULL, KPP_SIGN_MAX);
    assert_request_refused(scratch, n, KPP_ERR_BAD_BODY, KPP_OP_AUDIT_SIGN);
    /* Beyond the whole message bound it is oversized, as for every op. */
    n = raw_message(scratch, KPP_OP_AUDIT_SIGN, 0, NULL, KPP_BODY_MAX + 1);
    assert_request_refused(scratch, n, KPP_ERR_OVERSIZED, KPP_OP_AUDIT_SIGN);
    /* And a nonzero status is no request. */
    n = raw_message(scratch, KPP_OP_AUDIT_SIGN, SK_ERR_DEVICE, in, 10);
    assert_request_refused(scratch, n, KPP_ERR_NOT_REQUEST, KPP_OP_AUDIT_SIGN);
    n = raw_message(scratch, KPP_OP_AUDIT_PUBKEY, 1, NULL, 0);
    assert_request_refused(scratch, n, KPP_ERR_NOT_REQUEST, KPP_OP_AUDIT_PUBKEY);
}

static void test_wire_layout_is_big_endian_as_specified(void **state)
{
    (void)state;
    sk_kid kid;
    for (int i = 0; i < SK_KID_LEN; i++)
        kid.b[i] = (uint8_t)i;
    size_t n = kpp_encode_generate(scratch, sizeof(scratch), &kid, 3072);
    const uint8_t want[] = {0x4b, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                            0x14, 0,    1,    2,    3,    4,    5,    6,    7,    8,    9,
                            10,   11,   12,   13,   14,   15,   0x00, 0x00, 0x0c, 0x00};
    assert_int_equal(n, sizeof(want));
    assert_memory_equal(scratch, want, sizeof(want));

    n = kpp_encode_status(scratch, sizeof(scratch), 0x0102, 0x03040506u);
    const uint8_t want_status[] = {0x4b, 0x01, 0x01, 0x02, 0x03, 0x04,
                                   0x05, 0x06, 0x00, 0x00, 0x00, 0x00};
    assert_int_equal(n, sizeof(want_status));
    assert_memory_equal(scratch, want_status, sizeof(want_status));

    sk_key_entry e = {.kid = kid, .has_private = 1, .has_public = 1};
    n = kpp_encode_list_reply(scratch, sizeof(scratch), 0x0a0b0c0du, &e, 1);
    assert_int_equal(n, KPP_HDR_LEN + 8 + 17);
    const uint8_t want_list_head[] = {0x00, 0x00, 0x00, 0x19, 0x0a, 0x0b,
                                      0x0c, 0x0d, 0x00, 0x00, 0x00, 0x01};
    assert_memory_equal(scratch + 8, want_list_head, sizeof(want_list_head));
    assert_int_equal(scratch[n - 1], 0x03);
}

static void test_sign_accepts_KPP_SIGN_MAX_bytes_and_refuses_one_more(void **state)
{
    (void)state;
    sk_kid kid = make_kid(40);
    uint8_t *msg = malloc(KPP_SIGN_MAX + 1);
    assert_non_null(msg);
    for (size_t i = 0; i < KPP_SIGN_MAX + 1; i++)
        msg[i] = (uint8_t)(i * 151);

    size_t n = kpp_encode_sign(scratch, sizeof(scratch), &kid, msg, KPP_SIGN_MAX);
    assert_int_equal(n, KPP_MSG_MAX);
    kpp_request r;
    assert_int_equal(decode_req(scratch, n, &r, NULL), 0);
    assert_int_equal(r.msg_len, KPP_SIGN_MAX);
    assert_memory_equal(r.msg, msg, KPP_SIGN_MAX);

    /* The encoder refuses one more byte, whatever the room. */
    assert_int_equal(kpp_encode_sign(scratch, sizeof(scratch), &kid, msg, KPP_SIGN_MAX + 1), 0);

    /* And so does the decoder, given the message built by hand. */
    n = raw_message(scratch, KPP_OP_SIGN, 0, NULL, SK_KID_LEN + KPP_SIGN_MAX + 1);
    assert_int_equal(n, KPP_MSG_MAX + 1);
    assert_request_refused(scratch, n, KPP_ERR_OVERSIZED, KPP_OP_SIGN);
    free(msg);
}

/* ---- request errors --------------------------------------------------------------------- */

static void test_request_shorter_than_a_header_is_short_and_echoes_0(void **state)
{
    (void)state;
    size_t full = kpp_encode_generate(scratch, sizeof(scratch), &(sk_kid){{0}}, 2048);
    assert_int_not_equal(full, 0);
    for (size_t len = 0; len < KPP_HDR_LEN; len++)
        assert_request_refused(scratch, len, KPP_ERR_SHORT, 0);

    uint16_t echo = 0xdead;
    kpp_request r;
    assert_int_equal(kpp_decode_request(NULL, 0, &r, &echo), KPP_ERR_SHORT);
    assert_int_equal(echo, 0);
    assert_int_equal(kpp_decode_request(NULL, 100, &r, &echo), KPP_ERR_SHORT);
    assert_int_equal(echo, 0);
    assert_int_equal(kpp_decode_request(scratch, 3, NULL, NULL), KPP_ERR_SHORT);
}

static void test_request_longer_than_msg_max_is_oversized_reading_only_the_header(void **state)
{
    (void)state;
    /* A recv with MSG_TRUNC: the buffer holds the header, len is the datagram's length.
     * The heap copy is only KPP_HDR_LEN bytes, so ASan catches any read of the body. */
    const size_t lens[] = {KPP_MSG_MAX + 1, KPP_MSG_MAX + 4096, (size_t)1 << 31, SIZE_MAX};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t hdr[KPP_HDR_LEN];
        raw_header(hdr, KPP_MAGIC, KPP_VERSION, KPP_OP_SIGN, 0, 1000);
        uint8_t *copy = exact_copy(hdr, sizeof(hdr));
        kpp_request r;
        uint16_t echo = 0;
        assert_int_equal(kpp_decode_request(copy, lens[i], &r, &echo), KPP_ERR_OVERSIZED);
        assert_int_equal(echo, KPP_OP_SIGN);
        kpp_reply rep;
        assert_int_equal(kpp_decode_reply(copy, lens[i], KPP_OP_SIGN, &rep), KPP_ERR_OVERSIZED);
        free(copy);
    }
}

static void test_oversized_takes_precedence_over_version_and_op(void **state)
{
    (void)state;
    uint8_t hdr[KPP_HDR_LEN];
    raw_header(hdr, KPP_MAGIC, 9, 0x7777, 5, 0);
    uint8_t *copy = exact_copy(hdr, sizeof(hdr));
    uint16_t echo = 0;
    assert_int_equal(kpp_decode_request(copy, KPP_MSG_MAX + 1, NULL, &echo), KPP_ERR_OVERSIZED);
    assert_int_equal(echo, 0x7777);
    free(copy);
}

static void test_oversized_with_a_bad_magic_echoes_0(void **state)
{
    (void)state;
    uint8_t hdr[KPP_HDR_LEN];
    raw_header(hdr, 'G', KPP_VERSION, KPP_OP_SIGN, 0, 1000);
    uint8_t *copy = exact_copy(hdr, sizeof(hdr));
    uint16_t echo = 0xdead;
    assert_int_equal(kpp_decode_request(copy, KPP_MSG_MAX + 1, NULL, &echo), KPP_ERR_OVERSIZED);
    assert_int_equal(echo, 0);
    free(copy);
}

static void test_bad_magic_is_refused_and_echoes_0(void **state)
{
    (void)state;
    const uint8_t magics[] = {0x00, 'k', 'G', 0x4a, 0x4c, 0xff};
    for (size_t i = 0; i < sizeof(magics); i++) {
        size_t n = kpp_encode_list(scratch, sizeof(scratch), 7);
        scratch[0] = magics[i];
        assert_request_refused(scratch, n, KPP_ERR_MAGIC, 0);
    }
    /* An HTTP request sent to the keeper socket by mistake. */
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_request_refused((const uint8_t *)http, strlen(http), KPP_ERR_MAGIC, 0);
}

static void test_bad_version_is_refused_and_echoes_the_op(void **state)
{
    (void)state;
    const uint8_t versions[] = {0, 2, 0x81, 0xff};
    for (size_t i = 0; i < sizeof(versions); i++) {
        sk_kid kid = make_kid(2);
        size_t n = kpp_encode_kid_op(scratch, sizeof(scratch), KPP_OP_DESTROY, &kid);
        scratch[1] = versions[i];
        assert_request_refused(scratch, n, KPP_ERR_VERSION, KPP_OP_DESTROY);
    }
    /* Version is checked before the op is known. */
    size_t n = raw_header(scratch, KPP_MAGIC, 2, 0x1234, 0, 0);
    assert_request_refused(scratch, n, KPP_ERR_VERSION, 0x1234);
}

static void test_body_length_beyond_the_bytes_is_short(void **state)
{
    (void)state;
    sk_kid kid = make_kid(3);
    size_t n = kpp_encode_kid_op(scratch, sizeof(scratch), KPP_OP_DESTROY, &kid);
    /* Truncated: the field says 16, fewer bytes follow. */
    for (size_t len = KPP_HDR_LEN; len < n; len++)
        assert_request_refused(scratch, len, KPP_ERR_SHORT, KPP_OP_DESTROY);
    /* Or the field says more than there is. */
    put32(scratch + 8, SK_KID_LEN + 1);
    assert_request_refused(scratch, n, KPP_ERR_SHORT, KPP_OP_DESTROY);
    put32(scratch + 8, KPP_BODY_MAX);
    assert_request_refused(scratch, n, KPP_ERR_SHORT, KPP_OP_DESTROY);
}

static void test_body_length_short_of_the_bytes_is_oversized(void **state)
{
    (void)state;
    size_t n = kpp_encode_sessions(scratch, sizeof(scratch));
    scratch[n] = 0;
    assert_request_refused(scratch, n + 1, KPP_ERR_OVERSIZED, KPP_OP_SESSIONS);

    sk_kid kid = make_kid(4);
    n = kpp_encode_kid_op(scratch, sizeof(scratch), KPP_OP_DESTROY, &kid);
    put32(scratch + 8, SK_KID_LEN - 1);
    assert_request_refused(scratch, n, KPP_ERR_OVERSIZED, KPP_OP_DESTROY);
    put32(scratch + 8, 0);
    assert_request_refused(scratch, n, KPP_ERR_OVERSIZED, KPP_OP_DESTROY);
}

static void test_body_length_above_body_max_is_oversized(void **state)
{
    (void)state;
    const uint32_t lens[] = {KPP_BODY_MAX + 1, 0x7fffffffu, UINT32_MAX};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        sk_kid kid = make_kid(5);
        size_t n = kpp_encode_sign(scratch, sizeof(scratch), &kid, "abc", 3);
        put32(scratch + 8, lens[i]);
        assert_request_refused(scratch, n, KPP_ERR_OVERSIZED, KPP_OP_SIGN);
    }
}

static void test_unknown_op_is_refused_and_echoed(void **state)
{
    (void)state;
    const uint16_t ops[] = {0, KPP_OP_RETIRED, KPP_OP_LAST + 1, KPP_OP_LAST + 2, 0x0100, 0xffff};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        size_t n = raw_message(scratch, ops[i], 0, NULL, 0);
        assert_request_refused(scratch, n, KPP_ERR_UNKNOWN_OP, ops[i]);
        n = raw_message(scratch, ops[i], 0, NULL, 16);
        assert_request_refused(scratch, n, KPP_ERR_UNKNOWN_OP, ops[i]);
        /* Unknown op is reported before a nonzero status. */
        n = raw_message(scratch, ops[i], 1, NULL, 0);
        assert_request_refused(scratch, n, KPP_ERR_UNKNOWN_OP, ops[i]);
    }
}

static void test_nonzero_status_in_a_request_is_not_a_request(void **state)
{
    (void)state;
    const uint32_t statuses[] = {1, SK_ERR_KEY_NOT_FOUND, KPP_ERR_SHORT, 0x80000000u, UINT32_MAX};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        size_t n = kpp_encode_list(scratch, sizeof(scratch), 0);
        put32(scratch + 4, statuses[i]);
        assert_request_refused(scratch, n, KPP_ERR_NOT_REQUEST, KPP_OP_LIST);
        /* A reply sent back to the keeper is not a request either. */
        n = kpp_encode_status(scratch, sizeof(scratch), KPP_OP_DESTROY, statuses[i]);
        assert_request_refused(scratch, n, KPP_ERR_NOT_REQUEST, KPP_OP_DESTROY);
    }
}

static void test_each_op_refuses_a_body_of_the_wrong_length(void **state)
{
    (void)state;
    static const struct {
        kpp_op op;
        size_t good;
        size_t bad[6];
        size_t n_bad;
    } cases[] = {
        {KPP_OP_SIGN, 16, {0, 1, 15}, 3},
        {KPP_OP_GENERATE, 20, {0, 16, 19, 21, 24, 100}, 6},
        {KPP_OP_DESTROY, 16, {0, 1, 15, 17, 32}, 5},
        {KPP_OP_KEY_ATTRS, 16, {0, 1, 15, 17, 32}, 5},
        {KPP_OP_TOKEN_INFO, 0, {1, 4, 16}, 3},
        {KPP_OP_LIST, 4, {0, 1, 3, 5, 8}, 5},
        {KPP_OP_PING, 17, {0, 1, 16, 18, 33}, 5},
        {KPP_OP_SESSIONS, 0, {1, 4, 16}, 3},
        {KPP_OP_REOPENS, 0, {1, 4, 16}, 3},
        {KPP_OP_AUDIT_PUBKEY, 0, {1, 4, 16, 17}, 4},
        {KPP_OP_AUDIT_SIGN, 16, {0, KPP_AUDIT_SIGN_MAX + 1, KPP_AUDIT_SIGN_MAX + 17}, 3},
    };
    static uint8_t body[KPP_AUDIT_SIGN_MAX + 17];
    memset(body, 0, sizeof(body));
    put32(body + 16, 2048); /* GENERATE's bits, where a 20-byte body has them */
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t n = raw_message(scratch, (uint16_t)cases[c].op, 0, body, cases[c].good);
        kpp_request r;
        if (decode_req(scratch, n, &r, NULL) != 0)
            fail_msg("op %d: the good length %zu was refused", cases[c].op, cases[c].good);
        for (size_t b = 0; b < cases[c].n_bad; b++) {
            n = raw_message(scratch, (uint16_t)cases[c].op, 0, body, cases[c].bad[b]);
            assert_request_refused(scratch, n, KPP_ERR_BAD_BODY, cases[c].op);
        }
    }
}

static void test_generate_refuses_sizes_other_than_2048_3072_4096(void **state)
{
    (void)state;
    const uint32_t bits[] = {0,         1024, 2047, 2049, 3000, 4095, 4097, 8192, 0x00000800u << 8,
                             UINT32_MAX};
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        uint8_t body[20] = {0};
        put32(body + 16, bits[i]);
        size_t n = raw_message(scratch, KPP_OP_GENERATE, 0, body, sizeof(body));
        assert_request_refused(scratch, n, KPP_ERR_BAD_BODY, KPP_OP_GENERATE);
    }
}

static void test_ping_refuses_has_kid_other_than_0_or_1(void **state)
{
    (void)state;
    const uint8_t flags[] = {2, 3, 0x80, 0xff};
    for (size_t i = 0; i < sizeof(flags); i++) {
        uint8_t body[17] = {0};
        body[0] = flags[i];
        size_t n = raw_message(scratch, KPP_OP_PING, 0, body, sizeof(body));
        assert_request_refused(scratch, n, KPP_ERR_BAD_BODY, KPP_OP_PING);
    }
}

static void test_failed_request_decode_leaves_the_output_zeroed(void **state)
{
    (void)state;
    kpp_request r;
    memset(&r, 0xff, sizeof(r));
    uint8_t body[20] = {0};
    size_t n = raw_message(scratch, KPP_OP_GENERATE, 0, body, sizeof(body)); /* bits 0 */
    assert_int_equal(kpp_decode_request(scratch, n, &r, NULL), KPP_ERR_BAD_BODY);
    kpp_request zero;
    memset(&zero, 0, sizeof(zero));
    assert_int_equal(r.op, 0);
    assert_int_equal(r.has_kid, 0);
    assert_null(r.msg);
    assert_memory_equal(r.kid.b, zero.kid.b, SK_KID_LEN);
}

/* ---- reply round trips ------------------------------------------------------------------ */

static void test_status_reply_round_trips_any_op_and_status(void **state)
{
    (void)state;
    const uint32_t statuses[] = {SK_OK, SK_ERR_KEY_NOT_FOUND, SK_ERR_DEVICE, KPP_ERR_BAD_BODY,
                                 UINT32_MAX};
    for (int op = ALL_OPS_FIRST; op <= ALL_OPS_LAST; op++) {
        if (op == KPP_OP_RETIRED)
            continue;
        for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
            size_t n = kpp_encode_status(scratch, sizeof(scratch), (uint16_t)op, statuses[i]);
            assert_int_equal(n, KPP_HDR_LEN);
            kpp_reply r;
            assert_int_equal(decode_rep(scratch, n, (kpp_op)op, &r), 0);
            assert_int_equal(r.op, op);
            assert_int_equal(r.status, statuses[i]);
            assert_int_equal(r.body_len, 0);
        }
    }
    /* The keeper's answer to an unreadable request echoes op 0. */
    assert_int_equal(kpp_encode_status(scratch, sizeof(scratch), 0, KPP_ERR_MAGIC), KPP_HDR_LEN);
    assert_int_equal(scratch[2], 0);
    assert_int_equal(scratch[3], 0);
}

static void test_sig_reply_round_trips_from_1_to_HSM_SIG_MAX_bytes(void **state)
{
    (void)state;
    uint8_t sig[SK_SIG_MAX];
    for (size_t i = 0; i < sizeof(sig); i++)
        sig[i] = (uint8_t)(i ^ 0x5a);
    const size_t lens[] = {1, 256, 384, SK_SIG_MAX};
    const kpp_op ops[] = {KPP_OP_SIGN, KPP_OP_AUDIT_SIGN};
    for (size_t o = 0; o < 2; o++) {
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            size_t n = kpp_encode_sig_reply(scratch, sizeof(scratch), ops[o], sig, lens[i]);
            assert_int_equal(n, KPP_HDR_LEN + lens[i]);
            assert_int_equal((unsigned)scratch[2] << 8 | scratch[3], ops[o]);
            kpp_reply r;
            assert_int_equal(decode_rep(scratch, n, ops[o], &r), 0);
            assert_int_equal(r.status, 0);
            uint8_t got[SK_SIG_MAX];
            size_t got_len = 0;
            assert_int_equal(kpp_reply_sig(&r, got, &got_len), 0);
            assert_int_equal(got_len, lens[i]);
            assert_memory_equal(got, sig, lens[i]);
            /* A signature answers only the op it was encoded for. */
            assert_int_equal(decode_rep(scratch, n, ops[1 - o], &r), KPP_ERR_BAD_BODY);
        }
    }
}

static void test_pubkey_reply_round_trips_for_generate_and_the_service_keys(void **state)
{
    (void)state;
    const kpp_op ops[] = {KPP_OP_GENERATE, KPP_OP_PUBLISH_PUBKEY, KPP_OP_AUDIT_PUBKEY};
    const unsigned sizes[] = {2048, 3072, 4096};
    for (size_t o = 0; o < 3; o++) {
        for (size_t s = 0; s < 3; s++) {
            sk_pubkey pub = sample_pubkey(sizes[s]);
            size_t n = kpp_encode_pubkey_reply(scratch, sizeof(scratch), ops[o], &pub);
            assert_int_equal(n, KPP_HDR_LEN + 4 + 2 + pub.n_len + 2 + pub.e_len);
            kpp_reply r;
            assert_int_equal(decode_rep(scratch, n, ops[o], &r), 0);
            sk_pubkey got;
            memset(&got, 0xee, sizeof(got));
            assert_int_equal(kpp_reply_pubkey(&r, &got), 0);
            assert_int_equal(got.bits, pub.bits);
            assert_int_equal(got.n_len, pub.n_len);
            assert_memory_equal(got.n, pub.n, pub.n_len);
            assert_int_equal(got.e_len, pub.e_len);
            assert_memory_equal(got.e, pub.e, pub.e_len);
        }
    }
    /* The extremes of the bounds: a 1-byte modulus and an 8-byte exponent. */
    sk_pubkey pub;
    memset(&pub, 0, sizeof(pub));
    pub.bits = 4096;
    pub.n_len = 1;
    pub.n[0] = 0x7f;
    pub.e_len = SK_EXPONENT_MAX;
    memset(pub.e, 0x11, SK_EXPONENT_MAX);
    size_t n = kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_GENERATE, &pub);
    assert_int_not_equal(n, 0);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_GENERATE, &r), 0);
    sk_pubkey got;
    assert_int_equal(kpp_reply_pubkey(&r, &got), 0);
    assert_int_equal(got.n_len, 1);
    assert_int_equal(got.e_len, SK_EXPONENT_MAX);
    assert_memory_equal(got.e, pub.e, SK_EXPONENT_MAX);
}

static void test_generate_reply_carries_the_attributes_byte_and_refuses_a_bad_one(void **state)
{
    (void)state;
    sk_pubkey pub = sample_pubkey(2048);
    const sk_attrs full =
        SK_ATTR_READ | SK_ATTR_SENSITIVE | SK_ATTR_NEVER_EXTRACTABLE | SK_ATTR_SIGN_ONLY;
    size_t n = kpp_encode_generate_reply(scratch, sizeof(scratch), &pub, full);
    assert_int_equal(n, KPP_HDR_LEN + 4 + 2 + pub.n_len + 2 + pub.e_len + 1);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_GENERATE, &r), 0);
    sk_pubkey got;
    sk_attrs a = 0;
    assert_int_equal(kpp_reply_generate(&r, &got, &a), 0);
    assert_int_equal(a, full);
    assert_int_equal(got.n_len, pub.n_len);
    assert_memory_equal(got.n, pub.n, pub.n_len);
    /* A bare pubkey (no attributes byte) is not a GENERATE reply any more. */
    n = kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_GENERATE, &pub);
    assert_int_equal(decode_rep(scratch, n, KPP_OP_GENERATE, &r), 0);
    assert_int_equal(kpp_reply_generate(&r, &got, &a), KPP_ERR_BAD_BODY);
    /* The encoder and the decoder take attribute sets only: read, known bits. */
    assert_int_equal(kpp_encode_generate_reply(scratch, sizeof(scratch), &pub, 0), 0);
    assert_int_equal(kpp_encode_generate_reply(scratch, sizeof(scratch), &pub, full | 0x40), 0);
    assert_int_equal(
        kpp_encode_generate_reply(scratch, KPP_HDR_LEN + 4 + 2 + pub.n_len + 2 + 3, &pub, full),
        0); /* no room for the byte */
    static uint8_t body[KPP_BODY_MAX];
    size_t blen = 4 + 2 + pub.n_len + 2 + pub.e_len;
    const uint8_t bad[] = {0x00, SK_ATTR_SENSITIVE, 0x20, 0xff};
    for (size_t i = 0; i < sizeof(bad); i++) {
        kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_GENERATE, &pub);
        memcpy(body, scratch + KPP_HDR_LEN, blen);
        body[blen] = bad[i];
        kpp_reply hand = reply_of(KPP_OP_GENERATE, 0, body, blen + 1);
        assert_int_equal(kpp_reply_generate(&hand, &got, &a), KPP_ERR_BAD_BODY);
    }
}

static void test_token_info_round_trips_and_its_texts_stay_label_safe(void **state)
{
    (void)state;
    sk_token_info ti = {.rsa_min_bits = 1024,
                        .rsa_max_bits = 3072,
                        .pin_min = 4,
                        .pin_max = 8,
                        .max_sessions = 12,
                        .sign_only_refused = 1};
    snprintf(ti.sign_mechanism, sizeof(ti.sign_mechanism), "rsa_pkcs");
    snprintf(ti.manufacturer, sizeof(ti.manufacturer), "IBM \"quoted\"\\x");
    snprintf(ti.model, sizeof(ti.model), "Soft v3.8");
    size_t n = kpp_encode_token_info(scratch, sizeof(scratch));
    assert_int_equal(n, KPP_HDR_LEN);
    kpp_request q;
    assert_int_equal(decode_req(scratch, n, &q, NULL), 0);
    assert_int_equal(q.op, KPP_OP_TOKEN_INFO);

    n = kpp_encode_token_info_reply(scratch, sizeof(scratch), &ti);
    assert_int_not_equal(n, 0);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_TOKEN_INFO, &r), 0);
    sk_token_info got;
    assert_int_equal(kpp_reply_token_info(&r, &got), 0);
    assert_string_equal(got.sign_mechanism, "rsa_pkcs");
    /* A quote or a backslash never reaches a metric label. */
    assert_string_equal(got.manufacturer, "IBM ?quoted??x");
    assert_string_equal(got.model, "Soft v3.8");
    assert_int_equal(got.rsa_min_bits, 1024);
    assert_int_equal(got.rsa_max_bits, 3072);
    assert_int_equal(got.pin_min, 4);
    assert_int_equal(got.pin_max, 8);
    assert_int_equal(got.max_sessions, 12);
    assert_int_equal(got.sign_only_refused, 1);

    /* The decoder refuses what the encoder never writes. */
    static uint8_t body[KPP_BODY_MAX];
    memcpy(body, r.body, r.body_len);
    size_t blen = r.body_len;
    body[0] = 3; /* no such mechanism */
    kpp_reply hand = reply_of(KPP_OP_TOKEN_INFO, 0, body, blen);
    assert_int_equal(kpp_reply_token_info(&hand, &got), KPP_ERR_BAD_BODY);
    body[0] = 1;
    body[1] = 2; /* refused is 0 or 1 */
    assert_int_equal(kpp_reply_token_info(&hand, &got), KPP_ERR_BAD_BODY);
    body[1] = 0;
    body[22] = '"'; /* a text byte outside the label-safe set */
    assert_int_equal(kpp_reply_token_info(&hand, &got), KPP_ERR_BAD_BODY);
    body[22] = 'I';
    body[22 + 31] = 'x'; /* a byte after the NUL padding began */
    assert_int_equal(kpp_reply_token_info(&hand, &got), KPP_ERR_BAD_BODY);
    body[22 + 31] = 0;
    assert_int_equal(kpp_reply_token_info(&hand, &got), 0);
    hand = reply_of(KPP_OP_TOKEN_INFO, 0, body, blen - 1);
    assert_int_equal(kpp_reply_token_info(&hand, &got), KPP_ERR_BAD_BODY);
    snprintf(ti.sign_mechanism, sizeof(ti.sign_mechanism), "auto");
    assert_int_equal(kpp_encode_token_info_reply(scratch, sizeof(scratch), &ti), 0);
}

static void test_key_attrs_request_and_reply_round_trip(void **state)
{
    (void)state;
    sk_kid kid;
    memset(kid.b, 0x5a, sizeof(kid.b));
    size_t n = kpp_encode_kid_op(scratch, sizeof(scratch), KPP_OP_KEY_ATTRS, &kid);
    assert_int_equal(n, KPP_HDR_LEN + SK_KID_LEN);
    kpp_request q;
    assert_int_equal(decode_req(scratch, n, &q, NULL), 0);
    assert_int_equal(q.op, KPP_OP_KEY_ATTRS);
    assert_memory_equal(q.kid.b, kid.b, SK_KID_LEN);

    const sk_attrs weak = SK_ATTR_READ | SK_ATTR_SENSITIVE;
    n = kpp_encode_attrs_reply(scratch, sizeof(scratch), weak);
    assert_int_equal(n, KPP_HDR_LEN + 1);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_KEY_ATTRS, &r), 0);
    sk_attrs a = 0;
    assert_int_equal(kpp_reply_attrs(&r, &a), 0);
    assert_int_equal(a, weak);
    assert_int_equal(kpp_encode_attrs_reply(scratch, sizeof(scratch), SK_ATTR_SENSITIVE), 0);
    const uint8_t two[2] = {SK_ATTR_READ, 0};
    kpp_reply hand = reply_of(KPP_OP_KEY_ATTRS, 0, two, 2);
    assert_int_equal(kpp_reply_attrs(&hand, &a), KPP_ERR_BAD_BODY);
    hand = reply_of(KPP_OP_KEY_ATTRS, 0, two, 0);
    assert_int_equal(kpp_reply_attrs(&hand, &a), KPP_ERR_BAD_BODY);
    hand = reply_of(KPP_OP_DESTROY, 0, two, 1);
    assert_int_equal(kpp_reply_attrs(&hand, &a), KPP_ERR_BAD_BODY);
}

static void test_list_reply_round_trips_entries_flags_and_total(void **state)
{
    (void)state;
    static sk_key_entry e[KPP_LIST_MAX];
    static sk_key_entry got[KPP_LIST_MAX];
    for (size_t i = 0; i < KPP_LIST_MAX; i++) {
        e[i].kid = make_kid((uint8_t)i);
        e[i].kid.b[0] = (uint8_t)(i >> 8);
        e[i].has_private = (i & 1) != 0;
        e[i].has_public = (i & 2) != 0;
    }
    const size_t counts[] = {0, 1, 4, KPP_LIST_MAX};
    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
        uint32_t total_in = (uint32_t)counts[c] + 5000;
        size_t n = kpp_encode_list_reply(scratch, sizeof(scratch), total_in, e, counts[c]);
        assert_int_equal(n, KPP_HDR_LEN + 8 + 17 * counts[c]);
        kpp_reply r;
        assert_int_equal(decode_rep(scratch, n, KPP_OP_LIST, &r), 0);
        uint32_t total = 0;
        size_t got_n = 99;
        assert_int_equal(kpp_reply_list(&r, got, KPP_LIST_MAX, &total, &got_n), 0);
        assert_int_equal(total, total_in);
        assert_int_equal(got_n, counts[c]);
        for (size_t i = 0; i < got_n; i++) {
            assert_memory_equal(got[i].kid.b, e[i].kid.b, SK_KID_LEN);
            assert_int_equal(got[i].has_private, e[i].has_private);
            assert_int_equal(got[i].has_public, e[i].has_public);
        }
    }
    /* Any nonzero has_private/has_public encodes as the flag. */
    sk_key_entry odd = {.kid = make_kid(9), .has_private = 42, .has_public = -1};
    size_t n = kpp_encode_list_reply(scratch, sizeof(scratch), 1, &odd, 1);
    assert_int_equal(scratch[n - 1], 0x03);
}

static void test_list_reply_copies_at_most_cap_entries_and_reports_the_count(void **state)
{
    (void)state;
    sk_key_entry e[10];
    for (size_t i = 0; i < 10; i++)
        e[i] = (sk_key_entry){.kid = make_kid((uint8_t)i), .has_private = 1, .has_public = 1};
    size_t n = kpp_encode_list_reply(scratch, sizeof(scratch), 10, e, 10);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_LIST, &r), 0);

    sk_key_entry got[5];
    memset(got, 0xcc, sizeof(got));
    sk_key_entry untouched;
    memset(&untouched, 0xcc, sizeof(untouched));
    uint32_t total = 0;
    size_t got_n = 0;
    assert_int_equal(kpp_reply_list(&r, got, 4, &total, &got_n), 0);
    assert_int_equal(total, 10);
    assert_int_equal(got_n, 10); /* what the reply holds; only 4 were copied */
    for (size_t i = 0; i < 4; i++)
        assert_memory_equal(got[i].kid.b, e[i].kid.b, SK_KID_LEN);
    assert_memory_equal(&got[4], &untouched, sizeof(untouched));

    /* cap 0 and a NULL array: counts only. */
    assert_int_equal(kpp_reply_list(&r, NULL, 0, &total, &got_n), 0);
    assert_int_equal(got_n, 10);
}

static void test_u32_reply_round_trips_the_sessions_count(void **state)
{
    (void)state;
    const uint32_t values[] = {0, 1, 256, 0xdeadbeefu, UINT32_MAX};
    const kpp_op ops[] = {KPP_OP_SESSIONS, KPP_OP_REOPENS}; /* the re-open count too */
    for (size_t o = 0; o < 2; o++) {
        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
            size_t n = kpp_encode_u32_reply(scratch, sizeof(scratch), ops[o], values[i]);
            assert_int_equal(n, KPP_HDR_LEN + 4);
            kpp_reply r;
            assert_int_equal(decode_rep(scratch, n, ops[o], &r), 0);
            uint32_t v = 7;
            assert_int_equal(kpp_reply_u32(&r, &v), 0);
            assert_int_equal(v, values[i]);
        }
    }
    /* A REOPENS request has an empty body, like SESSIONS. */
    size_t n = kpp_encode_reopens(scratch, sizeof(scratch));
    assert_int_equal(n, KPP_HDR_LEN);
    kpp_request q;
    assert_int_equal(kpp_decode_request(scratch, n, &q, NULL), 0);
    assert_int_equal(q.op, KPP_OP_REOPENS);
}

/* ---- reply errors ----------------------------------------------------------------------- */

static void test_reply_header_errors_are_those_of_requests(void **state)
{
    (void)state;
    kpp_reply r;
    uint8_t sig[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    size_t n = kpp_encode_sig_reply(scratch, sizeof(scratch), KPP_OP_SIGN, sig, sizeof(sig));

    for (size_t len = 0; len < KPP_HDR_LEN; len++)
        assert_int_equal(decode_rep(scratch, len, KPP_OP_SIGN, &r), KPP_ERR_SHORT);
    for (size_t len = KPP_HDR_LEN; len < n; len++)
        assert_int_equal(decode_rep(scratch, len, KPP_OP_SIGN, &r), KPP_ERR_SHORT);
    assert_int_equal(kpp_decode_reply(NULL, 0, KPP_OP_SIGN, &r), KPP_ERR_SHORT);

    scratch[n] = 0;
    assert_int_equal(decode_rep(scratch, n + 1, KPP_OP_SIGN, &r), KPP_ERR_OVERSIZED);

    put32(scratch + 8, KPP_BODY_MAX + 1);
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), KPP_ERR_OVERSIZED);
    put32(scratch + 8, sizeof(sig));

    scratch[0] = 'k';
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), KPP_ERR_MAGIC);
    scratch[0] = KPP_MAGIC;
    scratch[1] = KPP_VERSION + 1;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), KPP_ERR_VERSION);
    scratch[1] = KPP_VERSION;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), 0);
}

static void test_reply_to_another_op_is_bad_body(void **state)
{
    (void)state;
    for (int sent = 0; sent <= ALL_OPS_LAST + 1; sent++) {
        size_t n = kpp_encode_status(scratch, sizeof(scratch), (uint16_t)sent, SK_OK);
        for (int want = ALL_OPS_FIRST; want <= ALL_OPS_LAST; want++) {
            if (want == KPP_OP_RETIRED)
                continue;
            kpp_reply r;
            uint32_t st = decode_rep(scratch, n, (kpp_op)want, &r);
            assert_int_equal(st, sent == want ? 0 : KPP_ERR_BAD_BODY);
        }
    }
    /* Even an error status does not pass for another op's reply. */
    size_t n = kpp_encode_status(scratch, sizeof(scratch), 0, KPP_ERR_MAGIC);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), KPP_ERR_BAD_BODY);
}

static void test_decoding_a_reply_to_an_unknown_op_is_unknown_op(void **state)
{
    (void)state;
    size_t n = kpp_encode_status(scratch, sizeof(scratch), 0, SK_OK);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, (kpp_op)0, &r), KPP_ERR_UNKNOWN_OP);
    n = kpp_encode_status(scratch, sizeof(scratch), KPP_OP_LAST + 1, SK_OK);
    assert_int_equal(decode_rep(scratch, n, (kpp_op)(KPP_OP_LAST + 1), &r), KPP_ERR_UNKNOWN_OP);
}

static void test_error_reply_keeps_its_status_and_an_empty_body_has_no_ckr(void **state)
{
    (void)state;
    size_t n = kpp_encode_status(scratch, sizeof(scratch), KPP_OP_SIGN, SK_ERR_KEY_NOT_FOUND);
    kpp_reply r;
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), 0);
    assert_int_equal(r.status, SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(r.body_len, 0);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);

    assert_int_equal(r.ckr, 0);
}

static void test_error_reply_round_trips_its_ckr(void **state)
{
    (void)state;
    const uint32_t ckrs[] = {0, 0x30 /* CKR_DEVICE_ERROR */, 0x80000001u, UINT32_MAX};
    for (int op = ALL_OPS_FIRST; op <= ALL_OPS_LAST; op++) {
        if (op == KPP_OP_RETIRED)
            continue;
        for (size_t i = 0; i < sizeof(ckrs) / sizeof(ckrs[0]); i++) {
            size_t n =
                kpp_encode_error(scratch, sizeof(scratch), (uint16_t)op, SK_ERR_DEVICE, ckrs[i]);
            assert_int_equal(n, KPP_HDR_LEN + 4);
            kpp_reply r;
            assert_int_equal(decode_rep(scratch, n, (kpp_op)op, &r), 0);
            assert_int_equal(r.status, SK_ERR_DEVICE);
            assert_int_equal(r.ckr, ckrs[i]);
            /* The CKR is no body for the body decoders: the reply is still an error. */
            uint8_t sig[SK_SIG_MAX];
            size_t sig_len;
            uint32_t v;
            assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
            assert_int_equal(kpp_reply_u32(&r, &v), KPP_ERR_BAD_BODY);
        }
    }
    /* Big-endian on the wire, like every integer. */
    size_t n = kpp_encode_error(scratch, sizeof(scratch), KPP_OP_SIGN, SK_ERR_DEVICE, 0x01020304u);
    const uint8_t want[] = {0x01, 0x02, 0x03, 0x04};
    assert_int_equal(n, KPP_HDR_LEN + sizeof(want));
    assert_memory_equal(scratch + KPP_HDR_LEN, want, sizeof(want));
    /* Status 0 has no CKR to carry; a buffer too small gets nothing. */
    assert_int_equal(kpp_encode_error(scratch, sizeof(scratch), KPP_OP_SIGN, 0, 0x30), 0);
    assert_int_equal(kpp_encode_error(scratch, KPP_HDR_LEN + 3, KPP_OP_SIGN, SK_ERR_DEVICE, 0x30),
                     0);
}

static void test_error_reply_body_other_than_empty_or_a_ckr_is_refused(void **state)
{
    (void)state;
    uint8_t body[16] = {0, 0, 0, 1, 0, 0, 0, 2};
    const size_t lens[] = {1, 3, 5, 8, 16};
    const uint32_t statuses[] = {SK_ERR_DEVICE, KPP_ERR_BAD_BODY, UINT32_MAX};
    for (size_t i = 0; i < 3; i++) {
        for (int op = ALL_OPS_FIRST; op <= ALL_OPS_LAST; op++) {
            if (op == KPP_OP_RETIRED)
                continue;
            for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
                kpp_reply r;
                size_t n = raw_message(scratch, (uint16_t)op, statuses[i], body, lens[l]);
                assert_int_equal(decode_rep(scratch, n, (kpp_op)op, &r), KPP_ERR_BAD_BODY);
            }
        }
    }
}

static void test_destroy_and_ping_successes_must_have_an_empty_body(void **state)
{
    (void)state;
    const kpp_op ops[] = {KPP_OP_DESTROY, KPP_OP_PING};
    for (size_t i = 0; i < 2; i++) {
        kpp_reply r;
        size_t n = raw_message(scratch, (uint16_t)ops[i], 0, NULL, 0);
        assert_int_equal(decode_rep(scratch, n, ops[i], &r), 0);
        n = raw_message(scratch, (uint16_t)ops[i], 0, NULL, 1);
        assert_int_equal(decode_rep(scratch, n, ops[i], &r), KPP_ERR_BAD_BODY);
        n = raw_message(scratch, (uint16_t)ops[i], 0, NULL, 16);
        assert_int_equal(decode_rep(scratch, n, ops[i], &r), KPP_ERR_BAD_BODY);
    }
}

static void test_body_decoders_refuse_a_nonzero_status_or_another_op(void **state)
{
    (void)state;
    uint8_t body[SK_KID_LEN + 8 + 17] = {0};
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    sk_pubkey pub;
    sk_key_entry e[1];
    uint32_t total, v;
    size_t n;

    kpp_reply r = reply_of(KPP_OP_SIGN, 0, body, 4);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), 0);
    r.status = SK_ERR_DEVICE;
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
    r = reply_of(KPP_OP_GENERATE, 0, body, 4);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);

    r = reply_of(KPP_OP_SESSIONS, 0, body, 4);
    assert_int_equal(kpp_reply_u32(&r, &v), 0);
    r.status = 1;
    assert_int_equal(kpp_reply_u32(&r, &v), KPP_ERR_BAD_BODY);
    r = reply_of(KPP_OP_LIST, 0, body, 4);
    assert_int_equal(kpp_reply_u32(&r, &v), KPP_ERR_BAD_BODY);

    r = reply_of(KPP_OP_LIST, 0, body, 8);
    assert_int_equal(kpp_reply_list(&r, e, 1, &total, &n), 0);
    r.status = 1;
    assert_int_equal(kpp_reply_list(&r, e, 1, &total, &n), KPP_ERR_BAD_BODY);
    r = reply_of(KPP_OP_SESSIONS, 0, body, 8);
    assert_int_equal(kpp_reply_list(&r, e, 1, &total, &n), KPP_ERR_BAD_BODY);

    sk_pubkey good = sample_pubkey(2048);
    size_t len = kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_GENERATE, &good);
    r = reply_of(KPP_OP_GENERATE, 0, scratch + KPP_HDR_LEN, len - KPP_HDR_LEN);
    assert_int_equal(kpp_reply_pubkey(&r, &pub), 0);
    r.op = KPP_OP_PUBLISH_PUBKEY;
    assert_int_equal(kpp_reply_pubkey(&r, &pub), 0);
    r.op = (kpp_op)KPP_OP_RETIRED;
    assert_int_equal(kpp_reply_pubkey(&r, &pub), KPP_ERR_BAD_BODY);
    r.op = KPP_OP_SIGN;
    assert_int_equal(kpp_reply_pubkey(&r, &pub), KPP_ERR_BAD_BODY);
    r.op = KPP_OP_GENERATE;
    r.status = SK_ERR_KEY_EXISTS;
    assert_int_equal(kpp_reply_pubkey(&r, &pub), KPP_ERR_BAD_BODY);

    /* The audit ops: AUDIT_SIGN's body is a signature, AUDIT_PUBKEY's a public key. */
    r = reply_of(KPP_OP_AUDIT_SIGN, 0, body, 4);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), 0);
    assert_int_equal(sig_len, 4);
    assert_int_equal(kpp_reply_pubkey(&r, &pub), KPP_ERR_BAD_BODY);
    r.status = SK_ERR_BAD_ARGUMENT;
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
    r = reply_of(KPP_OP_AUDIT_PUBKEY, 0, scratch + KPP_HDR_LEN, len - KPP_HDR_LEN);
    assert_int_equal(kpp_reply_pubkey(&r, &pub), 0);
    assert_int_equal(pub.bits, 2048);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
    r.status = SK_ERR_DEVICE;
    assert_int_equal(kpp_reply_pubkey(&r, &pub), KPP_ERR_BAD_BODY);

    assert_int_equal(kpp_reply_sig(NULL, sig, &sig_len), KPP_ERR_BAD_BODY);
    assert_int_equal(kpp_reply_pubkey(NULL, &pub), KPP_ERR_BAD_BODY);
    assert_int_equal(kpp_reply_list(NULL, e, 1, &total, &n), KPP_ERR_BAD_BODY);
    assert_int_equal(kpp_reply_u32(NULL, &v), KPP_ERR_BAD_BODY);
}

static void test_sig_reply_must_hold_1_to_HSM_SIG_MAX_bytes(void **state)
{
    (void)state;
    static uint8_t body[SK_SIG_MAX + 1];
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    kpp_reply r = reply_of(KPP_OP_SIGN, 0, body, 0);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
    r.body_len = SK_SIG_MAX + 1;
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
    r.body_len = SK_SIG_MAX;
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), 0);
    assert_int_equal(sig_len, SK_SIG_MAX);

    /* The same through the wire. */
    size_t n = raw_message(scratch, KPP_OP_SIGN, 0, body, SK_SIG_MAX + 1);
    assert_int_equal(decode_rep(scratch, n, KPP_OP_SIGN, &r), 0);
    assert_int_equal(kpp_reply_sig(&r, sig, &sig_len), KPP_ERR_BAD_BODY);
}

/* Builds a pubkey body from its fields, with extra trailing bytes; returns its length. */
static size_t pubkey_body(uint8_t *b, uint32_t bits, uint16_t n_len, size_t n_have, uint16_t e_len,
                          size_t e_have, size_t extra)
{
    size_t off = 0;
    put32(b, bits);
    put16(b + 4, n_len);
    off = 6;
    memset(b + off, 0xab, n_have);
    off += n_have;
    put16(b + off, e_len);
    off += 2;
    memset(b + off, 0x01, e_have + extra);
    return off + e_have + extra;
}

static void test_pubkey_reply_refuses_each_field_out_of_bounds(void **state)
{
    (void)state;
    static uint8_t b[1200];
    sk_pubkey pub;
    kpp_reply r;
    size_t len;

#define PUBKEY_IS(want, bits, n_len, n_have, e_len, e_have, extra)                                 \
    do {                                                                                           \
        len = pubkey_body(b, bits, n_len, n_have, e_len, e_have, extra);                           \
        uint8_t *copy_ = exact_copy(b, len);                                                       \
        r = reply_of(KPP_OP_GENERATE, 0, copy_, len);                                              \
        uint32_t st_ = kpp_reply_pubkey(&r, &pub);                                                 \
        free(copy_);                                                                               \
        if (st_ != (uint32_t)(want))                                                               \
            fail_msg("bits %u n_len %u e_len %u extra %u: got %u, want %u", (unsigned)(bits),      \
                     (unsigned)(n_len), (unsigned)(e_len), (unsigned)(extra), st_,                 \
                     (unsigned)(want));                                                            \
    } while (0)

    PUBKEY_IS(0, 2048, 256, 256, 3, 3, 0);
    PUBKEY_IS(0, 4096, SK_MODULUS_MAX, SK_MODULUS_MAX, SK_EXPONENT_MAX, SK_EXPONENT_MAX, 0);
    /* bits 2048..4096 inclusive, not tied to n_len. */
    PUBKEY_IS(0, 2500, 1, 1, 1, 1, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2047, 256, 256, 3, 3, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 4097, 256, 256, 3, 3, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 0, 256, 256, 3, 3, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, UINT32_MAX, 256, 256, 3, 3, 0);
    /* n_len 1..SK_MODULUS_MAX */
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 0, 0, 3, 3, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 4096, SK_MODULUS_MAX + 1, SK_MODULUS_MAX + 1, 3, 3, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 4096, 0xffff, 600, 3, 3, 0);
    /* e_len 1..SK_EXPONENT_MAX */
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 256, 256, 0, 0, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 256, 256, SK_EXPONENT_MAX + 1, SK_EXPONENT_MAX + 1, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 256, 256, 0xffff, 3, 0);
    /* Lengths that disagree with the bytes present, either way. */
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 256, 256, 3, 3, 1);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 256, 256, 3, 2, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 257, 256, 3, 3, 0);
    PUBKEY_IS(KPP_ERR_BAD_BODY, 2048, 255, 256, 3, 3, 0);
#undef PUBKEY_IS

    /* Truncations of a good body, down to nothing. */
    len = pubkey_body(b, 2048, 256, 256, 3, 3, 0);
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = exact_copy(b, cut);
        r = reply_of(KPP_OP_GENERATE, 0, copy, cut);
        assert_int_equal(kpp_reply_pubkey(&r, &pub), KPP_ERR_BAD_BODY);
        free(copy);
    }
}

static void test_list_reply_refuses_bad_counts_lengths_and_flags(void **state)
{
    (void)state;
    static uint8_t b[8 + 17 * (KPP_LIST_MAX + 1) + 1];
    sk_key_entry e[4];
    uint32_t total;
    size_t n;
    kpp_reply r;

    /* n above KPP_LIST_MAX, even with the bytes for it. */
    memset(b, 0, sizeof(b));
    put32(b + 4, KPP_LIST_MAX + 1);
    r = reply_of(KPP_OP_LIST, 0, b, 8 + 17 * (KPP_LIST_MAX + 1));
    assert_int_equal(kpp_reply_list(&r, e, 4, &total, &n), KPP_ERR_BAD_BODY);
    put32(b + 4, UINT32_MAX);
    r.body_len = 8;
    assert_int_equal(kpp_reply_list(&r, e, 4, &total, &n), KPP_ERR_BAD_BODY);

    /* Body length must be exactly 8 + 17n. */
    put32(b + 4, 2);
    const size_t lens[] = {0, 4, 7, 8, 8 + 17, 8 + 33, 8 + 35};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t *copy = exact_copy(b, lens[i]);
        r = reply_of(KPP_OP_LIST, 0, copy, lens[i]);
        assert_int_equal(kpp_reply_list(&r, e, 4, &total, &n), KPP_ERR_BAD_BODY);
        free(copy);
    }
    r = reply_of(KPP_OP_LIST, 0, b, 8 + 34);
    assert_int_equal(kpp_reply_list(&r, e, 4, &total, &n), 0);

    /* Flags: only bits 0 and 1, in every entry (the second one here, past cap too). */
    for (unsigned bit = 2; bit < 8; bit++) {
        b[8 + 17 + 16] = (uint8_t)(1u << bit);
        assert_int_equal(kpp_reply_list(&r, e, 4, &total, &n), KPP_ERR_BAD_BODY);
        assert_int_equal(kpp_reply_list(&r, e, 1, &total, &n), KPP_ERR_BAD_BODY);
    }
    b[8 + 17 + 16] = 0x03;
    assert_int_equal(kpp_reply_list(&r, e, 4, &total, &n), 0);
    assert_int_equal(n, 2);
    assert_false(e[0].has_private);
    assert_false(e[0].has_public);
    assert_true(e[1].has_private);
    assert_true(e[1].has_public);
}

static void test_u32_reply_must_be_exactly_4_bytes(void **state)
{
    (void)state;
    uint8_t b[8] = {0};
    uint32_t v;
    const size_t lens[] = {0, 1, 3, 5, 8};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        kpp_reply r = reply_of(KPP_OP_SESSIONS, 0, b, lens[i]);
        assert_int_equal(kpp_reply_u32(&r, &v), KPP_ERR_BAD_BODY);
    }
}

/* ---- encoder bounds --------------------------------------------------------------------- */

static void test_request_encoders_refuse_out_of_bound_arguments(void **state)
{
    (void)state;
    sk_kid kid = make_kid(50);
    uint8_t *b = scratch;
    size_t cap = sizeof(scratch);

    assert_int_equal(kpp_encode_sign(b, cap, NULL, "x", 1), 0);
    assert_int_equal(kpp_encode_sign(b, cap, &kid, NULL, 1), 0);
    assert_int_equal(kpp_encode_sign(b, cap, &kid, "x", SIZE_MAX), 0);
    assert_int_equal(kpp_encode_sign(NULL, cap, &kid, "x", 1), 0);

    const unsigned bad_bits[] = {0, 1024, 2047, 2049, 4095, 4097, 8192, UINT32_MAX};
    for (size_t i = 0; i < sizeof(bad_bits) / sizeof(bad_bits[0]); i++)
        assert_int_equal(kpp_encode_generate(b, cap, &kid, bad_bits[i]), 0);
    assert_int_equal(kpp_encode_generate(b, cap, NULL, 2048), 0);

    const int bad_ops[] = {0,
                           KPP_OP_SIGN,
                           KPP_OP_GENERATE,
                           KPP_OP_LIST,
                           KPP_OP_PING,
                           KPP_OP_SESSIONS,
                           KPP_OP_AUDIT_PUBKEY,
                           KPP_OP_AUDIT_SIGN,
                           KPP_OP_LAST + 1,
                           0xffff};
    for (size_t i = 0; i < sizeof(bad_ops) / sizeof(bad_ops[0]); i++)
        assert_int_equal(kpp_encode_kid_op(b, cap, (kpp_op)bad_ops[i], &kid), 0);
    assert_int_equal(kpp_encode_kid_op(b, cap, KPP_OP_DESTROY, NULL), 0);

    assert_int_equal(kpp_encode_list(NULL, cap, 0), 0);
    assert_int_equal(kpp_encode_ping(NULL, cap, NULL), 0);
    assert_int_equal(kpp_encode_sessions(NULL, cap), 0);
    assert_int_equal(kpp_encode_audit_pubkey(NULL, cap), 0);
    assert_int_equal(kpp_encode_audit_sign(NULL, cap, "x", 1), 0);
    assert_int_equal(kpp_encode_audit_sign(b, cap, NULL, 1), 0);
    assert_int_equal(kpp_encode_audit_sign(b, cap, "x", 0), 0);
    assert_int_equal(kpp_encode_audit_sign(b, cap, "x", KPP_AUDIT_SIGN_MAX + 1), 0);
}

static void test_reply_encoders_refuse_out_of_bound_arguments(void **state)
{
    (void)state;
    uint8_t *b = scratch;
    size_t cap = sizeof(scratch);
    uint8_t sig[SK_SIG_MAX + 1] = {0};

    assert_int_equal(kpp_encode_sig_reply(b, cap, KPP_OP_SIGN, sig, 0), 0);
    assert_int_equal(kpp_encode_sig_reply(b, cap, KPP_OP_SIGN, sig, SK_SIG_MAX + 1), 0);
    assert_int_equal(kpp_encode_sig_reply(b, cap, KPP_OP_SIGN, NULL, 256), 0);
    assert_int_equal(kpp_encode_sig_reply(b, cap, KPP_OP_AUDIT_SIGN, sig, 0), 0);
    assert_int_equal(kpp_encode_sig_reply(b, cap, KPP_OP_AUDIT_SIGN, sig, SK_SIG_MAX + 1), 0);
    assert_int_equal(kpp_encode_sig_reply(b, cap, KPP_OP_AUDIT_SIGN, NULL, 384), 0);
    /* Only SIGN, AUDIT_SIGN and PUBLISH_SIGN replies carry a signature. */
    for (int op = 0; op <= ALL_OPS_LAST + 1; op++) {
        size_t want = op == KPP_OP_SIGN || op == KPP_OP_AUDIT_SIGN || op == KPP_OP_PUBLISH_SIGN
                          ? KPP_HDR_LEN + 256
                          : 0;
        assert_int_equal(kpp_encode_sig_reply(b, cap, (kpp_op)op, sig, 256), want);
    }

    sk_pubkey good = sample_pubkey(2048);
    sk_pubkey p;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_SIGN, &good), 0);
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_DESTROY, &good), 0);
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_AUDIT_SIGN, &good), 0);
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, (kpp_op)(KPP_OP_LAST + 1), &good), 0);
    assert_int_not_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_AUDIT_PUBKEY, &good), 0);
    assert_int_not_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_PUBLISH_PUBKEY, &good), 0);
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_PUBLISH_PART, &good), 0);
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, NULL), 0);
    p = good;
    p.n_len = 0;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &p), 0);
    p.n_len = SK_MODULUS_MAX + 1;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &p), 0);
    p = good;
    p.e_len = 0;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &p), 0);
    p.e_len = SK_EXPONENT_MAX + 1;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &p), 0);
    p = good;
    p.bits = 2047;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &p), 0);
    p.bits = 4097;
    assert_int_equal(kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &p), 0);

    sk_key_entry e[1] = {{.kid = make_kid(1)}};
    assert_int_equal(kpp_encode_list_reply(b, cap, 0, NULL, 1), 0);
    assert_int_equal(kpp_encode_list_reply(b, cap, 0, e, KPP_LIST_MAX + 1), 0);
    assert_int_equal(kpp_encode_list_reply(b, cap, 0, NULL, 0), KPP_HDR_LEN + 8);

    for (int op = 0; op <= ALL_OPS_LAST + 1; op++) {
        size_t want = op == KPP_OP_SESSIONS || op == KPP_OP_REOPENS ? KPP_HDR_LEN + 4 : 0;
        assert_int_equal(kpp_encode_u32_reply(b, cap, (kpp_op)op, 1), want);
    }
    assert_int_equal(kpp_encode_status(NULL, cap, KPP_OP_SIGN, 0), 0);
}

/* Every encoder, into an exact-size heap buffer (ASan sees a write past cap), at cap - 1
 * and at cap: 0 and nothing written past it, then the full message. */
static void test_encoders_refuse_a_cap_one_byte_too_small(void **state)
{
    (void)state;
    sk_kid kid = make_kid(60);
    sk_pubkey pub = sample_pubkey(4096);
    static uint8_t msg[KPP_AUDIT_SIGN_MAX]; /* also SIGN's message */
    static sk_key_entry e[KPP_LIST_MAX];
    uint8_t sig[SK_SIG_MAX] = {0};

    for (int which = 0; which < 14; which++) {
        size_t want;
        switch (which) {
        case 0:
            want = KPP_HDR_LEN + 16 + sizeof(msg);
            break;
        case 1:
            want = KPP_HDR_LEN + 20;
            break;
        case 2:
            want = KPP_HDR_LEN + 16;
            break;
        case 3:
            want = KPP_HDR_LEN + 4;
            break;
        case 4:
        case 5:
            want = KPP_HDR_LEN + 17;
            break;
        case 6:
        case 7:
            want = KPP_HDR_LEN;
            break;
        case 8:
            want = KPP_HDR_LEN + SK_SIG_MAX;
            break;
        case 9:
            want = KPP_HDR_LEN + 4 + 2 + 512 + 2 + 3;
            break;
        case 10:
            want = KPP_HDR_LEN + 8 + 17 * KPP_LIST_MAX;
            break;
        case 11:
            want = KPP_HDR_LEN + 4;
            break;
        case 12:
            want = KPP_HDR_LEN;
            break;
        default:
            want = KPP_HDR_LEN + KPP_AUDIT_SIGN_MAX;
            break;
        }
        for (size_t cap = want - 1; cap <= want; cap++) {
            uint8_t *b = malloc(cap);
            assert_non_null(b);
            size_t n = 0;
            switch (which) {
            case 0:
                n = kpp_encode_sign(b, cap, &kid, msg, sizeof(msg));
                break;
            case 1:
                n = kpp_encode_generate(b, cap, &kid, 4096);
                break;
            case 2:
                n = kpp_encode_kid_op(b, cap, KPP_OP_DESTROY, &kid);
                break;
            case 3:
                n = kpp_encode_list(b, cap, 3);
                break;
            case 4:
                n = kpp_encode_ping(b, cap, &kid);
                break;
            case 5:
                n = kpp_encode_ping(b, cap, NULL);
                break;
            case 6:
                n = kpp_encode_sessions(b, cap);
                break;
            case 7:
                n = kpp_encode_status(b, cap, KPP_OP_SIGN, SK_ERR_DEVICE);
                break;
            case 8:
                n = kpp_encode_sig_reply(b, cap, KPP_OP_SIGN, sig, SK_SIG_MAX);
                break;
            case 9:
                n = kpp_encode_pubkey_reply(b, cap, KPP_OP_GENERATE, &pub);
                break;
            case 10:
                n = kpp_encode_list_reply(b, cap, 1, e, KPP_LIST_MAX);
                break;
            case 11:
                n = kpp_encode_u32_reply(b, cap, KPP_OP_SESSIONS, 9);
                break;
            case 12:
                n = kpp_encode_audit_pubkey(b, cap);
                break;
            default:
                n = kpp_encode_audit_sign(b, cap, msg, KPP_AUDIT_SIGN_MAX);
                break;
            }
            if (n != (cap == want ? want : 0))
                fail_msg("encoder %d at cap %zu returned %zu (message is %zu)", which, cap, n,
                         want);
            free(b);
        }
    }
    /* Caps below a header. */
    assert_int_equal(kpp_encode_sessions(scratch, 0), 0);
    assert_int_equal(kpp_encode_sessions(scratch, KPP_HDR_LEN - 1), 0);
    assert_int_equal(kpp_encode_status(scratch, 1, KPP_OP_PING, 0), 0);
}

/* ---- status names ----------------------------------------------------------------------- */

static void test_status_names_cover_hsm_and_kpp_statuses(void **state)
{
    (void)state;
    assert_string_equal(kpp_status_name(SK_OK), "ok");
    assert_string_equal(kpp_status_name(SK_ERR_KEY_NOT_FOUND), "key_not_found");
    for (uint32_t s = 0; s < SK_ERR_COUNT_; s++)
        assert_string_equal(kpp_status_name(s), sk_status_name((sk_status)s));
    assert_string_equal(kpp_status_name(KPP_ERR_SHORT), "short");
    assert_string_equal(kpp_status_name(KPP_ERR_OVERSIZED), "oversized");
    assert_string_equal(kpp_status_name(KPP_ERR_MAGIC), "bad_magic");
    assert_string_equal(kpp_status_name(KPP_ERR_VERSION), "bad_version");
    assert_string_equal(kpp_status_name(KPP_ERR_UNKNOWN_OP), "unknown_op");
    assert_string_equal(kpp_status_name(KPP_ERR_BAD_BODY), "bad_body");
    assert_string_equal(kpp_status_name(KPP_ERR_NOT_REQUEST), "not_a_request");
    const uint32_t unknown[] = {SK_ERR_COUNT_, 50, 99, 107, 0x10000u, UINT32_MAX};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
        assert_string_equal(kpp_status_name(unknown[i]), "unknown");
}

/* ---- randomized ------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static size_t rnd(size_t n) /* 0..n-1 */
{
    return n ? (size_t)(rng() % n) : 0;
}

/* If msg decodes as a request, asserts that re-encoding it gives msg back. 1 if accepted. */
static int request_reencodes(const uint8_t *msg, size_t len)
{
    kpp_request r;
    uint16_t echo = 0;
    if (kpp_decode_request(msg, len, &r, &echo) != 0)
        return 0;
    assert_int_equal(echo, r.op);
    size_t n = 0;
    switch (r.op) {
    case KPP_OP_SIGN:
        assert_true(r.msg >= msg && r.msg + r.msg_len == msg + len);
        n = kpp_encode_sign(reenc, sizeof(reenc), &r.kid, r.msg, r.msg_len);
        break;
    case KPP_OP_GENERATE:
        n = kpp_encode_generate(reenc, sizeof(reenc), &r.kid, r.bits);
        break;
    case KPP_OP_DESTROY:
    case KPP_OP_KEY_ATTRS:
        n = kpp_encode_kid_op(reenc, sizeof(reenc), r.op, &r.kid);
        break;
    case KPP_OP_LIST:
        n = kpp_encode_list(reenc, sizeof(reenc), r.offset);
        break;
    case KPP_OP_PING:
        n = kpp_encode_ping(reenc, sizeof(reenc), r.has_kid ? &r.kid : NULL);
        break;
    case KPP_OP_SESSIONS:
        n = kpp_encode_sessions(reenc, sizeof(reenc));
        break;
    case KPP_OP_REOPENS:
        n = kpp_encode_reopens(reenc, sizeof(reenc));
        break;
    case KPP_OP_TOKEN_INFO:
        n = kpp_encode_token_info(reenc, sizeof(reenc));
        break;
    case KPP_OP_AUDIT_PUBKEY:
        n = kpp_encode_audit_pubkey(reenc, sizeof(reenc));
        break;
    case KPP_OP_AUDIT_SIGN:
        assert_true(r.msg >= msg && r.msg + r.msg_len == msg + len);
        n = kpp_encode_audit_sign(reenc, sizeof(reenc), r.msg, r.msg_len);
        break;
    case KPP_OP_PUBLISH_PUBKEY:
        n = kpp_encode_publish_pubkey(reenc, sizeof(reenc));
        break;
    case KPP_OP_PUBLISH_PART:
        assert_true(r.msg >= msg && r.msg + r.msg_len == msg + len);
        n = kpp_encode_publish_part(reenc, sizeof(reenc), r.msg, r.msg_len);
        break;
    case KPP_OP_PUBLISH_SIGN:
        assert_true(r.msg >= msg && r.msg + r.msg_len == msg + len);
        assert_true(r.total >= r.msg_len);
        n = kpp_encode_publish_sign(reenc, sizeof(reenc), r.total, r.msg, r.msg_len);
        break;
    default:
        fail_msg("decoded an unknown op %d", r.op);
    }
    if (n != len)
        fail_msg("op %d: re-encoded %zu bytes from %zu", r.op, n, len);
    if (r.op == KPP_OP_PING && !r.has_kid) {
        /* The only bytes a decoder ignores: a kid-less PING's kid, re-encoded as zeros. */
        assert_memory_equal(reenc, msg, KPP_HDR_LEN + 1);
    } else if (memcmp(reenc, msg, len) != 0) {
        fail_msg("op %d: re-encoding differs (%zu bytes)", r.op, len);
    }
    return 1;
}

/* For every op msg decodes as a reply to, runs every body decoder and asserts that what is
 * accepted re-encodes to msg. Returns how many (op, decoder) pairs accepted. */
static int reply_reencodes(const uint8_t *msg, size_t len)
{
    static sk_key_entry entries[KPP_LIST_MAX];
    int accepted = 0;
    for (int op = ALL_OPS_FIRST; op <= ALL_OPS_LAST; op++) {
        kpp_reply r;
        if (kpp_decode_reply(msg, len, (kpp_op)op, &r) != 0)
            continue;
        accepted++;
        assert_int_equal(r.op, op);
        assert_true(r.body == msg + KPP_HDR_LEN && r.body_len == len - KPP_HDR_LEN);
        if (r.body_len == 0) {
            size_t n = kpp_encode_status(reenc, sizeof(reenc), (uint16_t)op, r.status);
            assert_int_equal(n, len);
            assert_memory_equal(reenc, msg, len);
        }
        /* An error's body is empty or its CKR, and only an error has a CKR. */
        assert_true(r.status == 0 || r.body_len == 0 || r.body_len == 4);
        assert_true(r.ckr == 0 || (r.status != 0 && r.body_len == 4));
        if (r.status != 0 && r.body_len == 4) {
            size_t n = kpp_encode_error(reenc, sizeof(reenc), (uint16_t)op, r.status, r.ckr);
            assert_int_equal(n, len);
            assert_memory_equal(reenc, msg, len);
        }

        uint8_t sig[SK_SIG_MAX];
        size_t sig_len;
        sk_pubkey pub;
        uint32_t total, v;
        size_t count;
        int ok_sig = kpp_reply_sig(&r, sig, &sig_len) == 0;
        int ok_pub = kpp_reply_pubkey(&r, &pub) == 0;
        int ok_list = kpp_reply_list(&r, entries, KPP_LIST_MAX, &total, &count) == 0;
        int ok_u32 = kpp_reply_u32(&r, &v) == 0;
        assert_true(ok_sig + ok_pub + ok_list + ok_u32 <= 1);
        size_t n = 0;
        if (ok_sig) {
            assert_true(op == KPP_OP_SIGN || op == KPP_OP_AUDIT_SIGN || op == KPP_OP_PUBLISH_SIGN);
            n = kpp_encode_sig_reply(reenc, sizeof(reenc), (kpp_op)op, sig, sig_len);
        } else if (ok_pub) {
            assert_true(op == KPP_OP_GENERATE || op == KPP_OP_AUDIT_PUBKEY ||
                        op == KPP_OP_PUBLISH_PUBKEY);
            n = kpp_encode_pubkey_reply(reenc, sizeof(reenc), (kpp_op)op, &pub);
        } else if (ok_list) {
            assert_int_equal(op, KPP_OP_LIST);
            n = kpp_encode_list_reply(reenc, sizeof(reenc), total, entries, count);
        } else if (ok_u32) {
            assert_true(op == KPP_OP_SESSIONS || op == KPP_OP_REOPENS);
            n = kpp_encode_u32_reply(reenc, sizeof(reenc), (kpp_op)op, v);
        } else {
            continue;
        }
        accepted++;
        if (n != len || memcmp(reenc, msg, len) != 0)
            fail_msg("reply op %d: re-encoding differs (%zu vs %zu bytes)", op, n, len);
    }
    return accepted;
}

/* One valid message of each kind, several sizes; the big ones are picked rarely. */
typedef struct {
    uint8_t *b;
    size_t len;
} corpus_msg;

#define CORPUS_MAX 64

static size_t add(corpus_msg *c, size_t k, const uint8_t *b, size_t len)
{
    assert_true(k < CORPUS_MAX);
    assert_int_not_equal(len, 0);
    c[k].b = exact_copy(b, len);
    c[k].len = len;
    return k + 1;
}

static size_t build_corpus(corpus_msg *c, size_t *n_small)
{
    size_t k = 0;
    sk_kid kid = make_kid(77);
    static uint8_t big[KPP_SIGN_MAX];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)rng();
    const size_t sign_lens[] = {0, 1, 17, 100, 700};
    for (size_t i = 0; i < sizeof(sign_lens) / sizeof(sign_lens[0]); i++)
        k = add(c, k, scratch, kpp_encode_sign(scratch, sizeof(scratch), &kid, big, sign_lens[i]));
    k = add(c, k, scratch, kpp_encode_generate(scratch, sizeof(scratch), &kid, 2048));
    k = add(c, k, scratch, kpp_encode_generate(scratch, sizeof(scratch), &kid, 4096));
    k = add(c, k, scratch, kpp_encode_kid_op(scratch, sizeof(scratch), KPP_OP_DESTROY, &kid));
    k = add(c, k, scratch, kpp_encode_kid_op(scratch, sizeof(scratch), KPP_OP_DESTROY, &kid));
    k = add(c, k, scratch, kpp_encode_list(scratch, sizeof(scratch), 1000));
    k = add(c, k, scratch, kpp_encode_ping(scratch, sizeof(scratch), &kid));
    k = add(c, k, scratch, kpp_encode_ping(scratch, sizeof(scratch), NULL));
    k = add(c, k, scratch, kpp_encode_sessions(scratch, sizeof(scratch)));
    k = add(c, k, scratch, kpp_encode_audit_pubkey(scratch, sizeof(scratch)));
    k = add(c, k, scratch, kpp_encode_publish_pubkey(scratch, sizeof(scratch)));
    k = add(c, k, scratch, kpp_encode_publish_part(scratch, sizeof(scratch), big, 77));
    k = add(c, k, scratch, kpp_encode_publish_sign(scratch, sizeof(scratch), 300, big, 40));
    k = add(c, k, scratch, kpp_encode_audit_sign(scratch, sizeof(scratch), big, 1));
    k = add(c, k, scratch, kpp_encode_audit_sign(scratch, sizeof(scratch), big, 120));
    k = add(c, k, scratch,
            kpp_encode_audit_sign(scratch, sizeof(scratch), big, KPP_AUDIT_SIGN_MAX));
    for (int op = ALL_OPS_FIRST; op <= ALL_OPS_LAST; op++) {
        k = add(c, k, scratch, kpp_encode_status(scratch, sizeof(scratch), (uint16_t)op, 0));
        k = add(c, k, scratch,
                kpp_encode_status(scratch, sizeof(scratch), (uint16_t)op, SK_ERR_DEVICE));
    }
    k = add(c, k, scratch, kpp_encode_sig_reply(scratch, sizeof(scratch), KPP_OP_SIGN, big, 1));
    k = add(c, k, scratch, kpp_encode_sig_reply(scratch, sizeof(scratch), KPP_OP_SIGN, big, 256));
    k = add(c, k, scratch,
            kpp_encode_sig_reply(scratch, sizeof(scratch), KPP_OP_SIGN, big, SK_SIG_MAX));
    k = add(c, k, scratch,
            kpp_encode_sig_reply(scratch, sizeof(scratch), KPP_OP_AUDIT_SIGN, big, 384));
    sk_pubkey pub = sample_pubkey(2048);
    k = add(c, k, scratch,
            kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_GENERATE, &pub));
    pub.n_len = 3;
    pub.e_len = 1;
    k = add(c, k, scratch,
            kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_PUBLISH_PUBKEY, &pub));
    pub = sample_pubkey(3072);
    k = add(c, k, scratch,
            kpp_encode_pubkey_reply(scratch, sizeof(scratch), KPP_OP_AUDIT_PUBKEY, &pub));
    static sk_key_entry e[KPP_LIST_MAX];
    for (size_t i = 0; i < KPP_LIST_MAX; i++)
        e[i] = (sk_key_entry){.kid = make_kid((uint8_t)i),
                              .has_private = (int)(i & 1),
                              .has_public = (int)((i >> 1) & 1)};
    k = add(c, k, scratch, kpp_encode_list_reply(scratch, sizeof(scratch), 0, e, 0));
    k = add(c, k, scratch, kpp_encode_list_reply(scratch, sizeof(scratch), 3, e, 3));
    k = add(c, k, scratch, kpp_encode_list_reply(scratch, sizeof(scratch), 40, e, 12));
    k = add(c, k, scratch, kpp_encode_u32_reply(scratch, sizeof(scratch), KPP_OP_SESSIONS, 5));
    *n_small = k;
    /* Big ones, after n_small. */
    k = add(c, k, scratch, kpp_encode_sign(scratch, sizeof(scratch), &kid, big, KPP_SIGN_MAX));
    k = add(c, k, scratch, kpp_encode_list_reply(scratch, sizeof(scratch), 5000, e, KPP_LIST_MAX));
    return k;
}

#define FUZZ_ITERATIONS 200000

static void test_mutated_messages_stay_in_bounds_and_reencode_identically(void **state)
{
    (void)state;
    rng_state = 0x6b70705f66757a7aull; /* "kpp_fuzz": fixed, so a failure repeats */
    corpus_msg corpus[CORPUS_MAX];
    size_t n_small;
    size_t n_corpus = build_corpus(corpus, &n_small);
    static uint8_t work[KPP_MSG_MAX + 64];
    size_t req_accepted = 0, rep_accepted = 0, refused = 0;
    uint32_t seen_status[KPP_ERR_NOT_REQUEST + 1] = {0};

    for (long it = 0; it < FUZZ_ITERATIONS; it++) {
        /* Pick a message: big ones one time in a hundred. */
        size_t pick = rnd(100) == 0 ? n_small + rnd(n_corpus - n_small) : rnd(n_small);
        size_t len = corpus[pick].len;
        memcpy(work, corpus[pick].b, len);

        int mutations = 1 + (int)rnd(3);
        for (int m = 0; m < mutations; m++) {
            size_t span = len < 48 ? len : 48; /* mostly the header and the body's fields */
            switch (rnd(6)) {
            case 0: /* flip bits of a byte */
                if (len)
                    work[rnd(2) ? rnd(span) : rnd(len)] ^= (uint8_t)(1 + rnd(255));
                break;
            case 1: /* set a byte to an edge value */
                if (len) {
                    static const uint8_t edges[] = {0, 1, 2, 3, 0x7f, 0x80, 0xfe, 0xff};
                    work[rnd(span)] = edges[rnd(sizeof(edges))];
                }
                break;
            case 2: /* truncate */
                len = rnd(len + 1);
                break;
            case 3: { /* extend */
                size_t more = 1 + rnd(32);
                if (len + more > KPP_MSG_MAX + 64)
                    more = KPP_MSG_MAX + 64 - len;
                for (size_t i = 0; i < more; i++)
                    work[len + i] = (uint8_t)rng();
                len += more;
                break;
            }
            case 4: /* a random u16 or u32 at a random offset */
                if (len >= 4) {
                    size_t off = rnd(span - 3);
                    uint32_t v = (uint32_t)rng();
                    if (rnd(2))
                        v &= 0x0fff; /* plausible lengths */
                    put32(work + off, v);
                }
                break;
            default: /* noise after the magic and version */
                if (len >= 2)
                    for (size_t i = 2; i < span; i++)
                        work[i] = (uint8_t)rng();
                break;
            }
        }
        /* Half the time make the length field agree, so the bodies get decoded. */
        if (len >= KPP_HDR_LEN && rnd(2))
            put32(work + 8, (uint32_t)(len - KPP_HDR_LEN));
        if (len >= KPP_HDR_LEN && rnd(8) == 0)
            put32(work + 4, 0); /* and a request status */

        uint8_t *copy = exact_copy(work, len);
        kpp_request r;
        uint16_t echo;
        uint32_t st = kpp_decode_request(copy, len, &r, &echo);
        if (st == 0) {
            req_accepted += (size_t)request_reencodes(copy, len);
        } else {
            refused++;
            if (st < KPP_ERR_SHORT || st > KPP_ERR_NOT_REQUEST)
                fail_msg("iteration %ld: status %u is not a kpp_status", it, st);
            seen_status[st]++;
            if (len < KPP_HDR_LEN || copy[0] != KPP_MAGIC)
                assert_int_equal(echo, 0);
            else
                assert_int_equal(echo, (uint16_t)(copy[2] << 8 | copy[3]));
        }
        rep_accepted += (size_t)reply_reencodes(copy, len);
        free(copy);
    }

    for (size_t i = 0; i < n_corpus; i++)
        free(corpus[i].b);
    print_message("%d mutations: %zu requests and %zu reply decodings accepted, %zu requests "
                  "refused\n",
                  FUZZ_ITERATIONS, req_accepted, rep_accepted, refused);
    for (uint32_t s = KPP_ERR_SHORT; s <= KPP_ERR_NOT_REQUEST; s++)
        print_message("  %-13s %u\n", kpp_status_name(s), seen_status[s]);
    /* The mutations reached every path: acceptances and every kind of refusal. */
    if (req_accepted < 1000 || rep_accepted < 1000 || refused < 1000)
        fail_msg("accepted %zu requests, %zu replies, refused %zu", req_accepted, rep_accepted,
                 refused);
    for (uint32_t s = KPP_ERR_SHORT; s <= KPP_ERR_NOT_REQUEST; s++) {
        if (seen_status[s] == 0)
            fail_msg("no mutation produced %s", kpp_status_name(s));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_request_round_trips_kid_and_message),
        cmocka_unit_test(test_generate_request_round_trips_each_allowed_size),
        cmocka_unit_test(test_destroy_requests_round_trip_the_kid_and_the_retired_op_3_is_unknown),
        cmocka_unit_test(test_list_request_round_trips_the_offset),
        cmocka_unit_test(test_ping_request_round_trips_with_and_without_a_kid),
        cmocka_unit_test(test_ping_without_a_kid_ignores_the_kid_bytes),
        cmocka_unit_test(test_sessions_request_round_trips_with_an_empty_body),
        cmocka_unit_test(test_audit_pubkey_request_round_trips_with_an_empty_body),
        cmocka_unit_test(test_audit_sign_request_round_trips_the_input),
        cmocka_unit_test(test_audit_sign_accepts_1_to_KPP_AUDIT_SIGN_MAX_bytes_and_refuses_others),
        cmocka_unit_test(test_publish_parts_round_trip_and_a_total_below_the_last_part_is_refused),
        cmocka_unit_test(test_wire_layout_is_big_endian_as_specified),
        cmocka_unit_test(test_sign_accepts_KPP_SIGN_MAX_bytes_and_refuses_one_more),
        cmocka_unit_test(test_request_shorter_than_a_header_is_short_and_echoes_0),
        cmocka_unit_test(test_request_longer_than_msg_max_is_oversized_reading_only_the_header),
        cmocka_unit_test(test_oversized_takes_precedence_over_version_and_op),
        cmocka_unit_test(test_oversized_with_a_bad_magic_echoes_0),
        cmocka_unit_test(test_bad_magic_is_refused_and_echoes_0),
        cmocka_unit_test(test_bad_version_is_refused_and_echoes_the_op),
        cmocka_unit_test(test_body_length_beyond_the_bytes_is_short),
        cmocka_unit_test(test_body_length_short_of_the_bytes_is_oversized),
        cmocka_unit_test(test_body_length_above_body_max_is_oversized),
        cmocka_unit_test(test_unknown_op_is_refused_and_echoed),
        cmocka_unit_test(test_nonzero_status_in_a_request_is_not_a_request),
        cmocka_unit_test(test_each_op_refuses_a_body_of_the_wrong_length),
        cmocka_unit_test(test_generate_refuses_sizes_other_than_2048_3072_4096),
        cmocka_unit_test(test_ping_refuses_has_kid_other_than_0_or_1),
        cmocka_unit_test(test_failed_request_decode_leaves_the_output_zeroed),
        cmocka_unit_test(test_status_reply_round_trips_any_op_and_status),
        cmocka_unit_test(test_sig_reply_round_trips_from_1_to_HSM_SIG_MAX_bytes),
        cmocka_unit_test(test_pubkey_reply_round_trips_for_generate_and_the_service_keys),
        cmocka_unit_test(test_generate_reply_carries_the_attributes_byte_and_refuses_a_bad_one),
        cmocka_unit_test(test_key_attrs_request_and_reply_round_trip),
        cmocka_unit_test(test_token_info_round_trips_and_its_texts_stay_label_safe),
        cmocka_unit_test(test_list_reply_round_trips_entries_flags_and_total),
        cmocka_unit_test(test_list_reply_copies_at_most_cap_entries_and_reports_the_count),
        cmocka_unit_test(test_u32_reply_round_trips_the_sessions_count),
        cmocka_unit_test(test_reply_header_errors_are_those_of_requests),
        cmocka_unit_test(test_reply_to_another_op_is_bad_body),
        cmocka_unit_test(test_decoding_a_reply_to_an_unknown_op_is_unknown_op),
        cmocka_unit_test(test_error_reply_keeps_its_status_and_an_empty_body_has_no_ckr),
        cmocka_unit_test(test_error_reply_round_trips_its_ckr),
        cmocka_unit_test(test_error_reply_body_other_than_empty_or_a_ckr_is_refused),
        cmocka_unit_test(test_destroy_and_ping_successes_must_have_an_empty_body),
        cmocka_unit_test(test_body_decoders_refuse_a_nonzero_status_or_another_op),
        cmocka_unit_test(test_sig_reply_must_hold_1_to_HSM_SIG_MAX_bytes),
        cmocka_unit_test(test_pubkey_reply_refuses_each_field_out_of_bounds),
        cmocka_unit_test(test_list_reply_refuses_bad_counts_lengths_and_flags),
        cmocka_unit_test(test_u32_reply_must_be_exactly_4_bytes),
        cmocka_unit_test(test_request_encoders_refuse_out_of_bound_arguments),
        cmocka_unit_test(test_reply_encoders_refuse_out_of_bound_arguments),
        cmocka_unit_test(test_encoders_refuse_a_cap_one_byte_too_small),
        cmocka_unit_test(test_status_names_cover_hsm_and_kpp_statuses),
        cmocka_unit_test(test_mutated_messages_stay_in_bounds_and_reencode_identically),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
