/* pub: what the appliance publishes, as one handle. See publish.h. */
#include "appliance/core/publish.h"

#include "appliance/core/pubcache.h"
#include "appliance/common/ratelimit.h"
#include "base/clock.h"
#include "jose/jose.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

struct pub_doc {
    atomic_int refs;
    uint64_t generation;
    size_t len;
    char etag[40];
    char body[];
};

/* A delta for ?after=A covers A's clamp (pub_delta_after): at most PUB_FEED_SLOTS
 * distinct documents per change, whatever clients ask. */
#define PUB_FEED_SLOTS (PUB_FEED_DELTA_MAX + 2)
#define PUB_BUDGET_KEY "publication"

typedef struct {
    pub_doc *doc; /* the newest signed copy; NULL: none yet */
    uint64_t key; /* what doc answers: the feed's after, or a list's number */
    pc_entry pc;  /* doc's version, iat, exp; whether a request is signing into this slot */
} pub_signed;

struct pub {
    const cfg *cfg;
    reg *reg;
    kp *kp;
    tks *tks;
    /* Unsigned documents (mu). A delta's generation is the newest revocation it holds. */
    pthread_mutex_t mu;
    pub_doc *jwks, *rev;
    pub_doc *rev_delta[PUB_FEED_SLOTS];
    uint64_t rev_delta_after[PUB_FEED_SLOTS];
    /* Signed documents, the budget and the keeper's last failure (signed_mu). */
    pthread_mutex_t signed_mu;
    pthread_cond_t signed_cv; /* a signature ended */
    rl_table *budget;         /* made on first use */
    int64_t keeper_failed_at; /* Unix second of the last failure */
    sk_status keeper_failed_st;
    unsigned in_flight;   /* signatures asked of the keeper, not yet answered */
    int64_t in_flight_at; /* Unix second the keeper last had none, or answered one */
    /* The feed per clamped after (pub_delta_slot), version the newest revocation a copy
     * holds: a key creation changes nothing here, only a revocation makes a new feed. */
    pub_signed feed[PUB_FEED_SLOTS];
    /* Every list's newest signed copy, by list number; version: the list's revocation
     * count (tks_list_revoked), so a revocation makes only its own list out of date. */
    pub_signed sl[TKS_LISTS_MAX];
};

pub *pub_new(const cfg *c, reg *rg, kp *k, tks *t)
{
    pub *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->cfg = c;
    p->reg = rg;
    p->kp = k;
    p->tks = t;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->signed_mu, NULL);
    pthread_cond_init(&p->signed_cv, NULL);
    p->keeper_failed_at = INT64_MIN;
    p->keeper_failed_st = SK_ERR_DEVICE;
    return p;
}

void pub_doc_put(pub_doc *d)
{
    if (d != NULL && atomic_fetch_sub(&d->refs, 1) == 1)
        free(d);
}

const char *pub_doc_body(const pub_doc *d, size_t *len)
{
    *len = d->len;
    return d->body;
}

const char *pub_doc_etag(const pub_doc *d)
{
    return d->etag;
}

static void pub_signed_drop(pub_signed *slots, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        pub_doc_put(slots[i].doc);
        memset(&slots[i], 0, sizeof(slots[i]));
    }
}

void pub_free(pub *p)
{
    if (p == NULL)
        return;
    pub_doc_put(p->jwks);
    pub_doc_put(p->rev);
    for (size_t i = 0; i < PUB_FEED_SLOTS; i++)
        pub_doc_put(p->rev_delta[i]);
    pub_signed_drop(p->feed, PUB_FEED_SLOTS);
    pub_signed_drop(p->sl, TKS_LISTS_MAX);
    rl_free(p->budget);
    pthread_cond_destroy(&p->signed_cv);
    pthread_mutex_destroy(&p->signed_mu);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* A document holding a copy of text, with "<first 128 bits of SHA-256 in hex>" as ETag. */
static pub_doc *pub_doc_text(const char *text, size_t len, uint64_t generation)
{
    pub_doc *d = malloc(sizeof(*d) + len + 1);
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
static pub_doc *pub_doc_new(json_t *j, uint64_t generation)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL)
        return NULL;
    pub_doc *d = pub_doc_text(text, strlen(text), generation);
    free(text);
    return d;
}

