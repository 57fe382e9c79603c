#!/bin/sh
# The serving and RPC test modules (tests/test_serving_*.py, tests/test_rpc_*.py), run RUNS times in a
# row (default 20), stopping at the first failure: a flaky test there fails one run in a few, and one
# green run proves nothing. Not part of `make test` (a run takes minutes). Usage, from anywhere:
#   tests/stress.sh [RUNS]        (PYTHON=... to use another interpreter than .venv/bin/python)
# Each run's pytest output goes to run-N.log in a fresh folder under $TMPDIR (printed first).
set -eu
cd "$(dirname "$0")/.."
runs=${1:-20}
python=${PYTHON:-.venv/bin/python}
logs=$(mktemp -d "${TMPDIR:-/tmp}/slimyolo-stress.XXXXXX")
echo "logs in $logs"
run=1
while [ "$run" -le "$runs" ]; do
    start=$(date +%s)
    if "$python" -m pytest -q -p no:cacheprovider tests/test_serving_*.py tests/test_rpc_*.py \
        >"$logs/run-$run.log" 2>&1; then
        echo "run $run of $runs passed in $(( $(date +%s) - start )) s: $(tail -n 1 "$logs/run-$run.log")"
    else
        echo "run $run of $runs FAILED ($logs/run-$run.log):"
        grep -E "^(FAILED|ERROR)" "$logs/run-$run.log" || tail -n 20 "$logs/run-$run.log"
        exit 1
    fi
    run=$((run + 1))
done
echo "all $runs runs passed"
