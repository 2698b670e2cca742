/* verifier: compact JWS splitting, the pinned publication key, and the pure check of one
 * signed revocation feed. No network and no state here: every function may run in any
 * thread. See verifier.h for contracts. */
#include "verifier/internal.h"
#include "base/hex.h"
#include "base/file.h"
#include "base/names.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VFY_PEM_MAX 65536 /* bytes of a pinned key file */

static uint8_t *feed_decode_alloc(const char *in, size_t n, size_t *out_len);
static json_t *feed_json_object(const uint8_t *text, size_t len);
static int feed_uint(const json_t *o, const char *name, uint64_t *out);
static int feed_time(const json_t *o, const char *name, int64_t *out);
static int feed_kid_ok(const char *kid, size_t len);
static int feed_seq_cmp(const void *a, const void *b);
static vfy_feed_status feed_payload(const json_t *p, vfy_feed *f);

/* The strict base64url decoding of n characters in a fresh buffer with a NUL after it. */
static uint8_t *feed_decode_alloc(const char *in, size_t n, size_t *out_len)
{
    size_t cap = n / 4 * 3 + 3; /* n <= VFY_DOC_MAX: no overflow */
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return NULL;
    if (jose_b64url_decode(in, n, buf, cap - 1, out_len) != 0) {
        free(buf);
        return NULL;
    }
    buf[*out_len] = '\0';
    return buf;
}

/* A JSON object from len bytes: no duplicate keys, nothing after it, no NUL inside. */
static json_t *feed_json_object(const uint8_t *text, size_t len)
{
    json_t *j = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

int vfy_jws_split(const char *s, size_t len, size_t max, vfy_jws *out)
{
    memset(out, 0, sizeof(*out));
    if (s == NULL || len == 0 || len > max)
        return -1;
    const char *end = s + len;
    const char *d1 = memchr(s, '.', len);
    const char *d2 = d1 == NULL ? NULL : memchr(d1 + 1, '.', (size_t)(end - d1 - 1));
    if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL)
        return -1; /* not exactly three parts */
    size_t slen = (size_t)(end - d2 - 1);
    /* The signature's bound is checked on its text first: nothing past it is decoded. */
    if (slen / 4 * 3 > JOSE_SIG_MAX ||
        jose_b64url_decode(d2 + 1, slen, out->sig, sizeof(out->sig), &out->sig_len) != 0)
        goto fail;
    size_t hlen;
    uint8_t *h = feed_decode_alloc(s, (size_t)(d1 - s), &hlen);
    if (h == NULL)
        goto fail;
    out->header = feed_json_object(h, hlen);
    free(h);
    if (out->header == NULL)
        goto fail;
    out->payload_raw = feed_decode_alloc(d1 + 1, (size_t)(d2 - d1 - 1), &out->payload_raw_len);
    if (out->payload_raw == NULL)
        goto fail;
    out->signing_input_len = (size_t)(d2 - s);
    return 0;
fail:
    vfy_jws_free(out);
    return -1;
}

int vfy_jws_payload(vfy_jws *j)
{
    if (j->payload == NULL)
        j->payload = feed_json_object(j->payload_raw, j->payload_raw_len);
    return j->payload != NULL ? 0 : -1;
}

void vfy_jws_free(vfy_jws *j)
{
    if (j == NULL)
        return;
    json_decref(j->header);
    json_decref(j->payload);
    free(j->payload_raw);
    memset(j, 0, sizeof(*j));
}

