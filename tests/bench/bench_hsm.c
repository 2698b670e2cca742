/*
 * bench-hsm: how close the hsm layer comes to a raw C_SignInit + C_Sign loop on the same
 * token, next to what OpenSSL alone does on this CPU; plus key generation and the time to
 * open a token holding 1,000 key pairs. `make bench-hsm` runs it (tests/bench/bench-hsm.sh).
 *
 *   bench-hsm run OUT CONF NAME   the whole table, for module NAME, on stdout and in OUT;
 *                                 progress on stderr. CONF holds the module's settings as
 *                                 appliance.conf lines (pkcs11_module, token, pin_file,
 *                                 softhsm2_conf, pkcs11_env: what `provisioning/hsm/NAME.sh
 *                                 conf DIR` prints); relative paths are resolved against
 *                                 CONF's directory, as the appliance does
 *   bench-hsm raw DIR THREADS SECONDS KIDHEX
 *                                 the raw loop alone on data directory DIR's token (the
 *                                 module settings of DIR/appliance.conf), for make bench
 *   bench-hsm keygen DIR KIDHEX   test tooling: a 2048-bit key named KIDHEX in the token of
 *                                 data directory DIR (DIR/appliance.conf's module settings,
 *                                 or without one label "signd", PIN file DIR/pin,
 *                                 SOFTHSM2_CONF=DIR/softhsm2.conf); writes the public key
 *                                 to DIR/KIDHEX.pub.pem and prints that path
 *
 * BENCH_SECONDS (default 5) is the length of each signing measurement; BENCH_GEN_KEYS
 * (default 20) the RSA-2048 keys generated per key-generation measurement (half as many
 * for 3072, a quarter for 4096); BENCH_ROUNDS (default 3, at most 15) the rounds. The raw
 * loop and the hsm layer run interleaved (raw 1, hsm 1, raw 2, hsm 2 in each round;
 * medians, and the bar on the median of the rounds' own ratios) because the machine is
 * noisy. Both run in
 * this process on the one C_Initialize that hsm_open did: the raw side dlopens the same
 * module (the same library instance), takes its function list, opens its own sessions on
 * the slot whose token holds the key, and finds the key handle once. It signs as the
 * module allows: CKM_SHA256_RSA_PKCS when the slot lists it, else (opencryptoki) the
 * SHA-256 DigestInfo hashed here and signed with CKM_RSA_PKCS, the same RS256 bytes.
 * On SoftHSM2 only, the time to open a token of 1,000 key pairs: that token lives in
 * build/bench/token-1000/ and is reused (or topped up) by later runs (minutes to make).
 */
#include "hsm/hsm.h"
#include "jose/jose.h"
#include "provisioning/token.h"
#include "base/clock.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/sha.h>

#include <p11-kit/pkcs11.h>

#define BENCH_LABEL "signd"
#define BENCH_DIR "build/bench"
#define BENCH_OUT BENCH_DIR "/hsm.txt"
#define BENCH_BIG_TOKEN BENCH_DIR "/token-1000"
#define BENCH_BIG_KEYS 1000
#define BENCH_GEN_KEYS 20 /* RSA-2048; fewer for the larger sizes */
#define BENCH_GEN_MAX 1000
#define BENCH_SPEED_SECONDS 3
#define BENCH_ROUNDS 3 /* default; BENCH_ROUNDS sets 1 to BENCH_ROUNDS_MAX */
#define BENCH_ROUNDS_MAX 15
#define BENCH_MAX_THREADS 2
#define BENCH_MSG_LEN 256 /* about a JWT signing input */
#define BENCH_BAR 0.95
#define BENCH_SECONDS_MAX 600

/* ---- small wrappers that fail loudly ----------------------------------------------------- */

static void die(const char *what)
{
    fprintf(stderr, "bench-hsm: %s\n", what);
    exit(1);
}

static void die_hsm(const char *what, sk_status st)
{
    fprintf(stderr, "bench-hsm: %s: %s (CKR 0x%lx)\n", what, sk_status_name(st), hsm_last_ckr());
    exit(1);
}

static double now_s(void)
{
    return (double)clk_now_ns() / 1e9;
}

static void path_join(char out[PATH_MAX], const char *dir, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX)
        die("path too long");
}

static void random_kid(sk_kid *kid)
{
    if (getrandom(kid->b, sizeof(kid->b), 0) != (ssize_t)sizeof(kid->b))
        die("getrandom failed");
}

static unsigned bench_seconds(void)
{
    const char *v = getenv("BENCH_SECONDS");
    if (v == NULL || *v == '\0')
        return 5;
    char *end;
    errno = 0;
    unsigned long s = strtoul(v, &end, 10);
    if (errno || *end || s == 0 || s > BENCH_SECONDS_MAX)
        die("BENCH_SECONDS must be 1 to 600");
    return (unsigned)s;
}

