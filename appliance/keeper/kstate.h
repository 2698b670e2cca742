/*
 * kst: the keeper's own memory, in a SQLite file the front has no reason to open and, once
 * the keeper has an account of its own, no right to: KST_DIR ("keeper", mode 0700) in the
 * node's state directory (cfg_state_dir: state_directory, by default the database file's
 * directory), holding KST_FILE ("state.db", mode 0600). The keeper (keeperd.c) alone opens
 * it; the database (`appliance.db`, or the cluster's PostgreSQL) is the front's and proves
 * nothing to the keeper, since whoever controls a front can rewrite it. In a cluster each
 * node's keeper has its own, never shared.
 *
 * What it remembers:
 *  - every audit checkpoint the audit key signed through this keeper, as (seq, hash): the
 *    keeper never signs a second, different hash for a seq it signed before, and it walks
 *    the chain onward from the newest one (audit_chain_walk), so that a history rewritten
 *    before it no longer chains to what it signed. In a cluster the chain is shared and
 *    the other nodes' keepers sign checkpoints on it too; this file holds only this
 *    keeper's, and the walk from its newest one runs across the events every node
 *    appended since (their checkpoints neither help nor stop it);
 *  - every kid it generated a key for, and every kid the registry held when the file was
 *    first made: GENERATE never makes a key under a kid that ever existed, whatever the
 *    registry says now.
 *
 * Every write is committed (synchronous=FULL) before it returns, so the keeper records a
 * checkpoint before it signs it and a kid before it generates under it.
 *
 * Thread safety: every function may be called from any thread (one mutex around the one
 * connection).
 */
#ifndef APPLIANCE_KSTATE_H
#define APPLIANCE_KSTATE_H

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

#define KST_DIR "keeper"
#define KST_FILE "state.db"
#define KST_HASH_HEX 64

typedef struct kst kst;

/* Opens (creating) the state in state_dir: state_dir/KST_DIR/KST_FILE. The
 * directory is made mode 0700 when missing; an existing one must be a directory (not a
 * symlink) of this uid with no group or other permission bits, and the file is never
 * opened through a symlink. *fresh (may be NULL) is 1 when no kid is recorded yet (a new
 * file: the caller seeds the kids from the registry). 0, or -1 with one line in err. */
int kst_open(const char *state_dir, kst **out, int *fresh, char *err, size_t errlen);
void kst_close(kst *s);

/* The newest checkpoint signed: 0 with *seq and hash (seq 0 and "" when none), or -1. */
int kst_last_checkpoint(kst *s, uint64_t *seq, char hash[KST_HASH_HEX + 1]);
/* The hash signed for seq: 1 and hash set, 0 when none was, -1 on failure. */
int kst_checkpoint_at(kst *s, uint64_t seq, char hash[KST_HASH_HEX + 1]);
/* Records (seq, hash) as signed, durably. 0, or -1 (a different hash for seq included). */
int kst_checkpoint_add(kst *s, uint64_t seq, const char *hash);

/* 1 when kid was ever generated or seeded, 0 when not, -1 on failure. */
int kst_kid_known(kst *s, const sk_kid *kid);
/* Records kid, durably: 0 (also when already known), or -1. */
int kst_kid_add(kst *s, const sk_kid *kid);
/* The same for n kids in one transaction (the seed from the registry). */
int kst_kids_add(kst *s, const sk_kid *kids, size_t n);

#endif
