/*
 * signd: the signing appliance's supervisor, the one program an operator starts.
 *
 *   signd CONFIG_FILE
 *   signd --routes      prints the route table ("METHOD /template roles" lines) and exits
 *                       (signd-front prints it: the router is linked there)
 *
 * Everything else comes from the configuration file (see docs/configuration.md).
 *
 * One program per privilege, as OpenSSH's sshd-session: this one and the two it executes,
 * found next to its own executable (/proc/self/exe, never PATH) and opened once at start.
 *  - signd (this one): configuration, the data-directory lock, the switch to `user` when
 *    set; it then only starts, watches (a watchdog pings the keeper) and stops the other
 *    two. Started as root with `user` empty it stays root, and each child becomes its own
 *    account (keeper_user, front_user) after its fork and before its execve, so the front
 *    cannot open the keeper's token and PIN files nor its /proc files. It is linked with
 *    no hsm/ and no CivetWeb code and never loads the PKCS#11 module.
 *  - signd-keeper ("signd: keeper", appliance/keeper/main.c): loads the module, reads the
 *    PIN, logs in, and serves the keeper protocol on keeper_socket (keeperd.h). Nothing
 *    else touches the token.
 *  - signd-front ("signd: front", appliance/front/main.c): registry, credentials,
 *    reconcile (through the keeper), publication, the rotation scheduler and CivetWeb; no
 *    PKCS#11 code at all. It prints the "listening" line when it serves.
 *  Each child gets a fresh address space, an environment of the few variables it needs (no
 *  secret) and on its command line the configuration's path and the numbers of the
 *  descriptors it inherits (spawn.h): the configuration as this process read it, the ready
 *  pipe, the lock, and for the front the restart events. PR_SET_PDEATHSIG and
 *  PR_SET_NO_NEW_PRIVS are set before the execve and survive it; each program installs
 *  its own seccomp filter.
 *  A front that dies is started again (its state is all in SQLite); a keeper that dies is
 *  started again while the front answers 503 hsm_unavailable. SIGTERM or SIGINT: the front
 *  stops first (in-flight requests finish), then the keeper; exit 0 when both exited 0.
 */
#include "appliance/common/config.h"
#include "appliance/common/events.h"
#include "appliance/common/harden.h"
#include "appliance/common/spawn.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/registry.h"
#include "base/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long a starting keeper or front may take to say it is ready (a token with 1,000
 * keys opens in well under a second; reconcile lists them once). */
#define MAIN_READY_TIMEOUT_MS 120000
/* A child that dies sooner than this after it started is restarted only after this long:
 * a crash loop must not spin. */
#define MAIN_RESTART_BACKOFF_MS 1000

static int die(const char *what, const char *msg)
{
    fprintf(stderr, "signd: %s: %s\n", what, msg);
    return 1;
}

/* The supervisor's restart events for the front (probe.h): [0] the front reads, [1] the
 * supervisor writes, non-blocking both. Made once, before the first front, and held by the
 * supervisor for its life, so an event written while no front runs waits in the pipe for
 * the next one. */
static int main_events[2] = {-1, -1};

/* The configuration's path (absolute) and the sealed copy of its bytes that the children
 * parse (spawn.h); the data directory's lock, which they hold too. */
static char main_conf_path[PATH_MAX];
static int main_conf_fd = -1;
static int main_lock_fd = -1;
/* The two programs, opened next to this one's executable at start: a later change of the
 * installed files, or a directory above them the children's accounts cannot enter, does not
 * change what runs. */
static int main_prog_fd[2] = {-1, -1};
static char main_prog_path[2][PATH_MAX];
/* Started as root, user empty: the keeper's and the front's own accounts
 * (main_role_accounts); name "" for a role that keeps the supervisor's ids. */
static hd_account main_keeper_acct, main_front_acct;

/* ---- the supervisor ---------------------------------------------------------------------- */

typedef enum { MAIN_KEEPER, MAIN_FRONT } main_role;

typedef struct {
    pid_t pid;
    int64_t started; /* clk_now_ms */
} main_child;

