/* session.c: the shared-memory session of phi3-run (session.h, docs/SESSIONS.md).
 *
 * Object layout (native byte order; the object never leaves the machine):
 *   [0, 4096)            header (sess_hdr), checksummed except for the mutable fields
 *   [4096, kv_off)       token ids, int32 x max_pos
 *   [kv_off, ...)        KV rows of capacity positions in the CPU layout of backend.h
 *                        (position-major: a prefix is one contiguous block)
 * The committed state (count, rope flag, checksum of the ids) is one of two slots, picked
 * by the parity of a generation counter stored last with release order: a writer killed
 * at any moment leaves either the old or the new state, both describing rows and ids
 * that were completely written. Rows/ids beyond the committed count are free space. */
#include "decode/session.h"
#include "decode/cpu.h"
#include "decode/rope.h"
#include "embed/model.h"
#include "shared/util.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "PHI3SESS"
#define DTYPE_F32 1                     /* header dtype: the KV element type */
#define DTYPE_F16 2
#define SHM_DIR "/dev/shm"              /* where Linux keeps POSIX shm objects (listing only) */

typedef struct sess_commit {
    uint32_t count, rope_long, ids_crc;
    uint32_t kernel;                    /* what computed the rows (kernel_of); 0 unknown */
} sess_commit;

/* The rows' kernel path: a session is reused only by the path that wrote it. Every CPU
 * path gives the same bits (decode/gemm.h's canonical order), so all record KERNEL_CPU,
 * named "cpu". Older CPU values are kept to name what an older build wrote:
 * KERNEL_CPU_C (before the paths agreed) and KERNEL_CPU_1 (SiLU's exponential from libm's
 * expf, before gemm_exp). A device is not bit-identical to the CPU at all, nor is the
 * opt-in qlimb path for K-quant decode (KERNEL_CPU_LIMBS, "cpu-limbs"). */
enum { KERNEL_UNKNOWN, KERNEL_CPU_1, KERNEL_CPU_C, KERNEL_DEVICE, KERNEL_CPU, KERNEL_CPU_LIMBS };
static const char *kernel_name(uint32_t k)
{
    return k == KERNEL_CPU     ? "cpu"
           : k == KERNEL_CPU_LIMBS ? "cpu-limbs"
           : k == KERNEL_CPU_1 ? "cpu-1"
           : k == KERNEL_CPU_C ? "cpu-c"
           : k == KERNEL_DEVICE ? "device"
                                : "unknown";
}

typedef struct sess_hdr {
    char magic[8];
    uint32_t version, hdr_bytes;
    uint64_t fingerprint;
    uint32_t dtype, n_layers, n_kv_heads, head_dim, vocab, max_pos, orig_max, pad0;
    uint64_t pos_floats, ids_off, kv_off;
    uint32_t static_crc;                /* CRC-32 of the bytes before this field */
    /* mutable below */
    uint32_t capacity;                  /* raised only after the object has grown */
    uint64_t gen;                       /* slot[gen & 1] is the committed state */
    sess_commit slot[2];
    int32_t writer_pid;
} sess_hdr;

_Static_assert(sizeof(sess_hdr) <= SESSION_HDR_BYTES, "header fits its page");

struct session {
    char name[SESSION_NAME_MAX + 1];
    int fd;
    uint8_t *map;
    size_t map_len, file_len;
    sess_hdr *hdr;
    int32_t *ids;
    void *rows;
    session_state st;                   /* shapes and offsets (validated) */
    int limit;                          /* growth bound: --ctx or max_pos */
    int count, rope_long;               /* committed state (mirrors the header) */
    uint32_t kernel;                    /* the stored rows' kernel; mine: the run's */
    uint32_t mine;
    uint32_t crc;                       /* CRC of ids[0, count) */
    backend *b;
    backend *scratch;                   /* short frames over a stored long context */
    int threads;
    int cur;                            /* the run's context length */
    int matching;                       /* the run's context so far is a prefix of the stored one */
    int failed;
};


/* The CPU backend computes in the session's memory; any other goes through kv_load/save. */
static int is_cpu(const backend *b) { return !strcmp(b->ops->name, "cpu"); }

/* ---- CRC-32 (IEEE, reflected), for the header and the token ids ---- */

static uint32_t crc_table[256];

