/* tap.h: the few lines of TAP that the C unit tests print (run by tests/run.sh). */
#ifndef PHI3_TAP_H
#define PHI3_TAP_H
#include <stdio.h>
static int tap_n, tap_failed;
#define ok(cond, ...) do {                                                   \
        int c_ = !!(cond);                                                   \
        tap_n++;                                                             \
        if (!c_) { tap_failed++; }                                           \
        printf("%sok %d - ", c_ ? "" : "not ", tap_n);                       \
        printf(__VA_ARGS__);                                                 \
        printf("\n");                                                        \
        if (!c_) { printf("#   failed at %s:%d\n", __FILE__, __LINE__); }    \
        fflush(stdout);                                                      \
    } while (0)
#define tap_done() (printf("1..%d\n", tap_n), tap_failed ? 1 : 0)
#endif
