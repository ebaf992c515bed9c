#!/usr/bin/env bash
# Runs one libFuzzer target for PPGATE_FUZZ_SECONDS (default 30) from a copy of its seed corpus,
# so what it finds stays in the work folder (crash-* files included). Exit 0 when it ran out its
# time; otherwise (a crash, leak, hang or sanitizer report) the end of its log and the folder.
set -u
target=$(realpath "$1") seeds=$2 work=$3  # the target from the build folder, before the cd
rm -rf "$work"
mkdir -p "$work/corpus"
cp "$seeds"/* "$work/corpus/"
cd "$work" || exit 1
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" timeout 300 "$target" \
  -max_total_time="${PPGATE_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 -timeout=10 corpus > run.log 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then
  grep -E "^Done [0-9]+ runs" run.log
else
  echo "$(basename "$target") FAILED (exit $rc):"
  tail -n 40 run.log
  ls
fi
exit "$rc"
