/*
 * test_registry: the key registry on a real SQLite file in a fresh temporary directory per
 * test. Durability is checked by closing and reopening; the file is edited behind the
 * registry's back with SQLite directly where a test needs a state the API cannot make.
 */
#include "appliance/store/registry.h"
#include "appliance/store/chain.h"
#include "appliance/store/sdb.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/unit/testdb.h"
#include "tests/unit/testenv.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RACE_THREADS 8
#define RACE_ATTEMPTS_PER_THREAD 130 /* 1,040 creates in all against a limit of 1,000 */
#define RACE_MAX_ACTIVE 1000
#define MANY_ROWS 10000
#define T0 1700000000

/* ---- helpers ------------------------------------------------------------------------- */

/* A distinct kid per n; kid_of(a) < kid_of(b) when a < b. */
static sk_kid kid_of(unsigned n)
{
    sk_kid k;
    memset(k.b, 0xa5, sizeof(k.b));
    k.b[0] = (uint8_t)(n >> 24);
    k.b[1] = (uint8_t)(n >> 16);
    k.b[2] = (uint8_t)(n >> 8);
    k.b[3] = (uint8_t)n;
    return k;
}

static void kid_hex(const sk_kid *k, char hex[2 * SK_KID_LEN + 1])
{
    for (size_t i = 0; i < SK_KID_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", k->b[i]);
}

static int kid_eq(const sk_kid *a, const sk_kid *b)
{
    return memcmp(a->b, b->b, SK_KID_LEN) == 0;
}

static reg_key key_of(unsigned n, int64_t created_at)
{
    reg_key k;
    memset(&k, 0, sizeof(k));
    k.kid = kid_of(n);
    k.state = REG_ACTIVE;
    k.bits = 2048;
    k.created_at = created_at;
    snprintf(k.label, sizeof(k.label), "key %u", n);
    snprintf(k.n_b64, sizeof(k.n_b64), "modulus-%u", n);
    snprintf(k.e_b64, sizeof(k.e_b64), "AQAB");
    return k;
}

/* Reserve then insert key n, as a create does. */
static void add(reg *r, unsigned n, int64_t created_at)
{
    reg_key k = key_of(n, created_at);
    assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_insert(r, &k), REG_OK);
}

static reg *open_ok(const testenv_db *t, unsigned max_active)
{
    reg *r = NULL;
    assert_int_equal(reg_open(t->db, max_active, &r), REG_OK);
    assert_non_null(r);
    return r;
}

/* Runs SQL on the database with a connection of its own (sdb, either backend), behind the
 * registry's back: as an operator, a crash or another node would. */
static void raw_exec(const testenv_db *t, const char *sql)
{
    sdb *db = NULL;
    char err[512];
    sdb_status st = sdb_open(t->db, SDB_OPEN_CREATE, 5000, &db, err, sizeof(err));
    if (st == SDB_OK)
        st = sdb_exec(db, sql, "raw_exec", err, sizeof(err));
    if (st != SDB_OK)
        fprintf(stderr, "raw_exec: %s\n", err);
    sdb_close(db);
    assert_int_equal(st, SDB_OK);
}

/* The SQLite file itself (its format, its PRAGMAs, the file system): skipped on
 * PostgreSQL. */
#define SQLITE_ONLY()                                                                              \
    do {                                                                                           \
        if (testenv_backend_is_postgres())                                                         \
            skip();                                                                                \
    } while (0)

/* The audit chain's storage (chain.h) takes an sdb only once its port lands: until then
 * the registry records no event on PostgreSQL, and tests check the events on SQLite. */
static int audit_checked(void)
{
#ifdef chn_append_tx
    return 1;
#else
    return !testenv_backend_is_postgres();
#endif
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_inserted_keys_are_active_and_listed_by_created_at_then_kid(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 3, T0 + 200);
    add(r, 2, T0 + 100);
    add(r, 1, T0 + 200);

    for (int pass = 0; pass < 2; pass++) { /* as inserted, then as loaded from the file */
        reg_key k;
        sk_kid one = kid_of(1), unknown = kid_of(99);
        assert_int_equal(reg_get(r, &one, &k), REG_OK);
        assert_true(kid_eq(&k.kid, &one));
        assert_int_equal(k.state, REG_ACTIVE);
        assert_int_equal(k.bits, 2048);
        assert_int_equal(k.created_at, T0 + 200);
        assert_string_equal(k.label, "key 1");
        assert_string_equal(k.n_b64, "modulus-1");
        assert_string_equal(k.e_b64, "AQAB");
        assert_int_equal(k.revoked_at, 0);
        assert_int_equal(k.revocation_seq, 0);
        assert_string_equal(k.reason, "");
        assert_true(reg_is_active(r, &one));
        assert_false(reg_is_active(r, &unknown));
        assert_int_equal(reg_get(r, &unknown, &k), REG_ERR_NOT_FOUND);
        assert_int_equal(reg_count(r, REG_ACTIVE), 3);
        assert_int_equal(reg_count(r, REG_REVOKED), 0);

        reg_key list[4];
        assert_int_equal(reg_list(r, -1, list, 4), 3);
        sk_kid want[3] = {kid_of(2), kid_of(1), kid_of(3)};
        for (int i = 0; i < 3; i++)
            assert_true(kid_eq(&list[i].kid, &want[i]));
        memset(list, 0, sizeof(list));
        assert_int_equal(reg_list(r, REG_ACTIVE, list, 2), 3); /* truncated, says so */
        assert_true(kid_eq(&list[1].kid, &want[1]));
        assert_int_equal(list[2].bits, 0); /* nothing written past cap */
        assert_int_equal(reg_list(r, REG_REVOKED, list, 4), 0);
        assert_int_equal(reg_list(r, -1, NULL, 0), 3);

        reg_close(r);
        if (pass == 0)
            r = open_ok(t, 10);
    }
}

static void test_reserve_refuses_past_max_active_and_unreserve_frees_a_slot(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_unreserve(r);
    assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);

    /* Inserts turn the three reservations into three active keys: still full. */
    for (unsigned n = 1; n <= 3; n++) {
        reg_key k = key_of(n, T0);
        assert_int_equal(reg_insert(r, &k), REG_OK);
    }
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_close(r);

    /* Active keys count against the limit after a restart too. */
    r = open_ok(t, 3);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_close(r);
}

static void test_duplicate_insert_is_refused_and_gives_its_slot_back(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 2);
    add(r, 1, T0);
    uint64_t gen = reg_generation(r);
    reg_key dup = key_of(1, T0 + 5);
    snprintf(dup.label, sizeof(dup.label), "impostor");
    assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_insert(r, &dup), REG_ERR_EXISTS);
    assert_int_equal(reg_generation(r), gen);

    reg_key k;
    sk_kid one = kid_of(1);
    assert_int_equal(reg_get(r, &one, &k), REG_OK);
    assert_string_equal(k.label, "key 1");
    assert_int_equal(reg_count(r, REG_ACTIVE), 1);
    /* The failed insert consumed its reservation: one slot is left, not zero. */
    assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_close(r);
}

static void test_insert_without_a_reservation_still_honours_the_limit(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 1);
    reg_key a = key_of(1, T0), b = key_of(2, T0);
    assert_int_equal(reg_insert(r, &a), REG_OK);
    assert_int_equal(reg_insert(r, &b), REG_ERR_LIMIT);
    assert_int_equal(reg_count(r, REG_ACTIVE), 1);
    reg_close(r);
}

typedef struct {
    reg *r;
    atomic_uint next_kid;
    atomic_uint inserted;
    atomic_uint refused;
    atomic_uint failed;
    atomic_int done;
    atomic_uint reader_violations;
} race;

static void *race_creator(void *arg)
{
    race *x = arg;
    for (int i = 0; i < RACE_ATTEMPTS_PER_THREAD; i++) {
        if (reg_reserve(x->r) != REG_OK) {
            atomic_fetch_add(&x->refused, 1);
            continue;
        }
        unsigned n = atomic_fetch_add(&x->next_kid, 1);
        reg_key k = key_of(n, T0 + n % 17);
        if (reg_insert(x->r, &k) == REG_OK)
            atomic_fetch_add(&x->inserted, 1);
        else
            atomic_fetch_add(&x->failed, 1);
    }
    return NULL;
}

/* Reads while the creators write: the count never passes the limit and the newest key
 * is always active. */
static void *race_reader(void *arg)
{
    race *x = arg;
    while (!atomic_load(&x->done)) {
        reg_key k;
        size_t active = reg_count(x->r, REG_ACTIVE);
        if (active > RACE_MAX_ACTIVE)
            atomic_fetch_add(&x->reader_violations, 1);
        if (reg_newest_active(x->r, &k) == REG_OK && !reg_is_active(x->r, &k.kid))
            atomic_fetch_add(&x->reader_violations, 1);
        usleep(100); /* a steady reader, not a spinning one (valgrind serialises threads) */
    }
    return NULL;
}

static void test_thousand_concurrent_creates_fill_exactly_max_active(void **state)
{
    testenv_db *t = *state;
    race x;
    memset(&x, 0, sizeof(x));
    x.r = open_ok(t, RACE_MAX_ACTIVE);
    pthread_t creators[RACE_THREADS], reader;
    assert_int_equal(pthread_create(&reader, NULL, race_reader, &x), 0);
    for (int i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_create(&creators[i], NULL, race_creator, &x), 0);
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(creators[i], NULL);
    atomic_store(&x.done, 1);
    pthread_join(reader, NULL);

    assert_int_equal(atomic_load(&x.inserted), RACE_MAX_ACTIVE);
    assert_int_equal(atomic_load(&x.failed), 0);
    assert_int_equal(atomic_load(&x.refused),
                     RACE_THREADS * RACE_ATTEMPTS_PER_THREAD - RACE_MAX_ACTIVE);
    assert_int_equal(atomic_load(&x.reader_violations), 0);
    assert_int_equal(reg_count(x.r, REG_ACTIVE), RACE_MAX_ACTIVE);
    assert_int_equal(reg_reserve(x.r), REG_ERR_LIMIT); /* the 1,001st */
    reg_close(x.r);

    reg *r = open_ok(t, RACE_MAX_ACTIVE);
    assert_int_equal(reg_count(r, REG_ACTIVE), RACE_MAX_ACTIVE);
    for (unsigned n = 0; n < RACE_MAX_ACTIVE; n++) {
        sk_kid kid = kid_of(n);
        assert_true(reg_is_active(r, &kid));
    }
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_close(r);
}

