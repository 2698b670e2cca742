/*
 * cfg: the configuration file. See config.h for the format and the contract.
 *
 * cfg_settings below is the one table: every setting's name, type, field, default (as it
 * is written in the file, so defaults go through the same parser as the file does),
 * bounds, extra check and one-line documentation.
 */
#include "appliance/common/config.h"
#include "base/hex.h"
#include "base/text.h"
#include "base/file.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

typedef enum {
    CFG_T_STRING, /* taken as written */
    CFG_T_PATH,   /* a relative path is resolved against the file's directory */
    CFG_T_MODULE, /* a path, but a bare file name is left to the dynamic loader */
    CFG_T_UINT,   /* unsigned decimal within [min, max] */
    CFG_T_BOOL,   /* true or false */
} cfg_type;

/* An extra check of a value that passed its type and bounds: NULL when fine, else the
 * problem, worded to follow the setting's name. */
typedef const char *(*cfg_check_fn)(const char *text, unsigned num);

typedef struct {
    const char *name;
    cfg_type type;
    size_t offset;
    size_t size; /* strings: the field's size, with the NUL */
    const char *def;
    unsigned min, max; /* integers */
    bool empty_ok;     /* strings: "" is a meaningful value */
    cfg_check_fn check;
    const char *doc; /* one line, written above the setting by cfg_write_defaults */
} cfg_setting;

static const char *cfg_check_ipv4(const char *text, unsigned num);
static const char *cfg_check_token(const char *text, unsigned num);
static const char *cfg_check_key_bits(const char *text, unsigned num);
static const char *cfg_check_printable(const char *text, unsigned num);
static const char *cfg_check_user(const char *text, unsigned num);
static const char *cfg_check_tls_version(const char *text, unsigned num);
static const char *cfg_check_process_model(const char *text, unsigned num);
static const char *cfg_check_sign_mechanism(const char *text, unsigned num);
static const char *cfg_check_credential(const char *text, unsigned num);
static const char *cfg_check_public_url(const char *text, unsigned num);
static const char *cfg_check_node_name(const char *text, unsigned num);
static const char *cfg_check_env(const char *text, unsigned num);

#define CFG_FIELD(f) offsetof(cfg, f), sizeof(((cfg *)0)->f)
#define CFG_SECONDS_PER_YEAR 31536000u

