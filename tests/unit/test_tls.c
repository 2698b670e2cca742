/*
 * test_tls: the front's TLS policy (appliance/front/tls.h), applied by tls_configure to an
 * SSL_CTX made here, as CivetWeb's init_ssl callback gets it. What the default settings
 * leave (versions, only AEAD ciphers with forward secrecy, options, no client certificate
 * asked), what each tls_* setting changes, and every setting the appliance refuses to start
 * with, each with its one-line message naming the setting and the culprit: weak or empty
 * cipher lists, a private key that others may read, behind a symbolic link, not a key or not
 * the certificate's, and a client CA file without a certificate. Handshakes themselves are
 * tests/blackbox/test_tls_policy.py's.
 */
#include "appliance/front/tls.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/testcert.h"
#include "tests/unit/testenv.h"

typedef struct {
    char dir[64];
    cfg c;
    SSL_CTX *ctx;
    char err[TLS_ERR_MAX];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/signd-tls-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    cfg_defaults(&f->c, f->dir);
    testcert_make(f->dir, "server", "/CN=localhost", NULL, NULL, 0, f->c.tls_certificate,
                  f->c.tls_private_key);
    f->ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(f->ctx);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    SSL_CTX_free(f->ctx);
    testenv_cleanup(f->dir);
    free(f);
    return 0;
}

static int configure(fixture *f)
{
    return tls_configure(f->ctx, &f->c, f->err, sizeof(f->err));
}

/* The refusal's message holds each of the strings up to NULL. */
static void expect_refused(fixture *f, ...)
{
    if (configure(f) != -1)
        fail_msg("accepted");
    va_list ap;
    va_start(ap, f);
    for (const char *want = va_arg(ap, const char *); want != NULL; want = va_arg(ap, const char *))
        if (strstr(f->err, want) == NULL)
            fail_msg("'%s' not in '%s'", want, f->err);
    va_end(ap);
    assert_null(strchr(f->err, '\n'));
}

static void test_the_default_policy_is_tls_1_2_up_with_aead_and_forward_secrecy(void **state)
{
    fixture *f = *state;
    assert_int_equal(configure(f), 0);
    assert_string_equal(f->err, "");
    assert_int_equal(SSL_CTX_get_min_proto_version(f->ctx), TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_get_max_proto_version(f->ctx), TLS1_3_VERSION);
    STACK_OF(SSL_CIPHER) *all = SSL_CTX_get_ciphers(f->ctx);
    int n12 = 0, n13 = 0;
    for (int i = 0; i < sk_SSL_CIPHER_num(all); i++) {
        const SSL_CIPHER *ci = sk_SSL_CIPHER_value(all, i);
        assert_true(SSL_CIPHER_is_aead(ci));
        int kx = SSL_CIPHER_get_kx_nid(ci);
        if (kx == NID_kx_any) {
            n13++;
            continue;
        }
        if (kx != NID_kx_ecdhe && kx != NID_kx_dhe)
            fail_msg("%s has no forward secrecy", SSL_CIPHER_get_name(ci));
        assert_int_not_equal(SSL_CIPHER_get_auth_nid(ci), NID_auth_null);
        n12++;
    }
    assert_true(n12 > 0 && n13 > 0);
    uint64_t opts = SSL_CTX_get_options(f->ctx);
    assert_true(opts & SSL_OP_NO_COMPRESSION);
    assert_true(opts & SSL_OP_NO_RENEGOTIATION);
    assert_true(opts & SSL_OP_CIPHER_SERVER_PREFERENCE);
    assert_false(opts & SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
    assert_false(opts & (SSL_OP_NO_TLSv1_2 | SSL_OP_NO_TLSv1_3));
    /* Without tls_client_ca the server asks for no certificate and names no CA. */
    assert_int_equal(SSL_CTX_get_verify_mode(f->ctx), SSL_VERIFY_NONE);
    assert_true(sk_X509_NAME_num(SSL_CTX_get_client_CA_list(f->ctx)) <= 0);
}

/* CivetWeb's own option must say the same floor as tls_min_version (tls.h). */
static void test_min_version_sets_the_floor_and_civetweb_agrees(void **state)
{
    fixture *f = *state;
    assert_string_equal(tls_civetweb_protocol_version(&f->c), "4");
    snprintf(f->c.tls_min_version, sizeof(f->c.tls_min_version), "1.3");
    assert_string_equal(tls_civetweb_protocol_version(&f->c), "5");
    /* CivetWeb's per-version options set before the callback do not survive it. */
    SSL_CTX_set_options(f->ctx, SSL_OP_NO_TLSv1_3);
    assert_int_equal(configure(f), 0);
    assert_int_equal(SSL_CTX_get_min_proto_version(f->ctx), TLS1_3_VERSION);
    assert_false(SSL_CTX_get_options(f->ctx) & SSL_OP_NO_TLSv1_3);
    snprintf(f->c.tls_min_version, sizeof(f->c.tls_min_version), "1.1");
    expect_refused(f, "tls_min_version: '1.1' is neither 1.2 nor 1.3", NULL);
}

static void test_cipher_settings_limit_what_is_offered(void **state)
{
    fixture *f = *state;
    snprintf(f->c.tls_ciphers, sizeof(f->c.tls_ciphers), "ECDHE-ECDSA-CHACHA20-POLY1305");
    snprintf(f->c.tls_ciphersuites, sizeof(f->c.tls_ciphersuites), "TLS_CHACHA20_POLY1305_SHA256");
    assert_int_equal(configure(f), 0);
    STACK_OF(SSL_CIPHER) *all = SSL_CTX_get_ciphers(f->ctx);
    assert_int_equal(sk_SSL_CIPHER_num(all), 2);
    assert_string_equal(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(all, 0)),
                        "TLS_CHACHA20_POLY1305_SHA256");
    assert_string_equal(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(all, 1)),
                        "ECDHE-ECDSA-CHACHA20-POLY1305");
}