static void test_revocation_survives_close_and_reopen(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    add(r, 2, T0 + 1);
    sk_kid one = kid_of(1);
    reg_key out;
    assert_int_equal(reg_revoke(r, &one, "key compromised", T0 + 60, &out), REG_OK);
    assert_int_equal(out.state, REG_REVOKED);
    assert_int_equal(out.revoked_at, T0 + 60);
    assert_string_equal(out.reason, "key compromised");
    assert_true(out.revocation_seq > 0);
    assert_false(reg_is_active(r, &one));
    uint64_t seq = out.revocation_seq;
    reg_close(r);

    r = open_ok(t, 10);
    reg_key k;
    assert_int_equal(reg_get(r, &one, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    assert_int_equal(k.revoked_at, T0 + 60);
    assert_string_equal(k.reason, "key compromised");
    assert_int_equal(k.revocation_seq, seq);
    assert_false(reg_is_active(r, &one));
    assert_int_equal(reg_count(r, REG_REVOKED), 1);
    assert_int_equal(reg_count(r, REG_ACTIVE), 1);
    assert_int_equal(reg_revocation_seq(r), seq);
    reg_revocation v[2];
    assert_int_equal(reg_revocations_after(r, 0, v, 2), 1);
    assert_int_equal(v[0].seq, seq);
    assert_true(kid_eq(&v[0].kid, &one));
    assert_int_equal(v[0].revoked_at, T0 + 60);
    assert_string_equal(v[0].reason, "key compromised");
    reg_close(r);
}

static void test_revocation_seq_rises_across_reopen_and_is_never_reused(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    assert_int_equal(reg_revocation_seq(r), 0);
    for (unsigned n = 1; n <= 3; n++)
        add(r, n, T0 + n);
    sk_kid k1 = kid_of(1), k2 = kid_of(2), k3 = kid_of(3);
    reg_key a, b, c;
    assert_int_equal(reg_revoke(r, &k1, "one", T0 + 10, &a), REG_OK);
    assert_int_equal(reg_revoke(r, &k2, "two", T0 + 11, &b), REG_OK);
    assert_true(b.revocation_seq > a.revocation_seq);
    assert_int_equal(reg_revocation_seq(r), b.revocation_seq);
    reg_close(r);

    /* Prune the newest revocation and its key behind the registry's back. */
    char hex[2 * SK_KID_LEN + 1], sql[256];
    kid_hex(&k2, hex);
    snprintf(sql, sizeof(sql),
             "DELETE FROM revocations WHERE kid = '%s'; DELETE FROM keys WHERE kid = '%s';", hex,
             hex);
    raw_exec(t, sql);

    r = open_ok(t, 10);
    assert_int_equal(reg_get(r, &k2, NULL), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_revocation_seq(r), b.revocation_seq); /* never goes back */
    assert_int_equal(reg_revoke(r, &k3, "three", T0 + 12, &c), REG_OK);
    assert_true(c.revocation_seq > b.revocation_seq); /* b's seq is not handed out again */
    assert_int_equal(reg_revocation_seq(r), c.revocation_seq);
    reg_close(r);
}

static void test_revoke_is_idempotent_and_returns_first_record(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    sk_kid one = kid_of(1);
    reg_key first, again;
    assert_int_equal(reg_revoke(r, &one, "first", T0 + 10, &first), REG_OK);
    uint64_t gen = reg_generation(r);
    assert_int_equal(reg_revoke(r, &one, "second", T0 + 99, &again), REG_OK);
    assert_int_equal(again.state, REG_REVOKED);
    assert_int_equal(again.revoked_at, T0 + 10);
    assert_string_equal(again.reason, "first");
    assert_int_equal(again.revocation_seq, first.revocation_seq);
    assert_int_equal(reg_generation(r), gen);
    assert_int_equal(reg_revocation_seq(r), first.revocation_seq);
    assert_int_equal(reg_revocations_after(r, 0, NULL, 0), 1);
    reg_close(r);

    r = open_ok(t, 10);
    assert_int_equal(reg_revoke(r, &one, "third", T0 + 500, &again), REG_OK);
    assert_int_equal(again.revoked_at, T0 + 10);
    assert_string_equal(again.reason, "first");
    assert_int_equal(again.revocation_seq, first.revocation_seq);
    reg_close(r);
}

static void test_revoking_an_unknown_kid_is_not_found_and_changes_nothing(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    uint64_t gen = reg_generation(r);
    sk_kid unknown = kid_of(7);
    assert_int_equal(reg_revoke(r, &unknown, "why", T0, NULL), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_mark_broken(r, &unknown), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_delete(r, &unknown), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_generation(r), gen);
    assert_int_equal(reg_revocation_seq(r), 0);
    reg_close(r);
}

static void test_revoking_an_active_key_frees_its_slot(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 1);
    add(r, 1, T0);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    sk_kid one = kid_of(1);
    assert_int_equal(reg_revoke(r, &one, "rotated", T0 + 1, NULL), REG_OK);
    add(r, 2, T0 + 2);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_close(r);
}

static void test_revocations_after_returns_later_entries_ascending(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    uint64_t seq[5];
    for (unsigned n = 0; n < 5; n++) {
        add(r, n, T0 + n);
        sk_kid kid = kid_of(n);
        char reason[32];
        snprintf(reason, sizeof(reason), "reason %u", n);
        reg_key out;
        assert_int_equal(reg_revoke(r, &kid, reason, T0 + 100 + n, &out), REG_OK);
        seq[n] = out.revocation_seq;
    }
    reg_revocation v[5];
    assert_int_equal(reg_revocations_after(r, 0, v, 5), 5);
    for (unsigned i = 0; i < 5; i++) {
        sk_kid kid = kid_of(i);
        char reason[32];
        snprintf(reason, sizeof(reason), "reason %u", i);
        assert_int_equal(v[i].seq, seq[i]);
        assert_true(kid_eq(&v[i].kid, &kid));
        assert_int_equal(v[i].revoked_at, T0 + 100 + i);
        assert_string_equal(v[i].reason, reason);
        if (i > 0)
            assert_true(v[i].seq > v[i - 1].seq);
    }
    memset(v, 0, sizeof(v));
    assert_int_equal(reg_revocations_after(r, seq[2], v, 5), 2);
    assert_int_equal(v[0].seq, seq[3]);
    assert_int_equal(v[1].seq, seq[4]);
    assert_int_equal(reg_revocations_after(r, seq[4], v, 5), 0);
    assert_int_equal(reg_revocations_after(r, UINT64_MAX, v, 5), 0);
    memset(v, 0, sizeof(v));
    assert_int_equal(reg_revocations_after(r, 0, v, 2), 5); /* truncated, says so */
    assert_int_equal(v[1].seq, seq[1]);
    assert_int_equal(v[2].seq, 0); /* nothing written past cap */
    reg_close(r);
}

static void test_mark_broken_moves_only_active_keys_and_broken_keys_can_be_revoked(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 2);
    add(r, 1, T0);
    add(r, 2, T0);
    sk_kid one = kid_of(1), two = kid_of(2);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    assert_int_equal(reg_mark_broken(r, &one), REG_OK);
    assert_false(reg_is_active(r, &one));
    assert_int_equal(reg_count(r, REG_BROKEN), 1);
    assert_int_equal(reg_count(r, REG_ACTIVE), 1);
    assert_int_equal(reg_reserve(r), REG_OK); /* broken keys take no slot */
    reg_unreserve(r);
    uint64_t gen = reg_generation(r);
    assert_int_equal(reg_mark_broken(r, &one), REG_OK); /* already broken: no change */
    assert_int_equal(reg_generation(r), gen);
    reg_close(r);

    r = open_ok(t, 2);
    reg_key k;
    assert_int_equal(reg_get(r, &one, &k), REG_OK);
    assert_int_equal(k.state, REG_BROKEN);
    assert_int_equal(reg_revoke(r, &one, "missing from token", T0 + 5, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    assert_int_equal(reg_count(r, REG_BROKEN), 0);
    assert_int_equal(reg_count(r, REG_REVOKED), 1);
    assert_int_equal(reg_mark_broken(r, &one), REG_ERR_STATE); /* revoked is final */
    assert_int_equal(reg_revoke(r, &two, "done", T0 + 6, NULL), REG_OK);
    assert_int_equal(reg_mark_broken(r, &two), REG_ERR_STATE);
    assert_int_equal(reg_get(r, &two, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    reg_close(r);
}

static void test_newest_active_falls_back_to_the_previous_newest(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    reg_key k;
    assert_int_equal(reg_newest_active(r, &k), REG_ERR_NOT_FOUND);
    add(r, 1, T0 + 100);
    add(r, 2, T0 + 200);
    add(r, 3, T0 + 150);
    sk_kid k1 = kid_of(1), k2 = kid_of(2), k3 = kid_of(3);
    assert_int_equal(reg_newest_active(r, &k), REG_OK);
    assert_true(kid_eq(&k.kid, &k2));
    assert_int_equal(reg_revoke(r, &k2, "old", T0 + 300, NULL), REG_OK);
    assert_int_equal(reg_newest_active(r, &k), REG_OK);
    assert_true(kid_eq(&k.kid, &k3));
    assert_int_equal(reg_mark_broken(r, &k3), REG_OK);
    assert_int_equal(reg_newest_active(r, &k), REG_OK);
    assert_true(kid_eq(&k.kid, &k1));
    assert_int_equal(reg_revoke(r, &k1, "old", T0 + 300, NULL), REG_OK);
    assert_int_equal(reg_newest_active(r, &k), REG_ERR_NOT_FOUND);
    reg_close(r);
}

static void test_newest_active_breaks_created_at_ties_by_insertion_order(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 9, T0); /* the larger kid first ... */
    add(r, 4, T0); /* ... the smaller one last: it wins the tie */
    sk_kid k4 = kid_of(4), k9 = kid_of(9);
    for (int pass = 0; pass < 2; pass++) {
        reg_key k;
        assert_int_equal(reg_newest_active(r, &k), REG_OK);
        assert_true(kid_eq(&k.kid, &k4));
        reg_close(r);
        r = open_ok(t, 10);
    }
    assert_int_equal(reg_revoke(r, &k4, "x", T0 + 1, NULL), REG_OK);
    reg_key k;
    assert_int_equal(reg_newest_active(r, &k), REG_OK);
    assert_true(kid_eq(&k.kid, &k9));
    reg_close(r);
}

/* The keeper generates only under a pending kid with no row (keeperd.h): the registry
 * pends a fresh kid once, never one with a row, and a kid stops being pending when its row
 * is written, when the create gives up, and at the next open. */
static void test_a_kid_is_pending_until_its_row_is_written_and_never_once_it_has_one(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    sk_kid k1 = kid_of(1), k2 = kid_of(2), k3 = kid_of(3);
    reg_reader *rr = NULL;
    assert_int_equal(reg_reader_open(t->db, &rr), REG_OK);
    assert_int_equal(reg_reader_pending(rr, &k1), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_pending_add(r, &k1, T0), REG_OK);
    assert_int_equal(reg_pending_add(r, &k1, T0), REG_ERR_EXISTS);
    assert_int_equal(reg_reader_pending(rr, &k1), REG_OK);
    add(r, 1, T0); /* its row: no longer pending, and never again */
    assert_int_equal(reg_reader_pending(rr, &k1), REG_ERR_EXISTS);
    assert_int_equal(reg_pending_add(r, &k1, T0), REG_ERR_EXISTS);
    assert_int_equal(reg_revoke(r, &k1, "gone", T0 + 1, NULL), REG_OK);
    assert_int_equal(reg_pending_add(r, &k1, T0), REG_ERR_EXISTS);
    assert_int_equal(reg_pending_add(r, &k2, T0), REG_OK);
    reg_pending_drop(r, &k2);
    assert_int_equal(reg_reader_pending(rr, &k2), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_pending_add(r, &k3, T0), REG_OK);
    reg_close(r);
    r = open_ok(t, 10); /* a create the crash cut short */
    if (testenv_backend_is_postgres()) {
        /* Kept (other nodes' creates may be under way), but this node's own record from
         * before its start: reconcile takes it for an orphan. */
        assert_int_equal(reg_reader_pending(rr, &k3), REG_OK);
        assert_int_equal(reg_kid_orphan(r, &k3, (int64_t)time(NULL) * 1000), REG_OK);
        reg_pending_drop(r, &k3);
    }
    assert_int_equal(reg_reader_pending(rr, &k3), REG_ERR_NOT_FOUND);
    sk_kid *all = NULL;
    size_t n = 0;
    assert_int_equal(reg_reader_all_kids(rr, &all, &n), REG_OK);
    assert_int_equal(n, 1); /* the revoked one */
    assert_true(kid_eq(&all[0], &k1));
    free(all);
    reg_reader_close(rr);
    reg_close(r);
}

static void test_delete_removes_an_unrevoked_row_and_frees_its_slot(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 6);
    int64_t created[6] = {T0 + 5, T0 + 1, T0 + 3, T0 + 3, T0 + 9, T0 + 2};
    for (unsigned n = 0; n < 6; n++)
        add(r, n, created[n]);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    sk_kid k2 = kid_of(2), k4 = kid_of(4), k5 = kid_of(5);
    assert_int_equal(reg_delete(r, &k2), REG_OK); /* a middle row */
    assert_int_equal(reg_delete(r, &k4), REG_OK); /* the newest */
    assert_int_equal(reg_mark_broken(r, &k5), REG_OK);
    assert_int_equal(reg_delete(r, &k5), REG_OK); /* a broken row */
    assert_int_equal(reg_get(r, &k2, NULL), REG_ERR_NOT_FOUND);
    for (int i = 0; i < 3; i++) /* k2, k4 deleted; k5's slot went when it broke */
        assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    for (int i = 0; i < 3; i++)
        reg_unreserve(r);

    sk_kid k0 = kid_of(0), k1 = kid_of(1), k3 = kid_of(3);
    assert_int_equal(reg_revoke(r, &k3, "published", T0 + 20, NULL), REG_OK);
    assert_int_equal(reg_delete(r, &k3), REG_ERR_STATE); /* its revocation stays */
    for (int pass = 0; pass < 2; pass++) {
        reg_key list[8], k;
        assert_int_equal(reg_list(r, -1, list, 8), 3);
        assert_true(kid_eq(&list[0].kid, &k1)); /* T0+1 */
        assert_true(kid_eq(&list[1].kid, &k3)); /* T0+3 */
        assert_true(kid_eq(&list[2].kid, &k0)); /* T0+5 */
        for (int i = 0; i < 3; i++)
            assert_int_equal(reg_get(r, &list[i].kid, &k), REG_OK);
        assert_int_equal(reg_get(r, &k4, NULL), REG_ERR_NOT_FOUND);
        assert_int_equal(reg_newest_active(r, &k), REG_OK);
        assert_true(kid_eq(&k.kid, &k0));
        reg_close(r);
        r = open_ok(t, 6);
    }
    reg_close(r);
}

static void test_generation_moves_on_every_change_and_only_then(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    uint64_t g = reg_generation(r);
    add(r, 1, T0);
    add(r, 2, T0);
    add(r, 3, T0);
    assert_true(reg_generation(r) > g);
    g = reg_generation(r);
    sk_kid k1 = kid_of(1), k2 = kid_of(2), k3 = kid_of(3);
    reg_key k;
    reg_revocation v;
    assert_int_equal(reg_get(r, &k1, &k), REG_OK);
    reg_newest_active(r, &k);
    reg_list(r, -1, &k, 1);
    reg_revocations_after(r, 0, &v, 1);
    assert_int_equal(reg_reserve(r), REG_OK);
    reg_unreserve(r);
    assert_int_equal(reg_generation(r), g);
    assert_int_equal(reg_revoke(r, &k1, "x", T0, NULL), REG_OK);
    assert_true(reg_generation(r) > g);
    g = reg_generation(r);
    assert_int_equal(reg_mark_broken(r, &k2), REG_OK);
    assert_true(reg_generation(r) > g);
    g = reg_generation(r);
    assert_int_equal(reg_delete(r, &k3), REG_OK);
    assert_true(reg_generation(r) > g);
    reg_close(r);
}

static void test_non_sqlite_file_fails_with_io_error_and_a_message(void **state)
{
    testenv_db *t = *state;
    SQLITE_ONLY();
    FILE *f = fopen(t->db, "w");
    assert_non_null(f);
    for (int i = 0; i < 256; i++)
        fputs("this is not a database, just text. ", f);
    fclose(f);
    reg *r = (reg *)1;
    assert_int_equal(reg_open(t->db, 10, &r), REG_ERR_IO);
    assert_null(r);
    const char *msg = reg_last_error();
    assert_non_null(strstr(msg, t->db));
    assert_non_null(strstr(msg, "not a database"));
}

static void test_newer_schema_version_is_refused(void **state)
{
    testenv_db *t = *state;
    reg_close(open_ok(t, 10));
    raw_exec(t, testenv_backend_is_postgres()
                    ? "UPDATE schema_versions SET version = 99 WHERE store = 'registry'"
                    : "PRAGMA user_version = 99");
    reg *r = NULL;
    assert_int_equal(reg_open(t->db, 10, &r), REG_ERR_IO);
    assert_null(r);
    assert_non_null(strstr(reg_last_error(), "schema version 99"));
}

static void test_revoked_row_without_revocation_record_is_refused(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    reg_close(r);
    raw_exec(t, "UPDATE keys SET state = 'revoked'");
    r = NULL;
    assert_int_equal(reg_open(t->db, 10, &r), REG_ERR_IO);
    assert_null(r);
    assert_non_null(strstr(reg_last_error(), "no revocation record"));
}

static void test_file_is_created_private_and_a_symlink_or_directory_is_refused(void **state)
{
    testenv_db *t = *state;
    SQLITE_ONLY();
    reg_close(open_ok(t, 10));
    struct stat st;
    assert_int_equal(stat(t->db, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    char link[PATH_MAX + 16];
    snprintf(link, sizeof(link), "%s/link.db", t->dir);
    assert_int_equal(symlink(t->db, link), 0);
    reg *r = NULL;
    assert_int_equal(reg_open(link, 10, &r), REG_ERR_IO);
    assert_null(r);
    assert_int_equal(reg_open(t->dir, 10, &r), REG_ERR_IO); /* not a regular file */
    assert_null(r);
}

static void test_bad_arguments_are_refused(void **state)
{
    testenv_db *t = *state;
    reg *r = NULL;
    assert_int_equal(reg_open(t->db, 0, &r), REG_ERR_INVALID);
    assert_int_equal(reg_open(NULL, 10, &r), REG_ERR_INVALID);
    r = open_ok(t, 1);

    reg_key k = key_of(1, T0);
    memset(k.label, 'x', sizeof(k.label)); /* unterminated */
    assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_insert(r, &k), REG_ERR_INVALID);
    add(r, 1, T0); /* the refused insert gave its slot back */

    char reason[REG_REASON_MAX + 2];
    memset(reason, 'r', sizeof(reason) - 1);
    reason[sizeof(reason) - 1] = '\0';
    sk_kid one = kid_of(1);
    assert_int_equal(reg_revoke(r, &one, reason, T0, NULL), REG_ERR_INVALID);
    assert_true(reg_is_active(r, &one));
    reason[REG_REASON_MAX] = '\0'; /* exactly the bound is fine */
    reg_key out;
    assert_int_equal(reg_revoke(r, &one, reason, T0, &out), REG_OK);
    assert_int_equal(strlen(out.reason), REG_REASON_MAX);
    reg_close(r);
}

static void test_state_names_round_trip(void **state)
{
    (void)state;
    for (int s = 0; s < REG_STATE_COUNT_; s++) {
        reg_state back;
        assert_int_equal(reg_state_parse(reg_state_name((reg_state)s), &back), 0);
        assert_int_equal(back, s);
    }
    reg_state back;
    assert_string_equal(reg_state_name(REG_REVOKED), "revoked");
    assert_string_equal(reg_state_name(REG_RETIRING), "retiring");
    assert_int_equal(reg_state_parse("retired", &back), -1);
    assert_int_equal(reg_state_parse("Active", &back), -1);
    assert_int_equal(reg_state_parse(NULL, &back), -1);
    assert_string_equal(reg_state_name((reg_state)42), "unknown");
    assert_non_null(reg_strerror((reg_status)42));
}

static void test_open_loads_ten_thousand_rows(void **state)
{
    testenv_db *t = *state;
    SQLITE_ONLY();
    reg_close(open_ok(t, 10));
    /* One transaction of raw inserts: 10,000 fsynced creates would take minutes. Every
     * tenth key is revoked; created_at runs backwards so loading must sort. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(t->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *ins, *rev;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "INSERT INTO keys (kid, state, bits, label, created_at, n,"
                                        " e) VALUES (?, ?, 2048, 'bulk', ?, 'n', 'AQAB')",
                                        -1, &ins, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "INSERT INTO revocations (kid, revoked_at, reason)"
                                        " VALUES (?, ?, 'bulk')",
                                        -1, &rev, NULL),
                     SQLITE_OK);
    for (unsigned n = 0; n < MANY_ROWS; n++) {
        sk_kid kid = kid_of(n * 2654435761u);
        char hex[2 * SK_KID_LEN + 1];
        kid_hex(&kid, hex);
        int revoked = n % 10 == 0;
        sqlite3_bind_text(ins, 1, hex, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins, 2, revoked ? "revoked" : "active", -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 3, T0 + MANY_ROWS - n);
        assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
        if (revoked) {
            sqlite3_bind_text(rev, 1, hex, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(rev, 2, T0 + 2 * MANY_ROWS);
            assert_int_equal(sqlite3_step(rev), SQLITE_DONE);
            sqlite3_reset(rev);
        }
    }
    sqlite3_finalize(ins);
    sqlite3_finalize(rev);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    reg *r = open_ok(t, 2 * MANY_ROWS);
    assert_int_equal(reg_count(r, REG_REVOKED), MANY_ROWS / 10);
    assert_int_equal(reg_count(r, REG_ACTIVE), MANY_ROWS - MANY_ROWS / 10);
    assert_int_equal(reg_revocations_after(r, 0, NULL, 0), MANY_ROWS / 10);
    for (unsigned n = 0; n < MANY_ROWS; n++) {
        sk_kid kid = kid_of(n * 2654435761u);
        assert_int_equal(reg_is_active(r, &kid), n % 10 != 0);
    }
    reg_key *all = calloc(MANY_ROWS, sizeof(*all));
    assert_non_null(all);
    assert_int_equal(reg_list(r, -1, all, MANY_ROWS), MANY_ROWS);
    for (size_t i = 1; i < MANY_ROWS; i++)
        assert_true(all[i - 1].created_at < all[i].created_at);
    free(all);
    reg_key k;
    assert_int_equal(reg_newest_active(r, &k), REG_OK);
    assert_int_equal(k.created_at, T0 + MANY_ROWS - 1); /* n = 1: n = 0 is revoked */
    reg_close(r);
}

/* ---- rotation ------------------------------------------------------------------------ */

/* Reserve then rotate key old_n to a new key new_n, as POST /v1/keys/{kid}/rotate does. */
static reg_status rotate(reg *r, unsigned old_n, unsigned new_n, int64_t created_at,
                         int64_t retire_at, reg_key *was, reg_key *made)
{
    sk_kid old = kid_of(old_n);
    reg_key next = key_of(new_n, created_at);
    if (reg_reserve(r) != REG_OK)
        return REG_ERR_LIMIT;
    return reg_rotate(r, &old, &next, retire_at, was, made);
}

/* How many audit events have this action, kid (hex) and a details text containing `has`
 * (NULL: any). */
static int audit_events(const testenv_db *t, const char *action, const sk_kid *kid, const char *has)
{
    char hex[2 * SK_KID_LEN + 1], like[256];
    kid_hex(kid, hex);
    snprintf(like, sizeof(like), "%%%s%%", has ? has : "");
    return (int)testenv_sql_int(t->db,
                                "SELECT count(*) FROM audit WHERE action = ? AND kid = ?"
                                " AND details LIKE ?",
                                3, action, hex, like);
}

/* One integer from the file (a count, a pragma), on a connection of its own. */
static int64_t raw_int(const testenv_db *t, const char *sql)
{
    return testenv_sql_int(t->db, sql, 0);
}

/* The keeper's question (keeperd.c): is kid in the reader's active set? 0 for a NULL
 * reader or kid and for a read error, as the keeper fails closed. */
static int reader_active(reg_reader *rr, const sk_kid *kid)
{
    sk_kid *kids = NULL;
    size_t n = 0;
    if (kid == NULL || reg_reader_active_kids(rr, &kids, &n) != REG_OK)
        return 0;
    int found = n > 0 && bsearch(kid, kids, n, sizeof(*kids), sk_kid_cmp) != NULL;
    free(kids);
    return found;
}

static void
test_rotate_makes_the_successor_active_and_the_old_key_retiring_in_one_change(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    sk_kid one = kid_of(1), two = kid_of(2);
    uint64_t gen = reg_generation(r);
    reg_key was, made;
    assert_int_equal(rotate(r, 1, 2, T0 + 10, T0 + 3610, &was, &made), REG_OK);
    assert_int_equal(reg_generation(r), gen + 1); /* one change: readers see both or none */
    assert_int_equal(was.state, REG_RETIRING);
    assert_int_equal(was.retire_at, T0 + 3610);
    assert_true(was.has_successor && kid_eq(&was.successor, &two));
    assert_false(was.has_predecessor);
    assert_int_equal(made.state, REG_ACTIVE);
    assert_true(made.has_predecessor && kid_eq(&made.predecessor, &one));
    assert_false(made.has_successor);
    assert_int_equal(made.retire_at, 0);
    assert_int_equal(made.created_at, T0 + 10);
    assert_string_equal(made.label, "key 2");

    for (int pass = 0; pass < 2; pass++) { /* as rotated, then as loaded from the file */
        reg_key k;
        assert_int_equal(reg_get(r, &one, &k), REG_OK);
        assert_int_equal(k.state, REG_RETIRING);
        assert_int_equal(k.retire_at, T0 + 3610);
        assert_true(k.has_successor && kid_eq(&k.successor, &two));
        assert_string_equal(k.n_b64, "modulus-1"); /* still published */
        assert_int_equal(reg_get(r, &two, &k), REG_OK);
        assert_int_equal(k.state, REG_ACTIVE);
        assert_true(k.has_predecessor && kid_eq(&k.predecessor, &one));
        assert_false(reg_is_active(r, &one)); /* a retiring key signs nothing */
        assert_true(reg_is_active(r, &two));
        assert_int_equal(reg_newest_active(r, &k), REG_OK);
        assert_true(kid_eq(&k.kid, &two));
        assert_int_equal(reg_count(r, REG_ACTIVE), 1);
        assert_int_equal(reg_count(r, REG_RETIRING), 1);
        reg_key list[4];
        assert_int_equal(reg_list(r, REG_ACTIVE, list, 4), 1); /* never the retiring one */
        assert_true(kid_eq(&list[0].kid, &two));
        assert_int_equal(reg_list(r, REG_RETIRING, list, 4), 1);
        assert_true(kid_eq(&list[0].kid, &one));
        assert_int_equal(reg_list(r, REG_LIST_LIVE, list, 4), 2); /* what the JWKS lists */
        reg_close(r);
        r = open_ok(t, 10);
    }
    /* The keeper's own check refuses the retiring key too. */
    reg_reader *rr = NULL;
    assert_int_equal(reg_reader_open(t->db, &rr), REG_OK);
    assert_int_equal(reader_active(rr, &one), 0);
    assert_int_equal(reader_active(rr, &two), 1);
    reg_reader_close(rr);
    reg_close(r);
    /* Recorded in the same transaction: the successor's creation and the rotation. */
    if (!audit_checked())
        return;
    assert_int_equal(audit_events(t, "key.created", &two, "\"predecessor\""), 1);
    char retire[32];
    snprintf(retire, sizeof(retire), "\"retire_at\":%d", T0 + 3610);
    assert_int_equal(audit_events(t, "key.rotated", &one, retire), 1);
}

static void test_a_rotation_the_database_refuses_leaves_neither_half_and_refreshes(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    /* Behind the registry's back (as another node would) the old row stops being active
     * in the file only: the mirror still allows the rotation, the transaction's UPDATE
     * finds no active row and the successor's INSERT, already done, must be rolled back
     * with it; the registry then reads the file again and answers from what it holds. */
    raw_exec(t, "UPDATE keys SET state = 'broken'");
    int64_t events = raw_int(t, "SELECT count(*) FROM audit");
    sk_kid one = kid_of(1), two = kid_of(2);
    uint64_t gen = reg_generation(r);
    assert_int_equal(rotate(r, 1, 2, T0 + 10, T0 + 100, NULL, NULL), REG_ERR_STATE);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM keys"), 1);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM audit"), events);
    assert_int_not_equal(reg_generation(r), gen);
    assert_int_equal(reg_get(r, &two, NULL), REG_ERR_NOT_FOUND);
    reg_key k;
    assert_int_equal(reg_get(r, &one, &k), REG_OK);
    assert_int_equal(k.state, REG_BROKEN);
    /* The reservation went back, and the broken key holds no slot any more. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    reg_close(r);
}

static void test_retiring_keys_hold_their_slot_so_rotating_at_the_limit_is_refused(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 3);
    add(r, 1, T0);
    add(r, 2, T0);
    assert_int_equal(rotate(r, 1, 3, T0 + 1, T0 + 100, NULL, NULL), REG_OK);
    /* 1 retiring, 2 and 3 active: three keys in the token, the limit. */
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    assert_int_equal(rotate(r, 2, 4, T0 + 2, T0 + 100, NULL, NULL), REG_ERR_LIMIT);
    sk_kid two = kid_of(2), next_kid = kid_of(4), one = kid_of(1);
    reg_key next = key_of(4, T0 + 2);
    /* Without a reservation reg_rotate checks the limit itself. */
    assert_int_equal(reg_rotate(r, &two, &next, T0 + 100, NULL, NULL), REG_ERR_LIMIT);
    assert_int_equal(reg_get(r, &next_kid, NULL), REG_ERR_NOT_FOUND);
    assert_true(reg_is_active(r, &two));
    reg_close(r);

    r = open_ok(t, 3); /* the count is rebuilt from the file: retiring keys count */
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    /* Revoking the retiring key frees its slot. */
    assert_int_equal(reg_revoke(r, &one, "rotated", T0 + 100, NULL), REG_OK);
    assert_int_equal(rotate(r, 2, 4, T0 + 3, T0 + 200, NULL, NULL), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    /* A retiring key that breaks frees its slot too. */
    assert_int_equal(reg_mark_broken(r, &two), REG_OK);
    assert_int_equal(reg_reserve(r), REG_OK);
    reg_unreserve(r);
    reg_close(r);
}

static void test_a_retiring_key_is_never_the_newest_active(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0 + 500); /* the newest by far */
    add(r, 2, T0 + 100);
    /* A successor dated before key 2 (a clock that went back): 2 is the newest active. */
    assert_int_equal(rotate(r, 1, 3, T0 + 50, T0 + 1000, NULL, NULL), REG_OK);
    sk_kid one = kid_of(1), two = kid_of(2), three = kid_of(3);
    for (int pass = 0; pass < 2; pass++) {
        reg_key k;
        assert_int_equal(reg_newest_active(r, &k), REG_OK);
        assert_true(kid_eq(&k.kid, &two));
        reg_close(r);
        r = open_ok(t, 10);
    }
    reg_key k;
    assert_int_equal(reg_revoke(r, &two, "x", T0 + 600, NULL), REG_OK);
    assert_int_equal(reg_newest_active(r, &k), REG_OK);
    assert_true(kid_eq(&k.kid, &three));
    assert_int_equal(reg_revoke(r, &three, "x", T0 + 600, NULL), REG_OK);
    /* Only the retiring key is left: there is no active key at all. */
    assert_int_equal(reg_newest_active(r, &k), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_get(r, &one, &k), REG_OK);
    assert_int_equal(k.state, REG_RETIRING);
    reg_close(r);
    r = open_ok(t, 10);
    assert_int_equal(reg_newest_active(r, &k), REG_ERR_NOT_FOUND);
    reg_close(r);
}

static void test_only_an_active_key_rotates_and_retiring_moves_to_revoked_or_broken(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    add(r, 2, T0);
    add(r, 3, T0);
    sk_kid one = kid_of(1), two = kid_of(2), three = kid_of(3), unknown = kid_of(99);
    assert_int_equal(rotate(r, 1, 10, T0 + 1, T0 + 100, NULL, NULL), REG_OK);
    assert_int_equal(reg_revoke(r, &two, "x", T0 + 1, NULL), REG_OK);
    assert_int_equal(reg_mark_broken(r, &three), REG_OK);

    /* Retiring, revoked, broken: REG_ERR_STATE; unknown: not found. Each consumes its
     * reservation, and nothing changes. */
    uint64_t gen = reg_generation(r);
    assert_int_equal(rotate(r, 1, 11, T0 + 2, T0 + 100, NULL, NULL), REG_ERR_STATE);
    assert_int_equal(rotate(r, 2, 11, T0 + 2, T0 + 100, NULL, NULL), REG_ERR_STATE);
    assert_int_equal(rotate(r, 3, 11, T0 + 2, T0 + 100, NULL, NULL), REG_ERR_STATE);
    assert_int_equal(rotate(r, 99, 11, T0 + 2, T0 + 100, NULL, NULL), REG_ERR_NOT_FOUND);
    /* A successor kid that exists already. */
    assert_int_equal(rotate(r, 10, 2, T0 + 2, T0 + 100, NULL, NULL), REG_ERR_EXISTS);
    sk_kid eleven = kid_of(11);
    assert_int_equal(reg_get(r, &eleven, NULL), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_generation(r), gen);
    assert_int_equal(reg_get(r, &unknown, NULL), REG_ERR_NOT_FOUND);
    for (int i = 0; i < 8; i++) /* 1 retiring and 10 active hold two of ten slots */
        assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_reserve(r), REG_ERR_LIMIT);
    for (int i = 0; i < 8; i++)
        reg_unreserve(r);

    /* Neither half of a rotation can be deleted. */
    sk_kid ten = kid_of(10);
    assert_int_equal(reg_delete(r, &one), REG_ERR_STATE);
    assert_int_equal(reg_delete(r, &ten), REG_ERR_STATE);

    /* Retiring -> revoked before its retire_at (DELETE at any time): the lineage stays. */
    reg_key k;
    assert_int_equal(reg_revoke(r, &one, "compromised", T0 + 5, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    assert_int_equal(k.revoked_at, T0 + 5);
    assert_string_equal(k.reason, "compromised");
    assert_true(k.has_successor && kid_eq(&k.successor, &ten));
    assert_int_equal(reg_count(r, REG_RETIRING), 0);
    assert_int_equal(rotate(r, 10, 12, T0 + 6, T0 + 100, NULL, NULL), REG_OK);
    /* Retiring -> broken (reconcile found its object gone), then revoked. */
    assert_int_equal(reg_mark_broken(r, &ten), REG_OK);
    assert_int_equal(reg_get(r, &ten, &k), REG_OK);
    assert_int_equal(k.state, REG_BROKEN);
    assert_int_equal(reg_retiring_due(r, T0 + 1000, NULL, 0, NULL), 0); /* not scheduled */
    assert_int_equal(reg_revoke(r, &ten, "gone", T0 + 7, NULL), REG_OK);
    reg_close(r);
    r = open_ok(t, 10);
    assert_int_equal(reg_get(r, &ten, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    assert_true(k.has_predecessor && kid_eq(&k.predecessor, &one));
    assert_true(k.has_successor);
    reg_close(r);
}

static void test_retiring_due_names_the_overdue_keys_and_the_next_retire_at(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    int64_t next = -1;
    sk_kid due[4];
    assert_int_equal(reg_retiring_due(r, T0, due, 4, &next), 0);
    assert_int_equal(next, 0);
    for (unsigned n = 1; n <= 3; n++) {
        add(r, n, T0);
        assert_int_equal(rotate(r, n, 10 + n, T0, T0 + 10 * n, NULL, NULL), REG_OK);
    }
    assert_int_equal(reg_retiring_due(r, T0 + 9, due, 4, &next), 0);
    assert_int_equal(next, T0 + 10);
    assert_int_equal(reg_retiring_due(r, T0 + 20, due, 4, &next), 2); /* retire_at <= now */
    assert_int_equal(next, T0 + 30);
    sk_kid one = kid_of(1), two = kid_of(2);
    assert_true((kid_eq(&due[0], &one) && kid_eq(&due[1], &two)) ||
                (kid_eq(&due[0], &two) && kid_eq(&due[1], &one)));
    assert_int_equal(reg_retiring_due(r, T0 + 20, due, 1, NULL), 2); /* truncated, says so */
    assert_int_equal(reg_revoke(r, &one, "rotated", T0 + 20, NULL), REG_OK);
    assert_int_equal(reg_retiring_due(r, T0 + 20, due, 4, &next), 1);
    assert_true(kid_eq(&due[0], &two));
    reg_close(r);
    r = open_ok(t, 10); /* the schedule is in the file */
    assert_int_equal(reg_retiring_due(r, T0 + 100, due, 4, &next), 2);
    assert_int_equal(next, 0);
    reg_close(r);
}

/* The schema a version-1 registry file has, exactly as the code before rotation wrote it
 * (sqlite3 .schema of a file it made). */
static const char v1_schema[] =
    "CREATE TABLE keys ( id INTEGER PRIMARY KEY, kid TEXT NOT NULL UNIQUE CHECK (length(kid) ="
    " 32), state TEXT NOT NULL, bits INTEGER NOT NULL, label TEXT NOT NULL, created_at INTEGER"
    " NOT NULL, n TEXT NOT NULL, e TEXT NOT NULL);"
    "CREATE TABLE revocations ( seq INTEGER PRIMARY KEY AUTOINCREMENT, kid TEXT NOT NULL"
    " UNIQUE REFERENCES keys(kid), revoked_at INTEGER NOT NULL, reason TEXT NOT NULL);"
    "CREATE TABLE audit ( seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, actor TEXT NOT"
    " NULL, action TEXT NOT NULL, kid TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT"
    " NULL CHECK (length(prev_hash) = 64), hash TEXT NOT NULL CHECK (length(hash) = 64));"
    "CREATE INDEX audit_kid ON audit (kid) WHERE kid != '';"
    "CREATE TABLE audit_checkpoints ( seq INTEGER PRIMARY KEY, hash TEXT NOT NULL CHECK"
    " (length(hash) = 64), time INTEGER NOT NULL, jws TEXT NOT NULL);"
    "PRAGMA journal_mode=WAL;";

static void test_a_version_1_file_is_migrated_in_place_and_keeps_every_row(void **state)
{
    testenv_db *t = *state;
    SQLITE_ONLY();
    sk_kid k[4] = {kid_of(1), kid_of(2), kid_of(3), kid_of(4)};
    char hex[4][2 * SK_KID_LEN + 1];
    for (int i = 0; i < 4; i++)
        kid_hex(&k[i], hex[i]);
    char sql[2048];
    raw_exec(t, v1_schema);
    /* Ids out of order on purpose: the tie-break of the newest active key is the id. */
    snprintf(sql, sizeof(sql),
             "BEGIN;"
             "INSERT INTO keys VALUES (7, '%s', 'active', 2048, 'a', %d, 'n1', 'AQAB');"
             "INSERT INTO keys VALUES (3, '%s', 'active', 3072, 'b', %d, 'n2', 'AQAB');"
             "INSERT INTO keys VALUES (5, '%s', 'revoked', 2048, 'c', %d, 'n3', 'AQAB');"
             "INSERT INTO keys VALUES (9, '%s', 'broken', 4096, 'd', %d, 'n4', 'AQAB');"
             "INSERT INTO revocations (kid, revoked_at, reason) VALUES ('%s', %d, 'gone');"
             "PRAGMA user_version = 1;"
             "COMMIT;",
             hex[0], T0, hex[1], T0, hex[2], T0 - 10, hex[3], T0 - 20, hex[2], T0 + 1);
    raw_exec(t, sql);

    reg *r = open_ok(t, 10);
    assert_int_equal(raw_int(t, "PRAGMA user_version"), REG_SCHEMA_VERSION);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM pragma_table_info('keys')"
                                " WHERE name IN ('retire_at', 'successor', 'predecessor')"),
                     3);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM keys"), 4);
    assert_int_equal(raw_int(t, "SELECT sum(id) FROM keys"), 7 + 3 + 5 + 9);
    assert_int_equal(reg_count(r, REG_ACTIVE), 2);
    assert_int_equal(reg_count(r, REG_REVOKED), 1);
    assert_int_equal(reg_count(r, REG_BROKEN), 1);
    assert_int_equal(reg_count(r, REG_RETIRING), 0);
    reg_key got;
    assert_int_equal(reg_get(r, &k[1], &got), REG_OK);
    assert_int_equal(got.bits, 3072);
    assert_string_equal(got.label, "b");
    assert_string_equal(got.n_b64, "n2");
    assert_false(got.has_successor || got.has_predecessor || got.retire_at);
    assert_int_equal(reg_get(r, &k[2], &got), REG_OK);
    assert_int_equal(got.state, REG_REVOKED);
    assert_int_equal(got.revocation_seq, 1);
    assert_string_equal(got.reason, "gone");
    assert_int_equal(reg_newest_active(r, &got), REG_OK); /* same created_at: id 7 wins */
    assert_true(kid_eq(&got.kid, &k[0]));
    assert_int_equal(reg_revocation_seq(r), 1);

    /* The migrated file rotates, and the next revocation takes the next seq. */
    assert_int_equal(rotate(r, 1, 20, T0 + 5, T0 + 50, NULL, NULL), REG_OK);
    assert_int_equal(reg_revoke(r, &k[0], "rotated", T0 + 50, &got), REG_OK);
    assert_int_equal(got.revocation_seq, 2);
    reg_close(r);
    r = open_ok(t, 10); /* and opens again as a version-2 file */
    assert_int_equal(reg_count(r, REG_ACTIVE), 2);
    assert_int_equal(reg_count(r, REG_REVOKED), 2);
    reg_close(r);
    /* The keeper's read-only view reads the migrated file. */
    reg_reader *rr = NULL;
    assert_int_equal(reg_reader_open(t->db, &rr), REG_OK);
    assert_int_equal(reader_active(rr, &k[1]), 1);
    reg_reader_close(rr);
}

static void test_a_retiring_row_without_retire_at_or_successor_is_refused(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    add(r, 2, T0);
    reg_close(r);
    raw_exec(t, "UPDATE keys SET state = 'retiring' WHERE id = 1");
    r = NULL;
    assert_int_equal(reg_open(t->db, 10, &r), REG_ERR_IO);
    assert_null(r);
    assert_non_null(strstr(reg_last_error(), "retiring without retire_at or successor"));
    raw_exec(t, "UPDATE keys SET retire_at = 1, successor = 'zz' WHERE id = 1");
    assert_int_equal(reg_open(t->db, 10, &r), REG_ERR_IO);
    assert_non_null(strstr(reg_last_error(), "is not a kid"));
}

/* ---- the read-only view (reg_reader) ------------------------------------------------- */

static reg_reader *reader_ok(const testenv_db *t)
{
    reg_reader *rr = NULL;
    assert_int_equal(reg_reader_open(t->db, &rr), REG_OK);
    assert_non_null(rr);
    return rr;
}

static void test_reader_sees_only_active_kids_as_active(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    add(r, 2, T0);
    add(r, 3, T0);
    reg_reader *rr = reader_ok(t);
    sk_kid one = kid_of(1), two = kid_of(2), three = kid_of(3), unknown = kid_of(99);

    assert_int_equal(reader_active(rr, &one), 1);
    assert_int_equal(reader_active(rr, &two), 1);
    assert_int_equal(reader_active(rr, &three), 1);
    assert_int_equal(reader_active(rr, &unknown), 0);
    assert_int_equal(reader_active(rr, NULL), 0);
    assert_int_equal(reader_active(NULL, &one), 0);
    reg_reader_close(rr);
    reg_reader_close(NULL);
    reg_close(r);
}

static void test_reader_already_open_sees_each_committed_change_at_its_next_lookup(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    add(r, 2, T0);
    reg_reader *rr = reader_ok(t);
    sk_kid one = kid_of(1), two = kid_of(2), later = kid_of(3);
    assert_int_equal(reader_active(rr, &one), 1);
    assert_int_equal(reader_active(rr, &two), 1);
    assert_int_equal(reader_active(rr, &later), 0);

    assert_int_equal(reg_revoke(r, &one, "compromised", T0 + 1, NULL), REG_OK);
    assert_int_equal(reader_active(rr, &one), 0);
    assert_int_equal(reg_mark_broken(r, &two), REG_OK);
    assert_int_equal(reader_active(rr, &two), 0);
    add(r, 3, T0 + 2);
    assert_int_equal(reader_active(rr, &later), 1);
    assert_int_equal(reg_delete(r, &later), REG_OK);
    assert_int_equal(reader_active(rr, &later), 0);

    /* The writer gone, the reader still answers from the file. */
    reg_close(r);
    assert_int_equal(reader_active(rr, &one), 0);
    reg_reader_close(rr);
    rr = reader_ok(t);
    assert_int_equal(reader_active(rr, &one), 0);
    assert_int_equal(reader_active(rr, &two), 0);
    reg_reader_close(rr);
}

static void test_reader_fails_closed_when_the_lookup_cannot_run(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    reg_close(r);
    reg_reader *rr = reader_ok(t);
    sk_kid one = kid_of(1);
    assert_int_equal(reader_active(rr, &one), 1);
    raw_exec(t, "ALTER TABLE keys RENAME TO keys_gone");
    assert_int_equal(reader_active(rr, &one), 0);
    assert_string_not_equal(reg_last_error(), "");
    raw_exec(t, "ALTER TABLE keys_gone RENAME TO keys");
    assert_int_equal(reader_active(rr, &one), 1);
    /* A state this build does not know is not active either. */
    raw_exec(t, "UPDATE keys SET state = 'retiring'");
    assert_int_equal(reader_active(rr, &one), 0);
    reg_reader_close(rr);
}

static void test_reader_refuses_symlinks_missing_files_and_non_registries(void **state)
{
    testenv_db *t = *state;
    SQLITE_ONLY();
    reg_reader *rr = NULL;
    assert_int_equal(reg_reader_open(t->db, &rr), REG_ERR_IO); /* missing: never created */
    assert_null(rr);
    assert_int_equal(access(t->db, F_OK), -1);
    assert_int_equal(reg_reader_open(NULL, &rr), REG_ERR_INVALID);
    assert_int_equal(reg_reader_open(t->db, NULL), REG_ERR_INVALID);

    reg_close(open_ok(t, 10));
    char link[PATH_MAX + 16];
    snprintf(link, sizeof(link), "%s/link.db", t->dir);
    assert_int_equal(symlink(t->db, link), 0);
    assert_int_equal(reg_reader_open(link, &rr), REG_ERR_IO);
    assert_null(rr);
    assert_int_equal(reg_reader_open(t->dir, &rr), REG_ERR_IO); /* a directory */
    assert_null(rr);

    char junk[PATH_MAX + 16];
    snprintf(junk, sizeof(junk), "%s/junk.db", t->dir);
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("this is not an SQLite database, not even close to one.............\n", f);
    fclose(f);
    assert_int_equal(reg_reader_open(junk, &rr), REG_ERR_IO);
    assert_null(rr);
    assert_string_not_equal(reg_last_error(), "");

    raw_exec(t, "PRAGMA user_version = 99");
    assert_int_equal(reg_reader_open(t->db, &rr), REG_ERR_IO);
    assert_null(rr);
}

typedef struct {
    reg_reader *rr;
    atomic_int wrong;
} reader_race;

static void *reader_race_main(void *arg)
{
    reader_race *rc = arg;
    for (unsigned i = 0; i < 500; i++) {
        unsigned n = i % 20;
        sk_kid kid = kid_of(n);
        int want = n < 10 && n % 2 == 0; /* 0..9 inserted, the odd ones revoked */
        if (reader_active(rc->rr, &kid) != want)
            atomic_fetch_add(&rc->wrong, 1);
    }
    return NULL;
}

static void test_reader_answers_many_threads_at_once(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 20);
    for (unsigned n = 0; n < 10; n++)
        add(r, n, T0);
    for (unsigned n = 1; n < 10; n += 2) {
        sk_kid kid = kid_of(n);
        assert_int_equal(reg_revoke(r, &kid, "", T0, NULL), REG_OK);
    }
    reader_race rc = {.rr = reader_ok(t)};
    atomic_init(&rc.wrong, 0);
    pthread_t th[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_race_main, &rc), 0);
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&rc.wrong), 0);
    reg_reader_close(rc.rr);
    reg_close(r);
}

