/* hd: process hardening of the appliance daemon (see harden.h). */
#include "appliance/harden.h"

#include <errno.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

void hd_early(void)
{
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    umask(077);
}

/* The account's uid and primary gid. -1 with one line in err when it is missing, cannot be
 * looked up, or is uid 0. */
static int hd_lookup(const char *user, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
    size_t size = 4096;
    for (;;) {
        char *buf = malloc(size);
        if (buf == NULL) {
            cfg_errorf(err, errlen, "user = %s: out of memory looking the account up", user);
            return -1;
        }
        struct passwd pw, *found = NULL;
        int rc = getpwnam_r(user, &pw, buf, size, &found);
        if (rc == ERANGE && size < 1024 * 1024) {
            free(buf);
            size *= 4;
            continue;
        }
        if (found != NULL) {
            *uid = pw.pw_uid;
            *gid = pw.pw_gid;
        }
        free(buf);
        if (rc != 0) {
            cfg_errorf(err, errlen, "user = %s: cannot look the account up: %s", user,
                       strerror(rc));
            return -1;
        }
        if (found == NULL) {
            cfg_errorf(err, errlen, "user = %s: no such account", user);
            return -1;
        }
        if (*uid == 0) {
            cfg_errorf(err, errlen,
                       "user = %s: the account has uid 0; name an unprivileged account "
                       "(or leave user empty to stay root)",
                       user);
            return -1;
        }
        return 0;
    }
}

/* ---- the data directory's owner ------------------------------------------------------ */

