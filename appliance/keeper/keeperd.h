/*
 * kpd: the keeper process's server. The keeper is the only process of the appliance that
 * loads the PKCS#11 module, reads the PIN and holds a logged-in token; the HTTP front
 * reaches it only through the keeper protocol (kproto.h) over a Unix SOCK_SEQPACKET socket
 * at cfg.keeper_socket.
 *
 * What it owns:
 *  - the listening socket (created mode 0600 under umask 077). A socket file no keeper
 *    answers on (left by a dead one) is replaced; anything else at the path is refused: a
 *    regular file, a symlink, a directory, or the socket of a keeper still listening.
 *  - the accepted connections, at most cfg_pkcs11_sessions(c) at once; a connection beyond
 *    the limit, or from another uid (SO_PEERCRED), is closed at once, unanswered. They are
 *    served by a pool of KPD_POOL_PER_CPU threads per CPU through one epoll set, each
 *    connection by one thread at a time (EPOLLONESHOT, armed again after its reply), each
 *    thread with its own token session; a GENERATE runs in a thread of its own (and its own
 *    session, released when it ends), so that key creation never holds up signing, as long
 *    as the pool's and the GENERATE threads stay within the session bound (past it, the
 *    pool thread serves the GENERATE itself);
 *  - its own view of which kids may sign, read from the registry file itself (reg_reader:
 *    a read-only SQLite connection, failing closed): the set of active kids, kept in
 *    memory and read again when the file changed (checked at most KPD_ACTIVE_CHECK_MS
 *    apart, and at once for a kid not in the set). So a revoked, broken or unknown kid
 *    cannot sign whatever the front asks (SK_ERR_KEY_NOT_FOUND, the token untouched),
 *    a revoked one at most KPD_ACTIVE_CHECK_MS after its revocation was committed. DESTROY
 *    asks the file first and refuses an active kid. GENERATE asks it whether the kid is
 *    pending (reg_reader_pending: reserved by a create or rotation, no row in any state)
 *    and refuses any other. PING's probe signature and LIST do not consult the registry;
 *  - its own memory (kstate.h, STATE_DIR/keeper/state.db, made by kpd_open; STATE_DIR is
 *    state_directory, by default DATA_DIR): the kids it
 *    generated under (seeded with every kid the registry holds when the file is new), so
 *    that GENERATE never makes a key under a kid that existed, whatever the registry says
 *    now; and the audit checkpoints it signed, so that AUDIT_SIGN signs a checkpoint only
 *    when its seq and hash are the chain's as the keeper computes them from the audit
 *    table, walked onward from the last one signed (audit_chain_walk), and never a second
 *    hash for a seq;
 *  - the hsm handle, opened by kpd_open and closed by kpd_close only after every pool and
 *    GENERATE thread has left the module (SoftHSM2 crashes on C_Finalize otherwise).
 *
 * A GENERATE whose reply cannot be sent (the front died mid-request, or gave up waiting)
 * has its new key destroyed at once, with a log line: that front will never record it,
 * and its successor may have reconciled before the key existed (reconcile.h).
 *
 * A request that cannot be decoded (an empty datagram included) gets an error reply
 * (kpp_status) and the connection keeps serving; only a failed send or recv, or the
 * peer's close, ends a connection. LIST scans the token at offset 0 (at most 8192 entries,
 * the reconcile bound; the reply's total is the real count even when larger) and serves
 * later offsets on the same connection from that snapshot, so one listing is consistent.
 *
 * Logging: one line on stderr, prefixed "signd-keeper: ", per notable event (listening,
 * a peer refused, the connection limit reached — once until a connection ends, accept
 * failing for good); never one per request that is served. A request the keeper refuses
 * as a policy matter (a checkpoint not of the chain, a GENERATE under a kid not pending)
 * is a security event: "signd-keeper: security: ..." naming the peer's pid (SO_PEERCRED);
 * so is every request that cannot be decoded (a protocol error: the front never sends
 * one), at most KPD_PROTO_LOG_PER_S lines a second, the excess counted in one line.
 *
 *   kpd *d;
 *   if (kpd_open(&c, &d, err, sizeof(err)) != 0) ... one line in err ...
 *   kpd_serve(d);            // returns after kpd_stop, from a signal handler thread
 *   kpd_close(d);
 */
#ifndef APPLIANCE_KEEPERD_H
#define APPLIANCE_KEEPERD_H

#include "appliance/common/config.h"

#include <stddef.h>
#include <sys/types.h>

/* How long a kid may still sign through the keeper after the registry stopped listing it
 * as active (a revocation committed by the front): the keeper keeps the active kids in
 * memory and asks the file whether it changed at most this often. A kid that became
 * active signs at once, and DESTROY always asks the file first. */
#define KPD_ACTIVE_CHECK_MS 100

/* How long the keeper of a cluster node (a PostgreSQL registry) keeps signing with the
 * active kids it last read while the shared database is out of reach. No revocation can
 * commit anywhere while the server is down, so the set is as current as it was when the
 * outage began (at most KPD_ACTIVE_CHECK_MS behind), and minting, which needs nothing
 * stored, goes on through a database restart or failover. Past this bound (a long outage,
 * or this node cut off while the others still revoke) the keeper fails closed as on a
 * SQLite registry that cannot be read, which it does at once. */
#define KPD_OUTAGE_GRACE_MS 120000

/* Pool threads per online CPU (never more than the session bound). One thread per
 * connection, as before, cost the split up to a tenth of its throughput under load: every
 * signature woke a sleeping thread, and 64 threads signing at once contend on the
 * module's and OpenSSL's locks; a few busy threads find the next request waiting. Two per
 * CPU measured best against one and four (docs/performance.md). */
#define KPD_POOL_PER_CPU 2

/* Protocol errors logged per second at most (see Logging above). */
#define KPD_PROTO_LOG_PER_S 10

typedef struct kpd kpd;

/* Binds and listens on c->keeper_socket (first, so that a path it may not take is found
 * before the PIN is read), opens the token (module, label or URI, PIN file, session bound
 * from c), the registry file read-only (it must exist: the keeper never creates it) and
 * its own state (kst_open in cfg_state_dir(c), created when missing).
 * 0, or -1 with one line naming the problem in err and nothing left behind (the socket
 * file is removed again). Changes the process umask for the moment of bind: call it before
 * other threads create files. */
int kpd_open(const cfg *c, kpd **out, char *err, size_t errlen);

/* The front runs as an account of its own (hd_become): admits connections from uid and
 * from root too (besides the keeper's own uid: root could read the token files anyway, and
 * the supervisor stays root then), and makes the socket file 0660 so the group the two
 * accounts share may connect to it. Call it between kpd_open and kpd_serve. 0, or -1 with
 * one line in err. */
int kpd_allow_peer(kpd *d, uid_t uid, char *err, size_t errlen);

/* Accepts connections until kpd_stop (the pool started by kpd_open serves them). Returns
 * 0, or -1 when accept fails for good (running out of descriptors or memory is waited
 * out, not fatal). */
int kpd_serve(kpd *d);

/* Makes kpd_serve return: stops accepting and shuts every connection down (a request
 * being executed finishes; its reply is lost). Safe from any thread; later calls are
 * no-ops. NULL is a no-op. */
void kpd_stop(kpd *d);

/* Stops if kpd_stop was not called, joins the pool's threads (each finishes the request
 * it serves) and waits for the GENERATE threads, closes every connection, the token and
 * the registry, unlinks the socket (only if the file is still the one it bound). Call it
 * once kpd_serve has returned, or when kpd_serve never ran. NULL is a no-op. */
void kpd_close(kpd *d);

#endif
