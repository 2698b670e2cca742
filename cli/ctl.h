/*
 * ctl: signdctl, the operator's command-line client of the appliance's HTTP API.
 *
 * What it owns. One ctl_ctx per run: the appliance's URL, how its certificate is checked
 * (a CA file, a pinned public key, or both; TLS verification is never turned off), and the
 * credential's secret, read from a file or from a named environment variable and never
 * from argv. The secret has one owner (ctl_ctx.secret), is wiped by ctl_ctx_wipe on every
 * way out of main, and its Authorization header lives only in a ctl_conn, whose close
 * wipes it. Response bodies are wiped when freed (a credential's secret comes back in
 * one), and jansson's allocations are wiped on free (ctl_wiping_free).
 *
 * Exit codes are a ctl_exit; every failure is one line on stderr,
 *   signdctl: <what failed>: <server code> (<message>); <what to do>
 * formatted in ctl_http.c (answers and transport failures) or by the command (usage).
 *
 * Threads: a ctl_conn belongs to one thread; ctl_ctx is read-only once the secret is
 * loaded (keys create --count runs one ctl_conn per thread over one ctx).
 */
#ifndef CLI_CTL_H
#define CLI_CTL_H

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <curl/curl.h>

typedef enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_REFUSED = 1,      /* the API refused the request (4xx other than below) */
    CTL_EXIT_USAGE = 2,        /* bad arguments, or a local file that cannot be read or written */
    CTL_EXIT_CONNECT = 3,      /* the appliance cannot be reached, or TLS failed */
    CTL_EXIT_AUTH = 4,         /* 401 unauthorized, 403 forbidden or kid_not_allowed */
    CTL_EXIT_SERVER = 5,       /* 5xx, or an answer that is not what the API promises */
    CTL_EXIT_LIMIT = 6,        /* 409 key_limit_reached (keys create, keys rotate) */
    CTL_EXIT_AUDIT = 7,        /* audit verify: the trail does not verify */
    CTL_EXIT_INTERRUPTED = 130 /* SIGINT during keys create --count */
} ctl_exit;

#define CTL_SECRET_MAX 256              /* bytes of a credential secret (ours are 65) */
#define CTL_URL_MAX 512                 /* bytes of the base URL */
#define CTL_PIN_MAX 128                 /* "sha256//" + 44 base64 characters, with room */
#define CTL_LINE_MAX 1024               /* one error line */
#define CTL_BODY_MAX (64 * 1024 * 1024) /* bytes of a buffered answer (keys list: ~1 KiB a key) */
#define CTL_KID_HEX 32
#define CTL_CRED_ID_HEX 16

typedef struct {
    char url[CTL_URL_MAX]; /* https://host:port, no trailing slash */
    const char *cacert;    /* CA or certificate file (PEM); NULL: the system's store */
    char pin[CTL_PIN_MAX]; /* "sha256//<base64>" or "" */
    const char *cred_file; /* where the secret comes from, if anywhere */
    const char *cred_env;
    long timeout;                /* seconds for one request */
    bool json;                   /* print the API's JSON instead of tables */
    char secret[CTL_SECRET_MAX]; /* loaded by ctl_secret_load; wiped by ctl_ctx_wipe */
    size_t secret_len;
} ctl_ctx;

/* One connection: a libcurl handle with the TLS policy, and the Authorization header. */
typedef struct {
    const ctl_ctx *ctx;
    CURL *curl;
    struct curl_slist *headers; /* wiped, then freed, by ctl_conn_close */
} ctl_conn;

/* An answer: status, the server's error code when it sent one, the body (buffered up to
 * max, or streamed to sink when the status is 200). */
typedef struct {
    long status;
    char code[64];
    char message[256];
    char *body;
    size_t len, cap, max;
    bool overflow;
    FILE *sink;       /* NULL: buffer everything */
    bool sink_failed; /* a write to sink failed */
    CURL *curl;       /* for the write callback: the status of the answer being written */
} ctl_resp;

extern volatile sig_atomic_t ctl_interrupted;

/* ---- ctl_http.c ------------------------------------------------------------------------ */

/* Process-wide set-up: curl_global_init, jansson's wiping allocator. */
void ctl_init(void);

