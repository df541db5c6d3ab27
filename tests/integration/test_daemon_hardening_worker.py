"""lorad and its workers under cancels, shutdowns and a full disk (issue 12,
items 5, 6, 9, 13, 14), against a real lorad and real lora-workers:

- a job whose one optimizer step is 256 micro-batches (~20 s on one thread)
  is cancelled between micro-batches and ends `cancelled` within seconds,
  and so is an eval job generating 65,536 tokens;
- a worker that cannot stop (SIGSTOPped) is killed cancel_grace_s after the
  cancel, restarted, and its job ends `cancelled`, not re-queued;
- SIGTERM checkpoints a running job where it is; after the restart it
  resumes from that step (no step redone, no retry counted) and ends with
  the adapter and loss curve of an uninterrupted run, bit for bit;
- /v1/jobs/{id}/checkpoints lists only checkpoints that exist after
  save_total_limit deleted the older ones (and after one is deleted by hand);
- /v1/workers: heartbeats refresh last_seen; threads is the real count
  (worker_threads 0 means all cores), and `lora workers` shows it;
- on a 20 MB tmpfs filled up: /healthz says degraded with disk_free_bytes,
  /metrics has the gauge, uploads and new jobs get 507
  insufficient_storage, the running job is not left `running`, and once
  space returns uploads and jobs work again."""
import json, os, random, re, signal, sqlite3, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
lora = os.path.join(BUILD, "lora")
for b in (worker, lora, os.path.join(BUILD, "lorad")):
    if not os.path.exists(b):
        R.skip("daemon_hardening_worker", "%s is not built (make)" % b)
        R.finish()

tmp = tempfile.mkdtemp(prefix="lrhw.", dir="/tmp")
model = os.path.join(tmp, "model")
mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                    capture_output=True, text=True, timeout=120)
if mk.returncode:
    R.skip("daemon_hardening_worker", "lora-worker mkmodel failed: " + mk.stderr.strip()[:200])
    R.finish()

# 2048 distinct rows of ~200 trained tokens: one step of 256 micro-batches
# of 8 rows at max_seq_len 256 takes the whole set.
rng = random.Random(1)
rows = "".join(json.dumps({"messages": [{"role": "user", "content": "row %d" % i}, {
    "role": "assistant", "content": " ".join(str(rng.randint(0, 10 ** 6)) for _ in range(40))}]}) + "\n"
    for i in range(2048)).encode()


def events(L, jid, tok):
    return [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % jid, tok)[1]["data"]]


def worker_row(L, tok, name="w0"):
    return [w for w in L.req("GET", "/v1/workers", tok)[1]["data"] if w["id"] == name][0]


def submit(L, tok, fid, **hp):
    h = {"max_steps": 10, "batch_size": 2, "max_seq_len": 64, "val_ratio": 0, "logging_steps": 1, "eval_steps": 0,
         "save_steps": 0, "seed": 3}
    h.update(hp)
    st, j = L.req("POST", "/v1/jobs", tok, {"model": "tiny", "training_file": fid, "device": "cpu",
                                            "hyperparameters": h, "lora": {"r": 2, "alpha": 4, "dropout": 0.1}})
    assert st == 200, (st, j)
    return j["id"]


