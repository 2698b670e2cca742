/*
 * test_config: appliance.conf, as cfg_load reads it and cfg_write_defaults writes it. Each
 * test writes its file into a fresh temporary directory.
 */
#include "appliance/common/config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char dir[PATH_MAX]; /* absolute, resolved */
    char path[PATH_MAX + 32];
    char err[CFG_ERR_MAX];
    cfg c; /* what cfg_load produced */
    cfg d; /* defaults to compare against */
} fixture;

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    char tmpl[] = "/tmp/test-config-XXXXXX";
    if (mkdtemp(tmpl) == NULL || realpath(tmpl, fx->dir) == NULL)
        return -1;
    snprintf(fx->path, sizeof(fx->path), "%s/appliance.conf", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Writes text as the fixture's appliance.conf and loads it. */
static int load_text(fixture *fx, const char *text)
{
    write_file(fx->path, text, strlen(text));
    fx->err[0] = '\0';
    return cfg_load(fx->path, &fx->c, fx->err, sizeof(fx->err));
}

/* The load of text fails, with a message holding "appliance.conf:" + want. */
static void assert_rejected(fixture *fx, const char *text, const char *want)
{
    char full[512];
    snprintf(full, sizeof(full), "appliance.conf:%s", want);
    assert_int_equal(load_text(fx, text), -1);
    if (strstr(fx->err, full) == NULL)
        fail_msg("for %s\nwanted a message with: %s\ngot: %s", text, full, fx->err);
    assert_non_null(strstr(fx->err, fx->path));
}

static void write_defaults(fixture *fx, unsigned port)
{
    FILE *f = fopen(fx->path, "w");
    assert_non_null(f);
    assert_int_equal(cfg_write_defaults(f, port), 0);
    assert_int_equal(fclose(f), 0);
}

/* ---- defaults -------------------------------------------------------------------------- */

static void test_written_defaults_load_back_as_the_defaults(void **state)
{
    fixture *fx = *state;
    write_defaults(fx, 8443);
    assert_int_equal(cfg_load(fx->path, &fx->c, fx->err, sizeof(fx->err)), 0);
    cfg_defaults(&fx->d, fx->dir);
    assert_memory_equal(&fx->c, &fx->d, sizeof(cfg));
}

static void test_defaults_are_the_documented_values(void **state)
{
    fixture *fx = *state;
    cfg *d = &fx->d;
    cfg_defaults(d, "/data");
    assert_string_equal(d->listen_address, "127.0.0.1");
    assert_int_equal(d->port, 8443);
    assert_string_equal(d->pkcs11_module, "/usr/lib/softhsm/libsofthsm2.so");
    assert_string_equal(d->softhsm2_conf, "/data/softhsm2.conf");
    assert_string_equal(d->token, "signd");
    assert_string_equal(d->pin_file, "/data/pin");
    assert_string_equal(d->tls_certificate, "/data/tls/cert.pem");
    assert_string_equal(d->tls_private_key, "/data/tls/key.pem");
    assert_string_equal(d->database, "/data/appliance.db");
    assert_string_equal(d->state_directory, "");
    assert_string_equal(d->node_name, "");
    assert_string_equal(d->tls_client_ca, "");
    assert_string_equal(d->tls_min_version, "1.2");
    assert_string_equal(d->user, "");
    assert_string_equal(d->keeper_user, "signd-keeper");
    assert_string_equal(d->front_user, "signd-front");
    assert_int_equal(d->hsts_max_age, 31536000);
    assert_int_equal(d->worker_threads, 64);
    assert_int_equal(d->max_pkcs11_sessions, 0);
    assert_int_equal(d->request_timeout_ms, 10000);
    assert_int_equal(d->keep_alive_timeout_ms, 30000);
    assert_int_equal(d->max_active_keys, 1000);
    assert_int_equal(d->default_key_bits, 2048);
    assert_int_equal(d->token_ttl_default, 3600);
    assert_int_equal(d->token_ttl_min, 60);
    assert_int_equal(d->token_ttl_max, 2592000);
    assert_int_equal(d->rotation_grace_seconds, 0); /* token_ttl_max */
    assert_string_equal(d->token_issuer, "");
    assert_int_equal(d->jwks_max_age, 60);
    assert_int_equal(d->revocations_max_age, 60);
    assert_int_equal(d->revocation_feed_lifetime, 900);
    assert_int_equal(d->publication_signs_per_second, 20);
    assert_int_equal(d->events_max_subscribers, 256);
    assert_int_equal(d->events_heartbeat_seconds, 15);
    assert_false(d->log_requests);
}

static void test_defaults_without_base_dir_keep_paths_relative(void **state)
{
    fixture *fx = *state;
    cfg_defaults(&fx->d, NULL);
    assert_string_equal(fx->d.pin_file, "pin");
    assert_string_equal(fx->d.tls_certificate, "tls/cert.pem");
}

static void test_port_given_to_write_defaults_replaces_the_default_port(void **state)
{
    fixture *fx = *state;
    write_defaults(fx, 9443);
    assert_int_equal(cfg_load(fx->path, &fx->c, fx->err, sizeof(fx->err)), 0);
    assert_int_equal(fx->c.port, 9443);
    cfg_defaults(&fx->d, fx->dir);
    fx->d.port = 9443;
    assert_memory_equal(&fx->c, &fx->d, sizeof(cfg));
}

static void test_write_defaults_refuses_a_port_out_of_range(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(cfg_write_defaults(f, 0), -1);
    assert_int_equal(cfg_write_defaults(f, 65536), -1);
    fclose(f);
    assert_int_equal(len, 0);
    free(buf);
}

/* Every setting line is "name = value" and has a comment line right above it. */
static void test_written_defaults_comment_every_setting(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(cfg_write_defaults(f, 8443), 0);
    fclose(f);
    const char *names[] = {"listen_address",
                           "port",
                           "pkcs11_module",
                           "softhsm2_conf",
                           "pkcs11_sign_mechanism",
                           "token",
                           "pkcs11_env",
                           "pin_file",
                           "pin_credential",
                           "tls_certificate",
                           "tls_private_key",
                           "database",
                           "state_directory",
                           "node_name",
                           "worker_threads",
                           "max_pkcs11_sessions",
                           "request_timeout_ms",
                           "keep_alive_timeout_ms",
                           "max_active_keys",
                           "default_key_bits",
                           "token_ttl_default",
                           "token_ttl_min",
                           "token_ttl_max",
                           "rotation_grace_seconds",
                           "token_issuer",
                           "public_url",
                           "jwks_max_age",
                           "revocations_max_age",
                           "revocation_feed_lifetime",
                           "publication_signs_per_second",
                           "events_max_subscribers",
                           "events_heartbeat_seconds",
                           "log_requests",
                           "log_events",
                           "log_file",
                           "user",
                           "keeper_user",
                           "front_user",
                           "tls_min_version",
                           "tls_ciphers",
                           "tls_ciphersuites",
                           "tls_client_ca",
                           "hsts_max_age",
                           "rate_limit_per_second",
                           "rate_limit_burst",
                           "auth_failures_per_minute",
                           "auth_failure_burst",
                           "process_model",
                           "keeper_socket",
                           "keeper_timeout_ms",
                           "keeper_generate_timeout_ms",
                           "keeper_watchdog_ms",
                           "audit_flush_seconds",
                           "audit_checkpoint_events",
                           "audit_checkpoint_seconds",
                           "audit_every_signature"};
    size_t settings = 0;
    const char *prev = NULL;
    for (char *line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (line[0] != '#') {
            assert_non_null(prev);
            assert_int_equal(prev[0], '#');
            assert_non_null(strstr(line, " ="));
            assert_true(settings < sizeof(names) / sizeof(names[0]));
            assert_int_equal(strncmp(line, names[settings], strlen(names[settings])), 0);
            settings++;
        }
        prev = line;
    }
    assert_int_equal(settings, sizeof(names) / sizeof(names[0]));
    free(buf);
}

static void test_unmentioned_settings_keep_their_defaults(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "worker_threads = 8\n"), 0);
    cfg_defaults(&fx->d, fx->dir);
    fx->d.worker_threads = 8;
    assert_memory_equal(&fx->c, &fx->d, sizeof(cfg));
}

