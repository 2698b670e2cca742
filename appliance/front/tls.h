/*
 * tls: the appliance's TLS policy, applied to CivetWeb's SSL_CTX from its init_ssl
 * callback, and the one accessor for the client certificate of a connection.
 *
 * What it owns, from the configuration (config.h):
 *  - versions: tls_min_version ("1.2" or "1.3") up to TLS 1.3; nothing older, ever;
 *  - TLS 1.2 ciphers (tls_ciphers): every cipher the list enables must be AEAD with an
 *    ECDHE or DHE key exchange and an authenticated server; anything else (CBC, RC4, static
 *    RSA, PSK, anonymous) refuses the start, naming the cipher. A list enabling nothing is
 *    refused too. TLS 1.3 suites (tls_ciphersuites) must enable at least one AEAD suite;
 *  - the certificate chain (tls_certificate) and the private key (tls_private_key). The key
 *    is opened with O_NOFOLLOW and read from that descriptor: it must be a regular file
 *    with no permission bit for group or others (chmod 600);
 *  - no TLS compression, no renegotiation, the server's cipher order;
 *  - mutual TLS when tls_client_ca is set: that file (PEM, one or more CA certificates) is
 *    the whole trust store for client certificates (never the system's CA bundle), its
 *    names are sent as the acceptable CA list, and every handshake needs a client
 *    certificate that verifies against it (chain depth at most TLS_VERIFY_DEPTH).
 *
 * CivetWeb 1.15 (init_ssl_ctx_impl in civetweb.c) and this policy, step by step:
 *  1. before init_ssl: clears the SSL_OP_NO_<version> options, then sets those of its
 *     ssl_protocol_version option (SSL_OP_ALL included: only interoperability workarounds
 *     in OpenSSL 3), SSL_OP_CIPHER_SERVER_PREFERENCE, SSL_OP_NO_COMPRESSION,
 *     SSL_OP_NO_RENEGOTIATION, its info and SNI callbacks. tls_configure runs after this,
 *     so what it sets wins; it still clears the version options and uses min/max versions;
 *  2. init_ssl returning 0 (what tls_configure's caller returns) lets CivetWeb go on:
 *     it sets the session id context (needed to resume sessions with client certificates),
 *     loads no file (no ssl_certificate option), then only when the options ask for it:
 *       - ssl_verify_peer=yes|optional: SSL_CTX_load_verify_locations(ssl_ca_file/_path),
 *         SSL_CTX_set_verify and, as ssl_default_verify_paths defaults to yes, the
 *         system's CA bundle added to the trust store. Without ssl_verify_peer it never
 *         calls SSL_CTX_set_verify, so the verify mode set here stays: do NOT pass
 *         ssl_verify_peer, it would make every publicly issued certificate a valid client;
 *       - ssl_cipher_list: SSL_CTX_set_cipher_list AFTER the callback, replacing the list
 *         checked here, and a failure there is only logged. So that option must not be
 *         passed either: this module is the only place the cipher list is set;
 *       - ssl_cache_timeout > 0: a session cache (default -1: OpenSSL's defaults kept).
 *  3. per connection: SSL_new from this context, SSL_accept, then request_info.client_cert
 *     filled from SSL_get_peer_certificate (peer_cert is the X509 *), kept for the whole
 *     connection. With one domain the SNI callback switches to this same context.
 *
 * No state, no locks. tls_configure runs once, at start-up, in the thread of mg_start2;
 * tls_peer_subject is safe from any request handler thread.
 */
#ifndef APPLIANCE_TLS_H
#define APPLIANCE_TLS_H

#include "appliance/common/config.h"

#include <stddef.h>

struct mg_connection;

#define TLS_ERR_MAX (CFG_PATH_MAX + 256) /* enough for every message of tls_configure */
#define TLS_SUBJECT_MAX 1024             /* a subject in RFC 2253 form, with the NUL */
#define TLS_VERIFY_DEPTH 4               /* CA certificates above a client certificate */

/* Applies the whole policy above to ssl_ctx (an SSL_CTX *, as CivetWeb's init_ssl callback
 * gets it). Returns 0, or -1 with one line in err naming the setting and the problem:
 *   "tls_ciphers: AES128-SHA is not an AEAD cipher with forward secrecy"
 *   "tls_private_key: /var/lib/signd/tls/key.pem has mode 0644 (group or others may read
 *    it): chmod 600 it"
 *
 *   static int init_ssl(void *ssl_ctx, void *arg)
 *   {
 *       char err[TLS_ERR_MAX];
 *       if (tls_configure(ssl_ctx, arg, err, sizeof(err)) != 0) {
 *           fprintf(stderr, "signd: %s\n", err);
 *           return -1;
 *       }
 *       return 0;
 *   } */
int tls_configure(void *ssl_ctx, const cfg *c, char *err, size_t errlen);

/* The value of CivetWeb's ssl_protocol_version option matching c->tls_min_version: "4"
 * (TLS 1.2 and up) or "5" (TLS 1.3 only). CivetWeb applies it before tls_configure, which
 * sets the same floor again; passing the matching value keeps the two from disagreeing. */
const char *tls_civetweb_protocol_version(const cfg *c);

/* The subject of the connection's client certificate in RFC 2253 form (X509_NAME_print_ex,
 * XN_FLAG_RFC2253: most specific RDN first, special characters escaped), e.g.
 * "CN=app1,O=Example". Returns 0, or -1 with out "" when there is no client certificate
 * (tls_client_ca is "" or conn is not TLS) or when the subject does not fit in outlen: it is
 * never truncated, so two different subjects never compare equal.
 *
 * A certificate is only ever there once it has verified: with tls_client_ca set the
 * handshake fails without one or with one that does not verify (SSL_VERIFY_PEER |
 * SSL_VERIFY_FAIL_IF_NO_PEER_CERT), and without tls_client_ca the server asks for none, so
 * a client cannot send one. Call it from a request handler (it reads
 * mg_get_request_info(conn)->client_cert, valid for the connection's life).
 *
 *   char subject[TLS_SUBJECT_MAX];
 *   if (tls_peer_subject(conn, subject, sizeof(subject)) == 0 && strcmp(subject, bound) == 0)
 *       ... the credential is used from the certificate it is bound to ... */
int tls_peer_subject(const struct mg_connection *conn, char *out, size_t outlen);

#endif
