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
    unsigned long gen;          /* bumped per pool_run (atomic: workers spin on it) */
    int pending;                /* workers still running this generation (atomic) */
    int sleepers;               /* workers waiting on go (under mu) */
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

/* Loops follow each other within microseconds during a forward (a layer has about ten),
 * so a thread that has finished one spins a little before it sleeps: a futex wake and a
 * context switch per loop cost more than the small loops of a decode step. */
#define SPIN 1000               /* pauses (some microseconds) */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker(void *a)
{
    worker_arg w = *(worker_arg *)a;
    free(a);
    pool *p = w.p;
    unsigned long seen = 0;
    for (;;) {
        for (int i = 0; i < SPIN && __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen &&
                        !__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE); i++)
            cpu_relax();
        pthread_mutex_lock(&p->mu);
        p->sleepers++;
        while (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        p->sleepers--;
        int quit = p->quit;
        pthread_mutex_unlock(&p->mu);
        if (quit) break;
        seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
        run_share(p, w.id);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu);     /* the caller checks pending under mu before it waits */
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
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
    __atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
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
    /* no worker is inside the previous loop (its pool_run waited for them all) */
    p->fn = fn;
    p->ctx = ctx;
    p->items = n;
    atomic_store(&p->next, 0);
    __atomic_store_n(&p->pending, p->n - 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->gen, p->gen + 1, __ATOMIC_RELEASE);   /* publishes the fields above */
    if (p->sleepers) pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_share(p, 0);
    for (int i = 0; i < SPIN && __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE); i++) cpu_relax();
    if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&p->mu);
        while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE)) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