static unsigned bench_rounds(void)
{
    const char *v = getenv("BENCH_ROUNDS");
    if (v == NULL || *v == '\0')
        return BENCH_ROUNDS;
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || *end || n == 0 || n > BENCH_ROUNDS_MAX)
        die("BENCH_ROUNDS must be 1 to 15");
    return (unsigned)n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, size_t n)
{
    double s[BENCH_ROUNDS_MAX];
    if (n == 0 || n > BENCH_ROUNDS_MAX)
        return 0;
    memcpy(s, v, n * sizeof(*s));
    qsort(s, n, sizeof(*s), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* ---- the module's settings ------------------------------------------------------------- */

typedef struct {
    char module[PATH_MAX];
    char token[512];
    char pin_file[PATH_MAX];
    char softhsm2_conf[PATH_MAX]; /* "": not SoftHSM2, SOFTHSM2_CONF left alone */
    char env[2048];               /* pkcs11_env: NAME=value,NAME=value */
    hsm_mech mech;                /* pkcs11_sign_mechanism: the hsm layer's path */
} bench_module;

static void copy_value(char *out, size_t cap, const char *v)
{
    if (strlen(v) >= cap)
        die("a setting's value is too long");
    strcpy(out, v);
}

/* A path setting as the appliance reads it: relative to the configuration's directory. */
static void copy_path(char out[PATH_MAX], const char *base, const char *v)
{
    if (v[0] == '\0' || v[0] == '/' || base[0] == '\0')
        copy_value(out, PATH_MAX, v);
    else
        path_join(out, base, v);
}

/* The appliance's defaults, in data directory dir; then conf_path's lines, when it exists
 * (want: die when it does not). Only the module's keys are read; every other line is left. */
static void module_read(bench_module *m, const char *dir, const char *conf_path, int want)
{
    memset(m, 0, sizeof(*m));
    copy_value(m->module, sizeof(m->module), HSM_DEFAULT_MODULE);
    copy_value(m->token, sizeof(m->token), BENCH_LABEL);
    path_join(m->pin_file, dir, "pin");
    path_join(m->softhsm2_conf, dir, "softhsm2.conf");
    FILE *f = fopen(conf_path, "r");
    if (f == NULL) {
        if (want) {
            fprintf(stderr, "bench-hsm: cannot read %s: %s\n", conf_path, strerror(errno));
            exit(1);
        }
        return;
    }
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strstr(line, " = ");
        if (line[0] == '#' || eq == NULL)
            continue;
        *eq = '\0';
        const char *k = line, *v = eq + 3;
        if (strcmp(k, "pkcs11_module") == 0)
            copy_value(m->module, sizeof(m->module), v);
        else if (strcmp(k, "token") == 0)
            copy_value(m->token, sizeof(m->token), v);
        else if (strcmp(k, "pin_file") == 0)
            copy_path(m->pin_file, dir, v);
        else if (strcmp(k, "softhsm2_conf") == 0)
            copy_path(m->softhsm2_conf, dir, v);
        else if (strcmp(k, "pkcs11_env") == 0)
            copy_value(m->env, sizeof(m->env), v);
        else if (strcmp(k, "pkcs11_sign_mechanism") == 0 && hsm_mech_parse(v, &m->mech) != 0)
            die("pkcs11_sign_mechanism must be auto, sha256_rsa_pkcs or rsa_pkcs");
    }
    fclose(f);
}

/* The module's environment, as the supervisor gives the keeper: SOFTHSM2_CONF, then each
 * NAME=value of pkcs11_env. Before hsm_open: modules read it at C_Initialize. */
static void module_env(const bench_module *m)
{
    if (m->softhsm2_conf[0] != '\0' && setenv("SOFTHSM2_CONF", m->softhsm2_conf, 1) != 0)
        die("cannot set SOFTHSM2_CONF");
    char env[sizeof(m->env)];
    memcpy(env, m->env, sizeof(env));
    char *save = NULL;
    for (char *item = strtok_r(env, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ')
            item++;
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item)
            die("pkcs11_env: every item must be NAME=value");
        *eq = '\0';
        if (setenv(item, eq + 1, 1) != 0)
            die("cannot set a pkcs11_env variable");
    }
}

static hsm *open_module(const bench_module *m, unsigned max_sessions)
{
    module_env(m);
    hsm_config cfg = {.module_path = m->module,
                      .token = m->token,
                      .pin_file = m->pin_file,
                      .max_sessions = max_sessions,
                      .sign_mechanism = m->mech};
    hsm *h = NULL;
    unsigned long ckr = 0;
    sk_status st = hsm_open(&cfg, &h, &ckr);
    if (st != SK_OK) {
        fprintf(stderr, "bench-hsm: cannot open token %s of %s: %s (CKR 0x%lx) %s\n", m->token,
                m->module, sk_strerror(st), ckr, hsm_open_detail());
        exit(1);
    }
    return h;
}

/* Opens the token of data directory dir: its appliance.conf's module, or the embedded
 * SoftHSM2 token's defaults when it has none. */
static hsm *open_dir(const char *dir, bench_module *m, unsigned max_sessions)
{
    char conf[PATH_MAX];
    path_join(conf, dir, "appliance.conf");
    module_read(m, dir, conf, 0);
    return open_module(m, max_sessions);
}

static void new_token(const char *dir)
{
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull == NULL)
        die("cannot open /dev/null");
    int rc = prov_token_init(dir, BENCH_LABEL, HSM_DEFAULT_MODULE, devnull);
    fclose(devnull);
    if (rc != 0)
        die("cannot create a token (see above)");
}

