/* prov: token and admin-credential provisioning. See token.h. */
#include "provisioning/token.h"

#include "appliance/common/config.h"
#include "appliance/store/chain.h"
#include "appliance/store/credentials.h"
#include "hsm/hsm.h"
#include "base/hex.h"

#include <openssl/crypto.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* 120 bits as 30 hex characters, no newline: Debian's libp11 0.4.12 engine reads at most
 * 31 characters from a pin-source file, and newer ones take a newline as part of the PIN. */
#define PROV_PIN_BYTES 15

static int prov_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Writes len bytes to a new file at path, mode 0600; refuses an existing file. */
static int prov_write_new(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* A random PIN as lowercase hex into a new 0600 file; the PIN is wiped before return. */
static int prov_write_pin(const char *path)
{
    uint8_t raw[PROV_PIN_BYTES];
    char text[2 * PROV_PIN_BYTES + 1];
    int rc = prov_random(raw, sizeof(raw));
    if (rc == 0) {
        hex_encode(raw, sizeof(raw), text);
        rc = prov_write_new(path, text, 2 * PROV_PIN_BYTES);
    } else {
        fprintf(stderr, "cannot read random bytes for %s\n", path);
    }
    explicit_bzero(raw, sizeof(raw));
    explicit_bzero(text, sizeof(text));
    return rc;
}

/* An alphanumeric PIN of len characters (62 symbols, about 5.95 bits each), for modules
 * whose PINs are short (opencryptoki: 4 to 8): into a new 0600 file, wiped before return.
 * Rejection sampling keeps every symbol equally likely. */
static int prov_write_short_pin(const char *path, size_t len)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    char text[PROV_PIN_LEN_MAX];
    size_t n = 0;
    int rc = 0;
    while (n < len && rc == 0) {
        uint8_t raw[32];
        if (prov_random(raw, sizeof(raw)) != 0) {
            fprintf(stderr, "cannot read random bytes for %s\n", path);
            rc = -1;
        }
        for (size_t i = 0; rc == 0 && i < sizeof(raw) && n < len; i++)
            if (raw[i] < 248) /* 248 = 4 * 62 */
                text[n++] = alphabet[raw[i] % 62];
        explicit_bzero(raw, sizeof(raw));
    }
    if (rc == 0)
        rc = prov_write_new(path, text, len);
    explicit_bzero(text, sizeof(text));
    return rc;
}

int prov_admin_credential(const char *dir, const char *label, const char *out_path, FILE *out)
{
    char conf[PATH_MAX], path[PATH_MAX], err[CFG_ERR_MAX];
    if (snprintf(conf, sizeof(conf), "%s/appliance.conf", dir) >= (int)sizeof(conf) ||
        snprintf(path, sizeof(path), "%s/admin.credential", dir) >= (int)sizeof(path)) {
        fprintf(stderr, "path too long: %s\n", dir);
        return -1;
    }
    if (out_path != NULL)
        snprintf(path, sizeof(path), "%s", out_path);
    static cfg c; /* large; one call per process */
    if (cfg_load(conf, &c, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    /* Its credential.created event names this node, as the server's events do. */
    char node[CFG_NODE_MAX];
    if (cfg_node_name(&c, node) == 0)
        chn_set_node(node);
    /* The file first (O_EXCL): a name already taken fails before any credential exists. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "cannot create %s: %s%s\n", path, strerror(errno),
                errno == EEXIST ? " (pass --out FILE to write the new secret elsewhere)" : "");
        return -1;
    }
    cred_store *cs = NULL;
    if (cred_open(c.database, &cs) != CRED_OK) {
        fprintf(stderr, "%s: %s\n", c.database, cred_last_error());
        close(fd);
        unlink(path);
        return -1;
    }
    char secret[CRED_SECRET_MAX];
    cred_record rec;
    cred_spec sp = {.role = CRED_ROLE_ADMIN, .label = label};
    int rc = -1;
    cred_status st = cred_create(cs, &sp, (int64_t)time(NULL), secret, &rec);
    if (st == CRED_ERR_INVALID) {
        fprintf(stderr, "--label must be printable ASCII, at most %d bytes\n", CRED_LABEL_MAX);
    } else if (st != CRED_OK) {
        fprintf(stderr, "cannot create the credential: %s\n", cred_last_error());
    } else {
        secret[CRED_SECRET_LEN] = '\n';
        size_t done = 0;
        while (done < CRED_SECRET_LEN + 1) {
            ssize_t w = write(fd, secret + done, CRED_SECRET_LEN + 1 - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            done += (size_t)w;
        }
        if (done == CRED_SECRET_LEN + 1 && fsync(fd) == 0) {
            rc = 0;
        } else {
            /* A credential whose secret nobody has must not stay usable. */
            fprintf(stderr, "cannot write %s: %s; credential %s revoked again\n", path,
                    strerror(errno), rec.id);
            cred_revoke(cs, rec.id, (int64_t)time(NULL), NULL);
        }
    }
    OPENSSL_cleanse(secret, sizeof(secret));
    cred_close(cs);
    if (close(fd) != 0)
        rc = -1;
    if (rc != 0) {
        unlink(path);
        return -1;
    }
    fprintf(out, "admin credential %s written to %s\n", rec.id, path);
    return 0;
}

static int prov_path(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        return -1;
    }
    return 0;
}

