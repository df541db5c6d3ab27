"""The Slurm executor (issue 17) against a real Slurm: munged, slurmctld and
slurmd on localhost from a slurm.conf generated in a temp dir (no cgroups:
proctrack/linuxproc, task/none). lorad routes cpu jobs to Slurm: a job is
submitted with sbatch, its worker connects back (--once) and the job ends
with the adapter of the same job on a local worker, bit for bit; scancel of
the batch job mid-training re-queues the job, which is submitted again and
resumes from its checkpoint to the same adapter; a job with
resources.devices 2 is one batch job of --ntasks 2 whose ranks srun starts
(--mpi=pmix) and ends with the adapter of the same job on a local 2-rank
worker (mpirun), bit for bit; batch jobs that fail before
their worker starts fail the job after max_retries, naming Slurm's state. Fails, saying what is
missing, when Slurm or munge is not installed (mk/deps.sh installs them)."""
import os, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import BUILD, Lorad, Results, free_port, wait_until

R = Results()
worker = os.path.join(BUILD, "lora-worker")
missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
           if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin")]
if missing or not os.path.exists(os.path.join(BUILD, "lorad")):
    R.check(False, "prerequisites", "missing %s (apt-get install slurm-wlm munge; make)" % " ".join(missing or ["lorad"]))
    R.finish()

tmp = tempfile.mkdtemp(prefix="lrslurm.", dir="/tmp")
os.chmod(tmp, 0o755)
env = dict(os.environ, SLURM_CONF=os.path.join(tmp, "slurm.conf"), PATH=os.environ.get("PATH", "") + ":/usr/sbin")
daemons = []


