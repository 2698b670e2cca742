/*
 * signdctl: the operator's client of the appliance (see docs/cli.md).
 *
 *   signdctl [GLOBAL OPTIONS] keys|credentials|token|subjects|sign|audit VERB [ARGS] [OPTIONS]
 *
 * This file holds ctl_main (cli/main.c's whole body), the global options and the option parser
 * every command uses. The
 * credential's secret is never an argument: there is no option that takes one, and an
 * option that looks like one is refused with a line that says where secrets go.
 */
#include "cli/ctl.h"
#include "base/text.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CTL_DEFAULT_URL "https://127.0.0.1:8443"
#define CTL_DEFAULT_TIMEOUT 60
#define CTL_PIN_B64_LEN 44 /* base64 of 32 bytes, padded */

static const char ctl_main_help[] =
    "usage: signdctl [GLOBAL OPTIONS] COMMAND VERB [ARGS] [OPTIONS]\n"
    "\n"
    "The operator's client of the signd appliance, over HTTPS.\n"
    "\n"
    "commands:\n"
    "  keys create [--bits N] [--label L] [--count N] [--parallel P]    (admin)\n"
    "  keys list [--state S]                                            (admin, auditor)\n"
    "  keys show KID                                                    (admin, auditor)\n"
    "  keys revoke KID --reason R                                       (admin)\n"
    "  keys rotate KID [--grace SECONDS] [--label L]                    (admin)\n"
    "  credentials create --role ROLE [--kids ...] [--out FILE]         (admin)\n"
    "  credentials list | credentials revoke ID                         (admin)\n"
    "  token mint [--kid KID] [--sub S] [--ttl SECONDS] [--claims JSON] (signer)\n"
    "             [--single-use] [--revocable] [--aud A] [--origin O]\n"
    "  token revoke JTI                                   (admin, the signer that minted it)\n"
    "  subjects revoke SUB [--before UNIX]                (admin, a signer of every kid)\n"
    "  sign KID [--in FILE]                                             (signer)\n"
    "  audit export [--out FILE]                                        (admin, auditor)\n"
    "  audit verify [--key PEM] [--anchor SEQ:HASH]                     (admin, auditor)\n"
    "  'signdctl COMMAND VERB --help' explains each.\n"
    "\n"
    "global options (anywhere on the line):\n"
    "  --url URL              the appliance, https://HOST:PORT (SIGND_URL; default " CTL_DEFAULT_URL
    ")\n"
    "  --cacert FILE          CA or certificate (PEM) that the appliance's certificate must chain "
    "to\n"
    "                         (SIGND_CACERT; default: the system's CA store)\n"
    "  --pin-sha256 BASE64    the appliance's public key must have this SHA-256 "
    "(SIGND_PIN_SHA256):\n"
    "                         openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin "
    "-outform der \\\n"
    "                           | openssl dgst -sha256 -binary | base64\n"
    "                         alone, it authenticates a self-signed appliance; with --cacert, both "
    "hold\n"
    "  --credential-file FILE the file holding the credential's secret (SIGND_CREDENTIAL_FILE)\n"
    "  --credential-env NAME  the environment variable holding the secret (read, then wiped)\n"
    "                         a secret is never taken on the command line\n"
    "  --json                 print the API's JSON instead of tables\n"
    "  --timeout SECONDS      for each request (default 60)\n"
    "\n"
    "exit codes:\n"
    "  0  done\n"
    "  1  the appliance refused the request (4xx: not found, revoked, invalid, ...)\n"
    "  2  usage: a bad option or argument, or a local file that cannot be read or written\n"
    "  3  the appliance cannot be reached, or TLS failed (certificate, pin)\n"
    "  4  unauthorized (401) or forbidden (403): the credential is wrong or lacks the role\n"
    "  5  the appliance failed (5xx) or answered something unexpected\n"
    "  6  the key limit was reached (keys create --count: some keys may have been made)\n"
    "  7  audit verify: the trail does not verify\n"
    "  130 interrupted (Ctrl-C) during keys create --count\n"
    "Errors are one line on stderr: what failed, the appliance's error code, what to do.\n";

/* Global options as given; validated into ctx by ctl_globals_apply. */
static const char *g_url, *g_cacert, *g_pin, *g_cred_file, *g_cred_env, *g_timeout;
static bool g_json;

