/*
 * hd: process hardening of the appliance daemon.
 *
 * Keys live in the process's memory with SoftHSM2, and the PIN and the bearer secrets pass
 * through it. So: no core dumps, no ptrace or /proc/PID/mem by other processes of the same
 * user, files created private to the process's user, and, when started as root, the rest of
 * the run as unprivileged accounts that cannot regain privileges: one per process by
 * default (keeper_user, front_user: hd_account_lookup, hd_check_role_owners, hd_become in
 * each child right after its fork, before it executes its program; the supervisor stays
 * root to start them again), or the
 * one `user` for every process (hd_check_data_owner, hd_drop_user, below).
 *
 * Order in main:
 *   hd_early();                                  first thing, before any secret is read
 *   ... configuration, registry, token, credential, HTTPS (the port is bound) ...
 *   hd_check_data_owner(&c, err, sizeof(err));   still root: will the user manage?
 *   hd_drop_user(c.user, err, sizeof(err));      then print "listening"
 * and first thing in signd-front and signd-keeper (after spn_begin, which calls hd_early
 * again: an execve makes a process dumpable again):
 *   hd_front_filter(err, sizeof(err));           before any thread is started
 *   hd_keeper_filter(err, sizeof(err));          before the module is loaded
 *
 * The data directory must belong to `user` (chown -R USER DIR) before signd starts: after
 * the drop, SoftHSM2 opens, creates and deletes object files in the token directory on
 * every key operation, and SQLite creates and deletes the database's -wal and -journal
 * files next to the database. What is opened before the drop stays open: the database
 * connections (registry and credentials; the database file itself may stay root's when
 * signd created it), the TLS key and CA (loaded by srv_start), the PIN file (read and wiped
 * by kp_open), the log on stderr. Secret files need not be readable by the user.
 *
 * No state: every function may be called from any thread, but hd_drop_user changes the
 * credentials of every thread of the process (glibc broadcasts set*id to all of them).
 */
#ifndef APPLIANCE_HARDEN_H
#define APPLIANCE_HARDEN_H

#include "appliance/common/config.h"

#include <stddef.h>
#include <sys/types.h>

/* RLIMIT_CORE 0 (soft and hard: no core file, not even after a later setrlimit),
 * PR_SET_DUMPABLE 0 (no core, no ptrace by the same uid, /proc/PID files owned by root),
 * umask 077 (every file and directory the process creates is private to its owner).
 * Cannot fail in a way worth stopping for; call it before anything else. */
void hd_early(void);

/* Refuses, while still root, a data directory the unprivileged user could not manage after
 * hd_drop_user: every entry under SoftHSM2's directories.tokendir (read from the
 * softhsm2_conf file; skipped when that setting or the file's line is absent) and the
 * directory holding the database must belong to c->user. Nothing to check (returns 0) when
 * c->user is "" or the process is not root. Returns 0, or -1 with one line in err naming
 * the path, its owner and the fix ("run chown -R signd /var/lib/signd").
 *
 *   if (hd_check_data_owner(&c, err, sizeof(err)) != 0) ... */
int hd_check_data_owner(const cfg *c, char *err, size_t errlen);

/* Becomes `user` for good: user "" does nothing. Not root: when the real and effective
 * uid are already user's, only the two prctl below and 0; else -1 ("user = X is set but
 * signd was not started as root").
 * Root: getpwnam_r (refusing a missing account and uid 0), setgroups to the account's
 * primary group only, setgid, setuid, then checks that setuid(0) and setgid(0) fail and
 * that the real and effective ids are the account's; then PR_SET_DUMPABLE 0 again (a
 * credential change resets it) and PR_SET_NO_NEW_PRIVS 1. Returns 0, or -1 with one line
 * in err naming the setting and the problem; after -1 the process must exit, its
 * credentials may be half changed.
 *
 *   if (hd_drop_user(c.user, err, sizeof(err)) != 0) ... stop and exit 1 */
int hd_drop_user(const char *user, char *err, size_t errlen);

