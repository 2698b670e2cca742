/*
 * testcert: X.509 certificates for tests that need TLS (the front, its TLS policy). EC P-256
 * keys, made with OpenSSL in the test, written as PEM: dir/name.pem and dir/name.key (mode
 * 0600, as the appliance requires of its key).
 *
 *   char cert[PATH_MAX], key[PATH_MAX];
 *   testcert_make(dir, "server", "/CN=localhost", NULL, NULL, 0, cert, key);
 *   testcert_make(dir, "ca", "/CN=Test CA", NULL, NULL, 1, ca, ca_key);
 *   testcert_make(dir, "client", "/CN=app1/O=Example", ca, ca_key, 0, cert, key);
 */
#ifndef TESTS_UNIT_TESTCERT_H
#define TESTS_UNIT_TESTCERT_H

#include <limits.h>

/* Makes a certificate for subject ("/CN=x/O=y"), self-signed when issuer_cert is NULL, else
 * issued by issuer_cert with issuer_key (paths of PEM files); a CA (basicConstraints CA:TRUE)
 * when is_ca. Writes its paths to cert_out and key_out; aborts the test on any failure. */
void testcert_make(const char *dir, const char *name, const char *subject, const char *issuer_cert,
                   const char *issuer_key, int is_ca, char cert_out[PATH_MAX],
                   char key_out[PATH_MAX]);

#endif
