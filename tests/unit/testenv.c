/* testenv: shared helpers of the C unit tests. See testenv.h. */
#include "tests/unit/testenv.h"
#include <openssl/param_build.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/bn.h>

#include "appliance/core/reconcile.h"
#include "appliance/keeper/inproc.h"
#include "appliance/store/sdb.h"
#include "provisioning/token.h"
#include "tests/unit/testdb.h"

#include <stdarg.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define TESTENV_OUT_MAX 4096

/* Copies the value of the "serial: " line of prov_token_init's output. */
static int testenv_parse_serial(const char *out, char serial[17])
{
    const char *p = strstr(out, "serial: ");
    if (p == NULL)
        return -1;
    p += strlen("serial: ");
    size_t n = strcspn(p, "\n");
    if (n == 0 || n > 16)
        return -1;
    memcpy(serial, p, n);
    serial[n] = '\0';
    return 0;
}

int testenv_token_serial(char dir_out[PATH_MAX], char serial_out[17])
{
    char tmpl[] = "/tmp/signd-test-XXXXXX";
    serial_out[0] = '\0';
    if (mkdtemp(tmpl) == NULL) {
        fprintf(stderr, "testenv: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    snprintf(dir_out, PATH_MAX, "%s", tmpl);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out == NULL) {
        testenv_cleanup(dir_out);
        return -1;
    }
    int rc = prov_token_init(dir_out, TESTENV_LABEL, HSM_DEFAULT_MODULE, out);
    fclose(out);
    if (rc == 0 && (text == NULL || testenv_parse_serial(text, serial_out) != 0)) {
        fprintf(stderr, "testenv: no serial in prov_token_init's output\n");
        rc = -1;
    }
    free(text);
    if (rc != 0)
        testenv_cleanup(dir_out);
    return rc;
}

int testenv_token(char dir_out[PATH_MAX])
{
    char serial[17];
    return testenv_token_serial(dir_out, serial);
}

hsm_config testenv_config(const char *dir, char pin_path[PATH_MAX])
{
    /* dir comes from testenv_token: far shorter than PATH_MAX */
    if (snprintf(pin_path, PATH_MAX, "%s/pin", dir) >= PATH_MAX)
        pin_path[0] = '\0';
    hsm_config cfg = {
        .module_path = HSM_DEFAULT_MODULE,
        .token = TESTENV_LABEL,
        .pin_file = pin_path,
        .max_sessions = 0,
    };
    return cfg;
}

void testenv_kid(sk_kid *kid)
{
    size_t got = 0;
    while (got < sizeof(kid->b)) {
        ssize_t r = getrandom(kid->b + got, sizeof(kid->b) - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            abort();
        got += (size_t)r;
    }
}

static int testenv_remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "testenv: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

void testenv_cleanup(const char *dir)
{
    if (dir == NULL || dir[0] == '\0')
        return;
    nftw(dir, testenv_remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

int testenv_db_setup(void **state)
{
    testenv_db *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -1;
    snprintf(t->dir, sizeof(t->dir), "/tmp/signd-db-XXXXXX");
    if (mkdtemp(t->dir) == NULL) {
        free(t);
        return -1;
    }
    if (testdb_locator(t->dir, t->db, sizeof(t->db)) != 0) {
        testenv_cleanup(t->dir);
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

int testenv_db_teardown(void **state)
{
    testenv_db *t = *state;
    testenv_cleanup(t->dir);
    free(t);
    return 0;
}

/* The RSA public key (n, e) as an OpenSSL key, built from the exported values. */
EVP_PKEY *testenv_evp_from_pubkey(const sk_pubkey *pk)
{
    EVP_PKEY *key = NULL;
    BIGNUM *n = BN_bin2bn(pk->n, (int)pk->n_len, NULL);
    BIGNUM *e = BN_bin2bn(pk->e, (int)pk->e_len, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (n != NULL && e != NULL && bld != NULL && ctx != NULL &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) == 1 &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return key;
}

int testenv_world_open(testenv_world *w, unsigned parts, const audit_options *ao)
{
    memset(w, 0, sizeof(*w));
    if (testenv_token(w->dir) != 0)
        return -1;
    hsm_config hc = testenv_config(w->dir, w->pin);
    char err[256] = "";
    if (testdb_locator(w->dir, w->db, sizeof(w->db)) != 0) {
        fprintf(stderr, "testenv: no database\n");
        goto fail;
    }
    cfg_defaults(&w->c, w->dir);
    if (kp_open(&hc, &w->k, err, sizeof(err)) != SK_OK) {
        fprintf(stderr, "testenv: kp_open: %s\n", err);
        goto fail;
    }
    if ((parts & TESTENV_REG) && reg_open(w->db, w->c.max_active_keys, &w->rg) != REG_OK) {
        fprintf(stderr, "testenv: reg_open: %s\n", reg_last_error());
        goto fail;
    }
    if ((parts & TESTENV_TKS) && tks_open(w->db, &w->ts) != TKS_OK) {
        fprintf(stderr, "testenv: tks_open: %s\n", tks_last_error());
        goto fail;
    }
    if ((parts & TESTENV_AUDIT) && audit_open(w->db, w->k, ao, &w->au, err, sizeof(err)) != 0) {
        fprintf(stderr, "testenv: audit_open: %s\n", err);
        goto fail;
    }
    if ((parts & TESTENV_PUB) && (w->p = pub_new(&w->c, w->rg, w->k, w->ts)) == NULL) {
        fprintf(stderr, "testenv: pub_new failed\n");
        goto fail;
    }
    w->e = (ck_env){.reg = w->rg, .kp = w->k, .pub = w->p};
    return 0;
fail:
    testenv_world_close(w);
    return -1;
}

void testenv_world_close(testenv_world *w)
{
    if (w->k != NULL)
        rec_retry_deferred(w->k, stderr);
    pub_free(w->p);
    audit_close(w->au);
    tks_close(w->ts);
    reg_close(w->rg);
    kp_close(w->k);
    testenv_cleanup(w->dir);
    memset(w, 0, sizeof(*w));
}

testenv_world *testenv_world_new(unsigned parts, const audit_options *ao)
{
    testenv_world *w = calloc(1, sizeof(*w));
    if (w == NULL || testenv_world_open(w, parts, ao) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void testenv_world_free(testenv_world *w)
{
    if (w != NULL)
        testenv_world_close(w);
    free(w);
}

int testenv_on_token(kp *k, const sk_kid *kid)
{
    sk_key_entry objs[64];
    size_t n = 0;
    sk_status st = kp_list(k, objs, 64, &n);
    if (st != SK_OK) {
        fprintf(stderr, "testenv: kp_list: %s\n", sk_strerror(st));
        return -1;
    }
    for (size_t i = 0; i < n && i < 64; i++)
        if (memcmp(objs[i].kid.b, kid->b, SK_KID_LEN) == 0)
            return 1;
    return 0;
}

int testenv_backend_is_postgres(void)
{
    return testdb_backend_is_postgres();
}

int testenv_sql_exec(const char *db, const char *sql)
{
    sdb *c = NULL;
    char err[512] = "";
    int rc = sdb_open(db, 0, 5000, &c, err, sizeof(err)) == SDB_OK &&
                     sdb_exec(c, sql, "exec", err, sizeof(err)) == SDB_OK
                 ? 0
                 : -1;
    if (rc != 0)
        fprintf(stderr, "testenv: %s: %s\n", sql, err);
    sdb_close(c);
    return rc;
}

long long testenv_sql_int(const char *db, const char *sql, int n, ...)
{
    sdb *c = NULL;
    sdb_stmt *s = NULL;
    long long v = -1;
    char err[512] = "";
    if (sdb_open(db, SDB_OPEN_READONLY, 5000, &c, err, sizeof(err)) != SDB_OK ||
        sdb_prepare(c, sql, &s, "prepare", err, sizeof(err)) != SDB_OK) {
        fprintf(stderr, "testenv: %s: %s\n", sql, err);
        goto out;
    }
    va_list ap;
    va_start(ap, n);
    for (int i = 1; i <= n; i++) {
        const char *t = va_arg(ap, const char *);
        if (t != NULL)
            sdb_bind_text(s, i, t, -1);
        else
            sdb_bind_null(s, i);
    }
    va_end(ap);
    sdb_status st = sdb_step(s);
    if (st == SDB_ROW)
        v = sdb_column_int64(s, 0);
    else
        fprintf(stderr, "testenv: %s: no row: %s\n", sql, sdb_stmt_error(s));
out:
    sdb_finalize(s);
    sdb_close(c);
    return v;
}
