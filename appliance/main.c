/*
 * signd: the signing appliance daemon.
 *
 *   signd CONFIG_FILE
 *
 * Everything else comes from the configuration file (see docs/configuration.md). Start-up
 * order: configuration -> registry -> token -> reconcile -> credentials -> publication ->
 * HTTPS. Shutdown (SIGTERM, SIGINT): HTTPS stops and its workers finish -> token closed
 * (only after every worker is out of the PKCS#11 module) -> registry closed.
 */
#include "api/api.h"
#include "appliance/config.h"
#include "appliance/credentials.h"
#include "appliance/harden.h"
#include "appliance/keeper.h"
#include "appliance/reconcile.h"
#include "appliance/registry.h"
#include "appliance/server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what, const char *msg)
{
    fprintf(stderr, "signd: %s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: signd CONFIG_FILE\n");
        return 2;
    }
    /* Keys live in this process's memory with SoftHSM2, and the PIN passes through it:
     * no core dumps, no ptrace by other processes of the same user, private files. */
    hd_early();

    static cfg c;
    char err[512];
    if (cfg_load(argv[1], &c, err, sizeof(err)) != 0)
        return die("configuration", err);
    if (c.softhsm2_conf[0] != '\0' && setenv("SOFTHSM2_CONF", c.softhsm2_conf, 1) != 0)
        return die("configuration", "cannot set SOFTHSM2_CONF");

    /* Signals go to sigwait below, never to a worker thread. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    reg *rg = NULL;
    if (reg_open(c.database, c.max_active_keys, &rg) != REG_OK)
        return die(c.database, reg_last_error());

    hsm_config hc = {
        .module_path = c.pkcs11_module,
        .token = c.token,
        .pin_file = c.pin_file,
        .max_sessions = cfg_pkcs11_sessions(&c),
    };
    kp *k = NULL;
    if (kp_open(&hc, &k, err, sizeof(err)) != HSM_OK) {
        reg_close(rg);
        return die("token", err);
    }

    rec_report rep;
    if (rec_run(k, rg, stderr, &rep) != 0) {
        kp_close(k);
        reg_close(rg);
        return die("reconcile", "token and registry could not be made to agree");
    }
    fprintf(stderr,
            "signd: reconcile: %u orphan objects destroyed, %u revoked objects destroyed, "
            "%u keys marked broken\n",
            rep.orphans_destroyed, rep.revoked_destroyed, rep.marked_broken);

    cred_store *cs = NULL;
    if (cred_open(c.database, &cs) != CRED_OK) {
        kp_close(k);
        reg_close(rg);
        return die(c.database, cred_last_error());
    }
    if (cred_count_active(cs, CRED_ROLE_ADMIN) == 0)
        fprintf(stderr, "signd: warning: no active admin credential; create one offline with "
                        "`signd-provision admin-credential DATA_DIR`\n");

    api_env env = {.cfg = &c, .reg = rg, .kp = k, .creds = cs};
    api_publish_refresh(&env);
    srv *s = srv_start(&env, err, sizeof(err));
    if (s == NULL) {
        cred_close(cs);
        kp_close(k);
        reg_close(rg);
        return die("https", err);
    }
    /* The port is bound and every secret read: from here on, `user` if set (harden.h). */
    if (hd_check_data_owner(&c, err, sizeof(err)) != 0 ||
        hd_drop_user(c.user, err, sizeof(err)) != 0) {
        srv_stop(s);
        cred_close(cs);
        api_publish_free();
        kp_close(k);
        reg_close(rg);
        return die("privileges", err);
    }
    printf("signd: listening on https://%s:%d (%zu active keys)\n", c.listen_address, srv_port(s),
           reg_count(rg, REG_ACTIVE));
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "signd: signal %d: stopping\n", sig);
    srv_stop(s);
    cred_close(cs);
    api_publish_free();
    kp_close(k);
    reg_close(rg);
    return 0;
}