/* ---- subject revocations ------------------------------------------------------------------ */

static void test_subject_revocations_share_the_key_revocation_sequence_across_reopen(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    for (unsigned n = 1; n <= 2; n++)
        add(r, n, T0 + n);
    sk_kid k1 = kid_of(1), k2 = kid_of(2);
    reg_key a, c;
    reg_subject s;
    uint64_t gen = reg_generation(r);
    /* The first revocation of the file is a subject's: the counter starts with it. */
    assert_int_equal(reg_revoke_subject(r, "video-123", T0 + 5, T0 + 5, T0 - 3600, &s), REG_OK);
    assert_int_equal(s.seq, 1);
    assert_string_equal(s.sub, "video-123");
    assert_int_equal(s.before, T0 + 5);
    assert_true(reg_generation(r) != gen);
    assert_int_equal(reg_revoke(r, &k1, "one", T0 + 10, &a), REG_OK);
    assert_int_equal(a.revocation_seq, 2);
    assert_int_equal(reg_revocation_seq(r), 2);
    reg_close(r);
    r = open_ok(t, 10);
    assert_int_equal(reg_revocation_seq(r), 2);
    assert_int_equal(reg_revoke_subject(r, "video-9", T0 + 20, T0 + 20, T0 - 3600, &s), REG_OK);
    assert_int_equal(s.seq, 3);
    assert_int_equal(reg_revoke(r, &k2, "two", T0 + 21, &c), REG_OK);
    assert_int_equal(c.revocation_seq, 4); /* AUTOINCREMENT continues above the subject's */
    reg_subject live[4];
    assert_int_equal(reg_subjects_live(r, T0 - 3600, live, 4), 2);
    assert_int_equal(live[0].seq, 1);
    assert_int_equal(live[1].seq, 3);
    assert_int_equal(reg_subjects_after(r, 1, live, 4), 1);
    assert_string_equal(live[0].sub, "video-9");
    if (audit_checked())
        assert_int_equal(raw_int(t, "SELECT count(*) FROM audit WHERE action = 'subject.revoked'"),
                         2);
    reg_close(r);
}

