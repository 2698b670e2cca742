/*
 * signd: the signing appliance daemon.
 *
 *   signd CONFIG_FILE
 *   signd --routes      prints the route table ("METHOD /template roles" lines) and exits
 *
 * Everything else comes from the configuration file (see docs/configuration.md).
 *
 * process_model = split (the default): three processes.
 *  - the supervisor (this one): configuration, the data-directory lock, the switch to
 *    `user` when set; it then only starts, watches and stops the other two. Started as
 *    root with `user` empty it stays root, and each child becomes its own account right
 *    after its fork (keeper_user, front_user), so the front cannot open the keeper's token
 *    and PIN files nor its /proc files. It never loads the
 *    PKCS#11 module, so neither does anything forked from it unless it loads it itself.
 *  - the keeper ("signd: keeper"): loads the module, reads the PIN, logs in, and serves the
 *    keeper protocol on keeper_socket (keeperd.h). Nothing else touches the token.
 *  - the front ("signd: front"): registry, credentials, reconcile (through the keeper),
 *    publication, the rotation scheduler (rotation.h) and CivetWeb. No module, no PIN, no
 *    descriptor to the token directory; PR_SET_NO_NEW_PRIVS and a seccomp filter
 *    (hd_front_filter: no exec, no ptrace or other process's memory, no namespace). The
 *    keeper has a filter of its own (hd_keeper_filter), looser only where a vendor
 *    module may need it. The front prints the
 *    "listening" line when it serves.
 *  A front that dies is started again (its state is all in SQLite); a keeper that dies is
 *  started again while the front answers 503 hsm_unavailable. SIGTERM or SIGINT: the front
 *  stops first (in-flight requests finish), then the keeper; exit 0 when both exited 0.
 *
 * process_model = single: one process does all of it, in the order configuration ->
 * registry -> token -> reconcile -> credentials -> publication -> rotation scheduler ->
 * HTTPS (kept to measure what the split costs).
 */
#include "api/api.h"
#include "appliance/core/audit.h"
#include "appliance/common/config.h"
#include "appliance/store/credentials.h"
#include "appliance/common/harden.h"
#include "appliance/common/jlog.h"
#include "appliance/kproto/keeper.h"
#include "appliance/keeper/keeperd.h"
#include "appliance/core/probe.h"
#include "appliance/core/reconcile.h"
#include "appliance/store/registry.h"
#include "appliance/core/rotation.h"
#include "appliance/front/server.h"
#include "appliance/store/tokstate.h"
#include "base/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
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
 * the next one. -1 in process_model = single. */
static int main_events[2] = {-1, -1};

static const char *main_conf_path;
/* The configuration's SHA-256, read while the supervisor can (the front, under its own
 * account, cannot read appliance.conf). */
static char main_conf_hash[65];
/* process_model = split, started as root, user empty: the keeper's and the front's own
 * accounts (main_role_accounts); name "" for a role that keeps the supervisor's ids. */
static hd_account main_keeper_acct, main_front_acct;
static char *main_argv0;
static size_t main_argv0_len;

/* What `ps` shows: the process's name and argv[0], rewritten in place. */
static void main_set_title(const char *title)
{
    prctl(PR_SET_NAME, title[0] == 's' && strncmp(title, "signd: ", 7) == 0 ? title + 7 : title, 0,
          0, 0);
    if (main_argv0 != NULL && main_argv0_len > 0) {
        size_t n = strlen(title) < main_argv0_len ? strlen(title) : main_argv0_len;
        memset(main_argv0, 0, main_argv0_len);
        memcpy(main_argv0, title, n);
    }
}

/* ---- the front --------------------------------------------------------------------------- */

/* Serves HTTPS with the token reached through k. announce: print the "listening" line on
 * stdout (the first start only: nobody reads stdout after that). ready_fd: -1, or where
 * to write one byte once serving. Returns the exit status. */
