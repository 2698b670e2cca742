/*
 * kpp: the keeper protocol, the only language the HTTP front and the keeper (the process
 * that loads the PKCS#11 module and holds the PIN) share. Pure encoding and decoding: no
 * I/O, no allocation, no state, so both sides and the fuzz target use the same code.
 *
 * Transport: a Unix SOCK_SEQPACKET connection, one message per send/recv, so a message
 * never has to be reassembled and its length is the datagram's. Each front worker thread
 * has its own connection, and the keeper serves them all from a pool of threads
 * (keeperd.h), so signing stays parallel; requests on one connection are strictly one at
 * a time (request, reply, request, ...).
 *
 * A message is a 12-byte header and a body, integers big-endian:
 *
 *   offset 0  u8  magic 'K' (0x4b)
 *   offset 1  u8  version KPP_VERSION
 *   offset 2  u16 op (kpp_op)
 *   offset 4  u32 status: 0 in requests; in replies an sk_status or a kpp_status
 *   offset 8  u32 body length: exactly the bytes that follow, at most KPP_BODY_MAX
 *
 * Bodies (every length is checked against its bound before it is used):
 *
 *   op             request body                      reply body (status 0 only)
 *   SIGN           kid[16] msg[0..KPP_SIGN_MAX]       sig[1..SK_SIG_MAX]
 *   GENERATE       kid[16] bits u32 (2048|3072|4096)  pubkey, attrs u8
 *   DESTROY        kid[16]                            (empty)
 *   LIST           offset u32                         total u32, n u32, n x (kid[16], flags u8)
 *   PING           has_kid u8 (0|1), kid[16]          (empty)
 *   SESSIONS       (empty)                            open u32
 *   AUDIT_PUBKEY   (empty)                            pubkey
 *   AUDIT_SIGN     input[1..KPP_AUDIT_SIGN_MAX]       sig[1..SK_SIG_MAX]
 *   PUBLISH_PUBKEY (empty)                            pubkey
 *   PUBLISH_PART   part[1..KPP_BODY_MAX]              (empty)
 *   PUBLISH_SIGN   total u32, part[0..KPP_PART_LAST]  sig[1..SK_SIG_MAX]
 *   KEY_ATTRS      kid[16]                            attrs u8
 *   TOKEN_INFO     (empty)                            mech u8 (1 sha256_rsa_pkcs, 2
 *                                                     rsa_pkcs), refused u8 (0|1), rsa_min,
 *                                                     rsa_max, pin_min, pin_max, sessions
 *                                                     (u32 each), manufacturer[32], model[16]
 *   REOPENS        (empty)                            re-opens u32 (the module re-opened since
 *                                                     the keeper started, hsm_reopens)
 *
 *   Op 3 was PUBLIC_KEY (a kid's public key), which nothing called: it is retired
 *   (KPP_OP_RETIRED), never reused, and refused as KPP_ERR_UNKNOWN_OP both ways.
 *
 *   pubkey = bits u32, n_len u16, n[1..SK_MODULUS_MAX], e_len u16, e[1..SK_EXPONENT_MAX]
 *   attrs: the private half's attributes as the token holds them, read back
 *   (base/signkey.h SK_ATTR_*; SK_ATTR_READ always set, no other bit): what the front
 *   records with the key. KEY_ATTRS reads them for a key made before they were recorded.
 *   TOKEN_INFO: what hsm_open probed (hsm_caps), from the keeper's memory (no token call);
 *   the texts NUL-padded, in the label-safe set of sk_token_info.
 *   LIST flags: bit 0 private half present, bit 1 public half present; n <= KPP_LIST_MAX
 *   AUDIT_*: the audit key (keeper.h), which has no kid on the wire. AUDIT_PUBKEY creates
 *   it on first use; AUDIT_SIGN's input is a checkpoint's JWS signing input, and the keeper
 *   refuses (SK_ERR_BAD_ARGUMENT) any input that is not checkpoint-shaped, or not a
 *   checkpoint of the audit chain as the keeper computes it (keeperd.h). The codec checks
 *   only the bounds; the rest is the keeper's policy (kp_svc_input_ok, keeperd.c).
 *   GENERATE: the keeper refuses a kid the registry does not hold as pending
 *   (SK_ERR_BAD_ARGUMENT) and one that ever existed (SK_ERR_KEY_EXISTS), keeperd.h.
 *   PUBLISH_*: the publication key (keeper.h), which signs revocation feeds. A feed can
 *   outgrow one message, so its signing input travels in parts: PUBLISH_PARTs append to
 *   the connection's pending input, and PUBLISH_SIGN appends its last part and signs the
 *   whole, which must be exactly `total` bytes (a part lost to a reconnect cannot yield a
 *   signature over less than the front sent) and feed-shaped (kp_svc_input_ok).
 *
 * A reply with a nonzero status has an empty body or a 4-byte one: ckr u32, the PKCS#11
 * return value (CKR_*) of the token call that failed, 0 when no token call is to blame
 * (the keeper's own refusal, a bound of ours) or it is unknown. Only the front's metrics
 * read it: the status alone decides what the front does. Any other error body is refused.
 * A request the keeper cannot decode gets a reply with op echoed (0 when even the header
 * is unreadable) and one of the kpp_status codes, and the connection stays usable.
 */