/* RFC 7512 percent-encoding of a path attribute value. */
static void prov_uri_value(FILE *out, const char *v)
{
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("-._~", c) != NULL)
            fputc(c, out);
        else
            fprintf(out, "%%%02X", c);
    }
}

int prov_token_init(const char *dir, const char *label, const char *module, FILE *out)
{
    char abs[PATH_MAX], conf[PATH_MAX], tokdir[PATH_MAX], pin[PATH_MAX], so_pin[PATH_MAX];
    if (strlen(label) == 0 || strlen(label) > 32) {
        fprintf(stderr, "token label must be 1 to 32 bytes\n");
        return -1;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (realpath(dir, abs) == NULL) {
        fprintf(stderr, "cannot resolve %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (prov_path(conf, abs, "softhsm2.conf") || prov_path(tokdir, abs, "token") ||
        prov_path(pin, abs, "pin") || prov_path(so_pin, abs, "so-pin"))
        return -1;
    const char *existing[] = {tokdir, conf, pin, so_pin};
    for (size_t i = 0; i < sizeof(existing) / sizeof(existing[0]); i++) {
        struct stat st;
        if (lstat(existing[i], &st) == 0) {
            fprintf(stderr,
                    "%s already has a token (%s exists): refusing to touch it, so that no "
                    "key is lost; use another directory\n",
                    abs, existing[i]);
            return -1;
        }
    }
    if (mkdir(tokdir, 0700) != 0) {
        fprintf(stderr, "cannot create %s: %s\n", tokdir, strerror(errno));
        return -1;
    }
    char text[PATH_MAX + 256];
    int n = snprintf(text, sizeof(text),
                     "# SoftHSM2 configuration of this data directory only.\n"
                     "directories.tokendir = %s\n"
                     "objectstore.backend = file\n"
                     "log.level = ERROR\n"
                     "slots.removable = false\n",
                     tokdir);
    if (n < 0 || (size_t)n >= sizeof(text) || prov_write_new(conf, text, (size_t)n) != 0)
        return -1;
    if (prov_write_pin(so_pin) != 0 || prov_write_pin(pin) != 0)
        return -1;
    /* Our own process only: SoftHSM2 finds its configuration through the environment. */
    if (setenv("SOFTHSM2_CONF", conf, 1) != 0) {
        fprintf(stderr, "cannot set SOFTHSM2_CONF\n");
        return -1;
    }
    char serial[17];
    sk_status st = hsm_init_token(module, label, so_pin, pin, serial);
    if (st != SK_OK) {
        fprintf(stderr, "cannot initialise the token in %s: %s (CKR 0x%lx)\n", tokdir,
                sk_strerror(st), hsm_last_ckr());
        return -1;
    }
    fprintf(out, "label: %s\nserial: %s\nuri: pkcs11:token=", label, serial);
    prov_uri_value(out, label);
    fprintf(out, ";serial=");
    prov_uri_value(out, serial);
    fprintf(out, "\nsofthsm2_conf: %s\n", conf);
    return 0;
}

int prov_module_token_init(const prov_module_token *t, FILE *out)
{
    char abs[PATH_MAX], pin[PATH_MAX], so_pin[PATH_MAX];
    if (strlen(t->label) == 0 || strlen(t->label) > 32) {
        fprintf(stderr, "token label must be 1 to 32 bytes\n");
        return -1;
    }
    if (t->pin_len < 4 || t->pin_len > PROV_PIN_LEN_MAX) {
        fprintf(stderr, "--pin-length must be 4 to %d\n", PROV_PIN_LEN_MAX);
        return -1;
    }
    if (realpath(t->dir, abs) == NULL) {
        fprintf(stderr, "cannot resolve %s: %s\n", t->dir, strerror(errno));
        return -1;
    }
    if (prov_path(pin, abs, "pin") || prov_path(so_pin, abs, "so-pin"))
        return -1;
    const char *existing[] = {pin, so_pin};
    for (size_t i = 0; i < sizeof(existing) / sizeof(existing[0]); i++) {
        struct stat st;
        if (lstat(existing[i], &st) == 0) {
            fprintf(stderr,
                    "%s already has a token's PIN (%s exists): refusing to touch it, so that "
                    "no key is lost; use another directory\n",
                    abs, existing[i]);
            return -1;
        }
    }
    if (prov_write_short_pin(so_pin, t->pin_len) != 0 || prov_write_short_pin(pin, t->pin_len) != 0)
        return -1;
    hsm_init_spec sp = {.module_path = t->module,
                        .label = t->label,
                        .so_pin_file = so_pin,
                        .user_pin_file = pin,
                        .factory_so_pin_file = t->factory_so_pin_file,
                        .slot = t->slot};
    char serial[17];
    sk_status st = hsm_init_token_spec(&sp, serial);
    if (st != SK_OK) {
        fprintf(stderr, "cannot initialise the token of %s%s: %s (CKR 0x%lx)\n", t->module,
                st == SK_ERR_TOKEN_NOT_FOUND ? " (no uninitialised token in that slot)" : "",
                sk_strerror(st), hsm_last_ckr());
        /* The PINs of a token that was not made are worth nothing: a later run starts over. */
        unlink(pin);
        unlink(so_pin);
        return -1;
    }
    fprintf(out, "label: %s\nserial: %s\nuri: pkcs11:token=", t->label, serial);
    prov_uri_value(out, t->label);
    fprintf(out, "\n");
    return 0;
}