/* One account per role: started as root with `user` empty, the
 * keeper runs as keeper_user and the front as front_user (each "" stays root). */
#define HD_GROUPS_MAX 64
typedef struct {
    char setting[16];        /* "keeper_user" or "front_user", for messages */
    char name[CFG_USER_MAX]; /* "": no switch */
    uid_t uid;
    gid_t gid;                   /* primary group */
    gid_t groups[HD_GROUPS_MAX]; /* every group of the account, the primary one included */
    int ngroups;
} hd_account;

/* Looks name up for setting (in the supervisor, while root: the children then need no
 * /etc/passwd). name "" fills an account that hd_become ignores. A missing account and uid
 * 0 are refused as for `user`. Returns 0, or -1 with one line in err. */
int hd_account_lookup(const char *setting, const char *name, hd_account *out, char *err,
                      size_t errlen);

/* Becomes a for good, with the account's supplementary groups (those /etc/group gives it;
 * the data group is how keeper and front share the registry and the keeper's socket), then
 * PR_SET_DUMPABLE 0 and PR_SET_NO_NEW_PRIVS 1 as hd_drop_user. a->name "" does nothing.
 * Needs root. Call it first thing in a forked child, while it has one thread. */
int hd_become(const hd_account *a, char *err, size_t errlen);

/* While root, refuses a data directory the role accounts could not use: pin_file,
 * softhsm2_conf and every entry of the token directory must belong to the keeper account,
 * the database and tls_private_key to the front account (a missing file is left for the
 * process that opens it). Returns 0 (also when not root), or -1 with one line in err naming
 * the path and the fix. */
int hd_check_role_owners(const cfg *c, const hd_account *keeper, const hd_account *front, char *err,
                         size_t errlen);

/* Installs the front's seccomp filter in the calling process: every thread it starts
 * afterwards inherits it, and nothing removes it. Call it while the process has one
 * thread (first thing in signd-front). The filter refuses with EPERM what the front never does:
 * execve and execveat, ptrace, process_vm_readv/writev, pidfd_getfd and kcmp (another
 * process's memory and descriptors: the keeper's), open_by_handle_at, mounts, namespaces
 * (unshare, setns, and clone with any CLONE_NEW* flag), chroot, kernel modules, kexec,
 * BPF, perf events, userfaultfd, keyrings, io_uring (which would bypass the filter), clock
 * and swap changes, reboot, personality; clone3 gets ENOSYS (its flags cannot be
 * inspected; glibc then creates threads with clone); a call through another ABI kills the
 * process (i386) or gets EPERM (x32). Sets PR_SET_NO_NEW_PRIVS. Returns 0, or -1 with one
 * line in err (no filter for this architecture, or the kernel refused it); the caller must
 * not serve without it.
 *
 * LeakSanitizer stops the world with ptrace: in an AddressSanitizer or LeakSanitizer build
 * (make test-asan) ptrace stays allowed, and HD_FILTER_ALLOWS_PTRACE says so. */
#if defined(__SANITIZE_ADDRESS__)
#define HD_FILTER_ALLOWS_PTRACE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define HD_FILTER_ALLOWS_PTRACE 1
#endif
#endif
#ifndef HD_FILTER_ALLOWS_PTRACE
#define HD_FILTER_ALLOWS_PTRACE 0
#endif
int hd_front_filter(char *err, size_t errlen);

/* The keeper's filter, installed like the front's (one thread, before kpd_open loads the
 * module). The same list but what a vendor PKCS#11 module may need: keyrings, io_uring
 * (a network HSM's client), personality and name_to_handle_at stay allowed. Everything
 * else the front's filter refuses, the keeper's refuses too: no exec, ptrace or other
 * process's memory, no mount or namespace (clone with CLONE_NEW*, unshare, setns; clone3
 * ENOSYS), no module, kexec, BPF, perf events, userfaultfd, clock or swap change. A module
 * that needs one of those cannot work under it: the keeper then fails at kpd_open with the
 * module's own error. Returns as hd_front_filter. */
int hd_keeper_filter(char *err, size_t errlen);

#endif
