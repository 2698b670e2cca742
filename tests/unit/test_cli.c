/*
 * test_cli: signdctl's argument handling (cli/, through ctl_main as the program runs it).
 * Help and the exit codes it documents; the global options, anywhere on the line, and their
 * validation; each command's options, arguments and their one-line errors with the exit code
 * 2, all before any request; a secret is never taken from argv; where the credential comes
 * from (file, variable, neither) and that a variable is wiped once read; and an appliance
 * that cannot be reached is 3. No appliance runs here: what needs one is tests/blackbox.
 */
#include "cli/ctl.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define KID "0123456789abcdef0123456789abcdef"
#define SECRET "sgd_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

typedef struct {
    int rc;
    char out[16384];
    char err[4096];
} run_result;

static void slurp(FILE *f, char *buf, size_t cap)
{
    rewind(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Runs signdctl with the arguments up to NULL, stdout and stderr captured. */
static run_result *run(const char *first, ...)
{
    static run_result r;
    char *argv[32];
    int argc = 0;
    argv[argc++] = "signdctl";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a != NULL; a = va_arg(ap, const char *)) {
        assert_true(argc < 31);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    FILE *out = tmpfile(), *err = tmpfile();
    assert_non_null(out);
    assert_non_null(err);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    dup2(fileno(out), 1);
    dup2(fileno(err), 2);
    r.rc = ctl_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    slurp(out, r.out, sizeof(r.out));
    slurp(err, r.err, sizeof(r.err));
    return &r;
}

/* A failure's stderr: exactly one line, "signdctl: <problem>; <what to do>". */
static const char *one_line(const run_result *r)
{
    size_t n = strlen(r->err);
    if (n == 0 || r->err[n - 1] != '\n' || strchr(r->err, '\n') != r->err + n - 1)
        fail_msg("not one line: '%s'", r->err);
    assert_memory_equal(r->err, "signdctl: ", 10);
    assert_non_null(strstr(r->err, "; "));
    return r->err;
}

static void expect_usage(run_result *r, const char *needle)
{
    if (r->rc != CTL_EXIT_USAGE)
        fail_msg("exit %d, not 2: %s", r->rc, r->err);
    const char *line = one_line(r);
    if (strstr(line, needle) == NULL)
        fail_msg("'%s' not in '%s'", needle, line);
    assert_string_equal(r->out, "");
}

static int clean_env(void **state)
{
    (void)state;
    unsetenv("SIGND_URL");
    unsetenv("SIGND_CACERT");
    unsetenv("SIGND_PIN_SHA256");
    unsetenv("SIGND_CREDENTIAL_FILE");
    return 0;
}

/* A port on 127.0.0.1 that nothing listens on (bound, then closed). */
static int unused_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(s, (struct sockaddr *)&a, &len);
    close(s);
    return ntohs(a.sin_port);
}

static void test_help_documents_every_exit_code(void **state)
{
    (void)state;
    run_result *r = run("--help", NULL);
    assert_int_equal(r->rc, CTL_EXIT_OK);
    assert_string_equal(r->err, "");
    assert_memory_equal(r->out, "usage: signdctl ", 16);
    static const char *const codes[] = {"\n  0  ", "\n  1  ", "\n  2  ", "\n  3  ", "\n  4  ",
                                        "\n  5  ", "\n  6  ", "\n  7  ", "\n  130 "};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (strstr(r->out, codes[i]) == NULL)
            fail_msg("exit code%s not in the help", codes[i]);
    assert_int_equal(run("help", NULL)->rc, CTL_EXIT_OK);
    assert_int_equal(run("-h", NULL)->rc, CTL_EXIT_OK);
}

static void test_each_verb_has_its_help(void **state)
{
    (void)state;
    static const char *const verbs[][2] = {
        {"keys", "create"},
        {"keys", "list"},
        {"keys", "show"},
        {"keys", "revoke"},
        {"keys", "rotate"},
        {"keys", NULL},
        {"credentials", "create"},
        {"credentials", "list"},
        {"credentials", "revoke"},
        {"token", "mint"},
        {"token", "revoke"},
        {"subjects", "revoke"},
        {"sign", NULL},
        {"audit", "export"},
        {"audit", "verify"},
    };
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        run_result *r = verbs[i][1] ? run(verbs[i][0], verbs[i][1], "--help", NULL)
                                    : run(verbs[i][0], "--help", NULL);
        if (r->rc != CTL_EXIT_OK)
            fail_msg("%s %s --help: exit %d", verbs[i][0], verbs[i][1], r->rc);
        char want[64];
        snprintf(want, sizeof(want), "usage: signdctl %s", verbs[i][0]);
        if (strncmp(r->out, want, strlen(want)) != 0)
            fail_msg("%s %s --help: %.60s", verbs[i][0], verbs[i][1], r->out);
    }
}

