/*
 * test_credentials: API credentials on a real SQLite file in a fresh temporary directory
 * per test. Durability is checked by closing and reopening; the file's bytes (and its
 * -wal) are read back to check that no secret ever reaches them.
 */
#include "appliance/store/credentials.h"
#include "appliance/store/registry.h"
#include "appliance/store/sdb.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/unit/testenv.h"

#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1700000000
#define RACE_READERS 8
#define RACE_ACTIVE 16
#define RACE_WRITES 40
#define RACE_MIN_AUTHS 500 /* per reader, also after the writer is done */

/* ---- helpers ------------------------------------------------------------------------- */

/* cred_create with its spec spelled out as arguments, to keep the cases one line each. */
static cred_status create_with(cred_store *cs, cred_role role, const char *label,
                               const sk_kid *kids, size_t n_kids, int all_kids, unsigned max_ttl,
                               int64_t now, char secret[CRED_SECRET_MAX], cred_record *out)
{
    cred_spec sp = {.role = role,
                    .label = label,
                    .kids = kids,
                    .n_kids = n_kids,
                    .all_kids = all_kids,
                    .max_ttl = max_ttl};
    return cred_create(cs, &sp, now, secret, out);
}

static cred_store *open_ok(const testenv_db *t)
{
    cred_store *cs = NULL;
    assert_int_equal(cred_open(t->db, &cs), CRED_OK);
    assert_non_null(cs);
    return cs;
}

/* A distinct kid per n. */
static sk_kid kid_of(unsigned n)
{
    sk_kid k;
    memset(k.b, 0x5a, sizeof(k.b));
    k.b[0] = (uint8_t)(n >> 8);
    k.b[1] = (uint8_t)n;
    return k;
}

static void create_ok(cred_store *cs, cred_role role, const sk_kid *kids, size_t n, int all_kids,
                      unsigned ttl, int64_t now, char secret[CRED_SECRET_MAX], cred_record *rec)
{
    assert_int_equal(create_with(cs, role, "test", kids, n, all_kids, ttl, now, secret, rec),
                     CRED_OK);
}

static void assert_same_record(const cred_record *a, const cred_record *b)
{
    assert_string_equal(a->id, b->id);
    assert_int_equal(a->role, b->role);
    assert_string_equal(a->label, b->label);
    assert_int_equal(a->all_kids, b->all_kids);
    assert_int_equal(a->n_kids, b->n_kids);
    assert_memory_equal(a->kids, b->kids, a->n_kids * sizeof(sk_kid));
    assert_int_equal(a->max_ttl, b->max_ttl);
    assert_int_equal(a->created_at, b->created_at);
    assert_int_equal(a->revoked_at, b->revoked_at);
    assert_string_equal(a->client_subject, b->client_subject);
}

/* The whole of a file, NUL-terminated (n bytes before it); "" when it does not exist. */
static char *slurp(const char *path, size_t *n)
{
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = calloc(1, (size_t)len + 1);
    assert_non_null(buf);
    *n = fread(buf, 1, (size_t)len, f);
    fclose(f);
    return buf;
}

/* Does needle occur in the database file, its -wal or its -shm? */
static int db_contains(const testenv_db *t, const char *needle)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    int found = 0;
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        char p[PATH_MAX + 8];
        snprintf(p, sizeof(p), "%s%s", t->db, suffixes[i]);
        size_t n;
        char *buf = slurp(p, &n);
        if (memmem(buf, n, needle, strlen(needle)) != NULL)
            found = 1;
        free(buf);
    }
    return found;
}

