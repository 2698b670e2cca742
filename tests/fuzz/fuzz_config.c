/*
 * fuzz_config: libFuzzer target for the configuration parser (cfg_parse in
 * appliance/common/config.h, what cfg_load runs on the file's bytes). The input is the file.
 * Invariants checked, beyond the sanitizers:
 *   - a refusal leaves *out untouched and says why in one message that names the file;
 *   - an acceptance holds only values the table allows: every string NUL-terminated inside
 *     its field, token_ttl_min <= token_ttl_default <= token_ttl_max, key bits, TLS
 *     version and process model among their few values, a listen address that is IPv4,
 *     relative paths resolved against the base directory;
 *   - the same bytes parse to the same bytes of cfg twice (no state between calls).
 *
 * Built and run by `make fuzz` (build/fuzz/fuzz_config, seeds tests/fuzz/corpus/config/,
 * dictionary tests/fuzz/config.dict); its seeds and regression inputs are replayed by
 * `make test` (build/tests/test_fuzz_config, tests/fuzz/replay.c).
 */
#include "appliance/common/config.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "fuzz.conf"
#define BASE "/srv/signd"

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_config: %s\n", what);
        abort();
    }
}

#define TERMINATED(field) (strnlen((field), sizeof(field)) < sizeof(field))

/* A path setting: "" where allowed, else absolute once resolved. */
static void check_path(const char *p, int empty_ok, const char *what)
{
    check((empty_ok && p[0] == '\0') || p[0] == '/', what);
}

static void check_accepted(const cfg *c)
{
    check(TERMINATED(c->listen_address) && TERMINATED(c->pkcs11_module) &&
              TERMINATED(c->softhsm2_conf) && TERMINATED(c->token) && TERMINATED(c->pin_file) &&
              TERMINATED(c->tls_certificate) && TERMINATED(c->tls_private_key) &&
              TERMINATED(c->database) && TERMINATED(c->token_issuer) && TERMINATED(c->user) &&
              TERMINATED(c->tls_min_version) && TERMINATED(c->tls_ciphers) &&
              TERMINATED(c->tls_ciphersuites) && TERMINATED(c->tls_client_ca) &&
              TERMINATED(c->process_model) && TERMINATED(c->keeper_socket),
          "a string setting is not terminated inside its field");
    struct in_addr a;
    check(inet_pton(AF_INET, c->listen_address, &a) == 1, "listen_address is no IPv4 address");
    check(c->token_ttl_min <= c->token_ttl_default && c->token_ttl_default <= c->token_ttl_max,
          "token ttl bounds out of order");
    check(c->default_key_bits == 2048 || c->default_key_bits == 3072 || c->default_key_bits == 4096,
          "default_key_bits");
    check(strcmp(c->tls_min_version, "1.2") == 0 || strcmp(c->tls_min_version, "1.3") == 0,
          "tls_min_version");
    check(strcmp(c->process_model, "split") == 0, "process_model");
    check_path(c->pin_file, 0, "pin_file not resolved");
    check_path(c->tls_certificate, 0, "tls_certificate not resolved");
    check_path(c->tls_private_key, 0, "tls_private_key not resolved");
    check_path(c->database, 0, "database not resolved");
    check_path(c->softhsm2_conf, 1, "softhsm2_conf not resolved");
    check_path(c->tls_client_ca, 1, "tls_client_ca not resolved");
    check_path(c->keeper_socket, 0, "keeper_socket not resolved");
    /* A module path with a '/' is resolved; a bare name is the loader's to find. */
    check(c->pkcs11_module[0] == '/' || strchr(c->pkcs11_module, '/') == NULL,
          "pkcs11_module not resolved");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cfg c, before, again;
    static char err[CFG_ERR_MAX], err2[CFG_ERR_MAX];
    memset(&c, 0xa5, sizeof(c));
    before = c;
    err[0] = '\0';
    int rc = cfg_parse((const char *)data, size, NAME, BASE, &c, err, sizeof(err));
    if (rc != 0) {
        check(rc == -1, "return value");
        check(memcmp(&c, &before, sizeof(c)) == 0, "a refusal changed *out");
        check(strncmp(err, NAME ":", strlen(NAME) + 1) == 0, "message does not name the file");
        check(strlen(err) > strlen(NAME) + 2, "empty message");
    } else {
        check_accepted(&c);
    }
    memset(&again, 0x5a, sizeof(again));
    err2[0] = '\0';
    int rc2 = cfg_parse((const char *)data, size, NAME, BASE, &again, err2, sizeof(err2));
    check(rc2 == rc, "the same bytes gave another answer");
    if (rc == 0)
        check(memcmp(&c, &again, sizeof(c)) == 0, "the same bytes gave another cfg");
    else
        check(strcmp(err, err2) == 0, "the same bytes gave another message");
    return 0;
}
