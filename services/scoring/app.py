"""The real-time scoring service: the champion answers one transaction (or a few) while the card is
at the terminal, with the features training used.

- ``POST /v1/score``: a transaction in the raw delivery schema (``is_fraud`` absent), or
  ``{"transactions": [...]}``; answers the calibrated ``fraud_probability``, ``is_flagged`` at the
  champion's threshold, the model version, whether the card had history, the server-side latency,
  and with ``?features=true`` the feature values. Each transaction scored joins its card's history
  (the speed layer), once per ``transaction_id``.
- ``GET /healthz`` (alive), ``GET /readyz`` (a gated champion loaded with its hashes verified and
  the online store reachable), ``GET /metrics`` (Prometheus).
- ``POST /v1/champion`` (the ``deploy_model`` DAG): load the current champion now (beside the old
  one, verified, swapped); ``POST /v1/check``: score one transaction as a card without history,
  touching nothing, so a deployment can compare the answer with the bundle's own.

A retry of a transaction already scored gets its first answer back (``"replayed": true``) and adds
nothing to the card's history. When the online store does not answer, the request gets a 503 with
the reason: never a score computed on a partial history.

The champion is loaded through the batch scorer's code path (``jobs.storage.registry``: the gate's
signed verdict checked, the bundle's hashes verified, an ungated champion refused). Every request
but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <key>`` (401 without a known key, 403
for a revoked one or an endpoint its role does not open); each client has a rate limit (429 with
``Retry-After``); bodies are limited (413); every field is checked against the delivery contract
(``expectations/``), with the rule in the 422; no answer carries a stack trace; no CORS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.ml.features_online import CHECK_TRANSACTION, epoch_seconds, features, past_of
from jobs.quality.contract import load_suite_json
from jobs.settings import Settings
from jobs.shared.schemas import RAW_COLUMNS
from jobs.storage.decisions import row as decision_row
from jobs.storage.online_store import StoreUnavailable, open_store
from services.scoring.keys import ROLES, ApiKeys

log = logging.getLogger(__name__)

FIELDS = [c for c in RAW_COLUMNS if c != "is_fraud"]


class Transaction(BaseModel):
    """One transaction as a delivery carries it, without its label."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1, max_length=128)
    card_id: str = Field(min_length=1, max_length=128)
    customer_id: str = Field(min_length=1, max_length=128)
    merchant_id: str = Field(min_length=1, max_length=128)
    merchant_category: str = Field(min_length=1, max_length=64)
    amount: float = Field(gt=0, allow_inf_nan=False)
    currency: str = Field(min_length=3, max_length=3)
    timestamp: str = Field(min_length=10, max_length=40, description="ISO 8601 with an offset: 2026-03-02T02:04:48Z")
    channel: str = Field(min_length=1, max_length=16)
    country: str = Field(min_length=2, max_length=2)


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1)


