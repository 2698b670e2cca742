/*
 * test_tokstate: status lists and redeemed jtis on a real SQLite file in a fresh temporary
 * directory per test. Durability is checked by closing and reopening; the audit events by
 * reading the audit table back with SQLite.
 */
#include "appliance/store/tokstate.h"

#include "appliance/core/audit.h"
#include "appliance/store/sdb.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/unit/testenv.h"

#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T0 1700000000
#define KID "00112233445566778899aabbccddeeff"
#define RACERS 16
#define BATCH_THREADS 8
#define BATCH_EACH 25

static tks *open_ok(const testenv_db *d)
{
    tks *t = NULL;
    assert_int_equal(tks_open(d->db, &t), TKS_OK);
    assert_non_null(t);
    return t;
}

/* Rows of the audit table with this action (and this actor, when not NULL). */
static int audit_rows(const testenv_db *d, const char *action, const char *actor)
{
    return (int)testenv_sql_int(d->db,
                                "SELECT count(*) FROM audit WHERE action = ?1 "
                                "AND (?2 IS NULL OR actor = ?2)",
                                2, action, actor);
}

static int bit_of(const uint8_t *bits, uint32_t idx)
{
    return (bits[idx / 8] >> (idx % 8)) & 1;
}

/* ---- status indexes ------------------------------------------------------------------ */

static void test_indexes_are_handed_out_in_order_from_list_zero(void **state)
{
    tks *t = open_ok(*state);
    assert_int_equal(tks_list_count(t), 0);
    for (uint32_t i = 0; i < 3 * TKS_BLOCK + 5; i++) {
        tks_index ix;
        assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
        assert_int_equal(ix.list, 0);
        assert_int_equal(ix.idx, i);
    }
    assert_int_equal(tks_list_count(t), 1);
    tks_close(t);
}

static void test_a_restart_skips_the_rest_of_the_reserved_block(void **state)
{
    tks *t = open_ok(*state);
    tks_index ix;
    for (int i = 0; i < 10; i++)
        assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    tks_close(t); /* as a crash would: the block's unused 1014 indexes are unknown later */
    t = open_ok(*state);
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(ix.list, 0);
    assert_int_equal(ix.idx, TKS_BLOCK);
    tks_close(t);
}

static void test_the_next_block_is_reserved_once_half_of_one_is_handed_out(void **state)
{
    tks *t = open_ok(*state);
    tks_index ix;
    for (uint32_t i = 0; i < TKS_BLOCK / 2; i++)
        assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    tks_close(t); /* reserved ahead by the mint that crossed the half: two blocks */
    t = open_ok(*state);
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(ix.idx, 2 * TKS_BLOCK);
    tks_close(t);
}

#define ASSIGNERS 8
#define ASSIGN_EACH 3000

static void *assign_many(void *arg)
{
    tks_index *out = ((void **)arg)[1];
    tks *t = ((void **)arg)[0];
    for (int i = 0; i < ASSIGN_EACH; i++)
        if (tks_assign(t, T0, T0 + 600, &out[i]) != TKS_OK)
            out[i].list = UINT32_MAX;
    return NULL;
}

#define NODE_ASSIGNERS 4 /* per node */
#define NODE_ASSIGN_EACH 2500

static void *assign_many_n(void *arg)
{
    tks_index *out = ((void **)arg)[1];
    tks *t = ((void **)arg)[0];
    for (int i = 0; i < NODE_ASSIGN_EACH; i++)
        if (tks_assign(t, T0, T0 + 600, &out[i]) != TKS_OK)
            out[i].list = UINT32_MAX;
    return NULL;
}

static int ix_cmp(const void *a, const void *b)
{
    const tks_index *x = a, *y = b;
    return x->list != y->list ? (x->list < y->list ? -1 : 1)
                              : (x->idx < y->idx ? -1 : x->idx > y->idx);
}

static void test_concurrent_mints_get_distinct_indexes_across_reservations(void **state)
{
    tks *t = open_ok(*state);
    tks_index *all = calloc(ASSIGNERS * ASSIGN_EACH, sizeof(*all));
    assert_non_null(all);
    pthread_t th[ASSIGNERS];
    void *args[ASSIGNERS][2];
    for (int i = 0; i < ASSIGNERS; i++) {
        args[i][0] = t;
        args[i][1] = all + i * ASSIGN_EACH;
        assert_int_equal(pthread_create(&th[i], NULL, assign_many, args[i]), 0);
    }
    for (int i = 0; i < ASSIGNERS; i++)
        pthread_join(th[i], NULL);
    qsort(all, ASSIGNERS * ASSIGN_EACH, sizeof(*all), ix_cmp);
    /* Every index from 0 up, once each: nothing lost or given twice while blocks were
     * reserved ahead with the lock released. */
    for (uint32_t i = 0; i < ASSIGNERS * ASSIGN_EACH; i++) {
        assert_int_equal(all[i].list, 0);
        assert_int_equal(all[i].idx, i);
    }
    free(all);
    tks_close(t);
}

