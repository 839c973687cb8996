"""Long-running services apart from the batch jobs: the MLflow server's authentication app."""
