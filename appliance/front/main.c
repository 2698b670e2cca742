/*
 * signd-front: the appliance's HTTPS front, executed by the supervisor (signd, in
 * appliance/supervisor/main.c) and by nothing else; its command line is spawn.h's.
 *
 *   signd-front --routes   prints the route table (what `signd --routes` shows) and exits
 *
 * It runs as front_user (or `user`), switched by the supervisor before the execve, and
 * holds the registry, credentials, reconcile (through the keeper), publication, the
 * rotation scheduler (rotation.h) and CivetWeb. It is linked with no hsm/ and no keeper/
 * object and loads no module: PKCS#11 is the keeper's, reached over keeper_socket
 * (kproto/keeper.h). Its first act, while it has one thread, is its seccomp filter
 * (hd_front_filter: no exec, no ptrace or other process's memory, no namespace), which
 * every thread CivetWeb starts inherits. It writes "R" on its ready descriptor once it
 * serves, and prints the "listening" line on the first start (--announce). SIGTERM:
 * in-flight requests finish, then exit 0 (SIGINT is ignored: the supervisor orders the
 * shutdown, see spn_begin).
 */
#include "api/api.h"
#include "appliance/common/config.h"
#include "appliance/common/harden.h"
#include "appliance/common/jlog.h"
#include "appliance/common/metrics.h"
#include "appliance/common/spawn.h"
#include "appliance/core/audit.h"
#include "appliance/core/probe.h"
#include "appliance/core/watch.h"
#include "appliance/core/publish.h"
#include "appliance/core/reconcile.h"
#include "appliance/core/rotation.h"
#include "appliance/front/server.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/credentials.h"
#include "appliance/store/registry.h"
#include "appliance/store/tokstate.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int die(const char *what, const char *msg)
{
    fprintf(stderr, "signd: %s: %s\n", what, msg);
    return 1;
}

/* A start-up failure, kept until what was started is unwound: its message may live in
 * a buffer (err) or a store's last-error text that the unwinding would not keep. */
typedef struct {
    const char *what;
    char msg[512];
} front_fail;

static void front_fail_set(front_fail *f, const char *what, const char *msg)
{
    f->what = what;
    snprintf(f->msg, sizeof(f->msg), "%s", msg);
}

/* Serves HTTPS with the token reached through k. announce: print the "listening" line on
 * stdout (the first start only: nobody reads stdout after that). ready_fd: where to write
 * one byte once serving. Returns the exit status. */
