"""Generation servers (lora-worker serve, daemon/runner.c).

The process alone: garbage, non-object, field-type, unknown-model and
over-long request lines are each answered with one typed error object and the
process keeps answering; a streamed answer's pieces add up to its text; the
LRU under --max-bytes unloads the least recently used model and keeps what
fits. Through lorad: two chat completions in a row on a fine-tuned model give
the same text and the second loads nothing (lorad_gen_model_loads_total); a
killed server is restarted and the next request succeeds; a request past
gen_timeout_s fails with 504 and the next one succeeds; a stream's first text
arrives while its generation runs, and a stream past the deadline ends with an
error event. Prints the latency of
the first (model loaded) and second (cached) chat completion."""
import http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, ROOT, Lorad, Results, wait_until  # noqa: E402

R = Results()
worker = os.path.join(BUILD, "lora-worker")
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(worker):
    R.skip("gen_serve", "lorad or lora-worker not built in " + BUILD)
    R.finish()

tmp = tempfile.mkdtemp(prefix="lrserve.", dir="/tmp")


def mkmodel(name, seed, *shape):
    path = os.path.join(tmp, name)
    subprocess.run([worker, "mkmodel", "--arch", "llama", "--seed", str(seed), "--dtype", "f32", "--out", path]
                   + list(shape), check=True, capture_output=True, timeout=300)
    return path


