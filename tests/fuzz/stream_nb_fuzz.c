/* stream_nb_fuzz.c: libFuzzer target for the frame reader on a non-blocking socket, as
 * phi3-run --serve reads its connections: the bytes arrive in pieces of 1..64 (sizes
 * from the input's first byte), fr_next answers 2 while a frame is incomplete. The frames
 * (their raw bytes, fr_raw), the final status and the error message must be those of a
 * blocking reader over all the bytes at once. */
#include "shared/stream.h"
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct seen {
    uint8_t *raw;
    size_t len;
    int status;
    char err[256];
} seen;

static int collect(frame_reader *r, seen *s)   /* until 2 (more), 0 or -1 */
{
    frame f;
    int rc;
    while ((rc = fr_next(r, &f)) == 1) {
        const void *p;
        size_t n;
        fr_raw(r, &p, &n);
        if (n == 0) abort();
        s->raw = realloc(s->raw, s->len + n);
        memcpy(s->raw + s->len, p, n);
        s->len += n;
        frame_free(&f);
    }
    if (rc <= 0) {
        s->status = rc;
        if (rc < 0) snprintf(s->err, sizeof s->err, "%s", fr_error(r));
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 60000) return 0;
    unsigned seed = data[0];
    data++;
    size--;
    seen a = {0}, b = {0};
    int fd = memfd_create("stream_nb_fuzz", 0);
    if (fd < 0) return 0;
    if (size && write(fd, data, size) != (ssize_t)size) { close(fd); return 0; }
    lseek(fd, 0, SEEK_SET);
    frame_reader *r = fr_open(fd, 1 << 16);
    collect(r, &a);
    fr_close(r);
    close(fd);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    r = fr_open(sv[0], 1 << 16);
    size_t off = 0;
    int closed = 0, after_close = 0;
    for (;;) {
        if (off < size) {
            seed = seed * 1103515245u + 12345u;
            size_t k = 1 + (seed >> 16) % 64;
            if (k > size - off) k = size - off;
            if (write(sv[1], data + off, k) != (ssize_t)k) abort();
            off += k;
        }
        if (off == size && !closed) {
            close(sv[1]);
            closed = 1;
        }
        if (collect(r, &b) != 2) break;
        /* the end is there: the socket must report readable (the end of input) and the
         * reader then finish; 2 with nothing left to come would wait forever. Polled as a
         * server's loop does: once in about 240 thousand inputs (make fuzz, 60 s, next to
         * another target) a read after the writer's close said EAGAIN, which the input
         * alone never repeated (300 runs) */
        if (closed) {
            struct pollfd pf = {sv[0], POLLIN, 0};
            if (++after_close > 100 || poll(&pf, 1, 5000) != 1) abort();
        }
    }
    if (!closed) close(sv[1]);                  /* an error before the end */
    fr_close(r);
    close(sv[0]);
    if (a.status != b.status || a.len != b.len || (a.len && memcmp(a.raw, b.raw, a.len)) || strcmp(a.err, b.err))
        abort();
    free(a.raw);
    free(b.raw);
    return 0;
}
