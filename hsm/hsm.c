/* hsm: the PKCS#11 layer. See hsm.h for what it owns and why it calls the function list. */
#include "hsm/hsm.h"
#include "base/clock.h"
#include "base/file.h"
#include "base/lock.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include <openssl/sha.h>

#define HSM_CACHE_SLOTS 8192 /* power of two; holds HSM_CACHE_MAX keys at < 50 % load */
#define HSM_CACHE_MAX 4096
#define HSM_FIND_BATCH 128
#define HSM_GENERATE_TRIES 3
#define HSM_URI_MAX 1024
#define HSM_MECH_LIST_MAX 4096     /* mechanisms read from the token, far above any module's */
#define HSM_REOPEN_WINDOW_MS 60000 /* HSM_REOPEN_PER_MIN re-opens at most in this window */

/* DER of DigestInfo { AlgorithmIdentifier { id-sha256, NULL }, OCTET STRING (32) }: what
 * RFC 8017 9.2 puts before the SHA-256 hash for RSASSA-PKCS1-v1_5, and what
 * CKM_SHA256_RSA_PKCS builds inside the token. */
static const uint8_t hsm_sha256_prefix[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                              0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                              0x01, 0x05, 0x00, 0x04, 0x20};

/* One cached key: handles of both halves and the signature size. */
typedef struct {
    sk_kid kid;
    CK_OBJECT_HANDLE priv;
    CK_OBJECT_HANDLE pub;
    unsigned sig_len;
    uint8_t used; /* 0 empty, 1 live, 2 deleted (tombstone keeps probe chains intact) */
} hsm_slot;

/* A calling thread's session; linked into the handle's list so hsm_close can find it. */
typedef struct hsm_tsess {
    hsm *h;
    CK_SESSION_HANDLE s; /* CK_INVALID_HANDLE once a re-open closed it */
    unsigned gen;        /* the handle's generation the session was opened in */
    struct hsm_tsess *prev, *next;
} hsm_tsess;

struct hsm {
    void *dl;
    CK_FUNCTION_LIST_PTR f;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE login;
    /* What this handle did itself and so must undo: a second handle in the same process
     * finds the module initialised and the token logged in, and must not finalise or log
     * out under the first one when it closes (or fails to open). */
    int initialized;
    int logged_in;
    pthread_key_t tkey;
    pthread_mutex_t sess_mu; /* guards the session list and count; never on the sign path */
    hsm_tsess *sessions;
    unsigned n_sessions;
    unsigned max_sessions;
    /* Probed at open, read-only after it (the signing path reads sign_mech without a lock). */
    hsm_caps caps;
    CK_MECHANISM_TYPE sign_mech; /* CKM_SHA256_RSA_PKCS, or CKM_RSA_PKCS over a DigestInfo */
    atomic_int no_sign_only;     /* the token refused a sign-only template: skip it from now on */
    unsigned test_flags;         /* hsm_test_force */
    pthread_rwlock_t cache_mu;   /* readers: sign, public key; writers: generate, destroy */
    size_t n_cached;
    size_t n_dead; /* tombstones: rehashed away past a quarter of the table */
    /* Re-opening the module (hsm_reopen). Every call into the module runs with gate held
     * for reading, once per public call (the lock is not recursive: a waiting writer would
     * block a second read lock); a re-open holds it for writing, so C_Finalize never runs
     * while another thread is inside the module. gen changes only under the write side: a
     * per-thread session of an older generation was closed by a re-open and is opened
     * again on its thread's next call. */
    pthread_rwlock_t gate;
    unsigned gen;
    pthread_mutex_t reopen_mu;             /* one re-open at a time; guards reopen_at */
    int64_t reopen_at[HSM_REOPEN_PER_MIN]; /* monotonic ms of the last re-opens, a ring */
    unsigned reopen_next;
    atomic_ulong reopens;         /* successful re-opens (hsm_reopens) */
    atomic_ulong reopens_refused; /* re-opens not attempted: past HSM_REOPEN_PER_MIN */
    int reopen_on_general;        /* CKR_GENERAL_ERROR means "out of loaded objects" */
    atomic_int broken;            /* the last re-open failed: the next failure tries again */
    atomic_uint test_exhaust;     /* hsm_test_exhaust */
    hsm_reopen_fn on_reopen;
    void *on_reopen_arg;
    /* What a re-open needs again: the configuration's texts, copied at open. */
    char *cfg_token;
    char *cfg_pin_file;
    hsm_slot cache[HSM_CACHE_SLOTS];
};

static _Thread_local unsigned long hsm_tl_ckr;
static _Thread_local char hsm_tl_detail[64];

const char *hsm_open_detail(void)
{
    return hsm_tl_detail;
}

const char *hsm_mech_name(hsm_mech m)
{
    switch (m) {
    case HSM_MECH_SHA256_RSA_PKCS:
        return "sha256_rsa_pkcs";
    case HSM_MECH_RSA_PKCS:
        return "rsa_pkcs";
    default:
        return "auto";
    }
}

int hsm_mech_parse(const char *text, hsm_mech *out)
{
    for (int m = HSM_MECH_AUTO; m <= HSM_MECH_RSA_PKCS; m++) {
        if (text != NULL && strcmp(text, hsm_mech_name((hsm_mech)m)) == 0) {
            *out = (hsm_mech)m;
            return 0;
        }
    }
    return -1;
}

unsigned long hsm_last_ckr(void)
{
    return hsm_tl_ckr;
}

/* Records rv for hsm_last_ckr and maps it to our enum. */
static sk_status hsm_from_ckr(CK_RV rv)
{
    hsm_tl_ckr = rv;
    switch (rv) {
    case CKR_OK:
        return SK_OK;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
        return SK_ERR_PIN_INCORRECT;
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
        return SK_ERR_PIN_LOCKED;
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
        return SK_ERR_KEY_NOT_FOUND;
    case CKR_DEVICE_MEMORY:
        return SK_ERR_TOKEN_FULL;
    case CKR_SESSION_COUNT:
        return SK_ERR_SESSION_COUNT;
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SLOT_ID_INVALID:
        return SK_ERR_TOKEN_NOT_FOUND;
    case CKR_ARGUMENTS_BAD:
    case CKR_DATA_LEN_RANGE:
        return SK_ERR_BAD_ARGUMENT;
    case CKR_KEY_SIZE_RANGE:
        return SK_ERR_KEY_SIZE;
    case CKR_MECHANISM_INVALID:
        return SK_ERR_MECHANISM;
    default:
        return SK_ERR_DEVICE;
    }
}

/* ---- PIN files ----------------------------------------------------------------------- */

sk_status hsm_read_pin_file(const char *path, char buf[HSM_PIN_MAX], size_t *len)
{
    hsm_tl_ckr = 0;
    memset(buf, 0, HSM_PIN_MAX);
    *len = 0;
    size_t got = 0;
    if (file_read(path, FILE_REGULAR | FILE_NOFOLLOW | FILE_PRIVATE, buf, HSM_PIN_MAX, &got,
                  NULL) != FILE_OK)
        return SK_ERR_PIN_FILE;
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
        buf[--got] = '\0';
    if (got == 0 || memchr(buf, '\0', got) != NULL) {
        explicit_bzero(buf, HSM_PIN_MAX);
        return SK_ERR_PIN_FILE;
    }
    *len = got;
    return SK_OK;
}

/* ---- module and token ---------------------------------------------------------------- */

/* *initialized is 1 when our C_Initialize did it, 0 when the module already was. */
static sk_status hsm_load_module(const char *path, void **dl, CK_FUNCTION_LIST_PTR *f,
                                 int *initialized)
{
    hsm_tl_ckr = 0;
    *initialized = 0;
    /* RTLD_NODELETE: SoftHSM2 registers OpenSSL clean-up that must outlive dlclose. */
    *dl = dlopen(path ? path : HSM_DEFAULT_MODULE, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (*dl == NULL)
        return SK_ERR_MODULE_LOAD;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(*dl, "C_GetFunctionList");
    if (get == NULL || get(f) != CKR_OK || *f == NULL) {
        dlclose(*dl);
        *dl = NULL;
        return SK_ERR_MODULE_LOAD;
    }
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv = (*f)->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        dlclose(*dl);
        *dl = NULL;
        sk_status st = hsm_from_ckr(rv);
        return st == SK_ERR_DEVICE ? SK_ERR_MODULE_LOAD : st;
    }
    *initialized = rv == CKR_OK;
    return SK_OK;
}

