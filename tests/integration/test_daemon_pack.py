"""lorad's side of co-training (issue 19) against a real lorad whose one
worker offers room for 3 jobs in a pass.

The worker is tests/integration/fake_pack_agent.py, a stand-in agent that
speaks the packing contract (hello pack_max, joins, per-job heartbeats with
the pack, FAILED code busy) with a fake but deterministic trainer, so this
tests the daemon: the scheduler packs compatible jobs onto the worker, a job
with resources.co_train false trains alone, a cancel ends one job of the
pack, kill -9 of the worker requeues every job of the pack and each resumes
and ends with the adapter of its uninterrupted run, a busy answer requeues
without a retry, packing: off runs one job at a time, and the job object,
`lora show` and /metrics say which jobs shared a pass. The engine's own
equality (a packed job's adapter equals the job run alone) is the worker's
test.

Then the issue's acceptance with the real lora-worker when its agent
co-trains (--pack-max): 3 jobs with different ranks, learning rates, seeds
and step counts, first each alone (co_train false: the references), then
the same 3 packed, kill -9 of the worker mid-pack: every job requeues,
resumes and ends with its reference adapter (to 1e-6 relative in f32, the
norm of the difference over the norm of the reference; printed)."""
import array, json, math, os, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, FIXTURES, Lorad, Results, wait_until

R = Results()
agent = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_pack_agent.py")
if not os.path.exists(os.path.join(BUILD, "lorad")):
    R.skip("daemon_pack", "build lorad first (make)")
    R.finish()

ROW = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'


def setup(L):
    tok = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", os.path.join(FIXTURES, "models", "tiny-gpt2-hf"))
    L.start()
    st, ds = L.req("POST", "/v1/datasets?filename=chat.jsonl", tok, raw=ROW * 3)
    assert st == 200, (st, ds)
    return tok, ds["id"]


def submit(L, tok, fid, steps, seed, co_train=True, save=10):
    st, j = L.req("POST", "/v1/jobs", tok, {"model": "tiny", "training_file": fid, "resources": {"co_train": co_train},
                                            "hyperparameters": {"max_steps": steps, "save_steps": save, "seed": seed}})
    assert st == 200, (st, j)
    return j["id"]


def events(L, tok, jid):
    return [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % jid, tok)[1]["data"]]


def adapter(L, jid):
    with open(os.path.join(L.dir, "runs", jid, "adapter_model.safetensors")) as f:
        return f.read()


def metric(L, name):
    st, body = L.req("GET", "/metrics")
    for line in (body.decode() if isinstance(body, bytes) else str(body)).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def all_done(L, tok, ids):
    return all(L.finished(j, tok) for j in ids)