/* ---- keygen: test tooling for the engine test ---------------------------------------------- */

static int cmd_keygen(const char *dir, const char *kid_hex)
{
    sk_kid kid;
    if (sk_kid_parse(kid_hex, &kid) != 0) {
        fprintf(stderr, "bench-hsm: KIDHEX must be 32 lowercase hex digits\n");
        return 2;
    }
    char pem[PATH_MAX], name[64];
    snprintf(name, sizeof(name), "%s.pub.pem", kid_hex);
    path_join(pem, dir, name);
    bench_module m;
    hsm *h = open_dir(dir, &m, 0);
    sk_status st = hsm_generate(h, &kid, 2048);
    if (st != SK_OK)
        die_hsm("hsm_generate", st);
    sk_pubkey pk;
    if ((st = hsm_public_key(h, &kid, &pk)) != SK_OK)
        die_hsm("hsm_public_key", st);
    hsm_close(h);
    char *text = jose_rsa_public_pem(pk.n, pk.n_len, pk.e, pk.e_len);
    FILE *f = fopen(pem, "w");
    if (text == NULL || f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "bench-hsm: cannot write %s\n", pem);
        return 1;
    }
    free(text);
    printf("%s\n", pem);
    return 0;
}

/* ---- openssl speed ------------------------------------------------------------------------- */

/* RSA-2048 sign/s from `openssl speed -mr` (its "+F2:idx:bits:sign/s:verify/s" line). */
static double openssl_speed(unsigned seconds, unsigned procs)
{
    char cmd[128], line[512];
    if (procs > 1)
        snprintf(cmd, sizeof(cmd), "openssl speed -seconds %u -multi %u -mr rsa2048 2>/dev/null",
                 seconds, procs);
    else
        snprintf(cmd, sizeof(cmd), "openssl speed -seconds %u -mr rsa2048 2>/dev/null", seconds);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        die("cannot run openssl speed");
    double rate = 0;
    while (fgets(line, sizeof(line), p) != NULL) {
        unsigned idx, bits;
        double sign, verify;
        /* With -multi the children's lines arrive as "Got: +F2:..."; the sum has no prefix. */
        if (sscanf(line, "+F2:%u:%u:%lf:%lf", &idx, &bits, &sign, &verify) == 4 && bits == 2048)
            rate = sign;
    }
    if (pclose(p) != 0 || rate <= 0)
        die("openssl speed failed or printed no +F2 line");
    return rate;
}

/* ---- the raw loop's view of the module ----------------------------------------------------- */

typedef struct {
    void *dl;
    CK_FUNCTION_LIST_PTR f;
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE key;
    /* CKM_SHA256_RSA_PKCS when the slot lists it; else CKM_RSA_PKCS over a DigestInfo
     * built here, as the hsm layer does on such a module (opencryptoki's soft token). */
    CK_MECHANISM_TYPE mech;
} raw_module;

/* The DER prefix of a SHA-256 DigestInfo (RFC 8017, section 9.2, note 1). */
static const uint8_t sha256_digestinfo[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                              0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                              0x01, 0x05, 0x00, 0x04, 0x20};

static int slot_has_mechanism(const raw_module *r, CK_MECHANISM_TYPE want)
{
    CK_ULONG n = 0;
    if (r->f->C_GetMechanismList(r->slot, NULL, &n) != CKR_OK || n == 0)
        return 0;
    CK_MECHANISM_TYPE *list = calloc(n, sizeof(*list));
    if (list == NULL)
        die("out of memory");
    int found = 0;
    if (r->f->C_GetMechanismList(r->slot, list, &n) == CKR_OK)
        for (CK_ULONG i = 0; i < n && !found; i++)
            found = list[i] == want;
    free(list);
    return found;
}

/* Attaches to the module hsm_open already initialised and finds kid's private key once.
 * The token is logged in for the whole application by hsm's own session, so the private
 * key is visible only on that token: the slot where it is found is hsm's (no label or URI
 * to match again). */