/* Which token to use: a URI of p11-kit's whose token fields (label, manufacturer, model,
 * serial) are those the configuration gave; a field left zero matches any token, so every
 * field given must match (p11_kit_uri_match_token_info). */
typedef P11KitUri *hsm_match;

/* A field p11-kit filled with blanks only (an empty "serial=") selects nothing, as the
 * label or URI gives no value for it: zero it, so it matches any token. */
static int hsm_field_given(unsigned char *field, size_t len)
{
    size_t i = 0;
    while (i < len && field[i] == ' ')
        i++;
    if (i == len)
        memset(field, 0, len);
    return field[0] != 0;
}

/* The token whose label is label (1 to 32 bytes, blank-padded as PKCS#11 keeps it). */
static sk_status hsm_match_label(const char *label, hsm_match *m)
{
    *m = NULL;
    size_t n = label != NULL ? strlen(label) : 0;
    if (n == 0 || n > 32)
        return SK_ERR_BAD_ARGUMENT;
    P11KitUri *uri = p11_kit_uri_new();
    if (uri == NULL)
        return SK_ERR_DEVICE;
    CK_TOKEN_INFO *ti = p11_kit_uri_get_token_info(uri);
    memset(ti->label, ' ', sizeof(ti->label));
    memcpy(ti->label, label, n);
    *m = uri;
    return SK_OK;
}

/* spec: a token label (at most 32 bytes) or an RFC 7512 "pkcs11:" URI. *m is freed by
 * p11_kit_uri_free. SK_ERR_BAD_ARGUMENT for a URI that does not parse, names an attribute
 * p11-kit does not know, has a value too long for its field, or selects no token field. */
static sk_status hsm_parse_match(const char *spec, hsm_match *m)
{
    *m = NULL;
    if (spec == NULL || *spec == '\0')
        return SK_ERR_BAD_ARGUMENT;
    if (strncmp(spec, "pkcs11:", 7) != 0)
        return hsm_match_label(spec, m);
    P11KitUri *uri = p11_kit_uri_new();
    if (uri == NULL)
        return SK_ERR_DEVICE;
    /* p11-kit stops reading the path at an empty attribute (";;"): what follows would be
     * dropped and the match widened, so such a URI is refused. */
    const char *path = spec + 7;
    size_t path_len = strcspn(path, "?");
    int ok = path_len <= HSM_URI_MAX && path[0] != ';' && memmem(path, path_len, ";;", 2) == NULL &&
             p11_kit_uri_parse(spec, P11_KIT_URI_FOR_ANY, uri) == P11_KIT_URI_OK &&
             !p11_kit_uri_any_unrecognized(uri);
    if (ok) {
        CK_TOKEN_INFO *ti = p11_kit_uri_get_token_info(uri);
        int given = hsm_field_given(ti->label, sizeof(ti->label));
        given |= hsm_field_given(ti->manufacturerID, sizeof(ti->manufacturerID));
        given |= hsm_field_given(ti->model, sizeof(ti->model));
        given |= hsm_field_given(ti->serialNumber, sizeof(ti->serialNumber));
        ok = given;
    }
    if (!ok) {
        p11_kit_uri_free(uri);
        return SK_ERR_BAD_ARGUMENT;
    }
    *m = uri;
    return SK_OK;
}

static void hsm_match_free(hsm_match m)
{
    if (m != NULL)
        p11_kit_uri_free(m);
}

/* Finds the first initialised token matching m. */
static sk_status hsm_find_slot(CK_FUNCTION_LIST_PTR f, hsm_match m, CK_SLOT_ID *slot)
{
    CK_ULONG n = 0;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK)
        return hsm_from_ckr(rv);
    if (n == 0)
        return SK_ERR_TOKEN_NOT_FOUND;
    CK_SLOT_ID *ids = calloc(n, sizeof(*ids));
    if (ids == NULL)
        return SK_ERR_DEVICE;
    rv = f->C_GetSlotList(CK_TRUE, ids, &n);
    sk_status st = rv == CKR_OK ? SK_ERR_TOKEN_NOT_FOUND : hsm_from_ckr(rv);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(ids[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (p11_kit_uri_match_token_info(m, &ti)) {
            *slot = ids[i];
            st = SK_OK;
            break;
        }
    }
    free(ids);
    return st;
}

/* ---- handle cache -------------------------------------------------------------------- */

static size_t hsm_kid_hash(const sk_kid *kid)
{
    /* kids are 128 random bits: any 8 of them are a good hash. */
    uint64_t v;
    memcpy(&v, kid->b, sizeof(v));
    return (size_t)(v ^ (v >> 29));
}

/* The slot holding kid, or NULL. Caller holds cache_mu (read or write). */
static hsm_slot *hsm_cache_find(hsm *h, const sk_kid *kid)
{
    size_t mask = HSM_CACHE_SLOTS - 1;
    for (size_t i = hsm_kid_hash(kid) & mask, probes = 0; probes < HSM_CACHE_SLOTS;
         i = (i + 1) & mask, probes++) {
        hsm_slot *s = &h->cache[i];
        if (s->used == 0)
            return NULL;
        if (s->used == 1 && memcmp(s->kid.b, kid->b, SK_KID_LEN) == 0)
            return s;
    }
    return NULL;
}

/* The slot for kid, created if absent. Caller holds cache_mu for writing. */
static hsm_slot *hsm_cache_put(hsm *h, const sk_kid *kid)
{
    hsm_slot *s = hsm_cache_find(h, kid);
    if (s != NULL)
        return s;
    if (h->n_cached >= HSM_CACHE_MAX)
        return NULL;
    size_t mask = HSM_CACHE_SLOTS - 1;
    for (size_t i = hsm_kid_hash(kid) & mask;; i = (i + 1) & mask) {
        s = &h->cache[i];
        if (s->used != 1) {
            if (s->used == 2)
                h->n_dead--;
            memset(s, 0, sizeof(*s));
            s->kid = *kid;
            s->priv = s->pub = CK_INVALID_HANDLE;
            s->used = 1;
            h->n_cached++;
            return s;
        }
    }
}

/* Rebuilds the table without tombstones, so a miss (an unknown kid) stops at an empty
 * slot again instead of probing a table full of deleted entries. */
static void hsm_cache_rehash(hsm *h)
{
    hsm_slot *live = malloc(h->n_cached * sizeof(*live) + 1);
    if (live == NULL)
        return; /* still correct, only slower */
    size_t n = 0;
    for (size_t i = 0; i < HSM_CACHE_SLOTS; i++)
        if (h->cache[i].used == 1)
            live[n++] = h->cache[i];
    memset(h->cache, 0, sizeof(h->cache));
    h->n_cached = h->n_dead = 0;
    for (size_t i = 0; i < n; i++)
        *hsm_cache_put(h, &live[i].kid) = live[i];
    free(live);
}

static void hsm_cache_remove(hsm *h, const sk_kid *kid)
{
    hsm_slot *s = hsm_cache_find(h, kid);
    if (s != NULL) {
        s->used = 2;
        h->n_cached--;
        if (++h->n_dead > HSM_CACHE_SLOTS / 4)
            hsm_cache_rehash(h);
    }
}

size_t hsm_cached_keys(hsm *h)
{
    pthread_rwlock_rdlock(&h->cache_mu);
    size_t n = h->n_cached;
    pthread_rwlock_unlock(&h->cache_mu);
    return n;
}

/* ---- sessions ------------------------------------------------------------------------ */

static void hsm_tsess_release(hsm_tsess *t)
{
    hsm *h = t->h;
    pthread_mutex_lock(&h->sess_mu);
    if (t->prev)
        t->prev->next = t->next;
    else
        h->sessions = t->next;
    if (t->next)
        t->next->prev = t->prev;
    h->n_sessions--;
    pthread_mutex_unlock(&h->sess_mu);
    if (t->s != CK_INVALID_HANDLE)
        h->f->C_CloseSession(t->s);
    free(t);
}

static void hsm_tsess_destructor(void *p)
{
    if (p != NULL) {
        hsm *h = ((hsm_tsess *)p)->h;
        /* A thread may end while another re-opens the module. */
        pthread_rwlock_rdlock(&h->gate);
        hsm_tsess_release(p);
        pthread_rwlock_unlock(&h->gate);
    }
}