static void test_a_weak_cipher_setting_is_refused_naming_the_cipher(void **state)
{
    fixture *f = *state;
    static const char *const lists[][2] = {
        {"AES128-SHA", "AES128-SHA"}, /* CBC, RSA key exchange */
        {"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA"},
        {"ECDHE-ECDSA-AES128-GCM-SHA256:AES256-GCM-SHA384", "AES256-GCM-SHA384"}, /* no FS */
        {"ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384"},                   /* CBC */
    };
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        snprintf(f->c.tls_ciphers, sizeof(f->c.tls_ciphers), "%s", lists[i][0]);
        char want[256];
        snprintf(want, sizeof(want), "tls_ciphers: %s is not an AEAD cipher with forward secrecy",
                 lists[i][1]);
        assert_int_equal(configure(f), -1);
        assert_string_equal(f->err, want);
    }
}

static void test_a_cipher_setting_enabling_nothing_is_refused(void **state)
{
    fixture *f = *state;
    snprintf(f->c.tls_ciphers, sizeof(f->c.tls_ciphers), "NO-SUCH-CIPHER");
    expect_refused(f, "tls_ciphers: 'NO-SUCH-CIPHER' enables no TLS 1.2 cipher", NULL);
    cfg_defaults(&f->c, f->dir);
    testcert_make(f->dir, "server", "/CN=localhost", NULL, NULL, 0, f->c.tls_certificate,
                  f->c.tls_private_key);
    snprintf(f->c.tls_ciphersuites, sizeof(f->c.tls_ciphersuites), "%s", "");
    expect_refused(f, "tls_ciphersuites: '' enables no TLS 1.3 suite", NULL);
}

static void test_a_key_others_or_its_group_may_read_is_refused(void **state)
{
    fixture *f = *state;
    assert_int_equal(chmod(f->c.tls_private_key, 0644), 0);
    expect_refused(f, "tls_private_key: ", f->c.tls_private_key,
                   " has mode 0644 (group or others may use it): chmod 600 it", NULL);
    assert_int_equal(chmod(f->c.tls_private_key, 0640), 0);
    expect_refused(f, f->c.tls_private_key, "mode 0640", "chmod 600", NULL);
    assert_int_equal(chmod(f->c.tls_private_key, 0601), 0);
    expect_refused(f, "mode 0601", NULL);
    assert_int_equal(chmod(f->c.tls_private_key, 0400), 0);
    assert_int_equal(configure(f), 0);
}