static const cfg_setting cfg_settings[] = {
    {"listen_address", CFG_T_STRING, CFG_FIELD(listen_address), "127.0.0.1", 0, 0, false,
     cfg_check_ipv4, "IPv4 address the HTTPS server listens on"},
    {"port", CFG_T_UINT, CFG_FIELD(port), "8443", 1, 65535, false, NULL,
     "TCP port of the HTTPS server"},
    {"pkcs11_module", CFG_T_MODULE, CFG_FIELD(pkcs11_module), "/usr/lib/softhsm/libsofthsm2.so", 0,
     0, false, NULL, "PKCS#11 module (shared library) that holds the keys"},
    {"softhsm2_conf", CFG_T_PATH, CFG_FIELD(softhsm2_conf), "softhsm2.conf", 0, 0, true, NULL,
     "SoftHSM2 configuration file, set as SOFTHSM2_CONF; empty for a hardware module"},
    {"pkcs11_sign_mechanism", CFG_T_STRING, CFG_FIELD(pkcs11_sign_mechanism), "auto", 0, 0, false,
     cfg_check_sign_mechanism,
     "How RS256 is computed in the token: auto (CKM_SHA256_RSA_PKCS when the token has it, "
     "else CKM_RSA_PKCS over a DigestInfo built outside), sha256_rsa_pkcs or rsa_pkcs (the "
     "keeper refuses to start when the token lacks the one named)"},
    {"token", CFG_T_STRING, CFG_FIELD(token), "signd", 0, 0, false, cfg_check_token,
     "The token: its label, or an RFC 7512 pkcs11: URI"},
    {"pkcs11_env", CFG_T_STRING, CFG_FIELD(pkcs11_env), "", 0, 0, true, cfg_check_env,
     "NAME=value,... set in the keeper's environment for the module (TPM2_PKCS11_*, TSS2_*, "
     "OCK_*, YUBIHSM_PKCS11_CONF, ChrystokiConfigurationPath, DBUS_SESSION_BUS_ADDRESS; no "
     "comma in a value, never a secret); empty: none"},
    {"pin_file", CFG_T_PATH, CFG_FIELD(pin_file), "pin", 0, 0, false, NULL,
     "File holding the token's user PIN (mode 0600)"},
    {"pin_credential", CFG_T_STRING, CFG_FIELD(pin_credential), "", 0, 0, true,
     cfg_check_credential,
     "systemd credential holding the PIN (LoadCredential=NAME:...): when set, the PIN is read "
     "from $CREDENTIALS_DIRECTORY/NAME instead of pin_file; empty: pin_file"},
    {"tls_certificate", CFG_T_PATH, CFG_FIELD(tls_certificate), "tls/cert.pem", 0, 0, false, NULL,
     "HTTPS certificate chain, PEM, the server's certificate first"},
    {"tls_private_key", CFG_T_PATH, CFG_FIELD(tls_private_key), "tls/key.pem", 0, 0, false, NULL,
     "HTTPS private key, PEM (mode 0600)"},
    {"database", CFG_T_PATH, CFG_FIELD(database), "appliance.db", 0, 0, false, NULL,
     "Key registry, revocations, credentials, audit trail: a SQLite file, or a PostgreSQL "
     "URI (postgresql://... or postgres://..., never with a password in it: passfile= or "
     "the Unix socket's peer) that several nodes share (cluster mode)"},
    {"state_directory", CFG_T_PATH, CFG_FIELD(state_directory), "", 0, 0, true, NULL,
     "This node's own files, never shared (the keeper's state in keeper/); empty: the "
     "directory of database, which must then be a file (required with a PostgreSQL URI)"},
    {"node_name", CFG_T_STRING, CFG_FIELD(node_name), "", 0, 0, true, cfg_check_node_name,
     "This node's name in the audit trail's events ([A-Za-z0-9._-], 1 to 63 bytes); empty: "
     "the host name"},
    {"worker_threads", CFG_T_UINT, CFG_FIELD(worker_threads), "64", 2, 1024, false, NULL,
     "HTTPS worker threads, each with its own PKCS#11 session; an idle keep-alive connection "
     "holds one, so once only a quarter (at least 2) is free responses close their connection"},
    {"max_pkcs11_sessions", CFG_T_UINT, CFG_FIELD(max_pkcs11_sessions), "0", 0, 4096, false, NULL,
     "Most PKCS#11 sessions to open; 0 means worker_threads + events_max_subscribers + 4, "
     "one for every thread that may sign"},
    {"request_timeout_ms", CFG_T_UINT, CFG_FIELD(request_timeout_ms), "10000", 100, 600000, false,
     NULL, "Milliseconds a client has to send a whole request"},
    {"keep_alive_timeout_ms", CFG_T_UINT, CFG_FIELD(keep_alive_timeout_ms), "30000", 0, 600000,
     false, NULL, "Milliseconds an idle keep-alive connection stays open"},
    {"max_active_keys", CFG_T_UINT, CFG_FIELD(max_active_keys), "1000", 1, 1000, false, NULL,
     "Most active keys at once; can be lowered, never raised above 1000"},
    {"default_key_bits", CFG_T_UINT, CFG_FIELD(default_key_bits), "2048", 2048, 4096, false,
     cfg_check_key_bits,
     "RSA modulus of a new key when the request names none: 2048, 3072 or 4096"},
    {"token_ttl_default", CFG_T_UINT, CFG_FIELD(token_ttl_default), "3600", 1, CFG_SECONDS_PER_YEAR,
     false, NULL, "Seconds a token lives when the request names no ttl; min <= default <= max"},
    {"token_ttl_min", CFG_T_UINT, CFG_FIELD(token_ttl_min), "60", 1, CFG_SECONDS_PER_YEAR, false,
     NULL, "Shortest ttl a request may ask for, in seconds"},
    {"token_ttl_max", CFG_T_UINT, CFG_FIELD(token_ttl_max), "2592000", 1, CFG_SECONDS_PER_YEAR,
     false, NULL, "Longest ttl a request may ask for, in seconds"},
    {"rotation_grace_seconds", CFG_T_UINT, CFG_FIELD(rotation_grace_seconds), "0", 0,
     CFG_SECONDS_PER_YEAR, false, NULL,
     "Seconds a rotated key stays in the JWKS before it is revoked; 0 means token_ttl_max"},
    {"token_issuer", CFG_T_STRING, CFG_FIELD(token_issuer), "", 0, 0, true, cfg_check_printable,
     "The iss claim of every token; empty for none"},
    {"public_url", CFG_T_STRING, CFG_FIELD(public_url), "", 0, 0, true, cfg_check_public_url,
     "https://host[:port] verifiers reach the appliance at, the base of the status-list uri "
     "in revocable tokens; empty: https://listen_address:port"},
    {"jwks_max_age", CFG_T_UINT, CFG_FIELD(jwks_max_age), "60", 0, 86400, false, NULL,
     "Cache-Control max-age of the JWKS, in seconds"},
    {"revocations_max_age", CFG_T_UINT, CFG_FIELD(revocations_max_age), "60", 0, 86400, false, NULL,
     "Cache-Control max-age of the revocation feed, in seconds"},
    {"revocation_feed_lifetime", CFG_T_UINT, CFG_FIELD(revocation_feed_lifetime), "900", 60,
     7 * 86400, false, NULL,
     "Seconds a signed revocation feed stays valid (its exp - iat): verifiers fail closed "
     "once a copy is this old; it is re-signed at least every quarter of it"},
    {"publication_signs_per_second", CFG_T_UINT, CFG_FIELD(publication_signs_per_second), "20", 1,
     10000, false, NULL,
     "Signatures per second (and in a burst) that unauthenticated requests for the signed "
     "feed and the status lists may make the token compute; past it the last signed copy is "
     "served while valid, else 503 signing_budget_exhausted"},
    {"events_max_subscribers", CFG_T_UINT, CFG_FIELD(events_max_subscribers), "256", 0, 4096, false,
     NULL,
     "Most revocation event-stream subscribers at once, each holding a thread of its own on "
     "top of worker_threads; past it 503 too_many_subscribers; 0 turns the stream off"},
    {"events_heartbeat_seconds", CFG_T_UINT, CFG_FIELD(events_heartbeat_seconds), "15", 1, 300,
     false, NULL, "Seconds between comment lines on an idle event stream, so proxies keep it open"},
    {"log_requests", CFG_T_BOOL, CFG_FIELD(log_requests), "false", 0, 0, false, NULL,
     "Log one JSON line per request (true or false), to log_file"},
    {"log_events", CFG_T_BOOL, CFG_FIELD(log_events), "false", 0, 0, false, NULL,
     "Log one JSON line per audit event as it commits (true or false), to log_file"},
    {"log_file", CFG_T_PATH, CFG_FIELD(log_file), "", 0, 0, true, NULL,
     "File the JSON log lines are appended to (created 0600, reopened when logrotate moves "
     "it); empty: stderr"},
    {"user", CFG_T_STRING, CFG_FIELD(user), "", 0, 0, true, cfg_check_user,
     "Started as root, every process switches to this one account once the port and files are "
     "open, and keeper_user and front_user are ignored (the front can then open the token and "
     "PIN files by name); empty: one account per process, below"},
    {"keeper_user", CFG_T_STRING, CFG_FIELD(keeper_user), "signd-keeper", 0, 0, true,
     cfg_check_user,
     "split, started as root, user empty: the keeper runs as this account, which must own "
     "pin_file, softhsm2_conf and the token directory; empty: the keeper stays root; ignored "
     "when not started as root"},
    {"front_user", CFG_T_STRING, CFG_FIELD(front_user), "signd-front", 0, 0, true, cfg_check_user,
     "split, started as root, user empty: the front runs as this account, which must own the "
     "database and tls_private_key and share a group with keeper_user (that group owns the "
     "data directory, the database and the keeper socket); empty: the front stays root; "
     "ignored when not started as root"},
    {"tls_min_version", CFG_T_STRING, CFG_FIELD(tls_min_version), "1.2", 0, 0, false,
     cfg_check_tls_version, "Oldest TLS version accepted: 1.2 or 1.3"},
    {"tls_ciphers", CFG_T_STRING, CFG_FIELD(tls_ciphers),
     "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
     "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
     0, 0, false, cfg_check_printable,
     "TLS 1.2 cipher list (OpenSSL syntax); each must be AEAD with ECDHE or DHE"},
    {"tls_ciphersuites", CFG_T_STRING, CFG_FIELD(tls_ciphersuites),
     "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256", 0, 0, false,
     cfg_check_printable, "TLS 1.3 cipher suites (OpenSSL syntax)"},
    {"tls_client_ca", CFG_T_PATH, CFG_FIELD(tls_client_ca), "", 0, 0, true, NULL,
     "CA file (PEM): when set, every client must present a certificate it issued"},
    {"hsts_max_age", CFG_T_UINT, CFG_FIELD(hsts_max_age), "31536000", 0, 2 * CFG_SECONDS_PER_YEAR,
     false, NULL, "Strict-Transport-Security max-age in seconds; 0 sends no header"},
    {"rate_limit_per_second", CFG_T_UINT, CFG_FIELD(rate_limit_per_second), "5000", 0, 1000000,
     false, NULL, "Requests per second each credential may make on average; 0: no limit"},
    {"rate_limit_burst", CFG_T_UINT, CFG_FIELD(rate_limit_burst), "10000", 1, 1000000, false, NULL,
     "Requests a credential may make at once before rate_limit_per_second applies"},
    {"auth_failures_per_minute", CFG_T_UINT, CFG_FIELD(auth_failures_per_minute), "10", 1, 60000,
     false, NULL, "Bad credentials one client address may present per minute on average"},
    {"auth_failure_burst", CFG_T_UINT, CFG_FIELD(auth_failure_burst), "10", 1, 10000, false, NULL,
     "Bad credentials one client address may present at once before it gets 429"},
    {"process_model", CFG_T_STRING, CFG_FIELD(process_model), "split", 0, 0, false,
     cfg_check_process_model,
     "split (the only model): a keeper process alone loads the token and PIN, the HTTPS front "
     "asks it"},
    {"keeper_socket", CFG_T_PATH, CFG_FIELD(keeper_socket), "keeper.sock", 0, 0, false, NULL,
     "Unix socket between the HTTPS front and the keeper (at most 107 bytes once resolved)"},
    {"keeper_timeout_ms", CFG_T_UINT, CFG_FIELD(keeper_timeout_ms), "2000", 100, 600000, false,
     NULL,
     "Longest wait of the HTTPS front for one answer of the keeper (a signature, a feed, a "
     "destroy); past it 503 hsm_timeout with Retry-After, and a new connection"},
    {"keeper_generate_timeout_ms", CFG_T_UINT, CFG_FIELD(keeper_generate_timeout_ms), "60000", 1000,
     600000, false, NULL,
     "The same for a key generation alone (RSA-4096 takes seconds); at least keeper_timeout_ms"},
    {"keeper_watchdog_ms", CFG_T_UINT, CFG_FIELD(keeper_watchdog_ms), "10000", 0, 3600000, false,
     NULL,
     "The supervisor pings the keeper every second; one that has not answered for this long "
     "is killed (SIGKILL: a hung module call cannot be interrupted) and started again; 0: no "
     "watchdog"},
    {"audit_flush_seconds", CFG_T_UINT, CFG_FIELD(audit_flush_seconds), "10", 1, 3600, false, NULL,
     "Signature counts and failure events reach the audit trail at most this late"},
    {"audit_checkpoint_events", CFG_T_UINT, CFG_FIELD(audit_checkpoint_events), "1000", 1, 1000000,
     false, NULL, "The audit key signs the chain head after this many events..."},
    {"audit_checkpoint_seconds", CFG_T_UINT, CFG_FIELD(audit_checkpoint_seconds), "300", 1, 86400,
     false, NULL, "...or this many seconds after the last checkpoint"},
    {"audit_every_signature", CFG_T_BOOL, CFG_FIELD(audit_every_signature), "false", 0, 0, false,
     NULL, "Record every signature as its own audit event (group commit), not only counts"},
};

