"""Jobs run in the caller's own Python: its interpreter, its sys.path, its modules and classes.

Every case runs a real program, as a user would, with a real interpreter (Debian's python3, the
pyenv CPythons, venvs made here), which starts its own private node; the program prints one JSON
line that the test checks.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import unittest

from harness import Node, run_ppgate

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = os.path.join(ROOT, "clients", "python")
DEBIAN_PYTHON = "/usr/bin/python3"
RUN_TIMEOUT = 120  # seconds for one program, start-up of its private node included


def pyenv_python(minor):
    """The pyenv CPython 3.<minor> of this machine, or None."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    versions = os.path.join(root, "versions")
    if not os.path.isdir(versions):
        return None
    for name in sorted(os.listdir(versions), reverse=True):
        if name.startswith("3.%d." % minor):
            path = os.path.join(versions, name, "bin", "python3")
            if os.access(path, os.X_OK):
                return path
    return None


def run_program(python, source, cwd, env=None, files=None):
    """Writes `source` as main.py (and `files`) in `cwd`, runs it with `python`, returns the JSON of
    its last line of output."""
    for name, text in dict(files or {}, **{"main.py": source}).items():
        path = os.path.join(cwd, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
    e = dict(os.environ)
    e.pop("PPGATE_SECRET", None)
    e["PYTHONPATH"] = os.pathsep.join([CLIENT] + ([env.pop("PYTHONPATH")] if env and "PYTHONPATH" in env else []))
    e.update(env or {})
    out = subprocess.run([python, "main.py"], cwd=cwd, env=e, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    if out.returncode != 0:
        raise AssertionError("%s main.py failed (%d):\n%s\n%s" % (python, out.returncode, out.stdout, out.stderr))
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_c_extension(python, site_packages, name="cext"):
    """Compiles a small C extension module for `python` into `site_packages`."""
    info = subprocess.run([python, "-c", "import json, sysconfig; print(json.dumps("
                           "[sysconfig.get_paths()['include'], sysconfig.get_config_var('EXT_SUFFIX')]))"],
                          capture_output=True, text=True, timeout=60, check=True)
    include, suffix = json.loads(info.stdout)
    src = os.path.join(site_packages, name + ".c")
    with open(src, "w") as f:
        f.write(textwrap.dedent("""\
            #define PY_SSIZE_T_CLEAN
            #include <Python.h>
            static PyObject* triple(PyObject* self, PyObject* arg) {
                long v = PyLong_AsLong(arg);
                if (v == -1 && PyErr_Occurred()) return NULL;
                return PyLong_FromLong(3 * v);
            }
            static PyMethodDef methods[] = {{"triple", triple, METH_O, "3*x"}, {NULL, NULL, 0, NULL}};
            static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "%s", NULL, -1, methods};
            PyMODINIT_FUNC PyInit_%s(void) { return PyModule_Create(&mod); }
            """ % (name, name)))
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-I", include, src, "-o",
                    os.path.join(site_packages, name + suffix)], check=True, timeout=120)


VERSION_JOB = """\
    import json, platform, sys
    import ppgate as pp

    def where():
        import platform, sys
        return [platform.python_version(), sys.executable, sys.prefix]

    server = pp.Server(1)
    print(json.dumps({"job": server.submit(where)(timeout=60),
                      "here": [platform.python_version(), sys.executable, sys.prefix]}))
    server.destroy()
"""


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ppgate-callers-python-")
        self.addCleanup(shutil.rmtree, self.dir, True)


