/*
 * cfg: the appliance's configuration file (appliance.conf in the data directory).
 *
 * What it owns: one table in config.c, which is the only place a setting is named. The
 * table drives parsing, the defaults, the bounds, the one-line documentation and the file
 * `make run` writes (cfg_write_defaults). Adding a setting is one row there and one field
 * here.
 *
 * The format, line by line:
 *   - `key = value`; blanks around the key and the value are ignored, and the value is
 *     taken literally to the end of the line (no quotes, no escapes);
 *   - a line whose first non-blank character is `#` is a comment; blank lines are ignored;
 *     a comment cannot follow a value on the same line (`port = 1 # x` is refused);
 *   - integers are unsigned decimal; booleans are `true` or `false`;
 *   - a relative path is relative to the configuration file's directory (made absolute at
 *     load); pkcs11_module without any `/` is left to the dynamic loader's search; a
 *     database that is a PostgreSQL URI (postgresql:// or postgres://) is taken as is;
 *   - at most CFG_LINE_MAX bytes per line and CFG_FILE_MAX bytes per file; no NUL bytes,
 *     no control characters in values.
 * A setting the file does not mention keeps its default. Unknown settings, duplicates,
 * malformed lines and values out of bounds are refused, each with one message naming the
 * file, the line and the problem: "data/appliance.conf:12: unknown setting
 * 'worker_thread' (did you mean 'worker_threads'?)".
 *
 * No state, no locks: every function is safe from any thread, and cfg_load leaves *out
 * untouched unless it succeeds.
 *
 *   static cfg c;
 *   char err[CFG_ERR_MAX];
 *   if (cfg_load("data/appliance.conf", &c, err, sizeof(err)) != 0)
 *       fprintf(stderr, "%s\n", err);
 */
#ifndef APPLIANCE_CONFIG_H
#define APPLIANCE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define CFG_PATH_MAX 4096                /* a path setting after resolution, with the NUL */
#define CFG_ADDRESS_MAX 16               /* a dotted IPv4 address, with the NUL */
#define CFG_TOKEN_MAX 1024               /* a token label or a pkcs11: URI, with the NUL */
#define CFG_TOKEN_LABEL_MAX 32           /* CK_TOKEN_INFO.label is 32 bytes */
#define CFG_ISSUER_MAX 256               /* the iss claim, with the NUL */
#define CFG_USER_MAX 33                  /* a user name, with the NUL */
#define CFG_CIPHERS_MAX 512              /* an OpenSSL cipher list, with the NUL */
#define CFG_SOCKET_MAX 108               /* sun_path, with the NUL */
#define CFG_CREDENTIAL_MAX 256           /* a systemd credential name, with the NUL */
#define CFG_LINE_MAX 4096                /* bytes per line, without the line end */
#define CFG_FILE_MAX (1024 * 1024)       /* bytes per file */
#define CFG_ORIGIN_MAX 255               /* bytes of an origin (public_url), without the NUL */
#define CFG_NODE_MAX 64                  /* a node name, with the NUL */
#define CFG_ENV_MAX 2048                 /* pkcs11_env, with the NUL */
#define CFG_ENV_VARS 8                   /* NAME=value entries in pkcs11_env */
#define CFG_ERR_MAX (CFG_PATH_MAX + 256) /* enough for every message of cfg_load */

/* One field per setting, named as the setting. Paths are absolute after cfg_load (or after
 * cfg_defaults with a base_dir). */
