/*
 * hello-https: the smallest hardened HTTPS server on our CivetWeb 1.15 build, proving the
 * TLS path (tests/blackbox/test_hello_https.py drives it).
 *
 *   hello-https CERT_PEM KEY_PEM PORT
 *
 * Listens on 127.0.0.1:PORT over TLS 1.2 or 1.3 only (ECDHE with AEAD ciphers for TLS 1.2),
 * answers GET /hello with {"hello":"world"} and anything else with a JSON 404, each
 * response (headers and body) in a single mg_write. Prints "listening on
 * https://127.0.0.1:PORT" once it serves; stops on SIGTERM or SIGINT and exits 0.
 *
 * What CivetWeb 1.15 does, read in its civetweb.c:
 *  - ssl_certificate names ONE PEM file holding certificate and key. Our certificate and
 *    key stay in their own files (the key keeps its 0600 mode): the init_ssl callback loads
 *    them and returns 0, so CivetWeb goes on and applies the rest of its TLS options
 *    (cipher list, session id context). Returning 1 would make CivetWeb skip those.
 *  - ssl_protocol_version N sets SSL_OP_NO_* for every version below: 0 any, 1 no SSLv2,
 *    2 no SSLv3, 3 no TLS 1.0, 4 no TLS 1.1 (TLS 1.2 and 1.3), 5 TLS 1.3 only. The init_ssl
 *    callback pins the minimum to TLS 1.2 as well.
 *  - no Server header is ever sent, and we write our own headers anyway.
 */
#include "civetweb.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define HELLO_TLS12_CIPHERS                                                                        \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define HELLO_TLS13_SUITES                                                                         \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define HELLO_RESPONSE_MAX 1024 /* headers and body of every response we send */

typedef struct {
    const char *cert;
    const char *key;
} hello_tls;

/* Sends status, extra headers (each ending in CRLF, or "") and a JSON body in one write. */
static int hello_send(struct mg_connection *c, int status, const char *reason, const char *extra,
                      const char *body)
{
    char buf[HELLO_RESPONSE_MAX];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "%s"
                     "\r\n"
                     "%s",
                     status, reason, strlen(body), extra, body);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return 500; /* cannot happen with our fixed texts */
    mg_write(c, buf, (size_t)n);
    return status;
}

static int hello_not_found(struct mg_connection *c, void *unused)
{
    (void)unused;
    return hello_send(c, 404, "Not Found", "",
                      "{\"error\":{\"code\":\"not_found\",\"message\":\"no such resource\"}}");
}

static int hello_handler(struct mg_connection *c, void *unused)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    /* CivetWeb also routes /hello/anything here: only the exact path is ours. */
    if (ri == NULL || ri->local_uri == NULL || strcmp(ri->local_uri, "/hello") != 0)
        return hello_not_found(c, unused);
    if (strcmp(ri->request_method, "GET") != 0)
        return hello_send(c, 405, "Method Not Allowed", "Allow: GET\r\n",
                          "{\"error\":{\"code\":\"method_not_allowed\","
                          "\"message\":\"/hello takes GET only\"}}");
    return hello_send(c, 200, "OK", "", "{\"hello\":\"world\"}");
}

/* Errors CivetWeb raises itself (malformed request, headers too large, timeout) in our JSON
 * shape, with a fixed message (CivetWeb's own text is not JSON-escaped); the connection is
 * not worth keeping after one of them. */
static int hello_http_error(struct mg_connection *c, int status, const char *msg)
{
    static const struct {
        int status;
        const char *code;
    } codes[] = {
        {400, "bad_request"},       {404, "not_found"},         {405, "method_not_allowed"},
        {408, "request_timeout"},   {413, "payload_too_large"}, {414, "uri_too_long"},
        {431, "headers_too_large"}, {500, "internal_error"},
    };
    const char *code = status >= 500 ? "internal_error" : "bad_request";
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (codes[i].status == status)
            code = codes[i].code;
    (void)msg;
    const char *reason = mg_get_response_code_text(c, status);
    char body[192];
    snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, reason);
    hello_send(c, status, reason, "Connection: close\r\n", body);
    return 0;
}

/* Loads certificate chain and key from their own files and sets the protocol floor. Returns
 * 0 so that CivetWeb applies ssl_cipher_list and the rest of its TLS set-up afterwards. */
static int hello_init_ssl(void *ssl_ctx, void *arg)
{
    SSL_CTX *ctx = ssl_ctx;
    const hello_tls *t = arg;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, HELLO_TLS13_SUITES) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "hello-https: TLS set-up failed (certificate %s, key %s): %s\n", t->cert,
                t->key, ERR_reason_error_string(ERR_get_error()));
        return -1;
    }
    return 0;
}

static int hello_log(const struct mg_connection *c, const char *msg)
{
    (void)c;
    fprintf(stderr, "hello-https: civetweb: %s\n", msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: hello-https CERT_PEM KEY_PEM PORT\n");
        return 2;
    }
    char *end;
    errno = 0;
    unsigned long port = strtoul(argv[3], &end, 10);
    if (errno != 0 || end == argv[3] || *end != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "hello-https: PORT must be 1 to 65535, got '%s'\n", argv[3]);
        return 2;
    }
    if (access(argv[1], R_OK) != 0 || access(argv[2], R_OK) != 0) {
        fprintf(stderr, "hello-https: cannot read %s: %s\n",
                access(argv[1], R_OK) != 0 ? argv[1] : argv[2], strerror(errno));
        return 1;
    }

    if (!(mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS) ||
        !mg_check_feature(MG_FEATURES_TLS)) {
        fprintf(stderr, "hello-https: CivetWeb has no TLS support\n");
        return 1;
    }

    /* CivetWeb's threads inherit this mask: the signals reach sigwait below only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    char ports[32];
    snprintf(ports, sizeof(ports), "127.0.0.1:%lus", port);
    /* clang-format off */
    const char *options[] = {
        "listening_ports", ports,
        "ssl_protocol_version", "4", /* no SSLv2, SSLv3, TLS 1.0, TLS 1.1 */
        "ssl_cipher_list", HELLO_TLS12_CIPHERS,
        "tcp_nodelay", "1",
        "num_threads", "4",
        "request_timeout_ms", "5000",
        "enable_keep_alive", "yes",
        NULL,
    };
    /* clang-format on */
    hello_tls tls = {argv[1], argv[2]};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof(cb));
    cb.init_ssl = hello_init_ssl;
    cb.http_error = hello_http_error;
    cb.log_message = hello_log;
    struct mg_init_data init = {
        .callbacks = &cb, .user_data = &tls, .configuration_options = options};
    char ebuf[256] = "";
    struct mg_error_data ed;
    memset(&ed, 0, sizeof(ed));
    ed.text = ebuf;
    ed.text_buffer_size = sizeof(ebuf);
    struct mg_context *ctx = mg_start2(&init, &ed);
    if (ctx == NULL) {
        fprintf(stderr, "hello-https: cannot start on %s: %s\n", ports, ebuf);
        mg_exit_library();
        return 1;
    }
    mg_set_request_handler(ctx, "/hello", hello_handler, NULL);
    mg_set_request_handler(ctx, "/", hello_not_found, NULL);

    struct mg_server_port sp[2];
    int np = mg_get_server_ports(ctx, 2, sp);
    printf("listening on https://127.0.0.1:%d\n", np > 0 ? sp[0].port : (int)port);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "hello-https: signal %d, stopping\n", sig);
    mg_stop(ctx);
    mg_exit_library();
    return 0;
}
