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
 *    max_sessions (CKR_SESSION_COUNT and the bound both map to SK_ERR_SESSION_COUNT);
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

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

#define HSM_PIN_MAX 256
#define HSM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

typedef struct {
    const char *module_path; /* NULL: HSM_DEFAULT_MODULE */
    /* Either a token label or an RFC 7512 URI ("pkcs11:token=...;serial=..."), parsed by
     * p11-kit. A URI may name token, serial, manufacturer and model; every attribute given
     * must match. Object, library, slot and query attributes are read and select nothing;
     * an attribute p11-kit does not know, or a value too long for its field, makes the URI
     * a bad argument. */
    const char *token;
    const char *pin_file;
    unsigned max_sessions; /* per-thread sessions; 0: 256 */
} hsm_config;

typedef struct hsm hsm;

/* Loads the module, finds the token, logs in, caches every key handle.
 * On failure *out is NULL; *ckr (if non-NULL) receives the PKCS#11 return value that
 * caused it (0 when the failure was ours). */
sk_status hsm_open(const hsm_config *cfg, hsm **out, unsigned long *ckr);

/* Closes every session, C_Finalize, dlclose. NULL is fine. */
void hsm_close(hsm *h);

/* Generates an RSA key pair of 2048, 3072 or 4096 bits named by kid (CKA_ID = kid,
 * CKA_LABEL = kid in lowercase hex). Private half: token, private, sensitive, never
 * extractable, sign only. Concurrent calls are allowed; SoftHSM2's sporadic
 * CKR_GENERAL_ERROR under concurrency is retried. */
sk_status hsm_generate(hsm *h, const sk_kid *kid, unsigned bits);

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
