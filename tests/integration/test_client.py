"""The Python client (clients/python/ppgate) against real ppgate nodes: pp's API, how functions
travel, errors, callbacks, the Executor, node lifetime, and the examples."""

import concurrent.futures
import contextlib
import gc
import inspect
import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, CLIENT)

import ppgate as pp  # noqa: E402
from client_helpers import (Point, add, crash, fail, fail_at, getpid, isprime, make_bad_closure,  # noqa: E402
                            make_multiplier, nap, scale_point, shout, sum_primes,
                            uses_global_value, uses_math_without_declaring_it)
from harness import Node, pid_alive  # noqa: E402
import odd_sources  # noqa: E402
from ppgate._functions import _dedented_source, _def_cut_by_indentation  # noqa: E402

WAIT = 60  # seconds: the bound on every wait for a job in these tests


def client_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = CLIENT + os.pathsep + env.get("PYTHONPATH", "")
    return env


class SharedServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = pp.Server(2)

    @classmethod
    def tearDownClass(cls):
        cls.server.destroy()


class TestPpApi(SharedServer):
    def test_sum_primes_with_depfuncs_and_modules(self):
        job = self.server.submit(sum_primes, (100,), (isprime,), ("math",))
        self.assertEqual(job(timeout=WAIT), 1060)
        self.assertTrue(job.finished)

    def test_dependencies_and_modules_are_found_without_being_listed(self):
        self.assertEqual(self.server.submit(sum_primes, (100,))(timeout=WAIT), 1060)
        self.assertEqual(self.server.submit(uses_math_without_declaring_it, (5,))(timeout=WAIT), 120)

    def test_argument_checks_are_pp_s(self):
        with self.assertRaisesRegex(TypeError, "args argument must be a tuple"):
            self.server.submit(add, [1])
        with self.assertRaisesRegex(TypeError, "depfuncs argument must be a tuple"):
            self.server.submit(add, (1,), [isprime])
        with self.assertRaisesRegex(TypeError, "modules argument must be a tuple"):
            self.server.submit(add, (1,), (), ["math"])
        with self.assertRaisesRegex(TypeError, "modules argument must be a list of strings"):
            self.server.submit(add, (1,), (), (1,))
        with self.assertRaisesRegex(TypeError, "callbackargs argument must be a tuple"):
            self.server.submit(add, (1,), callbackargs=[1])
        with self.assertRaisesRegex(TypeError, "globals argument must be a dictionary"):
            self.server.submit(add, (1,), globals=[])
        with self.assertRaisesRegex(TypeError, "ppservers argument must be a tuple"):
            pp.Server(1, ppservers=["x:1"])
        with self.assertRaisesRegex(TypeError, "ncpus must have 'int' type"):
            self.server.set_ncpus("four")
        with self.assertRaisesRegex(ValueError, "ncpus must be an integer > 0"):
            self.server.set_ncpus(-1)

    def test_raw_result_is_the_pickled_result(self):
        job = self.server.submit(add, (2, 3))
        self.assertEqual(pickle.loads(job(raw_result=True, timeout=WAIT)), 5)
        self.assertEqual(job(), 5)

    def test_wait_and_finished(self):
        job = self.server.submit(nap, (0.2,))
        self.assertTrue(job.wait(WAIT))
        self.assertTrue(job.finished)
        self.assertEqual(job(), 0.2)

    def test_captured_output_is_printed_on_first_retrieval_only(self):
        job = self.server.submit(shout, ("hi",))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.assertEqual(job(timeout=WAIT), "HI")
            job()
        self.assertEqual(out.getvalue(), "out: hi\n")
        self.assertEqual(err.getvalue(), "err:hi")
        self.assertEqual(job.stdout, "out: hi\n")

    def test_template_submits_with_fixed_settings(self):
        template = pp.Template(self.server, sum_primes, (isprime,), ("math",))
        jobs = [template.submit(n) for n in (10, 100)]
        self.assertEqual([j(timeout=WAIT) for j in jobs], [17, 1060])

    def test_wait_for_a_group(self):
        slow = [self.server.submit(nap, (0.3,), group="slow") for _ in range(2)]
        fast = self.server.submit(add, (1, 1), group="fast")
        self.server.wait("fast")
        self.assertTrue(fast.finished)
        self.server.wait("slow")
        self.assertTrue(all(j.finished for j in slow))
        self.server.wait()

    def test_stats_nodes_and_print_stats(self):
        self.server.submit(add, (1, 1))(timeout=WAIT)
        self.assertEqual(self.server.get_active_nodes(), {"local": 2})
        stats = self.server.get_stats()
        self.assertGreaterEqual(stats["local"].njobs, 1)
        self.assertEqual(stats["local"].ncpus, 2)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.server.print_stats()
        lines = out.getvalue().split("\n")
        self.assertEqual(lines[0], "Job execution statistics:")
        self.assertEqual(lines[1], " job count | % of all jobs | job time sum | time per job | job server")
        self.assertTrue(lines[2].endswith("| local"))
        self.assertTrue(lines[3].startswith("Time elapsed since server creation "))
        self.assertRegex(lines[4], r"^\d+ active tasks, 2 cores$")

    def test_function_source_goes_once_per_connection(self):
        jobs = [self.server.submit(add, (i, 1)) for i in range(50)]
        self.assertEqual([j(timeout=WAIT) for j in jobs], [i + 1 for i in range(50)])
        defined = [k for k in self.server._session._fn_ids if k[0] is add]
        self.assertEqual(len(defined), 1)