static void
test_a_subject_revocation_past_its_horizon_leaves_the_live_list_and_the_file(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    reg_subject s, live[4];
    const int64_t ttl_max = 600;
    assert_int_equal(reg_revoke_subject(r, "old", T0, T0, T0 - ttl_max, &s), REG_OK);
    assert_int_equal(reg_subjects_live(r, T0 - ttl_max, live, 4), 1);
    /* At before + ttl_max no token it could match is alive: not listed any more. */
    assert_int_equal(reg_subjects_live(r, T0 + ttl_max - ttl_max - 1, live, 4), 1);
    assert_int_equal(reg_subjects_live(r, T0 + ttl_max - ttl_max, live, 4), 0);
    /* The next revocation removes the row from the file too; its seq is not reused. */
    assert_int_equal(reg_revoke_subject(r, "new", T0 + ttl_max, T0 + ttl_max, T0, &s), REG_OK);
    assert_int_equal(s.seq, 2);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM subject_revocations"), 1);
    assert_int_equal(reg_subjects_live(r, T0, live, 4), 1);
    assert_string_equal(live[0].sub, "new");
    reg_close(r);
    r = open_ok(t, 10);
    assert_int_equal(reg_revocation_seq(r), 2);
    assert_int_equal(reg_subjects_after(r, 0, live, 4), 1);
    reg_close(r);
}

