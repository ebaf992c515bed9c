"""Jobs that misbehave (time out, get cancelled, vanish with their session) never harm other jobs.

Each case is a regression test from the hardening issue: what it broke before is in its docstring.
"""

import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

import ppgate as pp  # noqa: E402
from client_helpers import add, nap  # noqa: E402
from harness import Node, rss_bytes  # noqa: E402

SQ = "def sq(x):\n    return x*x\n"
SLEEP = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n"
WAIT = 30  # seconds: the bound on every wait for a job here


def submit(node, source, function, args, **fields):
    status, job, _ = node.request("POST", "/v1/jobs", dict(source=source, function=function,
                                                          args=list(args), **fields))
    assert status == 202 or status == 200, (status, job)
    return job["id"]


def wait_for(node, job_id):
    status, job, _ = node.request("GET", "/v1/jobs/%d?wait=%d" % (job_id, WAIT))
    assert status == 200, (status, job)
    return job


def warm_up(node, times=20):
    """Runs sq often enough that the scheduler knows it is short, so it is prefetched."""
    status, jobs, _ = node.request("POST", "/v1/jobs?wait=%d" % WAIT,
                                   [dict(source=SQ, function="sq", args=[i]) for i in range(times)])
    assert status == 200 and all(j["status"] == "done" for j in jobs["jobs"]), jobs


def wait_running(node, job_id):
    node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % job_id)[1]["status"] == "running",
                    timeout=WAIT, what="job %d to start" % job_id)


class TestCancelAndTimeoutHarmNoOtherJob(unittest.TestCase):
    def test_jobs_behind_a_timed_out_job_run_on_the_fresh_worker(self):
        """Before: a job submitted right after one that hit its timeout failed WorkerDied (SIGKILL)
        in 17 of 20 rounds: it was sent to the process that was being killed."""
        with Node(workers=1) as node:
            warm_up(node)
            for round_ in range(5):
                slow = submit(node, SLEEP, "nap", [30], timeout=0.3)
                wait_running(node, slow)
                followers = [submit(node, SQ, "sq", [round_ * 10 + i]) for i in range(4)]
                self.assertEqual(wait_for(node, slow)["error"]["type"], "TimeoutError")
                for i, job_id in enumerate(followers):
                    job = wait_for(node, job_id)
                    self.assertEqual(job["status"], "done", job)
                    self.assertEqual(job["result"], (round_ * 10 + i) ** 2)
                    self.assertEqual(job["attempts"], 1, "a prefetched job spent no attempt")

    def test_cancelling_a_running_job_requeues_the_prefetched_ones(self):
        """Before: one job behind the cancelled one failed, the other four stayed running forever and
        a one-worker node never ran anything again."""
        with Node(workers=1) as node:
            warm_up(node)
            for round_ in range(3):
                slow = submit(node, SLEEP, "nap", [30])
                wait_running(node, slow)
                followers = [submit(node, SQ, "sq", [i]) for i in range(5)]
                status, cancelled, _ = node.request("DELETE", "/v1/jobs/%d" % slow)
                self.assertEqual((status, cancelled["status"]), (200, "cancelled"))
                for i, job_id in enumerate(followers):
                    job = wait_for(node, job_id)
                    self.assertEqual((job["status"], job.get("result")), ("done", i * i), job)
            self.assertEqual(node.run(SQ, "sq", [9])["result"], 81)

    def test_a_timeout_in_the_python_client_harms_no_later_job(self):
        """Before: 9 of 10 rounds failed the next job with WorkerDied."""
        with Node(workers=1) as node, pp.Server(url="http://127.0.0.1:%d" % node.port) as server:
            for _ in range(20):
                self.assertEqual(server.submit(add, (1, 2))(timeout=WAIT), 3)
            for round_ in range(5):
                slow = server.submit(nap, (30,), timeout=0.3)
                later = [server.submit(add, (round_, i)) for i in range(4)]
                with self.assertRaises(pp.JobTimeoutError):
                    slow(timeout=WAIT)
                self.assertEqual([j(timeout=WAIT) for j in later], [round_ + i for i in range(4)])

    def test_a_session_closing_cancels_only_its_own_jobs(self):
        """Before: one session disconnecting (its jobs cancelled) killed 33 of 728 jobs of another."""
        with Node(workers=2) as node:
            url = "http://127.0.0.1:%d" % node.port
            with pp.Server(url=url) as steady:
                for _ in range(20):
                    self.assertEqual(steady.submit(add, (1, 1))(timeout=WAIT), 2)
                results, errors = [], []

                def keep_submitting():
                    try:
                        for k in range(15):
                            jobs = [steady.submit(add, (k, i)) for i in range(40)]
                            results.extend(j(timeout=WAIT) == k + i for i, j in enumerate(jobs))
                    except Exception as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)

                worker = threading.Thread(target=keep_submitting)
                worker.start()
                for _ in range(4):
                    leaving = pp.Server(url=url)
                    for _ in range(4):
                        leaving.submit(nap, (30,))
                    time.sleep(0.2)
                    leaving.destroy()  # its running jobs are cancelled: their workers are killed
                worker.join(WAIT * 2)
                self.assertFalse(worker.is_alive())
                self.assertEqual(errors, [])
                self.assertEqual((len(results), all(results)), (600, True))