static void sha256_hex(const char *s, char hex[65])
{
    uint8_t md[32];
    unsigned int len = 0;
    assert_true(EVP_Digest(s, strlen(s), md, &len, EVP_sha256(), NULL));
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int is_b64url(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_created_secret_authenticates_and_returns_the_record(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    sk_kid kids[2] = {kid_of(1), kid_of(2)};
    char secret[CRED_SECRET_MAX];
    cred_record made, got;
    create_ok(cs, CRED_ROLE_SIGNER, kids, 2, 0, 600, T0, secret, &made);
    assert_int_equal(made.role, CRED_ROLE_SIGNER);
    assert_string_equal(made.label, "test");
    assert_int_equal(made.revoked_at, 0);

    memset(&got, 0, sizeof(got));
    assert_int_equal(cred_authenticate(cs, secret, strlen(secret), &got), CRED_OK);
    assert_same_record(&got, &made);
    assert_int_equal(got.n_kids, 2);
    assert_memory_equal(got.kids, kids, sizeof(kids));
    assert_int_equal(got.max_ttl, 600);
    assert_int_equal(cred_authenticate(cs, secret, strlen(secret), NULL), CRED_OK);

    assert_int_equal(cred_get(cs, made.id, &got), CRED_OK);
    assert_same_record(&got, &made);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_SIGNER), 1);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_ADMIN), 0);
    cred_close(cs);
}

static void test_altered_truncated_misprefixed_or_unknown_secrets_are_unknown(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    char secret[CRED_SECRET_MAX], bad[CRED_SECRET_MAX + 1];
    cred_record rec;
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, secret, &rec);
    size_t len = strlen(secret);

    /* one character changed, anywhere in the random part */
    for (size_t i = CRED_SECRET_LEN - CRED_RANDOM_B64; i < len; i++) {
        memcpy(bad, secret, sizeof(secret));
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        assert_int_equal(cred_authenticate(cs, bad, len, &rec), CRED_ERR_UNKNOWN);
    }
    /* truncated, or one character too many */
    assert_int_equal(cred_authenticate(cs, secret, len - 1, NULL), CRED_ERR_UNKNOWN);
    assert_int_equal(cred_authenticate(cs, secret, 0, NULL), CRED_ERR_UNKNOWN);
    snprintf(bad, sizeof(bad), "%sA", secret);
    assert_int_equal(cred_authenticate(cs, bad, len + 1, NULL), CRED_ERR_UNKNOWN);
    /* a wrong prefix */
    memcpy(bad, secret, sizeof(secret));
    memcpy(bad, "sgx_", 4);
    assert_int_equal(cred_authenticate(cs, bad, len, NULL), CRED_ERR_UNKNOWN);
    /* an unknown id with the right random part */
    memcpy(bad, secret, sizeof(secret));
    bad[CRED_PREFIX_LEN] = bad[CRED_PREFIX_LEN] == '0' ? '1' : '0';
    assert_int_equal(cred_authenticate(cs, bad, len, NULL), CRED_ERR_UNKNOWN);
    /* an uppercase id, NULL */
    memcpy(bad, secret, sizeof(secret));
    bad[CRED_PREFIX_LEN] = 'F';
    assert_int_equal(cred_authenticate(cs, bad, len, NULL), CRED_ERR_UNKNOWN);
    assert_int_equal(cred_authenticate(cs, NULL, len, NULL), CRED_ERR_UNKNOWN);
    /* and the real one still works */
    assert_int_equal(cred_authenticate(cs, secret, len, NULL), CRED_OK);
    cred_close(cs);
}

static void test_secret_has_the_documented_format_and_is_fresh_each_time(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    char a[CRED_SECRET_MAX], b[CRED_SECRET_MAX];
    cred_record ra, rb;
    create_ok(cs, CRED_ROLE_AUDITOR, NULL, 0, 0, 0, T0, a, &ra);
    create_ok(cs, CRED_ROLE_AUDITOR, NULL, 0, 0, 0, T0, b, &rb);
    const char *v[2] = {a, b};
    const cred_record *r[2] = {&ra, &rb};
    for (int k = 0; k < 2; k++) {
        const char *s = v[k];
        assert_int_equal(strlen(s), 64);
        assert_memory_equal(s, "sgd_", 4);
        for (int i = 4; i < 20; i++)
            assert_true(is_lower_hex(s[i]));
        assert_int_equal(s[20], '_');
        for (int i = 21; i < 64; i++)
            assert_true(is_b64url(s[i]));
        assert_memory_equal(s + 4, r[k]->id, 16);
        assert_int_equal(strlen(r[k]->id), 16);
    }
    assert_string_not_equal(a, b);
    assert_string_not_equal(a + 21, b + 21);
    assert_string_not_equal(ra.id, rb.id);
    cred_close(cs);
}

