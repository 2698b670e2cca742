/* verifier: the vfy handle, its key and revocation sets, and token verification. The
 * network side (libcurl, the event stream, the background thread) is net.c; the pure feed
 * check is feed.c. See verifier.h for contracts and internal.h for the locks. */
#include "verifier/internal.h"
#include "base/hex.h"
#include "base/text.h"
#include "base/clock.h"
#include "base/names.h"
#include "base/lock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VFY_URL_MAX 2048 /* bytes of the base URL */
#define VFY_KID_MAX 256  /* bytes of a header kid we look at (ours are 32) */

static vfy_err vfy_config_check(const vfy_config *c, bool net, char *err, size_t errlen);
static vfy *vfy_alloc(const vfy_config *cfg);
static int vfy_key_cmp(const void *a, const void *b);
static int vfy_kid_cmp(const void *a, const void *b);
static int vfy_hex_kid(const char *kid);
static void vfy_keys_free(vfy_key *keys, size_t n);
static vfy_err vfy_jwks_parse(const char *doc, size_t len, vfy_key **out, size_t *n_out, char *err,
                              size_t errlen);
static vfy_err vfy_jwks_apply(vfy *v, const char *doc, size_t len, char *err, size_t errlen);
static vfy_err vfy_jwks_fetch(vfy *v, char *err, size_t errlen);
static vfy_err vfy_feed_fetch_full(vfy *v, char *err, size_t errlen);
static bool vfy_jwks_refetch(vfy *v, uint64_t seen_gen);
static size_t vfy_merge_kids(char (*dst)[VFY_KID_LEN + 1], char (*a)[VFY_KID_LEN + 1], size_t na,
                             char (*b)[VFY_KID_LEN + 1], size_t nb);
static vfy_result vfy_token_structure(const vfy *v, const char *token, vfy_jws *j, const char **kid,
                                      const char **status_uri, uint32_t *status_idx);
static vfy_result vfy_token_times(const vfy *v, const json_t *payload);
static bool vfy_lookup(vfy *v, const char *kid, vfy_key *key_out, uint8_t *ne_buf, bool *revoked,
                       uint64_t *gen, bool *stale);

void vfy_config_default(vfy_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_feed_age = 300;
    cfg->jwks_cooldown = 10;
    cfg->leeway = 0;
    cfg->now = 0;
    cfg->poll_min = 1;
    cfg->poll_max = 300;
    cfg->http_timeout = 10;
    cfg->behind_grace = 5;
}

const char *vfy_result_name(vfy_result r)
{
    static const char *const names[] = {
        [VFY_OK] = "ok",
        [VFY_MALFORMED] = "malformed",
        [VFY_ALG_NOT_ALLOWED] = "alg_not_allowed",
        [VFY_FEED_STALE] = "feed_stale",
        [VFY_UNKNOWN_KID] = "unknown_kid",
        [VFY_REVOKED_KID] = "revoked_kid",
        [VFY_BAD_SIGNATURE] = "bad_signature",
        [VFY_EXPIRED] = "expired",
        [VFY_NOT_YET_VALID] = "not_yet_valid",
        [VFY_REVOKED_TOKEN] = "revoked_token",
        [VFY_WRONG_ORIGIN] = "wrong_origin",
        [VFY_ALREADY_USED] = "already_used",
        [VFY_REDEEM_FAILED] = "redeem_failed",
        [VFY_ORIGIN_REQUIRED] = "origin_required",
        [VFY_WRONG_AUDIENCE] = "wrong_audience",
        [VFY_REVOKED_SUBJECT] = "revoked_subject",
    };
    return nm_name(names, sizeof(names) / sizeof(names[0]), (unsigned)r, "invalid");
}

const char *vfy_err_name(vfy_err e)
{
    static const char *const names[] = {
        [VFY_E_OK] = "ok",       [VFY_E_CONFIG] = "config", [VFY_E_KEY] = "key",
        [VFY_E_NET] = "network", [VFY_E_HTTP] = "http",     [VFY_E_JWKS] = "jwks",
        [VFY_E_FEED] = "feed",   [VFY_E_SYSTEM] = "system", [VFY_E_CREDENTIAL] = "credential",
    };
    return nm_name(names, sizeof(names) / sizeof(names[0]), (unsigned)e, "invalid");
}

/* ---- set-up ---------------------------------------------------------------------------- */