def test_workers_cancel_shutdown_checkpoints():
    # worker_threads 0: the worker reports the cores it may use
    L = Lorad(worker, workers="cpu", extra=["--worker-threads", "0", "--cancel-grace-s", "2",
                                            "--heartbeat-timeout-s", "30"])
    try:
        tok = L.admin("user", "add", "alice")
        L.admin("model", "add", "tiny", model)
        L.start()
        st, ds = L.req("POST", "/v1/datasets?filename=long.jsonl", tok, raw=rows)
        R.check(st == 200 and ds["rows"] == 2048, "dataset upload", (st, ds))
        fid = ds["id"]

        # ---- item 14: last_seen and threads
        wait_until(lambda: worker_row(L, tok)["status"] == "idle", 30, "worker idle")
        w = worker_row(L, tok)
        cores = len(os.sched_getaffinity(0))
        R.check(w["threads"] == cores, "threads is the worker's real thread count (0 = all cores)", (w["threads"], cores))
        seen0 = w["last_seen"]
        time.sleep(3.2)
        seen1 = worker_row(L, tok)["last_seen"]
        R.check(seen1 - seen0 >= 2 and time.time() - seen1 < 2.5, "heartbeats refresh an idle worker's last_seen",
                (seen0, seen1, time.time()))
        env = dict(os.environ, LORA_URL="http://127.0.0.1:%d" % L.port, LORA_TOKEN=tok,
                   LORA_CONFIG=os.path.join(tmp, "lora.conf"), NO_COLOR="1")
        out = subprocess.run([lora, "workers"], capture_output=True, text=True, timeout=30, env=env).stdout
        line = [l for l in out.splitlines() if l.startswith("w0")]
        R.check(line and re.search(r"\s%d\s+\d+\s+\d+s ago\s*$" % cores, line[0]),
                "lora workers shows THREADS and a fresh SEEN", out)

        # ---- item 13: checkpoints that save_total_limit deleted are not listed
        cj = submit(L, tok, fid, max_steps=10, save_steps=2, save_total_limit=2)
        wait_until(lambda: L.finished(cj, tok), 120, "checkpoint job")
        steps = [c["step"] for c in L.req("GET", "/v1/jobs/%s/checkpoints" % cj, tok)[1]["data"]]
        ck_dir = os.path.join(L.dir, "runs", cj, "checkpoints")
        on_disk = sorted(int(d.split("-")[1]) for d in os.listdir(ck_dir) if re.fullmatch(r"checkpoint-\d+", d))
        R.check(steps == [6, 8] and on_disk == [6, 8], "only the checkpoints save_total_limit kept are listed",
                (steps, on_disk))
        subprocess.run(["rm", "-rf", os.path.join(ck_dir, "checkpoint-6")])
        steps = [c["step"] for c in L.req("GET", "/v1/jobs/%s/checkpoints" % cj, tok)[1]["data"]]
        R.check(steps == [8], "a checkpoint deleted by hand leaves the list", steps)

        # ---- item 5: cancel between the micro-batches of one long step
        lj = submit(L, tok, fid, max_steps=1, batch_size=8, grad_accum=256, max_seq_len=256)
        wait_until(lambda: L.job(lj, tok)["status"] == "running", 60, "long step running")
        time.sleep(2)  # into the step (setup takes well under a second)
        t0 = time.time()
        R.check(L.req("POST", "/v1/jobs/%s/cancel" % lj, tok)[0] == 200, "cancel the long step")
        wait_until(lambda: L.finished(lj, tok), 60, "cancel of a long step")
        took = time.time() - t0
        evs = events(L, lj, tok)
        R.check(L.job(lj, tok)["status"] == "cancelled" and took < 5 and "cancelled during step 1 (not applied)" in evs,
                "a 256-micro-batch step is cancelled within 5 s (took %.1f s)" % took, (took, evs))

        # ---- item 5: cancel between the tokens of a 65,536-token evaluation
        st, pf = L.req("POST", "/v1/datasets?filename=prompts.jsonl", tok,
                       raw=b'{"input":"Explain dropout.","output":"Dropout."}\n')
        st, ej = L.req("POST", "/v1/jobs", tok, {"model": "tiny", "training_file": pf["id"], "device": "cpu",
                                                 "method": {"type": "eval"},
                                                 "eval": {"generation": {"max_new_tokens": 65536}}})
        R.check(st == 200, "eval job with 65,536 new tokens", ej)
        wait_until(lambda: L.job(ej["id"], tok)["status"] == "running", 60, "eval running")
        time.sleep(2)
        t0 = time.time()
        L.req("POST", "/v1/jobs/%s/cancel" % ej["id"], tok)
        wait_until(lambda: L.finished(ej["id"], tok), 60, "cancel of a long generation")
        took = time.time() - t0
        evs = events(L, ej["id"], tok)
        R.check(L.job(ej["id"], tok)["status"] == "cancelled" and took < 5 and
                any(e.startswith("cancelled after 0 of 1 generations") for e in evs),
                "a 65,536-token generation is cancelled within 5 s (took %.1f s)" % took, (took, evs))

        # ---- item 5: a worker that does not stop is killed after cancel_grace_s
        kj = submit(L, tok, fid, max_steps=1, batch_size=8, grad_accum=256, max_seq_len=256)
        wait_until(lambda: L.job(kj, tok)["status"] == "running", 60, "job to stop")
        pid = worker_row(L, tok)["pid"]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.time()
        L.req("POST", "/v1/jobs/%s/cancel" % kj, tok)
        wait_until(lambda: L.finished(kj, tok), 30, "cancel of a stuck worker")
        took = time.time() - t0
        kjob = L.job(kj, tok)
        evs = events(L, kj, tok)
        R.check(kjob["status"] == "cancelled" and kjob["retries"] == 0 and 1.5 < took < 5 and
                any("did not stop within cancel_grace_s (2 s)" in e for e in evs),
                "a stopped worker is killed 2 s after the cancel and the job ends cancelled (took %.1f s)" % took,
                (kjob["status"], took, evs))
        wait_until(lambda: worker_row(L, tok)["status"] == "idle" and worker_row(L, tok)["pid"] != pid, 20,
                   "worker restarted")
        R.check(True, "the killed worker is restarted")

        # ---- item 9: SIGTERM checkpoints; the job resumes there after the restart
        spec = dict(max_steps=60, batch_size=8, grad_accum=2, max_seq_len=256, logging_steps=7, save_steps=1000)
        ref = submit(L, tok, fid, **spec)
        wait_until(lambda: L.finished(ref, tok), 300, "reference run")
        sj = submit(L, tok, fid, **spec)
        wait_until(lambda: L.job(sj, tok)["progress"]["step"] >= 10 or L.finished(sj, tok), 300, "step 10")
        if L.finished(sj, tok):
            R.skip("shutdown resume", "the job finished before lorad could be stopped")
            return
        before = L.job(sj, tok)["progress"]["step"]
        t0 = time.time()
        L.proc.send_signal(signal.SIGTERM)
        L.proc.wait(timeout=30)
        R.check(time.time() - t0 < 10, "lorad stops within 10 s of SIGTERM", time.time() - t0)
        L.start()
        evs = events(L, sj, tok)
        stop_ev = [e for e in evs if e.startswith("stopped after step ")]
        n = int(stop_ev[0].split()[3]) if stop_ev else -1
        R.check(n >= before and ("stopped for shutdown; will resume from the checkpoint at step %d" % n) in evs and
                not any("cancelled after step" in e for e in evs),
                "SIGTERM: checkpoint at step %d, 'stopped for shutdown; will resume'" % n, evs)
        wait_until(lambda: L.finished(sj, tok), 300, "resumed job")
        evs = events(L, sj, tok)
        sjob, rjob = L.job(sj, tok), L.job(ref, tok)
        R.check(sjob["status"] == "succeeded" and sjob["retries"] == 0 and
                ("resumed from checkpoint at step %d" % n) in evs, "the job resumes from that step, no retry counted",
                (sjob["status"], sjob["retries"], evs))
        a1 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % ref, tok)[1]
        a2 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % sj, tok)[1]
        R.check(isinstance(a1, bytes) and a1 == a2, "the adapter equals the uninterrupted run's, bit for bit")
        curve = lambda j: (lambda s: list(zip(s["steps"], s["values"])))(
            L.req("GET", "/v1/jobs/%s/metrics?names=loss" % j, tok)[1]["series"][0])
        c1, c2 = curve(ref), curve(sj)
        R.check(len(c1) == 9 and c1 == c2,
                "the logged loss curve equals the uninterrupted run's (log window kept across the stop)",
                (c1[-3:], c2[-3:]))
    except Exception as ex:
        R.check(False, "workers, cancel, shutdown, checkpoints", repr(ex))
        sys.stdout.write(open(os.path.join(L.dir, "lorad.log"), errors="replace").read()[-3000:])
    finally:
        L.cleanup()


