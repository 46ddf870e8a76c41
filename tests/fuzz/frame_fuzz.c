/* frame_fuzz.c: libFuzzer target for the frame reader: arbitrary bytes must give frames,
 * a clean end or an error, never a crash, a hang or a large allocation. */
#include "shared/stream.h"
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("frame_fuzz", 0);
    if (fd < 0) return 0;
    if (size && write(fd, data, size) != (ssize_t)size) { close(fd); return 0; }
    lseek(fd, 0, SEEK_SET);
    frame_reader *r = fr_open(fd, 1 << 16);
    frame f;
    while (fr_next(r, &f) == 1) {
        const char *s; size_t n; int64_t *v; size_t cnt, bad; bool b; int64_t i; const void *p;
        frame_str(&f, "text", &s, &n);
        if (frame_ints(&f, "ids", &v, &cnt, &bad) == 1) free(v);
        frame_bool(&f, "special", &b);
        frame_int(&f, "pos", &i);
        frame_bin(&f, "data", &p, &n);
        frame_free(&f);
    }
    fr_close(r);
    close(fd);
    return 0;
}
