"""``python -m services.scoring``: the scoring service on the state folder, until stopped.

Creates the first clients' API keys when there are none (``<state>/serving/api-key`` to score,
``<state>/serving/deploy-key`` for the pipeline), loads the champion, and asks the registry every
``PIPELINE_SERVING_REFRESH_SECONDS`` whether it moved (from a child process: the service's own
interpreter only opens and swaps verified bundles). ``python -m services.scoring keys create
<client> [--role score|deploy|metrics]`` prints a new key once; ``keys set <client> --role R
--from-env VAR`` stores the hash of a key generated elsewhere (the stack's ``make env``, a Kubernetes
Secret); ``keys revoke <client>`` revokes one.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
from pathlib import Path

from jobs.settings import get_settings


def serve() -> None:
    import uvicorn

    from services.scoring.app import Champion, RegistryWatcher, create_app
    from services.scoring.keys import ApiKeys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    for path in ApiKeys(settings.serving_dir).first_keys():
        print(f"API key written to {path} (send it as: Authorization: Bearer <key>)", flush=True)
    champion = Champion(settings)
    watcher = RegistryWatcher(champion)  # the registry's questions, in a child process
    champion.watcher = watcher
    watcher.start()
    registration = register(settings)
    # What is loaded by now (the libraries, the bundle) stays: out of the collector's full passes,
    # which would otherwise walk it every time and stall requests for tens of milliseconds.
    gc.freeze()

    def stopped() -> None:  # uvicorn re-raises SIGTERM after shutdown: clean up in the lifespan's end
        watcher.stop()
        registration.unlink(missing_ok=True)

    try:
        uvicorn.run(create_app(settings, champion, on_stop=stopped), host=settings.serving_host,
                    port=settings.serving_port, log_level="info", access_log=False)
    finally:
        stopped()


def register(settings) -> Path:
    """Say where this service answers, for the deploy_model DAG on this machine (``endpoints/``;
    removed at shutdown, and by a deployment that finds the process gone). A read-only serving folder
    (keys from a Kubernetes Secret) registers nothing: there the pipeline names the Service."""
    folder = settings.serving_dir / "endpoints"
    host = "127.0.0.1" if settings.serving_host in ("0.0.0.0", "::") else settings.serving_host
    path = folder / f"{settings.serving_port}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": f"http://{host}:{settings.serving_port}", "pid": os.getpid()}))
        os.replace(tmp, path)
    except OSError as exc:
        logging.getLogger(__name__).info("not registered in %s (%s): deployments reach this service by its URL",
                                         folder, exc.strerror)
    return path


def main(argv: list[str] | None = None) -> None:
    from services.scoring.keys import ROLES, ApiKeys

    parser = argparse.ArgumentParser(prog="python -m services.scoring", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the service (the default)")
    keys = commands.add_parser("keys", help="manage the clients' API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="a new key for a client (printed once, stored hashed)")
    create.add_argument("client")
    create.add_argument("--role", choices=sorted(ROLES), default="score")
    given = keys.add_parser("set", help="give a client a key generated elsewhere, read from an environment variable")
    given.add_argument("client")
    given.add_argument("--role", choices=sorted(ROLES), default="score")
    given.add_argument("--from-env", required=True, metavar="VARIABLE", help="the variable holding the key")
    keys.add_parser("revoke", help="revoke a client's key (403 from the next request)").add_argument("client")
    args = parser.parse_args(argv)
    if args.command in (None, "serve"):
        return serve()
    store = ApiKeys(get_settings().serving_dir)
    if args.action == "create":
        print(store.create(args.client, args.role))
    elif args.action == "set":
        if not os.environ.get(args.from_env):
            raise SystemExit(f"{args.from_env} is empty: no key to give {args.client}")
        store.set(args.client, os.environ[args.from_env], args.role)
        print(f"{args.client} ({args.role}): key from {args.from_env} stored hashed in {store.file}")
    else:
        store.revoke(args.client)
        print(f"revoked the key of {args.client}")


if __name__ == "__main__":
    main()
