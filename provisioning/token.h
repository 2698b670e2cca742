/*
 * prov: operator provisioning for a data directory. Creates the embedded SoftHSM2 token
 * (its own softhsm2.conf and token folder, random SO and user PINs in 0600 files) and
 * the other first-start files. Every function refuses to overwrite what exists: a
 * provisioning mistake must never destroy keys.
 */
#ifndef PROVISIONING_TOKEN_H
#define PROVISIONING_TOKEN_H

#include <stdio.h>

/* Creates DIR/softhsm2.conf, DIR/token/, DIR/pin, DIR/so-pin and initialises a token
 * labelled label in it. Prints "label:", "serial:" and "uri:" lines to out. Returns 0,
 * or -1 after printing one line naming the problem to stderr. */
int prov_token_init(const char *dir, const char *label, const char *module, FILE *out);

/* The longest PIN prov_module_token_init writes. */
#define PROV_PIN_LEN_MAX 64

/* A token of another module than the embedded SoftHSM2 (opencryptoki, tpm2-pkcs11, ...),
 * whose own daemons and configuration the module's provisioning/hsm/NAME.sh set up. */
typedef struct {
    const char *dir;                 /* the data directory: DIR/pin and DIR/so-pin */
    const char *module;              /* the PKCS#11 module's path */
    const char *label;               /* 1 to 32 bytes */
    long slot;                       /* the slot to initialise, or -1: the first free one */
    size_t pin_len;                  /* 4 to PROV_PIN_LEN_MAX, within the token's bounds */
    const char *factory_so_pin_file; /* the SO PIN the token ships with, or NULL */
} prov_module_token;

/* Writes random alphanumeric PINs of pin_len characters to the new 0600 files DIR/pin and
 * DIR/so-pin and initialises the token through PKCS#11 (never a tool with a PIN in argv).
 * Refuses when either file exists or the slot's token is initialised already. Prints
 * "label:", "serial:" and "uri:" lines. Returns 0, or -1 after one line on stderr. */
int prov_module_token_init(const prov_module_token *t, FILE *out);

/* Creates an admin credential (label may be NULL) in the database named by
 * DIR/appliance.conf and writes its secret and a newline to out_path, or to
 * DIR/admin.credential when out_path is NULL: a new file (O_EXCL, O_NOFOLLOW, mode 0600),
 * opened before the credential is made so that a taken name costs nothing. If the secret
 * cannot be written the credential is revoked at once. Prints "admin credential ID written
 * to PATH" to out. Returns 0, or -1 after one line naming the problem on stderr.
 *
 * Works offline, with data-directory access only: the way back in when every admin
 * secret is lost. A running appliance sees the new credential after its next start. */
int prov_admin_credential(const char *dir, const char *label, const char *out_path, FILE *out);

#endif
