"""Remote workers over TLS (issue 17): lorad with no local worker and a
worker_listen port with a self-signed certificate; lora-worker agent
--connect from a mount namespace where lorad's data directory and the model
do not exist (its own empty data directory), so it fetches model and
dataset, trains and uploads its checkpoints; kill -9 of it mid-job and a
second remote worker finishes the job with the adapter of the same job on
a local worker, bit for bit. Refusals: a wrong, a revoked and a user's
token, a worker without TLS, an untrusted certificate, plain TCP on a
non-loopback listener, a download tampered with on the way (a proxy flips
a byte: sha256 mismatch, nothing kept)."""
import json, os, select, shutil, signal, socket, ssl, struct, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, ROOT, Lorad, Results, free_port, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
lorad_bin = os.path.join(BUILD, "lorad")
for need, why in ((lorad_bin, "build lorad"), (worker, "build lora-worker"), ("/usr/bin/openssl", "apt-get install openssl"),
                  ("/usr/bin/unshare", "util-linux's unshare hides lorad's files from the worker")):
    if not os.path.exists(need):
        R.check(False, "prerequisite " + need, why)
        R.finish()

tmp = tempfile.mkdtemp(prefix="lrremote.", dir="/tmp")
hidden = os.path.join(tmp, "lorad-side")        # what only lorad sees
os.makedirs(hidden)
model = os.path.join(hidden, "model")
cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
gen = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True, text=True)
mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                    capture_output=True, text=True, timeout=120)
ns = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none %s && test ! -e %s" % (hidden, model)],
                    capture_output=True, text=True)
if gen.returncode or mk.returncode or ns.returncode:
    R.check(False, "setup (certificate, model, mount namespace)",
            (gen.stderr[-300:], mk.stderr[-300:], "unshare -m needs CAP_SYS_ADMIN: " + ns.stderr[-300:]))
    shutil.rmtree(tmp, ignore_errors=True)
    R.finish()

rows = "".join('{"messages":[{"role":"user","content":"count to %d"},{"role":"assistant","content":"%s"}]}\n'
               % (i, " ".join(str(k) for k in range(i % 7 + 1))) for i in range(32)).encode()
HP = {"max_steps": 200, "save_steps": 10, "logging_steps": 1, "eval_steps": 1000, "batch_size": 2, "max_seq_len": 64,
      "seed": 7, "val_ratio": 0.1}


def submit(L, token, fid, steps=None):
    hp = dict(HP, **({"max_steps": steps} if steps else {}))
    st, j = L.req("POST", "/v1/jobs", token, {"model": "tiny", "training_file": fid, "device": "cpu",
                                              "hyperparameters": hp, "lora": {"r": 4, "alpha": 8}})
    assert st == 200, (st, j)
    return j["id"]


