#!/usr/bin/env bash
# Sets everything up and runs the main job: installs the Debian packages, builds ppgate, starts a
# node on 127.0.0.1:8080 with one worker per usable CPU, submits a job to it with curl and prints
# the answer. The node keeps serving (stats page at http://127.0.0.1:8080/) until Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build

build/gateway/ppgate serve --listen 127.0.0.1:8080 --workers auto &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node' INT TERM EXIT
for _ in $(seq 100); do
  curl -sf localhost:8080/healthz >/dev/null && break
  kill -0 $node 2>/dev/null || { echo "ppgate did not start" >&2; exit 1; }
  sleep 0.1
done

echo '$ curl -s "localhost:8080/v1/jobs?wait=10" -d '"'"'{"source":"def sq(x):\n    return x*x\n","function":"sq","args":[7]}'"'"
curl -s 'localhost:8080/v1/jobs?wait=10' -d '{"source":"def sq(x):\n    return x*x\n","function":"sq","args":[7]}'
echo
echo '$ curl -s -H "Accept: text/plain" localhost:8080/v1/stats'
curl -s -H 'Accept: text/plain' localhost:8080/v1/stats
echo "ppgate is serving on http://127.0.0.1:8080/ (stats page there); Ctrl-C stops it."
wait $node