def fill(path):
    """Writes into path until the file system is full; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12):
            block = b"\0" * size
            while True:
                try:
                    f.write(block)
                    n += size
                except OSError:
                    break
    return n


def test_disk_full():
    mnt = tempfile.mkdtemp(prefix="lrhw.disk.", dir="/tmp")
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt], capture_output=True, text=True)
    if m.returncode:
        R.skip("disk full", "cannot mount a tmpfs (needs root): " + m.stderr.strip()[:200])
        os.rmdir(mnt)
        return
    data = os.path.join(mnt, "data")
    os.makedirs(data)
    L = Lorad(worker, workers="cpu", data_dir=data, extra=["--worker-threads", "1", "--min-free-bytes", "4M",
                                                          "--heartbeat-timeout-s", "30"])
    filler = os.path.join(mnt, "filler")
    try:
        tok = L.admin("user", "add", "alice")
        L.admin("model", "add", "tiny", model)
        L.start()
        st, ds = L.req("POST", "/v1/datasets?filename=long.jsonl", tok, raw=rows)
        R.check(st == 200, "disk: dataset upload", (st, ds))
        h = L.req("GET", "/healthz")[1]
        R.check(h.get("status") == "ok" and h.get("disk_free_bytes", 0) > 4 << 20, "disk: healthz ok with space", h)
        # No metrics to wait for (nothing logged before step 1000): the next
        # checkpoint's write fails and the outcome goes out at once.
        jid = submit(L, tok, ds["id"], max_steps=100000, save_steps=20, logging_steps=1000)
        wait_until(lambda: L.job(jid, tok)["progress"]["step"] >= 3, 60, "job running")
        # Make lorad's next commit need new disk space: with the worker
        # paused, a reader's snapshot keeps SQLite from restarting its WAL
        # and a writer uses up the WAL's spare room. Then the worker's writes
        # fail, and so does the commit of its job's outcome.
        wpid = worker_row(L, tok)["pid"]
        os.kill(wpid, signal.SIGSTOP)
        reader = sqlite3.connect(os.path.join(data, "lorad.db"))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM jobs").fetchall()
        fill(filler)
        writer = sqlite3.connect(os.path.join(data, "lorad.db"), isolation_level=None)
        try:
            writer.execute("CREATE TABLE test_filler(x BLOB)")
            for _ in range(10000):
                writer.execute("INSERT INTO test_filler VALUES (zeroblob(16384))")
        except sqlite3.OperationalError:
            pass
        writer.close()
        os.kill(wpid, signal.SIGCONT)
        h = L.req("GET", "/healthz")[1]
        R.check(h.get("status") == "degraded" and h.get("disk_free_bytes", 1 << 30) < 4 << 20,
                "disk full: /healthz says degraded with disk_free_bytes", h)
        met = L.req("GET", "/metrics")[1]
        met = met.decode() if isinstance(met, bytes) else str(met)
        g = re.search(r"^lorad_disk_free_bytes (\d+)$", met, re.M)
        R.check(g and int(g.group(1)) < 4 << 20 and "lorad_disk_min_free_bytes 4194304" in met,
                "disk full: /metrics has the free-space gauge", met[:300])
        st, b = L.req("POST", "/v1/datasets?filename=more.jsonl", tok, raw=rows[:2000])
        R.check(st == 507 and isinstance(b, dict) and b["error"]["code"] == "insufficient_storage",
                "disk full: upload gets 507 insufficient_storage", (st, b))
        st, b = L.req("POST", "/v1/jobs", tok, {"model": "tiny", "training_file": ds["id"]})
        R.check(st == 507 and isinstance(b, dict) and b["error"]["code"] == "insufficient_storage",
                "disk full: a new job gets 507", (st, b))
        st, b = L.req("POST", "/v1/sweeps", tok, {"template": {"model": "tiny", "training_file": ds["id"]},
                                                  "parameters": {"lora.r": [2, 4]}})
        R.check(st == 507, "disk full: a new sweep gets 507", (st, b))
        # The worker's writes fail, so the job fails; its outcome cannot be
        # committed now, and must be once space is back (it used to stay
        # running for good, its worker already handed the next job).
        time.sleep(4)
        w = worker_row(L, tok)
        R.check(L.job(jid, tok)["status"] == "running" and w["job_id"] == jid,
                "disk full: the outcome waits on its worker, which takes no other job", (L.job(jid, tok)["status"], w))
        reader.rollback()
        reader.close()
        os.unlink(filler)
        t0 = time.time()
        wait_until(lambda: L.finished(jid, tok), 30, "the job to leave running")
        j = L.job(jid, tok)
        R.check(j["status"] == "failed" and "space" in ((j.get("error") or {}).get("message") or ""),
                "space back: the outcome is recorded within %.1f s (failed, saying why)" % (time.time() - t0),
                (j["status"], j.get("error")))
        log = open(os.path.join(data, "lorad.log"), errors="replace").read()
        R.check(re.search(r"recorded the outcome of %s after \d+ failed tries" % jid, log),
                "space back: lorad retried the commit", log[-1500:])
        h = L.req("GET", "/healthz")[1]
        R.check(h.get("status") == "ok", "space back: healthz ok", h)
        st, ds2 = L.req("POST", "/v1/datasets?filename=more.jsonl", tok, raw=b"".join(rows.splitlines(True)[:10]))
        R.check(st == 200, "space back: uploads work", (st, ds2))
        j2 = submit(L, tok, ds["id"], max_steps=5)
        wait_until(lambda: L.finished(j2, tok), 120, "a job after the disk was full")
        R.check(L.job(j2, tok)["status"] == "succeeded", "space back: a new job succeeds on the same worker")
        running = L.req("GET", "/v1/jobs?status=running", tok)[1]["data"]
        R.check(running == [], "no job left running", running)
    except Exception as ex:
        R.check(False, "disk full", repr(ex))
        try:
            sys.stdout.write(open(os.path.join(data, "lorad.log"), errors="replace").read()[-3000:])
        except OSError:
            pass
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
        L.cleanup()
        subprocess.run(["umount", mnt])
        os.rmdir(mnt)


try:
    test_workers_cancel_shutdown_checkpoints()
    test_disk_full()
finally:
    subprocess.run(["rm", "-rf", tmp])
R.finish()
