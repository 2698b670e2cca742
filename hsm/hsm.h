/*
 * hsm: everything PKCS#11. Loads a module, finds a token, logs in once, and offers the
 * handful of operations the appliance needs on RSA keys named by a 16-byte kid.
 *
 * Why the module's own function list and not libp11: libp11 serialises C_SignInit/C_Sign
 * behind a per-slot lock, documents that much of its API is not thread-safe, and hides
 * session handling, so N threads cannot sign in parallel through it. Calling the function
 * list ourselves gives one session per thread, no exclusive lock on the signing path (two
 * read locks: the handle cache's and the re-open gate's, below), and exact
 * control over every key attribute (CKA_ID, CKA_SENSITIVE, CKA_EXTRACTABLE, ...). The
 * bench (make bench-hsm) shows the layer at >= 0.95 of a raw C_Sign loop.
 *
 * What it owns:
 *  - the module (dlopen), C_Initialize with OS locking, one login session held for the
 *    life of the handle (SoftHSM2 logs out when the last session closes);
 *  - one further session per calling thread, opened on first use and bounded by
 *    max_sessions (CKR_SESSION_COUNT and the bound both map to SK_ERR_SESSION_COUNT);
 *  - a kid -> object-handle cache, filled at open and on generate, emptied on destroy,
 *    guarded by a read-write lock that the signing path only ever takes for reading:
 *    no C_FindObjects ever runs on the signing path.
 *  - what the token can do, asked at open and never assumed from SoftHSM2 (hsm_caps): the
 *    signing path (CKM_SHA256_RSA_PKCS, or CKM_RSA_PKCS over a DigestInfo built here), the
 *    RSA key sizes, the PIN lengths, the session limits, the names; and whether it refused
 *    a sign-only key. What each new key really is, is read back from the token.
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
 * Re-opening: tpm2-pkcs11 keeps every key a process made (2 objects) or used (1) loaded in
 * the TPM until the process ends, destroyed keys included, and tpm2-abrmd allows one
 * connection 100 (--max-transients): past it every generation, and a signature with a key
 * not loaded yet, fails with CKR_GENERAL_ERROR (the TPM's "out of memory for object
 * contexts", 0x902) for the life of the process. Finalising and initialising the module
 * again closes its connection, and the resource manager flushes what it held. So a call
 * that fails that way (CKR_GENERAL_ERROR on a module the probe found to be tpm2-pkcs11,
 * CKR_CRYPTOKI_NOT_INITIALIZED on any, or any failure after a re-open that did not complete)
 * re-opens the handle: every session closed,
 * C_Finalize, C_Initialize, the token found again, login (the PIN file read again, wiped),
 * the handle cache rebuilt from a scan; then the call runs once more. Every public call
 * holds a writer-preferring read-write lock's read side while it is inside the module
 * (one uncontended read lock per signature); the re-open holds the write side, so it waits
 * for the calls in flight, and C_Finalize never runs under another thread. Per-thread
 * sessions are opened again lazily, by a generation number. At most one re-open runs at a
 * time (a call that failed in a generation already re-opened just runs again) and at most
 * HSM_REOPEN_PER_MIN in any minute: past that the call's error stands.
 *
 * The interface is shaped for a process boundary: fixed-size values in and out, a status
 * on every call, no pointer into the token's memory.
 */
#ifndef HSM_HSM_H
#define HSM_HSM_H

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

#define HSM_PIN_MAX 256
#define HSM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

/* How RS256 is computed in the token. AUTO (the default) takes CKM_SHA256_RSA_PKCS when
 * the token lists it, else CKM_RSA_PKCS over a SHA-256 DigestInfo this layer builds
 * (hashed with OpenSSL in the calling thread): both give byte-identical signatures
 * (RSASSA-PKCS1-v1_5 is deterministic). opencryptoki's soft token has only the second. */
typedef enum {
    HSM_MECH_AUTO = 0,
    HSM_MECH_SHA256_RSA_PKCS,
    HSM_MECH_RSA_PKCS,
} hsm_mech;

