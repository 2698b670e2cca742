/* kp_open: the keeper interface over hsm/ in this process (kp_wrap_local). See inproc.h. */
#include "appliance/keeper/inproc.h"

#include "appliance/common/metrics.h"

#include <pthread.h>
#include <stdio.h>

/* Counts a failed token operation for GET /metrics: the hsm call that returned st ran on
 * this thread just now, so hsm_last_ckr is that call's. */
static sk_status inproc_counted(sk_status st)
{
    if (st != SK_OK)
        met_pkcs11_error(st, hsm_last_ckr());
    return st;
}

static sk_status inproc_sign(void *ctx, const sk_kid *kid, const void *msg, size_t len,
                             uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    return inproc_counted(hsm_sign_rs256(ctx, kid, msg, len, sig, sig_len));
}

static sk_status inproc_generate(void *ctx, const sk_kid *kid, unsigned bits, sk_pubkey *pub,
                                 sk_attrs *attrs)
{
    hsm_attrs a;
    sk_status st = inproc_counted(hsm_generate_attrs(ctx, kid, bits, &a));
    if (st != SK_OK)
        return st;
    st = hsm_public_key(ctx, kid, pub);
    if (st != SK_OK)
        hsm_destroy(ctx, kid); /* a key we cannot publish must not stay behind */
    else
        *attrs = hsm_attrs_bits(&a);
    return st;
}

static sk_status inproc_token_info(void *ctx, sk_token_info *out)
{
    hsm_token_info(ctx, out);
    return SK_OK;
}

static sk_status inproc_key_attrs(void *ctx, const sk_kid *kid, sk_attrs *attrs)
{
    hsm_attrs a;
    sk_status st = inproc_counted(hsm_key_attrs(ctx, kid, &a));
    if (st == SK_OK)
        *attrs = hsm_attrs_bits(&a);
    return st;
}

static sk_status inproc_destroy(void *ctx, const sk_kid *kid)
{
    return hsm_destroy(ctx, kid);
}

static sk_status inproc_list(void *ctx, sk_key_entry *out, size_t cap, size_t *count)
{
    return hsm_list(ctx, out, cap, count);
}

static sk_status inproc_ping(void *ctx, const sk_kid *probe_kid)
{
    if (probe_kid != NULL) {
        uint8_t sig[SK_SIG_MAX];
        size_t len;
        return hsm_sign_rs256(ctx, probe_kid, "readyz", 6, sig, &len);
    }
    return hsm_ping(ctx);
}

static sk_status inproc_svc_public_key(void *ctx, kp_svc s, sk_pubkey *pub)
{
    return kp_svc_hsm_public_key(ctx, s, pub);
}

static sk_status inproc_svc_sign(void *ctx, kp_svc s, const void *msg, size_t len,
                                 uint8_t sig[SK_SIG_MAX], size_t *sig_len)
{
    return kp_svc_hsm_sign(ctx, s, msg, len, sig, sig_len);
}

static void inproc_thread_done(void *ctx)
{
    hsm_thread_done(ctx);
}

static unsigned inproc_sessions_open(void *ctx)
{
    return hsm_sessions_open(ctx);
}

static unsigned long inproc_reopens(void *ctx)
{
    return hsm_reopens(ctx);
}

static void inproc_close(void *ctx)
{
    hsm_close(ctx);
}

static const kp_local_ops inproc_ops = {
    .sign = inproc_sign,
    .generate = inproc_generate,
    .key_attrs = inproc_key_attrs,
    .token_info = inproc_token_info,
    .destroy = inproc_destroy,
    .list = inproc_list,
    .ping = inproc_ping,
    .svc_public_key = inproc_svc_public_key,
    .svc_sign = inproc_svc_sign,
    .thread_done = inproc_thread_done,
    .sessions_open = inproc_sessions_open,
    .reopens = inproc_reopens,
    .close = inproc_close,
};

sk_status kp_open(const hsm_config *hc, kp **out, char *err, size_t errlen)
{
    *out = NULL;
    hsm *h = NULL;
    unsigned long ckr = 0;
    sk_status st = hsm_open(hc, &h, &ckr);
    if (st != SK_OK) {
        const char *detail = hsm_open_detail();
        snprintf(err, errlen, "%s: %s%s%s (token %s, module %s, PKCS#11 rv 0x%lx)",
                 sk_status_name(st), sk_strerror(st), *detail ? ": " : "", detail, hc->token,
                 hc->module_path ? hc->module_path : HSM_DEFAULT_MODULE, ckr);
        return st;
    }
    if (kp_wrap_local(&inproc_ops, h, out) != SK_OK) {
        hsm_close(h);
        snprintf(err, errlen, "out of memory");
        return SK_ERR_DEVICE;
    }
    return SK_OK;
}

/* Serialises the service keys' creation: one hsm handle per process, so one mutex. */
static pthread_mutex_t inproc_svc_mu = PTHREAD_MUTEX_INITIALIZER;

sk_status kp_svc_hsm_public_key(hsm *h, kp_svc s, sk_pubkey *pub)
{
    sk_kid kid;
    unsigned bits = 0;
    if (kp_svc_params(s, &kid, &bits) != SK_OK)
        return SK_ERR_BAD_ARGUMENT;
    sk_status st = hsm_public_key(h, &kid, pub);
    if (st != SK_ERR_KEY_NOT_FOUND)
        return st;
    /* First use: generate it, once. Under the mutex, look again: another thread may have
     * generated it while this one waited. */
    pthread_mutex_lock(&inproc_svc_mu);
    st = hsm_public_key(h, &kid, pub);
    if (st == SK_ERR_KEY_NOT_FOUND) {
        st = hsm_generate(h, &kid, bits);
        /* SK_ERR_KEY_EXISTS: someone else made it first; that key is the service key.
         * Once generated, the key stays even if reading its public half fails now: the
         * next call reads it again (destroying it could destroy a key already in use). */
        if (st == SK_OK || st == SK_ERR_KEY_EXISTS)
            st = hsm_public_key(h, &kid, pub);
    }
    pthread_mutex_unlock(&inproc_svc_mu);
    return st;
}

sk_status kp_svc_hsm_sign(hsm *h, kp_svc s, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                          size_t *sig_len)
{
    *sig_len = 0;
    sk_kid kid;
    unsigned bits = 0;
    if (!kp_svc_input_ok(s, msg, len) || kp_svc_params(s, &kid, &bits) != SK_OK)
        return SK_ERR_BAD_ARGUMENT;
    sk_status st = hsm_sign_rs256(h, &kid, msg, len, sig, sig_len);
    if (st != SK_ERR_KEY_NOT_FOUND)
        return st;
    sk_pubkey pub; /* created on first use, whichever comes first */
    st = kp_svc_hsm_public_key(h, s, &pub);
    if (st != SK_OK)
        return st;
    return hsm_sign_rs256(h, &kid, msg, len, sig, sig_len);
}
