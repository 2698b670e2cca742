/*
 * test_spawn: the supervisor's hand-over to signd-keeper and signd-front (spawn.h): the
 * command line spn_argv writes is the one spn_parse reads, and the configuration the
 * children parse from the sealed copy is the file's, hash included; and the restart events
 * (events.h) the supervisor writes on the pipe it hands the front.
 */
#include "appliance/common/events.h"
#include "appliance/common/spawn.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_argv_round_trips_through_parse(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    spn_args a = {.config_path = "/etc/signd/appliance.conf",
                  .config_fd = p[0],
                  .ready_fd = p[1],
                  .lock_fd = 0,
                  .events_fd = p[0],
                  .announce = 1,
                  .peer_uid = 995};
    spn_argv_store store;
    char *argv[SPN_ARGV_MAX];
    size_t n = spn_argv("signd: front", &a, &store, argv, SPN_ARGV_MAX);
    assert_true(n > 0 && n < SPN_ARGV_MAX);
    assert_string_equal(argv[0], "signd: front");
    assert_null(argv[n]);
    spn_args b;
    char err[256];
    assert_int_equal(spn_parse((int)n, argv, &b, err, sizeof(err)), 0);
    assert_string_equal(b.config_path, a.config_path);
    assert_int_equal(b.config_fd, a.config_fd);
    assert_int_equal(b.ready_fd, a.ready_fd);
    assert_int_equal(b.lock_fd, a.lock_fd);
    assert_int_equal(b.events_fd, a.events_fd);
    assert_int_equal(b.announce, 1);
    assert_int_equal(b.peer_uid, 995);
    /* The keeper's: no events, no announce, no peer. */
    a.events_fd = -1, a.announce = 0, a.peer_uid = -1;
    n = spn_argv("signd: keeper", &a, &store, argv, SPN_ARGV_MAX);
    assert_int_equal(spn_parse((int)n, argv, &b, err, sizeof(err)), 0);
    assert_int_equal(b.events_fd, -1);
    assert_int_equal(b.announce, 0);
    assert_int_equal(b.peer_uid, -1);
    assert_int_equal(spn_argv("x", &a, &store, argv, 4), 0);
    close(p[0]);
    close(p[1]);
}

static void test_parse_refuses_closed_descriptors_and_unknown_arguments(void **state)
{
    (void)state;
    char err[256];
    spn_args b;
    char *closed[] = {"signd: keeper", "--config", "/a.conf",   "--config-fd", "999",
                      "--ready-fd",    "1",        "--lock-fd", "2",           NULL};
    assert_int_equal(spn_parse(9, closed, &b, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--config-fd 999: not an open descriptor"));
    char *unknown[] = {"signd: keeper", "--pin", "1234", NULL};
    assert_int_equal(spn_parse(3, unknown, &b, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unexpected argument --pin"));
    char *relative[] = {"signd: keeper", "--config", "a.conf", NULL};
    assert_int_equal(spn_parse(3, relative, &b, err, sizeof(err)), -1);
    char *missing[] = {"signd: keeper", NULL};
    assert_int_equal(spn_parse(1, missing, &b, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "are required"));
    char *uid[] = {"signd: keeper", "--peer-uid", "-5", NULL};
    assert_int_equal(spn_parse(3, uid, &b, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not a uid"));
}

static void test_snapshot_is_the_file_sealed_and_hashed_as_the_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/test-spawn-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/appliance.conf", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("port = 9443\nkeeper_socket = k.sock\n", f);
    fclose(f);

    cfg c, d;
    char err[CFG_ERR_MAX], h1[65], h2[65], h3[65];
    int fd = -1;
    assert_int_equal(spn_config_snapshot(path, &fd, &c, h1, err, sizeof(err)), 0);
    assert_true(fd >= 0);
    assert_int_equal(c.port, 9443);
    cfg_sha256_hex(path, h3);
    assert_string_equal(h1, h3);
    /* The file changes afterwards: the children still read what the supervisor read. */
    f = fopen(path, "w");
    fputs("port = 1\n", f);
    fclose(f);
    assert_int_equal(spn_config_load(fd, path, &d, h2, err, sizeof(err)), 0);
    assert_int_equal(d.port, 9443);
    assert_string_equal(h2, h1);
    char expect[PATH_MAX + 16];
    snprintf(expect, sizeof(expect), "%s/k.sock", dir);
    assert_string_equal(d.keeper_socket, expect);
    /* Sealed: nobody holding it may change it. */
    assert_true(write(fd, "x", 1) < 0);
    close(fd);
    unlink(path);
    rmdir(dir);
}

static void test_restart_events_cross_the_pipe_whole_and_bad_ones_are_refused(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
    evt_send(p[1], EVT_ROLE_KEEPER, EVT_CAUSE_WATCHDOG, 4242, 3100);
    evt_restart bad = {.magic = EVT_MAGIC ^ 1u, .role = EVT_ROLE_FRONT};
    assert_int_equal(write(p[1], &bad, sizeof(bad)), (ssize_t)sizeof(bad));
    bad.magic = EVT_MAGIC;
    bad.role = 7; /* no such role */
    assert_int_equal(write(p[1], &bad, sizeof(bad)), (ssize_t)sizeof(bad));
    evt_send(-1, EVT_ROLE_FRONT, EVT_CAUSE_EXITED, 1, 0); /* no pipe: nothing, no crash */

    evt_restart ev;
    assert_int_equal(evt_recv(p[0], &ev), 1);
    assert_true(evt_valid(&ev));
    assert_int_equal(ev.role, EVT_ROLE_KEEPER);
    assert_int_equal(ev.cause, EVT_CAUSE_WATCHDOG);
    assert_int_equal(ev.pid, 4242);
    assert_int_equal(ev.detail, 3100);
    assert_string_equal(evt_cause_name((evt_cause)ev.cause), "watchdog");
    assert_int_equal(evt_recv(p[0], &ev), 1);
    assert_false(evt_valid(&ev)); /* wrong magic */
    assert_int_equal(evt_recv(p[0], &ev), 1);
    assert_false(evt_valid(&ev));             /* unknown role */
    assert_int_equal(evt_recv(p[0], &ev), 0); /* empty */
    assert_int_equal(evt_recv(-1, &ev), 0);
    assert_string_equal(evt_cause_name(EVT_CAUSE_EXITED), "exited");
    assert_string_equal(evt_cause_name(EVT_CAUSE_SIGNAL), "signal");
    assert_string_equal(evt_cause_name((evt_cause)99), "unknown");
    assert_string_equal(evt_cause_name((evt_cause)0), "unknown");
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argv_round_trips_through_parse),
        cmocka_unit_test(test_parse_refuses_closed_descriptors_and_unknown_arguments),
        cmocka_unit_test(test_snapshot_is_the_file_sealed_and_hashed_as_the_file),
        cmocka_unit_test(test_restart_events_cross_the_pipe_whole_and_bad_ones_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