class TestHowFunctionsTravel(SharedServer):
    def run_job(self, func, args=(), **kw):
        return self.server.submit(func, args, **kw)(timeout=WAIT)

    def test_lambda(self):
        self.assertEqual(self.run_job(lambda x: x * 3, (4,)), 12)
        double, triple = (lambda x: x * 2), (lambda x: x * 3)
        self.assertEqual((self.run_job(double, (5,)), self.run_job(triple, (5,))), (10, 15))

    def test_nested_function_and_closure(self):
        def local_helper(x):
            return x - 1
        self.assertEqual(self.run_job(local_helper, (10,)), 9)
        self.assertEqual(self.run_job(make_multiplier(7), (6,)), 42)
        self.assertEqual(self.run_job(make_multiplier("ab"), (2,)), "abab")

    def test_a_closure_that_cannot_travel_names_the_variable(self):
        with self.assertRaisesRegex(ValueError, "closure variable 'lock'"):
            self.server.submit(make_bad_closure(), (1,))

    def test_methods_staticmethods_classmethods(self):
        p = Point(3, 4)
        self.assertEqual(self.run_job(p.norm2), 25)
        self.assertEqual(self.run_job(p.plus, (Point(1, 1),)), Point(4, 5))
        self.assertEqual(self.run_job(Point.origin_distance, (3, 4)), 5.0)
        self.assertEqual(self.run_job(Point.unit), 1)

    def test_user_class_arguments_and_results(self):
        self.assertEqual(self.run_job(scale_point, (Point(1, 2), 3)), Point(3, 6))

    def test_builtins_and_importable_functions_go_by_reference(self):
        import math
        self.assertEqual(self.run_job(math.sqrt, (16,)), 4.0)
        self.assertEqual(self.run_job(os.path.join, ("a", "b")), "a/b")
        self.assertEqual(self.run_job(len, ([1, 2, 3],)), 3)

    def test_globals_supply_values(self):
        self.assertEqual(self.run_job(uses_global_value, (2,), globals={"FACTOR": 21}), 42)


class TestSourceCut(SharedServer):
    """A def's source is cut by indentation (no tokenizer on the way to the first result), and
    only when the cut compiles; otherwise inspect cuts it."""

    RUNNABLE = (odd_sources.one_line, odd_sources.with_a_string_at_column_zero,
                odd_sources.with_brackets_at_column_zero, odd_sources.with_a_continued_line,
                odd_sources.with_comments, odd_sources.with_a_nested_def, odd_sources.after_everything)

    def test_the_cut_is_inspect_s_and_the_jobs_run(self):
        for fn in self.RUNNABLE + (odd_sources.a_coroutine,):
            self.assertEqual(_dedented_source(fn).rstrip(), textwrap.dedent(inspect.getsource(fn)).rstrip(),
                             fn.__name__)
        jobs = [(fn, self.server.submit(fn, (1,))) for fn in self.RUNNABLE]
        for fn, job in jobs:
            self.assertEqual(job(timeout=WAIT), fn(1), fn.__name__)

    def test_lines_indented_less_inside_strings_or_brackets_are_left_to_inspect(self):
        for fn in (odd_sources.with_a_string_at_column_zero, odd_sources.with_brackets_at_column_zero,
                   odd_sources.with_a_continued_line):
            self.assertIsNone(_def_cut_by_indentation(fn), fn.__name__)
        self.assertIsNone(_def_cut_by_indentation(odd_sources.decorated.__wrapped__))
        self.assertIn("@functools.lru_cache", _dedented_source(odd_sources.decorated.__wrapped__))
        self.assertIsNotNone(_def_cut_by_indentation(odd_sources.with_comments))


