/* api: publication. The JWKS and the revocation lists are built once per registry change
 * and served from memory with a strong ETag; readers share one immutable,
 * reference-counted document, so a 1,000-key JWKS is never rebuilt or copied per request.
 * The signed feed and the status lists are kept the same way until their content changes
 * or they age out, and what public requests may make the token sign is budgeted (see
 * "signed documents" below). */
#include "api/api.h"

#include "appliance/core/pubcache.h"
#include "appliance/front/ratelimit.h"
#include "jose/jose.h"
#include "base/clock.h"

#include <openssl/crypto.h>

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

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
        char kid[2 * SK_KID_LEN + 1];
        sk_kid_hex(&keys[i].kid, kid);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "RSA", "use",
                                             "sig", "alg", "RS256", "kid", kid, "n", keys[i].n_b64,
                                             "e", keys[i].e_b64));
    }
    free(keys);
    return json_pack("{s:o}", "keys", arr);
}

json_t *api_revocation_json(const reg_revocation *rv)
{
    char kid[2 * SK_KID_LEN + 1];
    sk_kid_hex(&rv->kid, kid);
    return json_pack("{s:I, s:s, s:I, s:s}", "seq", (json_int_t)rv->seq, "kid", kid, "revoked_at",
                     (json_int_t)rv->revoked_at, "reason", rv->reason);
}

/* Every subject revocation up to seq top that may still match a live token (before +
 * token_ttl_max > now), whatever `after`: the list is bounded by that horizon and a
 * verifier replaces its own with it, so a delta needs no merge. One committed after top
 * was read is left for the next document: this one's seq does not cover it (and a
 * verifier refuses an entry above the seq). NULL when out of memory. */
static json_t *api_subjects_json(reg *rg, const cfg *c, int64_t now, uint64_t top)
{
    int64_t horizon = now - (int64_t)c->token_ttl_max;
    size_t cap = reg_subjects_live(rg, horizon, NULL, 0) + 8; /* room for one racing it */
    reg_subject *subs = calloc(cap, sizeof(*subs));
    json_t *arr = json_array();
    if (subs == NULL || arr == NULL) {
        free(subs);
        json_decref(arr);
        return NULL;
    }
    size_t n = reg_subjects_live(rg, horizon, subs, cap);
    for (size_t i = 0; i < n && i < cap; i++)
        if (subs[i].seq <= top)
            json_array_append_new(arr, api_subject_json(&subs[i]));
    free(subs);
    return arr;
}

static json_t *api_revocations_json(reg *rg, const cfg *c, uint64_t after)
{
    /* The sequence first, then the subjects up to it: a subject revoked between the two
     * reads is in neither, never missing from a document whose seq claims it. */
    uint64_t top = reg_revocation_seq(rg);
    json_t *subjects = api_subjects_json(rg, c, (int64_t)time(NULL), top);
    size_t cap = top > after ? (size_t)(top - after) : 0;
    reg_revocation *revs = cap ? calloc(cap, sizeof(*revs)) : NULL;
    json_t *arr = json_array();
    if ((cap && revs == NULL) || arr == NULL || subjects == NULL) {
        free(revs);
        json_decref(arr);
        json_decref(subjects);
        return NULL;
    }
    size_t n = cap ? reg_revocations_after(rg, after, revs, cap) : 0;
    for (size_t i = 0; i < n && i < cap; i++)
        json_array_append_new(arr, api_revocation_json(&revs[i]));
    free(revs);
    return json_pack("{s:I, s:o, s:o}", "sequence", (json_int_t)top, "revoked", arr, "subjects",
                     subjects);
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
    return api_revocations_json(env->reg, env->cfg, 0);
}

