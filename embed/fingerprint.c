/* fingerprint.c: a full hash of every byte of the model's shard files, so that a session
 * (decode/session.c) made with one set of weights is never taken for another's, even
 * when they differ only in the middle of a tensor.
 *
 * The hash: 64 MiB blocks, each hashed with four independent lanes of
 *   lane = rotl((lane ^ word) * K, 29)
 * over 8-byte little-endian words (every step is a bijection of the lane for a fixed
 * word and injective in the word for a fixed lane, so a change of any single word always
 * changes the block's hash), the lanes and the length folded by a murmur-style
 * finaliser; the file's hash folds the block hashes in order. Blocks are hashed by up to
 * four threads (the result does not depend on how many).
 *
 * A 7.6 GB model takes seconds to hash, so the result is cached per file identity
 * (st_dev, st_ino, size, mtime and ctime in ns) in $XDG_CACHE_HOME/phi3/fingerprints (or
 * ~/.cache/phi3/fingerprints): text, one line per file with a check value, written to a
 * temporary file (mode 0600) and renamed over the old one; a cache that is not a regular
 * file of ours, is writable by others, or has any malformed line is ignored (and
 * replaced at the next store). PHI3_FP_CACHE=off skips the cache (benchmarks). */
#include "embed/model.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK ((size_t)64 << 20)
#define CACHE_MAX_LINES 256
#define CACHE_MAX_BYTES (64u << 10)

static const uint64_t K1 = 0x9E3779B97F4A7C15ull, K2 = 0xC2B2AE3D27D4EB4Full;

static inline uint64_t rotl(uint64_t x, int r) { return x << r | x >> (64 - r); }

static uint64_t fmix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;              /* host order: the fingerprint never leaves the machine */
}

uint64_t fp_hash_block(const void *data, size_t n, uint64_t seed)
{
    const uint8_t *p = data;
    uint64_t a = seed ^ K1, b = seed ^ K2, c = rotl(seed, 17) ^ K1, d = rotl(seed, 41) ^ K2;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = rotl((a ^ rd64(p + i)) * K1, 29);
        b = rotl((b ^ rd64(p + i + 8)) * K1, 29);
        c = rotl((c ^ rd64(p + i + 16)) * K1, 29);
        d = rotl((d ^ rd64(p + i + 24)) * K1, 29);
    }
    for (; i + 8 <= n; i += 8) a = rotl((a ^ rd64(p + i)) * K1, 29);
    if (i < n) {
        uint8_t t[8] = {0};
        memcpy(t, p + i, n - i);
        b = rotl((b ^ rd64(t)) * K1, 29);
    }
    uint64_t h = fmix(a);
    h = fmix(h ^ rotl(b, 1) * K2);
    h = fmix(h ^ rotl(c, 7) * K2);
    h = fmix(h ^ rotl(d, 13) * K2);
    return fmix(h ^ (uint64_t)n);
}

typedef struct job {
    const uint8_t *data;
    size_t size, nblocks;
    uint64_t *out;
    size_t next;                       /* atomic: the next block to take */
} job;

static void *worker(void *arg)
{
    job *j = arg;
    for (;;) {
        size_t k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (k >= j->nblocks) return NULL;
        size_t off = k * BLOCK, n = j->size - off < BLOCK ? j->size - off : BLOCK;
        /* Fault the block's pages in with one call (far cheaper than a fault per page);
         * an older kernel without MADV_POPULATE_READ just faults them one by one. */
        uintptr_t lo = (uintptr_t)(j->data + off) & ~(uintptr_t)4095;
        madvise((void *)lo, (uintptr_t)(j->data + off + n) - lo, MADV_POPULATE_READ);
        j->out[k] = fp_hash_block(j->data + off, n, k);
    }
}

uint64_t fp_hash(const void *data, size_t size, int threads)
{
    job j = {.data = data, .size = size, .nblocks = (size + BLOCK - 1) / BLOCK};
    j.out = xcalloc(j.nblocks ? j.nblocks : 1, sizeof *j.out);
    if (threads < 1) threads = 1;
    if ((size_t)threads > j.nblocks) threads = j.nblocks ? (int)j.nblocks : 1;
    pthread_t t[8];
    int started = 0;
    for (int i = 1; i < threads && i < 8; i++)
        if (!pthread_create(&t[started], NULL, worker, &j)) started++;
    worker(&j);
    for (int i = 0; i < started; i++) pthread_join(t[i], NULL);
    uint64_t h = fmix(size ^ K2);
    for (size_t k = 0; k < j.nblocks; k++) h = fmix((h ^ j.out[k]) * K1);
    free(j.out);
    return h;
}

/* ---- the cache ---- */

typedef struct entry {
    unsigned long long dev, ino, size, mtime, ctime, hash;
} entry;

static uint64_t check_of(const entry *e)
{
    uint64_t v[6] = {e->dev, e->ino, e->size, e->mtime, e->ctime, e->hash};
    return fp_hash_block(v, sizeof v, 0x70686933);
}