/* Every setting in range; with net, also a usable https URL and the two files named. */
static vfy_err vfy_config_check(const vfy_config *c, bool net, char *err, size_t errlen)
{
    if (c == NULL) {
        snprintf(err, errlen, "no configuration");
        return VFY_E_CONFIG;
    }
    if (c->max_feed_age < 1 || c->max_feed_age > 86400 || c->jwks_cooldown > 3600 ||
        c->leeway > 3600 || c->now < 0 || c->poll_min < 1 || c->poll_max < c->poll_min ||
        c->poll_max > 86400 || c->http_timeout < 1 || c->http_timeout > 300 ||
        c->behind_grace < 1 || c->behind_grace > 3600) {
        snprintf(err, errlen,
                 "a setting is out of range (max-feed-age 1..86400, cooldown 0..3600, "
                 "leeway 0..3600, behind-grace 1..3600, now >= 0)");
        return VFY_E_CONFIG;
    }
    if (c->aud != NULL) {
        size_t n = strnlen(c->aud, VFY_AUD_MAX + 1);
        if (n < 1 || n > VFY_AUD_MAX || !txt_printable(c->aud, n)) {
            snprintf(err, errlen, "the audience must be 1 to %d printable ASCII characters",
                     VFY_AUD_MAX);
            return VFY_E_CONFIG;
        }
    }
    if (!net)
        return VFY_E_OK;
    if (c->url == NULL || strncmp(c->url, "https://", 8) != 0 || c->url[8] == '\0' ||
        strlen(c->url) > VFY_URL_MAX) {
        snprintf(err, errlen, "the URL must be https://host[:port] (TLS is not optional)");
        return VFY_E_CONFIG;
    }
    for (const char *p = c->url; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '?' || *p == '#') {
            snprintf(err, errlen, "the URL may not hold spaces, control characters, ? or #");
            return VFY_E_CONFIG;
        }
    if (c->cacert == NULL || c->cacert[0] == '\0') {
        snprintf(err, errlen, "no CA file given");
        return VFY_E_CONFIG;
    }
    /* curl would only say "error setting certificate file": name the file and the cause. */
    if (access(c->cacert, R_OK) != 0) {
        snprintf(err, errlen, "cannot read CA file %s: %s", c->cacert, strerror(errno));
        return VFY_E_CONFIG;
    }
    return VFY_E_OK;
}

/* A zeroed handle with its locks made and cfg copied (strings not yet); NULL on failure. */
static vfy *vfy_alloc(const vfy_config *cfg)
{
    vfy *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    v->cfg = *cfg;
    v->cfg.url = v->cfg.cacert = v->cfg.feed_key = v->cfg.redeem_credential = NULL;
    /* Checked by vfy_config_check: it fits. */
    if (cfg->aud != NULL) {
        snprintf(v->aud, sizeof(v->aud), "%s", cfg->aud);
        v->cfg.aud = v->aud;
    }
    /* Writers first: a steady stream of vfy_verify readers must not hold a new feed off. */
    int bad = lk_rwlock_init(&v->lock) != 0;
    bad = bad || clk_cond_init(&v->seq_cv) != 0;
    if (bad || pthread_mutex_init(&v->jwks_mu, NULL) != 0 ||
        pthread_mutex_init(&v->sl_mu, NULL) != 0 || pthread_mutex_init(&v->seq_mu, NULL) != 0) {
        free(v); /* a failed init only happens on a broken libc: the lock leak is moot */
        return NULL;
    }
    atomic_init(&v->stream_up, false);
    atomic_init(&v->stop, false);
    atomic_init(&v->jwks_fetches, 0);
    atomic_init(&v->feed_fetches, 0);
    atomic_init(&v->feeds_refused, 0);
    atomic_init(&v->stream_connects, 0);
    atomic_init(&v->status_fetches, 0);
    atomic_init(&v->status_refused, 0);
    return v;
}

vfy_err vfy_open(const vfy_config *cfg, vfy **out, char *err, size_t errlen)
{
    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    vfy_err e = vfy_config_check(cfg, true, err, errlen);
    if (e != VFY_E_OK)
        return e;
    vfy_net_init();
    vfy *v = vfy_alloc(cfg);
    if (v == NULL) {
        snprintf(err, errlen, "out of memory");
        return VFY_E_SYSTEM;
    }
    v->url = strdup(cfg->url);
    v->cacert = strdup(cfg->cacert);
    v->feed_key = cfg->feed_key != NULL ? strdup(cfg->feed_key) : NULL;
    if (v->url == NULL || v->cacert == NULL || (cfg->feed_key != NULL && v->feed_key == NULL)) {
        snprintf(err, errlen, "out of memory");
        e = VFY_E_SYSTEM;
        goto fail;
    }
    /* "https://host/" + "/v1/..." would make "//v1/...": the base keeps no trailing '/'. */
    for (size_t n = strlen(v->url); n > 8 && v->url[n - 1] == '/'; n--)
        v->url[n - 1] = '\0';
    v->cfg.url = v->url;
    v->cfg.cacert = v->cacert;
    v->cfg.feed_key = v->feed_key;
    e = vfy_pubkey_load(v->feed_key, &v->pin, err, errlen);
    if (e == VFY_E_OK && cfg->redeem_credential != NULL)
        e = vfy_secret_load(v, cfg->redeem_credential, err, errlen);
    if (e != VFY_E_OK)
        goto fail;
    v->jwks_curl = vfy_curl_new(v);
    v->feed_curl = vfy_curl_new(v);
    v->sl_curl = vfy_curl_new(v);
    if (v->jwks_curl == NULL || v->feed_curl == NULL || v->sl_curl == NULL) {
        snprintf(err, errlen, "cannot make an HTTP client");
        e = VFY_E_SYSTEM;
        goto fail;
    }
    e = vfy_jwks_fetch(v, err, errlen);
    if (e == VFY_E_OK)
        e = vfy_feed_fetch_full(v, err, errlen);
    if (e != VFY_E_OK)
        goto fail;
    if (vfy_bg_start(v) != 0) {
        snprintf(err, errlen, "cannot start the background thread");
        e = VFY_E_SYSTEM;
        goto fail;
    }
    *out = v;
    return VFY_E_OK;
fail:
    vfy_close(v);
    return e;
}

