/*
 * fuzz_serve: libFuzzer target for what signd-verify --serve reads from a request
 * (verifier/serve.h): the original URI (vsv_parse_uri, vsv_path_segment) and the Origin and
 * Referer headers (vsv_request_origin). Input: the bytes of a URI, also taken, up to its
 * first NUL, as an Origin and as a Referer. Invariants, beyond the sanitizers:
 *   - an accepted URI's token (never empty) and resource path are spans of the input, and
 *     the path starts with '/';
 *   - no "." or ".." segment and no empty one (but a trailing one) in an accepted path;
 *   - every segment vsv_path_segment hands out lies inside the path and holds no '/';
 *   - an origin is at most VSV_ORIGIN_MAX bytes.
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_serve, seeds tests/fuzz/corpus/serve/);
 * its seeds are replayed by `make test` (build/tests/test_fuzz_serve, tests/fuzz/replay.c).
 */
#include "verifier/serve.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_serve: %s\n", what);
        abort();
    }
}

static int inside(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && p + n <= base + len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *uri = (const char *)data;
    vsv_target t;
    if (vsv_parse_uri(uri, size, &t) == VSV_URI_OK) {
        check(inside(t.token, t.token_len, uri, size), "token outside the input");
        check(t.token_len > 0 && t.token_len <= size, "token length");
        check(t.path_len > 0 && t.path[0] == '/', "path does not start with '/'");
        check(t.path_len == 1 || inside(t.path, t.path_len, uri, size), "path outside");
        for (unsigned n = 1; n <= VSV_SEGMENT_MAX; n++) {
            const char *seg;
            size_t seg_len;
            if (!vsv_path_segment(t.path, t.path_len, n, &seg, &seg_len))
                break;
            check(inside(seg, seg_len, t.path, t.path_len), "segment outside the path");
            check(memchr(seg, '/', seg_len) == NULL, "segment holds a '/'");
            check(!(seg_len == 1 && seg[0] == '.'), "a '.' segment was accepted");
            check(!(seg_len == 2 && seg[0] == '.' && seg[1] == '.'), "a '..' segment");
            check(seg_len > 0 || seg + seg_len == t.path + t.path_len, "an empty segment");
        }
    }
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char buf[VSV_ORIGIN_MAX + 1];
    const char *o = vsv_request_origin(text, NULL, NULL, buf, sizeof(buf));
    check(o != NULL && strlen(o) <= VSV_ORIGIN_MAX, "origin too long");
    o = vsv_request_origin(NULL, text, NULL, buf, sizeof(buf));
    check(o != NULL && strlen(o) <= VSV_ORIGIN_MAX, "origin from referer too long");
    free(text);
    return 0;
}
