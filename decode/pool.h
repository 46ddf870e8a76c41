/* pool.h: a fixed set of worker threads that run one parallel loop at a time. Work is
 * split by output items only, so results never depend on the number of threads. */
#ifndef PHI3_POOL_H
#define PHI3_POOL_H

typedef struct pool pool;
/* fn(ctx, begin, end, tid): process items [begin, end); tid < pool_threads(). */
typedef void (*pool_fn)(void *ctx, int begin, int end, int tid);

pool *pool_new(int threads);            /* threads <= 0: every online core */
void pool_free(pool *p);
int pool_threads(const pool *p);
/* Run fn over items [0, n) in contiguous chunks taken by the threads (the caller is one
 * of them; fn may be called several times per thread) and wait for all of them. */
void pool_run(pool *p, pool_fn fn, void *ctx, int n);

#endif
