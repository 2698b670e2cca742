/*
 * signkey: the vocabulary every layer shares about a signing key held by the token: its
 * 16-byte kid, its public half, and the status of an operation on it. The front, the API
 * and the store speak it without seeing PKCS#11 (hsm/ is the only code that does); the
 * keeper protocol carries these statuses as their numbers (kproto.h), so the enum's
 * order is part of that protocol.
 */
#ifndef BASE_SIGNKEY_H
#define BASE_SIGNKEY_H

#include <stddef.h>
#include <stdint.h>

#define SK_KID_LEN 16
#define SK_SIG_MAX 512 /* RSA-4096 */
#define SK_MODULUS_MAX 512
#define SK_EXPONENT_MAX 8

typedef enum {
    SK_OK = 0,
    SK_ERR_MODULE_LOAD,     /* module file missing or not a PKCS#11 module */
    SK_ERR_TOKEN_NOT_FOUND, /* no initialised token matches the label or URI */
    SK_ERR_PIN_FILE,        /* PIN file missing, unreadable, too open, or empty */
    SK_ERR_PIN_INCORRECT,   /* the token refused the PIN */
    SK_ERR_PIN_LOCKED,      /* too many wrong PINs: the SO must unlock the token */
    SK_ERR_KEY_NOT_FOUND,   /* no key with this kid on the token */
    SK_ERR_KEY_EXISTS,      /* a key with this kid already exists */
    SK_ERR_TOKEN_FULL,      /* the token has no room for another object */
    SK_ERR_SESSION_COUNT,   /* the token or our bound refused another session */
    SK_ERR_BAD_ARGUMENT,    /* a caller error: size, length or URI out of range */
    SK_ERR_DEVICE,          /* any other failure of the module or the device */
    SK_ERR_TIMEOUT,  /* the keeper did not answer within its deadline (appliance/kproto/keeper.h) */
    SK_ERR_KEY_SIZE, /* the token cannot make a key of this size (its mechanism's range) */
    SK_ERR_MECHANISM, /* the token lacks the signing mechanism the configuration forces */
    SK_ERR_KEY_WEAK,  /* the token made a key that is not sensitive, or is extractable:
                       * destroyed at once, never used */
    SK_ERR_COUNT_
} sk_status;

typedef struct {
    uint8_t b[SK_KID_LEN];
} sk_kid;

typedef struct {
    uint8_t n[SK_MODULUS_MAX];
    size_t n_len;
    uint8_t e[SK_EXPONENT_MAX];
    size_t e_len;
    unsigned bits;
} sk_pubkey;

/* One key found on the token by hsm_list: which halves of the pair are present. */
typedef struct {
    sk_kid kid;
    int has_private;
    int has_public;
} sk_key_entry;

/* What the token says it holds for a key's private half, read back with
 * C_GetAttributeValue after it was made (hsm_key_attrs): a bit set of SK_ATTR_*, 0 when
 * nothing was read (a key made before the appliance read them). SK_ATTR_READ marks a
 * value that was read. sign_only: CKA_SIGN true and none of CKA_DECRYPT, CKA_UNWRAP,
 * CKA_DERIVE, CKA_SIGN_RECOVER true. Carried by the keeper protocol and the registry as
 * this byte, so the bits never move. */
typedef uint8_t sk_attrs;
#define SK_ATTR_READ 0x01u
#define SK_ATTR_SENSITIVE 0x02u
#define SK_ATTR_EXTRACTABLE 0x04u
#define SK_ATTR_NEVER_EXTRACTABLE 0x08u
#define SK_ATTR_SIGN_ONLY 0x10u
#define SK_ATTR_ALL 0x1fu

/* What the keeper's hsm_open found out about the token, as the front shows it (GET
 * /metrics signd_token_info): the keeper protocol's TOKEN_INFO. Strings are NUL-terminated
 * and hold only [A-Za-z0-9 ._:/()+?-] (other bytes become '?'), so they are label-safe. */
typedef struct {
    char sign_mechanism[16]; /* "sha256_rsa_pkcs" or "rsa_pkcs" */
    char manufacturer[33];
    char model[17];
    unsigned rsa_min_bits, rsa_max_bits; /* 0: the token did not say */
    unsigned pin_min, pin_max;
    unsigned max_sessions; /* the keeper's bound after the token's */
    int sign_only_refused; /* the token refused a sign-only key since the keeper started */
} sk_token_info;

/* A stable snake_case name ("pin_incorrect") and a sentence an operator can act on. */
const char *sk_status_name(sk_status s);
const char *sk_strerror(sk_status s);

/* kid <-> 32 lowercase hex characters. hex needs 33 bytes. sk_kid_parse accepts exactly
 * 32 lowercase hex digits and returns 0, else -1. */
void sk_kid_hex(const sk_kid *kid, char hex[2 * SK_KID_LEN + 1]);
int sk_kid_parse(const char *hex, sk_kid *kid);
/* The same over len bytes that need no NUL (a kid inside a list, a SQLite column). */
int sk_kid_parse_n(const char *hex, size_t len, sk_kid *kid);
/* Orders two sk_kid by their bytes: a comparator for qsort and bsearch over kid arrays. */
int sk_kid_cmp(const void *a, const void *b);

#endif
