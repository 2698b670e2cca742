/* auditverify: the export's verifier and the anchor parser. See auditverify.h. */
#include "appliance/core/auditverify.h"

#include "base/chainhash.h"
#include "base/hex.h"
#include "jose/jose.h"

#include <inttypes.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- the anchor -------------------------------------------------------------------------- */

av_anchor_err av_anchor_parse(const char *text, av_anchor *out)
{
    memset(out, 0, sizeof(*out));
    /* Digits only (strtoull would take a sign, spaces and "0x"); 19 of them stay below 2^64
     * before the comparison with the maximum. */
    const char *colon = text ? strchr(text, ':') : NULL;
    size_t digits = colon ? (size_t)(colon - text) : 0;
    if (colon == NULL || digits == 0 || strspn(text, "0123456789") != digits ||
        !hex_string(colon + 1, AV_HASH_HEX))
        return AV_ANCHOR_FORM;
    if (digits > 19)
        return AV_ANCHOR_SEQ;
    uint64_t seq = 0;
    for (size_t i = 0; i < digits; i++)
        seq = seq * 10 + (uint64_t)(text[i] - '0');
    if (seq == 0 || seq > AV_ANCHOR_SEQ_MAX)
        return AV_ANCHOR_SEQ;
    out->seq = seq;
    memcpy(out->hash, colon + 1, AV_HASH_HEX + 1);
    return AV_ANCHOR_OK;
}

const char *av_anchor_strerror(av_anchor_err e)
{
    switch (e) {
    case AV_ANCHOR_OK:
        return "ok";
    case AV_ANCHOR_FORM:
        return "SEQ:HASH (a checkpoint's seq and its 64-hex hash)";
    case AV_ANCHOR_SEQ:
        return "SEQ:HASH with SEQ 1 or more (and at most 2^62)";
    }
    return "SEQ:HASH";
}

/* ---- verification ------------------------------------------------------------------------- */

static int av_bad(av_verdict *v, uint64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int av_bad(av_verdict *v, uint64_t seq, const char *fmt, ...)
{
    v->broken_seq = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->why, sizeof(v->why), fmt, ap);
    va_end(ap);
    return -1;
}

static EVP_PKEY *av_read_pub(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

/* The checkpoint's JWS is by the audit key over {hash, seq, time} equal to the line's. */
static int av_check_cp(EVP_PKEY *pub, json_t *line, char *why, size_t whylen)
{
    const char *jws = json_string_value(json_object_get(line, "jws"));
    jose_jws p;
    memset(&p, 0, sizeof(p));
    if (jws == NULL || jose_jws_parse(jws, strlen(jws), &p) != 0) {
        snprintf(why, whylen, "checkpoint is not a compact JWS");
        return -1;
    }
    int rc = -1;
    json_error_t je;
    char *header = json_dumps(p.header, JSON_COMPACT);
    json_t *payload =
        json_loadb((const char *)p.payload, p.payload_len, JSON_REJECT_DUPLICATES, &je);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    json_t *want_hash = json_object_get(line, "hash"), *want_seq = json_object_get(line, "seq");
    json_t *expected = json_loads(AV_CHECKPOINT_HEADER, 0, &je);
    int header_ok = header != NULL && expected != NULL && json_equal(p.header, expected);
    json_decref(expected);
    if (!header_ok) {
        snprintf(why, whylen, "checkpoint header is not the audit key's");
    } else if (ctx == NULL || EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) != 1 ||
               EVP_DigestVerify(ctx, p.sig, p.sig_len, (const unsigned char *)jws,
                                p.signing_input_len) != 1) {
        snprintf(why, whylen, "checkpoint signature does not verify with the audit key");
    } else if (payload == NULL || !json_equal(json_object_get(payload, "hash"), want_hash) ||
               !json_equal(json_object_get(payload, "seq"), want_seq)) {
        snprintf(why, whylen, "checkpoint's signed seq or hash differs from its line");
    } else {
        rc = 0;
    }
    EVP_MD_CTX_free(ctx);
    free(header);
    json_decref(payload);
    jose_jws_free(&p);
    return rc;
}

