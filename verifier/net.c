/* verifier: the network side. libcurl with one TLS policy for every request, synchronous
 * GETs for vfy_open and JWKS refetches, and the background thread: one libcurl multi
 * handle that drives the event stream and the feed fetches, woken by curl_multi_wakeup
 * when vfy_close wants it gone. See verifier.h and internal.h. */
#include "verifier/internal.h"
#include "base/clock.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/rand.h>

#define NET_PATH_MAX 128             /* bytes of a request path we build */
#define NET_WAIT_MAX_MS 1000         /* the loop looks at the clock at least this often */
#define NET_STREAM_BASE_MS 500       /* first reconnection delay without a retry: field */
#define NET_BACKOFF_MAX_MS 30000     /* reconnection and refetch delays stop growing here */
#define NET_FEED_BACKOFF_BASE_MS 500 /* first retry of a failed feed fetch */
#define NET_STREAM_IDLE_S 45L        /* no byte for this long (3 heartbeats): reconnect */
#define NET_BEHIND_RETRY_MAX_MS 2000 /* feed retries while behind an announced seq */

static pthread_once_t net_once = PTHREAD_ONCE_INIT;

static void net_global_init(void);
static void net_describe(CURLcode rc, const char *url, const char *ebuf, char *err, size_t errlen);
static int64_t net_poll_interval_ms(vfy *v);
static int64_t net_jitter(int64_t ms);
static void bg_feed_start(vfy *v);
static void bg_feed_done(vfy *v, CURLcode rc);
static void bg_status_start(vfy *v, char *uri);
static void bg_status_done(vfy *v, CURLcode rc);
static int bg_stream_start(vfy *v);
static void bg_stream_done(vfy *v);
static size_t bg_stream_header(char *p, size_t size, size_t nmemb, void *ud);
static size_t bg_stream_write(char *p, size_t size, size_t nmemb, void *ud);
static void sse_line(vfy *v);
static void sse_dispatch(vfy *v);
static void *bg_main(void *arg);

static void net_global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void vfy_net_init(void)
{
    pthread_once(&net_once, net_global_init);
}

CURL *vfy_curl_new(vfy *v)
{
    CURL *c = curl_easy_init();
    if (c == NULL)
        return NULL;
    /* Every option that makes this TLS: https only (no redirect to http either), 1.2 or
     * newer, the peer's chain checked against the operator's CA file, its name against
     * the URL's host. No signals: we run in threads. */
    if (curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https") != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https") != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_CAINFO, v->cacert) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)v->cfg.http_timeout) != CURLE_OK ||
        curl_easy_setopt(c, CURLOPT_USERAGENT, "signd-verify/1") != CURLE_OK) {
        curl_easy_cleanup(c);
        return NULL;
    }
    return c;
}

/* ---- buffers and synchronous GETs ------------------------------------------------------ */

static void vfy_buf_reset(vfy_buf *b)
{
    b->len = 0;
    b->overflow = false;
}

void vfy_buf_free(vfy_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->overflow = false;
}

size_t vfy_buf_write(char *p, size_t size, size_t nmemb, void *ud)
{
    vfy_buf *b = ud;
    size_t n = size * nmemb; /* curl: size is always 1 */
    /* Refused at the bound, before any copy: the transfer is aborted. */
    if (n > b->max || b->len > b->max - n) {
        b->overflow = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* One line a user can act on: unreachable, or TLS (certificate, version) failed. */
static void net_describe(CURLcode rc, const char *url, const char *ebuf, char *err, size_t errlen)
{
    const char *why = ebuf[0] != '\0' ? ebuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED:
        snprintf(err, errlen, "TLS with %s failed: %s", url, why);
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        snprintf(err, errlen, "bad URL %s: %s", url, why);
        break;
    default:
        snprintf(err, errlen, "appliance unreachable at %s: %s", url, why);
        break;
    }
}

/* Makes c a GET of url into out (emptied; its max is the caller's), within http_timeout:
 * what the synchronous fetches and the background ones share. */
static void net_get_setup(vfy *v, CURL *c, const char *url, vfy_buf *out)
{
    vfy_buf_reset(out);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, vfy_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)v->cfg.http_timeout);
}