static void test_a_full_list_opens_the_next_one(void **state)
{
    tks *t = open_ok(*state);
    tks_index ix;
    for (uint32_t i = 0; i < TKS_LIST_SIZE; i++)
        assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(ix.list, 0);
    assert_int_equal(ix.idx, TKS_LIST_SIZE - 1);
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(ix.list, 1);
    assert_int_equal(ix.idx, 0);
    assert_int_equal(tks_list_count(t), 2);
    tks_close(t);
    t = open_ok(*state);
    assert_int_equal(tks_list_count(t), 2);
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(ix.list, 1);
    assert_int_equal(ix.idx, TKS_BLOCK);
    tks_close(t);
}

/* ---- token revocation ---------------------------------------------------------------- */

static void test_a_revoked_index_is_set_durably_and_its_sibling_is_not(void **state)
{
    tks *t = open_ok(*state);
    tks_index a, b;
    assert_int_equal(tks_assign(t, T0, T0 + 600, &a), TKS_OK);
    assert_int_equal(tks_assign(t, T0, T0 + 600, &b), TKS_OK);
    uint64_t gen = tks_generation(t);
    tks_revocation r;
    chn_set_actor("0123456789abcdef");
    assert_int_equal(tks_revoke(t, b, "jti-b", KID, T0, &r), TKS_OK);
    chn_set_actor(NULL);
    assert_int_equal(r.seq, 1);
    assert_true(tks_generation(t) != gen);
    assert_true(tks_is_revoked(t, b));
    assert_false(tks_is_revoked(t, a));
    tks_close(t);

    t = open_ok(*state);
    assert_true(tks_is_revoked(t, b));
    assert_false(tks_is_revoked(t, a));
    static uint8_t bits[TKS_LIST_BYTES];
    uint32_t reserved;
    uint64_t revoked;
    assert_int_equal(tks_list_copy(t, 0, bits, &reserved, &revoked), TKS_OK);
    assert_int_equal(revoked, 1);
    assert_int_equal(reserved, TKS_BLOCK);
    for (uint32_t i = 0; i < 16; i++)
        assert_int_equal(bit_of(bits, i), i == b.idx);
    assert_int_equal(bits[0], 0x02); /* index 1 is the second bit from the least significant */
    assert_int_equal(tks_seq(t), 1);
    tks_close(t);
    assert_int_equal(audit_rows(*state, "token.revoked", "0123456789abcdef"), 1);
}

static void test_revoking_twice_returns_the_first_revocation(void **state)
{
    tks *t = open_ok(*state);
    tks_index ix;
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    tks_revocation first, again;
    assert_int_equal(tks_revoke(t, ix, "jti-1", KID, T0, &first), TKS_OK);
    assert_int_equal(tks_revoke(t, ix, "jti-1", KID, T0 + 9, &again), TKS_ERR_REVOKED);
    assert_int_equal(again.seq, first.seq);
    assert_int_equal(again.revoked_at, T0);
    assert_int_equal(tks_seq(t), first.seq);
    tks_close(t);
    assert_int_equal(audit_rows(*state, "token.revoked", NULL), 1);
}

static void test_an_index_never_handed_out_cannot_be_revoked(void **state)
{
    tks *t = open_ok(*state);
    tks_index ix;
    assert_int_equal(tks_revoke(t, (tks_index){0, 0}, "j", NULL, T0, NULL), TKS_ERR_NOT_FOUND);
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(tks_revoke(t, (tks_index){0, TKS_BLOCK}, "j", NULL, T0, NULL),
                     TKS_ERR_NOT_ISSUED);
    assert_int_equal(tks_revoke(t, (tks_index){1, 0}, "j", NULL, T0, NULL), TKS_ERR_NOT_FOUND);
    assert_int_equal(tks_revoke(t, ix, "bad jti", NULL, T0, NULL), TKS_ERR_INVALID);
    assert_int_equal(tks_revoke(t, ix, "j", "NOTHEX", T0, NULL), TKS_ERR_INVALID);
    assert_int_equal(tks_seq(t), 0);
    tks_close(t);
}

