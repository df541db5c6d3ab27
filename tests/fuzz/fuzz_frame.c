/* Daemon <-> worker frames: arbitrary bytes, fed in pieces whose sizes come
 * from the input, through the decoder and the message parser. Invariants:
 * no crash or leak; a decoded frame is an object with a string type; a
 * parsed message re-encodes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/frame.h"
#include "proto/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t chunk = (size_t)data[0] % 64 + 1;
    data++, size--;
    frame_dec d;
    frame_dec_init(&d, 4096);
    lr_err e = {0};
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (frame_dec_feed(&d, data + off, n, &e)) break;
        json_t *j;
        int r;
        while ((r = frame_dec_next(&d, &j, &e)) == 1) {
            if (!json_is_object(j) || !json_is_string(json_object_get(j, "type"))) abort();
            msg m;
            if (msg_parse(j, &m, &e) == 0) {
                lr_buf b;
                lr_buf_init(&b, FRAME_MAX + 4);
                if (frame_encode(j, &b, &e)) abort();
                lr_buf_free(&b);
            }
            json_decref(j);
        }
        if (r < 0) break;
    }
    frame_dec_free(&d);
    return 0;
}
