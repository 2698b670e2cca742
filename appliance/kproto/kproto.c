/* kpp: the keeper protocol's encoders and decoders. See kproto.h for the wire format. */
#include "appliance/kproto/kproto.h"

#include <string.h>
#include <stdio.h>

/* Body sizes of the fixed-shape bodies. */
#define KPP_KID_BODY SK_KID_LEN            /* DESTROY */
#define KPP_GENERATE_BODY (SK_KID_LEN + 4) /* kid, bits */
#define KPP_LIST_BODY 4                    /* offset */
#define KPP_CKR_BODY 4                     /* an error reply's ckr */
#define KPP_PING_BODY (1 + SK_KID_LEN)     /* has_kid, kid */
#define KPP_ENTRY_LEN (SK_KID_LEN + 1)     /* LIST reply entry: kid, flags */
#define KPP_LIST_REPLY_HDR 8               /* total, n */
#define KPP_LIST_FLAG_PRIVATE 0x01u
#define KPP_LIST_FLAG_PUBLIC 0x02u
#define KPP_PUBKEY_BITS_MIN 2048u
#define KPP_PUBKEY_BITS_MAX 4096u

/* ---- big-endian integers ---------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | (unsigned)p[1]);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* ---- shared helpers --------------------------------------------------------------------- */

static int op_known(unsigned op)
{
    return op >= KPP_OP_FIRST && op <= KPP_OP_LAST && op != KPP_OP_RETIRED;
}

static int bits_allowed(unsigned bits)
{
    return bits == 2048 || bits == 3072 || bits == 4096;
}

/* Writes the header of a message with a body of body_len bytes and returns the message's
 * length, or 0 when buf is NULL, the body exceeds KPP_BODY_MAX or the message exceeds cap. */
static size_t put_header(uint8_t *buf, size_t cap, uint16_t op, uint32_t status, size_t body_len)
{
    if (buf == NULL || body_len > KPP_BODY_MAX || cap < KPP_HDR_LEN || cap - KPP_HDR_LEN < body_len)
        return 0;
    buf[0] = KPP_MAGIC;
    buf[1] = KPP_VERSION;
    put_u16(buf + 2, op);
    put_u32(buf + 4, status);
    put_u32(buf + 8, (uint32_t)body_len);
    return KPP_HDR_LEN + body_len;
}

/* A decoded header whose body length matched the message length exactly. */
typedef struct {
    uint16_t op;
    uint32_t status;
    const uint8_t *body;
    size_t body_len;
} kpp_header;

/* The checks every message passes, in order: at least a header, at most KPP_MSG_MAX,
 * magic, version, then the body length field against KPP_BODY_MAX and the bytes present.
 * *echo receives the header's op once the header is readable and carries the magic, 0
 * before that. Reads only the first KPP_HDR_LEN bytes when len exceeds KPP_MSG_MAX. */
static uint32_t decode_header(const uint8_t *buf, size_t len, kpp_header *h, uint16_t *echo)
{
    *echo = 0;
    if (buf == NULL || len < KPP_HDR_LEN)
        return KPP_ERR_SHORT;
    int magic_ok = buf[0] == KPP_MAGIC;
    uint16_t op = get_u16(buf + 2);
    if (magic_ok)
        *echo = op;
    if (len > KPP_MSG_MAX)
        return KPP_ERR_OVERSIZED;
    if (!magic_ok)
        return KPP_ERR_MAGIC;
    if (buf[1] != KPP_VERSION)
        return KPP_ERR_VERSION;
    uint32_t body_len = get_u32(buf + 8);
    size_t present = len - KPP_HDR_LEN;
    if (body_len > KPP_BODY_MAX)
        return KPP_ERR_OVERSIZED;
    if (body_len > present)
        return KPP_ERR_SHORT;
    if (body_len < present)
        return KPP_ERR_OVERSIZED;
    h->op = op;
    h->status = get_u32(buf + 4);
    h->body = buf + KPP_HDR_LEN;
    h->body_len = body_len;
    return 0;
}

/* ---- status names ----------------------------------------------------------------------- */

