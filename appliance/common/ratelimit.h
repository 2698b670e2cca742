/*
 * rl: token-bucket rate limiting keyed by a short string (a credential id, a client IP
 * address as text), for the request path of the HTTPS server: one keyed hash, one mutex,
 * a scan of 8 ways, and no allocation per request.
 *
 * Each key has a bucket holding up to `burst` tokens that refills at `rate_per_second`;
 * a request takes one token or is refused with the number of seconds to wait (for a
 * Retry-After header). A key never seen starts with a full bucket.
 *
 * What it owns: one fixed array of buckets, allocated by rl_new and never grown, since
 * an attacker chooses the IP keys and so how many distinct keys there are. The array is
 * set-associative: RL_WAYS buckets per set, the set chosen by SipHash-2-4 of the key under
 * a random 128-bit seed drawn per table (getrandom), so that nobody can aim keys at one
 * set. A key missing from its set replaces the set's least recently used bucket. That is
 * the bounded-memory trade-off: an evicted key comes back with a full bucket, so a flood
 * of distinct keys can make a *quiet* key forget that it was limited. A key in use keeps
 * its bucket: it is evicted only if RL_WAYS other keys land in its set between two of its
 * requests, so an abuser that keeps sending stays limited. Size the table well above the
 * number of keys expected to be active within one refill period.
 *
 * Time is the caller's: every call takes a CLOCK_MONOTONIC time in nanoseconds (clk_now_ns,
 * base/clock.h, gives one), which makes the module testable. Time going backwards (two threads
 * racing with their clock readings) never adds tokens. Keys are ids and addresses, not secrets:
 * nothing is wiped.
 *
 * Thread safety: rl_take, rl_peek, rl_used and rl_capacity may be called from any number
 * of threads at once. Each set has its own mutex (lock striping, no global lock), held
 * only while one bucket is looked up and updated. rl_new and rl_free must not run
 * concurrently with any other call on the same table.
 *
 *   rl_table *per_ip = rl_new(65536, 10.0, 20.0); // 10 requests/s, bursts of 20
 *   if (per_ip == NULL) ... fail startup ...
 *   unsigned wait = rl_take(per_ip, addr, strlen(addr), (uint64_t)clk_now_ns());
 *   if (wait != 0)
 *       ... reply 429 with "Retry-After: <wait>" ...
 *   rl_free(per_ip);
 */
#ifndef APPLIANCE_RATELIMIT_H
#define APPLIANCE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#define RL_KEY_MAX 64           /* bytes of a key that count; the rest is ignored */
#define RL_WAYS 8               /* buckets per set */
#define RL_SLOTS_MIN 64         /* rl_new rounds up to at least this many buckets */
#define RL_SLOTS_MAX (1u << 20) /* and refuses more than this (112 MiB of sets) */

typedef struct rl_table rl_table;

/* A table of `slots` buckets, rounded up to a power of two, at least RL_SLOTS_MIN (0 asks
 * for the minimum). rate_per_second: tokens added per second, finite, >= 0; 0 means
 * unlimited (rl_take always allows, and no buckets are allocated). burst: bucket capacity,
 * finite, >= 1 (checked even when unlimited). NULL for bad arguments, slots above
 * RL_SLOTS_MAX, or when memory or the random seed cannot be had. */
rl_table *rl_new(size_t slots, double rate_per_second, double burst);

/* Frees the table. NULL is a no-op. */
void rl_free(rl_table *t);

/* Takes one token from key's bucket at monotonic time now_ns. key is keylen bytes, not
 * necessarily NUL-terminated, any bytes; only the first RL_KEY_MAX bytes count (a longer
 * key is truncated, so keys equal in those bytes share a bucket). A NULL key is the empty
 * key. Returns 0 when allowed; otherwise the whole number of seconds, at least 1, rounded
 * up and at most UINT_MAX, until a token will be available, for Retry-After. A refused
 * request takes nothing. A NULL table allows everything (no limiter configured). */
unsigned rl_take(rl_table *t, const char *key, size_t keylen, uint64_t now_ns);

/* Like rl_take but changes nothing (neither tokens nor recency, and an unknown key is not
 * added): 0 when a token is available now, else the seconds to wait. */
unsigned rl_peek(rl_table *t, const char *key, size_t keylen, uint64_t now_ns);

/* How many buckets the table has (slots after rounding); 0 for an unlimited table or
 * NULL. Fixed for the table's life. */
size_t rl_capacity(const rl_table *t);

/* How many buckets hold a key now, never above rl_capacity. Locks every set in turn, so
 * it is for tests and diagnostics, not the request path. */
size_t rl_used(rl_table *t);

#endif
