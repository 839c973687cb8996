"""The compose stack's per-service storage identities, enforced by an S3-compatible server, with
every job on a read-only root filesystem, as the Kubernetes runner's pods run them.

moto's server with IAM enforcement on (``INITIAL_NO_AUTH_ACTION_COUNT``) evaluates the very policy
documents that ``minio-init`` loads into MinIO (docker/minio/policies/*.json, AWS IAM syntax, which
MinIO implements): the delivery identity adds to ``raw/``; the jobs' identity runs the whole job
chain on the S3 lake, so the policy is proven sufficient, and is refused where the issue says it
must be (deleting or overwriting ``raw/``, writing outside the lake's zones, destroying versions);
the sensor's identity reads ``raw/`` only; the scoring service's identity appends to ``decisions/``
and does nothing else. Each job runs in the pod's view (tests/podview.py: root
read-only, a fresh /tmp, one writable state folder), so a job that writes anywhere else fails here
too. moto does not evaluate the ``s3:prefix`` condition of a
ListBucket statement, so the sensor's and the delivery identity's list restriction is checked by
tests/stack/test_compose_static.py instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import podview
import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "docker" / "minio" / "policies"
IDENTITIES = {"jobs": "pipeline-jobs.json", "sensor": "pipeline-sensor.json", "delivery": "lake-delivery.json",
              "scoring": "scoring-decisions.json"}
END = "2026-06-12"
RAW_KEY = f"raw/transactions/date={END}/transactions-{END}.csv"


@pytest.fixture(scope="module")
def lake_server(tmp_path_factory):
    """A moto server enforcing IAM after the set-up calls; yields (url, {identity: (key id, secret)})."""
    import boto3

    setup_calls = 2 + 3 * len(IDENTITIES)  # bucket, versioning; per identity: user, policy, access key
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(setup_calls)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        admin = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="x")
        s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
        s3.create_bucket(Bucket="lake")
        s3.put_bucket_versioning(Bucket="lake", VersioningConfiguration={"Status": "Enabled"})
        keys = {}
        for user, policy in IDENTITIES.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=policy, PolicyDocument=(POLICIES / policy).read_text())
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        # From here on every call is authenticated and authorized: an unknown key is refused.
        assert denied(client(url, ("AKIAUNKNOWN000000000", "nope")).list_objects_v2, Bucket="lake")
        yield url, keys
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def client(url, key):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key[0],
                        aws_secret_access_key=key[1])


def denied(call, **kwargs) -> str | None:
    """The error code when the server refuses ``call``, None when it allows it."""
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return None


def job_env(url, key, state) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "AWS_"))}
    env.update(PIPELINE_STATE_DIR=str(state), PIPELINE_LAKE_URI="s3://lake/", AWS_ENDPOINT_URL=url,
               AWS_ACCESS_KEY_ID=key[0], AWS_SECRET_ACCESS_KEY=key[1], AWS_DEFAULT_REGION="us-east-1",
               MLFLOW_DISABLE_TELEMETRY="true", TQDM_DISABLE="1", PIPELINE_HOLDOUT_DAYS="4",
               PIPELINE_MAX_EPOCHS="12", PIPELINE_BOOTSTRAP_RESAMPLES="200")
    return env


def run_job(env, *args):
    """``python -m jobs ...`` as the identity in ``env``, in the pod's view (read-only root)."""
    out = podview.run(Path(env["PIPELINE_STATE_DIR"]), sys.executable, "-m", "jobs", *args, env=env)
    assert out.returncode == 0, f"{args[0]} as this identity, on a read-only root:\n{out.stderr[-3000:]}"
    return out


