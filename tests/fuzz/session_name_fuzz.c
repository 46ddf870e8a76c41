/* session_name_fuzz.c: libFuzzer target for session names (session_name_check): an
 * accepted name is 1-200 characters of [A-Za-z0-9._-], not starting with '.', without
 * "..", so "/phi3.NAME" is one path component in /dev/shm; nothing else is accepted. */
#include "decode/session.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *name = malloc(size + 1);
    if (!name) return 0;
    memcpy(name, data, size);
    name[size] = 0;                     /* a NUL inside cuts the name, as argv would */
    char err[512];
    err[0] = 0;
    int rc = session_name_check(name, err, sizeof err);
    size_t n = strlen(name);
    int want = n >= 1 && n <= SESSION_NAME_MAX && name[0] != '.' && !strstr(name, "..");
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-'))
            want = 0;
    }
    if ((rc == 0) != want || (rc && !err[0])) abort();
    free(name);
    return 0;
}
