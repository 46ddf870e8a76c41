/* pool.c: persistent pthread workers for the CPU backend's parallel loops. */
#include "decode/pool.h"
#include "shared/util.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct pool {
    int n;                      /* threads, including the caller */
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;          /* bumped per pool_run */
    int pending;                /* workers still running this generation */
    int quit;
    pool_fn fn;
    void *ctx;
    int items;
    atomic_int next;            /* first item not yet taken */
};

typedef struct { pool *p; int id; } worker_arg;

static void run_share(pool *p, int id)
{
    /* Threads take chunks of about n / (8 T) items from a shared counter, so a thread
     * slowed down by another process on its core does not hold up the rest. Which
     * thread computes an item never changes the item's result. */
    int chunk = p->items / (8 * p->n);
    if (chunk < 1) chunk = 1;
    for (;;) {
        int b = atomic_fetch_add(&p->next, chunk);
        if (b >= p->items) break;
        int e = b + chunk < p->items ? b + chunk : p->items;
        p->fn(p->ctx, b, e, id);
    }
}

static void *worker(void *a)
{
    worker_arg w = *(worker_arg *)a;
    free(a);
    pool *p = w.p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        run_share(p, w.id);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

pool *pool_new(int threads)
{
    if (threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        threads = c > 0 ? (int)c : 1;
    }
    if (threads > 256) threads = 256;
    pool *p = xcalloc(1, sizeof *p);
    p->n = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->tid = xcalloc((size_t)threads, sizeof *p->tid);
    for (int i = 1; i < threads; i++) {
        worker_arg *a = xmalloc(sizeof *a);
        a->p = p;
        a->id = i;
        if (pthread_create(&p->tid[i], NULL, worker, a)) phi3_die("cannot start thread %d", i);
    }
    return p;
}

void pool_free(pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->tid[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->tid);
    free(p);
}

int pool_threads(const pool *p) { return p->n; }

void pool_run(pool *p, pool_fn fn, void *ctx, int n)
{
    if (p->n == 1 || n <= 1) {
        if (n > 0) fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->items = n;
    atomic_store(&p->next, 0);
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_share(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
