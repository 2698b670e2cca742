/*
 * test_ratelimit: token buckets of rl_take and rl_peek. Every test passes its own now_ns,
 * so nothing depends on the clock or on timing; the table's random hash seed is the only
 * chance, and no test depends on where a key lands.
 */
#include "appliance/common/ratelimit.h"
#include "base/clock.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define NS_PER_S 1000000000ull
#define T0 (1000 * NS_PER_S) /* an arbitrary start, far enough from 0 to go back from */
#define AT(s) (T0 + (uint64_t)((s) * (double)NS_PER_S))

static unsigned take(rl_table *t, const char *key, uint64_t now)
{
    return rl_take(t, key, strlen(key), now);
}

static unsigned peek(rl_table *t, const char *key, uint64_t now)
{
    return rl_peek(t, key, strlen(key), now);
}

/* Takes n times at now and asserts that each is allowed. */
static void take_all(rl_table *t, const char *key, uint64_t now, int n)
{
    for (int i = 0; i < n; i++) {
        if (take(t, key, now) != 0)
            fail_msg("take %d of %d of \"%s\" was refused", i + 1, n, key);
    }
}

/* ---- rl_new ----------------------------------------------------------------------------- */

static void test_slots_round_up_to_a_power_of_two_of_at_least_64(void **state)
{
    (void)state;
    const size_t asked[] = {0, 1, 64, 65, 100, 1000, 1024, RL_SLOTS_MAX};
    const size_t got[] = {64, 64, 64, 128, 128, 1024, 1024, RL_SLOTS_MAX};
    for (size_t i = 0; i < sizeof(asked) / sizeof(asked[0]); i++) {
        rl_table *t = rl_new(asked[i], 1.0, 1.0);
        assert_non_null(t);
        assert_int_equal(rl_capacity(t), got[i]);
        assert_int_equal(rl_used(t), 0);
        rl_free(t);
    }
}

static void test_bad_arguments_are_refused(void **state)
{
    (void)state;
    assert_null(rl_new(64, -1.0, 1.0));
    assert_null(rl_new(64, 0.0 / 0.0, 1.0));
    assert_null(rl_new(64, 1.0 / 0.0, 1.0));
    assert_null(rl_new(64, 1.0, 0.0));
    assert_null(rl_new(64, 1.0, 0.5));
    assert_null(rl_new(64, 1.0, 0.0 / 0.0));
    assert_null(rl_new(64, 1.0, 1.0 / 0.0));
    assert_null(rl_new(64, 0.0, 0.0)); /* burst is checked even when unlimited */
    assert_null(rl_new((size_t)RL_SLOTS_MAX + 1, 1.0, 1.0));
    assert_null(rl_new(SIZE_MAX, 1.0, 1.0));
    rl_free(NULL);
}

/* ---- taking tokens ---------------------------------------------------------------------- */

static void test_burst_is_allowed_then_refused_with_retry_after(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 3.0);
    assert_non_null(t);
    take_all(t, "c0ffee00c0ffee00", AT(0), 3);
    assert_int_equal(take(t, "c0ffee00c0ffee00", AT(0)), 1);
    assert_int_equal(take(t, "c0ffee00c0ffee00", AT(0)), 1); /* a refusal took nothing */
    rl_free(t);

    t = rl_new(64, 0.1, 1.0);
    assert_non_null(t);
    take_all(t, "192.0.2.1", AT(0), 1);
    assert_int_equal(take(t, "192.0.2.1", AT(0)), 10);
    rl_free(t);
}

static void test_retry_after_counts_down_and_rounds_up(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 0.1, 1.0);
    assert_non_null(t);
    take_all(t, "k", AT(0), 1);
    assert_int_equal(take(t, "k", AT(3)), 7);
    assert_int_equal(take(t, "k", AT(3.5)), 7); /* 6.5 s rounds up */
    assert_int_equal(take(t, "k", AT(9.5)), 1); /* 0.5 s rounds up to the minimum 1 */
    assert_int_equal(take(t, "k", AT(9.999999)), 1);
    assert_int_equal(take(t, "k", AT(10)), 0); /* exactly when Retry-After said */
    assert_int_equal(take(t, "k", AT(10)), 10);
    rl_free(t);
}

