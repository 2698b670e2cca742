/*
 * signd-provision: prepares a data directory before the appliance first starts.
 *
 *   signd-provision token DIR [--label LABEL] [--module PATH]
 *   signd-provision module-token DIR --module PATH --label LABEL [--slot N]
 *                   [--pin-length N] [--factory-so-pin-file FILE]
 *   signd-provision config DIR [--port PORT]
 *   signd-provision admin-credential DIR [--label LABEL] [--out FILE]
 *   signd-provision audit-verify EXPORT PUBKEY_PEM [--anchor SEQ:HASH]
 *   signd-provision token-list DIR
 *
 * No PIN or secret ever appears in argv or output: they are generated here and written
 * to 0600 files.
 */
#include "appliance/core/auditverify.h"
#include "appliance/common/config.h"
#include "appliance/kproto/keeper.h"
#include "hsm/hsm.h"
#include "provisioning/token.h"
#include "base/hex.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: signd-provision token DIR [--label LABEL] [--module PATH]\n"
                    "       signd-provision module-token DIR --module PATH --label LABEL "
                    "[--slot N] [--pin-length N] [--factory-so-pin-file FILE]\n"
                    "       signd-provision config DIR [--port PORT]\n"
                    "       signd-provision admin-credential DIR [--label LABEL] [--out FILE]\n"
                    "       signd-provision audit-verify EXPORT PUBKEY_PEM [--anchor SEQ:HASH]\n"
                    "       signd-provision token-list DIR\n");
    return 2;
}

static int cmd_token(int argc, char **argv)
{
    const char *label = "signd", *module = HSM_DEFAULT_MODULE;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--label") == 0 && i + 1 < argc)
            label = argv[++i];
        else if (strcmp(argv[i], "--module") == 0 && i + 1 < argc)
            module = argv[++i];
        else
            return usage();
    }
    return prov_token_init(argv[0], label, module, stdout) == 0 ? 0 : 1;
}

/* A token of a module with daemons of its own (provisioning/hsm/NAME.sh calls this). */
static int cmd_module_token(int argc, char **argv)
{
    prov_module_token t = {.dir = argv[0], .slot = -1, .pin_len = 8};
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--label") == 0 && i + 1 < argc) {
            t.label = argv[++i];
        } else if (strcmp(argv[i], "--module") == 0 && i + 1 < argc) {
            t.module = argv[++i];
        } else if (strcmp(argv[i], "--factory-so-pin-file") == 0 && i + 1 < argc) {
            t.factory_so_pin_file = argv[++i];
        } else if (strcmp(argv[i], "--slot") == 0 && i + 1 < argc) {
            errno = 0;
            t.slot = strtol(argv[++i], &end, 10);
            if (errno || *end || t.slot < 0)
                return usage();
        } else if (strcmp(argv[i], "--pin-length") == 0 && i + 1 < argc) {
            errno = 0;
            unsigned long n = strtoul(argv[++i], &end, 10);
            if (errno || *end || n > PROV_PIN_LEN_MAX)
                return usage();
            t.pin_len = n;
        } else {
            return usage();
        }
    }
    if (t.module == NULL || t.label == NULL)
        return usage();
    return prov_module_token_init(&t, stdout) == 0 ? 0 : 1;
}

static int cmd_config(int argc, char **argv)
{
    unsigned long port = 8443;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            port = strtoul(argv[++i], &end, 10);
            if (errno || *end || port == 0 || port > 65535) {
                fprintf(stderr, "--port must be 1 to 65535\n");
                return 2;
            }
        } else {
            return usage();
        }
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/appliance.conf", argv[0]) >= (int)sizeof(path)) {
        fprintf(stderr, "path too long: %s\n", argv[0]);
        return 1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
        return 1;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL || cfg_write_defaults(f, (unsigned)port) != 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    printf("config: %s\n", path);
    return 0;
}

static int cmd_admin_credential(int argc, char **argv)
{
    const char *label = "admin", *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--label") == 0 && i + 1 < argc)
            label = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else
            return usage();
    }
    return prov_admin_credential(argv[0], label, out, stdout) == 0 ? 0 : 1;
}

/* Reads a whole small file (the audit public key) into a NUL-terminated buffer. */
static char *read_small(const char *path)
{
    char *buf;
    size_t n;
    if (file_read_alloc(path, 0, 16384, &buf, &n) != FILE_OK)
        return NULL;
    if (n == 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* Checks an audit export offline with only the audit public key (GET /v1/audit/key's
 * "pem"); with --anchor, also that the export reaches a checkpoint the auditor kept. Exit
 * 0 and "verified ..." or exit 1 and the first broken seq. */
static int cmd_audit_verify(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    av_anchor anchor;
    const av_anchor *anchored = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--anchor") == 0 && i + 1 < argc) {
            av_anchor_err e = av_anchor_parse(argv[++i], &anchor);
            if (e != AV_ANCHOR_OK) {
                fprintf(stderr, "--anchor must be %s\n", av_anchor_strerror(e));
                return 2;
            }
            anchored = &anchor;
        } else {
            return usage();
        }
    }
    char *pem = read_small(argv[1]);
    if (pem == NULL) {
        fprintf(stderr, "cannot read the audit public key %s\n", argv[1]);
        return 2;
    }
    FILE *in = strcmp(argv[0], "-") == 0 ? stdin : fopen(argv[0], "re");
    if (in == NULL) {
        fprintf(stderr, "cannot open the export %s: %s\n", argv[0], strerror(errno));
        free(pem);
        return 2;
    }
    av_verdict v;
    int rc = av_verify_export(in, pem, anchored, &v);
    if (in != stdin)
        fclose(in);
    free(pem);
    if (rc != 0) {
        printf("broken at seq %llu: %s\n", (unsigned long long)v.broken_seq, v.why);
        return 1;
    }
    printf("verified %llu events up to seq %llu, last checkpoint at seq %llu\n",
           (unsigned long long)v.events, (unsigned long long)v.last_seq,
           (unsigned long long)v.last_checkpoint);
    return 0;
}

