/* sample_fuzz.c: libFuzzer target for the sampling chain with its options. The input is
 * option lines ("name value", as on phi3-sample's command line) up to a NUL byte, then
 * float32 logits (with NaN, +-inf, huge values: whatever the bytes say). Options that
 * parse and pass sample_params_check build a sampler; every draw must return an id in
 * range that is not banned (-inf after bias/penalties), one of the +inf ids if any, or
 * -1 only when every id is banned. Never a crash, hang or NaN-driven misindex. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sample/sampler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *z = memchr(data, 0, size);
    size_t olen = z ? (size_t)(z - data) : size;
    char *opts = malloc(olen + 1);
    memcpy(opts, data, olen);
    opts[olen] = 0;
    sample_params p;
    sample_params_default(&p);
    char err[256];
    int ok = 1;
    for (char *line = opts, *next; line && ok; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        char *sp = strchr(line, ' ');
        if (sp) *sp = 0;
        if (!*line) continue;
        if (sample_set_option(&p, line, sp ? sp + 1 : NULL, err, sizeof err) < 0) ok = 0;
    }
    p.id_limit = 0;
    if (ok && !sample_params_check(&p) && z) {
        const uint8_t *lg = z + 1;
        size_t nb = size - olen - 1, n = nb / 4;
        int nv = n > 0 ? (int)(n > 600 ? 600 : n) : 0;
        if (p.top_k > 100000) p.top_k = 100000;
        if (nv > 0) {
            float *l = malloc(sizeof(float) * (size_t)nv), *prep = malloc(sizeof(float) * (size_t)nv);
            memcpy(l, lg, sizeof(float) * (size_t)nv);
            for (int i = 0; i < nv; i++)
                if (isnan(l[i])) l[i] = -HUGE_VALF;        /* phi3-sample refuses NaN */
            sampler *s = sample_new(&p, nv);
            int32_t ctx[8];
            for (int i = 0; i < 8; i++) ctx[i] = (int32_t)(lg[i % nb] % (unsigned)(nv + 2)) - 1;
            sample_accept(s, ctx, 8);
            for (int round = 0; round < 3; round++) {
                sample_prepare(s, l, prep);
                int any = 0, inf = 0;
                for (int i = 0; i < nv; i++) {
                    if (isnan(prep[i])) abort();
                    if (prep[i] != -HUGE_VALF) any = 1;
                    if (prep[i] == HUGE_VALF) inf = 1;
                }
                int32_t id = sample_next(s, l);
                if (id < 0) { if (any) abort(); break; }
                if (id >= nv || prep[id] == -HUGE_VALF) abort();
                if (inf && prep[id] != HUGE_VALF) abort();
                sample_accept(s, &id, 1);
                if (round == 1) sample_truncate(s, 4);
            }
            int32_t *kept = malloc(sizeof(int32_t) * (size_t)nv);
            sample_kept(s, l, kept);
            free(kept);
            sample_free(s);
            free(l);
            free(prep);
        }
    }
    sample_params_free(&p);
    free(opts);
    return 0;
}
