/* util.c: error reporting, checked allocation and small I/O helpers for every tool. */
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *phi3_prog = "phi3";

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), 0 if none starts there. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!len || len > n) return 0;
    for (size_t k = 1; k < len; k++) {
        unsigned lo = 0x80, hi = 0xbf, b = s[k];
        if (k == 1 && c == 0xe0) lo = 0xa0;
        if (k == 1 && c == 0xed) hi = 0x9f;
        if (k == 1 && c == 0xf0) lo = 0x90;
        if (k == 1 && c == 0xf4) hi = 0x8f;
        if (b < lo || b > hi) return 0;
    }
    return len;
}

bool phi3_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k) return false;
        i += k;
    }
    return true;
}

/* Append one quoted-input-safe rendering of s to out (room: 4 bytes per input byte +
 * 1): a newline as the two characters backslash n, other C0 controls, DEL and bytes
 * that are not valid UTF-8 as backslash xNN, C1 controls (U+0080..U+009F, which some
 * terminals obey) as backslash u00NN; valid
 * UTF-8 above 0x7f passes through. Returns the new length. */
static size_t escape_line(const unsigned char *s, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c == '\n') { out[o++] = '\\'; out[o++] = 'n'; i++; continue; }
        if (c < 0x20 || c == 0x7f) {
            out[o++] = '\\'; out[o++] = 'x'; out[o++] = hex[c >> 4]; out[o++] = hex[c & 15];
            i++;
            continue;
        }
        if (c < 0x80) { out[o++] = (char)c; i++; continue; }
        size_t len = utf8_seq(s + i, n - i);
        if (!len) {
            out[o++] = '\\'; out[o++] = 'x'; out[o++] = hex[c >> 4]; out[o++] = hex[c & 15];
            i++;
            continue;
        }
        if (c == 0xc2 && s[i + 1] < 0xa0) {       /* C1 control */
            unsigned u = s[i + 1];
            memcpy(out + o, "\\u00", 4); o += 4;
            out[o++] = hex[u >> 4]; out[o++] = hex[u & 15];
            i += 2;
            continue;
        }
        memcpy(out + o, s + i, len);
        o += len;
        i += len;
    }
    return o;
}

static void verr(const char *fmt, va_list ap)
{
    /* One write per message so lines from the tools of a pipeline don't interleave. The
     * message often quotes input (a role, a name, an option value): it is escaped so that
     * it stays one printable line that cannot forge another line or drive a terminal. */
    char msg[1024], buf[4 * sizeof msg + 4 * 40 + 8];
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    size_t mlen = m < 0 ? 0 : (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    if ((size_t)m >= sizeof msg)                  /* truncated: never end mid-character */
    {
        while (mlen > 0 && ((unsigned char)msg[mlen - 1] & 0xc0) == 0x80) mlen--;
        if (mlen > 0 && (unsigned char)msg[mlen - 1] >= 0xc0) mlen--;
    }
    size_t plen = strlen(phi3_prog);
    if (plen > 40) plen = 40;
    size_t len = escape_line((const unsigned char *)phi3_prog, plen, buf);
    buf[len++] = ':';
    buf[len++] = ' ';
    len += escape_line((const unsigned char *)msg, mlen, buf + len);
    buf[len++] = '\n';
    ssize_t w = write(2, buf, len);
    (void)w;
}

void phi3_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(fmt, ap);
    va_end(ap);
}

void phi3_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(fmt, ap);
    va_end(ap);
    exit(1);
}

void phi3_usage_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(fmt, ap);
    va_end(ap);
    exit(2);
}

int phi3_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) phi3_die("out of memory (%zu bytes)", n);
    return p;
}

void *xmalloc_aligned(size_t n)
{
    size_t r = (n + 63) / 64 * 64;
    void *p = r >= n ? aligned_alloc(64, r ? r : 64) : NULL;
    if (!p) phi3_die("out of memory (%zu bytes)", n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) phi3_die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) phi3_die("out of memory (%zu bytes)", n);
    return q;
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

void phi3_init(const char *prog)
{
    phi3_prog = prog;
    signal(SIGPIPE, SIG_IGN);
}

int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

char *read_file(const char *path, size_t max, size_t *len)
{
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; anything but
     * a regular file is refused before a byte is read. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = errno; close(fd); errno = e; return NULL; }
    if (S_ISDIR(st.st_mode)) { close(fd); errno = EISDIR; return NULL; }
    if (!S_ISREG(st.st_mode)) { close(fd); errno = PHI3_ENOTREG; return NULL; }
    if ((uint64_t)st.st_size > max) { close(fd); errno = EFBIG; return NULL; }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    /* Room for max + 1 bytes and the NUL: a file of exactly max bytes is read to its end
     * (the read that returns 0), one byte more is EFBIG. */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 2 : 4096;
    if (cap > max + 2) cap = max + 2;
    char *buf = xmalloc(cap);
    size_t n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) { free(buf); close(fd); errno = EFBIG; return NULL; }
            cap = cap * 2 > max + 2 ? max + 2 : cap * 2;
            buf = xrealloc(buf, cap);
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno; free(buf); close(fd); errno = e; return NULL;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > max) { free(buf); close(fd); errno = EFBIG; return NULL; }
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

const char *phi3_strerror(int e)
{
    if (e == PHI3_ENOTREG) return "not a regular file";
    if (e == EFBIG) return "file too large";
    return strerror(e);
}

void phi3_bad_option(char **argv, int c)
{
    /* getopt_long with opterr = 0 and ':' leading the optstring: '?' unknown, ':' a
     * missing argument; optopt is the short option char (0 for a long option). */
    char name[64];
    if (optopt > 0 && optopt < 256 && !(c == ':' && optind > 1 && argv[optind - 1][0] == '-' &&
                                        argv[optind - 1][1] == '-'))
        snprintf(name, sizeof name, "-%c", optopt);
    else {
        const char *a = argv[optind - 1];
        size_t n = strcspn(a, "=");
        snprintf(name, sizeof name, "%.*s", (int)(n > 60 ? 60 : n), a);
    }
    if (c == ':') phi3_usage_die("option '%s' needs an argument (see %s --help)", name, phi3_prog);
    phi3_usage_die("unknown option '%s' (see %s --help)", name, phi3_prog);
}

const char *phi3_model_dir(const char *opt)
{
    if (opt && *opt) return opt;
    const char *e = getenv("PHI3_MODEL");
    return e && *e ? e : NULL;
}

double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int parse_long(const char *s, long *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int parse_double(const char *s, double *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

void phi3_input_operand(int argc, char **argv, int first)
{
    if (first >= argc) return;
    if (argc - first > 1) phi3_usage_die("unexpected argument '%s' (one input FILE at most)", argv[first + 1]);
    const char *path = argv[first];
    if (!strcmp(path, "-")) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) phi3_die("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) phi3_die("%s: %s", path, strerror(EISDIR));
    if (fd != 0) {
        if (dup2(fd, 0) < 0) phi3_die("%s: %s", path, strerror(errno));
        close(fd);
    }
}