const char *kpp_status_name(uint32_t status)
{
    if (status < SK_ERR_COUNT_)
        return sk_status_name((sk_status)status);
    switch (status) {
    case KPP_ERR_SHORT:
        return "short";
    case KPP_ERR_OVERSIZED:
        return "oversized";
    case KPP_ERR_MAGIC:
        return "bad_magic";
    case KPP_ERR_VERSION:
        return "bad_version";
    case KPP_ERR_UNKNOWN_OP:
        return "unknown_op";
    case KPP_ERR_BAD_BODY:
        return "bad_body";
    case KPP_ERR_NOT_REQUEST:
        return "not_a_request";
    default:
        return "unknown";
    }
}

/* ---- requests --------------------------------------------------------------------------- */

/* Checks that body has the shape of op's request and fills r. */
static uint32_t decode_request_body(const kpp_header *h, kpp_request *r)
{
    const uint8_t *b = h->body;
    switch (h->op) {
    case KPP_OP_SIGN:
        if (h->body_len < SK_KID_LEN || h->body_len - SK_KID_LEN > KPP_SIGN_MAX)
            return KPP_ERR_BAD_BODY;
        memcpy(r->kid.b, b, SK_KID_LEN);
        r->has_kid = 1;
        r->msg = b + SK_KID_LEN;
        r->msg_len = h->body_len - SK_KID_LEN;
        return 0;
    case KPP_OP_GENERATE: {
        if (h->body_len != KPP_GENERATE_BODY)
            return KPP_ERR_BAD_BODY;
        uint32_t bits = get_u32(b + SK_KID_LEN);
        if (!bits_allowed(bits))
            return KPP_ERR_BAD_BODY;
        memcpy(r->kid.b, b, SK_KID_LEN);
        r->has_kid = 1;
        r->bits = bits;
        return 0;
    }
    case KPP_OP_DESTROY:
    case KPP_OP_KEY_ATTRS:
        if (h->body_len != KPP_KID_BODY)
            return KPP_ERR_BAD_BODY;
        memcpy(r->kid.b, b, SK_KID_LEN);
        r->has_kid = 1;
        return 0;
    case KPP_OP_LIST:
        if (h->body_len != KPP_LIST_BODY)
            return KPP_ERR_BAD_BODY;
        r->offset = get_u32(b);
        return 0;
    case KPP_OP_PING:
        if (h->body_len != KPP_PING_BODY || b[0] > 1)
            return KPP_ERR_BAD_BODY;
        r->has_kid = b[0];
        if (r->has_kid)
            memcpy(r->kid.b, b + 1, SK_KID_LEN); /* else the kid bytes are ignored */
        return 0;
    case KPP_OP_SESSIONS:
    case KPP_OP_AUDIT_PUBKEY:
    case KPP_OP_PUBLISH_PUBKEY:
    case KPP_OP_TOKEN_INFO:
    case KPP_OP_REOPENS:
        return h->body_len == 0 ? 0 : KPP_ERR_BAD_BODY;
    case KPP_OP_PUBLISH_PART:
        if (h->body_len == 0)
            return KPP_ERR_BAD_BODY;
        r->msg = b;
        r->msg_len = h->body_len;
        return 0;
    case KPP_OP_PUBLISH_SIGN:
        if (h->body_len < 4 || get_u32(b) < h->body_len - 4)
            return KPP_ERR_BAD_BODY;
        r->total = get_u32(b);
        r->msg = b + 4;
        r->msg_len = h->body_len - 4;
        return 0;
    case KPP_OP_AUDIT_SIGN:
        if (h->body_len == 0 || h->body_len > KPP_AUDIT_SIGN_MAX)
            return KPP_ERR_BAD_BODY;
        r->msg = b;
        r->msg_len = h->body_len;
        return 0;
    default:
        return KPP_ERR_UNKNOWN_OP; /* not reached: the caller checked op_known */
    }
}

