"""pathos's ParallelPool on ppgate, with ppft aliased to ppgate.

pathos is not a Debian package, so the program below makes exactly the calls that pathos 0.3's
`pathos.parallel.ParallelPool` and `pathos.helpers.pp_helper` make on ppft (Server, _Task and
their attributes), in the same order, with dill (Debian's python3-dill) unpickling `sresult` as
pathos does. Each numbered step names the pathos method it replays.
"""

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python")
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-dill

PROGRAM = r'''
import builtins, json, sys, threading, time
import ppgate
sys.modules["ppft"] = ppgate          # the documented two-line alias
import ppft as pp                     # pathos.helpers: import ppft as parallelpython
from ppft import _Task, Server        # pathos.helpers.pp_helper
import dill

PATHOS_GLOBALS = {"__name__": "pathos.parallel", "pp": pp, "builtins": builtins,
                  "cpu_count": lambda: 2, "OFFSET": 1000}   # pathos passes globals=globals()
OFFSET = 1  # the function's own module: globals= is consulted first, then this

def square_plus(x, y=0):
    return x * x + y

def shout(x):
    print("value", x)
    return x

def boom(x):
    raise ValueError("bad %s" % x)

out = {}

# ParallelPool.__init__ -> _serve(nodes=None, servers=()): a new Server and its attributes
server = pp.Server(ppservers=())
servers = sorted(server.ppservers + ([("*",)] if server.auto_ppservers else []))
out["servers"] = [":".join(str(i) for i in t) for t in servers]
if 2 != server.get_ncpus():
    server.set_ncpus(2)
out["ncpus"] = server.get_ncpus()

def result_of(task):
    """pp_helper.ApplyResult: wait on a Condition over task.lock, then dill.loads(sresult)."""
    assert isinstance(task, _Task)
    if not task.finished:
        cond = threading.Condition(task.lock)
        cond.acquire()
        try:
            if not task.finished:
                cond.wait(30)
        finally:
            cond.release()
    result, sout = dill.loads(task.sresult)
    return result, sout

# ParallelPool.map / imap: one submit per item, with pathos's globals
jobs = list(builtins.map(lambda *argz: server.submit(square_plus, argz, globals=PATHOS_GLOBALS),
                         [1, 2, 3], [10, 20, 30]))
out["imap"] = [job() for job in jobs]

# ParallelPool.amap: ApplyResult over each task, results through sresult
tasks = [server.submit(square_plus, (x,), globals=PATHOS_GLOBALS) for x in range(5)]
out["amap"] = [result_of(t)[0] for t in tasks]
t = tasks[0]
out["task_attrs"] = [t.tid is not None, t.server is server, t.callback, list(t.callbackargs), t.group,
                     t.finished]

# ParallelPool.uimap: poll .finished, yield in completion order
pending = [server.submit(square_plus, (x,), globals=PATHOS_GLOBALS) for x in range(6)]
unordered = []
deadline = time.monotonic() + 60
while pending and time.monotonic() < deadline:
    for i, job in enumerate(pending):
        if job.finished:
            unordered.append(pending.pop(i)())
            break
out["uimap"] = sorted(unordered)

# ParallelPool.pipe and apipe
out["pipe"] = server.submit(square_plus, (4, 1), globals=PATHOS_GLOBALS)()
out["apipe"] = result_of(server.submit(square_plus, (5,), globals=PATHOS_GLOBALS))[0]

# the captured output and a failure, as pathos reads them from sresult
out["output"] = result_of(server.submit(shout, (3,), globals=PATHOS_GLOBALS))
failed = result_of(server.submit(boom, (7,), globals=PATHOS_GLOBALS))
out["failed"] = [failed[0], "ValueError: bad 7" in failed[1]]

# globals=: a name in it wins over the function's module
def uses_offset(x):
    return x + OFFSET
out["globals_first"] = server.submit(uses_offset, (1,), globals=PATHOS_GLOBALS)()
out["own_globals"] = server.submit(uses_offset, (1,))()

# close(): _exiting set; join(): destroy; a submit after it raises DestroyedServerError
server._exiting = True
server.print_stats()
server.destroy()
try:
    server.submit(square_plus, (1,), globals=PATHOS_GLOBALS)
    out["after_destroy"] = "submitted"
except pp.DestroyedServerError:
    out["after_destroy"] = "DestroyedServerError"

# ParallelPool(servers=('*',)) -> Server(ppservers=('*',)): discovery, secret from the environment
auto = pp.Server(ppservers=("*",))
out["auto"] = [auto.auto_ppservers, auto.ppservers, auto.submit(square_plus, (9,))()]
auto.destroy()
print(json.dumps(out))
'''


class TestPathosParallelPool(unittest.TestCase):
    def test_pathos_parallel_pool_calls_work_on_ppgate(self):
        workdir = tempfile.mkdtemp(prefix="ppgate-pathos-")
        self.addCleanup(shutil.rmtree, workdir, True)
        with open(os.path.join(workdir, "pathos_replay.py"), "w") as f:
            f.write(textwrap.dedent(PROGRAM))
        env = dict(os.environ, PYTHONPATH=CLIENT, PPGATE_SECRET="a-cluster-secret")
        run = subprocess.run([PYTHON, "pathos_replay.py"], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=180)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        out = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual(out["servers"], [])
        self.assertEqual(out["ncpus"], 2)
        self.assertEqual(out["imap"], [11, 24, 39])
        self.assertEqual(out["amap"], [0, 1, 4, 9, 16])
        self.assertEqual(out["task_attrs"], [True, True, None, [], "default", True])
        self.assertEqual(out["uimap"], [0, 1, 4, 9, 16, 25])
        self.assertEqual(out["pipe"], 17)
        self.assertEqual(out["apipe"], 25)
        self.assertEqual(out["output"], [3, "value 3\n"])
        self.assertEqual(out["failed"], [None, True])
        self.assertEqual(out["globals_first"], 1001)
        self.assertEqual(out["own_globals"], 2)
        self.assertEqual(out["after_destroy"], "DestroyedServerError")
        self.assertEqual(out["auto"], [True, [], 81])
        self.assertIn("Job execution statistics:", run.stdout)


if __name__ == "__main__":
    unittest.main()
