#!/usr/bin/env bash
# Builds ppgate and runs every test suite: the Catch2 unit tests, the Python integration tests
# (real ppgate processes on loopback), the JavaScript client in Node.js, and the stats page and
# the JavaScript client in headless Chromium.
# Ends with one line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}

bash tools/install-deps.sh || exit 1

[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null || exit 1
ninja -C "$BUILD" || exit 1

logs="$BUILD/test-logs"
mkdir -p "$logs"
passed=0
failed=0

# Catch2: "All tests passed (N assertions in M test cases)" or "test cases: T | P passed | F failed".
timeout 900 "$BUILD/tests/ppgate-unit-tests" 2>&1 | tee "$logs/unit.log"
unit_rc=${PIPESTATUS[0]}
summary=$(grep -E "^(All tests passed|test cases:)" "$logs/unit.log" | tail -n 1)
if [[ $summary =~ in\ ([0-9]+)\ test\ case ]]; then
  passed=$((passed + BASH_REMATCH[1]))
elif [[ $summary =~ ([0-9]+)\ passed\ \|\ ([0-9]+)\ failed ]]; then
  passed=$((passed + BASH_REMATCH[1])); failed=$((failed + BASH_REMATCH[2]))
else
  echo "unit tests ended without a summary (exit $unit_rc)"; failed=$((failed + 1))
fi

# Integration tests: unittest prints "Ran N tests" and "OK" or "FAILED (failures=F, errors=E)".
export PPGATE_BINARY="$PWD/$BUILD/gateway/ppgate"
timeout 1800 python3 -m unittest discover -v -s tests/integration -t tests/integration 2>&1 | tee "$logs/integration.log"
integration_rc=${PIPESTATUS[0]}
ran=$(grep -oE "^Ran [0-9]+ test" "$logs/integration.log" | tail -n 1 | grep -oE "[0-9]+")
if [ -n "$ran" ]; then
  bad=0
  for kind in failures errors; do
    n=$(grep -oE "$kind=[0-9]+" "$logs/integration.log" | tail -n 1 | cut -d= -f2)
    bad=$((bad + ${n:-0}))
  done
  passed=$((passed + ran - bad)); failed=$((failed + bad))
else
  echo "integration tests ended without a summary (exit $integration_rc)"; failed=$((failed + 1))
fi

# Node's test runner (the JS client in Node.js, then in the browser) prints "# pass N" and "# fail N".
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund) || { echo "cannot install the browser test's npm packages"; }
fi
export PPGATE_ARTIFACTS="$PWD/$BUILD/test-artifacts"
timeout 900 node --test tests/js/ tests/browser/ 2>&1 | tee "$logs/browser.log"
browser_pass=$(grep -oE "^# pass [0-9]+" "$logs/browser.log" | grep -oE "[0-9]+")
browser_fail=$(grep -oE "^# fail [0-9]+" "$logs/browser.log" | grep -oE "[0-9]+")
if [ -n "$browser_pass" ] && [ -n "$browser_fail" ]; then
  passed=$((passed + browser_pass)); failed=$((failed + browser_fail))
else
  echo "the JS and browser tests ended without a summary"; failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
