/*
 * fuzz_kproto: libFuzzer target for the keeper protocol decoders (kproto.h). The input is
 * one message as the keeper or the front would receive it. It is decoded as a request and
 * as a reply to every op (KPP_OP_FIRST..KPP_OP_LAST, the service-key ops and the retired op
 * 3 included: nothing may decode as it), each reply
 * through every body decoder; whatever is accepted must re-encode to exactly the input (a
 * kid-less PING excepted: its ignored kid bytes re-encode as zeros). A mismatch aborts.
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_kproto, seeds tests/fuzz/corpus/kproto/:
 * one well-formed request per op and replies of each body shape; tests/fuzz/kproto.options
 * lets inputs grow to a whole message); its seeds and regression inputs are replayed by
 * `make test` (build/tests/test_fuzz_kproto, tests/fuzz/replay.c).
 */
#include "appliance/kproto/kproto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t out[KPP_MSG_MAX];

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_kproto: %s\n", what);
        abort();
    }
}

static void fuzz_request(const uint8_t *data, size_t size)
{
    kpp_request r;
    uint16_t echo = 0;
    uint32_t st = kpp_decode_request(data, size, &r, &echo);
    check(kpp_status_name(st) != NULL, "status without a name");
    if (st != 0) {
        check(st >= KPP_ERR_SHORT && st <= KPP_ERR_NOT_REQUEST, "request status not a kpp_status");
        if (size < KPP_HDR_LEN || data[0] != KPP_MAGIC)
            check(echo == 0, "unreadable header echoed an op");
        else
            check(echo == (uint16_t)(data[2] << 8 | data[3]), "echo is not the header's op");
        return;
    }
    check(echo == r.op, "echo differs from the decoded op");
    size_t n = 0;
    switch (r.op) {
    case KPP_OP_SIGN:
        check(r.msg >= data && r.msg + r.msg_len == data + size, "SIGN msg outside the input");
        n = kpp_encode_sign(out, sizeof(out), &r.kid, r.msg, r.msg_len);
        break;
    case KPP_OP_GENERATE:
        n = kpp_encode_generate(out, sizeof(out), &r.kid, r.bits);
        break;
    case KPP_OP_DESTROY:
    case KPP_OP_KEY_ATTRS:
        n = kpp_encode_kid_op(out, sizeof(out), r.op, &r.kid);
        break;
    case KPP_OP_TOKEN_INFO:
        n = kpp_encode_token_info(out, sizeof(out));
        break;
    case KPP_OP_LIST:
        n = kpp_encode_list(out, sizeof(out), r.offset);
        break;
    case KPP_OP_PING:
        n = kpp_encode_ping(out, sizeof(out), r.has_kid ? &r.kid : NULL);
        break;
    case KPP_OP_SESSIONS:
        n = kpp_encode_sessions(out, sizeof(out));
        break;
    case KPP_OP_REOPENS:
        n = kpp_encode_reopens(out, sizeof(out));
        break;
    case KPP_OP_AUDIT_PUBKEY:
        n = kpp_encode_audit_pubkey(out, sizeof(out));
        break;
    case KPP_OP_AUDIT_SIGN:
        check(r.msg >= data && r.msg + r.msg_len == data + size,
              "AUDIT_SIGN input outside the input");
        check(r.msg_len >= 1 && r.msg_len <= KPP_AUDIT_SIGN_MAX, "AUDIT_SIGN input out of bounds");
        n = kpp_encode_audit_sign(out, sizeof(out), r.msg, r.msg_len);
        break;
    case KPP_OP_PUBLISH_PUBKEY:
        n = kpp_encode_publish_pubkey(out, sizeof(out));
        break;
    case KPP_OP_PUBLISH_PART:
        check(r.msg >= data && r.msg + r.msg_len == data + size,
              "PUBLISH_PART input outside the input");
        check(r.msg_len >= 1 && r.msg_len <= KPP_BODY_MAX, "PUBLISH_PART input out of bounds");
        n = kpp_encode_publish_part(out, sizeof(out), r.msg, r.msg_len);
        break;
    case KPP_OP_PUBLISH_SIGN:
        check(r.msg + r.msg_len == data + size, "PUBLISH_SIGN input outside the input");
        check(r.msg_len <= KPP_PART_LAST && r.total >= r.msg_len,
              "PUBLISH_SIGN part or total out of bounds");
        n = kpp_encode_publish_sign(out, sizeof(out), r.total, r.msg, r.msg_len);
        break;
    default:
        check(0, "decoded an unknown op");
    }
    check(n == size, "request re-encodes to another length");
    if (r.op == KPP_OP_PING && !r.has_kid)
        check(memcmp(out, data, KPP_HDR_LEN + 1) == 0, "PING re-encodes differently");
    else
        check(memcmp(out, data, size) == 0, "request re-encodes differently");
}

