/* tok_cli.c: the tokenizer loading every text-side tool does (-m DIR or $PHI3_MODEL). */
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
