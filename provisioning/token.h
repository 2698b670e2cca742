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
 * or -1 after printing one line naming the problem to stderr. With a module other than
 * SoftHSM2 (module's file name not libsofthsm2*), only DIR/pin and DIR/so-pin are made:
 * the module finds its store through its own environment (provisioning/hsm/<name>.sh),
 * and the token is its first slot whose token is not initialised yet. */
int prov_token_init(const char *dir, const char *label, const char *module, FILE *out);

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