static void test_database_holds_the_hash_never_the_secret(void **state)
{
    /* Reads or writes the SQLite file behind the store's back. */
    if (testenv_backend_is_postgres())
        skip();
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    char secret[CRED_SECRET_MAX], hash[65];
    cred_record rec;
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, secret, &rec);
    sha256_hex(secret, hash);
    const char *random_part = secret + CRED_SECRET_LEN - CRED_RANDOM_B64;
    /* while open: the row is in the -wal */
    assert_false(db_contains(t, random_part));
    assert_true(db_contains(t, hash));
    cred_close(cs);
    /* closed: checkpointed into the database file */
    assert_false(db_contains(t, random_part));
    assert_true(db_contains(t, hash));
    assert_true(db_contains(t, rec.id));
}

static void test_revoked_credential_is_refused_and_revoke_is_idempotent(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    char secret[CRED_SECRET_MAX], other[CRED_SECRET_MAX];
    cred_record rec, first, again, got;
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, secret, &rec);
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, other, NULL);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_ADMIN), 2);

    assert_int_equal(cred_revoke(cs, rec.id, T0 + 10, &first), CRED_OK);
    assert_int_equal(first.revoked_at, T0 + 10);
    assert_int_equal(cred_authenticate(cs, secret, strlen(secret), &got), CRED_ERR_REVOKED);
    assert_string_equal(got.id, rec.id);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_ADMIN), 1);
    /* a wrong secret for a revoked id says nothing about its revocation */
    secret[CRED_SECRET_LEN - 1] = secret[CRED_SECRET_LEN - 1] == 'A' ? 'B' : 'A';
    assert_int_equal(cred_authenticate(cs, secret, strlen(secret), NULL), CRED_ERR_UNKNOWN);

    assert_int_equal(cred_revoke(cs, rec.id, T0 + 99, &again), CRED_OK);
    assert_same_record(&again, &first);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_ADMIN), 1);
    assert_int_equal(cred_authenticate(cs, other, strlen(other), NULL), CRED_OK);

    assert_int_equal(cred_revoke(cs, "0123456789abcdef", T0, NULL), CRED_ERR_NOT_FOUND);
    assert_int_equal(cred_revoke(cs, "not an id", T0, NULL), CRED_ERR_NOT_FOUND);
    assert_int_equal(cred_get(cs, "0123456789abcdef", NULL), CRED_ERR_NOT_FOUND);
    cred_close(cs);
}

