/*
 * test_harden: the front's and the keeper's seccomp filters (hd_front_filter,
 * hd_keeper_filter), and the switch to a role's account (hd_account_lookup, hd_become). Each test
 * runs in a forked child, because the filter cannot be removed once installed, and checks every
 * refused call twice: once before the filter, where it works or fails for another reason (so the
 * check can fail), and once after, where it gets EPERM. The child reports the first broken
 * expectation through a pipe.
 *
 * Not tested: that an i386 call (int 0x80) kills the process. Kernels built or booted
 * without IA32 emulation, this one among them, answer int 0x80 with SIGSEGV whether a
 * filter is there or not, so such a test could not tell the filter's work from the kernel's.
 */
#include "appliance/common/harden.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static int report_fd = -1;

/* In the child: writes the message to the parent and exits 1. */
static void child_fail(const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n > 0 && write(report_fd, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1) < 0)
        _exit(2);
    _exit(1);
}

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            child_fail(__VA_ARGS__);                                                               \
    } while (0)

static void install(void)
{
    char err[256];
    if (hd_front_filter(err, sizeof(err)) != 0)
        child_fail("hd_front_filter: %s", err);
}

static void install_keeper(void)
{
    char err[256];
    if (hd_keeper_filter(err, sizeof(err)) != 0)
        child_fail("hd_keeper_filter: %s", err);
}

/* Runs body in a forked child; returns its wait status, and fails the test with the
 * child's message when it reported one. */
static int run_child(void (*body)(void))
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        report_fd = p[1];
        body();
        _exit(0);
    }
    close(p[1]);
    char msg[256] = {0};
    ssize_t n = read(p[0], msg, sizeof(msg) - 1);
    close(p[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (n > 0)
        fail_msg("%s", msg);
    return status;
}

static void assert_child_ok(void (*body)(void))
{
    int status = run_child(body);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* errno of a call expected to fail, 0 when it succeeded. */
#define ERRNO_OF(call) ((call) < 0 ? errno : 0)

/* /bin/false: an exec that got through makes the child exit 1, which fails the test. */
static void exec_body(void)
{
    char *argv[] = {"false", NULL}, *envp[] = {NULL};
    install();
    errno = 0;
    EXPECT(ERRNO_OF(execve("/bin/false", argv, envp)) == EPERM, "execve: %s", strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_execveat, AT_FDCWD, "/bin/false", argv, envp, 0)) == EPERM,
           "execveat: %s", strerror(errno));
}

static void test_front_cannot_run_another_program(void **state)
{
    (void)state;
    assert_child_ok(exec_body);
}

static void *exec_from_thread(void *arg)
{
    char *argv[] = {"false", NULL}, *envp[] = {NULL};
    *(int *)arg = ERRNO_OF(execve("/bin/false", argv, envp));
    return NULL;
}

static void thread_body(void)
{
    install();
    pthread_t t;
    int e = -1;
    EXPECT(pthread_create(&t, NULL, exec_from_thread, &e) == 0, "pthread_create");
    pthread_join(t, NULL);
    EXPECT(e == EPERM, "execve from a thread started after the filter: %s", strerror(e));
}

static void test_threads_started_after_the_filter_inherit_it(void **state)
{
    (void)state;
    assert_child_ok(thread_body);
}

static int secret = 42;

static ssize_t read_own_memory(int *out)
{
    struct iovec local = {.iov_base = out, .iov_len = sizeof(*out)};
    struct iovec remote = {.iov_base = &secret, .iov_len = sizeof(secret)};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
}

/* A pid that names no process: a child already reaped. */
static pid_t gone_pid(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    waitpid(pid, NULL, 0);
    return pid;
}

static void memory_body(void)
{
    int v = 0;
    EXPECT(read_own_memory(&v) == (ssize_t)sizeof(v) && v == 42,
           "process_vm_readv before the filter: %s", strerror(errno));
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    EXPECT(pidfd >= 0, "pidfd_open: %s", strerror(errno));
    int dup = (int)syscall(SYS_pidfd_getfd, pidfd, report_fd, 0);
    EXPECT(dup >= 0, "pidfd_getfd before the filter: %s", strerror(errno));
    close(dup);
    pid_t gone = gone_pid();
    EXPECT(ERRNO_OF(ptrace(PTRACE_ATTACH, gone, NULL, NULL)) == ESRCH,
           "ptrace before the filter: %s", strerror(errno));

    install();
    v = 0;
    EXPECT(ERRNO_OF(read_own_memory(&v)) == EPERM && v == 0, "process_vm_readv: %s",
           strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_pidfd_getfd, pidfd, report_fd, 0)) == EPERM, "pidfd_getfd: %s",
           strerror(errno));
    int want = HD_FILTER_ALLOWS_PTRACE ? ESRCH : EPERM;
    EXPECT(ERRNO_OF(ptrace(PTRACE_ATTACH, gone, NULL, NULL)) == want, "ptrace: %s (want %s)",
           strerror(errno), strerror(want));
}