static void raw_attach(raw_module *r, const char *module_path, const sk_kid *kid)
{
    memset(r, 0, sizeof(*r));
    r->dl = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
    if (r->dl == NULL)
        die("cannot dlopen the module");
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(r->dl, "C_GetFunctionList");
    if (get == NULL || get(&r->f) != CKR_OK)
        die("no C_GetFunctionList");
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    if (r->f->C_Initialize(&args) != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        die("the module was not initialised by hsm_open: not the same instance");

    CK_SLOT_ID ids[64];
    CK_ULONG n = 64;
    if (r->f->C_GetSlotList(CK_TRUE, ids, &n) != CKR_OK)
        die("C_GetSlotList failed");
    int found = 0;
    for (CK_ULONG i = 0; i < n && !found; i++) {
        CK_SESSION_HANDLE s;
        if (r->f->C_OpenSession(ids[i], CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
            continue;
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                               {CKA_ID, (void *)kid->b, SK_KID_LEN}};
        CK_ULONG got = 0;
        if (r->f->C_FindObjectsInit(s, tmpl, 2) == CKR_OK) {
            if (r->f->C_FindObjects(s, &r->key, 1, &got) == CKR_OK && got == 1) {
                r->slot = ids[i];
                found = 1;
            }
            r->f->C_FindObjectsFinal(s);
        }
        r->f->C_CloseSession(s);
    }
    if (!found)
        die("the raw loop cannot find the key on any slot");
    r->mech = slot_has_mechanism(r, CKM_SHA256_RSA_PKCS) ? CKM_SHA256_RSA_PKCS : CKM_RSA_PKCS;
}

static const char *raw_mech_name(const raw_module *r)
{
    return r->mech == CKM_SHA256_RSA_PKCS ? "CKM_SHA256_RSA_PKCS" : "CKM_RSA_PKCS+DigestInfo";
}

/* ---- signing loops -------------------------------------------------------------------------- */

typedef struct {
    int use_hsm;
    hsm *h;
    const sk_kid *kid;
    const raw_module *raw;
    const uint8_t *msg;
    pthread_barrier_t start;
    atomic_int stop;
    double cpu_us_per_op; /* set by sign_rate: the process's CPU time over the loop, per op */
} sign_run;

typedef struct {
    sign_run *run;
    unsigned long ops;
    int failed;
} sign_worker;

/* One signature, through the layer or straight through the function list (hashing here
 * first when the module only has CKM_RSA_PKCS: that is part of a signature's cost). */
static int sign_once(sign_run *run, CK_SESSION_HANDLE s)
{
    uint8_t sig[SK_SIG_MAX];
    if (run->use_hsm) {
        size_t len;
        return hsm_sign_rs256(run->h, run->kid, run->msg, BENCH_MSG_LEN, sig, &len) == SK_OK;
    }
    CK_MECHANISM mech = {run->raw->mech, NULL, 0};
    CK_ULONG len = sizeof(sig);
    const CK_FUNCTION_LIST *f = run->raw->f;
    uint8_t di[sizeof(sha256_digestinfo) + SHA256_DIGEST_LENGTH];
    CK_BYTE_PTR in = (CK_BYTE_PTR)run->msg;
    CK_ULONG in_len = BENCH_MSG_LEN;
    if (run->raw->mech == CKM_RSA_PKCS) {
        memcpy(di, sha256_digestinfo, sizeof(sha256_digestinfo));
        SHA256(run->msg, BENCH_MSG_LEN, di + sizeof(sha256_digestinfo));
        in = di;
        in_len = sizeof(di);
    }
    return f->C_SignInit(s, &mech, run->raw->key) == CKR_OK &&
           f->C_Sign(s, in, in_len, sig, &len) == CKR_OK;
}

static void *sign_thread(void *arg)
{
    sign_worker *w = arg;
    sign_run *run = w->run;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    if (!run->use_hsm &&
        run->raw->f->C_OpenSession(run->raw->slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        w->failed = 1;
    /* One signature before the clock starts: the hsm side opens its session here. */
    if (!w->failed && !sign_once(run, s))
        w->failed = 1;
    pthread_barrier_wait(&run->start);
    while (!w->failed && !atomic_load_explicit(&run->stop, memory_order_relaxed)) {
        if (!sign_once(run, s))
            w->failed = 1;
        else
            w->ops++;
    }
    if (run->use_hsm)
        hsm_thread_done(run->h);
    else if (s != CK_INVALID_HANDLE)
        run->raw->f->C_CloseSession(s);
    return NULL;
}

/* Signatures per second over seconds with threads threads. */
static double sign_rate(sign_run *run, unsigned threads, unsigned seconds)
{
    pthread_t t[BENCH_MAX_THREADS];
    sign_worker w[BENCH_MAX_THREADS];
    atomic_store(&run->stop, 0);
    pthread_barrier_init(&run->start, NULL, threads + 1);
    for (unsigned i = 0; i < threads; i++) {
        w[i] = (sign_worker){.run = run};
        if (pthread_create(&t[i], NULL, sign_thread, &w[i]) != 0)
            die("pthread_create failed");
    }
    pthread_barrier_wait(&run->start);
    double t0 = now_s();
    struct timespec cpu0, cpu1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu0);
    struct timespec nap = {.tv_sec = seconds, .tv_nsec = 0};
    while (nanosleep(&nap, &nap) != 0 && errno == EINTR)
        ;
    atomic_store(&run->stop, 1);
    unsigned long ops = 0;
    int failed = 0;
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        ops += w[i].ops;
        failed |= w[i].failed;
    }
    double elapsed = now_s() - t0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu1);
    double cpu = (double)(cpu1.tv_sec - cpu0.tv_sec) + (cpu1.tv_nsec - cpu0.tv_nsec) / 1e9;
    run->cpu_us_per_op = ops > 0 ? cpu * 1e6 / (double)ops : 0;
    pthread_barrier_destroy(&run->start);
    if (failed) {
        fprintf(stderr, "bench-hsm: %s failed in the loop (CKR 0x%lx)\n",
                run->use_hsm ? "hsm_sign_rs256" : "C_Sign", hsm_last_ckr());
        exit(1);
    }
    return (double)ops / elapsed;
}

/* ---- key generation ------------------------------------------------------------------------- */

typedef struct {
    hsm *h;
    unsigned bits;
    sk_kid *kids; /* this worker's slice: the kids it made, for the caller to destroy */
    unsigned count;
    unsigned made;
    unsigned failed;
    sk_status first_error;
    unsigned long first_ckr;
    atomic_uint *progress;
} gen_worker;

static void *gen_thread(void *arg)
{
    gen_worker *w = arg;
    for (unsigned i = 0; i < w->count; i++) {
        sk_kid *kid = &w->kids[w->made];
        random_kid(kid);
        sk_status st = hsm_generate(w->h, kid, w->bits);
        if (st != SK_OK) {
            if (w->failed++ == 0) {
                w->first_error = st;
                w->first_ckr = hsm_last_ckr();
            }
            continue;
        }
        w->made++;
        if (w->progress != NULL) {
            unsigned done = atomic_fetch_add(w->progress, 1) + 1;
            if (done % 100 == 0)
                fprintf(stderr, "bench-hsm:   %u keys\n", done);
        }
    }
    hsm_thread_done(w->h);
    return NULL;
}

/* Seconds to generate count keys of bits bits split over threads threads. kids (count
 * entries, or NULL: not kept) receives the kids made. Returns a negative value when a
 * generation failed: *err and *ckr say why. */
static double generate_keys(hsm *h, unsigned bits, unsigned count, unsigned threads,
                            int show_progress, sk_kid *kids, sk_status *err, unsigned long *ckr)
{
    pthread_t t[BENCH_MAX_THREADS];
    gen_worker w[BENCH_MAX_THREADS];
    atomic_uint progress = 0;
    sk_kid *scratch = kids != NULL ? kids : calloc(count ? count : 1, sizeof(sk_kid));
    if (scratch == NULL)
        die("out of memory");
    double t0 = now_s();
    unsigned at = 0;
    for (unsigned i = 0; i < threads; i++) {
        w[i] = (gen_worker){.h = h,
                            .bits = bits,
                            .kids = scratch + at,
                            .count = count / threads + (i < count % threads),
                            .progress = show_progress ? &progress : NULL};
        at += w[i].count;
        if (pthread_create(&t[i], NULL, gen_thread, &w[i]) != 0)
            die("pthread_create failed");
    }
    unsigned failed = 0;
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        if (w[i].failed && !failed) {
            *err = w[i].first_error;
            *ckr = w[i].first_ckr;
        }
        failed += w[i].failed;
    }
    double elapsed = now_s() - t0;
    if (kids == NULL)
        free(scratch);
    if (failed > 0) {
        fprintf(stderr, "bench-hsm: %u of %u %u-bit key generations failed\n", failed, count, bits);
        return -1;
    }
    return elapsed;
}