static void test_retry_after_saturates_for_a_very_slow_rate(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1e-12, 1.0); /* one token per ~31700 years */
    assert_non_null(t);
    take_all(t, "k", AT(0), 1);
    assert_int_equal(take(t, "k", AT(0)), UINT_MAX);
    rl_free(t);
}

static void test_tokens_return_exactly_as_earned_by_elapsed_time(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 2.0, 5.0);
    assert_non_null(t);
    take_all(t, "k", AT(0), 5);
    assert_int_equal(take(t, "k", AT(0)), 1);

    /* 1.5 s at 2/s: three tokens, no more. */
    take_all(t, "k", AT(1.5), 3);
    assert_int_equal(take(t, "k", AT(1.5)), 1);
    /* A quarter second later: half a token, not enough. */
    assert_int_equal(take(t, "k", AT(1.75)), 1);
    /* The next quarter second completes it: one token. */
    take_all(t, "k", AT(2.0), 1);
    assert_int_equal(take(t, "k", AT(2.0)), 1);

    /* A long pause fills the bucket to burst and no further. */
    take_all(t, "k", AT(100), 5);
    assert_int_equal(take(t, "k", AT(100)), 1);
    rl_free(t);
}

static void test_a_fractional_burst_holds_its_whole_tokens(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 2.5);
    assert_non_null(t);
    take_all(t, "k", AT(0), 2);
    assert_int_equal(take(t, "k", AT(0)), 1); /* half a token left, needs 0.5 s */
    assert_int_equal(take(t, "k", AT(0.4)), 1);
    take_all(t, "k", AT(0.5), 1);
    rl_free(t);
}

static void test_keys_are_independent(void **state)
{
    (void)state;
    /* Eight keys: they fit even if all of them land in one set of 8 ways. */
    rl_table *t = rl_new(64, 1.0, 2.0);
    assert_non_null(t);
    take_all(t, "198.51.100.7", AT(0), 2);
    assert_int_equal(take(t, "198.51.100.7", AT(0)), 1);
    /* Neighbours, prefixes and extensions each have their own full bucket. */
    take_all(t, "198.51.100.8", AT(0), 2);
    take_all(t, "198.51.100.", AT(0), 2);
    take_all(t, "198.51.100.70", AT(0), 2);
    /* Keys are bytes, not strings: an embedded or trailing NUL makes another key. */
    assert_int_equal(rl_take(t, "ab\0c", 4, AT(0)), 0);
    assert_int_equal(rl_take(t, "ab\0c", 4, AT(0)), 0);
    assert_int_equal(rl_take(t, "ab\0c", 4, AT(0)), 1);
    assert_int_equal(rl_take(t, "ab\0d", 4, AT(0)), 0);
    assert_int_equal(rl_take(t, "ab\0", 3, AT(0)), 0);
    assert_int_equal(rl_take(t, "ab", 2, AT(0)), 0);
    assert_int_equal(rl_used(t), 8);
    rl_free(t);
}

static void test_null_key_is_the_empty_key(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 1.0);
    assert_non_null(t);
    assert_int_equal(rl_take(t, NULL, 0, AT(0)), 0);
    assert_int_equal(rl_take(t, "", 0, AT(0)), 1);
    assert_int_equal(rl_take(t, NULL, 17, AT(0)), 1);
    assert_int_equal(rl_used(t), 1);
    rl_free(t);
}

static void test_keys_longer_than_64_bytes_are_truncated(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 2.0);
    assert_non_null(t);
    char a[100], b[100];
    memset(a, 'x', sizeof(a));
    memcpy(b, a, sizeof(b));
    b[RL_KEY_MAX] = 'y'; /* differs only past the 64 bytes that count */
    b[99] = 'z';

    assert_int_equal(rl_take(t, a, sizeof(a), AT(0)), 0);
    assert_int_equal(rl_take(t, b, sizeof(b), AT(0)), 0);
    assert_int_equal(rl_take(t, a, RL_KEY_MAX + 1, AT(0)), 1);
    assert_int_equal(rl_take(t, a, RL_KEY_MAX, AT(0)), 1); /* the same 64 bytes */
    assert_int_equal(rl_peek(t, b, 70, AT(0)), 1);
    /* 63 bytes are another key. */
    assert_int_equal(rl_take(t, a, RL_KEY_MAX - 1, AT(0)), 0);
    assert_int_equal(rl_used(t), 2);
    rl_free(t);
}