/* "auto", "sha256_rsa_pkcs", "rsa_pkcs"; and back (0, or -1 for any other text). */
const char *hsm_mech_name(hsm_mech m);
int hsm_mech_parse(const char *text, hsm_mech *out);

/* See "Re-opening" above. */
#define HSM_REOPEN_PER_MIN 6
typedef void (*hsm_reopen_fn)(void *arg, unsigned long ckr, sk_status st, unsigned long reopens);

typedef struct {
    const char *module_path; /* NULL: HSM_DEFAULT_MODULE */
    /* Either a token label or an RFC 7512 URI ("pkcs11:token=...;serial=..."), parsed by
     * p11-kit. A URI may name token, serial, manufacturer and model; every attribute given
     * must match. Object, library, slot and query attributes are read and select nothing;
     * an attribute p11-kit does not know, or a value too long for its field, makes the URI
     * a bad argument. */
    const char *token;
    const char *pin_file;
    unsigned max_sessions; /* per-thread sessions; 0: 256 (and never above the token's) */
    /* AUTO, or the one path to use: a token without it fails hsm_open with
     * SK_ERR_MECHANISM (the mechanism's name in hsm_open_detail). */
    hsm_mech sign_mechanism;
    /* Called (may be NULL) after each re-open, from the thread that did it, outside every
     * lock: ckr is the failure that caused it, st the re-open's result (SK_OK, or the
     * failure; SK_ERR_SESSION_COUNT: not attempted, past HSM_REOPEN_PER_MIN, reported once
     * for the handle's life), reopens the successful ones so far. For the keeper's log. */
    hsm_reopen_fn on_reopen;
    void *on_reopen_arg;
} hsm_config;

typedef struct hsm hsm;

/* What hsm_open found out about the module and the token, never assumed (hsm_info).
 * Numbers the token does not give (CK_UNAVAILABLE_INFORMATION, or a call it refused) are
 * 0; a session limit of 0 means none (CK_EFFECTIVELY_INFINITE). Strings are the
 * blank-padded PKCS#11 fields with the blanks cut off. */
typedef struct {
    hsm_mech sign_mechanism; /* the path hsm_sign_rs256 takes: never AUTO */
    int has_sha256_rsa_pkcs; /* the token lists CKM_SHA256_RSA_PKCS (for signing) */
    int has_rsa_pkcs;        /* ... and CKM_RSA_PKCS */
    unsigned rsa_min_bits;   /* CKM_RSA_PKCS_KEY_PAIR_GEN's ulMinKeySize / ulMaxKeySize */
    unsigned rsa_max_bits;
    unsigned pin_min, pin_max;           /* CK_TOKEN_INFO ulMinPinLen / ulMaxPinLen */
    unsigned long token_max_sessions;    /* ulMaxSessionCount */
    unsigned long token_max_rw_sessions; /* ulMaxRwSessionCount */
    unsigned max_sessions;               /* our bound, after the token's */
    char manufacturer[33];               /* the token's manufacturerID */
    char model[17];
    char label[33];
    char library_manufacturer[33]; /* CK_INFO: the module's */
    char library_description[33];
    unsigned library_version_major, library_version_minor;
    /* The token refused a sign-only private key (CKA_DECRYPT/CKA_UNWRAP FALSE) at least
     * once since the handle opened: keys are made without that restriction since. */
    int sign_only_refused;
} hsm_caps;

/* A key's private half as the token holds it (hsm_key_attrs): each field 1 or 0. */
typedef struct {
    int sensitive;         /* CKA_SENSITIVE true */
    int extractable;       /* CKA_EXTRACTABLE true */
    int never_extractable; /* CKA_NEVER_EXTRACTABLE true */
    int sign_only; /* CKA_SIGN true, CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE, CKA_SIGN_RECOVER not */
} hsm_attrs;

