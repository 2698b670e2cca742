/* tls: the TLS policy and the client certificate's subject. See tls.h. */
#include "appliance/front/tls.h"

#include "civetweb.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reason of OpenSSL's most recent error ("no error recorded" when none), and an
 * emptied error queue, so nothing stale is blamed on a later failure. */
static const char *tls_ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0) {
        snprintf(buf, len, "no error recorded");
    } else {
        const char *r = ERR_reason_error_string(e);
        if (r != NULL)
            snprintf(buf, len, "%s", r);
        else
            ERR_error_string_n(e, buf, len);
    }
    ERR_clear_error();
    return buf;
}

const char *tls_civetweb_protocol_version(const cfg *c)
{
    return strcmp(c->tls_min_version, "1.3") == 0 ? "5" : "4";
}

static int tls_set_versions(SSL_CTX *ctx, const cfg *c, char *err, size_t errlen)
{
    int min;
    if (strcmp(c->tls_min_version, "1.2") == 0)
        min = TLS1_2_VERSION;
    else if (strcmp(c->tls_min_version, "1.3") == 0)
        min = TLS1_3_VERSION;
    else
        return cfg_errorf(err, errlen, "tls_min_version: '%s' is neither 1.2 nor 1.3",
                          c->tls_min_version);
    /* The floor and ceiling alone decide: drop CivetWeb's deprecated per-version options
     * (set from ssl_protocol_version before the callback) so the two cannot disagree. */
    SSL_CTX_clear_options(ctx, SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 |
                                   SSL_OP_NO_TLSv1_2 | SSL_OP_NO_TLSv1_3);
    if (SSL_CTX_set_min_proto_version(ctx, min) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
        char r[256];
        return cfg_errorf(err, errlen, "tls_min_version: cannot set TLS %s to 1.3: %s",
                          c->tls_min_version, tls_ssl_reason(r, sizeof(r)));
    }
    return 0;
}

/* The TLS 1.2 list, then the TLS 1.3 suites; each enabled cipher is checked. */
static int tls_set_ciphers(SSL_CTX *ctx, const cfg *c, char *err, size_t errlen)
{
    char r[256];
    if (SSL_CTX_set_cipher_list(ctx, c->tls_ciphers) != 1)
        return cfg_errorf(err, errlen, "tls_ciphers: '%s' enables no TLS 1.2 cipher (%s)",
                          c->tls_ciphers, tls_ssl_reason(r, sizeof(r)));
    if (SSL_CTX_set_ciphersuites(ctx, c->tls_ciphersuites) != 1)
        return cfg_errorf(err, errlen, "tls_ciphersuites: '%s' is not a TLS 1.3 suite list (%s)",
                          c->tls_ciphersuites, tls_ssl_reason(r, sizeof(r)));
    /* SSL_CTX_get_ciphers holds both: the TLS 1.3 suites first, then the TLS 1.2 list. */
    STACK_OF(SSL_CIPHER) *all = SSL_CTX_get_ciphers(ctx);
    int n12 = 0, n13 = 0;
    for (int i = 0; all != NULL && i < sk_SSL_CIPHER_num(all); i++) {
        const SSL_CIPHER *ci = sk_SSL_CIPHER_value(all, i);
        const char *name = SSL_CIPHER_get_name(ci);
        int kx = SSL_CIPHER_get_kx_nid(ci);
        if (kx == NID_kx_any) { /* only TLS 1.3 suites leave the key exchange open */
            if (!SSL_CIPHER_is_aead(ci))
                return cfg_errorf(err, errlen, "tls_ciphersuites: %s is not an AEAD suite", name);
            n13++;
            continue;
        }
        if (!SSL_CIPHER_is_aead(ci) || (kx != NID_kx_ecdhe && kx != NID_kx_dhe))
            return cfg_errorf(err, errlen,
                              "tls_ciphers: %s is not an AEAD cipher with forward secrecy", name);
        if (SSL_CIPHER_get_auth_nid(ci) == NID_auth_null)
            return cfg_errorf(err, errlen,
                              "tls_ciphers: %s is anonymous (no server authentication)", name);
        n12++;
    }
    if (n12 == 0)
        return cfg_errorf(err, errlen, "tls_ciphers: '%s' enables no TLS 1.2 cipher",
                          c->tls_ciphers);
    if (n13 == 0)
        return cfg_errorf(err, errlen, "tls_ciphersuites: '%s' enables no TLS 1.3 suite",
                          c->tls_ciphersuites);
    return 0;
}