/* Settings earlier versions wrote that are now accepted and ignored, so an old data
 * directory still starts. admin_credential_file: the bootstrap credential is an ordinary
 * credential in the database since the access-control issue; the file is only for the
 * operator to read. */
static const char *const cfg_obsolete[] = {"admin_credential_file", NULL};

#define CFG_N_SETTINGS (sizeof(cfg_settings) / sizeof(cfg_settings[0]))

/* ---- checks ---------------------------------------------------------------------------- */

static const char *cfg_check_ipv4(const char *text, unsigned num)
{
    (void)num;
    struct in_addr a;
    return inet_pton(AF_INET, text, &a) == 1 ? NULL : "must be an IPv4 address such as 127.0.0.1";
}

static const char *cfg_check_token(const char *text, unsigned num)
{
    (void)num;
    if (strncmp(text, "pkcs11:", 7) == 0)
        return NULL;
    return strlen(text) <= CFG_TOKEN_LABEL_MAX
               ? NULL
               : "is longer than a token label (32 bytes) and is no pkcs11: URI";
}

static const char *cfg_check_key_bits(const char *text, unsigned num)
{
    (void)text;
    return num == 2048 || num == 3072 || num == 4096 ? NULL : "must be 2048, 3072 or 4096";
}

static const char *cfg_check_printable(const char *text, unsigned num)
{
    (void)num;
    return txt_printable_str(text) ? NULL : "must be printable ASCII";
}

