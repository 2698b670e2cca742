/*
 * test_hsm: the PKCS#11 layer against a real SoftHSM2 token. Each group runs on a fresh
 * token made by testenv; signatures are checked with OpenSSL, key attributes by asking the
 * module directly (the hsm interface exposes no handles, by design).
 */
#include "hsm/hsm.h"
#include "provisioning/token.h"
#include "tests/unit/testenv.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <p11-kit/pkcs11.h>

#define GROUP_KIDS 8
#define SIGNERS 8
#define SIGNATURES_PER_SIGNER 200
#define LIST_CAP 64

/* One group's token and open handle, shared by the group's tests. */
typedef struct {
    char dir[PATH_MAX];
    char pin[PATH_MAX];
    char serial[17];
    hsm_config cfg;
    hsm *h;
    sk_kid kids[GROUP_KIDS];
    unsigned bits[GROUP_KIDS];
    size_t n_kids;
} group;

/* ---- helpers ------------------------------------------------------------------------- */

static group *group_new(void)
{
    group *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    if (testenv_token_serial(g->dir, g->serial) != 0) {
        free(g);
        return NULL;
    }
    g->cfg = testenv_config(g->dir, g->pin);
    unsigned long ckr = 0;
    sk_status st = hsm_open(&g->cfg, &g->h, &ckr);
    if (st != SK_OK) {
        fprintf(stderr, "hsm_open: %s (CKR 0x%lx)\n", sk_status_name(st), ckr);
        testenv_cleanup(g->dir);
        free(g);
        return NULL;
    }
    return g;
}

/* Generates a key of bits into the group's kid list; 0 or -1. */
static int group_generate(group *g, unsigned bits)
{
    if (g->n_kids >= GROUP_KIDS)
        return -1;
    sk_kid kid;
    testenv_kid(&kid);
    sk_status st = hsm_generate(g->h, &kid, bits);
    if (st != SK_OK) {
        fprintf(stderr, "hsm_generate(%u): %s (CKR 0x%lx)\n", bits, sk_status_name(st),
                hsm_last_ckr());
        return -1;
    }
    g->kids[g->n_kids] = kid;
    g->bits[g->n_kids] = bits;
    g->n_kids++;
    return 0;
}

static int group_teardown(void **state)
{
    group *g = *state;
    if (g != NULL) {
        hsm_close(g->h);
        testenv_cleanup(g->dir);
        free(g);
    }
    return 0;
}

static void group_reopen(group *g)
{
    hsm_close(g->h);
    g->h = NULL;
    assert_int_equal(hsm_open(&g->cfg, &g->h, NULL), SK_OK);
}

static EVP_PKEY *evp_for_kid(hsm *h, const sk_kid *kid)
{
    sk_pubkey pk;
    assert_int_equal(hsm_public_key(h, kid, &pk), SK_OK);
    EVP_PKEY *key = testenv_evp_from_pubkey(&pk);
    assert_non_null(key);
    return key;
}

/* 1 when sig is a valid RS256 (SHA-256, PKCS#1 v1.5) signature over msg. */
static int rs256_verifies(EVP_PKEY *key, const void *msg, size_t msg_len, const uint8_t *sig,
                          size_t sig_len)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(md, sig, sig_len, msg, msg_len) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

/* Signs msg with kid and checks the signature against the exported public key. */
static void assert_signs_and_verifies(hsm *h, const sk_kid *kid, const char *msg)
{
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    assert_int_equal(hsm_sign_rs256(h, kid, msg, strlen(msg), sig, &sig_len), SK_OK);
    EVP_PKEY *key = evp_for_kid(h, kid);
    assert_true(rs256_verifies(key, msg, strlen(msg), sig, sig_len));
    EVP_PKEY_free(key);
}

static const sk_key_entry *find_entry(const sk_key_entry *e, size_t n, const sk_kid *kid)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(e[i].kid.b, kid->b, SK_KID_LEN) == 0)
            return &e[i];
    return NULL;
}

/* dir/name of the group's token directory. */
static void group_path(const group *g, const char *name, char out[PATH_MAX])
{
    int n = snprintf(out, PATH_MAX, "%s/%s", g->dir, name);
    assert_true(n > 0 && n < PATH_MAX);
}

/* Writes text to a new file at path with mode. */
static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

/* ---- the module itself, for what hsm.h deliberately hides ---------------------------- */

typedef struct {
    void *dl;
    CK_FUNCTION_LIST_PTR f;
    CK_SESSION_HANDLE s;
} raw_token;

/* Loads the module, initialises it (nothing else may have it open), finds the token by
 * label and logs in with the PIN from pin_file. */
static void raw_open(raw_token *r, const char *pin_file)
{
    memset(r, 0, sizeof(*r));
    r->dl = dlopen(HSM_DEFAULT_MODULE, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(r->dl);
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(r->dl, "C_GetFunctionList");
    assert_non_null(get);
    assert_int_equal(get(&r->f), CKR_OK);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    assert_int_equal(r->f->C_Initialize(&args), CKR_OK);

    CK_SLOT_ID ids[16];
    CK_ULONG n = 16;
    assert_int_equal(r->f->C_GetSlotList(CK_TRUE, ids, &n), CKR_OK);
    CK_UTF8CHAR want[32];
    memset(want, ' ', sizeof(want));
    memcpy(want, TESTENV_LABEL, strlen(TESTENV_LABEL));
    int found = 0;
    CK_SLOT_ID slot = 0;
    for (CK_ULONG i = 0; i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        if (r->f->C_GetTokenInfo(ids[i], &ti) == CKR_OK &&
            memcmp(ti.label, want, sizeof(want)) == 0) {
            slot = ids[i];
            found = 1;
        }
    }
    assert_true(found);
    assert_int_equal(
        r->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &r->s), CKR_OK);
    char pin[HSM_PIN_MAX];
    size_t pin_len = 0;
    assert_int_equal(hsm_read_pin_file(pin_file, pin, &pin_len), SK_OK);
    CK_RV rv = r->f->C_Login(r->s, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    explicit_bzero(pin, sizeof(pin));
    assert_int_equal(rv, CKR_OK);
}

static void raw_close(raw_token *r)
{
    r->f->C_Logout(r->s);
    r->f->C_CloseSession(r->s);
    assert_int_equal(r->f->C_Finalize(NULL), CKR_OK);
    dlclose(r->dl);
}

/* The single object of class cls with CKA_ID = kid. */
static CK_OBJECT_HANDLE raw_find(raw_token *r, CK_OBJECT_CLASS cls, const sk_kid *kid)
{
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)kid->b, SK_KID_LEN}};
    CK_OBJECT_HANDLE objs[2];
    CK_ULONG n = 0;
    assert_int_equal(r->f->C_FindObjectsInit(r->s, tmpl, 2), CKR_OK);
    assert_int_equal(r->f->C_FindObjects(r->s, objs, 2, &n), CKR_OK);
    assert_int_equal(r->f->C_FindObjectsFinal(r->s), CKR_OK);
    assert_int_equal(n, 1);
    return objs[0];
}

static CK_BBOOL raw_bool(raw_token *r, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = 0xAA;
    CK_ATTRIBUTE a = {type, &v, sizeof(v)};
    assert_int_equal(r->f->C_GetAttributeValue(r->s, o, &a, 1), CKR_OK);
    assert_int_equal(a.ulValueLen, sizeof(v));
    return v;
}

/* ---- group: keys of every size -------------------------------------------------------- */

