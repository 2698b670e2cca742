/* ctl: the HTTPS side. One TLS policy for every request, the credential's secret and its
 * header, bounded answers, and the one place where a failed request becomes an exit code
 * and a line a person can act on. See ctl.h. */
#include "cli/ctl.h"
#include "base/text.h"
#include "base/file.h"

#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CTL_HEADER_MAX (CTL_SECRET_MAX + 32) /* "Authorization: Bearer " + secret */

volatile sig_atomic_t ctl_interrupted;

static void ctl_wiping_free(void *p);
static size_t ctl_write(char *p, size_t size, size_t nmemb, void *ud);
static int ctl_secret_check(ctl_ctx *ctx);
static int ctl_transport_line(const ctl_conn *c, CURLcode rc, const char *ebuf, const char *what,
                              char *line, size_t cap);
static int ctl_answer_line(ctl_resp *r, const char *what, char *line, size_t cap);
static const char *ctl_hint(const char *code, long status);

/* What to do about each error code the API documents (docs/api.md), for the one line. */
static const struct {
    const char *code;
    const char *hint;
} ctl_hints[] = {
    {"unauthorized", "check the credential (--credential-file or --credential-env): it may be "
                     "mistyped or revoked"},
    {"forbidden", "use a credential whose role may do this (keys and credentials: admin; sign and "
                  "token: signer; audit: admin or auditor)"},
    {"kid_not_allowed", "use a signer credential whose kids include this key, or \"all\""},
    {"key_not_found", "check the kid with 'signdctl keys list'"},
    {"credential_not_found", "check the id with 'signdctl credentials list'"},
    {"key_limit_reached", "revoke keys no longer needed ('signdctl keys revoke KID --reason R') "
                          "or raise max_active_keys (at most 1000)"},
    {"key_revoked", "use an active key ('signdctl keys list --state active')"},
    {"key_retiring", "use its successor ('signdctl keys show KID' names it)"},
    {"key_broken", "its object is missing from the token: revoke it and create another"},
    {"no_active_key", "create a key first ('signdctl keys create')"},
    {"last_admin", "create another admin credential first ('signdctl credentials create --role "
                   "admin')"},
    {"rate_limited", "wait a moment and retry"},
    {"ttl_too_long", "ask for a shorter --ttl: this credential has a max_ttl"},
    {"ttl_out_of_range", "ask for a --ttl within the appliance's token_ttl_min..token_ttl_max"},
    {"reserved_claim", "leave iss, sub, iat, nbf, exp and jti out of --claims (use --sub, --ttl, "
                       "--nbf)"},
    {"hsm_busy", "the token has no free session: retry"},
    {"hsm_unavailable", "the token failed: retry, then check the appliance's log"},
    {"token_full", "the token has no room for another key: revoke keys no longer needed"},
    {"storage_error", "the appliance's registry failed: check its log and its disk"},
};

/* ---- process set-up and the secret ----------------------------------------------------- */

/* Every JSON string jansson frees is wiped first: a credential's secret comes back in a
 * response, and its JSON copy must not outlive it in freed memory. */
static void ctl_wiping_free(void *p)
{
    if (p == NULL)
        return;
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
}