/* A PEM pass phrase callback that has none: an encrypted key fails instead of prompting. */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Opens the key without following a symbolic link, checks the very file opened (regular,
 * nothing for group or others) and reads the key from that descriptor. */
static int tls_load_key(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP)
            return cfg_errorf(err, errlen,
                              "tls_private_key: %s is a symbolic link; name the file itself", path);
        return cfg_errorf(err, errlen, "tls_private_key: cannot open %s: %s", path,
                          strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cfg_errorf(err, errlen, "tls_private_key: cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return cfg_errorf(err, errlen, "tls_private_key: %s is not a regular file", path);
    }
    if ((st.st_mode & 077) != 0) {
        close(fd);
        return cfg_errorf(err, errlen,
                          "tls_private_key: %s has mode %04o (group or others may use it): "
                          "chmod 600 it",
                          path, (unsigned)(st.st_mode & 07777));
    }
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        int e = errno;
        close(fd);
        return cfg_errorf(err, errlen, "tls_private_key: cannot read %s: %s", path, strerror(e));
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, tls_no_passphrase, NULL);
    fclose(f);
    char r[256];
    if (key == NULL)
        return cfg_errorf(err, errlen, "tls_private_key: %s holds no unencrypted PEM key: %s", path,
                          tls_ssl_reason(r, sizeof(r)));
    int ok = SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    if (ok != 1)
        return cfg_errorf(err, errlen, "tls_private_key: %s: %s", path,
                          tls_ssl_reason(r, sizeof(r)));
    if (SSL_CTX_check_private_key(ctx) != 1)
        return cfg_errorf(err, errlen, "tls_private_key: %s does not match tls_certificate: %s",
                          path, tls_ssl_reason(r, sizeof(r)));
    return 0;
}

/* Mutual TLS: ca is the whole trust store (no default verify paths are ever added). */
static int tls_require_client_cert(SSL_CTX *ctx, const char *ca, char *err, size_t errlen)
{
    char r[256];
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        return cfg_errorf(err, errlen, "tls_client_ca: cannot load %s: %s", ca,
                          tls_ssl_reason(r, sizeof(r)));
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names == NULL || sk_X509_NAME_num(names) == 0) {
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        return cfg_errorf(err, errlen, "tls_client_ca: %s holds no CA certificate: %s", ca,
                          tls_ssl_reason(r, sizeof(r)));
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_verify_depth(ctx, TLS_VERIFY_DEPTH);
    return 0;
}

int tls_configure(void *ssl_ctx, const cfg *c, char *err, size_t errlen)
{
    SSL_CTX *ctx = ssl_ctx;
    if (errlen > 0)
        err[0] = '\0';
    ERR_clear_error();
    if (tls_set_versions(ctx, c, err, errlen) != 0 || tls_set_ciphers(ctx, c, err, errlen) != 0)
        return -1;
    char r[256];
    if (SSL_CTX_use_certificate_chain_file(ctx, c->tls_certificate) != 1)
        return cfg_errorf(err, errlen, "tls_certificate: cannot load %s: %s", c->tls_certificate,
                          tls_ssl_reason(r, sizeof(r)));
    if (tls_load_key(ctx, c->tls_private_key, err, errlen) != 0)
        return -1;
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION |
                                   SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION);
    if (c->tls_client_ca[0] != '\0') {
        if (tls_require_client_cert(ctx, c->tls_client_ca, err, errlen) != 0)
            return -1;
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return 0;
}

int tls_peer_subject(const struct mg_connection *conn, char *out, size_t outlen)
{
    if (outlen == 0)
        return -1;
    out[0] = '\0';
    const struct mg_request_info *ri = conn != NULL ? mg_get_request_info(conn) : NULL;
    if (ri == NULL || ri->client_cert == NULL || ri->client_cert->peer_cert == NULL)
        return -1;
    X509_NAME *name = X509_get_subject_name((X509 *)ri->client_cert->peer_cert);
    BIO *b = BIO_new(BIO_s_mem());
    if (name == NULL || b == NULL) {
        BIO_free(b);
        return -1;
    }
    int rc = -1;
    char *data = NULL;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0) {
        long n = BIO_get_mem_data(b, &data);
        if (n > 0 && (size_t)n < outlen && data != NULL && memchr(data, '\0', (size_t)n) == NULL) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
            rc = 0;
        }
    }
    BIO_free(b);
    ERR_clear_error();
    return rc;
}
