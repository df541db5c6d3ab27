"""Soak: several users submit, cancel, upload and download while workers and
lorad are killed at random points and the data disk fills and frees.
At the end every job is in a final state, no acknowledged upload, job or
metric point is lost, every succeeded job's adapter equals the reference run's
bit for bit, and lorad's memory stayed under its bound.

The data directory is a small tmpfs (mounted here; the test needs root and
fails saying so otherwise). SOAK_SECONDS sets the chaos phase (default 40:
the short version in `make test`; `make soak` runs 300). SOAK_SEED repeats a
run. Prints a table of what it did and what held. Packing is off: a
co-trained job equals its reference to ~1e-7, not bit for bit, and its kill
-9 resume has its own test (test_daemon_pack.py)."""
import collections, hashlib, json, os, random, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, wait_until  # noqa: E402

R = Results()
SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()) % 100000)))
RSS_BOUND_MB = 100
FLOOR = 48 << 20
STEPS = 30
USERS = ["alice", "bob", "carol"]
FINAL = ("succeeded", "failed", "cancelled")

rng = random.Random(SEED)
did = collections.Counter()
answers = collections.Counter()


def rss_mb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def dataset_rows(n, salt):
    return "".join(json.dumps({"prompt": "item %d of %s: what is %d plus %d?" % (i, salt, i, i),
                               "completion": " %d" % (2 * i)}) + "\n" for i in range(n)).encode()


def spec(ds, user_seed=0):
    return {"name": "soak", "model": "tiny", "training_file": ds, "device": "cpu", "max_retries": 50,
            "hyperparameters": {"max_steps": STEPS, "batch_size": 4, "learning_rate": 1e-3, "max_seq_len": 64,
                                "val_ratio": 0, "logging_steps": 1, "eval_steps": 0, "save_steps": 2,
                                "save_total_limit": 2, "seed": 7 + user_seed},
            "lora": {"r": 4, "alpha": 8, "dropout": 0, "targets": "attn"}}


def sha(b):
    return hashlib.sha256(b).hexdigest() if isinstance(b, bytes) else None


def start(L, filler, full):
    """Starts lorad; on a disk with no space left it may refuse to start
    (SQLite cannot open its log): then the space comes back first, as an
    operator would make it."""
    try:
        L.start()
    except TimeoutError:
        if not full or not os.path.exists(filler):
            raise
        did["lorad refused to start on a full disk"] += 1
        L.kill9()
        os.unlink(filler)
        did["disk freed"] += 1
        L.start()


