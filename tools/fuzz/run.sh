#!/bin/bash
# The long reliability job (not part of the 5-minute suite): many more hypothesis
# examples, seeded SIGKILL and fault-injection rounds at ten times the suite's size, and, when atheris
# is installed (pip install atheris), coverage-guided fuzzing of the three parsers (temporary names,
# bbcmd replies, kvtree files).
#
#   tools/fuzz/run.sh                 # about 45 minutes on 2 cores
#   EXAMPLES=30000 SOAK=3 RUNS=1000000 tools/fuzz/run.sh    # about 20 minutes
#
# Exit status: non-zero as soon as one stage fails; the failing input is printed by that stage
# (hypothesis prints the falsifying example, atheris writes crash-* files in the current directory).
set -euo pipefail
cd "$(dirname "$0")/../.."
EXAMPLES=${EXAMPLES:-50000}
SOAK=${SOAK:-10}
RUNS=${RUNS:-2000000}

echo "== name parsers (Python, and C against Python): hypothesis, $EXAMPLES examples per property"
AXL_FUZZ_EXAMPLES=$EXAMPLES python -m pytest -q -p no:cacheprovider --timeout=0 tests/test_fuzz_names.py \
    tests/test_fastpath.py::test_native_parser_agrees_with_python

echo "== bbcmd reply parser: hypothesis, $EXAMPLES examples"
python tools/fuzz/hypothesis_bbcmd_reply.py "$EXAMPLES"

echo "== kvtree decoder and AXL state-file reader: hypothesis, $EXAMPLES examples per property"
AXL_FUZZ_EXAMPLES=$EXAMPLES python -m pytest -q -p no:cacheprovider --timeout=0 tests/test_kvtree.py tests/test_axlstate.py

echo "== crash, concurrency and root-over-users rounds at AXL_SOAK=$SOAK"
AXL_SOAK=$SOAK python -m pytest -q -p no:cacheprovider --timeout=0 \
    tests/test_crash.py tests/test_concurrency.py tests/test_root_over_users.py

if python -c "import atheris" 2>/dev/null; then
    echo "== atheris, $RUNS runs each (seeded from tools/fuzz/seeds, corpus grown in a scratch copy)"
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus"' EXIT
    cp -r tools/fuzz/seeds/names tools/fuzz/seeds/bbcmd tools/fuzz/seeds/kvtree "$corpus"/
    python tools/fuzz/atheris_names.py -atheris_runs="$RUNS" "$corpus/names"
    if python -c "import axlstateless._fastcore" 2>/dev/null; then
        cp -r tools/fuzz/seeds/names "$corpus/native"
        python tools/fuzz/atheris_native.py -atheris_runs="$RUNS" "$corpus/native"
    else
        echo "== native core not built: its parser's agreement fuzzing skipped"
    fi
    python tools/fuzz/atheris_bbcmd_reply.py -atheris_runs="$RUNS" -max_len=4096 "$corpus/bbcmd"
    python tools/fuzz/atheris_kvtree.py -atheris_runs="$RUNS" -max_len=8192 "$corpus/kvtree"
else
    echo "== atheris not installed (pip install atheris): coverage-guided fuzzing skipped"
fi
echo "== all fuzz and soak stages passed"