/* The bound of one listing: reconcile's (appliance/core/reconcile.c). */
#define PROV_LIST_MAX 8192

/* Lists the key objects on the token of DIR/appliance.conf, one line per kid: "KID_HEX
 * private|- public|- [reserved]", sorted by kid. Logs in with the configured PIN file, so
 * the PIN never reaches argv or the output; an operator (and `make soak`) compares the
 * token with the registry without stopping the appliance: PKCS#11 login state is per
 * process, so this login and the keeper's do not disturb each other. Exit 0, or 1 with one
 * line on stderr. */
static int cmd_token_list(int argc, char **argv)
{
    if (argc != 1)
        return usage();
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/appliance.conf", argv[0]) >= (int)sizeof(path)) {
        fprintf(stderr, "path too long: %s\n", argv[0]);
        return 1;
    }
    static cfg c;
    char err[CFG_ERR_MAX];
    if (cfg_load(path, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (cfg_pin_path(&c, c.pin_file, sizeof(c.pin_file), err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (c.softhsm2_conf[0] != '\0' && setenv("SOFTHSM2_CONF", c.softhsm2_conf, 1) != 0) {
        fprintf(stderr, "cannot set SOFTHSM2_CONF\n");
        return 1;
    }
    /* The module's own variables, as the keeper gets them (pkcs11_env). */
    static char env[CFG_ENV_VARS][CFG_ENV_MAX];
    int nenv = cfg_env_entries(c.pkcs11_env, env);
    for (int i = 0; i < nenv; i++) {
        if (putenv(env[i]) != 0) {
            fprintf(stderr, "cannot set the module's environment\n");
            return 1;
        }
    }
    hsm_config hc = {.module_path = c.pkcs11_module, .token = c.token, .pin_file = c.pin_file};
    hsm *h = NULL;
    unsigned long ckr = 0;
    sk_status st = hsm_open(&hc, &h, &ckr);
    /* tpm2-pkcs11 keeps its objects in SQLite without a busy timeout: its C_Initialize
     * fails with CKR_GENERAL_ERROR ("database is locked") while the running keeper writes
     * the store (a key made or destroyed). That is a moment, not a fault: try again for up
     * to 10 s. */
    for (int i = 0; i < 100 && st == SK_ERR_MODULE_LOAD && ckr == 0x5; i++) {
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
        st = hsm_open(&hc, &h, &ckr);
    }
    if (st != SK_OK) {
        fprintf(stderr, "token %s: %s (PKCS#11 rv 0x%lx)\n", c.token, sk_strerror(st), ckr);
        return 1;
    }
    sk_key_entry *objs = calloc(PROV_LIST_MAX, sizeof(*objs));
    size_t n = 0;
    st = objs != NULL ? hsm_list(h, objs, PROV_LIST_MAX, &n) : SK_ERR_DEVICE;
    hsm_close(h);
    if (st != SK_OK || n > PROV_LIST_MAX) {
        fprintf(stderr, "cannot list the token: %s\n",
                st != SK_OK ? sk_strerror(st) : "more objects than the listing bound");
        free(objs);
        return 1;
    }
    qsort(objs, n, sizeof(*objs), sk_kid_cmp);
    char hex[2 * SK_KID_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        sk_kid_hex(&objs[i].kid, hex);
        printf("%s %s %s%s\n", hex, objs[i].has_private ? "private" : "-",
               objs[i].has_public ? "public" : "-",
               kp_is_reserved(&objs[i].kid) ? " reserved" : "");
    }
    free(objs);
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    if (strcmp(argv[1], "token") == 0)
        return cmd_token(argc - 2, argv + 2);
    if (strcmp(argv[1], "module-token") == 0)
        return cmd_module_token(argc - 2, argv + 2);
    if (strcmp(argv[1], "config") == 0)
        return cmd_config(argc - 2, argv + 2);
    if (strcmp(argv[1], "admin-credential") == 0)
        return cmd_admin_credential(argc - 2, argv + 2);
    if (strcmp(argv[1], "audit-verify") == 0)
        return cmd_audit_verify(argc - 2, argv + 2);
    if (strcmp(argv[1], "token-list") == 0)
        return cmd_token_list(argc - 2, argv + 2);
    return usage();
}
