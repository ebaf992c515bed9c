"""deploy/: the systemd unit (checked with systemd-analyze verify, and its ExecStart run as
systemd would run it, the secret handed over as a credential)."""

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import unittest

from harness import ROOT, ppgate_binary

UNIT = os.path.join(ROOT, "deploy", "ppgate.service")


def unit_text(binary):
    with open(UNIT) as f:
        return f.read().replace("/usr/local/bin/ppgate", os.path.abspath(binary))


def verify(text):
    """systemd-analyze verify of a unit with this text: (exit code, what it printed)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ppgate.service")
        with open(path, "w") as f:
            f.write(text)
        done = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
        return done.returncode, (done.stdout + done.stderr).strip()


def exec_start(text):
    """The ExecStart command line, continuation lines joined, as a list of words."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return shlex.split(re.search(r"^ExecStart=(.*)$", joined, re.M).group(1))


class TestSystemdUnit(unittest.TestCase):
    def test_the_unit_verifies(self):
        self.assertIsNotNone(shutil.which("systemd-analyze"), "systemd-analyze is missing (apt-get install systemd)")
        code, said = verify(unit_text(ppgate_binary()))
        self.assertEqual((code, said), (0, ""))
        # The check sees mistakes: a misspelt key, a missing binary.
        code, said = verify(unit_text(ppgate_binary()).replace("KillSignal=", "KilSignal="))
        self.assertIn("Unknown key", said)
        code, said = verify(unit_text("/nonexistent/ppgate"))
        self.assertNotEqual(code, 0)
        self.assertIn("/nonexistent/ppgate", said)

    def test_its_exec_start_serves_and_drains_on_the_stop_signal(self):
        text = unit_text(ppgate_binary())
        self.assertIn("LoadCredential=secret:/etc/ppgate/secret", text)
        self.assertIn("KillSignal=SIGTERM", text)
        words = exec_start(text)
        with tempfile.TemporaryDirectory() as credentials:
            with open(os.path.join(credentials, "secret"), "w") as f:
                f.write("a-secret-for-the-unit\n")
            os.chmod(os.path.join(credentials, "secret"), 0o400)
            # As systemd runs it, on loopback ports of the test's choosing.
            args = [w.replace("${CREDENTIALS_DIRECTORY}", credentials) for w in words]
            args = [("127.0.0.1:0" if w.startswith("0.0.0.0:") else w) for w in args]
            args[args.index("--python") + 1] = shutil.which("python3")
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
            try:
                line = proc.stdout.readline().decode()
                self.assertTrue(line.startswith("ppgate listening on http://127.0.0.1:"), line)
                port = int(line.rsplit(":", 1)[1])
                self.assertIn("accepting peers on 127.0.0.1:", proc.stdout.readline().decode())
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/v1/jobs?wait=20", json.dumps({"source": "def f():\n    return 6*7\n", "function": "f"}),
                             {"Authorization": "Bearer a-secret-for-the-unit"})
                answer = json.loads(conn.getresponse().read())
                conn.close()
                self.assertEqual(answer["result"], 42)
                proc.send_signal(signal.SIGTERM)  # systemctl stop
                self.assertEqual(proc.wait(45), 0)  # within TimeoutStopSec
                self.assertIn("drained:", proc.stderr.read().decode())
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
                proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