def test_each_identity_can_do_its_work_and_no_more(lake_server, tmp_path):
    podview.require()
    url, keys = lake_server
    state = tmp_path / "state"
    state.mkdir()
    # The delivery identity (upstream exports; the demo generator) adds to raw/ ...
    run_job(job_env(url, keys["delivery"], state), "generate", "--date", END, "--days", "12", "--rows-per-day", "700")
    delivery = client(url, keys["delivery"])
    assert denied(delivery.delete_object, Bucket="lake", Key=RAW_KEY) == "AccessDenied"
    assert denied(delivery.put_object, Bucket="lake", Key="silver/transactions/x", Body=b"x") == "AccessDenied"
    assert denied(delivery.get_object, Bucket="lake", Key="silver/transactions/x") == "AccessDenied"

    # ... the jobs' identity runs the whole chain on what was delivered ...
    jobs = job_env(url, keys["jobs"], state)
    for args in (["ingest", "--date", END, "--run-id", "r1"], ["validate", "--date", END, "--run-id", "r1"],
                 ["features", "--start", "2026-06-01", "--date", END]):
        run_job(jobs, *args)
    version = run_job(jobs, "train", "--date", END).stdout.split('"model_version": "')[1].split('"')[0]
    for args in (["evaluate", "--date", END, "--model-version", version], ["promote", "--model-version", version],
                 ["score", "--date", END]):
        run_job(jobs, *args)
    # The scoring service's identity appends its decisions log (two batches, as the service does) ...
    scoring = job_env(url, keys["scoring"], state)
    append = ("from jobs.storage.decisions import DecisionLog, row\n"
              "from jobs.storage.lake import get_lake\n"
              "log = DecisionLog(get_lake(), buffer_rows=10**6, flush_seconds=3600)\n"
              "for batch in range(2):\n"
              "    for i in range(50):\n"
              "        log.record(row({'transaction_id': f'tx_{batch}_{i}', 'card_id': 'c1',\n"
              f"                        'timestamp': '{END}T10:00:00Z'}}, 'pod:1', ('1', 0.1, False, 0.3)))\n"
              "    assert log.flush() == 50\n"
              "log.close()\n")
    out = podview.run(state, sys.executable, "-c", append, env=scoring)
    assert out.returncode == 0, f"the decisions log as the scoring identity:\n{out.stderr[-3000:]}"
    # ... which the jobs read (the drift check joins the late labels) and maintain (compaction, vacuum).
    for args in (["drift", "--date", END], ["maintain"]):
        run_job(jobs, *args)

    # ... and may never delete or rewrite a delivery, write outside the zones, or destroy history.
    s3 = client(url, keys["jobs"])
    assert denied(s3.delete_object, Bucket="lake", Key=RAW_KEY) == "AccessDenied"
    assert denied(s3.put_object, Bucket="lake", Key=RAW_KEY, Body=b"rewritten") == "AccessDenied"
    assert denied(s3.put_object, Bucket="lake", Key="elsewhere/x", Body=b"x") == "AccessDenied"
    version_id = s3.head_object(Bucket="lake", Key=RAW_KEY)["VersionId"]
    assert denied(s3.delete_object, Bucket="lake", Key=RAW_KEY, VersionId=version_id) == "AccessDenied"
    assert denied(s3.put_bucket_versioning, Bucket="lake",
                  VersioningConfiguration={"Status": "Suspended"}) == "AccessDenied"
    assert denied(s3.delete_bucket, Bucket="lake") == "AccessDenied"
    assert s3.get_object(Bucket="lake", Key=RAW_KEY)["Body"].read().startswith(b"transaction_id")

    # The scoring identity appends decisions and does nothing else: no other zone, no delete.
    service = client(url, keys["scoring"])
    logged = s3.list_objects_v2(Bucket="lake", Prefix="decisions/_delta_log/")["Contents"][0]["Key"]
    assert denied(service.get_object, Bucket="lake", Key=logged) is None
    assert denied(service.get_object, Bucket="lake", Key=RAW_KEY) == "AccessDenied"
    assert denied(service.put_object, Bucket="lake", Key="silver/transactions/x", Body=b"x") == "AccessDenied"
    assert denied(service.delete_object, Bucket="lake", Key=logged) == "AccessDenied"

    # The sensor's identity reads deliveries and nothing else.
    sensor = client(url, keys["sensor"])
    assert denied(sensor.get_object, Bucket="lake", Key=RAW_KEY) is None
    assert denied(sensor.head_object, Bucket="lake", Key=RAW_KEY) is None
    silver = s3.list_objects_v2(Bucket="lake", Prefix="silver/")["Contents"][0]["Key"]
    assert denied(sensor.get_object, Bucket="lake", Key=silver) == "AccessDenied"
    assert denied(sensor.put_object, Bucket="lake", Key=f"raw/transactions/date={END}/x.csv", Body=b"x") \
        == "AccessDenied"
    assert denied(sensor.delete_object, Bucket="lake", Key=RAW_KEY) == "AccessDenied"
