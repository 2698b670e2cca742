/* hd: process hardening of the appliance daemon (see harden.h). */
#include "appliance/common/harden.h"

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

#include <linux/audit.h>
#include <linux/sched.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>

void hd_early(void)
{
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    umask(077);
}

/* The account's uid and primary gid. -1 with one line in err, naming the setting, when it
 * is missing, cannot be looked up, or is uid 0. */
static int hd_lookup_as(const char *setting, const char *user, uid_t *uid, gid_t *gid, char *err,
                        size_t errlen)
{
    size_t size = 4096;
    for (;;) {
        char *buf = malloc(size);
        if (buf == NULL) {
            cfg_errorf(err, errlen, "%s = %s: out of memory looking the account up", setting, user);
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
            cfg_errorf(err, errlen, "%s = %s: cannot look the account up: %s", setting, user,
                       strerror(rc));
            return -1;
        }
        if (found == NULL) {
            cfg_errorf(err, errlen, "%s = %s: no such account", setting, user);
            return -1;
        }
        if (*uid == 0) {
            cfg_errorf(err, errlen,
                       "%s = %s: the account has uid 0; name an unprivileged account "
                       "(or leave %s empty to stay root)",
                       setting, user, setting);
            return -1;
        }
        return 0;
    }
}

static int hd_lookup(const char *user, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
    return hd_lookup_as("user", user, uid, gid, err, errlen);
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

    /* The database's directory: SQLite creates and deletes its -wal and -journal there.
     * A PostgreSQL database has none here; the node's state directory is checked instead
     * (the keeper's state lives in it). */
    char dbdir[CFG_PATH_MAX];
    if (cfg_database_is_uri(c->database)) {
        if (cfg_state_dir(c, dbdir, sizeof(dbdir)) != 0)
            return cfg_errorf(err, errlen, "state_directory is not set");
    } else {
        snprintf(dbdir, sizeof(dbdir), "%s", c->database);
        char *slash = strrchr(dbdir, '/');
        if (slash == NULL)
            snprintf(dbdir, sizeof(dbdir), ".");
        else if (slash == dbdir)
            slash[1] = '\0';
        else
            *slash = '\0';
    }
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
static int hd_lock(const char *setting, const char *user, char *err, size_t errlen)
{
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        cfg_errorf(err, errlen, "%s = %s: PR_SET_DUMPABLE: %s", setting, user, strerror(errno));
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        cfg_errorf(err, errlen, "%s = %s: PR_SET_NO_NEW_PRIVS: %s", setting, user, strerror(errno));
        return -1;
    }
    return 0;
}

/* Root only: becomes uid/gid with exactly the supplementary groups given, for good, and
 * checks it. */
static int hd_switch(const char *setting, const char *user, uid_t uid, gid_t gid,
                     const gid_t *groups, int ngroups, char *err, size_t errlen)
{
    /* In this order: supplementary groups and the gid need root, which setuid gives up.
     * glibc applies each of these to every thread of the process. */
    if (setgroups((size_t)ngroups, groups) != 0) {
        cfg_errorf(err, errlen, "%s = %s: setgroups: %s", setting, user, strerror(errno));
        return -1;
    }
    if (setgid(gid) != 0) {
        cfg_errorf(err, errlen, "%s = %s: setgid(%u): %s", setting, user, (unsigned)gid,
                   strerror(errno));
        return -1;
    }
    if (setuid(uid) != 0) {
        cfg_errorf(err, errlen, "%s = %s: setuid(%u): %s", setting, user, (unsigned)uid,
                   strerror(errno));
        return -1;
    }
    /* Trust, but verify: no way back to root, every id the account's. */
    if (setuid(0) == 0 || setgid(0) == 0) {
        cfg_errorf(err, errlen, "%s = %s: root could be regained after the switch", setting, user);
        return -1;
    }
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    gid_t now[HD_GROUPS_MAX + 1];
    int ng = getgroups(HD_GROUPS_MAX + 1, now);
    int same = ng == ngroups;
    for (int i = 0; same && i < ng; i++) {
        int found = 0;
        for (int j = 0; j < ngroups; j++)
            found |= now[i] == groups[j];
        same = found;
    }
    if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 || ru != uid || eu != uid ||
        su != uid || rg != gid || eg != gid || sg != gid || !same) {
        cfg_errorf(err, errlen, "%s = %s: the process's ids are not the account's after the switch",
                   setting, user);
        return -1;
    }
    return hd_lock(setting, user, err, errlen);
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
            return hd_lock("user", user, err, errlen);
        cfg_errorf(err, errlen,
                   "user = %s is set but signd was not started as root (it runs as uid %u)", user,
                   (unsigned)geteuid());
        return -1;
    }
    if (hd_lookup(user, &uid, &gid, err, errlen) != 0)
        return -1;
    /* The primary group only: one account for every process, nothing shared to reach. */
    return hd_switch("user", user, uid, gid, &gid, 1, err, errlen);
}

/* ---- one account per role ---------------------------------------------------------------- */

