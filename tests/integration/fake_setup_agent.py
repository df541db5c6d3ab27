#!/usr/bin/python3
"""A stand-in lora-worker agent for test_daemon_validating.py: lorad starts
it as its worker binary (`fake_setup_agent.py agent --socket PATH ...`).

It takes one job at a time and holds it where the real worker loads the
model and tokenizes the files: heartbeats of step 0 with no plan
(total_steps 0) until the file $LR_FAKE_GATE exists; then heartbeats with
the plan (step 0 of 3), as train.c reports it once setup passed, until
$LR_FAKE_GATE.go exists; then 3 fake steps, an adapter file and DONE. Not
a test by itself."""
import os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_agent_link import Conn, arg  # noqa: E402

GATE = os.environ.get("LR_FAKE_GATE", "/nonexistent")
STEPS = 3


def main():
    c = Conn(arg("--socket"))
    c.send({"type": "hello", "proto": 1, "worker": arg("--name", "fake"), "backend": arg("--backend", "cpu"),
            "device": "fake", "mem_bytes": 1 << 30, "threads": 1, "version": "fake-setup"})
    job, step = None, 0
    while True:
        for m in c.frames(0.2):
            if m["type"] == "assign" and job is None:
                job, step = m, 0
            elif m["type"] == "cancel" and job and m["job_id"] == job["job_id"]:
                c.send({"type": "done", "job_id": job["job_id"], "outcome": "cancelled"})
                job = None
        if job is None:
            c.send({"type": "heartbeat"})
            continue
        jid = job["job_id"]
        if not os.path.exists(GATE):  # still "loading the model and tokenizing the files"
            c.send({"type": "heartbeat", "job_id": jid, "step": 0, "total_steps": 0, "epoch": 0})
            continue
        if step == 0 and not os.path.exists(GATE + ".go"):  # setup passed: the plan
            c.send({"type": "heartbeat", "job_id": jid, "step": 0, "total_steps": STEPS, "epoch": 0})
            continue
        step += 1
        c.send({"type": "metric", "job_id": jid, "seq": step, "step": step, "epoch": step / STEPS, "name": "loss",
                "value": 1.0 / step})
        c.send({"type": "heartbeat", "job_id": jid, "step": step, "total_steps": STEPS, "epoch": step / STEPS})
        if step == STEPS:
            with open(os.path.join(job["run_dir"], "adapter_model.safetensors"), "w") as f:
                f.write("fake adapter\n")
            c.send({"type": "done", "job_id": jid, "outcome": "succeeded"})
            job = None


if __name__ == "__main__":
    main()