typedef struct cfg {
    char listen_address[CFG_ADDRESS_MAX]; /* IPv4 only: CivetWeb is built without IPv6 */
    unsigned port;
    char pkcs11_module[CFG_PATH_MAX];
    char softhsm2_conf[CFG_PATH_MAX]; /* "": leave SOFTHSM2_CONF alone (a hardware module) */
    char pkcs11_sign_mechanism[16];   /* auto, sha256_rsa_pkcs or rsa_pkcs (hsm_mech_parse) */
    char token[CFG_TOKEN_MAX];        /* a token label or an RFC 7512 pkcs11: URI */
    /* "NAME=value,...": the module's own variables, set in the keeper's environment and
     * signd-provision's only (cfg_env_entries); "": none. */
    char pkcs11_env[CFG_ENV_MAX];
    char pin_file[CFG_PATH_MAX];
    char pin_credential[CFG_CREDENTIAL_MAX]; /* "": the PIN is in pin_file */
    char tls_certificate[CFG_PATH_MAX];
    char tls_private_key[CFG_PATH_MAX];
    char database[CFG_PATH_MAX]; /* a SQLite file, or a PostgreSQL URI (cluster mode) */
    /* This node's own files (the keeper's state); "": database's directory (cfg_state_dir).
     * Required when database is a URI. */
    char state_directory[CFG_PATH_MAX];
    char node_name[CFG_NODE_MAX]; /* "": the host name (cfg_node_name) */
    unsigned worker_threads;
    unsigned max_pkcs11_sessions; /* 0: one per thread, see cfg_pkcs11_sessions */
    unsigned request_timeout_ms;
    unsigned keep_alive_timeout_ms;
    unsigned max_active_keys;
    unsigned default_key_bits;  /* 2048, 3072 or 4096 */
    unsigned token_ttl_default; /* token_ttl_min <= token_ttl_default <= token_ttl_max */
    unsigned token_ttl_min;
    unsigned token_ttl_max;
    unsigned rotation_grace_seconds;     /* a rotation's default grace; 0: token_ttl_max */
    char token_issuer[CFG_ISSUER_MAX];   /* "": tokens carry no iss claim */
    char public_url[CFG_ORIGIN_MAX + 1]; /* "": https://listen_address:port */
    unsigned jwks_max_age;
    unsigned revocations_max_age;
    unsigned revocation_feed_lifetime;     /* seconds from a signed feed's iat to its exp */
    unsigned publication_signs_per_second; /* signatures public routes may cause (core/publish.c) */
    unsigned events_max_subscribers;       /* event-stream connections at once */
    unsigned events_heartbeat_seconds;
    bool log_requests;
    bool log_events;             /* audit events as JSON lines (jlog.h) */
    char log_file[CFG_PATH_MAX]; /* "": stderr */
    /* Access control and the HTTPS front (the access-control issue). */
    char user[CFG_USER_MAX]; /* "": keep the user the appliance was started as */
    /* split, started as root, user "": the keeper's and the front's own accounts ("": that
     * process stays root). */
    char keeper_user[CFG_USER_MAX];
    char front_user[CFG_USER_MAX];
    char tls_min_version[8]; /* "1.2" or "1.3" */
    char tls_ciphers[CFG_CIPHERS_MAX];
    char tls_ciphersuites[CFG_CIPHERS_MAX];
    char tls_client_ca[CFG_PATH_MAX]; /* "": no client certificates (no mutual TLS) */
    unsigned hsts_max_age;            /* 0: no Strict-Transport-Security header */
    unsigned rate_limit_per_second;   /* per credential; 0: no limit */
    unsigned rate_limit_burst;
    unsigned auth_failures_per_minute; /* per client address */
    unsigned auth_failure_burst;
    /* Privilege separation. */
    char process_model[8];               /* "split", the only model */
    char keeper_socket[CFG_SOCKET_MAX];  /* the keeper's Unix socket (split) */
    unsigned keeper_timeout_ms;          /* the front's deadline per keeper request */
    unsigned keeper_generate_timeout_ms; /* ... and per key generation */
    unsigned keeper_watchdog_ms;         /* the supervisor kills a keeper silent this long */
    /* The audit trail (audit.h). */
    unsigned audit_flush_seconds;
    unsigned audit_checkpoint_events;
    unsigned audit_checkpoint_seconds;
    bool audit_every_signature;
} cfg;

/* Loads the file at path into *out: defaults first, then every line of the file. Returns 0,
 * or -1 with one message in err (file, line, problem; truncated to errlen) and *out
 * untouched. The file must be a regular file of at most CFG_FILE_MAX bytes.
 *
 *   if (cfg_load(argv[1], &c, err, sizeof(err)) != 0) ... */
int cfg_load(const char *path, cfg *out, char *err, size_t errlen);

/* cfg_load over bytes already read from path (cfg_read_file): the supervisor reads the
 * file once and the keeper and the front, which may not be able to open it under their
 * own accounts, parse the same bytes (appliance/common/spawn.h). path names messages and
 * the directory relative paths resolve against. */
int cfg_load_text(const char *path, const char *text, size_t len, cfg *out, char *err,
                  size_t errlen);
/* Reads the whole file (a regular file of at most CFG_FILE_MAX bytes) into a NUL-terminated
 * buffer the caller frees, its length in *len; NULL with one line in err. */
char *cfg_read_file(const char *path, size_t *len, char *err, size_t errlen);

/* What cfg_load does once it has the file's bytes: parses len bytes of text (no NUL
 * needed; an embedded one is refused), naming the file `name` in messages and resolving
 * relative paths against base_dir ("" or NULL: they stay relative). Returns as cfg_load
 * does; reads no file, so tests and tests/fuzz/fuzz_config.c give it any bytes.
 *
 *   if (cfg_parse(text, len, "appliance.conf", "/var/lib/signd", &c, err, sizeof(err)) != 0) */
