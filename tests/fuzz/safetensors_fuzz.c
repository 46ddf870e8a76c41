/* safetensors_fuzz.c: libFuzzer target for the safetensors parser (embed/safetensors.c):
 * any bytes must give a validated tensor table or an error, never an out-of-bounds read.
 * Every tensor accepted is read end to end so ASan sees a bad range. */
#include "embed/model.h"
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy: libFuzzer's buffer is exactly size bytes, so ASan catches overruns. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    st_tensor *t;
    int n;
    char err[256];
    if (st_parse(buf, size, &t, &n, err, sizeof err) == 0) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < n; i++) {
            const uint8_t *p = t[i].data;
            for (size_t k = 0; k < t[i].nbytes; k++) sink ^= p[k];
            int64_t any[ST_MAX_DIMS];
            for (int d = 0; d < ST_MAX_DIMS; d++) any[d] = -1;
            st_check(&t[i], t[i].name, ST_FLOAT_WEIGHTS, t[i].ndim, any, err, sizeof err);
        }
        (void)sink;
        st_tensors_free(t, n);
    }
    free(buf);
    return 0;
}