/* ---- unlimited, peek, time -------------------------------------------------------------- */

static void test_unlimited_rate_never_refuses_and_keeps_no_state(void **state)
{
    (void)state;
    rl_table *t = rl_new(1024, 0.0, 1.0);
    assert_non_null(t);
    assert_int_equal(rl_capacity(t), 0);
    char key[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "10.0.%d.%d", i / 256 % 256, i % 256);
        assert_int_equal(take(t, key, AT(0)), 0);
    }
    take_all(t, "one key", AT(0), 1000);
    assert_int_equal(peek(t, "one key", AT(0)), 0);
    assert_int_equal(rl_used(t), 0);
    rl_free(t);

    /* No table at all: no limiter configured. */
    assert_int_equal(take(NULL, "k", AT(0)), 0);
    assert_int_equal(peek(NULL, "k", AT(0)), 0);
    assert_int_equal(rl_capacity(NULL), 0);
    assert_int_equal(rl_used(NULL), 0);
}

static void test_peek_does_not_consume(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 2.0);
    assert_non_null(t);
    /* An unknown key would start full, and peeking does not add it. */
    assert_int_equal(peek(t, "k", AT(0)), 0);
    assert_int_equal(rl_used(t), 0);

    take_all(t, "k", AT(0), 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(peek(t, "k", AT(0)), 0);
    take_all(t, "k", AT(0), 1);
    assert_int_equal(peek(t, "k", AT(0)), 1);
    assert_int_equal(take(t, "k", AT(0)), 1);

    /* Peeking sees the refill but does not bank it; a later take still earns it once. */
    assert_int_equal(peek(t, "k", AT(0.5)), 1);
    assert_int_equal(peek(t, "k", AT(1)), 0);
    assert_int_equal(peek(t, "k", AT(2)), 0);
    take_all(t, "k", AT(2), 2);
    assert_int_equal(take(t, "k", AT(2)), 1);
    rl_free(t);
}

static void test_time_going_backwards_does_not_refill(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 3.0);
    assert_non_null(t);
    take_all(t, "k", AT(100), 3);
    /* 50 s in the past: nothing earned, and the wait counts from the bucket's time. */
    assert_int_equal(take(t, "k", AT(50)), 51);
    assert_int_equal(peek(t, "k", AT(50)), 51);
    assert_int_equal(take(t, "k", AT(99.9)), 2); /* 0.1 s behind, then 1 s: rounds up */
    /* Back to the future: only the time after 100 s counts, once. */
    take_all(t, "k", AT(101), 1);
    assert_int_equal(take(t, "k", AT(101)), 1);
    assert_int_equal(take(t, "k", AT(0)), 102);
    take_all(t, "k", AT(102), 1);
    assert_int_equal(take(t, "k", AT(102)), 1);
    rl_free(t);
}

/* ---- bounded memory --------------------------------------------------------------------- */

/* 100,000 distinct keys in 1024 buckets: every newcomer gets a full bucket, the table
 * never holds more than its capacity, and a key used after every 7 newcomers is never
 * evicted (at most 7 other keys can reach its set of 8 ways between two of its uses,
 * whatever the hash seed), so it stays limited. */
static void test_flood_of_distinct_keys_stays_bounded_and_a_hot_key_stays_limited(void **state)
{
    (void)state;
    rl_table *t = rl_new(1024, 1.0, 3.0);
    assert_non_null(t);
    assert_int_equal(rl_capacity(t), 1024);
    char key[48];
    int hot_allowed = 0;
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "2001:db8::%x:%x", i >> 16, i & 0xffff);
        if (take(t, key, AT(0)) != 0)
            fail_msg("new key %s was refused", key);
        if (i % 7 == 0)
            hot_allowed += take(t, "hot", AT(0)) == 0;
    }
    assert_int_equal(hot_allowed, 3);
    assert_int_equal(peek(t, "hot", AT(0)), 1);
    assert_int_equal(rl_used(t), 1024);
    assert_int_equal(rl_capacity(t), 1024);
    rl_free(t);
}