/* Loads the module, finds the token, logs in, caches every key handle.
 * On failure *out is NULL; *ckr (if non-NULL) receives the PKCS#11 return value that
 * caused it (0 when the failure was ours). */
sk_status hsm_open(const hsm_config *cfg, hsm **out, unsigned long *ckr);

/* The probed facts (above). Any thread. */
void hsm_info(hsm *h, hsm_caps *out);

/* The facts of hsm_info as the keeper protocol carries them (base/signkey.h). */
void hsm_token_info(hsm *h, sk_token_info *out);

/* A failed hsm_open's detail, for its message: the forced mechanism the token lacks
 * ("CKM_SHA256_RSA_PKCS"), a PIN whose length is outside the token's bounds (refused
 * before C_Login, so no lockout try is spent), or "" (the calling thread's last
 * hsm_open). */
const char *hsm_open_detail(void);

/* Closes every session, C_Finalize, dlclose. NULL is fine. */
void hsm_close(hsm *h);

/* Generates an RSA key pair of 2048, 3072 or 4096 bits named by kid (CKA_ID = kid,
 * CKA_LABEL = kid in lowercase hex). Private half: token, private, sensitive, never
 * extractable, sign only (CKA_DECRYPT, CKA_UNWRAP, CKA_SIGN_RECOVER, CKA_DERIVE false).
 * Concurrent calls are allowed; SoftHSM2's sporadic
 * CKR_GENERAL_ERROR under concurrency is retried.
 * Another size: SK_ERR_BAD_ARGUMENT; a size outside the token's range (hsm_caps, or the
 * token's CKR_KEY_SIZE_RANGE): SK_ERR_KEY_SIZE.
 * A token that refuses the sign-only restriction (tpm2-pkcs11: CKR_GENERAL_ERROR "attr
 * mismatch" for CKA_DECRYPT = FALSE; others CKR_TEMPLATE_INCONSISTENT or
 * CKR_ATTRIBUTE_VALUE_INVALID) gets the template again once without CKA_DECRYPT,
 * CKA_UNWRAP, CKA_SIGN_RECOVER and CKA_DERIVE (and CKA_ENCRYPT/CKA_WRAP on the public half),
 * and the handle remembers it: later keys
 * go straight to that template. Every new key is read back (hsm_key_attrs): one that is
 * not sensitive or is extractable is destroyed and the call fails with SK_ERR_KEY_WEAK;
 * one that is not sign-only is kept, and *attrs (may be NULL) says so. */
sk_status hsm_generate(hsm *h, const sk_kid *kid, unsigned bits);
sk_status hsm_generate_attrs(hsm *h, const sk_kid *kid, unsigned bits, hsm_attrs *attrs);

/* Reads back what the token holds for kid's private half (C_GetAttributeValue): an
 * attribute the module does not know counts as false. Off the signing path. */
sk_status hsm_key_attrs(hsm *h, const sk_kid *kid, hsm_attrs *out);

/* The byte the keeper protocol and the registry carry (base/signkey.h). */
sk_attrs hsm_attrs_bits(const hsm_attrs *a);

/* Test-only: makes the handle behave as a module that differs from SoftHSM2 in what
 * flags names, so that the unit tests reach the fallback paths on the real token. Nothing
 * but tests calls it. HSM_TEST_REFUSE_SIGN_ONLY: the sign-only template is answered
 * CKR_TEMPLATE_INCONSISTENT without reaching the token (tpm2-pkcs11's refusal);
 * HSM_TEST_NOT_SENSITIVE: the template asks for CKA_SENSITIVE FALSE (a module that
 * ignores the attribute). rsa_max_bits, when nonzero, replaces the probed upper bound. */
#define HSM_TEST_REFUSE_SIGN_ONLY 1u
#define HSM_TEST_NOT_SENSITIVE 2u
void hsm_test_force(hsm *h, unsigned flags, unsigned rsa_max_bits);

/* Re-opens since hsm_open (successful ones). Any thread. */
unsigned long hsm_reopens(hsm *h);