static int keys_setup(void **state)
{
    group *g = group_new();
    if (g == NULL)
        return -1;
    *state = g;
    /* 4096-bit generation is slow on SoftHSM2: one key of each size, shared by the tests. */
    if (group_generate(g, 2048) || group_generate(g, 3072) || group_generate(g, 4096))
        return -1;
    return 0;
}

static void test_signature_from_every_key_size_verifies_with_openssl(void **state)
{
    group *g = *state;
    for (size_t i = 0; i < 3; i++) {
        sk_pubkey pk;
        assert_int_equal(hsm_public_key(g->h, &g->kids[i], &pk), SK_OK);
        assert_int_equal(pk.bits, g->bits[i]);
        assert_int_equal(pk.n_len, g->bits[i] / 8);
        assert_int_equal(pk.e_len, 3);
        assert_memory_equal(pk.e, "\x01\x00\x01", 3);

        char msg[64];
        snprintf(msg, sizeof(msg), "a payload signed by a %u-bit key", g->bits[i]);
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        assert_int_equal(hsm_sign_rs256(g->h, &g->kids[i], msg, strlen(msg), sig, &sig_len), SK_OK);
        assert_int_equal(sig_len, g->bits[i] / 8);
        EVP_PKEY *key = testenv_evp_from_pubkey(&pk);
        assert_non_null(key);
        assert_true(rs256_verifies(key, msg, strlen(msg), sig, sig_len));
        EVP_PKEY_free(key);
    }
}

static void test_flipped_byte_fails_verification(void **state)
{
    group *g = *state;
    for (size_t i = 0; i < 3; i++) {
        char msg[] = "the bytes the app server asked us to sign";
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        assert_int_equal(hsm_sign_rs256(g->h, &g->kids[i], msg, strlen(msg), sig, &sig_len), SK_OK);
        EVP_PKEY *key = evp_for_kid(g->h, &g->kids[i]);
        assert_true(rs256_verifies(key, msg, strlen(msg), sig, sig_len));
        sig[sig_len / 2] ^= 0x01;
        assert_false(rs256_verifies(key, msg, strlen(msg), sig, sig_len));
        sig[sig_len / 2] ^= 0x01;
        msg[0] ^= 0x01;
        assert_false(rs256_verifies(key, msg, strlen(msg), sig, sig_len));
        /* Another key's signature over the same bytes does not verify either. */
        msg[0] ^= 0x01;
        EVP_PKEY *other = evp_for_kid(g->h, &g->kids[(i + 1) % 3]);
        assert_false(rs256_verifies(other, msg, strlen(msg), sig, sig_len));
        EVP_PKEY_free(other);
        EVP_PKEY_free(key);
    }
}

static void test_signature_is_deterministic_pkcs1_v15(void **state)
{
    group *g = *state;
    const char *msg = "same bytes, same key";
    uint8_t a[SK_SIG_MAX], b[SK_SIG_MAX];
    size_t a_len = 0, b_len = 0;
    assert_int_equal(hsm_sign_rs256(g->h, &g->kids[0], msg, strlen(msg), a, &a_len), SK_OK);
    assert_int_equal(hsm_sign_rs256(g->h, &g->kids[0], msg, strlen(msg), b, &b_len), SK_OK);
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
}