vfy_err vfy_http_get(vfy *v, CURL *c, const char *path, vfy_buf *out, char *err, size_t errlen)
{
    char ebuf[CURL_ERROR_SIZE] = "";
    size_t ulen = strlen(v->url) + strlen(path) + 1;
    char *url = malloc(ulen);
    if (url == NULL) {
        snprintf(err, errlen, "out of memory");
        return VFY_E_SYSTEM;
    }
    snprintf(url, ulen, "%s%s", v->url, path);
    net_get_setup(v, c, url, out);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL); /* ebuf dies with this frame */
    vfy_err e = VFY_E_OK;
    long status = 0;
    if (rc != CURLE_OK && out->overflow) {
        snprintf(err, errlen, "%s answered more than %zu bytes", url, out->max);
        e = VFY_E_HTTP;
    } else if (rc != CURLE_OK) {
        net_describe(rc, url, ebuf, err, errlen);
        e = VFY_E_NET;
    } else if (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK || status != 200) {
        snprintf(err, errlen, "%s answered HTTP %ld", url, status);
        e = VFY_E_HTTP;
    }
    free(url);
    return e;
}

/* ---- the background thread ------------------------------------------------------------- */

/* How long until the next periodic feed fetch: the feed's ttl within poll_min..poll_max,
 * at most half of what is left of its life (a fresh copy arrives before exp), and while
 * the stream is down at most a third of max_feed_age: the appliance re-signs a cached feed
 * only every so often (its revocations_max_age), so the copy we get may already be that
 * old, and the feed must still not go stale while the appliance is reachable. */
static int64_t net_poll_interval_ms(vfy *v)
{
    pthread_rwlock_rdlock(&v->lock);
    int64_t ttl = v->ttl, exp = v->exp;
    pthread_rwlock_unlock(&v->lock);
    return vfy_poll_interval_ms(v, ttl, exp);
}

/* The same rule for any signed document: the feed, a status list. */
int64_t vfy_poll_interval_ms(vfy *v, int64_t ttl, int64_t exp)
{
    int64_t s = ttl > 0 ? ttl : 60;
    if (s < (int64_t)v->cfg.poll_min)
        s = v->cfg.poll_min;
    if (s > (int64_t)v->cfg.poll_max)
        s = v->cfg.poll_max;
    int64_t left = exp - (int64_t)time(NULL);
    if (left / 2 < s)
        s = left / 2;
    if (!atomic_load(&v->stream_up) && (int64_t)v->cfg.max_feed_age / 3 < s)
        s = v->cfg.max_feed_age / 3;
    return (s < 1 ? 1 : s) * 1000;
}

