/* api: publication. The JWKS and the full revocation list are built once per registry
 * change and served from memory with a strong ETag; readers share one immutable,
 * reference-counted document, so a 1,000-key JWKS is never rebuilt or copied per request. */
#include "api/api.h"

#include "jose/jose.h"

#include <openssl/crypto.h>

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

typedef struct {
    atomic_int refs;
    uint64_t generation;
    size_t len;
    char etag[40];
    char body[];
} api_doc;

static pthread_mutex_t api_pub_mu = PTHREAD_MUTEX_INITIALIZER;
static void api_feed_drop_all(void);
static void api_sl_drop_all(void);
static api_doc *api_jwks_doc, *api_rev_doc;

static void api_doc_put(api_doc *d)
{
    if (d != NULL && atomic_fetch_sub(&d->refs, 1) == 1)
        free(d);
}

void api_resp_free(api_resp *r)
{
    if (r->doc != NULL) {
        api_doc_put(r->doc);
    } else {
        if (r->wipe && r->body != NULL)
            OPENSSL_cleanse(r->body, r->len);
        free(r->body);
    }
    r->doc = NULL;
    r->body = NULL;
}

/* A document holding a copy of text, with "<first 128 bits of SHA-256 in hex>" as ETag. */
static api_doc *api_doc_text(const char *text, size_t len, uint64_t generation)
{
    api_doc *d = malloc(sizeof(*d) + len + 1);
    if (d == NULL)
        return NULL;
    atomic_init(&d->refs, 1);
    d->generation = generation;
    d->len = len;
    memcpy(d->body, text, len);
    d->body[len] = '\0';
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_Digest(text, len, md, &mdlen, EVP_sha256(), NULL);
    d->etag[0] = '"';
    for (int i = 0; i < 16; i++)
        snprintf(d->etag + 1 + 2 * i, 3, "%02x", md[i]);
    memcpy(d->etag + 33, "\"", 2);
    return d;
}

/* A document from j (consumed), compact JSON. */
static api_doc *api_doc_new(json_t *j, uint64_t generation)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL)
        return NULL;
    api_doc *d = api_doc_text(text, strlen(text), generation);
    free(text);
    return d;
}

static json_t *api_jwks_json(reg *rg)
{
    /* Active and retiring keys: a rotated key keeps verifying the tokens already out. */
    size_t cap = reg_count(rg, REG_ACTIVE) + reg_count(rg, REG_RETIRING) + 8;
    reg_key *keys = calloc(cap, sizeof(*keys));
    json_t *arr = json_array();
    if (keys == NULL || arr == NULL) {
        free(keys);
        json_decref(arr);
        return NULL;
    }
    size_t n = reg_list(rg, REG_LIST_LIVE, keys, cap);
    for (size_t i = 0; i < n && i < cap; i++) {
        char kid[2 * HSM_KID_LEN + 1];
        hsm_kid_hex(&keys[i].kid, kid);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "RSA", "use",
                                             "sig", "alg", "RS256", "kid", kid, "n", keys[i].n_b64,
                                             "e", keys[i].e_b64));
    }
    free(keys);
    return json_pack("{s:o}", "keys", arr);
}

json_t *api_revocation_json(const reg_revocation *rv)
{
    char kid[2 * HSM_KID_LEN + 1];
    hsm_kid_hex(&rv->kid, kid);
    return json_pack("{s:I, s:s, s:I, s:s}", "seq", (json_int_t)rv->seq, "kid", kid, "revoked_at",
                     (json_int_t)rv->revoked_at, "reason", rv->reason);
}

static json_t *api_revocations_json(reg *rg, uint64_t after)
{
    uint64_t top = reg_revocation_seq(rg);
    size_t cap = top > after ? (size_t)(top - after) : 0;
    reg_revocation *revs = cap ? calloc(cap, sizeof(*revs)) : NULL;
    json_t *arr = json_array();
    if ((cap && revs == NULL) || arr == NULL) {
        free(revs);
        json_decref(arr);
        return NULL;
    }
    size_t n = cap ? reg_revocations_after(rg, after, revs, cap) : 0;
    for (size_t i = 0; i < n && i < cap; i++)
        json_array_append_new(arr, api_revocation_json(&revs[i]));
    free(revs);
    return json_pack("{s:I, s:o}", "sequence", (json_int_t)top, "revoked", arr);
}

/* Builds a document's JSON: a new reference, or NULL when out of memory. */
typedef json_t *(*api_doc_build)(const api_env *env);

