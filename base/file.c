#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Closes fd without letting close() change the errno the caller is to see. */
static file_status file_close(int fd, file_status st)
{
    int e = errno;
    close(fd);
    errno = e;
    return st;
}

file_status file_read(const char *path, unsigned flags, char *buf, size_t cap, size_t *len,
                      unsigned *mode)
{
    *len = 0;
    if (cap == 0)
        return FILE_ERR_TOO_LARGE;
    buf[0] = '\0';
    /* O_NONBLOCK: a FIFO with no writer must not hang the open (it is refused or read as
     * it stands). */
    int oflags = O_RDONLY | O_CLOEXEC | O_NOCTTY | ((flags & FILE_REGULAR) ? O_NONBLOCK : 0) |
                 ((flags & FILE_NOFOLLOW) ? O_NOFOLLOW : 0);
    int fd = open(path, oflags);
    if (fd < 0)
        return FILE_ERR_OPEN;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return file_close(fd, FILE_ERR_READ);
    if ((flags & FILE_REGULAR) && !S_ISREG(st.st_mode))
        return file_close(fd, FILE_ERR_NOT_REGULAR);
    if ((flags & FILE_PRIVATE) && (st.st_mode & 077) != 0)
        return file_close(fd, FILE_ERR_MODE);
    if (mode != NULL)
        *mode = (unsigned)(st.st_mode & 07777);
    /* Read one byte past the bound, to tell a file that fits from one that does not. */
    size_t n = 0;
    file_status rc = FILE_OK;
    for (;;) {
        char extra;
        char *dst = n < cap - 1 ? buf + n : &extra;
        size_t want = n < cap - 1 ? cap - 1 - n : 1;
        ssize_t r = read(fd, dst, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = FILE_ERR_READ;
            break;
        }
        if (r == 0)
            break;
        if (dst == &extra) {
            rc = FILE_ERR_TOO_LARGE;
            break;
        }
        n += (size_t)r;
    }
    file_close(fd, rc);
    if (rc != FILE_OK) {
        explicit_bzero(buf, cap);
        return rc;
    }
    buf[n] = '\0';
    *len = n;
    return FILE_OK;
}

file_status file_read_alloc(const char *path, unsigned flags, size_t max, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    char *buf = max < (size_t)-1 ? malloc(max + 1) : NULL;
    if (buf == NULL)
        return FILE_ERR_NOMEM;
    file_status st = file_read(path, flags, buf, max + 1, len, NULL);
    if (st != FILE_OK) {
        int e = errno;
        free(buf);
        errno = e;
        return st;
    }
    *out = buf;
    return FILE_OK;
}
