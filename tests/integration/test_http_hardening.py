"""lorad's HTTP edge against a hostile or careless client, on a real lorad:
the token is checked before any body is read; uploads stream to disk (memory
stays flat); one user's uploads at once are capped; slow clients cannot hold
connections (header deadline, per-address cap); smuggling-shaped requests are
refused; binary uploads say what they look like; preview reads only the rows
it shows."""
import gzip, json, os, socket, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results  # noqa: E402

R = Results()
MB = 1 << 20


def rss_kb(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


def raw(port, data, src="127.0.0.1", timeout=10, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))
    s.sendall(data)
    if not read:
        return s
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if cl and len(body) >= int(cl[0].split(b":")[1]):
                    break
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out


def status_of(resp):
    try:
        return int(resp.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def body_of(resp):
    try:
        return json.loads(resp.partition(b"\r\n\r\n")[2])
    except ValueError:
        return {}


def unauth_upload(port, results, i):
    """500 MB announced, no token: the answer must come before the body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: 524288000\r\n\r\n")
    chunk = b"x" * MB
    got = b""
    sent = 0
    s.settimeout(0.05)
    t0 = time.time()
    try:
        while sent < 500 * MB and time.time() - t0 < 20:
            try:
                got += s.recv(65536)
                if got:
                    break
            except socket.timeout:
                pass
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.settimeout(5)
    try:
        while b"\r\n\r\n" not in got:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    results[i] = (status_of(got), sent)


def slow_client(port, stop, src="127.0.0.1", closed=None, i=0):
    """Sends a header line every second, never finishing the headers."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(1)
        while not stop.is_set():
            s.sendall(b"X-Slow: 1\r\n")
            try:
                if s.recv(1) == b"":
                    break
            except socket.timeout:
                continue
        if closed is not None:
            closed[i] = time.time()
        s.close()
    except OSError:
        if closed is not None:
            closed[i] = time.time()


def healthz_time(port, src="127.0.0.2"):
    t0 = time.time()
    r = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", src=src, timeout=5)
    return status_of(r), time.time() - t0


def big_jsonl(path, rows):
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"prompt": "question %d %s" % (i, "p" * 150), "completion": "answer %d %s" % (i, "c" * 150)}) + "\n")


def multipart(token, name, payload, boundary="lorad-test-boundary"):
    body = (("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n" % (boundary, name)).encode() + payload +
            ("\r\n--%s--\r\n" % boundary).encode())
    head = ("POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: close\r\n"
            "Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d\r\n\r\n" % (token, boundary, len(body)))
    return head.encode() + body