/* The current document in *slot, rebuilt when the registry moved; a new reference. */
static api_doc *api_doc_get(api_doc **slot, const api_env *env, api_doc_build build)
{
    pthread_mutex_lock(&api_pub_mu);
    uint64_t gen = reg_generation(env->reg);
    if (*slot == NULL || (*slot)->generation != gen) {
        api_doc *d = api_doc_new(build(env), gen);
        if (d != NULL) {
            api_doc_put(*slot);
            *slot = d;
        }
    }
    api_doc *d = *slot;
    if (d != NULL)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&api_pub_mu);
    return d;
}

/* Client keys only. The publication key is served at GET /v1/revocations/key and never
 * here: a relying party that picks a key by kid and checks neither `use` nor `typ` would
 * otherwise take the signed feed (a JWS with iss and a fresh exp) or a status list for a
 * valid token. */
static json_t *api_jwks_build(const api_env *env)
{
    return api_jwks_json(env->reg);
}

static json_t *api_revocations_build(const api_env *env)
{
    return api_revocations_json(env->reg, 0);
}

void api_publish_refresh(const api_env *env)
{
    api_doc_put(api_doc_get(&api_jwks_doc, env, api_jwks_build));
    api_doc_put(api_doc_get(&api_rev_doc, env, api_revocations_build));
}

void api_publish_free(void)
{
    pthread_mutex_lock(&api_pub_mu);
    api_doc_put(api_jwks_doc);
    api_doc_put(api_rev_doc);
    api_jwks_doc = api_rev_doc = NULL;
    pthread_mutex_unlock(&api_pub_mu);
    api_feed_drop_all();
    api_sl_drop_all();
}

/* Does an If-None-Match header name this ETag (or "*")? */
static int api_etag_matches(const char *inm, const char *etag)
{
    if (inm == NULL)
        return 0;
    size_t elen = strlen(etag);
    for (const char *p = inm; *p;) {
        p += strspn(p, " \t,");
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        size_t n = strcspn(p, " \t,");
        if ((n == 1 && *p == '*') || (n == elen && memcmp(p, etag, elen) == 0))
            return 1;
        p += n;
    }
    return 0;
}

/* 200 with the document, or 304 when the client already has it. Takes d's reference. */
static api_err api_serve_doc(const api_req *q, api_resp *r, api_doc *d, unsigned max_age)
{
    if (d == NULL)
        return api_fail(r, API_ERR_INTERNAL, "document could not be built");
    api_header(r, "ETag: %s", d->etag);
    api_header(r, "Cache-Control: public, max-age=%u", max_age);
    if (api_etag_matches(q->if_none_match, d->etag)) {
        api_doc_put(d);
        r->status = 304;
        return API_OK;
    }
    r->doc = d;
    r->body = d->body;
    r->len = d->len;
    r->status = 200;
    return API_OK;
}

api_err api_jwks(const api_req *q, api_resp *r)
{
    if (q->query != NULL && q->query[0] != '\0')
        return api_fail(r, API_ERR_INVALID_QUERY, "the JWKS takes no query");
    return api_serve_doc(q, r, api_doc_get(&api_jwks_doc, q->env, api_jwks_build),
                         q->env->cfg->jwks_max_age);
}

/* ?after=SEQ, the only query of the revocation documents: API_OK and *after (0 without a
 * query), or the error. */
static api_err api_query_after(const api_req *q, api_resp *r, uint64_t *after)
{
    *after = 0;
    if (q->query == NULL || q->query[0] == '\0')
        return API_OK;
    if (strncmp(q->query, "after=", 6) != 0 ||
        api_parse_decimal(q->query + 6, API_SEQ_DIGITS_MAX, after) != 0)
        return api_fail(r, API_ERR_INVALID_QUERY,
                        "the only query is after=SEQ, a non-negative integer");
    return API_OK;
}

api_err api_revocations(const api_req *q, api_resp *r)
{
    uint64_t after;
    api_err e = api_query_after(q, r, &after);
    if (e != API_OK)
        return e;
    unsigned max_age = q->env->cfg->revocations_max_age;
    if (after == 0)
        return api_serve_doc(q, r, api_doc_get(&api_rev_doc, q->env, api_revocations_build),
                             max_age);
    return api_serve_doc(q, r, api_doc_new(api_revocations_json(q->env->reg, after), 0), max_age);
}

/* ---- the signed feed --------------------------------------------------------------------- */

