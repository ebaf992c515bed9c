"""The durable journal (ppgate serve --journal, docs/cli.md "Journal"): jobs survive kill -9 and
restarts, results are served after them, and a journal that cannot be used stops the node at
start with a clear error."""

import os
import signal
import sqlite3
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

import ppgate as pp  # noqa: E402
from client_helpers import hold  # noqa: E402
from harness import Node, run_ppgate  # noqa: E402

# Appends its tag to a file, so the file tells how many times each job ran, then returns x * x.
MARK = ("def mark(path, tag, x):\n"
        "    with open(path, 'a') as f:\n"
        "        f.write('%d\\n' % tag)\n"
        "    return x * x\n")
# Holds its worker until `release` exists (at most 60 s), noting each start.
HOLD = ("import os, time\n"
        "def hold(starts, release, tag):\n"
        "    with open(starts, 'a') as f:\n"
        "        f.write('%d\\n' % tag)\n"
        "    deadline = time.monotonic() + 60\n"
        "    while not os.path.exists(release) and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    return tag\n")


def read_tags(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line) for line in f.read().split()]


def journal_node(path, *extra, workers=2, env=None):
    return Node("--journal", path, *extra, workers=workers, env=env)


class TestJournal(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = os.path.join(self.tmp.name, "jobs.db")

    def file(self, name):
        return os.path.join(self.tmp.name, name)

    def test_kill_9_with_1000_queued_and_50_running_then_every_job_ends_once(self):
        starts, release, marks = self.file("starts"), self.file("release"), self.file("marks")
        node = journal_node(self.path, workers=50)
        node.start()
        try:
            held = [{"source": HOLD, "function": "hold", "args": [starts, release, t]} for t in range(50)]
            status, data, _ = node.request("POST", "/v1/jobs", held)
            self.assertEqual(status, 202, data)
            held_ids = [j["id"] for j in data["jobs"]]
            node.wait_until(lambda: len(read_tags(starts)) == 50, timeout=60, what="50 running jobs")
            queued = [{"source": MARK, "function": "mark", "args": [marks, t, t]} for t in range(1000)]
            status, data, _ = node.request("POST", "/v1/jobs", queued)
            self.assertEqual(status, 202, data)
            queued_ids = [j["id"] for j in data["jobs"]]
            self.assertEqual(node.request("GET", "/v1/stats")[1]["queue_depth"], 1000)
        finally:
            node.kill()  # SIGKILL: nothing is flushed or said
        self.assertEqual(read_tags(marks), [])  # none of the queued ones had started

        open(release, "w").close()  # from now on a held job returns at once
        with journal_node(self.path, workers=4) as node:
            for job_id, tag in zip(held_ids, range(50)):
                status, job, _ = node.request("GET", "/v1/jobs/%d?wait=120" % job_id)
                self.assertEqual((status, job["status"], job.get("result")), (200, "done", tag),
                                 (job, node.log_text()[-3000:]))
                self.assertEqual(job["attempts"], 2)  # the one the kill cut short, and this one
                self.assertEqual(job["interrupted_attempts"], 1)
            for job_id, tag in zip(queued_ids, range(1000)):
                status, job, _ = node.request("GET", "/v1/jobs/%d?wait=120" % job_id)
                self.assertEqual((status, job["status"], job.get("result")), (200, "done", tag * tag),
                                 (job, node.log_text()[-3000:]))
                self.assertEqual(job["attempts"], 1)
            # Each queued job ran exactly once; each held one started twice (before and after).
            self.assertEqual(sorted(read_tags(marks)), list(range(1000)), node.log_text()[-6000:])
            self.assertEqual(sorted(read_tags(starts)), sorted(list(range(50)) * 2), node.log_text()[-6000:])
            self.assertIn("1050 unfinished ones queued again", node.log_text())
            # New jobs get ids after the journal's.
            fresh = node.run(MARK, "mark", [marks, 5000, 3])
            self.assertGreater(fresh["id"], max(held_ids + queued_ids))

    def test_results_are_served_after_a_restart_and_expire_past_keep_finished(self):
        with journal_node(self.path, "--keep-finished", "5", workers=1) as node:
            ids = [node.run("def f(x):\n    return [x, 'r']\n", "f", [i])["id"] for i in range(8)]
            failed = node.run("def g():\n    raise KeyError('gone')\n", "g")
            node.stop(sig=signal.SIGINT)
        with journal_node(self.path, "--keep-finished", "5", workers=1) as node:
            for i, job_id in enumerate(ids):
                status, job, _ = node.request("GET", "/v1/jobs/%d" % job_id)
                if i < 4:  # the oldest are forgotten: 5 are kept, the failed one among them
                    self.assertEqual(status, 404)
                else:
                    self.assertEqual((status, job["status"], job["result"]), (200, "done", [i, "r"]))
            status, job, _ = node.request("GET", "/v1/jobs/%d" % failed["id"])
            self.assertEqual((job["status"], job["error"]["type"]), ("failed", "KeyError"))
            listed = node.request("GET", "/v1/jobs")[1]["jobs"]
            self.assertEqual([j["id"] for j in listed], ids[4:] + [failed["id"]])
        db = sqlite3.connect(self.path)
        try:
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            self.assertEqual(db.execute("SELECT count(*) FROM jobs").fetchone()[0], 5)
        finally:
            db.close()

    def test_finished_jobs_expire_after_keep_finished_for_and_stay_expired_after_a_restart(self):
        with journal_node(self.path, "--keep-finished-for", "1", workers=1) as node:
            first = node.run("def f():\n    return 1\n", "f")["id"]
            self.assertEqual(node.request("GET", "/v1/jobs/%d" % first)[0], 200)
            node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % first)[0] == 404, timeout=20,
                            what="the finished job to expire")
            node.stop(sig=signal.SIGINT)
        db = sqlite3.connect(self.path)
        try:
            self.assertEqual(db.execute("SELECT count(*) FROM jobs").fetchone()[0], 0)
        finally:
            db.close()

    def test_a_session_s_jobs_end_lost_after_a_restart_unless_detached(self):
        secret = "journal-test-secret"
        release, starts = self.file("release"), self.file("starts")
        node = journal_node(self.path, workers=1, env={"PPGATE_SECRET": secret})
        node.start()
        node.token = secret
        try:
            with pp.Server(url="http://127.0.0.1:%d" % node.port, token=secret) as server:
                blocker = server.submit(hold, (release, starts))
                node.wait_until(lambda: os.path.exists(starts), what="the first job to start")
                detached = server.submit(pow, (3, 4), detach=True)
                plain = server.submit(pow, (2, 5))
                server._confirm_detached()  # (what destroy() does; here the node dies first)
                node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % plain.id)[0] == 200,
                                what="the plain job on the node")
                node.kill()
                with self.assertRaises(pp.JobLostError):
                    blocker()
        finally:
            node.kill()
        open(release, "w").close()
        with journal_node(self.path, workers=1, env={"PPGATE_SECRET": secret}) as node:
            node.token = secret
            with pp.Server(url="http://127.0.0.1:%d" % node.port, token=secret) as server:
                self.assertEqual(server.job(detached.id)(timeout=60), 81)
                for gone in (plain.id, blocker.id):
                    with self.assertRaises(pp.JobLostError) as lost:
                        server.job(gone)(timeout=60)
                    self.assertEqual(lost.exception.type, "NodeRestarted")

    def test_a_drained_node_leaves_its_unstarted_jobs_to_the_next_start(self):
        starts, release, marks = self.file("starts"), self.file("release"), self.file("marks")
        node = journal_node(self.path, "--drain-timeout", "0", workers=1)
        node.start()
        try:
            status, held, _ = node.request("POST", "/v1/jobs", {"source": HOLD, "function": "hold",
                                                                "args": [starts, release, 0]})
            node.wait_until(lambda: read_tags(starts) == [0], what="the held job")
            status, queued, _ = node.request("POST", "/v1/jobs", [
                {"source": MARK, "function": "mark", "args": [marks, t, t]} for t in range(3)])
            # Its clients hear the node stop; the journal keeps the jobs for the next start.
            self.assertEqual(node.stop(sig=signal.SIGTERM), 0)
        finally:
            node.kill()
        open(release, "w").close()
        with journal_node(self.path, workers=1) as node:
            for job in queued["jobs"]:
                status, record, _ = node.request("GET", "/v1/jobs/%d?wait=60" % job["id"])
                self.assertEqual(record["status"], "done", record)
            self.assertEqual(node.request("GET", "/v1/jobs/%d?wait=60" % held["id"])[1]["status"], "done")
        self.assertEqual(sorted(read_tags(marks)), [0, 1, 2])

    def test_a_journal_that_cannot_be_used_is_a_clear_error_at_start(self):
        garbage = self.file("garbage.db")
        with open(garbage, "wb") as f:
            f.write(os.urandom(8192))
        r = run_ppgate("serve", "--listen", "127.0.0.1:0", "--journal", garbage)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(garbage, r.stderr)
        self.assertIn("not an SQLite database", r.stderr)

        # A real journal, damaged in the middle.
        with journal_node(self.path, workers=1) as node:
            for i in range(200):
                node.request("POST", "/v1/jobs", {"source": "def f(x):\n    return 'x' * 100\n",
                                                  "function": "f", "args": [i]})
            node.stop()
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as f:
            f.seek(size // 2)
            f.write(b"\xff" * 4096)
        r = run_ppgate("serve", "--listen", "127.0.0.1:0", "--journal", self.path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"damaged|malformed|not an SQLite database")

        r = run_ppgate("serve", "--listen", "127.0.0.1:0", "--journal", self.file("no/such/dir/jobs.db"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot open it", r.stderr)
        r = run_ppgate("serve", "--listen", "127.0.0.1:0", "--journal", self.tmp.name)  # a directory
        self.assertEqual(r.returncode, 1)
        self.assertIn(self.tmp.name, r.stderr)

        other = self.file("other.db")
        db = sqlite3.connect(other)
        db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES('format', 'someone-else-7')")
        db.commit()
        db.close()
        r = run_ppgate("serve", "--listen", "127.0.0.1:0", "--journal", other)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not a ppgate journal", r.stderr)


if __name__ == "__main__":
    unittest.main()
