/*
 * bench-propagation: how long a revocation takes to reach a verifier. Against a running
 * appliance it creates N keys (admin), mints one token per key (signer), opens a verifier
 * (the verifier/ library, subscribed to the event stream), checks every token is ok, then
 * revokes the keys one at a time: t0 is when the DELETE's 200 response completed, t1 when
 * vfy_verify first answers revoked_kid for that key's token. Prints
 *
 *   propagation over N revocations: p50 X ms, p99 Y ms, max Z ms
 *
 * (nearest-rank percentiles). Secrets are read from files, never from argv.
 *
 * With VERIFY_URL (cluster mode, issue 20) the keys are created, minted and revoked on URL
 * (node A) while the verifier fetches and subscribes on VERIFY_URL (node C): what is
 * measured is then the revocation crossing the shared database to another node's event
 * stream and signed feed.
 *
 *   bench-propagation URL CACERT FEED_KEY_PEM ADMIN_CREDENTIAL_FILE SIGNER_CREDENTIAL_FILE
 *                     [N [VERIFY_URL]]
 */
#include "verifier/verifier.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#define BENCH_SECRET_MAX 512      /* bytes of a credential secret file */
#define BENCH_BODY_MAX (1u << 20) /* bytes of a response we keep */
#define BENCH_N_MAX 1000          /* the appliance holds at most 1,000 active keys */
#define BENCH_WAIT_MS 30000       /* one revocation may take this long before we give up */
#define BENCH_KNOWN_MS 10000      /* VERIFY_URL's JWKS may take this long to list a new key */
#define BENCH_FRESH_TRIES 100     /* mints of a key just made, 10 ms apart (cluster mode) */

typedef struct {
    char *data;
    size_t len;
} bench_buf;

typedef struct {
    char kid[VFY_KID_LEN + 1];
    char *token;
} bench_key;

static int bench_read_secret(const char *path, char *out, size_t cap);
static size_t bench_write(char *p, size_t size, size_t nmemb, void *ud);
static long bench_http(CURL *c, const char *method, const char *base, const char *path,
                       const char *secret, const char *body, bench_buf *out);
static double bench_ms(const struct timespec *a, const struct timespec *b);
static int bench_cmp(const void *a, const void *b);
static double bench_rank(const double *sorted, size_t n, unsigned pct);

/* The first line of a 0600 secret file, without its newline, into out. */
static int bench_read_secret(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        fprintf(stderr, "bench-propagation: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    out[n] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    if (out[0] == '\0') {
        fprintf(stderr, "bench-propagation: %s holds no secret\n", path);
        return -1;
    }
    return 0;
}

static size_t bench_write(char *p, size_t size, size_t nmemb, void *ud)
{
    bench_buf *b = ud;
    size_t n = size * nmemb;
    if (b->len + n > BENCH_BODY_MAX)
        return 0;
    char *d = realloc(b->data, b->len + n + 1);
    if (d == NULL)
        return 0;
    memcpy(d + b->len, p, n);
    b->data = d;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* One request with a bearer secret and an optional JSON body; the status, or -1. */
static long bench_http(CURL *c, const char *method, const char *base, const char *path,
                       const char *secret, const char *body, bench_buf *out)
{
    char url[4096], auth[BENCH_SECRET_MAX + 32];
    snprintf(url, sizeof(url), "%s%s", base, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", secret);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    h = curl_slist_append(h, "Content-Type: application/json");
    OPENSSL_cleanse(auth, sizeof(auth));
    free(out->data);
    out->data = NULL;
    out->len = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body != NULL ? (long)strlen(body) : 0L);
    if (body == NULL)
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, bench_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    CURLcode rc = curl_easy_perform(c);
    long status = -1;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "bench-propagation: %s %s: %s\n", method, url, curl_easy_strerror(rc));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    for (struct curl_slist *p = h; p != NULL; p = p->next)
        OPENSSL_cleanse(p->data, strlen(p->data)); /* the header held the secret */
    curl_slist_free_all(h);
    return status;
}

