/* stoplist_fuzz.c: libFuzzer target for stop lists: --stop-ids lists
 * (sample_parse_ids), generation_config.json's eos_token_id (sample_stop_ids_json), and
 * stop strings over streamed text (stop_filter). The input is split at NUL bytes: an id
 * list, a JSON text, then stop strings and text pieces. For the stop filter the
 * invariants are checked: what comes out is a prefix of the text fed; it never contains
 * a stop string; and when no stop string occurs in the text, all of it comes out by the
 * end of the sequence. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sample/sampler.h"
#include "tok/stopstr.h"

static size_t part(const uint8_t **p, const uint8_t *end, char **out)
{
    const uint8_t *z = memchr(*p, 0, (size_t)(end - *p));
    size_t n = z ? (size_t)(z - *p) : (size_t)(end - *p);
    *out = malloc(n + 1);
    memcpy(*out, *p, n);
    (*out)[n] = 0;
    *p = z ? z + 1 : end;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    char *list, *json, err[256];
    part(&p, end, &list);
    int32_t *ids = NULL;
    size_t n = 0;
    if (sample_parse_ids(list, &ids, &n, err, sizeof err) == 0 && n == 0) abort();
    free(ids);
    free(list);
    size_t jn = part(&p, end, &json);
    ids = NULL;
    n = 0;
    sample_stop_ids_json(json, jn, "generation_config.json", &ids, &n, err, sizeof err);
    free(ids);
    free(json);

    /* stop strings: the next two parts; then text pieces, one per part */
    stop_filter f = {0};
    for (int k = 0; k < 2 && p < end; k++) {
        char *s;
        part(&p, end, &s);
        stop_add(&f, s);
        free(s);
    }
    tok_buf fed = {0}, out = {0};
    bool stopped = false;
    while (p < end) {
        char *s;
        size_t sn = part(&p, end, &s);
        fed.p = realloc(fed.p, fed.n + sn + 1);
        if (sn) memcpy(fed.p + fed.n, s, sn);
        fed.n += sn;
        stopped = stop_feed(&f, s, sn, &out);
        free(s);
        if (out.n > fed.n || (out.n && memcmp(out.p, fed.p, out.n) != 0)) abort();
    }
    stop_end(&f, &out);
    if (out.n > fed.n || (out.n && memcmp(out.p, fed.p, out.n) != 0)) abort();
    bool any = false;
    for (size_t i = 0; i < f.n; i++) {
        if (out.n && memmem(out.p, out.n, f.s[i], f.len[i])) abort();
        if (fed.n && memmem(fed.p, fed.n, f.s[i], f.len[i])) any = true;
    }
    if (!any && (stopped || out.n != fed.n)) abort();
    if (any && !stopped) abort();
    free(fed.p);
    tok_buf_free(&out);
    stop_free(&f);
    return 0;
}