/* The calling thread's session, opened on first use. */
static sk_status hsm_session(hsm *h, CK_SESSION_HANDLE *s)
{
    hsm_tsess *t = pthread_getspecific(h->tkey);
    if (t != NULL && t->gen == h->gen) {
        *s = t->s;
        return SK_OK;
    }
    if (t != NULL) {
        /* A re-open closed it: open this thread's session again in the new instance. The
         * entry keeps its place in the list and in the count. */
        CK_RV rv =
            h->f->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &t->s);
        if (rv != CKR_OK) {
            t->s = CK_INVALID_HANDLE;
            pthread_setspecific(h->tkey, NULL);
            hsm_tsess_release(t);
            return hsm_from_ckr(rv);
        }
        t->gen = h->gen;
        *s = t->s;
        return SK_OK;
    }
    pthread_mutex_lock(&h->sess_mu);
    if (h->n_sessions >= h->max_sessions) {
        pthread_mutex_unlock(&h->sess_mu);
        hsm_tl_ckr = 0;
        return SK_ERR_SESSION_COUNT;
    }
    h->n_sessions++;
    pthread_mutex_unlock(&h->sess_mu);

    t = calloc(1, sizeof(*t));
    CK_RV rv = CKR_HOST_MEMORY;
    if (t != NULL)
        rv = h->f->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &t->s);
    if (rv != CKR_OK) {
        free(t);
        pthread_mutex_lock(&h->sess_mu);
        h->n_sessions--;
        pthread_mutex_unlock(&h->sess_mu);
        return hsm_from_ckr(rv);
    }
    t->h = h;
    t->gen = h->gen;
    pthread_mutex_lock(&h->sess_mu);
    t->next = h->sessions;
    if (h->sessions)
        h->sessions->prev = t;
    h->sessions = t;
    pthread_mutex_unlock(&h->sess_mu);
    pthread_setspecific(h->tkey, t);
    *s = t->s;
    return SK_OK;
}

/* Drops a session the token no longer knows (device reset), so the next call reopens. */
static void hsm_session_drop(hsm *h)
{
    hsm_tsess *t = pthread_getspecific(h->tkey);
    if (t != NULL) {
        pthread_setspecific(h->tkey, NULL);
        hsm_tsess_release(t);
    }
}

void hsm_thread_done(hsm *h)
{
    if (h != NULL) {
        pthread_rwlock_rdlock(&h->gate);
        hsm_session_drop(h);
        pthread_rwlock_unlock(&h->gate);
    }
}

unsigned hsm_sessions_open(hsm *h)
{
    pthread_mutex_lock(&h->sess_mu);
    unsigned n = h->n_sessions;
    pthread_mutex_unlock(&h->sess_mu);
    return n;
}

static int hsm_session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_USER_NOT_LOGGED_IN;
}

/* ---- finding objects (on the signing path only for a kid not cached yet)
 * -------------------------------- */

typedef void (*hsm_found_fn)(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, void *arg);

/* Runs fn on every object of class cls (and with CKA_ID = kid when kid is non-NULL). */
static sk_status hsm_find_each(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const sk_kid *kid,
                               hsm_found_fn fn, void *arg)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_ATTRIBUTE tmpl[3] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_ID, kid ? (void *)kid->b : NULL, SK_KID_LEN},
    };
    CK_RV rv = h->f->C_FindObjectsInit(s, tmpl, kid ? 3 : 2);
    if (rv != CKR_OK)
        return hsm_from_ckr(rv);
    CK_OBJECT_HANDLE objs[HSM_FIND_BATCH];
    CK_ULONG n = 0;
    do {
        rv = h->f->C_FindObjects(s, objs, HSM_FIND_BATCH, &n);
        for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++)
            fn(h, s, objs[i], arg);
    } while (rv == CKR_OK && n == HSM_FIND_BATCH);
    CK_RV frv = h->f->C_FindObjectsFinal(s);
    return hsm_from_ckr(rv != CKR_OK ? rv : frv);
}

/* Reads a 16-byte CKA_ID (and the modulus length) of an object; 0 when it has one. */
static int hsm_read_id(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, sk_kid *kid,
                       CK_ULONG *mod_len)
{
    CK_ATTRIBUTE a[2] = {{CKA_ID, kid->b, SK_KID_LEN}, {CKA_MODULUS, NULL, 0}};
    CK_RV rv = h->f->C_GetAttributeValue(s, o, a, 2);
    if ((rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
         rv != CKR_BUFFER_TOO_SMALL) ||
        a[0].ulValueLen != SK_KID_LEN)
        return -1;
    *mod_len = a[1].ulValueLen == (CK_ULONG)-1 ? 0 : a[1].ulValueLen;
    return 0;
}

static void hsm_cache_private(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, void *arg)
{
    (void)arg;
    sk_kid kid;
    CK_ULONG mod_len = 0;
    if (hsm_read_id(h, s, o, &kid, &mod_len) != 0 || mod_len == 0 || mod_len > SK_SIG_MAX)
        return;
    hsm_slot *slot = hsm_cache_put(h, &kid);
    if (slot != NULL) {
        slot->priv = o;
        slot->sig_len = (unsigned)mod_len;
    }
}

static void hsm_cache_public(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, void *arg)
{
    (void)arg;
    sk_kid kid;
    CK_ULONG mod_len = 0;
    if (hsm_read_id(h, s, o, &kid, &mod_len) != 0)
        return;
    hsm_slot *slot = hsm_cache_find(h, &kid);
    if (slot != NULL)
        slot->pub = o;
}

/* ---- probing ------------------------------------------------------------------------ */

/* A blank-padded PKCS#11 text field as a C string (out holds len + 1 bytes). */
static void hsm_field_copy(char *out, const unsigned char *field, size_t len)
{
    while (len > 0 && (field[len - 1] == ' ' || field[len - 1] == '\0'))
        len--;
    for (size_t i = 0; i < len; i++)
        out[i] = field[i] >= 0x20 && field[i] < 0x7f ? (char)field[i] : '?';
    out[len] = '\0';
}

/* A CK_ULONG the token may leave unknown, as a bound: 0 for unknown. Past UINT32_MAX is
 * no bound either: opencryptoki 3.8's soft token states 2^64 - 2 sessions, a sentinel of
 * its own for "no limit" that neither CK_UNAVAILABLE_INFORMATION nor
 * CK_EFFECTIVELY_INFINITE matches. */
static unsigned long hsm_known(CK_ULONG v)
{
    return v == CK_UNAVAILABLE_INFORMATION || v > UINT32_MAX ? 0 : (unsigned long)v;
}

/* Reads what the module and the token say they can do, and picks the signing path: what
 * a module can do is asked, never assumed from SoftHSM2 (issue 21: opencryptoki has no
 * CKM_SHA256_RSA_PKCS, tpm2-pkcs11 makes RSA 1024 to 3072 only). */