class TestErrors(SharedServer):
    def test_a_raising_job_raises_job_error_with_the_remote_details(self):
        job = self.server.submit(fail, ("boom",))
        with self.assertRaises(pp.JobError) as caught:
            job(timeout=WAIT)
        e = caught.exception
        self.assertEqual(e.type, "KeyError")
        self.assertEqual(e.message, "'boom'")
        self.assertIn("raise KeyError(message)", e.traceback)
        self.assertIn("Remote traceback", str(e))

    def test_a_worker_crash_raises_worker_died(self):
        with self.assertRaises(pp.WorkerDiedError) as caught:
            self.server.submit(crash)(timeout=WAIT)
        self.assertIn("exited with status 13", caught.exception.message)
        self.assertEqual(self.server.submit(add, (1, 2))(timeout=WAIT), 3)

    def test_a_timeout_raises_job_timeout(self):
        with self.assertRaises(pp.JobTimeoutError):
            self.server.submit(nap, (30,), timeout=0.3)(timeout=WAIT)

    def test_cancel_raises_job_cancelled(self):
        job = self.server.submit(nap, (30,))
        time.sleep(0.1)  # not a bound: cancel works whether or not the job has started
        job.cancel()
        with self.assertRaises(pp.JobCancelledError):
            job(timeout=WAIT)

    def test_a_refused_job_is_a_submit_error_and_its_function_still_works(self):
        triple = lambda x: 3 * x  # noqa: E731 - new to this session: its first job defines it
        with self.assertRaises(pp.SubmitError) as caught:
            self.server.submit(triple, (2,), timeout=-1)(timeout=WAIT)
        self.assertIn("timeout", caught.exception.message)
        # The refused job carried the function's source; the next one must send it again.
        self.assertEqual(self.server.submit(triple, (2,))(timeout=WAIT), 6)
        self.assertEqual(self.server.submit(triple, (3,))(timeout=WAIT), 9)

    def test_a_raising_callback_is_reported_and_hangs_nothing(self):
        def bad_callback(result):
            raise RuntimeError("callback broke")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            job = self.server.submit(add, (1, 2), callback=bad_callback)
            self.server.wait()
            self.assertEqual(job(timeout=WAIT), 3)
        self.assertIsInstance(job.callback_error, RuntimeError)
        self.assertIn("callback broke", err.getvalue())

    def test_callbacks_receive_callbackargs_then_the_result(self):
        got = []
        lock = threading.Lock()

        def collect(tag, result):
            with lock:
                got.append((tag, result))
        for i in range(20):
            self.server.submit(add, (i, i), callback=collect, callbackargs=("t",))
        self.server.wait()
        self.assertEqual(sorted(got), sorted(("t", 2 * i) for i in range(20)))


