/*
 * lock: the one kind of read-write lock the project uses, writer-preferring. With glibc's
 * default (readers first), a steady stream of readers (signatures reading the registry's
 * mirror, authentications, status checks, verifications) can starve a writer (a
 * revocation, a new feed) forever. Nonrecursive: no reader re-locks.
 */
#ifndef BASE_LOCK_H
#define BASE_LOCK_H

#include <pthread.h>

/* Initialises l writer-preferring. 0, or the pthread error number. */
int lk_rwlock_init(pthread_rwlock_t *l);

#endif