vfy_err vfy_open_documents(const vfy_config *cfg, const vfy_pubkey *key, const char *jwks,
                           size_t jwks_len, const char *feed, size_t feed_len, vfy **out, char *err,
                           size_t errlen)
{
    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    vfy_err e = vfy_config_check(cfg, false, err, errlen);
    if (e != VFY_E_OK)
        return e;
    if (key == NULL || key->n_len < VFY_MIN_RSA_BYTES) {
        snprintf(err, errlen, "no usable publication key");
        return VFY_E_KEY;
    }
    vfy *v = vfy_alloc(cfg);
    if (v == NULL) {
        snprintf(err, errlen, "out of memory");
        return VFY_E_SYSTEM;
    }
    v->offline = true;
    v->pin = *key;
    /* The url is only the prefix of status list uris here; trimmed as vfy_open trims it. */
    if (cfg->url != NULL) {
        v->url = strdup(cfg->url);
        if (v->url == NULL) {
            vfy_close(v);
            snprintf(err, errlen, "out of memory");
            return VFY_E_SYSTEM;
        }
        for (size_t n = strlen(v->url); n > 0 && v->url[n - 1] == '/'; n--)
            v->url[n - 1] = '\0';
        v->cfg.url = v->url;
    }
    e = vfy_jwks_apply(v, jwks, jwks_len, err, errlen);
    if (e == VFY_E_OK) {
        vfy_feed_status st = vfy_apply_feed(v, feed, feed_len);
        if (st != VFY_FEED_OK) {
            snprintf(err, errlen, "revocation feed refused: %s", vfy_feed_status_name(st));
            e = VFY_E_FEED;
        }
    }
    if (e != VFY_E_OK) {
        vfy_close(v);
        return e;
    }
    *out = v;
    return VFY_E_OK;
}

void vfy_close(vfy *v)
{
    if (v == NULL)
        return;
    if (v->thread_started)
        vfy_bg_stop(v);
    if (v->jwks_curl != NULL)
        curl_easy_cleanup(v->jwks_curl);
    if (v->feed_curl != NULL)
        curl_easy_cleanup(v->feed_curl);
    if (v->sl_curl != NULL)
        curl_easy_cleanup(v->sl_curl);
    vfy_buf_free(&v->feed_body);
    vfy_keys_free(v->keys, v->n_keys);
    free(v->revoked);
    free(v->subjects);
    vfy_status_free_all(v);
    explicit_bzero(v->secret, sizeof(v->secret));
    v->secret_len = 0;
    pthread_rwlock_destroy(&v->lock);
    pthread_mutex_destroy(&v->jwks_mu);
    pthread_mutex_destroy(&v->sl_mu);
    pthread_mutex_destroy(&v->seq_mu);
    pthread_cond_destroy(&v->seq_cv);
    free(v->url);
    free(v->cacert);
    free(v->feed_key);
    free(v);
}

/* ---- the JWKS -------------------------------------------------------------------------- */

static int vfy_key_cmp(const void *a, const void *b)
{
    return strcmp(((const vfy_key *)a)->kid, ((const vfy_key *)b)->kid);
}