#ifndef APPLIANCE_KPROTO_H
#define APPLIANCE_KPROTO_H

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

#define KPP_MAGIC 0x4b
#define KPP_VERSION 1
#define KPP_HDR_LEN 12
#define KPP_BODY_MAX (96 * 1024)
#define KPP_MSG_MAX (KPP_HDR_LEN + KPP_BODY_MAX)
/* The longest message a SIGN may carry: the JWT signing input of a 64 KiB request body,
 * base64url-encoded, fits (64 KiB * 4/3 + header). */
#define KPP_SIGN_MAX (KPP_BODY_MAX - SK_KID_LEN)
#define KPP_LIST_MAX 1024 /* entries per LIST reply: 17 bytes each */
/* The longest input an AUDIT_SIGN may carry: KP_AUDIT_SIGN_MAX (keeper.h, which keeper.c
 * checks is the same number at compile time). */
#define KPP_AUDIT_SIGN_MAX 1024
/* The longest last part a PUBLISH_SIGN carries after its total. */
#define KPP_PART_LAST (KPP_BODY_MAX - 4)

typedef enum {
    KPP_OP_SIGN = 1,
    KPP_OP_GENERATE = 2,
    /* 3: retired (KPP_OP_RETIRED) */
    KPP_OP_DESTROY = 4,
    KPP_OP_LIST = 5,
    KPP_OP_PING = 6,
    KPP_OP_SESSIONS = 7,
    KPP_OP_AUDIT_PUBKEY = 8,
    KPP_OP_AUDIT_SIGN = 9,
    KPP_OP_PUBLISH_PUBKEY = 10,
    KPP_OP_PUBLISH_PART = 11,
    KPP_OP_PUBLISH_SIGN = 12,
    KPP_OP_KEY_ATTRS = 13,
    KPP_OP_TOKEN_INFO = 14,
    KPP_OP_REOPENS = 15,
} kpp_op;
/* The ops are numbered from the first to the last without a gap but KPP_OP_RETIRED: the
 * number of PUBLIC_KEY, removed, kept so that no op's number moved. */
#define KPP_OP_FIRST KPP_OP_SIGN
#define KPP_OP_LAST KPP_OP_REOPENS
#define KPP_OP_RETIRED 3

/* Reply statuses of the protocol itself, above every sk_status value. */
typedef enum {
    KPP_ERR_SHORT = 100,     /* fewer bytes than a header, or than the body length says */
    KPP_ERR_OVERSIZED = 101, /* longer than KPP_MSG_MAX, or more bytes than it says */
    KPP_ERR_MAGIC = 102,     /* not a keeper protocol message */
    KPP_ERR_VERSION = 103,   /* another protocol version */
    KPP_ERR_UNKNOWN_OP = 104,
    KPP_ERR_BAD_BODY = 105,    /* the body does not have the op's shape or bounds */
    KPP_ERR_NOT_REQUEST = 106, /* status nonzero in a request */
} kpp_status;

/* A decoded request. Pointers (msg) point into the buffer that was decoded. */
typedef struct {
    kpp_op op;
    sk_kid kid;
    int has_kid;
    const uint8_t *msg; /* SIGN, AUDIT_SIGN, PUBLISH_PART, PUBLISH_SIGN */
    size_t msg_len;
    uint32_t total;  /* PUBLISH_SIGN */
    unsigned bits;   /* GENERATE */
    uint32_t offset; /* LIST */
} kpp_request;

/* A decoded reply header: op, status, and the body inside the decoded buffer. ckr: an
 * error reply's CKR value (its 4-byte body), 0 for an empty body or status 0. */
typedef struct {
    kpp_op op;
    uint32_t status;
    const uint8_t *body;
    size_t body_len;
    uint32_t ckr;
} kpp_reply;

/* A name for a status, sk_status or kpp_status ("ok", "key_not_found", "short"...). */
const char *kpp_status_name(uint32_t status);

/* Decodes a request of len bytes (len may exceed KPP_MSG_MAX: a recv with MSG_TRUNC
 * reports the real length). 0 and *out filled, or a kpp_status; *op_echo (may be NULL)
 * receives the op to echo in the error reply (0 when the header is unreadable). */
uint32_t kpp_decode_request(const uint8_t *buf, size_t len, kpp_request *out, uint16_t *op_echo);