static sk_status hsm_probe(hsm *h, hsm_mech want)
{
    hsm_caps *c = &h->caps;
    CK_INFO li;
    if (h->f->C_GetInfo(&li) == CKR_OK) {
        hsm_field_copy(c->library_manufacturer, li.manufacturerID, sizeof(li.manufacturerID));
        hsm_field_copy(c->library_description, li.libraryDescription,
                       sizeof(li.libraryDescription));
        c->library_version_major = li.libraryVersion.major;
        c->library_version_minor = li.libraryVersion.minor;
    }
    CK_TOKEN_INFO ti;
    CK_RV rv = h->f->C_GetTokenInfo(h->slot, &ti);
    if (rv != CKR_OK)
        return hsm_from_ckr(rv);
    hsm_field_copy(c->manufacturer, ti.manufacturerID, sizeof(ti.manufacturerID));
    hsm_field_copy(c->model, ti.model, sizeof(ti.model));
    hsm_field_copy(c->label, ti.label, sizeof(ti.label));
    c->pin_min = (unsigned)hsm_known(ti.ulMinPinLen);
    c->pin_max = (unsigned)hsm_known(ti.ulMaxPinLen);
    c->token_max_sessions = hsm_known(ti.ulMaxSessionCount);
    c->token_max_rw_sessions = hsm_known(ti.ulMaxRwSessionCount);
    /* Every session we open is read-write, and the login session is one of them. */
    unsigned long limit = c->token_max_rw_sessions;
    if (c->token_max_sessions != 0 && (limit == 0 || c->token_max_sessions < limit))
        limit = c->token_max_sessions;
    if (limit > 1 && limit - 1 < h->max_sessions)
        h->max_sessions = (unsigned)(limit - 1);
    c->max_sessions = h->max_sessions;

    CK_ULONG n = 0;
    rv = h->f->C_GetMechanismList(h->slot, NULL, &n);
    CK_MECHANISM_TYPE *mechs = NULL;
    if (rv == CKR_OK && n > 0 && n <= HSM_MECH_LIST_MAX &&
        (mechs = calloc(n, sizeof(*mechs))) != NULL)
        rv = h->f->C_GetMechanismList(h->slot, mechs, &n);
    for (CK_ULONG i = 0; rv == CKR_OK && mechs != NULL && i < n; i++) {
        c->has_sha256_rsa_pkcs |= mechs[i] == CKM_SHA256_RSA_PKCS;
        c->has_rsa_pkcs |= mechs[i] == CKM_RSA_PKCS;
    }
    free(mechs);
    if (rv != CKR_OK)
        return hsm_from_ckr(rv);
    CK_MECHANISM_INFO mi;
    if (h->f->C_GetMechanismInfo(h->slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi) == CKR_OK) {
        c->rsa_min_bits = (unsigned)mi.ulMinKeySize;
        c->rsa_max_bits = (unsigned)mi.ulMaxKeySize;
    }

    if (want == HSM_MECH_AUTO)
        want = c->has_sha256_rsa_pkcs ? HSM_MECH_SHA256_RSA_PKCS : HSM_MECH_RSA_PKCS;
    int have = want == HSM_MECH_SHA256_RSA_PKCS ? c->has_sha256_rsa_pkcs : c->has_rsa_pkcs;
    if (!have) {
        snprintf(hsm_tl_detail, sizeof(hsm_tl_detail), "%s",
                 want == HSM_MECH_SHA256_RSA_PKCS ? "CKM_SHA256_RSA_PKCS" : "CKM_RSA_PKCS");
        hsm_tl_ckr = CKR_MECHANISM_INVALID;
        return SK_ERR_MECHANISM;
    }
    c->sign_mechanism = want;
    h->sign_mech = want == HSM_MECH_SHA256_RSA_PKCS ? CKM_SHA256_RSA_PKCS : CKM_RSA_PKCS;
    return SK_OK;
}

void hsm_info(hsm *h, hsm_caps *out)
{
    *out = h->caps;
    out->sign_only_refused = atomic_load(&h->no_sign_only);
}

void hsm_token_info(hsm *h, sk_token_info *out)
{
    hsm_caps c;
    hsm_info(h, &c);
    memset(out, 0, sizeof(*out));
    snprintf(out->sign_mechanism, sizeof(out->sign_mechanism), "%s",
             hsm_mech_name(c.sign_mechanism));
    snprintf(out->manufacturer, sizeof(out->manufacturer), "%s", c.manufacturer);
    snprintf(out->model, sizeof(out->model), "%s", c.model);
    out->rsa_min_bits = c.rsa_min_bits;
    out->rsa_max_bits = c.rsa_max_bits;
    out->pin_min = c.pin_min;
    out->pin_max = c.pin_max;
    out->max_sessions = c.max_sessions;
    out->sign_only_refused = c.sign_only_refused;
}

void hsm_test_force(hsm *h, unsigned flags, unsigned rsa_max_bits)
{
    h->test_flags = flags;
    if (rsa_max_bits != 0)
        h->caps.rsa_max_bits = rsa_max_bits;
}

/* ---- open and close ------------------------------------------------------------------ */

/* Opens the login session, logs in with the PIN file and fills the cache from a scan:
 * hsm_open's last steps, and a re-open's. The PIN is read again each time, and wiped. */
