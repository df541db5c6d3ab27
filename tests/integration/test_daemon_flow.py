"""lorad end to end with two stand-in CPU workers (tests/unit/test_agent.c in
agent mode: a fake trainer with deterministic losses, checkpoints, resume
and an adapter file), so the daemon's scheduling, auth, supervision and
recovery are tested without a model. test_daemon_train.py repeats the
acceptance run with the real lora-worker."""
import os, signal, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, FIXTURES, Lorad, Results, wait_until

R = Results()
agent = os.path.join(BUILD, "tests", "test_agent")
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(agent):
    R.skip("daemon_flow", "build lorad and build/tests/test_agent first (make)")
    R.finish()

L = Lorad(agent, env={"LR_FAKE_STEP_MS": "50"}, extra=["--max-body-bytes", "8192"])
try:
    ta = L.admin("user", "add", "alice")
    tb = L.admin("user", "add", "bob")
    tr = L.admin("user", "add", "root", "--admin")
    L.admin("model", "add", "tiny", os.path.join(FIXTURES, "models", "tiny-gpt2-hf"))
    L.start()

    row = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
    st, ds = L.req("POST", "/v1/datasets?filename=chat.jsonl", ta, raw=row * 3)
    R.check(st == 200 and ds.get("rows") == 3 and ds.get("kind") == "messages", "dataset upload", (st, ds))
    fid = ds["id"]

    def job(token, steps, prio=0, name="", seed=42, save=5):
        st, j = L.req("POST", "/v1/jobs", token, {"name": name, "model": "tiny", "training_file": fid,
                                                  "priority": prio, "hyperparameters": {
                                                      "max_steps": steps, "save_steps": save, "seed": seed}})
        assert st == 200, (st, j)
        return j["id"]

    def get(jid):
        return L.job(jid, ta)

    def done(jid):
        return L.finished(jid, ta)

    def assign_order(ids):
        return L.start_order(ids, ta)

    # --- order, concurrency, success ---
    b1 = job(ta, 10, name="b1")
    b2 = job(ta, 90, name="b2")
    wait_until(lambda: L.req("GET", "/v1/jobs?status=running", ta)[1]["data"].__len__() == 2, 10, "two running")
    R.check(True, "two jobs run at once")
    j3 = job(tb, 5, 0, "j3")
    j4 = job(ta, 5, 5, "j4")
    j6 = job(ta, 5, 2, "j6")
    j5 = job(tb, 5, 2, "j5")
    t0 = time.time()
    for j in (b1, b2, j3, j4, j5, j6):
        wait_until(lambda: done(j), 60, "job " + j)
    order = assign_order([b1, b2, j3, j4, j5, j6])
    R.check(order == [b1, b2, j4, j5, j6, j3], "start order: priority, then fewest running, then oldest",
            [get(j)["name"] for j in order])
    R.check(all(get(j)["status"] == "succeeded" for j in (b1, b2, j3, j4, j5, j6)), "all six succeed")
    m = L.req("GET", "/v1/jobs/%s/metrics?names=loss&max_points=4" % b2, ta)[1]
    ser = m["series"][0] if m.get("series") else {}
    R.check(ser.get("name") == "loss" and len(ser["steps"]) == 4 and ser["steps"][0] == 1 and ser["steps"][-1] == 90
            and ser["total_points"] == 90, "metrics downsampled, first and last kept", ser.get("steps"))
    arts = L.req("GET", "/v1/jobs/%s/artifacts" % j3, ta)[1]["data"]
    R.check("adapter_model.safetensors" in [a["name"] for a in arts], "adapter artifact listed")
    st, body = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % j3, tb)
    R.check(st == 200 and b"adapter seed=42" in (body if isinstance(body, bytes) else b""), "adapter download", st)
    g = get(j3)
    R.check(g["progress"]["step"] == 5 and g["metrics"]["loss"] is not None and g["worker"] in ("w0", "w1"),
            "job object has progress, latest metrics, worker", g["progress"])

    # --- cancel rights ---
    long_job = job(ta, 400, name="long")
    wait_until(lambda: get(long_job)["status"] == "running", 10, "long job running")
    st, e = L.req("POST", "/v1/jobs/%s/cancel" % long_job, tb)
    R.check(st == 403 and e["error"]["code"] == "forbidden", "bob cannot cancel alice's job (403)", st)
    wait_until(lambda: get(long_job)["progress"]["step"] >= 3, 10, "some steps")
    st, _ = L.req("POST", "/v1/jobs/%s/cancel" % long_job, tr)
    R.check(st == 200, "admin cancels", st)
    wait_until(lambda: done(long_job), 5, "cancel to take effect")
    lj = get(long_job)
    pts = L.req("GET", "/v1/jobs/%s/metrics?names=loss" % long_job, ta)[1]["series"][0]["total_points"]
    R.check(lj["status"] == "cancelled" and pts >= 3 and pts < 400, "cancelled within a step, metrics kept", (lj["status"], pts))

    # --- bad input: 4xx JSON, nothing changes ---
    n_before = len(L.req("GET", "/v1/jobs?limit=1000", ta)[1]["data"])
    cases = [
        ("malformed JSON", "POST", "/v1/jobs", ta, b'{"model":', 400, None),
        ("unknown field", "POST", "/v1/jobs", ta, b'{"model":"tiny","training_file":"%s","x":1}' % fid.encode(), 400, "x"),
        ("wrong type", "POST", "/v1/jobs", ta, b'{"model":"tiny","training_file":"%s","priority":"hi"}' % fid.encode(), 400, "priority"),
        ("out of range", "POST", "/v1/jobs", ta, b'{"model":"tiny","training_file":"%s","lora":{"r":0}}' % fid.encode(), 400, "lora.r"),
        ("unknown model", "POST", "/v1/jobs", ta, b'{"model":"nope","training_file":"%s"}' % fid.encode(), 400, "model"),
        ("unknown dataset", "POST", "/v1/jobs", ta, b'{"model":"tiny","training_file":"file-000000000000"}', 400, "training_file"),
        ("oversized body", "POST", "/v1/jobs", ta, b'{"name":"' + b"x" * 20000 + b'"}', 413, None),
        ("broken dataset line", "POST", "/v1/datasets?filename=b.jsonl", ta, row + b'{"messages": nope}\n', 400, "file"),
        ("artifact traversal", "GET", "/v1/jobs/%s/artifacts/..%%2f..%%2florad.db" % j3, ta, None, (400, 404), None),
        ("missing token", "GET", "/v1/jobs", None, None, 401, None),
        ("wrong token", "POST", "/v1/jobs", "lr_nope", b'{}', 401, None),
    ]
    for name, meth, path, tok, raw, want, param in cases:
        st, e = L.req(meth, path, tok, raw=raw)
        ok = st in (want if isinstance(want, tuple) else (want,)) and isinstance(e, dict) and "message" in e.get("error", {})
        if param:
            ok = ok and e["error"].get("param") == param
        if name == "broken dataset line":
            ok = ok and "line 2" in e["error"]["message"]
        R.check(ok, "bad input: " + name, (st, e if not isinstance(e, bytes) else e[:200]))
    R.check(len(L.req("GET", "/v1/jobs?limit=1000", ta)[1]["data"]) == n_before and
            len(L.req("GET", "/v1/datasets", ta)[1]["data"]) == 1, "bad input changed nothing")

    # --- kill -9 of a worker mid-job: resume from checkpoint, same result ---
    ref = job(ta, 40, name="ref", seed=7)
    wait_until(lambda: done(ref), 30, "reference run")
    k = job(ta, 40, name="killed", seed=7)
    wait_until(lambda: (get(k)["last_checkpoint_step"] or 0) >= 10, 20, "a checkpoint")
    w = get(k)["worker"]
    pid = [x["pid"] for x in L.req("GET", "/v1/workers", ta)[1]["data"] if x["id"] == w][0]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: done(k), 40, "killed job to finish")
    kj = get(k)
    evs = " | ".join(e["message"] for e in L.req("GET", "/v1/jobs/%s/events" % k, ta)[1]["data"])
    R.check(kj["status"] == "succeeded" and kj["retries"] == 1 and "resum" in evs,
            "worker kill -9: job requeued and resumed from its checkpoint", (kj["status"], kj["retries"], evs))
    a1 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % ref, ta)[1]
    a2 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % k, ta)[1]
    R.check(a1 == a2 and kj["metrics"]["loss"] == get(ref)["metrics"]["loss"],
            "resumed run: same final loss, identical adapter bytes")
    wk = wait_until(lambda: [x for x in L.req("GET", "/v1/workers", ta)[1]["data"]
                             if x["id"] == w and x["status"] == "idle" and x["restarts"] >= 1], 15, "restart")
    R.check(bool(wk), "dead worker restarted")

    # --- kill -9 of lorad mid-job, restart: nothing lost, job finishes ---
    lj = job(ta, 60, name="survivor")
    wait_until(lambda: get(lj)["progress"]["step"] >= 10, 20, "progress")
    before_pts = L.req("GET", "/v1/jobs/%s/metrics?names=loss" % lj, ta)[1]["series"][0]["total_points"]
    n_jobs = len(L.req("GET", "/v1/jobs?limit=1000", ta)[1]["data"])
    L.kill9()
    time.sleep(0.5)
    L.start()
    after_pts = L.req("GET", "/v1/jobs/%s/metrics?names=loss" % lj, ta)[1]["series"][0]["total_points"]
    R.check(after_pts >= before_pts, "acknowledged metrics survive kill -9", (before_pts, after_pts))
    R.check(len(L.req("GET", "/v1/jobs?limit=1000", ta)[1]["data"]) == n_jobs and
            L.req("GET", "/v1/datasets/" + fid, ta)[0] == 200, "no job or dataset lost")
    wait_until(lambda: done(lj), 40, "re-queued job to finish")
    R.check(get(lj)["status"] == "succeeded", "re-queued job finishes after restart", get(lj)["status"])

    # --- SIGTERM: running job goes back to queued, clean exit ---
    sj = job(ta, 400, name="sigterm")
    wait_until(lambda: get(sj)["status"] == "running", 10, "running")
    L.proc.send_signal(signal.SIGTERM)
    rc = L.proc.wait(timeout=20)
    L.start()
    st = L.req("GET", "/v1/jobs/" + sj, ta)[1]
    R.check(rc == 0 and st["status"] in ("queued", "running") and st["retries"] == 0,
            "SIGTERM: clean exit, job re-queued without using a retry", (rc, st["status"], st["retries"]))
    L.req("POST", "/v1/jobs/%s/cancel" % sj, tr)

    # --- sweeps, workers, metrics endpoint ---
    st, sw = L.req("POST", "/v1/sweeps", ta, {"template": {"model": "tiny", "training_file": fid,
                                                           "hyperparameters": {"max_steps": 3}},
                                              "parameters": {"lora.r": [4, 8], "hyperparameters.seed": [1, 2]}})
    R.check(st == 200 and len(sw["jobs"]) == 4, "sweep makes the cartesian product", st)
    st, txt = L.req("GET", "/metrics")
    R.check(st == 200 and b"lorad_workers{status=" in txt and b"lorad_http_request_duration_seconds_count" in txt,
            "Prometheus /metrics")
except Exception as ex:  # a timeout or a failed assertion inside the flow
    R.check(False, "daemon flow", repr(ex))
    sys.stdout.write(open(os.path.join(L.dir, "lorad.log"), errors="replace").read()[-3000:])
finally:
    L.cleanup()
R.finish()