int cfg_parse(const char *text, size_t len, const char *name, const char *base_dir, cfg *out,
              char *err, size_t errlen);

/* Fills *out with every default. Relative default paths are resolved against base_dir
 * (no trailing slash needed), or left relative when base_dir is NULL or "". A base_dir so
 * long that a path would not fit leaves that path relative.
 *
 *   cfg_defaults(&c, "/var/lib/signd"); -> c.pin_file is "/var/lib/signd/pin" */
void cfg_defaults(cfg *out, const char *base_dir);

/* Writes every setting with its default, a one-line comment above each, the port given
 * instead of the default port (1..65535). Paths are written relative, so the data directory
 * can move. Returns 0, or -1 on a write error or a port out of range (nothing written then).
 *
 *   FILE *f = fdopen(fd, "w");
 *   if (cfg_write_defaults(f, 8443) != 0 || fclose(f) != 0) ... */
int cfg_write_defaults(FILE *f, unsigned port);

/* 1 when s is an origin: "https://" or "http://", a lowercase host (DNS labels of
 * [a-z0-9-] or a dotted IPv4 address), an optional ":port" (1..65535, no leading zero),
 * nothing after, at most CFG_ORIGIN_MAX bytes; else 0. public_url and the origin a token
 * is bound to both take this form, compared byte for byte. */
int cfg_origin_ok(const char *s);

/* The SHA-256 of the file's bytes as 64 lowercase hex digits and a NUL, for the audit
 * trail (which configuration the appliance started with). out is "" when the file cannot
 * be read. */
void cfg_sha256_hex(const char *path, char out[65]);
/* The same over len bytes in memory. */
void cfg_sha256_hex_bytes(const void *p, size_t len, char out[65]);

/* The file the token's PIN is read from, into out (outlen bytes): pin_file, or with
 * pin_credential set, $CREDENTIALS_DIRECTORY/pin_credential (systemd's LoadCredential=),
 * which must then exist as a regular file. Never reads the PIN. 0, or -1 with one line in
 * err. out may be c->pin_file itself:
 *
 *   if (cfg_pin_path(&c, c.pin_file, sizeof(c.pin_file), err, sizeof(err)) != 0) ... */
int cfg_pin_path(const cfg *c, char *out, size_t outlen, char *err, size_t errlen);

/* The number of PKCS#11 sessions to allow: max_pkcs11_sessions, or worker_threads +
 * events_max_subscribers + 4 when that is 0. */
unsigned cfg_pkcs11_sessions(const cfg *c);

/* The entries of a pkcs11_env value, each "NAME=value" with its NUL, into out[0..n-1];
 * returns n (0 for ""), or -1 when text is no valid list (cfg_load refuses such a file, so
 * a loaded configuration's pkcs11_env always splits). Entries are separated by commas, so a
 * value holds none; a NAME is a module's variable from one allowlist (TPM2_PKCS11_*,
 * TSS2_*, OCK_*, YUBIHSM_PKCS11_CONF, ChrystokiConfigurationPath,
 * DBUS_SESSION_BUS_ADDRESS), never one whose name says PIN, PASS, SECRET or AUTH
 * (TPM2_PKCS11_OWNER_AUTH is the TPM owner's password): the setting
 * points the module at its files and daemons, it never carries a secret. At most
 * CFG_ENV_VARS entries.
 *
 *   char env[CFG_ENV_VARS][CFG_ENV_MAX];
 *   int n = cfg_env_entries(c.pkcs11_env, env);
 *   for (int i = 0; i < n; i++) putenv(env[i]);  // env must outlive the process's use */
int cfg_env_entries(const char *text, char out[CFG_ENV_VARS][CFG_ENV_MAX]);

/* 1 when database names a PostgreSQL server (postgresql:// or postgres://), else 0. */
int cfg_database_is_uri(const char *database);

/* This node's state directory into out (cap bytes): state_directory, or when it is empty
 * the database file's directory. 0, or -1 when it does not fit or database is a URI and
 * state_directory is empty (cfg_load refuses that). */
int cfg_state_dir(const cfg *c, char *out, size_t cap);

/* 1 when s is a node name: 1 to 63 of [A-Za-z0-9._-], else 0. */
int cfg_node_name_ok(const char *s);

/* This node's name for the audit trail: node_name, or when it is empty the host name
 * (characters outside [A-Za-z0-9._-] as '_', cut to 63 bytes). 0, or -1. */
int cfg_node_name(const cfg *c, char out[CFG_NODE_MAX]);

/* Writes one message into err (nothing when err is NULL or errlen 0) and returns -1, so
 * that callers can `return cfg_errorf(err, errlen, ...)`: the one way the appliance's
 * modules report a set-up failure in a line. */
int cfg_errorf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
