/*
 * names: an enum's stable names as a table indexed by the enum (its statuses, states and
 * roles), looked up both ways with a bound on the value, so that no caller indexes out of
 * the table with a value from a file or a peer.
 */
#ifndef BASE_NAMES_H
#define BASE_NAMES_H

#include <stddef.h>

/* names[v] when v < n, else unknown. */
const char *nm_name(const char *const *names, size_t n, unsigned v, const char *unknown);

/* The index of s in names[0..n), or -1 (s NULL or not there). */
int nm_find(const char *const *names, size_t n, const char *s);

#endif