static int run_front(const cfg *c, kp *k, const sigset_t *sigs, int announce, int ready_fd)
{
    char err[512];
    /* First: the events reconcile records are logged too (log_events). */
    if (jlog_open(c->log_file, err, sizeof(err)) != 0)
        return die("log_file", err);
    reg *rg = NULL;
    if (reg_open(c->database, c->max_active_keys, &rg) != REG_OK)
        return die(c->database, reg_last_error());

    rec_report rep;
    if (rec_run(k, rg, stderr, &rep) != 0) {
        reg_close(rg);
        return die("reconcile", "token and registry could not be made to agree");
    }
    fprintf(stderr,
            "signd: reconcile: %u orphan objects destroyed, %u revoked objects destroyed, "
            "%u keys marked broken\n",
            rep.orphans_destroyed, rep.revoked_destroyed, rep.marked_broken);

    /* The service keys exist before anything is served (made now on a new token, under the
     * generation's deadline): a checkpoint or a feed then waits for a signature only, which
     * keeper_timeout_ms bounds. */
    for (kp_svc svc = 0; svc < KP_SVC_COUNT_; svc++) {
        sk_pubkey pub;
        sk_status st = kp_svc_public_key(k, svc, &pub);
        if (st != SK_OK)
            fprintf(stderr, "signd: warning: service key %d not ready: %s\n", (int)svc,
                    sk_strerror(st));
    }

    cred_store *cs = NULL;
    if (cred_open(c->database, &cs) != CRED_OK) {
        reg_close(rg);
        return die(c->database, cred_last_error());
    }
    if (cred_count_active(cs, CRED_ROLE_ADMIN) == 0)
        fprintf(stderr, "signd: warning: no active admin credential; create one offline with "
                        "`signd-provision admin-credential DATA_DIR`\n");

    audit_options ao = {.flush_seconds = c->audit_flush_seconds,
                        .checkpoint_events = c->audit_checkpoint_events,
                        .checkpoint_seconds = c->audit_checkpoint_seconds,
                        .every_signature = c->audit_every_signature,
                        .log_events = c->log_events};
    audit *au = NULL;
    if (audit_open(c->database, k, &ao, &au, err, sizeof(err)) != 0) {
        cred_close(cs);
        reg_close(rg);
        return die("audit", err);
    }
    tks *ts = NULL;
    if (tks_open(c->database, &ts) != TKS_OK) {
        audit_close(au);
        cred_close(cs);
        reg_close(rg);
        return die(c->database, tks_last_error());
    }
    /* Which configuration this run started with: its hash, for auditors to compare. */
    json_t *started =
        json_pack("{s:s, s:s, s:I}", "config_sha256", main_conf_hash, "process_model",
                  c->process_model, "active_keys", (json_int_t)reg_count(rg, REG_ACTIVE));
    audit_record(au, AUDIT_STARTED, NULL, started);
    json_decref(started);

    /* Destroys revoked keys' objects as the keeper allows, never holding a request. */
    rec_worker *destroyer = NULL;
    if (rec_worker_start(k, stderr, &destroyer) != 0) {
        tks_close(ts);
        audit_close(au);
        cred_close(cs);
        reg_close(rg);
        return die("reconcile", "cannot start the destroyer thread");
    }
    prb *probe = NULL;
    prb_options po = {.kp = k, .reg = rg, .audit = au, .events_fd = main_events[0]};
    if (prb_start(&po, &probe, err, sizeof(err)) != 0) {
        rec_worker_stop(destroyer);
        tks_close(ts);
        audit_close(au);
        cred_close(cs);
        reg_close(rg);
        return die("readiness", err);
    }
    api_env env = {
        .cfg = c, .reg = rg, .kp = k, .creds = cs, .audit = au, .tks = ts, .probe = probe};
    api_publish_refresh(&env);
    /* Before serving: a key whose grace ended while the appliance was down is revoked by
     * rot_start's first pass, so it is never served as retiring again. */
    rot *rt = NULL;
    if (rot_start(&env, &rt, err, sizeof(err)) != 0) {
        prb_stop(probe);
        rec_worker_stop(destroyer);
        tks_close(ts);
        audit_close(au);
        cred_close(cs);
        reg_close(rg);
        return die("rotation", err);
    }
    srv *s = srv_start(&env, err, sizeof(err));
    if (s == NULL) {
        rot_stop(rt);
        prb_stop(probe);
        rec_worker_stop(destroyer);
        tks_close(ts);
        audit_close(au);
        cred_close(cs);
        reg_close(rg);
        return die("https", err);
    }
    int rc = 0;
    /* single: the port is bound and every secret read, so from here on `user` if set. In
     * split the supervisor switched before starting anything. */
    if (ready_fd < 0 && (hd_check_data_owner(c, err, sizeof(err)) != 0 ||
                         hd_drop_user(c->user, err, sizeof(err)) != 0)) {
        rc = die("privileges", err);
    } else {
        if (announce) {
            printf("signd: listening on https://%s:%d (%zu active keys)\n", c->listen_address,
                   srv_port(s), reg_count(rg, REG_ACTIVE));
            fflush(stdout);
        }
        if (ready_fd >= 0) {
            (void)!write(ready_fd, "R", 1);
            close(ready_fd);
        }
        int sig = 0;
        sigwait(sigs, &sig);
        fprintf(stderr, "signd: signal %d: stopping\n", sig);
    }
    rot_stop(rt); /* no scheduled revocation starts once stopping has begun */
    srv_stop(s);
    prb_stop(probe);
    rec_worker_stop(destroyer); /* what it could not destroy yet is the next start's */
    audit_record(au, AUDIT_STOPPED, NULL, NULL);
    tks_close(ts);   /* after the server: no handler runs any more */
    audit_close(au); /* last flush and checkpoint, while the keeper still answers */
    cred_close(cs);
    api_publish_free();
    reg_close(rg);
    return rc;
}

