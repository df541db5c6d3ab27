"""A 20-step training run of `lora-worker run` against PyTorch + AdamW doing
the same thing step for step: same random model, same LoRA initialisation,
same full batch every step, torch.optim.AdamW with weight decay, the
transformers cosine-with-warmup schedule and clip_grad_norm_. The per-step
training losses must agree to 1e-4 relative (they start equal and drift only
by f32 rounding).

The initial LoRA weights come from the engine's own checkpoint after step 1:
with 3 warmup steps the learning rate of the first optimizer step is 0
(transformers' schedule), so that checkpoint holds the initial A and B
exactly, while AdamW's moments have seen step 1's gradient on both sides."""
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as ref  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKER = os.environ.get("LR_WORKER") or os.path.join(ROOT, os.environ.get("LR_BUILD", "build"), "lora-worker")
STEPS, LR, WARMUP, WD, CLIP, R, ALPHA = 20, 1e-2, 3, 0.01, 1.0, 4, 8
TOL = 1e-4


def main():
    torch.set_num_threads(2)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as T:
        model = os.path.join(T, "model")
        subprocess.run([WORKER, "mkmodel", "--arch", "llama", "--preset", "tiny", "--seed", "11", "--out", model],
                       check=True, capture_output=True)
        rows = open(os.path.join(ROOT, "examples", "demo.jsonl")).read().splitlines()[:8]
        data = os.path.join(T, "data.jsonl")
        open(data, "w").write("\n".join(rows) + "\n")
        job = {"model": model, "training_file": data, "chat_template": "chatml",
               "hyperparameters": {"max_steps": STEPS, "batch_size": 8, "learning_rate": LR,
                                   "lr_scheduler": "cosine", "warmup_steps": WARMUP, "weight_decay": WD,
                                   "max_grad_norm": CLIP, "max_seq_len": 256, "val_ratio": 0,
                                   "logging_steps": 1, "eval_steps": 0, "save_steps": 1,
                                   "save_total_limit": 0, "seed": 3},
               "lora": {"r": R, "alpha": ALPHA, "dropout": 0.0, "targets": "all-linear"}}
        jf = os.path.join(T, "job.json")
        json.dump(job, open(jf, "w"))
        run = os.path.join(T, "run")
        subprocess.run([WORKER, "run", "--config", jf, "--out", run, "--threads", "2", "--quiet"], check=True)
        ours = [r["loss"] for r in json.load(open(os.path.join(run, "train_log.json"))) if r["loss"] is not None]

        # the same batch, rendered by the engine's template code (checked against
        # the real Jinja templates elsewhere)
        out = subprocess.run([WORKER, "render", "--tokenizer", model, "--template", "chatml"], stdin=open(data),
                             capture_output=True, check=True, text=True).stdout.splitlines()
        rend = [json.loads(l) for l in out]
        Tm = max(len(r["ids"]) for r in rend)
        ids = torch.zeros(len(rend), Tm, dtype=torch.long)
        labels = torch.full((len(rend), Tm), -100, dtype=torch.long)
        for i, r in enumerate(rend):
            ids[i, :len(r["ids"])] = torch.tensor(r["ids"])
            labels[i, :len(r["labels"])] = torch.tensor(r["labels"])

        cfg = json.load(open(os.path.join(model, "config.json")))
        w = ref.read_safetensors(os.path.join(model, "model.safetensors"))
        init = ref.read_safetensors(os.path.join(run, "checkpoints", "checkpoint-1", "adapter_model.safetensors"))
        params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
        b_zero = all(float(v.abs().max()) == 0 for k, v in init.items() if "lora_B" in k)
        opt = torch.optim.AdamW(params.values(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)

        def lam(s):  # transformers.get_cosine_schedule_with_warmup
            if s < WARMUP:
                return s / max(1, WARMUP)
            p = (s - WARMUP) / max(1, STEPS - WARMUP)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        theirs = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = ref.forward_loss(cfg, w, ref.Lora(params, ALPHA / R), ids, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP)
            opt.step()
            sched.step()
            theirs.append(float(loss))

    def check(name, ok, detail=""):
        nonlocal passed, failed
        print(("ok   " if ok else "FAIL ") + name + (("  " + detail) if detail else ""))
        passed, failed = passed + ok, failed + (not ok)

    check("checkpoint-1 holds the initial adapter (B = 0)", b_zero)
    check("%d logged steps" % STEPS, len(ours) == STEPS, str(len(ours)))
    n = min(len(ours), len(theirs))
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours[:n], theirs[:n]))
    check("loss curve matches PyTorch+AdamW step for step (max rel diff %.2e, tol %g)" % (worst, TOL), worst <= TOL)
    check("the loss falls (%.4f -> %.4f)" % (theirs[0], theirs[-1]), theirs[-1] < theirs[0])
    for s in (0, 1, 2, 5, 10, 19):
        if s < n:
            print("   step %2d  lorad %.6f  torch %.6f" % (s + 1, ours[s], theirs[s]))
    print("%d passed, %d failed, 0 skipped" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