int hd_account_lookup(const char *setting, const char *name, hd_account *out, char *err,
                      size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (name == NULL || name[0] == '\0')
        return 0;
    if (strlen(name) >= sizeof(out->name))
        return cfg_errorf(err, errlen, "%s = %s: name too long", setting, name);
    if (hd_lookup_as(setting, name, &out->uid, &out->gid, err, errlen) != 0)
        return -1;
    /* The account's groups as /etc/group lists them (initgroups' list): the shared data
     * group is how the keeper reads the registry and the front reaches the keeper's
     * socket. */
    out->ngroups = HD_GROUPS_MAX;
    if (getgrouplist(name, out->gid, out->groups, &out->ngroups) < 0)
        return cfg_errorf(err, errlen, "%s = %s: in more than %d groups", setting, name,
                          HD_GROUPS_MAX);
    snprintf(out->setting, sizeof(out->setting), "%s", setting);
    memcpy(out->name, name, strlen(name) + 1);
    return 0;
}

int hd_become(const hd_account *a, char *err, size_t errlen)
{
    if (a->name[0] == '\0')
        return 0;
    if (geteuid() != 0)
        return cfg_errorf(err, errlen, "%s = %s: switching needs root (it runs as uid %u)",
                          a->setting, a->name, (unsigned)geteuid());
    return hd_switch(a->setting, a->name, a->uid, a->gid, a->groups, a->ngroups, err, errlen);
}

/* path must belong to uid: -1 with the fix in err when it does not (a missing path is for
 * the process that opens it to report). */
static int hd_owned(const hd_account *a, const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0
                               : cfg_errorf(err, errlen, "%s = %s: cannot check %s: %s", a->setting,
                                            a->name, path, strerror(errno));
    /* A symbolic link is refused by whoever opens the file (O_NOFOLLOW), with a message
     * that says so; its owner is not the question. */
    if (st.st_uid == a->uid || S_ISLNK(st.st_mode))
        return 0;
    return cfg_errorf(err, errlen,
                      "%s = %s: %s belongs to uid %u, not to %s (uid %u), which must use it: run "
                      "chown %s %s (provisioning/init-data-dir.sh sets every owner of a data "
                      "directory)",
                      a->setting, a->name, path, (unsigned)st.st_uid, a->name, (unsigned)a->uid,
                      a->name, path);
}