/* The documented trade-off: a quiet key pushed out by a flood comes back full. */
static void test_evicted_key_starts_again_with_a_full_bucket(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 1.0, 2.0);
    assert_non_null(t);
    take_all(t, "quiet", AT(0), 2);
    assert_int_equal(take(t, "quiet", AT(0)), 1);
    /* 10,000 keys over 8 sets: each set sees about 1,250 newcomers, so "quiet" (the least
     * recently used of its set after its 8th newcomer) is surely gone. */
    char key[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "flood-%d", i);
        take(t, key, AT(0));
    }
    assert_int_equal(peek(t, "quiet", AT(0)), 0);
    take_all(t, "quiet", AT(0), 2);
    assert_int_equal(take(t, "quiet", AT(0)), 1);
    rl_free(t);
}

/* ---- threads ---------------------------------------------------------------------------- */

#define THREADS 8
#define TAKES_PER_THREAD 500
#define OWN_KEYS 4

typedef struct {
    rl_table *t;
    int id;
    int shared_allowed;
    int own_allowed[OWN_KEYS];
} worker;

/* Takes from the shared key and from this thread's own keys, all at one fixed time. */
static void *work(void *arg)
{
    worker *w = arg;
    char key[32];
    for (int i = 0; i < TAKES_PER_THREAD; i++) {
        w->shared_allowed += take(w->t, "shared", AT(0)) == 0;
        int k = i % OWN_KEYS;
        snprintf(key, sizeof(key), "thread-%d-key-%d", w->id, k);
        w->own_allowed[k] += take(w->t, key, AT(0)) == 0;
    }
    return NULL;
}

static void test_concurrent_takes_allow_exactly_the_burst(void **state)
{
    (void)state;
    /* 33 keys in 512 sets: a set overflowing its 8 ways (and so a key starting over) is
     * a one-in-10^14 event. */
    rl_table *t = rl_new(4096, 1.0, 1000.0);
    assert_non_null(t);

    worker w[THREADS];
    pthread_t th[THREADS];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < THREADS; i++) {
        w[i].t = t;
        w[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    int shared = 0;
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        shared += w[i].shared_allowed;
    }
    /* 4000 attempts on the shared key, and exactly the burst went through. */
    assert_int_equal(shared, 1000);
    /* Each own key had 125 attempts and a burst of 1000: all allowed. */
    for (int i = 0; i < THREADS; i++) {
        for (int k = 0; k < OWN_KEYS; k++)
            assert_int_equal(w[i].own_allowed[k], TAKES_PER_THREAD / OWN_KEYS);
    }
    assert_int_equal(rl_used(t), 1 + THREADS * OWN_KEYS);
    rl_free(t);
}

static void test_now_ns_is_monotonic(void **state)
{
    (void)state;
    uint64_t a = (uint64_t)clk_now_ns();
    uint64_t b = (uint64_t)clk_now_ns();
    assert_true(a > 0);
    assert_true(b >= a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_round_up_to_a_power_of_two_of_at_least_64),
        cmocka_unit_test(test_bad_arguments_are_refused),
        cmocka_unit_test(test_burst_is_allowed_then_refused_with_retry_after),
        cmocka_unit_test(test_retry_after_counts_down_and_rounds_up),
        cmocka_unit_test(test_retry_after_saturates_for_a_very_slow_rate),
        cmocka_unit_test(test_tokens_return_exactly_as_earned_by_elapsed_time),
        cmocka_unit_test(test_a_fractional_burst_holds_its_whole_tokens),
        cmocka_unit_test(test_keys_are_independent),
        cmocka_unit_test(test_null_key_is_the_empty_key),
        cmocka_unit_test(test_keys_longer_than_64_bytes_are_truncated),
        cmocka_unit_test(test_unlimited_rate_never_refuses_and_keeps_no_state),
        cmocka_unit_test(test_peek_does_not_consume),
        cmocka_unit_test(test_time_going_backwards_does_not_refill),
        cmocka_unit_test(test_flood_of_distinct_keys_stays_bounded_and_a_hot_key_stays_limited),
        cmocka_unit_test(test_evicted_key_starts_again_with_a_full_bucket),
        cmocka_unit_test(test_concurrent_takes_allow_exactly_the_burst),
        cmocka_unit_test(test_now_ns_is_monotonic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