def remote_worker(url, token, data_dir, name, ca=cert, extra=()):
    """A worker in its own mount namespace: lorad's side of tmp is an empty tmpfs there."""
    args = [worker, "agent", "--connect", url, "--token", token, "--data-dir", data_dir, "--name", name,
            "--threads", "1", "--heartbeat", "1"] + (["--ca", ca] if ca else []) + list(extra)
    cmd = "mount -t tmpfs none '%s' && exec %s" % (hidden, " ".join("'%s'" % a for a in args))
    return subprocess.Popen(["unshare", "-m", "sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def refused(p, timeout=30):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, err
    return p.returncode, err


# The reference: the same job on a local worker.
ref = Lorad(worker, workers="cpu", extra=["--worker-threads", "1"])
ref_adapter, ref_ck = None, None
try:
    t = ref.admin("user", "add", "alice")
    ref.admin("model", "add", "tiny", model)
    ref.start()
    st, ds = ref.req("POST", "/v1/datasets?filename=count.jsonl", t, raw=rows)
    rid = submit(ref, t, ds["id"])
    wait_until(lambda: ref.finished(rid, t), 600, "the reference job")
    ref_adapter = ref.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % rid, t)[1]
    ref_ck = sorted(os.listdir(os.path.join(ref.dir, "runs", rid, "checkpoints")))
    R.check(ref.job(rid, t)["status"] == "succeeded" and isinstance(ref_adapter, bytes), "reference job on a local worker")
finally:
    ref.cleanup()

wport = free_port()
url = "https://127.0.0.1:%d" % wport
os.makedirs(os.path.join(hidden, "lorad"))
L = Lorad(worker, workers="", data_dir=os.path.join(hidden, "lorad"),
          extra=["--worker-listen", "127.0.0.1:%d" % wport, "--tls-cert", cert, "--tls-key", key])
procs = []
try:
    ta = L.admin("user", "add", "alice")
    wtok = L.admin("worker-token", "add", "box1")
    gone = L.admin("worker-token", "add", "box2")
    L.admin("worker-token", "rm", "box2")
    L.admin("model", "add", "tiny", model)
    L.start()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", ta, raw=rows)
    fid = ds["id"]

    # ---- refusals ----
    rc, err = refused(remote_worker(url, "lw_" + "0" * 48, os.path.join(tmp, "wx"), "bad"))
    R.check(rc == 2 and "unknown or revoked worker token" in err, "a wrong worker token is refused", (rc, err))
    rc, err = refused(remote_worker(url, gone, os.path.join(tmp, "wx"), "bad"))
    R.check(rc == 2 and "unknown or revoked worker token" in err, "a revoked worker token is refused", (rc, err))
    rc, err = refused(remote_worker(url, ta, os.path.join(tmp, "wx"), "bad"))
    R.check(rc == 2 and "user's API token, not a worker token" in err, "a user's token is refused as a worker token",
            (rc, err))
    rc, err = refused(remote_worker(url, wtok, os.path.join(tmp, "wx"), "bad", ca=None))
    R.check(rc == 2 and "not trusted" in err, "an unverifiable certificate is refused by the worker", (rc, err))
    rc, err = refused(remote_worker(url.replace("https", "tcp"), wtok, os.path.join(tmp, "wx"), "bad"))
    log = open(os.path.join(L.dir, "lorad.log")).read()
    R.check(rc == 2 and "without a working TLS session was refused" in log, "a worker without TLS is refused",
            (rc, err, log[-500:]))
    bad = subprocess.run([lorad_bin, "serve", "--data-dir", os.path.join(tmp, "plain"), "--worker-listen", "0.0.0.0:0",
                          "--workers", "", "--migrations-dir", os.path.join(ROOT, "migrations")],
                         capture_output=True, text=True, timeout=20)
    R.check(bad.returncode != 0 and "remote workers need TLS" in bad.stderr,
            "plain TCP on a non-loopback worker_listen is refused", (bad.returncode, bad.stderr[-300:]))
    R.check(L.req("GET", "/v1/workers", ta)[1]["data"] == [], "no refused worker was registered",
            L.req("GET", "/v1/workers", ta)[1])

    # ---- a tampered download: a proxy flips the first byte of every file ----
    pport = free_port()
    pctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=cert)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", pport))
    lsock.listen(16)

    def read_frame(s):
        h = b""
        while len(h) < 4:
            c = s.recv(4 - len(h))
            if not c:
                return None
            h += c
        n = struct.unpack(">I", h)[0]
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                return None
            b += c
        return h + b

    def bridge(down, up, flip):
        """One thread per connection (an SSL socket is not for two threads):
        bytes both ways; flip: the first byte from lorad after its answer."""
        try:
            while True:
                ready = [s for s in (down, up) if s.pending()] or select.select([down, up], [], [], 60)[0]
                if not ready:
                    return
                for s in ready:
                    d = s.recv(65536)
                    if not d:
                        return
                    if s is up and flip:
                        d = bytes([d[0] ^ 1]) + d[1:]
                        flip = False
                    (up if s is down else down).sendall(d)
        except (OSError, ValueError):
            pass
        finally:
            down.close()
            up.close()

    def proxy_conn(raw):
        try:
            down = pctx.wrap_socket(raw, server_side=True)
            up = cctx.wrap_socket(socket.create_connection(("127.0.0.1", wport)), server_hostname="127.0.0.1")
            req = read_frame(down)
            up.sendall(req)
            down.sendall(read_frame(up))
            bridge(down, up, json.loads(req[4:]).get("type") == "get")
        except (OSError, ValueError, TypeError):
            pass  # the worker hung up on a bad download: what this part tests

    def proxy():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=proxy_conn, args=(c,), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    tj = submit(L, ta, fid, steps=4)
    wt = os.path.join(tmp, "wt")
    p = remote_worker("https://127.0.0.1:%d" % pport, wtok, wt, "tampered", extra=["--once"])
    procs.append(p)
    try:
        wait_until(lambda: L.finished(tj, ta) or p.poll() is not None, 60, "the tampered job")
    except TimeoutError:
        pass
    j = L.job(tj, ta)
    msg = (j["error"] or {}).get("message", "")
    blobs = os.listdir(os.path.join(wt, "cache", "blobs")) if os.path.isdir(os.path.join(wt, "cache", "blobs")) else []
    R.check(j["status"] == "failed" and "sha256 mismatch" in msg and "discarded" in msg,
            "a tampered download is refused (sha256 mismatch)", (j["status"], msg))
    R.check(blobs == [], "nothing of the tampered download is kept in the cache", blobs)
    refused(p)
    lsock.close()

    # ---- the job: remote worker 1 killed mid-job, remote worker 2 finishes it ----
    k = submit(L, ta, fid)
    w1dir, w2dir = os.path.join(tmp, "w1"), os.path.join(tmp, "w2")
    w1 = remote_worker(url, wtok, w1dir, "rw1")
    procs.append(w1)
    wait_until(lambda: (L.job(k, ta)["last_checkpoint_step"] or 0) >= 20 or L.finished(k, ta), 600, "a checkpoint")
    ws = L.req("GET", "/v1/workers", ta)[1]["data"]
    R.check(any(w["id"] == "rw1" and "remote, token box1" in w["device"] for w in ws), "/v1/workers lists the remote worker",
            ws)
    if L.finished(k, ta):
        R.check(False, "worker kill -9 mid-job", "the job finished before the worker could be killed")
    else:
        os.kill(w1.pid, signal.SIGKILL)
        w1.wait(timeout=10)
        run = os.path.join(L.dir, "runs", k, "checkpoints")
        ck = [d for d in os.listdir(run) if os.path.exists(os.path.join(run, d, "DONE"))] if os.path.isdir(run) else []
        R.check(ck, "checkpoints were uploaded to lorad", os.listdir(os.path.join(L.dir, "runs", k)))
        R.check(os.path.exists(os.path.join(w1dir, "cache", "blobs")) and
                any(os.path.islink(os.path.join(v, "model.safetensors"))
                    for v in [os.path.join(w1dir, "cache", "views", x) for x in os.listdir(os.path.join(w1dir, "cache", "views"))]),
                "the worker fetched the model into its cache")
        wait_until(lambda: L.job(k, ta)["status"] == "queued", 30, "the job queued again")
        w2 = remote_worker(url, wtok, w2dir, "rw2")
        procs.append(w2)
        wait_until(lambda: L.finished(k, ta), 600, "the job on the second worker")
        kj = L.job(k, ta)
        R.check(kj["status"] == "succeeded" and kj["retries"] == 1 and kj["worker"] == "rw2",
                "a second remote worker finishes the job", (kj["status"], kj["retries"], kj["worker"], kj["error"]))
        evs = [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % k, ta)[1]["data"]]
        R.check(any("remote worker rw1 disconnected" in m for m in evs) and any("resuming from checkpoint" in m for m in evs),
                "events: the disconnect and the resume", evs)
        run = os.path.join(L.dir, "runs", k, "checkpoints")
        ck = sorted(os.listdir(run))
        R.check(ck == ref_ck and all(os.path.exists(os.path.join(run, d, "DONE")) for d in ck),
                "lorad keeps the checkpoints a local run keeps (older ones deleted)", (ck, ref_ck))
        a2 = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % k, ta)[1]
        R.check(isinstance(a2, bytes) and a2 == ref_adapter, "the same adapter as on a local worker, bit for bit",
                (len(a2) if isinstance(a2, bytes) else a2, len(ref_adapter or b"")))
finally:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    L.cleanup()
    if not os.environ.get("LR_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)
R.finish()