static void test_a_key_behind_a_symbolic_link_is_refused(void **state)
{
    fixture *f = *state;
    char link[PATH_MAX];
    snprintf(link, sizeof(link), "%s/link.key", f->dir);
    assert_int_equal(symlink(f->c.tls_private_key, link), 0);
    snprintf(f->c.tls_private_key, sizeof(f->c.tls_private_key), "%s", link);
    expect_refused(f, "tls_private_key: ", link, " is a symbolic link; name the file itself", NULL);
}

static void test_a_key_that_is_no_key_or_not_the_certificates_is_refused(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/missing.key", f->dir);
    snprintf(f->c.tls_private_key, sizeof(f->c.tls_private_key), "%s", path);
    expect_refused(f, "tls_private_key: cannot open ", path, NULL);

    snprintf(f->c.tls_private_key, sizeof(f->c.tls_private_key), "%s", f->dir);
    expect_refused(f, "is not a regular file", NULL);

    snprintf(f->c.tls_private_key, sizeof(f->c.tls_private_key), "%s/server.pem", f->dir);
    assert_int_equal(chmod(f->c.tls_private_key, 0600), 0);
    expect_refused(f, "holds no unencrypted PEM key", NULL);

    char other_cert[PATH_MAX], other_key[PATH_MAX];
    testcert_make(f->dir, "other", "/CN=other", NULL, NULL, 0, other_cert, other_key);
    snprintf(f->c.tls_private_key, sizeof(f->c.tls_private_key), "%s", other_key);
    /* OpenSSL sees the mismatch as it takes the key: "<path>: key values mismatch". */
    expect_refused(f, "tls_private_key: ", other_key, "mismatch", NULL);

    snprintf(f->c.tls_certificate, sizeof(f->c.tls_certificate), "%s/none.pem", f->dir);
    expect_refused(f, "tls_certificate: cannot load ", f->c.tls_certificate, NULL);
}

static void test_a_client_ca_makes_it_the_only_trust_and_a_certificate_required(void **state)
{
    fixture *f = *state;
    char ca[PATH_MAX], ca_key[PATH_MAX];
    testcert_make(f->dir, "ca", "/CN=Test client CA a", NULL, NULL, 1, ca, ca_key);
    snprintf(f->c.tls_client_ca, sizeof(f->c.tls_client_ca), "%s", ca);
    assert_int_equal(configure(f), 0);
    assert_int_equal(SSL_CTX_get_verify_mode(f->ctx),
                     SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    assert_int_equal(SSL_CTX_get_verify_depth(f->ctx), TLS_VERIFY_DEPTH);
    STACK_OF(X509_NAME) *names = SSL_CTX_get_client_CA_list(f->ctx);
    assert_int_equal(sk_X509_NAME_num(names), 1);
    char one[256];
    X509_NAME_oneline(sk_X509_NAME_value(names, 0), one, sizeof(one));
    assert_string_equal(one, "/CN=Test client CA a");
}

static void test_a_client_ca_file_without_certificates_is_refused(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/empty-ca.pem", f->dir);
    FILE *fp = fopen(path, "w");
    fputs("not a certificate\n", fp);
    fclose(fp);
    snprintf(f->c.tls_client_ca, sizeof(f->c.tls_client_ca), "%s", path);
    expect_refused(f, "tls_client_ca: ", path, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_the_default_policy_is_tls_1_2_up_with_aead_and_forward_secrecy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_version_sets_the_floor_and_civetweb_agrees, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cipher_settings_limit_what_is_offered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_weak_cipher_setting_is_refused_naming_the_cipher,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_cipher_setting_enabling_nothing_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_key_others_or_its_group_may_read_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_key_behind_a_symbolic_link_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_a_key_that_is_no_key_or_not_the_certificates_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_client_ca_makes_it_the_only_trust_and_a_certificate_required, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_client_ca_file_without_certificates_is_refused,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