class Serve:
    """One lora-worker serve: send a request line, read answer lines."""

    def __init__(self, *args):
        self.p = subprocess.Popen([worker, "serve", "--threads", "1"] + list(args), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.hello = json.loads(self.p.stdout.readline())

    def send(self, line):
        self.p.stdin.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
        self.p.stdin.flush()

    def answer(self):
        """(deltas, final) of the next request."""
        deltas = []
        while True:
            o = json.loads(self.p.stdout.readline())
            if "delta" in o:
                deltas.append(o)
            else:
                return deltas, o

    def ask(self, rq):
        self.send(rq)
        return self.answer()[1]

    def close(self):
        self.p.stdin.close()
        return self.p.wait(timeout=30)


def metric(L, name):
    st, text = L.req("GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else str(text)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None


L = None
try:
    a, b = mkmodel("a", 1), mkmodel("b", 2)
    ok_rq = {"id": 100, "model": a, "prompt": "Hello", "max_new_tokens": 8}

    # ---- the process alone: bad requests ----
    S = Serve("--backend", "cpu")
    R.check(S.hello.get("serve", {}).get("backend") == "cpu", "serve says its backend first", S.hello)
    bad = [
        (b"this is not json\n", None, "invalid", "request"),
        (b"[1, 2, 3]\n", None, "invalid", "request"),
        (b"\xff\xfe garbage bytes\n", None, "invalid", "request"),
        ({"id": 1, "prompt": "x"}, 1, "invalid", "model"),
        ({"id": 2, "model": a}, 2, "invalid", "prompt"),
        ({"id": 3, "model": a, "prompt": "x", "max_new_tokens": "many"}, 3, "invalid", "max_new_tokens"),
        ({"id": 4, "model": a, "prompt": "x", "stop": "s"}, 4, "invalid", "stop"),
        ({"id": 5, "model": a, "prompt": "x", "template": "nope"}, 5, "invalid", "template"),
        ({"id": 6, "model": os.path.join(tmp, "no-such-model"), "prompt": "x"}, 6, None, "model"),
        ({"id": 7, "model": a, "adapter": os.path.join(tmp, "no-such-adapter"), "prompt": "x"}, 7, None, "adapter"),
        ({"id": 8, "model": a, "prompt": "x", "prompts_file": "/dev/null"}, 8, "invalid", "prompt"),
    ]
    for line, want_id, code, param in bad:
        S.send(line)
        deltas, o = S.answer()
        e = o.get("error") or {}
        R.check(not deltas and o.get("id") == want_id and e.get("param") == param and
                (code is None or e.get("code") == code) and e.get("message"),
                "serve: a bad request (%s) gets one error object naming %s" % (str(line)[:40], param), o)
        fine = S.ask(ok_rq)
        R.check(fine.get("id") == 100 and fine.get("tokens", 0) > 0, "serve: ... and the next request is answered",
                fine)
    S.send(b"x" * (9 << 20) + b"\n")  # over SERVE_MAX_LINE (8 MiB)
    deltas, o = S.answer()
    R.check(o.get("error", {}).get("code") == "too_big" and o.get("id") is None,
            "serve: a 9 MiB line is skipped with one error", o)
    fine = S.ask(ok_rq)
    R.check(fine.get("tokens", 0) > 0 and fine.get("loaded") == 0,
            "serve: after it, requests are answered with the model still loaded", fine)
    S.send(b"\n\n")  # empty lines are no requests
    # streamed: the pieces add up to the text, and a stop string never shows
    for stop in ([], [" "], ["e"]):
        S.send({"id": 200, "model": a, "prompt": "Tell me a story", "max_new_tokens": 40, "stream": True,
                "stop": stop})
        deltas, o = S.answer()
        S.send({"id": 201, "model": a, "prompt": "Tell me a story", "max_new_tokens": 40, "stop": stop})
        _, plain = S.answer()
        joined = "".join(d["delta"] for d in deltas)
        R.check(o.get("id") == 200 and joined == o.get("text") == plain.get("text") and
                all(d["id"] == 200 for d in deltas) and (stop or len(deltas) > 1),
                "serve: streamed pieces (%d) add up to the text (stop %s)" % (len(deltas), stop),
                (joined, o, plain.get("text")))
    R.check(S.close() == 0, "serve: exits 0 when stdin closes")

    # ---- the LRU ----
    size = sum(os.path.getsize(os.path.join(a, f)) for f in os.listdir(a) if f.endswith(".safetensors"))
    S = Serve("--backend", "cpu", "--max-bytes", str(int(size * 1.5)))  # room for one
    seq = [S.ask(dict(ok_rq, model=m)) for m in (a, a, b, a)]
    R.check([o.get("loaded") for o in seq] == [1, 0, 1, 1] and [o.get("evicted") for o in seq] == [0, 0, 1, 1] and
            all(o.get("cached") == 1 for o in seq), "LRU, room for one: a, a (cached), b (a unloaded), a (b unloaded)",
            seq)
    S.close()
    S = Serve("--backend", "cpu", "--max-bytes", str(size * 2 + 1000))  # room for two
    c = mkmodel("c", 3)
    seq = [S.ask(dict(ok_rq, model=m)) for m in (a, b, a, c, a, b)]
    R.check([o.get("loaded") for o in seq] == [1, 1, 0, 1, 0, 1] and seq[3].get("evicted") == 1 and
            seq[3].get("cached") == 2, "LRU, room for two: a b a c unloads b (least recently used), a stays", seq)
    S.close()
    S = Serve("--backend", "cpu", "--max-bytes", "1K")
    seq = [S.ask(ok_rq) for _ in range(2)]
    R.check(all(o.get("tokens", 0) > 0 and o.get("loaded") == 1 and o.get("cached") == 0 for o in seq),
            "a model over the whole budget is answered with, then unloaded", seq)
    S.close()

    # ---- through lorad ----
    big = mkmodel("big", 4, "--layers", "8", "--hidden", "512", "--heads", "8", "--kv-heads", "8",
                  "--intermediate", "1408")
    L = Lorad(worker, workers="cpu", extra=["--worker-threads", "1", "--gen-timeout-s", "3", "--gen-backend", "cpu"])
    alice = L.admin("user", "add", "alice").split()[-1]
    L.admin("model", "add", "demo-tiny", a)
    L.admin("model", "add", "big", big)
    L.start()
    rows = open(os.path.join(ROOT, "examples", "demo.jsonl"), "rb").read()
    st, ds = L.req("POST", "/v1/datasets?filename=demo.jsonl", alice, raw=rows)
    assert st == 200, (st, ds)
    st, job = L.req("POST", "/v1/jobs", alice, {
        "name": "serve", "model": "demo-tiny", "training_file": ds["id"], "device": "cpu",
        "hyperparameters": {"max_steps": 4, "save_steps": 100, "logging_steps": 1, "eval_steps": 1000,
                            "batch_size": 2, "max_seq_len": 64, "seed": 3, "val_ratio": 0.0}})
    assert st == 200, (st, job)
    wait_until(lambda: L.finished(job["id"], alice), 300, "the job")
    ft = L.req("GET", "/v1/fine_tuning/jobs/" + job["id"], alice)[1].get("fine_tuned_model")
    R.check(bool(ft), "the job succeeded with a fine-tuned model", ft)

    def chat(model, max_tokens=24, **kw):
        body = dict({"model": model, "max_tokens": max_tokens, "temperature": 0,
                     "messages": [{"role": "user", "content": "What colour is milk?"}]}, **kw)
        t0 = time.time()
        st, o = L.req("POST", "/v1/chat/completions", alice, body)
        return st, o, time.time() - t0

    loads0, starts0 = metric(L, "lorad_gen_model_loads_total"), metric(L, "lorad_gen_server_starts_total")
    s1, o1, t1 = chat(ft)
    loads1 = metric(L, "lorad_gen_model_loads_total")
    s2, o2, t2 = chat(ft)
    loads2 = metric(L, "lorad_gen_model_loads_total")
    text = lambda o: o["choices"][0]["message"]["content"] if isinstance(o, dict) and "choices" in o else None
    R.check(s1 == s2 == 200 and text(o1) is not None and text(o1) == text(o2) and starts0 == 0,
            "two chat completions in a row on the fine-tuned model: the same text", (s1, o1, s2, o2))
    R.check(loads0 == 0 and loads1 == 1 and loads2 == 1,
            "the first loads the model (lorad_gen_model_loads_total 0 -> 1), the second is served without a reload",
            (loads0, loads1, loads2))
    print("latency: 1st chat completion %.0f ms (model loaded), 2nd %.0f ms (cached), %d tokens each"
          % (t1 * 1000, t2 * 1000, o2.get("usage", {}).get("completion_tokens", 0)))

    # streamed through lorad: several content chunks that add up to the plain answer
    rq = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % L.port, method="POST",
                                data=json.dumps({"model": ft, "max_tokens": 24, "temperature": 0, "stream": True,
                                                 "messages": [{"role": "user", "content": "What colour is milk?"}]}
                                                ).encode(),
                                headers={"Authorization": "Bearer " + alice, "Content-Type": "application/json"})
    with urllib.request.urlopen(rq, timeout=60) as r:
        events = [ln[6:] for ln in r.read().decode().split("\n") if ln.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
              if json.loads(e)["choices"]]
    R.check(events and events[-1] == "[DONE]" and "".join(pieces) == text(o1) and
            sum(1 for p in pieces if p) > 1, "a streamed chat: content chunks as generated, adding up to the answer",
            events[:4])

    # a client that leaves mid-stream: its answer is read to the end and
    # dropped, the server stays (no restart) and the next chat is answered
    starts = metric(L, "lorad_gen_server_starts_total")
    conn = http.client.HTTPConnection("127.0.0.1", L.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": ft, "max_tokens": 1024, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "Tell me everything"}]}),
        {"Authorization": "Bearer " + alice, "Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.readline()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_until(lambda: metric(L, "lorad_gen_running") == 0, 30, "the abandoned generation to end")
    s6, o6, _ = chat(ft)
    R.check(resp.status == 200 and first.startswith(b"data: ") and s6 == 200 and text(o6) == text(o1) and
            metric(L, "lorad_gen_server_starts_total") == starts,
            "a client that leaves mid-stream: the next chat is answered by the same servers", (first, s6, o6))

    # a killed server is restarted and the next request succeeds
    def servers():
        out = []
        for pid in os.listdir("/proc"):
            try:
                cmd = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
                ppid = int(open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == L.proc.pid and len(cmd) > 1 and cmd[1] == b"serve":
                out.append(int(pid))
        return out
    pids = servers()
    R.check(len(pids) == 1, "one generation server runs (started on first use)", pids)
    for p in pids:
        os.kill(p, signal.SIGKILL)
    time.sleep(0.2)
    s3, o3, _ = chat(ft)
    R.check(s3 == 200 and text(o3) == text(o1), "after the server is killed, the next chat succeeds, same text",
            (s3, o3))
    R.check(metric(L, "lorad_gen_server_starts_total") == starts + 1 and servers() and servers() != pids,
            "... on a fresh server (lorad_gen_server_starts_total +1)", (starts0, servers(), pids))

    # past the deadline: 504, the server is restarted, the next request succeeds
    s4, o4, t4 = chat("big", max_tokens=1024)
    R.check(s4 == 504 and isinstance(o4, dict) and o4.get("error", {}).get("code") == "timeout",
            "a chat past gen_timeout_s (3 s) fails with 504 timeout", (s4, o4, t4))
    s5, o5, _ = chat(ft, max_tokens=4)
    R.check(s5 == 200 and text(o5) is not None, "the next chat succeeds", (s5, o5))
    R.check(metric(L, "lorad_gen_server_starts_total") == starts + 2, "... on a fresh server", starts)

    # a stream sends text while the generation runs, and one past the
    # deadline ends with an error event the SDKs raise
    conn = http.client.HTTPConnection("127.0.0.1", L.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": "big", "max_tokens": 1024, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "Tell me everything"}]}),
        {"Authorization": "Bearer " + alice, "Content-Type": "application/json"})
    resp = conn.getresponse()
    first = []
    while not any(b'"content":"' in e and b'"content":""' not in e for e in first):
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            first.append(line)
    running = metric(L, "lorad_gen_running")
    rest = [ln for ln in resp.read().split(b"\n") if ln.startswith(b"data: ")]
    conn.close()
    R.check(resp.status == 200 and first and running == 1,
            "a streamed chat's first text arrives while its generation still runs", (first, running))
    last = json.loads(rest[-1][6:]) if rest and rest[-1] != b"data: [DONE]" else {}
    R.check(last.get("error", {}).get("code") == "timeout" and last["error"].get("type") == "server_error",
            "... and past gen_timeout_s it ends with an error event (code timeout)", rest[-2:])
    s7, o7, _ = chat(ft, max_tokens=4)
    R.check(s7 == 200 and text(o7) == text(o5), "the next chat succeeds", (s7, o7))
finally:
    if L:
        L.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
