/*
 * spn: the hand-over from the supervisor (`signd`) to the two programs it executes,
 * `signd-keeper` and `signd-front`: what their command line carries and how they read
 * the configuration.
 *
 * The supervisor reads appliance.conf once (spn_config_snapshot) into a sealed memory
 * file: the keeper and the front parse those very bytes (spn_config_load), which they
 * could not open themselves under their own accounts (the file is root's, mode 0600), and
 * hash them for the audit trail's `started` event, so every process agrees on one
 * configuration. The command line holds paths and descriptor numbers only, never a secret:
 *
 *   signd: front --config PATH --config-fd N --ready-fd N --lock-fd N --events-fd N
 *                [--announce]
 *   signd: keeper --config PATH --config-fd N --ready-fd N --lock-fd N [--peer-uid UID]
 *
 * argv[0] is the process's title as `ps` shows it; the program names itself
 * (spn_begin: "keeper", "front" in /proc/PID/comm).
 */
#ifndef APPLIANCE_SPAWN_H
#define APPLIANCE_SPAWN_H

#include "appliance/common/config.h"

#include <signal.h>
#include <stddef.h>

#define SPN_KEEPER_PROGRAM "signd-keeper"
#define SPN_FRONT_PROGRAM "signd-front"

typedef struct {
    const char *config_path; /* absolute: names messages, relative paths resolve against it */
    int config_fd;           /* the sealed memory file with the configuration's bytes */
    int ready_fd;            /* where to write "R" once ready */
    int lock_fd;             /* the data directory's lock, held for the process's life */
    int events_fd;           /* front: the supervisor's restart events (probe.h); else -1 */
    int announce;            /* front: print the "listening" line (the first start only) */
    long peer_uid;           /* keeper: the front's uid to let on its socket; else -1 */
} spn_args;

/* The supervisor: reads path (cfg_read_file) into a new sealed, close-on-exec memory
 * file, *fd, and parses it as spn_config_load does (sha256_hex may be NULL likewise).
 * 0, or -1 with one line in err. */
int spn_config_snapshot(const char *path, int *fd, cfg *c, char sha256_hex[65], char *err,
                        size_t errlen);
/* Parses the configuration in the memory file fd (named path) into *c, and its SHA-256
 * into sha256_hex (NULL: not computed; only the front records it). 0, or -1 with one line
 * in err. */
int spn_config_load(int fd, const char *path, cfg *c, char sha256_hex[65], char *err,
                    size_t errlen);

/* Writes a's command line, title first, into argv (cap pointers, NULL-terminated); the
 * numbers are kept in store. Returns the argument count, or 0 when cap is too small. */
#define SPN_ARGV_MAX 20
typedef struct {
    char num[6][24];
} spn_argv_store;
size_t spn_argv(const char *title, const spn_args *a, spn_argv_store *store, char *argv[],
                size_t cap);
/* The program's side: parses argv (as spn_argv writes it) into *a, checking that every
 * descriptor is open. 0, or -1 with one line in err. */
int spn_parse(int argc, char **argv, spn_args *a, char *err, size_t errlen);

/* First thing in signd-keeper and signd-front: hd_early (an execve made the process
 * dumpable again), comm set to name ("keeper", "front"), SIGTERM blocked for sigwait and
 * returned in *sigs (nothing else blocked), SIGPIPE and SIGINT ignored (a terminal's
 * Ctrl-C is the supervisor's to act on). */
void spn_begin(const char *name, sigset_t *sigs);

#endif