static const ctl_opt ctl_globals[] = {
    {"url", true, &g_url, NULL},
    {"cacert", true, &g_cacert, NULL},
    {"pin-sha256", true, &g_pin, NULL},
    {"credential-file", true, &g_cred_file, NULL},
    {"credential-env", true, &g_cred_env, NULL},
    {"timeout", true, &g_timeout, NULL},
    {"json", false, NULL, &g_json},
    {NULL, false, NULL, NULL},
};

/* Names people reach for when they would put a secret on the command line. */
static const char *const ctl_secret_names[] = {"credential", "secret",     "token-secret",
                                               "password",   "pass",       "bearer",
                                               "api-key",    "key-secret", NULL};

int ctl_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("signdctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "; see 'signdctl%s%s --help'\n", cmd[0] ? " " : "", cmd);
    va_end(ap);
    return CTL_EXIT_USAGE;
}

int ctl_parse_uint(const char *s, unsigned long long min, unsigned long long max,
                   unsigned long long *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static const ctl_opt *ctl_find(const ctl_opt *opts, const char *name, size_t len)
{
    for (size_t i = 0; opts != NULL && opts[i].name != NULL; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

/* The parser behind ctl_parse; stop_at_pos: stop at the first positional argument (main,
 * before the command word) and report how many arguments were consumed. */
static int ctl_parse_ex(const char *cmd, const char *help, int argc, char **argv,
                        const ctl_opt *opts, const char **pos, int maxpos, int *npos, int *rc,
                        bool stop_at_pos, int *consumed)
{
    int n = 0;
    bool only_pos = false;
    int i = 0;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            fputs(help, stdout);
            *rc = CTL_EXIT_OK;
            return -1;
        }
        if (!only_pos && strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (only_pos || a[0] != '-' || a[1] == '\0') {
            if (stop_at_pos)
                break;
            if (n == maxpos) {
                *rc = ctl_usage(cmd, "unexpected argument '%s'", a);
                return -1;
            }
            pos[n++] = a;
            continue;
        }
        if (a[1] != '-') {
            *rc = ctl_usage(cmd, "unknown option %s (options are spelled --name)", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const ctl_opt *o = ctl_find(opts, name, len);
        if (o == NULL)
            o = ctl_find(ctl_globals, name, len);
        if (o == NULL) {
            for (size_t k = 0; ctl_secret_names[k] != NULL; k++) {
                if (strlen(ctl_secret_names[k]) == len &&
                    strncmp(ctl_secret_names[k], name, len) == 0) {
                    ctl_err("a secret is never taken on the command line (other users see it in "
                            "ps and /proc); put it in a file for --credential-file FILE, or in an "
                            "environment variable for --credential-env NAME");
                    *rc = CTL_EXIT_USAGE;
                    return -1;
                }
            }
            *rc = ctl_usage(cmd, "unknown option --%.*s", (int)len, name);
            return -1;
        }
        if (!o->has_arg) {
            if (eq != NULL) {
                *rc = ctl_usage(cmd, "option --%s takes no value", o->name);
                return -1;
            }
            *o->flag = true;
            continue;
        }
        if (eq != NULL) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            *rc = ctl_usage(cmd, "option --%s needs a value", o->name);
            return -1;
        }
    }
    if (npos != NULL)
        *npos = n;
    if (consumed != NULL)
        *consumed = i;
    return 0;
}

/* Validates the global options (and their environment defaults) into ctx. */
static int ctl_globals_apply(ctl_ctx *ctx, const char *cmd)
{
    const char *url = g_url ? g_url : getenv("SIGND_URL");
    if (url == NULL || url[0] == '\0')
        url = CTL_DEFAULT_URL;
    size_t ulen = strlen(url);
    while (ulen > 0 && url[ulen - 1] == '/')
        ulen--;
    if (strncmp(url, "https://", 8) != 0 || ulen <= 8 || ulen >= sizeof(ctx->url))
        return ctl_usage(cmd, "--url must be https://HOST:PORT (at most %d bytes), not '%s'",
                         CTL_URL_MAX - 1, url);
    for (size_t i = 0; i < ulen; i++)
        if (!txt_is_visible(url[i]) || url[i] == '?' || url[i] == '#')
            return ctl_usage(cmd, "--url must be https://HOST:PORT without spaces, query or "
                                  "fragment");
    memcpy(ctx->url, url, ulen);
    ctx->url[ulen] = '\0';

    ctx->cacert = g_cacert ? g_cacert : getenv("SIGND_CACERT");
    if (ctx->cacert != NULL && ctx->cacert[0] == '\0')
        ctx->cacert = NULL;
    if (ctx->cacert != NULL && access(ctx->cacert, R_OK) != 0)
        return ctl_usage(cmd, "cannot read the CA file %s: %s", ctx->cacert, strerror(errno));

    const char *pin = g_pin ? g_pin : getenv("SIGND_PIN_SHA256");
    ctx->pin[0] = '\0';
    if (pin != NULL && pin[0] != '\0') {
        if (strncmp(pin, "sha256//", 8) == 0)
            pin += 8;
        if (strlen(pin) != CTL_PIN_B64_LEN || pin[CTL_PIN_B64_LEN - 1] != '=' ||
            strspn(pin, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") !=
                CTL_PIN_B64_LEN - 1)
            return ctl_usage(cmd, "--pin-sha256 must be the base64 SHA-256 of the appliance's "
                                  "public key (44 characters ending in '=')");
        snprintf(ctx->pin, sizeof(ctx->pin), "sha256//%s", pin);
    }

    ctx->cred_file = g_cred_file ? g_cred_file : getenv("SIGND_CREDENTIAL_FILE");
    if (ctx->cred_file != NULL && ctx->cred_file[0] == '\0')
        ctx->cred_file = NULL;
    ctx->cred_env = g_cred_env;
    if (g_cred_env != NULL && g_cred_file == NULL)
        ctx->cred_file = NULL; /* an explicit --credential-env beats SIGND_CREDENTIAL_FILE */
    if (g_cred_env != NULL && g_cred_env[0] == '\0')
        return ctl_usage(cmd, "--credential-env needs the name of a variable");

    unsigned long long t = CTL_DEFAULT_TIMEOUT;
    if (g_timeout != NULL && ctl_parse_uint(g_timeout, 1, 3600, &t) != 0)
        return ctl_usage(cmd, "--timeout must be 1 to 3600 seconds");
    ctx->timeout = (long)t;
    ctx->json = g_json;
    return CTL_EXIT_OK;
}

int ctl_parse(ctl_ctx *ctx, const char *cmd, const char *help, int argc, char **argv,
              const ctl_opt *opts, const char **pos, int maxpos, int *npos, int *rc)
{
    if (ctl_parse_ex(cmd, help, argc, argv, opts, pos, maxpos, npos, rc, false, NULL) != 0)
        return -1;
    if ((*rc = ctl_globals_apply(ctx, cmd)) != CTL_EXIT_OK)
        return -1;
    return 0;
}

int ctl_main(int argc, char **argv)
{
    ctl_init();
    static ctl_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    g_url = g_cacert = g_pin = g_cred_file = g_cred_env = g_timeout = NULL;
    g_json = false;
    int rc = CTL_EXIT_USAGE, used = 0;
    if (ctl_parse_ex("", ctl_main_help, argc - 1, argv + 1, NULL, NULL, 0, NULL, &rc, true,
                     &used) != 0) {
        curl_global_cleanup();
        return rc;
    }
    argc -= 1 + used;
    argv += 1 + used;
    if (argc == 0) {
        fputs(ctl_main_help, stderr);
        curl_global_cleanup();
        return CTL_EXIT_USAGE;
    }
    const char *cmd = argv[0];
    if (strcmp(cmd, "keys") == 0)
        rc = ctl_cmd_keys(&ctx, argc - 1, argv + 1);
    else if (strcmp(cmd, "credentials") == 0)
        rc = ctl_cmd_credentials(&ctx, argc - 1, argv + 1);
    else if (strcmp(cmd, "token") == 0)
        rc = ctl_cmd_token(&ctx, argc - 1, argv + 1);
    else if (strcmp(cmd, "subjects") == 0)
        rc = ctl_cmd_subjects(&ctx, argc - 1, argv + 1);
    else if (strcmp(cmd, "sign") == 0)
        rc = ctl_cmd_sign(&ctx, argc - 1, argv + 1);
    else if (strcmp(cmd, "audit") == 0)
        rc = ctl_cmd_audit(&ctx, argc - 1, argv + 1);
    else if (strcmp(cmd, "help") == 0) {
        fputs(ctl_main_help, stdout);
        rc = CTL_EXIT_OK;
    } else
        rc = ctl_usage("",
                       "unknown command '%s' (keys, credentials, token, subjects, sign, "
                       "audit)",
                       cmd);
    ctl_ctx_wipe(&ctx);
    if (fflush(stdout) != 0 && rc == CTL_EXIT_OK) {
        ctl_err("cannot write the output: %s", strerror(errno));
        rc = CTL_EXIT_USAGE;
    }
    curl_global_cleanup();
    return rc;
}