static int run_single(const cfg *c, const sigset_t *sigs)
{
    char err[512];
    hsm_config hc = {
        .module_path = c->pkcs11_module,
        .token = c->token,
        .pin_file = c->pin_file,
        .max_sessions = cfg_pkcs11_sessions(c),
    };
    kp *k = NULL;
    if (kp_open(&hc, &k, err, sizeof(err)) != SK_OK)
        return die("token", err);
    int rc = run_front(c, k, sigs, 1, -1);
    kp_close(k); /* only after every worker is out of the PKCS#11 module */
    return rc;
}

/* ---- the keeper -------------------------------------------------------------------------- */

static void *main_keeper_serve(void *arg)
{
    kpd_serve(arg);
    return NULL;
}

static int run_keeper(const cfg *c, const sigset_t *sigs, int ready_fd)
{
    char err[512];
    kpd *d = NULL;
    if (kpd_open(c, &d, err, sizeof(err)) != 0)
        return die("keeper", err);
    /* One account per role: the front runs as its account, or stays root (the roles have
     * accounts only when the supervisor is root) when front_user is empty. */
    uid_t front_uid = main_front_acct.name[0] != '\0' ? main_front_acct.uid : 0;
    if ((main_keeper_acct.name[0] != '\0' || main_front_acct.name[0] != '\0') &&
        front_uid != geteuid() && kpd_allow_peer(d, front_uid, err, sizeof(err)) != 0) {
        kpd_close(d);
        return die("keeper", err);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, main_keeper_serve, d) != 0) {
        kpd_close(d);
        return die("keeper", "cannot start its thread");
    }
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
    int sig = 0;
    sigwait(sigs, &sig);
    kpd_stop(d);
    pthread_join(t, NULL);
    kpd_close(d);
    return 0;
}

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

/* Forks role and waits until it says it is ready. The child's pid, or -1 when it failed
 * (it has been reaped then, and its own message is on stderr). */
static pid_t main_spawn(main_role role, const cfg *c, const sigset_t *sigs, int announce,
                        main_child *out)
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
            exit(1);
        /* The supervisor gone (even by SIGKILL), its children follow: nothing may keep
         * the port or the token without it. */
        prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
        if (getppid() != parent)
            _exit(1);
        int rc;
        /* Neither may ever gain privileges again (no setuid binary, no file capability). */
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (role == MAIN_KEEPER) {
            /* The keeper has no business with the front's events. */
            if (main_events[0] >= 0)
                close(main_events[0]);
            if (main_events[1] >= 0)
                close(main_events[1]);
            main_set_title("signd: keeper");
            if (c->softhsm2_conf[0] != '\0')
                setenv("SOFTHSM2_CONF", c->softhsm2_conf, 1);
            char err[512];
            /* Before the module is loaded: nothing it or a bug in it runs escapes the
             * filter. */
            if (hd_keeper_filter(err, sizeof(err)) != 0)
                rc = die("seccomp", err);
            else
                rc = run_keeper(c, sigs, p[1]);
        } else {
            main_set_title("signd: front");
            if (main_events[1] >= 0)
                close(main_events[1]); /* it reads; only the supervisor writes */
            char err[512];
            kp *k = NULL;
            /* Still one thread: every thread CivetWeb and the front start inherits it. */
            if (hd_front_filter(err, sizeof(err)) != 0) {
                rc = die("seccomp", err);
            } else if (kp_connect(c->keeper_socket,
                                  &(kp_deadlines){.timeout_ms = c->keeper_timeout_ms,
                                                  .generate_ms = c->keeper_generate_timeout_ms},
                                  &k, err, sizeof(err)) != SK_OK) {
                rc = die("keeper", err);
            } else {
                rc = run_front(c, k, sigs, announce, p[1]);
                kp_close(k);
            }
        }
        /* exit, not _exit: stdio flushed, and the sanitizers' leak check runs (make
         * test-asan) in each child as in a single process. */
        exit(rc);
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
static void main_restart(main_role role, const cfg *c, const sigset_t *child_sigs,
                         main_child *child, int *stop)
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
        if (main_spawn(role, c, child_sigs, 0, child) > 0)
            return;
        child->started = clk_now_ms();
    }
}

