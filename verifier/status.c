/* verifier: signed token status lists. The pure check of one list (vfy_status_list_check),
 * the token's status claim, and the handle's cache of lists by uri: looked up by
 * vfy_verify_ex, filled in the calling thread on first need (one fetch shared through
 * sl_mu), refreshed by the background thread (net.c asks vfy_status_due what is due). See
 * verifier.h for contracts and internal.h for the locks. */
#include "verifier/internal.h"
#include "base/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zlib.h>

#define SL_RETRY_MS                                                                                \
    1000                        /* a list whose fetch failed is not fetched again in a caller      \
                                   sooner than this: the background keeps trying */
#define SL_BACKOFF_BASE_MS 500  /* first background retry of a failed refresh */
#define SL_BACKOFF_MAX_MS 30000 /* background retries stop growing here */
#define SL_BEHIND_RETRY_MS 1000 /* refetch of a list behind an announced revocation */

static int sl_time(const json_t *o, const char *name, int64_t *out);
static int sl_inflate(const uint8_t *z, size_t n, uint8_t *out);
static vfy_feed_status sl_payload(const json_t *p, vfy_status_list *out);
static vfy_slist *sl_find(vfy *v, const char *uri);
static vfy_slist *sl_slot(vfy *v, const char *uri);
static bool sl_usable(vfy *v, const vfy_slist *e, int64_t now);
static vfy_result sl_answer(vfy *v, const char *uri, uint32_t idx, bool *usable);
static void sl_failed(vfy *v, const char *uri, bool background);

/* ---- the pure check --------------------------------------------------------------------- */

/* A time member (Unix seconds, a non-negative integer): 0 or -1. */
static int sl_time(const json_t *o, const char *name, int64_t *out)
{
    const json_t *v = json_object_get(o, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (int64_t)json_integer_value(v);
    return 0;
}

/* Inflates the zlib stream z (n bytes) into out, which holds exactly VFY_STATUS_LIST_BYTES:
 * 0 when the stream ends exactly there with no byte after it, -1 otherwise. The output
 * never grows past out: a stream that would inflate further stops at the bound, refused. */
static int sl_inflate(const uint8_t *z, size_t n, uint8_t *out)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    if (n == 0 || n > UINT32_MAX || inflateInit(&s) != Z_OK)
        return -1;
    s.next_in = (Bytef *)(uintptr_t)z; /* zlib's API is not const; it only reads */
    s.avail_in = (uInt)n;
    s.next_out = out;
    s.avail_out = VFY_STATUS_LIST_BYTES;
    int rc = inflate(&s, Z_FINISH);
    int ok = rc == Z_STREAM_END && s.avail_out == 0 && s.avail_in == 0;
    inflateEnd(&s);
    return ok ? 0 : -1;
}

/* The payload's shape into *out (bits malloc'd): OK or MALFORMED. */
static vfy_feed_status sl_payload(const json_t *p, vfy_status_list *out)
{
    const json_t *sub = json_object_get(p, "sub"), *iss = json_object_get(p, "iss");
    const json_t *sl = json_object_get(p, "status_list");
    const json_t *bits = json_object_get(sl, "bits"), *lst = json_object_get(sl, "lst");
    if (!json_is_string(sub) || json_string_length(sub) == 0 ||
        json_string_length(sub) > VFY_STATUS_URI_MAX || (iss != NULL && !json_is_string(iss)) ||
        sl_time(p, "iat", &out->iat) != 0 || sl_time(p, "exp", &out->exp) != 0 ||
        sl_time(p, "ttl", &out->ttl) != 0 || out->exp <= out->iat || !json_is_object(sl) ||
        !json_is_integer(bits) || json_integer_value(bits) != 1 || !json_is_string(lst))
        return VFY_FEED_MALFORMED;
    /* lst holds at most what the document held (VFY_STATUS_DOC_MAX): no overflow below. */
    size_t zlen_max = json_string_length(lst) / 4 * 3 + 3, zlen = 0;
    uint8_t *z = malloc(zlen_max);
    out->bits = malloc(VFY_STATUS_LIST_BYTES);
    if (z == NULL || out->bits == NULL ||
        jose_b64url_decode(json_string_value(lst), json_string_length(lst), z, zlen_max, &zlen) !=
            0 ||
        sl_inflate(z, zlen, out->bits) != 0) {
        free(z);
        return VFY_FEED_MALFORMED;
    }
    free(z);
    memcpy(out->sub, json_string_value(sub), json_string_length(sub) + 1);
    return VFY_FEED_OK;
}