/* directories.tokendir from a SoftHSM2 configuration file; 0 when found, else -1. */
static int hd_tokendir(const char *conf, char out[CFG_PATH_MAX])
{
    FILE *f = fopen(conf, "re");
    if (f == NULL)
        return -1;
    static const char key[] = "directories.tokendir";
    char line[CFG_PATH_MAX + 64];
    int found = -1;
    while (found != 0 && fgets(line, sizeof(line), f) != NULL) {
        char *p = line + strspn(line, " \t");
        if (strncmp(p, key, sizeof(key) - 1) != 0)
            continue;
        p += sizeof(key) - 1;
        p += strspn(p, " \t");
        if (*p != '=')
            continue;
        p += 1 + strspn(p + 1, " \t");
        size_t n = strlen(p);
        while (n > 0 &&
               (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
            p[--n] = '\0';
        if (n > 0 && n < CFG_PATH_MAX) {
            memcpy(out, p, n + 1);
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* nftw has no argument for its callback: the walk's state is per thread. */
static _Thread_local uid_t hd_walk_uid;
static _Thread_local uid_t hd_walk_bad_owner;
static _Thread_local char hd_walk_bad[CFG_PATH_MAX];

static int hd_walk_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)ftw;
    if (type == FTW_NS || type == FTW_DNR) {
        hd_walk_bad_owner = (uid_t)-1;
        snprintf(hd_walk_bad, sizeof(hd_walk_bad), "%s", path);
        return 1;
    }
    if (st->st_uid != hd_walk_uid) {
        hd_walk_bad_owner = st->st_uid;
        snprintf(hd_walk_bad, sizeof(hd_walk_bad), "%s", path);
        return 1;
    }
    return 0;
}

static int hd_owner_fail(const cfg *c, uid_t uid, const char *path, uid_t owner,
                         const char *fix_dir, char *err, size_t errlen)
{
    cfg_errorf(err, errlen,
               "user = %s: %s belongs to uid %u, not to %s (uid %u), which must manage it "
               "after the switch: run chown -R %s %s",
               c->user, path, (unsigned)owner, c->user, (unsigned)uid, c->user, fix_dir);
    return -1;
}

int hd_check_data_owner(const cfg *c, char *err, size_t errlen)
{
    if (c->user[0] == '\0' || geteuid() != 0)
        return 0;
    uid_t uid;
    gid_t gid;
    if (hd_lookup(c->user, &uid, &gid, err, errlen) != 0)
        return -1;

    /* The database's directory: SQLite creates and deletes its -wal and -journal there. */
    char dbdir[CFG_PATH_MAX];
    snprintf(dbdir, sizeof(dbdir), "%s", c->database);
    char *slash = strrchr(dbdir, '/');
    if (slash == NULL)
        snprintf(dbdir, sizeof(dbdir), ".");
    else if (slash == dbdir)
        slash[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dbdir, &st) != 0) {
        cfg_errorf(err, errlen, "user = %s: cannot check %s: %s", c->user, dbdir, strerror(errno));
        return -1;
    }
    if (st.st_uid != uid)
        return hd_owner_fail(c, uid, dbdir, st.st_uid, dbdir, err, errlen);

    /* The token: SoftHSM2 opens and creates its object files on every operation. */
    char tokendir[CFG_PATH_MAX];
    if (c->softhsm2_conf[0] == '\0' || hd_tokendir(c->softhsm2_conf, tokendir) != 0)
        return 0;
    /* The fix names the data directory when the token lives in it (the usual layout). */
    size_t dl = strlen(dbdir);
    const char *fix = strncmp(tokendir, dbdir, dl) == 0 && tokendir[dl] == '/' ? dbdir : tokendir;
    hd_walk_uid = uid;
    hd_walk_bad[0] = '\0';
    int rc = nftw(tokendir, hd_walk_one, 16, FTW_PHYS);
    if (rc == 1 && hd_walk_bad_owner == (uid_t)-1) {
        cfg_errorf(err, errlen, "user = %s: cannot check %s", c->user, hd_walk_bad);
        return -1;
    }
    if (rc == 1)
        return hd_owner_fail(c, uid, hd_walk_bad, hd_walk_bad_owner, fix, err, errlen);
    if (rc != 0) {
        cfg_errorf(err, errlen, "user = %s: cannot check %s: %s", c->user, tokendir,
                   strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- the switch ------------------------------------------------------------------------ */

/* After the credentials are final: no core, no ptrace, no way back through execve. */
static int hd_lock(const char *user, char *err, size_t errlen)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        cfg_errorf(err, errlen, "user = %s: PR_SET_DUMPABLE: %s", user, strerror(errno));
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        cfg_errorf(err, errlen, "user = %s: PR_SET_NO_NEW_PRIVS: %s", user, strerror(errno));
        return -1;
    }
    return 0;
}

int hd_drop_user(const char *user, char *err, size_t errlen)
{
    if (user == NULL || user[0] == '\0')
        return 0;
    uid_t uid;
    gid_t gid;
    if (geteuid() != 0) {
        char ignored[8];
        if (hd_lookup(user, &uid, &gid, ignored, sizeof(ignored)) == 0 && getuid() == uid &&
            geteuid() == uid)
            return hd_lock(user, err, errlen);
        cfg_errorf(err, errlen,
                   "user = %s is set but signd was not started as root (it runs as uid %u)", user,
                   (unsigned)geteuid());
        return -1;
    }
    if (hd_lookup(user, &uid, &gid, err, errlen) != 0)
        return -1;
    /* In this order: supplementary groups and the gid need root, which setuid gives up.
     * glibc applies each of these to every thread of the process. */
    if (setgroups(1, &gid) != 0) {
        cfg_errorf(err, errlen, "user = %s: setgroups: %s", user, strerror(errno));
        return -1;
    }
    if (setgid(gid) != 0) {
        cfg_errorf(err, errlen, "user = %s: setgid(%u): %s", user, (unsigned)gid, strerror(errno));
        return -1;
    }
    if (setuid(uid) != 0) {
        cfg_errorf(err, errlen, "user = %s: setuid(%u): %s", user, (unsigned)uid, strerror(errno));
        return -1;
    }
    /* Trust, but verify: no way back to root, every id the account's. */
    if (setuid(0) == 0 || setgid(0) == 0) {
        cfg_errorf(err, errlen, "user = %s: root could be regained after the switch", user);
        return -1;
    }
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    gid_t groups[2];
    int ng = getgroups(2, groups);
    if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 || ru != uid || eu != uid ||
        su != uid || rg != gid || eg != gid || sg != gid || ng < 0 || ng > 1 ||
        (ng == 1 && groups[0] != gid)) {
        cfg_errorf(err, errlen,
                   "user = %s: the process's ids are not the account's after the switch", user);
        return -1;
    }
    return hd_lock(user, err, errlen);
}