static int front_run(const cfg *c, kp *k, const sigset_t *sigs, const spn_args *a,
                     const char *conf_hash)
{
    char err[512];
    /* First: the events reconcile records are logged too (log_events). */
    if (jlog_open(c->log_file, err, sizeof(err)) != 0)
        return die("log_file", err);
    /* Every event this node appends names it (one chain for a cluster's nodes). */
    char node[CFG_NODE_MAX];
    if (cfg_node_name(c, node) != 0)
        return die("node_name", "empty, and the host name cannot be read");
    chn_set_node(node);
    reg *rg = NULL;
    if (reg_open(c->database, c->max_active_keys, &rg) != REG_OK)
        return die(c->database, reg_last_error());
    /* Its pending records name it too: reconcile tells this node's own dead creates from
     * another node's live ones by it (nodes on one host must differ). */
    if (reg_set_node(rg, node) != REG_OK) {
        reg_close(rg);
        return die("node_name", "not a name the registry takes");
    }

    /* One way out: whatever was started is stopped and closed in the order the normal stop
     * uses (each of these takes NULL), then the failure, if any, is reported. */
    front_fail f = {0};
    cred_store *cs = NULL;
    audit *au = NULL;
    tks *ts = NULL;
    wch *wt = NULL;
    rec_worker *destroyer = NULL;
    prb *probe = NULL;
    pub *pb = NULL;
    rot *rt = NULL;
    srv *s = NULL;

    rec_report rep;
    if (rec_run(k, rg, stderr, &rep) != 0) {
        front_fail_set(&f, "reconcile", "token and registry could not be made to agree");
        goto out;
    }
    fprintf(stderr,
            "signd: reconcile: %u orphan objects destroyed, %u revoked objects destroyed, "
            "%u keys marked broken, %u keys' token attributes read\n",
            rep.orphans_destroyed, rep.revoked_destroyed, rep.marked_broken, rep.attrs_read);
    /* Said at every start, once: a key that can also decrypt is a weaker key (SECURITY.md). */
    if (rep.not_sign_only > 0)
        fprintf(stderr,
                "signd: warning: %u live keys are not sign-only in the token (their "
                "token_attributes.sign_only is false: the module would also decrypt, unwrap, "
                "derive or sign-recover with them; the appliance never asks it to): see "
                "SECURITY.md\n",
                rep.not_sign_only);
    /* What the keeper probed, for GET /metrics: read once (no token call), not per scrape. */
    sk_token_info ti;
    if (kp_token_info(k, &ti) == SK_OK)
        met_token_info(&ti);
    else
        fprintf(stderr, "signd: the keeper did not say what it found out about the token: "
                        "signd_token_info is left out of /metrics\n");

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

    if (cred_open(c->database, &cs) != CRED_OK) {
        front_fail_set(&f, c->database, cred_last_error());
        goto out;
    }
    if (cred_count_active(cs, CRED_ROLE_ADMIN) == 0)
        fprintf(stderr, "signd: warning: no active admin credential; create one offline with "
                        "`signd-provision admin-credential DATA_DIR`\n");

    audit_options ao = {.flush_seconds = c->audit_flush_seconds,
                        .checkpoint_events = c->audit_checkpoint_events,
                        .checkpoint_seconds = c->audit_checkpoint_seconds,
                        .every_signature = c->audit_every_signature,
                        .log_events = c->log_events};
    if (audit_open(c->database, k, &ao, &au, err, sizeof(err)) != 0) {
        front_fail_set(&f, "audit", err);
        goto out;
    }
    if (tks_open(c->database, &ts) != TKS_OK) {
        front_fail_set(&f, c->database, tks_last_error());
        goto out;
    }
    /* A cluster node (PostgreSQL): the other nodes' changes reach this node's mirrors from
     * here on; nothing on SQLite. */
    wch_options wo = {.database = c->database, .reg = rg, .creds = cs, .tks = ts};
    if (wch_start(&wo, &wt, err, sizeof(err)) != 0) {
        front_fail_set(&f, "watch", err);
        goto out;
    }
    /* Which configuration this run started with: its hash, for auditors to compare. */
    json_t *started =
        json_pack("{s:s, s:s, s:I}", "config_sha256", conf_hash, "process_model", c->process_model,
                  "active_keys", (json_int_t)reg_count(rg, REG_ACTIVE));
    audit_record(au, CHN_STARTED, NULL, started);
    json_decref(started);

    /* Destroys revoked keys' objects as the keeper allows, never holding a request. */
    if (rec_worker_start(k, stderr, &destroyer) != 0) {
        front_fail_set(&f, "reconcile", "cannot start the destroyer thread");
        goto out;
    }
    prb_options po = {.kp = k, .reg = rg, .audit = au, .events_fd = a->events_fd};
    if (prb_start(&po, &probe, err, sizeof(err)) != 0) {
        front_fail_set(&f, "readiness", err);
        goto out;
    }
    pb = pub_new(c, rg, k, ts);
    if (pb == NULL) {
        front_fail_set(&f, "publication", "out of memory");
        goto out;
    }
    api_env env = {.cfg = c,
                   .reg = rg,
                   .kp = k,
                   .creds = cs,
                   .audit = au,
                   .tks = ts,
                   .probe = probe,
                   .pub = pb,
                   .watch = wt};
    pub_refresh(pb);
    /* Before serving: a key whose grace ended while the appliance was down is revoked by
     * rot_start's first pass, so it is never served as retiring again. */
    if (rot_start(&(ck_env){.reg = rg, .kp = k, .pub = pb}, &rt, err, sizeof(err)) != 0) {
        front_fail_set(&f, "rotation", err);
        goto out;
    }
    s = srv_start(&env, err, sizeof(err));
    if (s == NULL) {
        front_fail_set(&f, "https", err);
        goto out;
    }
    if (a->announce) {
        printf("signd: listening on https://%s:%d (%zu active keys)\n", c->listen_address,
               srv_port(s), reg_count(rg, REG_ACTIVE));
        fflush(stdout);
    }
    (void)!write(a->ready_fd, "R", 1);
    close(a->ready_fd);
    int sig = 0;
    sigwait(sigs, &sig);
    fprintf(stderr, "signd: signal %d: stopping\n", sig);
out:
    rot_stop(rt); /* no scheduled revocation starts once stopping has begun */
    srv_stop(s);
    prb_stop(probe);
    rec_worker_stop(destroyer); /* what it could not destroy yet is the next start's */
    wch_stop(wt);               /* before the mirrors it reloads are closed */
    if (s != NULL)
        audit_record(au, CHN_STOPPED, NULL, NULL);
    tks_close(ts);   /* after the server: no handler runs any more */
    audit_close(au); /* last flush and checkpoint, while the keeper still answers */
    cred_close(cs);
    pub_free(pb);
    reg_close(rg);
    return f.what != NULL ? die(f.what, f.msg) : 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--routes") == 0)
        return srv_print_routes(stdout) == 0 ? 0 : 1;
    sigset_t sigs;
    spn_begin("front", &sigs);
    char err[CFG_ERR_MAX];
    /* Still one thread: every thread CivetWeb and the front start inherits the filter. */
    if (hd_front_filter(err, sizeof(err)) != 0)
        return die("seccomp", err);
    spn_args a;
    if (spn_parse(argc, argv, &a, err, sizeof(err)) != 0)
        return die("signd-front", err);
    static cfg c;
    char conf_hash[65];
    if (spn_config_load(a.config_fd, a.config_path, &c, conf_hash, err, sizeof(err)) != 0)
        return die("configuration", err);
    close(a.config_fd);
    kp *k = NULL;
    if (kp_connect(c.keeper_socket,
                   &(kp_deadlines){.timeout_ms = c.keeper_timeout_ms,
                                   .generate_ms = c.keeper_generate_timeout_ms},
                   &k, err, sizeof(err)) != SK_OK)
        return die("keeper", err);
    int rc = front_run(&c, k, &sigs, &a, conf_hash);
    kp_close(k);
    /* exit, not _exit: stdio flushed, and the sanitizers' leak check runs (make
     * test-asan). */
    return rc;
}
