/* rl: token buckets in a fixed set-associative table. See ratelimit.h. */
#include "appliance/common/ratelimit.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define RL_NS_PER_S 1e9
/* Doubles round: a bucket refilled to 0.9999999999 after exactly one second's worth of
 * time has earned its token. Allowing that shortfall lets through at most one request
 * per billion too many. */
#define RL_TOKEN_SLACK 1e-9
/* Likewise a wait computed as 7.000000000000001 s is 7 s, not 8: Retry-After may be up
 * to this much early, which costs the client one more refused request at worst. */
#define RL_WAIT_SLACK_S 1e-6
#define RL_CACHE_LINE 64

/* One bucket. Its key, tag and recency live in the set, so a miss reads only the set's
 * first cache lines. */
typedef struct {
    uint64_t last_ns; /* the latest now_ns seen; tokens are as of then */
    double tokens;    /* in [0, burst] */
    uint8_t keylen;   /* <= RL_KEY_MAX */
    char key[RL_KEY_MAX];
} rl_bucket;

/* RL_WAYS buckets under one mutex, aligned so that two sets never share a cache line
 * (the mutexes of neighbouring sets would otherwise bounce between cores). */
typedef struct {
    _Alignas(RL_CACHE_LINE) pthread_mutex_t mu;
    /* LRU clock, bumped at every take. A counter rather than now_ns: callers' clocks may
     * disagree a little, and a counter of 2^64 takes never wraps. */
    uint64_t clock;
    uint64_t tag[RL_WAYS];     /* the key's hash, a quick filter before memcmp */
    uint64_t used_at[RL_WAYS]; /* clock at the way's last take; 0: empty way */
    rl_bucket b[RL_WAYS];
} rl_set;

struct rl_table {
    rl_set *sets; /* NULL when unlimited */
    size_t nsets; /* a power of two */
    double rate;  /* tokens per second; 0: unlimited */
    double burst;
    uint64_t k0, k1; /* SipHash key, random per table */
};

/* ---- SipHash-2-4 ------------------------------------------------------------------------
 * Written from the description by Aumasson and Bernstein (2012): a keyed hash, so that
 * without the seed nobody can choose keys that fall into one set. */

