"""Integration: a short `lora-worker run` of each training method beyond
plain LoRA SFT on a tiny random Llama-layout model (`lora-worker mkmodel
--preset tiny`), checking what each writes into its run directory:

  - sft + DoRA: adapter_config.json says use_dora, the safetensors hold a
    1-D lora_magnitude_vector of out_features values next to every A and B
    (PEFT's saved keys), the loss is finite and falls;
  - kl_sft: train_log has ce_loss and kl columns, kl >= 0, loss = ce_loss +
    lambda tau^2 kl on every logged row, the loss falls;
  - dpo (reference: base model): train_log has rewards/accuracy (in [0, 1])
    and rewards/margin, the loss starts near log 2 and falls, the margin grows;
  - dpo with reference_adapter (the DoRA adapter above): the policy starts
    as that adapter (the rewards of step 1 are 0, and the saved adapter is
    DoRA with the reference's rank);
  - resuming an interrupted DPO run on a DoRA reference adapter with dropout
    ends bit for bit where an uninterrupted run does;
  - a method/data mismatch fails with a message.
Every run is a few seconds on one thread."""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKER = os.environ.get("LR_WORKER") or os.path.join(ROOT, os.environ.get("LR_BUILD", "build"), "lora-worker")

passed = failed = skipped = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        print(f"ok   {name}")
        passed += 1
    else:
        print(f"FAIL {name}{': ' + detail if detail else ''}")
        failed += 1


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def read_log(run):
    with open(os.path.join(run, "train_log.json")) as f:
        rows = json.load(f)
    return [r for r in rows if r.get("loss") is not None], [r for r in rows if r.get("eval_loss") is not None]


COLOURS = [("milk", "white"), ("grass", "green"), ("sky", "blue"), ("ash", "grey"), ("blood", "red"),
           ("snow", "white"), ("coal", "black"), ("sun", "yellow")]


def write_data(d):
    with open(os.path.join(d, "sft.jsonl"), "w") as f:
        for i in range(48):
            o, c = COLOURS[i % len(COLOURS)]
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Question {i}: what colour is {o}?"},
                                             {"role": "assistant", "content": f"Answer: {o} is {c}."}]}) + "\n")
    with open(os.path.join(d, "dpo.jsonl"), "w") as f:
        for i in range(48):
            o, c = COLOURS[i % len(COLOURS)]
            w = COLOURS[(i + 3) % len(COLOURS)][1]
            f.write(json.dumps({"prompt": f"Question {i}: what colour is {o}?", "chosen": f"Answer: {o} is {c}.",
                                "rejected": f"I think {o} is {w}, maybe."}) + "\n")