int cfg_origin_ok(const char *s)
{
    const char *p;
    if (s == NULL || strlen(s) > CFG_ORIGIN_MAX)
        return 0;
    if (strncmp(s, "https://", 8) == 0)
        p = s + 8;
    else if (strncmp(s, "http://", 7) == 0)
        p = s + 7;
    else
        return 0;
    /* The host: dot-separated labels of [a-z0-9-], none empty, none starting or ending
     * with '-' (a DNS name; a dotted IPv4 address is one too). */
    size_t label = 0;
    for (; *p != '\0' && *p != ':'; p++) {
        if (*p == '.') {
            if (label == 0 || p[-1] == '-')
                return 0;
            label = 0;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                   (*p == '-' && label > 0)) {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    if (label == 0 || p[-1] == '-')
        return 0;
    if (*p == '\0')
        return 1;
    /* ":port", 1..65535, no leading zero, and nothing after it. */
    p++;
    unsigned port = 0;
    size_t digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (digits == 0 && *p == '0')
            return 0;
        port = port * 10 + (unsigned)(*p - '0');
        if (port > 65535)
            return 0;
    }
    return *p == '\0' && digits > 0;
}

static const char *cfg_check_public_url(const char *text, unsigned num)
{
    (void)num;
    return text[0] == '\0' || cfg_origin_ok(text)
               ? NULL
               : "must be https://host[:port] (or http://), lowercase, with nothing after it";
}

static const char *cfg_check_node_name(const char *text, unsigned num)
{
    (void)num;
    return cfg_node_name_ok(text) || text[0] == '\0'
               ? NULL
               : "must be 1 to 63 of the characters A-Z a-z 0-9 . _ -";
}

int cfg_node_name_ok(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    return n >= 1 && n < CFG_NODE_MAX &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

int cfg_database_is_uri(const char *database)
{
    return strncmp(database, "postgresql://", 13) == 0 || strncmp(database, "postgres://", 11) == 0;
}

/* 1 when a PostgreSQL URI carries a password: in its user info (user:secret@host) or as a
 * password= parameter. The URI is printed in start-up errors and the stores' messages
 * name it, so a password in it would reach the log: it goes in a passfile= instead, or
 * the server trusts the socket's peer. */
static int cfg_uri_has_password(const char *uri)
{
    const char *p = strstr(uri, "://") + 3;
    size_t authority = strcspn(p, "/?#");
    const char *at = memchr(p, '@', authority);
    if (at != NULL && memchr(p, ':', (size_t)(at - p)) != NULL)
        return 1;
    const char *q = strchr(p, '?');
    for (; q != NULL; q = strchr(q + 1, '&'))
        if (strncmp(q + 1, "password=", 9) == 0)
            return 1;
    return 0;
}

static const char *cfg_check_user(const char *text, unsigned num)
{
    (void)num;
    size_t n = strlen(text);
    if (n == 0)
        return NULL;
    if (strspn(text, "abcdefghijklmnopqrstuvwxyz0123456789_-.") != n || text[0] == '-')
        return "must be a user name (lowercase letters, digits, '_', '-', '.')";
    return NULL;
}

static const char *cfg_check_tls_version(const char *text, unsigned num)
{
    (void)num;
    return strcmp(text, "1.2") == 0 || strcmp(text, "1.3") == 0 ? NULL : "must be 1.2 or 1.3";
}

/* The key stays (existing files name it), but split is the only model: the supervisor,
 * signd-keeper and signd-front, one program per privilege. */
static const char *cfg_check_process_model(const char *text, unsigned num)
{
    (void)num;
    return strcmp(text, "split") == 0
               ? NULL
               : "must be split: only split exists (the keeper and the front are programs of "
                 "their own; single was removed)";
}

/* The names hsm_mech_parse (hsm/hsm.h) takes; common/ may not include hsm/. */
static const char *cfg_check_sign_mechanism(const char *text, unsigned num)
{
    (void)num;
    return strcmp(text, "auto") == 0 || strcmp(text, "sha256_rsa_pkcs") == 0 ||
                   strcmp(text, "rsa_pkcs") == 0
               ? NULL
               : "must be auto, sha256_rsa_pkcs or rsa_pkcs";
}

/* A systemd credential name is a file name inside $CREDENTIALS_DIRECTORY: a '/' or a
 * ".." would reach outside it. */
static const char *cfg_check_credential(const char *text, unsigned num)
{
    (void)num;
    if (text[0] == '\0')
        return NULL;
    if (strchr(text, '/') != NULL || strcmp(text, ".") == 0 || strcmp(text, "..") == 0)
        return "must be a credential name (a file name without '/'), such as pin";
    return cfg_check_printable(text, num);
}

/* The module variables pkcs11_env may set: a name ending in '_' is a prefix. SOFTHSM2_CONF
 * is not there: softhsm2_conf sets it. */
static const char *const cfg_env_allowed[] = {
    "TPM2_PKCS11_",
    "TSS2_",
    "OCK_",
    "YUBIHSM_PKCS11_CONF",
    "ChrystokiConfigurationPath",
    "DBUS_SESSION_BUS_ADDRESS",
};

/* NULL when the n bytes at name are an allowed variable name, else the problem. */
static const char *cfg_env_name_problem(const char *name, size_t n)
{
    if (n == 0 ||
        strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                     "0123456789_") < n ||
        (name[0] >= '0' && name[0] <= '9'))
        return "must be NAME=value entries separated by commas";
    char upper[CFG_ENV_MAX];
    for (size_t i = 0; i < n && i + 1 < sizeof(upper); i++)
        upper[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
    upper[n < sizeof(upper) ? n : sizeof(upper) - 1] = '\0';
    if (strstr(upper, "PIN") != NULL || strstr(upper, "PASS") != NULL ||
        strstr(upper, "SECRET") != NULL || strstr(upper, "AUTH") != NULL)
        return "names a secret (PIN, PASS, SECRET, AUTH): a secret never goes into the environment";
    for (size_t i = 0; i < sizeof(cfg_env_allowed) / sizeof(cfg_env_allowed[0]); i++) {
        const char *a = cfg_env_allowed[i];
        size_t al = strlen(a);
        if (a[al - 1] == '_' ? n > al && strncmp(name, a, al) == 0
                             : n == al && strncmp(name, a, al) == 0)
            return NULL;
    }
    return "sets a variable that is no module's (allowed: TPM2_PKCS11_*, TSS2_*, OCK_*, "
           "YUBIHSM_PKCS11_CONF, ChrystokiConfigurationPath, DBUS_SESSION_BUS_ADDRESS)";
}

/* Splits text into out (when not NULL); n entries, or -1 with the problem in *why. */
static int cfg_env_split(const char *text, char (*out)[CFG_ENV_MAX], const char **why)
{
    int n = 0;
    const char *p = text;
    *why = NULL;
    if (*p == '\0')
        return 0;
    for (;;) {
        size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        if (eq == NULL) {
            *why = "must be NAME=value entries separated by commas";
            return -1;
        }
        if ((*why = cfg_env_name_problem(p, (size_t)(eq - p))) != NULL)
            return -1;
        if (n == CFG_ENV_VARS) {
            *why = "has more than 8 entries";
            return -1;
        }
        if (out != NULL) {
            memcpy(out[n], p, len);
            out[n][len] = '\0';
        }
        n++;
        if (p[len] == '\0')
            return n;
        p += len + 1;
    }
}

int cfg_env_entries(const char *text, char out[CFG_ENV_VARS][CFG_ENV_MAX])
{
    const char *why;
    if (strlen(text) >= CFG_ENV_MAX)
        return -1;
    return cfg_env_split(text, out, &why);
}

static const char *cfg_check_env(const char *text, unsigned num)
{
    (void)num;
    const char *why;
    return cfg_env_split(text, NULL, &why) < 0 ? why : NULL;
}

/* ---- helpers --------------------------------------------------------------------------- */

int cfg_errorf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static const cfg_setting *cfg_find(const char *name)
{
    for (size_t i = 0; i < CFG_N_SETTINGS; i++)
        if (strcmp(cfg_settings[i].name, name) == 0)
            return &cfg_settings[i];
    return NULL;
}

/* Edit distance of two short names, capped: anything above 3 is 4. */
static unsigned cfg_distance(const char *a, const char *b)
{
    enum { N = 64 };
    size_t la = strlen(a), lb = strlen(b);
    if (la >= N || lb >= N)
        return 4;
    unsigned row[N], prev;
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        prev = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned sub = prev + (a[i - 1] != b[j - 1]);
            unsigned del = row[j] + 1, ins = row[j - 1] + 1;
            prev = row[j];
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    }
    return row[lb] > 3 ? 4 : row[lb];
}

/* The setting whose name is closest to name, if any is within two edits. */
static const char *cfg_suggest(const char *name)
{
    const char *best = NULL;
    unsigned best_d = 3;
    for (size_t i = 0; i < CFG_N_SETTINGS; i++) {
        unsigned d = cfg_distance(name, cfg_settings[i].name);
        if (d < best_d) {
            best_d = d;
            best = cfg_settings[i].name;
        }
    }
    return best;
}

static int cfg_is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Writes dir/rel into dst (size bytes); -1, and dst untouched, when it does not fit. */
static int cfg_join(char *dst, size_t size, const char *dir, const char *rel)
{
    size_t ld = strlen(dir), lr = strlen(rel);
    size_t sep = ld > 0 && dir[ld - 1] == '/' ? 0 : 1;
    if (ld > size || lr > size || ld + sep + lr >= size)
        return -1;
    memcpy(dst, dir, ld);
    if (sep)
        dst[ld] = '/';
    memcpy(dst + ld + sep, rel, lr + 1);
    return 0;
}

/* A path setting's value that is to be resolved against the file's directory. A
 * database that is a PostgreSQL URI is no path. */
static int cfg_is_relative(const cfg_setting *s, const char *value)
{
    if (s->type == CFG_T_PATH)
        return value[0] != '\0' && value[0] != '/' &&
               !(s->offset == offsetof(cfg, database) && cfg_database_is_uri(value));
    if (s->type == CFG_T_MODULE)
        return value[0] != '/' && strchr(value, '/') != NULL;
    return 0;
}

/* Parses value into s's field of c; base_dir ("" or NULL: none) resolves relative paths.
 * Returns NULL, or the problem (in why, or a constant), worded to follow "'name' ". The
 * field is unchanged unless it succeeds. */
static const char *cfg_set(const cfg_setting *s, cfg *c, const char *value, const char *base_dir,
                           char *why, size_t whylen)
{
    char *field = (char *)c + s->offset;
    unsigned num = 0;

    switch (s->type) {
    case CFG_T_UINT: {
        size_t n = strlen(value);
        if (n == 0 || strspn(value, "0123456789") != n) {
            snprintf(why, whylen, "must be an unsigned integer, got '%.40s'", value);
            return why;
        }
        errno = 0;
        unsigned long long v = strtoull(value, NULL, 10);
        if (errno == ERANGE || v < s->min || v > s->max) {
            snprintf(why, whylen, "must be between %u and %u, got %.40s", s->min, s->max, value);
            return why;
        }
        num = (unsigned)v;
        break;
    }
    case CFG_T_BOOL:
        if (strcmp(value, "true") != 0 && strcmp(value, "false") != 0) {
            snprintf(why, whylen, "must be true or false, got '%.40s'", value);
            return why;
        }
        break;
    case CFG_T_STRING:
    case CFG_T_PATH:
    case CFG_T_MODULE:
        if (value[0] == '\0' && !s->empty_ok)
            return "must not be empty";
        if (strlen(value) >= s->size) {
            snprintf(why, whylen, "is longer than %zu bytes", s->size - 1);
            return why;
        }
        break;
    }
    if (s->check != NULL) {
        const char *problem = s->check(value, num);
        if (problem != NULL)
            return problem;
    }

    if (s->type == CFG_T_UINT) {
        memcpy(field, &num, sizeof(num));
    } else if (s->type == CFG_T_BOOL) {
        bool b = strcmp(value, "true") == 0;
        memcpy(field, &b, sizeof(b));
    } else if (cfg_is_relative(s, value) && base_dir != NULL && base_dir[0] != '\0') {
        if (cfg_join(field, s->size, base_dir, value) != 0) {
            snprintf(why, whylen, "is longer than %zu bytes once resolved against %.200s",
                     s->size - 1, base_dir);
            return why;
        }
    } else {
        memcpy(field, value, strlen(value) + 1);
    }
    return NULL;
}

static void cfg_defaults_into(cfg *out, const char *base_dir)
{
    char why[256];
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < CFG_N_SETTINGS; i++) {
        /* Defaults are valid (test_config checks it); only a base_dir too long to join
         * can fail, and then the path stays relative. */
        if (cfg_set(&cfg_settings[i], out, cfg_settings[i].def, base_dir, why, sizeof(why)))
            cfg_set(&cfg_settings[i], out, cfg_settings[i].def, NULL, why, sizeof(why));
    }
}