static void test_a_subject_that_is_empty_or_too_long_is_refused_and_changes_nothing(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    char longest[REG_SUB_MAX + 2];
    memset(longest, 's', sizeof(longest));
    longest[REG_SUB_MAX + 1] = '\0';
    assert_int_equal(reg_revoke_subject(r, longest, T0, T0, 0, NULL), REG_ERR_INVALID);
    assert_int_equal(reg_revoke_subject(r, "", T0, T0, 0, NULL), REG_ERR_INVALID);
    assert_int_equal(reg_revoke_subject(r, NULL, T0, T0, 0, NULL), REG_ERR_INVALID);
    assert_int_equal(reg_revocation_seq(r), 0);
    longest[REG_SUB_MAX] = '\0';
    assert_int_equal(reg_revoke_subject(r, longest, T0, T0, 0, NULL), REG_OK);
    reg_close(r);
}

/* ---- cluster: two handles on one database play two nodes ---------------------------- */

#define NODE_THREADS 3         /* per node */
#define NODE_CREATES 40        /* attempts per thread: 240 in all */
#define CLUSTER_MAX_ACTIVE 100 /* each node's local count alone would let 200 through */
#define CLUSTER_REVOKES 60     /* keys revoked, half by each node, with subjects between */

typedef struct {
    reg *r;
    unsigned base; /* kid numbers of this thread: base, base + 1, ... */
    int made, refused, failed;
} node_worker;

