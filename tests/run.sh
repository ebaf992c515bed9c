#!/usr/bin/env bash
# Builds ppgate and runs every test suite: the Catch2 unit tests, the Python integration tests
# (real ppgate processes on loopback), the JavaScript client in Node.js, and the stats page and
# the JavaScript client in headless Chromium. Then the unit and integration suites once more
# against a build with AddressSanitizer and UndefinedBehaviorSanitizer (PPGATE_SANITIZE=0 skips it):
# any sanitizer report from ppgate counts as a failure. Last, the libFuzzer targets run for a
# bounded time each (PPGATE_FUZZ=0 skips them).
# Ends with one line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
ASAN_BUILD=${ASAN_BUILD:-build-asan}

bash tools/install-deps.sh || exit 1

[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null || exit 1
ninja -C "$BUILD" || exit 1

logs="$BUILD/test-logs"
rm -rf "$logs"
mkdir -p "$logs"
passed=0
failed=0

# Catch2: "All tests passed (N assertions in M test cases)" or "test cases: T | P passed | F failed".
run_unit() {  # binary log
  timeout 900 "$1" 2>&1 | tee "$2"
  local rc=${PIPESTATUS[0]} summary
  summary=$(grep -E "^(All tests passed|test cases:)" "$2" | tail -n 1)
  if [[ $summary =~ in\ ([0-9]+)\ test\ case ]]; then
    passed=$((passed + BASH_REMATCH[1]))
  elif [[ $summary =~ ([0-9]+)\ passed\ \|\ ([0-9]+)\ failed ]]; then
    passed=$((passed + BASH_REMATCH[1])); failed=$((failed + BASH_REMATCH[2]))
  else
    echo "unit tests ended without a summary (exit $rc)"; failed=$((failed + 1))
  fi
}

# unittest prints "Ran N tests" and "OK" or "FAILED (failures=F, errors=E)".
run_integration() {  # log
  timeout 1800 python3 -m unittest discover -v -s tests/integration -t tests/integration 2>&1 | tee "$1"
  local rc=${PIPESTATUS[0]} ran bad=0 n kind
  ran=$(grep -oE "^Ran [0-9]+ test" "$1" | tail -n 1 | grep -oE "[0-9]+")
  if [ -n "$ran" ]; then
    for kind in failures errors; do
      n=$(grep -oE "$kind=[0-9]+" "$1" | tail -n 1 | cut -d= -f2)
      bad=$((bad + ${n:-0}))
    done
    passed=$((passed + ran - bad)); failed=$((failed + bad))
  else
    echo "integration tests ended without a summary (exit $rc)"; failed=$((failed + 1))
  fi
}

run_unit "$BUILD/tests/ppgate-unit-tests" "$logs/unit.log"
PPGATE_BINARY="$PWD/$BUILD/gateway/ppgate" run_integration "$logs/integration.log"

# Node's test runner (the JS client in Node.js and its TypeScript types, then in the browser) prints "# pass N" and "# fail N".
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/typescript ]; then
  (cd tests/browser && npm ci --no-audit --no-fund) || { echo "cannot install the browser test's npm packages"; }
fi
export PPGATE_BINARY="$PWD/$BUILD/gateway/ppgate"
export PPGATE_ARTIFACTS="$PWD/$BUILD/test-artifacts"
timeout 900 node --test tests/js/ tests/browser/ 2>&1 | tee "$logs/browser.log"
browser_pass=$(grep -oE "^# pass [0-9]+" "$logs/browser.log" | grep -oE "[0-9]+")
browser_fail=$(grep -oE "^# fail [0-9]+" "$logs/browser.log" | grep -oE "[0-9]+")
if [ -n "$browser_pass" ] && [ -n "$browser_fail" ]; then
  passed=$((passed + browser_pass)); failed=$((failed + browser_fail))
else
  echo "the JS and browser tests ended without a summary"; failed=$((failed + 1))
fi

# The sanitizers. Workers load the regular build's extension module: a sanitized one cannot load
# into an interpreter that was not built with the sanitizer. Reports go to files, so that one from
# a node whose output a test discards is still seen.
if [ "${PPGATE_SANITIZE:-1}" != 0 ]; then
  if { [ -f "$ASAN_BUILD/build.ninja" ] || meson setup "$ASAN_BUILD" -Db_sanitize=address,undefined \
         -Db_lundef=false >/dev/null; } && ninja -C "$ASAN_BUILD" gateway/ppgate tests/ppgate-unit-tests; then
    reports="$PWD/$logs/sanitizer"
    mkdir -p "$reports"
    export ASAN_OPTIONS="detect_leaks=0:log_path=$reports/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
    PPGATE_TEST_WORKER_SCRIPT="$PWD/$BUILD/worker/ppgate_worker.py" \
      run_unit "$ASAN_BUILD/tests/ppgate-unit-tests" "$logs/unit-sanitized.log"
    PPGATE_BINARY="$PWD/$ASAN_BUILD/gateway/ppgate" PPGATE_WORKER_DIR="$PWD/$BUILD/worker" \
      run_integration "$logs/integration-sanitized.log"
    unset ASAN_OPTIONS UBSAN_OPTIONS
    if [ -n "$(ls -A "$reports")" ]; then
      echo "sanitizer reports from ppgate:"; cat "$reports"/*
      failed=$((failed + 1))
    fi
  else
    echo "the sanitized build failed"; failed=$((failed + 1))
  fi
fi

# The fuzz targets (tests/fuzz/, built by clang with libFuzzer, ASan and UBSan): each runs for
# PPGATE_FUZZ_SECONDS from its seed corpus (copied: what it finds stays in the logs); one that
# crashes, leaks, hangs or trips a sanitizer counts as a failure. PPGATE_FUZZ=0 skips them.
if [ "${PPGATE_FUZZ:-1}" != 0 ]; then
  FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
  targets=(fuzz_http_head fuzz_job_parser fuzz_session_message fuzz_worker_frames fuzz_peer_frames)
  if { [ -f "$FUZZ_BUILD/build.ninja" ] || CC=clang CXX=clang++ meson setup "$FUZZ_BUILD" \
         -Db_sanitize=address,undefined -Db_lundef=false >/dev/null; } &&
     ninja -C "$FUZZ_BUILD" "${targets[@]/#/tests/fuzz/}"; then
    for t in "${targets[@]}"; do
      work="$logs/fuzz/$t"
      mkdir -p "$work/corpus"
      cp tests/fuzz/corpus/"$t"/* "$work/corpus/"
      if (cd "$work" && UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" timeout 300 \
            "$OLDPWD/$FUZZ_BUILD/tests/fuzz/$t" -max_total_time="${PPGATE_FUZZ_SECONDS:-30}" \
            -rss_limit_mb=2048 -timeout=10 corpus > run.log 2>&1); then
        echo "fuzz $t: $(grep -E "^Done [0-9]+ runs" "$work/run.log")"
        passed=$((passed + 1))
      else
        echo "fuzz $t FAILED:"; tail -n 40 "$work/run.log"; ls "$work"
        failed=$((failed + 1))
      fi
    done
  else
    echo "the fuzz targets did not build"; failed=$((failed + 1))
  fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
