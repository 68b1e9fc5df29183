#!/usr/bin/env bash
# The long fuzzing run (not for CI): hypothesis with 100,000 examples per property, then the
# atheris (libFuzzer) harnesses, each for a bounded time.
#
#   scripts/fuzz-long.sh                    # everything, defaults below
#   FUZZ_SECONDS=3600 scripts/fuzz-long.sh  # atheris time per harness
#   FUZZ_SKIP_HYPOTHESIS=1 scripts/fuzz-long.sh   # atheris only
#   FUZZ_SKIP_ATHERIS=1 scripts/fuzz-long.sh      # hypothesis only
#
# CI runs the bounded profile instead (`pytest tests/fuzz`, HYPOTHESIS_PROFILE=ci, ~200 examples
# each). Crashes found by atheris are written to $FUZZ_OUT (crash-*, timeout-*, oom-*); the
# corpora grow there too, so a second run starts where the first stopped.
#
# atheris is installed into the venv on first use (`pip install atheris`: a manylinux wheel from
# PyPI). Where it cannot be installed, the atheris part is skipped with a message and the run
# still fails if hypothesis found anything.
set -u
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
FUZZ_SECONDS=${FUZZ_SECONDS:-600}
FUZZ_OUT=${FUZZ_OUT:-${TMPDIR:-/tmp}/mxhook-fuzz-out}
status=0

if [ ! -x "$PY" ]; then
    echo "fuzz-long: $PY not found: run 'make setup' first" >&2
    exit 2
fi

if [ -z "${FUZZ_SKIP_HYPOTHESIS:-}" ]; then
    echo "== hypothesis, profile long (100,000 examples per property)"
    HYPOTHESIS_PROFILE=long "$PY" -m pytest -q -p no:cacheprovider tests/fuzz || status=1
fi

if [ -z "${FUZZ_SKIP_ATHERIS:-}" ]; then
    if ! "$PY" -c 'import atheris' 2>/dev/null; then
        echo "== installing atheris into the venv"
        "$PY" -m pip install -q --disable-pip-version-check atheris || true
    fi
    if ! "$PY" -c 'import atheris' 2>/dev/null; then
        echo "fuzz-long: atheris is not installable here; atheris harnesses skipped" >&2
    else
        mkdir -p "$FUZZ_OUT"
        for harness in message parsers; do
            corpus="$FUZZ_OUT/corpus-$harness"
            mkdir -p "$corpus"
            seeds=()
            [ "$harness" = message ] && seeds=(tests/unit/fixtures/mime)
            echo "== atheris $harness for ${FUZZ_SECONDS}s (corpus $corpus)"
            "$PY" "tests/fuzz/atheris_$harness.py" \
                -max_total_time="$FUZZ_SECONDS" -timeout=30 -rss_limit_mb=4096 \
                -artifact_prefix="$FUZZ_OUT/$harness-" -print_final_stats=1 \
                "$corpus" "${seeds[@]}" || status=1
        done
        if ls "$FUZZ_OUT"/*-crash-* "$FUZZ_OUT"/*-timeout-* "$FUZZ_OUT"/*-oom-* >/dev/null 2>&1; then
            echo "fuzz-long: atheris artifacts in $FUZZ_OUT:" >&2
            ls -l "$FUZZ_OUT"/*-crash-* "$FUZZ_OUT"/*-timeout-* "$FUZZ_OUT"/*-oom-* 2>/dev/null >&2
            status=1
        fi
    fi
fi

if [ "$status" = 0 ]; then
    echo "fuzz-long: nothing found"
else
    echo "fuzz-long: FAILURES (see above)" >&2
fi
exit "$status"