/* Signed documents are cached per `after`, for one registry generation, and re-signed once
 * they are older than api_feed_resign_after(cfg) so that their iat stays fresh for verifiers that
 * bound the feed's age. A delta further back than API_FEED_DELTA_MAX revocations is
 * answered with the full feed instead, and one later than the newest with an empty delta
 * from the newest: so at most API_FEED_DELTA_MAX + 2 distinct documents exist per
 * generation, and a client walking every `after` cannot make the token sign more. */
#define API_FEED_DELTA_MAX 64
#define API_FEED_SLOTS (API_FEED_DELTA_MAX + 2)

/* Seconds after which a cached signed document is signed again: its max-age (at least
 * 10 s, so a max-age of 0 cannot make every request a signature), but at most a quarter
 * of its lifetime, so a copy is never served close to its exp. */
static int64_t api_feed_resign_after(const cfg *c)
{
    int64_t age = c->revocations_max_age > 10 ? c->revocations_max_age : 10;
    int64_t quarter = (int64_t)c->revocation_feed_lifetime / 4;
    return age < quarter ? age : quarter;
}

typedef struct {
    api_doc *doc; /* NULL: a free slot */
    uint64_t after;
    int64_t iat;
} api_feed_slot;

/* Held while a document is looked up and, if missing, signed: concurrent verifiers asking
 * for the same delta wait for one signature rather than each asking the token. */
static pthread_mutex_t api_feed_mu = PTHREAD_MUTEX_INITIALIZER;
static api_feed_slot api_feed[API_FEED_SLOTS];
static uint64_t api_feed_gen;

/* Caller holds api_feed_mu. */
static void api_feed_drop_locked(void)
{
    for (size_t i = 0; i < API_FEED_SLOTS; i++) {
        api_doc_put(api_feed[i].doc);
        api_feed[i].doc = NULL;
    }
}

static void api_feed_drop_all(void)
{
    pthread_mutex_lock(&api_feed_mu);
    api_feed_drop_locked();
    pthread_mutex_unlock(&api_feed_mu);
}

/* A compact JWS of payload (consumed) under header, signed by the publication key: a new
 * document, or NULL and *st set (the token's answer, or HSM_ERR_DEVICE when out of memory
 * or when payload is NULL). */
static api_doc *api_publication_sign(const api_env *env, const char *header, json_t *payload,
                                     hsm_status *st)
{
    *st = HSM_ERR_DEVICE;
    char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    if (text == NULL)
        return NULL;
    size_t hlen = strlen(header), plen = strlen(text);
    size_t cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX);
    char *jws = cap != SIZE_MAX ? malloc(cap) : NULL;
    size_t input_len = 0, total = 0, sig_len = 0;
    uint8_t sig[HSM_SIG_MAX];
    api_doc *d = NULL;
    if (jws != NULL && jose_jws_begin(header, hlen, text, plen, jws, cap, &input_len) == 0) {
        *st = kp_svc_sign(env->kp, KP_SVC_PUBLISH, jws, input_len, sig, &sig_len);
        if (*st == HSM_OK) {
            if (jose_jws_finish(jws, cap, input_len, sig, sig_len, &total) == 0)
                d = api_doc_text(jws, total, 0);
            if (d == NULL)
                *st = HSM_ERR_DEVICE;
        }
    }
    free(jws);
    free(text);
    return d;
}

/* Signs the feed of the revocations after `after` as of now: a new document, or NULL and
 * *st set (the token's answer, or HSM_ERR_DEVICE when out of memory). */
static api_doc *api_feed_sign(const api_env *env, uint64_t after, int64_t now, hsm_status *st)
{
    *st = HSM_ERR_DEVICE;
    json_t *list = api_revocations_json(env->reg, after);
    json_t *revoked = json_object_get(list, "revoked");
    const cfg *c = env->cfg;
    json_t *payload =
        revoked == NULL
            ? NULL
            : json_pack("{s:s, s:O, s:I, s:I, s:I, s:I, s:O}", "iss",
                        c->token_issuer[0] ? c->token_issuer : API_FEED_ISSUER_DEFAULT, "seq",
                        json_object_get(list, "sequence"), "after", (json_int_t)after, "iat",
                        (json_int_t)now, "exp", (json_int_t)(now + c->revocation_feed_lifetime),
                        "ttl", (json_int_t)c->revocations_max_age, "revoked", revoked);
    json_decref(list);
    return api_publication_sign(env, KP_PUBLISH_HEADER, payload, st);
}

