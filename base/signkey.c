#include "base/signkey.h"

#include "base/hex.h"

#include <string.h>

static const struct {
    const char *name;
    const char *message;
} sk_errors[SK_ERR_COUNT_] = {
    [SK_OK] = {"ok", "success"},
    [SK_ERR_MODULE_LOAD] = {"module_not_loadable",
                            "the PKCS#11 module could not be loaded: check pkcs11_module"},
    [SK_ERR_TOKEN_NOT_FOUND] = {"token_not_found",
                                "no initialised token matches the configured label or URI"},
    [SK_ERR_PIN_FILE] = {"pin_file_unusable",
                         "the PIN file is missing, empty, a symlink, or readable by group "
                         "or others (it must be mode 0600)"},
    [SK_ERR_PIN_INCORRECT] = {"pin_incorrect", "the token refused the PIN"},
    [SK_ERR_PIN_LOCKED] = {"pin_locked",
                           "the user PIN is locked after too many failures: the security "
                           "officer must reset it"},
    [SK_ERR_KEY_NOT_FOUND] = {"key_not_found", "no key with this kid on the token"},
    [SK_ERR_KEY_EXISTS] = {"key_exists", "an object with this identity already exists"},
    [SK_ERR_TOKEN_FULL] = {"token_full", "the token has no room for another object"},
    [SK_ERR_SESSION_COUNT] = {"session_count",
                              "the token refused another session: raise its limit or lower "
                              "worker_threads"},
    [SK_ERR_BAD_ARGUMENT] = {"bad_argument", "invalid argument to the PKCS#11 layer"},
    [SK_ERR_DEVICE] = {"device_error", "the PKCS#11 module or device failed"},
    [SK_ERR_TIMEOUT] = {"timeout", "the token did not answer within keeper_timeout_ms"},
    [SK_ERR_KEY_SIZE] = {"key_size_unsupported",
                         "the token cannot make an RSA key of this size (its "
                         "CKM_RSA_PKCS_KEY_PAIR_GEN range)"},
    [SK_ERR_MECHANISM] = {"mechanism_unsupported",
                          "the token lacks the signing mechanism pkcs11_sign_mechanism names"},
    [SK_ERR_KEY_WEAK] = {"key_attributes_refused",
                         "the token made a key that is not sensitive or is extractable: it was "
                         "destroyed"},
};

const char *sk_status_name(sk_status s)
{
    return (unsigned)s < SK_ERR_COUNT_ ? sk_errors[s].name : "unknown";
}

const char *sk_strerror(sk_status s)
{
    return (unsigned)s < SK_ERR_COUNT_ ? sk_errors[s].message : "unknown error";
}

/* ---- kids ---------------------------------------------------------------------------- */

void sk_kid_hex(const sk_kid *kid, char hex[2 * SK_KID_LEN + 1])
{
    hex_encode(kid->b, SK_KID_LEN, hex);
}

int sk_kid_cmp(const void *a, const void *b)
{
    return memcmp(((const sk_kid *)a)->b, ((const sk_kid *)b)->b, SK_KID_LEN);
}

int sk_kid_parse_n(const char *hex, size_t len, sk_kid *kid)
{
    return hex_decode(hex, len, kid->b, SK_KID_LEN);
}

int sk_kid_parse(const char *hex, sk_kid *kid)
{
    return hex == NULL ? -1 : sk_kid_parse_n(hex, strnlen(hex, 2 * SK_KID_LEN + 1), kid);
}