/* In a child just forked: becomes the role's account (nothing when it has none). 0, or -1
 * after saying why on stderr. */
static int main_become(main_role role)
{
    char err[512];
    if (hd_become(role == MAIN_KEEPER ? &main_keeper_acct : &main_front_acct, err, sizeof(err)) !=
        0) {
        die("privileges", err);
        return -1;
    }
    return 0;
}

/* Started as root with `user` empty (split): looks up keeper_user and front_user and checks
 * that the data directory is theirs. The supervisor itself stays root, to start each child
 * again under its account. 0, or -1 with one line in err. With `user` set, or not root,
 * there is nothing to do: every process keeps the supervisor's ids (hd_drop_user). */
static int main_role_accounts(const cfg *c, char *err, size_t errlen)
{
    if (c->user[0] != '\0' || geteuid() != 0)
        return 0;
    if (hd_account_lookup("keeper_user", c->keeper_user, &main_keeper_acct, err, errlen) != 0 ||
        hd_account_lookup("front_user", c->front_user, &main_front_acct, err, errlen) != 0)
        return -1;
    if (main_keeper_acct.name[0] != '\0' && main_front_acct.name[0] != '\0' &&
        main_keeper_acct.uid == main_front_acct.uid)
        return cfg_errorf(err, errlen,
                          "keeper_user = %s and front_user = %s are the same account: the "
                          "front could then open the token and PIN files; name two accounts "
                          "(or set user for one account on purpose)",
                          c->keeper_user, c->front_user);
    return hd_check_role_owners(c, &main_keeper_acct, &main_front_acct, err, errlen);
}

/* Finds the two programs next to this one's executable and opens them (O_PATH). 0, or
 * -1 after saying which is missing. */
static int main_find_programs(void)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return die("/proc/self/exe", strerror(errno)), -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL)
        return die("/proc/self/exe", "not an absolute path"), -1;
    *slash = '\0';
    const char *names[2] = {[MAIN_KEEPER] = SPN_KEEPER_PROGRAM, [MAIN_FRONT] = SPN_FRONT_PROGRAM};
    for (int r = 0; r < 2; r++) {
        if ((size_t)snprintf(main_prog_path[r], sizeof(main_prog_path[r]), "%s/%s", self,
                             names[r]) >= sizeof(main_prog_path[r]))
            return die(names[r], "path too long"), -1;
        main_prog_fd[r] = open(main_prog_path[r], O_PATH | O_CLOEXEC);
        if (main_prog_fd[r] < 0) {
            char msg[PATH_MAX + 128];
            snprintf(msg, sizeof(msg), "%s: %s (it is installed next to signd)", main_prog_path[r],
                     strerror(errno));
            return die(names[r], msg), -1;
        }
    }
    return 0;
}

/* Runs the program of role with argv and envp: by its descriptor (execveat), so that no
 * directory above it need be open to the child's account, or by its path where the kernel
 * or a tool in between (valgrind) has no execveat. Returns only on failure. */
static void main_exec(main_role role, char *const argv[], char *const envp[])
{
    syscall(SYS_execveat, main_prog_fd[role], "", argv, envp, AT_EMPTY_PATH);
    if (errno == ENOSYS)
        execve(main_prog_path[role], argv, envp);
}

/* Keeps fd open across the execve (every descriptor of this process is close-on-exec). */
static int main_inherit(int fd)
{
    return fd < 0 ? 0 : fcntl(fd, F_SETFD, 0);
}

/* Forks role, makes the child its account and executes the role's program, then waits
 * until it says it is ready. The child's pid, or -1 when it failed (it has been reaped
 * then, and its own message is on stderr). */
