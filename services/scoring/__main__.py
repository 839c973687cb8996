"""``python -m services.scoring``: the scoring service on the state folder, until stopped.

Creates the first client's API key when there is none (written once to ``<state>/serving/api-key``),
loads the champion, and asks the registry every ``PIPELINE_SERVING_REFRESH_SECONDS`` whether it moved.
"""

from __future__ import annotations

import logging
import threading

from jobs.settings import get_settings


def main() -> None:
    import uvicorn

    from services.scoring.app import Champion, create_app
    from services.scoring.keys import ApiKeys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    first = ApiKeys(settings.serving_dir).first_key()
    if first is not None:
        print(f"API key of client 'default' written to {first} (send it as: Authorization: Bearer <key>)",
              flush=True)
    champion = Champion(settings)
    champion.refresh()
    stop = threading.Event()

    def watch() -> None:  # promotion or rollback: load beside, verify, swap; failures keep the old one
        while not stop.wait(settings.serving_refresh_seconds):
            champion.refresh()

    threading.Thread(target=watch, name="champion-watch", daemon=True).start()
    try:
        uvicorn.run(create_app(settings, champion), host=settings.serving_host, port=settings.serving_port,
                    log_level="info", access_log=False)
    finally:
        stop.set()


if __name__ == "__main__":
    main()
