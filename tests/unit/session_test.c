/* session_test.c: the shared-memory session: names, creation mode, growth, the header
 * validator on damaged objects, the writer lock, and (with the tiny fixture models) that
 * runs through a session give bit-identical logits to fresh runs for many prefixes and
 * frame splits, reusing what they should. */
#include "decode/backend.h"
#include "decode/session.h"
#include "embed/model.h"
#include "shared/util.h"
#include "tests/unit/tap.h"
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

static char name[64], path[128];

static void fresh_name(const char *tag)
{
    snprintf(name, sizeof name, "phi3unit-%d-%s", (int)getpid(), tag);
    snprintf(path, sizeof path, "/dev/shm/phi3.%s", name);
}

/* ---- a run: frames of ids -> the logits of each frame's last position ---- */

typedef struct run_out {
    float *logits;                      /* [nframes * vocab] */
    session_stats st;
    int rc;
} run_out;

static run_out run(const phi3_model *m, const char *sess, const int32_t *ids, const int *frames, int nf)
{
    run_out o = {0};
    int V = m->cfg.vocab;
    o.logits = xcalloc((size_t)nf * V, sizeof(float));
    char err[300];
    session *s = NULL;
    if (sess && !(s = session_open(sess, m, 0, 0, err, sizeof err))) {
        printf("# open: %s\n", err);
        o.rc = -1;
        return o;
    }
    kv_store kv;
    if (s) kv = session_kv(s);
    backend *b = backend_cpu_new(m, 0, 1, s ? &kv : NULL, err, sizeof err);
    if (s) session_attach(s, b, 1);
    int pos = 0;
    for (int f = 0; f < nf && !o.rc; f++) {
        o.rc = session_forward(s, b, ids + pos, frames[f], o.logits + (size_t)f * V, 0, &o.st, err, sizeof err);
        if (o.rc) printf("# forward: %s\n", err);
        pos += frames[f];
    }
    b->ops->destroy(b);
    session_close(s);
    return o;
}

/* Compare a session run with a fresh run of the same frames; check the reused count. */
static void same(const phi3_model *m, const char *what, const int32_t *ids, const int *frames, int nf,
                 long want_reused)
{
    run_out a = run(m, NULL, ids, frames, nf), b = run(m, name, ids, frames, nf);
    ok(!a.rc && !b.rc && !memcmp(a.logits, b.logits, (size_t)nf * m->cfg.vocab * sizeof(float)),
       "%s: logits bit-identical to a fresh run", what);
    ok(b.st.reused == want_reused, "%s: reused %ld (want %ld), computed %ld", what, b.st.reused, want_reused,
       b.st.computed);
    free(a.logits);
    free(b.logits);
}

static void stored(const char *what, int want_count)
{
    char err[300];
    FILE *f = tmpfile();
    int rc = session_info(name, f, err, sizeof err);
    char buf[256] = "";
    rewind(f);
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "\"tokens\":%d,", want_count);
    ok(!rc && strstr(buf, want), "%s: session holds %d tokens", what, want_count);
}

