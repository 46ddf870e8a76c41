/* options.c: the sampling chain's command-line values (phi3-sample's flags), parsed
 * strictly: junk "is not a number", values that over- or underflow "are out of range",
 * and values the float32 logits could not absorb are refused (docs/SAMPLING.md). */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sample/sampler.h"
#include "shared/util.h"

int sample_parse_double(const char *name, const char *s, double *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    double v = *s ? strtod(s, &end) : 0;
    if (!*s || *end || isnan(v)) {
        snprintf(err, errlen, "%s: '%s' is not a number", name, s);
        return -1;
    }
    if (errno == ERANGE || !isfinite(v)) {
        snprintf(err, errlen, "%s: '%s' is out of range", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

int sample_parse_long(const char *name, const char *s, long *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long v = *s ? strtol(s, &end, 10) : 0;
    if (!*s || *end) {
        snprintf(err, errlen, "%s: '%s' is not an integer", name, s);
        return -1;
    }
    if (errno == ERANGE || v < INT32_MIN || v > INT32_MAX) {
        snprintf(err, errlen, "%s: '%s' is out of range", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* A number the float32 logits can absorb: |v| <= FLT_MAX (3.4e38). */
static int parse_f32(const char *name, const char *s, double *out, char *err, size_t errlen)
{
    if (sample_parse_double(name, s, out, err, errlen)) return -1;
    if (fabs(*out) > FLT_MAX) {
        snprintf(err, errlen, "%s: '%s' is out of range (|value| <= 3.4e38)", name, s);
        return -1;
    }
    return 0;
}

static int parse_seed(const char *s, uint64_t *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long long v = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (!(*s >= '0' && *s <= '9') || *end) {
        snprintf(err, errlen, "--seed: '%s' is not a number in 0..2^64-1", s);
        return -1;
    }
    if (errno) {
        snprintf(err, errlen, "--seed: '%s' is out of range (0..2^64-1)", s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* ID=V, V a number with |V| <= FLT_MAX, or -inf. */
static int parse_bias(const char *s, int32_t *id, double *val, char *err, size_t errlen)
{
    const char *eq = strchr(s, '=');
    char idbuf[32];
    long v;
    if (!eq || eq == s || (size_t)(eq - s) >= sizeof idbuf) {
        snprintf(err, errlen, "--logit-bias: '%s' is not ID=VALUE", s);
        return -1;
    }
    memcpy(idbuf, s, (size_t)(eq - s));
    idbuf[eq - s] = 0;
    if (parse_long(idbuf, &v) || v < 0 || v > INT32_MAX) {
        snprintf(err, errlen, "--logit-bias: '%s': bad id '%s'", s, idbuf);
        return -1;
    }
    *id = (int32_t)v;
    if (!strcmp(eq + 1, "-inf") || !strcmp(eq + 1, "-infinity")) { *val = -HUGE_VAL; return 0; }
    char *end;
    errno = 0;
    double d = eq[1] ? strtod(eq + 1, &end) : 0;
    if (!eq[1] || *end || isnan(d) || d == HUGE_VAL) {
        snprintf(err, errlen, "--logit-bias: '%s': value must be a finite number or -inf", s);
        return -1;
    }
    if (errno == ERANGE || !isfinite(d) || fabs(d) > FLT_MAX) {
        snprintf(err, errlen, "--logit-bias: '%s': value out of range (|V| <= 3.4e38, or -inf)", s);
        return -1;
    }
    *val = d;
    return 0;
}

int sample_set_option(sample_params *p, const char *name, const char *value, char *err,
                      size_t errlen)
{
    char flag[40];
    snprintf(flag, sizeof flag, "--%s", name);
    long l;
    int rc = 0;
    if (!strcmp(name, "greedy")) { p->greedy = 1; return 0; }
    if (!value) { snprintf(err, errlen, "%s: needs a value", flag); return -1; }
    if (!strcmp(name, "temperature")) rc = sample_parse_double(flag, value, &p->temperature, err, errlen);
    else if (!strcmp(name, "top-p")) rc = sample_parse_double(flag, value, &p->top_p, err, errlen);
    else if (!strcmp(name, "min-p")) rc = sample_parse_double(flag, value, &p->min_p, err, errlen);
    else if (!strcmp(name, "typical-p")) rc = sample_parse_double(flag, value, &p->typical_p, err, errlen);
    else if (!strcmp(name, "repeat-penalty")) rc = sample_parse_double(flag, value, &p->repeat_penalty, err, errlen);
    else if (!strcmp(name, "presence-penalty")) rc = parse_f32(flag, value, &p->presence_penalty, err, errlen);
    else if (!strcmp(name, "frequency-penalty")) rc = parse_f32(flag, value, &p->frequency_penalty, err, errlen);
    else if (!strcmp(name, "top-k")) {
        if ((rc = sample_parse_long(flag, value, &l, err, errlen)) == 0) p->top_k = (int)l;
    } else if (!strcmp(name, "repeat-last-n")) {
        if ((rc = sample_parse_long(flag, value, &l, err, errlen)) == 0) p->repeat_last_n = (int)l;
    } else if (!strcmp(name, "seed")) rc = parse_seed(value, &p->seed, err, errlen);
    else if (!strcmp(name, "logit-bias")) {
        int32_t id;
        double v;
        if ((rc = parse_bias(value, &id, &v, err, errlen)) == 0) {
            int32_t *ids = xrealloc((int32_t *)p->bias_ids, sizeof *ids * (p->n_bias + 1));
            double *vals = xrealloc((double *)p->bias_vals, sizeof *vals * (p->n_bias + 1));
            ids[p->n_bias] = id;
            vals[p->n_bias] = v;
            p->bias_ids = ids;
            p->bias_vals = vals;
            p->n_bias++;
        }
    } else return 1;
    return rc;
}

void sample_params_free(sample_params *p)
{
    free((int32_t *)p->bias_ids);
    free((double *)p->bias_vals);
    p->bias_ids = NULL;
    p->bias_vals = NULL;
    p->n_bias = 0;
}