class Refused(Exception):
    """A request answered with a 4xx or 503 and a reason (never a stack trace)."""

    def __init__(self, status: int, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def _parsed(body: dict) -> list[Transaction]:
    """The request's transactions, or a 422 that says, field by field, what is wrong."""
    try:
        if "transactions" in body:
            return Batch.model_validate(body).transactions
        return [Transaction.model_validate(body)]
    except ValidationError as exc:
        reasons = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
        raise Refused(422, "; ".join(reasons)) from None


def contract_rules(suite: dict) -> list[tuple[str, str, object, str]]:
    """(column, kind, value, rule) of the delivery contract's value checks a single request can be held to."""
    import re

    rules = []
    for e in suite["expectations"]:
        column, rule = e["kwargs"].get("column"), e.get("meta", {}).get("rule", e["type"])
        if column not in FIELDS:
            continue
        if e["type"] == "expect_column_values_to_be_in_set":
            rules.append((column, "in", set(e["kwargs"]["value_set"]), rule))
        elif e["type"] == "expect_column_values_to_match_regex":
            rules.append((column, "match", re.compile(e["kwargs"]["regex"]), rule))
    return rules


def violations(txn: dict, rules) -> list[str]:
    """What in one transaction breaks the contract, rule by rule."""
    found = []
    for column, kind, value, rule in rules:
        ok = txn[column] in value if kind == "in" else value.fullmatch(txn[column]) is not None
        if not ok:
            found.append(f"{column}: {rule} (got {txn[column]!r})")
    try:
        moment = datetime.fromisoformat(txn["timestamp"].replace("Z", "+00:00"))
        if moment.tzinfo is None:
            found.append("timestamp: needs an offset (Z or +hh:mm)")
    except ValueError:
        found.append(f"timestamp: not an ISO 8601 time (got {txn['timestamp']!r})")
    return found


CHECK_FEATURES = features(CHECK_TRANSACTION, [])


@dataclass(frozen=True)
class Trial:
    """A challenger on live trial: its bundle and how the services use it (the version's tags, set by the
    ``challenger`` step): ``shadow`` scores a share of transactions beside the champion; ``canary`` also
    serves a sticky share of cards with its decision."""

    bundle: object
    mode: str
    shadow_share: float
    canary_share: float

    def shadows(self, transaction_id: str) -> bool:
        return _bucket(f"shadow:{self.bundle.version}:{transaction_id}") < self.shadow_share

    def serves(self, card_id: str) -> bool:
        return self.mode == "canary" and _bucket(f"canary:{self.bundle.version}:{card_id}") < self.canary_share


def _bucket(key: str) -> float:
    """A stable place in [0, 1) for a key (the same on every replica and after a restart)."""
    return zlib.crc32(key.encode()) / 2**32


def trial_terms(tags: dict) -> dict:
    """How the services use a challenger, from its version's tags."""
    from jobs.shared.names import LIVE_CANARY_SHARE_TAG, LIVE_MODE_TAG, LIVE_SHADOW_SHARE_TAG

    return {"mode": tags.get(LIVE_MODE_TAG, "shadow"), "shadow_share": float(tags.get(LIVE_SHADOW_SHARE_TAG, 1.0)),
            "canary_share": float(tags.get(LIVE_CANARY_SHARE_TAG, 0.0))}


class Fault:
    """A drill (``PIPELINE_CHALLENGER_FAULT``): ``latency=<ms>`` slows each challenger scoring, ``errors=<share>``
    makes that share of them fail, so that the guardrails can be seen to trip."""

    def __init__(self, spec: str):
        self.latency_ms, self.error_share = 0.0, 0.0
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            if name == "latency":
                self.latency_ms = float(value)
            elif name == "errors":
                self.error_share = float(value)
            else:
                raise ValueError(f"PIPELINE_CHALLENGER_FAULT: {part!r} is not latency=<ms> or errors=<share>")
        if spec:
            log.warning("DRILL: faults injected into the challenger's path: %s", spec)

    def apply(self, key: str) -> None:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if self.error_share and _bucket(f"fault:{key}") < self.error_share:
            raise RuntimeError(f"injected fault (PIPELINE_CHALLENGER_FAULT errors={self.error_share})")


class Champion:
    """The bundles that answer: the champion, and the challenger on live trial if there is one. Each is
    loaded beside the old one, verified, then swapped in one assignment.

    :meth:`refresh` asks the registry in this process (tests, one-off use). A running service hands
    the registry's questions to a :class:`RegistryWatcher` process instead (``watcher``), so the
    downloads and checks never hold this process's interpreter while it answers requests.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bundle = None
        self.trial: Trial | None = None
        self.error: str | None = None
        self.challenger_error: str | None = None
        self.watcher: RegistryWatcher | None = None
        self._lock = threading.Lock()
        self._held_trial = None

    def refresh(self, reload: bool = False) -> str | None:
        """Load the current gated champion if it is not the one serving (``reload``: even if it is),
        and the challenger likewise; keep serving the old bundle on any failure. The version serving after it."""
        if self.watcher is not None:
            return self.watcher.ask(reload)
        with self._lock:
            try:
                files = look_up_champion(self.settings, self.version, reload)
                if files is not None:
                    self.swap(files)
                self.error = None
            except Exception as exc:  # noqa: BLE001 - the old bundle keeps serving; readyz says why
                self.failed(f"{type(exc).__name__}: {exc}")
            try:
                found = look_up_challenger(self.settings, self._held_trial, reload)
                if found is not None:
                    self.set_trial(*found)
                self.challenger_error = None
            except Exception as exc:  # noqa: BLE001 - the champion keeps answering alone
                self.trial_failed(f"{type(exc).__name__}: {exc}")
            return self.version

    @property
    def version(self) -> str | None:
        return self.bundle.version if self.bundle is not None else None

    def swap(self, files) -> None:
        """Open verified files beside the bundle serving, warm them, then swap (requests under way keep theirs)."""
        bundle = _opened(files)
        self.bundle, self.error = bundle, None
        log.info("serving %s v%s", self.settings.model_name, bundle.version)

    def set_trial(self, files, terms: dict | None) -> None:
        """Start (or change, or end: ``files`` None) the challenger's trial, in one assignment."""
        self._held_trial = None if files is None else (files.version, tuple(sorted(terms.items())))
        if files is None:
            if self.trial is not None:
                log.info("challenger v%s is off traffic", self.trial.bundle.version)
            self.trial = None
            return
        self.trial = Trial(_opened(files), terms["mode"], terms["shadow_share"], terms["canary_share"])
        log.info("challenger v%s on live trial: %s (shadow share %.2f, canary share %.2f)", files.version,
                 terms["mode"], terms["shadow_share"], terms["canary_share"] if terms["mode"] == "canary" else 0.0)

    def failed(self, error: str) -> None:
        self.error = error
        log.warning("champion not (re)loaded: %s", error)

    def trial_failed(self, error: str) -> None:
        self.challenger_error = error
        log.warning("challenger not (re)loaded: %s", error)


def _opened(files):
    from jobs.storage.registry import open_bundle

    bundle = open_bundle(files)
    bundle.predict_rows([CHECK_FEATURES])  # warmed before it serves a request
    return bundle


def look_up_champion(settings: Settings, held: str | None, reload: bool = False):
    """The gated champion's verified bundle files when it is not ``held`` (or ``reload``), else None;
    raises when there is no gated champion or the registry does not answer."""
    from jobs.storage.registry import fetch_bundle, gated_champion, mlflow_client

    client = mlflow_client(settings)
    version = gated_champion(client, settings)
    if version is None:
        raise RuntimeError(f"no @{settings.champion_alias} for {settings.model_name} yet")
    if reload or str(version) != held:
        return fetch_bundle(client, settings, str(version))  # hashes verified there
    return None


NO_TRIAL = (None, None)


def look_up_challenger(settings: Settings, held: tuple | None, reload: bool = False):
    """``(files, terms)`` of the gated challenger when it (or its terms) is not ``held``, :data:`NO_TRIAL`
    when there is no challenger any more (and one was held), None when nothing changed; raises when
    the registry does not answer or the challenger is not gated."""
    from jobs.storage.registry import UngatedChampion, fetch_bundle, gated_challenger, mlflow_client

    client = mlflow_client(settings)
    try:
        version = gated_challenger(client, settings)
    except UngatedChampion as exc:  # never served, not even in a shadow
        log.warning("no live trial: %s", exc)
        version = None
    if version is None:
        return NO_TRIAL if held is not None else None
    terms = trial_terms(client.get_model_version(settings.model_name, version).tags)
    if reload or held != (str(version), tuple(sorted(terms.items()))):
        return fetch_bundle(client, settings, str(version)), terms
    return None


def _watch_registry(settings: Settings, asks, found, parent: int) -> None:
    """The registry watcher's process: every ``serving_refresh_seconds``, or when asked, are the gated
    champion and challenger still the versions held? If not (or ``reload``), fetch and verify their
    bundles and say so. Ends with the service (``parent``), also when the service was killed."""
    # An outage is told within seconds (readyz, the metric), not after MLflow's minutes of back-off.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s registry-watcher: %(message)s")
    held, trial = None, None
    ask = (0, True)  # the first look, at start
    while True:
        number, reload = ask
        try:
            files = look_up_challenger(settings, trial, reload)
            if files is not None:
                found.put((0, "challenger", files))
                trial = None if files[0] is None else (files[0].version, tuple(sorted(files[1].items())))
        except Exception as exc:  # noqa: BLE001 - told to the service, whose champion answers alone
            found.put((0, "challenger-error", f"{type(exc).__name__}: {exc}"))
        try:
            files = look_up_champion(settings, held, reload)
            if files is not None:
                found.put((number, "bundle", files))
                held = files.version
            else:
                found.put((number, "same", held))
        except Exception as exc:  # noqa: BLE001 - told to the service, which keeps serving
            found.put((number, "error", f"{type(exc).__name__}: {exc}"))
        ask = _next_ask(settings, asks, parent)
        if ask is None:
            return


def _next_ask(settings: Settings, asks, parent: int):
    """The service's next question, or ``(0, False)`` when the refresh period is over; None when
    the service asked to stop or is gone (killed: its watcher must not outlive it)."""
    due = time.monotonic() + settings.serving_refresh_seconds
    while (left := due - time.monotonic()) > 0:
        try:
            return asks.get(timeout=min(left, 2.0))
        except queue.Empty:
            if os.getppid() != parent:
                return None
    return (0, False) if os.getppid() == parent else None


class RegistryWatcher:
    """Asks the registry from a child process (:func:`_watch_registry`) and swaps what it verified.

    The child downloads and checks; this process only opens the verified files (an onnxruntime
    session) and swaps, so a promotion or rollback neither fails nor slows a request."""

    def __init__(self, champion: Champion, timeout: float = 120.0):
        import multiprocessing

        self.champion, self.timeout = champion, timeout
        context = multiprocessing.get_context("spawn")
        self.asks, self.found = context.Queue(), context.Queue()
        self.process = context.Process(target=_watch_registry,
                                       args=(champion.settings, self.asks, self.found, os.getpid()),
                                       name="registry-watcher", daemon=True)
        self._answered: dict[int, threading.Event] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._receive, name="registry-receive", daemon=True)

    def start(self, wait: bool = True) -> None:
        """Start the child; with ``wait``, until its first answer (a champion loaded, or why not)."""
        first = self._register(0)
        self.process.start()
        self._thread.start()
        if wait:
            first.wait(self.timeout)

    def _register(self, number: int) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._answered[number] = event
        return event

    def _receive(self) -> None:
        while True:
            try:
                number, kind, value = self.found.get()
            except (EOFError, OSError):
                return
            if kind == "bundle":
                try:
                    self.champion.swap(value)
                except Exception as exc:  # noqa: BLE001 - the old bundle keeps serving
                    self.champion.failed(f"{type(exc).__name__}: {exc}")
            elif kind == "same":
                self.champion.error = None
            elif kind == "challenger":
                try:
                    self.champion.set_trial(*value)
                    self.champion.challenger_error = None
                except Exception as exc:  # noqa: BLE001 - the champion answers alone
                    self.champion.trial_failed(f"{type(exc).__name__}: {exc}")
                continue
            elif kind == "challenger-error":
                self.champion.trial_failed(value)
                continue
            else:
                self.champion.failed(value)
            with self._lock:
                event = self._answered.pop(number, None)
            if event is not None:
                event.set()

    def ask(self, reload: bool = False) -> str | None:
        """Look now (``reload``: fetch and swap even the same version); the version serving after it."""
        with self._lock:
            self._next += 1
            number = self._next
        answered = self._register(number)
        self.asks.put((number, reload))
        if not answered.wait(self.timeout):
            self.champion.failed(f"the registry watcher did not answer within {self.timeout:.0f} s")
        return self.champion.version

    def stop(self) -> None:
        if self.process.is_alive():
            self.asks.put(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def create_app(settings: Settings, champion: Champion | None = None, store=None, on_stop=None) -> FastAPI:
    """The service on ``settings`` (its state folder: keys; its online store; its registry: the champion);
    ``on_stop`` is called when the server shuts down (after the last request)."""
    from limits import parse
    from limits.aio import storage, strategies
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    keys = ApiKeys(settings.serving_dir)
    store = store or open_store(settings)
    champion = champion or Champion(settings)
    rules = contract_rules(load_suite_json(settings.expectations_dir))
    # a sliding window counter: O(1) a hit, whatever the limit (a moving window keeps every hit)
    limiter = strategies.SlidingWindowCounterRateLimiter(storage.MemoryStorage())
    rate = parse(settings.serving_rate_limit)

    metrics = CollectorRegistry()
    requests = Counter("scoring_requests", "Scoring requests by answer", ["status"], registry=metrics)
    latency = Histogram("scoring_latency_seconds", "Server-side latency of /v1/score", registry=metrics,
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
    scores = Histogram("scoring_fraud_probability", "Scores answered", registry=metrics,
                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99))
    scored = Counter("scoring_transactions", "Transactions scored (first answers)", registry=metrics)
    flagged = Counter("scoring_flagged", "Transactions flagged at the champion's threshold", registry=metrics)
    replayed = Counter("scoring_replayed", "Retries answered with their transaction's first answer", registry=metrics)
    serving = Gauge("scoring_model_version", "The champion version serving", registry=metrics)
    registry_ok = Gauge("scoring_registry_reachable", "1 when the last champion refresh reached the registry",
                        registry=metrics)
    store_seconds = Histogram("scoring_store_latency_seconds", "Online store reads and writes per request",
                              registry=metrics, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05))
    store_errors = Counter("scoring_store_errors", "Requests refused because the online store did not answer",
                           registry=metrics)
    batch_age = Gauge("scoring_batch_layer_age_seconds", "Seconds since the batch layer last loaded the store "
                      "(-1: never, or the store did not answer)", registry=metrics)

    def age() -> float:
        try:
            last = store.last_load()
        except StoreUnavailable:
            return -1.0
        return -1.0 if last is None else time.time() - float(last["loaded_at"])

    challenger_version = Gauge("scoring_challenger_version", "The challenger version on live trial (0: none)",
                               registry=metrics)
    challenger_version.set_function(lambda: float(champion.trial.bundle.version) if champion.trial else 0.0)
    challenger_scored = Counter("scoring_challenger_scored", "Transactions the challenger scored (shadow or canary)",
                                registry=metrics)
    challenger_errors = Counter("scoring_challenger_errors", "Challenger scorings that failed (the champion answered)",
                                registry=metrics)
    challenger_served = Counter("scoring_challenger_served", "Transactions answered with the challenger's decision "
                                "(canary)", registry=metrics)
    challenger_latency = Histogram("scoring_challenger_model_seconds", "The challenger's model time per request",
                                   registry=metrics, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25))
    fault = Fault(settings.challenger_fault)

    batch_age.set_function(age)
    registry_ok.set_function(lambda: 0.0 if champion.error else 1.0)
    serving.set_function(lambda: float(champion.bundle.version) if champion.bundle else 0.0)

    decisions = None
    if settings.serving_decisions:
        from jobs.storage.decisions import DecisionLog
        from jobs.storage.lake import open_lake

        decisions = DecisionLog(open_lake(settings.resolved_lake_uri), settings.serving_decisions_buffer_rows,
                                settings.serving_decisions_flush_seconds)
        Gauge("scoring_decisions_pending", "Decisions not yet written to the lake (a crash would lose them)",
              registry=metrics).set_function(lambda: decisions.pending)
        Gauge("scoring_decisions_write_failures", "Writes of the decisions log that failed and were retried",
              registry=metrics).set_function(lambda: decisions.failures)
    service_name = f"{socket.gethostname()}:{os.getpid()}"

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if decisions is not None:
            decisions.close()  # what is buffered is written before the process ends
        if on_stop is not None:
            on_stop()

    app = FastAPI(title="Fraud scoring", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.champion, app.state.store, app.state.keys, app.state.decisions = champion, store, keys, decisions

    @app.exception_handler(Refused)
    def refused(request: Request, exc: Refused):
        requests.labels(str(exc.status)).inc()
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    def store_down(request: Request, exc: StoreUnavailable):
        store_errors.inc()
        requests.labels("503").inc()
        return JSONResponse({"detail": f"online feature store unavailable, no score given: {exc}"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    def failed(request: Request, exc: Exception):  # logged here, never shown to the client
        log.exception("scoring failed")
        requests.labels("500").inc()
        return JSONResponse({"detail": "internal error (logged by the service)"}, status_code=500)

    async def body_of(request: Request) -> dict:
        """The JSON object of the request, read up to the size limit (413 beyond it, 422 if not JSON)."""
        limit = settings.serving_max_body_kb * 1024
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise Refused(413, f"request body over {settings.serving_max_body_kb} KiB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, f"request body over {settings.serving_max_body_kb} KiB")
        try:
            parsed = json.loads(body)
        except ValueError:
            raise Refused(422, "the body is not JSON") from None
        if not isinstance(parsed, dict):
            raise Refused(422, "the body is a JSON object: one transaction, or {\"transactions\": [...]}")
        return parsed

    def allowed(permission: str):
        async def client(request: Request) -> str:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not presented:
                raise Refused(401, "an API key is required: Authorization: Bearer <key>",
                              {"WWW-Authenticate": "Bearer"})
            name, revoked, role = keys.client_of(presented.strip())
            if name is None:
                raise Refused(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
            if revoked:
                raise Refused(403, f"the API key of client {name!r} is revoked")
            if permission not in ROLES.get(role, ()):
                raise Refused(403, f"client {name!r} (role {role!r}) may not {permission}")
            if not await limiter.hit(rate, name):
                reset = (await limiter.get_window_stats(rate, name)).reset_time
                raise Refused(429, f"rate limit of {settings.serving_rate_limit} for client {name!r}",
                              {"Retry-After": str(max(1, math.ceil(reset - time.time())))})
            return name

        return client

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz():
        reasons, store_ok = [], True
        if champion.bundle is None:
            reasons.append(f"no champion loaded ({champion.error or 'not loaded yet'})")
        elif champion.error:
            reasons.append(f"serving v{champion.bundle.version}, but the registry is not reachable: {champion.error}")
        try:
            store.ping()
        except StoreUnavailable as exc:
            store_ok = False
            reasons.append(f"online store unreachable: {exc}")
        ready = champion.bundle is not None and store_ok
        body = {"ready": ready, "reasons": reasons, "store": repr(store), "model_version": champion.version}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus(_: str = Depends(allowed("metrics"))) -> str:
        return generate_latest(metrics).decode()

    @app.post("/v1/champion")
    def reload(_: str = Depends(allowed("deploy")), again: bool = Query(False, alias="reload")) -> dict:
        """Load the champion the registry names now (the deploy_model DAG), instead of at the next refresh;
        ``?reload=true`` loads and swaps it even when it is the version serving (a bundle re-verified)."""
        version = champion.refresh(reload=again)
        trial = champion.trial
        return {"model_version": version, "error": champion.error,
                "challenger_version": trial.bundle.version if trial else None,
                "challenger_mode": trial.mode if trial else None, "challenger_error": champion.challenger_error}

    @app.post("/v1/check")
    async def check(request: Request, _: str = Depends(allowed("deploy")),
                    model: str = Query("champion", pattern="^(champion|challenger)$")) -> dict:
        """Score one transaction as a card without history with the champion (or the challenger on
        trial), recording nothing (a deployment's check)."""
        txn = _parsed(await body_of(request))[0].model_dump()
        if model == "challenger":
            bundle = champion.trial.bundle if champion.trial else None
            if bundle is None:
                raise Refused(404, f"no challenger on live trial ({champion.challenger_error or 'none named'})")
        else:
            bundle = champion.bundle
        if bundle is None:
            raise Refused(503, f"no champion loaded: {champion.error or 'not loaded yet'}")
        row = features(txn, [])
        return {"model_version": bundle.version, "fraud_probability": float(bundle.predict_rows([row])[0]),
                "features": row}

    def decide(txns: list[dict], bundle, trial: Trial | None) -> tuple[list[dict], set[int]]:
        """Each transaction's answer: its first one when it was scored before (a replay), else the
        champion's (or, for a canary card, the challenger's), from its card's history, recorded as the
        speed layer and in the decisions log, with the challenger's shadow score beside it."""
        waited = 0.0
        answers: list[dict | None] = [None] * len(txns)
        fresh, rows, known, earlier, replays = [], [], [], {}, set()
        moments = [epoch_seconds(t["timestamp"]) for t in txns]
        for at in sorted(range(len(txns)), key=lambda i: (moments[i], i)):  # in time order, answered in order sent
            t = txns[at]
            begun = time.perf_counter()
            first, history, seen = store.lookup(t["card_id"], t["transaction_id"], moments[at])
            waited += time.perf_counter() - begun
            if first is not None:
                answers[at] = first
                replays.add(at)
                continue
            # the card's history, and this request's earlier transactions of the same card
            history += earlier.get(t["card_id"], [])
            known.append(seen or bool(history))
            rows.append(features(t, history))
            fresh.append(at)
            earlier.setdefault(t["card_id"], []).append(past_of(t))
        begun = time.perf_counter()
        probabilities = bundle.predict_rows(rows) if rows else []
        model_ms = (time.perf_counter() - begun) * 1000
        shadow = challenge(trial, [txns[at] for at in fresh], rows)
        for i, (at, row, p, seen) in enumerate(zip(fresh, rows, probabilities, known, strict=True)):
            p, t = float(p), txns[at]
            theirs = shadow.get(i)  # (version, probability, flagged, ms) or (version, None, None, ms, error)
            served_by = "challenger" if theirs is not None and theirs[1] is not None and trial.serves(
                t["card_id"]) else "champion"
            if served_by == "challenger":
                version, p_served, flag = theirs[0], theirs[1], theirs[2]
            else:
                version, p_served, flag = bundle.version, p, p >= bundle.threshold
            answer = {"transaction_id": t["transaction_id"], "fraud_probability": p_served, "is_flagged": flag,
                      "card_history": seen, "model_version": version, "features": row}
            begun = time.perf_counter()
            first = store.record(t, answer)  # a concurrent retry may have been first: its answer holds
            waited += time.perf_counter() - begun
            answers[at] = first if first is not None else answer
            if first is not None:
                replays.add(at)
                continue
            scored.inc()
            scores.observe(p_served)
            flagged.inc(flag)
            challenger_served.inc(served_by == "challenger")
            if decisions is not None:
                decisions.record(decision_row(t, service_name, (bundle.version, p, p >= bundle.threshold, model_ms),
                                              theirs, served_by))
        store_seconds.observe(waited)
        return answers, replays

    def challenge(trial: Trial | None, txns: list[dict], rows: list[dict]) -> dict[int, tuple]:
        """The challenger's scores of the rows it shadows (row index -> version, probability, flagged, ms[,
        error]); its failure never fails the request: the champion answers, the error is logged as a decision."""
        if trial is None:
            return {}
        chosen = [i for i, t in enumerate(txns) if trial.shadows(t["transaction_id"]) or trial.serves(t["card_id"])]
        if not chosen:
            return {}
        version = trial.bundle.version
        begun = time.perf_counter()
        try:
            fault.apply(txns[chosen[0]]["transaction_id"])
            probabilities = trial.bundle.predict_rows([rows[i] for i in chosen])
        except Exception as exc:  # noqa: BLE001 - a challenger's failure is evidence, not an outage
            ms = (time.perf_counter() - begun) * 1000
            challenger_errors.inc(len(chosen))
            error = f"{type(exc).__name__}: {exc}"[:200]
            return {i: (version, None, None, ms, error) for i in chosen}
        ms = (time.perf_counter() - begun) * 1000
        challenger_latency.observe(ms / 1000)
        challenger_scored.inc(len(chosen))
        threshold = trial.bundle.threshold
        return {i: (version, float(p), float(p) >= threshold, ms) for i, p in zip(chosen, probabilities, strict=True)}

    # Async, on the event loop: a request is a fraction of a millisecond of CPU (store, features,
    # onnxruntime), cheaper inline than handed to a thread pool and back.
    @app.post("/v1/score")
    async def score(request: Request, who: str = Depends(allowed("score")),
                    with_features: bool = Query(False, alias="features")) -> Response:
        started = time.perf_counter()
        txns = [t.model_dump() for t in _parsed(await body_of(request))]
        if len(txns) > settings.serving_max_batch:
            raise Refused(422, f"{len(txns)} transactions in one request; at most {settings.serving_max_batch}")
        bad = {t["transaction_id"]: v for t in txns if (v := violations(t, rules))}
        if bad:
            raise Refused(422, "; ".join(f"{tid}: {', '.join(v)}" for tid, v in bad.items()))
        if len({t["transaction_id"] for t in txns}) < len(txns):
            raise Refused(422, "a transaction_id appears twice in one request")
        # one champion and one trial for the whole request, even if a swap happens meanwhile
        bundle, trial = champion.bundle, champion.trial
        if bundle is None:
            raise Refused(503, f"no champion loaded: {champion.error or 'not loaded yet'}")
        # Inline, not on a worker thread: the store's calls cost CPU more than waiting here (measured in
        # bench/serving.py: a thread pool made Redis slower), and the event loop is one core anyway.
        answers, replays = decide(txns, bundle, trial)
        results = []
        for at, answer in enumerate(answers):
            answer = {**answer, "replayed": at in replays}
            replayed.inc(at in replays)
            if not with_features:
                answer.pop("features", None)
            results.append(answer)
        seconds = time.perf_counter() - started
        latency.observe(seconds)
        requests.labels("200").inc()
        # the answer as JSON directly: plain values, no response model to validate them again
        return Response(json.dumps({"model_version": bundle.version, "decision_threshold": bundle.threshold,
                                    "latency_ms": seconds * 1000, "results": results}),
                        media_type="application/json")

    return app
