/*
 * file: reading a whole small file (a configuration, a PEM key, a PIN, a credential
 * secret) with a bound, written once. A file longer than the bound is refused, never cut;
 * the checks asked for are made on the very file opened (fstat of the descriptor), so a
 * file swapped between a check and the read cannot slip through.
 */
#ifndef BASE_FILE_H
#define BASE_FILE_H

#include <stddef.h>

#define FILE_REGULAR 1u  /* refuse anything but a regular file (a FIFO, a device, a directory) */
#define FILE_NOFOLLOW 2u /* refuse a symbolic link as the last component (errno ELOOP) */
#define FILE_PRIVATE 4u  /* refuse a file on which group or others have any permission */

typedef enum {
    FILE_OK = 0,
    FILE_ERR_OPEN,        /* open failed: errno says why */
    FILE_ERR_NOT_REGULAR, /* FILE_REGULAR, and it is not */
    FILE_ERR_MODE,        /* FILE_PRIVATE, and group or others have a permission bit */
    FILE_ERR_TOO_LARGE,   /* more bytes than the bound */
    FILE_ERR_READ,        /* read or fstat failed: errno says why */
    FILE_ERR_NOMEM,
} file_status;

/* Reads the whole file at path into buf: at most cap - 1 bytes, then a NUL (cap >= 1).
 * *len gets the bytes read; mode, when not NULL, the file's permission bits. On failure
 * buf is wiped (it may be meant for a secret), *len is 0 and errno is the system's where
 * the status says so. */
file_status file_read(const char *path, unsigned flags, char *buf, size_t cap, size_t *len,
                      unsigned *mode);

/* The same into a new buffer of max + 1 bytes that the caller frees; *out NULL on failure. */
file_status file_read_alloc(const char *path, unsigned flags, size_t max, char **out, size_t *len);

#endif