/* Tells the front (the running one, or the next) that role was replaced, and why. Never
 * blocks: with the pipe full (64 KiB of events no front read) the event is dropped, and
 * the log line below still says it. */
static void main_tell(prb_role role, prb_cause cause, pid_t pid, int64_t detail)
{
    prb_event ev = {.magic = PRB_EVENT_MAGIC,
                    .role = role,
                    .cause = cause,
                    .pid = (int32_t)pid,
                    .detail = detail};
    if (main_events[1] >= 0)
        (void)!write(main_events[1], &ev, sizeof(ev));
}

/* The cause of a child's end, as the front records it. */
static void main_tell_status(prb_role role, pid_t pid, int status, int watchdog_killed,
                             long silent_ms)
{
    if (watchdog_killed)
        main_tell(role, PRB_CAUSE_WATCHDOG, pid, silent_ms);
    else if (WIFSIGNALED(status))
        main_tell(role, PRB_CAUSE_SIGNAL, pid, WTERMSIG(status));
    else
        main_tell(role, PRB_CAUSE_EXITED, pid, WEXITSTATUS(status));
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

static int run_split(const cfg *c, const sigset_t *child_sigs)
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
    sigset_t sigs = *child_sigs;
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
    if (main_spawn(MAIN_KEEPER, c, child_sigs, 0, &keeper) < 0) {
        kp_close(dog.k);
        return die("keeper", "did not start (see above)");
    }
    if (main_spawn(MAIN_FRONT, c, child_sigs, 1, &front) < 0) {
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
                main_tell_status(PRB_ROLE_FRONT, pid, status, 0, 0);
                main_dog_hang_up(&dog); /* no child inherits the watchdog's connection */
                main_restart(MAIN_FRONT, c, child_sigs, &front, &stop);
            } else if (pid == keeper.pid) {
                int by_dog = dog.killed == pid;
                fprintf(stderr, "signd: keeper (pid %d) %s%s: restarting it\n", (int)pid, how,
                        by_dog ? " by the watchdog" : "");
                keeper.pid = 0;
                main_tell_status(PRB_ROLE_KEEPER, pid, status, by_dog, dog.silent_ms);
                dog.killed = 0;
                main_dog_hang_up(&dog);
                main_restart(MAIN_KEEPER, c, child_sigs, &keeper, &stop);
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
    if (argc == 2 && strcmp(argv[1], "--routes") == 0)
        return srv_print_routes(stdout) == 0 ? 0 : 1;
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: signd CONFIG_FILE | signd --routes\n");
        return 2;
    }
    main_conf_path = argv[1];
    cfg_sha256_hex(main_conf_path, main_conf_hash);
    main_argv0 = argv[0];
    main_argv0_len = strlen(argv[0]);
    /* Keys live in the keeper's memory with SoftHSM2, and the PIN passes through it: no
     * core dumps, no ptrace by other processes of the same user, private files. Inherited
     * by every process forked from here. */
    hd_early();

    static cfg c;
    char err[CFG_ERR_MAX];
    if (cfg_load(argv[1], &c, err, sizeof(err)) != 0)
        return die("configuration", err);
    /* pin_credential: from here on pin_file names the credential's file (it must exist). */
    if (cfg_pin_path(&c, c.pin_file, sizeof(c.pin_file), err, sizeof(err)) != 0)
        return die("configuration", err);

    /* Signals go to sigwait, never to a worker thread: blocked before any thread exists. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* One appliance per data directory, whatever the model: a second one would run
     * reconcile against the first one's keys in flight (destroying what it has generated
     * but not yet recorded) and replace its keeper socket. Held for the process's life,
     * and by the keeper and front too (inherited), so a new start waits for all three. */
    char lock_path[CFG_PATH_MAX + 8];
    snprintf(lock_path, sizeof(lock_path), "%s.lock", c.database);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0)
        return die(lock_path,
                   lock < 0 ? strerror(errno) : "another signd is running on this data directory");

    if (strcmp(c.process_model, "single") == 0) {
        if (c.softhsm2_conf[0] != '\0' && setenv("SOFTHSM2_CONF", c.softhsm2_conf, 1) != 0)
            return die("configuration", "cannot set SOFTHSM2_CONF");
        return run_single(&c, &sigs);
    }
    return run_split(&c, &sigs);
}