static void test_comments_blank_lines_and_crlf_line_ends_are_accepted(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "# a comment\n\n   \t\n  # indented comment\r\n"
                                   "port=9000\r\n\tlog_requests   =   true  \n"
                                   "token_issuer = https://signd.example/#x"),
                     0);
    assert_int_equal(fx->c.port, 9000);
    assert_true(fx->c.log_requests);
    assert_string_equal(fx->c.token_issuer, "https://signd.example/#x");
}

static void test_every_value_kind_is_parsed(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "listen_address = 0.0.0.0\n"
                                   "token = pkcs11:token=signd;serial=1234\n"
                                   "max_pkcs11_sessions = 16\n"
                                   "default_key_bits = 3072\n"
                                   "keep_alive_timeout_ms = 0\n"
                                   "max_active_keys = 10\n"
                                   "log_requests = false\n"
                                   "token_issuer = signd\n"),
                     0);
    assert_string_equal(fx->c.listen_address, "0.0.0.0");
    assert_string_equal(fx->c.token, "pkcs11:token=signd;serial=1234");
    assert_int_equal(fx->c.max_pkcs11_sessions, 16);
    assert_int_equal(fx->c.default_key_bits, 3072);
    assert_int_equal(fx->c.keep_alive_timeout_ms, 0);
    assert_int_equal(fx->c.max_active_keys, 10);
    assert_false(fx->c.log_requests);
    assert_string_equal(fx->c.token_issuer, "signd");
}