static void test_front_cannot_read_another_process_memory_or_descriptors(void **state)
{
    (void)state;
    assert_child_ok(memory_body);
}

static void kernel_body(void)
{
    install();
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    EXPECT(ERRNO_OF(syscall(SYS_io_uring_setup, 4, &params)) == EPERM, "io_uring_setup: %s",
           strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_bpf, 0, NULL, 0)) == EPERM, "bpf: %s", strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_unshare, 0)) == EPERM, "unshare: %s", strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_userfaultfd, 0)) == EPERM, "userfaultfd: %s", strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_personality, 0xffffffff)) == EPERM, "personality: %s",
           strerror(errno));
#if defined(__x86_64__)
    /* The same getpid through the x32 ABI: ENOSYS on a kernel without x32, EPERM here. */
    EXPECT(ERRNO_OF(syscall(0x40000000 | SYS_getpid)) == EPERM, "x32 getpid: %s", strerror(errno));
#endif
}

static void test_front_cannot_reach_kernel_interfaces_it_never_uses(void **state)
{
    (void)state;
    assert_child_ok(kernel_body);
}

static void *noop_thread(void *arg)
{
    return arg;
}

static void work_body(void)
{
    install();
    char path[] = "/tmp/signd-harden-XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0, "mkstemp: %s", strerror(errno));
    EXPECT(write(fd, "abc", 3) == 3, "write: %s", strerror(errno));
    char buf[4] = {0};
    EXPECT(pread(fd, buf, 3, 0) == 3 && strcmp(buf, "abc") == 0, "pread: %s", strerror(errno));
    EXPECT(fsync(fd) == 0, "fsync: %s", strerror(errno));
    close(fd);
    EXPECT(unlink(path) == 0, "unlink: %s", strerror(errno));
    int sv[2];
    EXPECT(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "socketpair: %s", strerror(errno));
    EXPECT(send(sv[0], "x", 1, 0) == 1 && recv(sv[1], buf, 1, 0) == 1, "send/recv: %s",
           strerror(errno));
    close(sv[0]);
    close(sv[1]);
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, noop_thread, NULL) == 0 && pthread_join(t, NULL) == 0,
           "a thread: %s", strerror(errno));
    EXPECT(getpid() > 0 && kill(getpid(), 0) == 0, "kill(self, 0): %s", strerror(errno));
    FILE *st = fopen("/proc/self/status", "r");
    EXPECT(st != NULL, "/proc/self/status: %s", strerror(errno));
    char line[256];
    int mode = -1;
    while (fgets(line, sizeof(line), st) != NULL)
        if (sscanf(line, "Seccomp: %d", &mode) == 1)
            break;
    fclose(st);
    EXPECT(mode == 2, "Seccomp mode %d in /proc/self/status, want 2 (filter)", mode);
}

static void test_front_still_reads_writes_files_sockets_and_threads(void **state)
{
    (void)state;
    assert_child_ok(work_body);
}

/* ---- namespaces through clone, and clone3 ------------------------------------------------ */

/* A fork-like raw clone with flags (no CLONE_VM: the child runs on a copy of the stack and
 * leaves at once). 0 when the child was created and reaped, else the errno. */
static int clone_errno(unsigned long flags)
{
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        return errno;
    waitpid((pid_t)pid, NULL, 0);
    return 0;
}

static const struct {
    unsigned long flag;
    const char *name;
} ns_flags[] = {
    {CLONE_NEWUSER, "CLONE_NEWUSER"},     {CLONE_NEWNS, "CLONE_NEWNS"},
    {CLONE_NEWNET, "CLONE_NEWNET"},       {CLONE_NEWPID, "CLONE_NEWPID"},
    {CLONE_NEWIPC, "CLONE_NEWIPC"},       {CLONE_NEWUTS, "CLONE_NEWUTS"},
    {CLONE_NEWCGROUP, "CLONE_NEWCGROUP"},
};

