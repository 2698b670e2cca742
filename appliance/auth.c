/* auth: the bootstrap admin credential. See auth.h. */
#include "appliance/auth.h"

#include "hsm/hsm.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int auth_load_admin(auth_state *a, const char *path, char *err, size_t errlen)
{
    /* The same rules as a PIN file: private, regular, bounded, one line. */
    char secret[HSM_PIN_MAX];
    size_t len = 0;
    if (hsm_read_pin_file(path, secret, &len) != HSM_OK) {
        snprintf(err, errlen,
                 "%s: admin credential file missing, empty, a symlink, or not mode 0600", path);
        return -1;
    }
    a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    unsigned mdlen = 0;
    int ok = a->sha256 != NULL && EVP_Digest(secret, len, a->admin_hash, &mdlen, a->sha256, NULL);
    explicit_bzero(secret, sizeof(secret));
    if (!ok || mdlen != sizeof(a->admin_hash)) {
        snprintf(err, errlen, "%s: cannot hash the admin credential", path);
        return -1;
    }
    return 0;
}

int auth_check_bearer(const auth_state *a, const char *authorization)
{
    if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
        return 0;
    const char *secret = authorization + 7;
    size_t len = strnlen(secret, AUTH_SECRET_MAX + 1);
    if (len == 0 || len > AUTH_SECRET_MAX)
        return 0;
    uint8_t md[32];
    unsigned mdlen = 0;
    if (!EVP_Digest(secret, len, md, &mdlen, a->sha256, NULL))
        return 0;
    return CRYPTO_memcmp(md, a->admin_hash, sizeof(md)) == 0;
}

void auth_free(auth_state *a)
{
    EVP_MD_free(a->sha256);
    a->sha256 = NULL;
}