static void test_pkcs11_sessions_zero_means_one_per_thread_plus_four(void **state)
{
    fixture *fx = *state;
    cfg_defaults(&fx->d, NULL);
    assert_int_equal(cfg_pkcs11_sessions(&fx->d), 64 + 256 + 4); /* workers, subscribers */
    fx->d.events_max_subscribers = 0;
    assert_int_equal(cfg_pkcs11_sessions(&fx->d), 68);
    fx->d.max_pkcs11_sessions = 16;
    assert_int_equal(cfg_pkcs11_sessions(&fx->d), 16);
}

/* ---- paths ----------------------------------------------------------------------------- */

static void test_relative_paths_resolve_against_the_config_directory(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "pin_file = secrets/pin\n"
                                   "database = /var/lib/signd/appliance.db\n"
                                   "tls_certificate = ../shared/cert.pem\n"),
                     0);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "%s/secrets/pin", fx->dir);
    assert_string_equal(fx->c.pin_file, want);
    assert_string_equal(fx->c.database, "/var/lib/signd/appliance.db");
    snprintf(want, sizeof(want), "%s/../shared/cert.pem", fx->dir);
    assert_string_equal(fx->c.tls_certificate, want);
    snprintf(want, sizeof(want), "%s/tls/key.pem", fx->dir); /* a default, resolved too */
    assert_string_equal(fx->c.tls_private_key, want);
}

static void test_config_given_by_relative_path_yields_absolute_paths(void **state)
{
    fixture *fx = *state;
    char sub[PATH_MAX + 8], conf[PATH_MAX + 32], cwd[PATH_MAX];
    snprintf(sub, sizeof(sub), "%s/sub", fx->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(conf, sizeof(conf), "%s/appliance.conf", sub);
    write_file(conf, "pin_file = pin\n", 15);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(fx->dir), 0);
    int rc = cfg_load("sub/appliance.conf", &fx->c, fx->err, sizeof(fx->err));
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    char want[PATH_MAX + 16];
    snprintf(want, sizeof(want), "%s/pin", sub);
    assert_string_equal(fx->c.pin_file, want);
}

static void test_a_postgresql_database_is_a_uri_and_needs_a_state_directory(void **state)
{
    fixture *fx = *state;
    const char *uris[] = {"postgresql://signd@/signd?host=/run/postgresql",
                          "postgres://db.example/signd?passfile=/etc/signd/pgpass"};
    for (size_t i = 0; i < 2; i++) {
        char text[512];
        snprintf(text, sizeof(text), "database = %s\nstate_directory = node\n", uris[i]);
        assert_int_equal(load_text(fx, text), 0);
        assert_string_equal(fx->c.database, uris[i]); /* not resolved as a path */
        char want[PATH_MAX + 64], got[CFG_PATH_MAX];
        snprintf(want, sizeof(want), "%s/node", fx->dir);
        assert_string_equal(fx->c.state_directory, want);
        assert_int_equal(cfg_state_dir(&fx->c, got, sizeof(got)), 0);
        assert_string_equal(got, want);
        assert_true(cfg_database_is_uri(fx->c.database));
    }
    /* A password in the URI would reach the log: refused, naming the way instead. */
    const char *secret[] = {"postgresql://signd:hunter2@db.example/signd",
                            "postgres://signd:@/signd?host=/run/postgresql",
                            "postgresql:///signd?host=/run/postgresql&password=hunter2",
                            "postgresql:///signd?password=hunter2"};
    for (size_t i = 0; i < 4; i++) {
        char text[512];
        snprintf(text, sizeof(text), "database = %s\nstate_directory = node\n", secret[i]);
        assert_int_equal(load_text(fx, text), -1);
        assert_non_null(strstr(fx->err, "a password must not be in the URI"));
        assert_null(strstr(fx->err, "hunter2"));
    }
    /* Without state_directory: the node's own files would have nowhere to go. */
    assert_int_equal(load_text(fx, "database = postgresql://signd@/signd\n"), -1);
    assert_non_null(strstr(fx->err, "state_directory must be set"));
    /* A file's state directory is its directory, as before. */
    assert_int_equal(load_text(fx, "database = /var/lib/signd/appliance.db\n"), 0);
    char got[CFG_PATH_MAX];
    assert_int_equal(cfg_state_dir(&fx->c, got, sizeof(got)), 0);
    assert_string_equal(got, "/var/lib/signd");
    assert_false(cfg_database_is_uri(fx->c.database));
    assert_int_equal(load_text(fx, "database = /appliance.db\n"), 0);
    assert_int_equal(cfg_state_dir(&fx->c, got, sizeof(got)), 0);
    assert_string_equal(got, "/");
    /* A relative name that merely starts like one is a path. */
    assert_int_equal(load_text(fx, "database = postgresql.db\n"), 0);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "%s/postgresql.db", fx->dir);
    assert_string_equal(fx->c.database, want);
}

