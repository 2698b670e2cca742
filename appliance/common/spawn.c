/* spn: the supervisor's hand-over to signd-keeper and signd-front. See spawn.h. */
#include "appliance/common/spawn.h"

#include "appliance/common/harden.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

int spn_config_snapshot(const char *path, int *fd, cfg *c, char sha256_hex[65], char *err,
                        size_t errlen)
{
    *fd = -1;
    size_t len = 0;
    char *text = cfg_read_file(path, &len, err, errlen);
    if (text == NULL)
        return -1;
    int m = memfd_create("signd.conf", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    size_t off = 0;
    while (m >= 0 && off < len) {
        ssize_t n = write(m, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    free(text);
    /* Sealed: no process holding it can change what the others read. */
    if (m < 0 || off != len ||
        fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
        cfg_errorf(err, errlen, "%s: cannot keep a copy for the keeper and the front: %s", path,
                   strerror(errno));
        if (m >= 0)
            close(m);
        return -1;
    }
    if (spn_config_load(m, path, c, sha256_hex, err, errlen) != 0) {
        close(m);
        return -1;
    }
    *fd = m;
    return 0;
}

int spn_config_load(int fd, const char *path, cfg *c, char sha256_hex[65], char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 || st.st_size > CFG_FILE_MAX)
        return cfg_errorf(err, errlen, "%s: the supervisor's copy cannot be read", path);
    size_t len = (size_t)st.st_size;
    char *text = malloc(len + 1);
    if (text == NULL)
        return cfg_errorf(err, errlen, "%s: out of memory", path);
    size_t off = 0;
    /* pread: the descriptor's offset is shared with every other holder. */
    while (off < len) {
        ssize_t n = pread(fd, text + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    int rc = -1;
    if (off != len)
        cfg_errorf(err, errlen, "%s: the supervisor's copy cannot be read", path);
    else if (cfg_load_text(path, text, len, c, err, errlen) == 0)
        rc = 0;
    if (rc == 0 && sha256_hex != NULL)
        cfg_sha256_hex_bytes(text, len, sha256_hex);
    free(text);
    return rc;
}

static char *spn_num(spn_argv_store *store, size_t *used, long v)
{
    char *s = store->num[(*used)++];
    snprintf(s, sizeof(store->num[0]), "%ld", v);
    return s;
}

size_t spn_argv(const char *title, const spn_args *a, spn_argv_store *store, char *argv[],
                size_t cap)
{
    if (cap < SPN_ARGV_MAX)
        return 0;
    size_t n = 0, used = 0;
    argv[n++] = (char *)title;
    argv[n++] = "--config";
    argv[n++] = (char *)a->config_path;
    argv[n++] = "--config-fd";
    argv[n++] = spn_num(store, &used, a->config_fd);
    argv[n++] = "--ready-fd";
    argv[n++] = spn_num(store, &used, a->ready_fd);
    argv[n++] = "--lock-fd";
    argv[n++] = spn_num(store, &used, a->lock_fd);
    if (a->events_fd >= 0) {
        argv[n++] = "--events-fd";
        argv[n++] = spn_num(store, &used, a->events_fd);
    }
    if (a->peer_uid >= 0) {
        argv[n++] = "--peer-uid";
        argv[n++] = spn_num(store, &used, a->peer_uid);
    }
    if (a->announce)
        argv[n++] = "--announce";
    argv[n] = NULL;
    return n;
}

/* A decimal in [0, max], or -1. */
static long spn_long(const char *s, long max)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return errno == 0 && *end == '\0' && v <= max ? v : -1;
}

static int spn_fd(const char *opt, const char *s, int *out, char *err, size_t errlen)
{
    long v = spn_long(s, INT_MAX);
    if (v < 0 || fcntl((int)v, F_GETFD) < 0)
        return cfg_errorf(err, errlen, "%s %s: not an open descriptor", opt, s ? s : "(missing)");
    /* Nothing this program starts inherits it. */
    fcntl((int)v, F_SETFD, FD_CLOEXEC);
    *out = (int)v;
    return 0;
}

int spn_parse(int argc, char **argv, spn_args *a, char *err, size_t errlen)
{
    *a =
        (spn_args){.config_fd = -1, .ready_fd = -1, .lock_fd = -1, .events_fd = -1, .peer_uid = -1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(o, "--announce") == 0) {
            a->announce = 1;
            continue;
        }
        if (strcmp(o, "--config") == 0 && v != NULL && v[0] == '/')
            a->config_path = v;
        else if (strcmp(o, "--config-fd") == 0)
            rc = spn_fd(o, v, &a->config_fd, err, errlen);
        else if (strcmp(o, "--ready-fd") == 0)
            rc = spn_fd(o, v, &a->ready_fd, err, errlen);
        else if (strcmp(o, "--lock-fd") == 0)
            rc = spn_fd(o, v, &a->lock_fd, err, errlen);
        else if (strcmp(o, "--events-fd") == 0)
            rc = spn_fd(o, v, &a->events_fd, err, errlen);
        else if (strcmp(o, "--peer-uid") == 0)
            rc = (a->peer_uid = spn_long(v, INT_MAX)) < 0
                     ? cfg_errorf(err, errlen, "--peer-uid %s: not a uid", v ? v : "(missing)")
                     : 0;
        else
            return cfg_errorf(err, errlen, "unexpected argument %s (started by signd only)", o);
        if (rc != 0)
            return -1;
        i++;
    }
    if (a->config_path == NULL || a->config_fd < 0 || a->ready_fd < 0 || a->lock_fd < 0)
        return cfg_errorf(err, errlen,
                          "--config, --config-fd, --ready-fd and --lock-fd are "
                          "required (started by signd only)");
    return 0;
}

void spn_begin(const char *name, sigset_t *sigs)
{
    hd_early();
    prctl(PR_SET_NAME, name, 0, 0, 0);
    sigemptyset(sigs);
    sigaddset(sigs, SIGTERM);
    /* Exactly these: the supervisor's mask (SIGCHLD too) came through fork and execve. */
    pthread_sigmask(SIG_SETMASK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A terminal's Ctrl-C reaches the whole foreground process group at once. Only the
     * supervisor acts on it, stopping the front first and the keeper last, so that the
     * front's last audit checkpoint is still signed by a running keeper (the keeper
     * stopping on the same SIGINT made it fail with device_error). */
    signal(SIGINT, SIG_IGN);
}