uint32_t kpp_decode_request(const uint8_t *buf, size_t len, kpp_request *out, uint16_t *op_echo)
{
    uint16_t echo_local;
    uint16_t *echo = op_echo != NULL ? op_echo : &echo_local;
    kpp_request r;
    memset(&r, 0, sizeof(r));
    if (out != NULL)
        memset(out, 0, sizeof(*out));

    kpp_header h;
    uint32_t st = decode_header(buf, len, &h, echo);
    if (st != 0)
        return st;
    if (!op_known(h.op))
        return KPP_ERR_UNKNOWN_OP;
    if (h.status != 0)
        return KPP_ERR_NOT_REQUEST;
    r.op = (kpp_op)h.op;
    st = decode_request_body(&h, &r);
    if (st != 0)
        return st;
    if (out != NULL)
        *out = r;
    return 0;
}

size_t kpp_encode_sign(uint8_t *buf, size_t cap, const sk_kid *kid, const void *msg, size_t msg_len)
{
    if (kid == NULL || msg_len > KPP_SIGN_MAX || (msg == NULL && msg_len != 0))
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_SIGN, 0, SK_KID_LEN + msg_len);
    if (n == 0)
        return 0;
    memcpy(buf + KPP_HDR_LEN, kid->b, SK_KID_LEN);
    if (msg_len != 0)
        memcpy(buf + KPP_HDR_LEN + SK_KID_LEN, msg, msg_len);
    return n;
}

size_t kpp_encode_generate(uint8_t *buf, size_t cap, const sk_kid *kid, unsigned bits)
{
    if (kid == NULL || !bits_allowed(bits))
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_GENERATE, 0, KPP_GENERATE_BODY);
    if (n == 0)
        return 0;
    memcpy(buf + KPP_HDR_LEN, kid->b, SK_KID_LEN);
    put_u32(buf + KPP_HDR_LEN + SK_KID_LEN, (uint32_t)bits);
    return n;
}

size_t kpp_encode_kid_op(uint8_t *buf, size_t cap, kpp_op op, const sk_kid *kid)
{
    if (kid == NULL || (op != KPP_OP_DESTROY && op != KPP_OP_KEY_ATTRS))
        return 0;
    size_t n = put_header(buf, cap, (uint16_t)op, 0, KPP_KID_BODY);
    if (n == 0)
        return 0;
    memcpy(buf + KPP_HDR_LEN, kid->b, SK_KID_LEN);
    return n;
}

size_t kpp_encode_list(uint8_t *buf, size_t cap, uint32_t offset)
{
    size_t n = put_header(buf, cap, KPP_OP_LIST, 0, KPP_LIST_BODY);
    if (n == 0)
        return 0;
    put_u32(buf + KPP_HDR_LEN, offset);
    return n;
}

size_t kpp_encode_ping(uint8_t *buf, size_t cap, const sk_kid *kid)
{
    size_t n = put_header(buf, cap, KPP_OP_PING, 0, KPP_PING_BODY);
    if (n == 0)
        return 0;
    buf[KPP_HDR_LEN] = kid != NULL ? 1 : 0;
    if (kid != NULL)
        memcpy(buf + KPP_HDR_LEN + 1, kid->b, SK_KID_LEN);
    else
        memset(buf + KPP_HDR_LEN + 1, 0, SK_KID_LEN);
    return n;
}

size_t kpp_encode_sessions(uint8_t *buf, size_t cap)
{
    return put_header(buf, cap, KPP_OP_SESSIONS, 0, 0);
}

size_t kpp_encode_reopens(uint8_t *buf, size_t cap)
{
    return put_header(buf, cap, KPP_OP_REOPENS, 0, 0);
}

size_t kpp_encode_audit_pubkey(uint8_t *buf, size_t cap)
{
    return put_header(buf, cap, KPP_OP_AUDIT_PUBKEY, 0, 0);
}

size_t kpp_encode_publish_pubkey(uint8_t *buf, size_t cap)
{
    return put_header(buf, cap, KPP_OP_PUBLISH_PUBKEY, 0, 0);
}

size_t kpp_encode_token_info(uint8_t *buf, size_t cap)
{
    return put_header(buf, cap, KPP_OP_TOKEN_INFO, 0, 0);
}

size_t kpp_encode_publish_part(uint8_t *buf, size_t cap, const void *part, size_t part_len)
{
    if (part == NULL || part_len == 0)
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_PUBLISH_PART, 0, part_len);
    if (n != 0)
        memcpy(buf + KPP_HDR_LEN, part, part_len);
    return n;
}