/* Each namespace flag works before the filter (the tests run as root; as another user
 * CLONE_NEWUSER alone does, the rest fail with EPERM for want of privilege, which cannot
 * tell the filter's refusal apart, so the before-check then only needs NEWUSER). */
static void ns_before(void)
{
    for (size_t i = 0; i < sizeof(ns_flags) / sizeof(ns_flags[0]); i++) {
        if (geteuid() != 0 && ns_flags[i].flag != CLONE_NEWUSER)
            continue;
        int e = clone_errno(ns_flags[i].flag);
        EXPECT(e == 0, "clone(%s) before the filter: %s", ns_flags[i].name, strerror(e));
    }
    /* clone3 exists on this kernel: a zero size is refused as malformed, not unknown. */
    EXPECT(ERRNO_OF(syscall(SYS_clone3, NULL, 0)) == EINVAL, "clone3 before the filter: %s",
           strerror(errno));
}

static void ns_after(void)
{
    for (size_t i = 0; i < sizeof(ns_flags) / sizeof(ns_flags[0]); i++) {
        int e = clone_errno(ns_flags[i].flag);
        EXPECT(e == EPERM, "clone(%s): %s, want EPERM", ns_flags[i].name, strerror(e));
    }
    int e = clone_errno(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS);
    EXPECT(e == EPERM, "clone(NEWUSER|NEWNET|NEWNS): %s", strerror(e));
    /* CLONE_NEWTIME exists for unshare and clone3 only; unshare is refused whatever its
     * flags. */
    EXPECT(ERRNO_OF(syscall(SYS_unshare, CLONE_NEWTIME)) == EPERM, "unshare(CLONE_NEWTIME): %s",
           strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_clone3, NULL, 0)) == ENOSYS, "clone3: %s, want ENOSYS",
           strerror(errno));
    /* A clone without a namespace flag (what fork is) still works. */
    e = clone_errno(0);
    EXPECT(e == 0, "clone without a namespace flag: %s", strerror(e));
}

static void front_ns_body(void)
{
    ns_before();
    install();
    ns_after();
}

static void test_front_cannot_clone_into_a_new_namespace_and_clone3_is_enosys(void **state)
{
    (void)state;
    assert_child_ok(front_ns_body);
}

static void *count_thread(void *arg)
{
    (*(int *)arg)++;
    return NULL;
}

/* glibc tries clone3 first for a thread and falls back to clone on ENOSYS. */
static void threads_body(void)
{
    install();
    int n = 0;
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        EXPECT(pthread_create(&t, NULL, count_thread, &n) == 0, "pthread_create %d", i);
        EXPECT(pthread_join(t, NULL) == 0, "pthread_join %d", i);
    }
    EXPECT(n == 4, "%d threads ran, want 4", n);
    pid_t pid = fork();
    if (pid == 0)
        _exit(7);
    int status = 0;
    EXPECT(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
               WEXITSTATUS(status) == 7,
           "fork after the filter: %s", strerror(errno));
}

static void test_threads_and_fork_still_work_with_clone3_enosys(void **state)
{
    (void)state;
    assert_child_ok(threads_body);
}

/* ---- the keeper's filter ----------------------------------------------------------------- */

