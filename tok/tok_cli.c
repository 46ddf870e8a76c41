/* tok_cli.c: the tokenizer loading every text-side tool does (-m DIR or $PHI3_MODEL). */
#include <errno.h>
#include <stdlib.h>
#include <jansson.h>

#include "shared/util.h"
#include "tok/tokenizer.h"

tok *tok_load_cli(const char *opt, const char **dir)
{
    const char *mdir = phi3_model_dir(opt);
    if (!mdir) phi3_usage_die("no model directory: use -m DIR or set PHI3_MODEL");
    char err[512];
    tok *t = tok_load(mdir, err, sizeof err);
    if (!t) phi3_die("%s", err);
    if (dir) *dir = mdir;
    return t;
}

json_t *tok_json_file(const char *path, bool optional, size_t max)
{
    size_t len;
    char *text = read_file(path, max, &len);
    if (!text) {
        if (optional && errno == ENOENT) return NULL;
        if (errno == EFBIG) phi3_die("%s: more than the %zu MiB this tool reads", path, max >> 20);
        phi3_die("%s: %s", path, phi3_strerror(errno));
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!root) phi3_die("%s: invalid JSON: %s (line %d)", path, je.text, je.line);
    if (!json_is_object(root)) phi3_die("%s: not a JSON object", path);
    return root;
}
