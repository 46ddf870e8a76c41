/* session_fuzz.c: libFuzzer target for the session header validator: arbitrary bytes as
 * a shared-memory object must validate or give an error, never read out of bounds. */
#include "decode/session.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size heap copy so ASan catches any read past the object. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    /* The shapes of the seed (tiny-gqa-window) and of none: both paths. */
    session_expect e = {0, 3, 2, 32, 512, 4096, 4096};
    session_state st;
    char err[256];
    if (size >= 24) memcpy(&e.fingerprint, buf + 16, 8);   /* let inputs reach past the model check */
    session_validate(buf, size, &e, 1, &st, err, sizeof err);
    session_validate(buf, size, NULL, 1, &st, err, sizeof err);
    session_validate(buf, size, NULL, 0, &st, err, sizeof err);
    /* A reader's partial copy: the first avail bytes of an object of the stated size. */
    if (size >= 2) {
        size_t avail = buf[size - 1] * (size / 256 + 1) % size;
        session_validate_part(buf, avail, size + buf[size - 2] * 4096u, NULL, 1, &st, err, sizeof err);
    }
    free(buf);
    return 0;
}
