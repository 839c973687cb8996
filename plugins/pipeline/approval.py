"""A person's answer in an approval form (Airflow HITL), as job arguments: one home for the templates
that read it, so every DAG records who decided what and why the same way (``python -m jobs decision``)."""

from __future__ import annotations

FORM_TASK = "approve_promotion"
# Jinja: the form's answer (chosen options, who responded, the form's params, whether it timed out).
ANSWER = "{% set a = ti.xcom_pull(task_ids='" + FORM_TASK + "') %}"
CHOSEN = ANSWER + "{{ a['chosen_options'][0] }}"
BY = ANSWER + "{{ (a['responded_by_user'] or {}).get('name') or 'nobody (timed out)' }}"
REASON = ANSWER + ("{{ (a['params_input'] or {}).get('reason') or "
                   "('no answer in time' if a.get('timedout') else 'no reason given') }}")


def decision_arguments(model_version, decision: str = CHOSEN) -> list:
    """``python -m jobs decision``'s arguments: the version, the decision (the form's choice unless
    given), who answered and why."""
    return ["--model-version", model_version, f"--decision={decision}", f"--by={BY}", f"--reason={REASON}"]
