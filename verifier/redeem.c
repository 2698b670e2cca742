/* verifier: redeeming a token through the appliance (POST /v1/tokens/redeem) with the
 * secret of a redeemer credential, and the origin form. The secret is read once from a
 * file by vfy_open (never from argv or the environment), lives in v->secret, is copied
 * only into the one request header that carries it, and every copy is wiped. See
 * verifier.h for contracts. */
#include "verifier/internal.h"
#include "base/text.h"
#include "base/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RD_ORIGIN_MAX 255          /* bytes of an origin, as the appliance bounds it */
#define RD_ANSWER_MAX (256u << 10) /* bytes of a redeem answer: the claims of one token */
#define RD_AUTH_MAX (sizeof("Authorization: Bearer ") + VFY_SECRET_MAX)

static void rd_wipe_headers(struct curl_slist *h);
static vfy_result rd_map(long status, const char *code);

bool vfy_origin_ok(const char *origin)
{
    if (origin == NULL || strnlen(origin, RD_ORIGIN_MAX + 1) > RD_ORIGIN_MAX)
        return false;
    const char *p;
    if (strncmp(origin, "https://", 8) == 0)
        p = origin + 8;
    else if (strncmp(origin, "http://", 7) == 0)
        p = origin + 7;
    else
        return false;
    const char *host = p;
    while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-')
        p++;
    if (p == host)
        return false;
    if (*p == '\0')
        return true;
    if (*p != ':' || p[1] < '1' || p[1] > '9')
        return false; /* a path, a query, a '/', an empty port or a leading zero */
    unsigned long port = 0;
    for (p++; *p >= '0' && *p <= '9' && port <= 65535; p++)
        port = port * 10 + (unsigned long)(*p - '0');
    return *p == '\0' && port >= 1 && port <= 65535;
}

vfy_err vfy_secret_load(vfy *v, const char *path, char *err, size_t errlen)
{
    size_t n = 0;
    file_status fs =
        file_read(path, FILE_REGULAR | FILE_NOFOLLOW, v->secret, sizeof(v->secret), &n, NULL);
    if (fs == FILE_ERR_OPEN || fs == FILE_ERR_NOT_REGULAR) {
        snprintf(err, errlen, "cannot read the redeem credential file %s: %s", path,
                 fs == FILE_ERR_NOT_REGULAR ? "not a regular file" : strerror(errno));
        return VFY_E_CREDENTIAL;
    }
    const char *why = NULL;
    if (fs == FILE_ERR_TOO_LARGE)
        why = "is longer than a credential secret";
    else if (fs != FILE_OK)
        why = "cannot be read";
    while (why == NULL && n > 0 &&
           (v->secret[n - 1] == '\n' || v->secret[n - 1] == '\r' || v->secret[n - 1] == ' '))
        n--;
    if (why == NULL && n == 0)
        why = "is empty";
    if (why == NULL && !txt_visible(v->secret, n))
        why = "holds a byte that is not printable ASCII (it must hold the secret alone)";
    if (why != NULL) {
        explicit_bzero(v->secret, sizeof(v->secret));
        v->secret_len = 0;
        snprintf(err, errlen, "the redeem credential file %s %s", path, why);
        return VFY_E_CREDENTIAL;
    }
    explicit_bzero(v->secret + n, sizeof(v->secret) - n);
    v->secret_len = n;
    return VFY_E_OK;
}

/* curl_slist_append copied each header: wipe the copies before they are freed. */
static void rd_wipe_headers(struct curl_slist *h)
{
    for (struct curl_slist *p = h; p != NULL; p = p->next)
        explicit_bzero(p->data, strlen(p->data));
    curl_slist_free_all(h);
}

