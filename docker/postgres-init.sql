-- The MLflow backend store and MLflow's users and permissions (--app-name fraud-auth) live beside
-- Airflow's metadata database.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
