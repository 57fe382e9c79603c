#!/usr/bin/env bash
# The newcomer's road, timed: README.md's quick start as a reader copies it. A fresh clone of this
# checkout, `make venv`, then every block of the quick start's group (README.md#quickstart) in order,
# exactly as written (tests/readme_blocks.py prints them as one script, from this checkout's README),
# until the pruned model answers Detect through the inference service; the server is stopped at the end.
#
#   benchmarks/newcomer.sh [DIR]      DIR: where to clone (must not exist; default: a new temporary folder)
#
# Prints the time of each part and the total. Run it on a quiet machine for the README's figure.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d)/newcomer}"
clock() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { s = b - a; printf "%d min %04.1f s", int(s / 60), s - 60 * int(s / 60) }'; }

t0=$(clock)
git clone --quiet "$here" "$dir"
cd "$dir"
echo "== clone: $dir (from $here)"
make venv
t1=$(clock)
echo "== make venv: $(elapsed "$t0" "$t1")"
python3 "$here/tests/readme_blocks.py" script 'README.md#quickstart' > newcomer-road.sh
bash newcomer-road.sh
t2=$(clock)
echo "== the quick start's commands: $(elapsed "$t1" "$t2")"
echo "== newcomer's road, clone to Detect: $(elapsed "$t0" "$t2") on $(nproc) cores of" \
     "$(lscpu | sed -n 's/^Model name: *//p'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# CPU time of everything the road ran (user and system); on a busy machine it says more than the wall clock.
times > newcomer-times.txt  # (not in a pipeline: a subshell would have no children)
tail -1 newcomer-times.txt | awk '{ print "== CPU time of its processes: user " $1 ", system " $2 }'