/* ms plus up to a quarter more, so that many verifiers do not reconnect in step. */
static int64_t net_jitter(int64_t ms)
{
    uint32_t r = 0;
    if (ms < 4 || RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        return ms;
    return ms + (int64_t)(r % (uint32_t)(ms / 4));
}

/* GET the feed: the delta after our seq, or the full list after a gap. */
static void bg_feed_start(vfy *v)
{
    char url[NET_PATH_MAX + 2048 + 1];
    uint64_t after = v->fetch_full ? 0 : vfy_current_seq(v);
    if (after == 0)
        snprintf(url, sizeof(url), "%s/v1/revocations/feed", v->url);
    else
        snprintf(url, sizeof(url), "%s/v1/revocations/feed?after=%" PRIu64, v->url, after);
    v->feed_body.max = VFY_DOC_MAX;
    net_get_setup(v, v->feed_curl, url, &v->feed_body);
    v->fetch_soon = false;
    v->fetch_full = false;
    if (curl_multi_add_handle(v->multi, v->feed_curl) != CURLM_OK) {
        v->next_poll_ms = clk_now_ms() + NET_BACKOFF_MAX_MS;
        return;
    }
    v->feed_active = true;
    atomic_fetch_add(&v->feed_fetches, 1);
}

static void bg_feed_done(vfy *v, CURLcode rc)
{
    curl_multi_remove_handle(v->multi, v->feed_curl);
    v->feed_active = false;
    long status = 0;
    curl_easy_getinfo(v->feed_curl, CURLINFO_RESPONSE_CODE, &status);
    vfy_feed_status st = VFY_FEED_MALFORMED;
    if (rc == CURLE_OK && status == 200)
        st = vfy_apply_feed(v, v->feed_body.data, v->feed_body.len);
    else
        atomic_fetch_add(&v->feeds_refused, 1); /* no document counts as a refused one */
    int64_t now = clk_now_ms(), interval = net_poll_interval_ms(v);
    if (st == VFY_FEED_OK && !vfy_behind(v)) {
        v->feed_backoff_ms = 0;
        v->next_poll_ms = now + interval;
        return;
    }
    if (st == VFY_FEED_GAP) {
        v->fetch_full = true; /* at once: the delta skipped revocations we never saw */
        return;
    }
    /* Unreachable, refused, rolled back (a stale cache, say), or accepted but still below
     * the seq the stream announced (an older copy served while the appliance cannot sign):
     * try again sooner than the poll interval, backing off; behind, at most every
     * NET_BEHIND_RETRY_MAX_MS, so that the announced revocation lands soon after the
     * appliance can sign again. */
    v->feed_backoff_ms =
        v->feed_backoff_ms == 0 ? NET_FEED_BACKOFF_BASE_MS : v->feed_backoff_ms * 2;
    unsigned cap = vfy_behind(v) ? NET_BEHIND_RETRY_MAX_MS : NET_BACKOFF_MAX_MS;
    if (v->feed_backoff_ms > cap)
        v->feed_backoff_ms = cap;
    v->next_poll_ms = now + (interval < v->feed_backoff_ms ? interval : v->feed_backoff_ms);
}

/* GET one status list (uri, malloc'd, is ours from now on), refreshing its cache entry. */
static void bg_status_start(vfy *v, char *uri)
{
    /* vfy_status_due hands out cached uris only: each is <url>/v1/status-lists/<n>. libcurl
     * copies the string, so uri itself is the URL. */
    v->sl_body.max = VFY_STATUS_DOC_MAX;
    net_get_setup(v, v->sl_bg_curl, uri, &v->sl_body);
    free(v->sl_bg_uri);
    v->sl_bg_uri = uri;
    if (curl_multi_add_handle(v->multi, v->sl_bg_curl) != CURLM_OK) {
        vfy_status_fetched(v, uri, false, NULL, 0);
        return;
    }
    v->sl_active = true;
    atomic_fetch_add(&v->status_fetches, 1);
}

static void bg_status_done(vfy *v, CURLcode rc)
{
    curl_multi_remove_handle(v->multi, v->sl_bg_curl);
    v->sl_active = false;
    long status = 0;
    curl_easy_getinfo(v->sl_bg_curl, CURLINFO_RESPONSE_CODE, &status);
    vfy_status_fetched(v, v->sl_bg_uri, rc == CURLE_OK && status == 200, v->sl_body.data,
                       v->sl_body.len);
}

/* Connects the event stream, resuming after our seq. 0, or -1 (tried again later). */
static int bg_stream_start(vfy *v)
{
    char url[NET_PATH_MAX + 2048 + 1], last[64];
    snprintf(url, sizeof(url), "%s/v1/revocations/events", v->url);
    snprintf(last, sizeof(last), "Last-Event-ID: %" PRIu64, vfy_current_seq(v));
    curl_slist_free_all(v->stream_headers);
    v->stream_headers = NULL;
    struct curl_slist *h = curl_slist_append(NULL, "Accept: text/event-stream");
    struct curl_slist *h2 = h ? curl_slist_append(h, "Cache-Control: no-cache") : NULL;
    struct curl_slist *h3 = h2 ? curl_slist_append(h2, last) : NULL;
    if (h3 == NULL) {
        curl_slist_free_all(h);
        return -1;
    }
    v->stream_headers = h3;
    memset(&v->sse, 0, sizeof(v->sse));
    v->sse.retry_ms = -1;
    v->stream_ok = false;
    CURL *c = v->stream_curl;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, v->stream_headers);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, bg_stream_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, v);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, bg_stream_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, v);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 0L); /* a stream lasts as long as it is alive */
    /* Alive means bytes: the server sends a heartbeat every ~15 s. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, NET_STREAM_IDLE_S);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    if (curl_multi_add_handle(v->multi, c) != CURLM_OK)
        return -1;
    v->stream_active = true;
    return 0;
}

/* The stream ended (server closed, network, 503, idle): down, and reconnect later. */
static void bg_stream_done(vfy *v)
{
    curl_multi_remove_handle(v->multi, v->stream_curl);
    v->stream_active = false;
    atomic_store(&v->stream_up, false);
    int64_t base = NET_STREAM_BASE_MS;
    if (v->sse.retry_ms >= 0)
        base = v->sse.retry_ms < 100 ? 100 : v->sse.retry_ms;
    if (base > NET_BACKOFF_MAX_MS)
        base = NET_BACKOFF_MAX_MS;
    /* A connection that was accepted starts the backoff again; refusals (503 when the
     * appliance has too many subscribers) and failures double it. */
    if (v->stream_ok || v->stream_backoff_ms == 0)
        v->stream_backoff_ms = (unsigned)base;
    else if (v->stream_backoff_ms < NET_BACKOFF_MAX_MS)
        v->stream_backoff_ms *= 2;
    if (v->stream_backoff_ms > NET_BACKOFF_MAX_MS)
        v->stream_backoff_ms = NET_BACKOFF_MAX_MS;
    int64_t now = clk_now_ms();
    v->reconnect_ms = now + net_jitter(v->stream_backoff_ms);
    /* Down, the feed is all we have: poll at the stream-down interval from now. */
    int64_t next = now + net_poll_interval_ms(v);
    if (next < v->next_poll_ms)
        v->next_poll_ms = next;
}

