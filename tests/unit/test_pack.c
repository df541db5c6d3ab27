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