/* ---- the run ------------------------------------------------------------------------------- */

#define BENCH_SIZES 3
static const unsigned bench_bits[BENCH_SIZES] = {2048, 3072, 4096};

typedef struct {
    double speed[2]; /* openssl speed, 1 process and -multi 2 */
    unsigned rounds;
    double raw[2][BENCH_ROUNDS_MAX]; /* [threads - 1][round] */
    double layer[2][BENCH_ROUNDS_MAX];
    /* Per size: keys made per measurement, seconds per key on 1 and 2 threads; a size the
     * token refused says why. */
    unsigned gen_count[BENCH_SIZES];
    double gen_per_key[BENCH_SIZES][2];
    char gen_refused[BENCH_SIZES][96];
    int big_open;                 /* SoftHSM2 only */
    double open_ms[BENCH_ROUNDS]; /* hsm_open of the 1,000-key token */
    size_t open_cached;
    int big_created;
    double big_create_s;
    char name[32];
    char library[64];
    char probe[256]; /* what the hsm layer probed: its sign path, RSA range, sessions */
    const char *raw_mech;
    unsigned seconds;
} results;

static void library_version(const raw_module *r, char out[64])
{
    CK_INFO info;
    if (r->f->C_GetInfo(&info) != CKR_OK) {
        snprintf(out, 64, "unknown module");
        return;
    }
    size_t n = sizeof(info.manufacturerID);
    while (n > 0 && info.manufacturerID[n - 1] == ' ')
        n--;
    snprintf(out, 64, "%.*s %u.%u", (int)n, (const char *)info.manufacturerID,
             info.libraryVersion.major, info.libraryVersion.minor);
}