static void test_everything_survives_close_and_reopen(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    sk_kid kids[CRED_KIDS_MAX];
    for (unsigned i = 0; i < CRED_KIDS_MAX; i++)
        kids[i] = kid_of(i);
    char s[4][CRED_SECRET_MAX];
    cred_record before[4], after[5];
    /* created out of time order: the list is by created_at */
    create_ok(cs, CRED_ROLE_SIGNER, kids, CRED_KIDS_MAX, 0, 300, T0 + 3, s[0], &before[0]);
    create_ok(cs, CRED_ROLE_SIGNER, NULL, 0, 1, 0, T0 + 1, s[1], &before[1]);
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0 + 2, s[2], &before[2]);
    create_ok(cs, CRED_ROLE_AUDITOR, NULL, 0, 0, 0, T0 + 2, s[3], &before[3]);
    assert_int_equal(cred_revoke(cs, before[2].id, T0 + 5, &before[2]), CRED_OK);
    cred_record expect[4] = {before[1], before[2], before[3], before[0]};
    assert_int_equal(cred_list(cs, after, 5), 4);
    for (int i = 0; i < 4; i++)
        assert_same_record(&after[i], &expect[i]);
    cred_close(cs);

    cs = open_ok(t);
    assert_int_equal(cred_list(cs, NULL, 0), 4);
    assert_int_equal(cred_list(cs, after, 2), 4);
    assert_int_equal(cred_list(cs, after, 5), 4);
    for (int i = 0; i < 4; i++)
        assert_same_record(&after[i], &expect[i]);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_SIGNER), 2);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_ADMIN), 0);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_AUDITOR), 1);
    cred_record got;
    assert_int_equal(cred_authenticate(cs, s[0], strlen(s[0]), &got), CRED_OK);
    assert_int_equal(got.n_kids, CRED_KIDS_MAX);
    assert_memory_equal(got.kids, kids, sizeof(kids));
    assert_int_equal(got.max_ttl, 300);
    assert_int_equal(cred_authenticate(cs, s[1], strlen(s[1]), &got), CRED_OK);
    assert_int_equal(got.all_kids, 1);
    assert_int_equal(cred_authenticate(cs, s[2], strlen(s[2]), NULL), CRED_ERR_REVOKED);
    assert_int_equal(cred_authenticate(cs, s[3], strlen(s[3]), NULL), CRED_OK);
    cred_close(cs);
}

static void test_client_subject_binding_is_kept_and_bounded(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    char secret[CRED_SECRET_MAX], too_long[CRED_SUBJECT_MAX + 2];
    cred_record rec, got;
    cred_spec sp = {.role = CRED_ROLE_SIGNER, .all_kids = 1, .client_subject = "CN=app1,O=Ex"};
    assert_int_equal(cred_create(cs, &sp, T0, secret, &rec), CRED_OK);
    assert_string_equal(rec.client_subject, "CN=app1,O=Ex");
    memset(too_long, 'a', sizeof(too_long) - 1);
    too_long[sizeof(too_long) - 1] = '\0';
    sp.client_subject = too_long;
    assert_int_equal(cred_create(cs, &sp, T0, secret, NULL), CRED_ERR_INVALID);
    sp.client_subject = "CN=line\nbreak";
    assert_int_equal(cred_create(cs, &sp, T0, secret, NULL), CRED_ERR_INVALID);
    cred_close(cs);

    cs = open_ok(t);
    assert_int_equal(cred_get(cs, rec.id, &got), CRED_OK);
    assert_string_equal(got.client_subject, "CN=app1,O=Ex");
    cred_close(cs);
}

static void test_may_use_kid_follows_all_kids_and_the_list(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    sk_kid listed[2] = {kid_of(7), kid_of(8)}, unlisted = kid_of(9);
    char secret[CRED_SECRET_MAX];
    cred_record some, all, admin;
    create_ok(cs, CRED_ROLE_SIGNER, listed, 2, 0, 0, T0, secret, &some);
    create_ok(cs, CRED_ROLE_SIGNER, NULL, 0, 1, 0, T0, secret, &all);
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, secret, &admin);
    assert_true(cred_may_use_kid(&some, &listed[0]));
    assert_true(cred_may_use_kid(&some, &listed[1]));
    assert_false(cred_may_use_kid(&some, &unlisted));
    assert_true(cred_may_use_kid(&all, &unlisted));
    assert_false(cred_may_use_kid(&admin, &unlisted));
    assert_false(cred_may_use_kid(NULL, &unlisted));
    assert_false(cred_may_use_kid(&all, NULL));
    assert_int_equal(cred_revoke(cs, all.id, T0 + 1, &all), CRED_OK);
    assert_false(cred_may_use_kid(&all, &unlisted));
    cred_close(cs);
}

