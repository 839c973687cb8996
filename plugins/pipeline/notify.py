"""People are told: Airflow's Notifier API, with the SMTP provider's ``SmtpNotifier``.

Configured from the environment, nothing in the repository:

- ``PIPELINE_NOTIFY_EMAIL``: the recipients, comma-separated. Empty (the default): nobody is told,
  and no DAG carries a notifier.
- ``PIPELINE_NOTIFY_FROM``: the sender (default ``fraud-pipeline@localhost``).
- the SMTP server: the provider's connection ``smtp_default``, e.g.
  ``AIRFLOW_CONN_SMTP_DEFAULT='smtp://user:password@smtp.example.com:587'`` (``?disable_ssl=true``
  for a plain local relay).
- ``PIPELINE_PREDICTIONS_DEADLINE_MINUTES``: how long after the nightly run for day D is queued
  (00:00 UTC the next day) the chain's first step must be done; a ``DeadlineAlert`` on
  ``ingest_transactions`` mails "predictions for D are late" when it is not. Unset: no deadline
  (the stack sets 360). ``airflow dags test`` of a DAG with a deadline fails after a successful
  run (apache/airflow#73428, pinned in tests/plugins/test_timetables.py), so ``make run`` leaves it unset.

What is told: every task that fails for good (a rejected delivery names the files and rules, a
sensor that timed out waiting for a delivery, a job error), a challenger the gate refused, drift
that asks for retraining, a promotion, and the deadline. Each mail links to the task instance.
"""

from __future__ import annotations

from datetime import timedelta

from pipeline.settings import AirflowSettings

SUBJECT_PREFIX = "[fraud-pipeline]"
# The day a run is about (its partition key, the form's date, or the logical date of `dags test`).
DAY = "{{ dag_run.partition_key or params.date or (ds if ds is defined else dag_run.run_id) }}"
_LINK = '<p><a href="{{ ti.log_url }}">{{ dag.dag_id }} / {{ ti.task_id }} in Airflow</a></p>'


def recipients() -> list[str]:
    return [r.strip() for r in AirflowSettings().notify_email.split(",") if r.strip()]


def _sender() -> str:
    return AirflowSettings().notify_from


def _mail(subject: str, body: str):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(to=recipients(), from_email=_sender(), subject=f"{SUBJECT_PREFIX} {subject}",
                        html_content=body)


def on_failure() -> list:
    """For ``on_failure_callback`` of every task: what failed, for which day, why, and the link."""
    if not recipients():
        return []
    return [_mail(f"FAILED {{{{ dag.dag_id }}}}.{{{{ ti.task_id }}}} for {DAY}",
                  "<p>{{ exception }}</p>" + _LINK)]


def on_event(subject: str, body: str = "") -> list:
    """For ``on_success_callback`` of a task whose success is news (gate refused, drift, promotion)."""
    if not recipients():
        return []
    return [_mail(subject, f"<p>{body}</p>{_LINK}")]


def predictions_deadline():
    """The ``DeadlineAlert`` of the nightly chain's first DAG, or None (nobody told, or no deadline set)."""
    minutes = AirflowSettings().predictions_deadline_minutes
    if not recipients() or not minutes:
        return None
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(SmtpNotifier, kwargs={
            "to": recipients(), "from_email": _sender(),
            "subject": f"{SUBJECT_PREFIX} LATE: predictions for {{{{ dag_run.partition_key }}}} are not there "
                       f"{minutes} min after the nightly run was queued",
            "html_content": "<p>{{ dag_run.dag_id }} for {{ dag_run.partition_key }} has not finished: the day's "
                            "delivery may be late (the sensor waits up to 6 h) or a step failed.</p>",
        }),
    )