void cfg_defaults(cfg *out, const char *base_dir)
{
    cfg_defaults_into(out, base_dir);
}

unsigned cfg_pkcs11_sessions(const cfg *c)
{
    /* CivetWeb runs worker_threads + events_max_subscribers threads and any of them may
     * serve a request that signs (a subscriber's thread serves other connections after its
     * stream ends), each with a session (or a keeper connection) of its own: fewer would
     * turn a busy moment into 503s. */
    return c->max_pkcs11_sessions != 0 ? c->max_pkcs11_sessions
                                       : c->worker_threads + c->events_max_subscribers + 4;
}

/* ---- loading --------------------------------------------------------------------------- */

/* Reads the whole file (a regular file of at most CFG_FILE_MAX bytes) into a NUL-terminated
 * buffer the caller frees. */
char *cfg_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    char *buf;
    switch (file_read_alloc(path, FILE_REGULAR, CFG_FILE_MAX, &buf, len)) {
    case FILE_OK:
        return buf;
    case FILE_ERR_OPEN:
        cfg_errorf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        break;
    case FILE_ERR_NOT_REGULAR:
        cfg_errorf(err, errlen, "%s: not a regular file", path);
        break;
    case FILE_ERR_TOO_LARGE:
        cfg_errorf(err, errlen, "%s: larger than %d bytes", path, CFG_FILE_MAX);
        break;
    case FILE_ERR_NOMEM:
        cfg_errorf(err, errlen, "%s: out of memory", path);
        break;
    default:
        cfg_errorf(err, errlen, "%s: read error: %s", path, strerror(errno));
        break;
    }
    return NULL;
}

