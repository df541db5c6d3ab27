"""A job submitted while lorad's workers are still starting waits without a
false alarm: its waiting_reason says a worker is starting, no event claims
that lorad has no worker for it, and it runs once the worker is up."""
import os, stat, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until  # noqa: E402

R = Results()
worker = os.path.join(BUILD, "lora-worker")
tmp = tempfile.mkdtemp(prefix="lrstart.", dir="/tmp")
slow = os.path.join(tmp, "slow-worker")
with open(slow, "w") as f:  # a worker that takes 4 s to come up
    f.write("#!/bin/sh\nsleep 4\nexec %s \"$@\"\n" % worker)
os.chmod(slow, stat.S_IRWXU)
model = os.path.join(tmp, "model")
subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model], check=True,
               capture_output=True, timeout=120)
L = Lorad(slow, workers="cpu")
try:
    tok = L.admin("user", "add", "alice").splitlines()[-1]
    L.admin("model", "add", "tiny", model)
    L.start()
    rows = b'{"prompt":"a","completion":"b"}\n{"prompt":"c","completion":"d"}\n'
    st, ds = L.req("POST", "/v1/datasets?filename=a.jsonl", tok, raw=rows)
    st, j = L.req("POST", "/v1/jobs", tok, {"model": "tiny", "training_file": ds["id"],
                                            "hyperparameters": {"max_steps": 2, "val_ratio": 0}})
    R.check(st == 200, "submitted while the worker starts", (st, j))
    why = (j or {}).get("waiting_reason") or ""
    R.check("start" in why, "waiting_reason says a worker is starting", why)
    wait_until(lambda: L.finished(j["id"], tok), 120, "the job")
    evs = [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=100" % j["id"], tok)[1]["data"]]
    R.check(not [e for e in evs if "no worker of this lorad" in e or "dead" in e], "no false alarm in the events", evs)
    R.check(L.job(j["id"], tok)["status"] == "succeeded", "the job runs once the worker is up")
finally:
    L.cleanup()
    subprocess.run(["rm", "-rf", tmp])
R.finish()