int av_verify_export(FILE *in, const char *pub_pem, const av_anchor *anchor, av_verdict *v)
{
    memset(v, 0, sizeof(*v));
    EVP_PKEY *pub = av_read_pub(pub_pem);
    if (pub == NULL)
        return av_bad(v, 0, "the audit public key is not a PEM public key");
    char *line = malloc(AV_LINE_MAX + 2);
    /* Hashes by seq, for checkpoints and the anchor. */
    size_t cap = 1024, n = 0;
    char(*hashes)[AV_HASH_HEX + 1] = malloc(cap * sizeof(*hashes));
    uint64_t first = 0, prev_seq = 0;
    char prev_hash[AV_HASH_HEX + 1] = "";
    int rc = line && hashes ? 0 : av_bad(v, 0, "out of memory");
    unsigned long lineno = 0;
    while (rc == 0 && fgets(line, AV_LINE_MAX + 2, in) != NULL) {
        lineno++;
        size_t len = strlen(line);
        if (len > AV_LINE_MAX) {
            rc = av_bad(v, prev_seq + 1, "line %lu is longer than %d bytes", lineno, AV_LINE_MAX);
            break;
        }
        json_error_t je;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &je);
        const char *type = json_string_value(json_object_get(j, "type"));
        json_t *seqj = json_object_get(j, "seq");
        uint64_t seq = json_is_integer(seqj) && json_integer_value(seqj) > 0
                           ? (uint64_t)json_integer_value(seqj)
                           : 0;
        if (j == NULL || type == NULL || seq == 0) {
            rc = av_bad(v, prev_seq + 1, "line %lu is not an export line", lineno);
        } else if (strcmp(type, "event") == 0) {
            const char *actor = json_string_value(json_object_get(j, "actor"));
            const char *action = json_string_value(json_object_get(j, "action"));
            const char *kid = json_string_value(json_object_get(j, "kid"));
            const char *ph = json_string_value(json_object_get(j, "prev_hash"));
            const char *h = json_string_value(json_object_get(j, "hash"));
            json_t *details = json_object_get(j, "details");
            json_t *t = json_object_get(j, "time");
            char computed[AV_HASH_HEX + 1];
            if (first != 0 && seq != prev_seq + 1) {
                rc = av_bad(v, prev_seq + 1,
                            seq > prev_seq + 1 ? "missing: seq %" PRIu64 " follows %" PRIu64
                                               : "out of order: seq %" PRIu64 " follows %" PRIu64,
                            seq, prev_seq);
            } else if (!actor || !action || !kid || !ph || !h || !json_is_object(details) ||
                       !json_is_integer(t)) {
                rc = av_bad(v, seq, "event has a missing or mistyped field");
            } else if (first != 0 && strcmp(ph, prev_hash) != 0) {
                rc = av_bad(v, seq, "prev_hash is not the hash of seq %" PRIu64, prev_seq);
            } else if (chash_event(ph, seq, json_integer_value(t), actor, action, kid, details,
                                   computed) != 0 ||
                       strcmp(computed, h) != 0) {
                rc = av_bad(v, seq, "hash does not match the event's contents");
            } else {
                if (first == 0)
                    first = seq;
                if (n == cap) {
                    cap *= 2;
                    void *grown = realloc(hashes, cap * sizeof(*hashes));
                    if (grown == NULL)
                        rc = av_bad(v, seq, "out of memory");
                    else
                        hashes = grown;
                }
                if (rc == 0) {
                    memcpy(hashes[n++], h, AV_HASH_HEX + 1);
                    memcpy(prev_hash, h, AV_HASH_HEX + 1);
                    prev_seq = seq;
                    v->events++;
                    v->last_seq = seq;
                }
            }
        } else if (strcmp(type, "checkpoint") == 0) {
            const char *h = json_string_value(json_object_get(j, "hash"));
            char why[160];
            if (first == 0 || seq < first || seq > prev_seq) {
                rc = av_bad(v, seq, "checkpoint for seq %" PRIu64 " has no event before it", seq);
            } else if (h == NULL || strcmp(h, hashes[seq - first]) != 0) {
                rc = av_bad(v, seq, "checkpoint's hash is not the hash of event %" PRIu64, seq);
            } else if (av_check_cp(pub, j, why, sizeof(why)) != 0) {
                rc = av_bad(v, seq, "%s", why);
            } else {
                v->last_checkpoint = seq;
            }
        } else {
            rc = av_bad(v, prev_seq + 1, "line %lu has an unknown type", lineno);
        }
        json_decref(j);
    }
    if (rc == 0 && anchor != NULL) {
        if (first == 0 || anchor->seq < first || anchor->seq > prev_seq)
            rc = av_bad(v, anchor->seq,
                        "truncated: the export ends at seq %" PRIu64
                        " but the anchor checkpoint is at seq %" PRIu64,
                        prev_seq, anchor->seq);
        else if (strcmp(hashes[anchor->seq - first], anchor->hash) != 0)
            rc = av_bad(v, anchor->seq, "event %" PRIu64 " is not the one the anchor names",
                        anchor->seq);
    }
    if (rc == 0 && v->events == 0)
        rc = av_bad(v, 0, "the export holds no event");
    free(line);
    free(hashes);
    EVP_PKEY_free(pub);
    return rc;
}
