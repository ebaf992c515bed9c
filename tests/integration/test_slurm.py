"""ppgate.slurm.SlurmCluster on a real one-host Slurm (Debian's slurm-wlm and munge): batch jobs
that join the caller's node, run its jobs, are cancelled by close(), and drain at walltime.

The test starts munged, slurmctld and slurmd itself, as root, with a configuration, ports, state
and munge socket of its own in a temporary directory (ProctrackType=proctrack/linuxproc,
TaskPlugin=task/none, no accounting), and stops them all at the end."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

import ppgate as pp  # noqa: E402
from harness import ROOT, Node, ppgate_binary  # noqa: E402
from ppgate.slurm import SlurmCluster, SlurmError  # noqa: E402
from test_peers import submit_all  # noqa: E402

TEMPLATE = os.path.join(ROOT, "deploy", "slurm", "ppgate-node.sbatch")

WAIT = 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out after %s s waiting for %s" % (timeout, what))


class OneHostSlurm:
    """munged, slurmctld and slurmd for this host, all children of this process."""

    def __init__(self):
        if os.geteuid() != 0:
            raise RuntimeError("the Slurm test starts slurmctld and slurmd, which needs root")
        for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"):
            if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
                raise RuntimeError("%s is missing: install slurm-wlm and munge (tools/install-deps.sh)" % tool)
        self.dir = tempfile.mkdtemp(prefix="ppgate-slurm-")
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "munge")
        self.host = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.procs = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def start(self):
        for d in ("state", "spool"):
            os.mkdir(self.path(d))
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "ClusterName=ppgatetest",
                "SlurmctldHost=%s(127.0.0.1)" % self.host,
                "SlurmUser=root",
                "SlurmctldPort=%d" % free_port(),
                "SlurmdPort=%d" % free_port(),
                "StateSaveLocation=" + self.path("state"),
                "SlurmdSpoolDir=" + self.path("spool"),
                "SlurmctldPidFile=" + self.path("slurmctld.pid"),
                "SlurmdPidFile=" + self.path("slurmd.pid"),
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "AuthType=auth/munge",
                "AuthInfo=socket=" + self.path("munge.socket"),
                "CredType=cred/munge",
                "SchedulerType=sched/builtin",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "ReturnToService=2",
                "MpiDefault=none",
                "SlurmctldLogFile=" + self.path("slurmctld.log"),
                "SlurmdLogFile=" + self.path("slurmd.log"),
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "KillWait=15",
                "NodeName=%s NodeAddr=127.0.0.1 CPUs=%d State=UNKNOWN" % (self.host, os.cpu_count() or 1),
                "PartitionName=test Nodes=%s Default=YES MaxTime=INFINITE State=UP" % self.host,
                ""]))
        self.procs.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground",
             "--socket=" + self.path("munge.socket"), "--pid-file=" + self.path("munged.pid"),
             "--log-file=" + self.path("munged.log"), "--seed-file=" + self.path("munge.seed")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(self.path("munge.socket")), 20, "munged's socket")
        for daemon in ("slurmctld", "slurmd"):
            self.procs.append(subprocess.Popen(["/usr/sbin/" + daemon, "-D", "-f", self.conf], env=self.env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 60, "the Slurm node to be idle")

    def run(self, *args):
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30)

    def queued_jobs(self):
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def stop(self):
        self.run("scancel", "--user=root")
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # munged's --foreground child runs under runuser: make sure nothing is left.
        subprocess.run(["pkill", "-f", "munged.*" + self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def remote_nodes(server):
    return {name: n for name, n in server.get_active_nodes().items() if name != "local"}


class TestSlurmCluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.slurm = OneHostSlurm()
        try:
            cls.slurm.start()
        except BaseException:
            cls.slurm.stop()
            raise
        os.environ["SLURM_CONF"] = cls.slurm.conf  # for the client's sbatch and scancel
        cls.shared = tempfile.mkdtemp(prefix="ppgate-slurm-shared-")

    @classmethod
    def tearDownClass(cls):
        cls.slurm.stop()
        os.environ.pop("SLURM_CONF", None)
        shutil.rmtree(cls.shared, ignore_errors=True)
        left = subprocess.run(["pgrep", "-f", "slurmctld|slurmd -D|munged --foreground.*ppgate-slurm"],
                              capture_output=True, text=True).stdout.split()
        assert not left, "Slurm daemons left running: %s" % left

    def cluster(self, **options):
        return SlurmCluster(cpus_per_job=1, head_host="127.0.0.1", shared_directory=self.shared,
                            python=sys.executable, **options)

    def test_the_job_script_shows_what_is_submitted_and_no_secret(self):
        cluster = self.cluster(jobs=3, walltime="00:05:00", partition="test", memory="100M",
                               extra_directives=["--comment=ppgate", "#SBATCH --nice=1"])
        script = cluster.job_script()
        for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --time=00:05:00", "#SBATCH --partition=test",
                     "#SBATCH --mem=100M", "#SBATCH --comment=ppgate", "#SBATCH --nice=1"):
            self.assertIn(line, script.splitlines())
        self.assertRegex(script, r"exec .*ppgate serve --listen 127\.0\.0\.1:0 --workers 1 --join 127\.0\.0\.1:PORT "
                                 r"--secret-file \S+ --python \S+ --drain-timeout 20")
        with self.assertRaises(ValueError):
            SlurmCluster(walltime="1 hour")
        with self.assertRaises(TypeError):
            SlurmCluster(extra_directives="--comment=x")
        self.assertEqual(cluster.job_ids, [])  # nothing is submitted before a Server uses it
        # Off a submit host: a clear error, and the Server does not stay half made.
        saved = os.environ["PATH"]
        os.environ["PATH"] = "/nonexistent"
        try:
            with self.assertRaisesRegex(SlurmError, "sbatch is not on PATH"):
                pp.Server(0, ppservers=self.cluster(jobs=1))
        finally:
            os.environ["PATH"] = saved

    def test_two_batch_jobs_join_and_run_100_jobs_then_close_cancels_them(self):
        cluster = self.cluster(jobs=2, walltime="00:10:00")
        with pp.Server(0, ppservers=cluster, secret="slurm-test-secret") as server:
            self.assertEqual(len(cluster.job_ids), 2)
            nodes = wait_for(lambda: len(remote_nodes(server)) == 2 and remote_nodes(server), WAIT,
                             "two batch jobs to join")
            self.assertEqual(sorted(nodes.values()), [1, 1])
            jobs = [server.submit(pow, (i, 2)) for i in range(100)]
            self.assertEqual([j(timeout=WAIT) for j in jobs], [i * i for i in range(100)])
            stats = server._request("GET", "/v1/stats")
            ran = {n["name"]: n["njobs"] for n in stats["nodes"] if n["njobs"]}
            self.assertEqual(set(ran), set(nodes), ran)  # both batch jobs ran some, the head none
            script = cluster.job_script()
            self.assertNotIn("slurm-test-secret", script)
            secret_file = re.search(r"--secret-file (\S+)", script).group(1)
            self.assertEqual(os.stat(secret_file).st_mode & 0o777, 0o600)
            with open(secret_file) as f:
                self.assertEqual(f.read(), "slurm-test-secret")
            for job_id in cluster.job_ids:  # the secret is in no job's command line
                shown = self.slurm.run("scontrol", "show", "job", job_id).stdout
                self.assertNotIn("slurm-test-secret", shown)
            # scale down by one, then close: scancel, and each batch job drains and leaves.
            first, second = cluster.job_ids
            cluster.scale(1)
            self.assertEqual(cluster.job_ids, [first])
            wait_for(lambda: second not in self.slurm.queued_jobs(), WAIT, "the scaled-away job to end")
            cluster.close()
            wait_for(lambda: not self.slurm.queued_jobs(), WAIT, "close() to end the batch jobs")
            self.assertFalse(os.path.exists(secret_file))
            wait_for(lambda: not any(n for n in remote_nodes(server).values()), WAIT, "the nodes to leave")
        for job_id in (first, second):
            with open(os.path.join(self.shared, "ppgate-%s.out" % job_id)) as f:
                log = f.read()
            self.assertIn("joined head 127.0.0.1:", log)
            self.assertRegex(log, r"drained: \d+ jobs finished, \d+ handed back, 0 lost")

    def test_walltime_expiry_drains_the_node(self):
        # Slurm's shortest limit is a minute; it acts on it within about half a minute more.
        cluster = self.cluster(jobs=1, walltime="1", drain_timeout=10)
        with pp.Executor(cluster=cluster) as executor:
            wait_for(lambda: len(remote_nodes(executor._server)) == 1, WAIT, "the batch job to join")
            job_id = cluster.job_ids[0]
            started = time.monotonic()
            futures = []
            # Jobs of 3 s, one after the other, until the walltime's SIGTERM: the one running
            # then finishes; the node takes no more.
            while job_id in self.slurm.queued_jobs() and time.monotonic() - started < 150:
                futures.append(executor.submit(time.sleep, 3))
                time.sleep(1)
            self.assertNotIn(job_id, self.slurm.queued_jobs(), "the walltime did not end the batch job")
            with open(os.path.join(self.shared, "ppgate-%s.out" % job_id)) as f:
                log = f.read()
            self.assertIn("DUE TO TIME LIMIT", log)
            self.assertIn("SIGTERM: draining", log)
            finished, handed_back, lost = map(int, re.search(
                r"drained: (\d+) jobs finished, (\d+) handed back, (\d+) lost", log).groups())
            self.assertEqual(lost, 0)
            self.assertGreaterEqual(finished, 1)
            # Every job that ran ended done; the others wait at the head for another node.
            ended = [f for f in futures if f.done()]
            self.assertGreaterEqual(len(ended), 1)
            for f in ended:
                self.assertIsNone(f.result())
            executor.shutdown(wait=False, cancel_futures=True)

    def test_the_documented_sbatch_template_joins_a_head(self):
        secret = "template-test-secret"
        secret_file = os.path.join(self.shared, "template-secret")
        with open(secret_file, "w") as f:
            f.write(secret)
        os.chmod(secret_file, 0o600)
        with Node("--peer-listen", "127.0.0.1:0", workers=0, env={"PPGATE_SECRET": secret}) as head:
            head.token = secret
            exports = ",".join(["ALL", "PPGATE_HEAD=127.0.0.1:%d" % head.peer_port, "PPGATE_SECRET_FILE=" + secret_file,
                                "PPGATE=" + os.path.abspath(ppgate_binary()), "PPGATE_PYTHON=" + sys.executable])
            done = self.slurm.run("sbatch", "--parsable", "--export=" + exports, "--cpus-per-task=1",
                                  "--output=" + os.path.join(self.shared, "template-%j.out"), TEMPLATE)
            self.assertEqual(done.returncode, 0, done.stderr)
            job_id = done.stdout.strip()
            try:
                head.wait_until(lambda: [n["slots"] for n in head.request("GET", "/v1/nodes")[1]["nodes"]
                                         if n.get("joined") and n["connected"]] == [1], WAIT, "the batch job to join")
                status, jobs = submit_all(head, 20)
                self.assertEqual([j["result"] for j in jobs], [i * i for i in range(20)])
            finally:
                self.slurm.run("scancel", job_id)
            wait_for(lambda: job_id not in self.slurm.queued_jobs(), WAIT, "scancel to end the batch job")
            with open(os.path.join(self.shared, "template-%s.out" % job_id)) as f:
                self.assertIn("drained:", f.read())
        # Without the variables it says what is missing.
        done = self.slurm.run("bash", TEMPLATE)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("PPGATE_HEAD", done.stderr)


if __name__ == "__main__":
    unittest.main()
