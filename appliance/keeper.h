/*
 * kp: the one narrow interface through which the HTTP side reaches the token.
 *
 * api/ never calls hsm/ directly: it asks the keeper to sign bytes with a kid, create a
 * key, destroy a kid, export a public key, list keys, or check the token answers. Every
 * request is fixed-size, every reply is an hsm_status, and nothing points into the token's
 * memory. Two implementations behind the same functions:
 *  - kp_open: in-process, forwarding to hsm/ (process_model = single, and the keeper
 *    process itself);
 *  - kp_connect: remote, each calling thread with its own SOCK_SEQPACKET connection to the
 *    keeper process (kproto.h), opened on first use and reopened after the keeper restarts.
 *    A keeper that is down or dies mid-request gives HSM_ERR_DEVICE (503 hsm_unavailable);
 *    a request that never reached it (the connection had gone stale) is retried once on a
 *    fresh connection, so a restarted keeper costs no request.
 *
 * Thread safety: as hsm.h. Each calling thread gets its own token session, in-process or
 * in the keeper.
 */
#ifndef APPLIANCE_KEEPER_H
#define APPLIANCE_KEEPER_H

#include "hsm/hsm.h"

typedef struct kp kp;

/* Opens the token named by the configuration (module, token, PIN file, session bound).
 * On failure writes one line naming the problem into err. */
hsm_status kp_open(const hsm_config *hc, kp **out, char *err, size_t errlen);
/* The remote implementation: the keeper listening at socket_path. Connects nothing yet
 * (the first call of each thread does), so it succeeds while the keeper is down. */
hsm_status kp_connect(const char *socket_path, kp **out, char *err, size_t errlen);
void kp_close(kp *k);

hsm_status kp_sign(kp *k, const hsm_kid *kid, const void *msg, size_t len, uint8_t sig[HSM_SIG_MAX],
                   size_t *sig_len);
/* Generates a key pair and returns its public half. */
hsm_status kp_generate(kp *k, const hsm_kid *kid, unsigned bits, hsm_pubkey *pub);
hsm_status kp_public_key(kp *k, const hsm_kid *kid, hsm_pubkey *pub);
hsm_status kp_destroy(kp *k, const hsm_kid *kid);
hsm_status kp_list(kp *k, hsm_key_entry *out, size_t cap, size_t *count);
/* The token answers: a key it holds signs a probe, or, with no key, it lists. */
hsm_status kp_ping(kp *k, const hsm_kid *probe_kid);
/* Releases the calling thread's session (CivetWeb's exit_thread). */
void kp_thread_done(kp *k);
unsigned kp_sessions_open(kp *k);

#endif
