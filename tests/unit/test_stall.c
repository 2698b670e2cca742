/* Unit tests of the bounds on a stalled keeper: the remote keeper interface's deadline
 * (keeper.h) and the readiness probe (probe.h).
 *
 * The stalled keeper is a SOCK_SEQPACKET listener that accepts and reads requests but never
 * answers: from the front's side, exactly what a keeper whose module call never returns
 * (or a keeper stopped by SIGSTOP) looks like. The probe's ready case runs on a real
 * SoftHSM2 token in-process (kp_open) and a real registry file. */
#include "appliance/keeper/inproc.h"
#include "appliance/kproto/keeper.h"
#include "appliance/core/probe.h"
#include "appliance/store/registry.h"
#include "tests/unit/testenv.h"
#include "base/clock.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define DEADLINE_MS 300

typedef struct {
    char dir[64];
    char sock[96];
    int listen_fd;
    pthread_t thread;
    int stop;
    int accepted; /* connections accepted */
    int closed;   /* connections the client closed (read 0) */
    pthread_mutex_t mu;
} mute_keeper;

/* Accepts every connection and reads what comes, answering nothing; counts accepts and
 * closes. */
static void *mute_main(void *arg)
{
    mute_keeper *m = arg;
    struct pollfd fds[16];
    size_t n = 1;
    fds[0] = (struct pollfd){.fd = m->listen_fd, .events = POLLIN};
    for (;;) {
        pthread_mutex_lock(&m->mu);
        int stop = m->stop;
        pthread_mutex_unlock(&m->mu);
        if (stop)
            break;
        if (poll(fds, n, 20) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && n < 16) {
            int c = accept(m->listen_fd, NULL, NULL);
            if (c >= 0) {
                fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
                pthread_mutex_lock(&m->mu);
                m->accepted++;
                pthread_mutex_unlock(&m->mu);
            }
        }
        for (size_t i = 1; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char buf[128 * 1024];
            if (recv(fds[i].fd, buf, sizeof(buf), MSG_DONTWAIT) == 0) {
                close(fds[i].fd);
                fds[i--] = fds[--n];
                pthread_mutex_lock(&m->mu);
                m->closed++;
                pthread_mutex_unlock(&m->mu);
            }
        }
    }
    for (size_t i = 1; i < n; i++)
        close(fds[i].fd);
    return NULL;
}

static int setup(void **state)
{
    mute_keeper *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return -1;
    snprintf(m->dir, sizeof(m->dir), "/tmp/signd-stall-XXXXXX");
    if (mkdtemp(m->dir) == NULL) {
        free(m);
        return -1;
    }
    if ((size_t)snprintf(m->sock, sizeof(m->sock), "%s/keeper.sock", m->dir) >= sizeof(m->sock))
        return -1;
    pthread_mutex_init(&m->mu, NULL);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, m->sock, strlen(m->sock) + 1);
    m->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (m->listen_fd < 0 || bind(m->listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(m->listen_fd, 16) != 0 || pthread_create(&m->thread, NULL, mute_main, m) != 0)
        return -1;
    *state = m;
    return 0;
}

static int teardown(void **state)
{
    mute_keeper *m = *state;
    pthread_mutex_lock(&m->mu);
    m->stop = 1;
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    close(m->listen_fd);
    unlink(m->sock);
    rmdir(m->dir);
    pthread_mutex_destroy(&m->mu);
    free(m);
    return 0;
}

static uint64_t now_ms(void)
{
    return (uint64_t)clk_now_ms();
}

static int count(mute_keeper *m, int *field)
{
    pthread_mutex_lock(&m->mu);
    int v = *field;
    pthread_mutex_unlock(&m->mu);
    return v;
}

static kp *connect_mute(mute_keeper *m, unsigned timeout_ms)
{
    kp *k = NULL;
    char err[256];
    kp_deadlines dl = {.timeout_ms = timeout_ms};
    assert_int_equal(kp_connect(m->sock, &dl, &k, err, sizeof(err)), SK_OK);
    return k;
}

static void test_a_keeper_that_never_answers_gives_hsm_timeout_after_the_deadline(void **state)
{
    mute_keeper *m = *state;
    kp *k = connect_mute(m, DEADLINE_MS);
    sk_kid kid = {{1, 2, 3}};
    uint8_t sig[SK_SIG_MAX];
    size_t len = 0;
    uint64_t t0 = now_ms();
    assert_int_equal(kp_sign(k, &kid, "msg", 3, sig, &len), SK_ERR_TIMEOUT);
    uint64_t took = now_ms() - t0;
    /* It waited for the keeper (the lower bound is exact), and returned (not a hang: the
     * upper bound is loose, the machine is shared). */
    assert_true(took >= DEADLINE_MS);
    assert_true(took < 20 * DEADLINE_MS);
    assert_int_equal(kp_ping(k, NULL), SK_ERR_TIMEOUT);
    kp_close(k);
}