/* Client keys only. The publication key is served at GET /v1/revocations/key and never
 * here: a relying party that picks a key by kid and checks neither `use` nor `typ` would
 * otherwise take the signed feed (a JWS with iss and a fresh exp) or a status list for a
 * valid token. */
static json_t *pub_jwks_json(const pub *p)
{
    /* Active and retiring keys: a rotated key keeps verifying the tokens already out. */
    size_t cap = reg_count(p->reg, REG_ACTIVE) + reg_count(p->reg, REG_RETIRING) + 8;
    reg_key *keys = calloc(cap, sizeof(*keys));
    json_t *arr = json_array();
    if (keys == NULL || arr == NULL) {
        free(keys);
        json_decref(arr);
        return NULL;
    }
    size_t n = reg_list(p->reg, REG_LIST_LIVE, keys, cap);
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

json_t *pub_revocation_json(const reg_revocation *rv)
{
    char kid[2 * SK_KID_LEN + 1];
    sk_kid_hex(&rv->kid, kid);
    return json_pack("{s:I, s:s, s:I, s:s}", "seq", (json_int_t)rv->seq, "kid", kid, "revoked_at",
                     (json_int_t)rv->revoked_at, "reason", rv->reason);
}

json_t *pub_subject_json(const reg_subject *s)
{
    return json_pack("{s:I, s:s, s:I}", "seq", (json_int_t)s->seq, "sub", s->sub, "before",
                     (json_int_t)s->before);
}

/* Every subject revocation up to seq top that may still match a live token (before +
 * token_ttl_max > now), whatever `after`: the list is bounded by that horizon and a
 * verifier replaces its own with it, so a delta needs no merge. One committed after top
 * was read is left for the next document: this one's seq does not cover it (and a
 * verifier refuses an entry above the seq). NULL when out of memory. */
static json_t *pub_subjects_json(const pub *p, int64_t now, uint64_t top)
{
    int64_t horizon = now - (int64_t)p->cfg->token_ttl_max;
    size_t cap = reg_subjects_live(p->reg, horizon, NULL, 0) + 8; /* room for one racing it */
    reg_subject *subs = calloc(cap, sizeof(*subs));
    json_t *arr = json_array();
    if (subs == NULL || arr == NULL) {
        free(subs);
        json_decref(arr);
        return NULL;
    }
    size_t n = reg_subjects_live(p->reg, horizon, subs, cap);
    for (size_t i = 0; i < n && i < cap; i++)
        if (subs[i].seq <= top)
            json_array_append_new(arr, pub_subject_json(&subs[i]));
    free(subs);
    return arr;
}

static json_t *pub_revocations_json(const pub *p, uint64_t after)
{
    /* The sequence first, then the subjects up to it: a subject revoked between the two
     * reads is in neither, never missing from a document whose seq claims it. */
    uint64_t top = reg_revocation_seq(p->reg);
    json_t *subjects = pub_subjects_json(p, (int64_t)time(NULL), top);
    size_t cap = top > after ? (size_t)(top - after) : 0;
    reg_revocation *revs = cap ? calloc(cap, sizeof(*revs)) : NULL;
    json_t *arr = json_array();
    if ((cap && revs == NULL) || arr == NULL || subjects == NULL) {
        free(revs);
        json_decref(arr);
        json_decref(subjects);
        return NULL;
    }
    size_t n = cap ? reg_revocations_after(p->reg, after, revs, cap) : 0;
    for (size_t i = 0; i < n && i < cap; i++)
        json_array_append_new(arr, pub_revocation_json(&revs[i]));
    free(revs);
    return json_pack("{s:I, s:o, s:o}", "sequence", (json_int_t)top, "revoked", arr, "subjects",
                     subjects);
}

static json_t *pub_jwks_build(const pub *p)
{
    return pub_jwks_json(p);
}

static json_t *pub_revocations_build(const pub *p)
{
    return pub_revocations_json(p, 0);
}

/* Builds a document's JSON: a new reference, or NULL when out of memory. */
typedef json_t *(*pub_build)(const pub *p);

/* The current document in *slot, rebuilt when the registry moved; a new reference. */
static pub_doc *pub_doc_get(pub *p, pub_doc **slot, pub_build build)
{
    pthread_mutex_lock(&p->mu);
    uint64_t gen = reg_generation(p->reg);
    if (*slot == NULL || (*slot)->generation != gen) {
        pub_doc *d = pub_doc_new(build(p), gen);
        if (d != NULL) {
            pub_doc_put(*slot);
            *slot = d;
        }
    }
    pub_doc *d = *slot;
    if (d != NULL)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&p->mu);
    return d;
}

