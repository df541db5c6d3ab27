"""Queue fairness and submission limits against a real lorad (issue 12,
item 4), with two stand-in workers (tests/unit/test_agent.c):
- 600 of bob's jobs queued first, then alice's: alice's job starts among the
  next ones (lorad used to look at the first 512 queued jobs only);
- max_user_priority: a non-admin asking for more gets 400 param "priority";
- max_queued_per_user and max_submits_per_minute: 429, the latter with a
  Retry-After header; a sweep counts as its number of jobs."""
import json, os, sys, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, FIXTURES, Lorad, Results, wait_until

R = Results()
agent = os.path.join(BUILD, "tests", "test_agent")
if not os.path.exists(os.path.join(BUILD, "lorad")) or not os.path.exists(agent):
    R.skip("daemon_queue", "build lorad and tests/test_agent first (make)")
    R.finish()

ROW = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'


def setup(L):
    tokens = {u: L.admin("user", "add", u) for u in ("alice", "bob", "carol")}
    tokens["root"] = L.admin("user", "add", "root", "--admin")
    L.admin("model", "add", "tiny", os.path.join(FIXTURES, "models", "tiny-gpt2-hf"))
    L.start()
    st, ds = L.req("POST", "/v1/datasets?filename=chat.jsonl", tokens["alice"], raw=ROW * 3)
    assert st == 200, (st, ds)
    return tokens, ds["id"]


def spec(fid, steps, **kw):
    s = {"model": "tiny", "training_file": fid, "hyperparameters": {"max_steps": steps, "save_steps": 1000}}
    s.update(kw)
    return s


def sweep(L, token, fid, n, steps):
    return L.req("POST", "/v1/sweeps", token, {"template": spec(fid, steps),
                                              "parameters": {"hyperparameters.seed": list(range(1, n + 1))}})


def post_headers(L, path, token, body):
    """(status, body, headers) of a POST: the harness's req drops headers."""
    r = urllib.request.Request("http://127.0.0.1:%d%s" % (L.port, path), data=json.dumps(body).encode(),
                               method="POST", headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def started(L, token, user):
    """How many of user's jobs have left the queue."""
    n, after = 0, ""
    while True:
        page = L.req("GET", "/v1/jobs?limit=1000&user=%s%s" % (user, after), token)[1]
        n += sum(1 for j in page["data"] if j["status"] != "queued")
        if not page["has_more"]:
            return n
        after = "&after=" + page["data"][-1]["id"]


# --- depth: 600 of bob's jobs, then alice's ---
L = Lorad(agent, env={"LR_FAKE_STEP_MS": "50"},
          extra=["--max-submits-per-minute", "0", "--max-queued-per-user", "700"])
try:
    tok, fid = setup(L)
    ta, tb, tr = tok["alice"], tok["bob"], tok["root"]
    t0 = time.time()
    for _ in range(3):
        st, sw = sweep(L, tb, fid, 200, 20)  # a job runs about 1 s
        assert st == 200, (st, sw)
    queued = len(L.req("GET", "/v1/jobs?status=queued&limit=1000", tb)[1]["data"])
    R.check(queued > 512, "bob has more than 512 queued jobs", queued)
    before = started(L, tb, "bob")
    st, aj = L.req("POST", "/v1/jobs", ta, spec(fid, 2, name="alice-1"))
    R.check(st == 200, "alice submits behind bob's queue", (st, aj))
    try:
        wait_until(lambda: L.job(aj["id"], ta)["status"] != "queued", 20, "alice's job to start")
    except TimeoutError:
        pass
    during = started(L, tb, "bob") - before
    # Two workers: at most the one bob job a worker freed before alice's
    # submission landed starts ahead of her (lorad used to start 88).
    R.check(L.job(aj["id"], ta)["status"] != "queued" and during <= 1,
            "alice's job starts next, not after bob's queue (bob's starts in between: %d)" % during)
    print("     (600 queued in %.1f s; bob's jobs started before alice's: %d)" % (time.time() - t0, during))

    # --- queue limit: bob has ~600 queued of 700; a sweep of 200 is refused whole ---
    n0 = len(L.req("GET", "/v1/jobs?limit=1000", tb)[1]["data"])
    st, e = sweep(L, tb, fid, 200, 20)
    R.check(st == 429 and e["error"]["code"] == "too_many_queued" and "max_queued_per_user" in e["error"]["message"],
            "a sweep past max_queued_per_user: 429, counted as its jobs", (st, e))
    R.check(len(L.req("GET", "/v1/jobs?limit=1000", tb)[1]["data"]) == n0, "the refused sweep created no job")
    st, j = L.req("POST", "/v1/jobs", tok["carol"], spec(fid, 2))
    R.check(st == 200, "the limit is per user: carol still submits", st)

    # --- priority cap (default max_user_priority 10) ---
    st, e = L.req("POST", "/v1/jobs", ta, spec(fid, 2, priority=11))
    R.check(st == 400 and e["error"]["param"] == "priority" and "max_user_priority" in e["error"]["message"],
            "non-admin priority 11: 400 param priority", (st, e))
    st, j = L.req("POST", "/v1/jobs", ta, spec(fid, 2, priority=10))
    R.check(st == 200 and j["spec"]["priority"] == 10, "non-admin priority 10: accepted", st)
    st, j = L.req("POST", "/v1/jobs", tr, spec(fid, 2, priority=100))
    R.check(st == 200 and j["spec"]["priority"] == 100, "admin priority 100: accepted", st)
    st, e = L.req("POST", "/v1/sweeps", ta, {"template": spec(fid, 2), "parameters": {"priority": [0, 50]}})
    R.check(st == 400 and e["error"]["param"] == "template.priority", "a sweep point over the cap: 400", (st, e))
finally:
    L.cleanup()

# --- rate: max_submits_per_minute 5 ---
L = Lorad(agent, env={"LR_FAKE_STEP_MS": "5"}, extra=["--max-submits-per-minute", "5"])
try:
    tok, fid = setup(L)
    tc = tok["carol"]
    codes = [L.req("POST", "/v1/jobs", tc, spec(fid, 2))[0] for _ in range(3)]
    st, sw = sweep(L, tc, fid, 2, 2)
    R.check(codes == [200] * 3 and st == 200, "5 jobs in a minute (3 jobs + a sweep of 2) pass", (codes, st))
    st, e, h = post_headers(L, "/v1/jobs", tc, spec(fid, 2))
    ra = h.get("Retry-After", "")
    R.check(st == 429 and e["error"]["code"] == "rate_limited" and ra.isdigit() and 1 <= int(ra) <= 60,
            "the 6th job in a minute: 429 with Retry-After", (st, e, ra))
    st, e = sweep(L, tok["bob"], fid, 6, 2)
    R.check(st == 400 and e["error"]["param"] == "parameters", "a sweep larger than the per-minute limit: 400", (st, e))
    st, _ = L.req("POST", "/v1/jobs", tok["bob"], spec(fid, 2))
    R.check(st == 200, "the rate is per user: bob still submits", st)
    if ra.isdigit() and int(ra) <= 60:
        time.sleep(int(ra))
        st, _ = L.req("POST", "/v1/jobs", tc, spec(fid, 2))
        R.check(st == 200, "after Retry-After seconds carol submits again", st)
finally:
    L.cleanup()
R.finish()