def start_slurm():
    md = os.path.join(tmp, "munge")
    os.makedirs(md, mode=0o700)
    for d in ("state", "spool"):
        os.makedirs(os.path.join(tmp, d))
    key = os.path.join(md, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = os.path.join(md, "munge.sock")
    daemons.append(subprocess.Popen(["munged", "-f", "-F", "-S", sock, "--key-file", key, "--log-file",
                                     os.path.join(md, "munged.log"), "--pid-file", os.path.join(md, "munged.pid"),
                                     "--seed-file", os.path.join(md, "munged.seed")], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_until(lambda: os.path.exists(sock), 10, "munged's socket")
    ncpu = os.cpu_count() or 1
    conf = """ClusterName=lrtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={t}/munge/munge.sock
CredType=cred/munge
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool
SlurmctldPidFile={t}/slurmctld.pid
SlurmdPidFile={t}/slurmd.pid
SlurmctldPort={p1}
SlurmdPort={p2}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmctldLogFile={t}/slurmctld.log
SlurmdLogFile={t}/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
NodeName=localhost CPUs={n} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""".format(t=tmp, p1=free_port(), p2=free_port(), n=ncpu)
    with open(env["SLURM_CONF"], "w") as f:
        f.write(conf)
    for d in ("slurmctld", "slurmd"):
        daemons.append(subprocess.Popen([d, "-D", "-f", env["SLURM_CONF"]], env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(tmp, d + ".out"), "w")))

    def idle():
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() == "idle"
    wait_until(idle, 30, "the Slurm node to be idle")


rows = "".join('{"messages":[{"role":"user","content":"count to %d"},{"role":"assistant","content":"%s"}]}\n'
               % (i, " ".join(str(k) for k in range(i % 7 + 1))) for i in range(32)).encode()
HP = {"max_steps": 200, "save_steps": 10, "logging_steps": 1, "eval_steps": 1000, "batch_size": 2, "max_seq_len": 64,
      "seed": 7, "val_ratio": 0.1}


def submit(L, token, fid, devices=1):
    body = {"model": "tiny", "training_file": fid, "device": "cpu", "hyperparameters": HP, "lora": {"r": 4, "alpha": 8}}
    if devices > 1:
        body["resources"] = {"devices": devices}
        body["hyperparameters"] = dict(HP, max_steps=30)
    st, j = L.req("POST", "/v1/jobs", token, body)
    assert st == 200, (st, j)
    return j["id"]


def events(L, jid, token):
    return [e["message"] for e in L.req("GET", "/v1/jobs/%s/events?limit=1000" % jid, token)[1]["data"]]


L = ref = None
try:
    model = os.path.join(tmp, "model")
    mk = subprocess.run([worker, "mkmodel", "--arch", "llama", "--preset", "tiny", "--out", model, "--seed", "1"],
                        capture_output=True, text=True, timeout=120)
    assert mk.returncode == 0, mk.stderr
    try:
        start_slurm()
    except TimeoutError as e:
        logs = "".join(open(os.path.join(tmp, f)).read()[-600:] for f in ("slurmctld.out", "slurmd.out")
                       if os.path.exists(os.path.join(tmp, f)))
        R.check(False, "a Slurm on localhost starts", "%s: %s" % (e, logs))
        raise SystemExit
    R.check(True, "munged, slurmctld and slurmd run on localhost")

    ref = Lorad(worker, workers="cpu,2xcpu:1", extra=["--worker-threads", "1"])
    t = ref.admin("user", "add", "alice")
    ref.admin("model", "add", "tiny", model)
    ref.start()
    st, ds = ref.req("POST", "/v1/datasets?filename=count.jsonl", t, raw=rows)
    rid = submit(ref, t, ds["id"])
    rid2 = submit(ref, t, ds["id"], devices=2)
    wait_until(lambda: ref.finished(rid, t) and ref.finished(rid2, t), 600, "the reference jobs")
    ref_adapter = ref.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % rid, t)[1]
    R.check(isinstance(ref_adapter, bytes), "reference job on a local worker")
    ref2_adapter = ref.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % rid2, t)[1]
    R.check(isinstance(ref2_adapter, bytes) and ref.job(rid2, t)["worker"] != ref.job(rid, t)["worker"],
            "reference 2-device job on a local 2-rank worker", ref.job(rid2, t))
    ref.cleanup()
    ref = None

    wport = free_port()
    L = Lorad(worker, workers="", env=env)
    tokfile = os.path.join(tmp, "slurm.token")
    ta = L.admin("user", "add", "alice")
    with open(tokfile, "w") as f:
        f.write(L.admin("worker-token", "add", "slurm") + "\n")
    L.admin("model", "add", "tiny", model)
    L.extra += ["--worker-listen", "127.0.0.1:%d" % wport, "--slurm-devices", "cpu", "--slurm-partition", "debug",
                "--slurm-token-file", tokfile, "--worker-threads", "1",
                "--slurm-worker-args", "--data-dir %s --heartbeat 1" % os.path.join(tmp, "node")]
    L.start()
    st, ds = L.req("POST", "/v1/datasets?filename=count.jsonl", ta, raw=rows)
    fid = ds["id"]

    a = submit(L, ta, fid)
    wait_until(lambda: L.finished(a, ta), 600, "the job through Slurm")
    aj = L.job(a, ta)
    ev = events(L, a, ta)
    R.check(aj["status"] == "succeeded" and aj["worker"] == "slurm-" + a, "a job runs through sbatch and succeeds",
            (aj["status"], aj["worker"], aj["error"], ev))
    R.check(any(m.startswith("submitted to Slurm as batch job") for m in ev), "events: the sbatch submission", ev)
    wait_until(lambda: (L.job(a, ta)["slurm"] or {}).get("state") == "COMPLETED", 120, "Slurm's COMPLETED")
    R.check(L.job(a, ta)["slurm"]["job_id"].isdigit(), "the job object has the Slurm job id and state",
            L.job(a, ta)["slurm"])
    got = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % a, ta)[1]
    R.check(isinstance(got, bytes) and got == ref_adapter, "the same adapter as on a local worker, bit for bit")
    ws = L.req("GET", "/v1/workers", ta)[1]["data"]
    R.check(any(w["id"] == "slurm-" + a for w in ws), "/v1/workers lists the Slurm-launched worker", ws)

    # resources.devices 2: one batch job of --ntasks 2, its ranks started by srun
    d = submit(L, ta, fid, devices=2)
    wait_until(lambda: L.finished(d, ta), 600, "the 2-device job through Slurm")
    dj = L.job(d, ta)
    ev = events(L, d, ta)
    R.check(dj["status"] == "succeeded" and dj["worker"] == "slurm-" + d, "a 2-device job runs through Slurm",
            (dj["status"], dj["worker"], dj["error"], ev))
    R.check(any(m.startswith("submitted to Slurm as batch job") and "for 2 ranks (sbatch --ntasks 2, srun)" in m
                for m in ev), "events: one batch job for 2 ranks", ev)
    wait_until(lambda: (L.job(d, ta)["slurm"] or {}).get("state") == "COMPLETED", 120, "Slurm's COMPLETED (2 ranks)")
    sid = L.job(d, ta)["slurm"]["job_id"]
    sc = subprocess.run(["scontrol", "-o", "show", "job", sid], env=env, capture_output=True, text=True)
    R.check(" NumTasks=2 " in " " + sc.stdout + " ", "Slurm ran it as one job of 2 tasks", sc.stdout)
    with open(os.path.join(L.dir, "slurm", d + ".sh")) as f:
        R.check("srun --mpi=pmix" in f.read(), "the batch script starts the ranks with srun --mpi=pmix")
    ws = [w for w in L.req("GET", "/v1/workers", ta)[1]["data"] if w["id"] == "slurm-" + d]
    R.check(ws and "x 2 ranks" in (ws[0].get("device") or ""), "/v1/workers shows the Slurm worker's 2 ranks", ws)
    got = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % d, ta)[1]
    R.check(isinstance(got, bytes) and got == ref2_adapter,
            "2 ranks through Slurm: the same adapter as on a local 2-rank worker, bit for bit")

    b = submit(L, ta, fid)
    wait_until(lambda: (L.job(b, ta)["last_checkpoint_step"] or 0) >= 20 or L.finished(b, ta), 600, "a checkpoint")
    if L.finished(b, ta):
        R.check(False, "scancel mid-training", "the job finished before scancel")
    else:
        sid = L.job(b, ta)["slurm"]["job_id"]
        sc = subprocess.run(["scancel", sid], env=env, capture_output=True, text=True)
        R.check(sc.returncode == 0, "scancel of the batch job", sc.stderr)
        wait_until(lambda: L.finished(b, ta), 600, "the job after scancel")
        bj = L.job(b, ta)
        ev = events(L, b, ta)
        R.check(bj["status"] == "succeeded" and bj["retries"] == 1, "re-queued after scancel and finished",
                (bj["status"], bj["retries"], bj["error"], ev))
        R.check(any("Slurm job %s: CANCELLED" % sid in m for m in ev) and
                sum(m.startswith("submitted to Slurm") for m in ev) == 2 and
                any("resuming from checkpoint" in m for m in ev), "events: cancelled, submitted again, resumed", ev)
        got = L.req("GET", "/v1/jobs/%s/artifacts/adapter_model.safetensors" % b, ta)[1]
        R.check(isinstance(got, bytes) and got == ref_adapter, "resumed to the same adapter, bit for bit")

    # a batch job that fails before its worker takes the job: submitted
    # again, and after max_retries more the job fails with Slurm's reason
    L.stop()
    L.extra[-1] += " --no-such-option"
    L.start()
    c = submit(L, ta, fid)
    wait_until(lambda: L.finished(c, ta), 300, "the job whose batch jobs fail")
    cj = L.job(c, ta)
    msg = (cj["error"] or {}).get("message", "")
    ev = events(L, c, ta)
    R.check(cj["status"] == "failed" and "Slurm ended its batch job 4 times before the job started" in msg and
            "FAILED" in msg and sum(m.startswith("submitted to Slurm") for m in ev) == 4,
            "a batch job that keeps failing fails the job after max_retries, with Slurm's state", (cj["status"], msg, ev))
except SystemExit:
    pass
finally:
    for x in (L, ref):
        if x:
            x.cleanup()
    if os.path.exists(env["SLURM_CONF"]):
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
    for p in reversed(daemons):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if not os.environ.get("LR_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)
R.finish()