static int vfy_kid_cmp(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* Is kid a client kid (32 lowercase hex)? Anything else can never be in our key set. */
static int vfy_hex_kid(const char *kid)
{
    return hex_string(kid, VFY_KID_LEN);
}

static void vfy_keys_free(vfy_key *keys, size_t n)
{
    for (size_t i = 0; keys != NULL && i < n; i++)
        free(keys[i].ne);
    free(keys);
}

/* The RS256 signing keys of a JWKS document, sorted by kid. Entries that are not such a
 * key (the publication key, use "enc", another alg, a bad n) are skipped, not fatal: a
 * JWKS may legitimately carry keys that are not ours to use. A kid listed twice keeps its
 * first key. */
static vfy_err vfy_jwks_parse(const char *doc, size_t len, vfy_key **out, size_t *n_out, char *err,
                              size_t errlen)
{
    *out = NULL;
    *n_out = 0;
    if (doc == NULL || len > VFY_DOC_MAX) {
        snprintf(err, errlen, "JWKS missing or larger than %u bytes", VFY_DOC_MAX);
        return VFY_E_JWKS;
    }
    json_t *j = json_loadb(doc, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *arr = json_object_get(j, "keys");
    if (!json_is_object(j) || !json_is_array(arr)) {
        json_decref(j);
        snprintf(err, errlen, "the JWKS is not a {\"keys\":[...]} JSON document");
        return VFY_E_JWKS;
    }
    size_t cap = json_array_size(arr), n = 0;
    vfy_key *keys = calloc(cap > 0 ? cap : 1, sizeof(*keys));
    if (keys == NULL) {
        json_decref(j);
        snprintf(err, errlen, "out of memory");
        return VFY_E_SYSTEM;
    }
    uint8_t nb[JOSE_RSA_MAX], eb[JOSE_RSA_MAX];
    for (size_t i = 0; i < cap; i++) {
        const json_t *k = json_array_get(arr, i);
        const char *use = json_string_value(json_object_get(k, "use"));
        const char *alg = json_string_value(json_object_get(k, "alg"));
        const char *kid = json_string_value(json_object_get(k, "kid"));
        size_t n_len, e_len;
        /* use "sig" and alg "RS256" exactly: the publication key (use kid-revocation) must
         * never verify a token, whatever kid a token names. */
        if (use == NULL || alg == NULL || kid == NULL || strcmp(use, "sig") != 0 ||
            strcmp(alg, "RS256") != 0 || !vfy_hex_kid(kid) ||
            jose_jwk_rsa_decode(k, nb, &n_len, eb, &e_len) != 0 || n_len < VFY_MIN_RSA_BYTES)
            continue;
        uint8_t *ne = malloc(n_len + e_len);
        if (ne == NULL) {
            vfy_keys_free(keys, n);
            json_decref(j);
            snprintf(err, errlen, "out of memory");
            return VFY_E_SYSTEM;
        }
        memcpy(ne, nb, n_len);
        memcpy(ne + n_len, eb, e_len);
        memcpy(keys[n].kid, kid, VFY_KID_LEN + 1);
        keys[n].ne = ne;
        keys[n].n_len = n_len;
        keys[n].e_len = e_len;
        n++;
    }
    json_decref(j);
    qsort(keys, n, sizeof(*keys), vfy_key_cmp);
    size_t w = 0;
    for (size_t r = 0; r < n; r++) {
        if (w > 0 && strcmp(keys[w - 1].kid, keys[r].kid) == 0) {
            free(keys[r].ne);
            continue;
        }
        keys[w++] = keys[r];
    }
    *out = keys;
    *n_out = w;
    return VFY_E_OK;
}

/* Parses a JWKS and makes it the key set (the old one is dropped whole). */
static vfy_err vfy_jwks_apply(vfy *v, const char *doc, size_t len, char *err, size_t errlen)
{
    vfy_key *keys;
    size_t n;
    vfy_err e = vfy_jwks_parse(doc, len, &keys, &n, err, errlen);
    if (e != VFY_E_OK)
        return e;
    pthread_rwlock_wrlock(&v->lock);
    vfy_key *old = v->keys;
    size_t old_n = v->n_keys;
    v->keys = keys;
    v->n_keys = n;
    v->jwks_gen++;
    pthread_rwlock_unlock(&v->lock);
    vfy_keys_free(old, old_n);
    return VFY_E_OK;
}

/* GET /.well-known/jwks.json on jwks_curl and apply it. Callers hold jwks_mu, or are
 * vfy_open before anything else can see v. */
static vfy_err vfy_jwks_fetch(vfy *v, char *err, size_t errlen)
{
    vfy_buf b = {.max = VFY_DOC_MAX};
    atomic_fetch_add(&v->jwks_fetches, 1);
    vfy_err e = vfy_http_get(v, v->jwks_curl, "/.well-known/jwks.json", &b, err, errlen);
    if (e == VFY_E_OK)
        e = vfy_jwks_apply(v, b.data, b.len, err, errlen);
    vfy_buf_free(&b);
    return e;
}

/* The full feed, fetched and applied at open: a verifier that opened has checked one. */
static vfy_err vfy_feed_fetch_full(vfy *v, char *err, size_t errlen)
{
    vfy_buf b = {.max = VFY_DOC_MAX};
    atomic_fetch_add(&v->feed_fetches, 1);
    vfy_err e = vfy_http_get(v, v->feed_curl, "/v1/revocations/feed", &b, err, errlen);
    if (e == VFY_E_OK) {
        vfy_feed_status st = vfy_apply_feed(v, b.data, b.len);
        if (st != VFY_FEED_OK) {
            snprintf(err, errlen, "revocation feed refused: %s (is --feed-key the key of %s?)",
                     vfy_feed_status_name(st), v->url);
            e = VFY_E_FEED;
        }
    }
    vfy_buf_free(&b);
    return e;
}

/* An unknown kid: refetch the JWKS unless one was fetched for an unknown kid less than
 * jwks_cooldown seconds ago. true when the key set changed since the caller looked (its
 * generation seen_gen), by this call or by a concurrent one: worth a second look-up. */
static bool vfy_jwks_refetch(vfy *v, uint64_t seen_gen)
{
    if (v->offline)
        return false;
    bool changed = false;
    pthread_mutex_lock(&v->jwks_mu);
    pthread_rwlock_rdlock(&v->lock);
    uint64_t gen = v->jwks_gen;
    pthread_rwlock_unlock(&v->lock);
    int64_t now = clk_now_ms();
    if (gen != seen_gen) {
        changed = true; /* another caller fetched while we waited for the mutex */
    } else if (!v->refetched || now - v->last_refetch_ms >= (int64_t)v->cfg.jwks_cooldown * 1000) {
        v->refetched = true;
        v->last_refetch_ms = now;
        changed = vfy_jwks_fetch(v, NULL, 0) == VFY_E_OK;
    }
    pthread_mutex_unlock(&v->jwks_mu);
    return changed;
}

/* ---- the feed -------------------------------------------------------------------------- */

uint64_t vfy_current_seq(vfy *v)
{
    pthread_rwlock_rdlock(&v->lock);
    uint64_t seq = v->seq;
    pthread_rwlock_unlock(&v->lock);
    return seq;
}

void vfy_announce_seq(vfy *v, uint64_t seq)
{
    pthread_rwlock_wrlock(&v->lock);
    if (seq > v->seq) {
        if (seq > v->announced_seq)
            v->announced_seq = seq;
        /* The grace runs from the first announcement we could not catch up with: later
         * ones while still behind do not extend it. */
        if (v->behind_ms == 0)
            v->behind_ms = clk_now_ms();
    }
    pthread_rwlock_unlock(&v->lock);
}

bool vfy_behind(vfy *v)
{
    pthread_rwlock_rdlock(&v->lock);
    bool behind = v->behind_ms != 0;
    pthread_rwlock_unlock(&v->lock);
    return behind;
}

bool vfy_behind_too_long(const vfy *v, int64_t since_ms, int64_t now_ms)
{
    return since_ms != 0 && now_ms - since_ms >= (int64_t)v->cfg.behind_grace * 1000;
}

/* Merges two sorted, distinct kid lists into dst (room for na + nb); returns its length. */
static size_t vfy_merge_kids(char (*dst)[VFY_KID_LEN + 1], char (*a)[VFY_KID_LEN + 1], size_t na,
                             char (*b)[VFY_KID_LEN + 1], size_t nb)
{
    size_t i = 0, k = 0, n = 0;
    while (i < na || k < nb) {
        int c = i == na ? 1 : k == nb ? -1 : strcmp(a[i], b[k]);
        memcpy(dst[n++], c <= 0 ? a[i] : b[k], VFY_KID_LEN + 1);
        if (c <= 0)
            i++;
        if (c >= 0)
            k++;
    }
    return n;
}

static int vfy_subject_cmp(const void *a, const void *b)
{
    return strcmp(((const vfy_subject *)a)->sub, ((const vfy_subject *)b)->sub);
}

/* The feed's subjects sorted by sub, one entry per sub with its latest before (any of them
 * revokes what the latest does not: an earlier before covers less). *out NULL when n is 0;
 * -1 when out of memory. */
static int vfy_subjects_index(const vfy_feed *f, vfy_subject **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (f->n_subjects == 0)
        return 0;
    vfy_subject *s = malloc(f->n_subjects * sizeof(*s));
    if (s == NULL)
        return -1;
    memcpy(s, f->subjects, f->n_subjects * sizeof(*s));
    qsort(s, f->n_subjects, sizeof(*s), vfy_subject_cmp);
    size_t n = 0;
    for (size_t i = 0; i < f->n_subjects; i++) {
        if (n > 0 && strcmp(s[n - 1].sub, s[i].sub) == 0) {
            if (s[i].before > s[n - 1].before)
                s[n - 1] = s[i];
        } else {
            s[n++] = s[i];
        }
    }
    *out = s;
    *n_out = n;
    return 0;
}

vfy_feed_status vfy_apply_feed(vfy *v, const char *jws, size_t len)
{
    vfy_feed f;
    vfy_feed_status st =
        vfy_feed_check(&v->pin, jws, len, (int64_t)time(NULL), vfy_current_seq(v), &f);
    char(*add)[VFY_KID_LEN + 1] = NULL, (*merged)[VFY_KID_LEN + 1] = NULL;
    size_t n_add = 0;
    if (st == VFY_FEED_OK && f.n_revoked > 0) {
        /* Sorted and distinct outside the lock; the writer only merges. */
        add = calloc(f.n_revoked, sizeof(*add));
        if (add == NULL) {
            st = VFY_FEED_MALFORMED; /* out of memory: refuse rather than half-apply */
        } else {
            for (size_t i = 0; i < f.n_revoked; i++)
                memcpy(add[i], f.revoked[i].kid, VFY_KID_LEN + 1);
            qsort(add, f.n_revoked, sizeof(*add), vfy_kid_cmp);
            for (size_t i = 0; i < f.n_revoked; i++)
                if (n_add == 0 || strcmp(add[n_add - 1], add[i]) != 0)
                    memmove(add[n_add++], add[i], VFY_KID_LEN + 1);
        }
    }
    vfy_subject *subjects = NULL;
    size_t n_subjects = 0;
    if (st == VFY_FEED_OK && vfy_subjects_index(&f, &subjects, &n_subjects) != 0)
        st = VFY_FEED_MALFORMED; /* out of memory: refuse rather than half-apply */
    if (st != VFY_FEED_OK) {
        atomic_fetch_add(&v->feeds_refused, 1);
        free(add);
        vfy_feed_free(&f);
        return st;
    }
    pthread_rwlock_wrlock(&v->lock);
    /* Checked again under the lock: another applier may have moved seq since. */
    if (f.seq < v->seq)
        st = VFY_FEED_ROLLBACK;
    else if (f.after > v->seq)
        st = VFY_FEED_GAP;
    else if (n_add > 0) {
        merged = calloc(v->n_revoked + n_add, sizeof(*merged));
        if (merged == NULL) {
            st = VFY_FEED_MALFORMED;
        } else {
            size_t n = vfy_merge_kids(merged, v->revoked, v->n_revoked, add, n_add);
            free(v->revoked);
            v->revoked = merged;
            v->n_revoked = n;
        }
    }
    if (st == VFY_FEED_OK) {
        /* Each copy carries every subject revocation that still matters: replaced, not
         * merged, so the set shrinks as they expire. */
        vfy_subject *old = v->subjects;
        v->subjects = subjects;
        v->n_subjects = n_subjects;
        subjects = old;
        /* A cached older copy of the same seq says nothing new: it must not age us. */
        if (f.seq > v->seq || f.iat >= v->iat) {
            v->iat = f.iat;
            v->exp = f.exp;
            v->ttl = f.ttl;
        }
        v->seq = f.seq;
        /* Caught up with what the stream announced; a feed below it (an older copy the
         * appliance still serves while it cannot sign) leaves us behind. */
        if (v->seq >= v->announced_seq)
            v->behind_ms = 0;
    }
    pthread_rwlock_unlock(&v->lock);
    free(add);
    free(subjects); /* the set replaced, or the one not applied */
    if (st == VFY_FEED_OK) {
        pthread_mutex_lock(&v->seq_mu);
        if (f.seq > v->applied_seq)
            v->applied_seq = f.seq;
        pthread_cond_broadcast(&v->seq_cv);
        pthread_mutex_unlock(&v->seq_mu);
    } else {
        atomic_fetch_add(&v->feeds_refused, 1);
    }
    vfy_feed_free(&f);
    return st;
}

/* ---- verification ---------------------------------------------------------------------- */

/* The "origins" claim: absent, or an array of 1..VFY_ORIGINS_MAX strings, and never next to
 * "origin" (which of the two binds would be a guess). */
static bool vfy_origins_claim_ok(const json_t *payload)
{
    const json_t *list = json_object_get(payload, "origins");
    if (list == NULL)
        return true;
    if (!json_is_array(list) || json_array_size(list) < 1 ||
        json_array_size(list) > VFY_ORIGINS_MAX || json_object_get(payload, "origin") != NULL)
        return false;
    size_t i;
    const json_t *o;
    json_array_foreach(list, i, o) if (!json_is_string(o)) return false;
    return true;
}

/* The origin check of a signed token: a bound token needs an expected origin, and it must
 * be one it is bound to. */
static vfy_result vfy_token_origin(const json_t *payload, const char *expected)
{
    const json_t *one = json_object_get(payload, "origin");
    const json_t *list = json_object_get(payload, "origins");
    if (one == NULL && list == NULL)
        return VFY_OK;
    if (expected == NULL)
        return VFY_ORIGIN_REQUIRED;
    if (one != NULL)
        return strcmp(json_string_value(one), expected) == 0 ? VFY_OK : VFY_WRONG_ORIGIN;
    size_t i;
    const json_t *o;
    json_array_foreach(list, i, o) if (strcmp(json_string_value(o), expected) == 0) return VFY_OK;
    return VFY_WRONG_ORIGIN;
}

/* The audience check, only when the verifier was told its own: aud a string equal to it or
 * an array holding it (RFC 7519 section 4.1.3); absent or anything else is refused. */
static vfy_result vfy_token_audience(const json_t *payload, const char *mine)
{
    if (mine == NULL)
        return VFY_OK;
    const json_t *aud = json_object_get(payload, "aud");
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), mine) == 0 ? VFY_OK : VFY_WRONG_AUDIENCE;
    size_t i;
    const json_t *a;
    if (json_is_array(aud))
        json_array_foreach(aud, i, a) if (json_is_string(a) &&
                                          strcmp(json_string_value(a), mine) == 0) return VFY_OK;
    return VFY_WRONG_AUDIENCE;
}

