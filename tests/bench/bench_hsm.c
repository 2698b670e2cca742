/*
 * bench-hsm: how close the hsm layer comes to a raw C_SignInit + C_Sign loop on the same
 * token, next to what OpenSSL alone does on this CPU; plus key generation and the time to
 * open a token holding 1,000 key pairs. `make bench-hsm` runs it (tests/bench/bench-hsm.sh).
 *
 *   bench-hsm run [OUT]           the whole table on stdout and in OUT
 *                                 (default build/bench/hsm.txt); progress on stderr
 *   bench-hsm keygen DIR KIDHEX   test tooling: a 2048-bit key named KIDHEX in the token of
 *                                 data directory DIR (label "signd", PIN file DIR/pin,
 *                                 SOFTHSM2_CONF=DIR/softhsm2.conf); writes the public key
 *                                 to DIR/KIDHEX.pub.pem and prints that path
 *
 * BENCH_SECONDS (default 5) is the length of each signing measurement. The raw loop and
 * the hsm layer run interleaved (raw 1, hsm 1, raw 2, hsm 2; three rounds; medians) because
 * the machine is noisy. Both run in this process on the one C_Initialize that hsm_open did:
 * the raw side dlopens the same module (the same library instance), takes its function
 * list, opens its own sessions on the slot found by label, and finds the key handle once.
 * The 1,000-key token lives in build/bench/token-1000/ and is reused (or topped up) by
 * later runs: generating it takes minutes.
 */
#include "hsm/hsm.h"
#include "jose/jose.h"
#include "provisioning/token.h"
#include "base/clock.h"

