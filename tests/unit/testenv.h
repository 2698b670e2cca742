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

/* A temporary directory for a database file: cmocka fixtures for registry-like tests.
 * testenv_db_setup makes /tmp/signd-db-XXXXXX and sets db to DIR/appliance.db;
 * testenv_db_teardown removes the directory and everything in it. */
typedef struct {
    char dir[64];
    char db[PATH_MAX];
} testenv_db;
int testenv_db_setup(void **state);
int testenv_db_teardown(void **state);

/* Removes dir and everything under it (no-op for NULL or ""). */
void testenv_cleanup(const char *dir);

/* The RSA public key (n, e) exported from the token as an OpenSSL key, so tests check
 * signatures with an implementation that is not ours. NULL on failure; EVP_PKEY_free it. */
EVP_PKEY *testenv_evp_from_pubkey(const sk_pubkey *pk);

#endif
