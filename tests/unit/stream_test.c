/* stream_test.c: the frame reader and writer: round trips, frames arriving in pieces,
 * clean end vs truncation, the size cap, and the typed accessors. */
#include "shared/stream.h"
#include "shared/util.h"
#include "tests/unit/tap.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Reader over a pipe fed with bytes [p, p+n) in chunks of `chunk` (a child writes). */
static frame_reader *feed(const void *p, size_t n, size_t chunk, size_t cap)
{
    int fd[2];
    if (pipe(fd)) return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        for (size_t i = 0; i < n; i += chunk) {
            size_t k = n - i < chunk ? n - i : chunk;
            if (write_all(fd[1], (const char *)p + i, k)) _exit(1);
            /* now and then let the reader run dry mid-frame */
            if (chunk < 8 && (i / chunk) % 4096 == 0) usleep(200);
        }
        _exit(0);
    }
    close(fd[1]);
    return fr_open(fd[0], cap);
}

static void reap(void) { while (wait(NULL) > 0) {} }

/* read_file's limit is inclusive: a file of exactly max bytes is read (it was refused
 * with EFBIG: the buffer filled before the read that sees the end). */
static void read_file_tests(void)
{
    char path[] = "/tmp/stream_test.XXXXXX";
    int fd = mkstemp(path);
    char data[5000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (char)('a' + i % 26);
    ok(fd >= 0 && write(fd, data, sizeof data) == (ssize_t)sizeof data, "temp file written");
    close(fd);
    size_t len = 0;
    char *b = read_file(path, sizeof data, &len);
    ok(b && len == sizeof data && !memcmp(b, data, len) && b[len] == 0, "read_file: a file of exactly max bytes is read (%s)",
       b ? "ok" : phi3_strerror(errno));
    free(b);
    errno = 0;
    b = read_file(path, sizeof data - 1, &len);
    ok(!b && errno == EFBIG, "read_file: one byte over max is EFBIG");
    free(b);
    b = read_file(path, 1 << 20, &len);
    ok(b && len == sizeof data, "read_file: under max is read");
    free(b);
    unlink(path);
}

int main(void)
{
    phi3_init("stream_test");
    read_file_tests();
    /* Build a stream of three frames with the writer into a pipe, read back. */
    int fd[2];
    if (pipe(fd)) return 1;
    frame_writer w;
    fw_init(&w, fd[1]);
    int32_t ids[] = {1, -2, 32063, 0};
    float lg[32064];
    for (int i = 0; i < 32064; i++) lg[i] = (float)i * 0.5f - 7.0f;
    fw_tokens(&w, ids, 4, 7);
    fw_text(&w, "h\xc3\xa9llo", 6, true);
    fw_end_frame(&w, "stop");
    close(fd[1]);
    frame_reader *r = fr_open(fd[0], 0);
    frame f;
    ok(fr_next(r, &f) == 1 && strcmp(f.type, "tokens") == 0, "tokens frame read back");
    int64_t *v; size_t n, bad; int64_t pos;
    ok(frame_ints(&f, "ids", &v, &n, &bad) == 1 && n == 4 && v[0] == 1 && v[1] == -2 && v[2] == 32063 && v[3] == 0,
       "ids round trip");
    free(v);
    ok(frame_int(&f, "pos", &pos) == 1 && pos == 7, "pos round trip");
    const char *s; size_t sl;
    ok(frame_str(&f, "ids", &s, &sl) == -1, "wrong kind is -1");
    ok(frame_str(&f, "nope", &s, &sl) == 0, "absent key is 0");
    frame_free(&f);
    bool sp = false;
    ok(fr_next(r, &f) == 1 && frame_str(&f, "text", &s, &sl) == 1 && sl == 6 && memcmp(s, "h\xc3\xa9llo", 6) == 0
       && frame_bool(&f, "special", &sp) == 1 && sp, "text frame round trip");
    frame_free(&f);
    ok(fr_next(r, &f) == 1 && strcmp(f.type, "end") == 0 && f.index == 3, "end frame is frame 3");
    frame_free(&f);
    ok(fr_next(r, &f) == 0, "clean end of stream between frames");
    fr_close(r);

    /* A logits frame byte by byte and in odd chunks. */
    frame_writer m;
    fw_init(&m, -1);
    fw_begin(&m, "logits", 2);
    fw_int(&m, "pos", 12);
    fw_bin(&m, "data", lg, sizeof lg);
    size_t len = m.buf.size;
    char *bytes = xmalloc(len * 2);
    memcpy(bytes, m.buf.data, len);
    memcpy(bytes + len, m.buf.data, len);
    size_t chunks[] = {1, 7, 4096, 1 << 20};
    for (int c = 0; c < 4; c++) {
        r = feed(bytes, len * 2, chunks[c], 0);
        int good = 1;
        for (int k = 0; k < 2; k++) {
            const void *p; size_t pl;
            good &= fr_next(r, &f) == 1 && frame_bin(&f, "data", &p, &pl) == 1 && pl == sizeof lg
                    && memcmp(p, lg, pl) == 0;
            frame_free(&f);
        }
        good &= fr_next(r, &f) == 0;
        ok(good, "two logits frames arriving in %zu-byte pieces", chunks[c]);
        fr_close(r);
        reap();
    }

    /* Truncation: every proper prefix of a frame is an error naming the frame. */
    int trunc_ok = 1;
    for (size_t cut = len + 1; cut < 2 * len; cut += len / 7) {
        r = feed(bytes, cut, 65536, 0);
        trunc_ok &= fr_next(r, &f) == 1;
        frame_free(&f);
        trunc_ok &= fr_next(r, &f) == -1 && strstr(fr_error(r), "frame 2: truncated") != NULL;
        fr_close(r);
        reap();
    }
    ok(trunc_ok, "a cut inside the second frame is 'frame 2: truncated'");

    /* The cap: a frame over it is refused before it is buffered whole. */
    r = feed(bytes, len, 65536, 1000);
    ok(fr_next(r, &f) == -1 && strstr(fr_error(r), "cap") != NULL, "frame over the cap refused: %s", fr_error(r));
    fr_close(r);
    reap();

    /* Hostile headers. */
    const char *bad_in[] = {"\xdb\xff\xff\xff\xff", "\xdd\x7f\xff\xff\xff", "\xdf\x10\x00\x00\x00",
                            "\xc6\x7f\xff\xff\xff", "\xc1", "\x93\x01\x02\x03", "\x81\xa1" "a\x01",
                            "\x81\xa4type\x05"};
    size_t bad_len[] = {5, 5, 5, 5, 1, 4, 4, 7};
    const char *want[] = {"claims", "claims", "claims", "claims", "not msgpack", "not a map", "no \"type\"",
                          "not a string"};
    for (int i = 0; i < 8; i++) {
        r = feed(bad_in[i], bad_len[i], 64, 0);
        int rc = fr_next(r, &f);
        ok(rc == -1 && strstr(fr_error(r), want[i]) && strncmp(fr_error(r), "frame 1:", 8) == 0,
           "hostile input %d: %s", i, fr_error(r));
        fr_close(r);
        reap();
    }

    /* Non-integer id is reported with its index. */
    fw_begin(&m, "tokens", 1);
    fw_key(&m, "ids");
    msgpack_pack_array(&m.pk, 3);
    msgpack_pack_int(&m.pk, 5);
    msgpack_pack_int(&m.pk, 6);
    msgpack_pack_double(&m.pk, 1.5);
    r = feed(m.buf.data, m.buf.size, 64, 0);
    ok(fr_next(r, &f) == 1 && frame_ints(&f, "ids", &v, &n, &bad) == -1 && bad == 2, "non-integer id at index 2");
    frame_free(&f);
    fr_close(r);
    reap();
    fw_destroy(&m);
    fw_destroy(&w);
    free(bytes);
    /* Nested values and a big packed id array (over the size where a frame keeps the
     * reader's buffer), in pieces: the resumed scan and the packed array read back. */
    {
        size_t nid = 400000;
        int32_t *bigids = xmalloc(nid * sizeof *bigids);
        for (size_t i = 0; i < nid; i++) bigids[i] = (int32_t)(i * 7919 % 70000) - 5000;
        frame_writer b;
        fw_init(&b, -1);
        fw_begin(&b, "tokens", 3);
        fw_ints(&b, "ids", bigids, nid);
        fw_key(&b, "meta");
        msgpack_pack_map(&b.pk, 2);
        msgpack_pack_str(&b.pk, 1); msgpack_pack_str_body(&b.pk, "a", 1);
        msgpack_pack_array(&b.pk, 3);
        msgpack_pack_nil(&b.pk); msgpack_pack_double(&b.pk, 0.5); msgpack_pack_int64(&b.pk, -1);
        msgpack_pack_str(&b.pk, 1); msgpack_pack_str_body(&b.pk, "b", 1);
        msgpack_pack_str(&b.pk, 3); msgpack_pack_str_body(&b.pk, "xyz", 3);
        fw_str(&b, "tail", "end", 3);
        size_t chunk2[] = {7, 4093, 1 << 20};
        for (int c = 0; c < 3; c++) {
            r = feed(b.buf.data, b.buf.size, chunk2[c], 0);
            int64_t *got;
            size_t cnt, bi;
            const char *t;
            size_t tl;
            int good = fr_next(r, &f) == 1 && frame_ints(&f, "ids", &got, &cnt, &bi) == 1 && cnt == nid;
            for (size_t i = 0; good && i < nid; i++) good = got[i] == bigids[i];
            if (good) free(got);
            const msgpack_object *meta = good ? frame_get(&f, "meta") : NULL;
            good = good && meta && meta->type == MSGPACK_OBJECT_MAP && meta->via.map.size == 2 &&
                   meta->via.map.ptr[0].val.type == MSGPACK_OBJECT_ARRAY &&
                   meta->via.map.ptr[0].val.via.array.size == 3 &&
                   frame_str(&f, "tail", &t, &tl) == 1 && tl == 3 && memcmp(t, "end", 3) == 0;
            frame_free(&f);
            good = good && fr_next(r, &f) == 0;
            ok(good, "a 1.2 MB frame of %zu packed ids and nested values in %zu-byte pieces", nid, chunk2[c]);
            fr_close(r);
            reap();
        }
        fw_destroy(&b);
        free(bigids);
    }
    return tap_done();
}