class TestJobsDoNotWaitBehindASlowCall(unittest.TestCase):
    """Before: a slow call of a function known to be short held the jobs prefetched behind it while
    another worker was idle (8 of 40 held for 20 s), and their queue_seconds hid that wait."""

    def test_jobs_behind_an_overdue_call_run_on_the_idle_worker(self):
        with Node(workers=2) as node:
            for _ in range(30):
                node.run(SLEEP, "nap", [0])  # nap is known to be short
            for round_ in range(3):
                slow = submit(node, SLEEP, "nap", [30])
                followers = [submit(node, SLEEP, "nap", [0]) for _ in range(40)]
                for job_id in followers:
                    job = wait_for(node, job_id)
                    self.assertEqual((job["status"], job["attempts"]), ("done", 1), job)
                status, job, _ = node.request("GET", "/v1/jobs/%d" % slow)
                self.assertEqual(job["status"], "running", "every follower ended while the slow call ran")
                node.request("DELETE", "/v1/jobs/%d" % slow)

    def test_queue_seconds_counts_the_wait_behind_another_job(self):
        with Node(workers=1) as node:
            for _ in range(30):
                node.run(SLEEP, "nap", [0])
            slow = submit(node, SLEEP, "nap", [0.6])
            wait_running(node, slow)
            followers = [submit(node, SLEEP, "nap", [0]) for _ in range(3)]
            self.assertEqual(wait_for(node, slow)["status"], "done")
            for job_id in followers:
                job = wait_for(node, job_id)
                self.assertEqual(job["status"], "done", job)
                # One worker: none of them could start before the 0.6 s call ended.
                self.assertGreater(job["queue_seconds"], 0.3, job)


PROBE = """\
import builtins, os, sys
def probe():
    mask = os.umask(0o022)
    os.umask(mask)
    return {"cwd": os.getcwd(), "env": os.environ.get("PPGATE_TEST_LEAK"), "path": sys.path[:3],
            "umask": mask, "limit": sys.getrecursionlimit(), "len": builtins.len is not None,
            "pid": os.getpid()}
"""


