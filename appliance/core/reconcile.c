/* rec: start-up reconciliation of token and registry. See reconcile.h. */
#include "appliance/core/reconcile.h"

#include "appliance/core/audit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REC_LIST_MAX 8192

static int64_t rec_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int rec_kid_cmp(const void *a, const void *b)
{
    return memcmp(((const sk_key_entry *)a)->kid.b, ((const sk_key_entry *)b)->kid.b, SK_KID_LEN);
}

/* A key made before the appliance recorded what the token holds: read it back once, now
 * (GET /v1/keys/{kid} shows it from then on). Not fatal: the key signs as before, and the
 * next start tries again. */
static void rec_read_attrs(kp *k, reg *r, const reg_key *row, FILE *log, rec_report *out)
{
    if (row->token_attrs & SK_ATTR_READ) {
        out->not_sign_only += !(row->token_attrs & SK_ATTR_SIGN_ONLY);
        return;
    }
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(&row->kid, hex);
    sk_attrs a = 0;
    sk_status st = kp_key_attrs(k, &row->kid, &a);
    if (st != SK_OK) {
        fprintf(log, "signd: reconcile: cannot read the token attributes of kid %s: %s\n", hex,
                sk_strerror(st));
        return;
    }
    if (reg_set_token_attrs(r, &row->kid, a) != REG_OK) {
        fprintf(log, "signd: reconcile: cannot record the token attributes of kid %s: %s\n", hex,
                reg_last_error());
        return;
    }
    out->attrs_read++;
    out->not_sign_only += !(a & SK_ATTR_SIGN_ONLY);
}