static void test_node_name_is_checked_and_defaults_to_the_host_name(void **state)
{
    fixture *fx = *state;
    char node[CFG_NODE_MAX];
    assert_int_equal(load_text(fx, "node_name = node-1.eu_west\n"), 0);
    assert_int_equal(cfg_node_name(&fx->c, node), 0);
    assert_string_equal(node, "node-1.eu_west");
    char long_name[80];
    memset(long_name, 'n', 63);
    long_name[63] = '\0';
    char text[128];
    snprintf(text, sizeof(text), "node_name = %s\n", long_name);
    assert_int_equal(load_text(fx, text), 0);
    assert_rejected(fx, "node_name = a b\n", "1: 'node_name' must be 1 to 63");
    assert_rejected(fx, "node_name = n/1\n", "1: 'node_name' must be 1 to 63");
    snprintf(text, sizeof(text), "node_name = %sn\n", long_name);
    assert_int_equal(load_text(fx, text), -1);
    assert_int_equal(load_text(fx, "worker_threads = 8\n"), 0);
    assert_int_equal(cfg_node_name(&fx->c, node), 0);
    char host[256];
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    host[63] = '\0';
    assert_true(cfg_node_name_ok(node));
    assert_int_equal(strncmp(node, host, strlen(node)), 0);
}

static void test_module_bare_name_is_left_to_the_loader(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "pkcs11_module = libsofthsm2.so\n"), 0);
    assert_string_equal(fx->c.pkcs11_module, "libsofthsm2.so");
    assert_int_equal(load_text(fx, "pkcs11_module = modules/libvendor.so\n"), 0);
    char want[PATH_MAX + 32];
    snprintf(want, sizeof(want), "%s/modules/libvendor.so", fx->dir);
    assert_string_equal(fx->c.pkcs11_module, want);
}

static void test_empty_softhsm2_conf_stays_empty_for_a_hardware_module(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "softhsm2_conf =\n"), 0);
    assert_string_equal(fx->c.softhsm2_conf, "");
}

static void test_pkcs11_env_splits_into_allowed_module_variables(void **state)
{
    fixture *fx = *state;
    char env[CFG_ENV_VARS][CFG_ENV_MAX];
    assert_int_equal(load_text(fx, "softhsm2_conf =\n"), 0);
    assert_string_equal(fx->c.pkcs11_env, "");
    assert_int_equal(cfg_env_entries(fx->c.pkcs11_env, env), 0);
    assert_int_equal(load_text(fx, "pkcs11_env = TPM2_PKCS11_STORE=/d/hsm/tpm2,TPM2_PKCS11_TCTI="
                                   "tabrmd:bus_type=session,DBUS_SESSION_BUS_ADDRESS=unix:path="
                                   "/d/hsm/bus/socket\n"),
                     0);
    assert_int_equal(cfg_env_entries(fx->c.pkcs11_env, env), 3);
    assert_string_equal(env[0], "TPM2_PKCS11_STORE=/d/hsm/tpm2");
    assert_string_equal(env[1], "TPM2_PKCS11_TCTI=tabrmd:bus_type=session");
    assert_string_equal(env[2], "DBUS_SESSION_BUS_ADDRESS=unix:path=/d/hsm/bus/socket");
    assert_int_equal(load_text(fx, "pkcs11_env = YUBIHSM_PKCS11_CONF=/etc/yubihsm_pkcs11.conf\n"),
                     0);
    assert_int_equal(cfg_env_entries(fx->c.pkcs11_env, env), 1);
    /* A value may be empty; the split keeps every '=' after the first in the value. */
    assert_int_equal(load_text(fx, "pkcs11_env = OCK_CONFIG=,TSS2_LOG=all+none=x\n"), 0);
    assert_int_equal(cfg_env_entries(fx->c.pkcs11_env, env), 2);
    assert_string_equal(env[1], "TSS2_LOG=all+none=x");
}

