/* steal.h: how much of the CPUs' time the hypervisor gave to other guests during a
 * benchmark (the "steal" column of /proc/stat). On a shared VM a wall-clock figure taken
 * while 40% of the time was stolen says little about the code, so the benchmarks print it
 * beside their results. */
#ifndef PHI3_BENCH_STEAL_H
#define PHI3_BENCH_STEAL_H
#include <stdio.h>

typedef struct bench_cpu_time {
    unsigned long long steal, total;    /* jiffies, all CPUs */
} bench_cpu_time;

/* 0 where /proc/stat has no steal column (not Linux, or an old kernel) */
static inline int bench_cpu_time_now(bench_cpu_time *t)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
    fclose(f);
    if (n != 8) return 0;
    t->steal = v[7];
    t->total = 0;
    for (int i = 0; i < 8; i++) t->total += v[i];
    return 1;
}

/* "  hypervisor steal during the run: 12% of the CPUs' time\n", or nothing */
static inline void bench_print_steal(const bench_cpu_time *a, int ok_a)
{
    bench_cpu_time b;
    if (!ok_a || !bench_cpu_time_now(&b) || b.total <= a->total) return;
    printf("  hypervisor steal during the run: %.0f%% of the CPUs' time\n",
           100.0 * (double)(b.steal - a->steal) / (double)(b.total - a->total));
}
#endif