static void test_private_key_is_sensitive_and_never_extractable(void **state)
{
    group *g = *state;
    const sk_kid *kid = &g->kids[0];
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(kid, hex);
    /* One C_Initialize per process: our handle goes away while we ask the module. */
    hsm_close(g->h);
    g->h = NULL;

    raw_token r;
    raw_open(&r, g->pin);
    CK_OBJECT_HANDLE priv = raw_find(&r, CKO_PRIVATE_KEY, kid);
    CK_OBJECT_HANDLE pub = raw_find(&r, CKO_PUBLIC_KEY, kid);

    CK_ATTRIBUTE_TYPE secret[] = {CKA_PRIVATE_EXPONENT, CKA_PRIME_1,    CKA_PRIME_2,
                                  CKA_EXPONENT_1,       CKA_EXPONENT_2, CKA_COEFFICIENT};
    for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
        uint8_t buf[SK_MODULUS_MAX];
        CK_ATTRIBUTE a = {secret[i], buf, sizeof(buf)};
        assert_int_equal(r.f->C_GetAttributeValue(r.s, priv, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
        assert_true(a.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    }
    assert_int_equal(raw_bool(&r, priv, CKA_SENSITIVE), CK_TRUE);
    assert_int_equal(raw_bool(&r, priv, CKA_ALWAYS_SENSITIVE), CK_TRUE);
    assert_int_equal(raw_bool(&r, priv, CKA_NEVER_EXTRACTABLE), CK_TRUE);
    assert_int_equal(raw_bool(&r, priv, CKA_EXTRACTABLE), CK_FALSE);
    assert_int_equal(raw_bool(&r, priv, CKA_DECRYPT), CK_FALSE);
    assert_int_equal(raw_bool(&r, priv, CKA_UNWRAP), CK_FALSE);
    assert_int_equal(raw_bool(&r, priv, CKA_SIGN_RECOVER), CK_FALSE);
    assert_int_equal(raw_bool(&r, priv, CKA_DERIVE), CK_FALSE);
    assert_int_equal(raw_bool(&r, priv, CKA_SIGN), CK_TRUE);
    assert_int_equal(raw_bool(&r, priv, CKA_TOKEN), CK_TRUE);
    assert_int_equal(raw_bool(&r, priv, CKA_PRIVATE), CK_TRUE);
    assert_int_equal(raw_bool(&r, pub, CKA_ENCRYPT), CK_FALSE);
    assert_int_equal(raw_bool(&r, pub, CKA_WRAP), CK_FALSE);
    assert_int_equal(raw_bool(&r, pub, CKA_VERIFY), CK_TRUE);

    CK_OBJECT_HANDLE halves[2] = {priv, pub};
    for (size_t i = 0; i < 2; i++) {
        uint8_t id[64];
        char label[64];
        CK_ATTRIBUTE a[2] = {{CKA_ID, id, sizeof(id)}, {CKA_LABEL, label, sizeof(label)}};
        assert_int_equal(r.f->C_GetAttributeValue(r.s, halves[i], a, 2), CKR_OK);
        assert_int_equal(a[0].ulValueLen, SK_KID_LEN);
        assert_memory_equal(id, kid->b, SK_KID_LEN);
        assert_int_equal(a[1].ulValueLen, 2 * SK_KID_LEN);
        assert_memory_equal(label, hex, 2 * SK_KID_LEN);
    }
    raw_close(&r);

    group_reopen(g);
    assert_signs_and_verifies(g->h, kid, "still signs after the inspection");
}

/* ---- group: life cycle: destroy, reopen, list, provisioning ---------------------------- */

static int lifecycle_setup(void **state)
{
    group *g = group_new();
    if (g == NULL)
        return -1;
    *state = g;
    for (int i = 0; i < 3; i++)
        if (group_generate(g, 2048) != 0)
            return -1;
    return 0;
}

static void test_destroyed_kid_cannot_sign_and_is_gone_from_list(void **state)
{
    group *g = *state;
    const sk_kid *doomed = &g->kids[1];
    assert_int_equal(hsm_cached_keys(g->h), 3);
    assert_int_equal(hsm_destroy(g->h, doomed), SK_OK);
    assert_int_equal(hsm_cached_keys(g->h), 2);

    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 1;
    assert_int_equal(hsm_sign_rs256(g->h, doomed, "x", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(sig_len, 0);
    sk_pubkey pk;
    assert_int_equal(hsm_public_key(g->h, doomed, &pk), SK_ERR_KEY_NOT_FOUND);
    /* Destroying again finds nothing: the caller learns the kid is already gone. */
    assert_int_equal(hsm_destroy(g->h, doomed), SK_ERR_KEY_NOT_FOUND);

    sk_key_entry list[LIST_CAP];
    size_t n = 0;
    assert_int_equal(hsm_list(g->h, list, LIST_CAP, &n), SK_OK);
    assert_int_equal(n, 2);
    assert_null(find_entry(list, n, doomed));
    assert_non_null(find_entry(list, n, &g->kids[0]));
    assert_non_null(find_entry(list, n, &g->kids[2]));
}

static void test_reopen_caches_exactly_the_surviving_keys(void **state)
{
    group *g = *state;
    group_reopen(g);
    assert_int_equal(hsm_cached_keys(g->h), 2);
    assert_signs_and_verifies(g->h, &g->kids[0], "survivor one");
    assert_signs_and_verifies(g->h, &g->kids[2], "survivor two");
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    assert_int_equal(hsm_sign_rs256(g->h, &g->kids[1], "x", 1, sig, &sig_len),
                     SK_ERR_KEY_NOT_FOUND);
}

/* A cluster's keepers share one token: a key generated through one handle after another
 * handle filled its cache is looked up in the token on that handle's first use. */
static void test_a_key_generated_after_open_is_found_in_the_token_on_first_use(void **state)
{
    group *g = *state;
    hsm *other = NULL;
    assert_int_equal(hsm_open(&g->cfg, &other, NULL), SK_OK);
    size_t before = hsm_cached_keys(other);
    sk_kid kid;
    testenv_kid(&kid);
    assert_int_equal(hsm_generate(g->h, &kid, 2048), SK_OK);
    assert_int_equal(hsm_cached_keys(other), before);
    assert_signs_and_verifies(other, &kid, "made by the other handle");
    assert_int_equal(hsm_cached_keys(other), before + 1);
    /* A kid the token does not hold is still not found, and caches nothing. */
    sk_kid absent;
    testenv_kid(&absent);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    assert_int_equal(hsm_sign_rs256(other, &absent, "x", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(hsm_cached_keys(other), before + 1);
    hsm_close(other);
}

static void test_list_reports_private_and_public_halves(void **state)
{
    group *g = *state;
    sk_key_entry list[LIST_CAP];
    size_t n = 0;
    assert_int_equal(hsm_list(g->h, list, LIST_CAP, &n), SK_OK);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        assert_true(list[i].has_private);
        assert_true(list[i].has_public);
    }
    /* A capacity smaller than the token still reports the full count. */
    assert_int_equal(hsm_list(g->h, list, 1, &n), SK_OK);
    assert_int_equal(n, 2);

    /* A key whose private half vanished (a crash mid-destroy): list shows the lone public
     * half, the cache does not hold it, and hsm_destroy clears what is left. */
    assert_int_equal(group_generate(g, 2048), 0);
    const sk_kid *half = &g->kids[g->n_kids - 1];
    hsm_close(g->h);
    g->h = NULL;
    raw_token r;
    raw_open(&r, g->pin);
    assert_int_equal(r.f->C_DestroyObject(r.s, raw_find(&r, CKO_PRIVATE_KEY, half)), CKR_OK);
    raw_close(&r);
    group_reopen(g);

    assert_int_equal(hsm_cached_keys(g->h), 2);
    assert_int_equal(hsm_list(g->h, list, LIST_CAP, &n), SK_OK);
    assert_int_equal(n, 3);
    const sk_key_entry *e = find_entry(list, n, half);
    assert_non_null(e);
    assert_false(e->has_private);
    assert_true(e->has_public);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    assert_int_equal(hsm_sign_rs256(g->h, half, "x", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(hsm_destroy(g->h, half), SK_OK);
    assert_int_equal(hsm_list(g->h, list, LIST_CAP, &n), SK_OK);
    assert_int_equal(n, 2);
    assert_null(find_entry(list, n, half));
}

static void test_token_init_refuses_a_directory_that_has_a_token(void **state)
{
    group *g = *state;
    sk_pubkey before, after;
    assert_int_equal(hsm_public_key(g->h, &g->kids[0], &before), SK_OK);
    hsm_close(g->h);
    g->h = NULL;

    FILE *devnull = fopen("/dev/null", "w");
    assert_non_null(devnull);
    assert_int_equal(prov_token_init(g->dir, TESTENV_LABEL, HSM_DEFAULT_MODULE, devnull), -1);
    fclose(devnull);

    group_reopen(g);
    assert_int_equal(hsm_cached_keys(g->h), 2);
    assert_int_equal(hsm_public_key(g->h, &g->kids[0], &after), SK_OK);
    assert_int_equal(after.n_len, before.n_len);
    assert_memory_equal(after.n, before.n, before.n_len);
    assert_signs_and_verifies(g->h, &g->kids[0], "the same key after the refusal");
}

/* ---- group: errors --------------------------------------------------------------------- */

static int errors_setup(void **state)
{
    group *g = group_new();
    if (g == NULL)
        return -1;
    *state = g;
    return group_generate(g, 2048);
}

/* hsm_open with cfg fails with want; the group's own handle keeps working meanwhile. */
static void assert_open_fails(group *g, const hsm_config *cfg, sk_status want)
{
    hsm *h = (hsm *)0x1;
    assert_int_equal(hsm_open(cfg, &h, NULL), want);
    assert_null(h);
    assert_signs_and_verifies(g->h, &g->kids[0], "the open handle is unharmed");
}

static void test_wrong_pin_is_pin_incorrect(void **state)
{
    group *g = *state;
    char path[PATH_MAX];
    group_path(g, "wrong-pin", path);
    write_file(path, "0123456789abcdef0123456789abcdef\n", 0600);
    hsm_config cfg = g->cfg;
    cfg.pin_file = path;
    /* Alone in the process: beside a logged-in handle the token takes no PIN at all. */
    hsm_close(g->h);
    g->h = NULL;
    unsigned long ckr = 0;
    hsm *h = (hsm *)0x1;
    assert_int_equal(hsm_open(&cfg, &h, &ckr), SK_ERR_PIN_INCORRECT);
    assert_null(h);
    assert_int_equal(ckr, CKR_PIN_INCORRECT);
    assert_int_equal(hsm_last_ckr(), CKR_PIN_INCORRECT);
    group_reopen(g);
    assert_signs_and_verifies(g->h, &g->kids[0], "the right PIN still opens");
}

/* A PIN shorter than the token's ulMinPinLen (4 on SoftHSM2) is refused before C_Login, so
 * it spends none of a token's lockout tries (swtpm locks the whole TPM after 3). */
static void test_a_pin_outside_the_tokens_length_bounds_is_refused_before_login(void **state)
{
    group *g = *state;
    char path[PATH_MAX];
    group_path(g, "short-pin", path);
    write_file(path, "123\n", 0600);
    hsm_config cfg = g->cfg;
    cfg.pin_file = path;
    hsm_close(g->h);
    g->h = NULL;
    unsigned long ckr = 0;
    hsm *h = NULL;
    assert_int_equal(hsm_open(&cfg, &h, &ckr), SK_ERR_PIN_INCORRECT);
    assert_null(h);
    assert_int_equal(ckr, CKR_PIN_LEN_RANGE);
    assert_non_null(strstr(hsm_open_detail(), "holds 3 characters, the token takes 4 to"));
    group_reopen(g);
    assert_string_equal(hsm_open_detail(), "");
    assert_signs_and_verifies(g->h, &g->kids[0], "the right PIN still opens");
}

static void test_missing_token_label_is_token_not_found(void **state)
{
    group *g = *state;
    hsm_config cfg = g->cfg;
    cfg.token = "no-such-token";
    assert_open_fails(g, &cfg, SK_ERR_TOKEN_NOT_FOUND);
}

static void test_non_matching_uri_is_token_not_found(void **state)
{
    group *g = *state;
    hsm_config cfg = g->cfg;
    char uri[128];
    snprintf(uri, sizeof(uri), "pkcs11:token=%s;serial=%s", TESTENV_LABEL,
             strcmp(g->serial, "0000000000000000") ? "0000000000000000" : "1111111111111111");
    cfg.token = uri;
    assert_open_fails(g, &cfg, SK_ERR_TOKEN_NOT_FOUND);
    cfg.token = "pkcs11:token=other;serial=";
    assert_open_fails(g, &cfg, SK_ERR_TOKEN_NOT_FOUND);
    cfg.token = "pkcs11:model=not%20a%20softhsm";
    assert_open_fails(g, &cfg, SK_ERR_TOKEN_NOT_FOUND);
}

static void test_matching_uri_opens(void **state)
{
    group *g = *state;
    char uri[128];
    snprintf(uri, sizeof(uri), "pkcs11:token=%s;serial=%s", TESTENV_LABEL, g->serial);
    hsm_config cfg = g->cfg;
    cfg.token = uri;
    hsm *h = NULL;
    assert_int_equal(hsm_open(&cfg, &h, NULL), SK_OK);
    assert_int_equal(hsm_cached_keys(h), 1);
    assert_signs_and_verifies(h, &g->kids[0], "opened by URI");
    hsm_close(h);
    /* A second handle's close neither finalises the module nor logs out the first. */
    assert_signs_and_verifies(g->h, &g->kids[0], "the first handle outlives the second");

    /* Object and query attributes do not select the token; percent-encoding is decoded. */
    snprintf(uri, sizeof(uri), "pkcs11:token=%%73ignd;serial=%s;type=private?pin-source=x",
             g->serial);
    assert_int_equal(hsm_open(&cfg, &h, NULL), SK_OK);
    assert_signs_and_verifies(h, &g->kids[0], "opened by an encoded URI");
    hsm_close(h);
    assert_signs_and_verifies(g->h, &g->kids[0], "the first handle outlives the third");
}

/* The URI is p11-kit's to parse (p11_kit_uri_parse); what it cannot read, or reads only in
 * part, selects no token and is refused as a bad argument before the module is loaded. */
static void test_malformed_uri_is_bad_argument(void **state)
{
    group *g = *state;
    hsm_config cfg = g->cfg;
    static const char *const bad[] = {
        "pkcs11:",                                        /* no token attribute */
        "pkcs11:id=%01;type=private",                     /* object attributes only */
        "pkcs11:token",                                   /* no '=' */
        "pkcs11:token=sig%zznd",                          /* bad escape */
        "pkcs11:token=signd%4",                           /* cut escape */
        "pkcs11:token=abcdefghijabcdefghijabcdefghijabc", /* 33 bytes: no label is that long */
        "pkcs11:serial=00000000000000000",                /* 17 bytes */
        "pkcs11:token=signd;;serial=0000000000000000",    /* p11-kit would drop the serial */
        "pkcs11:;token=signd",                            /* an empty attribute first */
        "pkcs11:token=signd;no-such-attribute=1",         /* RFC 7512: unknown, never matches */
        "abcdefghijabcdefghijabcdefghijabc",              /* a label of 33 bytes */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cfg.token = bad[i];
        print_message("token = %s\n", bad[i]);
        assert_open_fails(g, &cfg, SK_ERR_BAD_ARGUMENT);
    }
}

static void test_uri_fields_given_must_all_match_and_empty_ones_select_nothing(void **state)
{
    group *g = *state;
    hsm_config cfg = g->cfg;
    char uri[256];
    hsm *h = NULL;
    /* SoftHSM2's manufacturer and model, percent-encoded; "serial=" gives no serial. */
    snprintf(uri, sizeof(uri),
             "pkcs11:manufacturer=SoftHSM%%20project;model=SoftHSM%%20v2;token=%s;serial=",
             TESTENV_LABEL);
    cfg.token = uri;
    assert_int_equal(hsm_open(&cfg, &h, NULL), SK_OK);
    assert_signs_and_verifies(h, &g->kids[0], "opened by manufacturer, model and label");
    hsm_close(h);
    snprintf(uri, sizeof(uri), "pkcs11:manufacturer=SoftHSM%%20project;token=%s%%20x",
             TESTENV_LABEL);
    assert_open_fails(g, &cfg, SK_ERR_TOKEN_NOT_FOUND); /* one field off is no match */
    snprintf(uri, sizeof(uri), "pkcs11:manufacturer=SoftHSM;token=%s", TESTENV_LABEL);
    assert_open_fails(g, &cfg, SK_ERR_TOKEN_NOT_FOUND); /* a prefix is no match */
}

static void test_token_init_refuses_while_a_handle_is_open(void **state)
{
    group *g = *state;
    char serial[17];
    /* It would have to re-initialise the library under the open handle. */
    assert_int_equal(hsm_init_token(HSM_DEFAULT_MODULE, "another", g->pin, g->pin, serial),
                     SK_ERR_BAD_ARGUMENT);
    assert_string_equal(serial, "");
    assert_signs_and_verifies(g->h, &g->kids[0], "the open handle is unharmed");
}

static void test_missing_module_is_module_load(void **state)
{
    group *g = *state;
    hsm_config cfg = g->cfg;
    cfg.module_path = "/nonexistent/libnothing-pkcs11.so";
    assert_open_fails(g, &cfg, SK_ERR_MODULE_LOAD);
    cfg.module_path = "libc.so.6"; /* loads, but is no PKCS#11 module */
    assert_open_fails(g, &cfg, SK_ERR_MODULE_LOAD);
}

static void test_pin_file_readable_by_others_is_pin_file(void **state)
{
    group *g = *state;
    char pin[HSM_PIN_MAX], path[PATH_MAX];
    size_t len = 0;
    assert_int_equal(hsm_read_pin_file(g->pin, pin, &len), SK_OK);
    pin[len] = '\n';
    pin[len + 1] = '\0';
    group_path(g, "open-pin", path);
    write_file(path, pin, 0644);
    explicit_bzero(pin, sizeof(pin));
    hsm_config cfg = g->cfg;
    cfg.pin_file = path;
    assert_open_fails(g, &cfg, SK_ERR_PIN_FILE);
    assert_int_equal(hsm_read_pin_file(path, pin, &len), SK_ERR_PIN_FILE);
    assert_int_equal(len, 0);

    cfg.pin_file = "/nonexistent/pin";
    assert_open_fails(g, &cfg, SK_ERR_PIN_FILE);
    group_path(g, "empty-pin", path);
    write_file(path, "", 0600);
    cfg.pin_file = path;
    assert_open_fails(g, &cfg, SK_ERR_PIN_FILE);
    group_path(g, "pin-link", path);
    assert_int_equal(symlink(g->pin, path), 0);
    assert_open_fails(g, &cfg, SK_ERR_PIN_FILE);
}

static void test_unknown_kid_is_key_not_found(void **state)
{
    group *g = *state;
    sk_kid kid;
    testenv_kid(&kid);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 1;
    assert_int_equal(hsm_sign_rs256(g->h, &kid, "x", 1, sig, &sig_len), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(sig_len, 0);
    sk_pubkey pk;
    assert_int_equal(hsm_public_key(g->h, &kid, &pk), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(hsm_destroy(g->h, &kid), SK_ERR_KEY_NOT_FOUND);
}

static void test_bad_bits_is_bad_argument(void **state)
{
    group *g = *state;
    unsigned bad[] = {0, 1024, 2047, 2049, 8192};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sk_kid kid;
        testenv_kid(&kid);
        assert_int_equal(hsm_generate(g->h, &kid, bad[i]), SK_ERR_BAD_ARGUMENT);
    }
    assert_int_equal(hsm_cached_keys(g->h), 1);
}

static void test_generating_an_existing_kid_is_key_exists(void **state)
{
    group *g = *state;
    sk_pubkey before, after;
    assert_int_equal(hsm_public_key(g->h, &g->kids[0], &before), SK_OK);
    assert_int_equal(hsm_generate(g->h, &g->kids[0], 2048), SK_ERR_KEY_EXISTS);
    assert_int_equal(hsm_public_key(g->h, &g->kids[0], &after), SK_OK);
    assert_memory_equal(after.n, before.n, before.n_len);
    sk_key_entry list[LIST_CAP];
    size_t n = 0;
    assert_int_equal(hsm_list(g->h, list, LIST_CAP, &n), SK_OK);
    assert_int_equal(n, 1);
}

static void test_every_status_has_a_distinct_name_and_message(void **state)
{
    (void)state;
    for (int a = 0; a < SK_ERR_COUNT_; a++) {
        const char *name = sk_status_name((sk_status)a), *msg = sk_strerror((sk_status)a);
        assert_non_null(name);
        assert_non_null(msg);
        assert_true(name[0] != '\0');
        assert_true(msg[0] != '\0');
        assert_string_not_equal(name, "unknown");
        for (const char *p = name; *p; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
        for (int b = 0; b < a; b++) {
            assert_string_not_equal(name, sk_status_name((sk_status)b));
            assert_string_not_equal(msg, sk_strerror((sk_status)b));
        }
    }
    assert_string_equal(sk_status_name(SK_ERR_COUNT_), "unknown");
    assert_string_equal(sk_status_name(SK_ERR_PIN_INCORRECT), "pin_incorrect");
}

static void test_kid_hex_round_trips_and_parse_is_strict(void **state)
{
    (void)state;
    sk_kid kid, back;
    testenv_kid(&kid);
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(&kid, hex);
    assert_int_equal(strlen(hex), 32);
    assert_int_equal(sk_kid_parse(hex, &back), 0);
    assert_memory_equal(back.b, kid.b, SK_KID_LEN);
    assert_int_equal(sk_kid_parse("0123456789ABCDEF0123456789abcdef", &back), -1);
    assert_int_equal(sk_kid_parse("0123456789abcdef0123456789abcde", &back), -1);
    assert_int_equal(sk_kid_parse("0123456789abcdef0123456789abcdef0", &back), -1);
    assert_int_equal(sk_kid_parse("0123456789abcdef0123456789abcdeg", &back), -1);
    assert_int_equal(sk_kid_parse(NULL, &back), -1);
}

/* ---- group: concurrency ----------------------------------------------------------------- */

static int concurrency_setup(void **state)
{
    group *g = group_new();
    if (g == NULL)
        return -1;
    *state = g;
    return group_generate(g, 2048) || group_generate(g, 2048) ? -1 : 0;
}

typedef struct {
    group *g;
    int index;
    pthread_barrier_t *signed_all, *may_exit;
    int signed_ok, verified_ok;
    sk_status first_error;
} signer;

static void *signer_run(void *arg)
{
    signer *s = arg;
    EVP_PKEY *keys[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        sk_pubkey pk;
        if (hsm_public_key(s->g->h, &s->g->kids[k], &pk) == SK_OK)
            keys[k] = testenv_evp_from_pubkey(&pk);
    }
    s->first_error = SK_OK;
    for (int i = 0; i < SIGNATURES_PER_SIGNER; i++) {
        char msg[96];
        int len = snprintf(msg, sizeof(msg), "signer %d, message %d", s->index, i);
        int k = (i + s->index) % 2;
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        sk_status st = hsm_sign_rs256(s->g->h, &s->g->kids[k], msg, (size_t)len, sig, &sig_len);
        if (st != SK_OK) {
            if (s->first_error == SK_OK)
                s->first_error = st;
            continue;
        }
        s->signed_ok++;
        if (keys[k] != NULL && rs256_verifies(keys[k], msg, (size_t)len, sig, sig_len))
            s->verified_ok++;
    }
    EVP_PKEY_free(keys[0]);
    EVP_PKEY_free(keys[1]);
    pthread_barrier_wait(s->signed_all);
    pthread_barrier_wait(s->may_exit);
    return NULL;
}

static void test_eight_threads_sign_at_once_and_every_signature_verifies(void **state)
{
    group *g = *state;
    hsm_thread_done(g->h); /* the setup's generate left this thread a session */
    assert_int_equal(hsm_sessions_open(g->h), 0);

    pthread_barrier_t signed_all, may_exit;
    pthread_barrier_init(&signed_all, NULL, SIGNERS + 1);
    pthread_barrier_init(&may_exit, NULL, SIGNERS + 1);
    signer s[SIGNERS];
    pthread_t t[SIGNERS];
    for (int i = 0; i < SIGNERS; i++) {
        s[i] = (signer){.g = g, .index = i, .signed_all = &signed_all, .may_exit = &may_exit};
        assert_int_equal(pthread_create(&t[i], NULL, signer_run, &s[i]), 0);
    }
    pthread_barrier_wait(&signed_all);
    unsigned while_alive = hsm_sessions_open(g->h);
    pthread_barrier_wait(&may_exit);
    for (int i = 0; i < SIGNERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&signed_all);
    pthread_barrier_destroy(&may_exit);

    for (int i = 0; i < SIGNERS; i++) {
        assert_int_equal(s[i].first_error, SK_OK);
        assert_int_equal(s[i].signed_ok, SIGNATURES_PER_SIGNER);
        assert_int_equal(s[i].verified_ok, SIGNATURES_PER_SIGNER);
    }
    assert_true(while_alive <= SIGNERS);
    assert_int_equal(while_alive, SIGNERS);       /* one session per signing thread, no more */
    assert_int_equal(hsm_sessions_open(g->h), 0); /* closed as each thread exited */
}

typedef struct {
    group *g;
    pthread_barrier_t *hold;
    sk_status st;
} holder;

static void *holder_run(void *arg)
{
    holder *x = arg;
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len;
    x->st = hsm_sign_rs256(x->g->h, &x->g->kids[0], "held", 4, sig, &sig_len);
    pthread_barrier_wait(x->hold); /* every thread keeps its session until all have tried */
    pthread_barrier_wait(x->hold);
    return NULL;
}

static void test_thread_past_max_sessions_gets_session_count(void **state)
{
    group *g = *state;
    hsm_close(g->h);
    g->h = NULL;
    hsm_config cfg = g->cfg;
    cfg.max_sessions = 2;
    assert_int_equal(hsm_open(&cfg, &g->h, NULL), SK_OK);
    assert_int_equal(hsm_sessions_open(g->h), 0);

    pthread_barrier_t hold;
    pthread_barrier_init(&hold, NULL, 4);
    holder x[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        x[i] = (holder){.g = g, .hold = &hold, .st = SK_ERR_DEVICE};
        assert_int_equal(pthread_create(&t[i], NULL, holder_run, &x[i]), 0);
    }
    pthread_barrier_wait(&hold);
    unsigned while_held = hsm_sessions_open(g->h);
    pthread_barrier_wait(&hold);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&hold);

    int ok = 0, refused = 0;
    for (int i = 0; i < 3; i++) {
        ok += x[i].st == SK_OK;
        refused += x[i].st == SK_ERR_SESSION_COUNT;
    }
    assert_int_equal(ok, 2);
    assert_int_equal(refused, 1);
    assert_int_equal(while_held, 2);
    /* Sessions return as threads exit: the bound admits new threads again. */
    assert_int_equal(hsm_sessions_open(g->h), 0);
    assert_signs_and_verifies(g->h, &g->kids[0], "a session is free again");
    hsm_thread_done(g->h);
    assert_int_equal(hsm_sessions_open(g->h), 0);
}

/* ---- group: probing the token (issue 21) ----------------------------------------------- */

static int probe_setup(void **state)
{
    group *g = group_new();
    if (g == NULL)
        return -1;
    *state = g;
    return group_generate(g, 2048);
}

static void test_info_reports_what_the_token_says(void **state)
{
    group *g = *state;
    hsm_caps c;
    hsm_info(g->h, &c);
    /* SoftHSM2 has both paths: auto takes the one that hashes in the token. */
    assert_int_equal(c.sign_mechanism, HSM_MECH_SHA256_RSA_PKCS);
    assert_true(c.has_sha256_rsa_pkcs);
    assert_true(c.has_rsa_pkcs);
    /* Its CKM_RSA_PKCS_KEY_PAIR_GEN range (512 to 16384 in 2.6) covers ours. */
    assert_true(c.rsa_min_bits > 0 && c.rsa_min_bits <= 2048);
    assert_true(c.rsa_max_bits >= 4096);
    assert_true(c.pin_min > 0 && c.pin_min <= c.pin_max);
    assert_string_equal(c.label, TESTENV_LABEL);
    assert_string_equal(c.manufacturer, "SoftHSM project");
    assert_non_null(strstr(c.model, "SoftHSM"));
    assert_true(c.library_description[0] != '\0');
    /* No session limit of the token's: ours stands. */
    assert_int_equal(c.max_sessions, g->cfg.max_sessions ? g->cfg.max_sessions : 256);
    assert_false(c.sign_only_refused);
}

static void test_mechanism_names_round_trip_and_others_are_refused(void **state)
{
    (void)state;
    for (int m = HSM_MECH_AUTO; m <= HSM_MECH_RSA_PKCS; m++) {
        hsm_mech back;
        assert_int_equal(hsm_mech_parse(hsm_mech_name((hsm_mech)m), &back), 0);
        assert_int_equal(back, m);
    }
    hsm_mech x;
    assert_int_equal(hsm_mech_parse("RSA_PKCS", &x), -1);
    assert_int_equal(hsm_mech_parse("", &x), -1);
    assert_int_equal(hsm_mech_parse(NULL, &x), -1);
}

/* The two paths over the same key and messages: CKM_RSA_PKCS over the DigestInfo built
 * in hsm.c must give the very bytes CKM_SHA256_RSA_PKCS gives (PKCS#1 v1.5 is
 * deterministic), and both verify as RS256 with OpenSSL. */
static void test_both_sign_paths_give_identical_signatures(void **state)
{
    group *g = *state;
    static const char *const msgs[] = {"", "a", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
                                       "a longer message that spans more than one SHA-256 block "
                                       "of sixty-four bytes, to hash it in two rounds"};
    enum { N = sizeof(msgs) / sizeof(msgs[0]) };
    uint8_t want[N][SK_SIG_MAX];
    size_t want_len[N];
    for (size_t i = 0; i < N; i++)
        assert_int_equal(
            hsm_sign_rs256(g->h, &g->kids[0], msgs[i], strlen(msgs[i]), want[i], &want_len[i]),
            SK_OK);

    hsm_close(g->h);
    g->h = NULL;
    hsm_config forced = g->cfg;
    forced.sign_mechanism = HSM_MECH_RSA_PKCS;
    assert_int_equal(hsm_open(&forced, &g->h, NULL), SK_OK);
    hsm_caps c;
    hsm_info(g->h, &c);
    assert_int_equal(c.sign_mechanism, HSM_MECH_RSA_PKCS);
    EVP_PKEY *key = evp_for_kid(g->h, &g->kids[0]);
    for (size_t i = 0; i < N; i++) {
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        assert_int_equal(hsm_sign_rs256(g->h, &g->kids[0], msgs[i], strlen(msgs[i]), sig, &sig_len),
                         SK_OK);
        assert_int_equal(sig_len, want_len[i]);
        assert_memory_equal(sig, want[i], sig_len);
        assert_true(rs256_verifies(key, msgs[i], strlen(msgs[i]), sig, sig_len));
    }
    EVP_PKEY_free(key);

    hsm_close(g->h);
    g->h = NULL;
    forced.sign_mechanism = HSM_MECH_SHA256_RSA_PKCS;
    assert_int_equal(hsm_open(&forced, &g->h, NULL), SK_OK);
    hsm_info(g->h, &c);
    assert_int_equal(c.sign_mechanism, HSM_MECH_SHA256_RSA_PKCS);
    group_reopen(g);
}

static void test_a_size_outside_the_tokens_range_is_key_size_unsupported(void **state)
{
    group *g = *state;
    /* SoftHSM2 makes every size of ours: stand in for tpm2-pkcs11, which stops at 3072. */
    hsm_test_force(g->h, 0, 3072);
    hsm_caps c;
    hsm_info(g->h, &c);
    assert_int_equal(c.rsa_max_bits, 3072);
    sk_kid kid;
    testenv_kid(&kid);
    size_t before = hsm_cached_keys(g->h);
    assert_int_equal(hsm_generate(g->h, &kid, 4096), SK_ERR_KEY_SIZE);
    assert_int_equal(hsm_cached_keys(g->h), before);
    sk_pubkey pk;
    assert_int_equal(hsm_public_key(g->h, &kid, &pk), SK_ERR_KEY_NOT_FOUND);
    /* A size not ours at all stays the caller's error of another kind. */
    assert_int_equal(hsm_generate(g->h, &kid, 1024), SK_ERR_BAD_ARGUMENT);
    assert_string_equal(sk_status_name(SK_ERR_KEY_SIZE), "key_size_unsupported");
    group_reopen(g);
}

static void test_a_new_keys_attributes_are_read_back_from_the_token(void **state)
{
    group *g = *state;
    sk_kid kid;
    testenv_kid(&kid);
    hsm_attrs made;
    assert_int_equal(hsm_generate_attrs(g->h, &kid, 2048, &made), SK_OK);
    assert_true(made.sensitive);
    assert_false(made.extractable);
    assert_true(made.never_extractable);
    assert_true(made.sign_only);
    hsm_attrs read;
    assert_int_equal(hsm_key_attrs(g->h, &kid, &read), SK_OK);
    assert_memory_equal(&read, &made, sizeof(read));
    assert_int_equal(hsm_attrs_bits(&read), SK_ATTR_READ | SK_ATTR_SENSITIVE |
                                                SK_ATTR_NEVER_EXTRACTABLE | SK_ATTR_SIGN_ONLY);
    /* A key found in the token at open reads the same. */
    group_reopen(g);
    assert_int_equal(hsm_key_attrs(g->h, &kid, &read), SK_OK);
    assert_memory_equal(&read, &made, sizeof(read));
    sk_kid unknown;
    testenv_kid(&unknown);
    assert_int_equal(hsm_key_attrs(g->h, &unknown, &read), SK_ERR_KEY_NOT_FOUND);
    assert_int_equal(hsm_destroy(g->h, &kid), SK_OK);
}

/* tpm2-pkcs11 refuses CKA_DECRYPT = FALSE: the test hook answers the sign-only template as
 * such a module does, and the real token then makes the key from the fallback template. */
static void test_a_refused_sign_only_template_falls_back_once_and_says_so(void **state)
{
    group *g = *state;
    hsm_test_force(g->h, HSM_TEST_REFUSE_SIGN_ONLY, 0);
    sk_kid kid;
    testenv_kid(&kid);
    hsm_attrs a;
    assert_int_equal(hsm_generate_attrs(g->h, &kid, 2048, &a), SK_OK);
    /* Still inside the token for good, but no longer sign-only: said, not hidden. */
    assert_true(a.sensitive);
    assert_false(a.extractable);
    assert_true(a.never_extractable);
    assert_false(a.sign_only);
    hsm_caps c;
    hsm_info(g->h, &c);
    assert_true(c.sign_only_refused);
    assert_signs_and_verifies(g->h, &kid, "a key of the fallback template signs");
    hsm_attrs read;
    assert_int_equal(hsm_key_attrs(g->h, &kid, &read), SK_OK);
    assert_memory_equal(&read, &a, sizeof(read));

    /* Remembered: with the hook off, the next key goes straight to the fallback template
     * (a real refusing module is not asked the refused template again). */
    hsm_test_force(g->h, 0, 0);
    sk_kid next;
    testenv_kid(&next);
    assert_int_equal(hsm_generate_attrs(g->h, &next, 2048, &a), SK_OK);
    assert_false(a.sign_only);
    assert_true(a.sensitive);

    /* A new handle asks again, and SoftHSM2 makes sign-only keys. */
    group_reopen(g);
    hsm_info(g->h, &c);
    assert_false(c.sign_only_refused);
    sk_kid again;
    testenv_kid(&again);
    assert_int_equal(hsm_generate_attrs(g->h, &again, 2048, &a), SK_OK);
    assert_true(a.sign_only);
    assert_int_equal(hsm_destroy(g->h, &kid), SK_OK);
    assert_int_equal(hsm_destroy(g->h, &next), SK_OK);
    assert_int_equal(hsm_destroy(g->h, &again), SK_OK);
}

/* A module that ignores CKA_SENSITIVE would give out the private key: the key is read back,
 * destroyed, and the call fails; nothing with its kid stays in the token. */
static void test_a_key_the_token_made_not_sensitive_is_destroyed_and_refused(void **state)
{
    group *g = *state;
    hsm_test_force(g->h, HSM_TEST_NOT_SENSITIVE, 0);
    sk_kid kid;
    testenv_kid(&kid);
    size_t before = hsm_cached_keys(g->h);
    hsm_attrs a;
    assert_int_equal(hsm_generate_attrs(g->h, &kid, 2048, &a), SK_ERR_KEY_WEAK);
    assert_int_equal(hsm_cached_keys(g->h), before);
    hsm_test_force(g->h, 0, 0);
    sk_key_entry list[LIST_CAP];
    size_t n = 0;
    assert_int_equal(hsm_list(g->h, list, LIST_CAP, &n), SK_OK);
    for (size_t i = 0; i < n && i < LIST_CAP; i++)
        assert_memory_not_equal(list[i].kid.b, kid.b, SK_KID_LEN);
    assert_int_equal(hsm_key_attrs(g->h, &kid, &a), SK_ERR_KEY_NOT_FOUND);
    group_reopen(g);
}

/* ---- group: re-opening the module (hsm.h, "Re-opening") ----------------------------------- */

#define REOPEN_SIGNERS 4
#define REOPENS 5

typedef struct {
    unsigned ok, refused, failed;
    unsigned long last_reopens;
} reopen_log;

static void reopen_logged(void *arg, unsigned long ckr, sk_status st, unsigned long reopens)
{
    reopen_log *l = arg;
    assert_int_equal(ckr, CKR_GENERAL_ERROR);
    if (st == SK_OK)
        l->ok++;
    else if (st == SK_ERR_SESSION_COUNT)
        l->refused++;
    else
        l->failed++;
    l->last_reopens = reopens;
}

static reopen_log reopen_calls;

/* A group of its own per test (the per-minute bound counts per handle), with two keys and
 * the handle opened again with the re-open callback. */
static int reopen_setup(void **state)
{
    if (concurrency_setup(state) != 0)
        return -1;
    group *g = *state;
    memset(&reopen_calls, 0, sizeof(reopen_calls));
    g->cfg.on_reopen = reopen_logged;
    g->cfg.on_reopen_arg = &reopen_calls;
    hsm_close(g->h);
    g->h = NULL;
    return hsm_open(&g->cfg, &g->h, NULL) == SK_OK ? 0 : -1;
}

typedef struct {
    group *g;
    int index;
    atomic_int *stop;
    unsigned signed_ok, verified_ok, failed;
    sk_status first_error;
} busy_signer;

/* Signs until told to stop, each signature checked. */
static void *busy_signer_run(void *arg)
{
    busy_signer *s = arg;
    EVP_PKEY *keys[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        sk_pubkey pk;
        if (hsm_public_key(s->g->h, &s->g->kids[k], &pk) == SK_OK)
            keys[k] = testenv_evp_from_pubkey(&pk);
    }
    for (int i = 0; !atomic_load(s->stop); i++) {
        char msg[96];
        int len = snprintf(msg, sizeof(msg), "busy signer %d, message %d", s->index, i);
        int k = (i + s->index) % 2;
        uint8_t sig[SK_SIG_MAX];
        size_t sig_len = 0;
        sk_status st = hsm_sign_rs256(s->g->h, &s->g->kids[k], msg, (size_t)len, sig, &sig_len);
        if (st != SK_OK) {
            if (s->failed++ == 0)
                s->first_error = st;
            continue;
        }
        s->signed_ok++;
        if (keys[k] != NULL && rs256_verifies(keys[k], msg, (size_t)len, sig, sig_len))
            s->verified_ok++;
    }
    EVP_PKEY_free(keys[0]);
    EVP_PKEY_free(keys[1]);
    return NULL;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* The module is finalised and initialised again REOPENS times while four threads sign
 * without a pause: no crash (C_Finalize never runs under a signer), no signature fails or
 * fails to verify, the keys' handles are found again, and each signer keeps one session. */
static void test_reopen_while_threads_sign_fails_no_signature(void **state)
{
    group *g = *state;
    hsm_thread_done(g->h);
    atomic_int stop = 0;
    busy_signer s[REOPEN_SIGNERS];
    pthread_t t[REOPEN_SIGNERS];
    for (int i = 0; i < REOPEN_SIGNERS; i++) {
        s[i] = (busy_signer){.g = g, .index = i, .stop = &stop};
        assert_int_equal(pthread_create(&t[i], NULL, busy_signer_run, &s[i]), 0);
    }
    for (int r = 0; r < REOPENS; r++) {
        sleep_ms(60);
        assert_int_equal(hsm_test_reopen(g->h), SK_OK);
    }
    sleep_ms(100);
    unsigned sessions = hsm_sessions_open(g->h);
    atomic_store(&stop, 1);
    for (int i = 0; i < REOPEN_SIGNERS; i++)
        pthread_join(t[i], NULL);
    unsigned total = 0;
    for (int i = 0; i < REOPEN_SIGNERS; i++) {
        assert_int_equal(s[i].failed, 0);
        assert_int_equal(s[i].first_error, SK_OK);
        assert_int_equal(s[i].verified_ok, s[i].signed_ok);
        assert_true(s[i].signed_ok > 0);
        total += s[i].signed_ok;
    }
    fprintf(stderr, "# %u signatures across %d re-opens\n", total, REOPENS);
    assert_int_equal(hsm_reopens(g->h), REOPENS);
    assert_int_equal(reopen_calls.ok, REOPENS);
    assert_int_equal(reopen_calls.last_reopens, REOPENS);
    assert_int_equal(hsm_cached_keys(g->h), 2);
    assert_int_equal(sessions, REOPEN_SIGNERS); /* reopened in place, not leaked */
    assert_int_equal(hsm_sessions_open(g->h), 0);
    /* Signers that started after the last re-open see the new generation. */
    assert_signs_and_verifies(g->h, &g->kids[0], "after the re-opens");
}

/* A call that fails as tpm2-pkcs11 at its bound re-opens the module and succeeds the
 * second time; a call that fails again after the re-open gives its error (one retry, one
 * re-open: no loop); generation goes through the same path. */
static void test_an_exhausted_call_reopens_the_module_and_is_tried_once_more(void **state)
{
    group *g = *state;
    hsm_test_exhaust(g->h, 1);
    assert_signs_and_verifies(g->h, &g->kids[0], "exhausted once");
    assert_int_equal(hsm_reopens(g->h), 1);

    hsm_test_exhaust(g->h, 2);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    assert_int_equal(hsm_sign_rs256(g->h, &g->kids[1], "twice", 5, sig, &sig_len), SK_ERR_DEVICE);
    assert_int_equal(hsm_last_ckr(), CKR_GENERAL_ERROR);
    assert_int_equal(hsm_reopens(g->h), 2);
    assert_signs_and_verifies(g->h, &g->kids[1], "and then fine");

    hsm_test_exhaust(g->h, 1);
    sk_kid kid;
    testenv_kid(&kid);
    assert_int_equal(hsm_generate(g->h, &kid, 2048), SK_OK);
    assert_int_equal(hsm_reopens(g->h), 3);
    assert_signs_and_verifies(g->h, &kid, "made after a re-open");
    assert_int_equal(hsm_cached_keys(g->h), 3);
    assert_int_equal(reopen_calls.ok, 3);
}

/* At most HSM_REOPEN_PER_MIN re-opens a minute: the next is refused (the caller's error
 * stands, the callback says so once), and the handle keeps working. */
static void test_reopens_past_the_bound_per_minute_are_refused(void **state)
{
    group *g = *state;
    for (int i = 0; i < HSM_REOPEN_PER_MIN; i++)
        assert_int_equal(hsm_test_reopen(g->h), SK_OK);
    assert_int_equal(hsm_test_reopen(g->h), SK_ERR_DEVICE);
    hsm_test_exhaust(g->h, 1);
    uint8_t sig[SK_SIG_MAX];
    size_t sig_len = 0;
    assert_int_equal(hsm_sign_rs256(g->h, &g->kids[0], "bounded", 7, sig, &sig_len), SK_ERR_DEVICE);
    assert_int_equal(hsm_last_ckr(), CKR_GENERAL_ERROR);
    assert_int_equal(hsm_reopens(g->h), HSM_REOPEN_PER_MIN);
    assert_int_equal(reopen_calls.ok, HSM_REOPEN_PER_MIN);
    assert_int_equal(reopen_calls.refused, 1); /* logged once, not per refusal */
    assert_int_equal(reopen_calls.failed, 0);
    assert_signs_and_verifies(g->h, &g->kids[0], "still signs");
}

int main(void)
{
    const struct CMUnitTest keys[] = {
        cmocka_unit_test(test_signature_from_every_key_size_verifies_with_openssl),
        cmocka_unit_test(test_flipped_byte_fails_verification),
        cmocka_unit_test(test_signature_is_deterministic_pkcs1_v15),
        cmocka_unit_test(test_private_key_is_sensitive_and_never_extractable),
    };
    const struct CMUnitTest lifecycle[] = {
        cmocka_unit_test(test_destroyed_kid_cannot_sign_and_is_gone_from_list),
        cmocka_unit_test(test_reopen_caches_exactly_the_surviving_keys),
        cmocka_unit_test(test_list_reports_private_and_public_halves),
        cmocka_unit_test(test_token_init_refuses_a_directory_that_has_a_token),
    };
    const struct CMUnitTest errors[] = {
        cmocka_unit_test(test_wrong_pin_is_pin_incorrect),
        cmocka_unit_test(test_a_pin_outside_the_tokens_length_bounds_is_refused_before_login),
        cmocka_unit_test(test_missing_token_label_is_token_not_found),
        cmocka_unit_test(test_non_matching_uri_is_token_not_found),
        cmocka_unit_test(test_matching_uri_opens),
        cmocka_unit_test(test_malformed_uri_is_bad_argument),
        cmocka_unit_test(test_uri_fields_given_must_all_match_and_empty_ones_select_nothing),
        cmocka_unit_test(test_token_init_refuses_while_a_handle_is_open),
        cmocka_unit_test(test_missing_module_is_module_load),
        cmocka_unit_test(test_pin_file_readable_by_others_is_pin_file),
        cmocka_unit_test(test_unknown_kid_is_key_not_found),
        cmocka_unit_test(test_bad_bits_is_bad_argument),
        cmocka_unit_test(test_generating_an_existing_kid_is_key_exists),
        cmocka_unit_test(test_every_status_has_a_distinct_name_and_message),
        cmocka_unit_test(test_kid_hex_round_trips_and_parse_is_strict),
    };
    const struct CMUnitTest concurrency[] = {
        cmocka_unit_test(test_eight_threads_sign_at_once_and_every_signature_verifies),
        cmocka_unit_test(test_thread_past_max_sessions_gets_session_count),
    };
    const struct CMUnitTest probing[] = {
        cmocka_unit_test(test_info_reports_what_the_token_says),
        cmocka_unit_test(test_mechanism_names_round_trip_and_others_are_refused),
        cmocka_unit_test(test_both_sign_paths_give_identical_signatures),
        cmocka_unit_test(test_a_size_outside_the_tokens_range_is_key_size_unsupported),
        cmocka_unit_test(test_a_new_keys_attributes_are_read_back_from_the_token),
        cmocka_unit_test(test_a_refused_sign_only_template_falls_back_once_and_says_so),
        cmocka_unit_test(test_a_key_the_token_made_not_sensitive_is_destroyed_and_refused),
    };
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_a_key_generated_after_open_is_found_in_the_token_on_first_use),
    };
    const struct CMUnitTest reopening[] = {
        cmocka_unit_test_setup_teardown(test_reopen_while_threads_sign_fails_no_signature,
                                        reopen_setup, group_teardown),
        cmocka_unit_test_setup_teardown(
            test_an_exhausted_call_reopens_the_module_and_is_tried_once_more, reopen_setup,
            group_teardown),
        cmocka_unit_test_setup_teardown(test_reopens_past_the_bound_per_minute_are_refused,
                                        reopen_setup, group_teardown),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("hsm re-open", reopening, NULL, NULL);
    failed += cmocka_run_group_tests_name("hsm keys", keys, keys_setup, group_teardown);
    failed +=
        cmocka_run_group_tests_name("hsm lifecycle", lifecycle, lifecycle_setup, group_teardown);
    failed += cmocka_run_group_tests_name("hsm errors", errors, errors_setup, group_teardown);
    failed += cmocka_run_group_tests_name("hsm probing", probing, probe_setup, group_teardown);
    failed += cmocka_run_group_tests_name("hsm shared token", shared, errors_setup, group_teardown);
    failed += cmocka_run_group_tests_name("hsm concurrency", concurrency, concurrency_setup,
                                          group_teardown);
    return failed == 0 ? 0 : 1;
}