static void test_a_timed_out_connection_is_dropped_and_the_next_call_opens_another(void **state)
{
    mute_keeper *m = *state;
    kp *k = connect_mute(m, DEADLINE_MS);
    assert_int_equal(kp_ping(k, NULL), SK_ERR_TIMEOUT);
    /* Its late answer must never be read as the answer to a later request: closed. */
    for (int i = 0; i < 200 && count(m, &m->closed) < 1; i++)
        usleep(10000);
    assert_int_equal(count(m, &m->closed), 1);
    assert_int_equal(kp_ping(k, NULL), SK_ERR_TIMEOUT);
    assert_int_equal(count(m, &m->accepted), 2);
    kp_close(k);
}

static void test_generation_waits_its_own_longer_deadline(void **state)
{
    mute_keeper *m = *state;
    kp *k = NULL;
    char err[256];
    kp_deadlines dl = {.timeout_ms = 100, .generate_ms = 3 * DEADLINE_MS};
    assert_int_equal(kp_connect(m->sock, &dl, &k, err, sizeof(err)), SK_OK);
    sk_kid kid = {{9}};
    sk_pubkey pub;
    uint64_t t0 = now_ms();
    assert_int_equal(kp_generate(k, &kid, 2048, &pub), SK_ERR_TIMEOUT);
    assert_true(now_ms() - t0 >= 3 * DEADLINE_MS);
    kp_close(k);
}

static void test_probe_of_a_stalled_keeper_is_unready_with_hsm_timeout(void **state)
{
    mute_keeper *m = *state;
    /* The keeper's own deadline is longer than the probe's: the probe is late before the
     * call gives up, and readiness says so at once. */
    kp *k = connect_mute(m, 3000);
    char db[128], err[256];
    snprintf(db, sizeof(db), "%s/appliance.db", m->dir);
    reg *r = NULL;
    assert_int_equal(reg_open(db, 10, &r), REG_OK);
    prb *p = NULL;
    prb_options o = {.kp = k, .reg = r, .audit = NULL, .events_fd = -1};
    uint64_t t0 = now_ms();
    assert_int_equal(prb_start(&o, &p, err, sizeof(err)), 0); /* its first probe timed out */
    assert_true(now_ms() - t0 >= 3000);
    prb_state s;
    prb_read(p, &s);
    assert_false(s.ready);
    assert_int_equal(s.sessions, 0);
    /* A probe in flight longer than PRB_DEADLINE_MS: unready with a timeout, now. */
    usleep((PRB_RETRY_MS + PRB_DEADLINE_MS + 100) * 1000);
    t0 = now_ms();
    prb_read(p, &s);
    assert_true(now_ms() - t0 < 100); /* never waits for the token */
    assert_false(s.ready);
    assert_int_equal(s.status, SK_ERR_TIMEOUT);
    prb_stop(p);
    reg_close(r);
    kp_close(k);
    char wal[160];
    unlink(db);
    snprintf(wal, sizeof(wal), "%s-wal", db);
    unlink(wal);
    snprintf(wal, sizeof(wal), "%s-shm", db);
    unlink(wal);
}

static void test_probe_of_a_token_that_answers_is_ready_with_its_sessions(void **state)
{
    (void)state;
    char dir[PATH_MAX], pin[PATH_MAX], err[256];
    assert_int_equal(testenv_token(dir), 0);
    hsm_config hc = testenv_config(dir, pin);
    kp *k = NULL;
    assert_int_equal(kp_open(&hc, &k, err, sizeof(err)), SK_OK);
    char db[PATH_MAX + 16];
    snprintf(db, sizeof(db), "%s/appliance.db", dir);
    reg *r = NULL;
    assert_int_equal(reg_open(db, 10, &r), REG_OK);
    prb *p = NULL;
    prb_options o = {.kp = k, .reg = r, .audit = NULL, .events_fd = -1};
    assert_int_equal(prb_start(&o, &p, err, sizeof(err)), 0);
    prb_state s;
    prb_read(p, &s);
    assert_true(s.ready);
    assert_int_equal(s.status, SK_OK);
    assert_true(s.sessions >= 1);
    prb_stop(p);
    reg_close(r);
    kp_close(k);
    testenv_cleanup(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_a_keeper_that_never_answers_gives_hsm_timeout_after_the_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_timed_out_connection_is_dropped_and_the_next_call_opens_another, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_generation_waits_its_own_longer_deadline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_probe_of_a_stalled_keeper_is_unready_with_hsm_timeout,
                                        setup, teardown),
        cmocka_unit_test(test_probe_of_a_token_that_answers_is_ready_with_its_sessions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
