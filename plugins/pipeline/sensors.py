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
        from jobs.lake import get_lake

        lake = get_lake()
        prefix = self.prefix.format(date=partition_date(context))
        found = lake.list(prefix)
        self.log.info("%s: %d object(s)", lake.uri_of(prefix), len(found))
        return bool(found)
