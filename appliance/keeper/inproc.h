/*
 * kp_open: the keeper interface (appliance/kproto/keeper.h) in this process, forwarding to
 * hsm/. The keeper program's own token calls (kp_svc_hsm_*, for the AUDIT_* and PUBLISH_*
 * ops) and what the unit tests and the bench run without a keeper process; no production
 * program but signd-keeper links it.
 */
#ifndef APPLIANCE_KEEPER_INPROC_H
#define APPLIANCE_KEEPER_INPROC_H

#include "appliance/kproto/keeper.h"
#include "hsm/hsm.h"

/* Opens the token named by the configuration (module, token, PIN file, session bound).
 * On failure writes one line naming the problem into err. */
sk_status kp_open(const hsm_config *hc, kp **out, char *err, size_t errlen);

/* The service keys' two operations on an hsm handle: what kp_svc_* run in-process and
 * what the keeper (keeperd.c) runs for the AUDIT_* and PUBLISH_* ops. Creation is
 * serialised by a process-wide mutex (one hsm handle per process, hsm.h); when
 * hsm_generate answers SK_ERR_KEY_EXISTS, someone made the key first, and that key is the
 * one used. kp_svc_hsm_sign refuses (SK_ERR_BAD_ARGUMENT, the token untouched) what
 * kp_svc_input_ok refuses. */
sk_status kp_svc_hsm_public_key(hsm *h, kp_svc s, sk_pubkey *pub);
sk_status kp_svc_hsm_sign(hsm *h, kp_svc s, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                          size_t *sig_len);

#endif