static void fuzz_reply(const uint8_t *data, size_t size, kpp_op op)
{
    static sk_key_entry entries[KPP_LIST_MAX];
    kpp_reply r;
    uint32_t st = kpp_decode_reply(data, size, op, &r);
    check(kpp_status_name(st) != NULL, "status without a name");
    if (st != 0)
        return;
    check(r.op == op, "reply answers another op");
    check(op != KPP_OP_RETIRED, "a reply decoded as the retired op");
    check(r.body == data + KPP_HDR_LEN && r.body_len == size - KPP_HDR_LEN, "reply body bounds");
    check(r.status == 0 || r.body_len == 0 || r.body_len == 4, "error reply with a body");
    check(r.ckr == 0 || (r.status != 0 && r.body_len == 4), "a ckr outside an error body");
    (void)kpp_status_name(r.status);
    if (r.body_len == 0) {
        size_t n = kpp_encode_status(out, sizeof(out), (uint16_t)op, r.status);
        check(n == size && memcmp(out, data, size) == 0, "status reply re-encodes differently");
    }
    if (r.status != 0 && r.body_len == 4) {
        size_t n = kpp_encode_error(out, sizeof(out), (uint16_t)op, r.status, r.ckr);
        check(n == size && memcmp(out, data, size) == 0, "error reply re-encodes differently");
    }

    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0, count = 0;
    sk_pubkey pub;
    uint32_t total = 0, v = 0;
    int ok_sig = kpp_reply_sig(&r, sig, &sig_len) == 0;
    int ok_pub = kpp_reply_pubkey(&r, &pub) == 0;
    int ok_list = kpp_reply_list(&r, entries, KPP_LIST_MAX, &total, &count) == 0;
    int ok_u32 = kpp_reply_u32(&r, &v) == 0;
    sk_pubkey gpub;
    sk_attrs gattrs = 0, attrs = 0;
    sk_token_info ti;
    int ok_gen = kpp_reply_generate(&r, &gpub, &gattrs) == 0;
    int ok_attrs = kpp_reply_attrs(&r, &attrs) == 0;
    int ok_ti = kpp_reply_token_info(&r, &ti) == 0;
    check(ok_sig + ok_pub + ok_list + ok_u32 + ok_gen + ok_attrs + ok_ti <= 1,
          "two body decoders accepted one body");
    if (ok_gen || ok_attrs)
        check(((ok_gen ? gattrs : attrs) & SK_ATTR_READ) &&
                  !((ok_gen ? gattrs : attrs) & ~SK_ATTR_ALL),
              "an attribute byte that is not an attribute set");

    /* A small cap must copy no more than it allows. */
    sk_key_entry two[2];
    size_t count2 = 0;
    if (kpp_reply_list(&r, two, 2, &total, &count2) == 0)
        check(ok_list && count2 == count, "list result depends on cap");

    size_t n;
    if (ok_sig)
        check(op == KPP_OP_SIGN || op == KPP_OP_AUDIT_SIGN || op == KPP_OP_PUBLISH_SIGN,
              "a signature answered another op");
    if (ok_pub)
        check(op == KPP_OP_GENERATE || op == KPP_OP_AUDIT_PUBKEY || op == KPP_OP_PUBLISH_PUBKEY,
              "a public key answered another op");
    if (ok_sig)
        n = kpp_encode_sig_reply(out, sizeof(out), op, sig, sig_len);
    else if (ok_pub)
        n = kpp_encode_pubkey_reply(out, sizeof(out), op, &pub);
    else if (ok_list)
        n = kpp_encode_list_reply(out, sizeof(out), total, entries, count);
    else if (ok_u32)
        n = kpp_encode_u32_reply(out, sizeof(out), op, v);
    else if (ok_gen)
        n = kpp_encode_generate_reply(out, sizeof(out), &gpub, gattrs);
    else if (ok_attrs)
        n = kpp_encode_attrs_reply(out, sizeof(out), attrs);
    else if (ok_ti)
        n = kpp_encode_token_info_reply(out, sizeof(out), &ti);
    else
        return;
    check(n == size && memcmp(out, data, size) == 0, "reply re-encodes differently");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_request(data, size);
    for (int op = KPP_OP_FIRST; op <= KPP_OP_LAST; op++)
        fuzz_reply(data, size, (kpp_op)op);
    /* The same bytes as the head of a truncated datagram (recv with MSG_TRUNC): the real
     * length exceeds KPP_MSG_MAX, so only the header may be read. */
    if (size >= KPP_HDR_LEN) {
        kpp_request r;
        kpp_reply rep;
        uint16_t echo;
        check(kpp_decode_request(data, KPP_MSG_MAX + 1 + size, &r, &echo) != 0,
              "accepted a message longer than KPP_MSG_MAX");
        check(kpp_decode_reply(data, KPP_MSG_MAX + 1 + size, KPP_OP_SIGN, &rep) != 0,
              "accepted a reply longer than KPP_MSG_MAX");
    }
    return 0;
}