void api_publish_refresh(const api_env *env)
{
    api_doc_put(api_doc_get(&api_jwks_doc, env, api_jwks_build));
    api_doc_put(api_doc_get(&api_rev_doc, env, api_revocations_build));
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

/* The delta of the revocation documents for ?after=A when the newest revocation is top:
 * A itself, or top when A is above it (an empty delta from the newest), or 0 (the full
 * list) when A is further back than API_FEED_DELTA_MAX revocations. A delta may cover more
 * than was asked, never less: at most API_FEED_SLOTS distinct documents per change,
 * whatever clients ask. */
#define API_FEED_DELTA_MAX 64
#define API_FEED_SLOTS (API_FEED_DELTA_MAX + 2)

static uint64_t api_delta_after(uint64_t after, uint64_t top)
{
    if (after > top)
        after = top;
    return top - after > API_FEED_DELTA_MAX ? 0 : after;
}

/* The cache slot of a clamped after: the API_FEED_DELTA_MAX + 1 afters from top - 64 to
 * top fall in distinct slots (after mod 65), and the full list, once top is past 64, in
 * the last. Fixed slots: a slot never moves while a request signs into it. */
static size_t api_delta_slot(uint64_t after, uint64_t top)
{
    if (after == 0 && top > API_FEED_DELTA_MAX)
        return API_FEED_SLOTS - 1;
    return (size_t)(after % (API_FEED_DELTA_MAX + 1));
}

/* Unsigned deltas, built once per change and per after (api_pub_mu). A document's
 * generation is the newest revocation it holds. */
static api_doc *api_rev_delta[API_FEED_SLOTS];
static uint64_t api_rev_delta_after[API_FEED_SLOTS];

static api_doc *api_rev_delta_get(const api_env *env, uint64_t after)
{
    pthread_mutex_lock(&api_pub_mu);
    uint64_t top = reg_revocation_seq(env->reg);
    after = api_delta_after(after, top);
    size_t i = api_delta_slot(after, top);
    if (api_rev_delta[i] == NULL || api_rev_delta_after[i] != after ||
        api_rev_delta[i]->generation != top) {
        json_t *j = api_revocations_json(env->reg, env->cfg, after);
        uint64_t seq = (uint64_t)json_integer_value(json_object_get(j, "sequence"));
        api_doc *d = api_doc_new(j, seq);
        if (d != NULL) {
            api_doc_put(api_rev_delta[i]);
            api_rev_delta[i] = d;
            api_rev_delta_after[i] = after;
        }
    }
    api_doc *d = api_rev_delta_after[i] == after ? api_rev_delta[i] : NULL;
    if (d != NULL)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&api_pub_mu);
    return d;
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
    return api_serve_doc(q, r, api_rev_delta_get(q->env, after), max_age);
}

/* ---- signed documents: cached, budgeted, kept through a keeper outage ------------------ */

/* The signed feed and the status lists cost the token an RSA-3072 signature each (and a
 * list 128 KiB of deflate first), on requests nobody authenticates. So every signed copy
 * is kept until its content changes or it is api_resign_after old; public requests may
 * make the token sign at most publication_signs_per_second times a second (a token bucket
 * of that rate and burst); and while the keeper cannot sign, or the budget is spent, the
 * newest copy is served for as long as it is valid (before its exp). pc_decide
 * (appliance/core/pubcache.h) is the rule; this is the bookkeeping around it.
 *
 * A copy is signed by the request that finds it missing or out of date, with the lock
 * released: concurrent requests for it are served the copy held meanwhile, or wait for
 * the signature when none is valid. After a failed signature no request asks the keeper
 * again for a second (they get the copy held, or 503), nor while a signature has been
 * waiting for the keeper for two seconds or more: a stuck keeper holds up about one
 * request per second, not every worker thread. We chose this retry on the next request
 * over a background re-signer because it signs only what someone asks for: a background
 * thread would either re-sign all 1,024 lists or need this same bookkeeping to know which
 * are wanted. */

typedef struct {
    api_doc *doc; /* the newest signed copy; NULL: none yet */
    uint64_t key; /* what doc answers: the feed's after, or a list's number */
    pc_entry pc;  /* doc's version, iat, exp; whether a request is signing into this slot */
} api_signed;

/* Signs a copy of key's document as of now: a new document and the version of the content
 * it holds, or NULL and *st set. Called without any lock held. */
typedef api_doc *(*api_sign_fn)(const api_env *env, uint64_t key, int64_t now, uint64_t *version,
                                sk_status *st);

