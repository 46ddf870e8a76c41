/* cuda_nocuda.c: the CUDA entry points of a CPU-only build (CUDA=0): no device, ever. */
#include "decode/backend.h"
#include <stdio.h>

int backend_cuda_available(void) { return 0; }

backend *backend_cuda_new(const struct phi3_model *m, int max_ctx, char *err, size_t errlen)
{
    (void)m; (void)max_ctx;
    snprintf(err, errlen, "this build has no CUDA backend (built with CUDA=0)");
    return NULL;
}