class TestIsolationBetweenJobsOnOneWorker(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(workers=1)
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def probe(self):
        job = self.node.run(PROBE, "probe")
        self.assertEqual(job["status"], "done", job)
        self.assertEqual((job["stdout"], job["stderr"]), ("", ""))
        return job["result"]

    def test_what_a_job_changes_in_its_worker_is_put_back(self):
        """Before: cwd, os.environ, sys.path, umask, recursion limit and builtins leaked into the
        next job."""
        baseline = self.probe()
        job = self.node.run("import builtins, os, sys\n"
                            "def meddle():\n"
                            "    os.chdir('/tmp')\n"
                            "    os.environ['PPGATE_TEST_LEAK'] = 'leaked'\n"
                            "    sys.path.insert(0, '/nowhere')\n"
                            "    os.umask(0o077)\n"
                            "    sys.setrecursionlimit(123)\n"
                            "    builtins.len = None\n"
                            "    return 1\n", "meddle")
        self.assertEqual(job["status"], "done", job)
        after = self.probe()
        self.assertEqual(after, baseline)  # the same worker (pid), its state put back

    def test_a_job_that_sabotages_what_the_runtime_uses_fails_only_itself(self):
        """Before: each of these crashed the worker (exit 70), some on the next job."""
        pid = self.probe()["pid"]
        cases = [
            ("class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\n"
             "def f():\n    raise E()\n", "failed"),
            ("import io\ndef f():\n    io.StringIO = None\n    return 1\n", "done"),
            ("import time\ndef f():\n    time.perf_counter = None\n    return 1\n", "done"),
            ("import pickle, json\ndef f():\n    pickle.loads = None\n    json.loads = None\n    return 1\n", "done"),
            ("def f():\n    return 'x' * (300 * 1024 * 1024)\n", "failed"),  # over the reply limit
        ]
        for source, status in cases:
            with self.subTest(source=source.splitlines()[-2]):
                job = self.node.run(source, "f")
                self.assertEqual(job["status"], status, job)
                if status == "failed":
                    self.assertNotEqual(job["error"]["type"], "WorkerDied", job)
                self.assertEqual(self.probe()["pid"], pid, "the worker survived")
        self.assertEqual(self.node.run(SQ, "sq", [5])["result"], 25)

    def test_a_job_that_leaves_things_running_gets_a_fresh_worker_after_it(self):
        """Before: a thread a job left running printed into the next job's output; a leftover
        thread calling os._exit or a pending alarm killed the next, innocent job."""
        cases = {
            "printing thread": "import threading, time\ndef f():\n"
                               "    def spam():\n        while True:\n            print('spam')\n            time.sleep(0.001)\n"
                               "    threading.Thread(target=spam, daemon=True).start()\n    return 1\n",
            "exiting thread": "import os, threading, time\ndef f():\n"
                              "    threading.Thread(target=lambda: (time.sleep(0.3), os._exit(3))).start()\n    return 1\n",
            "pending alarm": "import signal\ndef f():\n    signal.alarm(1)\n    return 1\n",
            "child process": "import subprocess\ndef f():\n    subprocess.Popen(['sleep', '30'])\n    return 1\n",
        }
        for name, source in cases.items():
            with self.subTest(name):
                before = self.probe()["pid"]
                self.assertEqual(self.node.run(source, "f")["result"], 1)
                job = self.node.run("import time\ndef g():\n    time.sleep(1.5)\n    return 2\n", "g")
                self.assertEqual((job["status"], job.get("result"), job["stdout"]), ("done", 2, ""), job)
                self.assertNotEqual(self.probe()["pid"], before, "the worker was replaced")

    def test_a_worker_that_dies_is_replaced_even_if_its_child_holds_the_link(self):
        """Before: a child that inherited the link kept the node waiting for an EOF that never came,
        and the slot stayed busy until the child exited."""
        job = self.node.run("import os, subprocess\ndef f():\n"
                            "    fd = os.dup(3)\n    os.set_inheritable(fd, True)\n"
                            "    subprocess.Popen(['sleep', '15'], pass_fds=[fd], start_new_session=True)\n"
                            "    os._exit(5)\n", "f", wait=10)
        self.assertEqual(job["error"]["type"], "WorkerDied", job)
        self.assertIn("exited with status 5", job["error"]["message"], job)
        self.assertEqual(self.node.run(SQ, "sq", [8], wait=20)["result"], 64)

    def test_a_forked_child_never_answers_for_the_worker(self):
        """Before: a forked child that returned into the worker loop became a second reader of the
        link."""
        job = self.node.run("import os\ndef f():\n    return os.fork()\n", "f")
        self.assertEqual(job["status"], "done", job)
        self.assertNotEqual(job["result"], 0)  # the parent's answer, not the child's
        for i in range(20):
            self.assertEqual(self.node.run(SQ, "sq", [i])["result"], i * i)


SPY = """\
import os, select
def spy(wait, started=None):
    # Reads whatever reaches the worker's link while this job runs (wait > 0: for that long).
    # `started`: a file made once the job's own code runs.
    os.set_blocking(3, False)
    taken = b""
    if started:
        open(started, "w").close()
    if wait:
        select.select([3], [], [], wait)
    try:
        taken = os.read(3, 1 << 20)
    except BlockingIOError:
        pass
    return taken.decode("latin-1")
"""

FORGE = """\
import os, struct
def forge(job_id):
    # Writes a reply frame for job_id on the worker's link, as if the worker had sent it.
    reply = b'0 %d ok 0\\n"result":666,"stdout":"","stderr":""' % job_id
    os.write(3, struct.pack('<I', len(reply)) + reply)
    return 1
"""

SECRET = 918273645  # arguments of other jobs that no job may read off the link


class TestTheLinkIsTheWorkersOwn(unittest.TestCase):
    """Before: job code could read the run messages prefetched behind it (other clients' arguments)
    from the worker's link, and forge replies."""

    def run_behind(self, node, first, args):
        """Runs `first` with followers sq(SECRET + i) queued behind it; returns its job and theirs."""
        head = submit(node, first[0], first[1], args)
        followers = [submit(node, SQ, "sq", [SECRET + i]) for i in range(5)]
        return wait_for(node, head), [wait_for(node, f) for f in followers]

    def assert_followers_unharmed(self, followers):
        for i, job in enumerate(followers):
            self.assertEqual((job["status"], job.get("result")), ("done", (SECRET + i) ** 2), job)
            self.assertEqual(job["attempts"], 1, "a job whose frame was taken spends no attempt")

    def test_frames_queued_before_a_job_starts_are_out_of_its_reach(self):
        with Node(workers=1) as node:
            warm_up(node)
            for _ in range(20):
                node.run(SPY, "spy", [0])  # known to be short: prefetched like sq
            blocker = submit(node, SLEEP, "nap", [0.5])
            spy = submit(node, SPY, "spy", [0])
            followers = [submit(node, SQ, "sq", [SECRET + i]) for i in range(5)]
            self.assertEqual(wait_for(node, blocker)["status"], "done")
            taken = wait_for(node, spy)
            self.assertEqual(taken["status"], "done", taken)
            self.assertNotIn(str(SECRET), taken["result"])
            self.assert_followers_unharmed([wait_for(node, f) for f in followers])

    def test_a_job_that_reads_the_link_gets_its_worker_replaced(self):
        """Frames that reach the worker while a job runs are within the job's reach (one process):
        taking them shows as a gap, the worker is replaced and their jobs run on the next one."""
        with Node(workers=1) as node:
            warm_up(node)
            for _ in range(20):
                node.run(SPY, "spy", [0])  # known to be short: jobs are prefetched behind it
            pid = node.worker_pids()[0]
            folder = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, folder, True)
            started = os.path.join(folder, "started")
            spy = submit(node, SPY, "spy", [5, started])
            # Running in its code, not only sent: frames that arrive before are the loop's.
            node.wait_until(lambda: os.path.exists(started), timeout=WAIT, what="the spy to run")
            followers = [submit(node, SQ, "sq", [SECRET + i]) for i in range(5)]
            self.assertIn(str(SECRET), wait_for(node, spy)["result"], "the spy read a frame")
            self.assert_followers_unharmed([wait_for(node, f) for f in followers])
            node.wait_until(lambda: node.worker_pids() and node.worker_pids()[0] != pid,
                            timeout=WAIT, what="the worker to be replaced")
            self.assertIn("job %d read the worker's link" % spy, node.log_text())
            self.assertEqual(node.run(SQ, "sq", [7])["result"], 49)

    def test_a_reply_for_another_job_replaces_the_worker_and_fails_only_the_forger(self):
        with Node(workers=1) as node:
            warm_up(node)
            forger, followers = self.run_behind(node, (FORGE, "forge"), [999999])
            self.assertEqual((forger["status"], forger["error"]["type"]), ("failed", "WorkerDied"), forger)
            self.assert_followers_unharmed(followers)
            self.assertIn("out of turn", node.log_text())

    def test_a_job_that_forges_its_own_reply_harms_no_job_behind_it(self):
        with Node(workers=1) as node:
            warm_up(node)
            last = submit(node, SQ, "sq", [1])
            wait_for(node, last)
            forger, followers = self.run_behind(node, (FORGE, "forge"), [last + 1])
            self.assertEqual(forger["id"], last + 1)
            self.assertEqual(forger["status"], "done", forger)  # its own result: its own business
            self.assert_followers_unharmed(followers)
            self.assertIn("out of turn", node.log_text())