static void test_invalid_role_label_or_kids_are_rejected(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    sk_kid kids[CRED_KIDS_MAX + 1];
    for (unsigned i = 0; i <= CRED_KIDS_MAX; i++)
        kids[i] = kid_of(i);
    char secret[CRED_SECRET_MAX];
    char long_label[CRED_LABEL_MAX + 2];
    memset(long_label, 'x', sizeof(long_label) - 1);
    long_label[sizeof(long_label) - 1] = '\0';
    sk_kid dup[2] = {kid_of(1), kid_of(1)};

    assert_int_equal(create_with(cs, CRED_ROLE_COUNT_, "x", NULL, 0, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_int_equal(create_with(cs, (cred_role)-1, "x", NULL, 0, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_string_equal(secret, "");
    assert_int_equal(create_with(cs, CRED_ROLE_ADMIN, long_label, NULL, 0, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_int_equal(create_with(cs, CRED_ROLE_ADMIN, "tab\there", NULL, 0, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_int_equal(
        create_with(cs, CRED_ROLE_ADMIN, "caf\xc3\xa9", NULL, 0, 0, 0, T0, secret, NULL),
        CRED_ERR_INVALID);
    assert_int_equal(
        create_with(cs, CRED_ROLE_SIGNER, "x", kids, CRED_KIDS_MAX + 1, 0, 0, T0, secret, NULL),
        CRED_ERR_INVALID);
    assert_int_equal(create_with(cs, CRED_ROLE_SIGNER, "x", NULL, 0, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID); /* a signer with nothing to sign with */
    assert_int_equal(create_with(cs, CRED_ROLE_SIGNER, "x", kids, 1, 1, 0, T0, secret, NULL),
                     CRED_ERR_INVALID); /* both a list and all_kids */
    assert_int_equal(create_with(cs, CRED_ROLE_SIGNER, "x", dup, 2, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_int_equal(create_with(cs, CRED_ROLE_ADMIN, "x", kids, 1, 0, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_int_equal(create_with(cs, CRED_ROLE_AUDITOR, "x", NULL, 0, 1, 0, T0, secret, NULL),
                     CRED_ERR_INVALID);
    assert_int_equal(cred_list(cs, NULL, 0), 0);

    /* the limits themselves are fine */
    long_label[CRED_LABEL_MAX] = '\0';
    assert_int_equal(
        create_with(cs, CRED_ROLE_SIGNER, long_label, kids, CRED_KIDS_MAX, 0, 0, T0, secret, NULL),
        CRED_OK);
    assert_int_equal(create_with(cs, CRED_ROLE_ADMIN, NULL, NULL, 0, 0, 0, T0, secret, NULL),
                     CRED_OK);

    cred_role r;
    assert_int_equal(cred_role_parse("signer", &r), 0);
    assert_int_equal(r, CRED_ROLE_SIGNER);
    assert_int_equal(cred_role_parse("root", &r), -1);
    assert_int_equal(cred_role_parse(NULL, &r), -1);
    assert_string_equal(cred_role_name(CRED_ROLE_AUDITOR), "auditor");
    assert_string_equal(cred_role_name((cred_role)42), "unknown");
    assert_string_equal(cred_strerror(CRED_ERR_REVOKED), "the credential is revoked");
    cred_close(cs);
}

static void test_shares_the_registry_file_without_touching_its_schema_version(void **state)
{
    /* Reads or writes the SQLite file behind the store's back. */
    if (testenv_backend_is_postgres())
        skip();
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    reg *r = NULL;
    assert_int_equal(reg_open(t->db, 10, &r), REG_OK);
    char secret[CRED_SECRET_MAX];
    create_ok(cs, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, secret, NULL);
    reg_close(r);
    cred_close(cs);

    cs = open_ok(t);
    assert_int_equal(cred_authenticate(cs, secret, strlen(secret), NULL), CRED_OK);
    cred_close(cs);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(t->db, &db), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), REG_SCHEMA_VERSION);
    sqlite3_finalize(s);
    sqlite3_close(db);
    assert_int_equal(reg_open(t->db, 10, &r), REG_OK);
    reg_close(r);
}

static void test_open_refuses_a_bad_path_and_a_file_that_is_not_sqlite(void **state)
{
    /* Reads or writes the SQLite file behind the store's back. */
    if (testenv_backend_is_postgres())
        skip();
    testenv_db *t = *state;
    cred_store *cs = (cred_store *)1;
    assert_int_equal(cred_open(NULL, &cs), CRED_ERR_INVALID);
    assert_null(cs);
    assert_int_equal(cred_open("", &cs), CRED_ERR_INVALID);
    FILE *f = fopen(t->db, "w");
    assert_non_null(f);
    fputs("this is not a database, and it is long enough to be read as a header......", f);
    fclose(f);
    assert_int_equal(cred_open(t->db, &cs), CRED_ERR_IO);
    assert_null(cs);
    assert_true(strstr(cred_last_error(), t->db) != NULL);
}

/* ---- concurrency --------------------------------------------------------------------- */

typedef struct {
    cred_store *cs;
    char (*secrets)[CRED_SECRET_MAX];
    atomic_int *done;
    atomic_int failures;
    atomic_long auths;
} race;

static void *race_reader(void *arg)
{
    race *rc = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;
    for (long n = 0; n < RACE_MIN_AUTHS || !atomic_load(rc->done); n++) {
        const char *s = rc->secrets[rand_r(&seed) % RACE_ACTIVE];
        cred_record rec;
        if (cred_authenticate(rc->cs, s, CRED_SECRET_LEN, &rec) != CRED_OK ||
            memcmp(rec.id, s + CRED_PREFIX_LEN, CRED_ID_LEN) != 0)
            atomic_fetch_add(&rc->failures, 1);
        atomic_fetch_add(&rc->auths, 1);
    }
    return NULL;
}

static void *race_writer(void *arg)
{
    race *rc = arg;
    for (int i = 0; i < RACE_WRITES; i++) {
        char secret[CRED_SECRET_MAX];
        cred_record rec;
        if (create_with(rc->cs, CRED_ROLE_SIGNER, "churn", NULL, 0, 1, 0, T0 + i, secret, &rec) !=
                CRED_OK ||
            cred_authenticate(rc->cs, secret, CRED_SECRET_LEN, NULL) != CRED_OK ||
            cred_revoke(rc->cs, rec.id, T0 + i, NULL) != CRED_OK ||
            cred_authenticate(rc->cs, secret, CRED_SECRET_LEN, NULL) != CRED_ERR_REVOKED)
            atomic_fetch_add(&rc->failures, 1);
    }
    atomic_store(rc->done, 1);
    return NULL;
}

static void test_concurrent_authentication_during_creates_and_revokes(void **state)
{
    testenv_db *t = *state;
    cred_store *cs = open_ok(t);
    char secrets[RACE_ACTIVE][CRED_SECRET_MAX];
    for (int i = 0; i < RACE_ACTIVE; i++)
        create_ok(cs, CRED_ROLE_SIGNER, NULL, 0, 1, 0, T0, secrets[i], NULL);
    atomic_int done = 0;
    race rc = {.cs = cs, .secrets = secrets, .done = &done};
    atomic_init(&rc.failures, 0);
    atomic_init(&rc.auths, 0);
    pthread_t readers[RACE_READERS], writer;
    for (int i = 0; i < RACE_READERS; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, race_reader, &rc), 0);
    assert_int_equal(pthread_create(&writer, NULL, race_writer, &rc), 0);
    pthread_join(writer, NULL);
    for (int i = 0; i < RACE_READERS; i++)
        pthread_join(readers[i], NULL);
    assert_int_equal(atomic_load(&rc.failures), 0);
    assert_true(atomic_load(&rc.auths) >= (long)RACE_READERS * RACE_MIN_AUTHS);
    assert_int_equal(cred_list(cs, NULL, 0), RACE_ACTIVE + RACE_WRITES);
    assert_int_equal(cred_count_active(cs, CRED_ROLE_SIGNER), RACE_ACTIVE);
    cred_close(cs);
}

/* ---- two nodes on one database ------------------------------------------------------- */

static void
test_a_credential_revoked_on_one_node_stops_authenticating_on_another_after_refresh(void **state)
{
    testenv_db *t = *state;
    cred_store *a = open_ok(t), *b = open_ok(t);
    char secret[CRED_SECRET_MAX], late[CRED_SECRET_MAX];
    cred_record rec, got;
    create_ok(a, CRED_ROLE_SIGNER, NULL, 0, 1, 0, T0, secret, &rec);
    /* Created on A: B knows it once it has refreshed. */
    assert_int_equal(cred_authenticate(b, secret, CRED_SECRET_LEN, NULL), CRED_ERR_UNKNOWN);
    assert_int_equal(cred_refresh(b), CRED_OK);
    assert_int_equal(cred_authenticate(b, secret, CRED_SECRET_LEN, &got), CRED_OK);
    assert_string_equal(got.id, rec.id);
    assert_int_equal(cred_count_active(b, CRED_ROLE_SIGNER), 1);

    /* Revoked on A: B's mirror still has it active until the refresh, then refuses it. */
    assert_int_equal(cred_revoke(a, rec.id, T0 + 5, NULL), CRED_OK);
    assert_int_equal(cred_authenticate(b, secret, CRED_SECRET_LEN, NULL), CRED_OK);
    assert_int_equal(cred_refresh(b), CRED_OK);
    assert_int_equal(cred_authenticate(b, secret, CRED_SECRET_LEN, &got), CRED_ERR_REVOKED);
    assert_int_equal(got.revoked_at, T0 + 5);
    assert_int_equal(cred_count_active(b, CRED_ROLE_SIGNER), 0);

    /* A revoke on a node that has not seen another's keeps the first revoked_at. */
    create_ok(b, CRED_ROLE_AUDITOR, NULL, 0, 0, 0, T0 + 6, late, &rec);
    assert_int_equal(cred_refresh(a), CRED_OK);
    assert_int_equal(cred_revoke(b, rec.id, T0 + 7, NULL), CRED_OK);
    assert_int_equal(cred_revoke(a, rec.id, T0 + 9, &got), CRED_OK);
    assert_int_equal(got.revoked_at, T0 + 7);
    assert_int_equal(cred_authenticate(a, late, CRED_SECRET_LEN, NULL), CRED_ERR_REVOKED);
    assert_int_equal(cred_list(a, NULL, 0), 2);
    cred_close(a);
    cred_close(b);
}

/* Two admins, each revoked on a node that has not seen the other's revocation: both
 * mirrors count two active admins, the database counts one, and it decides. */
static void
test_the_last_admin_cannot_be_revoked_even_from_a_node_that_has_not_seen_the_other(void **state)
{
    testenv_db *t = *state;
    cred_store *a = open_ok(t), *b = open_ok(t);
    char s1[CRED_SECRET_MAX], s2[CRED_SECRET_MAX];
    cred_record r1, r2, got;
    create_ok(a, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, s1, &r1);
    create_ok(a, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, s2, &r2);
    assert_int_equal(cred_refresh(b), CRED_OK);
    assert_int_equal(cred_revoke_keeping_an_admin(a, r1.id, T0 + 1, NULL), CRED_OK);
    assert_int_equal(cred_count_active(b, CRED_ROLE_ADMIN), 2); /* b is stale */
    assert_int_equal(cred_revoke_keeping_an_admin(b, r2.id, T0 + 2, NULL), CRED_ERR_LAST_ADMIN);
    /* Nothing changed: the second admin still authenticates, on both. */
    assert_int_equal(cred_authenticate(b, s2, CRED_SECRET_LEN, &got), CRED_OK);
    assert_int_equal(cred_refresh(a), CRED_OK);
    assert_int_equal(cred_authenticate(a, s2, CRED_SECRET_LEN, &got), CRED_OK);
    assert_int_equal(got.revoked_at, 0);
    cred_close(a);
    cred_close(b);
}

typedef struct {
    cred_store *cs;
    const char *secret;
    atomic_int *stop;
    atomic_int bad;
    atomic_long auths;
} refresh_race;

/* Authenticates a credential that stays active throughout: never refused, whatever the
 * refreshes swap in beneath. */
static void *refresh_reader(void *arg)
{
    refresh_race *r = arg;
    while (!atomic_load(r->stop)) {
        if (cred_authenticate(r->cs, r->secret, CRED_SECRET_LEN, NULL) != CRED_OK)
            atomic_fetch_add(&r->bad, 1);
        atomic_fetch_add(&r->auths, 1);
    }
    return NULL;
}

static void test_refresh_is_safe_beside_readers(void **state)
{
    testenv_db *t = *state;
    cred_store *a = open_ok(t), *b = open_ok(t);
    char keep[CRED_SECRET_MAX], secret[CRED_SECRET_MAX];
    create_ok(a, CRED_ROLE_ADMIN, NULL, 0, 0, 0, T0, keep, NULL);
    assert_int_equal(cred_refresh(b), CRED_OK);
    atomic_int stop = 0;
    refresh_race r = {.cs = b, .secret = keep, .stop = &stop};
    atomic_init(&r.bad, 0);
    atomic_init(&r.auths, 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, refresh_reader, &r), 0);
    for (int i = 0; i < 30; i++) {
        cred_record rec;
        create_ok(a, CRED_ROLE_SIGNER, NULL, 0, 1, 0, T0 + i, secret, &rec);
        assert_int_equal(cred_refresh(b), CRED_OK);
        assert_int_equal(cred_authenticate(b, secret, CRED_SECRET_LEN, NULL), CRED_OK);
        assert_int_equal(cred_revoke(a, rec.id, T0 + i, NULL), CRED_OK);
        assert_int_equal(cred_refresh(b), CRED_OK);
        assert_int_equal(cred_authenticate(b, secret, CRED_SECRET_LEN, NULL), CRED_ERR_REVOKED);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&r.bad), 0);
    assert_true(atomic_load(&r.auths) > 0);
    assert_int_equal(cred_list(b, NULL, 0), 31);
    assert_int_equal(cred_count_active(b, CRED_ROLE_ADMIN), 1);
    cred_close(a);
    cred_close(b);
}

#define T(name) cmocka_unit_test_setup_teardown(name, testenv_db_setup, testenv_db_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_created_secret_authenticates_and_returns_the_record),
        T(test_altered_truncated_misprefixed_or_unknown_secrets_are_unknown),
        T(test_secret_has_the_documented_format_and_is_fresh_each_time),
        T(test_database_holds_the_hash_never_the_secret),
        T(test_revoked_credential_is_refused_and_revoke_is_idempotent),
        T(test_everything_survives_close_and_reopen),
        T(test_may_use_kid_follows_all_kids_and_the_list),
        T(test_client_subject_binding_is_kept_and_bounded),
        T(test_invalid_role_label_or_kids_are_rejected),
        T(test_shares_the_registry_file_without_touching_its_schema_version),
        T(test_open_refuses_a_bad_path_and_a_file_that_is_not_sqlite),
        T(test_concurrent_authentication_during_creates_and_revokes),
        T(test_a_credential_revoked_on_one_node_stops_authenticating_on_another_after_refresh),
        T(test_the_last_admin_cannot_be_revoked_even_from_a_node_that_has_not_seen_the_other),
        T(test_refresh_is_safe_beside_readers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
