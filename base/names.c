#include "base/names.h"

#include <string.h>

const char *nm_name(const char *const *names, size_t n, unsigned v, const char *unknown)
{
    return v < n && names[v] != NULL ? names[v] : unknown;
}

int nm_find(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; s != NULL && i < n; i++)
        if (names[i] != NULL && strcmp(s, names[i]) == 0)
            return (int)i;
    return -1;
}