# One function for a run of short jobs and for the one among them that misbehaves: known to be
# short (warmed), so the node places the whole batch on the worker at once, and the worker holds
# the short jobs' replies back while the rest run (worker_module.cpp, reply_writer).
MIXED = """\
import ctypes, os, struct, time
def mixed(kind, x):
    if kind == "exit":
        os._exit(7)
    if kind == "abort":
        os.abort()
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "forge":
        reply = b'0 999999 ok 0\\n"result":666,"stdout":"","stderr":""'
        os.write(3, struct.pack('<I', len(reply)) + reply)
    if kind == "nap":
        time.sleep(x)
    return x * x
"""


class TestRepliesHeldBackForARunOfShortJobs(unittest.TestCase):
    """A worker with more jobs waiting holds a short job's reply back and sends it with the next
    ones, in one write. Held at most a millisecond, and written before the worker ends, so no job
    waits for a long one behind it, nor is blamed for what a job after it did."""

    def run_batch(self, node, kinds):
        status, _, _ = node.request("POST", "/v1/jobs?wait=%d" % WAIT,
                                    [dict(source=MIXED, function="mixed", args=["none", i]) for i in range(20)])
        self.assertEqual(status, 200)
        status, body, _ = node.request("POST", "/v1/jobs", [dict(source=MIXED, function="mixed", args=[k, i])
                                                            for i, k in enumerate(kinds)])
        self.assertIn(status, (200, 202), body)
        return [j["id"] for j in body["jobs"]]

    def test_a_short_jobs_result_does_not_wait_for_the_long_job_behind_it(self):
        with Node(workers=1) as node:
            ids = self.run_batch(node, ["none", "none", "none", "nap", "none", "none"])
            # (job 3 naps for 3 seconds)
            self.assertEqual(wait_for(node, ids[2])["result"], 4)
            self.assertEqual(node.request("GET", "/v1/jobs/%d" % ids[3])[1]["status"], "running",
                             "the short job's result came before the long job ended")
            self.assertEqual([wait_for(node, i).get("result") for i in ids], [0, 1, 4, 9, 16, 25])

    def test_a_worker_that_dies_blames_only_the_job_that_killed_it(self):
        for kind in ("exit", "abort", "segfault"):
            with self.subTest(kind), Node(workers=1) as node:
                ids = self.run_batch(node, ["none", "none", "none", kind, "none", "none"])
                jobs = [wait_for(node, i) for i in ids]
                self.assertEqual([(j["status"], j.get("result")) for j in jobs[:3]],
                                 [("done", 0), ("done", 1), ("done", 4)], jobs[:3])
                self.assertEqual((jobs[3]["status"], jobs[3]["error"]["type"]), ("failed", "WorkerDied"), jobs[3])
                self.assertEqual([(j["status"], j.get("result")) for j in jobs[4:]],
                                 [("done", 16), ("done", 25)], jobs[4:])

    def test_a_forged_reply_behind_held_ones_fails_only_the_forger(self):
        with Node(workers=1) as node:
            ids = self.run_batch(node, ["none", "none", "none", "forge", "none", "none"])
            jobs = [wait_for(node, i) for i in ids]
            for i in (0, 1, 2, 4, 5):
                self.assertEqual((jobs[i]["status"], jobs[i].get("result"), jobs[i]["attempts"]),
                                 ("done", i * i, 1), jobs[i])
            self.assertEqual((jobs[3]["status"], jobs[3]["error"]["type"]), ("failed", "WorkerDied"), jobs[3])
            self.assertIn("out of turn", node.log_text())