/* Why api_signed_get served nothing. */
typedef struct {
    api_err err;          /* API_ERR_SIGNING_BUDGET_EXHAUSTED, or 0: see st */
    sk_status st;         /* the keeper's last failure */
    unsigned retry_after; /* seconds, for the budget */
} api_signed_why;

/* Guards every api_signed, the budget and the keeper's last failure. */
static pthread_mutex_t api_signed_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t api_signed_cv = PTHREAD_COND_INITIALIZER; /* a signature ended */
static rl_table *api_budget;                                    /* made on first use */
static int64_t api_keeper_failed_at = INT64_MIN; /* Unix second of the last failure */
static sk_status api_keeper_failed_st = SK_ERR_DEVICE;
static unsigned api_in_flight;   /* signatures asked of the keeper, not yet answered */
static int64_t api_in_flight_at; /* Unix second the keeper last had none, or answered one */
#define API_BUDGET_KEY "publication"

/* Seconds after which a copy of unchanged content is signed again: its max-age (at least
 * 10 s, so a max-age of 0 cannot make every request a signature), but at most a quarter
 * of its lifetime, so a copy is never served close to its exp. */
static int64_t api_resign_after(const cfg *c)
{
    int64_t age = c->revocations_max_age > 10 ? c->revocations_max_age : 10;
    int64_t quarter = (int64_t)c->revocation_feed_lifetime / 4;
    return age < quarter ? age : quarter;
}

/* The document for key whose content is now at version, from e or signed into it; a new
 * reference, or NULL and *why. Caller holds api_signed_mu (released while signing). */
static api_doc *api_signed_get(const api_env *env, api_signed *e, uint64_t key, uint64_t version,
                               int64_t now, api_sign_fn sign, api_signed_why *why)
{
    const cfg *c = env->cfg;
    if (api_budget == NULL) {
        double rate = c->publication_signs_per_second;
        api_budget = rl_new(RL_SLOTS_MIN, rate, rate);
    }
    for (;;) {
        pc_entry pe = e->pc;
        pe.has = e->doc != NULL && e->key == key; /* another key's copy answers nothing here */
        bool keeper_ok =
            now > api_keeper_failed_at && (api_in_flight == 0 || now - api_in_flight_at < 2);
        uint64_t ns = (uint64_t)clk_now_ns();
        const char *bk = API_BUDGET_KEY;
        bool budget_ok = rl_peek(api_budget, bk, strlen(bk), ns) == 0;
        pc_action a = pc_decide(&pe, version, now, api_resign_after(c), keeper_ok, budget_ok);
        if (a == PC_SIGN && rl_take(api_budget, bk, strlen(bk), ns) != 0)
            a = pc_decide(&pe, version, now, api_resign_after(c), keeper_ok, false);
        if (a == PC_SERVE || a == PC_SERVE_OLD) {
            atomic_fetch_add(&e->doc->refs, 1);
            return e->doc;
        }
        if (a == PC_WAIT) {
            pthread_cond_wait(&api_signed_cv, &api_signed_mu);
            continue;
        }
        if (a == PC_REFUSE_BUDGET) {
            unsigned wait = rl_peek(api_budget, bk, strlen(bk), (uint64_t)clk_now_ns());
            why->err = API_ERR_SIGNING_BUDGET_EXHAUSTED;
            why->retry_after = wait > 0 ? wait : 1;
            return NULL;
        }
        if (a == PC_REFUSE_KEEPER) {
            why->err = API_OK;
            why->st = api_keeper_failed_st;
            return NULL;
        }
        /* PC_SIGN. The slot keeps its old key and copy until the new one is in: requests
         * for the old key are still served from it, those for this key wait. */
        e->pc.signing = true;
        if (api_in_flight++ == 0)
            api_in_flight_at = now;
        pthread_mutex_unlock(&api_signed_mu);
        uint64_t signed_version = 0;
        sk_status st = SK_OK;
        api_doc *d = sign(env, key, now, &signed_version, &st);
        pthread_mutex_lock(&api_signed_mu);
        /* The clock now, not the request's: the keeper may have taken its whole deadline. */
        int64_t done = (int64_t)time(NULL);
        e->pc.signing = false;
        api_in_flight--;
        api_in_flight_at = done; /* the keeper answered, or gave up: not stuck since */
        pthread_cond_broadcast(&api_signed_cv);
        if (d != NULL) {
            api_doc_put(e->doc);
            e->doc = d;
            e->key = key;
            e->pc.has = true;
            e->pc.version = signed_version;
            e->pc.iat = now;
            e->pc.exp = now + (int64_t)c->revocation_feed_lifetime;
            atomic_fetch_add(&d->refs, 1);
            return d;
        }
        /* Decided again without the keeper: the copy held, if still valid, or 503. */
        api_keeper_failed_at = done;
        api_keeper_failed_st = st != SK_OK ? st : SK_ERR_DEVICE;
    }
}