void pub_refresh(pub *p)
{
    pub_doc_put(pub_doc_get(p, &p->jwks, pub_jwks_build));
    pub_doc_put(pub_doc_get(p, &p->rev, pub_revocations_build));
}

pub_doc *pub_jwks(pub *p)
{
    return pub_doc_get(p, &p->jwks, pub_jwks_build);
}

/* The delta of the revocation documents for ?after=A when the newest revocation is top:
 * A itself, or top when A is above it (an empty delta from the newest), or 0 (the full
 * list) when A is further back than PUB_FEED_DELTA_MAX revocations. */
static uint64_t pub_delta_after(uint64_t after, uint64_t top)
{
    if (after > top)
        after = top;
    return top - after > PUB_FEED_DELTA_MAX ? 0 : after;
}

/* The cache slot of a clamped after: the PUB_FEED_DELTA_MAX + 1 afters from top - 64 to
 * top fall in distinct slots (after mod 65), and the full list, once top is past 64, in
 * the last. Fixed slots: a slot never moves while a request signs into it. */
static size_t pub_delta_slot(uint64_t after, uint64_t top)
{
    if (after == 0 && top > PUB_FEED_DELTA_MAX)
        return PUB_FEED_SLOTS - 1;
    return (size_t)(after % (PUB_FEED_DELTA_MAX + 1));
}

static pub_doc *pub_rev_delta_get(pub *p, uint64_t after)
{
    pthread_mutex_lock(&p->mu);
    uint64_t top = reg_revocation_seq(p->reg);
    after = pub_delta_after(after, top);
    size_t i = pub_delta_slot(after, top);
    if (p->rev_delta[i] == NULL || p->rev_delta_after[i] != after ||
        p->rev_delta[i]->generation != top) {
        json_t *j = pub_revocations_json(p, after);
        uint64_t seq = (uint64_t)json_integer_value(json_object_get(j, "sequence"));
        pub_doc *d = pub_doc_new(j, seq);
        if (d != NULL) {
            pub_doc_put(p->rev_delta[i]);
            p->rev_delta[i] = d;
            p->rev_delta_after[i] = after;
        }
    }
    pub_doc *d = p->rev_delta_after[i] == after ? p->rev_delta[i] : NULL;
    if (d != NULL)
        atomic_fetch_add(&d->refs, 1);
    pthread_mutex_unlock(&p->mu);
    return d;
}

pub_doc *pub_revocations(pub *p, uint64_t after)
{
    if (after == 0)
        return pub_doc_get(p, &p->rev, pub_revocations_build);
    return pub_rev_delta_get(p, after);
}

/* ---- signed documents: cached, budgeted, kept through a keeper outage ------------------ */

/* The signed feed and the status lists cost the token an RSA-3072 signature each (and a
 * list 128 KiB of deflate first), on requests nobody authenticates. So every signed copy
 * is kept until its content changes or it is pub_resign_after old; public requests may
 * make the token sign at most publication_signs_per_second times a second (a token bucket
 * of that rate and burst); and while the keeper cannot sign, or the budget is spent, the
 * newest copy is served for as long as it is valid (before its exp). pc_decide
 * (pubcache.h) is the rule; this is the bookkeeping around it.
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

/* Signs a copy of key's document as of now: a new document and the version of the content
 * it holds, or NULL and *st set. Called without any lock held. */
typedef pub_doc *(*pub_sign_fn)(pub *p, uint64_t key, int64_t now, uint64_t *version,
                                sk_status *st);

/* Seconds after which a copy of unchanged content is signed again: its max-age (at least
 * 10 s, so a max-age of 0 cannot make every request a signature), but at most a quarter
 * of its lifetime, so a copy is never served close to its exp. */
static int64_t pub_resign_after(const cfg *c)
{
    int64_t age = c->revocations_max_age > 10 ? c->revocations_max_age : 10;
    int64_t quarter = (int64_t)c->revocation_feed_lifetime / 4;
    return age < quarter ? age : quarter;
}

/* The document for key whose content is now at version, from e or signed into it; a new
 * reference, or NULL and *why. Caller holds signed_mu (released while signing). */