# --- packing: auto, one worker with room for 3 ---
L = Lorad(agent, workers="cpu", env={"LR_FAKE_STEP_MS": "40", "LR_FAKE_PACK_MAX": "3"})
try:
    tok, fid = setup(L)
    # 3 compatible jobs of different lengths, then one that opts out
    ids = [submit(L, tok, fid, 60 + 10 * i, seed=i + 1) for i in range(3)]
    solo = submit(L, tok, fid, 20, seed=9, co_train=False)
    wait_until(lambda: all(L.job(j, tok)["status"] == "running" for j in ids), 15, "three packed jobs running")
    R.check(len({L.job(j, tok)["worker"] for j in ids}) == 1, "3 compatible jobs share the one worker")
    R.check(L.job(solo, tok)["status"] == "queued", "a co_train: false job waits for the worker to be free",
            L.job(solo, tok)["status"])
    wait_until(lambda: all((L.job(j, tok)["pack"] or {}).get("jobs") for j in ids), 15, "packs recorded")
    R.check(metric(L, "lorad_packs_running") == 1, "/metrics: one pack running", metric(L, "lorad_packs_running"))
    wait_until(lambda: all_done(L, tok, ids + [solo]), 60, "all jobs")
    objs = {j: L.job(j, tok) for j in ids + [solo]}
    R.check(all(objs[j]["status"] == "succeeded" for j in objs), "every job succeeded",
            {j: o["status"] for j, o in objs.items()})
    R.check(all(sorted(objs[j]["pack"]["jobs"]) == sorted(ids) for j in ids),
            "job object: pack.jobs lists the jobs that shared the pass", [objs[j]["pack"] for j in ids])
    R.check(all(objs[j]["pack"]["steps"] > 0 and objs[j]["pack"]["id"] for j in ids), "pack id and packed steps",
            [objs[j]["pack"] for j in ids])
    R.check(objs[solo]["pack"] is None, "the co_train: false job trained alone (pack null)", objs[solo]["pack"])
    order = L.start_order(ids + [solo], tok)
    solo_ev = events(L, tok, solo)
    R.check(order[-1] == solo and any(e.startswith("assigned to worker w0") and "sharing" not in e for e in solo_ev),
            "the co_train: false job started after the pack, alone", (order, solo_ev))
    joined = [e for j in ids for e in events(L, tok, j) if "sharing its pass with" in e]
    R.check(len(joined) == 2, "two jobs joined the first one's pass (events say with whom)", joined)
    st, oai = L.req("GET", "/v1/fine_tuning/jobs/" + ids[0], tok)
    R.check(st == 200 and sorted(oai.get("pack", {}).get("jobs", [])) == sorted(ids),
            "the OpenAI-shaped job carries pack as an extension", oai.get("pack"))
    packed = metric(L, "lorad_packed_steps_total")
    R.check(packed is not None and packed >= sum(objs[j]["pack"]["steps"] for j in ids) > 0,
            "/metrics: lorad_packed_steps_total", packed)
    R.check(metric(L, "lorad_packs_running") == 0, "/metrics: no pack running after", metric(L, "lorad_packs_running"))
    lora = os.path.join(BUILD, "lora")
    if os.path.exists(lora):
        out = subprocess.run([lora, "show", ids[1]], capture_output=True, text=True, timeout=20,
                             env=dict(os.environ, LORA_URL="http://127.0.0.1:%d" % L.port, LORA_TOKEN=tok))
        line = [l for l in out.stdout.splitlines() if "shared a pass with" in l]
        R.check(out.returncode == 0 and line and ids[0] in line[0] and ids[2] in line[0] and ids[1] not in line[0],
                "lora show: shared a pass with the other two", out.stdout + out.stderr)
    else:
        R.skip("lora show", "build the lora CLI first")
    refs = {i: adapter(L, j) for i, j in enumerate(ids)}

    # --- cancel one job of a pack: the others finish ---
    c = [submit(L, tok, fid, 80, seed=20 + i) for i in range(3)]
    wait_until(lambda: all(L.job(j, tok)["status"] == "running" for j in c), 15, "second pack running")
    wait_until(lambda: (L.job(c[1], tok)["progress"]["step"] or 0) >= 10, 15, "some steps")
    st, _ = L.req("POST", "/v1/jobs/%s/cancel" % c[1], tok)
    wait_until(lambda: all_done(L, tok, c), 60, "second pack")
    R.check([L.job(j, tok)["status"] for j in c] == ["succeeded", "cancelled", "succeeded"],
            "cancel of one packed job: it is cancelled, the others succeed", [L.job(j, tok)["status"] for j in c])

    # --- kill -9 of the worker mid-pack: every job requeues, resumes, same adapters ---
    k = [submit(L, tok, fid, 60 + 10 * i, seed=i + 1) for i in range(3)]
    wait_until(lambda: all((L.job(j, tok)["last_checkpoint_step"] or 0) >= 20 for j in k), 30, "checkpoints")
    w = L.job(k[0], tok)["worker"]
    pid = [x["pid"] for x in L.req("GET", "/v1/workers", tok)[1]["data"] if x["id"] == w][0]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all_done(L, tok, k), 60, "killed pack's jobs")
    ko = [L.job(j, tok) for j in k]
    evs = [" | ".join(events(L, tok, j)) for j in k]
    R.check(all(o["status"] == "succeeded" and o["retries"] == 1 for o in ko) and
            all("killed by signal 9" in e and "resuming from checkpoint step" in e for e in evs),
            "worker kill -9: every job of the pack requeued and resumed from its checkpoint",
            ([(o["status"], o["retries"]) for o in ko], evs))
    R.check(all(adapter(L, k[i]) == refs[i] for i in range(3)), "each resumed job ends with its reference adapter")
    R.check(all(sorted(o["pack"]["jobs"]) == sorted(k) for o in ko), "they shared a pass again after the restart",
            [o["pack"] for o in ko])