/* The appliance's answer as a result (verifier.h, vfy_redeem). */
static vfy_result rd_map(long status, const char *code)
{
    static const struct {
        const char *code;
        vfy_result r;
    } conflicts[] = {
        {"token_already_used", VFY_ALREADY_USED}, {"token_revoked", VFY_REVOKED_TOKEN},
        {"wrong_origin", VFY_WRONG_ORIGIN},       {"key_revoked", VFY_REVOKED_KID},
        {"token_expired", VFY_EXPIRED},           {"token_not_yet_valid", VFY_NOT_YET_VALID},
        {"origin_required", VFY_ORIGIN_REQUIRED}, {"wrong_audience", VFY_WRONG_AUDIENCE},
        {"subject_revoked", VFY_REVOKED_SUBJECT},
    };
    if (status == 200)
        return VFY_OK;
    for (size_t i = 0; status == 409 && code != NULL && i < sizeof(conflicts) / sizeof(*conflicts);
         i++)
        if (strcmp(code, conflicts[i].code) == 0)
            return conflicts[i].r;
    return VFY_REDEEM_FAILED;
}

vfy_result vfy_redeem(vfy *v, const char *token, const char *origin, json_t **claims_out,
                      char *detail, size_t detail_len)
{
    if (detail_len > 0)
        detail[0] = '\0';
    if (claims_out != NULL)
        *claims_out = NULL;
    json_t *claims = NULL;
    /* Checked here first: a token we would refuse is never sent, so never spent. */
    vfy_result r = vfy_verify_ex(v, token, origin, &claims);
    if (r != VFY_OK)
        return r;
    if (v->offline || v->secret_len == 0) {
        json_decref(claims);
        snprintf(detail, detail_len, "no redeem credential was given");
        return VFY_REDEEM_FAILED;
    }
    /* The appliance checks the audience too, so an appliance-side answer cannot differ. */
    json_t *req =
        json_pack("{s:s, s:s*, s:s*}", "token", token, "origin", origin, "aud", v->cfg.aud);
    char *body = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    CURL *c = body != NULL ? vfy_curl_new(v) : NULL;
    char auth[RD_AUTH_MAX];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", v->secret);
    struct curl_slist *h = c != NULL ? curl_slist_append(NULL, auth) : NULL;
    struct curl_slist *h2 =
        h != NULL ? curl_slist_append(h, "Content-Type: application/json") : NULL;
    /* No "Expect: 100-continue" wait on a body past 1 KiB (a token with a status claim). */
    h2 = h2 != NULL ? curl_slist_append(h2, "Expect:") : NULL;
    explicit_bzero(auth, sizeof(auth));
    size_t ulen = strlen(v->url) + sizeof("/v1/tokens/redeem");
    char *url = h2 != NULL ? malloc(ulen) : NULL;
    if (url == NULL) {
        snprintf(detail, detail_len, "out of memory");
        r = VFY_REDEEM_FAILED;
        goto out;
    }
    snprintf(url, ulen, "%s/v1/tokens/redeem", v->url);
    vfy_buf answer = {.max = RD_ANSWER_MAX};
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h2);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, vfy_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)v->cfg.http_timeout);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    json_t *doc = rc == CURLE_OK
                      ? json_loadb(answer.data != NULL ? answer.data : "", answer.len, 0, NULL)
                      : NULL;
    const char *code = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    r = rc == CURLE_OK ? rd_map(status, code) : VFY_REDEEM_FAILED;
    if (rc != CURLE_OK)
        snprintf(detail, detail_len, "%s: %s", url, ebuf[0] ? ebuf : curl_easy_strerror(rc));
    else if (r == VFY_REDEEM_FAILED)
        snprintf(detail, detail_len, "%s answered HTTP %ld %s", url, status,
                 code != NULL ? code : "");
    json_decref(doc);
    vfy_buf_free(&answer);
    free(url);
out:
    if (c != NULL)
        curl_easy_cleanup(c); /* before the headers it points to go */
    rd_wipe_headers(h);
    free(body);
    if (r == VFY_OK && claims_out != NULL)
        *claims_out = claims;
    else
        json_decref(claims);
    return r;
}