class TestServerLifetime(unittest.TestCase):
    def test_set_ncpus_grows_and_shrinks(self):
        with pp.Server(1) as server:
            self.assertEqual(server.get_ncpus(), 1)
            server.set_ncpus(3)
            self.assertEqual(server.get_ncpus(), 3)
            self.assertEqual(server.get_active_nodes(), {"local": 3})
            server.set_ncpus(1)
            self.assertEqual(server.get_ncpus(), 1)
            server.set_ncpus()
            self.assertEqual(server.get_ncpus(), len(os.sched_getaffinity(0)))
            self.assertEqual(server.submit(add, (1, 1))(timeout=WAIT), 2)

    def test_destroy_stops_the_node_and_refuses_jobs(self):
        server = pp.Server(1)
        pid = server._node.proc.pid
        unfinished = server.submit(nap, (30,))
        server.destroy()
        server.destroy()
        self.assertFalse(pid_alive(pid))
        with self.assertRaises(pp.DestroyedServerError):
            server.submit(add, (1,))
        with self.assertRaises(pp.JobError):
            unfinished(timeout=WAIT)

    def test_the_node_goes_away_when_the_client_is_killed(self):
        script = textwrap.dedent("""
            import ppgate, sys, time
            s = ppgate.Server(1)
            print(s._node.proc.pid, flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=client_env())
        try:
            node_pid = int(proc.stdout.readline())
            self.assertTrue(pid_alive(node_pid))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + 20
            while pid_alive(node_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertFalse(pid_alive(node_pid))
        finally:
            proc.kill()
            proc.stdout.close()

    def test_the_node_stops_at_interpreter_exit(self):
        script = "import ppgate; s = ppgate.Server(1); print(s._node.proc.pid)"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=client_env(), timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        node_pid = int(out.stdout)
        deadline = time.monotonic() + 20
        while pid_alive(node_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(pid_alive(node_pid))

    def test_url_and_token_use_a_running_node(self):
        with Node(workers=1, env={"PPGATE_SECRET": "a-shared-secret"}) as node:
            url = "http://127.0.0.1:%d" % node.port
            with self.assertRaisesRegex(ConnectionError, "401"):
                pp.Server(url=url, token="wrong-token")
            with pp.Server(url=url, token="a-shared-secret") as server:
                self.assertIsNone(server._node)
                self.assertEqual(server.submit(add, (20, 22))(timeout=WAIT), 42)
                self.assertEqual(server.get_ncpus(), 1)

    def test_jobs_in_flight_when_the_node_dies_end_lost_and_nothing_hangs(self):
        node = Node(workers=1, env={"PPGATE_SECRET": "a-shared-secret"})
        node.start()
        node.token = "a-shared-secret"
        try:
            server = pp.Server(url="http://127.0.0.1:%d" % node.port, token="a-shared-secret")
            running = server.submit(nap, (30,))
            queued = server.submit(add, (1, 2))
            called = []
            with_callback = server.submit(add, (3, 4), callback=called.append)
            node.wait_until(lambda: node.request("GET", "/v1/stats")[1]["jobs"]["running"] == 1,
                            what="the first job to start")
            node.kill()
            for job in (running, queued, with_callback):
                with self.assertRaises(pp.JobLostError) as caught:
                    job(timeout=WAIT)
                self.assertIn("connection to the node was lost", caught.exception.message)
            server.wait()  # returns: every job has ended
            self.assertEqual(called, [])
            with self.assertRaises(pp.JobLostError):
                server.submit(add, (5, 6))
            server.destroy()
        finally:
            node.kill()

    def test_ppservers_need_a_secret_and_ncpus_0_needs_ppservers(self):
        with self.assertRaisesRegex(ValueError, "secret"):
            pp.Server(1, ppservers=("127.0.0.1:60000",))
        with self.assertRaisesRegex(ValueError, "ncpus=0 with no ppservers"):
            pp.Server(0)


class TestLoneJobLatencyPath(unittest.TestCase):
    """A loop of submit(...)() on short jobs makes the client poll its socket and the node poll its
    event loop (docs/architecture.md, "Latency"); neither may change a result or keep polling."""

    def test_lone_jobs_short_and_long_all_end_right(self):
        for flags in ((), ("--busy-poll", "0")):
            with self.subTest(flags=flags):
                self.check_lone_jobs(flags)

    def check_lone_jobs(self, flags):
        with Node(*flags, workers=1, env={"PPGATE_SECRET": "a-shared-secret"}) as node:
            with pp.Server(url="http://127.0.0.1:%d" % node.port, token="a-shared-secret") as server:
                for i in range(300):  # short waits: the client polls for each result
                    self.assertEqual(server.submit(add, (i, 1))(timeout=WAIT), i + 1)
                # A job longer than the poll: the wait falls back to sleeping, and the result
                # still arrives; then short jobs poll again.
                self.assertEqual(server.submit(nap, (0.05,))(timeout=WAIT), 0.05)
                for i in range(50):
                    self.assertEqual(server.submit(add, (i, 2))(timeout=WAIT), i + 2)
                    if i % 10 == 0:
                        self.assertEqual(server.submit(nap, (0.002,))(timeout=WAIT), 0.002)

    def test_an_idle_node_stops_polling(self):
        with Node(workers=1, env={"PPGATE_SECRET": "a-shared-secret"}) as node:
            with pp.Server(url="http://127.0.0.1:%d" % node.port, token="a-shared-secret") as server:
                for i in range(300):
                    self.assertEqual(server.submit(add, (i, 1))(timeout=WAIT), i + 1)
                time.sleep(0.2)
                before = cpu_seconds(node.proc.pid)
                time.sleep(1.0)
                used = cpu_seconds(node.proc.pid) - before
                # A node that kept polling would use about a second of CPU here.
                self.assertLess(used, 0.3)


def cpu_seconds(pid):
    """User plus system CPU time of process `pid`, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ExecutorTest(unittest.TestCase):
    """One private node's Executor, shared by the tests of a class."""

    @classmethod
    def setUpClass(cls):
        cls.executor = pp.Executor(2)

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown()


class TestExecutor(ExecutorTest):

    def test_submit_with_args_and_kwargs(self):
        future = self.executor.submit(add, 1, 2, c=3)
        self.assertEqual(future.result(WAIT), 6)

    def test_map_keeps_order_and_honours_its_timeout(self):
        self.assertEqual(list(self.executor.map(add, range(10), range(10), timeout=WAIT)),
                         [2 * i for i in range(10)])
        with self.assertRaises(concurrent.futures.TimeoutError):
            list(self.executor.map(nap, [5], timeout=0.2))

    def test_result_and_exception_honour_their_timeouts_and_can_wait_again(self):
        future = self.executor.submit(nap, 0.5)
        with self.assertRaises(concurrent.futures.TimeoutError):
            future.result(timeout=0.05)
        with self.assertRaises(concurrent.futures.TimeoutError):
            future.exception(timeout=0.05)
        self.assertIsNone(future.exception(timeout=WAIT))
        self.assertEqual(future.result(timeout=WAIT), 0.5)
        # From another thread while this one also waits: both get the result.
        future = self.executor.submit(nap, 0.2)
        got = []
        other = threading.Thread(target=lambda: got.append(future.result(WAIT)))
        other.start()
        self.assertEqual(future.result(WAIT), 0.2)
        other.join(WAIT)
        self.assertEqual(got, [0.2])

    def test_exceptions_reach_the_future(self):
        future = self.executor.submit(fail, "x")
        self.assertIsInstance(future.exception(WAIT), pp.JobError)

    def test_wait_and_as_completed(self):
        futures = [self.executor.submit(nap, 0.05 * i) for i in range(4)]
        done, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        self.assertEqual((len(done), len(not_done)), (4, 0))
        more = [self.executor.submit(add, i) for i in range(5)]
        results = sorted(f.result() for f in concurrent.futures.as_completed(more, timeout=WAIT))
        self.assertEqual(results, list(range(5)))

    def test_shutdown_cancels_pending_futures_when_asked(self):
        with pp.Executor(1) as executor:
            running = executor.submit(nap, 30)
            queued = [executor.submit(nap, 30) for _ in range(3)]
            time.sleep(0.1)
            executor.shutdown(wait=True, cancel_futures=True)
            self.assertTrue(all(f.cancelled() for f in queued + [running]))
            with self.assertRaises(RuntimeError):
                executor.submit(add, 1)


class TestExecutorMap(ExecutorTest):
    """Executor.map sends its calls in chunks (map jobs), yields in order, raises at the item."""

    def test_chunks_of_the_given_size_give_every_result_in_order(self):
        for chunksize in (1, 3, 7, 100, 1000):
            self.assertEqual(list(self.executor.map(add, range(100), range(100), chunksize=chunksize, timeout=WAIT)),
                             [2 * i for i in range(100)], chunksize)

    def test_ranges_iterators_and_lists_mix(self):
        # (a range travels as ranges, sliced per chunk; the others as lists)
        self.assertEqual(list(self.executor.map(add, range(100, 0, -7), (i * i for i in range(15)),
                                                chunksize=4, timeout=WAIT)),
                         [a + b for a, b in zip(range(100, 0, -7), (i * i for i in range(15)))])
        self.assertEqual(list(self.executor.map(add, range(5), [10] * 3, timeout=WAIT)), [10, 11, 12])
        self.assertEqual(list(self.executor.map(add, range(0), timeout=WAIT)), [])

    def test_the_default_chunksize_sends_few_jobs_for_many_items(self):
        before = submitted_jobs(self.executor)
        self.assertEqual(sum(self.executor.map(add, range(20000), timeout=WAIT)), sum(range(20000)))
        # As Pool.map picks it: about four chunks per slot (2 slots here), not one job per item.
        self.assertLessEqual(submitted_jobs(self.executor) - before, 9)

    def test_an_exception_raises_at_its_item_after_the_items_before_it(self):
        got = []
        with self.assertRaises(pp.JobError) as caught:
            for value in self.executor.map(fail_at, range(50), [17] * 50, chunksize=5, timeout=WAIT):
                got.append(value)
        self.assertEqual(got, list(range(17)))
        self.assertEqual(caught.exception.type, "ValueError")
        self.assertEqual(caught.exception.message, "item 17 is bad")
        self.assertIn("fail_at", caught.exception.traceback)
        # The executor serves on.
        self.assertEqual(list(self.executor.map(add, [1, 2], timeout=WAIT)), [1, 2])

    def test_a_timeout_raises_and_cancels_what_is_left(self):
        started = time.monotonic()
        with self.assertRaises(concurrent.futures.TimeoutError):
            list(self.executor.map(nap, [0.01, 5, 5, 5], chunksize=1, timeout=0.5))
        self.assertLess(time.monotonic() - started, WAIT)  # a bound, not a timing
        # The cancelled jobs free the workers: the next map runs at once.
        self.assertEqual(list(self.executor.map(add, range(4), timeout=WAIT)), [0, 1, 2, 3])

    def test_lambdas_closures_and_bound_methods_map_too(self):
        tripled = self.executor.map(lambda x: x * 3, range(6), chunksize=4, timeout=WAIT)
        self.assertEqual(list(tripled), [0, 3, 6, 9, 12, 15])
        k = 5

        def times_k(x):
            return x * k

        self.assertEqual(list(self.executor.map(times_k, range(4), chunksize=3, timeout=WAIT)), [0, 5, 10, 15])
        point = Point(2, 5)
        self.assertEqual(list(self.executor.map(point.plus, [Point(1, 1), Point(0, 10)], chunksize=2, timeout=WAIT)),
                         [Point(3, 6), Point(2, 15)])

    def test_results_are_freed_when_the_caller_lets_go_of_them(self):
        # Without waiting for a gc collection: nothing in the executor keeps a finished call's
        # result in a reference cycle (a 1M-item map's results would linger, and be copied into
        # the workers a later Server() forks).
        gc.disable()
        try:
            results = list(self.executor.map(Point, range(6), range(6), chunksize=2, timeout=WAIT))
            future = self.executor.submit(Point, 7, 7)
            results.append(future.result(WAIT))
            self.assertEqual(results, [Point(i, i) for i in range(6)] + [Point(7, 7)])
            watched = [weakref.ref(point) for point in results]
            del results, future
            self.assertEqual([ref() for ref in watched], [None] * 7)
        finally:
            gc.enable()

    def test_empty_input_and_bad_chunksizes(self):
        self.assertEqual(list(self.executor.map(add, [], timeout=WAIT)), [])
        for bad in (0, -1, 1.5):
            with self.assertRaises(ValueError):
                self.executor.map(add, [1], chunksize=bad)


def submitted_jobs(executor):
    """The node's count of submitted jobs, through the REST API of the executor's server."""
    return executor._server._request("GET", "/v1/stats")["jobs"]["submitted"]  # noqa: SLF001


class TestExamples(unittest.TestCase):
    def run_example(self, name, *args):
        out = subprocess.run([sys.executable, os.path.join(CLIENT, "examples", name)] + list(args),
                             capture_output=True, text=True, env=client_env(), timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def test_sum_primes_gives_the_known_sums(self):
        out = self.run_example("sum_primes.py", "2")
        expected = {100: 1060, 100000: 454396537, 100100: 454996777, 100200: 455898156,
                    100300: 456700218, 100400: 457603451, 100500: 458407033, 100600: 459412387,
                    100700: 460217613}
        for n, total in expected.items():
            self.assertIn("Sum of primes below %d is %d\n" % (n, total), out)
        self.assertIn("Job execution statistics:", out)

    def test_callback_accumulates_under_a_lock(self):
        out = self.run_example("callback.py")
        self.assertIn("Callbacks run: 64", out)
        diff = float(out.split("diff =")[1].split()[0])
        self.assertLess(abs(diff), 1e-5)

    def test_template(self):
        out = self.run_example("template.py")
        self.assertIn("digit sum of 100! is 648", out)

    def test_set_ncpus_between_rounds(self):
        out = self.run_example("dynamic_ncpus.py")
        for n in (1, 2, 4, 3):
            self.assertIn("ncpus=%d workers=%d " % (n, n), out)

    def test_bound_methods_on_user_instances(self):
        out = self.run_example("methods.py")
        self.assertIn("p(2) = 17", out)
        self.assertIn("10p(2) = 170", out)

    def test_a_job_that_raises(self):
        out = self.run_example("exception.py")
        self.assertIn("the job raised ZeroDivisionError: division by zero", out)


if __name__ == "__main__":
    unittest.main()
