"""The project's Airflow pieces: job operator and runners, lake sensor, Assets.

Everything here is light to import (no pandas, torch, Spark, GX, MLflow or Evidently), so DAG
files that use it parse fast.
"""