static pid_t main_spawn(main_role role, const cfg *c, int announce, main_child *out)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        /* Its own account before anything is opened (the keeper's token and PIN are the
         * keeper account's alone). First, because a change of ids clears the death signal
         * set below. */
        if (main_become(role) != 0)
            _exit(1);
        /* The supervisor gone (even by SIGKILL), its children follow: nothing may keep
         * the port or the token without it. Kept across the execve (not set-user-ID). */
        prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
        if (getppid() != parent)
            _exit(1);
        /* Neither may ever gain privileges again (no setuid binary, no file capability). */
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        spn_args a = {.config_path = main_conf_path,
                      .config_fd = main_conf_fd,
                      .ready_fd = p[1],
                      .lock_fd = main_lock_fd,
                      .events_fd = role == MAIN_FRONT ? main_events[0] : -1,
                      .announce = role == MAIN_FRONT && announce,
                      .peer_uid = -1};
        if (role == MAIN_KEEPER) {
            /* One account per role: the front runs as its account, or stays root (the
             * roles have accounts only when the supervisor is root) when front_user is
             * empty. */
            uid_t front_uid = main_front_acct.name[0] != '\0' ? main_front_acct.uid : 0;
            if ((main_keeper_acct.name[0] != '\0' || main_front_acct.name[0] != '\0') &&
                front_uid != geteuid())
                a.peer_uid = (long)front_uid;
        }
        if (main_inherit(a.config_fd) != 0 || main_inherit(a.ready_fd) != 0 ||
            main_inherit(a.lock_fd) != 0 || main_inherit(a.events_fd) != 0)
            _exit(1);
        /* A fixed environment: nothing of the supervisor's own but what the program needs
         * (paths, never a secret). */
        static char env_store[4][CFG_PATH_MAX + 32];
        static char env_module[CFG_ENV_VARS][CFG_ENV_MAX];
        char *envp[8 + CFG_ENV_VARS];
        size_t ne = 0;
        const char *creds = getenv("CREDENTIALS_DIRECTORY");
        if (role == MAIN_KEEPER && c->softhsm2_conf[0] != '\0') {
            snprintf(env_store[ne], sizeof(env_store[ne]), "SOFTHSM2_CONF=%s", c->softhsm2_conf);
            envp[ne] = env_store[ne], ne++;
        }
        /* The module's own variables (pkcs11_env: where its store and daemons are), the
         * keeper's alone: the front has no module. cfg_load checked the list. */
        int nmod = role == MAIN_KEEPER ? cfg_env_entries(c->pkcs11_env, env_module) : 0;
        for (int i = 0; i < nmod; i++)
            envp[ne++] = env_module[i];
        if (role == MAIN_KEEPER && creds != NULL && strlen(creds) < sizeof(env_store[0]) - 32) {
            snprintf(env_store[ne], sizeof(env_store[ne]), "CREDENTIALS_DIRECTORY=%s", creds);
            envp[ne] = env_store[ne], ne++;
        }
#ifdef SIGND_TEST_HOOKS
        /* Test builds only: the front's crash points (core/keys.c). */
        const char *fault = getenv("SIGND_FAULT");
        if (role == MAIN_FRONT && fault != NULL && strlen(fault) < 64) {
            snprintf(env_store[ne], sizeof(env_store[ne]), "SIGND_FAULT=%s", fault);
            envp[ne] = env_store[ne], ne++;
        }
#endif
#if HD_FILTER_ALLOWS_PTRACE
        /* Sanitizer builds (make test-asan): their options reach every process. */
        static const char *const san[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
        for (size_t i = 0;
             i < sizeof(san) / sizeof(san[0]) && ne < sizeof(envp) / sizeof(envp[0]) - 1; i++) {
            const char *v = getenv(san[i]);
            if (v != NULL && strlen(v) < CFG_PATH_MAX) {
                static char san_store[3][CFG_PATH_MAX + 32];
                snprintf(san_store[i], sizeof(san_store[i]), "%s=%s", san[i], v);
                envp[ne++] = san_store[i];
            }
        }
#endif
        envp[ne] = NULL;
        spn_argv_store store;
        char *argv[SPN_ARGV_MAX];
        if (spn_argv(role == MAIN_KEEPER ? "signd: keeper" : "signd: front", &a, &store, argv,
                     SPN_ARGV_MAX) == 0)
            _exit(1);
        main_exec(role, argv, envp);
        die(main_prog_path[role], strerror(errno));
        _exit(1);
    }
    close(p[1]);
    out->started = clk_now_ms();
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    char byte = 0;
    int ready = 0;
    if (poll(&pfd, 1, MAIN_READY_TIMEOUT_MS) == 1 && read(p[0], &byte, 1) == 1 && byte == 'R')
        ready = 1;
    close(p[0]);
    if (!ready) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    out->pid = pid;
    fprintf(stderr, "signd: %s started (pid %d)\n", role == MAIN_KEEPER ? "keeper" : "front",
            (int)pid);
    return pid;
}

