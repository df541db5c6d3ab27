"""Trying and merging a job's adapter through lorad with the real lora-worker:
POST /v1/jobs/{id}/generate (base and tuned side by side: structure, token
limits, greedy determinism, validation, 404/409) and POST /v1/jobs/{id}/merge
(202, the model appears in /v1/models and generates what base + adapter
generate, a job trains on it, 403 for another user, 409 on a taken name, a
failed merge leaves an error event and no folder)."""
import os, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(worker):
    R.skip("daemon_generate", "build/lorad or build/lora-worker is not built")
    R.finish()

tmp = tempfile.mkdtemp(prefix="lrgen.", dir="/tmp")
model = os.path.join(tmp, "model")
mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                    capture_output=True, text=True, timeout=120)
if mk.returncode:
    R.skip("daemon_generate", "lora-worker mkmodel failed: " + mk.stderr.strip()[:200])
    R.finish()
# a copy whose weights go missing after registration: its jobs fail
broken = os.path.join(tmp, "broken")
shutil.copytree(model, broken)

L = Lorad(worker, workers="cpu", extra=["--worker-threads", "1"])
try:
    ta = L.admin("user", "add", "alice")
    tb = L.admin("user", "add", "bob")
    tr = L.admin("user", "add", "root", "--admin")
    L.admin("model", "add", "tiny", model)
    L.admin("model", "add", "broken", broken)
    os.unlink(os.path.join(broken, "model.safetensors"))
    L.start()
    rows = "".join('{"messages":[{"role":"user","content":"count to %d"},{"role":"assistant","content":"%s"}]}\n'
                   % (i, " ".join(str(k) for k in range(i % 7 + 1))) for i in range(16)).encode()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", ta, raw=rows)
    assert st == 200, (st, ds)
    fid = ds["id"]

    def submit(token, steps, name, model_name="tiny"):
        st, j = L.req("POST", "/v1/jobs", token, {
            "name": name, "model": model_name, "training_file": fid, "device": "cpu",
            "hyperparameters": {"max_steps": steps, "save_steps": 100, "logging_steps": 1, "eval_steps": 1000,
                                "batch_size": 2, "max_seq_len": 64, "seed": 3, "val_ratio": 0.0,
                                "learning_rate": 0.01},
            "lora": {"r": 4, "alpha": 8}})
        assert st == 200, (st, j)
        return j["id"]

    def wait_done(jid, limit=120):
        return wait_until(lambda: L.finished(jid, ta), limit, "job " + jid)

    def gen(jid, body, token=None):
        return L.req("POST", "/v1/jobs/%s/generate" % jid, token or ta, body)

    job = submit(ta, 6, "try me")
    st, r = gen(job, {"prompt": "count to 3"})
    R.check(st == 409 and "error" in r, "generate on a queued or running job -> 409", (st, r))
    R.check(wait_done(job) == "succeeded", "a 6-step job trains", L.job(job, ta).get("error"))

    # ---- generate ----
    body = {"prompt": "count to 3", "max_new_tokens": 12}
    st, g1 = gen(job, body)
    ok = (st == 200 and g1.get("object") == "generation" and g1.get("job") == job and g1.get("model") == "tiny"
          and g1.get("prompt") == "count to 3" and g1.get("prompt_tokens", 0) > 0 and g1.get("seconds", -1) >= 0)
    for side in ("base", "tuned"):
        s = g1.get(side, {}) if isinstance(g1, dict) else {}
        ok = ok and isinstance(s.get("text"), str) and 0 <= s.get("tokens", -1) <= 12 and \
            s.get("stop") in ("stop_token", "stop_string", "length")
    R.check(ok, "generate: base and tuned side by side, at most max_new_tokens each", (st, g1))
    st2, g2 = gen(job, body)
    R.check(st2 == 200 and g2["base"] == g1["base"] and g2["tuned"] == g1["tuned"],
            "greedy generation is deterministic (same request, same texts)", (g1, g2))
    st, s1 = gen(job, dict(body, temperature=0.9, top_p=0.9, top_k=20, seed=7))
    st2, s2 = gen(job, dict(body, temperature=0.9, top_p=0.9, top_k=20, seed=7))
    R.check(st == 200 and st2 == 200 and s1["tuned"] == s2["tuned"], "sampling with a seed is reproducible", (s1, s2))
    st, g = gen(job, {"prompt": "count to 3", "max_new_tokens": 40, "stop": ["1"], "system": "Count."})
    R.check(st == 200 and "1" not in g["base"]["text"] and "1" not in g["tuned"]["text"],
            "stop strings and a system message are accepted", (st, g))
    st, g = gen(job, {"prompt": "count to 3", "max_new_tokens": 1})
    R.check(st == 200 and g["base"]["tokens"] <= 1 and g["tuned"]["tokens"] <= 1, "max_new_tokens 1", (st, g))

    bad = [({"max_new_tokens": 5}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": 3}, "prompt"),
           ({"prompt": "x", "bogus": 1}, "bogus"), ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
           ({"prompt": "x", "max_new_tokens": 1025}, "max_new_tokens"), ({"prompt": "x", "max_new_tokens": 2.5}, "max_new_tokens"),
           ({"prompt": "x", "temperature": -1}, "temperature"), ({"prompt": "x", "temperature": 6}, "temperature"),
           ({"prompt": "x", "top_p": 0}, "top_p"), ({"prompt": "x", "top_k": -1}, "top_k"),
           ({"prompt": "x", "seed": -2}, "seed"), ({"prompt": "x", "stop": ["a"] * 9}, "stop"),
           ({"prompt": "x", "stop": [""]}, "stop[0]"), ({"prompt": "x", "stop": [7]}, "stop[0]"),
           ({"prompt": "a\u0000b"}, None), ({"prompt": "x", "system": 1}, "system"),
           ({"prompt": "x" * 40000}, "prompt")]
    wrong = [(b, p, st, r) for b, p in bad for st, r in [gen(job, b)]
             if not (st == 400 and r["error"]["param"] == p)]
    st, r = L.req("POST", "/v1/jobs/%s/generate" % job, ta, raw=b"{not json")
    R.check(not wrong and st == 400, "%d bad bodies -> 400 naming the field" % (len(bad) + 1), wrong[:3])
    st, r = gen("ftjob-000000000000", {"prompt": "x"})
    R.check(st == 404, "generate on an unknown job -> 404", (st, r))
    st, r = L.req("POST", "/v1/jobs/%s/generate" % job, None, {"prompt": "x"})
    R.check(st == 401, "generate without a token -> 401", st)

    with ThreadPoolExecutor(3) as ex:
        many = list(ex.map(lambda _: gen(job, {"prompt": "count to 5", "max_new_tokens": 64}), range(3)))
    R.check(all(s in (200, 429) for s, _ in many) and any(s == 200 for s, _ in many) and
            all(r["error"]["code"] == "busy" for s, r in many if s == 429),
            "three at once: each answered (200, or 429 busy past the cap)", [s for s, _ in many])

    fjob = submit(ta, 4, "doomed", "broken")
    R.check(wait_done(fjob) == "failed", "a job on a model without weights fails")
    st, r = gen(fjob, {"prompt": "x"})
    R.check(st == 409 and "no adapter" in r["error"]["message"], "generate on a failed job -> 409", (st, r))
    cjob = submit(ta, 100000, "cancelled")
    L.req("POST", "/v1/jobs/%s/cancel" % cjob, ta)
    wait_done(cjob)
    st, r = gen(cjob, {"prompt": "x"})
    R.check(st == 409, "generate on a job cancelled before any adapter -> 409", (st, r))

    # ---- merge ----
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, tb, {"name": "bobs"})
    R.check(st == 403, "merge by another user -> 403", (st, r))
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "../evil"})
    st2, r2 = L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "x", "extra": 1})
    R.check(st == 400 and r["error"]["param"] == "name" and st2 == 400 and r2["error"]["param"] == "extra",
            "merge: bad name or field -> 400", (r, r2))
    R.check(L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "tiny"})[0] == 409,
            "merge into a registered model's name -> 409")
    R.check(L.req("POST", "/v1/jobs/%s/merge" % fjob, ta, {"name": "nope"})[0] == 409,
            "merge of a job without an adapter -> 409")
    R.check(L.req("POST", "/v1/jobs/ftjob-000000000000/merge", ta, {})[0] == 404, "merge of an unknown job -> 404")
    t0 = time.time()
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "tiny-counting"})
    R.check(st == 202 and r["object"] == "model" and r["id"] == "tiny-counting" and r["status"] == "merging" and
            r["base_model"] == "tiny", "merge -> 202 merging", (st, r))
    st2, r2 = L.req("POST", "/v1/jobs/%s/merge" % job, tr, {"name": "tiny-counting"})
    R.check(st2 == 409, "a second merge into the same name -> 409", (st2, r2))
    m = wait_until(lambda: (lambda s, b: b if s == 200 else None)(*L.req("GET", "/v1/models/tiny-counting", ta)),
                   60, "the merged model")
    R.check(m["architecture"] == "LlamaForCausalLM" and m["num_layers"] >= 1 and
            any(x["id"] == "tiny-counting" for x in L.req("GET", "/v1/models", ta)[1]["data"]),
            "the merged model is registered (%.1f s)" % (time.time() - t0), m)
    R.check(m.get("owner") == "alice", "the merged model belongs to the job's owner", m.get("owner"))
    evs = [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % job, ta)[1]["data"]]
    R.check(any(e.startswith("merged into model tiny-counting") for e in evs), "the job records 'merged into model'", evs[-3:])
    mdir = os.path.join(L.dir, "models", "tiny-counting")
    out = subprocess.run([worker, "generate", "--model", mdir, "--prompt", "count to 3", "--max-new-tokens", "12",
                          "--threads", "1", "--json"], capture_output=True, text=True, timeout=60)
    import json
    R.check(out.returncode == 0 and json.loads(out.stdout)["text"] == g1["tuned"]["text"],
            "the merged model generates what base + adapter generate", (out.stdout[:200], g1["tuned"]))
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "tiny-counting"})
    R.check(st == 409, "merge into an existing merged model -> 409", (st, r))
    mj = submit(tb, 3, "on merged", "tiny-counting")
    R.check(wait_done(mj) == "succeeded", "a job on the merged model runs", L.job(mj, ta).get("error"))

    # default name, by an admin, then a merge that fails: no adapter config
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, tr)
    R.check(st == 202 and r["id"] == "try-me-merged", "merge without a body: default name <job name>-merged", r)
    wait_until(lambda: L.req("GET", "/v1/models/try-me-merged", ta)[0] == 200, 60, "the default-named model")
    os.unlink(os.path.join(L.dir, "runs", job, "adapter_config.json"))
    st, r = L.req("POST", "/v1/jobs/%s/merge" % job, ta, {"name": "never"})
    msg = wait_until(lambda: next((e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % job, ta)[1]["data"]
                                   if e["message"].startswith("merge into model never failed")), None), 60, "the failure")
    left = [n for n in os.listdir(os.path.join(L.dir, "models")) if "never" in n]
    R.check(st == 202 and L.req("GET", "/v1/models/never", ta)[0] == 404 and not left,
            "a failed merge: error event, no model, no folder left", (msg, left))
except Exception as ex:
    R.check(False, "daemon generate/merge flow", repr(ex))
    sys.stdout.write(open(os.path.join(L.dir, "lorad.log"), errors="replace").read()[-3000:])
finally:
    L.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
