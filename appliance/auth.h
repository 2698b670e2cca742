/*
 * auth: bearer credentials. Until the credentials issue lands there is one: the bootstrap
 * admin credential from the data directory. Only its SHA-256 is kept in memory; the
 * secret read from the file is wiped at once, and a presented bearer is compared by hash
 * in constant time.
 */
#ifndef APPLIANCE_AUTH_H
#define APPLIANCE_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_SECRET_MAX 256

typedef struct {
    uint8_t admin_hash[32];
    /* Fetched once: OpenSSL 3's implicit fetch (EVP_sha256()) takes global locks on every
     * call, and every request hashes its bearer. */
    void *sha256;
} auth_state;

/* Reads the credential file (0600, no symlink, one line) and keeps its hash.
 * Returns 0, or -1 with one line naming the problem in err. */
int auth_load_admin(auth_state *a, const char *path, char *err, size_t errlen);

/* Releases what auth_load_admin fetched. */
void auth_free(auth_state *a);

/* 1 when the Authorization header value is "Bearer <admin secret>", else 0. */
int auth_check_bearer(const auth_state *a, const char *authorization);

#endif
