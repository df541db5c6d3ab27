"""Shared helpers of the daemon integration tests: start lorad on a free
loopback port in a temp dir, call the API, bound every wait, clean up."""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("LR_BUILD", "build"))
FIXTURES = os.environ.get("LR_FIXTURES", os.path.join(os.path.dirname(ROOT), "shared", "fixtures"))


class Results:
    def __init__(self):
        self.p = self.f = self.s = 0

    def check(self, cond, name, detail=""):
        if cond:
            self.p += 1
            print("ok   " + name)
        else:
            self.f += 1
            print("FAIL " + name + (": " + str(detail) if detail else ""))
        return cond

    def skip(self, name, why):
        self.s += 1
        print("skip %s: %s" % (name, why))

    def finish(self):
        print("%d passed, %d failed, %d skipped" % (self.p, self.f, self.s))
        sys.exit(1 if self.f else 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Lorad:
    def __init__(self, worker_bin, workers="cpu,cpu", extra=(), env=None, data_dir=None):
        self.dir = data_dir or tempfile.mkdtemp(prefix="lrd.", dir="/tmp")
        self.port = free_port()
        self.worker_bin = worker_bin
        self.workers = workers
        self.extra = list(extra)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.log = open(os.path.join(self.dir, "lorad.log"), "ab")

    def admin(self, *args):
        out = subprocess.run([os.path.join(BUILD, "lorad")] + list(args) + ["--data-dir", self.dir,
                             "--migrations-dir", os.path.join(ROOT, "migrations")],
                             capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise RuntimeError("lorad %s: %s" % (" ".join(args), out.stderr))
        return out.stdout.strip()

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "lorad"), "serve", "--data-dir", self.dir, "--listen", "127.0.0.1:%d" % self.port,
             "--workers", self.workers, "--worker-bin", self.worker_bin,
             "--migrations-dir", os.path.join(ROOT, "migrations"), "--web-dir", os.path.join(ROOT, "web"),
             "--heartbeat-interval-s", "1", "--heartbeat-timeout-s", "5", "--restart-backoff-max-s", "1"]
            + self.extra, stdout=self.log, stderr=self.log, env=self.env, start_new_session=True)
        wait_until(lambda: self.req("GET", "/healthz")[0] == 200, 10, "lorad health")
        return self

    def req(self, method, path, token=None, body=None, raw=None, headers=None):
        url = "http://127.0.0.1:%d%s" % (self.port, path)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        r = urllib.request.Request(url, data=data, method=method)
        if token:
            r.add_header("Authorization", "Bearer " + token)
        for k, v in (headers or {}).items():
            r.add_header(k, v)
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                b = resp.read()
                return resp.status, _maybe_json(b)
        except urllib.error.HTTPError as e:
            return e.code, _maybe_json(e.read())
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            return 0, str(e)

    def job(self, jid, token):
        return self.req("GET", "/v1/jobs/" + jid, token)[1]

    def finished(self, jid, token):
        """The job's final status, or None while it is queued or running."""
        s = self.job(jid, token)["status"]
        return s if s in ("succeeded", "failed", "cancelled") else None

    def start_order(self, ids, token):
        """ids sorted by when they were first assigned: event ids are global
        and increase, so the first "assigned" event of each job orders starts."""
        firsts = []
        for j in ids:
            evs = self.req("GET", "/v1/jobs/%s/events?limit=10000" % j, token)[1]["data"]
            a = [e["id"] for e in evs if e["message"].startswith("assigned")]
            firsts.append((a[0] if a else 1 << 60, j))
        return [j for _, j in sorted(firsts)]

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        # Workers die with lorad (PDEATHSIG); make sure of it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def cleanup(self):
        self.stop()
        self.log.close()
        if not os.environ.get("LR_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def _maybe_json(b):
    try:
        return json.loads(b)
    except ValueError:
        return b


def wait_until(fn, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
