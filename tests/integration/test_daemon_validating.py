"""OpenAI's validating_files (issue 15) against a real lorad whose worker is
tests/integration/fake_setup_agent.py, a stand-in agent that holds its job
in "setup" (the real worker loads the model and tokenizes the files there)
until the test opens a gate, then reports the run's plan, then trains.

A job created on /v1/fine_tuning/jobs starts queued (its files were
checked on upload and create); once a worker holds it, /v1/fine_tuning/jobs
shows it validating_files (retrieve and list) while /v1/jobs says running;
when the worker reports its plan (step 0 of 3) both say running; it then
succeeds."""
import os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, FIXTURES, Lorad, Results, wait_until  # noqa: E402

R = Results()
agent = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_setup_agent.py")
if not os.path.exists(os.path.join(BUILD, "lorad")):
    R.skip("daemon_validating", "build lorad first (make)")
    R.finish()
if not os.path.isdir(os.path.join(FIXTURES, "models", "tiny-gpt2-hf")):
    R.skip("daemon_validating", "fixture models/tiny-gpt2-hf is missing")
    R.finish()

ROW = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
gate_dir = tempfile.mkdtemp(prefix="lrgate.", dir="/tmp")
gate = os.path.join(gate_dir, "gate")
L = Lorad(agent, workers="cpu", env={"LR_FAKE_GATE": gate})
try:
    tok = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", os.path.join(FIXTURES, "models", "tiny-gpt2-hf"))
    L.start()
    st, ds = L.req("POST", "/v1/datasets?filename=chat.jsonl", tok, raw=ROW * 3)
    assert st == 200, (st, ds)
    st, job = L.req("POST", "/v1/fine_tuning/jobs", tok, {"model": "tiny", "training_file": ds["id"]})
    R.check(st == 200 and job["status"] == "queued", "create: the job starts queued (files checked on upload)",
            (st, job.get("status")))
    jid = job["id"]

    def ft():
        return L.req("GET", "/v1/fine_tuning/jobs/" + jid, tok)[1]

    def own():
        return L.req("GET", "/v1/jobs/" + jid, tok)[1]

    wait_until(lambda: own()["status"] == "running", 30, "the worker holds the job")
    o, f = own(), ft()
    R.check(f["status"] == "validating_files" and o["status"] == "running",
            "in setup: /v1/fine_tuning/jobs says validating_files, /v1/jobs running", (f["status"], o["status"]))
    listed = [j["status"] for j in L.req("GET", "/v1/fine_tuning/jobs", tok)[1]["data"] if j["id"] == jid]
    R.check(listed == ["validating_files"], "the fine-tuning jobs list says validating_files too", listed)

    open(gate, "w").close()  # setup passes: the worker reports its plan
    f = wait_until(lambda: (lambda j: j["status"] != "validating_files" and j)(ft()), 30, "the plan")
    R.check(f["status"] == "running" and f["progress"]["total_steps"] == 3 and f["progress"]["step"] == 0,
            "with the plan reported (step 0 of 3): running on both routes", (f["status"], f["progress"]))

    open(gate + ".go", "w").close()
    f = wait_until(lambda: (lambda j: j["status"] in ("succeeded", "failed") and j)(ft()), 30, "the end")
    R.check(f["status"] == "succeeded", "then it trains and succeeds", (f["status"], f.get("error")))
finally:
    L.cleanup()
    for p in (gate, gate + ".go"):
        if os.path.exists(p):
            os.unlink(p)
    os.rmdir(gate_dir)
R.finish()