vfy_feed_status vfy_status_list_check(const vfy_pubkey *key, const char *jws, size_t len,
                                      int64_t now, vfy_status_list *out)
{
    memset(out, 0, sizeof(*out));
    vfy_jws j;
    /* Only a signed list is inflated: a zip bomb costs an attacker the key first. */
    vfy_feed_status st = vfy_signed_doc(key, jws, len, VFY_STATUS_DOC_MAX, VFY_STATUS_LIST_TYP, &j);
    if (st == VFY_FEED_OK)
        st = sl_payload(j.payload, out);
    if (st == VFY_FEED_OK && now >= out->exp)
        st = VFY_FEED_EXPIRED;
    vfy_jws_free(&j);
    if (st != VFY_FEED_OK)
        vfy_status_list_free(out);
    return st;
}

int vfy_status_list_bit(const vfy_status_list *l, uint32_t idx)
{
    if (l == NULL || l->bits == NULL || idx / 8 >= VFY_STATUS_LIST_BYTES)
        return -1;
    return (l->bits[idx / 8] >> (idx % 8)) & 1;
}

void vfy_status_list_free(vfy_status_list *l)
{
    if (l == NULL)
        return;
    free(l->bits);
    memset(l, 0, sizeof(*l));
}

/* ---- the token's claim ------------------------------------------------------------------ */

/* Is uri (n bytes) <v->url>/v1/status-lists/<0..1023, no leading zero>? */
static bool vfy_status_uri_ok(const vfy *v, const char *uri, size_t n)
{
    const char *base = v->cfg.url;
    if (base == NULL || uri == NULL)
        return false;
    size_t blen = strlen(base), plen = strlen(VFY_STATUS_PATH);
    if (n <= blen + plen || n > VFY_STATUS_URI_MAX || memcmp(uri, base, blen) != 0 ||
        memcmp(uri + blen, VFY_STATUS_PATH, plen) != 0)
        return false;
    /* The list number: what the appliance serves, and nothing else (no query, no '/..'). */
    const char *d = uri + blen + plen;
    size_t dlen = n - blen - plen;
    if (dlen > 4 || (dlen > 1 && d[0] == '0'))
        return false;
    unsigned num = 0;
    for (size_t i = 0; i < dlen; i++) {
        if (d[i] < '0' || d[i] > '9')
            return false;
        num = num * 10 + (unsigned)(d[i] - '0');
    }
    return num <= VFY_STATUS_LIST_NUM_MAX;
}

vfy_result vfy_status_claim(const vfy *v, const json_t *payload, const char **uri, uint32_t *idx)
{
    *uri = NULL;
    *idx = 0;
    const json_t *status = json_object_get(payload, "status");
    if (status == NULL)
        return VFY_OK;
    /* A token that names a list must be checked against it: any shape we cannot check, or a
     * list elsewhere than our appliance (we never fetch a URL a token makes up), is refused. */
    const json_t *sl = json_object_get(status, "status_list");
    const json_t *i = json_object_get(sl, "idx"), *u = json_object_get(sl, "uri");
    if (!json_is_object(status) || !json_is_object(sl) || !json_is_integer(i) ||
        json_integer_value(i) < 0 ||
        json_integer_value(i) >= (json_int_t)VFY_STATUS_LIST_BYTES * 8 || !json_is_string(u) ||
        !vfy_status_uri_ok(v, json_string_value(u), json_string_length(u)))
        return VFY_MALFORMED;
    *uri = json_string_value(u);
    *idx = (uint32_t)json_integer_value(i);
    return VFY_OK;
}

/* ---- the cache -------------------------------------------------------------------------- */

/* The entry of uri, or NULL. Under lock (either side). */
static vfy_slist *sl_find(vfy *v, const char *uri)
{
    for (size_t i = 0; i < v->n_slists; i++)
        if (strcmp(v->slists[i].uri, uri) == 0)
            return &v->slists[i];
    return NULL;
}

/* The entry of uri, made when missing (the oldest dropped when the cache is full); NULL
 * when out of memory. Under the write lock. */
static vfy_slist *sl_slot(vfy *v, const char *uri)
{
    vfy_slist *e = sl_find(v, uri);
    if (e != NULL)
        return e;
    char *copy = strdup(uri);
    if (copy == NULL)
        return NULL;
    if (v->n_slists == VFY_STATUS_CACHE_MAX) {
        size_t old = 0;
        for (size_t i = 1; i < v->n_slists; i++)
            if (v->slists[i].born < v->slists[old].born)
                old = i;
        free(v->slists[old].uri);
        free(v->slists[old].bits);
        v->slists[old] = v->slists[--v->n_slists];
    }
    e = &v->slists[v->n_slists++];
    memset(e, 0, sizeof(*e));
    e->uri = copy;
    e->born = ++v->slist_born;
    return e;
}

/* Can e answer now? The feed's rule: not past exp, not older than max_feed_age while
 * the stream, which would announce a revocation at once, is down, and not behind an
 * announced revocation for behind_grace or longer. Under lock. */