size_t kpp_encode_publish_sign(uint8_t *buf, size_t cap, uint32_t total, const void *part,
                               size_t part_len)
{
    if ((part == NULL && part_len != 0) || part_len > KPP_PART_LAST || total < part_len)
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_PUBLISH_SIGN, 0, 4 + part_len);
    if (n == 0)
        return 0;
    put_u32(buf + KPP_HDR_LEN, total);
    if (part_len != 0)
        memcpy(buf + KPP_HDR_LEN + 4, part, part_len);
    return n;
}

size_t kpp_encode_audit_sign(uint8_t *buf, size_t cap, const void *msg, size_t msg_len)
{
    if (msg == NULL || msg_len == 0 || msg_len > KPP_AUDIT_SIGN_MAX)
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_AUDIT_SIGN, 0, msg_len);
    if (n == 0)
        return 0;
    memcpy(buf + KPP_HDR_LEN, msg, msg_len);
    return n;
}

/* ---- replies ---------------------------------------------------------------------------- */

uint32_t kpp_decode_reply(const uint8_t *buf, size_t len, kpp_op op, kpp_reply *out)
{
    if (out != NULL)
        memset(out, 0, sizeof(*out));
    uint16_t echo;
    kpp_header h;
    uint32_t st = decode_header(buf, len, &h, &echo);
    if (st != 0)
        return st;
    if (!op_known((unsigned)op))
        return KPP_ERR_UNKNOWN_OP; /* the caller's own op: no reply can answer it */
    if (h.op != (unsigned)op)
        return KPP_ERR_BAD_BODY;
    /* An error has an empty body or its CKR; every DESTROY and PING success has none. */
    if (h.status != 0 && h.body_len != 0 && h.body_len != KPP_CKR_BODY)
        return KPP_ERR_BAD_BODY;
    if (h.status == 0 && h.body_len != 0 && (op == KPP_OP_DESTROY || op == KPP_OP_PING))
        return KPP_ERR_BAD_BODY;
    if (out != NULL) {
        out->op = op;
        out->status = h.status;
        out->body = h.body;
        out->body_len = h.body_len;
        out->ckr = h.status != 0 && h.body_len == KPP_CKR_BODY ? get_u32(h.body) : 0;
    }
    return 0;
}

size_t kpp_encode_status(uint8_t *buf, size_t cap, uint16_t op, uint32_t status)
{
    return put_header(buf, cap, op, status, 0);
}

size_t kpp_encode_error(uint8_t *buf, size_t cap, uint16_t op, uint32_t status, uint32_t ckr)
{
    if (status == 0)
        return 0;
    size_t n = put_header(buf, cap, op, status, KPP_CKR_BODY);
    if (n != 0)
        put_u32(buf + KPP_HDR_LEN, ckr);
    return n;
}

size_t kpp_encode_sig_reply(uint8_t *buf, size_t cap, kpp_op op, const uint8_t *sig, size_t sig_len)
{
    if (sig == NULL || sig_len == 0 || sig_len > SK_SIG_MAX ||
        (op != KPP_OP_SIGN && op != KPP_OP_AUDIT_SIGN && op != KPP_OP_PUBLISH_SIGN))
        return 0;
    size_t n = put_header(buf, cap, (uint16_t)op, 0, sig_len);
    if (n == 0)
        return 0;
    memcpy(buf + KPP_HDR_LEN, sig, sig_len);
    return n;
}

size_t kpp_encode_pubkey_reply(uint8_t *buf, size_t cap, kpp_op op, const sk_pubkey *pub)
{
    if (pub == NULL ||
        (op != KPP_OP_GENERATE && op != KPP_OP_AUDIT_PUBKEY && op != KPP_OP_PUBLISH_PUBKEY))
        return 0;
    if (pub->n_len == 0 || pub->n_len > SK_MODULUS_MAX || pub->e_len == 0 ||
        pub->e_len > SK_EXPONENT_MAX || pub->bits < KPP_PUBKEY_BITS_MIN ||
        pub->bits > KPP_PUBKEY_BITS_MAX)
        return 0;
    size_t body_len = 4 + 2 + pub->n_len + 2 + pub->e_len;
    size_t n = put_header(buf, cap, (uint16_t)op, 0, body_len);
    if (n == 0)
        return 0;
    uint8_t *p = buf + KPP_HDR_LEN;
    put_u32(p, (uint32_t)pub->bits);
    p += 4;
    put_u16(p, (uint16_t)pub->n_len);
    p += 2;
    memcpy(p, pub->n, pub->n_len);
    p += pub->n_len;
    put_u16(p, (uint16_t)pub->e_len);
    p += 2;
    memcpy(p, pub->e, pub->e_len);
    return n;
}