/* The cache's directory (created 0700 when mk) and file; 0 when there is none. */
static int cache_path(char *dir, size_t dlen, char *file, size_t flen, int mk)
{
    const char *x = getenv("PHI3_FP_CACHE");
    if (x && !strcmp(x, "off")) return 0;
    const char *base = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char b[1024];
    if (base && base[0] == '/') snprintf(b, sizeof b, "%s", base);
    else if (home && home[0] == '/') snprintf(b, sizeof b, "%s/.cache", home);
    else return 0;
    if (mk) mkdir(b, 0700);
    if ((size_t)snprintf(dir, dlen, "%s/phi3", b) >= dlen) return 0;
    if (mk) mkdir(dir, 0700);
    return (size_t)snprintf(file, flen, "%s/fingerprints", dir) < flen;
}

/* Every entry of a valid cache (n = 0 when absent or invalid). */
static entry *cache_read(int *n)
{
    char dir[1100], file[1200];
    *n = 0;
    if (!cache_path(dir, sizeof dir, file, sizeof file, 0)) return NULL;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0) return NULL;
    struct stat sb;
    char *text = NULL;
    if (!fstat(fd, &sb) && S_ISREG(sb.st_mode) && sb.st_uid == geteuid() && !(sb.st_mode & 022) &&
        sb.st_size > 0 && sb.st_size <= CACHE_MAX_BYTES) {
        text = xmalloc((size_t)sb.st_size + 1);
        ssize_t r = pread(fd, text, (size_t)sb.st_size, 0);
        if (r != sb.st_size) { free(text); text = NULL; }
        else text[r] = 0;
    }
    close(fd);
    if (!text) return NULL;
    entry *e = xcalloc(CACHE_MAX_LINES, sizeof *e);
    int k = 0, bad = strncmp(text, "phi3-fingerprints 1\n", 20) != 0;
    for (char *line = text + 20, *nl; !bad && *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl || k == CACHE_MAX_LINES) { bad = 1; break; }
        *nl = 0;
        unsigned long long chk;
        int used = 0;
        if (sscanf(line, "%llu %llu %llu %llu %llu %16llx %16llx%n", &e[k].dev, &e[k].ino, &e[k].size, &e[k].mtime,
                   &e[k].ctime, &e[k].hash, &chk, &used) != 7 || line[used] || chk != check_of(&e[k])) {
            bad = 1;
            break;
        }
        k++;
    }
    free(text);
    if (bad) { free(e); return NULL; }
    *n = k;
    return e;
}

static void cache_store(const entry *add)
{
    char dir[1100], file[1200], tmp[1300];
    if (!cache_path(dir, sizeof dir, file, sizeof file, 1)) return;
    int n;
    entry *e = cache_read(&n);
    snprintf(tmp, sizeof tmp, "%s/.fingerprints.XXXXXX", dir);
    int fd = mkstemp(tmp);
    if (fd < 0) { free(e); return; }
    fchmod(fd, 0600);
    FILE *f = fdopen(fd, "w");
    if (!f) { close(fd); unlink(tmp); free(e); return; }
    fputs("phi3-fingerprints 1\n", f);
    /* Keep the newest CACHE_MAX_LINES - 1 others (the file is oldest first). */
    int kept = 0, skip = 0;
    for (int i = 0; i < n; i++) kept += !(e[i].dev == add->dev && e[i].ino == add->ino);
    skip = kept > CACHE_MAX_LINES - 1 ? kept - (CACHE_MAX_LINES - 1) : 0;
    for (int i = 0; i < n; i++) {
        if (e[i].dev == add->dev && e[i].ino == add->ino) continue;
        if (skip) { skip--; continue; }
        fprintf(f, "%llu %llu %llu %llu %llu %016llx %016llx\n", e[i].dev, e[i].ino, e[i].size, e[i].mtime,
                e[i].ctime, e[i].hash, (unsigned long long)check_of(&e[i]));
    }
    fprintf(f, "%llu %llu %llu %llu %llu %016llx %016llx\n", add->dev, add->ino, add->size, add->mtime, add->ctime,
            add->hash, (unsigned long long)check_of(add));
    free(e);
    if (fclose(f) || rename(tmp, file)) unlink(tmp);
}

static void identity(const struct stat *sb, entry *e)
{
    e->dev = (unsigned long long)sb->st_dev;
    e->ino = (unsigned long long)sb->st_ino;
    e->size = (unsigned long long)sb->st_size;
    e->mtime = (unsigned long long)sb->st_mtim.tv_sec * 1000000000ull + (unsigned long long)sb->st_mtim.tv_nsec;
    e->ctime = (unsigned long long)sb->st_ctim.tv_sec * 1000000000ull + (unsigned long long)sb->st_ctim.tv_nsec;
}

uint64_t st_file_hash(const st_file *f, int *cached)
{
    entry me;
    identity(&f->id, &me);
    int n;
    entry *e = cache_read(&n);
    if (cached) *cached = 0;
    for (int i = 0; i < n; i++)
        if (e[i].dev == me.dev && e[i].ino == me.ino && e[i].size == me.size && e[i].mtime == me.mtime &&
            e[i].ctime == me.ctime) {
            uint64_t h = e[i].hash;
            free(e);
            if (cached) *cached = 1;
            return h;
        }
    free(e);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    me.hash = fp_hash(f->map, f->size, cores < 1 ? 1 : cores > 4 ? 4 : (int)cores);
    /* Cache it only if the file is still the one that was opened and hashed. */
    struct stat now;
    entry again;
    if (!stat(f->path, &now)) {
        identity(&now, &again);
        again.hash = me.hash;
        if (!memcmp(&again, &me, sizeof me)) cache_store(&me);
    }
    return me.hash;
}