/* The signed document for `after`, from the cache or signed now; a new reference. */
static api_doc *api_feed_get(const api_env *env, uint64_t after, int64_t now, hsm_status *st)
{
    *st = HSM_OK;
    pthread_mutex_lock(&api_feed_mu);
    uint64_t gen = reg_generation(env->reg);
    if (gen != api_feed_gen) {
        api_feed_drop_locked();
        api_feed_gen = gen;
    }
    uint64_t top = reg_revocation_seq(env->reg);
    if (after > top)
        after = top;
    if (top - after > API_FEED_DELTA_MAX)
        after = 0;
    api_feed_slot *slot = NULL, *oldest = &api_feed[0];
    for (size_t i = 0; i < API_FEED_SLOTS && slot == NULL; i++) {
        if (api_feed[i].doc != NULL && api_feed[i].after == after)
            slot = &api_feed[i];
        else if (api_feed[i].doc == NULL || api_feed[i].iat < oldest->iat)
            oldest = &api_feed[i];
    }
    if (slot != NULL && now - slot->iat >= api_feed_resign_after(env->cfg)) {
        api_doc_put(slot->doc);
        slot->doc = NULL;
    }
    if (slot == NULL) {
        slot = oldest; /* never full within one generation; oldest only as a fallback */
        api_doc_put(slot->doc);
        slot->doc = NULL;
    }
    if (slot->doc == NULL) {
        slot->doc = api_feed_sign(env, after, now, st);
        slot->after = after;
        slot->iat = now;
    }
    api_doc *d = slot->doc;
    if (d != NULL)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&api_feed_mu);
    return d;
}

api_err api_revocations_feed(const api_req *q, api_resp *r)
{
    uint64_t after;
    api_err e = api_query_after(q, r, &after);
    if (e != API_OK)
        return e;
    hsm_status st;
    api_doc *d = api_feed_get(q->env, after, q->now, &st);
    if (d == NULL)
        return st != HSM_OK ? api_hsm_error(r, st)
                            : api_fail(r, API_ERR_INTERNAL, "the feed could not be built");
    api_header(r, "Content-Type: " API_FEED_MEDIA_TYPE);
    return api_serve_doc(q, r, d, q->env->cfg->revocations_max_age);
}

api_err api_revocations_key(const api_req *q, api_resp *r)
{
    return api_service_key(q, r, KP_SVC_PUBLISH, KP_PUBLISH_KID, API_PUBLICATION_USE, API_FEED_TYP);
}

/* ---- token status lists (the IETF OAuth Token Status List draft) ------------------------ */

void api_public_url(const cfg *c, char out[CFG_ORIGIN_MAX + 1])
{
    if (c->public_url[0] != '\0')
        snprintf(out, CFG_ORIGIN_MAX + 1, "%s", c->public_url);
    else
        snprintf(out, CFG_ORIGIN_MAX + 1, "https://%s:%u", c->listen_address, c->port);
}

void api_status_list_uri(const cfg *c, uint32_t list, char out[API_URI_MAX])
{
    char base[CFG_ORIGIN_MAX + 1];
    api_public_url(c, base);
    snprintf(out, API_URI_MAX, "%s/v1/status-lists/%u", base, list);
}

/* Signed lists are cached like the feed: per list, for one generation of the token state,
 * re-signed once older than api_feed_resign_after. A list is 128 KiB of bits but a few
 * hundred bytes deflated while few of its tokens are revoked. */
#define API_SL_SLOTS 8

typedef struct {
    api_doc *doc; /* NULL: a free slot */
    uint32_t list;
    uint64_t generation;
    int64_t iat;
} api_sl_slot;

static pthread_mutex_t api_sl_mu = PTHREAD_MUTEX_INITIALIZER;
static api_sl_slot api_sl[API_SL_SLOTS];

/* The list's bits, deflated (zlib format) and base64url'd: a malloc'd string, or NULL. */
static char *api_sl_lst(tks *t, uint32_t list)
{
    uint8_t *bits = malloc(TKS_LIST_BYTES);
    uLongf zlen = compressBound(TKS_LIST_BYTES);
    uint8_t *z = malloc(zlen);
    char *b64 = NULL;
    uint32_t reserved;
    uint64_t revoked;
    if (bits != NULL && z != NULL && tks_list_copy(t, list, bits, &reserved, &revoked) == TKS_OK &&
        compress2(z, &zlen, bits, TKS_LIST_BYTES, Z_BEST_COMPRESSION) == Z_OK) {
        size_t cap = jose_b64url_encoded_len(zlen) + 1;
        b64 = malloc(cap);
        if (b64 != NULL && jose_b64url_encode(z, zlen, b64, cap) == 0) {
            free(b64);
            b64 = NULL;
        }
    }
    free(bits);
    free(z);
    return b64;
}

