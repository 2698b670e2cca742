/*
 * evt: the supervisor's restart events, one fixed-size record per replaced keeper or front,
 * on a pipe from the supervisor (appliance/supervisor/main.c, the writer) to the front
 * (appliance/core/probe.c, the reader, which records each in the audit trail and the
 * restart metric). spawn.h passes the pipe's read end to signd-front.
 *
 * One write of sizeof(evt_restart) bytes each, atomic below PIPE_BUF, so a reader never
 * sees half a record; a record whose magic or role is wrong is dropped, never trusted.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef APPLIANCE_COMMON_EVENTS_H
#define APPLIANCE_COMMON_EVENTS_H

#include <stdint.h>
#include <sys/types.h>

typedef enum { EVT_ROLE_KEEPER = 1, EVT_ROLE_FRONT } evt_role;
typedef enum {
    EVT_CAUSE_EXITED = 1, /* detail: the exit status */
    EVT_CAUSE_SIGNAL,     /* detail: the signal that killed it */
    EVT_CAUSE_WATCHDOG,   /* detail: ms since the keeper last answered a ping */
    EVT_CAUSE_COUNT_
} evt_cause;

typedef struct {
    uint32_t magic; /* EVT_MAGIC */
    uint32_t role;  /* evt_role */
    uint32_t cause; /* evt_cause */
    int32_t pid;    /* the process that was replaced */
    int64_t detail;
} evt_restart;
#define EVT_MAGIC 0x73696764u

/* Writes one record to fd (the pipe's write end; -1: nothing to do). Never blocks on a
 * non-blocking fd: with the pipe full the record is dropped. */
void evt_send(int fd, evt_role role, evt_cause cause, pid_t pid, int64_t detail);

/* Reads the next whole record from fd into out: 1, or 0 when there is none (empty pipe,
 * end, error). The record is unchecked: see evt_valid. */
int evt_recv(int fd, evt_restart *out);

/* 1 when ev has the magic and a known role, else 0. */
int evt_valid(const evt_restart *ev);

/* "exited", "signal", "watchdog"; "unknown" out of range. */
const char *evt_cause_name(evt_cause c);

#endif
