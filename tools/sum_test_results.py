#!/usr/bin/env python3
"""Sums the test cases that meson's tests report, from <build>/meson-logs/testlog.json files.

Each meson test is one runner; what it ran is read from its output: Catch2's summary, unittest's
"Ran N tests" and "FAILED (failures=F, errors=E)", Node's "# pass N" and "# fail N", a fuzz
target's "Done N runs" (one case). A runner whose output has no summary counts as one case,
passed or failed by its exit. Prints "<passed> <failed>"."""

import json
import re
import sys


def cases(entry):
    out = (entry.get("stdout") or "") + "\n" + (entry.get("stderr") or "")
    ok = entry.get("result") == "OK"
    m = re.findall(r"^All tests passed \(\d+ assertions? in (\d+) test cases?\)", out, re.M)
    if m:
        return int(m[-1]), 0 if ok else 1
    m = re.findall(r"^test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", out, re.M)
    if m:
        _, passed, failed = map(int, m[-1])
        return passed, max(failed, 0 if ok else 1)
    m = re.findall(r"^Ran (\d+) tests?", out, re.M)
    if m:
        ran = int(m[-1])
        bad = sum(int(n) for n in re.findall(r"(?:failures|errors)=(\d+)", out.rsplit("Ran ", 1)[-1]))
        if not ok and bad == 0:
            bad = 1  # the runner failed without saying which test
        return max(ran - bad, 0), bad
    passed = re.findall(r"^# pass (\d+)", out, re.M)
    failed = re.findall(r"^# fail (\d+)", out, re.M)
    if passed and failed:
        p, f = int(passed[-1]), int(failed[-1])
        return p, f if ok or f else 1
    return (1, 0) if ok else (0, 1)


def main(paths):
    passed = failed = 0
    for path in paths:
        with open(path, encoding="utf-8") as log:
            for line in log:
                if line.strip():
                    p, f = cases(json.loads(line))
                    passed += p
                    failed += f
    print(passed, failed)


if __name__ == "__main__":
    main(sys.argv[1:])