static void test_pkcs11_env_refuses_other_variables_secrets_and_bad_lists(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "pkcs11_env = LD_PRELOAD=/tmp/x.so\n", "1: 'pkcs11_env' sets a variable");
    assert_rejected(fx, "pkcs11_env = TPM2_PKCS11_STORE=/a,PATH=/tmp\n",
                    "1: 'pkcs11_env' sets a variable");
    assert_rejected(fx, "pkcs11_env = SOFTHSM2_CONF=/a/softhsm2.conf\n",
                    "1: 'pkcs11_env' sets a variable");
    assert_rejected(fx, "pkcs11_env = TPM2_PKCS11_PIN=1234\n", "1: 'pkcs11_env' names a secret");
    assert_rejected(fx, "pkcs11_env = OCK_Passphrase=x\n", "1: 'pkcs11_env' names a secret");
    assert_rejected(fx, "pkcs11_env = TPM2_PKCS11_OWNER_AUTH=x\n",
                    "1: 'pkcs11_env' names a secret");
    assert_rejected(fx, "pkcs11_env = TPM2_PKCS11_STORE\n", "1: 'pkcs11_env' must be NAME=value");
    assert_rejected(fx, "pkcs11_env = TPM2_PKCS11_STORE=/a,\n",
                    "1: 'pkcs11_env' must be NAME=value");
    assert_rejected(fx, "pkcs11_env = =x\n", "1: 'pkcs11_env' must be NAME=value");
    assert_rejected(fx, "pkcs11_env = TPM2_PKCS11_=x\n", "1: 'pkcs11_env' sets a variable");
    assert_rejected(fx,
                    "pkcs11_env = TSS2_A=1,TSS2_B=1,TSS2_C=1,TSS2_D=1,TSS2_E=1,TSS2_F=1,"
                    "TSS2_G=1,TSS2_H=1,TSS2_I=1\n",
                    "1: 'pkcs11_env' has more than 8 entries");
    char env[CFG_ENV_VARS][CFG_ENV_MAX];
    assert_int_equal(cfg_env_entries("PATH=/tmp", env), -1);
}

static void test_path_too_long_once_resolved_is_rejected(void **state)
{
    fixture *fx = *state;
    char *text = malloc(CFG_PATH_MAX + 32);
    assert_non_null(text);
    int n = snprintf(text, CFG_PATH_MAX + 32, "pin_file = ");
    memset(text + n, 'a', CFG_PATH_MAX - 20);
    strcpy(text + n + CFG_PATH_MAX - 20, "\n");
    assert_rejected(fx, text, "1: 'pin_file' is longer than 4095 bytes once resolved");
    free(text);
}

/* ---- rejections ------------------------------------------------------------------------ */

static void test_unknown_setting_is_rejected_with_file_line_and_a_suggestion(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "# comment\nport = 8443\nworker_thread = 4\n",
                    "3: unknown setting 'worker_thread' (did you mean 'worker_threads'?)");
    assert_rejected(fx, "frobnicate = 1\n", "1: unknown setting 'frobnicate'");
    assert_null(strstr(fx->err, "did you mean"));
}

static void test_duplicate_setting_is_rejected_naming_the_first_line(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "port = 1\n\nport = 2\n",
                    "3: duplicate setting 'port' (first set on line 1)");
}

static void test_malformed_lines_are_rejected(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "port 8443\n", "1: expected 'key = value'");
    assert_rejected(fx, "\n = 5\n", "2: a setting name is missing");
    assert_rejected(fx, "Port = 8443\n", "1: malformed setting name");
    assert_rejected(fx, "work threads = 4\n", "1: malformed setting name");
    assert_rejected(fx, "port = 8443 # the port\n", "1: a comment must be on a line of its own");
    assert_rejected(fx, "token = \"signd\"\n", "1: the value of 'token' is quoted");
    assert_rejected(fx, "token = sig\x01nd\n", "1: control character in the value of 'token'");
}

static void test_out_of_range_integers_are_rejected(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "port = 0\n", "1: 'port' must be between 1 and 65535, got 0");
    assert_rejected(fx, "port = 65536\n", "1: 'port' must be between 1 and 65535, got 65536");
    assert_rejected(fx, "worker_threads = 1\n", "1: 'worker_threads' must be between 2 and 1024");
    assert_rejected(fx, "worker_threads = 1025\n", "1: 'worker_threads' must be between 2");
    assert_rejected(fx, "max_pkcs11_sessions = 4097\n", "1: 'max_pkcs11_sessions' must be");
    assert_rejected(fx, "request_timeout_ms = 99\n", "1: 'request_timeout_ms' must be between");
    assert_rejected(fx, "keep_alive_timeout_ms = 600001\n", "1: 'keep_alive_timeout_ms' must");
    assert_rejected(fx, "jwks_max_age = 86401\n", "1: 'jwks_max_age' must be between 0 and 86400");
    assert_rejected(fx, "revocations_max_age = 86401\n", "1: 'revocations_max_age' must be");
    assert_rejected(fx, "token_ttl_max = 31536001\n", "1: 'token_ttl_max' must be between 1");
    assert_rejected(fx, "token_ttl_min = 0\n", "1: 'token_ttl_min' must be between 1");
    assert_rejected(fx, "port = 99999999999999999999999\n", "1: 'port' must be between 1 and");
}

static void test_max_active_keys_can_be_lowered_but_never_raised(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "max_active_keys = 1\n"), 0);
    assert_int_equal(fx->c.max_active_keys, 1);
    assert_rejected(fx, "max_active_keys = 1001\n",
                    "1: 'max_active_keys' must be between 1 and 1000");
    assert_rejected(fx, "max_active_keys = 0\n", "1: 'max_active_keys' must be between 1 and 1000");
}