static pub_doc *pub_signed_get(pub *p, pub_signed *e, uint64_t key, uint64_t version, int64_t now,
                               pub_sign_fn sign, pub_why *why)
{
    const cfg *c = p->cfg;
    if (p->budget == NULL) {
        double rate = c->publication_signs_per_second;
        p->budget = rl_new(RL_SLOTS_MIN, rate, rate);
    }
    for (;;) {
        pc_entry pe = e->pc;
        pe.has = e->doc != NULL && e->key == key; /* another key's copy answers nothing here */
        bool keeper_ok =
            now > p->keeper_failed_at && (p->in_flight == 0 || now - p->in_flight_at < 2);
        uint64_t ns = (uint64_t)clk_now_ns();
        const char *bk = PUB_BUDGET_KEY;
        bool budget_ok = rl_peek(p->budget, bk, strlen(bk), ns) == 0;
        pc_action a = pc_decide(&pe, version, now, pub_resign_after(c), keeper_ok, budget_ok);
        if (a == PC_SIGN && rl_take(p->budget, bk, strlen(bk), ns) != 0)
            a = pc_decide(&pe, version, now, pub_resign_after(c), keeper_ok, false);
        if (a == PC_SERVE || a == PC_SERVE_OLD) {
            atomic_fetch_add(&e->doc->refs, 1);
            return e->doc;
        }
        if (a == PC_WAIT) {
            pthread_cond_wait(&p->signed_cv, &p->signed_mu);
            continue;
        }
        if (a == PC_REFUSE_BUDGET) {
            unsigned wait = rl_peek(p->budget, bk, strlen(bk), (uint64_t)clk_now_ns());
            why->budget = 1;
            why->retry_after = wait > 0 ? wait : 1;
            return NULL;
        }
        if (a == PC_REFUSE_KEEPER) {
            why->budget = 0;
            why->st = p->keeper_failed_st;
            return NULL;
        }
        /* PC_SIGN. The slot keeps its old key and copy until the new one is in: requests
         * for the old key are still served from it, those for this key wait. */
        e->pc.signing = true;
        if (p->in_flight++ == 0)
            p->in_flight_at = now;
        pthread_mutex_unlock(&p->signed_mu);
        uint64_t signed_version = 0;
        sk_status st = SK_OK;
        pub_doc *d = sign(p, key, now, &signed_version, &st);
        pthread_mutex_lock(&p->signed_mu);
        /* The clock now, not the request's: the keeper may have taken its whole deadline. */
        int64_t done = (int64_t)time(NULL);
        e->pc.signing = false;
        p->in_flight--;
        p->in_flight_at = done; /* the keeper answered, or gave up: not stuck since */
        pthread_cond_broadcast(&p->signed_cv);
        if (d != NULL) {
            pub_doc_put(e->doc);
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
        p->keeper_failed_at = done;
        p->keeper_failed_st = st != SK_OK ? st : SK_ERR_DEVICE;
    }
}

/* A compact JWS of payload (consumed) under header, signed by the publication key: a new
 * document, or NULL and *st set (the token's answer, or SK_ERR_DEVICE when out of memory
 * or when payload is NULL). */
static pub_doc *pub_publication_sign(pub *p, const char *header, json_t *payload, sk_status *st)
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
    pub_doc *d = NULL;
    if (jws != NULL && jose_jws_begin(header, hlen, text, plen, jws, cap, &input_len) == 0) {
        *st = kp_svc_sign(p->kp, KP_SVC_PUBLISH, jws, input_len, sig, &sig_len);
        if (*st == SK_OK) {
            if (jose_jws_finish(jws, cap, input_len, sig, sig_len, &total) == 0)
                d = pub_doc_text(jws, total, 0);
            if (d == NULL)
                *st = SK_ERR_DEVICE;
        }
    }
    free(jws);
    free(text);
    return d;
}

static const char *pub_issuer(const cfg *c)
{
    return c->token_issuer[0] ? c->token_issuer : PUB_FEED_ISSUER_DEFAULT;
}

/* ---- the signed feed --------------------------------------------------------------------- */

