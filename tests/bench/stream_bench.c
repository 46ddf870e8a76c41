/* stream_bench.c: logits frames (32064 float32) from one process to another through a
 * pipe, written with fw_logits and read with fr_next: frames/s and MB/s. */
#include "shared/stream.h"
#include "shared/util.h"
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    phi3_init("stream_bench");
    long frames = argc > 1 ? atol(argv[1]) : 20000;
    enum { V = 32064 };
    int fd[2];
    if (pipe(fd)) phi3_die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        float *lg = xmalloc(V * sizeof *lg);
        for (int i = 0; i < V; i++) lg[i] = (float)i * 1e-3f;
        frame_writer w;
        fw_init(&w, fd[1]);
        for (long i = 0; i < frames; i++) fw_logits(&w, i, lg, V);
        _exit(0);
    }
    close(fd[1]);
    double t0 = now_sec();
    frame_reader *r = fr_open(fd[0], 0);
    frame f;
    long n = 0;
    size_t bytes = 0;
    int rc;
    while ((rc = fr_next(r, &f)) == 1) {
        const void *p;
        size_t len;
        if (frame_bin(&f, "data", &p, &len) != 1 || len != V * 4) phi3_die("bad frame %ld", f.index);
        bytes += len;
        n++;
        frame_free(&f);
    }
    if (rc < 0) phi3_die("%s", fr_error(r));
    double dt = now_sec() - t0;
    waitpid(pid, NULL, 0);
    printf("stream: %ld logits frames (32064 f32) through a pipe in %.3f s: %.0f frames/s, %.0f MB/s\n",
           n, dt, n / dt, bytes / dt / 1e6);
    return n == frames ? 0 : 1;
}
