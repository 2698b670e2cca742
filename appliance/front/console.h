/*
 * con: the web console (/console/, docs/console.md), served by signd-front from files
 * compiled into it. mk/console.sh turns appliance/front/console/ into the table con_files
 * (generated C, one entry per file: name, content type, bytes, strong ETag); this module
 * answers GET and HEAD /console/{file} (and /console/, index.html) from that table alone,
 * so NO_FILESYSTEMS stays and nothing a request names can reach the disk. /console
 * answers 301 to /console/.
 *
 * Every answer, the 404 of an unknown file included, carries CON_CSP and the headers a
 * page needs beside the API's own (server.c adds nosniff, HSTS and X-Request-Id): no
 * framing, no referrer. Cache-Control: no-cache with the ETag: a browser revalidates each
 * file (304) and so never keeps a console older than the binary. No cookie is ever set:
 * the console sends its credential as the bearer itself (sessionStorage).
 *
 * Thread safety: the table is constant; every function may be called from any thread.
 */
#ifndef APPLIANCE_CONSOLE_H
#define APPLIANCE_CONSOLE_H

#include "api/api.h"

#include <stddef.h>

/* No inline script or style, nothing from another origin, no framing, no form posts. */
#define CON_CSP                                                                                    \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

typedef struct {
    const char *name; /* "app.js": the path segment after /console/ */
    const char *type; /* the Content-Type */
    const unsigned char *data;
    size_t len;
    const char *etag; /* "\"<32 hex>\"", quotes included */
} con_file;

/* The generated table (mk/console.sh). */
extern const con_file con_files[];
extern const size_t con_n_files;

/* The file named name ("index.html"), or NULL. */
const con_file *con_find(const char *name);

/* GET or HEAD /console/{file} (q->id) and /console/ (q->id NULL: index.html): 200 with the
 * file (its bytes borrowed from the table), 304 when If-None-Match names its ETag, 404
 * not_found for any other name. */
api_err con_get(const api_req *q, api_resp *r);

/* GET or HEAD /console: 301 to /console/ (relative URLs in index.html need the slash). */
api_err con_redirect(const api_req *q, api_resp *r);

#endif