static void test_no_command_prints_the_help_on_stderr_and_exits_2(void **state)
{
    (void)state;
    run_result *r = run(NULL);
    assert_int_equal(r->rc, CTL_EXIT_USAGE);
    assert_memory_equal(r->err, "usage: signdctl ", 16);
    assert_string_equal(r->out, "");
    /* Global options alone are no command either. */
    assert_int_equal(run("--json", NULL)->rc, CTL_EXIT_USAGE);
}

static void test_an_unknown_command_or_verb_is_a_usage_error(void **state)
{
    (void)state;
    run_result *r = run("frobnicate", NULL);
    expect_usage(r, "unknown command 'frobnicate' (keys, credentials, token, subjects, sign, "
                    "audit)");
    assert_non_null(strstr(r->err, "see 'signdctl --help'"));
    r = run("keys", "destroy", NULL);
    expect_usage(r, "unknown verb 'destroy'");
    assert_non_null(strstr(r->err, "see 'signdctl keys --help'"));
}

static void test_an_unknown_or_malformed_option_names_itself(void **state)
{
    (void)state;
    run_result *r = run("keys", "list", "--colour", NULL);
    expect_usage(r, "unknown option --colour");
    assert_non_null(strstr(r->err, "see 'signdctl keys list --help'"));
    expect_usage(run("keys", "list", "-x", NULL), "unknown option -x (options are spelled --name)");
    expect_usage(run("keys", "list", "--json=yes", NULL), "option --json takes no value");
    expect_usage(run("keys", "list", "--state", NULL), "option --state needs a value");
    expect_usage(run("keys", "show", KID, KID, NULL), "unexpected argument '" KID "'");
    expect_usage(run("keys", "list", "extra", NULL), "unexpected argument 'extra'");
}

static void test_numbers_and_kids_are_checked_before_any_request(void **state)
{
    (void)state;
    expect_usage(run("keys", "create", "--count", "1001", NULL), "--count must be 1 to 1000");
    expect_usage(run("keys", "create", "--count", "0", NULL), "--count must be 1 to 1000");
    expect_usage(run("keys", "create", "--parallel", "33", NULL), "--parallel must be 1 to 32");
    expect_usage(run("keys", "create", "--bits", "2048x", NULL), "--bits must be 2048");
    expect_usage(run("keys", "create", "--count", "+5", NULL), "--count must be 1 to 1000");
    expect_usage(run("keys", "rotate", KID, "--grace", "-1", NULL), "--grace must be 0 to");
    expect_usage(run("keys", "list", "--state", "dead", NULL),
                 "--state must be active, retiring, revoked or broken");
    expect_usage(run("keys", "show", "not-a-kid", NULL), "'not-a-kid' is not a kid");
    expect_usage(run("keys", "show", "0123456789ABCDEF0123456789ABCDEF", NULL), "is not a kid");
    expect_usage(run("keys", "show", NULL), "give the kid to show");
    expect_usage(run("keys", "revoke", KID, NULL), "--reason");
    /* "--" ends the options: what follows is an argument, here not a kid. */
    expect_usage(run("keys", "show", "--", "--json", NULL), "'--json' is not a kid");
}

static void test_global_options_are_validated_wherever_they_are(void **state)
{
    (void)state;
    expect_usage(run("--url", "http://127.0.0.1:8443", "keys", "list", NULL),
                 "--url must be https://HOST:PORT");
    expect_usage(run("keys", "list", "--url", "https://", NULL), "--url must be https://HOST:PORT");
    expect_usage(run("keys", "list", "--url=https://a b:1", NULL), "without spaces, query or "
                                                                   "fragment");
    expect_usage(run("keys", "list", "--url", "https://h:1/?x", NULL), "without spaces");
    expect_usage(run("--timeout", "0", "keys", "list", NULL), "--timeout must be 1 to 3600");
    expect_usage(run("keys", "list", "--timeout", "3601", NULL), "--timeout must be 1 to 3600");
    expect_usage(run("--pin-sha256", "abc", "keys", "list", NULL),
                 "--pin-sha256 must be the base64 SHA-256");
    expect_usage(run("--cacert", "/nonexistent/ca.pem", "keys", "list", NULL),
                 "cannot read the CA file /nonexistent/ca.pem");
    expect_usage(run("--credential-env", "", "keys", "list", NULL),
                 "--credential-env needs the name of a variable");
    /* The environment's defaults are checked the same way. */
    setenv("SIGND_URL", "ftp://x", 1);
    expect_usage(run("keys", "list", NULL), "--url must be https://HOST:PORT");
    unsetenv("SIGND_URL");
}

