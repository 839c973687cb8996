"""Real-time scoring under load: the service over the loopback interface, beside its floor.

Runs on the state ``make run`` leaves (its gated champion and its lake), in a scratch serving
folder (keys, SQLite store) so the state's own store is untouched. For each online store (SQLite,
and Redis: a throwaway ``redis-server`` on loopback) it loads the batch layer from the lake's last 7
days, starts ``python -m services.scoring`` as a process, and prints side by side:

- floor: in this process, no HTTP: the card's history from the store, the features, onnxruntime
  for one transaction (what any online scorer must do at least);
- open loop at each rate (default 200, 500 and 1,000 requests a second, one transaction each,
  sent on schedule whatever the answers, so a slow server is not hidden): achieved rate, p50/p99
  latency seen by the client (from the scheduled send time) and by the server, errors;
- the maximum sustained throughput: closed loop with C connections for the same time;
- a champion swap under load: the service told to load, verify and swap its bundle every second
  (``POST /v1/champion?reload=true``) while 500 requests a second arrive: failed requests, p99;
- with ``--shadow``: 500 requests a second with a challenger in shadow on every request (the
  champion's own version under the ``challenger`` alias for the phase, then removed): what a live
  trial costs a request;
- the same closed loop spread over ``--replicas`` service processes on one store (what Kubernetes
  does with the Deployment's replicas);
- the servers' CPU per request (what a replica costs) and the load generator's own (on 2 shared
  cores, what it takes is what the servers cannot have).

Targets (2 cores, the load generator on the same cores): p99 <= 10 ms at 500 rps with 0 errors,
>= 1,500 rps, 0 failed requests during swaps. The load generator stops by itself.

    .venv/bin/python bench/serving.py                       # 10 s per phase, both stores
    .venv/bin/python bench/serving.py --seconds 5 --stores sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway Redis server of the tests

TARGET_P99_MS, TARGET_RPS = 10.0, 1500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def transactions(settings, count: int) -> tuple[str, list[dict]]:
    """``count`` transactions of the day after the lake's last, on the lake's cards (so lookups meet
    real histories), each with its own id, as a terminal sends them."""
    from jobs.devkit.generate import generate_day
    from jobs.shared import layout
    from jobs.shared.dates import shifted
    from jobs.storage import tables
    from jobs.storage.lake import open_lake

    lake = open_lake(settings.resolved_lake_uri)
    last = max(tables.partitions(lake, layout.SILVER_TRANSACTIONS))
    frame = generate_day(shifted(last, 1), count, seed=int(time.time()) % 10_000, delivery=f"bench{os.getpid()}")
    frame = frame.drop(columns=["is_fraud"])
    frame["timestamp"] = frame["timestamp"].astype(str)
    return last, frame.to_dict("records")


def floor(settings, store, txns: list[dict]) -> dict:
    """Feature lookup + onnxruntime for one transaction, in process."""
    from jobs.ml.features_online import epoch_seconds, features
    from jobs.storage.registry import gated_champion, load_bundle, mlflow_client

    client = mlflow_client(settings)
    bundle = load_bundle(client, settings, str(gated_champion(client, settings)))
    seconds = []
    for t in txns:
        started = time.perf_counter()
        _, history, _ = store.lookup(t["card_id"], t["transaction_id"], epoch_seconds(t["timestamp"]))
        bundle.predict_rows([features(t, history)])
        seconds.append(time.perf_counter() - started)
    ms = [s * 1000 for s in seconds]
    return {"p50": pct(ms, 50), "p99": pct(ms, 99), "rps_one_core": len(ms) / sum(seconds)}


class Load:
    """An aiohttp client sending one transaction per request."""

    def __init__(self, bases: list[str], key: str, txns: list[dict], connections: int):
        self.bases, self.key, self.txns, self.connections = bases, key, iter(txns), connections
        self.sent = 0

    async def __aenter__(self):
        import aiohttp

        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.connections),
                                          headers={"Authorization": f"Bearer {self.key}"})
        return self

    async def __aexit__(self, *exc):
        await self.http.close()

    async def one(self, scheduled: float, out: dict) -> None:
        try:
            self.sent += 1
            base = self.bases[self.sent % len(self.bases)]  # round robin, as a load balancer would
            async with self.http.post(f"{base}/v1/score", json=next(self.txns)) as answer:
                body = await answer.json()
                if answer.status == 200:
                    out["server"].append(body["latency_ms"])
                else:
                    out["errors"] += 1
                    out.setdefault("statuses", {}).setdefault(answer.status, 0)
                    out["statuses"][answer.status] += 1
        except Exception as exc:  # noqa: BLE001 - a failed request is a figure
            out["errors"] += 1
            out.setdefault("failures", set()).add(type(exc).__name__)
        out["client"].append((time.perf_counter() - scheduled) * 1000)

    async def open_loop(self, rate: float, seconds: float, during=None) -> dict:
        """Requests sent on schedule at ``rate`` for ``seconds``, answered or not."""
        out = {"client": [], "server": [], "errors": 0}
        start, tasks, n, cpu = time.perf_counter(), [], 0, time.process_time()
        side = asyncio.create_task(during()) if during else None
        while (at := start + n / rate) < start + seconds:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(at, out)))
            n += 1
        await asyncio.gather(*tasks)
        out["elapsed"], out["client_cpu"] = time.perf_counter() - start, time.process_time() - cpu
        if side:
            out["side"] = await side
        return out

    async def closed_loop(self, seconds: float) -> dict:
        """``connections`` clients, each sending its next request when the last one is answered."""
        out = {"client": [], "server": [], "errors": 0}
        start, cpu = time.perf_counter(), time.process_time()

        async def client():
            while time.perf_counter() - start < seconds:
                await self.one(time.perf_counter(), out)

        await asyncio.gather(*(client() for _ in range(self.connections)))
        out["elapsed"], out["client_cpu"] = time.perf_counter() - start, time.process_time() - cpu
        return out


def summary(name: str, out: dict, cpu: float | None = None) -> dict:
    done = len(out["client"])
    client_cpu = out.get("client_cpu")
    return {"phase": name, "requests": done, "rps": done / out["elapsed"], "p50": pct(out["client"], 50),
            "p99": pct(out["client"], 99), "server_p99": pct(out["server"], 99), "errors": out["errors"],
            "cpu_us_per_request": None if cpu is None else cpu / max(done, 1) * 1e6,
            "client_us_per_request": None if client_cpu is None else client_cpu / max(done, 1) * 1e6,
            "detail": {k: v for k, v in out.items() if k in ("statuses", "failures", "side")}}


def run_store(kind: str, settings, txns: list[dict], last_day: str, args, scratch: Path) -> tuple[dict, list[dict]]:
    import psutil

    from jobs.settings import Settings
    from jobs.steps.online import load_online
    from jobs.storage.lake import open_lake
    from jobs.storage.online_store import open_store
    from services.scoring.keys import ApiKeys

    env = {**os.environ, "PIPELINE_STATE_DIR": str(settings.state_dir), "PIPELINE_SERVING_STATE_DIR": str(scratch),
           "PIPELINE_SERVING_RATE_LIMIT": "1000000/second"}  # the default refresh: 10 s
    server = None
    if kind == "redis":
        from redis_server import start

        server = start(scratch)
        env["PIPELINE_SERVING_STORE_URL"] = server.url
    local = Settings(state_dir=settings.state_dir, serving_state_dir=scratch,
                     serving_store_url=env.get("PIPELINE_SERVING_STORE_URL", ""))
    loaded = load_online(open_lake(local.resolved_lake_uri), last_day, local)
    print(f"[{kind}] batch layer: {loaded['rows_held']} rows of {len(loaded['days_loaded'])} days", flush=True)
    store = open_store(local)
    base_floor = floor(local, store, txns[:2000])
    store.close()
    txns = txns[2000:]
    keys = ApiKeys(scratch)
    key, deploy = keys.create("bench"), keys.create("bench-deploy", role="deploy")
    procs, bases, rows = [], [], []
    try:
        for _ in range(args.replicas):
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "services.scoring"], cwd=ROOT,
                                          env={**env, "PIPELINE_SERVING_PORT": str(port)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            bases.append(f"http://127.0.0.1:{port}")
        for base, proc in zip(bases, procs, strict=True):
            wait_ready(base, proc)
        services = [psutil.Process(p.pid) for p in procs]
        one = services[:1]

        async def phases():
            async with Load(bases[:1], key, txns, args.connections) as load:
                await load.closed_loop(2.0)  # warm-up
                for rate in args.rates:
                    cpu = cpu_times(one)
                    out = await load.open_loop(rate, args.seconds)
                    rows.append(summary(f"open loop {rate:.0f}/s", out, cpu_times(one) - cpu))
                cpu = cpu_times(one)
                out = await load.closed_loop(args.seconds)
                rows.append(summary(f"closed loop, {args.connections} connections", out, cpu_times(one) - cpu))

                async def swaps():
                    import aiohttp

                    done, failed = 0, 0
                    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {deploy}"}) as http:
                        for _ in range(int(args.seconds)):
                            await asyncio.sleep(1)
                            async with http.post(f"{bases[0]}/v1/champion?reload=true") as answer:
                                ok = answer.status == 200 and (await answer.json())["error"] is None
                                done, failed = done + ok, failed + (not ok)
                    return {"swaps": done, "swap_failures": failed}

                out = await load.open_loop(500, args.seconds, during=swaps)
                rows.append(summary("swap every 1 s at 500/s", out))
                if args.shadow:  # the champion's own version on trial: every request scored twice
                    with shadowing(settings, bases[0], deploy):
                        cpu = cpu_times(one)
                        out = await load.open_loop(500, args.seconds)
                        rows.append(summary("shadow challenger at 500/s", out, cpu_times(one) - cpu))
            if len(bases) > 1:  # replicas behind a round-robin balancer, one store
                async with Load(bases, key, txns[load.sent:], args.connections) as spread:
                    cpu = cpu_times(services)
                    out = await spread.closed_loop(args.seconds)
                    rows.append(summary(f"closed loop, {len(bases)} replicas", out, cpu_times(services) - cpu))

        asyncio.run(phases())
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        if server:
            server.stop()
    return base_floor, rows


@contextlib.contextmanager
def shadowing(settings, base: str, deploy_key: str):
    """A challenger in shadow on every request, for one phase: the champion's own version takes the
    ``challenger`` alias (the same model, so the cost of a shadow is all that changes), the service is
    told to load it, and the alias is removed afterwards."""
    import json
    import urllib.request

    from jobs.shared.names import LIVE_MODE_TAG, LIVE_SHADOW_SHARE_TAG
    from jobs.storage.registry import alias_version, mlflow_client

    client = mlflow_client(settings)
    if alias_version(client, settings, settings.challenger_alias) is not None:
        raise SystemExit("a challenger is on live trial in this state: --shadow would replace it")
    version = alias_version(client, settings, settings.champion_alias)
    client.set_model_version_tag(settings.model_name, version, LIVE_MODE_TAG, "shadow")
    client.set_model_version_tag(settings.model_name, version, LIVE_SHADOW_SHARE_TAG, "1.0")
    client.set_registered_model_alias(settings.model_name, settings.challenger_alias, version)

    def reload() -> dict:
        ask = urllib.request.Request(f"{base}/v1/champion", method="POST",
                                     headers={"Authorization": f"Bearer {deploy_key}"})
        with urllib.request.urlopen(ask, timeout=60) as answer:
            return json.load(answer)

    try:
        assert reload()["challenger_version"] == version
        yield
    finally:
        client.delete_registered_model_alias(settings.model_name, settings.challenger_alias)
        for tag in (LIVE_MODE_TAG, LIVE_SHADOW_SHARE_TAG):
            client.delete_model_version_tag(settings.model_name, version, tag)
        reload()


def cpu_times(processes) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


def wait_ready(base: str, proc) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise SystemExit("the service was not ready within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="200,500,1000", help="open-loop request rates, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=32, help="connections of the closed loop")
    parser.add_argument("--stores", default="sqlite,redis", help="online stores to measure")
    parser.add_argument("--replicas", type=int, default=2, help="service processes of the last phase (one store)")
    parser.add_argument("--shadow", action="store_true", help="also 500/s with a challenger in shadow on every "
                                                              "request (the champion's version, for the phase)")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]

    from jobs.settings import get_settings
    from jobs.storage.registry import gated_champion, mlflow_client

    settings = get_settings()
    if gated_champion(mlflow_client(settings), settings) is None:
        raise SystemExit(f"no gated champion in {settings.state_dir}: run `make run` first")
    needed = 2000 + int(sum(args.rates) * args.seconds + 1000 * args.seconds + 4000 * args.seconds + 10_000)
    last_day, txns = transactions(settings, needed)
    import gc

    gc.freeze()  # the load generator's own garbage collections (a million objects) would stall its clock
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()};"
          f" {args.seconds:.0f} s per phase; the load generator shares the cores", flush=True)
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-serving-{kind}-") as scratch:
            base_floor, rows = run_store(kind, settings, txns, last_day, args, Path(scratch))
        print(f"\n== {kind} online store ==")
        print(f"floor (in process, no HTTP): p50 {base_floor['p50']:.2f} ms, p99 {base_floor['p99']:.2f} ms, "
              f"{base_floor['rps_one_core']:.0f} transactions/s on one core")
        print(f"{'phase':<32} {'requests':>8} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'srv p99':>7} {'errors':>6} "
              f"{'srv us/req':>10} {'client us/req':>13}  vs floor p99")
        for r in rows:
            cpu = "" if r["cpu_us_per_request"] is None else f"{r['cpu_us_per_request']:.0f}"
            own = "" if r["client_us_per_request"] is None else f"{r['client_us_per_request']:.0f}"
            print(f"{r['phase']:<32} {r['requests']:>8} {r['rps']:>7.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} "
                  f"{r['server_p99']:>7.2f} {r['errors']:>6} {cpu:>10} {own:>13}  {r['p99'] / base_floor['p99']:>5.1f}x"
                  + (f"  {r['detail']}" if r["detail"] else ""))
        at500 = next((r for r in rows if r["phase"] == "open loop 500/s"), None)
        peak = max(r["rps"] for r in rows)
        swap = next(r for r in rows if r["phase"].startswith("swap"))
        if at500:
            print(f"target p99 <= {TARGET_P99_MS} ms at 500/s, 0 errors: {at500['p99']:.2f} ms, "
                  f"{at500['errors']} errors")
        print(f"target >= {TARGET_RPS} rps: {peak:.0f} rps; target 0 failed during swaps: {swap['errors']} "
              f"({swap['detail'].get('side')})")


if __name__ == "__main__":
    main()
