/*
 * signd-keeper: the only program that loads the PKCS#11 module and reads the PIN,
 * executed by the supervisor (signd, appliance/supervisor/main.c) and by nothing else; its
 * command line is spawn.h's.
 *
 * It runs as keeper_user (or `user`), switched by the supervisor before the execve, with
 * SOFTHSM2_CONF (softhsm2_conf) and CREDENTIALS_DIRECTORY (pin_credential) its only
 * environment. Its seccomp filter (hd_keeper_filter) is in place before the module is
 * loaded, so nothing the module runs escapes it; then it logs in and serves the keeper
 * protocol on keeper_socket (keeperd.h), letting the front's account (--peer-uid) connect.
 * It writes "R" on its ready descriptor once it serves. SIGTERM: stop serving, close the
 * token, exit 0 (SIGINT is ignored: the supervisor orders the shutdown, see spn_begin).
 */
#include "appliance/common/config.h"
#include "appliance/common/harden.h"
#include "appliance/common/spawn.h"
#include "appliance/keeper/keeperd.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int die(const char *what, const char *msg)
{
    fprintf(stderr, "signd: %s: %s\n", what, msg);
    return 1;
}

static void *keeper_serve(void *arg)
{
    kpd_serve(arg);
    return NULL;
}

static int keeper_run(const cfg *c, const sigset_t *sigs, const spn_args *a)
{
    char err[512];
    kpd *d = NULL;
    if (kpd_open(c, &d, err, sizeof(err)) != 0)
        return die("keeper", err);
    /* One account per role: the supervisor names the front's uid when it differs from
     * this process's. */
    if (a->peer_uid >= 0 && kpd_allow_peer(d, (uid_t)a->peer_uid, err, sizeof(err)) != 0) {
        kpd_close(d);
        return die("keeper", err);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, keeper_serve, d) != 0) {
        kpd_close(d);
        return die("keeper", "cannot start its thread");
    }
    (void)!write(a->ready_fd, "R", 1);
    close(a->ready_fd);
    int sig = 0;
    sigwait(sigs, &sig);
    kpd_stop(d);
    pthread_join(t, NULL);
    kpd_close(d);
    return 0;
}

int main(int argc, char **argv)
{
    sigset_t sigs;
    spn_begin("keeper", &sigs);
    char err[CFG_ERR_MAX];
    spn_args a;
    if (spn_parse(argc, argv, &a, err, sizeof(err)) != 0)
        return die("signd-keeper", err);
    static cfg c;
    if (spn_config_load(a.config_fd, a.config_path, &c, NULL, err, sizeof(err)) != 0)
        return die("configuration", err);
    close(a.config_fd);
    /* pin_credential: from here on pin_file names the credential's file. */
    if (cfg_pin_path(&c, c.pin_file, sizeof(c.pin_file), err, sizeof(err)) != 0)
        return die("configuration", err);
    /* Before the module is loaded: nothing it or a bug in it runs escapes the filter. */
    if (hd_keeper_filter(err, sizeof(err)) != 0)
        return die("seccomp", err);
    return keeper_run(&c, &sigs, &a);
}
