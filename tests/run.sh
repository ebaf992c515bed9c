#!/usr/bin/env bash
# Builds ppgate and runs every test suite through `meson test` (tests/meson.build): the Catch2 unit
# tests, the Python integration tests (real ppgate processes on loopback), the JavaScript client in
# Node.js and the stats page in headless Chromium. Then the unit and integration suites once more
# against a build with AddressSanitizer and UndefinedBehaviorSanitizer (PPGATE_SANITIZE=0 skips it):
# any sanitizer report from ppgate counts as a failure. Last, the libFuzzer targets run for
# PPGATE_FUZZ_SECONDS each (PPGATE_FUZZ=0 skips them).
# Ends with one line: "N passed, N failed", the test cases of every suite summed.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
ASAN_BUILD=${ASAN_BUILD:-build-asan}
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}

bash tools/install-deps.sh || exit 1

[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null || exit 1
ninja -C "$BUILD" || exit 1

# The browser suite's npm packages (Playwright, TypeScript), pinned by its lockfile.
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/typescript ]; then
  (cd tests/browser && npm ci --no-audit --no-fund) || echo "cannot install the browser test's npm packages"
fi

logs=()        # the testlog.json of each run, summed at the end
extra_failed=0  # failures no testlog shows: a build that failed, a sanitizer report

# run_suites BUILD_DIR NAME SUITE... : runs the suites, keeps their log as NAME.
run_suites() {
  local dir=$1 name=$2
  shift 2
  local args=()
  for s in "$@"; do args+=(--suite "$s"); done
  rm -f "$dir/meson-logs/testlog.json"
  meson test -C "$dir" --no-rebuild --print-errorlogs "${args[@]}"
  if [ -f "$dir/meson-logs/testlog.json" ]; then
    cp "$dir/meson-logs/testlog.json" "$BUILD/testlog-$name.json"
    logs+=("$BUILD/testlog-$name.json")
  else
    echo "meson test wrote no log for $name"; extra_failed=$((extra_failed + 1))
  fi
}

run_suites "$BUILD" main unit integration js browser

# The sanitizers. Workers load the regular build's extension module: a sanitized one cannot load
# into an interpreter that was not built with the sanitizer. Reports go to files, so that one from
# a node whose output a test discards is still seen. ASan's quarantine of freed memory is kept
# small (32 MiB, not 256): the tests that bound the node's memory measure the node, not it. Warnings are not errors in the sanitized and
# fuzz builds: instrumented, g++ 12 finds "maybe uninitialized" values in Beast's and libstdc++'s
# headers that the regular build (werror) does not; the code is the same.
if [ "${PPGATE_SANITIZE:-1}" != 0 ]; then
  if { [ -f "$ASAN_BUILD/build.ninja" ] || meson setup "$ASAN_BUILD" -Db_sanitize=address,undefined \
         -Db_lundef=false -Dwerror=false >/dev/null; } && ninja -C "$ASAN_BUILD" gateway/ppgate tests/ppgate-unit-tests; then
    reports="$PWD/$BUILD/sanitizer-reports"
    rm -rf "$reports"
    mkdir -p "$reports"
    ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=32:log_path=$reports/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan" \
    PPGATE_TEST_WORKER_SCRIPT="$PWD/$BUILD/worker/ppgate_worker.py" PPGATE_WORKER_DIR="$PWD/$BUILD/worker" \
      run_suites "$ASAN_BUILD" sanitized unit integration
    if [ -n "$(ls -A "$reports")" ]; then
      echo "sanitizer reports from ppgate:"; cat "$reports"/*
      extra_failed=$((extra_failed + 1))
    fi
  else
    echo "the sanitized build failed"; extra_failed=$((extra_failed + 1))
  fi
fi

# The fuzz targets (tests/fuzz/, built by clang with libFuzzer, ASan and UBSan).
if [ "${PPGATE_FUZZ:-1}" != 0 ]; then
  targets=(fuzz_http_head fuzz_job_parser fuzz_session_message fuzz_worker_frames fuzz_peer_frames)
  if { [ -f "$FUZZ_BUILD/build.ninja" ] || CC=clang CXX=clang++ meson setup "$FUZZ_BUILD" \
         -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=false >/dev/null; } &&
     ninja -C "$FUZZ_BUILD" "${targets[@]/#/tests/fuzz/}"; then
    run_suites "$FUZZ_BUILD" fuzz fuzz
  else
    echo "the fuzz targets did not build"; extra_failed=$((extra_failed + 1))
  fi
fi

read -r passed failed < <(python3 tools/sum_test_results.py "${logs[@]}")
failed=$((failed + extra_failed))
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
