"""
### Monitor drift and ask for retraining

**Consumes** recent `gold/features` and the champion's training reference (a sample stored
with the model version). One run per day partition of predictions (`fraud_predictions`):
the drift of day D is checked as soon as D is scored; backfill a date range from the UI.

**Produces** an Evidently data-drift report (HTML + JSON) in `reports/drift/date=<date>/` and
in the champion's MLflow run. When the share of drifted columns reaches
`PIPELINE_DRIFT_SHARE_THRESHOLD`, `signal_retraining` emits the `drift_detected` Asset for the
day's partition (extra: the drift summary), which schedules `train_model` for that day.

**Decision** is shown by `decide`: drift share, threshold and the drifted columns.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task
from pipeline.assets import DRIFT_SIGNAL, PREDICTIONS
from pipeline.defaults import DEFAULT_ARGS, FORCE_ARG, START_DATE, TAGS, force_param
from pipeline.execution.operators import job_task
from pipeline.execution.runners import Resources
from pipeline.notify import DAY, on_event
from pipeline.timetables import DailyPartitionedAssets

with DAG(
    dag_id="monitor_drift",
    doc_md=__doc__,
    schedule=DailyPartitionedAssets(assets=PREDICTIONS),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "monitoring", "drift"],
    params={
        "date": Param(None, type=["null", "string"], format="date", title="Last date",
                      description="Last day of recent data. Empty: the run's partition key."),
        "days": Param(1, type="integer", minimum=1, maximum=90, title="Days of recent data",
                      description="How many days ending at the date form the current data set."),
        "force": force_param(),
    },
) as dag:
    drift = job_task(
        step="drift",
        arguments=["--days", "{{ params.days }}", FORCE_ARG],
        job_resources=Resources(cpu=1, memory_gb=4),
        doc_md="Runs Evidently's data drift preset: champion's training reference vs recent features.",
    )

    @task.short_circuit
    def decide(r: dict) -> bool:
        """Continues to the retraining signal only when the data drifted and no cooldown or limit holds."""
        print(f"Drift share {r['drift_share']:.2f} over {r['window_start']}..{r['window_end']} vs "
              f"v{r['model_version']} reference; drifted columns: {', '.join(r['drifted_columns']) or 'none'}")
        if r["retrain"]:
            print(f"DRIFT: asking for retraining ({r['decision']})")
        elif r["drifted"]:
            print(f"DRIFT, but no retraining: {r['decision']}")
        else:
            print("No drift: nothing to do")
        print(f"Report: {r['report_html']}")
        return bool(r["retrain"])

    @task(outlets=[DRIFT_SIGNAL], on_success_callback=on_event(
        f"DRIFT for {DAY}: retraining requested",
        "{{ ti.xcom_pull(task_ids='drift')['decision'] }}; drifted columns: "
        "{{ ti.xcom_pull(task_ids='drift')['drifted_columns'] | join(', ') }}"))
    def signal_retraining(r: dict, **context) -> None:
        """Emits the drift_detected event (with the drift summary) that schedules train_model."""
        # The event's partition key is the drifted day (also for a manual run with only a date in
        # its form): train_model trains up to it.
        event = context["outlet_events"][DRIFT_SIGNAL]
        event.add_partitions(r["window_end"])
        event.extra = {
            **{k: r[k] for k in ("drift_share", "drifted_columns", "window_start", "window_end", "model_version",
                                 "report_json", "decision")},
        }

    decide(drift.output) >> signal_retraining(drift.output)


if __name__ == "__main__":
    dag.test()