static uint64_t rl_rotl(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

/* Little-endian, byte by byte, so that the hash is the same on any host and nothing
 * reads unaligned memory. */
static uint64_t rl_load_le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

typedef struct {
    uint64_t v0, v1, v2, v3;
} rl_sip;

static void rl_sip_round(rl_sip *s)
{
    s->v0 += s->v1;
    s->v1 = rl_rotl(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = rl_rotl(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = rl_rotl(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = rl_rotl(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = rl_rotl(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = rl_rotl(s->v2, 32);
}

static void rl_sip_block(rl_sip *s, uint64_t m)
{
    s->v3 ^= m;
    rl_sip_round(s);
    rl_sip_round(s);
    s->v0 ^= m;
}

static uint64_t rl_siphash(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len)
{
    rl_sip s = {
        .v0 = k0 ^ 0x736f6d6570736575ULL,
        .v1 = k1 ^ 0x646f72616e646f6dULL,
        .v2 = k0 ^ 0x6c7967656e657261ULL,
        .v3 = k1 ^ 0x7465646279746573ULL,
    };
    size_t full = len - len % 8;
    for (size_t i = 0; i < full; i += 8)
        rl_sip_block(&s, rl_load_le(in + i, 8));
    /* The last block: the remaining bytes, and the length's low byte on top. */
    rl_sip_block(&s, rl_load_le(in + full, len % 8) | ((uint64_t)(len & 0xff) << 56));
    s.v2 ^= 0xff;
    for (int i = 0; i < 4; i++)
        rl_sip_round(&s);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

/* ---- the table -------------------------------------------------------------------------- */

static int rl_seed(uint64_t *k0, uint64_t *k1)
{
    unsigned char seed[16];
    size_t got = 0;
    while (got < sizeof(seed)) {
        ssize_t r = getrandom(seed + got, sizeof(seed) - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)r;
    }
    *k0 = rl_load_le(seed, 8);
    *k1 = rl_load_le(seed + 8, 8);
    return 0;
}

rl_table *rl_new(size_t slots, double rate_per_second, double burst)
{
    /* Written as "not in range" so that NaN fails too. */
    if (!(rate_per_second >= 0.0 && rate_per_second <= DBL_MAX))
        return NULL;
    if (!(burst >= 1.0 && burst <= DBL_MAX))
        return NULL;
    if (slots > RL_SLOTS_MAX)
        return NULL;
    rl_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->rate = rate_per_second;
    t->burst = burst;
    if (rate_per_second == 0.0)
        return t; /* unlimited: nothing to remember */

    size_t n = RL_SLOTS_MIN;
    while (n < slots)
        n <<= 1;
    t->nsets = n / RL_WAYS;
    if (rl_seed(&t->k0, &t->k1) != 0) {
        free(t);
        return NULL;
    }
    /* sizeof(rl_set) is a multiple of its alignment, as aligned_alloc requires. */
    t->sets = aligned_alloc(RL_CACHE_LINE, t->nsets * sizeof(rl_set));
    if (t->sets == NULL) {
        free(t);
        return NULL;
    }
    memset(t->sets, 0, t->nsets * sizeof(rl_set));
    for (size_t i = 0; i < t->nsets; i++) {
        if (pthread_mutex_init(&t->sets[i].mu, NULL) != 0) {
            while (i-- > 0)
                pthread_mutex_destroy(&t->sets[i].mu);
            free(t->sets);
            free(t);
            return NULL;
        }
    }
    return t;
}

void rl_free(rl_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; t->sets != NULL && i < t->nsets; i++)
        pthread_mutex_destroy(&t->sets[i].mu);
    free(t->sets);
    free(t);
}

size_t rl_capacity(const rl_table *t)
{
    return t == NULL ? 0 : t->nsets * RL_WAYS;
}

size_t rl_used(rl_table *t)
{
    size_t n = 0;
    for (size_t i = 0; t != NULL && t->sets != NULL && i < t->nsets; i++) {
        rl_set *s = &t->sets[i];
        pthread_mutex_lock(&s->mu);
        for (int w = 0; w < RL_WAYS; w++)
            n += s->used_at[w] != 0;
        pthread_mutex_unlock(&s->mu);
    }
    return n;
}

/* The set's way holding key, or -1. Under the set's mutex. */
static int rl_find(const rl_set *s, uint64_t h, const char *key, size_t keylen)
{
    for (int w = 0; w < RL_WAYS; w++) {
        if (s->used_at[w] != 0 && s->tag[w] == h && s->b[w].keylen == keylen &&
            memcmp(s->b[w].key, key, keylen) == 0)
            return w;
    }
    return -1;
}

/* An empty way if there is one, else the least recently used. Under the set's mutex. */
static int rl_victim(const rl_set *s)
{
    int v = 0;
    for (int w = 0; w < RL_WAYS; w++) {
        if (s->used_at[w] < s->used_at[v])
            v = w;
    }
    return v; /* an empty way has used_at 0, the least of all */
}

/* The bucket's tokens at now_ns. Only time after last_ns earns tokens: an earlier now_ns
 * (a thread whose clock reading lost the race for the mutex) earns nothing, and since
 * last_ns never moves back, no stretch of time is counted twice. */
static double rl_level(const rl_table *t, const rl_bucket *b, uint64_t now_ns)
{
    if (now_ns <= b->last_ns)
        return b->tokens;
    /* elapsed * rate / 1e9 rather than elapsed * (rate / 1e9): whole seconds at whole
     * rates then come out exact. The result may be inf for a huge rate; min() caps it. */
    double earned = (double)(now_ns - b->last_ns) * t->rate / RL_NS_PER_S;
    double level = b->tokens + earned;
    return level < t->burst ? level : t->burst;
}

/* 0 when level holds a token, else the whole seconds until it will: the time until
 * now_ns catches up with last_ns (nothing is earned before) plus the time to earn the
 * missing part of a token. */
static unsigned rl_wait(const rl_table *t, const rl_bucket *b, double level, uint64_t now_ns)
{
    if (level >= 1.0 - RL_TOKEN_SLACK)
        return 0;
    double secs = (1.0 - level) / t->rate;
    if (b->last_ns > now_ns)
        secs += (double)(b->last_ns - now_ns) / RL_NS_PER_S;
    secs -= RL_WAIT_SLACK_S;
    if (!(secs < (double)UINT_MAX)) /* also catches inf from a tiny rate */
        return UINT_MAX;
    if (secs <= 1.0)
        return 1;
    /* Rounds up without ceil(), so that libm need not be linked. */
    unsigned whole = (unsigned)secs;
    return (double)whole < secs ? whole + 1 : whole;
}

/* Hashes the key as it counts (NULL is empty, only the first RL_KEY_MAX bytes) and
 * returns its set; *keyp and *keylenp are normalised to match. */
static rl_set *rl_set_of(const rl_table *t, const char **keyp, size_t *keylenp, uint64_t *h)
{
    if (*keyp == NULL) {
        *keyp = "";
        *keylenp = 0;
    }
    if (*keylenp > RL_KEY_MAX)
        *keylenp = RL_KEY_MAX;
    *h = rl_siphash(t->k0, t->k1, (const unsigned char *)*keyp, *keylenp);
    return &t->sets[*h & (t->nsets - 1)];
}

unsigned rl_take(rl_table *t, const char *key, size_t keylen, uint64_t now_ns)
{
    if (t == NULL || t->sets == NULL)
        return 0;
    uint64_t h;
    rl_set *s = rl_set_of(t, &key, &keylen, &h);

    pthread_mutex_lock(&s->mu);
    int w = rl_find(s, h, key, keylen);
    rl_bucket *b;
    if (w < 0) {
        /* A miss: the set's LRU bucket becomes this key's, full. */
        w = rl_victim(s);
        b = &s->b[w];
        s->tag[w] = h;
        b->keylen = (uint8_t)keylen;
        memcpy(b->key, key, keylen);
        b->tokens = t->burst;
        b->last_ns = now_ns;
    } else {
        b = &s->b[w];
        b->tokens = rl_level(t, b, now_ns);
        if (now_ns > b->last_ns)
            b->last_ns = now_ns;
    }
    /* A refused request counts as use too: a key that keeps knocking keeps its bucket,
     * and so stays limited. */
    s->used_at[w] = ++s->clock;
    unsigned wait = rl_wait(t, b, b->tokens, now_ns);
    if (wait == 0) {
        b->tokens -= 1.0;
        if (b->tokens < 0.0)
            b->tokens = 0.0; /* the RL_TOKEN_SLACK shortfall, not debt */
    }
    pthread_mutex_unlock(&s->mu);
    return wait;
}

unsigned rl_peek(rl_table *t, const char *key, size_t keylen, uint64_t now_ns)
{
    if (t == NULL || t->sets == NULL)
        return 0;
    uint64_t h;
    rl_set *s = rl_set_of(t, &key, &keylen, &h);

    pthread_mutex_lock(&s->mu);
    unsigned wait = 0; /* a key not in the table would start full */
    int w = rl_find(s, h, key, keylen);
    if (w >= 0)
        wait = rl_wait(t, &s->b[w], rl_level(t, &s->b[w], now_ns), now_ns);
    pthread_mutex_unlock(&s->mu);
    return wait;
}