static void equivalence(const char *dir)
{
    char err[300];
    phi3_model *m = model_load(dir, err, sizeof err);
    if (!m) { ok(0, "load %s: %s", dir, err); return; }
    int V = m->cfg.vocab, N = 140;
    int32_t *A = xmalloc(N * sizeof *A), *B = xmalloc(N * sizeof *B);
    srand(7);
    for (int i = 0; i < N; i++) A[i] = rand() % V;
    memcpy(B, A, N * sizeof *B);
    for (int i = 50; i < N; i++) B[i] = (A[i] + 1 + rand() % (V - 1)) % V;   /* differs from 50 on */
    int omax = m->cfg.rope_longrope ? m->cfg.original_max_pos : 1 << 30;
    printf("# %s (original_max %d)\n", dir, m->cfg.rope_longrope ? omax : 0);
    fresh_name("eq");
    int lr = omax < 80;                 /* tiny-longrope: the switch lies inside these runs */
    int f100[] = {100};
    same(m, "first run (empty session)", A, f100, 1, 0);
    stored("after 100", 100);
    same(m, "same 100 again", A, f100, 1, 99);
    int f80[] = {80};
    same(m, "prefix 80 of a stored 100", A, f80, 1, 79);
    stored("a run of 80 truncates to 80", 80);
    /* Longrope: frames 1-2 end <= 64 (short mode, not what is stored): computed on the
     * side; frame 3 (long) reuses the stored rows. */
    int f3[] = {10, 20, 50};
    same(m, "80 as frames 10+20+50", A, f3, 3, lr ? 49 : 77);
    int f40[] = {40};
    same(m, "prefix 40 of a stored 80", A, f40, 1, lr ? 0 : 39);
    stored("a run of 40 truncates to 40", 40);
    int f70[] = {70};
    same(m, "70 over a stored 40", A, f70, 1, 40);
    int f130[] = {130};
    same(m, "130 over a stored 70", A, f130, 1, 70);
    int fB[] = {120};
    same(m, "120 diverging at 50 from a stored 130", B, fB, 1, 50);
    stored("a diverging run replaces the context", 120);
    /* Generation-like: prompt 60, then one token per frame across the switch at 64. */
    int fg[11] = {60, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    same(m, "60 + 10 single tokens over the stored B", A, fg, 11, lr ? 0 : 50);
    same(m, "the same 60 + 10 again", A, fg, 11, lr ? 0 : 59);
    stored("70 stored", 70);
    same(m, "B over the stored A (common 50)", B, f130, 1, 50);
    shm_unlink(path + strlen("/dev/shm"));
    model_free(m);
    free(A);
    free(B);
}

/* ---- the validator and the object without a model ---- */

static phi3_model fake(uint64_t fp)
{
    phi3_model m;
    memset(&m, 0, sizeof m);
    m.cfg.n_layers = 2;
    m.cfg.n_kv_heads = 2;
    m.cfg.head_dim = 8;
    m.cfg.vocab = 100;
    m.cfg.max_pos = 256;
    m.cfg.original_max_pos = 64;
    m.fingerprint = fp;
    return m;
}

static size_t file_size(void)
{
    struct stat sb;
    return stat(path, &sb) ? 0 : (size_t)sb.st_size;
}

/* Apply edit to a copy of the object's bytes and validate the copy. */
static int validate_edited(const phi3_model *m, void (*edit)(uint8_t *, size_t *), char *why, size_t n)
{
    FILE *f = fopen(path, "rb");
    size_t len = file_size();
    uint8_t *buf = xmalloc(len + 1);
    size_t got = f ? fread(buf, 1, len, f) : 0;
    if (f) fclose(f);
    if (got != len) { free(buf); return snprintf(why, n, "read"), -2; }
    edit(buf, &len);
    session_expect e;
    session_expect_model(m, &e);
    session_state st;
    int rc = session_validate(buf, len, &e, 1, &st, why, n);
    free(buf);
    return rc;
}

static void e_none(uint8_t *b, size_t *n) { (void)b; (void)n; }
static void e_trunc_hdr(uint8_t *b, size_t *n) { (void)b; *n = 100; }
static void e_trunc_kv(uint8_t *b, size_t *n) { (void)b; *n -= 1; }
static void e_magic(uint8_t *b, size_t *n) { (void)n; b[0] = 'X'; }
static void e_version(uint8_t *b, size_t *n) { (void)n; b[8] = 9; }
static void e_shape(uint8_t *b, size_t *n) { (void)n; b[28] ^= 1; }      /* n_layers */
static void e_id(uint8_t *b, size_t *n) { (void)n; int32_t v = 512; memcpy(b + 4096, &v, 4); }
static void e_idcrc(uint8_t *b, size_t *n) { (void)n; b[4096] ^= 1; }

static void object_tests(void)
{
    char err[300];
    fresh_name("obj");
    phi3_model m = fake(0x1234), other = fake(0x9999);
    session *s = session_open(name, &m, 0, 0, err, sizeof err);
    ok(s != NULL, "create a session (%s)", s ? "ok" : err);
    if (!s) return;
    struct stat sb;
    ok(!stat(path, &sb) && (sb.st_mode & 07777) == 0600, "object is mode 0600 (%04o)", (unsigned)(sb.st_mode & 07777));
    char e2[300];
    session *s2 = session_open(name, &m, 0, 1, e2, sizeof e2);
    ok(!s2 && strstr(e2, "in use by another writer"), "second writer with nowait fails: %s", e2);
    ok(session_remove(name, 1, e2, sizeof e2) && strstr(e2, "in use"), "rm with nowait while in use fails: %s", e2);
    ok(!session_reserve(s, 100, err, sizeof err) && session_kv(s).capacity >= 100, "grows to 100 positions");
    ok(session_reserve(s, 257, err, sizeof err) && strstr(err, "exceeds"), "cannot grow past max_pos: %s", err);
    session_close(s);
    size_t pos_bytes = 2 * 2 * 2 * 8 * 4;       /* layers x (K, V) x kv heads x head_dim x f32 */
    ok(file_size() >= 4096 + 1024 + 100 * pos_bytes, "object holds the grown rows (%zu bytes)", file_size());

    s = session_open(name, &other, 0, 0, err, sizeof err);
    ok(!s && strstr(err, "another model"), "other model refused: %s", err);
    ok(session_open("a/b", &m, 0, 0, err, sizeof err) == NULL && strstr(err, "bad session name"), "name with '/' refused");
    ok(session_open("..x", &m, 0, 0, err, sizeof err) == NULL && strstr(err, "bad session name"), "name with '..' refused");
    ok(session_name_check("ok.name_1-2", err, sizeof err) == 0, "plain name accepted");

    char why[300];
    ok(validate_edited(&m, e_none, why, sizeof why) == 0, "intact object validates");
    ok(validate_edited(&m, e_trunc_hdr, why, sizeof why) && strstr(why, "truncated"), "truncated header: %s", why);
    ok(validate_edited(&m, e_trunc_kv, why, sizeof why) && strstr(why, "truncated"), "truncated rows: %s", why);
    ok(validate_edited(&m, e_magic, why, sizeof why) && strstr(why, "magic"), "bad magic: %s", why);
    ok(validate_edited(&m, e_version, why, sizeof why) && strstr(why, "version"), "wrong version: %s", why);
    ok(validate_edited(&m, e_shape, why, sizeof why) && strstr(why, "corrupt"), "flipped header bit: %s", why);
    ok(validate_edited(&other, e_none, why, sizeof why) && strstr(why, "another model"), "fingerprint: %s", why);
    shm_unlink(path + strlen("/dev/shm"));
}

/* Ids: write a committed context through a real backend, then damage the ids. */
static void ids_tests(void)
{
    char err[300], why[300];
    phi3_model *m = model_load("tests/fixtures/tiny-gqa-window", err, sizeof err);
    if (!m) { ok(0, "load: %s", err); return; }
    fresh_name("ids");
    int32_t ids[20];
    for (int i = 0; i < 20; i++) ids[i] = (i * 37) % 512;
    int fr[] = {20};
    run_out o = run(m, name, ids, fr, 1);
    free(o.logits);
    ok(!o.rc, "stored 20 tokens");
    ok(validate_edited(m, e_idcrc, why, sizeof why) && strstr(why, "token ids"), "damaged id: %s", why);
    ok(validate_edited(m, e_id, why, sizeof why) && strstr(why, "token ids"), "id out of the vocabulary: %s", why);
    shm_unlink(path + strlen("/dev/shm"));
    model_free(m);
}

/* Readers (--session-info, --session-list) while another process truncates, refills and
 * re-initialises the object as fast as it can: they may report it invalid, never fault
 * (a reader that mapped the object died of SIGBUS when it shrank under the mapping). */
static void reader_stress(void)
{
    char err[300];
    fresh_name("stress");
    phi3_model m = fake(0x5151);
    session *s = session_open(name, &m, 0, 0, err, sizeof err);
    if (!s) { ok(0, "create: %s", err); return; }
    session_reserve(s, 200, err, sizeof err);
    session_close(s);
    size_t len = file_size();
    uint8_t *bytes = xmalloc(len);
    FILE *f = fopen(path, "rb");
    ok(f && fread(bytes, 1, len, f) == len, "object of %zu bytes read", len);
    if (f) fclose(f);
    pid_t child = fork();
    if (child == 0) {
        int fd = open(path, O_RDWR);
        double t0 = now_sec();
        for (int i = 0; fd >= 0 && now_sec() - t0 < 1.5; i++) {
            if (ftruncate(fd, 0)) break;
            if (i % 2 && ftruncate(fd, (off_t)len)) break;
            if (pwrite(fd, bytes, len, 0) != (ssize_t)len) break;
        }
        _exit(0);
    }
    FILE *null = fopen("/dev/null", "w");
    long calls = 0, valid = 0;
    double t0 = now_sec();
    while (now_sec() - t0 < 1.5 && null) {
        valid += session_info(name, null, err, sizeof err) == 0;
        session_list(null, err, sizeof err);
        calls++;
    }
    int wst = 0;
    waitpid(child, &wst, 0);
    ok(calls > 0 && WIFEXITED(wst), "%ld reads under a re-initialising writer, %ld valid, none faulted", calls, valid);
    if (null) fclose(null);
    free(bytes);
    shm_unlink(path + strlen("/dev/shm"));
}

int main(void)
{
    phi3_init("session_test");
    object_tests();
    reader_stress();
    ids_tests();
    equivalence("tests/fixtures/tiny-longrope");
    equivalence("tests/fixtures/tiny-gqa-window");
    return tap_done();
}
