/* stopids.c: what phi3-sample takes from a model directory and its flags: stop ids (a
 * "--stop 1,2,3" list, generation_config.json's eos_token_id) and tokenizer.json's size. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sample/sampler.h"
#include "shared/util.h"

static void push_id(int32_t **ids, size_t *n, int32_t v)
{
    *ids = xrealloc(*ids, sizeof(int32_t) * (*n + 1));
    (*ids)[(*n)++] = v;
}

int sample_parse_ids(const char *list, int32_t **ids, size_t *n, char *err, size_t errlen)
{
    const char *p = list;
    *ids = NULL;
    *n = 0;
    for (size_t item = 1;; item++) {
        const char *q = p;
        long long v = 0;
        while (*q >= '0' && *q <= '9') {
            v = v * 10 + (*q - '0');
            if (v > INT32_MAX) {
                snprintf(err, errlen, "id %zu of '%s' is larger than %d", item, list, INT32_MAX);
                goto bad;
            }
            q++;
        }
        if (q == p || (*q != ',' && *q != '\0')) {
            snprintf(err, errlen, "bad id list '%s' (item %zu): expected ids like 32000,32007",
                     list, item);
            goto bad;
        }
        push_id(ids, n, (int32_t)v);
        if (*q == '\0') return 0;
        p = q + 1;
    }
bad:
    free(*ids);
    *ids = NULL;
    *n = 0;
    return -1;
}

static int json_id(json_t *v, int32_t *out)
{
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > INT32_MAX) return -1;
    *out = (int32_t)x;
    return 0;
}

int sample_model_stop_ids(const char *dir, int32_t **ids, size_t *n, int *found,
                          char *err, size_t errlen)
{
    char path[4096];
    *found = 0;
    if (snprintf(path, sizeof path, "%s/generation_config.json", dir) >= (int)sizeof path) {
        snprintf(err, errlen, "model path too long");
        return -1;
    }
    size_t len;
    char *text = read_file(path, 1 << 20, &len);
    if (!text) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "%s: %s", path, phi3_strerror(errno));
        return -1;
    }
    int rc = sample_stop_ids_json(text, len, path, ids, n, err, errlen);
    free(text);
    if (rc == 0) *found = 1;
    return rc;
}

int sample_stop_ids_json(const char *text, size_t len, const char *path, int32_t **ids,
                         size_t *n, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) {
        snprintf(err, errlen, "%s:%d: %s", path, je.line, je.text);
        return -1;
    }
    int rc = 0;
    json_t *eos = json_is_object(root) ? json_object_get(root, "eos_token_id") : NULL;
    int32_t v;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        rc = -1;
    } else if (!eos || json_is_null(eos)) {
        /* no eos in the config: no stop ids from the model */
    } else if (json_is_array(eos)) {
        size_t i;
        json_t *e;
        json_array_foreach(eos, i, e) {
            if (json_id(e, &v)) {
                snprintf(err, errlen, "%s: eos_token_id[%zu] is not an id", path, i);
                rc = -1;
                break;
            }
            push_id(ids, n, v);
        }
    } else if (json_id(eos, &v) == 0) {
        push_id(ids, n, v);
    } else {
        snprintf(err, errlen, "%s: eos_token_id is neither an id nor a list of ids", path);
        rc = -1;
    }
    json_decref(root);
    return rc;
}

int sample_model_tokenizer_ids(const char *dir, int32_t *n, char *err, size_t errlen)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= (int)sizeof path) {
        snprintf(err, errlen, "model path too long");
        return -1;
    }
    size_t len;
    char *text = read_file(path, 256u << 20, &len);
    if (!text) {
        snprintf(err, errlen, "%s: %s", path, phi3_strerror(errno));
        return -1;
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!root) {
        snprintf(err, errlen, "%s:%d: %s", path, je.line, je.text);
        return -1;
    }
    json_int_t top = -1;
    json_t *model = json_object_get(root, "model");
    json_t *vocab = model ? json_object_get(model, "vocab") : NULL;
    json_t *added = json_object_get(root, "added_tokens");
    const char *key;
    json_t *v;
    size_t i;
    if (json_is_object(vocab))
        json_object_foreach(vocab, key, v)
            if (json_is_integer(v) && json_integer_value(v) > top) top = json_integer_value(v);
    if (json_is_array(added))
        json_array_foreach(added, i, v) {
            json_t *id = json_object_get(v, "id");
            if (json_is_integer(id) && json_integer_value(id) > top) top = json_integer_value(id);
        }
    json_decref(root);
    if (top < 0 || top >= INT32_MAX) {
        snprintf(err, errlen, "%s: no token ids in model.vocab or added_tokens", path);
        return -1;
    }
    *n = (int32_t)(top + 1);
    return 0;
}