static void test_integers_must_be_unsigned_decimal(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "port = -1\n", "1: 'port' must be an unsigned integer, got '-1'");
    assert_rejected(fx, "port = 0x20fb\n", "1: 'port' must be an unsigned integer");
    assert_rejected(fx, "port = 84 43\n", "1: 'port' must be an unsigned integer");
    assert_rejected(fx, "port =\n", "1: 'port' must be an unsigned integer, got ''");
}

static void test_key_bits_must_be_2048_3072_or_4096(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "default_key_bits = 1024\n", "1: 'default_key_bits' must be between");
    assert_rejected(fx, "default_key_bits = 2049\n",
                    "1: 'default_key_bits' must be 2048, 3072 or 4096");
    assert_int_equal(load_text(fx, "default_key_bits = 4096\n"), 0);
    assert_int_equal(fx->c.default_key_bits, 4096);
}

static void test_booleans_are_true_or_false_only(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "log_requests = yes\n", "1: 'log_requests' must be true or false");
    assert_rejected(fx, "log_requests = TRUE\n", "1: 'log_requests' must be true or false");
    assert_rejected(fx, "log_requests = 1\n", "1: 'log_requests' must be true or false");
}

static void test_strings_are_checked(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "pin_file =\n", "1: 'pin_file' must not be empty");
    assert_rejected(fx, "token =\n", "1: 'token' must not be empty");
    assert_rejected(fx, "listen_address = localhost\n", "1: 'listen_address' must be an IPv4");
    assert_rejected(fx, "listen_address = ::1\n", "1: 'listen_address' must be an IPv4");
    assert_rejected(fx, "token = a-label-that-is-longer-than-32-bytes\n",
                    "1: 'token' is longer than a token label");
    assert_rejected(fx, "token_issuer = h\xc3\xa9llo\n", "1: 'token_issuer' must be printable");
    assert_rejected(fx, "tls_min_version = 1.1\n", "1: 'tls_min_version' must be 1.2 or 1.3");
    /* process_model: the key still loads with split, the only model left. */
    assert_rejected(fx, "process_model = single\n", "1: 'process_model' must be split: only split");
    assert_rejected(fx, "process_model = other\n", "1: 'process_model' must be split: only split");
    char err[CFG_ERR_MAX];
    assert_int_equal(
        cfg_parse("process_model = split\n", 22, "a.conf", NULL, &fx->c, err, sizeof(err)), 0);
    assert_string_equal(fx->c.process_model, "split");
    assert_rejected(fx, "user = Root\n", "1: 'user' must be a user name");
    assert_rejected(fx, "user = -x\n", "1: 'user' must be a user name");
    assert_rejected(fx, "keeper_user = Root\n", "1: 'keeper_user' must be a user name");
    assert_rejected(fx, "front_user = a b\n", "1: 'front_user' must be a user name");
}

static void test_an_origin_is_a_scheme_a_lowercase_host_and_a_port_only(void **state)
{
    (void)state;
    const char *good[] = {"https://player.example.com", "http://a.b",      "https://10.0.0.1:8443",
                          "https://x-y.example:1",      "https://h:65535", NULL};
    const char *bad[] = {"https://Player.example.com",
                         "https://a.example/",
                         "https://a.example/path",
                         "https://a.example?q",
                         "ftp://a.example",
                         "https://user@a.example",
                         "https://a.example:0",
                         "https://a.example:65536",
                         "https://a.example:080",
                         "https://a.example:",
                         "https://",
                         "https://.a",
                         "https://a..b",
                         "https://-a.b",
                         "https://a-.b",
                         "https://a.b.",
                         "a.example",
                         "",
                         NULL};
    for (int i = 0; good[i] != NULL; i++)
        assert_true(cfg_origin_ok(good[i]));
    for (int i = 0; bad[i] != NULL; i++)
        assert_false(cfg_origin_ok(bad[i]));
    assert_false(cfg_origin_ok(NULL));
    char longest[CFG_ORIGIN_MAX + 2];
    memcpy(longest, "https://", 8);
    memset(longest + 8, 'a', sizeof(longest) - 9);
    longest[sizeof(longest) - 1] = '\0';
    for (size_t i = 8 + 60; i < sizeof(longest) - 1; i += 61)
        longest[i] = '.';
    assert_false(cfg_origin_ok(longest)); /* one byte over */
    longest[sizeof(longest) - 2] = '\0';
    assert_true(cfg_origin_ok(longest));
}

static void test_public_url_must_be_an_origin(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "public_url = https://signd.example.com:8443\n"), 0);
    assert_rejected(fx, "public_url = https://signd.example.com/\n", "1: 'public_url' must be");
}

