/* server_conn_fuzz.c: libFuzzer target for one connection of phi3-run --serve. The input
 * is a client's byte stream (msgpack frames or anything else), written whole into a
 * socketpair and closed for writing; server_serve_fd serves it with the server's own
 * per-connection code (frame reader, hello, the checks of tokens frames, the queue,
 * compute steps on the tiny test model tests/fixtures/tiny-gqa-window, rewinds, the
 * replies) until the stream is over, while a thread drains the replies. Never a crash,
 * a hang or a giant allocation; the replies must be well-formed frames ending with a
 * done or an error frame. Inputs naming a session are skipped (sessions are shared
 * memory objects that outlive the run; session_fuzz and session_name_fuzz cover them).
 * PHI3_FUZZ_MODEL: another model directory. */
#include "decode/server.h"
#include "embed/model.h"
#include "shared/stream.h"
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static phi3_model *model;

typedef struct sink {
    int fd;
    uint8_t *p;
    size_t n, cap;
} sink;

static void *drain(void *arg)
{
    sink *s = arg;
    uint8_t buf[1 << 16];
    ssize_t r;
    while ((r = read(s->fd, buf, sizeof buf)) > 0) {
        if (s->n + (size_t)r > s->cap) {
            s->cap = (s->n + (size_t)r) * 2;
            s->p = realloc(s->p, s->cap);
            if (!s->p) abort();
        }
        memcpy(s->p + s->n, buf, (size_t)r);
        s->n += (size_t)r;
    }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = getenv("PHI3_FUZZ_MODEL");
    char err[512];
    model = model_load(dir ? dir : "tests/fixtures/tiny-gqa-window", err, sizeof err);
    if (!model) {
        fprintf(stderr, "server_conn_fuzz: %s (run from the repository root)\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192 || memmem(data, size, "session", 7)) return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) abort();
    /* 8 KiB fits the socket's buffer: the whole stream is there before the server reads */
    if (size && write(sv[0], data, size) != (ssize_t)size) abort();
    shutdown(sv[0], SHUT_WR);
    sink s = {.fd = sv[0]};
    pthread_t th;
    if (pthread_create(&th, NULL, drain, &s)) abort();
    server_opts o = {.socket = "fuzz", .model_dir = "fuzz", .backend = "cpu", .threads = 1, .ctx = 256,
                     .max_streams = 1, .chunk = 64, .batch = 1, .kv_type = -1, .quiet = 1};
    if (server_serve_fd(model, &o, sv[1])) abort();
    pthread_join(th, NULL);
    close(sv[0]);

    /* the replies: frames only, the last a done or an error */
    int fd = memfd_create("server_conn_fuzz", 0);
    if (fd < 0) abort();
    if (s.n && write(fd, s.p, s.n) != (ssize_t)s.n) abort();
    lseek(fd, 0, SEEK_SET);
    frame_reader *r = fr_open(fd, 1 << 24);
    frame f;
    int rc;
    char last[16] = "";
    while ((rc = fr_next(r, &f)) == 1) {
        snprintf(last, sizeof last, "%s", f.type);
        frame_free(&f);
    }
    if (rc != 0 || (strcmp(last, "done") && strcmp(last, "error"))) {
        fprintf(stderr, "server_conn_fuzz: replies %s, last frame \"%s\"\n", rc ? fr_error(r) : "ended", last);
        abort();
    }
    fr_close(r);
    close(fd);
    free(s.p);
    return 0;
}