def main():
    if os.geteuid() != 0:
        R.check(False, "soak_setup", "the soak mounts a small tmpfs for the data directory and needs root")
        R.finish()
    worker = os.path.join(BUILD, "lora-worker")
    tmp = tempfile.mkdtemp(prefix="lrsoak.", dir="/tmp")
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    mnt = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", data], capture_output=True, text=True)
    if mnt.returncode:
        R.check(False, "soak_setup", "cannot mount a tmpfs for the data directory: " + mnt.stderr.strip())
        R.finish()
    print("soak: seed %d, %.0f s of chaos (SOAK_SEED=%d repeats it)" % (SEED, SECONDS, SEED))
    L = None
    filler = os.path.join(data, "filler")
    try:
        model = os.path.join(tmp, "model")
        mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                            capture_output=True, text=True, timeout=120)
        if mk.returncode:
            R.check(False, "soak_setup", "mkmodel: " + mk.stderr[:300])
            R.finish()
        L = Lorad(worker, workers="cpu:1,cpu:1", data_dir=data,
                  extra=["--min-free-bytes", str(FLOOR), "--cancel-grace-s", "5", "--max-uploads-per-user", "4",
                         "--packing", "off"])
        L.log.close()
        L.log = open(os.path.join(tmp, "lorad.log"), "ab")  # not on the disk that fills
        tokens = {u: L.admin("user", "add", u).splitlines()[-1] for u in USERS}
        L.admin("model", "add", "tiny", model)
        L.start()
        peak = [rss_mb(L.proc.pid)]

        # The reference: the deterministic job once, with nothing disturbing it.
        st, ds0 = L.req("POST", "/v1/datasets?filename=ref.jsonl", tokens["alice"], raw=dataset_rows(24, "ref"))
        assert st == 200, (st, ds0)
        ref_ids = {}
        for k in range(2):
            st, j = L.req("POST", "/v1/jobs", tokens["alice"], spec(ds0["id"], k))
            assert st == 200, (st, j)
            ref_ids[k] = j["id"]
        for k, jid in ref_ids.items():
            wait_until(lambda: L.finished(jid, tokens["alice"]), 180, "reference job")
        ref = {}
        for k, jid in ref_ids.items():
            st, b = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % jid, tokens["alice"])
            assert st == 200 and isinstance(b, bytes), (st, str(b)[:200])
            ref[k] = sha(b)
        print("soak: reference adapters %s" % ", ".join(v[:12] for v in ref.values()))

        jobs = {}      # id -> (user, variant)
        cancelled = set()
        ended = set()
        uploads = {}   # id -> (user, rows, bytes)
        datasets = {u: [ds0["id"]] for u in USERS}
        mismatches = []
        full_until = 0
        t_end = time.time() + SECONDS
        while time.time() < t_end:
            if L.proc.poll() is not None:
                rc = L.proc.returncode
                did["lorad found dead (exit %s)" % (rc if rc >= 0 else "signal %d" % -rc)] += 1
                start(L, filler, full_until)
                full_until = 0 if not os.path.exists(filler) else full_until
            peak.append(rss_mb(L.proc.pid))
            if full_until and time.time() > full_until:
                os.unlink(filler)
                full_until = 0
                did["disk freed"] += 1
            user = rng.choice(USERS)
            tok = tokens[user]
            a = rng.random()
            if a < 0.32:
                k = rng.randrange(2)
                st, j = L.req("POST", "/v1/jobs", tok, spec(ds0["id"], k))
                answers["submit %d" % st] += 1
                if st == 200:
                    jobs[j["id"]] = (user, k)
                did["submit"] += 1
            elif a < 0.47:
                n = rng.randrange(1, 40)
                body = dataset_rows(n, "%s-%d" % (user, rng.randrange(1 << 30)))
                st, d = L.req("POST", "/v1/datasets?filename=u.jsonl", tok, raw=body)
                answers["upload %d" % st] += 1
                if st == 200:
                    uploads[d["id"]] = (user, n, len(body))
                    datasets[user].append(d["id"])
                did["upload"] += 1
            elif a < 0.57 and jobs:
                live = [j for j in list(jobs)[-4:] if j not in ended]  # the newest are likely queued or running
                jid = rng.choice(live or list(jobs))
                st, _ = L.req("POST", "/v1/jobs/%s/cancel" % jid, tokens[jobs[jid][0]])
                answers["cancel %d" % st] += 1
                if st == 200:
                    cancelled.add(jid)
                did["cancel"] += 1
            elif a < 0.72 and jobs:
                jid = rng.choice(list(jobs))
                j = L.job(jid, tok)
                if isinstance(j, dict) and j.get("status") in FINAL:
                    ended.add(jid)
                if isinstance(j, dict) and j.get("status") == "succeeded":
                    st, b = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % jid, tok)
                    answers["download %d" % st] += 1
                    if st == 200 and sha(b) != ref[jobs[jid][1]]:
                        mismatches.append(jid)
                    did["download"] += 1
            elif a < 0.80:
                kids = children(L.proc.pid)
                if kids:
                    os.kill(rng.choice(kids), 9)
                    did["kill -9 a worker"] += 1
            elif a < 0.85:
                L.kill9()
                start(L, filler, full_until)
                full_until = 0 if not os.path.exists(filler) else full_until
                did["kill -9 lorad + restart"] += 1
            elif a < 0.89 and not full_until:
                free = shutil.disk_usage(data).free
                keep = rng.choice([24 << 20, 0])  # below the floor, or nothing left at all
                try:
                    with open(filler, "wb") as f:
                        f.truncate(0)
                        left = max(0, free - keep)
                        while left > 0:
                            w = f.write(b"\0" * min(left, 8 << 20))
                            left -= w
                except OSError:
                    pass
                full_until = time.time() + rng.uniform(0.5, 2.5)
                did["disk filled (%s)" % ("to the last byte" if keep == 0 else "below the floor")] += 1
            time.sleep(rng.uniform(0.02, 0.3))

        # Space back, lorad up, and every job must end.
        if os.path.exists(filler):
            os.unlink(filler)
        if L.proc.poll() is not None:
            start(L, filler, 0)
        admin_tok = tokens["alice"]
        pending = set(jobs)
        end = time.time() + 300
        while pending and time.time() < end:
            for jid in list(pending):
                j = L.job(jid, admin_tok)
                if isinstance(j, dict) and j.get("status") in FINAL:
                    pending.discard(jid)
            peak.append(rss_mb(L.proc.pid))
            time.sleep(0.5)
        R.check(not pending, "every_job_in_a_final_state", "%d still not final: %s" % (len(pending), sorted(pending)[:5]))

        status = collections.Counter()
        missing, bad_adapter, gaps, bad_fail = [], [], [], []
        for jid, (user, k) in jobs.items():
            j = L.job(jid, tokens[user])
            if not isinstance(j, dict) or "status" not in j:
                missing.append(jid)
                continue
            status[j["status"]] += 1
            if j["status"] == "succeeded":
                st, b = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % jid, tokens[user])
                if st != 200 or sha(b) != ref[k]:
                    bad_adapter.append(jid)
                st, m = L.req("GET", "/v1/jobs/%s/metrics?names=loss" % jid, tokens[user])
                steps = set()
                if st == 200 and isinstance(m, dict):
                    for s in m.get("series", []):
                        if s.get("name") == "loss":
                            steps.update(s.get("steps", []))
                if not set(range(1, STEPS + 1)) <= steps:
                    gaps.append((jid, sorted(steps)[:20]))
            elif j["status"] == "failed":
                err = json.dumps(j.get("error"))
                if "space" not in err.lower() and "disk" not in err.lower():
                    bad_fail.append((jid, err[:200]))
            elif j["status"] == "cancelled" and jid not in cancelled:
                bad_fail.append((jid, "cancelled without a cancel"))
        lost_uploads = []
        for did_, (user, n, nbytes) in uploads.items():
            st, d = L.req("GET", "/v1/datasets/" + did_, tokens[user])
            if st != 200 or d.get("rows") != n or d.get("bytes") != nbytes:
                lost_uploads.append((did_, st))
        R.check(not missing, "no_acknowledged_job_lost", missing)
        R.check(not bad_adapter and not mismatches, "succeeded_adapters_equal_the_reference",
                (bad_adapter, mismatches))
        R.check(not gaps, "no_acknowledged_metric_lost (loss at every step of every succeeded job)", gaps[:3])
        R.check(not lost_uploads, "no_acknowledged_upload_lost", lost_uploads[:5])
        R.check(not bad_fail, "failures_only_from_a_full_disk", bad_fail[:5])
        R.check(status["succeeded"] > 0, "some_jobs_succeeded_through_the_chaos", dict(status))
        R.check(max(peak) < RSS_BOUND_MB, "lorad_rss_under_%d_MB" % RSS_BOUND_MB, "peak %.1f MB" % max(peak))
        st, h = L.req("GET", "/healthz")
        R.check(st == 200 and h.get("status") == "ok", "healthz_ok_after_space_returns", (st, h))

        print("\n%-44s %8s" % ("what the soak did", "times"))
        for k, v in sorted(did.items()):
            print("%-44s %8d" % (k, v))
        print("%-44s %8s" % ("answers", ""))
        for k, v in sorted(answers.items()):
            print("  %-42s %8d" % (k, v))
        print("%-44s %8s" % ("jobs acknowledged", len(jobs)))
        for k, v in sorted(status.items()):
            print("  %-42s %8d" % (k, v))
        print("%-44s %8d" % ("uploads acknowledged", len(uploads)))
        print("%-44s %8.1f" % ("lorad peak RSS (MB)", max(peak)))
    finally:
        if L:
            L.stop()
            L.log.close()
        subprocess.run(["umount", "-l", data], capture_output=True)
        if not os.environ.get("LR_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    R.finish()


if __name__ == "__main__":
    main()
