/* testcert: certificates for TLS tests. See testcert.h. */
#include "tests/unit/testcert.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void testcert_die(const char *what)
{
    fprintf(stderr, "testcert: %s failed\n", what);
    abort();
}

static X509_NAME *testcert_name(const char *subject)
{
    X509_NAME *n = X509_NAME_new();
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", subject);
    char *save = NULL;
    for (char *part = strtok_r(copy, "/", &save); part != NULL; part = strtok_r(NULL, "/", &save)) {
        char *eq = strchr(part, '=');
        if (eq == NULL)
            testcert_die("subject");
        *eq = '\0';
        if (!X509_NAME_add_entry_by_txt(n, part, MBSTRING_ASC, (unsigned char *)eq + 1, -1, -1, 0))
            testcert_die("subject entry");
    }
    return n;
}

static void testcert_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (e == NULL || !X509_add_ext(x, e, -1))
        testcert_die("extension");
    X509_EXTENSION_free(e);
}

void testcert_make(const char *dir, const char *name, const char *subject, const char *issuer_cert,
                   const char *issuer_key, int is_ca, char cert_out[PATH_MAX],
                   char key_out[PATH_MAX])
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    if (key == NULL || x == NULL)
        testcert_die("key generation");
    X509 *issuer = NULL;
    EVP_PKEY *signer = key;
    if (issuer_cert != NULL) {
        FILE *f = fopen(issuer_cert, "r");
        issuer = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        if (f)
            fclose(f);
        f = fopen(issuer_key, "r");
        signer = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
        if (f)
            fclose(f);
        if (issuer == NULL || signer == NULL)
            testcert_die("reading the issuer");
    }
    static long serial = 1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 2 * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *n = testcert_name(subject);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509_NAME_free(n);
    testcert_ext(x, issuer, NID_basic_constraints,
                 is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    testcert_ext(x, issuer, NID_key_usage,
                 is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    if (!X509_sign(x, signer, EVP_sha256()))
        testcert_die("signing");
    snprintf(cert_out, PATH_MAX, "%s/%s.pem", dir, name);
    snprintf(key_out, PATH_MAX, "%s/%s.key", dir, name);
    FILE *f = fopen(cert_out, "w");
    if (f == NULL || !PEM_write_X509(f, x))
        testcert_die("writing the certificate");
    fclose(f);
    int fd = open(key_out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL))
        testcert_die("writing the key");
    fclose(f);
    if (signer != key)
        EVP_PKEY_free(signer);
    X509_free(issuer);
    X509_free(x);
    EVP_PKEY_free(key);
}
