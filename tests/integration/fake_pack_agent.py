#!/usr/bin/python3
"""A stand-in lora-worker agent that co-trains jobs in one pass, for
test_daemon_pack.py: lorad starts it as its worker binary
(`fake_pack_agent.py agent --socket PATH --name w0 ...`).

It speaks lorad's frames (proto/frame.h: 4-byte big-endian length + JSON)
and the packing contract of issue 19: its hello offers pack_max
(LR_FAKE_PACK_MAX, default 3); an ASSIGN while it trains joins the pass at
the next step boundary, or is answered FAILED with code busy when the pass
is full or the job may not share it; each job sends its own heartbeats
(with "pack": {"id", "jobs", "steps"} while it shares the pass), metrics,
checkpoints and DONE, and a CANCEL stops that job only. Training is fake
but deterministic: a job's adapter file holds a digest of its spec and of
every step's "update", so a run resumed from a checkpoint (DONE marker,
state file) ends with the same bytes as one that never stopped. Steps take
LR_FAKE_STEP_MS (default 40) for the whole pass. Not a test by itself."""
import hashlib, json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_agent_link import Conn, arg  # noqa: E402

PACK_MAX = int(os.environ.get("LR_FAKE_PACK_MAX", "3"))
ROOM = int(os.environ.get("LR_FAKE_ROOM", str(PACK_MAX)))  # what it really takes: below pack_max it says busy
STEP_S = int(os.environ.get("LR_FAKE_STEP_MS", "40")) / 1000.0


def pack_key(spec):
    """proto/pack.c's rule, as far as this stand-in needs it."""
    res = spec.get("resources", {})
    if not res.get("co_train", True) or spec.get("method", {}).get("type", "sft") != "sft":
        return None
    return spec.get("model")


class Job:
    def __init__(self, m):
        self.id = m["job_id"]
        self.spec = m["spec"]
        self.run_dir = m["run_dir"]
        hp = self.spec.get("hyperparameters", {})
        self.total = hp.get("max_steps") or 10
        self.save = hp.get("save_steps") or 5
        self.step, self.packed, self.seq, self.cancel = 0, 0, 0, False
        self.state = hashlib.sha256(json.dumps([self.spec.get("model"), hp.get("seed"), hp.get("learning_rate"),
                                                self.spec.get("lora", {}).get("r")]).encode()).hexdigest()
        if m.get("resume"):
            ck = os.path.join(self.run_dir, "checkpoints")
            done = [int(d[5:]) for d in os.listdir(ck) if d.startswith("step-")
                    and os.path.exists(os.path.join(ck, d, "DONE"))] if os.path.isdir(ck) else []
            if done:
                self.step = max(done)
                with open(os.path.join(ck, "step-%d" % self.step, "state")) as f:
                    self.state = f.read()


def main():
    c = Conn(arg("--socket"))
    name = arg("--name", "fake")
    c.send({"type": "hello", "proto": 1, "worker": name, "backend": arg("--backend", "cpu"), "device": "fake",
            "mem_bytes": 1 << 30, "threads": 1, "version": "fake-pack", "pack_max": PACK_MAX})
    jobs, joining, key, npacks, pack_id, idle_hb = [], [], None, 0, None, 0
    next_step = time.time() + STEP_S
    while True:
        for m in c.frames(max(0.0, next_step - time.time())):
            t = m["type"]
            if t == "assign":
                k = pack_key(m["spec"])
                if jobs or joining:
                    if len(jobs) + len(joining) >= ROOM or k is None or k != key:
                        c.send({"type": "failed", "job_id": m["job_id"], "code": "busy",
                                "error": "the running pass has no room for it"})
                        continue
                    joining.append(Job(m))  # joins at the next step boundary
                else:
                    key = k
                    jobs.append(Job(m))
            elif t == "cancel":
                for j in jobs + joining:
                    if j.id == m["job_id"]:
                        j.cancel = True
        if time.time() < next_step:
            continue
        next_step = time.time() + STEP_S
        jobs += joining
        joining = []
        if len(jobs) > 1 and pack_id is None:
            npacks += 1
            pack_id = "p%d" % npacks
        shared = len(jobs) > 1 or pack_id is not None
        for j in list(jobs):
            if j.cancel:
                c.send({"type": "done", "job_id": j.id, "outcome": "cancelled"})
                jobs.remove(j)
                continue
            j.step += 1
            j.packed += shared
            j.state = hashlib.sha256((j.state + ":%d" % j.step).encode()).hexdigest()
            j.seq += 1
            c.send({"type": "metric", "job_id": j.id, "seq": j.seq, "step": j.step, "epoch": j.step / j.total,
                    "name": "loss", "value": 1.0 / j.step})
            hb = {"type": "heartbeat", "job_id": j.id, "step": j.step, "total_steps": j.total,
                  "epoch": j.step / j.total}
            if shared:
                hb["pack"] = {"id": pack_id, "jobs": len(jobs), "steps": j.packed}
            c.send(hb)
            if j.step % j.save == 0 or j.step == j.total:
                d = os.path.join(j.run_dir, "checkpoints", "step-%d" % j.step)
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "state"), "w") as f:
                    f.write(j.state)
                with open(os.path.join(d, "DONE"), "w") as f:
                    f.write("1")
                c.send({"type": "checkpoint", "job_id": j.id, "step": j.step, "dir": d})
            if j.step >= j.total:
                with open(os.path.join(j.run_dir, "adapter_model.safetensors"), "w") as f:
                    f.write("fake adapter %s\n" % j.state)
                c.send({"type": "done", "job_id": j.id, "outcome": "succeeded"})
                jobs.remove(j)
        if not jobs:  # the pass is over; an idle agent still says it is alive
            key, pack_id = None, None
            if time.time() >= idle_hb:
                c.send({"type": "heartbeat"})
                idle_hb = time.time() + 1


if __name__ == "__main__":
    main()