static bool sl_usable(vfy *v, const vfy_slist *e, int64_t now)
{
    return e != NULL && e->bits != NULL && now < e->exp &&
           (now - e->iat <= (int64_t)v->cfg.max_feed_age || atomic_load(&v->stream_up)) &&
           !vfy_behind_too_long(v, e->behind_ms, clk_now_ms());
}

/* After a copy was accepted into e: the announced bits it has set are no longer pending,
 * nor what overflowed when the copy was signed after the newest of them. Under the write
 * lock. */
static void sl_settle(vfy_slist *e)
{
    size_t w = 0;
    for (size_t i = 0; i < e->n_pending; i++)
        if (!((e->bits[e->pending[i] / 8] >> (e->pending[i] % 8)) & 1))
            e->pending[w++] = e->pending[i];
    e->n_pending = w;
    if (e->pending_overflow_at != 0 && e->iat > e->pending_overflow_at)
        e->pending_overflow_at = 0;
    if (e->n_pending == 0 && e->pending_overflow_at == 0)
        e->behind_ms = 0;
}

/* The answer from the cache alone; *usable false when it has none. */
static vfy_result sl_answer(vfy *v, const char *uri, uint32_t idx, bool *usable)
{
    int64_t now = (int64_t)time(NULL);
    vfy_result r = VFY_FEED_STALE;
    pthread_rwlock_rdlock(&v->lock);
    const vfy_slist *e = sl_find(v, uri);
    *usable = sl_usable(v, e, now);
    if (*usable)
        r = (e->bits[idx / 8] >> (idx % 8)) & 1 ? VFY_REVOKED_TOKEN : VFY_OK;
    pthread_rwlock_unlock(&v->lock);
    return r;
}

/* A fetch of uri failed (no answer, or a document that did not check out): remember when,
 * and in the background back off. */
static void sl_failed(vfy *v, const char *uri, bool background)
{
    int64_t now = clk_now_ms();
    pthread_rwlock_wrlock(&v->lock);
    vfy_slist *e = sl_slot(v, uri);
    if (e != NULL) {
        e->failed_ms = now;
        if (background || e->next_ms == 0) {
            e->backoff_ms = e->backoff_ms == 0 ? SL_BACKOFF_BASE_MS : e->backoff_ms * 2;
            unsigned cap = e->behind_ms != 0 ? 2 * SL_BEHIND_RETRY_MS : SL_BACKOFF_MAX_MS;
            if (e->backoff_ms > cap)
                e->backoff_ms = cap;
            e->next_ms = now + e->backoff_ms;
        }
    }
    pthread_rwlock_unlock(&v->lock);
}

vfy_feed_status vfy_apply_status_list(vfy *v, const char *uri, const char *jws, size_t len)
{
    if (v == NULL || uri == NULL || !vfy_status_uri_ok(v, uri, strlen(uri)))
        return VFY_FEED_MALFORMED;
    vfy_status_list l;
    vfy_feed_status st = vfy_status_list_check(&v->pin, jws, len, (int64_t)time(NULL), &l);
    /* Bound to the uri it was fetched from: list 3 served under list 4's uri is refused. */
    if (st == VFY_FEED_OK && strcmp(l.sub, uri) != 0)
        st = VFY_FEED_MALFORMED;
    uint8_t *old = NULL;
    if (st == VFY_FEED_OK) {
        pthread_rwlock_wrlock(&v->lock);
        vfy_slist *e = sl_slot(v, uri);
        if (e == NULL) {
            st = VFY_FEED_MALFORMED; /* out of memory: refuse rather than half-apply */
        } else {
            /* Revocation is for good: what an older copy (a cache) lacks stays set. */
            for (size_t i = 0; e->bits != NULL && i < VFY_STATUS_LIST_BYTES; i++)
                l.bits[i] |= e->bits[i];
            old = e->bits;
            e->bits = l.bits;
            l.bits = NULL;
            if (l.iat >= e->iat) {
                e->iat = l.iat;
                e->exp = l.exp;
                e->ttl = l.ttl;
            }
            e->failed_ms = 0;
            e->backoff_ms = 0;
            e->next_ms = clk_now_ms() + vfy_poll_interval_ms(v, e->ttl, e->exp);
            sl_settle(e);
            /* Still behind (the appliance serves the copy it signed before the
             * announcement while it cannot sign): keep asking, soon. */
            if (e->behind_ms != 0)
                e->next_ms = clk_now_ms() + SL_BEHIND_RETRY_MS;
        }
        pthread_rwlock_unlock(&v->lock);
    }
    free(old);
    vfy_status_list_free(&l);
    if (st != VFY_FEED_OK)
        atomic_fetch_add(&v->status_refused, 1);
    return st;
}

