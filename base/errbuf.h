/*
 * errbuf: the error plumbing a store shares with its callers: one message per thread,
 * kept for its *_last_error() and said on stderr. Each store owns its buffer (a
 * _Thread_local array), so one store's failure never overwrites another's message.
 *
 *   static _Thread_local char reg_errbuf[REG_ERR_MSG_MAX];
 *   ... eb_vset(reg_errbuf, sizeof(reg_errbuf), "registry", path, fmt, ap); return st;
 */
#ifndef BASE_ERRBUF_H
#define BASE_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>

/* Writes "<what> <path>: <fmt...>" into buf (cap bytes, truncated, always terminated; a
 * NULL path reads "(null)") and the line "signd: <buf>" to stderr. */
void eb_vset(char *buf, size_t cap, const char *what, const char *path, const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));

#endif
