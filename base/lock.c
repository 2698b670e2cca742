#include "base/lock.h"

int lk_rwlock_init(pthread_rwlock_t *l)
{
    pthread_rwlockattr_t ra;
    int rc = pthread_rwlockattr_init(&ra);
    if (rc != 0)
        return rc;
    rc = pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (rc == 0)
        rc = pthread_rwlock_init(l, &ra);
    pthread_rwlockattr_destroy(&ra);
    return rc;
}