/* The checks that need no key: form (the status and origin claims included), then alg.
 * *kid points into j's header, *status_uri (NULL: none) into its payload. */
static vfy_result vfy_token_structure(const vfy *v, const char *token, vfy_jws *j, const char **kid,
                                      const char **status_uri, uint32_t *status_idx)
{
    memset(j, 0, sizeof(*j)); /* freed by the caller on every path */
    size_t len = strnlen(token, VFY_TOKEN_MAX + 1);
    if (len > VFY_TOKEN_MAX || vfy_jws_split(token, len, VFY_TOKEN_MAX, j) != 0 ||
        vfy_jws_payload(j) != 0)
        return VFY_MALFORMED;
    const json_t *k = json_object_get(j->header, "kid");
    const json_t *alg = json_object_get(j->header, "alg");
    const json_t *exp = json_object_get(j->payload, "exp");
    const json_t *nbf = json_object_get(j->payload, "nbf");
    /* crit names extensions the signer requires us to understand; we understand none
     * (RFC 7515 section 4.1.11). */
    if (!json_is_string(k) || json_string_length(k) == 0 || json_string_length(k) > VFY_KID_MAX ||
        !json_is_string(alg) || json_object_get(j->header, "crit") != NULL ||
        !json_is_number(exp) || (nbf != NULL && !json_is_number(nbf)))
        return VFY_MALFORMED;
    const json_t *origin = json_object_get(j->payload, "origin");
    if ((origin != NULL && !json_is_string(origin)) || !vfy_origins_claim_ok(j->payload) ||
        vfy_status_claim(v, j->payload, status_uri, status_idx) != VFY_OK)
        return VFY_MALFORMED;
    /* Exactly RS256, before any key is looked up: "none", and HS256 keyed with our public
     * key as an HMAC secret, never reach a key. */
    if (strcmp(json_string_value(alg), "RS256") != 0)
        return VFY_ALG_NOT_ALLOWED;
    *kid = json_string_value(k);
    return VFY_OK;
}