vfy_err vfy_pubkey_load(const char *path, vfy_pubkey *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (path == NULL || path[0] == '\0') {
        snprintf(err, errlen, "no publication key file given");
        return VFY_E_KEY;
    }
    char *pem = NULL;
    size_t len = 0;
    file_status fs = file_read_alloc(path, 0, VFY_PEM_MAX, &pem, &len);
    vfy_err e = VFY_E_OK;
    if (fs == FILE_ERR_NOMEM) {
        snprintf(err, errlen, "out of memory");
        e = VFY_E_SYSTEM;
    } else if (fs == FILE_ERR_OPEN) {
        snprintf(err, errlen, "cannot read publication key %s: %s", path, strerror(errno));
        e = VFY_E_KEY;
    } else if (fs == FILE_ERR_TOO_LARGE) {
        snprintf(err, errlen, "publication key %s is larger than %d bytes", path, VFY_PEM_MAX);
        e = VFY_E_KEY;
    } else if (fs != FILE_OK) {
        snprintf(err, errlen, "cannot read publication key %s", path);
        e = VFY_E_KEY;
    } else if (jose_rsa_public_from_pem(pem, len, out->n, &out->n_len, out->e, &out->e_len) != 0) {
        snprintf(err, errlen, "publication key %s is not an RSA public key PEM", path);
        e = VFY_E_KEY;
    } else if (out->n_len < VFY_MIN_RSA_BYTES) {
        snprintf(err, errlen, "publication key %s is shorter than 2048 bits", path);
        e = VFY_E_KEY;
    }
    free(pem);
    if (e != VFY_E_OK)
        memset(out, 0, sizeof(*out));
    return e;
}

