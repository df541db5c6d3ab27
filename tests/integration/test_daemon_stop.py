"""A job that a stopping rule ends, through lorad and a real lora-worker: the
train loss is flat (learning rate 1e-12 on one batch holding the whole
dataset), so hyperparameters.patience 2 checked every step stops it at step
3. The job succeeds, GET /v1/jobs/{id} and the jobs list carry stop_reason and
the step reached (not total_steps), and `lora show` / `lora watch` print the
reason; a job run to its end has stop_reason null."""
import os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
lora = os.path.join(BUILD, "lora")
for b in (worker, lora, os.path.join(BUILD, "lorad")):
    if not os.path.exists(b):
        R.skip("daemon_stop", "%s is not built (make)" % b)
        R.finish()

tmp = tempfile.mkdtemp(prefix="lrstop.", dir="/tmp")
model = os.path.join(tmp, "model")
mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                    capture_output=True, text=True, timeout=120)
if mk.returncode:
    R.skip("daemon_stop", "lora-worker mkmodel failed: " + mk.stderr.strip()[:200])
    R.finish()

L = Lorad(worker, workers="cpu", extra=["--worker-threads", "1"])
try:
    tok = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", model)
    L.start()
    rows = "".join('{"messages":[{"role":"user","content":"what is %d plus %d?"},{"role":"assistant","content":"%d"}]}\n'
                   % (i, i, 2 * i) for i in range(1, 9)).encode()
    st, ds = L.req("POST", "/v1/datasets?filename=sums.jsonl", tok, raw=rows)
    R.check(st == 200, "dataset upload", (st, ds))

    def submit(name, **hp):
        h = {"max_steps": 20, "batch_size": 8, "learning_rate": 1e-12, "max_seq_len": 48, "val_ratio": 0,
             "logging_steps": 1, "eval_steps": 0, "save_steps": 0, "seed": 1}
        h.update(hp)
        st, j = L.req("POST", "/v1/jobs", tok, {"name": name, "model": "tiny", "training_file": ds["id"],
                                                "device": "cpu", "hyperparameters": h,
                                                "lora": {"r": 2, "alpha": 4, "dropout": 0}})
        assert st == 200, (st, j)
        return j["id"]

    stopped = submit("plateau", patience=2, min_delta=0.01)
    full = submit("to-the-end", max_steps=3)
    for j in (stopped, full):
        wait_until(lambda: L.finished(j, tok), 120, "job " + j)
    js, jf = L.job(stopped, tok), L.job(full, tok)
    why = js.get("stop_reason") or ""
    R.check(js["status"] == "succeeded", "a plateau-stopped job succeeds", (js["status"], js.get("error")))
    R.check(why.startswith("early stop at step 3: train loss did not improve by 0.01 for 2 evaluations (best "),
            "GET /v1/jobs/{id} has the stop_reason", why)
    R.check(js["progress"]["step"] == 3 and js["progress"]["total_steps"] == 20, "the job shows the step it reached",
            js["progress"])
    R.check(jf["status"] == "succeeded" and "stop_reason" in jf and jf["stop_reason"] is None
            and jf["progress"]["step"] == 3, "a job run to its end has stop_reason null", jf)
    lst = {x["id"]: x for x in L.req("GET", "/v1/jobs?limit=10", tok)[1]["data"]}
    R.check(lst[stopped].get("stop_reason") == why and lst[full].get("stop_reason", 1) is None
            and lst[stopped]["spec"]["hyperparameters"]["patience"] == 2,
            "list items carry stop_reason and the spec", lst.get(stopped))
    evs = [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=100" % stopped, tok)[1]["data"]]
    R.check(why in evs and "job succeeded (stopped early)" in evs, "events tell the reason and the ending", evs)

    env = dict(os.environ, LORA_URL="http://127.0.0.1:%d" % L.port, LORA_TOKEN=tok,
               LORA_CONFIG=os.path.join(tmp, "lora.conf"))
    show = subprocess.run([lora, "show", stopped], capture_output=True, text=True, timeout=30, env=env)
    R.check(show.returncode == 0 and ("stop reason    " + why) in show.stdout, "lora show prints the stop reason",
            show.stdout + show.stderr)
    watch = subprocess.run([lora, "watch", stopped], capture_output=True, text=True, timeout=30, env=env)
    R.check(watch.returncode == 0 and ('stop_reason "%s"' % why) in watch.stdout, "lora watch prints the stop reason",
            watch.stdout + watch.stderr)
    show = subprocess.run([lora, "show", full], capture_output=True, text=True, timeout=30, env=env)
    R.check(show.returncode == 0 and "stop reason" not in show.stdout, "lora show: no stop reason line for a full run")
finally:
    L.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