static void keeper_body(void)
{
    ns_before();
    pid_t gone = gone_pid();
    EXPECT(ERRNO_OF(ptrace(PTRACE_ATTACH, gone, NULL, NULL)) == ESRCH,
           "ptrace before the filter: %s", strerror(errno));
    int v = 0;
    EXPECT(read_own_memory(&v) == (ssize_t)sizeof(v) && v == 42,
           "process_vm_readv before the filter: %s", strerror(errno));

    install_keeper();
    char *argv[] = {"false", NULL}, *envp[] = {NULL};
    EXPECT(ERRNO_OF(execve("/bin/false", argv, envp)) == EPERM, "execve: %s", strerror(errno));
    int want = HD_FILTER_ALLOWS_PTRACE ? ESRCH : EPERM;
    EXPECT(ERRNO_OF(ptrace(PTRACE_ATTACH, gone, NULL, NULL)) == want, "ptrace: %s",
           strerror(errno));
    v = 0;
    EXPECT(ERRNO_OF(read_own_memory(&v)) == EPERM && v == 0, "process_vm_readv: %s",
           strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_bpf, 0, NULL, 0)) == EPERM, "bpf: %s", strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_init_module, NULL, 0, "")) == EPERM, "init_module: %s",
           strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_kexec_load, 0, 0, NULL, 0)) == EPERM, "kexec_load: %s",
           strerror(errno));
    EXPECT(ERRNO_OF(syscall(SYS_mount, "none", "/mnt", "tmpfs", 0, NULL)) == EPERM, "mount: %s",
           strerror(errno));
    ns_after();
    /* What a vendor module may use stays allowed: the kernel keyring (KEYCTL_GET_KEYRING_ID
     * of the session keyring) and io_uring. */
    EXPECT(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0) >= 0 ||
               errno != EPERM,
           "keyctl: %s", strerror(errno));
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    long ring = syscall(SYS_io_uring_setup, 4, &params);
    EXPECT(ring >= 0 || errno != EPERM, "io_uring_setup: %s", strerror(errno));
    if (ring >= 0)
        close((int)ring);
    int n = 0;
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, count_thread, &n) == 0 && pthread_join(t, NULL) == 0 && n == 1,
           "a thread under the keeper's filter");
}

static void test_keeper_cannot_exec_trace_or_make_namespaces_but_keeps_module_calls(void **state)
{
    (void)state;
    assert_child_ok(keeper_body);
}

/* ---- one account per role ------------------------------------------------------------------ */

static void test_role_account_lookup_refuses_root_and_a_missing_account(void **state)
{
    (void)state;
    hd_account a;
    char err[256];
    assert_int_equal(hd_account_lookup("keeper_user", "root", &a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "keeper_user = root"));
    assert_non_null(strstr(err, "uid 0"));
    assert_int_equal(hd_account_lookup("front_user", "signd-no-such-account", &a, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "front_user = signd-no-such-account: no such account"));
    /* "" is no account: hd_become then leaves the ids alone. */
    assert_int_equal(hd_account_lookup("front_user", "", &a, err, sizeof(err)), 0);
    assert_string_equal(a.name, "");
    assert_int_equal(hd_become(&a, err, sizeof(err)), 0);
}

/* As root: nobody's ids and groups for good, not dumpable, no_new_privs. */
static void become_body(void)
{
    hd_account a;
    char err[256];
    EXPECT(hd_account_lookup("keeper_user", "nobody", &a, err, sizeof(err)) == 0, "lookup: %s",
           err);
    EXPECT(a.ngroups >= 1, "nobody has %d groups", a.ngroups);
    EXPECT(hd_become(&a, err, sizeof(err)) == 0, "hd_become: %s", err);
    EXPECT(getuid() == a.uid && geteuid() == a.uid && getgid() == a.gid, "ids after the switch");
    gid_t groups[HD_GROUPS_MAX];
    int n = getgroups(HD_GROUPS_MAX, groups);
    EXPECT(n == a.ngroups, "%d groups after the switch, want %d", n, a.ngroups);
    EXPECT(setuid(0) != 0 && setgid(0) != 0, "root regained");
    EXPECT(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0, "dumpable after the switch");
    EXPECT(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs not set");
    EXPECT(hd_become(&a, err, sizeof(err)) == -1 && strstr(err, "needs root") != NULL,
           "a second switch: %s", err);
}

static void test_become_takes_the_account_for_good_with_its_groups(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    assert_child_ok(become_body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_front_cannot_run_another_program),
        cmocka_unit_test(test_threads_started_after_the_filter_inherit_it),
        cmocka_unit_test(test_front_cannot_read_another_process_memory_or_descriptors),
        cmocka_unit_test(test_front_cannot_reach_kernel_interfaces_it_never_uses),
        cmocka_unit_test(test_front_still_reads_writes_files_sockets_and_threads),
        cmocka_unit_test(test_front_cannot_clone_into_a_new_namespace_and_clone3_is_enosys),
        cmocka_unit_test(test_threads_and_fork_still_work_with_clone3_enosys),
        cmocka_unit_test(test_keeper_cannot_exec_trace_or_make_namespaces_but_keeps_module_calls),
        cmocka_unit_test(test_role_account_lookup_refuses_root_and_a_missing_account),
        cmocka_unit_test(test_become_takes_the_account_for_good_with_its_groups),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
