/* util.h: program name, error messages on stderr, checked allocation, small helpers
 * shared by every phi3 tool. */
#ifndef PHI3_UTIL_H
#define PHI3_UTIL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>

#define PHI3_VERSION "0.1.0"

extern const char *phi3_prog;            /* set by main: "phi3-run" etc. */

/* "prog: message\n" on stderr. */
void phi3_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* phi3_err then exit(1) (bad input or runtime failure). */
noreturn void phi3_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* phi3_err then exit(2) (usage error). */
noreturn void phi3_usage_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* vsnprintf the message into err[errlen] and return -1: the loaders' and parsers' way
 * to hand one line of cause up to the tool, which prefixes its name. */
int phi3_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Allocation that dies with a message instead of returning NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
/* xmalloc with the block 64-byte aligned (a cache line: vector loads never straddle two);
 * free() releases it */
void *xmalloc_aligned(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* Ignore SIGPIPE so that a closed reader shows up as EPIPE from write(). */
void phi3_init(const char *prog);

/* Write all of buf to fd (retrying short writes and EINTR). 0 ok, -1 error with errno
 * set; EPIPE means the reader went away, which every tool treats as a quiet exit 0. */
int write_all(int fd, const void *buf, size_t n);

/* Read a whole regular file into a NUL-terminated buffer (at most max bytes). NULL +
 * errno on error: EISDIR for a directory, PHI3_ENOTREG for a FIFO, device or socket
 * (never blocks opening one), EFBIG over max. Say why with phi3_strerror(errno). */
char *read_file(const char *path, size_t max, size_t *len);
#define PHI3_ENOTREG 0x7ff0       /* not an errno of the system: "not a regular file" */
/* strerror that also knows PHI3_ENOTREG. */
const char *phi3_strerror(int e);

/* After getopt_long (opterr = 0, optstring starting with ':') returned '?' or ':': one
 * line "prog: unknown option '--x' (see prog --help)" (or "option '-n' needs an
 * argument ..."), exit 2. */
noreturn void phi3_bad_option(char **argv, int c);

/* The optional input operand of a filter (`tool [opts] [FILE]`): argv[first] (if any)
 * becomes stdin; "-" means stdin. A second operand is a usage error (exit 2); a file that
 * cannot be opened is an error (exit 1). */
void phi3_input_operand(int argc, char **argv, int first);

/* True if s[0..n) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF, truncation). */
bool phi3_utf8_valid(const char *s, size_t n);

/* Model directory: -m DIR, else $PHI3_MODEL, else NULL. */
const char *phi3_model_dir(const char *opt);

/* Monotonic clock in seconds. */
double now_sec(void);

/* Parse a whole decimal integer / float (no trailing junk). 0 ok, -1 bad. */
int parse_long(const char *s, long *out);
int parse_double(const char *s, double *out);

#endif