int rec_run(kp *k, reg *r, FILE *log, rec_report *out)
{
    memset(out, 0, sizeof(*out));
    /* The mirror as the database holds it now, before the token is listed: every live row
     * then had its object made before the listing (a key is generated before its row is
     * written), so a live row missing from the list is truly broken. Other nodes may write
     * the registry (cluster mode). A failure leaves the mirror as it was: reconcile goes on
     * with it and asks the database about each unknown kid anyway. */
    if (reg_refresh(r) != REG_OK)
        fprintf(log, "signd: reconcile: cannot reload the registry: %s\n", reg_last_error());
    sk_key_entry *objs = calloc(REC_LIST_MAX, sizeof(*objs));
    if (objs == NULL)
        return -1;
    size_t n = 0;
    sk_status st = kp_list(k, objs, REC_LIST_MAX, &n);
    if (st != SK_OK || n > REC_LIST_MAX) {
        fprintf(log, "signd: reconcile: cannot list the token: %s\n",
                st != SK_OK ? sk_strerror(st) : "more objects than the reconcile bound");
        free(objs);
        return -1;
    }
    int rc = 0;
    char hex[2 * SK_KID_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        /* A reserved kid (the audit key, keeper.h) is the appliance's own and never has a
         * registry row: it is no orphan, and destroying it would cut the audit trail's
         * checkpoints off from their key. (The keeper would refuse anyway.) */
        if (kp_is_reserved(&objs[i].kid))
            continue;
        reg_key row;
        int known = reg_get(r, &objs[i].kid, &row) == REG_OK;
        if (known && row.state != REG_REVOKED)
            continue;
        sk_kid_hex(&objs[i].kid, hex);
        /* Unknown to the mirror: an orphan only if the database agrees, with no row (one
         * written since the refresh) and no live pending record (a create under way, on
         * this node or another: registry.h, reg_kid_orphan). */
        if (!known) {
            reg_status os = reg_kid_orphan(r, &objs[i].kid, rec_wall_ms());
            if (os == REG_ERR_EXISTS)
                continue;
            if (os != REG_OK) {
                fprintf(log, "signd: reconcile: cannot tell whether kid %s is an orphan: %s\n", hex,
                        reg_last_error());
                rc = -1;
                continue;
            }
        }
        st = kp_destroy(k, &objs[i].kid);
        if (st != SK_OK && st != SK_ERR_KEY_NOT_FOUND) {
            fprintf(log, "signd: reconcile: cannot destroy kid %s: %s\n", hex, sk_strerror(st));
            rc = -1;
            continue;
        }
        /* The token changed with no row changing: its own event (actor "system"). */
        if (known) {
            out->revoked_destroyed++;
            fprintf(log, "signd: reconcile: destroyed the object of revoked kid %s\n", hex);
            reg_audit(r, (int64_t)time(NULL), CHN_KEY_DESTROYED, &objs[i].kid,
                      json_pack("{s:s}", "why", "revoked, its object survived a crash"));
        } else {
            reg_pending_drop(r, &objs[i].kid); /* its orphan record, if it had one */
            out->orphans_destroyed++;
            fprintf(log, "signd: reconcile: destroyed kid %s: on the token, not in the registry\n",
                    hex);
            reg_audit(r, (int64_t)time(NULL), CHN_KEY_ORPHAN, &objs[i].kid,
                      json_pack("{s:s}", "why", "on the token, never recorded in the registry"));
        }
    }
    /* Active rows whose private half is gone can never sign again; retiring ones too must
     * hold their object (it is revoked and destroyed at retire_at, not before), so a
     * missing one is as broken, and leaves the JWKS. */
    qsort(objs, n, sizeof(*objs), rec_kid_cmp);
    size_t cap = reg_count(r, REG_ACTIVE) + reg_count(r, REG_RETIRING);
    reg_key *rows = calloc(cap + 1, sizeof(*rows));
    if (rows == NULL) {
        free(objs);
        return -1;
    }
    size_t m = reg_list(r, REG_LIST_LIVE, rows, cap + 1);
    for (size_t i = 0; i < m && i <= cap; i++) {
        sk_key_entry probe = {.kid = rows[i].kid};
        sk_key_entry *hit = bsearch(&probe, objs, n, sizeof(*objs), rec_kid_cmp);
        if (hit != NULL && hit->has_private) {
            rec_read_attrs(k, r, &rows[i], log, out);
            continue;
        }
        sk_kid_hex(&rows[i].kid, hex);
        if (reg_mark_broken(r, &rows[i].kid) != REG_OK) {
            rc = -1;
            continue;
        }
        out->marked_broken++;
        fprintf(log,
                "signd: reconcile: kid %s is %s but its key is missing from the token: "
                "marked broken\n",
                hex, reg_state_name(rows[i].state));
    }
    free(rows);
    free(objs);
    return rc;
}

/* ---- deferred destroys -------------------------------------------------------------------- */

static pthread_mutex_t rec_defer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rec_defer_cv = PTHREAD_COND_INITIALIZER;
static sk_kid rec_deferred[REC_DEFER_MAX];
static unsigned rec_deferred_tries[REC_DEFER_MAX]; /* failed attempts of rec_deferred[i] */
static size_t rec_deferred_n;

void rec_defer_destroy(const sk_kid *kid)
{
    pthread_mutex_lock(&rec_defer_mu);
    int known = 0;
    for (size_t i = 0; i < rec_deferred_n && !known; i++)
        known = memcmp(rec_deferred[i].b, kid->b, SK_KID_LEN) == 0;
    int full = !known && rec_deferred_n == REC_DEFER_MAX;
    if (!known && !full) {
        rec_deferred_tries[rec_deferred_n] = 0;
        rec_deferred[rec_deferred_n++] = *kid;
    }
    pthread_cond_broadcast(&rec_defer_cv); /* the destroyer, if one runs, tries at once */
    pthread_mutex_unlock(&rec_defer_mu);
    if (full) {
        char hex[2 * SK_KID_LEN + 1];
        sk_kid_hex(kid, hex);
        fprintf(stderr, "signd: kid %s: too many deferred destroys, left to the next start\n", hex);
    }
}

