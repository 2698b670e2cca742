#include "base/errbuf.h"

#include <stdio.h>

void eb_vset(char *buf, size_t cap, const char *what, const char *path, const char *fmt, va_list ap)
{
    if (cap == 0)
        return;
    int n = snprintf(buf, cap, "%s %s: ", what, path ? path : "(null)");
    if (n >= 0 && (size_t)n < cap)
        vsnprintf(buf + n, cap - (size_t)n, fmt, ap);
    fprintf(stderr, "signd: %s\n", buf);
}