static void test_a_secret_is_never_taken_from_the_command_line(void **state)
{
    (void)state;
    static const char *const flags[] = {"--credential",   "--secret", "--password",
                                        "--token-secret", "--bearer", "--api-key"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        run_result *r = run(flags[i], SECRET, "keys", "list", NULL);
        expect_usage(r, "a secret is never taken on the command line");
        assert_non_null(strstr(r->err, "--credential-file FILE"));
        assert_non_null(strstr(r->err, "--credential-env NAME"));
        assert_null(strstr(r->err, SECRET));
        char eq[128];
        snprintf(eq, sizeof(eq), "%s=%s", flags[i], SECRET);
        r = run("keys", "list", eq, NULL);
        assert_int_equal(r->rc, CTL_EXIT_USAGE);
        assert_null(strstr(r->err, SECRET));
    }
}

static void test_no_credential_is_a_usage_error_naming_where_it_goes(void **state)
{
    (void)state;
    expect_usage(run("keys", "list", NULL), "no credential; pass --credential-file FILE");
    expect_usage(run("--credential-file", "/nonexistent/cred", "keys", "list", NULL),
                 "cannot read the credential file /nonexistent/cred");
    expect_usage(run("--credential-env", "NOT_SET_ANYWHERE", "keys", "list", NULL),
                 "the credential variable NOT_SET_ANYWHERE is not set");
    /* --credential-env beats SIGND_CREDENTIAL_FILE: no fallback to the file. */
    setenv("SIGND_CREDENTIAL_FILE", "/etc/hostname", 1);
    expect_usage(run("--credential-env", "NOT_SET_ANYWHERE", "keys", "list", NULL),
                 "NOT_SET_ANYWHERE");
    unsetenv("SIGND_CREDENTIAL_FILE");
    expect_usage(
        run("--credential-file", "/etc/hostname", "--credential-env", "X", "keys", "list", NULL),
        "both --credential-file and --credential-env are given");
}

static void test_a_credential_file_that_is_not_one_secret_is_refused(void **state)
{
    (void)state;
    char path[] = "/tmp/signdctl-cred-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    expect_usage(run("--credential-file", path, "keys", "list", NULL), "is empty");
    FILE *f = fopen(path, "w");
    fputs("sgd_a b\n", f);
    fclose(f);
    expect_usage(run("--credential-file", path, "keys", "list", NULL),
                 "holds a byte that is not printable ASCII");
    f = fopen(path, "w");
    for (int i = 0; i < CTL_SECRET_MAX + 1; i++)
        fputc('a', f);
    fclose(f);
    expect_usage(run("--credential-file", path, "keys", "list", NULL), "is longer than");
    unlink(path);
}

/* The secret reaches the request (here refused at the connection) and the variable is gone
 * from the environment, so from /proc/PID/environ. */
static void test_an_unreachable_appliance_exits_3_and_the_variable_is_wiped(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "https://127.0.0.1:%d", unused_port());
    setenv("OPERATOR_SECRET", SECRET, 1);
    run_result *r = run("--url", url, "--credential-env", "OPERATOR_SECRET", "keys", "list", NULL);
    assert_int_equal(r->rc, CTL_EXIT_CONNECT);
    const char *line = one_line(r);
    assert_non_null(strstr(line, "cannot reach the appliance at"));
    assert_null(strstr(line, SECRET));
    const char *left = getenv("OPERATOR_SECRET");
    assert_true(left == NULL || strstr(left, "AAAA") == NULL);
    unsetenv("OPERATOR_SECRET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_help_documents_every_exit_code, clean_env),
        cmocka_unit_test_setup(test_each_verb_has_its_help, clean_env),
        cmocka_unit_test_setup(test_no_command_prints_the_help_on_stderr_and_exits_2, clean_env),
        cmocka_unit_test_setup(test_an_unknown_command_or_verb_is_a_usage_error, clean_env),
        cmocka_unit_test_setup(test_an_unknown_or_malformed_option_names_itself, clean_env),
        cmocka_unit_test_setup(test_numbers_and_kids_are_checked_before_any_request, clean_env),
        cmocka_unit_test_setup(test_global_options_are_validated_wherever_they_are, clean_env),
        cmocka_unit_test_setup(test_a_secret_is_never_taken_from_the_command_line, clean_env),
        cmocka_unit_test_setup(test_no_credential_is_a_usage_error_naming_where_it_goes, clean_env),
        cmocka_unit_test_setup(test_a_credential_file_that_is_not_one_secret_is_refused, clean_env),
        cmocka_unit_test_setup(test_an_unreachable_appliance_exits_3_and_the_variable_is_wiped,
                               clean_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