static void api_signed_drop(api_signed *slots, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        api_doc_put(slots[i].doc);
        memset(&slots[i], 0, sizeof(slots[i]));
    }
}

/* The answer when api_signed_get served nothing. */
static api_err api_signed_fail(api_resp *r, const api_signed_why *why, const char *what)
{
    if (why->err == API_ERR_SIGNING_BUDGET_EXHAUSTED) {
        api_header(r, "Retry-After: %u", why->retry_after);
        return api_fail(r, why->err,
                        "public requests made the token sign its budget for now, and %s has no "
                        "valid signed copy yet",
                        what);
    }
    return api_hsm_error(r, why->st);
}

/* A compact JWS of payload (consumed) under header, signed by the publication key: a new
 * document, or NULL and *st set (the token's answer, or SK_ERR_DEVICE when out of memory
 * or when payload is NULL). */
static api_doc *api_publication_sign(const api_env *env, const char *header, json_t *payload,
                                     sk_status *st)
{
    *st = SK_ERR_DEVICE;
    char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    if (text == NULL)
        return NULL;
    size_t hlen = strlen(header), plen = strlen(text);
    size_t cap = jose_jws_max_len(hlen, plen, JOSE_SIG_MAX);
    char *jws = cap != SIZE_MAX ? malloc(cap) : NULL;
    size_t input_len = 0, total = 0, sig_len = 0;
    uint8_t sig[SK_SIG_MAX];
    api_doc *d = NULL;
    if (jws != NULL && jose_jws_begin(header, hlen, text, plen, jws, cap, &input_len) == 0) {
        *st = kp_svc_sign(env->kp, KP_SVC_PUBLISH, jws, input_len, sig, &sig_len);
        if (*st == SK_OK) {
            if (jose_jws_finish(jws, cap, input_len, sig, sig_len, &total) == 0)
                d = api_doc_text(jws, total, 0);
            if (d == NULL)
                *st = SK_ERR_DEVICE;
        }
    }
    free(jws);
    free(text);
    return d;
}

/* ---- the signed feed --------------------------------------------------------------------- */

/* Per clamped after (api_delta_slot); version: the newest revocation a copy holds. A key
 * creation changes nothing here: only a revocation makes a new feed. */
static api_signed api_feed[API_FEED_SLOTS];

/* Signs the feed of the revocations after `after` as of now (an api_sign_fn). */
static api_doc *api_feed_sign(const api_env *env, uint64_t after, int64_t now, uint64_t *version,
                              sk_status *st)
{
    *st = SK_ERR_DEVICE;
    json_t *list = api_revocations_json(env->reg, env->cfg, after);
    json_t *revoked = json_object_get(list, "revoked");
    json_t *subjects = json_object_get(list, "subjects");
    const cfg *c = env->cfg;
    *version = (uint64_t)json_integer_value(json_object_get(list, "sequence"));
    json_t *payload =
        revoked == NULL
            ? NULL
            : json_pack("{s:s, s:O, s:I, s:I, s:I, s:I, s:O, s:O}", "iss",
                        c->token_issuer[0] ? c->token_issuer : API_FEED_ISSUER_DEFAULT, "seq",
                        json_object_get(list, "sequence"), "after", (json_int_t)after, "iat",
                        (json_int_t)now, "exp", (json_int_t)(now + c->revocation_feed_lifetime),
                        "ttl", (json_int_t)c->revocations_max_age, "revoked", revoked, "subjects",
                        subjects);
    json_decref(list);
    return api_publication_sign(env, KP_PUBLISH_HEADER, payload, st);
}