void ctl_init(void)
{
    json_set_alloc_funcs(malloc, ctl_wiping_free);
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void ctl_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("signdctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* A secret goes into an HTTP header: printable ASCII without spaces, nothing else. */
static int ctl_secret_check(ctl_ctx *ctx)
{
    while (ctx->secret_len > 0 &&
           (ctx->secret[ctx->secret_len - 1] == '\n' || ctx->secret[ctx->secret_len - 1] == '\r' ||
            ctx->secret[ctx->secret_len - 1] == ' '))
        ctx->secret[--ctx->secret_len] = '\0';
    const char *from = ctx->cred_file ? ctx->cred_file : ctx->cred_env;
    if (ctx->secret_len == 0) {
        ctl_err("credential %s is empty; put the secret 'signdctl credentials create' showed in it",
                from);
        return CTL_EXIT_USAGE;
    }
    if (!txt_visible(ctx->secret, ctx->secret_len)) {
        explicit_bzero(ctx->secret, sizeof(ctx->secret));
        ctx->secret_len = 0;
        ctl_err("credential %s holds a byte that is not printable ASCII; it must hold the "
                "secret alone, on one line",
                from);
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

int ctl_secret_load(ctl_ctx *ctx)
{
    if (ctx->secret_len > 0)
        return CTL_EXIT_OK;
    if (ctx->cred_file != NULL && ctx->cred_env != NULL) {
        ctl_err("both --credential-file and --credential-env are given; pass one");
        return CTL_EXIT_USAGE;
    }
    if (ctx->cred_env != NULL) {
        char *v = getenv(ctx->cred_env);
        if (v == NULL) {
            ctl_err("the credential variable %s is not set; export it, or use --credential-file "
                    "FILE",
                    ctx->cred_env);
            return CTL_EXIT_USAGE;
        }
        size_t n = strlen(v);
        if (n >= sizeof(ctx->secret)) {
            ctl_err("the credential in %s is longer than %d bytes; it must hold the secret alone",
                    ctx->cred_env, CTL_SECRET_MAX - 1);
            return CTL_EXIT_USAGE;
        }
        memcpy(ctx->secret, v, n + 1);
        ctx->secret_len = n;
        /* The variable's bytes sit in the area /proc/PID/environ shows: wipe them there
         * too, so the secret is in this process once, in ctx. */
        unsetenv(ctx->cred_env);
        explicit_bzero(v, n);
        return ctl_secret_check(ctx);
    }
    if (ctx->cred_file == NULL) {
        ctl_err("no credential; pass --credential-file FILE (or set SIGND_CREDENTIAL_FILE) or "
                "--credential-env NAME");
        return CTL_EXIT_USAGE;
    }
    size_t n = 0;
    unsigned mode = 0;
    file_status fs =
        file_read(ctx->cred_file, FILE_REGULAR, ctx->secret, sizeof(ctx->secret), &n, &mode);
    if (fs != FILE_OK && fs != FILE_ERR_TOO_LARGE) {
        ctl_err("cannot read the credential file %s: %s; give the file that holds the secret",
                ctx->cred_file,
                fs == FILE_ERR_NOT_REGULAR ? "not a regular file" : strerror(errno));
        return CTL_EXIT_USAGE;
    }
    if (fs == FILE_ERR_TOO_LARGE) {
        explicit_bzero(ctx->secret, sizeof(ctx->secret));
        ctl_err("the credential file %s is longer than %d bytes; it must hold the secret alone",
                ctx->cred_file, CTL_SECRET_MAX - 1);
        return CTL_EXIT_USAGE;
    }
    ctx->secret[n] = '\0';
    ctx->secret_len = n;
    if ((mode & 0077) != 0)
        fprintf(stderr, "signdctl: warning: %s can be read by other users; chmod 600 it\n",
                ctx->cred_file);
    return ctl_secret_check(ctx);
}

void ctl_ctx_wipe(ctl_ctx *ctx)
{
    explicit_bzero(ctx->secret, sizeof(ctx->secret));
    ctx->secret_len = 0;
}

/* ---- connections ----------------------------------------------------------------------- */

int ctl_conn_open(const ctl_ctx *ctx, bool auth, ctl_conn *c)
{
    memset(c, 0, sizeof(*c));
    c->ctx = ctx;
    c->curl = curl_easy_init();
    if (c->curl == NULL) {
        ctl_err("cannot start libcurl: out of memory");
        return CTL_EXIT_SERVER;
    }
    /* https only (a redirect to http too), TLS 1.2 or newer, the peer's name always
     * checked. The chain is checked against --cacert (or the system's store); with only
     * --pin-sha256 the pinned public key is what authenticates the peer, so the chain is
     * not asked to lead to a CA: a self-signed appliance can be pinned alone. */
    bool pin_only = ctx->pin[0] != '\0' && ctx->cacert == NULL;
    CURL *h = c->curl;
    int bad = curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https") != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "https") != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, pin_only ? 0L : 1L) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, ctx->timeout) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_TIMEOUT, ctx->timeout) != CURLE_OK ||
              curl_easy_setopt(h, CURLOPT_USERAGENT, "signdctl/1") != CURLE_OK;
    if (!bad && ctx->cacert != NULL)
        bad = curl_easy_setopt(h, CURLOPT_CAINFO, ctx->cacert) != CURLE_OK;
    if (!bad && ctx->pin[0] != '\0')
        bad = curl_easy_setopt(h, CURLOPT_PINNEDPUBLICKEY, ctx->pin) != CURLE_OK;
    struct curl_slist *l = NULL;
    if (!bad) {
        l = curl_slist_append(NULL, "Content-Type: application/json");
        bad = l == NULL;
    }
    if (!bad) {
        c->headers = l;
        bad = (l = curl_slist_append(c->headers, "Expect:")) == NULL;
    }
    if (!bad && auth) {
        /* The header is built on the stack, copied by curl_slist_append, and wiped here;
         * the copy is wiped by ctl_conn_close. */
        char hdr[CTL_HEADER_MAX];
        snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", ctx->secret);
        bad = (l = curl_slist_append(c->headers, hdr)) == NULL;
        explicit_bzero(hdr, sizeof(hdr));
    }
    if (!bad)
        bad = curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers) != CURLE_OK;
    if (bad) {
        ctl_conn_close(c);
        ctl_err("cannot set up libcurl (is it built with OpenSSL and https?)");
        return CTL_EXIT_SERVER;
    }
    return CTL_EXIT_OK;
}

void ctl_conn_close(ctl_conn *c)
{
    for (struct curl_slist *l = c->headers; l != NULL; l = l->next)
        explicit_bzero(l->data, strlen(l->data));
    curl_slist_free_all(c->headers);
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    memset(c, 0, sizeof(*c));
}

/* ---- answers --------------------------------------------------------------------------- */

void ctl_resp_init(ctl_resp *r, FILE *sink)
{
    memset(r, 0, sizeof(*r));
    r->max = CTL_BODY_MAX;
    r->sink = sink;
}

void ctl_resp_free(ctl_resp *r)
{
    if (r->body != NULL)
        explicit_bzero(r->body, r->cap);
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
}

static size_t ctl_write(char *p, size_t size, size_t nmemb, void *ud)
{
    ctl_resp *r = ud;
    size_t n = size * nmemb; /* curl: size is always 1 */
    long status = 0;
    if (r->sink != NULL &&
        curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200) {
        if (fwrite(p, 1, n, r->sink) != n) {
            r->sink_failed = true;
            return 0;
        }
        return n;
    }
    /* Refused at the bound, before any copy: the transfer is aborted. */
    if (n > r->max || r->len > r->max - n) {
        r->overflow = true;
        return 0;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        /* Not realloc: the old block may hold a secret and is wiped before it is freed. */
        char *d = malloc(cap);
        if (d == NULL)
            return 0;
        if (r->body != NULL) {
            memcpy(d, r->body, r->len);
            explicit_bzero(r->body, r->cap);
            free(r->body);
        }
        r->body = d;
        r->cap = cap;
    }
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static const char *ctl_hint(const char *code, long status)
{
    for (size_t i = 0; i < sizeof(ctl_hints) / sizeof(ctl_hints[0]); i++)
        if (strcmp(ctl_hints[i].code, code) == 0)
            return ctl_hints[i].hint;
    if (status >= 500)
        return "the appliance failed: check its log";
    if (strncmp(code, "invalid_", 8) == 0 || strcmp(code, "out_of_range") == 0 ||
        strcmp(code, "wrong_type") == 0)
        return "fix the value the message names";
    return "see docs/api.md for this error";
}

/* Transport failures: the appliance was not reached, or it was not the one we trust. */
static int ctl_transport_line(const ctl_conn *c, CURLcode rc, const char *ebuf, const char *what,
                              char *line, size_t cap)
{
    const ctl_ctx *ctx = c->ctx;
    const char *why = ebuf[0] != '\0' ? ebuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        snprintf(line, cap,
                 "%s: TLS with %s failed: the server's public key does not match --pin-sha256; "
                 "check the pin, or this is not your appliance",
                 what, ctx->url);
        return CTL_EXIT_CONNECT;
    case CURLE_SSL_CACERT_BADFILE:
        snprintf(line, cap,
                 "%s: cannot use the CA file %s: %s; give a readable PEM file to --cacert", what,
                 ctx->cacert ? ctx->cacert : "(system)", why);
        return CTL_EXIT_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_USE_SSL_FAILED:
        snprintf(line, cap,
                 "%s: TLS with %s failed: %s; give the appliance's certificate or CA with --cacert "
                 "(SIGND_CACERT), or its public key's pin with --pin-sha256",
                 what, ctx->url, why);
        return CTL_EXIT_CONNECT;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        snprintf(line, cap, "%s: bad URL %s: %s; give --url https://HOST:PORT (or SIGND_URL)", what,
                 ctx->url, why);
        return CTL_EXIT_USAGE;
    case CURLE_OPERATION_TIMEDOUT:
        snprintf(line, cap,
                 "%s: %s did not answer within %ld s; retry, or allow more with --timeout SECONDS",
                 what, ctx->url, ctx->timeout);
        return CTL_EXIT_CONNECT;
    default:
        snprintf(line, cap,
                 "%s: cannot reach the appliance at %s: %s; check --url (or SIGND_URL) and that "
                 "signd runs there",
                 what, ctx->url, why);
        return CTL_EXIT_CONNECT;
    }
}

/* A non-2xx answer: its code (from the API's error object) decides the exit code. */
static int ctl_answer_line(ctl_resp *r, const char *what, char *line, size_t cap)
{
    json_t *j = r->body ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    json_t *err = json_object_get(j, "error");
    /* Printable ASCII only: a server's message goes to a terminal. */
    txt_copy_printable(r->code, sizeof(r->code), json_string_value(json_object_get(err, "code")),
                       sizeof(r->code));
    txt_copy_printable(r->message, sizeof(r->message),
                       json_string_value(json_object_get(err, "message")), sizeof(r->message));
    json_decref(j);
    int rc;
    if (r->status == 401 || r->status == 403)
        rc = CTL_EXIT_AUTH;
    else if (r->status == 409 && strcmp(r->code, "key_limit_reached") == 0)
        rc = CTL_EXIT_LIMIT;
    else if (r->status >= 400 && r->status < 500)
        rc = CTL_EXIT_REFUSED;
    else
        rc = CTL_EXIT_SERVER;
    if (r->code[0] == '\0')
        snprintf(line, cap, "%s: HTTP %ld without an API error; check that --url points at signd",
                 what, r->status);
    else
        snprintf(line, cap, "%s: %s (%s); %s", what, r->code, r->message,
                 ctl_hint(r->code, r->status));
    return rc;
}

int ctl_call(ctl_conn *c, const char *method, const char *path, const json_t *body, ctl_resp *r,
             const char *what, char *line, size_t linecap)
{
    CURL *h = c->curl;
    char ebuf[CURL_ERROR_SIZE] = "";
    size_t ulen = strlen(c->ctx->url) + strlen(path) + 1;
    char *url = malloc(ulen);
    char *text = NULL;
    if (url == NULL) {
        snprintf(line, linecap, "%s: out of memory", what);
        return CTL_EXIT_SERVER;
    }
    snprintf(url, ulen, "%s%s", c->ctx->url, path);
    r->curl = h;
    r->status = 0;
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, NULL);
    } else {
        /* POST and DELETE always carry an object, "{}" when there is nothing to say. */
        text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, text ? text : "{}");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(text ? text : "{}"));
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") == 0 ? NULL : method);
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, ctl_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL); /* ebuf dies with this frame */
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
    if (text != NULL)
        ctl_wiping_free(text);
    free(url);
    if (rc != CURLE_OK && r->sink_failed) {
        snprintf(line, linecap, "%s: cannot write the output: %s; check the disk and --out", what,
                 strerror(errno));
        return CTL_EXIT_USAGE;
    }
    if (rc != CURLE_OK && r->overflow) {
        snprintf(line, linecap, "%s: the answer is larger than %zu bytes; narrow the request", what,
                 r->max);
        return CTL_EXIT_SERVER;
    }
    if (rc != CURLE_OK)
        return ctl_transport_line(c, rc, ebuf, what, line, linecap);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->status >= 200 && r->status < 300)
        return CTL_EXIT_OK;
    return ctl_answer_line(r, what, line, linecap);
}

