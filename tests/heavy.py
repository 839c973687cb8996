"""Modules a DAG file must never load when it is parsed (the scheduler re-parses every file every 30 s)."""

HEAVY = ["pandas", "numpy", "torch", "pyspark", "great_expectations", "mlflow", "evidently", "onnxruntime", "sklearn"]