static void main_describe(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "exited %d", WEXITSTATUS(status));
}

/* Starts role again until it is ready, pausing after a quick death. Gives up only on
 * SIGTERM/SIGINT (returns 0 with *stop set). */
static void main_restart(main_role role, const cfg *c, main_child *child, int *stop)
{
    for (;;) {
        if (clk_ms_since(child->started) < MAIN_RESTART_BACKOFF_MS) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 1000L * 1000 * MAIN_RESTART_BACKOFF_MS};
            nanosleep(&ts, NULL);
        }
        sigset_t pending;
        if (sigpending(&pending) == 0 &&
            (sigismember(&pending, SIGTERM) || sigismember(&pending, SIGINT))) {
            *stop = 1;
            return;
        }
        if (main_spawn(role, c, 0, child) > 0)
            return;
        child->started = clk_now_ms();
    }
}

/* Tells the front (the running one, or the next) that role was replaced, and why. Never
 * blocks: with the pipe full (64 KiB of events no front read) the event is dropped, and
 * the log line below still says it. */
static void main_tell(evt_role role, evt_cause cause, pid_t pid, int64_t detail)
{
    evt_send(main_events[1], role, cause, pid, detail);
}

/* The cause of a child's end, as the front records it. */
static void main_tell_status(evt_role role, pid_t pid, int status, int watchdog_killed,
                             long silent_ms)
{
    if (watchdog_killed)
        main_tell(role, EVT_CAUSE_WATCHDOG, pid, silent_ms);
    else if (WIFSIGNALED(status))
        main_tell(role, EVT_CAUSE_SIGNAL, pid, WTERMSIG(status));
    else
        main_tell(role, EVT_CAUSE_EXITED, pid, WEXITSTATUS(status));
}

/* ---- the watchdog ------------------------------------------------------------------------ */

/* How often the supervisor pings the keeper, and how long one ping may take: the
 * supervisor's loop waits for signals between pings, so a ping holds it at most this long. */
#define MAIN_PING_MS 1000

typedef struct {
    kp *k;      /* the supervisor's own keeper connection */
    int64_t ok; /* clk_now_ms: the last sign of life: an answer, CPU used, or its start */
    unsigned long long cpu; /* the keeper's utime + stime at the last ping, in ticks */
    int64_t asked;          /* clk_now_ms: the last ping */
    pid_t killed;           /* the keeper pid the watchdog killed, until it is reaped */
    long silent_ms;         /* how long it had been silent then */
} main_dog;

/* The CPU time pid has used, all its threads (utime + stime of /proc/PID/stat, in clock
 * ticks), or 0 when it cannot be read. */
static unsigned long long main_cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* After the command's closing parenthesis (the name may hold spaces): state is field
     * 3, utime 14, stime 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0;
    if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                            &stime) != 2)
        return 0;
    return utime + stime;
}

/* Pings the keeper once a MAIN_PING_MS; kills it (SIGKILL: a module call that hangs cannot
 * be interrupted any other way) once it has shown no sign of life for keeper_watchdog_ms:
 * no ping answered and no CPU used. A keeper whose every thread is busy (a burst of key
 * generations on a token of 1,000 keys kept pings waiting for over 10 s here) uses CPU
 * and is left alone; one that is stopped, or waits on a module call that never returns,
 * uses none. Its SIGCHLD then restarts it as for a crash. */