static void test_revocations_after_a_seq_come_oldest_first(void **state)
{
    tks *t = open_ok(*state);
    tks_index ix[5];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(tks_assign(t, T0, T0 + 600, &ix[i]), TKS_OK);
        char jti[16];
        snprintf(jti, sizeof(jti), "j%d", i);
        assert_int_equal(tks_revoke(t, ix[i], jti, NULL, T0 + i, NULL), TKS_OK);
    }
    tks_revocation out[8];
    assert_int_equal(tks_revocations_after(t, 2, out, 8), 3);
    assert_int_equal(out[0].seq, 3);
    assert_string_equal(out[0].jti, "j2");
    assert_int_equal(out[2].seq, 5);
    assert_int_equal(tks_revocations_after(t, 0, out, 2), 2);
    assert_int_equal(out[1].seq, 2);
    assert_int_equal(tks_revocations_after(t, 5, out, 8), 0);
    tks_close(t);
}

static void test_a_bad_row_in_the_file_refuses_to_open(void **state)
{
    /* Writes the SQLite file behind the store's back. */
    if (testenv_backend_is_postgres())
        skip();
    const testenv_db *d = *state;
    tks *t = open_ok(d);
    tks_index ix;
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    tks_close(t);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE token_lists SET reserved = 7", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(tks_open(d->db, &t), TKS_ERR_IO);
    assert_null(t);
    assert_non_null(strstr(tks_last_error(), "token_lists"));
}

/* ---- redeemed jtis ------------------------------------------------------------------- */

static void test_a_jti_is_redeemed_once_per_key_also_after_a_restart(void **state)
{
    tks *t = open_ok(*state);
    chn_set_actor("fedcba9876543210");
    assert_int_equal(tks_redeem(t, "upload-1", T0 + 60, KID, T0), TKS_OK);
    assert_int_equal(tks_redeem(t, "upload-1", T0 + 60, KID, T0 + 1), TKS_ERR_USED);
    chn_set_actor(NULL);
    assert_string_equal(chn_actor(), CHN_SYSTEM); /* the caller's actor is restored */
    tks_close(t);
    t = open_ok(*state);
    assert_int_equal(tks_redeem(t, "upload-1", T0 + 60, KID, T0 + 2), TKS_ERR_USED);
    assert_int_equal(tks_redeem(t, "upload-2", T0 + 60, NULL, T0 + 2), TKS_OK);
    /* The same jti under another key is another token. */
    assert_int_equal(tks_redeem(t, "upload-1", T0 + 60, "ffeeddccbbaa99887766554433221100", T0),
                     TKS_OK);
    assert_int_equal(tks_redeem(t, "upload-1", T0 + 60, "ffeeddccbbaa99887766554433221100", T0),
                     TKS_ERR_USED);
    tks_close(t);
    assert_int_equal(audit_rows(*state, "token.redeemed", "fedcba9876543210"), 1);
    assert_int_equal(audit_rows(*state, "token.redeemed", NULL), 3);
}

static void test_bad_redeem_arguments_are_refused(void **state)
{
    tks *t = open_ok(*state);
    assert_int_equal(tks_redeem(t, "", T0 + 1, NULL, T0), TKS_ERR_INVALID);
    assert_int_equal(tks_redeem(t, "a/b", T0 + 1, NULL, T0), TKS_ERR_INVALID);
    char long_jti[TKS_JTI_MAX + 2];
    memset(long_jti, 'a', TKS_JTI_MAX + 1);
    long_jti[TKS_JTI_MAX + 1] = '\0';
    assert_int_equal(tks_redeem(t, long_jti, T0 + 1, NULL, T0), TKS_ERR_INVALID);
    long_jti[TKS_JTI_MAX] = '\0';
    assert_int_equal(tks_redeem(t, long_jti, T0 + 1, NULL, T0), TKS_OK);
    assert_int_equal(tks_redeem(t, "expired", T0 - 1, NULL, T0), TKS_ERR_INVALID);
    tks_close(t);
}

typedef struct {
    tks *t;
    const char *jti; /* NULL: a jti of its own per call */
    int id;
    atomic_int *ok, *used, *other;
    atomic_int *go;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    while (!atomic_load(r->go))
        sched_yield(); /* start together, so the redeems really overlap */
    int calls = r->jti != NULL ? 1 : BATCH_EACH;
    for (int i = 0; i < calls; i++) {
        char own[32];
        snprintf(own, sizeof(own), "t%d-%d", r->id, i);
        tks_status st = tks_redeem(r->t, r->jti ? r->jti : own, T0 + 600, NULL, T0);
        atomic_fetch_add(st == TKS_OK ? r->ok : st == TKS_ERR_USED ? r->used : r->other, 1);
    }
    return NULL;
}