int hd_check_role_owners(const cfg *c, const hd_account *keeper, const hd_account *front, char *err,
                         size_t errlen)
{
    if (geteuid() != 0)
        return 0;
    if (keeper->name[0] != '\0') {
        if (hd_owned(keeper, c->pin_file, err, errlen) != 0)
            return -1;
        if (c->softhsm2_conf[0] != '\0') {
            if (hd_owned(keeper, c->softhsm2_conf, err, errlen) != 0)
                return -1;
            char tokendir[CFG_PATH_MAX];
            if (hd_tokendir(c->softhsm2_conf, tokendir) == 0) {
                hd_walk_uid = keeper->uid;
                hd_walk_bad[0] = '\0';
                int rc = nftw(tokendir, hd_walk_one, 16, FTW_PHYS);
                if (rc == 1 && hd_walk_bad_owner != (uid_t)-1)
                    return hd_owned(keeper, hd_walk_bad, err, errlen);
                if (rc != 0)
                    return cfg_errorf(err, errlen, "%s = %s: cannot check %s", keeper->setting,
                                      keeper->name, rc == 1 ? hd_walk_bad : tokendir);
            }
        }
    }
    if (front->name[0] != '\0') {
        if ((!cfg_database_is_uri(c->database) && hd_owned(front, c->database, err, errlen) != 0) ||
            hd_owned(front, c->tls_private_key, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/*
 * The filters. Deny lists, not allow lists: the front runs CivetWeb, OpenSSL, SQLite and
 * glibc, and the keeper whatever PKCS#11 module it is given (a vendor's, closed source),
 * whose exact system calls change with every update; a missing one in an allow list would
 * kill a process on a rare path. Instead each refuses, with EPERM, the calls that turn code
 * execution in it into more than it already has: running another program, reading or
 * writing another process's memory or descriptors, and the kernel interfaces an exploit
 * reaches for (modules, BPF, namespaces, mounts). Calls from another ABI (i386 through int
 * 0x80, x32) have other numbers and would walk past the list: a foreign ABI kills the
 * process, an x32 call gets EPERM.
 *
 * Namespaces: unshare and setns are on the list, and clone is allowed only without a
 * CLONE_NEW* flag (its first argument is inspected; glibc's fork and pthread_create never
 * set one). clone3 passes its flags in memory, which a filter cannot read: it gets ENOSYS,
 * which glibc takes as "an older kernel" and falls back to clone for threads.
 */
#if defined(__x86_64__)
#define HD_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HD_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* Refused in both processes. */
static const long hd_denied_common[] = {
    SYS_execve,
    SYS_execveat,
#if !HD_FILTER_ALLOWS_PTRACE
    SYS_ptrace,
#endif
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_kcmp,
    SYS_pidfd_getfd,
    SYS_open_by_handle_at,
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_chroot,
    SYS_unshare,
    SYS_setns,
    SYS_open_tree,
    SYS_move_mount,
    SYS_fsopen,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fspick,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_acct,
    SYS_swapon,
    SYS_swapoff,
    SYS_reboot,
    SYS_settimeofday,
    SYS_clock_settime,
    SYS_clock_adjtime,
    SYS_adjtimex,
    SYS_syslog,
    SYS_vhangup,
    SYS_quotactl,
    SYS_fanotify_init,
#if defined(__x86_64__)
    SYS_iopl,
    SYS_ioperm,
    SYS_uselib,
#endif
};

/* Refused in the front only: a vendor PKCS#11 module may use the kernel keyring for its
 * own secrets, io_uring to reach a network HSM, or set a personality; the front's own
 * libraries do none of it (and io_uring would carry calls past its filter). */
static const long hd_denied_front_only[] = {
    SYS_name_to_handle_at, SYS_keyctl,         SYS_add_key,           SYS_request_key,
    SYS_io_uring_setup,    SYS_io_uring_enter, SYS_io_uring_register, SYS_personality,
};

#define HD_N(a) (sizeof(a) / sizeof((a)[0]))
#define HD_N_MAX (HD_N(hd_denied_common) + HD_N(hd_denied_front_only))
/* A BPF jump reaches at most 255 instructions ahead. */
_Static_assert(HD_N_MAX < 240, "the deny list outgrew the filter's 8-bit jumps");

/* Every namespace a clone flag can create. CLONE_NEWTIME (0x80) shares its bit with the
 * exit signal in clone's first argument, where a value of 128 or more is no signal and
 * the kernel refuses it anyway, so including it refuses nothing valid. */
#define HD_CLONE_NS_FLAGS                                                                          \
    (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |  \
     CLONE_NEWNET | CLONE_NEWTIME)

/* The low 32 bits of a system call's argument (all the clone flags live there). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HD_ARG_LO(i) (offsetof(struct seccomp_data, args) + (i) * sizeof(__u64))
#else
#define HD_ARG_LO(i) (offsetof(struct seccomp_data, args) + (i) * sizeof(__u64) + sizeof(__u32))
#endif

/* Builds and installs the filter denying lists[0..nlists-1]; who names the process in err. */
static int hd_install(const long *const *lists, const size_t *lens, size_t nlists, const char *who,
                      char *err, size_t errlen)
{
#ifndef HD_AUDIT_ARCH
    (void)lists;
    (void)lens;
    (void)nlists;
    cfg_errorf(err, errlen, "seccomp: no %s filter is defined for this architecture", who);
    return -1;
#else
    size_t ndenied = 0;
    for (size_t l = 0; l < nlists; l++)
        ndenied += lens[l];
    /* arch check (3), nr load (1), x32 check (1, x86_64), one jump per denied call, the
     * clone3 and clone checks (4), allow, deny, ENOSYS. */
    struct sock_filter f[3 + 1 + 1 + HD_N_MAX + 4 + 3];
    if (ndenied > HD_N_MAX)
        return cfg_errorf(err, errlen, "seccomp: the %s deny list is too long", who);
    size_t n = 0;
    f[n++] =
        (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HD_AUDIT_ARCH, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[n++] =
        (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    /* The indices of the three returns at the end. */
    size_t allow = n + ndenied + 4;
#if defined(__x86_64__)
    allow++;
#endif
    size_t deny = allow + 1, enosys = allow + 2;
#if defined(__x86_64__)
    f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* x32 */,
                                        (unsigned char)(deny - n - 1), 0);
    n++;
#endif
    for (size_t l = 0; l < nlists; l++)
        for (size_t i = 0; i < lens[l]; i++, n++)
            f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)lists[l][i],
                                                (unsigned char)(deny - n - 1), 0);
    f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)SYS_clone3,
                                        (unsigned char)(enosys - n - 1), 0);
    n++;
    /* Not clone: straight to allow; clone: its flags decide. */
    f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)SYS_clone, 0,
                                        (unsigned char)(allow - n - 1));
    n++;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, HD_ARG_LO(0));
    f[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, HD_CLONE_NS_FLAGS,
                                        (unsigned char)(deny - n - 1), 0);
    n++;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    /* Without NO_NEW_PRIVS an unprivileged process may not install a filter; set it here
     * too, so the order of the calls does not matter. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
        cfg_errorf(err, errlen, "seccomp: cannot install the %s filter: %s", who, strerror(errno));
        return -1;
    }
    return 0;
#endif
}

int hd_front_filter(char *err, size_t errlen)
{
    const long *const lists[] = {hd_denied_common, hd_denied_front_only};
    const size_t lens[] = {HD_N(hd_denied_common), HD_N(hd_denied_front_only)};
    return hd_install(lists, lens, 2, "front's", err, errlen);
}

int hd_keeper_filter(char *err, size_t errlen)
{
    const long *const lists[] = {hd_denied_common};
    const size_t lens[] = {HD_N(hd_denied_common)};
    return hd_install(lists, lens, 1, "keeper's", err, errlen);
}