def job(d, name, data, method, lora, steps=24, log_every=4, save=0):
    spec = {"model": "model", "training_file": data, "method": method, "chat_template": "chatml",
            "hyperparameters": {"max_steps": steps, "batch_size": 4, "learning_rate": 5e-3, "max_seq_len": 64,
                                "val_ratio": 0.1, "logging_steps": log_every, "eval_steps": 12, "save_steps": save, "seed": 3,
                                "warmup_ratio": 0.0, "lr_scheduler": "constant"},
            "lora": lora}
    path = os.path.join(d, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    run = os.path.join(d, "run_" + name)
    p = subprocess.run([WORKER, "run", "--config", path, "--out", run, "--threads", "1", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    return p, run


def falling(rows, key="loss"):
    v = [r[key] for r in rows]
    return len(v) >= 2 and all(math.isfinite(x) for x in v) and v[-1] < v[0], v


def main():
    if not os.access(WORKER, os.X_OK):
        print(f"skip: {WORKER} is not built")
        print("0 passed, 0 failed, 1 skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="lrmethods.") as d:
        p = subprocess.run([WORKER, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", os.path.join(d, "model")],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            check("mkmodel", False, p.stderr.strip())
            return 1
        with open(os.path.join(d, "model", "config.json")) as f:
            cfg = json.load(f)
        write_data(d)

        # ---- sft + DoRA
        p, run = job(d, "dora", "sft.jsonl", {"type": "sft"},
                     {"r": 4, "alpha": 8, "dropout": 0.05, "targets": "all-linear", "use_dora": True})
        check("dora: run succeeds", p.returncode == 0, p.stderr.strip()[-300:])
        if p.returncode == 0:
            with open(os.path.join(run, "adapter_config.json")) as f:
                ac = json.load(f)
            check("dora: adapter_config use_dora", ac.get("use_dora") is True, str(ac.get("use_dora")))
            h = st_header(os.path.join(run, "adapter_model.safetensors"))
            mags = [k for k in h if k.endswith(".lora_magnitude_vector")]
            mods = [k[:-len(".lora_A.weight")] for k in h if k.endswith(".lora_A.weight")]
            n_mod = 7 * cfg["num_hidden_layers"]
            check("dora: a magnitude per module", len(mods) == n_mod and sorted(mags) ==
                  sorted(m + ".lora_magnitude_vector" for m in mods), f"{len(mods)} modules, {len(mags)} magnitudes")
            shapes_ok = all(len(h[m]["shape"]) == 1 and h[m]["shape"][0] == h[m.replace("lora_magnitude_vector",
                                                                                       "lora_B.weight")]["shape"][0]
                            for m in mags)
            check("dora: magnitudes are 1-D [out_features]", shapes_ok)
            rows, evals = read_log(run)
            ok, v = falling(rows)
            check("dora: loss finite and falling", ok, str(v))
            check("dora: eval_loss logged", len(evals) >= 1)

        # ---- kl_sft
        lam, tau = 0.5, 2.0
        p, run = job(d, "kl", "sft.jsonl", {"type": "kl_sft", "kl_lambda": lam, "kl_tau": tau},
                     {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"})
        check("kl_sft: run succeeds", p.returncode == 0, p.stderr.strip()[-300:])
        if p.returncode == 0:
            rows, _ = read_log(run)
            ok, v = falling(rows)
            check("kl_sft: loss finite and falling", ok, str(v))
            has = all("kl" in r and "ce_loss" in r for r in rows)
            check("kl_sft: ce_loss and kl logged", has)
            if has:
                check("kl_sft: kl >= 0 and grows from ~0 as the adapter moves away",
                      all(r["kl"] >= 0 for r in rows) and rows[-1]["kl"] > rows[0]["kl"],
                      str([r["kl"] for r in rows]))
                worst = max(abs(r["loss"] - (r["ce_loss"] + lam * tau * tau * r["kl"])) for r in rows)
                check("kl_sft: loss = ce_loss + lambda tau^2 kl", worst < 1e-4, f"max diff {worst:.2e}")
            with open(os.path.join(run, "train_log.csv")) as f:
                head = f.readline().strip()
            check("kl_sft: train_log.csv columns", head.endswith(",ce_loss,kl,train_accuracy"), head)
            acc = [r.get("train_accuracy") for r in rows]
            check("kl_sft: train_accuracy logged in [0, 1]", all(a is not None and 0 <= a <= 1 for a in acc), str(acc))

        # ---- dpo against the base model
        p, run = job(d, "dpo", "dpo.jsonl", {"type": "dpo", "beta": 0.1},
                     {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear"})
        check("dpo: run succeeds", p.returncode == 0, p.stderr.strip()[-300:])
        if p.returncode == 0:
            rows, evals = read_log(run)
            ok, v = falling(rows)
            check("dpo: loss finite and falling", ok, str(v))
            check("dpo: first logged loss near log 2", abs(rows[0]["loss"] - math.log(2)) < 0.15, str(v[:1]))
            acc = [r.get("rewards/accuracy") for r in rows]
            check("dpo: rewards/accuracy logged in [0, 1]", all(a is not None and 0 <= a <= 1 for a in acc), str(acc))
            mar = [r.get("rewards/margin") for r in rows]
            check("dpo: rewards/margin logged and growing", all(m is not None for m in mar) and mar[-1] > mar[0],
                  str(mar))
            check("dpo: eval_loss (mean DPO loss of held-out pairs)", len(evals) >= 1 and
                  all(0 < e["eval_loss"] < 2 for e in evals), str([e["eval_loss"] for e in evals]))
            with open(os.path.join(run, "train_log.csv")) as f:
                head = f.readline().strip()
            check("dpo: train_log.csv columns", "rewards/accuracy,rewards/margin" in head, head)

        # ---- dpo on top of the DoRA adapter, which is the frozen reference
        p, run = job(d, "dporef", "dpo.jsonl", {"type": "dpo", "beta": 0.1, "reference_adapter": "run_dora"},
                     {"r": 16, "alpha": 16, "dropout": 0.0, "targets": "attn"}, steps=8, log_every=1)
        check("dpo+reference_adapter: run succeeds", p.returncode == 0, p.stderr.strip()[-300:])
        if p.returncode == 0:
            rows, _ = read_log(run)
            check("dpo+reference_adapter: step 1 rewards are 0 (the policy starts as the reference)",
                  abs(rows[0]["rewards/chosen"]) < 1e-6 and abs(rows[0]["rewards/rejected"]) < 1e-6,
                  f"{rows[0]['rewards/chosen']}, {rows[0]['rewards/rejected']}")
            with open(os.path.join(run, "adapter_config.json")) as f:
                ac = json.load(f)
            check("dpo+reference_adapter: adapter keeps the reference's DoRA and rank",
                  ac.get("use_dora") is True and ac.get("r") == 4, f"use_dora {ac.get('use_dora')} r {ac.get('r')}")

        # ---- resuming keeps the reference and the DoRA state: an interrupted run
        # (6 of 12 steps, checkpoint at 4) resumed to 12 steps ends bit for bit
        # where an uninterrupted one does (dropout on: masks from (seed, step))
        res = {"r": 4, "alpha": 8, "dropout": 0.1, "targets": "all-linear"}
        meth = {"type": "dpo", "beta": 0.1, "reference_adapter": "run_dora"}
        pa, ra = job(d, "resA", "dpo.jsonl", meth, res, steps=12, log_every=2, save=4)
        pb, rb = job(d, "resB", "dpo.jsonl", meth, res, steps=6, log_every=2, save=4)
        ok = pa.returncode == 0 and pb.returncode == 0
        if ok:
            with open(os.path.join(d, "resB.json")) as f:
                spec = json.load(f)
            spec["hyperparameters"]["max_steps"] = 12
            with open(os.path.join(d, "resB.json"), "w") as f:
                json.dump(spec, f)
            pc = subprocess.run([WORKER, "run", "--config", os.path.join(d, "resB.json"), "--out", rb, "--threads", "1",
                                 "--quiet", "--resume"], capture_output=True, text=True, timeout=120)
            ok = pc.returncode == 0 and "resumed from checkpoint at step 4" in pc.stderr
            with open(os.path.join(ra, "adapter_model.safetensors"), "rb") as f:
                a = f.read()
            with open(os.path.join(rb, "adapter_model.safetensors"), "rb") as f:
                b = f.read()
            ok = ok and a == b
        check("dpo+reference_adapter+DoRA+dropout: resume is bit-exact", ok,
              (pa.stderr + pb.stderr).strip()[-300:])

        # ---- wrong data for the method
        p, run = job(d, "bad", "sft.jsonl", {"type": "dpo"}, {"r": 4, "alpha": 8, "targets": "attn"}, steps=2)
        check("dpo on SFT rows fails with a message", p.returncode != 0 and "dpo" in p.stderr, p.stderr.strip()[-200:])
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
