/* server.h: phi3-run --serve (one model process, many streams over a Unix-domain socket)
 * and phi3-run --connect (a drop-in phi3-run that relays its pipes to such a server).
 * docs/SERVER.md describes both; the hello/error/done frames are in docs/PROTOCOL.md. */
#ifndef PHI3_SERVER_H
#define PHI3_SERVER_H
#include <stddef.h>

typedef struct server_opts {
    const char *socket;                 /* --serve argument: a path, or a name */
    const char *model_dir;
    const char *backend;                /* auto, cpu, cuda */
    int threads;                        /* CPU threads (0: every core) */
    int ctx;                            /* default per-stream context limit (0: max_pos) */
    int max_streams;                    /* open streams at once */
    long long kv_budget;                /* bytes of KV reserved by all streams (0: none) */
    int chunk;                          /* prefill tokens per stream per step */
    int batch;                          /* CPU: one forward over every stream per step */
    int kv_type;                        /* --kv-type: KV_F32, KV_F16, or -1 (f32; a session's own) */
    int stats, verbose, quiet;
} server_opts;

typedef struct client_opts {
    const char *socket;                 /* --connect argument */
    const char *session;                /* --session NAME or NULL */
    int all_logits;
    int ctx;                            /* 0: the server's default */
} client_opts;

/* Both return the exit status (phi3_die on fatal errors). */
int server_main(const server_opts *o);
int client_main(const client_opts *o);

/* One stream without a listening socket (tests, fuzzing): serve the client at the other
 * end of the connected socket fd on model m with options o (model_dir, socket, backend
 * unused: CPU), exactly as server_main serves a connection, until the stream is over
 * (fd is closed then). 0; -1 if fd cannot be made non-blocking (fd left open). */
struct phi3_model;
int server_serve_fd(struct phi3_model *m, const server_opts *o, int fd);

/* The socket path for a --serve/--connect argument: one with a '/' is a path as given;
 * a bare NAME (or "" for "default") is $XDG_RUNTIME_DIR/phi3/NAME, or /tmp/phi3-UID/NAME
 * without XDG_RUNTIME_DIR. mkdir: create that private directory (0700) if missing. The
 * directory of a bare name must be ours and 0700. 0 ok; -1 with err. */
int server_socket_path(const char *arg, int mkdir_it, char *out, size_t len, char *err, size_t errlen);

#endif
