/* mapguard.c: a file truncated (or otherwise shrunk) under a process that has it mmapped
 * makes the next read of a page past the new end a SIGBUS. The tools map the model's
 * shards and the session objects; instead of dying with a bare "Bus error", a fault
 * inside one of these mappings says which file changed:
 *   "phi3-run: PATH changed under the mmap (truncated?)", exit 1.
 * The handler is async-signal-safe: it walks a list of nodes whose message was formatted
 * when the mapping was added, writes it with write(2) and calls _exit(1). Nodes are never
 * freed (a removed one is marked empty and reused), so the handler never reads freed
 * memory; adding and removing happen in the thread that maps (the tools map from main). */
#include "embed/model.h"
#include "shared/util.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct guard {
    struct guard *next;
    uintptr_t lo, hi;               /* [lo, hi); lo 0: an unused node */
    size_t msg_len;
    char msg[];
} guard;

static guard *head;                 /* only ever pushed at the front */
static struct sigaction old_bus;
static int installed;

static void on_bus(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    for (guard *g = __atomic_load_n(&head, __ATOMIC_ACQUIRE); g; g = g->next) {
        uintptr_t lo = __atomic_load_n(&g->lo, __ATOMIC_ACQUIRE);
        if (lo && a >= lo && a < g->hi) {
            ssize_t w = write(2, g->msg, g->msg_len);
            (void)w;
            _exit(1);
        }
    }
    /* Not ours: the action that was there before (the default one dumps core). */
    sigaction(SIGBUS, &old_bus, NULL);
    if (!(old_bus.sa_flags & SA_SIGINFO) && old_bus.sa_handler == SIG_IGN) signal(SIGBUS, SIG_DFL);
    (void)sig;
    (void)uc;
}

void mapguard_add(const void *addr, size_t len, const char *path)
{
    if (!addr || !len) return;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_bus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, &old_bus) == 0) installed = 1;
    }
    /* The path as the line quotes it: control characters escaped (\xNN), so a crafted
     * name cannot forge a second line or drive the terminal. */
    char q[720];
    size_t o = 0;
    for (const unsigned char *c = (const unsigned char *)path; *c && o + 5 < sizeof q; c++)
        if (*c < 0x20 || *c == 0x7f) o += (size_t)snprintf(q + o, sizeof q - o, "\\x%02x", *c);
        else q[o++] = (char)*c;
    q[o] = 0;
    char msg[1024];
    int n = snprintf(msg, sizeof msg, "%s: %s changed under the mmap (truncated?)\n", phi3_prog, q);
    size_t ml = n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    guard *g;
    for (g = head; g; g = g->next)
        if (!g->lo) break;
    if (!g) {
        g = xcalloc(1, sizeof *g + sizeof msg);
        g->next = head;
        __atomic_store_n(&head, g, __ATOMIC_RELEASE);
    }
    memcpy(g->msg, msg, ml);
    g->msg_len = ml;
    g->hi = (uintptr_t)addr + len;
    __atomic_store_n(&g->lo, (uintptr_t)addr, __ATOMIC_RELEASE);
}

void mapguard_remove(const void *addr)
{
    for (guard *g = head; g && addr; g = g->next)
        if (g->lo == (uintptr_t)addr) __atomic_store_n(&g->lo, (uintptr_t)0, __ATOMIC_RELEASE);
}

int mapguard_open(const char *path, size_t min, const char *what, void **map, size_t *size, struct stat *st,
                  char *err, size_t errlen)
{
    /* O_NONBLOCK: a FIFO (or a device) named as a model file must not block the open;
     * fstat then refuses anything but a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return phi3_fail(err, errlen, "%s: %s", path, strerror(errno));
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        return phi3_fail(err, errlen, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return phi3_fail(err, errlen, "%s: not a regular file", path);
    }
    *size = (size_t)st->st_size;
    if (*size < min) {
        close(fd);
        return phi3_fail(err, errlen, "%s: file too short for %s (%zu bytes)", path, what, *size);
    }
    *map = mmap(NULL, *size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (*map == MAP_FAILED) return phi3_fail(err, errlen, "%s: mmap: %s", path, strerror(e));
    mapguard_add(*map, *size, path);
    return 0;
}

void mapguard_close(const void *map, size_t size)
{
    if (!map) return;
    mapguard_remove(map);
    munmap((void *)map, size);
}