static sk_status hsm_login_fill(hsm *h)
{
    char pin[HSM_PIN_MAX];
    size_t pin_len = 0;
    CK_RV rv =
        h->f->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h->login);
    if (rv != CKR_OK) {
        h->login = CK_INVALID_HANDLE;
        return hsm_from_ckr(rv);
    }
    sk_status st = hsm_read_pin_file(h->cfg_pin_file, pin, &pin_len);
    if (st != SK_OK)
        return st;
    /* A PIN the token would refuse for its length is refused here, before C_Login: a failed
     * login counts towards the token's lockout (swtpm locks the whole TPM after 3). */
    if ((h->caps.pin_min != 0 && pin_len < h->caps.pin_min) ||
        (h->caps.pin_max != 0 && pin_len > h->caps.pin_max)) {
        explicit_bzero(pin, sizeof(pin));
        snprintf(hsm_tl_detail, sizeof(hsm_tl_detail),
                 "the PIN file holds %zu characters, the token takes %u to %u", pin_len,
                 h->caps.pin_min, h->caps.pin_max);
        hsm_tl_ckr = CKR_PIN_LEN_RANGE;
        return SK_ERR_PIN_INCORRECT;
    }
    rv = h->f->C_Login(h->login, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    explicit_bzero(pin, sizeof(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return hsm_from_ckr(rv);
    h->logged_in = rv == CKR_OK;
    /* Fill the cache: private halves first (they carry the handle we sign with). Handles
     * belong to the module instance: a re-open starts from an empty table. */
    pthread_rwlock_wrlock(&h->cache_mu);
    memset(h->cache, 0, sizeof(h->cache));
    h->n_cached = h->n_dead = 0;
    st = hsm_find_each(h, h->login, CKO_PRIVATE_KEY, NULL, hsm_cache_private, NULL);
    if (st == SK_OK)
        st = hsm_find_each(h, h->login, CKO_PUBLIC_KEY, NULL, hsm_cache_public, NULL);
    pthread_rwlock_unlock(&h->cache_mu);
    return st;
}

/* Whether the module is tpm2-pkcs11, whose CKR_GENERAL_ERROR at its bound on loaded objects
 * a re-open clears (hsm.h, "Re-opening"). */
static int hsm_is_tpm2_pkcs11(const hsm_caps *c)
{
    return strstr(c->library_manufacturer, "tpm2-software") != NULL ||
           strncmp(c->library_description, "TPM2.0 Cryptoki", 15) == 0;
}

sk_status hsm_open(const hsm_config *cfg, hsm **out, unsigned long *ckr)
{
    *out = NULL;
    hsm_tl_ckr = 0;
    hsm_tl_detail[0] = '\0';
    hsm_match m;
    sk_status st = hsm_parse_match(cfg->token, &m);
    if (st != SK_OK)
        return st;
    hsm *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        hsm_match_free(m);
        return SK_ERR_DEVICE;
    }
    h->max_sessions = cfg->max_sessions ? cfg->max_sessions : 256;
    h->login = CK_INVALID_HANDLE;
    h->on_reopen = cfg->on_reopen;
    h->on_reopen_arg = cfg->on_reopen_arg;
    pthread_mutex_init(&h->sess_mu, NULL);
    pthread_mutex_init(&h->reopen_mu, NULL);
    /* Writer-preferring: signers hold the read side all the time under load, and a
     * destroy must not wait for a lull that never comes. */
    lk_rwlock_init(&h->cache_mu);
    /* The same for a re-open: it must get in between signatures that never pause. */
    lk_rwlock_init(&h->gate);
    h->cfg_token = strdup(cfg->token);
    h->cfg_pin_file = strdup(cfg->pin_file != NULL ? cfg->pin_file : "");
    if (h->cfg_token == NULL || h->cfg_pin_file == NULL ||
        pthread_key_create(&h->tkey, hsm_tsess_destructor) != 0) {
        hsm_match_free(m);
        free(h->cfg_token);
        free(h->cfg_pin_file);
        free(h);
        return SK_ERR_DEVICE;
    }

    st = hsm_load_module(cfg->module_path, &h->dl, &h->f, &h->initialized);
    if (st != SK_OK)
        goto fail;
    st = hsm_find_slot(h->f, m, &h->slot);
    hsm_match_free(m);
    m = NULL;
    if (st != SK_OK)
        goto fail;
    if ((st = hsm_probe(h, cfg->sign_mechanism)) != SK_OK)
        goto fail;
    h->reopen_on_general = hsm_is_tpm2_pkcs11(&h->caps);
    if ((st = hsm_login_fill(h)) != SK_OK)
        goto fail;
    *out = h;
    return SK_OK;

fail:
    hsm_match_free(m);
    if (ckr != NULL)
        *ckr = hsm_tl_ckr;
    hsm_close(h);
    return st;
}

/* Closes every session and, when this handle initialised the module, finalises it: what
 * hsm_close and a re-open both do. The per-thread entries stay (a re-open keeps them,
 * closed, for their threads to open again); the caller holds gate for writing, or is the
 * only thread left. */
static void hsm_shut(hsm *h)
{
    pthread_mutex_lock(&h->sess_mu);
    for (hsm_tsess *t = h->sessions; t != NULL; t = t->next) {
        if (t->s != CK_INVALID_HANDLE)
            h->f->C_CloseSession(t->s);
        t->s = CK_INVALID_HANDLE;
    }
    pthread_mutex_unlock(&h->sess_mu);
    if (h->login != CK_INVALID_HANDLE) {
        if (h->logged_in)
            h->f->C_Logout(h->login);
        h->f->C_CloseSession(h->login);
        h->login = CK_INVALID_HANDLE;
    }
    h->logged_in = 0;
    if (h->initialized)
        h->f->C_Finalize(NULL);
    h->initialized = 0;
}

void hsm_close(hsm *h)
{
    if (h == NULL)
        return;
    /* No destructor may run against a freed handle: delete the key before freeing. */
    pthread_key_delete(h->tkey);
    if (h->f != NULL) {
        hsm_shut(h);
        while (h->sessions != NULL)
            hsm_tsess_release(h->sessions);
    }
    if (h->dl != NULL)
        dlclose(h->dl);
    pthread_rwlock_destroy(&h->cache_mu);
    pthread_rwlock_destroy(&h->gate);
    pthread_mutex_destroy(&h->sess_mu);
    pthread_mutex_destroy(&h->reopen_mu);
    free(h->cfg_token);
    free(h->cfg_pin_file);
    free(h);
}

/* ---- re-opening ---------------------------------------------------------------------- */

/* The module again, from C_Initialize: the caller holds gate for writing. */
static sk_status hsm_restart(hsm *h)
{
    hsm_shut(h);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv = h->f->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return hsm_from_ckr(rv);
    h->initialized = rv == CKR_OK;
    hsm_match m;
    sk_status st = hsm_parse_match(h->cfg_token, &m);
    if (st == SK_OK)
        st = hsm_find_slot(h->f, m, &h->slot);
    hsm_match_free(m);
    if (st == SK_OK)
        st = hsm_login_fill(h);
    return st;
}

/* Re-opens the module after a call of generation gen failed with st (rv): every session
 * closed, C_Finalize, C_Initialize, login, the cache rebuilt, while no other thread is
 * inside the module (gate). Returns SK_OK when the caller may try its call once more:
 * this thread re-opened, or another one did since gen. At most one re-open at a time and
 * HSM_REOPEN_PER_MIN a minute; past that the caller's error stands. */
static sk_status hsm_reopen(hsm *h, unsigned gen, unsigned long rv)
{
    pthread_mutex_lock(&h->reopen_mu);
    pthread_rwlock_rdlock(&h->gate);
    unsigned now_gen = h->gen;
    pthread_rwlock_unlock(&h->gate);
    if (now_gen != gen) {
        pthread_mutex_unlock(&h->reopen_mu);
        return SK_OK; /* another thread re-opened after our call failed: try again */
    }
    int64_t now = clk_now_ms();
    int64_t oldest = h->reopen_at[h->reopen_next];
    if (oldest != 0 && now - oldest < HSM_REOPEN_WINDOW_MS) {
        unsigned long refused = atomic_fetch_add(&h->reopens_refused, 1) + 1;
        pthread_mutex_unlock(&h->reopen_mu);
        if (h->on_reopen != NULL && refused == 1)
            h->on_reopen(h->on_reopen_arg, rv, SK_ERR_SESSION_COUNT, atomic_load(&h->reopens));
        return SK_ERR_DEVICE;
    }
    h->reopen_at[h->reopen_next] = now == 0 ? 1 : now;
    h->reopen_next = (h->reopen_next + 1) % HSM_REOPEN_PER_MIN;
    pthread_rwlock_wrlock(&h->gate);
    sk_status st = hsm_restart(h);
    h->gen++;
    atomic_store(&h->broken, st != SK_OK);
    pthread_rwlock_unlock(&h->gate);
    unsigned long n = atomic_load(&h->reopens);
    if (st == SK_OK)
        n = atomic_fetch_add(&h->reopens, 1) + 1;
    pthread_mutex_unlock(&h->reopen_mu);
    if (h->on_reopen != NULL)
        h->on_reopen(h->on_reopen_arg, rv, st, n);
    return st;
}

/* Whether a call's failure (st, rv) is the kind a re-open clears: tpm2-pkcs11's
 * CKR_GENERAL_ERROR at its bound on loaded objects, the module not initialised, or any
 * failure after a re-open that failed half-way (not logged in, say). */
static int hsm_exhausted(hsm *h, sk_status st, unsigned long rv)
{
    return st != SK_OK && ((rv == CKR_GENERAL_ERROR && h->reopen_on_general) ||
                           rv == CKR_CRYPTOKI_NOT_INITIALIZED || atomic_load(&h->broken));
}

/* Entering the module for one public call: the generation it runs in. */
static unsigned hsm_enter(hsm *h)
{
    pthread_rwlock_rdlock(&h->gate);
    return h->gen;
}

static void hsm_leave(hsm *h)
{
    pthread_rwlock_unlock(&h->gate);
}

/* After a call of generation gen failed with st: 1 when the caller tries once more (a
 * re-open cleared the exhaustion), else 0 with the call's own error kept for
 * hsm_last_ckr. */
static int hsm_retry(hsm *h, unsigned gen, sk_status st)
{
    unsigned long rv = hsm_tl_ckr;
    if (!hsm_exhausted(h, st, rv))
        return 0;
    if (hsm_reopen(h, gen, rv) == SK_OK)
        return 1;
    hsm_tl_ckr = rv;
    return 0;
}

/* hsm_test_exhaust: this call fails as tpm2-pkcs11 at its bound, the token untouched. */
static int hsm_test_fail(hsm *h)
{
    unsigned n = atomic_load(&h->test_exhaust);
    while (n > 0 && !atomic_compare_exchange_weak(&h->test_exhaust, &n, n - 1))
        ;
    if (n == 0)
        return 0;
    hsm_tl_ckr = CKR_GENERAL_ERROR;
    return 1;
}

unsigned long hsm_reopens(hsm *h)
{
    return atomic_load(&h->reopens);
}

sk_status hsm_test_reopen(hsm *h)
{
    pthread_rwlock_rdlock(&h->gate);
    unsigned gen = h->gen;
    pthread_rwlock_unlock(&h->gate);
    return hsm_reopen(h, gen, CKR_GENERAL_ERROR);
}

void hsm_test_exhaust(hsm *h, unsigned n)
{
    h->reopen_on_general = 1;
    atomic_store(&h->test_exhaust, n);
}

/* ---- key operations ------------------------------------------------------------------ */

static void hsm_destroy_found(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, void *arg)
{
    if (h->f->C_DestroyObject(s, o) == CKR_OK)
        ++*(int *)arg;
}

/* Destroys every RSA object with CKA_ID = kid found by a scan; returns how many. */
static int hsm_destroy_by_scan(hsm *h, CK_SESSION_HANDLE s, const sk_kid *kid, sk_status *st)
{
    int n = 0;
    *st = hsm_find_each(h, s, CKO_PRIVATE_KEY, kid, hsm_destroy_found, &n);
    if (*st == SK_OK)
        *st = hsm_find_each(h, s, CKO_PUBLIC_KEY, kid, hsm_destroy_found, &n);
    return n;
}

static sk_status hsm_lookup(hsm *h, const sk_kid *kid, hsm_slot *copy);

/* Reads the private half's attributes at o. A module that does not know an attribute
 * leaves it unread (ulValueLen -1): it counts as false, which for CKA_SENSITIVE refuses the
 * key and for CKA_DECRYPT and the like keeps it sign-only. */
static sk_status hsm_read_attrs(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, hsm_attrs *out)
{
    memset(out, 0, sizeof(*out));
    enum { SENS, EXTR, NEVER, SIGN, DEC, UNWRAP, DERIVE, RECOVER, N };
    static const CK_ATTRIBUTE_TYPE types[N] = {
        CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE, CKA_SIGN, CKA_DECRYPT,
        CKA_UNWRAP,    CKA_DERIVE,      CKA_SIGN_RECOVER,
    };
    CK_BBOOL v[N];
    CK_ATTRIBUTE a[N];
    for (int i = 0; i < N; i++)
        a[i] = (CK_ATTRIBUTE){types[i], &v[i], sizeof(v[i])};
    CK_RV rv = h->f->C_GetAttributeValue(s, o, a, N);
    /* Per PKCS#11 these two still fill every attribute they can. */
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
        return hsm_from_ckr(rv);
    int t[N];
    for (int i = 0; i < N; i++)
        t[i] = a[i].ulValueLen == sizeof(CK_BBOOL) && v[i] == CK_TRUE;
    out->sensitive = t[SENS];
    out->extractable = t[EXTR];
    out->never_extractable = t[NEVER];
    out->sign_only = t[SIGN] && !t[DEC] && !t[UNWRAP] && !t[DERIVE] && !t[RECOVER];
    hsm_tl_ckr = 0;
    return SK_OK;
}

sk_attrs hsm_attrs_bits(const hsm_attrs *a)
{
    return (sk_attrs)(SK_ATTR_READ | (a->sensitive ? SK_ATTR_SENSITIVE : 0) |
                      (a->extractable ? SK_ATTR_EXTRACTABLE : 0) |
                      (a->never_extractable ? SK_ATTR_NEVER_EXTRACTABLE : 0) |
                      (a->sign_only ? SK_ATTR_SIGN_ONLY : 0));
}

/* Whether rv is a token's refusal of an attribute of the template (tpm2-pkcs11 says
 * CKR_GENERAL_ERROR, "attr mismatch", for CKA_DECRYPT = FALSE). */
static int hsm_template_refused(CK_RV rv)
{
    return rv == CKR_GENERAL_ERROR || rv == CKR_TEMPLATE_INCONSISTENT ||
           rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_ATTRIBUTE_TYPE_INVALID;
}

sk_status hsm_generate(hsm *h, const sk_kid *kid, unsigned bits)
{
    return hsm_generate_attrs(h, kid, bits, NULL);
}

static sk_status hsm_generate_in(hsm *h, const sk_kid *kid, unsigned bits, hsm_attrs *attrs)
{
    if (attrs != NULL)
        memset(attrs, 0, sizeof(*attrs));
    if (bits != 2048 && bits != 3072 && bits != 4096)
        return hsm_tl_ckr = 0, SK_ERR_BAD_ARGUMENT;
    /* Asked of the token at open: a size it cannot make is the caller's to change, not a
     * device failure (tpm2-pkcs11 stops at 3072). */
    if ((h->caps.rsa_min_bits != 0 && bits < h->caps.rsa_min_bits) ||
        (h->caps.rsa_max_bits != 0 && bits > h->caps.rsa_max_bits))
        return hsm_tl_ckr = 0, SK_ERR_KEY_SIZE;
    CK_SESSION_HANDLE s;
    sk_status st = hsm_session(h, &s);
    if (st != SK_OK)
        return st;

    pthread_rwlock_rdlock(&h->cache_mu);
    int exists = hsm_cache_find(h, kid) != NULL;
    pthread_rwlock_unlock(&h->cache_mu);
    if (exists)
        return hsm_tl_ckr = 0, SK_ERR_KEY_EXISTS;

    char label[2 * SK_KID_LEN + 1];
    sk_kid_hex(kid, label);
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sensitive = (h->test_flags & HSM_TEST_NOT_SENSITIVE) ? CK_FALSE : CK_TRUE;
    CK_ULONG mod_bits = bits;
    CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    /* The restrictions a module may refuse come last, so the fallback template is the same
     * array cut short (n_pub_open, n_priv_open entries). */
    CK_ATTRIBUTE pub[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_MODULUS_BITS, &mod_bits, sizeof(mod_bits)},
        {CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)},
        {CKA_ID, (void *)kid->b, SK_KID_LEN},
        {CKA_LABEL, label, 2 * SK_KID_LEN},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_ID, (void *)kid->b, SK_KID_LEN},
        {CKA_LABEL, label, 2 * SK_KID_LEN},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},
        /* SoftHSM2 makes RSA private keys CKA_SIGN_RECOVER by default: with CKM_RSA_X_509
         * that is the raw private-key operation, a decryption by another name. */
        {CKA_SIGN_RECOVER, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
    };
    const CK_ULONG n_pub = sizeof(pub) / sizeof(pub[0]), n_priv = sizeof(priv) / sizeof(priv[0]);
    const CK_ULONG n_pub_open = n_pub - 2, n_priv_open = n_priv - 4;
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
    CK_RV rv = CKR_GENERAL_ERROR;
    int open_template = atomic_load(&h->no_sign_only);
    if (!open_template) {
        /* SoftHSM2 sometimes fails concurrent generation with CKR_GENERAL_ERROR (its
         * #573): clear whatever a failed attempt left behind and try again. */
        for (int attempt = 0; attempt < HSM_GENERATE_TRIES; attempt++) {
            if (h->test_flags & HSM_TEST_REFUSE_SIGN_ONLY)
                rv = CKR_TEMPLATE_INCONSISTENT;
            else
                rv = h->f->C_GenerateKeyPair(s, &mech, pub, n_pub, priv, n_priv, &hpub, &hpriv);
            if (rv != CKR_GENERAL_ERROR)
                break;
            sk_status ignored;
            hsm_destroy_by_scan(h, s, kid, &ignored);
        }
        /* A module that cannot make a sign-only key is still used, once more without the
         * restriction, and the key's attributes below say what it holds (SECURITY.md). */
        open_template = hsm_template_refused(rv);
    }
    if (open_template) {
        rv = h->f->C_GenerateKeyPair(s, &mech, pub, n_pub_open, priv, n_priv_open, &hpub, &hpriv);
        if (rv == CKR_OK)
            atomic_store(&h->no_sign_only, 1);
    }
    if (rv != CKR_OK) {
        if (hsm_session_lost(rv))
            hsm_session_drop(h);
        if (hsm_template_refused(rv)) {
            sk_status ignored;
            hsm_destroy_by_scan(h, s, kid, &ignored);
        }
        return hsm_from_ckr(rv);
    }
    /* What the token holds, not what we asked: "never leaves the token" rests on it. */
    hsm_attrs got;
    st = hsm_read_attrs(h, s, hpriv, &got);
    if (st == SK_OK && (!got.sensitive || got.extractable))
        st = (hsm_tl_ckr = 0, SK_ERR_KEY_WEAK);
    if (st != SK_OK) {
        unsigned long ckr = hsm_tl_ckr;
        h->f->C_DestroyObject(s, hpriv);
        h->f->C_DestroyObject(s, hpub);
        hsm_tl_ckr = ckr;
        return st;
    }
    pthread_rwlock_wrlock(&h->cache_mu);
    hsm_slot *slot = hsm_cache_put(h, kid);
    if (slot != NULL) {
        slot->priv = hpriv;
        slot->pub = hpub;
        slot->sig_len = (bits + 7) / 8;
    }
    pthread_rwlock_unlock(&h->cache_mu);
    if (slot == NULL) {
        /* Past the cache's bound the key could never sign: do not leave it behind. */
        h->f->C_DestroyObject(s, hpriv);
        h->f->C_DestroyObject(s, hpub);
        return hsm_tl_ckr = 0, SK_ERR_TOKEN_FULL;
    }
    if (attrs != NULL)
        *attrs = got;
    hsm_tl_ckr = 0;
    return SK_OK;
}

