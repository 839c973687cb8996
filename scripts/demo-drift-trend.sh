#!/usr/bin/env bash
# A drift trend to look at: four weeks of ordinary transactions, then a week whose world drifts
# more each day; ingest, build features, train and promote on the ordinary weeks, then run the
# daily drift check over the last two weeks. `make up` then shows the trend (Drift trend link).
# Uses the job CLI directly (no Airflow), on PIPELINE_STATE_DIR (default .state-drift-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIPELINE_STATE_DIR="${PIPELINE_STATE_DIR:-$PWD/.state-drift-demo}"
export MLFLOW_DISABLE_TELEMETRY=true TQDM_DISABLE=1
ROWS="${ROWS:-1500}"
LAST_ORDINARY=2026-11-10
jobs() { python -m jobs "$@" | grep -v '^::pipeline-result::' || true; }

python -m jobs generate --date "$LAST_ORDINARY" --days 28 --rows-per-day "$ROWS" >/dev/null
day=1
for drift in 0.0 0.1 0.2 0.35 0.5 0.7 0.9; do
  python -m jobs generate --date "2026-11-1$day" --rows-per-day "$ROWS" --drift "$drift" >/dev/null
  day=$((day + 1))
done
jobs ingest --date 2026-11-17 --run-id demo
jobs validate --date 2026-11-17 --run-id demo
jobs features --start 2026-10-14 --date 2026-11-17
version="$(python -m jobs train --date "$LAST_ORDINARY" | sed -n 's/^::pipeline-result:://p' \
  | python -c 'import json, sys; print(json.load(sys.stdin)["model_version"])')"
jobs evaluate --date "$LAST_ORDINARY" --model-version "$version"
jobs promote --model-version "$version"
for d in 04 05 06 07 08 09 10 11 12 13 14 15 16 17; do
  echo "drift check 2026-11-$d"
  jobs drift --date "2026-11-$d"
done
echo "Now: PIPELINE_STATE_DIR=$PIPELINE_STATE_DIR make up, then open the Drift trend link it prints."
