/* api: publication. The documents themselves (the JWKS, the revocation lists, the signed
 * feed and the status lists), their caches and the public signing budget are the
 * publication handle's (appliance/core/publish.h, q->env->pub); these handlers parse the
 * query, serve a document with its ETag (or 304), and turn a refusal into an answer. */
#include "api/api.h"

#include <openssl/crypto.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void api_resp_free(api_resp *r)
{
    if (r->doc != NULL) {
        pub_doc_put(r->doc);
    } else if (!r->borrowed) {
        if (r->wipe && r->body != NULL)
            OPENSSL_cleanse(r->body, r->len);
        free(r->body);
    }
    r->doc = NULL;
    r->body = NULL;
    r->borrowed = 0;
}

int api_etag_matches(const char *inm, const char *etag)
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
static api_err api_serve_doc(const api_req *q, api_resp *r, pub_doc *d, unsigned max_age)
{
    if (d == NULL)
        return api_fail(r, API_ERR_INTERNAL, "document could not be built");
    const char *etag = pub_doc_etag(d);
    api_header(r, "ETag: %s", etag);
    api_header(r, "Cache-Control: public, max-age=%u", max_age);
    if (api_etag_matches(q->if_none_match, etag)) {
        pub_doc_put(d);
        r->status = 304;
        return API_OK;
    }
    size_t len;
    const char *body = pub_doc_body(d, &len);
    r->doc = d;
    r->body = (char *)body; /* borrowed: api_resp_free drops the reference instead */
    r->len = len;
    r->status = 200;
    return API_OK;
}

api_err api_jwks(const api_req *q, api_resp *r)
{
    if (q->query != NULL && q->query[0] != '\0')
        return api_fail(r, API_ERR_INVALID_QUERY, "the JWKS takes no query");
    return api_serve_doc(q, r, pub_jwks(q->env->pub), q->env->cfg->jwks_max_age);
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
    return api_serve_doc(q, r, pub_revocations(q->env->pub, after),
                         q->env->cfg->revocations_max_age);
}

/* The answer when a signed document could not be had. */
static api_err api_signed_fail(api_resp *r, const pub_why *why, const char *what)
{
    if (why->budget) {
        api_header(r, "Retry-After: %u", why->retry_after);
        return api_fail(r, API_ERR_SIGNING_BUDGET_EXHAUSTED,
                        "public requests made the token sign its budget for now, and %s has no "
                        "valid signed copy yet",
                        what);
    }
    return api_hsm_error(r, why->st);
}

api_err api_revocations_feed(const api_req *q, api_resp *r)
{
    uint64_t after;
    api_err e = api_query_after(q, r, &after);
    if (e != API_OK)
        return e;
    pub_why why = {0};
    pub_doc *d = pub_feed(q->env->pub, after, q->now, &why);
    if (d == NULL)
        return api_signed_fail(r, &why, "the feed");
    api_header(r, "Content-Type: " API_FEED_MEDIA_TYPE);
    return api_serve_doc(q, r, d, q->env->cfg->revocations_max_age);
}

api_err api_revocations_key(const api_req *q, api_resp *r)
{
    return api_service_key(q, r, KP_SVC_PUBLISH, KP_PUBLISH_KID, API_PUBLICATION_USE, API_FEED_TYP);
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
    pub_why why = {0};
    pub_doc *d = pub_status_list(q->env->pub, (uint32_t)n, q->now, &why);
    if (d == NULL)
        return api_signed_fail(r, &why, "this list");
    api_header(r, "Content-Type: " API_STATUS_LIST_MEDIA_TYPE);
    return api_serve_doc(q, r, d, q->env->cfg->revocations_max_age);
}