/* The absolute directory of path, into dir (CFG_PATH_MAX bytes). */
static int cfg_base_dir(const char *path, char *dir, char *err, size_t errlen)
{
    char tmp[CFG_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        snprintf(tmp, sizeof(tmp), ".");
    } else if (slash == path) {
        snprintf(tmp, sizeof(tmp), "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof(tmp)) {
            cfg_errorf(err, errlen, "%s: path too long", path);
            return -1;
        }
        memcpy(tmp, path, n);
        tmp[n] = '\0';
    }
    char resolved[PATH_MAX];
    if (realpath(tmp, resolved) == NULL || strlen(resolved) >= CFG_PATH_MAX) {
        cfg_errorf(err, errlen, "%s: cannot resolve its directory: %s", path, strerror(errno));
        return -1;
    }
    memcpy(dir, resolved, strlen(resolved) + 1);
    return 0;
}

/* Checks that lo <= hi for two integer settings after the whole file was read. */
static int cfg_check_order(const char *path, const cfg *c, const unsigned *lines, const char *lo,
                           const char *hi, char *err, size_t errlen)
{
    const cfg_setting *a = cfg_find(lo), *b = cfg_find(hi);
    unsigned va, vb;
    memcpy(&va, (const char *)c + a->offset, sizeof(va));
    memcpy(&vb, (const char *)c + b->offset, sizeof(vb));
    if (va <= vb)
        return 0;
    unsigned la = lines[a - cfg_settings], lb = lines[b - cfg_settings];
    unsigned line = la > lb ? la : lb;
    if (line > 0)
        cfg_errorf(err, errlen, "%s:%u: %s (%u) must not be greater than %s (%u)", path, line, lo,
                   va, hi, vb);
    else
        cfg_errorf(err, errlen, "%s: %s (%u) must not be greater than %s (%u)", path, lo, va, hi,
                   vb);
    return -1;
}