/* Decodes a reply's header and checks that it answers op. 0, or a kpp_status. */
uint32_t kpp_decode_reply(const uint8_t *buf, size_t len, kpp_op op, kpp_reply *out);

/* Request encoders: write the whole message to buf (KPP_MSG_MAX bytes suffice) and return
 * its length, or 0 when an argument is out of bounds. */
size_t kpp_encode_sign(uint8_t *buf, size_t cap, const sk_kid *kid, const void *msg,
                       size_t msg_len);
size_t kpp_encode_generate(uint8_t *buf, size_t cap, const sk_kid *kid, unsigned bits);
size_t kpp_encode_kid_op(uint8_t *buf, size_t cap, kpp_op op,
                         const sk_kid *kid); /* DESTROY, KEY_ATTRS */
size_t kpp_encode_list(uint8_t *buf, size_t cap, uint32_t offset);
size_t kpp_encode_ping(uint8_t *buf, size_t cap, const sk_kid *kid); /* kid may be NULL */
size_t kpp_encode_sessions(uint8_t *buf, size_t cap);
size_t kpp_encode_reopens(uint8_t *buf, size_t cap);
size_t kpp_encode_audit_pubkey(uint8_t *buf, size_t cap);
/* msg: 1..KPP_AUDIT_SIGN_MAX bytes. */
size_t kpp_encode_audit_sign(uint8_t *buf, size_t cap, const void *msg, size_t msg_len);
size_t kpp_encode_publish_pubkey(uint8_t *buf, size_t cap);
size_t kpp_encode_token_info(uint8_t *buf, size_t cap);
/* part: 1..KPP_BODY_MAX bytes. */
size_t kpp_encode_publish_part(uint8_t *buf, size_t cap, const void *part, size_t part_len);
/* part: 0..KPP_PART_LAST bytes; total: the whole input's length, this part included. */
size_t kpp_encode_publish_sign(uint8_t *buf, size_t cap, uint32_t total, const void *part,
                               size_t part_len);

/* Reply encoders (keeper side): same conventions. kpp_encode_status writes a reply with an
 * empty body and any status (errors, and DESTROY/PING successes). */
size_t kpp_encode_status(uint8_t *buf, size_t cap, uint16_t op, uint32_t status);
/* An error reply that names the failed call's CKR value (a 4-byte body); 0 when status is
 * 0, which has no CKR to carry. */
size_t kpp_encode_error(uint8_t *buf, size_t cap, uint16_t op, uint32_t status, uint32_t ckr);
size_t kpp_encode_sig_reply(uint8_t *buf, size_t cap, kpp_op op, const uint8_t *sig,
                            size_t sig_len); /* SIGN, AUDIT_SIGN, PUBLISH_SIGN */
size_t kpp_encode_pubkey_reply(uint8_t *buf, size_t cap, kpp_op op,
                               const sk_pubkey *pub); /* GENERATE, *_PUBKEY */
/* GENERATE's reply: the pubkey and the attributes byte (SK_ATTR_READ set). */
size_t kpp_encode_generate_reply(uint8_t *buf, size_t cap, const sk_pubkey *pub, sk_attrs attrs);
size_t kpp_encode_attrs_reply(uint8_t *buf, size_t cap, sk_attrs attrs); /* KEY_ATTRS */
size_t kpp_encode_token_info_reply(uint8_t *buf, size_t cap, const sk_token_info *ti);
size_t kpp_encode_list_reply(uint8_t *buf, size_t cap, uint32_t total, const sk_key_entry *e,
                             size_t n);
size_t kpp_encode_u32_reply(uint8_t *buf, size_t cap, kpp_op op, uint32_t value);

/* Reply body decoders (front side), on a kpp_reply with status 0: 0, or KPP_ERR_BAD_BODY. */
uint32_t kpp_reply_sig(const kpp_reply *r, uint8_t sig[SK_SIG_MAX],
                       size_t *sig_len);                       /* SIGN, AUDIT_SIGN, PUBLISH_SIGN */
uint32_t kpp_reply_pubkey(const kpp_reply *r, sk_pubkey *pub); /* GENERATE, *_PUBKEY */
/* Copies up to cap entries; *total is the keeper's count, *n how many this reply holds. */
uint32_t kpp_reply_list(const kpp_reply *r, sk_key_entry *out, size_t cap, uint32_t *total,
                        size_t *n);
uint32_t kpp_reply_u32(const kpp_reply *r, uint32_t *value);
uint32_t kpp_reply_generate(const kpp_reply *r, sk_pubkey *pub, sk_attrs *attrs); /* GENERATE */
uint32_t kpp_reply_attrs(const kpp_reply *r, sk_attrs *attrs);                    /* KEY_ATTRS */
uint32_t kpp_reply_token_info(const kpp_reply *r, sk_token_info *ti);

#endif