/* Accepts the stream when its headers end with a 200 and text/event-stream. */
static size_t bg_stream_header(char *p, size_t size, size_t nmemb, void *ud)
{
    vfy *v = ud;
    size_t n = size * nmemb;
    if (!(n == 2 && p[0] == '\r' && p[1] == '\n') && !(n == 1 && p[0] == '\n'))
        return n;
    long status = 0;
    char *ctype = NULL;
    curl_easy_getinfo(v->stream_curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(v->stream_curl, CURLINFO_CONTENT_TYPE, &ctype);
    if (status >= 100 && status < 200)
        return n; /* an interim response; the real one follows */
    if (status != 200 || ctype == NULL || strncasecmp(ctype, "text/event-stream", 17) != 0)
        return 0; /* aborts the transfer: bg_stream_done backs off */
    v->stream_ok = true;
    atomic_store(&v->stream_up, true);
    atomic_fetch_add(&v->stream_connects, 1);
    /* Whatever happened while we were away: the feed and the lists say it, not the replay
     * (token revocations carry no id to resume from). */
    v->fetch_soon = true;
    vfy_status_refresh_all(v);
    return n;
}

static size_t bg_stream_write(char *p, size_t size, size_t nmemb, void *ud)
{
    vfy *v = ud;
    size_t n = size * nmemb;
    if (!v->stream_ok || atomic_load(&v->stop) || vfy_sse_bytes(v, p, n) != 0)
        return 0;
    return n;
}

/* ---- Server-Sent Events ---------------------------------------------------------------- */

int vfy_sse_bytes(vfy *v, const char *p, size_t n)
{
    vfy_sse *s = &v->sse;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (s->after_cr && c == '\n') {
            s->after_cr = false;
            continue;
        }
        s->after_cr = c == '\r';
        if (c == '\r' || c == '\n') {
            sse_line(v);
            s->line_len = 0;
            continue;
        }
        if (s->line_len == sizeof(s->line))
            return -1;
        s->line[s->line_len++] = c;
    }
    return 0;
}

