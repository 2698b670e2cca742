/* api: the audit trail for auditors (GET /v1/audit, /v1/audit/export) and its public key
 * (GET /v1/audit/key). Reads go to SQLite through audit.h, never through the writer. */
#include "api/api.h"

#include "appliance/core/audit.h"
#include "jose/jose.h"
#include "base/text.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_AUDIT_LIMIT_DEFAULT 100
#define API_AUDIT_LIMIT_MAX 1000
#define API_AUDIT_EXPORT_MAX 100000 /* events per export request */
#define API_QUERY_VALUE_MAX 64

/* Unsigned decimal that fits in int64: 0, else -1. */
static int api_u64(const char *text, uint64_t *out)
{
    return api_parse_decimal(text, 18, out);
}

/* Walks "a=1&b=2": for each pair calls set(name, value). Values are taken literally (no
 * percent-decoding: every value this API takes is hex, digits, or a dotted action name). */
typedef int (*api_query_fn)(void *ctx, const char *name, const char *value);

static api_err api_query_each(const api_req *q, api_resp *r, void *ctx, api_query_fn set)
{
    const char *p = q->query ? q->query : "";
    while (*p) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        char name[32], value[API_QUERY_VALUE_MAX + 1];
        size_t nl = eq ? (size_t)(eq - p) : n;
        size_t vl = eq ? n - nl - 1 : 0;
        if (eq == NULL || nl == 0 || nl >= sizeof(name) || vl > API_QUERY_VALUE_MAX)
            return api_fail(r, API_ERR_INVALID_QUERY, "malformed query near '%.20s'", p);
        memcpy(name, p, nl);
        name[nl] = '\0';
        memcpy(value, eq + 1, vl);
        value[vl] = '\0';
        if (!txt_visible(value, vl))
            return api_fail(r, API_ERR_INVALID_QUERY, "'%s' has a byte outside ASCII", name);
        if (set(ctx, name, value) != 0)
            return api_fail(r, API_ERR_INVALID_QUERY, "unknown query parameter or bad value: %s",
                            name);
        p += n;
        if (*p == '&')
            p++;
    }
    return API_OK;
}

typedef struct {
    audit_query aq;
    char kid[API_QUERY_VALUE_MAX + 1], action[API_QUERY_VALUE_MAX + 1],
        actor[API_QUERY_VALUE_MAX + 1];
    uint64_t from, to;
    int export;
} api_audit_params;

static int api_audit_set(void *ctx, const char *name, const char *value)
{
    api_audit_params *p = ctx;
    uint64_t v;
    if (p->export) {
        if (strcmp(name, "from") == 0)
            return api_u64(value, &p->from);
        if (strcmp(name, "to") == 0)
            return api_u64(value, &p->to);
        return -1;
    }
    if (strcmp(name, "after") == 0)
        return api_u64(value, &p->aq.after);
    if (strcmp(name, "limit") == 0) {
        if (api_u64(value, &v) != 0 || v < 1 || v > API_AUDIT_LIMIT_MAX)
            return -1;
        p->aq.limit = (unsigned)v;
        return 0;
    }
    if (strcmp(name, "since") == 0 || strcmp(name, "until") == 0) {
        if (api_u64(value, &v) != 0)
            return -1;
        *(strcmp(name, "since") == 0 ? &p->aq.since : &p->aq.until) = (int64_t)v;
        return 0;
    }
    char *dst = strcmp(name, "kid") == 0      ? p->kid
                : strcmp(name, "action") == 0 ? p->action
                : strcmp(name, "actor") == 0  ? p->actor
                                              : NULL;
    if (dst == NULL)
        return -1;
    snprintf(dst, API_QUERY_VALUE_MAX + 1, "%s", value);
    return 0;
}

api_err api_audit_list(const api_req *q, api_resp *r)
{
    api_audit_params p;
    memset(&p, 0, sizeof(p));
    p.aq.limit = API_AUDIT_LIMIT_DEFAULT;
    api_err e = api_query_each(q, r, &p, api_audit_set);
    if (e != API_OK)
        return e;
    sk_kid kid;
    if (p.kid[0] && sk_kid_parse(p.kid, &kid) != 0)
        return api_fail(r, API_ERR_INVALID_KID, "'kid' must be 32 lowercase hex characters");
    p.aq.kid = p.kid[0] ? p.kid : NULL;
    p.aq.action = p.action[0] ? p.action : NULL;
    p.aq.actor = p.actor[0] ? p.actor : NULL;
    json_t *events = NULL;
    uint64_t next = 0;
    if (audit_list(q->env->cfg->database, &p.aq, &events, &next) != 0)
        return api_fail(r, API_ERR_STORAGE, "the audit trail could not be read");
    json_t *body = json_pack("{s:o}", "events", events);
    if (body != NULL && next != 0)
        json_object_set_new(body, "next_after", json_integer((json_int_t)next));
    return api_json(r, 200, body);
}

api_err api_audit_export(const api_req *q, api_resp *r)
{
    api_audit_params p;
    memset(&p, 0, sizeof(p));
    p.export = 1;
    api_err e = api_query_each(q, r, &p, api_audit_set);
    if (e != API_OK)
        return e;
    if (p.from == 0)
        p.from = 1;
    if (p.to != 0 && p.to < p.from)
        return api_fail(r, API_ERR_INVALID_QUERY, "'to' is before 'from'");
    if (p.to == 0 || p.to - p.from >= API_AUDIT_EXPORT_MAX)
        p.to = p.from + API_AUDIT_EXPORT_MAX - 1;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    int rc = audit_export(q->env->cfg->database, p.from, p.to, f);
    if (fclose(f) != 0 || rc != 0) {
        free(buf);
        return api_fail(r, API_ERR_STORAGE, "the audit trail could not be exported");
    }
    r->body = buf;
    r->len = len;
    r->status = 200;
    api_header(r, "Content-Type: application/x-ndjson");
    return API_OK;
}

api_err api_audit_key(const api_req *q, api_resp *r)
{
    return api_service_key(q, r, KP_SVC_AUDIT, KP_AUDIT_KID, "sig", NULL);
}
