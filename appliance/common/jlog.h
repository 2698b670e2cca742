/*
 * jlog: the appliance's JSON log, one object per line: a line per request (server.c) and a
 * line per audit event as it commits (audit.c), to stderr or to the file log_file names.
 *
 * What it owns: the log descriptor. A file is opened O_WRONLY | O_APPEND | O_CREAT |
 * O_CLOEXEC | O_NOFOLLOW with mode 0600, so lines from every thread land whole and in
 * order of their write. Rotation needs no signal and no copytruncate: at most once a
 * second a writer compares the path's inode with the open one and, when logrotate has
 * moved or removed the file, opens the path again and dup2()s it over the old descriptor
 * (a write racing with that goes to the old file or the new one, never to a closed
 * descriptor).
 *
 * Nothing here knows what a line holds: callers build the object and keep secrets out of
 * it (no header, no body, no bearer, no PIN; ids, kids, routes and statuses only).
 *
 * Thread safety: jlog_open and jlog_close once, before and after every writer; jlog_write
 * from any thread, lock-free.
 *
 *   if (jlog_open(c->log_file, err, sizeof(err)) != 0) die(err);
 *   json_t *j = json_pack("{s:s}", "event", "x");
 *   jlog_write(j);  // consumes j
 */
#ifndef APPLIANCE_JLOG_H
#define APPLIANCE_JLOG_H

#include <jansson.h>
#include <stddef.h>

/* A line is at most this long; a longer object is dropped and counted. */
#define JLOG_LINE_MAX (16 * 1024)
/* "2026-11-23T16:40:00.123Z" and its NUL. */
#define JLOG_TIME_LEN 25

/* Sends lines to path (NULL or "": stderr, the default before any call). 0, or -1 with
 * one line naming the file and the problem in err (the previous destination stays). */
int jlog_open(const char *path, char *err, size_t errlen);

/* Back to stderr; closes the file. */
void jlog_close(void);

/* Writes j as one compact, ASCII-only line and releases it (NULL is ignored). */
void jlog_write(json_t *j);

/* The current UTC time with milliseconds, RFC 3339. */
void jlog_time(char out[JLOG_TIME_LEN]);

/* Lines dropped (over JLOG_LINE_MAX, out of memory, or a failed write). */
unsigned long long jlog_dropped(void);

#endif
