/* client.c: phi3-run --connect SOCKET: a drop-in phi3-run that relays its pipes to a
 * phi3-run --serve. It sends a hello frame with the per-stream flags, then copies stdin
 * to the socket as it comes (one thread) and the server's frames to stdout (the other),
 * byte for byte. The server answers the end of our input with a done frame (exit 0), or
 * an error frame (printed as phi3-run's error line, exit 1). Frames are checked by the
 * server, which has phi3-run's messages; the client only needs frame boundaries. */
#include "decode/server.h"
#include "shared/stream.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void *pump(void *arg)
{
    int sock = *(int *)arg;
    static char buf[1 << 16];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) phi3_die("read error on stdin: %s", strerror(errno));
        if (n == 0) break;
        /* the server closed: its error frame (or the lack of one) is the story */
        if (write_all(sock, buf, (size_t)n)) return NULL;
    }
    shutdown(sock, SHUT_WR);
    return NULL;
}

int client_main(const client_opts *o)
{
    char path[120], err[300];
    if (server_socket_path(o->socket, 0, path, sizeof path, err, sizeof err)) phi3_die("--connect: %s", err);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) phi3_die("socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(sock, (struct sockaddr *)&sa, sizeof sa))
        phi3_die("--connect: no server at %s: %s", path, strerror(errno));
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.uid != getuid())
        phi3_die("--connect: the server at %s runs as uid %u, not ours: refusing it", path, (unsigned)cr.uid);
#ifdef F_SETPIPE_SZ
    int cur = fcntl(0, F_GETPIPE_SZ);   /* as the frame reader does for its input */
    if (cur > 0 && cur < (1 << 20)) (void)fcntl(0, F_SETPIPE_SZ, 1 << 20);
    cur = fcntl(1, F_GETPIPE_SZ);
    if (cur > 0 && cur < (1 << 20)) (void)fcntl(1, F_SETPIPE_SZ, 1 << 20);
#endif

    frame_writer w;
    fw_init(&w, sock);
    fw_begin(&w, "hello", 2 + !!o->session + (o->ctx > 0));
    fw_int(&w, "version", 1);
    fw_bool(&w, "all_logits", o->all_logits);
    if (o->session) fw_str(&w, "session", o->session, strlen(o->session));
    if (o->ctx > 0) fw_int(&w, "ctx", o->ctx);
    if (fw_end(&w) && errno != EPIPE) phi3_die("--connect: write error: %s", strerror(errno));
    fw_destroy(&w);

    pthread_t th;
    if (pthread_create(&th, NULL, pump, &sock)) phi3_die("cannot start a thread");
    pthread_detach(th);

    /* every way out frees the reader and the frame first (a leak checker sees none) */
    frame_reader *fr = fr_open(sock, 0);
    frame f;
    char msg[1200];
    int rc, done = 0;
    msg[0] = 0;
    while (!done && (rc = fr_next(fr, &f)) == 1) {
        if (!strcmp(f.type, "error")) {
            const char *m;
            size_t ml;
            if (frame_str(&f, "message", &m, &ml) != 1) snprintf(msg, sizeof msg, "the server reported an error without a message");
            else snprintf(msg, sizeof msg, "%.*s", (int)ml, m);
            done = 1;
        } else if (!strcmp(f.type, "done")) {
            done = 2;                           /* stdin reached its end: the pump is over */
        } else {
            const void *raw;
            size_t len;
            fr_raw(fr, &raw, &len);
            if (write_all(1, raw, len)) {
                if (errno == EPIPE) done = 2;   /* our reader went away: a normal end */
                else snprintf(msg, sizeof msg, "write error: %s", strerror(errno)), done = 1;
            }
        }
        frame_free(&f);
    }
    if (!done && rc < 0) snprintf(msg, sizeof msg, "--connect: from the server: %s", fr_error(fr));
    else if (!done)
        snprintf(msg, sizeof msg, "--connect: the server at %s closed the stream without finishing it (it stopped or crashed)",
                 path);
    fr_close(fr);
    if (done == 2) exit(0);
    phi3_die("%s", msg);
}
