/* kp: in-process keeper, forwarding to hsm/. See keeper.h. */
#include "appliance/keeper.h"

#include <stdio.h>
#include <stdlib.h>

struct kp {
    hsm *h;
};

hsm_status kp_open(const hsm_config *hc, kp **out, char *err, size_t errlen)
{
    *out = NULL;
    kp *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        snprintf(err, errlen, "out of memory");
        return HSM_ERR_DEVICE;
    }
    unsigned long ckr = 0;
    hsm_status st = hsm_open(hc, &k->h, &ckr);
    if (st != HSM_OK) {
        snprintf(err, errlen, "%s: %s (token %s, module %s, PKCS#11 rv 0x%lx)", hsm_status_name(st),
                 hsm_strerror(st), hc->token,
                 hc->module_path ? hc->module_path : HSM_DEFAULT_MODULE, ckr);
        free(k);
        return st;
    }
    *out = k;
    return HSM_OK;
}

void kp_close(kp *k)
{
    if (k == NULL)
        return;
    hsm_close(k->h);
    free(k);
}

hsm_status kp_sign(kp *k, const hsm_kid *kid, const void *msg, size_t len, uint8_t sig[HSM_SIG_MAX],
                   size_t *sig_len)
{
    return hsm_sign_rs256(k->h, kid, msg, len, sig, sig_len);
}

hsm_status kp_generate(kp *k, const hsm_kid *kid, unsigned bits, hsm_pubkey *pub)
{
    hsm_status st = hsm_generate(k->h, kid, bits);
    if (st != HSM_OK)
        return st;
    st = hsm_public_key(k->h, kid, pub);
    if (st != HSM_OK)
        hsm_destroy(k->h, kid); /* a key we cannot publish must not stay behind */
    return st;
}

hsm_status kp_public_key(kp *k, const hsm_kid *kid, hsm_pubkey *pub)
{
    return hsm_public_key(k->h, kid, pub);
}

hsm_status kp_destroy(kp *k, const hsm_kid *kid)
{
    return hsm_destroy(k->h, kid);
}

hsm_status kp_list(kp *k, hsm_key_entry *out, size_t cap, size_t *count)
{
    return hsm_list(k->h, out, cap, count);
}

hsm_status kp_ping(kp *k, const hsm_kid *probe_kid)
{
    if (probe_kid != NULL) {
        uint8_t sig[HSM_SIG_MAX];
        size_t len;
        return hsm_sign_rs256(k->h, probe_kid, "readyz", 6, sig, &len);
    }
    hsm_key_entry e;
    size_t n;
    return hsm_list(k->h, &e, 1, &n);
}

void kp_thread_done(kp *k)
{
    hsm_thread_done(k->h);
}

unsigned kp_sessions_open(kp *k)
{
    return hsm_sessions_open(k->h);
}