/* Parses one line (NUL-terminated, without its line end) into c. */
static int cfg_parse_line(const char *path, unsigned lineno, char *line, cfg *c, unsigned *lines,
                          const char *base_dir, char *err, size_t errlen)
{
    char *p = line;
    while (cfg_is_blank(*p))
        p++;
    if (*p == '\0' || *p == '#')
        return 0;

    char *eq = strchr(p, '=');
    if (eq == NULL) {
        cfg_errorf(err, errlen, "%s:%u: expected 'key = value'", path, lineno);
        return -1;
    }
    char *key_end = eq;
    while (key_end > p && cfg_is_blank(key_end[-1]))
        key_end--;
    *key_end = '\0';
    if (p[0] == '\0') {
        cfg_errorf(err, errlen, "%s:%u: a setting name is missing before '='", path, lineno);
        return -1;
    }
    size_t klen = strlen(p);
    if (klen > 64 || strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_") != klen) {
        cfg_errorf(err, errlen,
                   "%s:%u: malformed setting name (lowercase letters, digits and '_' only)", path,
                   lineno);
        return -1;
    }

    char *value = eq + 1;
    while (cfg_is_blank(*value))
        value++;
    char *end = value + strlen(value);
    while (end > value && cfg_is_blank(end[-1]))
        end--;
    *end = '\0';
    for (const unsigned char *q = (const unsigned char *)value; *q; q++) {
        if (*q < 0x20 || *q == 0x7f) {
            cfg_errorf(err, errlen, "%s:%u: control character in the value of '%s'", path, lineno,
                       p);
            return -1;
        }
        if (*q == '#' && q > (const unsigned char *)value && cfg_is_blank((char)q[-1])) {
            cfg_errorf(err, errlen, "%s:%u: a comment must be on a line of its own ('%s')", path,
                       lineno, p);
            return -1;
        }
    }
    if (value[0] == '"' || value[0] == '\'') {
        cfg_errorf(err, errlen, "%s:%u: the value of '%s' is quoted; values are written as is",
                   path, lineno, p);
        return -1;
    }

    for (size_t i = 0; cfg_obsolete[i] != NULL; i++)
        if (strcmp(p, cfg_obsolete[i]) == 0)
            return 0;
    const cfg_setting *s = cfg_find(p);
    if (s == NULL) {
        const char *hint = cfg_suggest(p);
        if (hint != NULL)
            cfg_errorf(err, errlen, "%s:%u: unknown setting '%s' (did you mean '%s'?)", path,
                       lineno, p, hint);
        else
            cfg_errorf(err, errlen, "%s:%u: unknown setting '%s'", path, lineno, p);
        return -1;
    }
    size_t idx = (size_t)(s - cfg_settings);
    if (lines[idx] != 0) {
        cfg_errorf(err, errlen, "%s:%u: duplicate setting '%s' (first set on line %u)", path,
                   lineno, p, lines[idx]);
        return -1;
    }
    lines[idx] = lineno;

    char why[512];
    const char *problem = cfg_set(s, c, value, base_dir, why, sizeof(why));
    if (problem != NULL) {
        cfg_errorf(err, errlen, "%s:%u: '%s' %s", path, lineno, s->name, problem);
        return -1;
    }
    return 0;
}

int cfg_parse(const char *text, size_t len, const char *name, const char *base_dir, cfg *out,
              char *err, size_t errlen)
{
    if (len > CFG_FILE_MAX) {
        cfg_errorf(err, errlen, "%s: larger than %d bytes", name, CFG_FILE_MAX);
        return -1;
    }
    /* A copy: each line is cut at its end in place. */
    char *buf = malloc(len + 1);
    cfg *c = malloc(sizeof(*c));
    if (buf == NULL || c == NULL) {
        cfg_errorf(err, errlen, "%s: out of memory", name);
        free(buf);
        free(c);
        return -1;
    }
    if (len > 0)
        memcpy(buf, text, len);
    buf[len] = '\0';
    cfg_defaults_into(c, base_dir);

    unsigned lines[CFG_N_SETTINGS] = {0};
    unsigned lineno = 0;
    int rc = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
        lineno++;
        char *line = buf + pos;
        char *nl = memchr(line, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - line) : len - pos;
        pos += n + (nl != NULL);
        if (n > CFG_LINE_MAX) {
            cfg_errorf(err, errlen, "%s:%u: line longer than %d bytes", name, lineno, CFG_LINE_MAX);
            rc = -1;
            break;
        }
        if (memchr(line, '\0', n) != NULL) {
            cfg_errorf(err, errlen, "%s:%u: NUL byte in the line", name, lineno);
            rc = -1;
            break;
        }
        line[n] = '\0';
        rc = cfg_parse_line(name, lineno, line, c, lines, base_dir, err, errlen);
    }
    if (rc == 0)
        rc = cfg_check_order(name, c, lines, "token_ttl_min", "token_ttl_default", err, errlen);
    if (rc == 0)
        rc = cfg_check_order(name, c, lines, "token_ttl_default", "token_ttl_max", err, errlen);
    if (rc == 0 && cfg_database_is_uri(c->database) && cfg_uri_has_password(c->database)) {
        cfg_errorf(err, errlen,
                   "%s: database: a password must not be in the URI (it would reach the log): "
                   "name a passfile= (mode 0600) or use peer authentication on a Unix socket",
                   name);
        rc = -1;
    }
    if (rc == 0 && cfg_database_is_uri(c->database) && c->state_directory[0] == '\0') {
        cfg_errorf(err, errlen,
                   "%s: state_directory must be set when database is a PostgreSQL URI (this "
                   "node's own files, the keeper's state, live there; they are never shared)",
                   name);
        rc = -1;
    }
    if (rc == 0)
        memcpy(out, c, sizeof(*c));
    free(c);
    free(buf);
    return rc;
}

