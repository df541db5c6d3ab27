/* fuzz_tokenizer: the tokenizer.json loader and the encode/decode pipeline.
 * The first byte picks the mode:
 *   0: the rest is a tokenizer.json, a NUL, then a text to encode with it;
 *   1: the rest is a text for a built-in byte-level BPE (trained here);
 *   2: the rest is a text for a built-in sentencepiece-style BPE whose
 *      pipeline uses every step kind (normalizers, splits, Metaspace,
 *      added tokens with lstrip/rstrip/single_word, byte fallback).
 * Each text is encoded with and without special tokens and decoded back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/tok.h"

static const char spm_json[] =
    "{\"added_tokens\":["
    "{\"id\":0,\"content\":\"<unk>\",\"special\":true,\"normalized\":false},"
    "{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":true,\"lstrip\":true},"
    "{\"id\":2,\"content\":\"</s>\",\"special\":true,\"normalized\":false,\"rstrip\":true},"
    "{\"id\":300,\"content\":\"[tool]\",\"special\":false,\"single_word\":true},"
    "{\"id\":301,\"content\":\"<|x|>\",\"special\":true,\"normalized\":false,\"lstrip\":true,\"rstrip\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},{\"type\":\"Lowercase\"},"
    "{\"type\":\"Strip\",\"strip_left\":false,\"strip_right\":true},"
    "{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"content\":\" \"},"
    "{\"type\":\"Prepend\",\"prepend\":\"_\"}]},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
    "{\"type\":\"Digits\",\"individual_digits\":true},"
    "{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},\"behavior\":\"MergedWithPrevious\",\"invert\":false},"
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[.,]+\"},\"behavior\":\"MergedWithNext\",\"invert\":false},"
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x+\"},\"behavior\":\"Contiguous\",\"invert\":true},"
    "{\"type\":\"Punctuation\",\"behavior\":\"Isolated\"},"
    "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":true}]},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
    "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
    "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":1},"
    "{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":\"always\"}]},"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
    "\"continuing_subword_prefix\":\"##\",\"end_of_word_suffix\":\"</w>\",\"vocab\":{";

static tok *builtin[2];

/* The sentencepiece-style vocabulary: specials, 256 byte pieces, letters. */
static tok *make_spm(void) {
    size_t cap = 65536, n = 0;
    char *j = malloc(cap);
    if (!j) return NULL;
    n += (size_t)snprintf(j + n, cap - n, "%s\"<unk>\":0,\"<s>\":1,\"</s>\":2", spm_json);
    for (int b = 0; b < 256; b++) n += (size_t)snprintf(j + n, cap - n, ",\"<0x%02X>\":%d", b, 3 + b);
    static const char *pieces[] = {"a", "b", "##a", "##b", "ab", "##ab", "\\u2581", "\\u2581a", "\\u2581ab",
                                   "b</w>", "##b</w>", "a</w>", "##a</w>", "ab</w>", "_"};
    int np = (int)(sizeof pieces / sizeof *pieces);
    for (int i = 0; i < np; i++) n += (size_t)snprintf(j + n, cap - n, ",\"%s\":%d", pieces[i], 259 + i);
    n += (size_t)snprintf(j + n, cap - n, "},\"merges\":[\"a ##b\",[\"\\u2581\",\"a\"],\"\\u2581a ##b\",\"a ##b</w>\"]}}");
    tok *t = NULL;
    lr_err err;
    if (tok_load_json(j, n, &t, &err)) fprintf(stderr, "fuzz_tokenizer: built-in spm: %s\n", err.msg);
    free(j);
    return t;
}

static tok *make_bytelevel(void) {
    static const char corpus[] = "the theme of these tokens: the then they them 123 456 ,,,!!! ok ok ok\n\n";
    const char *specials[] = {"<|endoftext|>", "<|im_start|>"};
    char path[] = "/tmp/fuzz_tok_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    close(fd);
    tok *t = NULL;
    lr_err err;
    if (tok_train_bytelevel(corpus, sizeof corpus - 1, 40, specials, 2, path, &err) || tok_load(path, &t, &err))
        fprintf(stderr, "fuzz_tokenizer: built-in byte-level: %s\n", err.msg);
    unlink(path);
    return t;
}

static void exercise(const tok *t, const char *text, size_t len) {
    for (int allow = 0; allow < 2; allow++) {
        int32_t *ids;
        size_t n;
        lr_err err;
        if (tok_encode(t, text, len, allow, &ids, &n, &err)) continue;
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= tok_vocab_size(t)) abort();
        char *back;
        size_t bl;
        if (tok_decode(t, ids, n, &back, &bl, &err) == 0) free(back);
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    if (!builtin[0]) {
        builtin[0] = make_bytelevel();
        builtin[1] = make_spm();
        if (!builtin[0] || !builtin[1]) abort();
    }
    int mode = data[0] % 3;
    data++;
    size--;
    if (mode > 0) {
        exercise(builtin[mode - 1], (const char *)data, size);
        return 0;
    }
    const uint8_t *sep = memchr(data, 0, size);
    size_t jlen = sep ? (size_t)(sep - data) : size;
    tok *t = NULL;
    lr_err err;
    if (tok_load_json((const char *)data, jlen, &t, &err) == 0) {
        const char *text = sep ? (const char *)sep + 1 : "Hello world, 123 <s> \xE2\x96\x81x";
        size_t tlen = sep ? size - jlen - 1 : strlen(text);
        exercise(t, text, tlen);
        tok_vocab_size(t);
        tok_piece_id(t, "a");
        tok_id_piece(t, 0);
        tok_free(t);
    }
    return 0;
}