#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
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
#define BENCH_GEN_KEYS 100
#define BENCH_ROUNDS 3
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, size_t n)
{
    double s[BENCH_ROUNDS];
    if (n == 0 || n > BENCH_ROUNDS)
        return 0;
    memcpy(s, v, n * sizeof(*s));
    qsort(s, n, sizeof(*s), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *dir)
{
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Opens the token of data directory dir (label BENCH_LABEL, PIN file dir/pin), signing
 * through mech. */
static hsm *open_dir_mech(const char *dir, char pin_path[PATH_MAX], unsigned max_sessions,
                          hsm_mech mech)
{
    char conf[PATH_MAX];
    path_join(conf, dir, "softhsm2.conf");
    path_join(pin_path, dir, "pin");
    if (setenv("SOFTHSM2_CONF", conf, 1) != 0)
        die("cannot set SOFTHSM2_CONF");
    hsm_config cfg = {.module_path = HSM_DEFAULT_MODULE,
                      .token = BENCH_LABEL,
                      .pin_file = pin_path,
                      .max_sessions = max_sessions,
                      .sign_mechanism = mech};
    hsm *h = NULL;
    unsigned long ckr = 0;
    sk_status st = hsm_open(&cfg, &h, &ckr);
    if (st != SK_OK) {
        fprintf(stderr, "bench-hsm: cannot open the token in %s: %s (CKR 0x%lx)\n", dir,
                sk_strerror(st), ckr);
        exit(1);
    }
    return h;
}

static hsm *open_dir(const char *dir, char pin_path[PATH_MAX], unsigned max_sessions)
{
    return open_dir_mech(dir, pin_path, max_sessions, HSM_MECH_AUTO);
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
    char pin[PATH_MAX], pem[PATH_MAX], name[64];
    snprintf(name, sizeof(name), "%s.pub.pem", kid_hex);
    path_join(pem, dir, name);
    hsm *h = open_dir(dir, pin, 0);
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
} raw_module;

/* Attaches to the module hsm_open already initialised and finds kid's private key once.
 * The token is logged in for the whole application by hsm's own session. */
static void raw_attach(raw_module *r, const sk_kid *kid)
{
    memset(r, 0, sizeof(*r));
    r->dl = dlopen(HSM_DEFAULT_MODULE, RTLD_NOW | RTLD_LOCAL);
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
    CK_UTF8CHAR want[32];
    memset(want, ' ', sizeof(want));
    memcpy(want, BENCH_LABEL, strlen(BENCH_LABEL));
    int found = 0;
    for (CK_ULONG i = 0; i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        if (r->f->C_GetTokenInfo(ids[i], &ti) == CKR_OK &&
            memcmp(ti.label, want, sizeof(want)) == 0) {
            r->slot = ids[i];
            found = 1;
        }
    }
    if (!found)
        die("no token labelled " BENCH_LABEL);

    CK_SESSION_HANDLE s;
    if (r->f->C_OpenSession(r->slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        die("C_OpenSession failed");
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)kid->b, SK_KID_LEN}};
    CK_ULONG got = 0;
    if (r->f->C_FindObjectsInit(s, tmpl, 2) != CKR_OK ||
        r->f->C_FindObjects(s, &r->key, 1, &got) != CKR_OK || got != 1)
        die("the raw loop cannot find the key");
    r->f->C_FindObjectsFinal(s);
    r->f->C_CloseSession(s);
}

/* ---- signing loops -------------------------------------------------------------------------- */

typedef struct {
    int use_hsm;
    int rsa_pkcs; /* the CKM_RSA_PKCS path: the raw loop hashes and signs a DigestInfo too */
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

/* One signature, through the layer or straight through the function list. */
static int sign_once(sign_run *run, CK_SESSION_HANDLE s)
{
    uint8_t sig[SK_SIG_MAX];
    if (run->use_hsm) {
        size_t len;
        return hsm_sign_rs256(run->h, run->kid, run->msg, BENCH_MSG_LEN, sig, &len) == SK_OK;
    }
    CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_ULONG len = sizeof(sig);
    const CK_FUNCTION_LIST *f = run->raw->f;
    const uint8_t *in = run->msg;
    CK_ULONG in_len = BENCH_MSG_LEN;
    /* What any caller of a token without CKM_SHA256_RSA_PKCS does: hash here, sign the
     * DigestInfo (RFC 8017 9.2) with CKM_RSA_PKCS. */
    static const uint8_t prefix[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                       0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    uint8_t info[sizeof(prefix) + SHA256_DIGEST_LENGTH];
    if (run->rsa_pkcs) {
        memcpy(info, prefix, sizeof(prefix));
        SHA256(run->msg, BENCH_MSG_LEN, info + sizeof(prefix));
        mech.mechanism = CKM_RSA_PKCS;
        in = info;
        in_len = sizeof(info);
    }
    return f->C_SignInit(s, &mech, run->raw->key) == CKR_OK &&
           f->C_Sign(s, (CK_BYTE_PTR)in, in_len, sig, &len) == CKR_OK;
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
    if (failed)
        die(run->use_hsm ? "hsm_sign_rs256 failed in the loop" : "C_Sign failed in the loop");
    return (double)ops / elapsed;
}

/* ---- key generation ------------------------------------------------------------------------- */

typedef struct {
    hsm *h;
    unsigned count;
    unsigned failed;
    atomic_uint *progress;
} gen_worker;

static void *gen_thread(void *arg)
{
    gen_worker *w = arg;
    for (unsigned i = 0; i < w->count; i++) {
        sk_kid kid;
        random_kid(&kid);
        if (hsm_generate(w->h, &kid, 2048) != SK_OK) {
            w->failed++;
            continue;
        }
        if (w->progress != NULL) {
            unsigned done = atomic_fetch_add(w->progress, 1) + 1;
            if (done % 100 == 0)
                fprintf(stderr, "bench-hsm:   %u keys\n", done);
        }
    }
    hsm_thread_done(w->h);
    return NULL;
}

/* Seconds to generate count RSA-2048 keys split over threads threads. */
static double generate_keys(hsm *h, unsigned count, unsigned threads, int show_progress)
{
    pthread_t t[BENCH_MAX_THREADS];
    gen_worker w[BENCH_MAX_THREADS];
    atomic_uint progress = 0;
    double t0 = now_s();
    for (unsigned i = 0; i < threads; i++) {
        w[i] = (gen_worker){.h = h,
                            .count = count / threads + (i < count % threads),
                            .progress = show_progress ? &progress : NULL};
        if (pthread_create(&t[i], NULL, gen_thread, &w[i]) != 0)
            die("pthread_create failed");
    }
    unsigned failed = 0;
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        failed += w[i].failed;
    }
    double elapsed = now_s() - t0;
    if (failed > 0) {
        fprintf(stderr, "bench-hsm: %u of %u key generations failed\n", failed, count);
        exit(1);
    }
    return elapsed;
}

/* ---- the run ------------------------------------------------------------------------------- */

typedef struct {
    double speed[2];             /* openssl speed, 1 process and -multi 2 */
    double raw[2][BENCH_ROUNDS]; /* [threads - 1][round] */
    double layer[2][BENCH_ROUNDS];
    double raw_p[2][BENCH_ROUNDS]; /* the same on the CKM_RSA_PKCS + DigestInfo path */
    double layer_p[2][BENCH_ROUNDS];
    double gen_seconds[2];        /* 100 keys on 1 and on 2 threads */
    double open_ms[BENCH_ROUNDS]; /* hsm_open of the 1,000-key token */
    size_t open_cached;
    int big_created;
    double big_create_s;
    char library[64];
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

/* Interleaved rounds of the raw loop and the layer on h (signing through its mechanism),
 * into raw[threads - 1][round] and layer[...]. */
static void sign_rounds(results *res, hsm *h, const sk_kid *kid, int rsa_pkcs,
                        double raw_out[2][BENCH_ROUNDS], double layer_out[2][BENCH_ROUNDS])
{
    raw_module raw;
    raw_attach(&raw, kid);
    library_version(&raw, res->library);
    uint8_t msg[BENCH_MSG_LEN];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)('a' + i % 26);
    sign_run run = {.h = h, .kid = kid, .raw = &raw, .msg = msg, .rsa_pkcs = rsa_pkcs};
    const char *path = rsa_pkcs ? "CKM_RSA_PKCS" : "CKM_SHA256_RSA_PKCS";
    for (unsigned r = 0; r < BENCH_ROUNDS; r++) {
        for (unsigned threads = 1; threads <= 2; threads++) {
            run.use_hsm = 0;
            raw_out[threads - 1][r] = sign_rate(&run, threads, res->seconds);
            run.use_hsm = 1;
            layer_out[threads - 1][r] = sign_rate(&run, threads, res->seconds);
            fprintf(stderr, "bench-hsm: %s, round %u, %u thread%s: raw %.0f/s, hsm %.0f/s (%.3f)\n",
                    path, r + 1, threads, threads > 1 ? "s" : "", raw_out[threads - 1][r],
                    layer_out[threads - 1][r], layer_out[threads - 1][r] / raw_out[threads - 1][r]);
        }
    }
    dlclose(raw.dl); /* a reference only: hsm_close finalises the module */
}

/* Signing: raw and hsm interleaved on one fresh token, on each signing path (the handle is
 * opened again forcing CKM_RSA_PKCS for the second), then generation on the same token. */
static void bench_signing(results *res)
{
    char tmpl[] = BENCH_DIR "/tmp-XXXXXX", pin[PATH_MAX];
    if (mkdtemp(tmpl) == NULL)
        die("cannot create a temporary token directory under " BENCH_DIR);
    new_token(tmpl);
    hsm *h = open_dir_mech(tmpl, pin, 0, HSM_MECH_SHA256_RSA_PKCS);
    sk_kid kid;
    random_kid(&kid);
    sk_status st = hsm_generate(h, &kid, 2048);
    if (st != SK_OK)
        die_hsm("hsm_generate", st);
    hsm_thread_done(h);
    sign_rounds(res, h, &kid, 0, res->raw, res->layer);
    hsm_close(h);

    h = open_dir_mech(tmpl, pin, 0, HSM_MECH_RSA_PKCS);
    sign_rounds(res, h, &kid, 1, res->raw_p, res->layer_p);

    for (unsigned threads = 1; threads <= 2; threads++) {
        fprintf(stderr, "bench-hsm: generating %u RSA-2048 keys on %u thread%s\n", BENCH_GEN_KEYS,
                threads, threads > 1 ? "s" : "");
        res->gen_seconds[threads - 1] = generate_keys(h, BENCH_GEN_KEYS, threads, 0);
    }
    hsm_close(h);
    remove_tree(tmpl);
}

/* The 1,000-key token: created (or topped up) once, then opened three times. */
static void bench_big_open(results *res)
{
    char conf[PATH_MAX], pin[PATH_MAX];
    path_join(conf, BENCH_BIG_TOKEN, "softhsm2.conf");
    if (access(conf, F_OK) != 0) {
        fprintf(stderr, "bench-hsm: creating %s (once; later runs reuse it)\n", BENCH_BIG_TOKEN);
        new_token(BENCH_BIG_TOKEN);
    }
    hsm *h = open_dir(BENCH_BIG_TOKEN, pin, 0);
    size_t have = hsm_cached_keys(h);
    if (have < BENCH_BIG_KEYS) {
        unsigned missing = (unsigned)(BENCH_BIG_KEYS - have);
        fprintf(stderr, "bench-hsm: generating %u keys into %s (minutes)\n", missing,
                BENCH_BIG_TOKEN);
        res->big_create_s = generate_keys(h, missing, 2, 1);
        res->big_created = 1;
    }
    hsm_close(h);
    for (unsigned r = 0; r < BENCH_ROUNDS; r++) {
        double t0 = now_s();
        h = open_dir(BENCH_BIG_TOKEN, pin, 0);
        res->open_ms[r] = (now_s() - t0) * 1e3;
        res->open_cached = hsm_cached_keys(h);
        hsm_close(h);
    }
}

static void print_table(FILE *o, const results *res)
{
    double raw1 = median(res->raw[0], BENCH_ROUNDS), raw2 = median(res->raw[1], BENCH_ROUNDS);
    double hsm1 = median(res->layer[0], BENCH_ROUNDS), hsm2 = median(res->layer[1], BENCH_ROUNDS);
    double q1 = hsm1 / raw1, q2 = hsm2 / raw2;
    fprintf(o,
            "bench-hsm: %s, RSA-2048, %ld CPUs, %u s per measurement, medians of %d "
            "interleaved rounds\n\n",
            res->library, sysconf(_SC_NPROCESSORS_ONLN), res->seconds, BENCH_ROUNDS);
    fprintf(o, "%-44s %12s %12s\n", "signatures per second", "1 thread", "2 threads");
    fprintf(o, "%-44s %12.0f %12.0f\n", "openssl speed rsa2048 (1 process / -multi 2)",
            res->speed[0], res->speed[1]);
    fprintf(o, "%-44s %12.0f %12.0f\n", "raw C_SignInit+C_Sign, CKM_SHA256_RSA_PKCS", raw1, raw2);
    fprintf(o, "%-44s %12.0f %12.0f\n", "hsm_sign_rs256", hsm1, hsm2);
    fprintf(o, "%-44s %7.3f %4s %7.3f %4s\n", "hsm / raw (bar >= 0.95)", q1,
            q1 >= BENCH_BAR ? "pass" : "FAIL", q2, q2 >= BENCH_BAR ? "pass" : "FAIL");
    fprintf(o, "%-44s %12.3f %12.3f\n", "raw / openssl speed", raw1 / res->speed[0],
            raw2 / res->speed[1]);
    double praw1 = median(res->raw_p[0], BENCH_ROUNDS), praw2 = median(res->raw_p[1], BENCH_ROUNDS);
    double phsm1 = median(res->layer_p[0], BENCH_ROUNDS),
           phsm2 = median(res->layer_p[1], BENCH_ROUNDS);
    double p1 = phsm1 / praw1, p2 = phsm2 / praw2;
    fprintf(o, "%-44s %12.0f %12.0f\n", "raw CKM_RSA_PKCS over a SHA-256 DigestInfo", praw1, praw2);
    fprintf(o, "%-44s %12.0f %12.0f\n", "hsm_sign_rs256, pkcs11_sign_mechanism=rsa_pkcs", phsm1,
            phsm2);
    fprintf(o, "%-44s %7.3f %4s %7.3f %4s\n", "hsm / raw, rsa_pkcs (bar >= 0.95)", p1,
            p1 >= BENCH_BAR ? "pass" : "FAIL", p2, p2 >= BENCH_BAR ? "pass" : "FAIL");
    fprintf(o, "\n%-44s %6s %6s %6s %6s\n", "rounds, signatures per second", "raw 1", "hsm 1",
            "raw 2", "hsm 2");
    for (unsigned r = 0; r < BENCH_ROUNDS; r++)
        fprintf(o, "  round %-36u %6.0f %6.0f %6.0f %6.0f\n", r + 1, res->raw[0][r],
                res->layer[0][r], res->raw[1][r], res->layer[1][r]);
    for (unsigned r = 0; r < BENCH_ROUNDS; r++)
        fprintf(o, "  rsa_pkcs round %-27u %6.0f %6.0f %6.0f %6.0f\n", r + 1, res->raw_p[0][r],
                res->layer_p[0][r], res->raw_p[1][r], res->layer_p[1][r]);
    fprintf(o, "\n%-44s %12s %12s\n", "key generation (hsm_generate)", "1 thread", "2 threads");
    fprintf(o, "%-44s %12.1f %12.1f\n", "seconds for 100 RSA-2048 keys", res->gen_seconds[0],
            res->gen_seconds[1]);
    fprintf(o, "%-44s %12.1f %12.1f\n", "keys per second", BENCH_GEN_KEYS / res->gen_seconds[0],
            BENCH_GEN_KEYS / res->gen_seconds[1]);
    fprintf(o, "\n%-44s %9.0f ms (median of %d; rounds %.0f / %.0f / %.0f ms)\n",
            "hsm_open of a token with 1,000 key pairs", median(res->open_ms, BENCH_ROUNDS),
            BENCH_ROUNDS, res->open_ms[0], res->open_ms[1], res->open_ms[2]);
    fprintf(o, "%-44s %12zu%s\n", "  hsm_cached_keys() after open", res->open_cached,
            res->open_cached == BENCH_BIG_KEYS ? "" : "  (expected 1000)");
    if (res->big_created)
        fprintf(o, "%-44s %12.1f s\n", "  (this run generated its missing keys in)",
                res->big_create_s);
}

static int cmd_run(const char *out_path)
{
    results res;
    memset(&res, 0, sizeof(res));
    res.seconds = bench_seconds();
    if (mkdir(BENCH_DIR, 0755) != 0 && errno != EEXIST)
        die("cannot create " BENCH_DIR " (run from the repository root)");

    fprintf(stderr, "bench-hsm: openssl speed rsa2048, 1 process and -multi 2\n");
    res.speed[0] = openssl_speed(res.seconds, 1);
    res.speed[1] = openssl_speed(res.seconds, 2);
    bench_signing(&res);
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
    char pin[PATH_MAX];
    hsm *h = open_dir(dir, pin, 0);
    raw_module raw;
    raw_attach(&raw, &kid);
    uint8_t msg[BENCH_MSG_LEN];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)('a' + i % 26);
    sign_run run = {.use_hsm = 0, .h = h, .kid = &kid, .raw = &raw, .msg = msg};
    printf("raw_sign_per_s: %.0f\n", sign_rate(&run, threads, seconds));
    /* What one signature costs in CPU, all threads together: for make bench to set the
     * appliance's CPU per token against. */
    printf("raw_cpu_us_per_sig: %.1f\n", run.cpu_us_per_op);
    hsm_close(h);
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench-hsm run [OUT]\n"
                    "       bench-hsm keygen DIR KIDHEX\n"
                    "       bench-hsm raw DIR THREADS SECONDS KIDHEX\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "run") == 0 && argc <= 3)
        return cmd_run(argc == 3 ? argv[2] : BENCH_OUT);
    if (argc == 6 && strcmp(argv[1], "raw") == 0)
        return cmd_raw(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 4 && strcmp(argv[1], "keygen") == 0)
        return cmd_keygen(argv[2], argv[3]);
    return usage();
}
