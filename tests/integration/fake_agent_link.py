"""What the stand-in lora-worker agents (fake_pack_agent.py,
fake_setup_agent.py) share: their command-line options and their end of
lorad's worker socket, speaking proto/frame.h's frames (4-byte big-endian
length + JSON). Not a test by itself."""
import json, select, socket, struct, sys, time


def arg(name, default=None):
    a = sys.argv
    return a[a.index(name) + 1] if name in a else default


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(100):
            try:
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        self.buf = b""

    def send(self, obj):
        b = json.dumps(obj).encode()
        self.s.sendall(struct.pack(">I", len(b)) + b)

    def frames(self, timeout):
        r, _, _ = select.select([self.s], [], [], timeout)
        if r:
            d = self.s.recv(65536)
            if not d:
                sys.exit(0)  # lorad went away
            self.buf += d
        out = []
        while len(self.buf) >= 4:
            n = struct.unpack(">I", self.buf[:4])[0]
            if len(self.buf) < 4 + n:
                break
            out.append(json.loads(self.buf[4:4 + n]))
            self.buf = self.buf[4 + n:]
        return out