size_t kpp_encode_list_reply(uint8_t *buf, size_t cap, uint32_t total, const sk_key_entry *e,
                             size_t n)
{
    if (n > KPP_LIST_MAX || (e == NULL && n != 0))
        return 0;
    size_t len = put_header(buf, cap, KPP_OP_LIST, 0, KPP_LIST_REPLY_HDR + n * KPP_ENTRY_LEN);
    if (len == 0)
        return 0;
    uint8_t *p = buf + KPP_HDR_LEN;
    put_u32(p, total);
    put_u32(p + 4, (uint32_t)n);
    p += KPP_LIST_REPLY_HDR;
    for (size_t i = 0; i < n; i++, p += KPP_ENTRY_LEN) {
        memcpy(p, e[i].kid.b, SK_KID_LEN);
        p[SK_KID_LEN] = (uint8_t)((e[i].has_private ? KPP_LIST_FLAG_PRIVATE : 0u) |
                                  (e[i].has_public ? KPP_LIST_FLAG_PUBLIC : 0u));
    }
    return len;
}

size_t kpp_encode_u32_reply(uint8_t *buf, size_t cap, kpp_op op, uint32_t value)
{
    if (op != KPP_OP_SESSIONS && op != KPP_OP_REOPENS) /* the ops whose reply body is a u32 */
        return 0;
    size_t n = put_header(buf, cap, (uint16_t)op, 0, 4);
    if (n == 0)
        return 0;
    put_u32(buf + KPP_HDR_LEN, value);
    return n;
}

size_t kpp_encode_generate_reply(uint8_t *buf, size_t cap, const sk_pubkey *pub, sk_attrs attrs)
{
    if ((attrs & ~SK_ATTR_ALL) != 0 || !(attrs & SK_ATTR_READ))
        return 0;
    size_t n = kpp_encode_pubkey_reply(buf, cap, KPP_OP_GENERATE, pub);
    if (n == 0 || n >= cap)
        return 0;
    put_u32(buf + 8, get_u32(buf + 8) + 1); /* the body length, one byte longer */
    buf[n] = attrs;
    return n + 1;
}

size_t kpp_encode_attrs_reply(uint8_t *buf, size_t cap, sk_attrs attrs)
{
    if ((attrs & ~SK_ATTR_ALL) != 0 || !(attrs & SK_ATTR_READ))
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_KEY_ATTRS, 0, 1);
    if (n == 0)
        return 0;
    buf[KPP_HDR_LEN] = attrs;
    return n;
}

/* A reply a body decoder may read: status 0 and a body that is there when it has a length. */
static int reply_ok(const kpp_reply *r, kpp_op op)
{
    return r != NULL && r->status == 0 && r->op == op && (r->body != NULL || r->body_len == 0);
}

uint32_t kpp_reply_sig(const kpp_reply *r, uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    if ((!reply_ok(r, KPP_OP_SIGN) && !reply_ok(r, KPP_OP_AUDIT_SIGN) &&
         !reply_ok(r, KPP_OP_PUBLISH_SIGN)) ||
        r->body_len == 0 || r->body_len > SK_SIG_MAX)
        return KPP_ERR_BAD_BODY;
    if (sig != NULL)
        memcpy(sig, r->body, r->body_len);
    if (sig_len != NULL)
        *sig_len = r->body_len;
    return 0;
}