/* Test-only, as hsm_test_force: hsm_test_reopen re-opens now, through the same path as
 * an exhausted token (the rate bound included); hsm_test_exhaust makes the next n calls of
 * hsm_sign_rs256 and hsm_generate fail, without reaching the token, as tpm2-pkcs11 at its
 * bound (CKR_GENERAL_ERROR), and that error a re-open's cause on this handle. */
sk_status hsm_test_reopen(hsm *h);
void hsm_test_exhaust(hsm *h, unsigned n);

/* RS256: RSASSA-PKCS1-v1_5 with SHA-256 over msg. sig must hold SK_SIG_MAX bytes;
 * *sig_len receives the signature length (the modulus size). */
sk_status hsm_sign_rs256(hsm *h, const sk_kid *kid, const void *msg, size_t msg_len,
                         uint8_t sig[SK_SIG_MAX], size_t *sig_len);

/* The public key (n, e) of kid. */
sk_status hsm_public_key(hsm *h, const sk_kid *kid, sk_pubkey *out);

/* Destroys every object with CKA_ID = kid (private and public halves). SK_OK when
 * something was destroyed, SK_ERR_KEY_NOT_FOUND when nothing had that kid. */
sk_status hsm_destroy(hsm *h, const sk_kid *kid);

/* Lists every RSA key object with a 16-byte CKA_ID on the token (a C_FindObjects scan:
 * for reconcile, never for the request path). Fills up to cap entries; *count receives
 * the number found, which may exceed cap. */
sk_status hsm_list(hsm *h, sk_key_entry *out, size_t cap, size_t *count);
/* The token answers a cheap call (C_GetSessionInfo on this thread's session) and the session
 * is logged in: what a liveness ping asks, at a cost that does not grow with the number of
 * objects (hsm_list reads every one of them with SoftHSM2). */
sk_status hsm_ping(hsm *h);

/* Number of keys in the handle cache, and of per-thread sessions open now. */
size_t hsm_cached_keys(hsm *h);
unsigned hsm_sessions_open(hsm *h);

/* Closes the calling thread's session (CivetWeb's exit_thread). Optional: a thread's
 * session is also closed when the thread exits. */
void hsm_thread_done(hsm *h);

/* The PKCS#11 return value behind the calling thread's last failed call (0 if none). */
unsigned long hsm_last_ckr(void);

/* Reads a PIN file into buf (at most HSM_PIN_MAX-1 bytes, trailing newline dropped).
 * Refuses symlinks, files group or others may read, and empty files. On failure buf is
 * wiped. Exposed for the provisioning tool. */
sk_status hsm_read_pin_file(const char *path, char buf[HSM_PIN_MAX], size_t *len);

/* Initialises a fresh token in the first slot without one, labelled label (at most 32
 * bytes), with the SO PIN and user PIN read from the two files (same rules as
 * hsm_read_pin_file), and returns its serial (16 characters, NUL-terminated). Refuses
 * (SK_ERR_KEY_EXISTS) when a token with that label is already initialised, so that no
 * provisioning mistake ever wipes keys. The PINs are wiped before return. */
sk_status hsm_init_token(const char *module_path, const char *label, const char *so_pin_file,
                         const char *user_pin_file, char serial[17]);

/* hsm_init_token with the module's particulars: slot >= 0 initialises that slot only (its
 * token must not be initialised yet), -1 the first uninitialised one; factory_so_pin_file,
 * when not NULL, holds the SO PIN the token ships with (opencryptoki: 87654321), which
 * C_InitToken is given and C_SetPIN then replaces with the one in so_pin_file. */
typedef struct {
    const char *module_path;
    const char *label;
    const char *so_pin_file;
    const char *user_pin_file;
    const char *factory_so_pin_file;
    long slot;
} hsm_init_spec;
sk_status hsm_init_token_spec(const hsm_init_spec *spec, char serial[17]);

#endif