static uint32_t crc32_update(uint32_t crc, const void *p, size_t n)
{
    if (!crc_table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    const uint8_t *b = p;
    crc = ~crc;
    while (n--) crc = crc_table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- layout and validation ---- */

static size_t ids_bytes_for(uint64_t max_pos) { return (size_t)((max_pos * 4 + 4095) & ~(uint64_t)4095); }

void session_expect_model(const struct phi3_model *m, session_expect *e)
{
    const phi3_config *c = &m->cfg;
    e->fingerprint = m->fingerprint;
    e->n_layers = c->n_layers;
    e->n_kv_heads = c->n_kv_heads;
    e->head_dim = c->head_dim;
    e->vocab = c->vocab;
    e->max_pos = c->max_pos;
    e->orig_max = c->original_max_pos;
}

int session_validate(const void *buf, size_t size, const session_expect *exp, int check_ids,
                     session_state *st, char *err, size_t errlen)
{
    return session_validate_part(buf, size, size, exp, check_ids, st, err, errlen);
}

int session_validate_part(const void *buf, size_t avail, size_t size, const session_expect *exp,
                          int check_ids, session_state *st, char *err, size_t errlen)
{
    sess_hdr h;
    if (avail > size) avail = size;
    if (size < sizeof h.magic) return phi3_fail(err, errlen, "truncated object (%zu bytes)", size);
    if (avail < sizeof h.magic) return phi3_fail(err, errlen, "header not read (%zu bytes)", avail);
    if (memcmp(buf, MAGIC, sizeof h.magic))
        return phi3_fail(err, errlen, "not a phi3 session (bad magic)");
    if (size < sizeof h) return phi3_fail(err, errlen, "truncated object (%zu bytes, header is %zu)", size, sizeof h);
    if (avail < sizeof h) return phi3_fail(err, errlen, "header not read (%zu bytes)", avail);
    memcpy(&h, buf, sizeof h);
    if (h.version < SESSION_VERSION)
        return phi3_fail(err, errlen, "made by an older version of phi3-run (layout version %u, this one reads %d)",
                      h.version, SESSION_VERSION);
    if (h.version != SESSION_VERSION)
        return phi3_fail(err, errlen, "made by a newer version of phi3-run (layout version %u, this one reads %d)",
                      h.version, SESSION_VERSION);
    if (crc32_update(0, &h, offsetof(sess_hdr, static_crc)) != h.static_crc)
        return phi3_fail(err, errlen, "corrupt header (checksum mismatch)");
    if (h.hdr_bytes != SESSION_HDR_BYTES || (h.dtype != DTYPE_F32 && h.dtype != DTYPE_F16))
        return phi3_fail(err, errlen, "corrupt header (header size %u, dtype %u)", h.hdr_bytes, h.dtype);
    /* Shapes in sane ranges before any size arithmetic (all products stay < 2^63). */
    if (h.n_layers < 1 || h.n_layers > 4096 || h.n_kv_heads < 1 || h.n_kv_heads > 4096 ||
        h.head_dim < 1 || h.head_dim > 4096 || h.vocab < 1 || h.vocab > (1u << 28) ||
        h.max_pos < 1 || h.max_pos > (1u << 24) || h.orig_max < 1 || h.orig_max > h.max_pos)
        return phi3_fail(err, errlen, "corrupt header (shape out of range)");
    uint64_t pf = (uint64_t)h.n_layers * 2 * h.n_kv_heads * h.head_dim;
    uint64_t es = h.dtype == DTYPE_F16 ? 2 : 4;
    if (h.pos_floats != pf || h.ids_off != SESSION_HDR_BYTES ||
        h.kv_off != SESSION_HDR_BYTES + ids_bytes_for(h.max_pos))
        return phi3_fail(err, errlen, "corrupt header (layout does not follow from the shapes)");
    if (exp) {
        if (h.fingerprint != exp->fingerprint)
            return phi3_fail(err, errlen, "made by another model (fingerprint %016llx, this model %016llx)",
                          (unsigned long long)h.fingerprint, (unsigned long long)exp->fingerprint);
        if ((int)h.n_layers != exp->n_layers || (int)h.n_kv_heads != exp->n_kv_heads ||
            (int)h.head_dim != exp->head_dim || (int)h.vocab != exp->vocab ||
            (int)h.max_pos != exp->max_pos || (int)h.orig_max != exp->orig_max)
            return phi3_fail(err, errlen, "made by another model (shapes differ)");
    }
    if (h.capacity > h.max_pos)
        return phi3_fail(err, errlen, "corrupt header (capacity %u > %u positions)", h.capacity, h.max_pos);
    uint64_t need = h.kv_off + (uint64_t)h.capacity * pf * es;
    if (need > size)
        return phi3_fail(err, errlen, "truncated object (%zu bytes, its %u positions need %llu)", size,
                      h.capacity, (unsigned long long)need);
    const sess_commit *c = &h.slot[h.gen & 1];
    if (c->count > h.capacity || c->rope_long > 1)
        return phi3_fail(err, errlen, "corrupt header (%u tokens in room for %u)", c->count, h.capacity);
    if (check_ids) {
        if (h.ids_off + (uint64_t)c->count * 4 > avail)
            return phi3_fail(err, errlen, "token ids not read (%zu bytes of %llu)", avail,
                          (unsigned long long)(h.ids_off + (uint64_t)c->count * 4));
        const int32_t *ids = (const int32_t *)((const uint8_t *)buf + h.ids_off);
        for (uint32_t i = 0; i < c->count; i++)
            if (ids[i] < 0 || (uint32_t)ids[i] >= h.vocab)
                return phi3_fail(err, errlen, "corrupt token ids (id %d at %u)", ids[i], i);
        if (crc32_update(0, ids, (size_t)c->count * 4) != c->ids_crc)
            return phi3_fail(err, errlen, "corrupt token ids (checksum mismatch)");
    }
    st->fingerprint = h.fingerprint;
    st->n_layers = (int)h.n_layers;
    st->n_kv_heads = (int)h.n_kv_heads;
    st->head_dim = (int)h.head_dim;
    st->vocab = (int)h.vocab;
    st->max_pos = (int)h.max_pos;
    st->orig_max = (int)h.orig_max;
    st->pos_floats = (size_t)pf;
    st->kv_type = h.dtype == DTYPE_F16 ? KV_F16 : KV_F32;
    st->ids_off = (size_t)h.ids_off;
    st->kv_off = (size_t)h.kv_off;
    st->capacity = (int)h.capacity;
    st->count = (int)c->count;
    st->rope_long = (int)c->rope_long;
    st->ids_crc = c->ids_crc;
    st->kernel = (int)c->kernel;
    st->writer_pid = h.writer_pid;
    return 0;
}

int session_name_check(const char *name, char *err, size_t errlen)
{
    size_t n = strlen(name);
    if (n == 0 || n > SESSION_NAME_MAX)
        return phi3_fail(err, errlen, "bad session name (1 to %d characters)", SESSION_NAME_MAX);
    if (name[0] == '.' || strstr(name, ".."))
        return phi3_fail(err, errlen, "bad session name '%s' (no leading '.' or '..')", name);
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return phi3_fail(err, errlen, "bad session name '%s' (only letters, digits, '.', '_', '-')", name);
    }
    return 0;
}

static void shm_path(char *out, size_t len, const char *name)
{
    snprintf(out, len, "/" SESSION_PREFIX "%s", name);
}

/* Owner and mode of an opened object: ours and no wider than 0600. */
static int check_owner(int fd, const char *name, struct stat *sb, char *err, size_t errlen)
{
    if (fstat(fd, sb)) return phi3_fail(err, errlen, "session %s: %s", name, strerror(errno));
    if (!S_ISREG(sb->st_mode)) return phi3_fail(err, errlen, "session %s: not a regular object", name);
    if (sb->st_uid != geteuid())
        return phi3_fail(err, errlen, "session %s: owned by uid %u, not by us (uid %u)", name,
                      (unsigned)sb->st_uid, (unsigned)geteuid());
    if (sb->st_mode & 077)
        return phi3_fail(err, errlen, "session %s: mode %04o is wider than 0600", name,
                      (unsigned)(sb->st_mode & 07777));
    return 0;
}

static int lock_fd(int fd, int op, int nowait)
{
    int r;
    do r = flock(fd, op | (nowait ? LOCK_NB : 0));
    while (r && errno == EINTR);
    return r;
}

static int32_t peek_pid(int fd)
{
    int32_t pid = 0;
    if (pread(fd, &pid, sizeof pid, offsetof(sess_hdr, writer_pid)) != (ssize_t)sizeof pid) pid = 0;
    return pid;
}

/* ---- the writer's session ---- */

/* The writer's mapping, guarded: the object shrunk under it (truncate by its owner) is a
 * message naming it, not a bare SIGBUS. */
static void guard_map(session *s)
{
    char path[SESSION_NAME_MAX + 32];
    snprintf(path, sizeof path, SHM_DIR "/" SESSION_PREFIX "%s", s->name);
    mapguard_add(s->map, s->map_len, path);
}

static void set_pointers(session *s)
{
    s->hdr = (sess_hdr *)s->map;
    s->ids = (int32_t *)(s->map + s->st.ids_off);
    s->rows = s->map + s->st.kv_off;
}

/* Store the committed state: rows and ids are written before (release order); a lowered
 * count is visible before any later row store (the full fence). */
static void commit(session *s, int count, int rope_long, uint32_t crc)
{
    sess_hdr *h = s->hdr;
    uint64_t g = h->gen + 1;
    sess_commit *c = &h->slot[g & 1];
    c->count = (uint32_t)count;
    c->rope_long = (uint32_t)rope_long;
    c->ids_crc = crc;
    c->kernel = s->mine;                /* rows [0, count) are this run's (or none) */
    __atomic_store_n(&h->gen, g, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    s->count = count;
    s->rope_long = rope_long;
    s->crc = crc;
    s->kernel = s->mine;
}

/* Fill a zero-length (or never finished: magic still zero) object we hold locked. The
 * magic goes in last, so a creator killed half-way leaves an object that is re-created. */
static int init_object(session *s, const session_expect *e, char *err, size_t errlen)
{
    size_t kv_off = SESSION_HDR_BYTES + ids_bytes_for((uint64_t)e->max_pos);
    if (ftruncate(s->fd, 0)) return phi3_fail(err, errlen, "session %s: %s", s->name, strerror(errno));
    int r = posix_fallocate(s->fd, 0, (off_t)kv_off);
    if (r)
        return phi3_fail(err, errlen, "session %s: cannot allocate %zu bytes in " SHM_DIR ": %s", s->name,
                      kv_off, r == ENOSPC ? "no space left (" SHM_DIR " is full)" : strerror(r));
    s->map = mmap(NULL, kv_off, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        return phi3_fail(err, errlen, "session %s: mmap: %s", s->name, strerror(errno));
    }
    s->map_len = s->file_len = kv_off;
    guard_map(s);
    sess_hdr *h = (sess_hdr *)s->map;
    memset(h, 0, sizeof *h);
    h->version = SESSION_VERSION;
    h->hdr_bytes = SESSION_HDR_BYTES;
    h->fingerprint = e->fingerprint;
    h->dtype = s->st.kv_type == KV_F16 ? DTYPE_F16 : DTYPE_F32;
    h->n_layers = (uint32_t)e->n_layers;
    h->n_kv_heads = (uint32_t)e->n_kv_heads;
    h->head_dim = (uint32_t)e->head_dim;
    h->vocab = (uint32_t)e->vocab;
    h->max_pos = (uint32_t)e->max_pos;
    h->orig_max = (uint32_t)e->orig_max;
    h->pos_floats = (uint64_t)e->n_layers * 2 * e->n_kv_heads * e->head_dim;
    h->ids_off = SESSION_HDR_BYTES;
    h->kv_off = kv_off;
    memcpy(h->magic, MAGIC, sizeof h->magic);       /* in the checksum; published below */
    h->static_crc = crc32_update(0, h, offsetof(sess_hdr, static_crc));
    memset(h->magic, 0, sizeof h->magic);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    memcpy(h->magic, MAGIC, sizeof h->magic);
    return 0;
}

session *session_open(const char *name, const struct phi3_model *m, int max_ctx, int nowait,
                      char *err, size_t errlen)
{
    return session_open_kv(name, m, max_ctx, nowait, -1, err, errlen);
}

session *session_open_kv(const char *name, const struct phi3_model *m, int max_ctx, int nowait, int kv,
                         char *err, size_t errlen)
{
    if (session_name_check(name, err, errlen)) return NULL;
    session_expect e;
    session_expect_model(m, &e);
    if (e.max_pos < 1 || e.max_pos > (1 << 24) || e.orig_max < 1) {
        phi3_fail(err, errlen, "session %s: model limits out of range", name);
        return NULL;
    }
    session *s = xcalloc(1, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->fd = -1;
    s->st.kv_type = kv == KV_F16 ? KV_F16 : KV_F32;       /* of a new object */
    s->limit = max_ctx > 0 && max_ctx < e.max_pos ? max_ctx : e.max_pos;
    char path[SESSION_NAME_MAX + 16];
    shm_path(path, sizeof path, name);
    for (int tries = 0; s->fd < 0; tries++) {
        s->fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (s->fd >= 0) {
            if (fchmod(s->fd, 0600)) { phi3_fail(err, errlen, "session %s: %s", name, strerror(errno)); goto fail; }
            break;
        }
        if (errno == EEXIST) s->fd = shm_open(path, O_RDWR | O_NONBLOCK, 0);   /* a FIFO: no wait */
        if (s->fd >= 0) break;
        if (errno == ENOENT && tries < 5) continue;     /* removed in between: create again */
        phi3_fail(err, errlen, "session %s: cannot open: %s", name, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (check_owner(s->fd, name, &sb, err, errlen)) goto fail;
    if (lock_fd(s->fd, LOCK_EX, nowait)) {
        if (errno == EWOULDBLOCK) {
            int32_t pid = peek_pid(s->fd);
            if (pid > 0) phi3_fail(err, errlen, "session %s is in use by another writer (pid %d) and --no-wait was given", name, pid);
            else phi3_fail(err, errlen, "session %s is in use by another writer and --no-wait was given", name);
        } else phi3_fail(err, errlen, "session %s: lock: %s", name, strerror(errno));
        goto fail;
    }
    if (fstat(s->fd, &sb)) { phi3_fail(err, errlen, "session %s: %s", name, strerror(errno)); goto fail; }
    char magic[8] = {0};
    if (sb.st_size > 0 && pread(s->fd, magic, sizeof magic, 0) < 0) {
        phi3_fail(err, errlen, "session %s: read: %s", name, strerror(errno));
        goto fail;
    }
    static const char zero[8];
    if (sb.st_size == 0 || !memcmp(magic, zero, sizeof zero)) {
        if (init_object(s, &e, err, errlen)) {
            /* An object we could not initialise (a full /dev/shm) holds nothing: remove it
             * rather than leave a 0-byte object that lists as invalid. We hold the lock, and
             * its magic was never written, so no writer or reader can be using it. */
            shm_unlink(path);
            goto fail;
        }
        s->st.pos_floats = (size_t)e.n_layers * 2 * e.n_kv_heads * e.head_dim;
        s->st.ids_off = SESSION_HDR_BYTES;
        s->st.kv_off = s->map_len;
        s->st.max_pos = e.max_pos;
        s->st.orig_max = e.orig_max;
        s->st.vocab = e.vocab;
    } else {
        s->file_len = s->map_len = (size_t)sb.st_size;
        s->map = mmap(NULL, s->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
        if (s->map == MAP_FAILED) {
            s->map = NULL;
            phi3_fail(err, errlen, "session %s: mmap: %s", name, strerror(errno));
            goto fail;
        }
        guard_map(s);
        char why[200];
        if (session_validate(s->map, s->map_len, &e, 1, &s->st, why, sizeof why)) {
            phi3_fail(err, errlen, "session %s: %s (left as is; --session-rm %s removes it)", name, why, name);
            goto fail;
        }
        if (kv >= 0 && (int)s->st.kv_type != kv) {
            phi3_fail(err, errlen, "session %s holds a %s KV cache, this run asks for --kv-type %s (left as is; "
                   "use --kv-type %s, or --session-rm %s)", name, kv_type_name(s->st.kv_type),
                   kv_type_name((kv_type)kv), kv_type_name(s->st.kv_type), name);
            goto fail;
        }
    }
    set_pointers(s);
    s->count = (int)s->hdr->slot[s->hdr->gen & 1].count;
    s->rope_long = (int)s->hdr->slot[s->hdr->gen & 1].rope_long;
    s->crc = s->hdr->slot[s->hdr->gen & 1].ids_crc;
    s->kernel = s->hdr->slot[s->hdr->gen & 1].kernel;
    s->st.capacity = (int)s->hdr->capacity;
    s->hdr->writer_pid = (int32_t)getpid();
    s->matching = 1;
    return s;
fail:
    if (s->map) {
        mapguard_remove(s->map);
        munmap(s->map, s->map_len);
    }
    if (s->fd >= 0) close(s->fd);
    free(s);
    return NULL;
}

void session_close(session *s)
{
    if (!s) return;
    /* The stored context becomes the run's: a run that only read a prefix truncates it. */
    if (!s->failed && s->matching && s->cur > 0 && s->cur < s->count)
        commit(s, s->cur, s->rope_long, crc32_update(0, s->ids, (size_t)s->cur * 4));
    if (s->scratch) s->scratch->ops->destroy(s->scratch);
    if (s->map) {
        mapguard_remove(s->map);
        munmap(s->map, s->map_len);
    }
    if (s->fd >= 0) close(s->fd);               /* releases the lock */
    free(s);
}

int session_count(const session *s) { return s->count; }
const int32_t *session_ids(const session *s) { return s->ids; }
int session_rope_long(const session *s) { return s->rope_long; }

kv_store session_kv(const session *s)
{
    kv_store kv = {s->rows, s->st.capacity, s->st.kv_type};
    return kv;
}

int session_reserve(session *s, int need, char *err, size_t errlen)
{
    if (need <= s->st.capacity) return 0;
    if (need > s->limit)
        return phi3_fail(err, errlen, "context of %d tokens exceeds the session's limit of %d", need, s->limit);
    /* Grow by half again (in steps of 64 positions) so decoding remaps rarely. */
    long cap = (long)s->st.capacity + s->st.capacity / 2;
    if (cap < need) cap = need;
    cap = (cap + 63) / 64 * 64;
    if (cap > s->limit) cap = s->limit;
    size_t pos_bytes = s->st.pos_floats * kv_type_size(s->st.kv_type), len;
    if (__builtin_mul_overflow((size_t)cap, pos_bytes, &len) || __builtin_add_overflow(len, s->st.kv_off, &len))
        return phi3_fail(err, errlen, "session %s: %ld positions are too large", s->name, cap);
    if (len > s->file_len) {
        /* Allocate now (tmpfs reserves the pages) so a full /dev/shm is this error, not a
         * SIGBUS on a later store. */
        int r = posix_fallocate(s->fd, (off_t)s->file_len, (off_t)(len - s->file_len));
        if (r)
            return phi3_fail(err, errlen, "session %s: cannot grow to %ld positions (%.1f MiB): %s", s->name, cap,
                          len / 1048576.0, r == ENOSPC ? "no space left in " SHM_DIR : strerror(r));
        s->file_len = len;
    }
    if (len > s->map_len) {
        void *p = mremap(s->map, s->map_len, len, MREMAP_MAYMOVE);
        if (p == MAP_FAILED) return phi3_fail(err, errlen, "session %s: mremap: %s", s->name, strerror(errno));
        mapguard_remove(s->map);
        s->map = p;
        s->map_len = len;
        set_pointers(s);
        guard_map(s);
    }
    s->hdr->capacity = (uint32_t)cap;
    s->st.capacity = (int)cap;
    if (s->b && is_cpu(s->b)) {
        kv_store kv = session_kv(s);
        backend_cpu_set_kv(s->b, &kv);
    }
    return 0;
}

static uint32_t kernel_of(const backend *b)
{
    if (!is_cpu(b)) return KERNEL_DEVICE;
    if (backend_cpu_limbs(b)) return KERNEL_CPU_LIMBS;
    return backend_cpu_kernel() == 1 ? KERNEL_CPU : KERNEL_CPU_C;
}

static int grow_hook(void *ctx, backend *b, int need)
{
    return session_reserve(ctx, need, b->err, sizeof b->err);
}

void session_attach(session *s, backend *b, int threads)
{
    s->b = b;
    s->threads = threads;
    s->mine = kernel_of(b);
    /* Rows of another kernel path are not what this run computes: reuse none of them
     * (the first frame then replaces the stored context). */
    if (s->kernel != s->mine) s->matching = 0;
    if (is_cpu(b)) backend_cpu_set_grow(b, grow_hook, s);
}

/* ---- one frame of a run ---- */

static int scratch_step(session *s, backend *b, const int32_t *x, int n, float *logits, int all,
                        session_stats *st, char *err, size_t errlen)
{
    if (!s->scratch) {
        s->scratch = backend_cpu_new(b->m, b->max_ctx, s->threads, NULL, err, errlen);
        if (!s->scratch) return -1;
        if (backend_cpu_set_kv_type(s->scratch, s->st.kv_type)) return phi3_fail(err, errlen, "%s", s->scratch->err);
    }
    /* The scratch starts empty (or behind, after a rewind into a stored long context
     * from a long run): bring it to the run's context, whose ids [0, cur) are a prefix of
     * the stored ones while matching. Rows depend only on the ids before them and the
     * mode, so these are the rows a fresh run holds. */
    backend *sc = s->scratch;
    if (sc->n_ctx > s->cur && sc->ops->truncate(sc, s->cur)) {
        s->failed = 1;
        return phi3_fail(err, errlen, "%s", sc->err);
    }
    if (sc->n_ctx < s->cur) {
        int k = sc->n_ctx;
        if (sc->ops->forward(sc, s->ids + k, s->cur - k, NULL, 0)) {
            s->failed = 1;
            return phi3_fail(err, errlen, "%s", sc->err);
        }
        st->computed += s->cur - k;
    }
    if (s->scratch->ops->forward(s->scratch, x, n, logits, all)) {
        s->failed = 1;
        return phi3_fail(err, errlen, "%s", s->scratch->err);
    }
    st->computed += n;
    s->cur += n;
    return 0;
}


static int sess_step(session *s, backend *b, const int32_t *x, int n, float *logits, int all,
                     session_stats *st, char *err, size_t errlen)
{
    const phi3_config *cf = &b->m->cfg;
    int cur = s->cur, e = cur + n;
    if ((long)cur + n > b->max_ctx)
        return phi3_fail(err, errlen, "context of %ld tokens exceeds the limit of %d", (long)cur + n, b->max_ctx);
    for (int i = 0; i < n; i++)
        if (x[i] < 0 || x[i] >= cf->vocab) return phi3_fail(err, errlen, "token id %d out of range [0, %d)", x[i], cf->vocab);
    /* The backend recomputes the whole context when the LongRoPE mode changes, so a stored
     * row equals the one a fresh run computes iff its tokens match and the stored mode is
     * the mode of this forward (long iff the context after it is > original_max). */
    int lf = rope_use_long(cf, e), LC = s->rope_long, C = s->count;
    int r = cur, keep = 0;
    if (s->matching) {
        int lcp = cur;
        while (lcp < C && lcp < e && s->ids[lcp] == x[lcp - cur]) lcp++;
        int ru = lf == LC ? lcp : cur;
        /* positions whose logits we must produce: none for a frame without logits (a
         * partial prompt frame), whose stored rows are all reusable */
        int from = !logits ? e : all ? cur : e - 1;
        r = ru < from ? ru : from;
        if (r < cur) r = cur;
        /* Every position of the frame is stored: recompute the ones that give logits,
         * whose rows come out bit-identical, and keep the stored context beyond. */
        keep = ru >= e;
        /* A short frame over a stored long context (a multi-frame prompt's first frames):
         * compute it on a private scratch backend, leaving the stored rows for the first
         * long frame, which recomputes the context long anyway. */
        if (!keep && LC && !lf && lcp >= e && is_cpu(b) && s->threads >= 0)
            return scratch_step(s, b, x, n, logits, all, st, err, errlen);
        if (!keep) s->matching = 0;
    }
    if (s->scratch) { s->scratch->ops->destroy(s->scratch); s->scratch = NULL; }
    int dev = !is_cpu(b);
    if (dev && (!b->ops->kv_load || !b->ops->kv_save))
        return phi3_fail(err, errlen, "the %s backend cannot use sessions (no kv_load/kv_save)", b->ops->name);
    if (dev && s->st.kv_type != KV_F32)
        return phi3_fail(err, errlen, "session %s holds a %s KV cache (--kv-type %s on the CPU backend); the %s "
                      "backend reads f32 sessions", s->name, kv_type_name(s->st.kv_type),
                      kv_type_name(s->st.kv_type), b->ops->name);
    int rerun = !keep && r > 0 && lf != LC;     /* the forward recomputes rows [0, r) */
    if (!keep) {
        if (rerun) commit(s, 0, lf, 0);
        else if (r < C) commit(s, r, LC, crc32_update(0, s->ids, (size_t)r * 4));
        if (session_reserve(s, e, err, errlen)) return -1;
    }
    if (b->n_ctx != r || (!dev && b->rope_long != LC)) {
        int rc = dev ? b->ops->kv_load(b, s->ids, s->rows, r, LC) : backend_cpu_resume(b, s->ids, r, LC);
        if (rc) return phi3_fail(err, errlen, "%s", b->err);
    }
    if (e > r && b->ops->forward(b, x + (r - cur), e - r, logits, all)) {
        s->failed = 1;
        return phi3_fail(err, errlen, "%s", b->err);
    }
    if (!keep) {
        memcpy(s->ids + r, x + (r - cur), (size_t)(e - r) * sizeof *x);
        int from = rerun ? 0 : r;
        if (dev && b->ops->kv_save(b, from, e, s->rows)) {
            s->failed = 1;
            return phi3_fail(err, errlen, "%s", b->err);
        }
        uint32_t crc = rerun ? crc32_update(0, s->ids, (size_t)e * 4)
                             : crc32_update(s->crc, s->ids + r, (size_t)(e - r) * 4);
        commit(s, e, b->rope_long, crc);
    }
    st->reused += r - cur;
    st->computed += e - r;
    s->cur = e;
    return 0;
}

int session_forward(session *s, backend *b, const int32_t *ids, int n, float *logits, int all,
                    session_stats *st, char *err, size_t errlen)
{
    if (n <= 0) return n < 0 ? phi3_fail(err, errlen, "negative token count") : 0;
    double t0 = now_sec();
    int rc;
    if (s) rc = sess_step(s, b, ids, n, logits, all, st, err, errlen);
    else {
        rc = b->ops->forward(b, ids, n, logits, all);
        if (rc) phi3_fail(err, errlen, "%s", b->err);
        else st->computed += n;
    }
    double dt = now_sec() - t0;
    if (n > 1) { st->prefill_s += dt; st->prefill_frames++; st->prefill_last_s = dt; st->prefill_last_n = n; }
    else { st->decode_s += dt; st->decode_tokens++; }
    return rc;
}

int session_ctx_len(const session *s, const backend *b) { return s ? s->cur : b->n_ctx; }

int session_rewind(session *s, int pos, char *err, size_t errlen)
{
    if (pos < 0 || pos > s->cur) return phi3_fail(err, errlen, "cannot rewind a context of %d to %d", s->cur, pos);
    if (s->scratch && s->scratch->ops->truncate(s->scratch, pos)) {
        s->failed = 1;
        return phi3_fail(err, errlen, "%s", s->scratch->err);
    }
    /* The run's context [0, pos) is a prefix of the stored one (which holds at least the
     * run's context once diverged), so matching starts again from pos. */
    s->cur = pos;
    s->matching = s->kernel == s->mine;
    return 0;
}

void session_stats_print(const session_stats *st)
{
    char last[64] = "";
    if (st->prefill_frames > 0)
        snprintf(last, sizeof last, "; last prefill frame %ld tokens in %.3f s", st->prefill_last_n, st->prefill_last_s);
    phi3_err("stats: reused %ld, computed %ld, prefill %.3f s (%ld frames), decode %.3f s (%ld tokens, %.1f tok/s)%s",
             st->reused, st->computed, st->prefill_s, st->prefill_frames, st->decode_s, st->decode_tokens,
             st->decode_s > 0 ? st->decode_tokens / st->decode_s : 0.0, last);
}

/* ---- management ---- */

/* Open the object NAME without blocking (O_NONBLOCK: a FIFO squatting the name must
 * not hang the open) and refuse anything that is not a regular object of ours. */
static int open_obj(const char *name, int flags, int *fd, struct stat *sb, char *err, size_t errlen)
{
    char path[SESSION_NAME_MAX + 16];
    shm_path(path, sizeof path, name);
    *fd = shm_open(path, flags | O_NONBLOCK, 0);
    if (*fd < 0)
        return phi3_fail(err, errlen, errno == ENOENT ? "no session %s" : "session %s: %s", name, strerror(errno));
    if (check_owner(*fd, name, sb, err, errlen)) {
        close(*fd);
        *fd = -1;
        return -1;
    }
    return 0;
}

/* A reader's snapshot of an object: the header and (with ids) the committed token ids,
 * copied with pread into private memory. A reader never maps the object, so a writer
 * that truncates, grows or re-initialises it meanwhile gives a stale or invalid
 * snapshot, never a fault. A busy object that reads as invalid is read again (a
 * writer's re-initialisation is short). */
typedef struct snapshot {
    uint8_t *buf;
    size_t avail, size;
    int busy;
} snapshot;

static ssize_t pread_all(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (uint8_t *)buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int snap_read(int fd, int with_ids, int check_ids, snapshot *sn, session_state *st, char *why,
                     size_t whylen)
{
    int rc = -1;
    for (int attempt = 0; attempt < 5 && rc; attempt++) {
        if (attempt) usleep(2000);       /* a busy object being re-initialised */
        struct stat sb;
        if (fstat(fd, &sb)) return phi3_fail(why, whylen, "%s", strerror(errno));
        sn->size = (size_t)sb.st_size;
        size_t want = sn->size < SESSION_HDR_BYTES ? sn->size : SESSION_HDR_BYTES;
        free(sn->buf);
        sn->buf = xmalloc(SESSION_HDR_BYTES);
        ssize_t r = pread_all(fd, sn->buf, want, 0);
        if (r < 0) return phi3_fail(why, whylen, "read: %s", strerror(errno));
        sn->avail = (size_t)r;
        rc = session_validate_part(sn->buf, sn->avail, sn->size, NULL, 0, st, why, whylen);
        if (!rc && with_ids) {
            size_t end = st->ids_off + (size_t)st->count * 4;
            sn->buf = xrealloc(sn->buf, end > SESSION_HDR_BYTES ? end : SESSION_HDR_BYTES);
            r = pread_all(fd, sn->buf + st->ids_off, end - st->ids_off, (off_t)st->ids_off);
            if (r < 0) return phi3_fail(why, whylen, "read: %s", strerror(errno));
            sn->avail = st->ids_off + (size_t)r;
            rc = session_validate_part(sn->buf, sn->avail, sn->size, NULL, check_ids, st, why, whylen);
            if (!rc && sn->avail < end) rc = phi3_fail(why, whylen, "truncated object (ids cut short)");
        }
        if (!sn->busy) break;
    }
    return rc;
}

int session_remove(const char *name, int nowait, char *err, size_t errlen)
{
    if (session_name_check(name, err, errlen)) return -1;
    char path[SESSION_NAME_MAX + 16], fspath[SESSION_NAME_MAX + 32];
    shm_path(path, sizeof path, name);
    snprintf(fspath, sizeof fspath, SHM_DIR "/" SESSION_PREFIX "%s", name);
    int fd = shm_open(path, O_RDONLY | O_NONBLOCK, 0);
    struct stat sb;
    if (fd < 0 && errno != ELOOP)
        return phi3_fail(err, errlen, errno == ENOENT ? "no session %s" : "session %s: %s", name, strerror(errno));
    if (fd < 0 ? lstat(fspath, &sb) : fstat(fd, &sb)) {
        int e = errno;
        if (fd >= 0) close(fd);
        return phi3_fail(err, errlen, "session %s: %s", name, strerror(e));
    }
    if (sb.st_uid != geteuid()) {
        if (fd >= 0) close(fd);
        return phi3_fail(err, errlen, "session %s: owned by uid %u, not by us", name, (unsigned)sb.st_uid);
    }
    /* Not a regular object (a FIFO or a symlink squatting the name): no writer can use
     * it as a session; it is ours, so remove it. */
    if (fd < 0 || !S_ISREG(sb.st_mode)) {
        if (fd >= 0) close(fd);
        return shm_unlink(path) ? phi3_fail(err, errlen, "session %s: %s", name, strerror(errno)) : 0;
    }
    /* Wait for a writer to finish (it would keep computing into an unlinked object). */
    if (lock_fd(fd, LOCK_EX, nowait)) {
        int e = errno;
        close(fd);
        return phi3_fail(err, errlen, e == EWOULDBLOCK ? "session %s is in use by a writer and --no-wait was given"
                                                    : "session %s: lock: %s", name, strerror(e));
    }
    int rc = shm_unlink(path) ? phi3_fail(err, errlen, "session %s: %s", name, strerror(errno)) : 0;
    close(fd);
    return rc;
}

int session_list(FILE *out, char *err, size_t errlen)
{
    DIR *d = opendir(SHM_DIR);
    if (!d) return phi3_fail(err, errlen, SHM_DIR ": %s", strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t pl = strlen(SESSION_PREFIX);
        if (strncmp(de->d_name, SESSION_PREFIX, pl)) continue;
        const char *name = de->d_name + pl;
        char why[300];
        if (session_name_check(name, why, sizeof why)) continue;
        int fd;
        struct stat sb;
        if (open_obj(name, O_RDONLY, &fd, &sb, why, sizeof why)) {
            phi3_err("%s", why);
            continue;
        }
        snapshot sn = {.busy = lock_fd(fd, LOCK_SH, 1) != 0};
        session_state st;
        if (snap_read(fd, 0, 0, &sn, &st, why, sizeof why))
            fprintf(out, "%s\t-\t%zu\t-\tinvalid: %s\n", name, sn.size, why);
        else
            fprintf(out, "%s\t%d\t%zu\t%016llx\t%s\n", name, st.count, sn.size,
                    (unsigned long long)st.fingerprint, sn.busy ? "busy" : "ok");
        free(sn.buf);
        close(fd);
    }
    closedir(d);
    return fflush(out) ? phi3_fail(err, errlen, "write: %s", strerror(errno)) : 0;
}

int session_info(const char *name, FILE *out, char *err, size_t errlen)
{
    if (session_name_check(name, err, errlen)) return -1;
    int fd;
    struct stat sb;
    if (open_obj(name, O_RDONLY, &fd, &sb, err, errlen)) return -1;
    snapshot sn = {.busy = lock_fd(fd, LOCK_SH, 1) != 0};
    session_state st;
    char why[200];
    /* Under a writer the ids past a lowered count may be changing: skip their check. */
    int rc = snap_read(fd, 1, !sn.busy, &sn, &st, why, sizeof why);
    if (rc) phi3_fail(err, errlen, "session %s: %s", name, why);
    else {
        char fp[17];
        snprintf(fp, sizeof fp, "%016llx", (unsigned long long)st.fingerprint);
        json_t *o = json_object(), *ids = json_array();
        const int32_t *p = (const int32_t *)(sn.buf + st.ids_off);
        for (int i = 0; i < st.count; i++) json_array_append_new(ids, json_integer(p[i]));
        json_object_set_new(o, "name", json_string(name));
        json_object_set_new(o, "model", json_string(fp));
        json_object_set_new(o, "version", json_integer(SESSION_VERSION));
        json_object_set_new(o, "dtype", json_string(kv_type_name(st.kv_type)));
        json_object_set_new(o, "layers", json_integer(st.n_layers));
        json_object_set_new(o, "kv_heads", json_integer(st.n_kv_heads));
        json_object_set_new(o, "head_dim", json_integer(st.head_dim));
        json_object_set_new(o, "vocab", json_integer(st.vocab));
        json_object_set_new(o, "max_position_embeddings", json_integer(st.max_pos));
        json_object_set_new(o, "original_max_position_embeddings", json_integer(st.orig_max));
        json_object_set_new(o, "capacity", json_integer(st.capacity));
        json_object_set_new(o, "tokens", json_integer(st.count));
        json_object_set_new(o, "rope", json_string(st.rope_long ? "long" : "short"));
        json_object_set_new(o, "kernel", json_string(kernel_name((uint32_t)st.kernel)));
        json_object_set_new(o, "bytes", json_integer((json_int_t)sn.size));
        json_object_set_new(o, "busy", json_boolean(sn.busy));
        json_object_set_new(o, "ids", ids);
        char *txt = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!txt || fprintf(out, "%s\n", txt) < 0 || fflush(out))
            rc = phi3_fail(err, errlen, "write: %s", strerror(errno));
        free(txt);
    }
    free(sn.buf);
    close(fd);
    return rc;
}
