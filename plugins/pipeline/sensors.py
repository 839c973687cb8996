"""``LakeObjectsSensor``: waits until objects appear under a lake prefix."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseSensorOperator

from pipeline.dates import partition_date


class LakeObjectsSensor(BaseSensorOperator):
    """Succeeds once at least one object exists under ``prefix`` (``{date}`` is the partition date).

    Goes through the same lake interface as the jobs, so it works for any lake the jobs support.
    """

    template_fields: Sequence[str] = ("prefix",)

    def __init__(self, *, prefix: str, **kwargs):
        super().__init__(**kwargs)
        self.prefix = prefix

    def poke(self, context) -> bool:
        from jobs.storage.lake import get_lake

        lake = get_lake()
        prefix = self.prefix.format(date=partition_date(context))
        found = lake.list(prefix)
        self.log.info("%s: %d object(s)", lake.uri_of(prefix), len(found))
        return bool(found)


def raw_delivery_sensor(*, task_id: str, prefix: str, **kwargs):
    """The sensor that waits for a delivery under ``prefix`` of the configured lake.

    ``s3://`` lakes use the amazon provider's ``S3KeySensor`` (through the Airflow connection
    ``PIPELINE_AWS_CONN_ID``, default ``lake_s3``; deferrable when ``PIPELINE_SENSOR_DEFERRABLE``
    is true); ``file://`` lakes poke the folder through the jobs' lake interface.
    """
    from jobs.storage.lake import configured_uri
    from pipeline.settings import AirflowSettings

    settings, lake_uri = AirflowSettings(), configured_uri()
    if lake_uri.startswith("s3://"):
        return _lake_s3_key_sensor(lake_uri)(
            task_id=task_id, prefix=prefix, aws_conn_id=settings.aws_conn_id,
            deferrable=settings.sensor_deferrable, **kwargs,
        )
    return LakeObjectsSensor(task_id=task_id, prefix=prefix, **kwargs)


def _lake_s3_key_sensor(lake_uri: str):
    from urllib.parse import urlparse

    from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor

    lake = urlparse(lake_uri)
    lake_prefix = lake.path.strip("/")

    class LakeS3KeySensor(S3KeySensor):
        """``S3KeySensor`` on ``s3://<lake>/<prefix>/*``, the prefix resolved for the run's date."""

        template_fields: Sequence[str] = (*S3KeySensor.template_fields, "prefix")

        def __init__(self, *, prefix: str, **kw):
            super().__init__(bucket_key="", bucket_name=lake.netloc, wildcard_match=True, **kw)
            self.prefix = prefix

        def _resolve(self, context) -> None:
            key = self.prefix.format(date=partition_date(context))
            self.bucket_key = f"{lake_prefix}/{key}/*" if lake_prefix else f"{key}/*"

        def execute(self, context):
            self._resolve(context)
            self.log.info("waiting for s3://%s/%s", self.bucket_name, self.bucket_key)
            return super().execute(context)

        def poke(self, context):
            self._resolve(context)
            return super().poke(context)

    return LakeS3KeySensor
