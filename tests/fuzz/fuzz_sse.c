/*
 * fuzz_sse: libFuzzer target for the reference verifier's event-stream parser
 * (vfy_sse_bytes in verifier/internal.h), which reads what the network sends. Input: one
 * byte that seeds how the stream is cut into pieces, one byte that is the verifier's
 * current seq, then the stream. The stream is fed twice, whole and in pieces (as libcurl
 * hands it over, a piece may end anywhere, between a CR and its LF too), stopping at the
 * first refusal. Invariants, beyond the sanitizers:
 *   - the cut changes nothing: the same answer, and the same parser state and fetch_soon
 *     after either feeding;
 *   - the state stays within its bounds (line, event, data buffers; a NUL-terminated
 *     event type).
 * The handle is a bare struct vfy with its lock and seq set up and no status list cached
 * (a token-revocation event looks its uri up there, under the lock): the parser touches no
 * more of it.
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_sse, seeds tests/fuzz/corpus/sse/,
 * dictionary tests/fuzz/sse.dict); its seeds and regression inputs are replayed by
 * `make test` (build/tests/test_fuzz_sse, tests/fuzz/replay.c).
 */
#include "verifier/internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static vfy *v;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_sse: %s\n", what);
        abort();
    }
}

/* A fresh stream, as bg_stream_start leaves it. */
static void reset(void)
{
    memset(&v->sse, 0, sizeof(v->sse));
    v->sse.retry_ms = -1;
    v->fetch_soon = false;
}

static void check_bounds(const vfy_sse *s)
{
    check(s->line_len <= sizeof(s->line), "line_len out of bounds");
    check(memchr(s->event, '\0', sizeof(s->event)) != NULL, "event type not terminated");
    check(s->data_len < sizeof(s->data), "data_len out of bounds");
    check(s->retry_ms >= -1 && s->retry_ms <= 999999999, "retry out of bounds");
}

/* The parser's observable state: compared field by field (padding is not state). */
static int same_state(const vfy_sse *a, bool fa, const vfy_sse *b, bool fb)
{
    return fa == fb && a->line_len == b->line_len && memcmp(a->line, b->line, a->line_len) == 0 &&
           a->after_cr == b->after_cr && strcmp(a->event, b->event) == 0 &&
           a->data_len == b->data_len && memcmp(a->data, b->data, a->data_len) == 0 &&
           a->data_overflow == b->data_overflow && a->retry_ms == b->retry_ms;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    v = calloc(1, sizeof(*v));
    check(v != NULL && pthread_rwlock_init(&v->lock, NULL) == 0, "setup");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static vfy_sse whole;
    if (size < 2)
        return 0;
    uint32_t cut = data[0] * 2654435761u + 1; /* a small LCG drives the piece sizes */
    v->seq = data[1];
    const char *p = (const char *)data + 2;
    size_t n = size - 2;

    reset();
    int rc_whole = vfy_sse_bytes(v, p, n);
    check(rc_whole == 0 || rc_whole == -1, "answer");
    check_bounds(&v->sse);
    whole = v->sse;
    bool fetch_whole = v->fetch_soon;

    reset();
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0;) {
        cut = cut * 1103515245u + 12345u;
        size_t k = 1 + (cut >> 16) % 16;
        if (k > n - off)
            k = n - off;
        rc = vfy_sse_bytes(v, p + off, k);
        check_bounds(&v->sse);
        off += k;
    }
    check(rc == rc_whole, "the cut changed the answer");
    check(same_state(&whole, fetch_whole, &v->sse, v->fetch_soon), "the cut changed the state");
    return 0;
}