class TestRetainedOutputIsBounded(unittest.TestCase):
    def test_chatty_jobs_are_cut_and_old_results_forgotten_within_the_byte_budget(self):
        """Before: --keep-finished counted jobs, not bytes: 10 jobs printing 50 MB each left 596 MB
        resident in the node."""
        with Node("--keep-finished-bytes", str(64 * 1024 * 1024), workers=1) as node:
            chatty = "import sys\ndef f(i):\n    sys.stdout.write('y' * (50 * 1024 * 1024))\n    return i\n"
            ids = []
            for i in range(10):
                job = node.run(chatty, "f", [i])
                self.assertEqual(job["result"], i)
                self.assertLess(len(job["stdout"]), 17 * 1024 * 1024)
                self.assertIn("[ppgate: output truncated", job["stdout"])
                ids.append(job["id"])
            kept = [i for i in ids if node.request("GET", "/v1/jobs/%d" % i)[0] == 200]
            self.assertIn(ids[-1], kept)
            self.assertLess(len(kept), 10)  # the oldest were forgotten: 404
            self.assertLess(rss_bytes(node.proc.pid), 400 * 1024 * 1024)


class TestJobsCannotReadTheSecret(unittest.TestCase):
    def test_the_secret_is_in_no_workers_environment_nor_the_nodes(self):
        """Before: every job could read the node's secret from its environment and from
        /proc/<node>/environ."""
        secret = "very-secret-token-4242"
        peer_secret = "the-peers-secret-9876"
        with Node("--peer-listen", "127.0.0.1:0", "--peer-secret-env", "MY_PEER_SECRET", workers=1,
                  env={"PPGATE_SECRET": secret, "MY_PEER_SECRET": peer_secret}) as node:
            node.token = secret
            job = node.run("import os\n"
                           "def look():\n"
                           "    with open('/proc/%d/environ' % os.getppid(), 'rb') as f:\n"
                           "        node_env = f.read().decode(errors='replace')\n"
                           "    return [repr(dict(os.environ)), node_env]\n", "look")
            self.assertEqual(job["status"], "done", job)
            for text in job["result"]:
                self.assertNotIn(secret, text)
                self.assertNotIn(peer_secret, text)
            self.assertNotIn("PPGATE_SECRET", job["result"][0])


if __name__ == "__main__":
    unittest.main()
