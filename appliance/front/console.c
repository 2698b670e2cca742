/* con: the web console's files, from the table mk/console.sh generates. See console.h. */
#include "appliance/front/console.h"

#include <string.h>

const con_file *con_find(const char *name)
{
    for (size_t i = 0; i < con_n_files; i++)
        if (strcmp(con_files[i].name, name) == 0)
            return &con_files[i];
    return NULL;
}

/* The headers of every console answer, errors included (console.h). */
static void con_headers(api_resp *r)
{
    api_header(r, "Content-Security-Policy: %s", CON_CSP);
    api_header(r, "X-Frame-Options: DENY");
    api_header(r, "Referrer-Policy: no-referrer");
    api_header(r, "Cross-Origin-Opener-Policy: same-origin");
    api_header(r, "Cross-Origin-Resource-Policy: same-origin");
}

api_err con_get(const api_req *q, api_resp *r)
{
    con_headers(r);
    const con_file *f = con_find(q->id != NULL ? q->id : "index.html");
    if (f == NULL)
        return api_fail(r, API_ERR_NOT_FOUND, "no such console file");
    api_header(r, "Content-Type: %s", f->type);
    api_header(r, "ETag: %s", f->etag);
    /* Revalidated on each use: a browser never runs a console older than the binary. */
    api_header(r, "Cache-Control: no-cache");
    if (api_etag_matches(q->if_none_match, f->etag)) {
        r->status = 304;
        return API_OK;
    }
    r->body = (char *)f->data; /* borrowed from the table: api_resp_free leaves it */
    r->borrowed = 1;
    r->len = f->len;
    r->status = 200;
    return API_OK;
}

api_err con_redirect(const api_req *q, api_resp *r)
{
    (void)q;
    con_headers(r);
    api_header(r, "Location: /console/");
    return api_json(r, 301, json_pack("{s:s}", "location", "/console/"));
}
