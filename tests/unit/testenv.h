/*
 * testenv: what every C unit test needs around a real SoftHSM2 token. A fresh token in
 * a temporary directory (its own softhsm2.conf, token folder and 0600 PIN files, made by
 * prov_token_init, which also points SOFTHSM2_CONF of this process at it), an hsm_config
 * for it, random kids, and recursive clean-up.
 *
 * SoftHSM2 reads SOFTHSM2_CONF at C_Initialize only, and every hsm handle of a process
 * shares the one module: close the handle on one token before making the next.
 *
 *   char dir[PATH_MAX], pin[PATH_MAX];
 *   assert_int_equal(testenv_token(dir), 0);
 *   hsm_config cfg = testenv_config(dir, pin);
 *   ... hsm_open(&cfg, &h, NULL) ...
 *   testenv_cleanup(dir);
 */
#ifndef TESTS_UNIT_TESTENV_H
#define TESTS_UNIT_TESTENV_H

#include <openssl/evp.h>
#include "hsm/hsm.h"

#include "appliance/common/config.h"
#include "appliance/core/audit.h"
#include "appliance/core/keys.h"
#include "appliance/core/publish.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/registry.h"
#include "appliance/store/tokstate.h"

#include <limits.h>

#define TESTENV_LABEL "signd"

/* Makes a fresh directory /tmp/signd-test-XXXXXX holding an initialised token labelled
 * TESTENV_LABEL, writes its path to dir_out and returns 0; -1 (message on stderr) on
 * failure. */
int testenv_token(char dir_out[PATH_MAX]);

/* As testenv_token, and also returns the token's serial (16 characters). */
int testenv_token_serial(char dir_out[PATH_MAX], char serial_out[17]);

/* An hsm_config for the token in dir: default module, label TESTENV_LABEL, PIN file
 * dir/pin (its path written to pin_path, which must outlive the config). */
hsm_config testenv_config(const char *dir, char pin_path[PATH_MAX]);

/* 16 random bytes. */
void testenv_kid(sk_kid *kid);

/* 1 when the tests run on PostgreSQL (SIGND_TEST_BACKEND=postgres, see testdb.h): a test
 * that edits the SQLite file behind a store's back skips then. */
int testenv_backend_is_postgres(void);

/* A temporary directory and a database: cmocka fixtures for registry-like tests.
 * testenv_db_setup makes /tmp/signd-db-XXXXXX and sets db to the database's locator
 * (testdb_locator: DIR/appliance.db, or a fresh PostgreSQL database);
 * testenv_db_teardown removes the directory and everything in it. */
typedef struct {
    char dir[64];
    char db[PATH_MAX];
} testenv_db;
int testenv_db_setup(void **state);
int testenv_db_teardown(void **state);

/* The appliance's pieces below HTTP, on a fresh token: the in-process keeper (kp_open)
 * always, and the parts asked for, each on the one database db (testdb_locator: the SQLite
 * file dir/appliance.db, or a fresh PostgreSQL database). c is
 * cfg_defaults(dir); a test changes it after testenv_world_open (the publication handle
 * keeps &c, so the world stays where it was opened).
 *
 *   testenv_world w;
 *   assert_int_equal(testenv_world_open(&w, TESTENV_REG | TESTENV_TKS, NULL), 0);
 *   ... ck_create(&(ck_env){.reg = w.rg, .kp = w.k}, ...) ...
 *   testenv_world_close(&w);
 */
typedef enum {
    TESTENV_REG = 1u << 0,   /* rg: the registry, at c.max_active_keys */
    TESTENV_TKS = 1u << 1,   /* ts: token state */
    TESTENV_AUDIT = 1u << 2, /* au: the audit writer, with the options given */
    TESTENV_PUB = 1u << 3,   /* p: the publication handle (with TESTENV_REG and TESTENV_TKS) */
} testenv_part;

typedef struct {
    char dir[PATH_MAX];
    char pin[PATH_MAX];
    char db[PATH_MAX + 32];
    cfg c;
    kp *k;
    reg *rg;
    tks *ts;
    audit *au;
    pub *p;
    ck_env e; /* key lifecycle's view: reg, kp and (with TESTENV_PUB) pub */
} testenv_world;

/* Opens w with the parts (testenv_part bits); ao: the audit writer's options (with
 * TESTENV_AUDIT). 0; -1 (message on stderr, nothing left open or on disk) on failure. */
int testenv_world_open(testenv_world *w, unsigned parts, const audit_options *ao);

/* As testenv_world_open, on the heap, for a cmocka state: NULL on failure. */
testenv_world *testenv_world_new(unsigned parts, const audit_options *ao);

/* testenv_world_close, then frees w (NULL: nothing). */
void testenv_world_free(testenv_world *w);

/* Retries the deferred destroys first (reconcile's set is process-wide: nothing may leak
 * into the next test), then closes what is open and removes the directory. */
void testenv_world_close(testenv_world *w);

/* Whether kid's object is in the token k reaches: 1 or 0, -1 (message on stderr) when the
 * token cannot be listed. Looks at the first 64 objects, more than any test makes. */
int testenv_on_token(kp *k, const sk_kid *kid);

/* The first column of the first row of sql on a read-only connection of its own to the
 * database db (sdb, either backend), with ?1..?n bound to the n texts that follow (a NULL
 * text stays NULL). -1 (message on stderr) when the database, the statement or the row is
 * not there. */
long long testenv_sql_int(const char *db, const char *sql, int n, ...);

/* Runs sql (one or more statements, no rows) on a connection of its own to the database db
 * (either backend): what a test changes behind a store's back. 0, or -1 (message on
 * stderr). */
int testenv_sql_exec(const char *db, const char *sql);

/* Removes dir and everything under it (no-op for NULL or ""). */
void testenv_cleanup(const char *dir);

/* The RSA public key (n, e) exported from the token as an OpenSSL key, so tests check
 * signatures with an implementation that is not ours. NULL on failure; EVP_PKEY_free it. */
EVP_PKEY *testenv_evp_from_pubkey(const sk_pubkey *pk);

#endif