static sk_status hsm_key_attrs_in(hsm *h, const sk_kid *kid, hsm_attrs *out)
{
    memset(out, 0, sizeof(*out));
    hsm_slot k;
    sk_status st = hsm_lookup(h, kid, &k);
    if (st != SK_OK)
        return st;
    if (k.priv == CK_INVALID_HANDLE)
        return hsm_tl_ckr = 0, SK_ERR_KEY_NOT_FOUND;
    CK_SESSION_HANDLE s;
    if ((st = hsm_session(h, &s)) != SK_OK)
        return st;
    return hsm_read_attrs(h, s, k.priv, out);
}

/* Looks kid up in the token by CKA_ID and caches what it finds: a key another process
 * generated after this one filled its cache at hsm_open (a cluster's nodes share one
 * token, or one HA partition, and each keeper learns the others' keys on first use). The
 * caller (hsm_lookup) saw no slot; another thread may have loaded it meanwhile. */
static sk_status hsm_load(hsm *h, const sk_kid *kid)
{
    CK_SESSION_HANDLE s;
    sk_status st = hsm_session(h, &s);
    if (st != SK_OK)
        return st;
    pthread_rwlock_wrlock(&h->cache_mu);
    if (hsm_cache_find(h, kid) == NULL) {
        st = hsm_find_each(h, s, CKO_PRIVATE_KEY, kid, hsm_cache_private, NULL);
        if (st == SK_OK)
            st = hsm_find_each(h, s, CKO_PUBLIC_KEY, kid, hsm_cache_public, NULL);
    }
    pthread_rwlock_unlock(&h->cache_mu);
    return st;
}

