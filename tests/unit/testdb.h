/*
 * testdb: the database a unit test's store opens, on the backend the environment picks.
 *
 * SIGND_TEST_BACKEND unset (or "sqlite"): a file dir/appliance.db, as always.
 * SIGND_TEST_BACKEND=postgres: a fresh database on a PostgreSQL 15 server this test
 * process starts on first use (initdb into a temporary directory, Unix socket only) and
 * stops when it exits. PostgreSQL refuses to run as root, so the server runs as the
 * system user signd-pgtest (created once, under a lock, since suites run in parallel).
 *
 *   char db[SDB_LOCATOR_MAX];
 *   if (testdb_locator(dir, db, sizeof(db)) != 0) fail();
 *   ... reg_open(db, ...) ...
 */
#ifndef TESTS_UNIT_TESTDB_H
#define TESTS_UNIT_TESTDB_H

#include <stddef.h>

/* 1 when SIGND_TEST_BACKEND=postgres, else 0. */
int testdb_backend_is_postgres(void);

/* A fresh database's locator into out (cap bytes): SQLite "dir/appliance.db"; PostgreSQL
 * "postgresql:///t_<pid>_<n>?host=<socket dir>&user=signd-pgtest" (the server is started
 * on the first call). 0, or -1 (message on stderr). */
int testdb_locator(const char *dir, char *out, size_t cap);

/* A fresh PostgreSQL database whatever SIGND_TEST_BACKEND says (test_sdb runs on both). */
int testdb_pg_locator(char *out, size_t cap);

/* For fault tests: stops the server (pg_ctl stop -m fast; its clients' connections break)
 * and starts it again on the same data and socket. 0 or -1. */
int testdb_pg_stop(void);
int testdb_pg_start(void);

/* The server's socket directory, "" before the server started. */
const char *testdb_pg_socket_dir(void);

#endif