int ctl_request(ctl_ctx *ctx, bool auth, const char *method, const char *path, const json_t *body,
                const char *what, json_t **out)
{
    if (out != NULL)
        *out = NULL;
    int rc = auth ? ctl_secret_load(ctx) : CTL_EXIT_OK;
    if (rc != CTL_EXIT_OK)
        return rc;
    ctl_conn c;
    if ((rc = ctl_conn_open(ctx, auth, &c)) != CTL_EXIT_OK)
        return rc;
    ctl_resp r;
    ctl_resp_init(&r, NULL);
    char line[CTL_LINE_MAX];
    rc = ctl_call(&c, method, path, body, &r, what, line, sizeof(line));
    ctl_conn_close(&c);
    if (rc != CTL_EXIT_OK) {
        ctl_err("%s", line);
    } else if (out != NULL) {
        *out = r.body ? json_loadb(r.body, r.len, JSON_REJECT_DUPLICATES, NULL) : NULL;
        if (!json_is_object(*out)) {
            json_decref(*out);
            *out = NULL;
            ctl_err("%s: the answer is not a JSON object; check that --url points at signd", what);
            rc = CTL_EXIT_SERVER;
        }
    }
    ctl_resp_free(&r);
    return rc;
}

void ctl_print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s != NULL)
        puts(s);
    ctl_wiping_free(s);
}

void ctl_time(long long t, char *buf, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || gmtime_r(&tt, &tm) == NULL || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, cap, "-");
}
