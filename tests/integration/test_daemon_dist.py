"""lorad with a worker of 2 ranks (--workers 2xcpu:1, started with mpirun):
a job with resources.devices 2 trains on it and its events and the worker
list show the ranks; kill -9 of one rank mid-job fails the worker over like
any dead worker and the job resumes from its checkpoint to a bitwise
identical adapter; a job asking for more devices than any worker has fails
saying how to get them; a one-device job runs on the 2-rank worker when it
is the only one. Skips without mpirun."""
import os, shutil, signal, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
if not shutil.which("mpirun"):
    R.skip("daemon_dist", "mpirun not installed (mk/deps.sh installs openmpi-bin)")
    R.finish()
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(worker):
    R.skip("daemon_dist", "lorad or lora-worker is not built")
    R.finish()

tmp = tempfile.mkdtemp(prefix="lrdist.", dir="/tmp")
model = os.path.join(tmp, "model")
subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
               check=True, capture_output=True, timeout=120)

L = Lorad(worker, workers="2xcpu:1")
try:
    ta = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", model)
    L.start()
    rows = "".join('{"messages":[{"role":"user","content":"count to %d"},{"role":"assistant","content":"%s"}]}\n'
                   % (i, " ".join(str(k) for k in range(i % 7 + 1))) for i in range(48)).encode()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", ta, raw=rows)
    R.check(st == 200, "dataset upload", (st, ds))
    fid = ds["id"]

    def job(steps, devices, name, seed=7):
        body = {"name": name, "model": "tiny", "training_file": fid, "device": "cpu",
                "hyperparameters": {"max_steps": steps, "save_steps": 4, "logging_steps": 1, "eval_steps": 1000,
                                    "batch_size": 2, "grad_accum": 2, "max_seq_len": 64, "seed": seed,
                                    "val_ratio": 0.1},
                "lora": {"r": 4, "alpha": 8}}
        if devices:
            body["resources"] = {"devices": devices}
        st, j = L.req("POST", "/v1/jobs", ta, body)
        assert st == 200, (st, j)
        return j["id"]

    def get(jid):
        return L.job(jid, ta)

    def done(jid):
        return L.finished(jid, ta)

    def events(jid):
        return [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % jid, ta)[1]["data"]]

    ref = job(40, 2, "ref")
    wait_until(lambda: done(ref), 600, "the 2-device job")
    R.check(get(ref)["status"] == "succeeded", "a job with resources.devices 2 succeeds on the 2-rank worker",
            (get(ref)["status"], (get(ref)["error"] or {}).get("message")))
    ev = events(ref)
    R.check(any("(2 ranks, mpirun)" in m for m in ev) and any("on 2 ranks (MPI)" in m for m in ev),
            "its events say it ran on 2 ranks over MPI", ev[:6])
    R.check((get(ref).get("spec") or {}).get("resources", {}).get("devices") == 2, "the job shows resources.devices 2",
            (get(ref).get("spec") or {}).get("resources"))
    ws = L.req("GET", "/v1/workers", ta)[1]["data"]
    R.check(any("x 2 ranks" in (w.get("device") or "") for w in ws), "the worker list shows 2 ranks",
            [w.get("device") for w in ws])

    k = job(40, 2, "killed")
    wait_until(lambda: (get(k)["last_checkpoint_step"] or 0) >= 8 or done(k), 600, "a checkpoint")
    if done(k):
        R.skip("rank kill -9", "the job finished before a rank could be killed")
    else:
        pid = [w["pid"] for w in L.req("GET", "/v1/workers", ta)[1]["data"] if w["id"] == get(k)["worker"]][0]
        ranks = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        R.check(len(ranks) == 2, "mpirun runs 2 ranks", ranks)
        os.kill(int(ranks[-1]), signal.SIGKILL)
        wait_until(lambda: done(k), 600, "the resumed job")
        kj, rj = get(k), get(ref)
        R.check(kj["status"] == "succeeded" and kj["retries"] == 1, "kill -9 of one rank: the job is re-queued "
                "and resumes from its checkpoint", (kj["status"], kj["retries"]))
        R.check(any("resuming from checkpoint" in m for m in events(k)), "it resumed from a checkpoint", events(k)[-8:])
        a1 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % ref, ta)[1]
        a2 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % k, ta)[1]
        R.check(kj["metrics"]["loss"] == rj["metrics"]["loss"], "same final loss as the uninterrupted run",
                (kj["metrics"]["loss"], rj["metrics"]["loss"]))
        R.check(isinstance(a1, bytes) and a1 == a2, "bitwise-identical adapter")

    big = job(8, 3, "too big")
    wait_until(lambda: done(big), 60, "the 3-device job")
    msg = (get(big)["error"] or {}).get("message", "")
    R.check(get(big)["status"] == "failed" and "3xcpu" in msg, "3 devices on a lorad of 2-rank workers fails, "
            "saying how to get them", msg)

    one = job(8, 0, "one device")
    wait_until(lambda: done(one), 300, "the 1-device job")
    R.check(get(one)["status"] == "succeeded", "a one-device job runs on the only (2-rank) worker",
            get(one)["status"])
except Exception as ex:
    R.check(False, "daemon dist flow", repr(ex))
finally:
    L.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