/* A non-negative integer member: 0, or -1 when missing, not an integer, or negative. */
static int feed_uint(const json_t *o, const char *name, uint64_t *out)
{
    const json_t *v = json_object_get(o, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* A time (Unix seconds, non-negative integer). */
static int feed_time(const json_t *o, const char *name, int64_t *out)
{
    uint64_t u;
    if (feed_uint(o, name, &u) != 0)
        return -1;
    *out = (int64_t)u; /* json_int_t is long long: fits */
    return 0;
}

/* Is kid exactly 32 lowercase hex characters? */
static int feed_kid_ok(const char *kid, size_t len)
{
    return kid != NULL && len == VFY_KID_LEN && hex_digits(kid, len);
}

static int feed_seq_cmp(const void *a, const void *b)
{
    const vfy_revocation *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int feed_subject_seq_cmp(const void *a, const void *b)
{
    const vfy_subject *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The optional subjects array into *f (malloc'd): 0, or -1 when it is out of shape. Not a
 * delta: every entry has a seq in [1, seq], each its own. */
static int feed_subjects(const json_t *p, vfy_feed *f)
{
    const json_t *subjects = json_object_get(p, "subjects");
    if (subjects == NULL)
        return 0; /* an appliance from before subject revocations */
    if (!json_is_array(subjects) || json_array_size(subjects) > f->seq)
        return -1;
    size_t n = json_array_size(subjects);
    if (n == 0)
        return 0;
    f->subjects = calloc(n, sizeof(*f->subjects));
    if (f->subjects == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(subjects, i);
        const json_t *sub = json_object_get(s, "sub");
        vfy_subject *out = &f->subjects[i];
        if (!json_is_object(s) || feed_uint(s, "seq", &out->seq) != 0 ||
            feed_time(s, "before", &out->before) != 0 || !json_is_string(sub) ||
            json_string_length(sub) < 1 || json_string_length(sub) > VFY_SUB_MAX || out->seq < 1 ||
            out->seq > f->seq)
            return -1;
        memcpy(out->sub, json_string_value(sub), json_string_length(sub) + 1);
        f->n_subjects = i + 1;
    }
    qsort(f->subjects, n, sizeof(*f->subjects), feed_subject_seq_cmp);
    for (size_t i = 1; i < n; i++)
        if (f->subjects[i].seq == f->subjects[i - 1].seq)
            return -1;
    return 0;
}

/* The payload's shape into *f (its revoked array malloc'd): OK or MALFORMED. */
static vfy_feed_status feed_payload(const json_t *p, vfy_feed *f)
{
    const json_t *revoked = json_object_get(p, "revoked");
    if (!json_is_string(json_object_get(p, "iss")) || feed_uint(p, "seq", &f->seq) != 0 ||
        feed_uint(p, "after", &f->after) != 0 || feed_time(p, "iat", &f->iat) != 0 ||
        feed_time(p, "exp", &f->exp) != 0 || feed_time(p, "ttl", &f->ttl) != 0 ||
        !json_is_array(revoked) || f->after > f->seq || f->exp <= f->iat)
        return VFY_FEED_MALFORMED;
    size_t n = json_array_size(revoked);
    /* Each entry has its own seq in (after, seq]: there cannot be more of them. */
    if (n > f->seq - f->after || feed_subjects(p, f) != 0)
        return VFY_FEED_MALFORMED;
    if (n == 0)
        return VFY_FEED_OK;
    f->revoked = calloc(n, sizeof(*f->revoked));
    if (f->revoked == NULL)
        return VFY_FEED_MALFORMED;
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(revoked, i);
        const json_t *kid = json_object_get(r, "kid");
        vfy_revocation *out = &f->revoked[i];
        if (!json_is_object(r) || feed_uint(r, "seq", &out->seq) != 0 ||
            feed_time(r, "revoked_at", &out->revoked_at) != 0 ||
            !json_is_string(json_object_get(r, "reason")) ||
            !feed_kid_ok(json_string_value(kid), json_string_length(kid)) || out->seq <= f->after ||
            out->seq > f->seq)
            return VFY_FEED_MALFORMED;
        memcpy(out->kid, json_string_value(kid), VFY_KID_LEN + 1);
        f->n_revoked = i + 1;
    }
    qsort(f->revoked, n, sizeof(*f->revoked), feed_seq_cmp);
    for (size_t i = 1; i < n; i++)
        if (f->revoked[i].seq == f->revoked[i - 1].seq)
            return VFY_FEED_MALFORMED;
    return VFY_FEED_OK;
}

vfy_feed_status vfy_signed_doc(const vfy_pubkey *key, const char *jws, size_t len, size_t max,
                               const char *typ, vfy_jws *j)
{
    memset(j, 0, sizeof(*j));
    if (key == NULL || vfy_jws_split(jws, len, max, j) != 0)
        return VFY_FEED_MALFORMED;
    const char *alg = json_string_value(json_object_get(j->header, "alg"));
    const char *got = json_string_value(json_object_get(j->header, "typ"));
    /* Exact comparisons: json strings may hold no NUL (JSON_ALLOW_NUL is off), so strcmp
     * sees the whole value; a feed signed by the same key is not a status list. */
    if (alg == NULL || got == NULL || strcmp(alg, "RS256") != 0 || strcmp(got, typ) != 0)
        return VFY_FEED_BAD_HEADER;
    if (jose_rs256_verify(key->n, key->n_len, key->e, key->e_len, jws, j->signing_input_len, j->sig,
                          j->sig_len) != 1)
        return VFY_FEED_BAD_SIGNATURE;
    /* Signed from here on: only now is the payload read. */
    return vfy_jws_payload(j) != 0 ? VFY_FEED_MALFORMED : VFY_FEED_OK;
}

vfy_feed_status vfy_feed_check(const vfy_pubkey *key, const char *jws, size_t len, int64_t now,
                               uint64_t current_seq, vfy_feed *out)
{
    memset(out, 0, sizeof(*out));
    vfy_jws j;
    vfy_feed_status st = vfy_signed_doc(key, jws, len, VFY_DOC_MAX, VFY_FEED_TYP, &j);
    if (st == VFY_FEED_OK)
        st = feed_payload(j.payload, out);
    if (st == VFY_FEED_OK && now >= out->exp)
        st = VFY_FEED_EXPIRED;
    else if (st == VFY_FEED_OK && out->seq < current_seq)
        st = VFY_FEED_ROLLBACK;
    else if (st == VFY_FEED_OK && out->after > current_seq)
        st = VFY_FEED_GAP;
    vfy_jws_free(&j);
    if (st != VFY_FEED_OK)
        vfy_feed_free(out);
    return st;
}

void vfy_feed_free(vfy_feed *f)
{
    if (f == NULL)
        return;
    free(f->revoked);
    free(f->subjects);
    memset(f, 0, sizeof(*f));
}

const char *vfy_feed_status_name(vfy_feed_status s)
{
    static const char *const names[] = {
        [VFY_FEED_OK] = "ok",
        [VFY_FEED_MALFORMED] = "malformed",
        [VFY_FEED_BAD_HEADER] = "bad_header",
        [VFY_FEED_BAD_SIGNATURE] = "bad_signature",
        [VFY_FEED_EXPIRED] = "expired",
        [VFY_FEED_ROLLBACK] = "rollback",
        [VFY_FEED_GAP] = "gap",
    };
    return nm_name(names, sizeof(names) / sizeof(names[0]), (unsigned)s, "invalid");
}
