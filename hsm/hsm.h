/*
 * hsm: everything PKCS#11. Loads a module, finds a token, logs in once, and offers the
 * handful of operations the appliance needs on RSA keys named by a 16-byte kid.
 *
 * Why the module's own function list and not libp11: libp11 serialises C_SignInit/C_Sign
 * behind a per-slot lock, documents that much of its API is not thread-safe, and hides
 * session handling, so N threads cannot sign in parallel through it. Calling the function
 * list ourselves gives one session per thread, no lock on the signing path, and exact
 * control over every key attribute (CKA_ID, CKA_SENSITIVE, CKA_EXTRACTABLE, ...). The
 * bench (make bench-hsm) shows the layer at >= 0.95 of a raw C_Sign loop.
 *
 * What it owns:
 *  - the module (dlopen), C_Initialize with OS locking, one login session held for the
 *    life of the handle (SoftHSM2 logs out when the last session closes);
 *  - one further session per calling thread, opened on first use and bounded by
 *    max_sessions (CKR_SESSION_COUNT and the bound both map to HSM_ERR_SESSION_COUNT);
 *  - a kid -> object-handle cache, filled at open and on generate, emptied on destroy,
 *    guarded by a read-write lock that the signing path only ever takes for reading:
 *    no C_FindObjects ever runs on the signing path.
 * The PIN is read from a file (refused if group or others may read it), held in a bounded
 * buffer and wiped right after C_Login, on every path.
 *
 * One handle per process: PKCS#11 login state belongs to the module instance, so a second
 * handle on the same token would find the user logged in already and never check its PIN.
 * (A second handle's failure or close leaves the first working: each handle finalises and
 * logs out only what it initialised and logged in itself.)
 *
 * Thread safety: every function but hsm_open and hsm_close may be called from any number
 * of threads at once. hsm_close must run after every other thread has stopped calling in
 * (C_Finalize while another thread is inside SoftHSM2 crashes it).
 *
 * The interface is shaped for a process boundary: fixed-size values in and out, a status
 * on every call, no pointer into the token's memory.
 */
#ifndef HSM_HSM_H
#define HSM_HSM_H

#include <stddef.h>
#include <stdint.h>

#define HSM_KID_LEN 16
#define HSM_SIG_MAX 512 /* RSA-4096 */
#define HSM_MODULUS_MAX 512
#define HSM_EXPONENT_MAX 8
#define HSM_PIN_MAX 256
#define HSM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

typedef enum {
    HSM_OK = 0,
    HSM_ERR_MODULE_LOAD,     /* module file missing or not a PKCS#11 module */
    HSM_ERR_TOKEN_NOT_FOUND, /* no initialised token matches the label or URI */
    HSM_ERR_PIN_FILE,        /* PIN file missing, unreadable, too open, or empty */
    HSM_ERR_PIN_INCORRECT,   /* the token refused the PIN */
    HSM_ERR_PIN_LOCKED,      /* too many wrong PINs: the SO must unlock the token */
    HSM_ERR_KEY_NOT_FOUND,   /* no key with this kid on the token */
    HSM_ERR_KEY_EXISTS,      /* a key with this kid already exists */
    HSM_ERR_TOKEN_FULL,      /* the token has no room for another object */
    HSM_ERR_SESSION_COUNT,   /* the token or our bound refused another session */
    HSM_ERR_BAD_ARGUMENT,    /* a caller error: size, length or URI out of range */
    HSM_ERR_DEVICE,          /* any other failure of the module or the device */
    HSM_ERR_TIMEOUT,         /* the keeper did not answer within its deadline (keeper.h) */
    HSM_ERR_COUNT_
} hsm_status;

typedef struct {
    uint8_t b[HSM_KID_LEN];
} hsm_kid;

typedef struct {
    const char *module_path; /* NULL: HSM_DEFAULT_MODULE */
    /* Either a token label or an RFC 7512 URI ("pkcs11:token=...;serial=..."). A URI
     * may name token, serial, manufacturer and model; every attribute given must match. */
    const char *token;
    const char *pin_file;
    unsigned max_sessions; /* per-thread sessions; 0: 256 */
} hsm_config;

typedef struct {
    uint8_t n[HSM_MODULUS_MAX];
    size_t n_len;
    uint8_t e[HSM_EXPONENT_MAX];
    size_t e_len;
    unsigned bits;
} hsm_pubkey;