/* A create as core/keys.c makes one: the local slot, the cluster-wide pending record
 * (where the limit is decided), then the row. */
static void *node_creator(void *arg)
{
    node_worker *w = arg;
    for (unsigned i = 0; i < NODE_CREATES; i++) {
        reg_key k = key_of(w->base + i, T0 + (int64_t)i);
        if (reg_reserve(w->r) != REG_OK) {
            w->refused++;
            continue;
        }
        reg_status st = reg_pending_add(w->r, &k.kid, T0);
        if (st != REG_OK) {
            reg_unreserve(w->r);
            if (st == REG_ERR_LIMIT)
                w->refused++;
            else
                w->failed++;
            continue;
        }
        if (reg_insert(w->r, &k) == REG_OK)
            w->made++;
        else
            w->failed++;
    }
    return NULL;
}

static void test_the_key_limit_holds_across_two_nodes_creating_at_once(void **state)
{
    testenv_db *t = *state;
    reg *a = open_ok(t, CLUSTER_MAX_ACTIVE), *b = open_ok(t, CLUSTER_MAX_ACTIVE);
    assert_int_equal(reg_set_node(a, "node-a"), REG_OK);
    assert_int_equal(reg_set_node(b, "node-b"), REG_OK);
    node_worker w[2 * NODE_THREADS];
    pthread_t th[2 * NODE_THREADS];
    for (int i = 0; i < 2 * NODE_THREADS; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        w[i].r = i % 2 ? b : a;
        w[i].base = 1000u * (unsigned)(i + 1);
        assert_int_equal(pthread_create(&th[i], NULL, node_creator, &w[i]), 0);
    }
    int made = 0, refused = 0, failed = 0;
    for (int i = 0; i < 2 * NODE_THREADS; i++) {
        pthread_join(th[i], NULL);
        made += w[i].made;
        refused += w[i].refused;
        failed += w[i].failed;
    }
    assert_int_equal(failed, 0);
    assert_int_equal(made, CLUSTER_MAX_ACTIVE);
    assert_int_equal(refused, 2 * NODE_THREADS * NODE_CREATES - CLUSTER_MAX_ACTIVE);
    /* Each node's mirror holds its own creates only, until it refreshes. */
    assert_int_equal(reg_count(a, REG_ACTIVE) + reg_count(b, REG_ACTIVE), CLUSTER_MAX_ACTIVE);
    assert_int_equal(reg_refresh(a), REG_OK);
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_equal(reg_count(a, REG_ACTIVE), CLUSTER_MAX_ACTIVE);
    assert_int_equal(reg_count(b, REG_ACTIVE), CLUSTER_MAX_ACTIVE);
    assert_int_equal(reg_reserve(a), REG_ERR_LIMIT);

    /* Full: a node whose mirror lags still meets the limit in the database. Revoking on
     * one node frees a slot for a create on the other. */
    reg_close(b);
    b = open_ok(t, CLUSTER_MAX_ACTIVE);
    reg_key list[CLUSTER_MAX_ACTIVE];
    assert_int_equal(reg_list(a, REG_ACTIVE, list, CLUSTER_MAX_ACTIVE), CLUSTER_MAX_ACTIVE);
    assert_int_equal(reg_revoke(a, &list[0].kid, "freed", T0 + 9, NULL), REG_OK);
    sk_kid late = kid_of(90000), later = kid_of(90001);
    assert_int_equal(reg_pending_add(b, &late, T0), REG_OK); /* b's mirror: full */
    assert_int_equal(reg_pending_add(a, &later, T0), REG_ERR_LIMIT);
    reg_key k = key_of(90000, T0 + 10);
    assert_int_equal(reg_reserve(b), REG_ERR_LIMIT); /* b's pre-check: still full */
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_equal(reg_reserve(b), REG_OK);
    assert_int_equal(reg_insert(b, &k), REG_OK);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM keys WHERE state = 'active'"),
                     CLUSTER_MAX_ACTIVE);
    reg_close(a);
    reg_close(b);
}