class TestCallersInterpreter(TempDirTest):
    def test_jobs_report_the_version_of_the_client_interpreter(self):
        """Clients on pyenv 3.9, 3.12 and 3.13 (and Debian's 3.11): each job runs on the very same
        interpreter, not on the one ppgate was built with."""
        pythons = [p for p in (pyenv_python(9), pyenv_python(12), pyenv_python(13), DEBIAN_PYTHON) if p]
        self.assertGreaterEqual(len(pythons), 2, "this machine should have several CPythons")
        for python in pythons:
            with self.subTest(python=python):
                out = run_program(python, VERSION_JOB, self.dir)
                self.assertEqual(out["job"][0], out["here"][0])
                self.assertEqual(os.path.realpath(out["job"][1]), os.path.realpath(out["here"][1]))

    def test_builtins_and_environ_a_job_changes_are_put_back_on_every_cpython(self):
        """The worker tells that builtins and os.environ are unchanged by CPython's private dict
        version tag where it has seen that the tag works (3.8 to 3.13), and compares them
        otherwise: on each interpreter, the next job on the same worker sees them as they were."""
        pythons = [p for p in (pyenv_python(8), pyenv_python(12), pyenv_python(13), DEBIAN_PYTHON) if p]
        self.assertGreaterEqual(len(pythons), 2, "this machine should have several CPythons")
        for python in pythons:
            with self.subTest(python=python):
                out = run_program(python, """\
                    import json
                    import ppgate as pp

                    def meddle():
                        import builtins, os
                        builtins.len = None
                        builtins.ppgate_extra = 1
                        del builtins.abs
                        os.environ["PPGATE_TEST_LEAK"] = "leaked"
                        os.environ.pop("HOME", None)
                        return os.getpid()

                    def probe():
                        import builtins, os, sys
                        runtime = sys.modules["ppgate_worker_runtime"]
                        return [os.getpid(), builtins.len is not None, hasattr(builtins, "ppgate_extra"),
                                hasattr(builtins, "abs"), os.environ.get("PPGATE_TEST_LEAK"),
                                "HOME" in os.environ, runtime._dict_version.__name__]

                    server = pp.Server(1)
                    # Submitted together, so that each probe mostly runs on the worker that ran
                    # the meddling job before it (no hand-over while jobs wait).
                    jobs = [server.submit(meddle if i % 2 == 0 else probe) for i in range(8)]
                    print(json.dumps([job(timeout=60) for job in jobs]))
                    server.destroy()
                """, self.dir, env={"HOME": "/root-for-the-test"})
                pairs = [(out[i], out[i + 1]) for i in range(0, len(out), 2)]
                same_worker = [probe for pid, probe in pairs if probe[0] == pid]
                self.assertTrue(same_worker, "no probe ran after a meddling job on its worker: %s" % out)
                for probe in same_worker:
                    self.assertEqual(probe[1:6], [True, False, True, None, True], probe)
                version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] <= (3, 13))"],
                                         capture_output=True, text=True, timeout=60, check=True)
                if version.stdout.strip() == "True":  # where the tag is known to work: it is used
                    self.assertEqual(same_worker[0][6], "dict_version")

    def test_a_helper_module_beside_the_script_is_importable(self):
        out = run_program(sys.executable, """\
            import json
            import ppgate as pp
            import helpers

            def use(x):
                return helpers.double(x)

            server = pp.Server(1)
            a = server.submit(use, (2,), (), ("helpers",))(timeout=60)
            b = server.submit(helpers.double, (5,))(timeout=60)
            print(json.dumps([a, b]))
        """, self.dir, files={"helpers.py": "def double(x):\n    return 2 * x\n"})
        self.assertEqual(out, [4, 10])

    def test_a_module_on_pythonpath_and_the_working_directory_are_the_callers(self):
        libdir = os.path.join(self.dir, "lib")
        os.makedirs(libdir)
        with open(os.path.join(libdir, "onpath.py"), "w") as f:
            f.write("VALUE = 'from PYTHONPATH'\n")
        out = run_program(sys.executable, """\
            import json, os
            import ppgate as pp

            def read():
                import onpath, os
                return [onpath.VALUE, os.getcwd()]

            server = pp.Server(1)
            print(json.dumps(server.submit(read)(timeout=60) + [os.getcwd()]))
        """, self.dir, env={"PYTHONPATH": libdir})
        self.assertEqual(out[0], "from PYTHONPATH")
        self.assertEqual(out[1], out[2])

    def test_venvs_packages_and_c_extensions_are_importable(self):
        """A venv of Debian's python3 and one of pyenv's 3.12, each holding a pure package and a C
        extension compiled here for that interpreter."""
        for base in [p for p in (DEBIAN_PYTHON, pyenv_python(12)) if p]:
            with self.subTest(python=base):
                venv = os.path.join(self.dir, "venv-" + os.path.basename(os.path.dirname(os.path.dirname(base))))
                subprocess.run([base, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
                python = os.path.join(venv, "bin", "python")
                site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      capture_output=True, text=True, check=True, timeout=60).stdout.strip()
                os.makedirs(os.path.join(site, "purepkg"))
                with open(os.path.join(site, "purepkg", "__init__.py"), "w") as f:
                    f.write("def greet(name):\n    return 'hello ' + name\n")
                build_c_extension(python, site)
                out = run_program(python, """\
                    import json, sys
                    import ppgate as pp
                    import purepkg

                    def use(x):
                        import cext, sys
                        return [purepkg.greet("venv"), cext.triple(x), sys.prefix]

                    server = pp.Server(1)
                    print(json.dumps(server.submit(use, (14,))(timeout=60) + [sys.prefix]))
                """, self.dir)
                self.assertEqual(out[:2], ["hello venv", 42])
                self.assertEqual(out[2], out[3])
                self.assertEqual(os.path.realpath(out[2]), os.path.realpath(venv))

    def test_numpy_arrays_travel_as_arguments_and_results(self):
        out = run_program(DEBIAN_PYTHON, """\
            import json
            import numpy as np
            import ppgate as pp

            def scale(a, k):
                return a * k

            server = pp.Server(2)
            a = np.arange(12, dtype=np.float64).reshape(3, 4)
            r = server.submit(scale, (a, 2.5))(timeout=60)
            s = server.submit(scale, (a[:, ::2], 2))(timeout=60)   # not contiguous
            e = server.submit(scale, (np.zeros(0), 3))(timeout=60)
            print(json.dumps([type(r).__name__, r.tolist() == (a * 2.5).tolist(), s.tolist(), e.shape[0]]))
        """, self.dir)
        self.assertEqual(out, ["ndarray", True, [[0, 4], [8, 12], [16, 20]], 0])

    def test_a_missing_module_names_the_interpreter_and_its_path(self):
        out = run_program(sys.executable, """\
            import json
            import ppgate as pp

            def needs():
                import no_such_module_here
                return 1

            server = pp.Server(1)
            try:
                server.submit(needs)(timeout=60)
            except pp.JobError as e:
                print(json.dumps([e.type, e.message]))
        """, self.dir)
        self.assertEqual(out[0], "ModuleNotFoundError")
        self.assertIn("no_such_module_here", out[1])
        self.assertIn("sys.path", out[1])
        self.assertIn(os.path.realpath(sys.executable).split("/bin/")[0], out[1])
        self.assertIn(self.dir, out[1])  # the script's folder is on the worker's path


class TestClassesTravel(TempDirTest):
    PROGRAM = """\
        import json
        import ppgate as pp
        from shapes import Square

        class Base:
            def twice(self):
                return 2 * self.value()

        class AD(Base):
            def __init__(self, x):
                self.x = x

            def value(self):
                return self.x

        def total(items):
            return sum(i.twice() for i in items)

        def first(d):
            return d["k"][0]

        def identity(x):
            return x

        server = pp.Server(2)
        out = [
            server.submit(total, ([AD(1), AD(2)],))(timeout=60),                # nested in a list
            server.submit(identity, (AD(5),))(timeout=60).__class__ is AD,      # result: the caller's class
            server.submit(first, ({"k": (AD(3), 1)},))(timeout=60).x,           # in a dict of tuples
            server.submit(AD(7).twice)(timeout=60),                             # the bound instance
            server.submit(sorted, ([Square(3), Square(1)],))(timeout=60)[0].side,  # importable function
            server.submit(identity, (Square(2),))(timeout=60).area(),
        ]
        print(json.dumps(out))
    """

    SHAPES = """\
        class Square:
            def __init__(self, side):
                self.side = side

            def area(self):
                return self.side * self.side

            def __lt__(self, other):
                return self.side < other.side
    """

    def test_instances_of_main_classes_travel_with_their_source(self):
        out = run_program(sys.executable, self.PROGRAM, self.dir, files={"shapes.py": self.SHAPES})
        self.assertEqual(out, [6, True, 3, 14, 1, 4])

    def test_classes_of_the_program_reach_a_node_that_cannot_import_them(self):
        """The node started by hand does not have the program's folder on its path: the classes go
        as source."""
        with Node(workers=1) as node:
            program = self.PROGRAM.replace("pp.Server(2)", "pp.Server(url='http://127.0.0.1:%d')" % node.port)
            out = run_program(sys.executable, program, self.dir, files={"shapes.py": self.SHAPES})
        self.assertEqual(out, [6, True, 3, 14, 1, 4])


class TestNodesStartedByHand(TempDirTest):
    def test_python_flag_picks_the_interpreter_and_nodes_show_it(self):
        python = pyenv_python(12) or DEBIAN_PYTHON
        with Node("--python", python, workers=1) as node:
            version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                     capture_output=True, text=True, check=True, timeout=60).stdout.strip()
            job = node.run("import platform\ndef v():\n    return platform.python_version()\n", "v")
            self.assertEqual(job["result"], version)
            status, nodes, _ = node.request("GET", "/v1/nodes")
            self.assertEqual(nodes["nodes"][0]["python"], version)
            status, stats, _ = node.request("GET", "/v1/stats")
            self.assertEqual(stats["nodes"][0]["python"], version)
            status, text, _ = node.request("GET", "/v1/stats", headers={"Accept": "text/plain"})
            self.assertIn("Python %s on local" % version, text)

    def test_the_client_warns_once_when_the_node_runs_another_python(self):
        other = pyenv_python(12) if sys.version_info[:2] != (3, 12) else pyenv_python(9)
        if other is None:
            self.fail("this machine should have pyenv's CPython 3.12 and 3.9")
        with Node("--python", other, workers=1) as node:
            out = run_program(sys.executable, """\
                import json, warnings
                import ppgate as pp
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    server = pp.Server(url="http://127.0.0.1:%d")
                    server.submit(abs, (-1,))(timeout=60)
                print(json.dumps([str(w.message) for w in caught]))
            """ % node.port, self.dir)
        self.assertEqual(len(out), 1, out)
        here = "%d.%d" % sys.version_info[:2]
        self.assertIn("Python " + here, out[0])
        self.assertRegex(out[0], r"runs Python 3\.(9|12)\.")

    def test_an_interpreter_that_cannot_run_the_worker_is_refused_at_start(self):
        cases = [("/nonexistent/python3", "cannot run it"),
                 ("/bin/false", "cannot run the ppgate worker")]
        old = pyenv_python(7)
        if old:
            cases.append((old, "need CPython 3.8 or later"))
        for python, reason in cases:
            with self.subTest(python=python):
                r = run_ppgate("serve", "--listen", "127.0.0.1:0", "--python", python)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("--python " + python, r.stderr)
                self.assertIn(reason, r.stderr)


if __name__ == "__main__":
    unittest.main()