static void test_obsolete_admin_credential_file_is_accepted_and_ignored(void **state)
{
    fixture *fx = *state;
    assert_int_equal(load_text(fx, "admin_credential_file = admin.credential\nport = 9000\n"), 0);
    assert_int_equal(fx->c.port, 9000);
}

static void test_ttl_min_default_max_must_be_ordered(void **state)
{
    fixture *fx = *state;
    assert_rejected(fx, "token_ttl_default = 30\n",
                    "1: token_ttl_min (60) must not be greater than token_ttl_default (30)");
    assert_rejected(fx, "token_ttl_max = 100\ntoken_ttl_default = 600\n",
                    "2: token_ttl_default (600) must not be greater than token_ttl_max (100)");
    assert_rejected(fx, "token_ttl_min = 7200\n\n# later\ntoken_ttl_max = 9000\n",
                    "1: token_ttl_min (7200) must not be greater than token_ttl_default");
    assert_int_equal(load_text(fx, "token_ttl_min = 5\ntoken_ttl_default = 5\ntoken_ttl_max = 5\n"),
                     0);
    assert_int_equal(fx->c.token_ttl_default, 5);
}

static void test_overlong_line_is_rejected(void **state)
{
    fixture *fx = *state;
    char *text = malloc(CFG_LINE_MAX + 64);
    assert_non_null(text);
    strcpy(text, "port = 1\n#");
    memset(text + 10, 'x', CFG_LINE_MAX);
    strcpy(text + 10 + CFG_LINE_MAX, "\n");
    assert_rejected(fx, text, "2: line longer than 4096 bytes");
    /* A line of exactly the bound is fine. */
    text[10 + CFG_LINE_MAX - 1] = '\n';
    text[10 + CFG_LINE_MAX] = '\0';
    assert_int_equal(load_text(fx, text), 0);
    free(text);
}

static void test_file_larger_than_one_mib_is_rejected(void **state)
{
    fixture *fx = *state;
    size_t n = CFG_FILE_MAX + 1;
    char *text = malloc(n + 64);
    assert_non_null(text);
    for (size_t i = 0; i < n; i += 64) {
        memset(text + i, '#', 64);
        text[i + 63] = '\n';
    }
    text[n] = '\0';
    assert_int_equal(load_text(fx, text), -1);
    assert_non_null(strstr(fx->err, "larger than 1048576 bytes"));
    text[n - 1] = '\0'; /* exactly 1 MiB of comments loads */
    assert_int_equal(load_text(fx, text), 0);
    free(text);
}

static void test_nul_byte_is_rejected(void **state)
{
    fixture *fx = *state;
    write_file(fx->path, "port = 1\ntoken = a\0b\n", 21);
    assert_int_equal(cfg_load(fx->path, &fx->c, fx->err, sizeof(fx->err)), -1);
    assert_non_null(strstr(fx->err, "appliance.conf:2: NUL byte"));
}

static void test_missing_file_and_directory_are_rejected_naming_the_path(void **state)
{
    fixture *fx = *state;
    assert_int_equal(cfg_load(fx->path, &fx->c, fx->err, sizeof(fx->err)), -1);
    assert_non_null(strstr(fx->err, fx->path));
    assert_non_null(strstr(fx->err, "cannot open"));
    assert_int_equal(cfg_load(fx->dir, &fx->c, fx->err, sizeof(fx->err)), -1);
    assert_non_null(strstr(fx->err, "not a regular file"));
}

static void test_failed_load_leaves_the_output_untouched(void **state)
{
    fixture *fx = *state;
    memset(&fx->c, 0x5a, sizeof(fx->c));
    memset(&fx->d, 0x5a, sizeof(fx->d));
    assert_int_equal(load_text(fx, "port = 1\nworker_threads = 1\n"), -1);
    assert_memory_equal(&fx->c, &fx->d, sizeof(cfg));
}

static void test_error_message_is_truncated_to_the_buffer(void **state)
{
    fixture *fx = *state;
    write_file(fx->path, "nope = 1\n", 9);
    char small[8];
    memset(small, 'z', sizeof(small));
    assert_int_equal(cfg_load(fx->path, &fx->c, small, sizeof(small)), -1);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_int_equal(cfg_load(fx->path, &fx->c, NULL, 0), -1);
}

/* ---- hashing --------------------------------------------------------------------------- */

