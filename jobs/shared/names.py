"""Names in MLflow that a writer and a reader share: version tags, the run's bundle folder, the
promotion decisions. Both sides import them from here; neither spells the string."""

from __future__ import annotations

MODEL_NAME = "fraud-detector"  # the registered model, unless PIPELINE_MODEL_NAME says otherwise
BUNDLE_DIR = "bundle"  # run artifacts that travel with a model version (preprocessing, decision, reference)

# Version tags written by training: what the registry must give back, byte for byte.
ONNX_SHA_TAG = "onnx_sha256"
PREPROCESSING_SHA_TAG = "preprocessing_sha256"
DECISION_SHA_TAG = "decision_sha256"

# Version tags and run metrics written by training, read by evaluation and the card.
HOLDOUT_DATES_TAG = "holdout_dates"  # the frozen holdout: comma-separated ISO dates
TRAIN_WINDOW_TAG = "train_window"  # for people: "start..end" (machines read the window's dates from the run)
ONNX_PARITY = "onnx_max_abs_diff"  # max |ONNX - PyTorch| on the holdout (run metric)
HOLDOUT_METRIC_PREFIX = "holdout_"  # the gate logs each holdout metric of the challenger as holdout_<name>
HOLDOUT_PR_AUC = HOLDOUT_METRIC_PREFIX + "pr_auc"  # read by the drift monitor
SCORING_LATENCY = "scoring_latency_ms_per_1k"  # median onnxruntime milliseconds per 1,000 rows (run metric)

# Version tags written by the gate (evaluate), signed with its private key.
GATE_PASSED_TAG = "gate_passed"
GATE_VERDICT_TAG = "gate_verdict"
GATE_CHAMPION_TAG = "gate_champion_version"
GATE_REPORT_TAG = "gate_report"
GATE_TAGS = (GATE_PASSED_TAG, GATE_VERDICT_TAG, GATE_CHAMPION_TAG, GATE_REPORT_TAG)
SIGNATURE_TAG = "gate_signature"
SIGNED_TAGS = (GATE_PASSED_TAG, GATE_CHAMPION_TAG, GATE_VERDICT_TAG, ONNX_SHA_TAG)

# Version tags written by promotion.
PROMOTED_AT_TAG = "promoted_at"
PROMOTED_BY_RUN_TAG = "promoted_airflow_run_id"

# Version tags written by deployment (jobs/steps/deploy.py): where it serves, since when.
SERVING_SERVICES_TAG = "serving_services"
SERVING_AT_TAG = "serving_deployed_at"

# The run tag that marks the long-lived drift monitoring run of a model.
MONITOR_TAG = "drift_monitor"

# A person's answer in the approval form: key recorded on the version -> the label the form shows.
DECISIONS = {"promote": "Promote", "keep": "Keep the champion", "rollback": "Roll back the champion"}

# Version tags of a live trial (jobs/steps/live.py), read by every scoring service.
LIVE_MODE_TAG = "live_evaluation"  # shadow or canary: how the services use the challenger
LIVE_SHADOW_SHARE_TAG = "live_shadow_share"
LIVE_CANARY_SHARE_TAG = "live_canary_share"
LIVE_SINCE_TAG = "live_since"  # when the challenger alias was given: the baking period starts here
LIVE_VERDICT_TAG = "live_verdict"  # the guardrails' outcome: promoted, rolled back (with the guardrail), retired
LIVE_CHALLENGER_TAG = "live_challenger"  # on the champion: the last challenger's trial outcome
LIVE_REPORT_TAG = "live_report"