/* One key found on the token by hsm_list: which halves of the pair are present. */
typedef struct {
    hsm_kid kid;
    int has_private;
    int has_public;
} hsm_key_entry;

typedef struct hsm hsm;

/* Loads the module, finds the token, logs in, caches every key handle.
 * On failure *out is NULL; *ckr (if non-NULL) receives the PKCS#11 return value that
 * caused it (0 when the failure was ours). */
hsm_status hsm_open(const hsm_config *cfg, hsm **out, unsigned long *ckr);

/* Closes every session, C_Finalize, dlclose. NULL is fine. */
void hsm_close(hsm *h);

/* Generates an RSA key pair of 2048, 3072 or 4096 bits named by kid (CKA_ID = kid,
 * CKA_LABEL = kid in lowercase hex). Private half: token, private, sensitive, never
 * extractable, sign only. Concurrent calls are allowed; SoftHSM2's sporadic
 * CKR_GENERAL_ERROR under concurrency is retried. */
hsm_status hsm_generate(hsm *h, const hsm_kid *kid, unsigned bits);

/* RS256: RSASSA-PKCS1-v1_5 with SHA-256 over msg. sig must hold HSM_SIG_MAX bytes;
 * *sig_len receives the signature length (the modulus size). */
hsm_status hsm_sign_rs256(hsm *h, const hsm_kid *kid, const void *msg, size_t msg_len,
                          uint8_t sig[HSM_SIG_MAX], size_t *sig_len);

/* The public key (n, e) of kid. */
hsm_status hsm_public_key(hsm *h, const hsm_kid *kid, hsm_pubkey *out);

/* Destroys every object with CKA_ID = kid (private and public halves). HSM_OK when
 * something was destroyed, HSM_ERR_KEY_NOT_FOUND when nothing had that kid. */
hsm_status hsm_destroy(hsm *h, const hsm_kid *kid);

/* Lists every RSA key object with a 16-byte CKA_ID on the token (a C_FindObjects scan:
 * for reconcile, never for the request path). Fills up to cap entries; *count receives
 * the number found, which may exceed cap. */
hsm_status hsm_list(hsm *h, hsm_key_entry *out, size_t cap, size_t *count);
/* The token answers a cheap call (C_GetSessionInfo on this thread's session) and the session
 * is logged in: what a liveness ping asks, at a cost that does not grow with the number of
 * objects (hsm_list reads every one of them with SoftHSM2). */
hsm_status hsm_ping(hsm *h);

/* Number of keys in the handle cache, and of per-thread sessions open now. */
size_t hsm_cached_keys(hsm *h);
unsigned hsm_sessions_open(hsm *h);

/* Closes the calling thread's session (CivetWeb's exit_thread). Optional: a thread's
 * session is also closed when the thread exits. */
void hsm_thread_done(hsm *h);

/* The PKCS#11 return value behind the calling thread's last failed call (0 if none). */
unsigned long hsm_last_ckr(void);

/* A stable snake_case name ("pin_incorrect") and a sentence an operator can act on. */
const char *hsm_status_name(hsm_status s);
const char *hsm_strerror(hsm_status s);

/* kid <-> 32 lowercase hex characters. hex needs 33 bytes. hsm_kid_parse accepts exactly
 * 32 lowercase hex digits and returns 0, else -1. */
void hsm_kid_hex(const hsm_kid *kid, char hex[2 * HSM_KID_LEN + 1]);
int hsm_kid_parse(const char *hex, hsm_kid *kid);
/* Orders two hsm_kid by their bytes: a comparator for qsort and bsearch over kid arrays. */
int hsm_kid_cmp(const void *a, const void *b);

/* Reads a PIN file into buf (at most HSM_PIN_MAX-1 bytes, trailing newline dropped).
 * Refuses symlinks, files group or others may read, and empty files. On failure buf is
 * wiped. Exposed for the provisioning tool. */
hsm_status hsm_read_pin_file(const char *path, char buf[HSM_PIN_MAX], size_t *len);

/* Initialises a fresh token in the first slot without one, labelled label (at most 32
 * bytes), with the SO PIN and user PIN read from the two files (same rules as
 * hsm_read_pin_file), and returns its serial (16 characters, NUL-terminated). Refuses
 * (HSM_ERR_KEY_EXISTS) when a token with that label is already initialised, so that no
 * provisioning mistake ever wipes keys. The PINs are wiped before return. */
hsm_status hsm_init_token(const char *module_path, const char *label, const char *so_pin_file,
                          const char *user_pin_file, char serial[17]);

#endif