finally:
    L.cleanup()

# --- a worker that says busy: the job goes back to the queue, not a retry ---
L = Lorad(agent, workers="cpu", env={"LR_FAKE_STEP_MS": "40", "LR_FAKE_PACK_MAX": "3", "LR_FAKE_ROOM": "1"})
try:
    tok, fid = setup(L)
    a = submit(L, tok, fid, 40, seed=1)
    wait_until(lambda: L.job(a, tok)["status"] == "running", 15, "first job running")
    b = submit(L, tok, fid, 10, seed=2)
    wait_until(lambda: any("no room" in e for e in events(L, tok, b)), 15, "busy answer")
    wait_until(lambda: all_done(L, tok, [a, b]), 60, "both jobs")
    bo = L.job(b, tok)
    R.check(bo["status"] == "succeeded" and bo["retries"] == 0 and L.start_order([a, b], tok) == [a, b],
            "busy: requeued without a retry, ran after", (bo["status"], bo["retries"], events(L, tok, b)))
finally:
    L.cleanup()

# --- packing: off: one job per worker even when it offers room ---
L = Lorad(agent, workers="cpu", env={"LR_FAKE_STEP_MS": "40", "LR_FAKE_PACK_MAX": "3"}, extra=["--packing", "off"])
try:
    tok, fid = setup(L)
    o = [submit(L, tok, fid, 15, seed=i + 1) for i in range(2)]
    wait_until(lambda: L.job(o[0], tok)["status"] == "running", 15, "first job running")
    R.check(L.job(o[1], tok)["status"] == "queued", "packing off: the second job waits")
    wait_until(lambda: all_done(L, tok, o), 60, "both jobs")
    R.check(all(L.job(j, tok)["pack"] is None for j in o), "packing off: no pack")
finally:
    L.cleanup()

