#!/bin/sh
# minio-init (docker-compose.yaml): the buckets, versioned, and one user per service with the policy
# of docker/minio/policies/. Idempotent: it runs at every `docker compose up`; a changed password or
# policy in .env or the policy files takes effect. The root credentials stay with MinIO and this script.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing local/lake local/mlflow
# Versioning: an overwrite or a delete keeps the previous version (Delta's vacuum leaves delete markers),
# and no service identity may delete a version (the policies deny s3:DeleteObjectVersion).
mc version enable local/lake
mc version enable local/mlflow

for policy in pipeline-jobs pipeline-sensor mlflow-artifacts lake-delivery scoring-decisions; do
  mc admin policy create local "$policy" "/policies/$policy.json"
done

user() {  # name, password, policy
  mc admin user add local "$1" "$2" >/dev/null
  if ! out="$(mc admin policy attach local "$3" --user "$1" 2>&1)"; then
    case "$out" in
      *already*) ;;  # attached at an earlier `up`
      *) echo "$out" >&2; exit 1 ;;
    esac
  fi
  echo "user $1: policy $3"
}
user pipeline-jobs "$MINIO_JOBS_PASSWORD" pipeline-jobs
user pipeline-sensor "$MINIO_SENSOR_PASSWORD" pipeline-sensor
user mlflow "$MINIO_MLFLOW_PASSWORD" mlflow-artifacts
user lake-delivery "$MINIO_DELIVERY_PASSWORD" lake-delivery
user scoring-decisions "$MINIO_SCORING_PASSWORD" scoring-decisions