/* Signs the feed of the revocations after `after` as of now (a pub_sign_fn). */
static pub_doc *pub_feed_sign(pub *p, uint64_t after, int64_t now, uint64_t *version, sk_status *st)
{
    *st = SK_ERR_DEVICE;
    json_t *list = pub_revocations_json(p, after);
    json_t *revoked = json_object_get(list, "revoked");
    json_t *subjects = json_object_get(list, "subjects");
    const cfg *c = p->cfg;
    *version = (uint64_t)json_integer_value(json_object_get(list, "sequence"));
    json_t *payload =
        revoked == NULL
            ? NULL
            : json_pack("{s:s, s:O, s:I, s:I, s:I, s:I, s:O, s:O}", "iss", pub_issuer(c), "seq",
                        json_object_get(list, "sequence"), "after", (json_int_t)after, "iat",
                        (json_int_t)now, "exp", (json_int_t)(now + c->revocation_feed_lifetime),
                        "ttl", (json_int_t)c->revocations_max_age, "revoked", revoked, "subjects",
                        subjects);
    json_decref(list);
    return pub_publication_sign(p, KP_PUBLISH_HEADER, payload, st);
}

/* A delta that cannot be had falls back on a valid copy of the full feed, which covers
 * it. */
pub_doc *pub_feed(pub *p, uint64_t after, int64_t now, pub_why *why)
{
    pthread_mutex_lock(&p->signed_mu);
    uint64_t top = reg_revocation_seq(p->reg);
    after = pub_delta_after(after, top);
    pub_doc *d = pub_signed_get(p, &p->feed[pub_delta_slot(after, top)], after, top, now,
                                pub_feed_sign, why);
    pub_signed *full = &p->feed[pub_delta_slot(0, top)];
    if (d == NULL && after != 0 && full->doc != NULL && full->key == 0 && now < full->pc.exp) {
        d = full->doc;
        atomic_fetch_add(&d->refs, 1);
    }
    pthread_mutex_unlock(&p->signed_mu);
    return d;
}

/* ---- token status lists (the IETF OAuth Token Status List draft) ------------------------ */

void pub_public_url(const cfg *c, char out[CFG_ORIGIN_MAX + 1])
{
    if (c->public_url[0] != '\0')
        snprintf(out, CFG_ORIGIN_MAX + 1, "%s", c->public_url);
    else
        snprintf(out, CFG_ORIGIN_MAX + 1, "https://%s:%u", c->listen_address, c->port);
}

void pub_status_list_uri(const cfg *c, uint32_t list, char out[PUB_URI_MAX])
{
    char base[CFG_ORIGIN_MAX + 1];
    pub_public_url(c, base);
    snprintf(out, PUB_URI_MAX, "%s/v1/status-lists/%u", base, list);
}

/* The list's bits, deflated (zlib format) and base64url'd: a malloc'd string, or NULL;
 * *revoked_out gets the list's revocation count as of that copy of its bits. */
static char *pub_sl_lst(tks *t, uint32_t list, uint64_t *revoked_out)
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

/* Signs list `list` as of now (a pub_sign_fn). */
static pub_doc *pub_sl_sign(pub *p, uint64_t list, int64_t now, uint64_t *version, sk_status *st)
{
    *st = SK_ERR_DEVICE;
    const cfg *c = p->cfg;
    char uri[PUB_URI_MAX];
    pub_status_list_uri(c, (uint32_t)list, uri);
    char *lst = pub_sl_lst(p->tks, (uint32_t)list, version);
    json_t *payload =
        lst == NULL
            ? NULL
            : json_pack("{s:s, s:s, s:I, s:I, s:I, s:{s:i, s:s}}", "iss", pub_issuer(c), "sub", uri,
                        "iat", (json_int_t)now, "exp",
                        (json_int_t)(now + c->revocation_feed_lifetime), "ttl",
                        (json_int_t)c->revocations_max_age, "status_list", "bits", 1, "lst", lst);
    free(lst);
    return pub_publication_sign(p, KP_STATUS_LIST_HEADER, payload, st);
}

pub_doc *pub_status_list(pub *p, uint32_t list, int64_t now, pub_why *why)
{
    if (list >= TKS_LISTS_MAX) {
        why->budget = 0;
        why->st = SK_ERR_DEVICE;
        return NULL;
    }
    pthread_mutex_lock(&p->signed_mu);
    pub_doc *d = pub_signed_get(p, &p->sl[list], list, tks_list_revoked(p->tks, list), now,
                                pub_sl_sign, why);
    pthread_mutex_unlock(&p->signed_mu);
    return d;
}