typedef struct {
    reg *r;
    const sk_kid *kids; /* this worker revokes kids[i] for i = first, first + 2, ... */
    unsigned first, n;
    uint64_t seqs[CLUSTER_REVOKES + CLUSTER_REVOKES / 3 + 2];
    size_t n_seqs;
    int failed;
} revoker;

static void *node_revoker(void *arg)
{
    revoker *w = arg;
    char sub[32];
    for (unsigned i = w->first; i < w->n; i += 2) {
        reg_key k;
        if (reg_revoke(w->r, &w->kids[i], "cluster", T0 + 5, &k) != REG_OK) {
            w->failed++;
            continue;
        }
        w->seqs[w->n_seqs++] = k.revocation_seq;
        if (i % 3 == 0) {
            reg_subject s;
            snprintf(sub, sizeof(sub), "video-%u", i);
            if (reg_revoke_subject(w->r, sub, T0 + 5, T0 + 5, 0, &s) != REG_OK)
                w->failed++;
            else
                w->seqs[w->n_seqs++] = s.seq;
        }
    }
    return NULL;
}

static int seq_cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static void
test_two_nodes_revoking_at_once_share_one_sequence_without_gap_or_duplicate(void **state)
{
    testenv_db *t = *state;
    reg *a = open_ok(t, 1000), *b = open_ok(t, 1000);
    sk_kid kids[CLUSTER_REVOKES];
    for (unsigned i = 0; i < CLUSTER_REVOKES; i++) {
        add(a, i + 1, T0);
        kids[i] = kid_of(i + 1);
    }
    /* b has not refreshed: the keys it revokes are unknown to its mirror at first. */
    revoker wa, wb;
    memset(&wa, 0, sizeof(wa));
    memset(&wb, 0, sizeof(wb));
    wa.r = a;
    wb.r = b;
    wa.kids = wb.kids = kids;
    wa.n = wb.n = CLUSTER_REVOKES;
    wb.first = 1;
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, node_revoker, &wa), 0);
    assert_int_equal(pthread_create(&tb, NULL, node_revoker, &wb), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(wa.failed, 0);
    assert_int_equal(wb.failed, 0);

    /* What the two nodes were handed: 1..n, each once. */
    uint64_t all[2 * (CLUSTER_REVOKES + CLUSTER_REVOKES / 3 + 2)];
    size_t n = 0;
    for (size_t i = 0; i < wa.n_seqs; i++)
        all[n++] = wa.seqs[i];
    for (size_t i = 0; i < wb.n_seqs; i++)
        all[n++] = wb.seqs[i];
    qsort(all, n, sizeof(*all), seq_cmp);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(all[i], i + 1);
    /* And what the database holds: the same. */
    assert_int_equal(raw_int(t, "SELECT count(*) FROM (SELECT seq FROM revocations UNION ALL"
                                " SELECT seq FROM subject_revocations) AS u"),
                     (int64_t)n);
    assert_int_equal(raw_int(t, "SELECT max(seq) FROM (SELECT seq FROM revocations UNION ALL"
                                " SELECT seq FROM subject_revocations) AS u"),
                     (int64_t)n);
    /* Every node's mirror, refreshed, lists all of them in order. */
    assert_int_equal(reg_refresh(a), REG_OK);
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_equal(reg_revocation_seq(a), n);
    assert_int_equal(reg_revocation_seq(b), n);
    reg_revocation revs[CLUSTER_REVOKES];
    assert_int_equal(reg_revocations_after(b, 0, revs, CLUSTER_REVOKES), CLUSTER_REVOKES);
    for (size_t i = 1; i < CLUSTER_REVOKES; i++)
        assert_true(revs[i].seq > revs[i - 1].seq);
    /* Revoking again on the other node is idempotent across nodes: the first record. */
    reg_key k1, k2;
    assert_int_equal(reg_get(a, &kids[1], &k1), REG_OK);
    assert_int_equal(reg_revoke(a, &kids[1], "again", T0 + 50, &k2), REG_OK);
    assert_int_equal(k2.revocation_seq, k1.revocation_seq);
    reg_close(a);
    reg_close(b);
}

