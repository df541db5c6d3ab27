"""A full_sft job through lorad with the real lora-worker: its artifacts are a
model folder (listed, downloaded byte for byte), POST /v1/jobs/{id}/generate
answers with the base model and with the run directory as the model (the same
texts lora-worker gives for each folder), POST /v1/jobs/{id}/merge registers
a copy of the model (202 "registering", 403/409 as for an adapter, an event,
GET /v1/models lists it, a LoRA job trains on it), and `lora merge --wait` /
`lora download` handle it."""
import hashlib, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
lora = os.path.join(BUILD, "lora")
if not all(os.path.exists(os.path.join(BUILD, b)) for b in ("lorad", "lora-worker", "lora")):
    R.skip("daemon_full_sft", "build/lorad, build/lora-worker or build/lora is not built")
    R.finish()

tmp = tempfile.mkdtemp(prefix="lrfull.", dir="/tmp")
model = os.path.join(tmp, "model")
mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                    capture_output=True, text=True, timeout=120)
if mk.returncode:
    R.skip("daemon_full_sft", "lora-worker mkmodel failed: " + mk.stderr.strip()[:200])
    R.finish()


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def worker_generate(model_dir, prompt, n):
    out = subprocess.run([worker, "generate", "--model", model_dir, "--prompt", prompt, "--max-new-tokens", str(n),
                          "--threads", "1", "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)["text"] if out.returncode == 0 else "(failed: %s)" % out.stderr[-200:]


t_start = time.time()
L = Lorad(worker, workers="cpu", extra=["--worker-threads", "1"])
try:
    ta = L.admin("user", "add", "alice")
    tb = L.admin("user", "add", "bob")
    L.admin("model", "add", "tiny", model)
    L.start()
    text = "".join(json.dumps({"text": "count %s" % " ".join(str(k) for k in range(i % 7 + 1))}) + "\n"
                   for i in range(7)).encode()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", ta, raw=text)
    assert st == 200, (st, ds)
    pc = "".join(json.dumps({"prompt": "count to %d" % i, "completion": " ".join(str(k) for k in range(i % 7 + 1))})
                 + "\n" for i in range(8)).encode()
    st, ds2 = L.req("POST", "/v1/datasets?filename=pc.jsonl", ta, raw=pc)
    assert st == 200, (st, ds2)

    hp = {"max_steps": 4, "save_steps": 100, "logging_steps": 1, "eval_steps": 1000, "batch_size": 2,
          "max_seq_len": 64, "seed": 3, "val_ratio": 0.0, "learning_rate": 0.01}
    st, j = L.req("POST", "/v1/jobs", ta, {"name": "full count", "model": "tiny", "training_file": ds["id"],
                                           "device": "cpu", "method": {"type": "full_sft"}, "hyperparameters": hp})
    assert st == 200, (st, j)
    job = j["id"]
    st, r = L.req("POST", "/v1/jobs/%s/generate" % job, ta, {"prompt": "count", "max_new_tokens": 1})
    if st == 200:  # a 4-step run may win the race; test_api checks this case without one
        R.skip("generate on an unfinished full_sft job -> 409", "the job had finished already")
    else:
        R.check(st == 409 and "model" in r["error"]["message"] and "adapter" not in r["error"]["message"],
                "generate on an unfinished full_sft job -> 409 naming its model", (st, r))
    done = wait_until(lambda: L.finished(job, ta), 60, "the full_sft job")
    R.check(done == "succeeded", "a 4-step full_sft job trains", L.job(job, ta).get("error"))
    run = os.path.join(L.dir, "runs", job)

    # ---- artifacts: the model folder ----
    st, a = L.req("GET", "/v1/jobs/%s/artifacts" % job, ta)
    names = {x["name"]: x["bytes"] for x in a["data"]} if st == 200 else {}
    R.check(all(n in names for n in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"))
            and "adapter_model.safetensors" not in names and names["model.safetensors"] ==
            os.path.getsize(os.path.join(run, "model.safetensors")),
            "artifacts list the model folder's files with their sizes", names)
    st, body = L.req("GET", "/v1/jobs/%s/artifacts/model.safetensors" % job, ta)
    R.check(st == 200 and isinstance(body, bytes) and
            hashlib.sha256(body).hexdigest() == sha(os.path.join(run, "model.safetensors")),
            "the model.safetensors download is the run's file, byte for byte (%d bytes)" % len(body or b""), st)
    st, cfg = L.req("GET", "/v1/jobs/%s/artifacts/config.json" % job, ta)
    R.check(st == 200 and cfg.get("architectures") == ["LlamaForCausalLM"], "config.json is served as JSON", st)

    # ---- generate: base model vs the run directory as the model ----
    body = {"prompt": "count", "max_new_tokens": 8}
    st, g = L.req("POST", "/v1/jobs/%s/generate" % job, ta, body)
    ok = (st == 200 and g.get("object") == "generation" and g.get("job") == job and g.get("model") == "tiny"
          and g.get("prompt_tokens", 0) > 0 and g.get("seconds", -1) >= 0)
    for side in ("base", "tuned"):
        s = g.get(side, {}) if isinstance(g, dict) else {}
        ok = ok and isinstance(s.get("text"), str) and 0 <= s.get("tokens", -1) <= 8 and \
            s.get("stop") in ("stop_token", "stop_string", "length")
    R.check(ok, "generate: base and tuned side by side, the same shape as for an adapter", (st, g))
    if ok:
        wb, wt = worker_generate(model, "count", 8), worker_generate(run, "count", 8)
        R.check(g["base"]["text"] == wb and g["tuned"]["text"] == wt and wb != wt,
                "base is the base model, tuned the trained folder (as lora-worker answers for each)",
                (g["base"]["text"], wb, g["tuned"]["text"], wt))

    # ---- merge, that is register ----
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, tb, {"name": "bobs"})
    R.check(st == 403, "register by another user -> 403", (st, r))
    R.check(L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "tiny"})[0] == 409,
            "register under a registered model's name -> 409")
    t0 = time.time()
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "tiny-full"})
    R.check(st == 202 and r["id"] == "tiny-full" and r["status"] == "registering" and r["base_model"] == "tiny",
            "merge of a full_sft job -> 202 registering", (st, r))
    m = wait_until(lambda: (lambda s, b: b if s == 200 else None)(*L.req("GET", "/v1/models/tiny-full", ta)),
                   30, "the registered model")
    mdir = os.path.join(L.dir, "models", "tiny-full")
    R.check(m["architecture"] == "LlamaForCausalLM" and
            any(x["id"] == "tiny-full" for x in L.req("GET", "/v1/models", ta)[1]["data"]) and
            sha(os.path.join(mdir, "model.safetensors")) == sha(os.path.join(run, "model.safetensors")) and
            os.path.exists(os.path.join(mdir, "tokenizer.json")) and not os.path.exists(os.path.join(mdir, "train_log.csv")),
            "GET /v1/models lists it: the run's model files, copied (%.1f s)" % (time.time() - t0), sorted(os.listdir(mdir)))
    evs = [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % job, ta)[1]["data"]]
    R.check(any(e.startswith("registered the full_sft model as tiny-full (") for e in evs),
            "the job records 'registered the full_sft model as tiny-full'", evs[-3:])
    R.check(L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "tiny-full"})[0] == 409,
            "registering under the same name again -> 409")
    st, j2 = L.req("POST", "/v1/jobs", tb, {"name": "lora on full", "model": "tiny-full", "training_file": ds2["id"],
                                           "device": "cpu", "hyperparameters": hp, "lora": {"r": 4, "alpha": 8}})
    R.check(st == 200 and wait_until(lambda: L.finished(j2["id"], tb), 60, "the job on it") == "succeeded",
            "an sft job on the registered model succeeds", (st, j2))

    # ---- the CLI ----
    env = dict(os.environ, LORA_URL="http://127.0.0.1:%d" % L.port, LORA_TOKEN=ta)
    out = subprocess.run([lora, "merge", job, "--name", "tiny-full-2", "--wait"], capture_output=True, text=True,
                         timeout=60, env=env)
    R.check(out.returncode == 0 and out.stdout.strip() == "tiny-full-2" and "registered" in out.stderr
            and L.req("GET", "/v1/models/tiny-full-2", ta)[0] == 200,
            "lora merge --wait registers a full_sft job's model", (out.returncode, out.stdout, out.stderr))
    dl = os.path.join(tmp, "dl")
    out = subprocess.run([lora, "download", job, "--out", dl], capture_output=True, text=True, timeout=60, env=env)
    R.check(out.returncode == 0 and sha(os.path.join(dl, "model.safetensors")) == sha(os.path.join(run, "model.safetensors"))
            and worker_generate(dl, "count", 8) == worker_generate(run, "count", 8),
            "lora download gets a model folder lora-worker can load", (out.returncode, out.stderr[-300:]))
    print("(%.1f s in all)" % (time.time() - t_start))
except Exception as ex:
    R.check(False, "daemon full_sft flow", repr(ex))
    sys.stdout.write(open(os.path.join(L.dir, "lorad.log"), errors="replace").read()[-3000:])
finally:
    L.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