static void main_watch(main_dog *dog, const cfg *c, const main_child *keeper)
{
    if (c->keeper_watchdog_ms == 0 || dog->k == NULL || keeper->pid <= 0 ||
        dog->killed == keeper->pid || clk_ms_since(dog->asked) < MAIN_PING_MS)
        return;
    dog->asked = clk_now_ms();
    unsigned long long cpu = main_cpu_ticks(keeper->pid);
    int worked = cpu != dog->cpu;
    dog->cpu = cpu;
    if (worked || kp_ping(dog->k, NULL) == SK_OK) {
        dog->ok = dog->asked;
        return;
    }
    long silent = (long)clk_ms_since(dog->ok);
    if (silent < (long)c->keeper_watchdog_ms)
        return;
    fprintf(stderr,
            "signd: watchdog: keeper (pid %d) has not answered or used CPU for %ld ms: "
            "killing it\n",
            (int)keeper->pid, silent);
    kill(keeper->pid, SIGKILL);
    dog->killed = keeper->pid;
    dog->silent_ms = silent;
}

/* Closes the watchdog's connection before a fork: it is opened again by the next ping. */
static void main_dog_hang_up(main_dog *dog)
{
    if (dog->k != NULL)
        kp_thread_done(dog->k);
}

/* Stops a child with SIGTERM and waits for it: its exit status, -1 if it was gone. */
static int main_stop_child(main_child *child)
{
    if (child->pid <= 0)
        return 0;
    kill(child->pid, SIGTERM);
    int status = 0;
    while (waitpid(child->pid, &status, 0) < 0 && errno == EINTR)
        ;
    child->pid = 0;
    return status;
}