/* The signed document for `after`; a new reference, or NULL and *why. A delta that cannot
 * be had falls back on a valid copy of the full feed, which covers it. */
static api_doc *api_feed_get(const api_env *env, uint64_t after, int64_t now, api_signed_why *why)
{
    pthread_mutex_lock(&api_signed_mu);
    uint64_t top = reg_revocation_seq(env->reg);
    after = api_delta_after(after, top);
    api_doc *d = api_signed_get(env, &api_feed[api_delta_slot(after, top)], after, top, now,
                                api_feed_sign, why);
    api_signed *full = &api_feed[api_delta_slot(0, top)];
    if (d == NULL && after != 0 && full->doc != NULL && full->key == 0 && now < full->pc.exp) {
        d = full->doc;
        atomic_fetch_add(&d->refs, 1);
    }
    pthread_mutex_unlock(&api_signed_mu);
    return d;
}

api_err api_revocations_feed(const api_req *q, api_resp *r)
{
    uint64_t after;
    api_err e = api_query_after(q, r, &after);
    if (e != API_OK)
        return e;
    api_signed_why why = {0};
    api_doc *d = api_feed_get(q->env, after, q->now, &why);
    if (d == NULL)
        return api_signed_fail(r, &why, "the feed");
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

/* The list's bits, deflated (zlib format) and base64url'd: a malloc'd string, or NULL;
 * *revoked_out gets the list's revocation count as of that copy of its bits. */
static char *api_sl_lst(tks *t, uint32_t list, uint64_t *revoked_out)
{
    uint8_t *bits = malloc(TKS_LIST_BYTES);
    uLongf zlen = compressBound(TKS_LIST_BYTES);
    uint8_t *z = malloc(zlen);
    char *b64 = NULL;
    uint32_t reserved;
    if (bits != NULL && z != NULL &&
        tks_list_copy(t, list, bits, &reserved, revoked_out) == TKS_OK &&
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

/* Every list's newest signed copy, by list number; version: the list's revocation count
 * (tks_list_revoked), so a revocation makes only its own list out of date. A copy is a few
 * hundred bytes while few of its tokens are revoked. */
static api_signed api_sl[TKS_LISTS_MAX];

/* Signs list `list` as of now (an api_sign_fn). */
static api_doc *api_sl_sign(const api_env *env, uint64_t list, int64_t now, uint64_t *version,
                            sk_status *st)
{
    *st = SK_ERR_DEVICE;
    const cfg *c = env->cfg;
    char uri[API_URI_MAX];
    api_status_list_uri(c, (uint32_t)list, uri);
    char *lst = api_sl_lst(env->tks, (uint32_t)list, version);
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
    api_signed_why why = {0};
    pthread_mutex_lock(&api_signed_mu);
    api_doc *d = api_signed_get(q->env, &api_sl[n], n, tks_list_revoked(q->env->tks, (uint32_t)n),
                                q->now, api_sl_sign, &why);
    pthread_mutex_unlock(&api_signed_mu);
    if (d == NULL)
        return api_signed_fail(r, &why, "this list");
    api_header(r, "Content-Type: " API_STATUS_LIST_MEDIA_TYPE);
    return api_serve_doc(q, r, d, q->env->cfg->revocations_max_age);
}

void api_publish_free(void)
{
    pthread_mutex_lock(&api_pub_mu);
    api_doc_put(api_jwks_doc);
    api_doc_put(api_rev_doc);
    api_jwks_doc = api_rev_doc = NULL;
    for (size_t i = 0; i < API_FEED_SLOTS; i++) {
        api_doc_put(api_rev_delta[i]);
        api_rev_delta[i] = NULL;
    }
    pthread_mutex_unlock(&api_pub_mu);
    pthread_mutex_lock(&api_signed_mu);
    api_signed_drop(api_feed, API_FEED_SLOTS);
    api_signed_drop(api_sl, TKS_LISTS_MAX);
    rl_free(api_budget);
    api_budget = NULL;
    api_keeper_failed_at = INT64_MIN;
    pthread_mutex_unlock(&api_signed_mu);
}