int cfg_load_text(const char *path, const char *text, size_t len, cfg *out, char *err,
                  size_t errlen)
{
    char base_dir[CFG_PATH_MAX];
    if (cfg_base_dir(path, base_dir, err, errlen) != 0)
        return -1;
    return cfg_parse(text, len, path, base_dir, out, err, errlen);
}

int cfg_load(const char *path, cfg *out, char *err, size_t errlen)
{
    char base_dir[CFG_PATH_MAX];
    if (cfg_base_dir(path, base_dir, err, errlen) != 0)
        return -1;
    size_t len = 0;
    char *buf = cfg_read_file(path, &len, err, errlen);
    if (buf == NULL)
        return -1;
    int rc = cfg_parse(buf, len, path, base_dir, out, err, errlen);
    free(buf);
    return rc;
}

/* ---- writing --------------------------------------------------------------------------- */

int cfg_write_defaults(FILE *f, unsigned port)
{
    if (f == NULL || port < 1 || port > 65535)
        return -1;
    fprintf(f, "# The signing appliance's configuration, every setting with its default.\n"
               "# One 'key = value' per line; a line starting with '#' is a comment.\n"
               "# A relative path is relative to the directory of this file.\n");
    for (size_t i = 0; i < CFG_N_SETTINGS; i++) {
        const cfg_setting *s = &cfg_settings[i];
        fprintf(f, "\n# %s", s->doc);
        if (s->type == CFG_T_UINT && s->check == NULL)
            fprintf(f, " (%u to %u)", s->min, s->max);
        fputc('\n', f);
        if (strcmp(s->name, "port") == 0)
            fprintf(f, "%s = %u\n", s->name, port);
        else if (s->def[0] == '\0')
            fprintf(f, "%s =\n", s->name);
        else
            fprintf(f, "%s = %s\n", s->name, s->def);
    }
    return fflush(f) == 0 && !ferror(f) ? 0 : -1;
}

/* ---- this node -------------------------------------------------------------------------- */

int cfg_state_dir(const cfg *c, char *out, size_t cap)
{
    const char *from = c->state_directory;
    size_t n = strlen(from);
    if (n == 0) {
        if (cfg_database_is_uri(c->database))
            return -1;
        /* The database file's directory: "." for a bare name, "/" for one in the root. */
        from = c->database;
        const char *slash = strrchr(from, '/');
        if (slash == NULL) {
            from = ".";
            n = 1;
        } else {
            n = slash == from ? 1 : (size_t)(slash - from);
        }
    }
    if (n >= cap)
        return -1;
    memcpy(out, from, n);
    out[n] = '\0';
    return 0;
}

static int cfg_node_char(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

int cfg_node_name(const cfg *c, char out[CFG_NODE_MAX])
{
    if (c->node_name[0] != '\0') {
        snprintf(out, CFG_NODE_MAX, "%s", c->node_name);
        return 0;
    }
    char host[256];
    if (gethostname(host, sizeof(host)) != 0)
        return -1;
    host[sizeof(host) - 1] = '\0';
    /* A host name is [A-Za-z0-9.-] already; anything else becomes '_', the rest is cut. */
    size_t n = 0;
    for (; host[n] != '\0' && n < CFG_NODE_MAX - 1; n++)
        out[n] = cfg_node_char(host[n]) ? host[n] : '_';
    out[n] = '\0';
    return n > 0 ? 0 : -1;
}

/* ---- the PIN's file ------------------------------------------------------------------- */

int cfg_pin_path(const cfg *c, char *out, size_t outlen, char *err, size_t errlen)
{
    if (c->pin_credential[0] == '\0') {
        if (strlen(c->pin_file) >= outlen) {
            cfg_errorf(err, errlen, "pin_file is longer than %zu bytes", outlen - 1);
            return -1;
        }
        if (out != c->pin_file)
            memcpy(out, c->pin_file, strlen(c->pin_file) + 1);
        return 0;
    }
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    if (dir == NULL || dir[0] != '/') {
        cfg_errorf(err, errlen,
                   "pin_credential = %s: $CREDENTIALS_DIRECTORY is %s; start signd from a systemd "
                   "unit with LoadCredential=%s:FILE, or set pin_file instead",
                   c->pin_credential, dir == NULL ? "not set" : "not an absolute path",
                   c->pin_credential);
        return -1;
    }
    char path[CFG_PATH_MAX];
    if (cfg_join(path, sizeof(path), dir, c->pin_credential) != 0 || strlen(path) >= outlen) {
        cfg_errorf(err, errlen, "pin_credential = %s: $CREDENTIALS_DIRECTORY/%s is too long",
                   c->pin_credential, c->pin_credential);
        return -1;
    }
    /* Only that it is there: the PIN itself is read by the process that logs in, with
     * pin_file's checks (a regular file, no symlink, mode 0600 or stricter). */
    struct stat st;
    if (lstat(path, &st) != 0) {
        cfg_errorf(err, errlen, "pin_credential = %s: %s: %s", c->pin_credential, path,
                   strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        cfg_errorf(err, errlen, "pin_credential = %s: %s is not a regular file", c->pin_credential,
                   path);
        return -1;
    }
    memcpy(out, path, strlen(path) + 1);
    return 0;
}

/* ---- hashing --------------------------------------------------------------------------- */

void cfg_sha256_hex_bytes(const void *p, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    if (EVP_Digest(p, len, md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen == 32)
        hex_encode(md, 32, out);
}

void cfg_sha256_hex(const char *path, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE], buf[8192];
    unsigned int mdlen = 0;
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    for (;;) {
        if (!ok)
            break;
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            ok = r == 0;
            break;
        }
        ok = EVP_DigestUpdate(ctx, buf, (size_t)r) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    close(fd);
    if (ok)
        hex_encode(md, 32, out);
}