static int main_supervise(const cfg *c, const sigset_t *stop_sigs)
{
    char err[512];
    /* Everything the processes open they open as `user`: switch before starting them. Or,
     * with user empty and started as root, each child becomes its own account. */
    if (hd_check_data_owner(c, err, sizeof(err)) != 0 ||
        hd_drop_user(c->user, err, sizeof(err)) != 0 ||
        main_role_accounts(c, err, sizeof(err)) != 0)
        return die("privileges", err);

    /* The registry's schema exists (created or checked) before the keeper reads it. */
    reg *rg = NULL;
    if (reg_open(c->database, c->max_active_keys, &rg) != REG_OK)
        return die(c->database, reg_last_error());
    reg_close(rg);

    /* The supervisor also waits for SIGCHLD; the children only for SIGTERM and SIGINT. */
    sigset_t sigs = *stop_sigs;
    sigaddset(&sigs, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    if (pipe2(main_events, O_CLOEXEC | O_NONBLOCK) != 0)
        return die("supervisor", "cannot make the event pipe");
    main_dog dog = {0};
    if (c->keeper_watchdog_ms > 0 &&
        kp_connect(c->keeper_socket, &(kp_deadlines){.timeout_ms = MAIN_PING_MS}, &dog.k, err,
                   sizeof(err)) != SK_OK)
        return die("watchdog", err);

    main_child keeper = {0}, front = {0};
    if (main_spawn(MAIN_KEEPER, c, 0, &keeper) < 0) {
        kp_close(dog.k);
        return die("keeper", "did not start (see above)");
    }
    if (main_spawn(MAIN_FRONT, c, 1, &front) < 0) {
        main_stop_child(&keeper);
        kp_close(dog.k);
        return die("front", "did not start (see above)");
    }
    dog.ok = keeper.started;

    int stop = 0;
    while (!stop) {
        /* Woken by a signal, or each MAIN_PING_MS for the watchdog. */
        struct timespec tick = {.tv_sec = MAIN_PING_MS / 1000,
                                .tv_nsec = (MAIN_PING_MS % 1000) * 1000000L};
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig < 0) {
            main_watch(&dog, c, &keeper);
            continue;
        }
        if (sig != SIGCHLD) {
            fprintf(stderr, "signd: signal %d: stopping\n", sig);
            break;
        }
        int status;
        pid_t pid;
        while (!stop && (pid = waitpid(-1, &status, WNOHANG)) > 0) {
            char how[64];
            main_describe(status, how, sizeof(how));
            if (pid == front.pid) {
                fprintf(stderr, "signd: front (pid %d) %s: restarting it\n", (int)pid, how);
                front.pid = 0;
                main_tell_status(EVT_ROLE_FRONT, pid, status, 0, 0);
                main_dog_hang_up(&dog); /* no child inherits the watchdog's connection */
                main_restart(MAIN_FRONT, c, &front, &stop);
            } else if (pid == keeper.pid) {
                int by_dog = dog.killed == pid;
                fprintf(stderr, "signd: keeper (pid %d) %s%s: restarting it\n", (int)pid, how,
                        by_dog ? " by the watchdog" : "");
                keeper.pid = 0;
                main_tell_status(EVT_ROLE_KEEPER, pid, status, by_dog, dog.silent_ms);
                dog.killed = 0;
                main_dog_hang_up(&dog);
                main_restart(MAIN_KEEPER, c, &keeper, &stop);
                dog.ok = keeper.started; /* a new keeper gets the whole bound again */
                dog.cpu = 0;
            }
        }
        main_watch(&dog, c, &keeper);
    }
    kp_close(dog.k); /* with this (the only) thread's connection */
    /* Front first, so that in-flight requests finish while the keeper still answers. */
    int fs = main_stop_child(&front);
    int ks = main_stop_child(&keeper);
    int clean = WIFEXITED(fs) && WEXITSTATUS(fs) == 0 && WIFEXITED(ks) && WEXITSTATUS(ks) == 0;
    if (!clean) {
        char a[64], b[64];
        main_describe(fs, a, sizeof(a));
        main_describe(ks, b, sizeof(b));
        fprintf(stderr, "signd: front %s, keeper %s\n", a, b);
    }
    return clean ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--routes") == 0) {
        /* The router is the front's: it prints the table. */
        if (main_find_programs() != 0)
            return 1;
        char *const av[] = {SPN_FRONT_PROGRAM, "--routes", NULL};
        extern char **environ;
        main_exec(MAIN_FRONT, av, environ);
        return die(main_prog_path[MAIN_FRONT], strerror(errno));
    }
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: signd CONFIG_FILE | signd --routes\n");
        return 2;
    }
    /* Keys live in the keeper's memory with SoftHSM2, and the PIN passes through it: no
     * core dumps, no ptrace by other processes of the same user, private files. Each
     * program calls it again after its execve (spawn.h). */
    hd_early();
    if (main_find_programs() != 0)
        return 1;
    if (realpath(argv[1], main_conf_path) == NULL)
        return die(argv[1], strerror(errno));

    static cfg c;
    char err[CFG_ERR_MAX];
    /* Read once: the children parse these bytes (spawn.h). */
    if (spn_config_snapshot(main_conf_path, &main_conf_fd, &c, NULL, err, sizeof(err)) != 0)
        return die("configuration", err);
    /* pin_credential: checked here, before anything starts (the keeper resolves it too). */
    if (cfg_pin_path(&c, c.pin_file, sizeof(c.pin_file), err, sizeof(err)) != 0)
        return die("configuration", err);

    /* Signals go to sigwait, never to a worker thread: blocked before any thread exists. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* One appliance per data directory: a second one would run reconcile against the
     * first one's keys in flight (destroying what it has generated but not yet recorded)
     * and replace its keeper socket. Held for the process's life, and by the keeper and
     * front too (passed to them, spawn.h), so a new start waits for all three. */
    char lock_path[CFG_PATH_MAX + 16];
    if (cfg_database_is_uri(c.database)) {
        /* A shared database: the lock is this node's, in its own state directory. */
        char dir[CFG_PATH_MAX];
        if (cfg_state_dir(&c, dir, sizeof(dir)) != 0)
            return die("state_directory", "not set or too long");
        snprintf(lock_path, sizeof(lock_path), "%s/signd.lock", dir);
    } else {
        snprintf(lock_path, sizeof(lock_path), "%s.lock", c.database);
    }
    main_lock_fd = open(lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (main_lock_fd < 0 || flock(main_lock_fd, LOCK_EX | LOCK_NB) != 0)
        return die(lock_path, main_lock_fd < 0 ? strerror(errno)
                                               : "another signd is running on this data directory");
    return main_supervise(&c, &sigs);
}