/* exp (required) and nbf (optional) against the token clock, with leeway. JSON numbers
 * may be fractional (RFC 7519 NumericDate): compared as doubles. */
static vfy_result vfy_token_times(const vfy *v, const json_t *payload)
{
    double now = (double)(v->cfg.now != 0 ? v->cfg.now : (int64_t)time(NULL));
    double leeway = (double)v->cfg.leeway;
    const json_t *nbf = json_object_get(payload, "nbf");
    if (now >= json_number_value(json_object_get(payload, "exp")) + leeway)
        return VFY_EXPIRED;
    if (nbf != NULL && now + leeway < json_number_value(nbf))
        return VFY_NOT_YET_VALID;
    return VFY_OK;
}

/* Is the token's subject revoked for its iat? A token with a revoked sub and no numeric
 * iat cannot show it came after the revocation: revoked too. */
static bool vfy_subject_revoked(vfy *v, const json_t *payload)
{
    const char *sub = json_string_value(json_object_get(payload, "sub"));
    if (sub == NULL || strlen(sub) > VFY_SUB_MAX)
        return false; /* longer than any the feed can name */
    const json_t *iat = json_object_get(payload, "iat");
    vfy_subject probe;
    memset(&probe, 0, sizeof(probe));
    memcpy(probe.sub, sub, strlen(sub) + 1);
    bool revoked = false;
    pthread_rwlock_rdlock(&v->lock);
    const vfy_subject *hit = v->n_subjects > 0 ? bsearch(&probe, v->subjects, v->n_subjects,
                                                         sizeof(*v->subjects), vfy_subject_cmp)
                                               : NULL;
    if (hit != NULL)
        revoked = !json_is_number(iat) || json_number_value(iat) < (double)hit->before;
    pthread_rwlock_unlock(&v->lock);
    return revoked;
}