static double bench_ms(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e3 + (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

static int bench_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least pct percent of the samples at or below
 * it, rank = ceil(pct * n / 100). */
static double bench_rank(const double *sorted, size_t n, unsigned pct)
{
    size_t rank = (pct * n + 99) / 100;
    return sorted[rank == 0 ? 0 : rank - 1];
}

int main(int argc, char **argv)
{
    if (argc < 6 || argc > 8) {
        fprintf(stderr, "usage: bench-propagation URL CACERT FEED_KEY_PEM ADMIN_CREDENTIAL_FILE "
                        "SIGNER_CREDENTIAL_FILE [N=100 [VERIFY_URL=URL]]\n");
        return 2;
    }
    const char *url = argv[1], *cacert = argv[2], *feed_key = argv[3];
    long n = argc >= 7 ? strtol(argv[6], NULL, 10) : 100;
    const char *verify_url = argc == 8 ? argv[7] : url;
    if (n < 1 || n > BENCH_N_MAX) {
        fprintf(stderr, "bench-propagation: N must be 1..%d\n", BENCH_N_MAX);
        return 2;
    }
    char admin[BENCH_SECRET_MAX], signer[BENCH_SECRET_MAX];
    if (bench_read_secret(argv[4], admin, sizeof(admin)) != 0 ||
        bench_read_secret(argv[5], signer, sizeof(signer)) != 0)
        return 2;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_CAINFO, cacert);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    bench_buf buf = {0};
    bench_key *keys = calloc((size_t)n, sizeof(*keys));
    double *lat = calloc((size_t)n, sizeof(*lat));
    double *lat_req = calloc((size_t)n, sizeof(*lat_req)); /* from the DELETE's start */
    vfy *v = NULL;
    int rc = 1;
    unsigned long fresh_refusals = 0; /* 409s on a key just made, asked again */
    if (c == NULL || keys == NULL || lat == NULL || lat_req == NULL)
        goto out;

    fprintf(stderr, "bench-propagation: creating %ld keys and tokens\n", n);
    for (long i = 0; i < n; i++) {
        long st = bench_http(c, "POST", url, "/v1/keys", admin,
                             "{\"bits\":2048,\"label\":\"bench-propagation\"}", &buf);
        json_t *j = st == 201 ? json_loadb(buf.data, buf.len, 0, NULL) : NULL;
        const char *kid = json_string_value(json_object_get(j, "kid"));
        if (kid == NULL || strlen(kid) != VFY_KID_LEN) {
            fprintf(stderr, "bench-propagation: POST /v1/keys answered %ld: %s\n", st,
                    buf.data ? buf.data : "");
            json_decref(j);
            goto out;
        }
        memcpy(keys[i].kid, kid, VFY_KID_LEN + 1);
        json_decref(j);
        char body[128];
        snprintf(body, sizeof(body), "{\"kid\":\"%s\",\"sub\":\"bench\"}", keys[i].kid);
        st = bench_http(c, "POST", url, "/v1/tokens", signer, body, &buf);
        /* Cluster mode: the node's keeper may not have the new key's row yet a few
         * milliseconds after the 201 (it learns it from the database's note), and refuses
         * with 409 key_revoked: asked again, at most BENCH_FRESH_TRIES times, and counted. */
        for (int t = 0; st == 409 && verify_url != url && t < BENCH_FRESH_TRIES; t++) {
            fresh_refusals++;
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
            st = bench_http(c, "POST", url, "/v1/tokens", signer, body, &buf);
        }
        j = st == 200 ? json_loadb(buf.data, buf.len, 0, NULL) : NULL;
        const char *tok = json_string_value(json_object_get(j, "token"));
        keys[i].token = tok != NULL ? strdup(tok) : NULL;
        json_decref(j);
        if (keys[i].token == NULL) {
            fprintf(stderr, "bench-propagation: POST /v1/tokens answered %ld: %s\n", st,
                    buf.data ? buf.data : "");
            goto out;
        }
    }

    vfy_config cfg;
    vfy_config_default(&cfg);
    cfg.url = verify_url;
    if (verify_url != url)
        cfg.jwks_cooldown = 0; /* the retries below may each refetch */
    cfg.cacert = cacert;
    cfg.feed_key = feed_key;
    char err[512];
    if (vfy_open(&cfg, &v, err, sizeof(err)) != VFY_E_OK) {
        fprintf(stderr, "bench-propagation: %s\n", err);
        goto out;
    }
    for (long i = 0; i < n; i++) {
        /* Another node lists a key created on URL within a second (issue 20): until then
         * the verifier may answer unknown_kid, and fetches the JWKS again. */
        vfy_result r = vfy_verify(v, keys[i].token, NULL);
        struct timespec k0, k1;
        clock_gettime(CLOCK_MONOTONIC, &k0);
        while (r != VFY_OK && verify_url != url) {
            clock_gettime(CLOCK_MONOTONIC, &k1);
            if (bench_ms(&k0, &k1) > BENCH_KNOWN_MS)
                break;
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
            r = vfy_verify(v, keys[i].token, NULL);
        }
        if (r != VFY_OK) {
            fprintf(stderr, "bench-propagation: token of %s: %s before any revocation\n",
                    keys[i].kid, vfy_result_name(r));
            goto out;
        }
    }
    /* The stream must be up, or we would measure the poll interval. */
    for (int i = 0; i < 100; i++) {
        struct vfy_stats s;
        vfy_stats(v, &s);
        if (s.stream_up)
            break;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }

    fprintf(stderr, "bench-propagation: revoking %ld keys one at a time\n", n);
    for (long i = 0; i < n; i++) {
        struct vfy_stats s;
        vfy_stats(v, &s);
        char path[64];
        snprintf(path, sizeof(path), "/v1/keys/%s", keys[i].kid);
        struct timespec ts0;
        clock_gettime(CLOCK_MONOTONIC, &ts0);
        long st = bench_http(c, "DELETE", url, path, admin, "{\"reason\":\"bench\"}", &buf);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (st != 200) {
            fprintf(stderr, "bench-propagation: DELETE %s answered %ld\n", path, st);
            goto out;
        }
        for (;;) {
            if (vfy_verify(v, keys[i].token, NULL) == VFY_REVOKED_KID)
                break;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if (bench_ms(&t0, &t1) > BENCH_WAIT_MS) {
                fprintf(stderr, "bench-propagation: %s not revoked after %d ms\n", keys[i].kid,
                        BENCH_WAIT_MS);
                goto out;
            }
            /* Woken by the feed that carries seq + 1; a short wait when it already came. */
            if (vfy_wait_seq(v, s.seq + 1, 50)) {
                struct timespec ts = {0, 200 * 1000L};
                nanosleep(&ts, NULL);
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        /* The feed may be applied before the DELETE's response has even arrived (the
         * appliance publishes, then destroys the key object, then answers): 0 then. */
        double ms = bench_ms(&t0, &t1);
        lat[i] = ms < 0 ? 0 : ms;
        lat_req[i] = bench_ms(&ts0, &t1);
    }
    qsort(lat, (size_t)n, sizeof(*lat), bench_cmp);
    qsort(lat_req, (size_t)n, sizeof(*lat_req), bench_cmp);
    printf("propagation over %ld revocations: p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", n,
           bench_rank(lat, (size_t)n, 50), bench_rank(lat, (size_t)n, 99), lat[n - 1]);
    fflush(stdout);
    fprintf(stderr,
            "bench-propagation: from the DELETE request's start: p50 %.1f ms, p99 %.1f ms, "
            "max %.1f ms\n",
            bench_rank(lat_req, (size_t)n, 50), bench_rank(lat_req, (size_t)n, 99), lat_req[n - 1]);
    struct vfy_stats s;
    vfy_stats(v, &s);
    fprintf(stderr,
            "bench-propagation: feed fetches %" PRIu64 " (refused %" PRIu64
            "), jwks fetches %" PRIu64 ", stream connects %" PRIu64 ", seq %" PRIu64 "\n",
            s.feed_fetches, s.feeds_refused, s.jwks_fetches, s.stream_connects, s.seq);
    if (fresh_refusals > 0)
        fprintf(stderr,
                "bench-propagation: %lu mints of a key just made answered 409 and were asked "
                "again\n",
                fresh_refusals);
    rc = 0;
out:
    vfy_close(v);
    for (long i = 0; keys != NULL && i < n; i++)
        free(keys[i].token);
    free(keys);
    free(lat);
    free(lat_req);
    free(buf.data);
    if (c != NULL)
        curl_easy_cleanup(c);
    OPENSSL_cleanse(admin, sizeof(admin));
    OPENSSL_cleanse(signer, sizeof(signer));
    return rc;
}