uint32_t kpp_reply_pubkey(const kpp_reply *r, sk_pubkey *pub)
{
    if (!reply_ok(r, KPP_OP_GENERATE) && !reply_ok(r, KPP_OP_AUDIT_PUBKEY) &&
        !reply_ok(r, KPP_OP_PUBLISH_PUBKEY))
        return KPP_ERR_BAD_BODY;
    const uint8_t *p = r->body;
    size_t left = r->body_len;

    if (left < 4 + 2)
        return KPP_ERR_BAD_BODY;
    uint32_t bits = get_u32(p);
    size_t n_len = get_u16(p + 4);
    p += 6;
    left -= 6;
    if (bits < KPP_PUBKEY_BITS_MIN || bits > KPP_PUBKEY_BITS_MAX || n_len == 0 ||
        n_len > SK_MODULUS_MAX || left < n_len + 2)
        return KPP_ERR_BAD_BODY;
    const uint8_t *n = p;
    p += n_len;
    left -= n_len;
    size_t e_len = get_u16(p);
    p += 2;
    left -= 2;
    if (e_len == 0 || e_len > SK_EXPONENT_MAX || left != e_len)
        return KPP_ERR_BAD_BODY;

    if (pub != NULL) {
        memset(pub, 0, sizeof(*pub));
        pub->bits = bits;
        memcpy(pub->n, n, n_len);
        pub->n_len = n_len;
        memcpy(pub->e, p, e_len);
        pub->e_len = e_len;
    }
    return 0;
}

uint32_t kpp_reply_list(const kpp_reply *r, sk_key_entry *out, size_t cap, uint32_t *total,
                        size_t *n)
{
    if (!reply_ok(r, KPP_OP_LIST) || r->body_len < KPP_LIST_REPLY_HDR)
        return KPP_ERR_BAD_BODY;
    uint32_t count = get_u32(r->body + 4);
    if (count > KPP_LIST_MAX || r->body_len != KPP_LIST_REPLY_HDR + (size_t)count * KPP_ENTRY_LEN)
        return KPP_ERR_BAD_BODY;
    const uint8_t *entries = r->body + KPP_LIST_REPLY_HDR;
    for (size_t i = 0; i < count; i++) {
        uint8_t flags = entries[i * KPP_ENTRY_LEN + SK_KID_LEN];
        if (flags & ~(KPP_LIST_FLAG_PRIVATE | KPP_LIST_FLAG_PUBLIC))
            return KPP_ERR_BAD_BODY;
    }
    if (out == NULL)
        cap = 0;
    for (size_t i = 0; i < count && i < cap; i++) {
        const uint8_t *p = entries + i * KPP_ENTRY_LEN;
        memset(&out[i], 0, sizeof(out[i]));
        memcpy(out[i].kid.b, p, SK_KID_LEN);
        out[i].has_private = (p[SK_KID_LEN] & KPP_LIST_FLAG_PRIVATE) != 0;
        out[i].has_public = (p[SK_KID_LEN] & KPP_LIST_FLAG_PUBLIC) != 0;
    }
    if (total != NULL)
        *total = get_u32(r->body);
    if (n != NULL)
        *n = count;
    return 0;
}

uint32_t kpp_reply_u32(const kpp_reply *r, uint32_t *value)
{
    if ((!reply_ok(r, KPP_OP_SESSIONS) && !reply_ok(r, KPP_OP_REOPENS)) || r->body_len != 4)
        return KPP_ERR_BAD_BODY;
    if (value != NULL)
        *value = get_u32(r->body);
    return 0;
}

/* The attributes byte: the known bits only, and read. */
static int attrs_ok(uint8_t a)
{
    return (a & ~SK_ATTR_ALL) == 0 && (a & SK_ATTR_READ) != 0;
}

uint32_t kpp_reply_generate(const kpp_reply *r, sk_pubkey *pub, sk_attrs *attrs)
{
    if (!reply_ok(r, KPP_OP_GENERATE) || r->body_len < 2 || !attrs_ok(r->body[r->body_len - 1]))
        return KPP_ERR_BAD_BODY;
    kpp_reply key = *r;
    key.body_len--;
    uint32_t st = kpp_reply_pubkey(&key, pub);
    if (st == 0 && attrs != NULL)
        *attrs = r->body[r->body_len - 1];
    return st;
}