static void run_racers(tks *t, const char *jti, int n, atomic_int *ok, atomic_int *used,
                       atomic_int *other)
{
    pthread_t th[RACERS];
    racer rs[RACERS];
    atomic_int go = 0;
    for (int i = 0; i < n; i++) {
        rs[i] = (racer){t, jti, i, ok, used, other, &go};
        assert_int_equal(pthread_create(&th[i], NULL, race, &rs[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void test_concurrent_redeems_of_one_jti_give_exactly_one_ok(void **state)
{
    tks *t = open_ok(*state);
    atomic_int ok = 0, used = 0, other = 0;
    run_racers(t, "one-shot", RACERS, &ok, &used, &other);
    assert_int_equal(ok, 1);
    assert_int_equal(used, RACERS - 1);
    assert_int_equal(other, 0);
    tks_close(t);
    assert_int_equal(audit_rows(*state, "token.redeemed", NULL), 1);
}

static void test_concurrent_redeems_of_distinct_jtis_all_succeed(void **state)
{
    tks *t = open_ok(*state);
    atomic_int ok = 0, used = 0, other = 0;
    run_racers(t, NULL, BATCH_THREADS, &ok, &used, &other);
    assert_int_equal(ok, BATCH_THREADS * BATCH_EACH);
    assert_int_equal(used + other, 0);
    uint64_t n;
    assert_int_equal(tks_redeemed_count(t, &n), TKS_OK);
    assert_int_equal(n, BATCH_THREADS * BATCH_EACH);
    tks_close(t);
    assert_int_equal(audit_rows(*state, "token.redeemed", NULL), BATCH_THREADS * BATCH_EACH);
}

static void test_redeemed_jtis_are_pruned_after_their_exp(void **state)
{
    tks *t = open_ok(*state);
    assert_int_equal(tks_redeem(t, "short", T0 + 10, NULL, T0), TKS_OK);
    assert_int_equal(tks_redeem(t, "long", T0 + 10000, NULL, T0), TKS_OK);
    uint64_t deleted, n;
    assert_int_equal(tks_prune(t, T0 + 10 + TKS_PRUNE_SLACK, &deleted), TKS_OK);
    assert_int_equal(deleted, 0); /* kept through the slack */
    assert_int_equal(tks_prune(t, T0 + 11 + TKS_PRUNE_SLACK, &deleted), TKS_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(tks_redeemed_count(t, &n), TKS_OK);
    assert_int_equal(n, 1);
    /* Redeems prune on the side too, at most once a minute. */
    assert_int_equal(tks_redeem(t, "later", T0 + 20000, NULL, T0 + 10001 + TKS_PRUNE_SLACK),
                     TKS_OK);
    assert_int_equal(tks_redeemed_count(t, &n), TKS_OK);
    assert_int_equal(n, 1);
    tks_close(t);
}

static void test_a_revocable_jti_round_trips_and_survives_a_restart(void **state)
{
    const testenv_db *d = *state;
    tks *t = open_ok(d);
    tks_index ix = {3, 70000}, got;
    char jti[TKS_JTI_MAX + 1], bare[TKS_JTI_MAX + 1], owner[2 * TKS_OWNER_BYTES + 1];
    assert_int_equal(tks_jti_make(t, ix, "0123456789abcdef", jti), TKS_OK);
    assert_int_equal(strlen(jti), TKS_JTI_REVOCABLE_LEN);
    assert_true(tks_jti_ok(jti));
    assert_int_equal(tks_jti_make(t, ix, NULL, bare), TKS_OK);
    assert_string_not_equal(jti, bare);
    tks_close(t);
    /* The MAC key is in the file: the jti still reads after a restart. */
    t = open_ok(d);
    assert_int_equal(tks_jti_read(t, jti, &got, owner), TKS_OK);
    assert_int_equal(got.list, 3);
    assert_int_equal(got.idx, 70000);
    assert_string_equal(owner, "0123456789abcdef");
    assert_int_equal(tks_jti_read(t, bare, &got, owner), TKS_OK);
    assert_string_equal(owner, "");
    tks_close(t);
}

static void test_a_forged_or_foreign_jti_is_not_found(void **state)
{
    const testenv_db *d = *state;
    tks *t = open_ok(d);
    tks_index ix = {0, 5}, got;
    char jti[TKS_JTI_MAX + 1], owner[2 * TKS_OWNER_BYTES + 1];
    assert_int_equal(tks_jti_make(t, ix, "0123456789abcdef", jti), TKS_OK);
    /* Every single-character change (another index, another owner, another MAC). */
    for (size_t i = 1; i < TKS_JTI_REVOCABLE_LEN; i++) {
        char forged[TKS_JTI_MAX + 1];
        memcpy(forged, jti, sizeof(forged));
        forged[i] = forged[i] == 'A' ? 'B' : 'A';
        assert_int_equal(tks_jti_read(t, forged, &got, owner), TKS_ERR_NOT_FOUND);
    }
    assert_int_equal(tks_jti_read(t, "0123456789abcdef0123456789abcdef", &got, owner),
                     TKS_ERR_NOT_FOUND);
    assert_int_equal(tks_jti_read(t, "", &got, owner), TKS_ERR_INVALID);
    assert_int_equal(tks_jti_read(t, "r/../x", &got, owner), TKS_ERR_INVALID);
    assert_int_equal(tks_jti_make(t, ix, "0123", jti), TKS_ERR_INVALID);
    assert_int_equal(tks_jti_make(t, ix, "0123456789abcdeZ", jti), TKS_ERR_INVALID);
    tks_index bad = {TKS_LISTS_MAX, 0};
    assert_int_equal(tks_jti_make(t, bad, NULL, jti), TKS_ERR_INVALID);
    tks_close(t);
}

/* SQL on the file with a connection of its own (the state closed). */
static void raw_sql(const testenv_db *d, const char *sql)
{
    sdb *db = NULL;
    char err[256];
    sdb_status st = sdb_open(d->db, SDB_OPEN_CREATE, 5000, &db, err, sizeof(err));
    if (st == SDB_OK)
        st = sdb_exec(db, sql, "raw_sql", err, sizeof(err));
    if (st != SDB_OK)
        fprintf(stderr, "raw_sql: %s\n", err);
    sdb_close(db);
    assert_int_equal(st, SDB_OK);
}

/* Every one of the TKS_LISTS_MAX lists used up, as a billion revocable tokens would leave
 * them: each expiring at expires[i] (list 5 at e5, every other at e_rest), with a
 * revocation in list 5 (idx 7) and one in list 6 (idx 9). */
static void fill_every_list(const testenv_db *d, int64_t e5, int64_t e_rest)
{
    tks *t = open_ok(d); /* the schema */
    tks_close(t);
    size_t cap = 200 * TKS_LISTS_MAX + 512;
    char *sql = malloc(cap);
    assert_non_null(sql);
    size_t n = (size_t)snprintf(sql, cap, "BEGIN;");
    for (unsigned i = 0; i < TKS_LISTS_MAX; i++)
        n += (size_t)snprintf(sql + n, cap - n,
                              "INSERT INTO token_lists (list, reserved, expires) VALUES "
                              "(%u, %u, %lld);",
                              i, TKS_LIST_SIZE, (long long)(i == 5 ? e5 : e_rest));
    /* seq given: PostgreSQL's comes from the counter row, which follows. */
    snprintf(sql + n, cap - n,
             "INSERT INTO token_revocations (seq, list, idx, jti, kid, revoked_at) VALUES "
             "(1, 5, 7, 'old-5-7', '', %d), (2, 6, 9, 'old-6-9', '', %d);%s COMMIT;",
             T0 - 2000, T0 - 2000,
             testenv_backend_is_postgres()
                 ? " UPDATE token_counters SET value = 2 WHERE name = 'revocation_seq';"
                 : "");
    raw_sql(d, sql);
    free(sql);
}

static void test_a_status_list_whose_tokens_all_expired_is_reclaimed_instead_of_full(void **state)
{
    const testenv_db *d = *state;
    fill_every_list(d, T0 - 1000, T0 + 100000);
    tks *t = open_ok(d);
    assert_int_equal(tks_list_count(t), TKS_LISTS_MAX);
    tks_index old = {5, 7}, other = {6, 9}, ix;
    char old_jti[TKS_JTI_MAX + 1], jti[TKS_JTI_MAX + 1], owner[2 * TKS_OWNER_BYTES + 1];
    assert_int_equal(tks_jti_make(t, old, NULL, old_jti), TKS_OK);
    assert_true(tks_is_revoked(t, old) && tks_is_revoked(t, other));
    uint64_t gen = tks_generation(t), version = tks_list_revoked(t, 5);
    assert_int_equal(version, 1);

    /* Every list is used up, list 5's tokens all expired: it is the one reused. */
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(ix.list, 5);
    assert_int_equal(ix.idx, 0);
    assert_false(tks_is_revoked(t, old));
    assert_true(tks_is_revoked(t, other));
    assert_int_not_equal(tks_generation(t), gen);
    tks_revocation revs[4];
    assert_int_equal(tks_revocations_after(t, 0, revs, 4), 1);
    assert_int_equal(revs[0].ix.list, 6);
    /* An expired token's jti no longer names the index a new token holds. */
    tks_index got;
    assert_int_equal(tks_jti_read(t, old_jti, &got, owner), TKS_ERR_NOT_FOUND);
    assert_int_equal(tks_jti_make(t, ix, NULL, jti), TKS_OK);
    assert_int_equal(tks_jti_read(t, jti, &got, owner), TKS_OK);
    assert_true(got.list == ix.list && got.idx == ix.idx);
    assert_int_equal(tks_revoke(t, ix, jti, NULL, T0, NULL), TKS_OK);
    /* One revocation again, but not the list signed before the reclaim: another version. */
    assert_int_not_equal(tks_list_revoked(t, 5), version);
    assert_true(tks_list_revoked(t, 5) > version);
    tks_index next;
    assert_int_equal(tks_assign(t, T0, T0 + 600, &next), TKS_OK);
    assert_true(next.list == 5 && next.idx == 1);
    tks_close(t);

    /* All of it durable. */
    t = open_ok(d);
    assert_true(tks_is_revoked(t, ix));
    assert_false(tks_is_revoked(t, old));
    assert_int_equal(tks_jti_read(t, old_jti, &got, owner), TKS_ERR_NOT_FOUND);
    assert_int_equal(tks_jti_read(t, jti, &got, owner), TKS_OK);
    tks_close(t);
}

static void
test_with_every_list_used_up_and_none_expired_assign_is_full_until_one_expires(void **state)
{
    const testenv_db *d = *state;
    fill_every_list(d, T0 + 100000, T0 + 200000);
    tks *t = open_ok(d);
    tks_index ix;
    assert_int_equal(tks_assign(t, T0, T0 + 600, &ix), TKS_ERR_FULL);
    /* Within the 5 minutes' leeway after list 5's last token expired: still full. */
    assert_int_equal(tks_assign(t, T0 + 100000 + 10, T0 + 100600, &ix), TKS_ERR_FULL);
    assert_int_equal(tks_assign(t, T0 + 100000 + 301, T0 + 100901, &ix), TKS_OK);
    assert_int_equal(ix.list, 5);
    /* A token that outlives what the list recorded pushes its expiry (durably) before it
     * gets an index, so the list is not reclaimed under it. */
    assert_int_equal(tks_assign(t, T0 + 100000 + 301, T0 + 900000, &ix), TKS_OK);
    tks_close(t);
    assert_true(testenv_sql_int(d->db, "SELECT expires FROM token_lists WHERE list = 5", 0) >=
                T0 + 900000);
}

/* A file from before lists were reclaimed: its lists get an expiry no old token can
 * outlive, and epoch 0 (their jtis stay valid). */
static void test_a_file_from_before_reclaiming_keeps_its_lists_and_jtis(void **state)
{
    /* Writes the SQLite file behind the store's back. */
    if (testenv_backend_is_postgres())
        skip();
    const testenv_db *d = *state;
    raw_sql(d, "CREATE TABLE token_lists (list INTEGER PRIMARY KEY, reserved INTEGER NOT NULL);"
               "INSERT INTO token_lists VALUES (0, 2048);");
    tks *t = open_ok(d);
    tks_index ix = {0, 3}, got;
    char jti[TKS_JTI_MAX + 1], owner[2 * TKS_OWNER_BYTES + 1];
    assert_int_equal(tks_jti_make(t, ix, NULL, jti), TKS_OK);
    assert_int_equal(tks_jti_read(t, jti, &got, owner), TKS_OK);
    assert_int_equal(tks_revoke(t, ix, jti, NULL, T0, NULL), TKS_OK);
    tks_close(t);
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(d->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT expires, epoch FROM token_lists WHERE list = 0",
                                        -1, &s, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_true(sqlite3_column_int64(s, 0) > (sqlite3_int64)time(NULL) + 365 * 86400);
    assert_int_equal(sqlite3_column_int64(s, 1), 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
}

/* ---- two nodes on one database -------------------------------------------------------- */

#define NODE_REDEEMERS 50

typedef struct {
    tks *t;
    atomic_int *go, *ok, *used, *other;
} node_racer;

static void *node_redeem(void *arg)
{
    node_racer *r = arg;
    while (!atomic_load(r->go))
        sched_yield();
    tks_status st = tks_redeem(r->t, "cluster-once", T0 + 600, KID, T0);
    atomic_fetch_add(st == TKS_OK ? r->ok : st == TKS_ERR_USED ? r->used : r->other, 1);
    return NULL;
}

static void test_two_nodes_redeem_one_jti_exactly_once(void **state)
{
    const testenv_db *d = *state;
    tks *a = open_ok(d), *b = open_ok(d);
    atomic_int go = 0, ok = 0, used = 0, other = 0;
    pthread_t th[NODE_REDEEMERS];
    node_racer rs[NODE_REDEEMERS];
    for (int i = 0; i < NODE_REDEEMERS; i++) {
        rs[i] = (node_racer){i % 2 ? a : b, &go, &ok, &used, &other};
        assert_int_equal(pthread_create(&th[i], NULL, node_redeem, &rs[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < NODE_REDEEMERS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(other, 0);
    assert_int_equal(ok, 1);
    assert_int_equal(used, NODE_REDEEMERS - 1);
    /* Also on a node opened afterwards (a restart). */
    tks_close(a);
    a = open_ok(d);
    assert_int_equal(tks_redeem(a, "cluster-once", T0 + 600, KID, T0 + 1), TKS_ERR_USED);
    tks_close(a);
    tks_close(b);
}

static void test_two_nodes_never_hand_out_one_index_twice(void **state)
{
    const testenv_db *d = *state;
    tks *nodes[2] = {open_ok(d), open_ok(d)};
    size_t total = 2 * NODE_ASSIGNERS * NODE_ASSIGN_EACH;
    tks_index *all = calloc(total, sizeof(*all));
    assert_non_null(all);
    pthread_t th[2 * NODE_ASSIGNERS];
    void *args[2 * NODE_ASSIGNERS][2];
    for (int i = 0; i < 2 * NODE_ASSIGNERS; i++) {
        args[i][0] = nodes[i % 2];
        args[i][1] = all + (size_t)i * NODE_ASSIGN_EACH;
        assert_int_equal(pthread_create(&th[i], NULL, assign_many_n, args[i]), 0);
    }
    for (int i = 0; i < 2 * NODE_ASSIGNERS; i++)
        pthread_join(th[i], NULL);
    qsort(all, total, sizeof(*all), ix_cmp);
    for (size_t i = 0; i < total; i++) {
        assert_int_not_equal(all[i].list, UINT32_MAX);
        if (i > 0)
            assert_true(ix_cmp(&all[i - 1], &all[i]) < 0); /* no index twice */
    }
    /* Each node's indexes come from whole blocks of its own: at most two blocks per node
     * are left unused, nothing more is skipped. */
    assert_int_equal(all[0].list, 0);
    assert_true(all[total - 1].idx < total + 4 * TKS_BLOCK);
    /* And a third node, opened now, starts above everything reserved. */
    tks *c = open_ok(d);
    tks_index ix;
    assert_int_equal(tks_assign(c, T0, T0 + 600, &ix), TKS_OK);
    assert_true(ix.idx > all[total - 1].idx);
    tks_close(c);
    free(all);
    tks_close(nodes[0]);
    tks_close(nodes[1]);
}

static void test_a_token_revoked_on_one_node_is_set_on_another_after_refresh(void **state)
{
    const testenv_db *d = *state;
    tks *a = open_ok(d), *b = open_ok(d);
    tks_index ix, other;
    assert_int_equal(tks_assign(a, T0, T0 + 600, &ix), TKS_OK);
    assert_int_equal(tks_assign(b, T0, T0 + 600, &other), TKS_OK);
    assert_true(ix.list != other.list || ix.idx != other.idx);
    assert_int_equal(tks_refresh(b), TKS_OK);
    uint64_t gen = tks_generation(b), count = tks_list_revoked(b, ix.list);
    /* Nothing differs: the generation stays. */
    assert_int_equal(tks_refresh(b), TKS_OK);
    assert_int_equal(tks_generation(b), gen);

    tks_revocation r;
    assert_int_equal(tks_revoke(a, ix, "jti-a", KID, T0, &r), TKS_OK);
    assert_false(tks_is_revoked(b, ix)); /* not before the refresh */
    assert_int_equal(tks_refresh(b), TKS_OK);
    assert_true(tks_is_revoked(b, ix));
    assert_false(tks_is_revoked(b, other));
    assert_int_not_equal(tks_generation(b), gen);
    assert_int_equal(tks_list_revoked(b, ix.list), count + 1); /* the publication's version */
    static uint8_t bits[TKS_LIST_BYTES];
    assert_int_equal(tks_list_copy(b, ix.list, bits, NULL, NULL), TKS_OK);
    assert_int_equal(bit_of(bits, ix.idx), 1);
    tks_revocation seen[4];
    assert_int_equal(tks_revocations_after(b, 0, seen, 4), 1);
    assert_int_equal(seen[0].seq, r.seq);
    assert_string_equal(seen[0].jti, "jti-a");

    /* B revokes A's token again: refused with A's revocation, though B never refreshed
     * since; and B revokes its own: the next seq, no gap. */
    assert_int_equal(tks_revoke(b, ix, "jti-a", KID, T0 + 5, &seen[1]), TKS_ERR_REVOKED);
    assert_int_equal(seen[1].seq, r.seq);
    tks_index late;
    assert_int_equal(tks_assign(a, T0, T0 + 600, &late), TKS_OK);
    /* An index another node handed out is revocable here without a refresh first. */
    assert_int_equal(tks_revoke(b, late, "jti-late", NULL, T0, &seen[2]), TKS_OK);
    assert_int_equal(seen[2].seq, r.seq + 1);
    assert_int_equal(tks_revoke(a, other, "jti-b", NULL, T0, &seen[3]), TKS_OK);
    assert_int_equal(seen[3].seq, r.seq + 2);
    assert_int_equal(tks_refresh(b), TKS_OK);
    assert_int_equal(tks_seq(b), r.seq + 2);
    assert_int_equal(tks_revocations_after(b, r.seq, seen, 4), 2);
    assert_int_equal(seen[0].seq, r.seq + 1);
    assert_int_equal(seen[1].seq, r.seq + 2);
    tks_close(a);
    tks_close(b);
}

typedef struct {
    const char *db;
    atomic_int *go;
    tks *t;
} opener;

static void *open_at_once(void *arg)
{
    opener *o = arg;
    while (!atomic_load(o->go))
        sched_yield();
    if (tks_open(o->db, &o->t) != TKS_OK)
        o->t = NULL;
    return NULL;
}

#define OPENERS 6

static void test_nodes_opening_an_empty_database_at_once_share_one_jti_key(void **state)
{
    const testenv_db *d = *state;
    atomic_int go = 0;
    opener os[OPENERS];
    pthread_t th[OPENERS];
    for (int i = 0; i < OPENERS; i++) {
        os[i] = (opener){d->db, &go, NULL};
        assert_int_equal(pthread_create(&th[i], NULL, open_at_once, &os[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < OPENERS; i++)
        pthread_join(th[i], NULL);
    tks_index ix = {0, 17}, got;
    char first[TKS_JTI_MAX + 1], jti[TKS_JTI_MAX + 1], owner[2 * TKS_OWNER_BYTES + 1];
    for (int i = 0; i < OPENERS; i++) {
        assert_non_null(os[i].t);
        assert_int_equal(tks_jti_make(os[i].t, ix, "0123456789abcdef", jti), TKS_OK);
        if (i == 0)
            memcpy(first, jti, sizeof(first));
        assert_string_equal(jti, first); /* the same key: the same MAC */
        assert_int_equal(tks_jti_read(os[i].t, first, &got, owner), TKS_OK);
    }
    for (int i = 0; i < OPENERS; i++)
        tks_close(os[i].t);
}

#define T(name) cmocka_unit_test_setup_teardown(name, testenv_db_setup, testenv_db_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_indexes_are_handed_out_in_order_from_list_zero),
        T(test_a_restart_skips_the_rest_of_the_reserved_block),
        T(test_the_next_block_is_reserved_once_half_of_one_is_handed_out),
        T(test_concurrent_mints_get_distinct_indexes_across_reservations),
        T(test_a_full_list_opens_the_next_one),
        T(test_a_revoked_index_is_set_durably_and_its_sibling_is_not),
        T(test_revoking_twice_returns_the_first_revocation),
        T(test_an_index_never_handed_out_cannot_be_revoked),
        T(test_revocations_after_a_seq_come_oldest_first),
        T(test_a_bad_row_in_the_file_refuses_to_open),
        T(test_a_jti_is_redeemed_once_per_key_also_after_a_restart),
        T(test_bad_redeem_arguments_are_refused),
        T(test_concurrent_redeems_of_one_jti_give_exactly_one_ok),
        T(test_concurrent_redeems_of_distinct_jtis_all_succeed),
        T(test_redeemed_jtis_are_pruned_after_their_exp),
        T(test_a_revocable_jti_round_trips_and_survives_a_restart),
        T(test_a_status_list_whose_tokens_all_expired_is_reclaimed_instead_of_full),
        T(test_with_every_list_used_up_and_none_expired_assign_is_full_until_one_expires),
        T(test_a_file_from_before_reclaiming_keeps_its_lists_and_jtis),
        T(test_a_forged_or_foreign_jti_is_not_found),
        T(test_two_nodes_redeem_one_jti_exactly_once),
        T(test_two_nodes_never_hand_out_one_index_twice),
        T(test_a_token_revoked_on_one_node_is_set_on_another_after_refresh),
        T(test_nodes_opening_an_empty_database_at_once_share_one_jti_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