static void
test_refresh_on_another_node_sees_inserts_and_revocations_and_moves_the_generation(void **state)
{
    testenv_db *t = *state;
    reg *a = open_ok(t, 10), *b = open_ok(t, 10);
    sk_kid one = kid_of(1), two = kid_of(2);
    uint64_t gen = reg_generation(b);
    /* Nothing changed: no move. */
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_equal(reg_generation(b), gen);

    add(a, 1, T0);
    assert_int_equal(reg_get(b, &one, NULL), REG_ERR_NOT_FOUND);
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_not_equal(reg_generation(b), gen);
    assert_true(reg_is_active(b, &one));
    reg_key k;
    assert_int_equal(reg_newest_active(b, &k), REG_OK);
    assert_true(kid_eq(&k.kid, &one));
    gen = reg_generation(b);

    add(a, 2, T0 + 1);
    assert_int_equal(reg_revoke(a, &one, "stolen", T0 + 2, NULL), REG_OK);
    reg_subject s;
    assert_int_equal(reg_revoke_subject(a, "video-9", T0 + 2, T0 + 2, 0, &s), REG_OK);
    assert_true(reg_is_active(b, &one)); /* b's mirror until it refreshes */
    /* The watcher's path: a note (PostgreSQL) or data_version (SQLite) says so. */
    for (int i = 0; i < 200 && reg_generation(b) == gen; i++) {
        assert_int_equal(reg_refresh_if_changed(b), REG_OK);
        usleep(10000);
    }
    assert_int_not_equal(reg_generation(b), gen);
    assert_false(reg_is_active(b, &one));
    assert_true(reg_is_active(b, &two));
    assert_int_equal(reg_get(b, &one, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    assert_string_equal(k.reason, "stolen");
    assert_int_equal(reg_revocation_seq(b), 2);
    assert_int_equal(reg_subject_revokes(b, "video-9", T0), 1);
    assert_int_equal(reg_count(b, REG_ACTIVE), 1);
    /* Quiet again: reg_refresh_if_changed leaves the generation alone. */
    gen = reg_generation(b);
    assert_int_equal(reg_refresh_if_changed(b), REG_OK);
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_equal(reg_generation(b), gen);

    /* A waiter on b is woken by the refresh that brings a's change. */
    add(a, 3, T0 + 3);
    assert_int_equal(reg_refresh(b), REG_OK);
    assert_int_not_equal(reg_wait_change(b, gen, 1), gen);

    /* A node's write on a key its mirror does not know yet (another node made it). */
    sk_kid three = kid_of(3);
    reg_close(b);
    b = open_ok(t, 10);
    add(a, 4, T0 + 4);
    sk_kid four = kid_of(4);
    assert_int_equal(reg_mark_broken(b, &four), REG_OK);
    assert_int_equal(reg_revoke(b, &three, "", T0 + 5, &k), REG_OK);
    assert_int_equal(k.revocation_seq, 3);
    /* And one whose state moved under it: a still thinks four is active. */
    assert_int_equal(reg_delete(a, &four), REG_OK); /* broken rows may be deleted */
    assert_int_equal(reg_get(a, &four, NULL), REG_ERR_NOT_FOUND);
    reg_close(a);
    reg_close(b);
}

/* PostgreSQL: a write on a kid the mirror does not hold refreshes the mirror; when the
 * database cannot be read for it, the write answers that (REG_ERR_IO: 503), never "no such
 * key" (a revoke through the balancer of a key another node had just made answered 404
 * after the database's restart, test_cluster_faults.py). Stops and starts the server. */
static void test_a_write_that_cannot_refresh_is_no_not_found(void **state)
{
    if (!testenv_backend_is_postgres())
        skip();
    testenv_db *t = *state;
    reg *a = open_ok(t, 10), *b = open_ok(t, 10);
    add(a, 5, T0);
    sk_kid five = kid_of(5);
    assert_int_equal(testdb_pg_stop(), 0);
    reg_status st = reg_revoke(b, &five, "", T0 + 1, NULL);
    assert_int_not_equal(st, REG_ERR_NOT_FOUND);
    assert_int_not_equal(st, REG_OK);
    assert_int_not_equal(reg_mark_broken(b, &five), REG_ERR_NOT_FOUND);
    assert_int_equal(testdb_pg_start(), 0);
    reg_key k;
    assert_int_equal(reg_revoke(b, &five, "", T0 + 2, &k), REG_OK);
    assert_int_equal(k.state, REG_REVOKED);
    reg_close(a);
    reg_close(b);
}

static void test_another_nodes_pending_record_is_no_orphan_until_old(void **state)
{
    testenv_db *t = *state;
    reg *a = open_ok(t, 10), *b = open_ok(t, 10);
    assert_int_equal(reg_set_node(a, "node-a"), REG_OK);
    assert_int_equal(reg_set_node(b, "node-b"), REG_OK);
    sk_kid making = kid_of(1), made = kid_of(2), nothing = kid_of(3);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

    assert_int_equal(reg_pending_add(a, &making, T0), REG_OK);
    add(a, 2, T0);
    /* A create under way on a: neither node may destroy its object. */
    assert_int_equal(reg_kid_orphan(b, &making, now_ms), REG_ERR_EXISTS);
    assert_int_equal(reg_kid_orphan(a, &making, now_ms), REG_ERR_EXISTS);
    assert_int_equal(reg_kid_orphan(b, &making, now_ms + REG_PENDING_ORPHAN_MS / 2),
                     REG_ERR_EXISTS);
    /* A row claims its kid; no row and no record is an orphan. */
    assert_int_equal(reg_kid_orphan(b, &made, now_ms), REG_ERR_EXISTS);
    assert_int_equal(reg_kid_orphan(b, &nothing, now_ms), REG_OK);
    /* Past the bound the record is a dead create's, on any node. */
    assert_int_equal(reg_kid_orphan(b, &making, now_ms + REG_PENDING_ORPHAN_MS + 60000), REG_OK);
    /* A restarted node a: its own record from before its start is a dead create too. */
    usleep(5000);
    reg *a2 = open_ok(t, 10);
    assert_int_equal(reg_set_node(a2, "node-a"), REG_OK);
    assert_int_equal(reg_kid_orphan(a2, &making, now_ms + 5), REG_OK);
    /* Bad names are refused. */
    assert_int_equal(reg_set_node(a, "has space"), REG_ERR_INVALID);
    char longname[REG_NODE_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(reg_set_node(a, longname), REG_ERR_INVALID);
    assert_int_equal(reg_set_node(a, ""), REG_OK); /* back to the host's name */
    reg_close(a2);
    reg_close(a);
    reg_close(b);
}

static void test_the_keepers_reader_sees_another_nodes_changes(void **state)
{
    testenv_db *t = *state;
    reg *a = open_ok(t, 10), *b = open_ok(t, 10);
    add(a, 1, T0);
    reg_reader *rr = reader_ok(t);
    sk_kid one = kid_of(1), two = kid_of(2);
    uint64_t v = reg_reader_data_version(rr);
    assert_int_not_equal(v, 0);
    assert_int_equal(reader_active(rr, &one), 1);
    assert_int_equal(reg_reader_data_version(rr), v); /* nothing new */

    add(b, 2, T0 + 1); /* the other node */
    uint64_t w = v;
    for (int i = 0; i < 200 && (w = reg_reader_data_version(rr)) == v; i++)
        usleep(5000); /* a note travels through the server */
    assert_int_not_equal(w, v);
    assert_int_equal(reader_active(rr, &two), 1);
    assert_int_equal(reg_reader_pending(rr, &two), REG_ERR_EXISTS);

    assert_int_equal(reg_revoke(b, &one, "", T0 + 2, NULL), REG_OK);
    v = w;
    for (int i = 0; i < 200 && (w = reg_reader_data_version(rr)) == v; i++)
        usleep(5000);
    assert_int_not_equal(w, v);
    assert_int_equal(reader_active(rr, &one), 0);
    reg_reader_close(rr);
    reg_close(a);
    reg_close(b);
}

/* ---- token attributes (issue 21) ----------------------------------------------------------- */

static void test_token_attributes_are_stored_with_the_key_and_recorded_once(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    const sk_attrs weak = SK_ATTR_READ | SK_ATTR_SENSITIVE | SK_ATTR_NEVER_EXTRACTABLE;
    const sk_attrs full = weak | SK_ATTR_SIGN_ONLY;
    reg_key k = key_of(1, T0);
    k.token_attrs = weak;
    assert_int_equal(reg_reserve(r), REG_OK);
    assert_int_equal(reg_insert(r, &k), REG_OK);
    add(r, 2, T0 + 1); /* made before the attributes were read: none */
    reg_key got;
    assert_int_equal(reg_get(r, &k.kid, &got), REG_OK);
    assert_int_equal(got.token_attrs, weak);
    sk_kid two = kid_of(2);
    assert_int_equal(reg_get(r, &two, &got), REG_OK);
    assert_int_equal(got.token_attrs, 0);

    /* Recorded later (reconcile), once: the first read stands. */
    uint64_t gen = reg_generation(r);
    assert_int_equal(reg_set_token_attrs(r, &two, full), REG_OK);
    assert_int_not_equal(reg_generation(r), gen);
    assert_int_equal(reg_set_token_attrs(r, &two, weak), REG_OK);
    assert_int_equal(reg_get(r, &two, &got), REG_OK);
    assert_int_equal(got.token_attrs, full);
    assert_int_equal(reg_set_token_attrs(r, &k.kid, full), REG_OK);
    assert_int_equal(reg_get(r, &k.kid, &got), REG_OK);
    assert_int_equal(got.token_attrs, weak);

    /* Not an attribute set, or no such kid. */
    sk_kid none = kid_of(99);
    assert_int_equal(reg_set_token_attrs(r, &two, 0), REG_ERR_INVALID);
    assert_int_equal(reg_set_token_attrs(r, &two, SK_ATTR_SENSITIVE), REG_ERR_INVALID);
    assert_int_equal(reg_set_token_attrs(r, &two, full | 0x80), REG_ERR_INVALID);
    assert_int_equal(reg_set_token_attrs(r, &none, full), REG_ERR_NOT_FOUND);
    reg_close(r);

    r = open_ok(t, 10);
    assert_int_equal(reg_get(r, &k.kid, &got), REG_OK);
    assert_int_equal(got.token_attrs, weak);
    assert_int_equal(reg_get(r, &two, &got), REG_OK);
    assert_int_equal(got.token_attrs, full);
    assert_int_equal(raw_int(t, "SELECT count(*) FROM keys WHERE token_attrs IS NULL"), 0);
    reg_close(r);
}

/* A database an older build made has no token_attrs column: opening adds it, NULL for
 * every key (read as none), and a stored value other than an attribute set is refused. */
static void test_a_database_without_token_attrs_gets_the_column_and_none_for_old_keys(void **state)
{
    testenv_db *t = *state;
    reg *r = open_ok(t, 10);
    add(r, 1, T0);
    reg_close(r);
    raw_exec(t, "ALTER TABLE keys DROP COLUMN token_attrs");
    assert_int_equal(raw_int(t, testenv_backend_is_postgres()
                                    ? "SELECT count(*) FROM information_schema.columns"
                                      " WHERE table_name = 'keys' AND column_name = 'token_attrs'"
                                    : "SELECT count(*) FROM pragma_table_info('keys')"
                                      " WHERE name = 'token_attrs'"),
                     0);
    r = open_ok(t, 10);
    sk_kid one = kid_of(1);
    reg_key got;
    assert_int_equal(reg_get(r, &one, &got), REG_OK);
    assert_int_equal(got.token_attrs, 0);
    assert_int_equal(reg_set_token_attrs(r, &one, SK_ATTR_READ | SK_ATTR_SENSITIVE), REG_OK);
    reg_close(r);

    raw_exec(t, "UPDATE keys SET token_attrs = 64");
    reg *bad = NULL;
    assert_int_equal(reg_open(t->db, 10, &bad), REG_ERR_IO);
    assert_null(bad);
    assert_non_null(strstr(reg_last_error(), "token_attrs"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, testenv_db_setup, testenv_db_teardown)
        T(test_inserted_keys_are_active_and_listed_by_created_at_then_kid),
        T(test_token_attributes_are_stored_with_the_key_and_recorded_once),
        T(test_a_database_without_token_attrs_gets_the_column_and_none_for_old_keys),
        T(test_reserve_refuses_past_max_active_and_unreserve_frees_a_slot),
        T(test_duplicate_insert_is_refused_and_gives_its_slot_back),
        T(test_insert_without_a_reservation_still_honours_the_limit),
        T(test_thousand_concurrent_creates_fill_exactly_max_active),
        T(test_revocation_survives_close_and_reopen),
        T(test_a_kid_is_pending_until_its_row_is_written_and_never_once_it_has_one),
        T(test_revocation_seq_rises_across_reopen_and_is_never_reused),
        T(test_revoke_is_idempotent_and_returns_first_record),
        T(test_revoking_an_unknown_kid_is_not_found_and_changes_nothing),
        T(test_revoking_an_active_key_frees_its_slot),
        T(test_revocations_after_returns_later_entries_ascending),
        T(test_mark_broken_moves_only_active_keys_and_broken_keys_can_be_revoked),
        T(test_newest_active_falls_back_to_the_previous_newest),
        T(test_newest_active_breaks_created_at_ties_by_insertion_order),
        T(test_delete_removes_an_unrevoked_row_and_frees_its_slot),
        T(test_generation_moves_on_every_change_and_only_then),
        T(test_non_sqlite_file_fails_with_io_error_and_a_message),
        T(test_newer_schema_version_is_refused),
        T(test_revoked_row_without_revocation_record_is_refused),
        T(test_file_is_created_private_and_a_symlink_or_directory_is_refused),
        T(test_bad_arguments_are_refused),
        T(test_state_names_round_trip),
        T(test_open_loads_ten_thousand_rows),
        T(test_rotate_makes_the_successor_active_and_the_old_key_retiring_in_one_change),
        T(test_a_rotation_the_database_refuses_leaves_neither_half_and_refreshes),
        T(test_retiring_keys_hold_their_slot_so_rotating_at_the_limit_is_refused),
        T(test_a_retiring_key_is_never_the_newest_active),
        T(test_only_an_active_key_rotates_and_retiring_moves_to_revoked_or_broken),
        T(test_retiring_due_names_the_overdue_keys_and_the_next_retire_at),
        T(test_a_version_1_file_is_migrated_in_place_and_keeps_every_row),
        T(test_a_retiring_row_without_retire_at_or_successor_is_refused),
        T(test_reader_sees_only_active_kids_as_active),
        T(test_reader_already_open_sees_each_committed_change_at_its_next_lookup),
        T(test_reader_fails_closed_when_the_lookup_cannot_run),
        T(test_reader_refuses_symlinks_missing_files_and_non_registries),
        T(test_reader_answers_many_threads_at_once),
        T(test_subject_revocations_share_the_key_revocation_sequence_across_reopen),
        T(test_a_subject_revocation_past_its_horizon_leaves_the_live_list_and_the_file),
        T(test_a_subject_that_is_empty_or_too_long_is_refused_and_changes_nothing),
        T(test_the_key_limit_holds_across_two_nodes_creating_at_once),
        T(test_two_nodes_revoking_at_once_share_one_sequence_without_gap_or_duplicate),
        T(test_refresh_on_another_node_sees_inserts_and_revocations_and_moves_the_generation),
        T(test_another_nodes_pending_record_is_no_orphan_until_old),
        T(test_the_keepers_reader_sees_another_nodes_changes),
        /* last: it stops and starts the PostgreSQL server */
        T(test_a_write_that_cannot_refresh_is_no_not_found),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