/* Copies the cached handles of kid, looking it up in the token once on a miss;
 * SK_ERR_KEY_NOT_FOUND when the token has no such key. */
static sk_status hsm_lookup(hsm *h, const sk_kid *kid, hsm_slot *copy)
{
    for (int pass = 0; pass < 2; pass++) {
        pthread_rwlock_rdlock(&h->cache_mu);
        hsm_slot *s = hsm_cache_find(h, kid);
        if (s != NULL)
            *copy = *s;
        pthread_rwlock_unlock(&h->cache_mu);
        if (s != NULL)
            return SK_OK;
        if (pass == 0) {
            sk_status st = hsm_load(h, kid);
            if (st != SK_OK)
                return st;
        }
    }
    hsm_tl_ckr = 0;
    return SK_ERR_KEY_NOT_FOUND;
}

static sk_status hsm_sign_in(hsm *h, const sk_kid *kid, const void *msg, size_t msg_len,
                             uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    *sig_len = 0;
    hsm_slot k;
    sk_status st = hsm_lookup(h, kid, &k);
    if (st != SK_OK)
        return st;
    if (k.priv == CK_INVALID_HANDLE)
        return hsm_tl_ckr = 0, SK_ERR_KEY_NOT_FOUND;
    CK_MECHANISM mech = {h->sign_mech, NULL, 0};
    /* CKM_RSA_PKCS signs what it is given, padded: give it the DigestInfo that
     * CKM_SHA256_RSA_PKCS would have built, and the signature is the same bytes. */
    uint8_t info[sizeof(hsm_sha256_prefix) + SHA256_DIGEST_LENGTH];
    if (h->sign_mech == CKM_RSA_PKCS) {
        memcpy(info, hsm_sha256_prefix, sizeof(hsm_sha256_prefix));
        SHA256(msg, msg_len, info + sizeof(hsm_sha256_prefix));
        msg = info;
        msg_len = sizeof(info);
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        CK_SESSION_HANDLE s;
        st = hsm_session(h, &s);
        if (st != SK_OK)
            return st;
        CK_RV rv = h->f->C_SignInit(s, &mech, k.priv);
        if (rv == CKR_OK) {
            CK_ULONG len = SK_SIG_MAX;
            rv = h->f->C_Sign(s, (CK_BYTE_PTR)msg, msg_len, sig, &len);
            if (rv == CKR_OK) {
                *sig_len = len;
                return SK_OK;
            }
        }
        if (!hsm_session_lost(rv))
            return hsm_from_ckr(rv);
        hsm_session_drop(h); /* the device forgot our session: reopen once */
    }
    return hsm_from_ckr(CKR_SESSION_HANDLE_INVALID);
}

static sk_status hsm_public_key_in(hsm *h, const sk_kid *kid, sk_pubkey *out)
{
    memset(out, 0, sizeof(*out));
    hsm_slot k;
    sk_status st = hsm_lookup(h, kid, &k);
    if (st != SK_OK)
        return st;
    CK_SESSION_HANDLE s;
    if ((st = hsm_session(h, &s)) != SK_OK)
        return st;
    CK_ATTRIBUTE a[2] = {{CKA_MODULUS, out->n, sizeof(out->n)},
                         {CKA_PUBLIC_EXPONENT, out->e, sizeof(out->e)}};
    /* The modulus and exponent are public on both halves; prefer the public object. */
    CK_OBJECT_HANDLE o = k.pub != CK_INVALID_HANDLE ? k.pub : k.priv;
    CK_RV rv = h->f->C_GetAttributeValue(s, o, a, 2);
    if (rv != CKR_OK)
        return hsm_from_ckr(rv);
    out->n_len = a[0].ulValueLen;
    out->e_len = a[1].ulValueLen;
    size_t lead = 0;
    while (lead < out->n_len && out->n[lead] == 0)
        lead++;
    out->bits = (unsigned)((out->n_len - lead) * 8);
    if (lead < out->n_len)
        for (uint8_t top = out->n[lead]; top < 0x80; top <<= 1)
            out->bits--;
    return SK_OK;
}

static sk_status hsm_destroy_in(hsm *h, const sk_kid *kid)
{
    CK_SESSION_HANDLE s;
    sk_status st = hsm_session(h, &s);
    if (st != SK_OK)
        return st;
    /* Out of the cache first, so no new signature starts with a handle about to die. */
    pthread_rwlock_wrlock(&h->cache_mu);
    hsm_cache_remove(h, kid);
    pthread_rwlock_unlock(&h->cache_mu);
    /* A scan rather than the cached handles: it also finds strays and duplicates. */
    int n = hsm_destroy_by_scan(h, s, kid, &st);
    if (st != SK_OK)
        return st;
    return n > 0 ? SK_OK : (hsm_tl_ckr = 0, SK_ERR_KEY_NOT_FOUND);
}

/* Every key seen so far, whole: pairing the two halves needs all of them, not just the
 * first cap (else a half whose partner did not fit is counted as a second key). */
typedef struct {
    sk_key_entry *all;
    size_t count, alloc;
    int is_private;
    int out_of_memory;
} hsm_list_ctx;

static void hsm_list_found(hsm *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, void *arg)
{
    hsm_list_ctx *c = arg;
    sk_kid kid;
    CK_ULONG mod_len;
    if (c->out_of_memory || hsm_read_id(h, s, o, &kid, &mod_len) != 0)
        return;
    for (size_t i = 0; i < c->count; i++) {
        if (memcmp(c->all[i].kid.b, kid.b, SK_KID_LEN) == 0) {
            c->all[i].has_private |= c->is_private;
            c->all[i].has_public |= !c->is_private;
            return;
        }
    }
    if (c->count == c->alloc) {
        size_t alloc = c->alloc ? 2 * c->alloc : 256;
        sk_key_entry *all =
            alloc > SIZE_MAX / sizeof(*all) ? NULL : realloc(c->all, alloc * sizeof(*all));
        if (all == NULL) {
            c->out_of_memory = 1;
            return;
        }
        c->all = all;
        c->alloc = alloc;
    }
    c->all[c->count].kid = kid;
    c->all[c->count].has_private = c->is_private;
    c->all[c->count].has_public = !c->is_private;
    c->count++;
}

static sk_status hsm_ping_in(hsm *h)
{
    CK_SESSION_HANDLE s;
    sk_status st = hsm_session(h, &s);
    if (st != SK_OK)
        return st;
    CK_SESSION_INFO info;
    CK_RV rv = h->f->C_GetSessionInfo(s, &info);
    if (rv != CKR_OK)
        return hsm_from_ckr(rv);
    /* Answering is not enough: a token that logged us out signs nothing. */
    if (info.state != CKS_RW_USER_FUNCTIONS && info.state != CKS_RO_USER_FUNCTIONS)
        return hsm_from_ckr(CKR_USER_NOT_LOGGED_IN);
    return SK_OK;
}

static sk_status hsm_list_in(hsm *h, sk_key_entry *out, size_t cap, size_t *count)
{
    *count = 0;
    CK_SESSION_HANDLE s;
    sk_status st = hsm_session(h, &s);
    if (st != SK_OK)
        return st;
    hsm_list_ctx c = {.is_private = 1};
    st = hsm_find_each(h, s, CKO_PRIVATE_KEY, NULL, hsm_list_found, &c);
    c.is_private = 0;
    if (st == SK_OK)
        st = hsm_find_each(h, s, CKO_PUBLIC_KEY, NULL, hsm_list_found, &c);
    if (st == SK_OK && c.out_of_memory)
        st = (hsm_tl_ckr = 0, SK_ERR_DEVICE);
    if (st == SK_OK) {
        if (c.count > 0 && cap > 0)
            memcpy(out, c.all, (c.count < cap ? c.count : cap) * sizeof(*out));
        *count = c.count;
    }
    free(c.all);
    return st;
}

