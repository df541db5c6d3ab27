"""Co-training (issue 19) end to end with the real lora-worker: one CPU
worker (the agent's default --pack-max 4) under lorad. Three compatible jobs
(different ranks, learning rates, seeds and step counts) submitted together
share the worker's pass and each ends with the adapter it gets alone
(co_train: false, run one after another first) to 1e-6 relative (OpenBLAS's
rows are not bit for bit row-count invariant; test_pack_train has the
bit-for-bit case); then kill -9 of the worker mid-pack: every job requeues,
resumes from its checkpoint and again ends with its reference adapter."""
import json, os, signal, struct, subprocess, sys, tempfile
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(worker):
    R.skip("worker_pack", "build lorad and lora-worker first (make)")
    R.finish()

tmp = tempfile.mkdtemp(prefix="lrpack.", dir="/tmp")
model = os.path.join(tmp, "model")
subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
               check=True, capture_output=True, timeout=120)


def tensors(blob):
    """name -> float32 array of a safetensors file's bytes."""
    n = struct.unpack("<Q", blob[:8])[0]
    head = json.loads(blob[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a = array("f")
        s, e = v["data_offsets"]
        a.frombytes(blob[8 + n + s:8 + n + e])
        out[k] = a
    return out


def rel_diff(a, b):
    """The largest ||x - y|| / ||x|| over the adapters' tensors (1 when they differ in kind)."""
    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return 1.0
    worst = 0.0
    for k, x in ta.items():
        y = tb[k]
        if len(x) != len(y):
            return 1.0
        dd = sum((p - q) ** 2 for p, q in zip(x, y))
        aa = sum(p * p for p in x)
        worst = max(worst, (dd / aa) ** 0.5 if aa else dd ** 0.5)
    return worst


L = Lorad(worker, workers="cpu", extra=["--worker-threads", "1"])
try:
    tok = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", model)
    L.start()
    rows = "".join('{"messages":[{"role":"user","content":"count to %d"},{"role":"assistant","content":"%s"}]}\n'
                   % (i, " ".join(str(k) for k in range(i % 7 + 1))) for i in range(32)).encode()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", tok, raw=rows)
    assert st == 200, (st, ds)
    SHAPES = [(4, 2e-3, 1, 30), (8, 1e-3, 2, 36), (2, 5e-4, 3, 42)]  # r, lr, seed, steps

    def submit(i, co_train, name):
        r, lr, seed, steps = SHAPES[i]
        st, j = L.req("POST", "/v1/jobs", tok, {
            "name": name, "model": "tiny", "training_file": ds["id"], "resources": {"co_train": co_train},
            "hyperparameters": {"max_steps": steps, "save_steps": 6, "logging_steps": 1, "eval_steps": 1000,
                                "batch_size": 2, "max_seq_len": 64, "seed": seed, "learning_rate": lr,
                                "val_ratio": 0.1},
            "lora": {"r": r, "alpha": 2 * r}})
        assert st == 200, (st, j)
        return j["id"]

    def adapter(jid):
        return L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % jid, tok)[1]

    def events(jid):
        return [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % jid, tok)[1]["data"]]

    def done(ids):
        return all(L.finished(j, tok) for j in ids)

    refs = []
    for i in range(3):  # alone, one at a time
        refs.append(submit(i, False, "ref%d" % i))
        wait_until(lambda: done(refs), 600, "reference %d" % i)
    R.check(all(L.job(j, tok)["status"] == "succeeded" for j in refs), "references trained alone",
            [L.job(j, tok)["status"] for j in refs])
    ref_ad = [adapter(j) for j in refs]

    packed = [submit(i, True, "packed%d" % i) for i in range(3)]
    wait_until(lambda: done(packed), 600, "packed jobs")
    R.check(all(L.job(j, tok)["status"] == "succeeded" for j in packed), "packed jobs succeed",
            [(L.job(j, tok)["status"], L.job(j, tok).get("error")) for j in packed])
    shared = [any(e.startswith("co-training:") for e in events(j)) for j in packed]
    R.check(sum(shared) >= 2, "the jobs shared the worker's pass (co-training events)", shared)
    d = [rel_diff(ref_ad[i], adapter(packed[i])) for i in range(3)]
    R.check(all(x <= 1e-6 for x in d), "packed adapters equal the solo ones to 1e-6 relative", d)
    print("    packed vs alone, largest relative adapter difference: %s" % ["%.2g" % x for x in d])

    kill = [submit(i, True, "kill%d" % i) for i in range(3)]
    wait_until(lambda: all((L.job(j, tok)["last_checkpoint_step"] or 0) >= 12 for j in kill) or done(kill), 600,
               "checkpoints of the pack")
    w = L.job(kill[0], tok)["worker"]
    pid = [x["pid"] for x in L.req("GET", "/v1/workers", tok)[1]["data"] if x["id"] == w][0]
    os.kill(pid, signal.SIGSTOP)  # frozen: no job can finish between this check and the kill
    if any(L.job(j, tok)["status"] != "running" for j in kill):
        os.kill(pid, signal.SIGCONT)
        R.skip("worker kill -9 mid-pack", "a job finished before the worker could be frozen (test_daemon_pack.py "
               "kills a longer pack)")
    else:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: done(kill), 600, "resumed jobs")
        ko = [L.job(j, tok) for j in kill]
        R.check(all(o["status"] == "succeeded" and o["retries"] == 1 for o in ko),
                "kill -9 mid-pack: every job requeued and finished", [(o["status"], o["retries"]) for o in ko])
        d = [rel_diff(ref_ad[i], adapter(kill[i])) for i in range(3)]
        R.check(all(x <= 1e-6 for x in d), "each resumed job ends with its reference adapter (1e-6)", d)
finally:
    L.cleanup()
    subprocess.run(["rm", "-rf", tmp])
R.finish()
