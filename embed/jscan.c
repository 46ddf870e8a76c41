/* jscan.c: see jscan.h. */
#include "embed/jscan.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int bad(jscan *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(jscan *j, const char *fmt, ...)
{
    if (!j->why[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->why, sizeof j->why, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void js_init(jscan *j, const char *buf, size_t len)
{
    j->start = j->p = buf;
    j->end = buf + len;
    j->why[0] = 0;
}

size_t js_offset(const jscan *j) { return (size_t)(j->p - j->start); }

static void ws(jscan *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

int js_peek(jscan *j)
{
    ws(j);
    return j->p < j->end ? (unsigned char)*j->p : 0;
}

int js_lit(jscan *j, char c)
{
    ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 0;
    }
    return j->p < j->end ? bad(j, "'%c' expected", c) : bad(j, "unexpected end (expected '%c')", c);
}

int js_next(jscan *j, char close)
{
    ws(j);
    if (j->p < j->end && *j->p == ',') { j->p++; return 1; }
    if (j->p < j->end && *j->p == close) { j->p++; return 0; }
    return bad(j, "',' or '%c' expected", close);
}

int js_end(jscan *j)
{
    ws(j);
    return j->p == j->end ? 0 : bad(j, "end of text expected");
}

static int hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        *v = *v << 4 | (unsigned)d;
    }
    return 0;
}

/* Length of the valid UTF-8 sequence at p (< end), 0 if invalid. */
static int utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    int n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!n || end - p < n) return 0;
    for (int i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;              /* overlong */
    if (c == 0xED && p[1] >= 0xA0) return 0;             /* surrogates */
    if (c == 0xF0 && p[1] < 0x90) return 0;              /* overlong */
    if (c == 0xF4 && p[1] >= 0x90) return 0;             /* > U+10FFFF */
    return n;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int js_string(jscan *j, char *out, size_t *len, size_t *raw)
{
    if (js_lit(j, '"')) return -1;
    const char *s = j->p;
    size_t n = 0;
    char tmp[4];
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) return bad(j, "control character in a string");
        if (c == '\\') {
            if (j->end - j->p < 2) return bad(j, "unexpected end in a string");
            char e = j->p[1], d = 0;
            unsigned cp;
            switch (e) {
            case '"': d = '"'; break;
            case '\\': d = '\\'; break;
            case '/': d = '/'; break;
            case 'b': d = '\b'; break;
            case 'f': d = '\f'; break;
            case 'n': d = '\n'; break;
            case 'r': d = '\r'; break;
            case 't': d = '\t'; break;
            case 'u':
                if (j->end - j->p < 6 || hex4(j->p + 2, &cp)) return bad(j, "bad \\u escape");
                j->p += 6;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return bad(j, "lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return bad(j, "lone high surrogate");
                    j->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (cp == 0) return bad(j, "\\u0000 in a string");
                {
                    size_t k = put_utf8(out ? out + n : tmp, cp);
                    n += k;
                }
                continue;
            default: return bad(j, "bad escape \\%c", e >= 0x20 && e < 0x7f ? e : '?');
            }
            if (out) out[n] = d;
            n++;
            j->p += 2;
            continue;
        }
        int k = utf8_len((const unsigned char *)j->p, (const unsigned char *)j->end);
        if (!k) return bad(j, "invalid UTF-8 in a string");
        if (out) memcpy(out + n, j->p, (size_t)k);
        n += (size_t)k;
        j->p += k;
    }
    if (j->p >= j->end) return bad(j, "unterminated string");
    if (raw) *raw = (size_t)(j->p - s);
    j->p++;
    if (out) out[n] = 0;
    if (len) *len = n;
    return 0;
}

int js_number(jscan *j, int64_t *v, int *is_int)
{
    ws(j);
    const char *p = j->p;
    int neg = p < j->end && *p == '-';
    if (neg) p++;
    if (p >= j->end || *p < '0' || *p > '9') return bad(j, "number expected");
    uint64_t u = 0;
    int over = 0;
    if (*p == '0') p++;
    else
        while (p < j->end && *p >= '0' && *p <= '9') {
            if (u > (UINT64_MAX - 9) / 10) over = 1;
            u = u * 10 + (uint64_t)(*p++ - '0');
        }
    int integer = 1;
    if (p < j->end && *p == '.') {
        integer = 0;
        p++;
        if (p >= j->end || *p < '0' || *p > '9') return bad(j, "digit expected after '.'");
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        integer = 0;
        p++;
        if (p < j->end && (*p == '+' || *p == '-')) p++;
        if (p >= j->end || *p < '0' || *p > '9') return bad(j, "digit expected in an exponent");
        while (p < j->end && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    *is_int = integer && !over && u <= (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX);
    if (*is_int) *v = neg ? (int64_t)(0 - u) : (int64_t)u;
    return 0;
}

static int skip(jscan *j, int depth)
{
    if (depth > 64) return bad(j, "nesting deeper than 64");
    int c = js_peek(j);
    int64_t v;
    int is_int;
    switch (c) {
    case '"': return js_string(j, NULL, NULL, NULL);
    case '{':
        j->p++;
        if (js_peek(j) == '}') { j->p++; return 0; }
        for (int r = 1; r == 1;) {
            if (js_string(j, NULL, NULL, NULL) || js_lit(j, ':') || skip(j, depth + 1)) return -1;
            if ((r = js_next(j, '}')) < 0) return -1;
        }
        return 0;
    case '[':
        j->p++;
        if (js_peek(j) == ']') { j->p++; return 0; }
        for (int r = 1; r == 1;) {
            if (skip(j, depth + 1)) return -1;
            if ((r = js_next(j, ']')) < 0) return -1;
        }
        return 0;
    case 't': case 'f': case 'n': {
        const char *w = c == 't' ? "true" : c == 'f' ? "false" : "null";
        size_t n = strlen(w);
        if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n)) return bad(j, "invalid literal");
        j->p += n;
        return 0;
    }
    case 0: return bad(j, "unexpected end (value expected)");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return js_number(j, &v, &is_int);
        return bad(j, "invalid character '%c'", c >= 0x20 && c < 0x7f ? c : '?');
    }
}

int js_skip(jscan *j) { return skip(j, 0); }