/* Under the read lock: is the feed stale, is kid revoked, and its key (copied into key_out,
 * n and e into ne_buf of 2 * JOSE_RSA_MAX bytes) when the key set has it. Returns whether
 * it has; *gen gets the key set's generation. kid NULL: the staleness alone. */
static bool vfy_lookup(vfy *v, const char *kid, vfy_key *key_out, uint8_t *ne_buf, bool *revoked,
                       uint64_t *gen, bool *stale)
{
    int64_t now = (int64_t)time(NULL);
    bool found = false;
    pthread_rwlock_rdlock(&v->lock);
    /* Fail closed: past exp the feed proves nothing; without a stream, an old feed may
     * hide revocations we were never told about; told of a newer seq, what we hold is
     * known to miss a revocation once we could not fetch it within behind_grace. */
    *stale = now >= v->exp ||
             (now - v->iat > (int64_t)v->cfg.max_feed_age && !atomic_load(&v->stream_up)) ||
             vfy_behind_too_long(v, v->behind_ms, clk_now_ms());
    *revoked = kid != NULL && v->n_revoked > 0 &&
               bsearch(kid, v->revoked, v->n_revoked, sizeof(*v->revoked), vfy_kid_cmp) != NULL;
    vfy_key probe;
    memset(&probe, 0, sizeof(probe));
    snprintf(probe.kid, sizeof(probe.kid), "%s", kid != NULL ? kid : "");
    const vfy_key *k = kid != NULL && v->n_keys > 0
                           ? bsearch(&probe, v->keys, v->n_keys, sizeof(*v->keys), vfy_key_cmp)
                           : NULL;
    if (k != NULL) {
        *key_out = *k;
        memcpy(ne_buf, k->ne, k->n_len + k->e_len);
        key_out->ne = ne_buf;
        found = true;
    }
    *gen = v->jwks_gen;
    pthread_rwlock_unlock(&v->lock);
    return found;
}