/* Signs list `list` as of now: a new document, or NULL and *st set. */
static api_doc *api_sl_sign(const api_env *env, uint32_t list, int64_t now, hsm_status *st)
{
    *st = HSM_ERR_DEVICE;
    const cfg *c = env->cfg;
    char uri[API_URI_MAX];
    api_status_list_uri(c, list, uri);
    char *lst = api_sl_lst(env->tks, list);
    json_t *payload =
        lst == NULL
            ? NULL
            : json_pack("{s:s, s:s, s:I, s:I, s:I, s:{s:i, s:s}}", "iss",
                        c->token_issuer[0] ? c->token_issuer : API_FEED_ISSUER_DEFAULT, "sub", uri,
                        "iat", (json_int_t)now, "exp",
                        (json_int_t)(now + c->revocation_feed_lifetime), "ttl",
                        (json_int_t)c->revocations_max_age, "status_list", "bits", 1, "lst", lst);
    free(lst);
    return api_publication_sign(env, KP_STATUS_LIST_HEADER, payload, st);
}

/* The signed list, from the cache or signed now; a new reference. */
static api_doc *api_sl_get(const api_env *env, uint32_t list, int64_t now, hsm_status *st)
{
    *st = HSM_OK;
    pthread_mutex_lock(&api_sl_mu);
    uint64_t gen = tks_generation(env->tks);
    api_sl_slot *slot = NULL, *oldest = &api_sl[0];
    for (size_t i = 0; i < API_SL_SLOTS && slot == NULL; i++) {
        if (api_sl[i].doc != NULL && api_sl[i].list == list)
            slot = &api_sl[i];
        else if (api_sl[i].doc == NULL || api_sl[i].iat < oldest->iat)
            oldest = &api_sl[i];
    }
    if (slot != NULL &&
        (slot->generation != gen || now - slot->iat >= api_feed_resign_after(env->cfg))) {
        api_doc_put(slot->doc);
        slot->doc = NULL;
    }
    if (slot == NULL) {
        slot = oldest;
        api_doc_put(slot->doc);
        slot->doc = NULL;
    }
    if (slot->doc == NULL) {
        slot->doc = api_sl_sign(env, list, now, st);
        slot->list = list;
        slot->generation = gen;
        slot->iat = now;
    }
    api_doc *d = slot->doc;
    if (d != NULL)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&api_sl_mu);
    return d;
}

static void api_sl_drop_all(void)
{
    pthread_mutex_lock(&api_sl_mu);
    for (size_t i = 0; i < API_SL_SLOTS; i++) {
        api_doc_put(api_sl[i].doc);
        api_sl[i].doc = NULL;
    }
    pthread_mutex_unlock(&api_sl_mu);
}

api_err api_status_list(const api_req *q, api_resp *r)
{
    if (q->query != NULL && q->query[0] != '\0')
        return api_fail(r, API_ERR_INVALID_QUERY, "a status list takes no query");
    uint64_t n;
    const char *text = q->id != NULL ? q->id : "";
    /* Digits only, no leading zero: one spelling per list, so one cache entry per list. */
    if (api_parse_decimal(text, 4, &n) != 0 || (text[0] == '0' && text[1] != '\0') ||
        n >= TKS_LISTS_MAX)
        return api_fail(r, API_ERR_INVALID_STATUS_LIST,
                        "a status list is named by its number, 0 to %u", TKS_LISTS_MAX - 1);
    if (n >= tks_list_count(q->env->tks))
        return api_fail(r, API_ERR_STATUS_LIST_NOT_FOUND, "status list %u does not exist yet",
                        (unsigned)n);
    hsm_status st;
    api_doc *d = api_sl_get(q->env, (uint32_t)n, q->now, &st);
    if (d == NULL)
        return st != HSM_OK ? api_hsm_error(r, st)
                            : api_fail(r, API_ERR_INTERNAL, "the status list could not be built");
    api_header(r, "Content-Type: " API_STATUS_LIST_MEDIA_TYPE);
    return api_serve_doc(q, r, d, q->env->cfg->revocations_max_age);
}
