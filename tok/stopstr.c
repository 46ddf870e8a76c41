/* stopstr.c: stop strings over streamed text (stopstr.h). */
#include "tok/stopstr.h"

#include <stdlib.h>
#include <string.h>

#include "shared/util.h"

static void add(tok_buf *b, const char *p, size_t n)
{
    if (!n) return;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

int stop_add(stop_filter *f, const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || !phi3_utf8_valid(s, n)) return -1;
    f->s = xrealloc(f->s, sizeof *f->s * (f->n + 1));
    f->len = xrealloc(f->len, sizeof *f->len * (f->n + 1));
    f->s[f->n] = xstrdup(s);
    f->len[f->n] = n;
    f->n++;
    if (n > f->maxlen) f->maxlen = n;
    return 0;
}

/* Length of the longest proper suffix of p[0..n) that starts some stop string. */
static size_t partial_tail(const stop_filter *f, const char *p, size_t n)
{
    size_t k = f->maxlen - 1 < n ? f->maxlen - 1 : n;
    for (; k > 0; k--)
        for (size_t i = 0; i < f->n; i++)
            if (f->len[i] > k && memcmp(p + n - k, f->s[i], k) == 0) return k;
    return 0;
}

bool stop_feed(stop_filter *f, const char *text, size_t n, tok_buf *out)
{
    if (f->stopped) return true;
    if (f->n == 0) { add(out, text, n); return false; }
    add(&f->held, text, n);
    if (f->held.n == 0) return false;
    const char *p = f->held.p;
    size_t len = f->held.n, first = len;
    for (size_t i = 0; i < f->n; i++) {
        /* Only the new text and the held tail before it can hold a new match: the held
         * part alone had none. */
        const char *m = memmem(p, len, f->s[i], f->len[i]);
        if (m && (size_t)(m - p) < first) first = (size_t)(m - p);
    }
    if (first < len) {
        add(out, p, first);
        f->held.n = 0;
        f->stopped = true;
        return true;
    }
    size_t k = partial_tail(f, p, len);
    add(out, p, len - k);
    if (k) memmove(f->held.p, p + len - k, k);
    f->held.n = k;
    return false;
}

void stop_end(stop_filter *f, tok_buf *out)
{
    if (!f->stopped) add(out, f->held.p, f->held.n);
    f->held.n = 0;
    f->stopped = false;
}

void stop_free(stop_filter *f)
{
    for (size_t i = 0; i < f->n; i++) free(f->s[i]);
    free(f->s);
    free(f->len);
    tok_buf_free(&f->held);
    memset(f, 0, sizeof *f);
}