static void test_sha256_hex_is_the_digest_of_the_file_bytes(void **state)
{
    fixture *fx = *state;
    char hex[65];
    write_file(fx->path, "abc", 3);
    cfg_sha256_hex(fx->path, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    write_file(fx->path, "", 0);
    cfg_sha256_hex(fx->path, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_sha256_hex_of_an_unreadable_file_is_empty(void **state)
{
    fixture *fx = *state;
    char hex[65];
    memset(hex, 'x', sizeof(hex));
    cfg_sha256_hex(fx->path, hex); /* does not exist */
    assert_string_equal(hex, "");
}

/* ---- parsing from a buffer (cfg_parse, which cfg_load runs on the file's bytes) -------- */

static void test_parse_of_the_bytes_equals_loading_the_file(void **state)
{
    fixture *fx = *state;
    static const char *const texts[] = {
        "port = 9443\r\n# c\n\npin_file = secrets/pin\ntoken_ttl_max = 7200\n",
        "port = 9443\nworker_thread = 4\n",
        "token_ttl_min = 600\ntoken_ttl_max = 60\n",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        int rc = load_text(fx, texts[i]);
        static cfg parsed;
        char err[CFG_ERR_MAX] = "";
        memset(&parsed, 0, sizeof(parsed));
        if (rc != 0)
            memcpy(&parsed, &fx->c, sizeof(parsed)); /* both leave *out untouched */
        size_t len = strlen(texts[i]);
        int parsed_rc = cfg_parse(texts[i], len, fx->path, fx->dir, &parsed, err, sizeof(err));
        assert_int_equal(parsed_rc, rc);
        assert_memory_equal(&parsed, &fx->c, sizeof(parsed));
        assert_string_equal(err, fx->err);
    }
}

static void test_parse_reads_len_bytes_and_refuses_more_than_one_mib(void **state)
{
    fixture *fx = *state;
    const char text[] = "port = 9443worker_threads = x";
    char err[CFG_ERR_MAX];
    assert_int_equal(cfg_parse(text, 11, "a.conf", NULL, &fx->c, err, sizeof(err)), 0);
    assert_int_equal(fx->c.port, 9443);
    assert_string_equal(fx->c.pin_file, "pin"); /* no base directory: relative */
    assert_int_equal(cfg_parse("port = 1\0\n", 10, "a.conf", NULL, &fx->c, err, sizeof(err)), -1);
    assert_string_equal(err, "a.conf:1: NUL byte in the line");
    /* Refused on its length, before a byte is read. */
    assert_int_equal(cfg_parse(text, CFG_FILE_MAX + 1, "a.conf", NULL, &fx->c, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "a.conf: larger than"));
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_written_defaults_load_back_as_the_defaults),
        T(test_defaults_are_the_documented_values),
        T(test_defaults_without_base_dir_keep_paths_relative),
        T(test_port_given_to_write_defaults_replaces_the_default_port),
        T(test_write_defaults_refuses_a_port_out_of_range),
        T(test_written_defaults_comment_every_setting),
        T(test_unmentioned_settings_keep_their_defaults),
        T(test_comments_blank_lines_and_crlf_line_ends_are_accepted),
        T(test_every_value_kind_is_parsed),
        T(test_pkcs11_sessions_zero_means_one_per_thread_plus_four),
        T(test_relative_paths_resolve_against_the_config_directory),
        T(test_config_given_by_relative_path_yields_absolute_paths),
        T(test_a_postgresql_database_is_a_uri_and_needs_a_state_directory),
        T(test_node_name_is_checked_and_defaults_to_the_host_name),
        T(test_module_bare_name_is_left_to_the_loader),
        T(test_empty_softhsm2_conf_stays_empty_for_a_hardware_module),
        T(test_pkcs11_env_splits_into_allowed_module_variables),
        T(test_pkcs11_env_refuses_other_variables_secrets_and_bad_lists),
        T(test_path_too_long_once_resolved_is_rejected),
        T(test_unknown_setting_is_rejected_with_file_line_and_a_suggestion),
        T(test_duplicate_setting_is_rejected_naming_the_first_line),
        T(test_malformed_lines_are_rejected),
        T(test_out_of_range_integers_are_rejected),
        T(test_max_active_keys_can_be_lowered_but_never_raised),
        T(test_integers_must_be_unsigned_decimal),
        T(test_key_bits_must_be_2048_3072_or_4096),
        T(test_booleans_are_true_or_false_only),
        T(test_strings_are_checked),
        T(test_an_origin_is_a_scheme_a_lowercase_host_and_a_port_only),
        T(test_public_url_must_be_an_origin),
        T(test_obsolete_admin_credential_file_is_accepted_and_ignored),
        T(test_ttl_min_default_max_must_be_ordered),
        T(test_overlong_line_is_rejected),
        T(test_file_larger_than_one_mib_is_rejected),
        T(test_nul_byte_is_rejected),
        T(test_missing_file_and_directory_are_rejected_naming_the_path),
        T(test_failed_load_leaves_the_output_untouched),
        T(test_error_message_is_truncated_to_the_buffer),
        T(test_sha256_hex_is_the_digest_of_the_file_bytes),
        T(test_sha256_hex_of_an_unreadable_file_is_empty),
        T(test_parse_of_the_bytes_equals_loading_the_file),
        T(test_parse_reads_len_bytes_and_refuses_more_than_one_mib),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
