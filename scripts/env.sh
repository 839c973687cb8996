# Environment of the embedded default: sourced by `make run`, `make up` and the tests.
# Everything lives under one state folder (PIPELINE_STATE_DIR, default ./.state, ignored by git).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PIPELINE_STATE_DIR="${PIPELINE_STATE_DIR:-$ROOT/.state}"
mkdir -p "$PIPELINE_STATE_DIR"
PIPELINE_STATE_DIR="$(cd "$PIPELINE_STATE_DIR" && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PIPELINE_STATE_DIR/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
# Sized for a 2-core laptop: the default pre-forks 32 workers (~1.5 GB); two tasks at a time keep
# the API server responsive while Spark and torch jobs hold the cores. A task's supervisor talks to
# the execution API: give a busy API server time before a heartbeat counts as failed.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
export AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="${AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT:-30}"
export AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS="${AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS:-12}"
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT:-600}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
# A pre-set database URL wins (e.g. PostgreSQL); the embedded default is SQLite in the state folder.
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export PIPELINE_CODE_VERSION="${PIPELINE_CODE_VERSION:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)}"
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export TQDM_DISABLE=1
export PYTHONPATH="$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"

# Create or upgrade the metadata database and the pools the DAGs use (idempotent).
airflow_init() {
  airflow db migrate >/dev/null
  airflow pools set model_promotion 1 "Promotions and rollbacks of the fraud model, one at a time" >/dev/null
}
