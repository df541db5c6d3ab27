"""Who sees what (issue 12, item 8), route by route against a real lorad:
with `visibility: private` bob gets 404 on each of alice's objects (400
*_not_found when a job spec names them) and an admin gets through; `lorad
share` opens one object to bob; with `visibility: team` bob is answered as
before the policy existed. Also: models' owners and DELETE /v1/models, and
error messages that name a dataset by id, not by its path on the server."""
import os, sqlite3, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, FIXTURES, Lorad, Results, wait_until

R = Results()
agent = os.path.join(BUILD, "tests", "test_agent")
if not all(os.path.exists(p) for p in (os.path.join(BUILD, "lorad"), os.path.join(BUILD, "lora"), agent)):
    R.skip("daemon_visibility", "build lorad, lora and tests/test_agent first (make)")
    R.finish()

ROW = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
TINY = os.path.join(FIXTURES, "models", "tiny-gpt2-hf")
L = Lorad(agent, env={"LR_FAKE_STEP_MS": "20"}, extra=["--visibility", "private"])
try:
    ta, tb = L.admin("user", "add", "alice"), L.admin("user", "add", "bob")
    tr = L.admin("user", "add", "root", "--admin")
    L.admin("model", "add", "tiny", TINY)
    for m in ("alice-model", "alice-model-2", "alice-model-3"):
        L.admin("model", "add", m, TINY)
    # A merge makes alice's models; the stand-in worker cannot merge, so the
    # owners are set as a merge would leave them.
    db = sqlite3.connect(os.path.join(L.dir, "lorad.db"))
    db.execute("UPDATE models SET owner = 'alice' WHERE name LIKE 'alice-model%'")
    db.commit()
    db.close()
    L.start()

    def upload(tok):
        st, d = L.req("POST", "/v1/datasets?filename=c.jsonl", tok, raw=ROW * 3)
        assert st == 200, (st, d)
        return d["id"]

    def submit(tok, fid, steps, **kw):
        body = {"model": "tiny", "training_file": fid, "hyperparameters": {"max_steps": steps, "save_steps": 2}}
        body.update(kw)
        st, j = L.req("POST", "/v1/jobs", tok, body)
        assert st == 200, (st, j)
        return j["id"]

    D, D2, DB = upload(ta), upload(ta), upload(tb)
    J = submit(ta, D, 3)
    wait_until(lambda: L.finished(J, ta), 30, "alice's job")
    JL = submit(ta, D, 100000)  # runs on: cancel target
    st, S = L.req("POST", "/v1/sweeps", ta, {"template": {"model": "tiny", "training_file": D,
                                                           "hyperparameters": {"max_steps": 2}},
                                              "parameters": {"hyperparameters.seed": [1]}})
    assert st == 200, (st, S)
    S = S["id"]
    art = "adapter_model.safetensors"
    wait_until(lambda: L.job(JL, ta)["status"] == "running", 20, "alice's long job to run")
    wjobs = lambda tok: [w["job_id"] for w in L.req("GET", "/v1/workers", tok)[1]["data"]]
    R.check(JL not in wjobs(tb) and JL in wjobs(tr) and JL in wjobs(ta),
            "private, workers: bob does not see which job of alice's runs", (wjobs(tb), wjobs(tr)))
    spec = lambda **kw: dict({"model": "tiny", "training_file": DB, "hyperparameters": {"max_steps": 1}}, **kw)

    # name, method, path, body, bob in private, admin in private, bob in team (as before the policy)
    routes = [
        ("dataset get", "GET", "/v1/datasets/" + D, None, 404, 200, 200),
        ("dataset preview", "GET", "/v1/datasets/%s/preview?n=1" % D, None, 404, 200, 200),
        ("model get", "GET", "/v1/models/alice-model", None, 404, 200, 200),
        ("preview with her model", "GET", "/v1/datasets/%s/preview?n=1&model=alice-model" % DB, None, 400, 200, 200),
        ("job get", "GET", "/v1/jobs/" + J, None, 404, 200, 200),
        ("job metrics", "GET", "/v1/jobs/%s/metrics" % J, None, 404, 200, 200),
        ("job events", "GET", "/v1/jobs/%s/events" % J, None, 404, 200, 200),
        ("job checkpoints", "GET", "/v1/jobs/%s/checkpoints" % J, None, 404, 200, 200),
        ("job artifacts", "GET", "/v1/jobs/%s/artifacts" % J, None, 404, 200, 200),
        ("job artifact download", "GET", "/v1/jobs/%s/artifacts/%s" % (J, art), None, 404, 200, 200),
        # past the access check, an empty body is the next refusal (400): no generation runs
        ("job generate", "POST", "/v1/jobs/%s/generate" % J, {}, 404, 400, 400),
        ("job merge", "POST", "/v1/jobs/%s/merge" % J, {"name": "-bad"}, 404, 400, 400),
        ("sweep get", "GET", "/v1/sweeps/" + S, None, 404, 200, 200),
        ("train on her dataset", "POST", "/v1/jobs", spec(training_file=D), 400, 200, 200),
        ("train on her model", "POST", "/v1/jobs", spec(model="alice-model"), 400, 200, 200),
        ("eval her adapter", "POST", "/v1/jobs", spec(method={"type": "eval", "adapter": J}), 400, 200, 200),
        ("sweep on her dataset", "POST", "/v1/sweeps", {"template": spec(training_file=D),
                                                       "parameters": {"hyperparameters.seed": [1]}}, 400, 200, 200),
        ("job cancel", "POST", "/v1/jobs/%s/cancel" % JL, None, 404, 200, 403),
        ("dataset delete", "DELETE", "/v1/datasets/" + D2, None, 404, 200, 403),
        ("model delete", "DELETE", "/v1/models/alice-model-2", None, 404, 200, 403),
    ]

    def run_table(tok, col, label, skip=()):
        for r in routes:
            if r[0] in skip:
                continue
            st, body = L.req(r[1], r[2], tok, r[3])
            want = r[col]
            ok = st == want
            if ok and want == 404:  # as if it did not exist: no owner, no path
                msg = body["error"]["message"]
                ok = "belongs" not in msg and L.dir not in msg
            if ok and want == 400 and col == 4:
                ok = body["error"]["code"] in ("dataset_not_found", "model_not_found", "invalid_request")
            R.check(ok, "%s: %s %s" % (label, r[0], want), (st, body if not isinstance(body, bytes) else body[:80]))

    run_table(tb, 4, "private, bob")
    run_table(tr, 5, "private, admin")

    # lists leave out what bob may not see
    ids = lambda path, tok: [x["id"] for x in L.req("GET", path, tok)[1]["data"]]
    R.check(D not in ids("/v1/datasets", tb) and DB in ids("/v1/datasets", tb) and D in ids("/v1/datasets", tr),
            "dataset list: bob sees his own only, the admin all")
    bm, rm = ids("/v1/models", tb), ids("/v1/models", tr)
    R.check("tiny" in bm and "alice-model" not in bm and "alice-model" in rm,
            "model list: bob sees the base model, not alice's", (bm, rm))
    owners = {m["id"]: m["owner"] for m in L.req("GET", "/v1/models", tr)[1]["data"]}
    R.check(owners.get("tiny") is None and owners.get("alice-model") == "alice", "models carry their owner", owners)
    R.check(J not in ids("/v1/jobs?limit=1000", tb) and ids("/v1/jobs?user=alice", tb) == [] and
            J in ids("/v1/jobs?limit=1000", tr), "job list: bob sees his own jobs only")
    R.check(os.path.isdir(TINY), "deleting a model registered from outside the data dir keeps its folder")

    # model delete rules
    st, e = L.req("DELETE", "/v1/models/tiny", ta)
    R.check(st == 403, "a model without owner: only an admin deletes it", (st, e))
    D3 = upload(ta)
    JM = submit(ta, D3, 100000, model="alice-model")
    st, e = L.req("DELETE", "/v1/models/alice-model", ta)
    R.check(st == 409 and "is used by job" in e["error"]["message"], "a model a queued or running job uses: 409", (st, e))
    L.req("POST", "/v1/jobs/%s/cancel" % JM, ta)
    lora = os.path.join(BUILD, "lora")
    env = dict(os.environ, LORA_URL="http://127.0.0.1:%d" % L.port, LORA_TOKEN=ta, HOME=L.dir)
    out = subprocess.run([lora, "models", "rm", "alice-model-3"], capture_output=True, text=True, env=env, timeout=30)
    R.check(out.returncode == 0 and "deleted model alice-model-3" in out.stdout and
            L.req("GET", "/v1/models/alice-model-3", tr)[0] == 404, "its owner deletes a model (lora models rm)",
            (out.returncode, out.stdout, out.stderr))
    env["LORA_TOKEN"] = tb
    out = subprocess.run([lora, "models", "rm", "tiny"], capture_output=True, text=True, env=env, timeout=30)
    R.check(out.returncode == 2 and "admin" in out.stderr, "lora models rm of a base model by a user: exit 2",
            (out.returncode, out.stderr))

    # sharing
    L.admin("share", "dataset", D, "bob", "--visibility", "private")
    L.admin("share", "job", J, "bob")
    st1, _ = L.req("GET", "/v1/datasets/" + D, tb)
    st2, _ = L.req("POST", "/v1/jobs", tb, spec(training_file=D))
    st3, _ = L.req("GET", "/v1/jobs/%s/artifacts/%s" % (J, art), tb)
    R.check((st1, st2, st3) == (200, 200, 200), "shared: bob reads, trains on and downloads", (st1, st2, st3))
    R.check(D in ids("/v1/datasets", tb), "a shared dataset is in bob's list")
    st, _ = L.req("POST", "/v1/jobs/%s/merge" % J, tb, {"name": "bobs"})
    R.check(st == 403, "shared is not owned: bob cannot merge alice's job", st)
    L.admin("unshare", "dataset", D, "bob")
    R.check(L.req("GET", "/v1/datasets/" + D, tb)[0] == 404, "unshared: 404 again")
    try:
        L.admin("share", "dataset", "file-nope", "bob")
        R.check(False, "sharing what does not exist is refused")
    except RuntimeError as ex:
        R.check("no dataset" in str(ex), "sharing what does not exist is refused", ex)

    # messages name a dataset by its id, not its server path
    os.unlink(os.path.join(L.dir, "datasets", D + ".jsonl"))
    st, e = L.req("GET", "/v1/datasets/%s/preview" % D, ta)
    msg = e["error"]["message"] if isinstance(e, dict) else ""
    R.check(st >= 400 and D in msg and L.dir not in msg, "a dataset's file is named by id in errors", (st, msg))
    print("     (%s)" % msg)

    # team: bob is answered as before the policy existed
    JL2, D4 = submit(ta, D3, 100000), upload(ta)
    L.admin("model", "add", "alice-model-2", TINY)
    db = sqlite3.connect(os.path.join(L.dir, "lorad.db"))
    db.execute("UPDATE models SET owner = 'alice' WHERE name = 'alice-model-2'")
    db.commit()
    db.close()
    fresh = {"job cancel": "/v1/jobs/%s/cancel" % JL2, "dataset delete": "/v1/datasets/" + D4}
    routes = [(n, m, fresh.get(n, p), b, x, y, z) for n, m, p, b, x, y, z in routes]
    L.stop()
    L.extra = ["--visibility", "team"]
    L.start()
    run_table(tb, 6, "team, bob", skip={"dataset preview"})  # its file was removed above
finally:
    L.cleanup()
R.finish()