def main():
    worker = os.path.join(BUILD, "lora-worker")
    d = Lorad(worker, workers="cpu")
    tmp = d.dir
    try:
        tok = d.admin("user", "add", "alice").splitlines()[-1]
        d.start()
        pid = d.proc.pid
        time.sleep(0.3)
        base = rss_kb(pid)

        # 1. Ten token-less 500 MB uploads at once: 401 before the body, flat memory.
        reset_peak(pid)
        res = [None] * 10
        th = [threading.Thread(target=unauth_upload, args=(d.port, res, i)) for i in range(10)]
        for t in th:
            t.start()
        for t in th:
            t.join(60)
        peak = rss_kb(pid, "VmHWM")
        R.check(all(r and r[0] == 401 for r in res), "unauthenticated_uploads_get_401", res)
        R.check(max(r[1] for r in res if r) < 100 * MB, "answered_before_the_body_was_sent",
                [r[1] // MB for r in res if r])
        R.check(peak - base < 50 * 1024, "memory_flat_during_10_unauthenticated_500MB_uploads",
                "peak %d MB, base %d MB" % (peak // 1024, base // 1024))
        print("   lorad RSS: base %.1f MB, peak during the uploads %.1f MB" % (base / 1024, peak / 1024))

        # 2. An authenticated 60 MB upload streams to disk.
        path = os.path.join(tmp, "big.jsonl")
        big_jsonl(path, 180000)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            payload = f.read()
        reset_peak(pid)
        r = raw(d.port, multipart(tok, "big.jsonl", payload), timeout=120)
        peak = rss_kb(pid, "VmHWM")
        obj = body_of(r)
        R.check(status_of(r) == 200 and obj.get("rows") == 180000, "large_upload_stored",
                (status_of(r), str(obj)[:200]))
        R.check(peak - base < 40 * 1024, "upload_of_%d_MB_streams_to_disk" % (size // MB),
                "peak %d MB vs base %d MB" % (peak // 1024, base // 1024))
        print("   %d MB upload: lorad peak RSS %.1f MB (base %.1f MB)" % (size // MB, peak / 1024, base / 1024))
        del payload
        tmpdir = os.path.join(tmp, "tmp")
        R.check(not [f for f in os.listdir(tmpdir) if f.startswith("upload-")] if os.path.isdir(tmpdir) else True,
                "no_temporary_files_left")

        # 3. Preview reads only the rows it shows.
        ds = obj.get("id", "none")
        reset_peak(pid)
        st, pv = d.req("GET", "/v1/datasets/%s/preview?n=1" % ds, tok)
        peak = rss_kb(pid, "VmHWM")
        R.check(st == 200 and len(pv.get("rows", [])) == 1 and pv.get("rows_total") == 180000,
                "preview_n1_of_a_large_dataset", (st, str(pv)[:200]))
        R.check(peak - base < 20 * 1024, "preview_does_not_read_the_whole_dataset",
                "peak %d MB vs base %d MB" % (peak // 1024, base // 1024))
        print("   preview?n=1 of %d MB: lorad peak RSS %.1f MB" % (size // MB, peak / 1024))

        # 4. Per-user cap on uploads in progress (default 2): the third waits (429).
        held = []
        for _ in range(2):
            s = raw(d.port, ("POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                             "Content-Length: 1000000\r\n\r\n{\"prompt\":" % tok).encode(), read=False)
            held.append(s)
        time.sleep(0.3)
        r = raw(d.port, multipart(tok, "small.jsonl", b'{"prompt":"a","completion":"b"}\n'))
        R.check(status_of(r) == 429 and b"Retry-After" in r, "third_concurrent_upload_gets_429", r[:300])
        for s in held:
            s.close()
        time.sleep(0.5)
        r = raw(d.port, multipart(tok, "small.jsonl", b'{"prompt":"a","completion":"b"}\n'))
        R.check(status_of(r) == 200, "upload_slot_freed_when_a_client_goes_away", r[:300])

        # 5. Request smuggling shapes.
        r = raw(d.port, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok.encode() +
                b"\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}")
        R.check(status_of(r) == 400 and b"Content-Length" in r, "two_content_lengths_400", r[:200])
        r = raw(d.port, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        R.check(status_of(r) == 400, "content_length_with_chunked_400", r[:200])

        # 6. Binary uploads say what they look like.
        gz = gzip.compress(b'{"prompt":"a","completion":"b"}\n' * 100)
        r = raw(d.port, multipart(tok, "data.jsonl.gz", gz))
        msg = body_of(r).get("error", {}).get("message", "")
        R.check(status_of(r) == 400 and "gzip" in msg, "gzip_upload_named", msg)
        r = raw(d.port, multipart(tok, "data.jsonl", b'{"prompt":"a"\x00}\n'))
        msg = body_of(r).get("error", {}).get("message", "")
        R.check(status_of(r) == 400 and "binary" in msg, "nul_bytes_named", msg)
        r = raw(d.port, multipart(tok, "cut.jsonl", b'{"prompt":"a","completion":"b"}\n')[:-10])
        R.check(status_of(r) in (400, 0), "truncated_multipart_refused", r[:200])
    finally:
        d.cleanup()

    # 7. Slow clients at the default limits: /healthz still answers at once.
    d = Lorad(worker, workers="cpu")
    try:
        d.start()
        stop = threading.Event()
        th = [threading.Thread(target=slow_client, args=(d.port, stop)) for _ in range(50)]
        for t in th:
            t.start()
        time.sleep(2)
        times = [healthz_time(d.port, src="127.0.0.1") for _ in range(3)]
        R.check(all(s == 200 and t < 1.0 for s, t in times), "healthz_under_50_slow_clients_default_limits", times)
        stop.set()
        for t in th:
            t.join(10)
    finally:
        d.cleanup()

    # 8. The set-up (--max-connections 40) with a per-address cap and
    #    a short header deadline: others get in, and slow clients are cut off.
    d = Lorad(worker, workers="cpu", extra=["--max-connections", "40", "--max-connections-per-ip", "16",
                                            "--header-timeout-s", "2"])
    try:
        d.start()
        stop = threading.Event()
        closed = [None] * 50
        t0 = time.time()
        th = [threading.Thread(target=slow_client, args=(d.port, stop, "127.0.0.1", closed, i)) for i in range(50)]
        for t in th:
            t.start()
        time.sleep(1)
        times = [healthz_time(d.port, src="127.0.0.2") for _ in range(3)]
        R.check(all(s == 200 and t < 1.0 for s, t in times), "healthz_from_another_address_under_50_slow_clients",
                times)
        time.sleep(4)
        cut = [c - t0 for c in closed if c]
        R.check(len(cut) == 50, "every_slow_client_cut_off", "%d of 50" % len(cut))
        R.check(cut and max(cut) < 5.0, "slow_clients_cut_within_the_header_deadline",
                "latest %.1f s" % (max(cut) if cut else -1))
        st, tm = healthz_time(d.port, src="127.0.0.1")
        R.check(st == 200, "the_slow_address_can_connect_again", (st, tm))
        stop.set()
        for t in th:
            t.join(10)
    finally:
        d.cleanup()
    R.finish()


if __name__ == "__main__":
    main()
