"""The official openai SDK (node, pinned in tests/openai/package.json)
against a real lorad with one CPU worker on a tiny model: files, fine-tuning
jobs (supervised with a validation file, suffix, seed, metadata; DPO in
OpenAI's preference format), pause and resume, events, checkpoints, chat
and text completions, typed errors (tests/openai/sdk_flow.mjs). Then, on the
server's files: the paused and resumed job ended with the same adapter, bit
for bit, as the same job run without a pause."""
import json, os, shutil, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, ROOT, Lorad, Results  # noqa: E402

R = Results()
SDK = os.path.join(ROOT, "tests", "openai")
node = shutil.which("node")
if not node or not os.path.isdir(os.path.join(SDK, "node_modules", "openai")):
    R.skip("openai SDK flow", "needs node and tests/openai/node_modules (mk/deps.sh runs npm ci there)")
    R.finish()
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(os.path.join(BUILD, "lora-worker")):
    R.skip("openai SDK flow", "lorad or lora-worker not built in " + BUILD)
    R.finish()

tmp = tempfile.mkdtemp(prefix="lroai.", dir="/tmp")
# packing off: the flow counts bob's queued jobs and checks pause/resume bit
# for bit, both of which assume one job per worker (co-trained jobs start at
# once and equal their solo run to ~1e-7: test_daemon_pack.py).
L = Lorad(os.path.join(BUILD, "lora-worker"), workers="cpu",
          extra=["--max-queued-per-user", "2", "--http-threads", "16", "--packing", "off"])
try:
    model = os.path.join(tmp, "model")
    subprocess.run([os.path.join(BUILD, "lora-worker"), "mkmodel", "--arch", "llama", "--preset", "tiny", "--seed", "1",
                    "--dtype", "f32", "--out", model], check=True, capture_output=True, timeout=120)
    L.admin("model", "add", "demo-tiny", model)
    alice = L.admin("user", "add", "alice").split()[-1]
    bob = L.admin("user", "add", "bob").split()[-1]
    rows = [json.loads(x) for x in open(os.path.join(ROOT, "examples", "demo.jsonl"))]
    paths = {k: os.path.join(tmp, k + ".jsonl") for k in ("train", "valid", "dpo")}
    with open(paths["train"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:216])
    with open(paths["valid"], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[216:])
    with open(paths["dpo"], "w") as f:
        for r in rows[:40]:  # OpenAI's preference rows: the template preferred to a bare answer
            good = r["messages"][-1]["content"]
            bare = good.split("\n")[0].replace("Answer: ", "")
            f.write(json.dumps({"input": {"messages": r["messages"][:-1]},
                                "preferred_output": [{"role": "assistant", "content": good}],
                                "non_preferred_output": [{"role": "assistant", "content": bare}]}) + "\n")
    L.start()
    env = dict(os.environ, LORAD_URL="http://127.0.0.1:%d" % L.port, LORAD_TOKEN=alice, LORAD_TOKEN_BOB=bob,
               OAI_TRAIN=paths["train"], OAI_VALID=paths["valid"], OAI_DPO=paths["dpo"])
    out = subprocess.run([node, os.path.join(SDK, "sdk_flow.mjs")], env=env, capture_output=True, text=True,
                         timeout=900)
    result = {}
    for line in out.stdout.splitlines():
        if line.startswith("ok   "):
            R.check(True, "sdk: " + line[5:])
        elif line.startswith("FAIL "):
            R.check(False, "sdk: " + line[5:])
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    R.check(out.returncode == 0 and result, "the SDK flow exits 0", out.stderr[-2000:])
    def adapter(job):
        p = os.path.join(L.dir, "runs", job, "adapter_model.safetensors")
        return open(p, "rb").read() if os.path.exists(p) else b""
    if result.get("p") and result.get("u"):
        a, b = adapter(result["p"]), adapter(result["u"])
        R.check(len(a) > 1000 and a == b, "paused at step %s and resumed: the same adapter, bit for bit, as the "
                "uninterrupted run with the same seed" % result.get("paused_at"), (len(a), len(b)))
    else:
        R.check(False, "pause/resume adapters compared", "the SDK flow did not get that far")
    # README's "Moving from OpenAI fine-tuning" script, as printed there
    readme = open(os.path.join(ROOT, "README.md")).read()
    sec = readme.split("## Moving from OpenAI fine-tuning", 1)[-1]
    script = sec.split("```js\n", 1)[-1].split("```", 1)[0] if "```js\n" in sec else ""
    if R.check("fineTuning.jobs.create" in script, "README has the script"):
        path = os.path.join(SDK, ".readme-%d.mjs" % os.getpid())  # beside node_modules, to import openai
        try:
            with open(path, "w") as f:
                f.write(script)
            env2 = dict(env, URL="http://127.0.0.1:%d" % L.port, TOKEN=alice)
            rd = subprocess.run([node, path], env=env2, cwd=ROOT, capture_output=True, text=True, timeout=900)
        finally:
            os.unlink(path)
        R.check(rd.returncode == 0 and "\nAnswer: " in rd.stdout and "\nReason: " in rd.stdout and
                "metrics Step" in rd.stdout, "README's script runs unchanged and the tuned model answers in the "
                "template", (rd.returncode, rd.stdout[-800:], rd.stderr[-800:]))
    if result:
        # 16 chat requests 10 ms apart on 16 HTTP threads: max_generations (2)
        # run, RUNNER_GEN_QUEUE (8) wait for a slot, the rest get 429 with
        # Retry-After (the random base model rarely ends early: 1024 tokens keep
        # each one busy). Apart, not at once: libmicrohttpd gives a burst of
        # connections to one pool thread, which then serves them one by one.
        answers = []

        def ask(i):
            body = json.dumps({"model": "demo-tiny", "max_tokens": 1024, "temperature": 0,
                               "messages": [{"role": "user", "content": "What colour is ink?"}]}).encode()
            rq = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % L.port, data=body, method="POST",
                                        headers={"Authorization": "Bearer " + alice,
                                                 "Content-Type": "application/json"})
            time.sleep(0.01 * i)
            try:
                with urllib.request.urlopen(rq, timeout=300) as r:
                    answers.append((r.status, json.loads(r.read()), None))
            except urllib.error.HTTPError as e:
                answers.append((e.code, json.loads(e.read()), e.headers.get("Retry-After")))
        ts = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ok = [a for a in answers if a[0] == 200]
        busy = [a for a in answers if a[0] == 429]
        R.check(len(ok) + len(busy) == 16 and len(ok) >= 10 and busy and
                all(b[1]["error"]["type"] == "rate_limit_error" and b[2] == "1" for b in busy) and
                len({a[1]["choices"][0]["message"]["content"] for a in ok}) == 1,
                "16 chats 10 ms apart: 2 run, 8 wait for a slot (the same answer), the rest 429 with Retry-After",
                [(a[0], a[2]) for a in answers])
finally:
    L.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
