/* pack_compatible: which jobs may share a worker pass (proto/pack.h). */
#include "proto/pack.h"
#include "test.h"

static void sft(jobspec *s, const char *model) {
    jobspec_init(s);
    snprintf(s->model, sizeof s->model, "%s", model);
    snprintf(s->name, sizeof s->name, "job");
}

TEST(defaults_pack) {
    jobspec a, b;
    sft(&a, "gpt2");
    sft(&b, "gpt2");
    lr_err why = {0};
    CHECK(a.resources.co_train == 1 && a.resources.devices == 1 && a.method.type == METHOD_SFT);
    CHECK(pack_compatible(&a, &b, &why) == 1);
    CHECK(why.msg[0] == 0);
    /* What each job trains is its own: rank, lr, data, steps, seed. */
    b.lora.r = 64;
    b.lora.alpha = 3;
    b.hp.learning_rate = 1e-2;
    b.hp.max_steps = 7;
    b.hp.seed = 99;
    b.hp.grad_accum = 4;
    b.priority = 50;
    CHECK(pack_compatible(&a, &b, NULL) == 1);
}

/* Each rule refuses alone, names its field, and holds both ways round. */
TEST(each_rule_refuses) {
    static const char *const param[] = {
        "resources.co_train", "method.type", "lora.use_dora", "resources.devices", "model",
        "lora.quantize", "lora.quantize", "compute_dtype", "device", "method.type",
    };
    for (int i = 0; i < (int)(sizeof param / sizeof param[0]); i++) {
        for (int swap = 0; swap < 2; swap++) {
            jobspec a, b;
            sft(&a, "gpt2");
            sft(&b, "gpt2");
            jobspec *x = swap ? &a : &b;
            switch (i) {
            case 0: x->resources.co_train = 0; break;
            case 1: x->method.type = METHOD_DPO; break;
            case 2: x->lora.use_dora = 1; break;
            case 3: x->resources.devices = 2; break;
            case 4: snprintf(x->model, sizeof x->model, "llama"); break;
            case 5: x->lora.quantize = 1; break;
            case 6: a.lora.quantize = b.lora.quantize = 1; x->lora.double_quant = 1; break;
            case 7: x->compute_dtype = CDT_BF16; break;
            case 8: x->device = DEV_CUDA; break;
            case 9: x->method.type = METHOD_FULL_SFT; break;
            }
            lr_err why = {0};
            CHECKF(pack_compatible(&a, &b, &why) == 0, "rule %d (%s) swap %d accepted", i, param[i], swap);
            CHECK_STR(why.param, param[i]);
            CHECKF(why.msg[0] != 0, "rule %d: no message", i);
        }
    }
}

/* A job that may not pack at all is refused even paired with itself. */
TEST(self) {
    jobspec a;
    sft(&a, "gpt2");
    CHECK(pack_compatible(&a, &a, NULL) == 1);
    a.resources.co_train = 0;
    lr_err why = {0};
    CHECK(pack_compatible(&a, &a, &why) == 0);
    CHECK(strstr(why.msg, "co_train") != NULL);
}

/* The same quantized base packs. */
TEST(same_quantized_base) {
    jobspec a, b;
    sft(&a, "gpt2");
    sft(&b, "gpt2");
    a.lora.quantize = b.lora.quantize = 1;
    a.lora.double_quant = b.lora.double_quant = 1;
    a.compute_dtype = b.compute_dtype = CDT_BF16;
    CHECK(pack_compatible(&a, &b, NULL) == 1);
}

/* pack_key says what pack_compatible says, on random pairs of specs. */
TEST(key_agrees_with_rule) {
    unsigned seed = 7;
    for (int i = 0; i < 2000; i++) {
        jobspec s[2];
        char key[2][PACK_KEY_MAX];
        int has[2];
        for (int k = 0; k < 2; k++) {
            sft(&s[k], (seed = seed * 1103515245u + 12345u) >> 16 & 1 ? "gpt2" : "gpt2:v2");
            unsigned r = (seed = seed * 1103515245u + 12345u) >> 8;
            s[k].resources.co_train = (r & 7) != 0;
            s[k].method.type = (r >> 3 & 7) == 0 ? METHOD_DPO : METHOD_SFT;
            s[k].lora.use_dora = (r >> 6 & 7) == 0;
            s[k].resources.devices = (r >> 9 & 7) == 0 ? 2 : 1;
            s[k].lora.quantize = (int)(r >> 12 & 1);
            s[k].lora.double_quant = (int)(r >> 13 & 1);
            s[k].compute_dtype = (compute_dt)(r >> 14 & 1);
            s[k].device = (job_device)(r >> 15 & 1);
            has[k] = pack_key(&s[k], key[k], sizeof key[k]);
        }
        int want = pack_compatible(&s[0], &s[1], NULL);
        int got = has[0] && has[1] && !strcmp(key[0], key[1]);
        CHECKF(want == got, "pair %d: pack_compatible %d, keys %d (%s | %s)", i, want, got, key[0], key[1]);
    }
    jobspec a;
    sft(&a, "gpt2");
    char small[4];
    CHECK(pack_key(&a, small, sizeof small) == 0 && small[0] == 0); /* cut: no key rather than a wrong one */
}