vfy_result vfy_status_lookup(vfy *v, const char *uri, uint32_t idx)
{
    bool usable;
    vfy_result r = sl_answer(v, uri, idx, &usable);
    if (usable || v->offline)
        return r;
    /* Missing or stale: fetch it here, once for every caller waiting on the same mutex. */
    pthread_mutex_lock(&v->sl_mu);
    r = sl_answer(v, uri, idx, &usable);
    if (!usable) {
        pthread_rwlock_rdlock(&v->lock);
        const vfy_slist *e = sl_find(v, uri);
        bool recent = e != NULL && e->failed_ms != 0 && clk_now_ms() - e->failed_ms < SL_RETRY_MS;
        /* Behind an announced revocation: the background refetches it every second or two
         * already; a caller waiting here up to http_timeout would only answer later. */
        bool behind = e != NULL && e->behind_ms != 0;
        pthread_rwlock_unlock(&v->lock);
        if (!recent && !behind) {
            vfy_buf b = {.max = VFY_STATUS_DOC_MAX};
            atomic_fetch_add(&v->status_fetches, 1);
            /* uri is <url>/v1/status-lists/<n> (vfy_status_uri_ok): its path is all we send. */
            if (vfy_http_get(v, v->sl_curl, uri + strlen(v->url), &b, NULL, 0) != VFY_E_OK) {
                atomic_fetch_add(&v->status_refused, 1);
                sl_failed(v, uri, false);
            } else if (vfy_apply_status_list(v, uri, b.data, b.len) != VFY_FEED_OK) {
                sl_failed(v, uri, false);
            }
            vfy_buf_free(&b);
            r = sl_answer(v, uri, idx, &usable);
        }
    }
    pthread_mutex_unlock(&v->sl_mu);
    return usable ? r : VFY_FEED_STALE;
}

/* ---- the background's side -------------------------------------------------------------- */

char *vfy_status_due(vfy *v, int64_t now_ms, int64_t *next_ms)
{
    char *uri = NULL;
    *next_ms = INT64_MAX;
    pthread_rwlock_wrlock(&v->lock);
    for (size_t i = 0; i < v->n_slists; i++) {
        vfy_slist *e = &v->slists[i];
        if (uri == NULL && (e->refresh || now_ms >= e->next_ms)) {
            uri = strdup(e->uri);
            if (uri != NULL)
                e->refresh = false; /* cleared at the start: an event during the fetch sets it
                                       again, and that list is fetched once more */
            continue;
        }
        int64_t at = e->refresh ? now_ms : e->next_ms;
        if (at < *next_ms)
            *next_ms = at;
    }
    pthread_rwlock_unlock(&v->lock);
    return uri;
}

void vfy_status_refresh_all(vfy *v)
{
    pthread_rwlock_wrlock(&v->lock);
    for (size_t i = 0; i < v->n_slists; i++)
        v->slists[i].refresh = true;
    pthread_rwlock_unlock(&v->lock);
}

void vfy_status_announce(vfy *v, const char *uri, bool has_idx, uint32_t idx, int64_t revoked_at)
{
    pthread_rwlock_wrlock(&v->lock);
    vfy_slist *e = sl_find(v, uri);
    if (e != NULL) {
        e->refresh = true;
        bool known = has_idx && idx / 8 < VFY_STATUS_LIST_BYTES && e->bits != NULL &&
                     ((e->bits[idx / 8] >> (idx % 8)) & 1);
        bool pending = false;
        for (size_t i = 0; has_idx && i < e->n_pending; i++)
            pending = pending || e->pending[i] == idx;
        if (!known && !pending) {
            if (has_idx && idx / 8 < VFY_STATUS_LIST_BYTES && e->n_pending < VFY_SL_PENDING_MAX)
                e->pending[e->n_pending++] = idx;
            else {
                /* No bit to look for, or too many to remember: cleared by a copy signed
                 * after the newest such revocation. */
                int64_t at = revoked_at > 0 ? revoked_at : (int64_t)time(NULL);
                if (at > e->pending_overflow_at)
                    e->pending_overflow_at = at;
            }
            if (e->behind_ms == 0)
                e->behind_ms = clk_now_ms();
        }
    }
    pthread_rwlock_unlock(&v->lock);
}

void vfy_status_fetched(vfy *v, const char *uri, bool answered, const char *body, size_t len)
{
    if (!answered) {
        atomic_fetch_add(&v->status_refused, 1);
        sl_failed(v, uri, true);
    } else if (vfy_apply_status_list(v, uri, body, len) != VFY_FEED_OK) {
        sl_failed(v, uri, true);
    }
}

void vfy_status_free_all(vfy *v)
{
    for (size_t i = 0; i < v->n_slists; i++) {
        free(v->slists[i].uri);
        free(v->slists[i].bits);
    }
    v->n_slists = 0;
}