# --- the real worker: kill -9 mid-pack, every job ends with its reference adapter ---
def tensors(path):
    """{name: floats} of an F32 safetensors file."""
    with open(path, "rb") as f:
        b = f.read()
    n = int.from_bytes(b[:8], "little")
    head = json.loads(b[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", v["dtype"]
        lo, hi = v["data_offsets"]
        a = array.array("f")
        a.frombytes(b[8 + n + lo:8 + n + hi])
        out[k] = a
    return out


def rel_diff(a, b):
    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        return float("inf")
    num = sum((x - y) ** 2 for k in ta for x, y in zip(ta[k], tb[k]))
    den = sum(y * y for k in tb for y in tb[k])
    return math.sqrt(num / den) if den else float("inf")


worker = os.path.join(BUILD, "lora-worker")
probe = subprocess.run([worker, "agent"], capture_output=True, text=True, timeout=10) if os.path.exists(worker) else None
if not probe or "--pack-max" not in probe.stderr:
    R.skip("real worker: kill -9 mid-pack", "lora-worker's agent does not co-train yet (no --pack-max)")
    R.finish()
tmp = tempfile.mkdtemp(prefix="lrpack.", dir="/tmp")
model = os.path.join(tmp, "model")
mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                    capture_output=True, text=True, timeout=120)
if mk.returncode:
    R.skip("real worker: kill -9 mid-pack", "lora-worker mkmodel failed: " + mk.stderr.strip()[:200])
    R.finish()
L = Lorad(worker, workers="cpu", extra=["--worker-threads", "1"])
try:
    tok = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", model)
    L.start()
    rows = "".join('{"messages":[{"role":"user","content":"count to %d"},{"role":"assistant","content":"%s"}]}\n'
                   % (i, " ".join(str(k) for k in range(i % 7 + 1))) for i in range(32)).encode()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", tok, raw=rows)
    fid = ds["id"]
    # rank, lr, seed, steps: long enough that the kill below (at the first
    # checkpoints) lands mid-pack on a quiet machine too
    shapes = [(2, 1e-3, 1, 192), (4, 5e-4, 2, 240), (8, 2e-3, 3, 288)]

    def real(i, co_train):
        r, lr, seed, steps = shapes[i]
        st, j = L.req("POST", "/v1/jobs", tok, {
            "model": "tiny", "training_file": fid, "device": "cpu", "resources": {"co_train": co_train},
            "hyperparameters": {"max_steps": steps, "save_steps": 4, "logging_steps": 1, "eval_steps": 1000,
                                "batch_size": 2, "max_seq_len": 64, "seed": seed, "learning_rate": lr,
                                "val_ratio": 0.1},
            "lora": {"r": r, "alpha": 2 * r}})
        assert st == 200, (st, j)
        return j["id"]

    ref = [real(i, False) for i in range(3)]
    wait_until(lambda: all_done(L, tok, ref), 600, "the reference runs")
    R.check(all(L.job(j, tok)["status"] == "succeeded" and L.job(j, tok)["pack"] is None for j in ref),
            "real worker: 3 reference runs, each alone", [(L.job(j, tok)["status"], L.job(j, tok)["error"]) for j in ref])
    pid = L.req("GET", "/v1/workers", tok)[1]["data"][0]["pid"]
    k = [real(i, True) for i in range(3)]
    # Checkpoint frames arrive at once (the pack's membership only with the
    # 2 s heartbeats): at the first checkpoints of all three the worker is
    # frozen, so that it is killed while every job is still mid-run.
    wait_until(lambda: all((L.job(j, tok)["last_checkpoint_step"] or 0) >= 4 for j in k), 300, "checkpoints")
    os.kill(pid, signal.SIGSTOP)
    R.check(all(L.job(j, tok)["status"] == "running" for j in k), "real worker: all three jobs mid-run at the kill",
            [(L.job(j, tok)["status"], L.job(j, tok)["progress"]) for j in k])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all_done(L, tok, k), 600, "the killed pack's jobs")
    ko = [L.job(j, tok) for j in k]
    evs = [" | ".join(events(L, tok, j)) for j in k]
    R.check(all(o["status"] == "succeeded" and o["retries"] == 1 for o in ko) and
            all("resuming from checkpoint step" in e for e in evs),
            "real worker kill -9 mid-pack: every job requeued and resumed", ([(o["status"], o["retries"]) for o in ko], evs))
    d = [rel_diff(os.path.join(L.dir, "runs", k[i], "adapter_model.safetensors"),
                  os.path.join(L.dir, "runs", ref[i], "adapter_model.safetensors")) for i in range(3)]
    print("     adapters vs references, |a - ref| / |ref|: %s" % ", ".join("%.3g" % x for x in d))
    R.check(all(x <= 1e-6 for x in d), "each resumed packed job ends with its reference adapter (1e-6 relative)", d)
    R.check(all(sorted((L.job(j, tok)["pack"] or {}).get("jobs") or []) == sorted(k) for j in k),
            "real worker: the three shared a pass", [L.job(j, tok)["pack"] for j in k])
finally:
    L.cleanup()
    subprocess.run(["rm", "-rf", tmp])
R.finish()
