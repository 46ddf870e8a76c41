/* batch_test.c: backend_cpu_forward_batch (phi3-run --serve's step) gives every context
 * the bits its own forward gives: random contexts on both fixture models, steps mixing
 * decode tokens and prompt chunks of 1..64 tokens, logits of the last token or of all,
 * none, rewinds between steps, contexts crossing tiny-longrope's LongRoPE switch, and
 * backends with different thread counts, float32 and half KV caches. The reference is a solo backend per context fed
 * the same pieces through backend->forward. */
#include "decode/backend.h"
#include "decode/cpu.h"
#include "embed/model.h"
#include "shared/util.h"
#include "tests/unit/tap.h"
#include <stdlib.h>
#include <string.h>

#define K 7

static unsigned rng = 12345;
static int rnd(int n)
{
    rng = rng * 1103515245u + 12345u;
    return (int)((rng >> 8) % (unsigned)n);
}

static void check_model(const char *dir, int steps)
{
    char err[300];
    phi3_model *m = model_load(dir, err, sizeof err);
    ok(m != NULL, "%s loads (%s)", dir, m ? "" : err);
    if (!m) return;
    int V = m->cfg.vocab;
    backend *bb[K], *solo[K];
    for (int i = 0; i < K; i++) {
        bb[i] = backend_cpu_new(m, 0, i == K - 1 ? 1 : 2, NULL, err, sizeof err);   /* one with 1 thread */
        solo[i] = backend_cpu_new(m, 0, 1, NULL, err, sizeof err);
        if (i % 2) {                            /* half of them keep K and V in half */
            backend_cpu_set_kv_type(bb[i], KV_F16);
            backend_cpu_set_kv_type(solo[i], KV_F16);
        }
    }
    /* as the server does: the 2-thread contexts run on the threads of the first */
    int shared = 0;
    for (int i = 1; i < K; i++) shared += backend_cpu_share_pool(bb[i], bb[0]) == 0;
    ok(shared == K - 2, "%d contexts share the first one's threads; the 1-thread one cannot", shared);
    cpu_batch *ws = NULL;
    float *lg[K], *ref = xmalloc((size_t)64 * V * sizeof(float));
    for (int i = 0; i < K; i++) lg[i] = xmalloc((size_t)64 * V * sizeof(float));
    int32_t ids[K][64];
    int bad = 0, batches = 0, crossed = 0, rewinds = 0;
    for (int s = 0; s < steps && !bad; s++) {
        const int32_t *ip[K];
        int n[K], all[K];
        float *lp[K];
        backend *in[K];
        int k = 0, which[K];
        for (int i = 0; i < K; i++) {
            if (rnd(4) == 0) continue;                          /* no work this step */
            if (bb[i]->n_ctx > 150 || (bb[i]->n_ctx > 4 && rnd(10) == 0)) {
                int to = rnd(bb[i]->n_ctx);
                bad |= bb[i]->ops->truncate(bb[i], to) | solo[i]->ops->truncate(solo[i], to);
                rewinds++;
            }
            int len = rnd(3) ? 1 : 1 + rnd(64);
            for (int t = 0; t < len; t++) ids[i][t] = rnd(V);
            int before = bb[i]->n_ctx;
            in[k] = bb[i];
            ip[k] = ids[i];
            n[k] = len;
            all[k] = rnd(3) == 0;
            lp[k] = rnd(5) == 0 ? NULL : lg[i];
            which[k++] = i;
            if (m->cfg.rope_longrope && before <= m->cfg.original_max_pos && before + len > m->cfg.original_max_pos)
                crossed++;
        }
        if (!k) continue;
        if (backend_cpu_forward_batch(&ws, in, ip, n, lp, all, k)) {
            printf("# batch: %s\n", in[0]->err);
            bad = 1;
            break;
        }
        batches++;
        for (int j = 0; j < k && !bad; j++) {
            int i = which[j];
            if (solo[i]->ops->forward(solo[i], ids[i], n[j], lp[j] ? ref : NULL, all[j])) {
                printf("# solo: %s\n", solo[i]->err);
                bad = 1;
            } else if (lp[j] && memcmp(ref, lp[j], (size_t)(all[j] ? n[j] : 1) * V * sizeof(float))) {
                printf("# step %d context %d (%d tokens at %d, all %d): logits differ\n", s, i, n[j],
                       solo[i]->n_ctx - n[j], all[j]);
                bad = 1;
            } else if (solo[i]->n_ctx != bb[i]->n_ctx || solo[i]->rope_long != bb[i]->rope_long) {
                printf("# context %d: length/mode %d/%d vs %d/%d\n", i, bb[i]->n_ctx, bb[i]->rope_long,
                       solo[i]->n_ctx, solo[i]->rope_long);
                bad = 1;
            }
        }
    }
    ok(!bad, "%s: %d batched steps over %d contexts (%d rewinds, %d crossings of original_max) are bit-identical "
       "to solo forwards", dir, batches, K, rewinds, crossed);
    if (m->cfg.rope_longrope) ok(crossed > 0, "%s: some contexts crossed the LongRoPE switch", dir);

    /* errors: an id out of range, a context over its limit; nothing computed */
    int32_t badid = V;
    const int32_t *bip[1] = {&badid};
    int one = 1, zero = 0;
    float *nol[1] = {NULL};
    int before = bb[0]->n_ctx;
    ok(backend_cpu_forward_batch(&ws, bb, bip, &one, nol, &zero, 1) == -1 && strstr(bb[0]->err, "out of range") &&
       bb[0]->n_ctx == before, "an id out of range is refused, the context unchanged");
    backend_cpu_batch_free(ws);
    for (int i = K - 1; i >= 0; i--) {      /* the threads' owner, bb[0], last */
        bb[i]->ops->destroy(bb[i]);
        solo[i]->ops->destroy(solo[i]);
        free(lg[i]);
    }
    free(ref);
    model_free(m);
}

int main(void)
{
    check_model("tests/fixtures/tiny-longrope", 80);
    check_model("tests/fixtures/tiny-gqa-window", 50);
    return tap_done();
}
