/*
 * text: printable ASCII, the only bytes that labels, reasons, audiences, secrets and
 * echoed paths may carry into logs, JSON and terminals (a control character there could
 * forge a line; a byte above 0x7e may not be UTF-8).
 */
#ifndef BASE_TEXT_H
#define BASE_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* 0x20 (the space) to 0x7e. */
bool txt_is_printable(char c);
/* 0x21 to 0x7e: printable and not the space (a URL, a secret, a query value). */
bool txt_is_visible(char c);

/* Are the n bytes at s all printable (txt_printable) or visible (txt_visible)? n 0: true. */
bool txt_printable(const char *s, size_t n);
bool txt_visible(const char *s, size_t n);
/* The same over a NUL-terminated string; NULL counts as "" (true). */
bool txt_printable_str(const char *s);

/* Copies at most max bytes of src (up to its NUL; NULL is "") into dst, which holds cap
 * bytes with the NUL, each byte that is not printable written as '?'. The bytes written. */
size_t txt_copy_printable(char *dst, size_t cap, const char *src, size_t max);

#endif
