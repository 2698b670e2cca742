/* testdb: a test process's own PostgreSQL server, or SQLite files (testdb.h). */
#include "tests/unit/testdb.h"

#include <libpq-fe.h>

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TESTDB_USER "signd-pgtest"
#define TESTDB_BIN "/usr/lib/postgresql/15/bin"
#define TESTDB_LOCK "/run/signd-testdb.lock"

static char testdb_root[64]; /* the temporary directory: socket here, data in data/ */
static pid_t testdb_owner;   /* the process that started the server (not its forks) */
static pid_t testdb_postmaster;
static int testdb_watch_fd = -1; /* to the watchdog: the postmaster's pid, EOF at our end */
static pid_t testdb_watchdog;
static unsigned testdb_count;

int testdb_backend_is_postgres(void)
{
    const char *b = getenv("SIGND_TEST_BACKEND");
    return b != NULL && strcmp(b, "postgres") == 0;
}

const char *testdb_pg_socket_dir(void)
{
    return testdb_root;
}

/* Runs argv (argv[0] a full path) with stdout and stderr into root/setup.log, in root:
 * its exit status, or -1. */
static int testdb_run(char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char log[128];
        snprintf(log, sizeof(log), "%s/setup.log", testdb_root[0] ? testdb_root : "/tmp");
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (testdb_root[0] != '\0' && chdir(testdb_root) != 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The system user the server runs as: made once per machine, under a lock since suites
 * run in parallel. */
static int testdb_user(void)
{
    if (getpwnam(TESTDB_USER) != NULL)
        return 0;
    int lk = open(TESTDB_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lk < 0 || flock(lk, LOCK_EX) != 0) {
        fprintf(stderr, "testdb: lock %s: %s\n", TESTDB_LOCK, strerror(errno));
        if (lk >= 0)
            close(lk);
        return -1;
    }
    int rc = 0;
    if (getpwnam(TESTDB_USER) == NULL) {
        char *argv[] = {
            "/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
            TESTDB_USER,         NULL};
        rc = testdb_run(argv) == 0 ? 0 : -1;
        if (rc != 0)
            fprintf(stderr, "testdb: useradd %s failed\n", TESTDB_USER);
    }
    close(lk);
    return rc;
}

static int testdb_pg_ctl(const char *action, const char *mode)
{
    char data[96], log[96];
    snprintf(data, sizeof(data), "%s/data", testdb_root);
    snprintf(log, sizeof(log), "%s/server.log", testdb_root);
    char *start[] = {"/usr/sbin/runuser",
                     "-u",
                     TESTDB_USER,
                     "--",
                     TESTDB_BIN "/pg_ctl",
                     "-D",
                     data,
                     "-l",
                     log,
                     "-w",
                     "-t",
                     "60",
                     "start",
                     NULL};
    char *stop[] = {"/usr/sbin/runuser",
                    "-u",
                    TESTDB_USER,
                    "--",
                    TESTDB_BIN "/pg_ctl",
                    "-D",
                    data,
                    "-w",
                    "-t",
                    "60",
                    "-m",
                    (char *)mode,
                    "stop",
                    NULL};
    (void)action;
    return testdb_run(strcmp(action, "start") == 0 ? start : stop);
}

static pid_t testdb_read_pid(void)
{
    char path[96];
    snprintf(path, sizeof(path), "%s/data/postmaster.pid", testdb_root);
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    return (pid_t)pid;
}

/* The watchdog: a child that outlives nothing. It reads the postmaster's pid from the
 * pipe, and when the pipe closes (this process ended, however: exit, abort, a signal),
 * stops that server at once and removes the directory. */
static void testdb_watch(int fd, const char *root)
{
    pid_t pm = 0, got;
    ssize_t n;
    while ((n = read(fd, &got, sizeof(got))) == (ssize_t)sizeof(got) || (n < 0 && errno == EINTR))
        if (n > 0)
            pm = got;
    if (pm > 0 && kill(pm, SIGQUIT) == 0) /* immediate shutdown */
        for (int i = 0; i < 500 && kill(pm, 0) == 0; i++) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
    execl("/bin/rm", "rm", "-rf", root, (char *)NULL);
    _exit(1);
}

static void testdb_atexit(void)
{
    if (getpid() != testdb_owner || testdb_watch_fd < 0)
        return;
    close(testdb_watch_fd);
    testdb_watch_fd = -1;
    int status;
    while (waitpid(testdb_watchdog, &status, 0) < 0 && errno == EINTR) {
    }
}

static void testdb_tell_watchdog(void)
{
    testdb_postmaster = testdb_read_pid();
    if (testdb_watch_fd >= 0 && testdb_postmaster > 0 &&
        write(testdb_watch_fd, &testdb_postmaster, sizeof(testdb_postmaster)) < 0)
        fprintf(stderr, "testdb: watchdog: %s\n", strerror(errno));
}

static int testdb_server(void)
{
    if (testdb_root[0] != '\0')
        return 0;
    if (testdb_user() != 0)
        return -1;
    struct passwd *pw = getpwnam(TESTDB_USER);
    if (pw == NULL)
        return -1;
    char root[64] = "/tmp/signd-pg-XXXXXX";
    if (mkdtemp(root) == NULL)
        return -1;
    /* Who reaches the socket: the directory is the server user's, 0711 (no listing), the
     * socket 0777, so the test (root) and the appliance's own accounts connect to it; trust
     * authentication is acceptable for a throw-away server holding test data only, bound to
     * no TCP port, on a machine whose other users are the tests themselves. */
    if (chown(root, pw->pw_uid, pw->pw_gid) != 0 || chmod(root, 0711) != 0) {
        fprintf(stderr, "testdb: chown %s: %s\n", root, strerror(errno));
        return -1;
    }
    snprintf(testdb_root, sizeof(testdb_root), "%s", root);
    testdb_owner = getpid();

    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    testdb_watchdog = fork();
    if (testdb_watchdog < 0)
        return -1;
    if (testdb_watchdog == 0) {
        close(p[1]);
        setsid(); /* a ^C to the test's group leaves the clean-up running */
        testdb_watch(p[0], root);
    }
    close(p[0]);
    testdb_watch_fd = p[1];
    atexit(testdb_atexit);

    char data[96];
    snprintf(data, sizeof(data), "%s/data", root);
    /* --no-sync: initdb's own files only; the server runs with fsync on. */
    char *initdb[] = {"/usr/sbin/runuser",
                      "-u",
                      TESTDB_USER,
                      "--",
                      TESTDB_BIN "/initdb",
                      "-D",
                      data,
                      "-U",
                      TESTDB_USER,
                      "-A",
                      "trust",
                      "-E",
                      "UTF8",
                      "--locale=C",
                      "--no-sync",
                      NULL};
    if (testdb_run(initdb) != 0) {
        fprintf(stderr, "testdb: initdb failed, see %s/setup.log\n", root);
        return -1;
    }
    char conf[128];
    snprintf(conf, sizeof(conf), "%s/postgresql.conf", data);
    FILE *f = fopen(conf, "a");
    if (f == NULL)
        return -1;
    fprintf(f,
            "\n# testdb\nlisten_addresses = ''\nunix_socket_directories = '%s'\n"
            "unix_socket_permissions = 0777\nmax_connections = 200\nshared_buffers = 16MB\n"
            "fsync = on\nsynchronous_commit = on\nmax_wal_size = 256MB\n"
            "log_min_messages = warning\n",
            root);
    fclose(f);
    if (testdb_pg_ctl("start", NULL) != 0) {
        fprintf(stderr, "testdb: pg_ctl start failed, see %s/server.log\n", root);
        return -1;
    }
    testdb_tell_watchdog();
    return 0;
}

int testdb_pg_stop(void)
{
    if (testdb_root[0] == '\0')
        return -1;
    return testdb_pg_ctl("stop", "fast") == 0 ? 0 : -1;
}

int testdb_pg_start(void)
{
    if (testdb_root[0] == '\0')
        return -1;
    if (testdb_pg_ctl("start", NULL) != 0)
        return -1;
    testdb_tell_watchdog();
    return 0;
}

int testdb_locator(const char *dir, char *out, size_t cap)
{
    if (!testdb_backend_is_postgres()) {
        int n = snprintf(out, cap, "%s/appliance.db", dir);
        return n > 0 && (size_t)n < cap ? 0 : -1;
    }
    return testdb_pg_locator(out, cap);
}

int testdb_pg_locator(char *out, size_t cap)
{
    if (testdb_server() != 0)
        return -1;
    char name[64], admin[160], sql[96];
    snprintf(name, sizeof(name), "t_%ld_%u", (long)getpid(), ++testdb_count);
    snprintf(admin, sizeof(admin), "postgresql:///postgres?host=%s&user=%s", testdb_root,
             TESTDB_USER);
    PGconn *c = PQconnectdb(admin);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "testdb: connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "testdb: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    if (!ok)
        return -1;
    int n = snprintf(out, cap, "postgresql:///%s?host=%s&user=%s", name, testdb_root, TESTDB_USER);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}
