"""The real-time scoring service (FastAPI on uvicorn): ``python -m services.scoring`` or ``make serve``."""
