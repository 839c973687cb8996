"""The project's Airflow pieces: ``execution`` (the job operator and its runners), ``web`` (extra
links, the report view), the Assets, the partition timetables and dates, sensors, notifications
and the Airflow side's settings.

Everything here is light to import (no pandas, torch, Spark, GX, MLflow or Evidently), so DAG
files that use it parse fast.
"""
