"""The Python client's public API is typed: the package passes `mypy --strict` (Debian's mypy)."""

import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "clients", "python", "ppgate")
TYPED_USE = '''
import concurrent.futures
import ppgate as pp

def double(x: int) -> int:
    return 2 * x

def main() -> None:
    with pp.Server(2) as server:
        job: pp.Job = server.submit(double, (1,))
        value: int = job()
        stats: dict[str, pp.Statistics] = server.get_stats()
        print(value, stats)
    with pp.Executor(2) as executor:
        future: concurrent.futures.Future[int] = executor.submit(double, 2)
        doubled: list[int] = list(executor.map(double, [1, 2]))
        print(future.result(), doubled)
'''


class TestTypes(unittest.TestCase):
    def mypy(self, *paths):
        with tempfile.TemporaryDirectory() as cache:
            return subprocess.run(["/usr/bin/python3", "-m", "mypy", "--strict", "--cache-dir", cache, *paths],
                                  capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, MYPYPATH=os.path.dirname(PACKAGE)))

    def test_the_package_passes_mypy_strict(self):
        done = self.mypy(PACKAGE)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertTrue(os.path.exists(os.path.join(PACKAGE, "py.typed")))

    def test_a_typed_program_checks_against_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            program = os.path.join(tmp, "typed_use.py")
            with open(program, "w") as f:
                f.write(TYPED_USE)
            done = self.mypy(program)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            with open(program, "a") as f:
                f.write("\nwrong: str = pp.Server().get_ncpus()\n")
            done = self.mypy(program)
            self.assertNotEqual(done.returncode, 0, "a type error is caught")
            self.assertIn("Incompatible types in assignment", done.stdout)


if __name__ == "__main__":
    unittest.main()
