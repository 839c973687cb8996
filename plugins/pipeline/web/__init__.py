"""The web pieces: extra links on job tasks and the report view behind Airflow's login."""