static unsigned gen_keys_default(void)
{
    const char *v = getenv("BENCH_GEN_KEYS");
    if (v == NULL || *v == '\0')
        return BENCH_GEN_KEYS;
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || *end || n < 2 || n > BENCH_GEN_MAX)
        die("BENCH_GEN_KEYS must be 2 to 1000");
    return (unsigned)n;
}

/* Key generation per size on 1 and 2 threads, each key destroyed right after its
 * measurement: a token's object limit (opencryptoki: 2,048 private keys; a TPM's store)
 * is not spent by the bench. A size the token refuses is recorded, not fatal, unless it is
 * 2048 (the appliance's default). */
static void bench_keygen(results *res, hsm *h)
{
    unsigned base = gen_keys_default();
    hsm_caps caps;
    hsm_info(h, &caps);
    for (unsigned i = 0; i < BENCH_SIZES; i++) {
        unsigned bits = bench_bits[i], count = base >> i;
        if (count < 2)
            count = 2;
        res->gen_count[i] = count;
        /* A size outside the range the token states is the appliance's 400
         * key_size_unsupported: nothing to time. */
        if ((caps.rsa_min_bits && bits < caps.rsa_min_bits) ||
            (caps.rsa_max_bits && bits > caps.rsa_max_bits)) {
            snprintf(res->gen_refused[i], sizeof(res->gen_refused[i]),
                     "outside the token's RSA range %u-%u bits", caps.rsa_min_bits,
                     caps.rsa_max_bits);
            continue;
        }
        sk_kid *kids = calloc(count, sizeof(*kids));
        if (kids == NULL)
            die("out of memory");
        for (unsigned threads = 1; threads <= 2; threads++) {
            fprintf(stderr, "bench-hsm: generating %u RSA-%u keys on %u thread%s\n", count, bits,
                    threads, threads > 1 ? "s" : "");
            sk_status err = SK_OK;
            unsigned long ckr = 0;
            double s = generate_keys(h, bits, count, threads, 0, kids, &err, &ckr);
            /* Every kid made is destroyed, even after a failure (the others' slices). */
            for (unsigned k = 0; k < count; k++) {
                sk_kid zero = {0};
                if (memcmp(&kids[k], &zero, sizeof(zero)) != 0)
                    hsm_destroy(h, &kids[k]);
            }
            hsm_thread_done(h);
            memset(kids, 0, count * sizeof(*kids));
            if (s < 0) {
                if (bits == 2048)
                    die_hsm("hsm_generate of a 2048-bit key", err);
                snprintf(res->gen_refused[i], sizeof(res->gen_refused[i]), "%s (CKR 0x%lx)",
                         sk_status_name(err), ckr);
                break;
            }
            res->gen_per_key[i][threads - 1] = s / count;
        }
        free(kids);
    }
}

/* Signing: raw and hsm interleaved on the module's token (one key made for it, destroyed
 * after), then key generation on the same token. */
static void bench_signing(results *res, const bench_module *m)
{
    hsm *h = open_module(m, 0);
    sk_kid kid;
    random_kid(&kid);
    sk_status st = hsm_generate(h, &kid, 2048);
    if (st != SK_OK)
        die_hsm("hsm_generate", st);
    hsm_thread_done(h);

    hsm_caps caps;
    hsm_info(h, &caps);
    snprintf(res->probe, sizeof(res->probe),
             "hsm layer: %s, RSA %u-%u bits, PIN %u-%u, sessions %u (token %lu); token %s %s",
             hsm_mech_name(caps.sign_mechanism), caps.rsa_min_bits, caps.rsa_max_bits, caps.pin_min,
             caps.pin_max, caps.max_sessions, caps.token_max_sessions, caps.manufacturer,
             caps.model);
    raw_module raw;
    raw_attach(&raw, m->module, &kid);
    library_version(&raw, res->library);
    res->raw_mech = raw_mech_name(&raw);
    uint8_t msg[BENCH_MSG_LEN];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)('a' + i % 26);
    sign_run run = {.h = h, .kid = &kid, .raw = &raw, .msg = msg};

    for (unsigned r = 0; r < res->rounds; r++) {
        for (unsigned threads = 1; threads <= 2; threads++) {
            run.use_hsm = 0;
            res->raw[threads - 1][r] = sign_rate(&run, threads, res->seconds);
            run.use_hsm = 1;
            res->layer[threads - 1][r] = sign_rate(&run, threads, res->seconds);
            fprintf(stderr, "bench-hsm: round %u, %u thread%s: raw %.0f/s, hsm %.0f/s (%.3f)\n",
                    r + 1, threads, threads > 1 ? "s" : "", res->raw[threads - 1][r],
                    res->layer[threads - 1][r],
                    res->layer[threads - 1][r] / res->raw[threads - 1][r]);
        }
    }
    dlclose(raw.dl); /* a reference only: hsm_close finalises the module */
    hsm_destroy(h, &kid);
    hsm_thread_done(h);

    bench_keygen(res, h);
    hsm_close(h);
}