vfy_result vfy_verify(vfy *v, const char *token, json_t **claims_out)
{
    return vfy_verify_ex(v, token, NULL, claims_out);
}

vfy_result vfy_verify_ex(vfy *v, const char *token, const char *expected_origin,
                         json_t **claims_out)
{
    if (claims_out != NULL)
        *claims_out = NULL;
    if (v == NULL || token == NULL)
        return VFY_MALFORMED;
    vfy_jws j;
    const char *kid = NULL, *status_uri = NULL;
    uint32_t status_idx = 0;
    vfy_result r = vfy_token_structure(v, token, &j, &kid, &status_uri, &status_idx);
    if (r != VFY_OK) {
        vfy_jws_free(&j);
        return r;
    }
    uint8_t ne[2 * JOSE_RSA_MAX];
    vfy_key key;
    bool revoked, stale;
    uint64_t gen;
    /* Only a client kid can be in the key set: any other kid is unknown without a fetch. */
    const char *probe = vfy_hex_kid(kid) ? kid : NULL;
    bool found = vfy_lookup(v, probe, &key, ne, &revoked, &gen, &stale);
    /* A key made after our last fetch, or a made-up kid: one refetch per cooldown. */
    if (!stale && !found && !revoked && probe != NULL && vfy_jwks_refetch(v, gen))
        found = vfy_lookup(v, probe, &key, ne, &revoked, &gen, &stale);
    if (stale)
        r = VFY_FEED_STALE;
    else if (revoked)
        r = VFY_REVOKED_KID; /* before unknown_kid: a revoked kid has left the JWKS too */
    else if (!found)
        r = VFY_UNKNOWN_KID;
    else if (jose_rs256_verify(key.ne, key.n_len, key.ne + key.n_len, key.e_len, token,
                               j.signing_input_len, j.sig, j.sig_len) != 1)
        r = VFY_BAD_SIGNATURE;
    else
        r = vfy_token_times(v, j.payload);
    if (r == VFY_OK && vfy_subject_revoked(v, j.payload))
        r = VFY_REVOKED_SUBJECT;
    /* Signed by the appliance from here on: only such a token can make us fetch its list. */
    if (r == VFY_OK && status_uri != NULL)
        r = vfy_status_lookup(v, status_uri, status_idx);
    if (r == VFY_OK)
        r = vfy_token_origin(j.payload, expected_origin);
    if (r == VFY_OK)
        r = vfy_token_audience(j.payload, v->cfg.aud);
    if (r == VFY_OK && claims_out != NULL)
        *claims_out = json_incref(j.payload);
    vfy_jws_free(&j);
    return r;
}

/* ---- state ----------------------------------------------------------------------------- */

void vfy_stats(vfy *v, struct vfy_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_rwlock_rdlock(&v->lock);
    out->seq = v->seq;
    out->announced_seq = v->announced_seq > v->seq ? v->announced_seq : 0;
    out->behind = v->behind_ms != 0;
    for (size_t i = 0; i < v->n_slists; i++)
        out->behind = out->behind || v->slists[i].behind_ms != 0;
    out->feed_iat = v->iat;
    out->feed_exp = v->exp;
    out->keys = v->n_keys;
    out->revoked = v->n_revoked;
    out->status_lists = v->n_slists;
    pthread_rwlock_unlock(&v->lock);
    out->status_fetches = atomic_load(&v->status_fetches);
    out->status_refused = atomic_load(&v->status_refused);
    out->jwks_fetches = atomic_load(&v->jwks_fetches);
    out->feed_fetches = atomic_load(&v->feed_fetches);
    out->feeds_refused = atomic_load(&v->feeds_refused);
    out->stream_connects = atomic_load(&v->stream_connects);
    out->stream_up = atomic_load(&v->stream_up);
}

bool vfy_wait_seq(vfy *v, uint64_t seq, unsigned timeout_ms)
{
    struct timespec deadline = clk_deadline(timeout_ms);
    pthread_mutex_lock(&v->seq_mu);
    while (v->applied_seq < seq)
        if (pthread_cond_timedwait(&v->seq_cv, &v->seq_mu, &deadline) == ETIMEDOUT)
            break;
    bool ok = v->applied_seq >= seq;
    pthread_mutex_unlock(&v->seq_mu);
    return ok;
}
