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

/* Writes a new random secret to path (O_EXCL, mode 0600) as prefix + 43 base64url
 * characters (256 bits) and a newline. Returns 0 or -1 (message on stderr). */
int prov_write_secret(const char *path, const char *prefix);

#endif