/* One line: a comment, a field, or (empty) the end of an event. */
static void sse_line(vfy *v)
{
    vfy_sse *s = &v->sse;
    if (s->line_len == 0) {
        sse_dispatch(v);
        return;
    }
    if (s->line[0] == ':')
        return; /* a comment: the heartbeat */
    char *colon = memchr(s->line, ':', s->line_len);
    size_t flen = colon ? (size_t)(colon - s->line) : s->line_len;
    const char *val = colon ? colon + 1 : s->line + s->line_len;
    size_t vlen = (size_t)(s->line + s->line_len - val);
    if (vlen > 0 && val[0] == ' ') {
        val++;
        vlen--;
    }
    if (flen == 5 && memcmp(s->line, "event", 5) == 0) {
        if (vlen >= sizeof(s->event))
            vlen = 0; /* too long to be one we know */
        memcpy(s->event, val, vlen);
        s->event[vlen] = '\0';
    } else if (flen == 4 && memcmp(s->line, "data", 4) == 0) {
        if (s->data_len + vlen + 1 >= sizeof(s->data)) {
            s->data_overflow = true;
        } else {
            memcpy(s->data + s->data_len, val, vlen);
            s->data_len += vlen;
            s->data[s->data_len++] = '\n';
        }
    } else if (flen == 5 && memcmp(s->line, "retry", 5) == 0) {
        long ms = 0;
        size_t i = 0;
        for (; i < vlen && i < 9 && val[i] >= '0' && val[i] <= '9'; i++)
            ms = ms * 10 + (val[i] - '0');
        if (vlen > 0 && i == vlen)
            s->retry_ms = ms; /* all digits, at most 9 of them: otherwise ignored */
    }
    /* id: ignored. We resume from the seq of the last feed we accepted, never from an id
     * the unsigned stream told us. */
}

/* The end of an event: a revocation, or a hello announcing a seq past ours, asks for the
 * signed feed; a token revocation asks for a refresh of the list it names, when we keep
 * that list. The event's own content is never applied. */
static void sse_dispatch(vfy *v)
{
    vfy_sse *s = &v->sse;
    if (strcmp(s->event, "token-revocation") == 0 && s->data_len > 0 && !s->data_overflow) {
        json_t *d = json_loadb(s->data, s->data_len - 1, 0, NULL);
        const char *uri = json_string_value(json_object_get(d, "uri"));
        const json_t *idx = json_object_get(d, "idx"), *at = json_object_get(d, "revoked_at");
        bool has_idx = json_is_integer(idx) && json_integer_value(idx) >= 0 &&
                       json_integer_value(idx) < (json_int_t)VFY_STATUS_LIST_BYTES * 8;
        /* A list we do not keep is fetched on first need; one we keep is refreshed now and
         * counts as behind until a copy has the announced bit. */
        if (uri != NULL)
            vfy_status_announce(v, uri, has_idx, has_idx ? (uint32_t)json_integer_value(idx) : 0,
                                json_is_integer(at) ? (int64_t)json_integer_value(at) : 0);
        json_decref(d);
    }
    /* A subject revocation takes a seq of the same sequence: it is news like a key's. */
    bool interesting = strcmp(s->event, "revocation") == 0 || strcmp(s->event, "hello") == 0 ||
                       strcmp(s->event, "subject-revocation") == 0;
    if (interesting && (s->data_len > 0 || s->data_overflow)) {
        json_t *d = s->data_overflow ? NULL : json_loadb(s->data, s->data_len - 1, 0, NULL);
        json_t *seq = json_object_get(d, "seq");
        /* Unreadable or past our seq: fetch. A hello at or below our seq says nothing new.
         * Past our seq, we are behind until a feed reaching it is accepted (and fail closed
         * after behind_grace without one). */
        if (!json_is_integer(seq) || json_integer_value(seq) < 0)
            v->fetch_soon = true;
        else if ((uint64_t)json_integer_value(seq) > vfy_current_seq(v)) {
            vfy_announce_seq(v, (uint64_t)json_integer_value(seq));
            v->fetch_soon = true;
        }
        json_decref(d);
    }
    s->event[0] = '\0';
    s->data_len = 0;
    s->data_overflow = false;
}