/* Loads the secret from ctx->cred_file or ctx->cred_env (once). Prints the line and
 * returns CTL_EXIT_USAGE when neither is set, the file cannot be read, or the secret is
 * empty, too long or holds a byte that cannot go in a header. A variable's value is
 * wiped from the environment (and so from /proc/PID/environ) once copied. */
int ctl_secret_load(ctl_ctx *ctx);
void ctl_ctx_wipe(ctl_ctx *ctx);

/* Opens a connection; with auth, the secret must be loaded. CTL_EXIT_OK or, with the line
 * printed, CTL_EXIT_SERVER (out of memory). */
int ctl_conn_open(const ctl_ctx *ctx, bool auth, ctl_conn *c);
void ctl_conn_close(ctl_conn *c);

void ctl_resp_init(ctl_resp *r, FILE *sink);
void ctl_resp_free(ctl_resp *r); /* wipes the body */

/* Sends method path (with body as JSON when not NULL) and reads the answer into r.
 * Returns CTL_EXIT_OK for a 2xx answer, else the exit code for what happened, with one
 * line (what: ...; hint) in line (no trailing newline). */
int ctl_call(ctl_conn *c, const char *method, const char *path, const json_t *body, ctl_resp *r,
             const char *what, char *line, size_t linecap);

/* ctl_call on a fresh connection with the line printed; on success *out (if out) is the
 * answer's JSON (the caller decrefs). The usual way a command talks to the appliance. */
int ctl_request(ctl_ctx *ctx, bool auth, const char *method, const char *path, const json_t *body,
                const char *what, json_t **out);

/* Prints "signdctl: " fmt "\n" on stderr. */
void ctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints j on stdout, indented, with a newline. */
void ctl_print_json(const json_t *j);

/* ---- commands (ctl_keys.c, ctl_cmds.c) ------------------------------------------------- */

/* Prints the named fields of obj that it has, one "name  value" a line, aligned; numbers
 * named *_at as UTC times. */
void ctl_print_fields(const json_t *obj, const char *const names[]);

/* What a command prints of the object it got: the JSON with --json, else its fields. */
void ctl_print_object(const ctl_ctx *ctx, const json_t *obj, const char *const names[]);

/* argv[0] is the verb ("create", ...). Each returns a ctl_exit. */
int ctl_cmd_keys(ctl_ctx *ctx, int argc, char **argv);
int ctl_cmd_credentials(ctl_ctx *ctx, int argc, char **argv);
int ctl_cmd_token(ctl_ctx *ctx, int argc, char **argv);
int ctl_cmd_subjects(ctl_ctx *ctx, int argc, char **argv);
int ctl_cmd_sign(ctl_ctx *ctx, int argc, char **argv);
int ctl_cmd_audit(ctl_ctx *ctx, int argc, char **argv);

/* ---- options (signdctl.c) -------------------------------------------------------------- */

/* The whole of signdctl but the process set-up in cli/main.c: parses argv (argv[0] the
 * program) into the global options, the command and its verb's options, runs it and returns
 * its ctl_exit, every failure one line on stderr. Callable again in the same process (each
 * call starts from no options), so tests drive it as a user does. */
int ctl_main(int argc, char **argv);

typedef struct {
    const char *name; /* without the leading "--" */
    bool has_arg;
    const char **value; /* has_arg: where the argument goes */
    bool *flag;         /* !has_arg: set to true */
} ctl_opt;

/* Parses argv (after the command words) against opts and the global options; positional
 * arguments go to pos (at most maxpos). "--help" prints help and returns -1 with
 * *rc = 0; a bad option prints a line naming it and `see: signdctl <cmd> --help` and
 * returns -1 with *rc = CTL_EXIT_USAGE. 0 on success with *npos set. */
int ctl_parse(ctl_ctx *ctx, const char *cmd, const char *help, int argc, char **argv,
              const ctl_opt *opts, const char **pos, int maxpos, int *npos, int *rc);

/* A usage failure: prints "signdctl: <msg>; see 'signdctl <cmd> --help'" and returns
 * CTL_EXIT_USAGE. */
int ctl_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict decimal in [min, max] into *out: 0, or -1. */
int ctl_parse_uint(const char *s, unsigned long long min, unsigned long long max,
                   unsigned long long *out);

/* Unix seconds as "2026-11-23T16:40:00Z" into buf (at least 21 bytes). */
void ctl_time(long long t, char *buf, size_t cap);

#endif