/* The 1,000-key SoftHSM2 token: created (or topped up) once, then opened three times. */
static void bench_big_open(results *res)
{
    char conf[PATH_MAX];
    path_join(conf, BENCH_BIG_TOKEN, "softhsm2.conf");
    if (access(conf, F_OK) != 0) {
        fprintf(stderr, "bench-hsm: creating %s (once; later runs reuse it)\n", BENCH_BIG_TOKEN);
        new_token(BENCH_BIG_TOKEN);
    }
    bench_module m;
    hsm *h = open_dir(BENCH_BIG_TOKEN, &m, 0);
    size_t have = hsm_cached_keys(h);
    if (have < BENCH_BIG_KEYS) {
        unsigned missing = (unsigned)(BENCH_BIG_KEYS - have);
        fprintf(stderr, "bench-hsm: generating %u keys into %s (minutes)\n", missing,
                BENCH_BIG_TOKEN);
        sk_status err = SK_OK;
        unsigned long ckr = 0;
        res->big_create_s = generate_keys(h, 2048, missing, 2, 1, NULL, &err, &ckr);
        if (res->big_create_s < 0)
            die_hsm("hsm_generate", err);
        res->big_created = 1;
    }
    hsm_close(h);
    for (unsigned r = 0; r < BENCH_ROUNDS; r++) {
        double t0 = now_s();
        h = open_dir(BENCH_BIG_TOKEN, &m, 0);
        res->open_ms[r] = (now_s() - t0) * 1e3;
        res->open_cached = hsm_cached_keys(h);
        hsm_close(h);
    }
    res->big_open = 1;
}

static void print_table(FILE *o, const results *res)
{
    unsigned n = res->rounds;
    double raw1 = median(res->raw[0], n), raw2 = median(res->raw[1], n);
    double hsm1 = median(res->layer[0], n), hsm2 = median(res->layer[1], n);
    /* The bar is read on the median of each round's own ratio: a raw run and the hsm run
     * right after it share the machine's load of that moment, which on a shared machine
     * moves both by more than the layer costs. */
    double r1[BENCH_ROUNDS_MAX], r2[BENCH_ROUNDS_MAX];
    for (unsigned r = 0; r < n; r++) {
        r1[r] = res->layer[0][r] / res->raw[0][r];
        r2[r] = res->layer[1][r] / res->raw[1][r];
    }
    double q1 = median(r1, n), q2 = median(r2, n);
    fprintf(o,
            "bench-hsm: HSM=%s, %s, RSA-2048, %ld CPUs, %u s per measurement, medians of %d "
            "interleaved rounds\n",
            res->name, res->library, sysconf(_SC_NPROCESSORS_ONLN), res->seconds, n);
    fprintf(o, "%s\n\n", res->probe);
    fprintf(o, "%-48s %12s %12s\n", "signatures per second", "1 thread", "2 threads");
    fprintf(o, "%-48s %12.0f %12.0f\n", "openssl speed -seconds 3 rsa2048 (1 / -multi 2)",
            res->speed[0], res->speed[1]);
    char label[96];
    snprintf(label, sizeof(label), "raw C_SignInit+C_Sign, %s", res->raw_mech);
    fprintf(o, "%-48s %12.0f %12.0f\n", label, raw1, raw2);
    fprintf(o, "%-48s %12.0f %12.0f\n", "hsm_sign_rs256", hsm1, hsm2);
    fprintf(o, "%-48s %7.3f %4s %7.3f %4s\n", "hsm / raw, median of rounds' (bar >= 0.95)", q1,
            q1 >= BENCH_BAR ? "pass" : "FAIL", q2, q2 >= BENCH_BAR ? "pass" : "FAIL");
    fprintf(o, "%-48s %12.3f %12.3f\n", "hsm / raw, of the medians", hsm1 / raw1, hsm2 / raw2);
    fprintf(o, "%-48s %12.3f %12.3f\n", "raw / openssl speed", raw1 / res->speed[0],
            raw2 / res->speed[1]);
    fprintf(o, "%-48s %12.3f %12.3f\n", "hsm / openssl speed", hsm1 / res->speed[0],
            hsm2 / res->speed[1]);
    fprintf(o, "\n%-48s %6s %6s %6s %6s\n", "rounds, signatures per second", "raw 1", "hsm 1",
            "raw 2", "hsm 2");
    for (unsigned r = 0; r < n; r++)
        fprintf(o, "  round %-40u %6.0f %6.0f %6.0f %6.0f\n", r + 1, res->raw[0][r],
                res->layer[0][r], res->raw[1][r], res->layer[1][r]);
    fprintf(o, "\n%-48s %12s %12s\n", "key generation (hsm_generate), s per key", "1 thread",
            "2 threads");
    for (unsigned i = 0; i < BENCH_SIZES; i++) {
        snprintf(label, sizeof(label), "RSA-%u (%u keys each)", bench_bits[i], res->gen_count[i]);
        if (res->gen_refused[i][0] != '\0')
            fprintf(o, "%-48s refused: %s\n", label, res->gen_refused[i]);
        else
            fprintf(o, "%-48s %12.3f %12.3f\n", label, res->gen_per_key[i][0],
                    res->gen_per_key[i][1]);
    }
    if (!res->big_open)
        return;
    fprintf(o, "\n%-48s %9.0f ms (median of %d; rounds %.0f / %.0f / %.0f ms)\n",
            "hsm_open of a token with 1,000 key pairs", median(res->open_ms, BENCH_ROUNDS),
            BENCH_ROUNDS, res->open_ms[0], res->open_ms[1], res->open_ms[2]);
    fprintf(o, "%-48s %12zu%s\n", "  hsm_cached_keys() after open", res->open_cached,
            res->open_cached == BENCH_BIG_KEYS ? "" : "  (expected 1000)");
    if (res->big_created)
        fprintf(o, "%-48s %12.1f s\n", "  (this run generated its missing keys in)",
                res->big_create_s);
}