static void *bg_main(void *arg)
{
    vfy *v = arg;
    v->next_poll_ms = clk_now_ms() + net_poll_interval_ms(v);
    v->reconnect_ms = 0;
    while (!atomic_load(&v->stop)) {
        int64_t now = clk_now_ms();
        if (!v->stream_active && now >= v->reconnect_ms && bg_stream_start(v) != 0)
            v->reconnect_ms = now + NET_BACKOFF_MAX_MS;
        if (!v->feed_active && (v->fetch_soon || v->fetch_full || now >= v->next_poll_ms))
            bg_feed_start(v);
        int64_t sl_next = INT64_MAX;
        if (!v->sl_active) {
            char *uri = vfy_status_due(v, now, &sl_next);
            if (uri != NULL)
                bg_status_start(v, uri);
        }
        int running = 0;
        curl_multi_perform(v->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(v->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            if (m->easy_handle == v->feed_curl)
                bg_feed_done(v, m->data.result);
            else if (m->easy_handle == v->stream_curl)
                bg_stream_done(v);
            else if (m->easy_handle == v->sl_bg_curl)
                bg_status_done(v, m->data.result);
        }
        /* Sleep until the next thing to do, a socket event, or curl_multi_wakeup. */
        now = clk_now_ms();
        int64_t wait = NET_WAIT_MAX_MS;
        if (!v->feed_active) {
            if (v->fetch_soon || v->fetch_full)
                wait = 0;
            else if (v->next_poll_ms - now < wait)
                wait = v->next_poll_ms - now;
        }
        if (!v->stream_active && v->reconnect_ms - now < wait)
            wait = v->reconnect_ms - now;
        if (!v->sl_active && sl_next != INT64_MAX && sl_next - now < wait)
            wait = sl_next - now;
        if (wait > 0)
            curl_multi_poll(v->multi, NULL, 0, (int)wait, NULL);
    }
    if (v->feed_active)
        curl_multi_remove_handle(v->multi, v->feed_curl);
    if (v->stream_active)
        curl_multi_remove_handle(v->multi, v->stream_curl);
    if (v->sl_active)
        curl_multi_remove_handle(v->multi, v->sl_bg_curl);
    v->feed_active = v->stream_active = v->sl_active = false;
    atomic_store(&v->stream_up, false);
    return NULL;
}

int vfy_bg_start(vfy *v)
{
    v->multi = curl_multi_init();
    v->stream_curl = vfy_curl_new(v);
    v->sl_bg_curl = vfy_curl_new(v);
    if (v->multi == NULL || v->stream_curl == NULL || v->sl_bg_curl == NULL)
        goto fail;
    if (pthread_create(&v->thread, NULL, bg_main, v) != 0)
        goto fail;
    v->thread_started = true;
    return 0;
fail:
    if (v->stream_curl != NULL)
        curl_easy_cleanup(v->stream_curl);
    if (v->sl_bg_curl != NULL)
        curl_easy_cleanup(v->sl_bg_curl);
    if (v->multi != NULL)
        curl_multi_cleanup(v->multi);
    v->stream_curl = v->sl_bg_curl = NULL;
    v->multi = NULL;
    return -1;
}

void vfy_bg_stop(vfy *v)
{
    atomic_store(&v->stop, true);
    curl_multi_wakeup(v->multi);
    pthread_join(v->thread, NULL);
    v->thread_started = false;
    curl_easy_cleanup(v->stream_curl);
    curl_easy_cleanup(v->sl_bg_curl);
    curl_multi_cleanup(v->multi);
    curl_slist_free_all(v->stream_headers);
    vfy_buf_free(&v->sl_body);
    free(v->sl_bg_uri);
    v->sl_bg_uri = NULL;
    v->sl_bg_curl = NULL;
    v->stream_curl = NULL;
    v->multi = NULL;
    v->stream_headers = NULL;
}