uint32_t kpp_reply_attrs(const kpp_reply *r, sk_attrs *attrs)
{
    if (!reply_ok(r, KPP_OP_KEY_ATTRS) || r->body_len != 1 || !attrs_ok(r->body[0]))
        return KPP_ERR_BAD_BODY;
    if (attrs != NULL)
        *attrs = r->body[0];
    return 0;
}

/* ---- TOKEN_INFO -------------------------------------------------------------------------- */

#define KPP_TI_MANUF 32
#define KPP_TI_MODEL 16
#define KPP_TI_BODY (2 + 5 * 4 + KPP_TI_MANUF + KPP_TI_MODEL)

/* The label-safe set of sk_token_info's texts. */
static int ti_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr(" ._:/()+?-", c) != NULL);
}

/* Writes text into a NUL-padded field of len bytes, other bytes as '?'. */
static void ti_put_text(uint8_t *p, size_t len, const char *text)
{
    memset(p, 0, len);
    for (size_t i = 0; i < len && text[i] != '\0'; i++)
        p[i] = ti_char_ok((unsigned char)text[i]) ? (uint8_t)text[i] : '?';
}

/* Reads a NUL-padded field into out (len + 1 bytes): -1 unless every byte before the first
 * NUL is label-safe and only NULs follow it. */
static int ti_get_text(const uint8_t *p, size_t len, char *out)
{
    size_t n = 0;
    while (n < len && p[n] != 0) {
        if (!ti_char_ok(p[n]))
            return -1;
        out[n] = (char)p[n];
        n++;
    }
    for (size_t i = n; i < len; i++)
        if (p[i] != 0)
            return -1;
    out[n] = '\0';
    return 0;
}

size_t kpp_encode_token_info_reply(uint8_t *buf, size_t cap, const sk_token_info *ti)
{
    uint8_t mech = strcmp(ti->sign_mechanism, "sha256_rsa_pkcs") == 0 ? 1
                   : strcmp(ti->sign_mechanism, "rsa_pkcs") == 0      ? 2
                                                                      : 0;
    if (mech == 0)
        return 0;
    size_t n = put_header(buf, cap, KPP_OP_TOKEN_INFO, 0, KPP_TI_BODY);
    if (n == 0)
        return 0;
    uint8_t *p = buf + KPP_HDR_LEN;
    p[0] = mech;
    p[1] = ti->sign_only_refused ? 1 : 0;
    put_u32(p + 2, ti->rsa_min_bits);
    put_u32(p + 6, ti->rsa_max_bits);
    put_u32(p + 10, ti->pin_min);
    put_u32(p + 14, ti->pin_max);
    put_u32(p + 18, ti->max_sessions);
    ti_put_text(p + 22, KPP_TI_MANUF, ti->manufacturer);
    ti_put_text(p + 22 + KPP_TI_MANUF, KPP_TI_MODEL, ti->model);
    return n;
}

uint32_t kpp_reply_token_info(const kpp_reply *r, sk_token_info *ti)
{
    if (!reply_ok(r, KPP_OP_TOKEN_INFO) || r->body_len != KPP_TI_BODY)
        return KPP_ERR_BAD_BODY;
    const uint8_t *p = r->body;
    sk_token_info t;
    memset(&t, 0, sizeof(t));
    if ((p[0] != 1 && p[0] != 2) || p[1] > 1 ||
        ti_get_text(p + 22, KPP_TI_MANUF, t.manufacturer) != 0 ||
        ti_get_text(p + 22 + KPP_TI_MANUF, KPP_TI_MODEL, t.model) != 0)
        return KPP_ERR_BAD_BODY;
    snprintf(t.sign_mechanism, sizeof(t.sign_mechanism), "%s",
             p[0] == 1 ? "sha256_rsa_pkcs" : "rsa_pkcs");
    t.sign_only_refused = p[1];
    t.rsa_min_bits = get_u32(p + 2);
    t.rsa_max_bits = get_u32(p + 6);
    t.pin_min = get_u32(p + 10);
    t.pin_max = get_u32(p + 14);
    t.max_sessions = get_u32(p + 18);
    if (ti != NULL)
        *ti = t;
    return 0;
}