/* Caller holds rec_defer_mu. The slot of kid, or rec_deferred_n. */
static size_t rec_deferred_find(const sk_kid *kid)
{
    size_t j = 0;
    while (j < rec_deferred_n && memcmp(rec_deferred[j].b, kid->b, SK_KID_LEN) != 0)
        j++;
    return j;
}

size_t rec_retry_deferred(kp *k, FILE *log)
{
    /* A copy, so that no keeper round trip runs under the mutex request threads take. */
    sk_kid todo[REC_DEFER_MAX];
    unsigned tries[REC_DEFER_MAX];
    pthread_mutex_lock(&rec_defer_mu);
    size_t n = rec_deferred_n;
    memcpy(todo, rec_deferred, n * sizeof(*todo));
    memcpy(tries, rec_deferred_tries, n * sizeof(*tries));
    pthread_mutex_unlock(&rec_defer_mu);
    if (n == 0)
        return 0;
    char hex[2 * SK_KID_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        sk_status st = kp_destroy(k, &todo[i]);
        sk_kid_hex(&todo[i], hex);
        pthread_mutex_lock(&rec_defer_mu);
        size_t j = rec_deferred_find(&todo[i]);
        if (st != SK_OK && st != SK_ERR_KEY_NOT_FOUND) {
            if (j < rec_deferred_n)
                rec_deferred_tries[j]++;
            pthread_mutex_unlock(&rec_defer_mu);
            /* Said once per kid, not once a second while the keeper is away. */
            if (tries[i] == 0)
                fprintf(log, "signd: kid %s: could not destroy it yet: %s\n", hex, sk_strerror(st));
            continue;
        }
        if (j < rec_deferred_n) {
            rec_deferred[j] = rec_deferred[rec_deferred_n - 1];
            rec_deferred_tries[j] = rec_deferred_tries[rec_deferred_n - 1];
            rec_deferred_n--;
        }
        pthread_mutex_unlock(&rec_defer_mu);
        if (st == SK_OK && tries[i] > 0)
            fprintf(log, "signd: destroyed kid %s, deferred while the keeper was away\n", hex);
        else if (tries[i] > 0) /* a try that timed out reached the keeper after all */
            fprintf(log, "signd: kid %s: no object left to destroy once the keeper answered\n",
                    hex);
    }
    pthread_mutex_lock(&rec_defer_mu);
    size_t left = rec_deferred_n;
    pthread_mutex_unlock(&rec_defer_mu);
    return left;
}

/* ---- the destroyer thread ------------------------------------------------------------------ */

struct rec_worker {
    kp *k;
    FILE *log;
    pthread_t thread;
    int stop; /* under rec_defer_mu */
};

static void *rec_worker_main(void *arg)
{
    rec_worker *w = arg;
    for (;;) {
        rec_retry_deferred(w->k, w->log);
        pthread_mutex_lock(&rec_defer_mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += REC_RETRY_SECONDS;
        /* Woken by a new kid; otherwise the ones left are tried again every few seconds. */
        if (!w->stop)
            pthread_cond_timedwait(&rec_defer_cv, &rec_defer_mu, &until);
        int stop = w->stop;
        pthread_mutex_unlock(&rec_defer_mu);
        if (stop)
            break;
    }
    kp_thread_done(w->k);
    return NULL;
}

int rec_worker_start(kp *k, FILE *log, rec_worker **out)
{
    *out = NULL;
    rec_worker *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return -1;
    w->k = k;
    w->log = log;
    if (pthread_create(&w->thread, NULL, rec_worker_main, w) != 0) {
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

void rec_worker_stop(rec_worker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&rec_defer_mu);
    w->stop = 1;
    pthread_cond_broadcast(&rec_defer_cv);
    pthread_mutex_unlock(&rec_defer_mu);
    pthread_join(w->thread, NULL);
    free(w);
}
