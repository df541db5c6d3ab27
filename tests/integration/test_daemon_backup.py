"""`lorad backup` while jobs run, and the documented restore (README,
"Backups") into a fresh data directory (issue 12, item 10): the copy opens,
passes PRAGMA integrity_check and holds every job; a lorad started on the
restored directory lists them, finishes the ones that were running from
their checkpoints and reads the datasets from their new place."""
import os, shutil, sqlite3, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, FIXTURES, Lorad, Results, wait_until

R = Results()
agent = os.path.join(BUILD, "tests", "test_agent")
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(agent):
    R.skip("daemon_backup", "build lorad and tests/test_agent first (make)")
    R.finish()

ROW = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
L = Lorad(agent, env={"LR_FAKE_STEP_MS": "30"})
L2 = None
tmp = tempfile.mkdtemp(prefix="lrbak.", dir="/tmp")
try:
    ta = L.admin("user", "add", "alice")
    L.admin("model", "add", "tiny", os.path.join(FIXTURES, "models", "tiny-gpt2-hf"))
    L.start()
    st, ds = L.req("POST", "/v1/datasets?filename=chat.jsonl", ta, raw=ROW * 3)
    assert st == 200, (st, ds)

    def job(steps):
        st, j = L.req("POST", "/v1/jobs", ta, {"model": "tiny", "training_file": ds["id"],
                                               "hyperparameters": {"max_steps": steps, "save_steps": 10}})
        assert st == 200, (st, j)
        return j["id"]

    short = [job(3) for _ in range(2)]
    for j in short:
        wait_until(lambda: L.finished(j, ta), 30, "short job")
    long_ = [job(400) for _ in range(2)]
    for j in long_:
        wait_until(lambda: (L.job(j, ta)["last_checkpoint_step"] or 0) >= 20, 30, "a checkpoint of " + j)

    bak = os.path.join(tmp, "lorad.backup")
    out = L.admin("backup", bak)  # while both long jobs write metrics
    R.check("backed up" in out and os.path.exists(bak), "lorad backup while jobs run", out)
    R.check(all(L.job(j, ta)["status"] == "running" for j in long_), "the jobs ran on during the backup")
    c = sqlite3.connect("file:%s?mode=ro" % bak, uri=True)
    R.check(c.execute("PRAGMA integrity_check").fetchall() == [("ok",)], "the copy passes integrity_check")
    ids = {r[0] for r in c.execute("SELECT id FROM jobs")}
    R.check(ids == set(short + long_), "the copy holds every job", ids)
    R.check(c.execute("SELECT count(*) FROM metrics").fetchone()[0] > 0, "the copy holds metrics")
    c.close()
    R.check(not os.path.exists(bak + "-wal"), "the copy is one file (no -wal beside it)")

    # Restore as the README says: the files, then `lorad restore`.
    fresh = os.path.join(tmp, "restored")
    for d in ("datasets", "runs", "models"):
        if os.path.isdir(os.path.join(L.dir, d)):
            shutil.copytree(os.path.join(L.dir, d), os.path.join(fresh, d))
    L2 = Lorad(agent, env={"LR_FAKE_STEP_MS": "5"}, data_dir=fresh)
    out = L2.admin("restore", bak)
    R.check("restored" in out, "lorad restore into a fresh data dir", out)
    try:
        L2.admin("restore", bak)
        R.check(False, "restore refuses to overwrite a database")
    except RuntimeError as e:
        R.check("exists" in str(e), "restore refuses to overwrite a database", e)
    L.stop()  # the old lorad is gone, as after a lost machine
    L2.start()
    listed = {j["id"] for j in L2.req("GET", "/v1/jobs?limit=100", ta)[1]["data"]}
    R.check(listed == set(short + long_), "the restored lorad lists every job (alice's token still works)", listed)
    for j in long_:
        wait_until(lambda: L2.finished(j, ta), 60, "restored job " + j)
    evs = " ".join(e["message"] for e in L2.req("GET", "/v1/jobs/%s/events" % long_[0], ta)[1]["data"])
    R.check(all(L2.job(j, ta)["status"] == "succeeded" for j in long_) and "resum" in evs,
            "jobs running at backup time resume from a checkpoint and succeed", evs[-300:])
    st, pv = L2.req("GET", "/v1/datasets/%s/preview?n=1" % ds["id"], ta)
    R.check(st == 200 and pv["rows_total"] == 3, "the dataset is read from the restored directory", (st, pv))
finally:
    L.cleanup()
    if L2:
        L2.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
R.finish()