/* ---- the public calls: each enters the module once, and tries once more after a re-open */

/* One public call: body runs inside the gate; a failure a re-open clears (hsm_exhausted)
 * re-opens the module and runs body once more. A test's hsm_test_exhaust fails the
 * first run as tpm2-pkcs11 does at its bound. */
#define HSM_CALL(h, testable, body)                                                                \
    do {                                                                                           \
        for (int pass_ = 0;; pass_++) {                                                            \
            unsigned gen_ = hsm_enter(h);                                                          \
            if ((testable) && hsm_test_fail(h))                                                    \
                st = SK_ERR_DEVICE;                                                                \
            else                                                                                   \
                st = (body);                                                                       \
            hsm_leave(h);                                                                          \
            if (pass_ > 0 || !hsm_retry(h, gen_, st))                                              \
                break;                                                                             \
        }                                                                                          \
    } while (0)

sk_status hsm_generate_attrs(hsm *h, const sk_kid *kid, unsigned bits, hsm_attrs *attrs)
{
    sk_status st;
    HSM_CALL(h, 1, hsm_generate_in(h, kid, bits, attrs));
    return st;
}

sk_status hsm_key_attrs(hsm *h, const sk_kid *kid, hsm_attrs *out)
{
    sk_status st;
    HSM_CALL(h, 0, hsm_key_attrs_in(h, kid, out));
    return st;
}

sk_status hsm_sign_rs256(hsm *h, const sk_kid *kid, const void *msg, size_t msg_len,
                         uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    sk_status st;
    HSM_CALL(h, 1, hsm_sign_in(h, kid, msg, msg_len, sig, sig_len));
    return st;
}

sk_status hsm_public_key(hsm *h, const sk_kid *kid, sk_pubkey *out)
{
    sk_status st;
    HSM_CALL(h, 0, hsm_public_key_in(h, kid, out));
    return st;
}

sk_status hsm_destroy(hsm *h, const sk_kid *kid)
{
    sk_status st;
    HSM_CALL(h, 0, hsm_destroy_in(h, kid));
    return st;
}

sk_status hsm_ping(hsm *h)
{
    sk_status st;
    HSM_CALL(h, 0, hsm_ping_in(h));
    return st;
}

sk_status hsm_list(hsm *h, sk_key_entry *out, size_t cap, size_t *count)
{
    sk_status st;
    HSM_CALL(h, 0, hsm_list_in(h, out, cap, count));
    return st;
}

/* ---- token initialisation (provisioning) ---------------------------------------------- */

sk_status hsm_init_token(const char *module_path, const char *label, const char *so_pin_file,
                         const char *user_pin_file, char serial[17])
{
    hsm_init_spec sp = {.module_path = module_path,
                        .label = label,
                        .so_pin_file = so_pin_file,
                        .user_pin_file = user_pin_file,
                        .slot = -1};
    return hsm_init_token_spec(&sp, serial);
}

sk_status hsm_init_token_spec(const hsm_init_spec *sp, char serial[17])
{
    const char *label = sp->label;
    serial[0] = '\0';
    if (label == NULL || *label == '\0' || strlen(label) > 32)
        return hsm_tl_ckr = 0, SK_ERR_BAD_ARGUMENT;
    char so[HSM_PIN_MAX], user[HSM_PIN_MAX], factory[HSM_PIN_MAX];
    size_t so_len = 0, user_len = 0, factory_len = 0;
    void *dl = NULL;
    CK_FUNCTION_LIST_PTR f = NULL;
    CK_SLOT_ID *ids = NULL;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    int initialized = 0;
    hsm_match m = NULL;
    CK_SLOT_ID slot;
    CK_RV rv;
    sk_status st = hsm_match_label(label, &m);
    if (st == SK_OK)
        st = hsm_read_pin_file(sp->so_pin_file, so, &so_len);
    if (st == SK_OK)
        st = hsm_read_pin_file(sp->user_pin_file, user, &user_len);
    if (st == SK_OK && sp->factory_so_pin_file != NULL)
        st = hsm_read_pin_file(sp->factory_so_pin_file, factory, &factory_len);
    if (st != SK_OK)
        goto out;
    if ((st = hsm_load_module(sp->module_path, &dl, &f, &initialized)) != SK_OK)
        goto out;
    /* Initialising a token means re-initialising the library below (SoftHSM2 shows a new
     * token only then): never do that under a handle this process still has open. */
    if (!initialized) {
        st = SK_ERR_BAD_ARGUMENT;
        goto out;
    }
    if (hsm_find_slot(f, m, &slot) == SK_OK) {
        st = SK_ERR_KEY_EXISTS;
        goto out;
    }
    /* The slot asked for, or the first whose token is present but not initialised; either
     * way a token already initialised is never touched (C_InitToken would wipe it). */
    CK_ULONG n = 0;
    rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > 0 && (ids = calloc(n, sizeof(*ids))) != NULL)
        rv = f->C_GetSlotList(CK_TRUE, ids, &n);
    st = rv != CKR_OK ? hsm_from_ckr(rv) : SK_ERR_TOKEN_NOT_FOUND;
    for (CK_ULONG i = 0; ids != NULL && rv == CKR_OK && i < n; i++) {
        if (sp->slot >= 0 && ids[i] != (CK_SLOT_ID)sp->slot)
            continue;
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(ids[i], &ti) == CKR_OK && !(ti.flags & CKF_TOKEN_INITIALIZED)) {
            slot = ids[i];
            st = SK_OK;
            break;
        }
    }
    if (st != SK_OK)
        goto out;
    CK_UTF8CHAR padded[32];
    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, strlen(label));
    /* A token that ships with a published SO PIN (opencryptoki's 87654321) is initialised
     * with that one, which it checks, and the SO PIN is changed to ours right after. */
    if (factory_len > 0)
        rv = f->C_InitToken(slot, (CK_UTF8CHAR_PTR)factory, factory_len, padded);
    else
        rv = f->C_InitToken(slot, (CK_UTF8CHAR_PTR)so, so_len, padded);
    if (rv != CKR_OK) {
        st = hsm_from_ckr(rv);
        goto out;
    }
    /* SoftHSM2 moves a freshly initialised token to a new slot id: look it up again, by
     * label, after a full re-initialisation of the library. */
    f->C_Finalize(NULL);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    if ((rv = f->C_Initialize(&args)) != CKR_OK) {
        initialized = 0;
        st = hsm_from_ckr(rv);
        goto out;
    }
    if ((st = hsm_find_slot(f, m, &slot)) != SK_OK)
        goto out;
    rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv == CKR_OK && factory_len > 0) {
        rv = f->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)factory, factory_len);
        if (rv == CKR_OK)
            rv = f->C_SetPIN(s, (CK_UTF8CHAR_PTR)factory, factory_len, (CK_UTF8CHAR_PTR)so, so_len);
        if (rv == CKR_OK)
            rv = f->C_Logout(s);
    }
    if (rv == CKR_OK)
        rv = f->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)so, so_len);
    if (rv == CKR_OK)
        rv = f->C_InitPIN(s, (CK_UTF8CHAR_PTR)user, user_len);
    if (rv == CKR_OK)
        f->C_Logout(s);
    CK_TOKEN_INFO ti;
    if (rv == CKR_OK)
        rv = f->C_GetTokenInfo(slot, &ti);
    if (rv == CKR_OK) {
        size_t len = sizeof(ti.serialNumber);
        while (len > 0 && ti.serialNumber[len - 1] == ' ')
            len--;
        memcpy(serial, ti.serialNumber, len);
        serial[len] = '\0';
    }
    st = hsm_from_ckr(rv);

out:
    hsm_match_free(m);
    explicit_bzero(so, sizeof(so));
    explicit_bzero(user, sizeof(user));
    explicit_bzero(factory, sizeof(factory));
    free(ids);
    if (f != NULL) {
        if (s != CK_INVALID_HANDLE)
            f->C_CloseSession(s);
        if (initialized)
            f->C_Finalize(NULL);
    }
    if (dl != NULL)
        dlclose(dl);
    return st;
}