static int cmd_run(const char *out_path, const char *conf_path, const char *name)
{
    results res;
    memset(&res, 0, sizeof(res));
    res.seconds = bench_seconds();
    res.rounds = bench_rounds();
    snprintf(res.name, sizeof(res.name), "%s", name);
    if (mkdir(BENCH_DIR, 0755) != 0 && errno != EEXIST)
        die("cannot create " BENCH_DIR " (run from the repository root)");
    char base[PATH_MAX];
    copy_value(base, sizeof(base), conf_path);
    char *slash = strrchr(base, '/');
    if (slash != NULL)
        *slash = '\0';
    else
        copy_value(base, sizeof(base), ".");
    bench_module m;
    module_read(&m, base, conf_path, 1);

    fprintf(stderr, "bench-hsm: openssl speed -seconds %d rsa2048, 1 process and -multi 2\n",
            BENCH_SPEED_SECONDS);
    res.speed[0] = openssl_speed(BENCH_SPEED_SECONDS, 1);
    res.speed[1] = openssl_speed(BENCH_SPEED_SECONDS, 2);
    bench_signing(&res, &m);
    /* The 1,000-key open is SoftHSM2's question (its object store reads every file). */
    if (strcmp(m.module, HSM_DEFAULT_MODULE) == 0)
        bench_big_open(&res);

    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (mem == NULL)
        die("out of memory");
    print_table(mem, &res);
    fclose(mem);
    fputs(text, stdout);
    FILE *f = fopen(out_path, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "bench-hsm: cannot write %s: %s\n", out_path, strerror(errno));
        free(text);
        return 1;
    }
    free(text);
    return 0;
}

/* bench-hsm raw DIR THREADS SECONDS KIDHEX: the raw C_SignInit+C_Sign loop alone on an
 * existing data directory's token, for `make bench` to set beside the appliance. */
static int cmd_raw(const char *dir, const char *threads_text, const char *seconds_text,
                   const char *kid_hex)
{
    unsigned threads = (unsigned)atoi(threads_text), seconds = (unsigned)atoi(seconds_text);
    sk_kid kid;
    if (threads < 1 || threads > BENCH_MAX_THREADS || seconds < 1 || seconds > 600 ||
        sk_kid_parse(kid_hex, &kid) != 0) {
        fprintf(stderr, "bench-hsm raw: THREADS 1..%d, SECONDS 1..600, KIDHEX 32 hex digits\n",
                BENCH_MAX_THREADS);
        return 2;
    }
    bench_module m;
    hsm *h = open_dir(dir, &m, 0);
    raw_module raw;
    raw_attach(&raw, m.module, &kid);
    uint8_t msg[BENCH_MSG_LEN];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)('a' + i % 26);
    sign_run run = {.use_hsm = 0, .h = h, .kid = &kid, .raw = &raw, .msg = msg};
    printf("raw_sign_per_s: %.0f\n", sign_rate(&run, threads, seconds));
    /* What one signature costs in CPU, all threads together: for make bench to set the
     * appliance's CPU per token against. */
    printf("raw_cpu_us_per_sig: %.1f\n", run.cpu_us_per_op);
    printf("raw_mechanism: %s\n", raw_mech_name(&raw));
    hsm_close(h);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench-hsm run OUT CONF NAME\n"
                    "       bench-hsm keygen DIR KIDHEX\n"
                    "       bench-hsm raw DIR THREADS SECONDS KIDHEX\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "run") == 0)
        return cmd_run(argv[2], argv[3], argv[4]);
    if (argc == 6 && strcmp(argv[1], "raw") == 0)
        return cmd_raw(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 4 && strcmp(argv[1], "keygen") == 0)
        return cmd_keygen(argv[2], argv[3]);
    return usage();
}
