/* api: publication. The JWKS and the full revocation list are built once per registry
 * change and served from memory with a strong ETag; readers share one immutable,
 * reference-counted document, so a 1,000-key JWKS is never rebuilt or copied per request. */
#include "api/api.h"

#include <openssl/crypto.h>

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    atomic_int refs;
    uint64_t generation;
    size_t len;
    char etag[40];
    char body[];
} api_doc;

static pthread_mutex_t api_pub_mu = PTHREAD_MUTEX_INITIALIZER;
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

/* A document from j (consumed), with "<first 128 bits of SHA-256 in hex>" as ETag. */
static api_doc *api_doc_new(json_t *j, uint64_t generation)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL)
        return NULL;
    size_t len = strlen(text);
    api_doc *d = malloc(sizeof(*d) + len + 1);
    if (d != NULL) {
        atomic_init(&d->refs, 1);
        d->generation = generation;
        d->len = len;
        memcpy(d->body, text, len + 1);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        EVP_Digest(text, len, md, &mdlen, EVP_sha256(), NULL);
        d->etag[0] = '"';
        for (int i = 0; i < 16; i++)
            snprintf(d->etag + 1 + 2 * i, 3, "%02x", md[i]);
        memcpy(d->etag + 33, "\"", 2);
    }
    free(text);
    return d;
}

static json_t *api_jwks_json(reg *rg)
{
    size_t cap = reg_count(rg, REG_ACTIVE) + 8;
    reg_key *keys = calloc(cap, sizeof(*keys));
    json_t *arr = json_array();
    if (keys == NULL || arr == NULL) {
        free(keys);
        json_decref(arr);
        return NULL;
    }
    size_t n = reg_list(rg, REG_ACTIVE, keys, cap);
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
    for (size_t i = 0; i < n && i < cap; i++) {
        char kid[2 * HSM_KID_LEN + 1];
        hsm_kid_hex(&revs[i].kid, kid);
        json_array_append_new(
            arr, json_pack("{s:I, s:s, s:I, s:s}", "seq", (json_int_t)revs[i].seq, "kid", kid,
                           "revoked_at", (json_int_t)revs[i].revoked_at, "reason", revs[i].reason));
    }
    free(revs);
    return json_pack("{s:I, s:o}", "sequence", (json_int_t)top, "revoked", arr);
}

/* The current document in *slot, rebuilt when the registry moved; a new reference. */
static api_doc *api_doc_get(api_doc **slot, reg *rg, json_t *(*build)(reg *, uint64_t))
{
    pthread_mutex_lock(&api_pub_mu);
    uint64_t gen = reg_generation(rg);
    if (*slot == NULL || (*slot)->generation != gen) {
        api_doc *d = api_doc_new(build(rg, 0), gen);
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

static json_t *api_jwks_build(reg *rg, uint64_t unused)
{
    (void)unused;
    return api_jwks_json(rg);
}

void api_publish_refresh(const api_env *env)
{
    api_doc_put(api_doc_get(&api_jwks_doc, env->reg, api_jwks_build));
    api_doc_put(api_doc_get(&api_rev_doc, env->reg, api_revocations_json));
}

void api_publish_free(void)
{
    pthread_mutex_lock(&api_pub_mu);
    api_doc_put(api_jwks_doc);
    api_doc_put(api_rev_doc);
    api_jwks_doc = api_rev_doc = NULL;
    pthread_mutex_unlock(&api_pub_mu);
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
    return api_serve_doc(q, r, api_doc_get(&api_jwks_doc, q->env->reg, api_jwks_build),
                         q->env->cfg->jwks_max_age);
}

api_err api_revocations(const api_req *q, api_resp *r)
{
    uint64_t after = 0;
    if (q->query != NULL && q->query[0] != '\0') {
        const char *v = q->query + 6;
        size_t n = strspn(v, "0123456789");
        if (strncmp(q->query, "after=", 6) != 0 || n == 0 || n > 15 || v[n] != '\0')
            return api_fail(r, API_ERR_INVALID_QUERY,
                            "the only query is after=SEQ, a non-negative integer");
        after = strtoull(v, NULL, 10);
    }
    unsigned max_age = q->env->cfg->revocations_max_age;
    if (after == 0)
        return api_serve_doc(q, r, api_doc_get(&api_rev_doc, q->env->reg, api_revocations_json),
                             max_age);
    return api_serve_doc(q, r, api_doc_new(api_revocations_json(q->env->reg, after), 0), max_age);
}
