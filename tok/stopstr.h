/* stopstr.h: stop strings over streamed text. Text arrives in pieces (whole UTF-8
 * characters); a stop string may span pieces. The filter passes on the text before the
 * first stop string, holds back a tail that could be the start of one, and drops the
 * stop string and everything after it until the sequence ends. */
#ifndef PHI3_STOPSTR_H
#define PHI3_STOPSTR_H
#include <stdbool.h>
#include <stddef.h>

#include "tok/tokenizer.h"

typedef struct stop_filter {
    char **s;                /* the stop strings (not empty) */
    size_t *len;
    size_t n, maxlen;
    tok_buf held;            /* text held back: a proper prefix of some stop string */
    bool stopped;            /* a stop string was seen in this sequence */
} stop_filter;

/* Add a stop string (copied). -1 if it is empty or not valid UTF-8. */
int stop_add(stop_filter *f, const char *s);
/* Feed text: appends to out what is final, returns true when a stop string completed
 * (now or earlier in this sequence). Nothing after a stop string is ever appended. */
bool stop_feed(stop_filter *f, const char *text, size_t n, tok_buf *out);
/* End of a sequence: the held tail was not a stop string after all (appended to out),
 * and the next text starts a new sequence. */
void stop_end(stop_filter *f, tok_buf *out);
void stop_free(stop_filter *f);

#endif
