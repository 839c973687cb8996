"""What the Docker runner sends to the Docker API, against the proxy's allowlist and the daemon policy.

No Docker engine here: a recorder on loopback answers the Docker Engine API calls of a real
DockerOperator run (the Docker runner's ``train`` task, CPU and GPU), so the exact requests it sends
are captured: method, path and the JSON of ``POST /containers/create``. Then:

- every call passes the socket proxy's allowlist (docker-compose.yaml: ``docker-proxy``'s
  ``-allow<METHOD>`` regular expressions, which Go's RE2 and Python's ``re`` read alike here), and
  the calls a compromised task would want (exec, build, volumes, networks, archive upload, system)
  do not;
- the daemon policy (docker/authz/policy.rego, evaluated by regopy, a Rego interpreter) allows the
  runner's own container and refuses the same request made privileged, on the host's network or
  PID namespace, with capabilities, devices, a host path, an unconfined profile, and refuses exec.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "docker" / "authz" / "policy.rego"


class Recorder(BaseHTTPRequestHandler):
    """Answers like a Docker daemon whose job container prints nothing and exits 0."""

    calls: list[tuple[str, str, dict | None]] = []
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, payload=None, content_type="application/json"):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        self.calls.append((self.command, path, json.loads(raw) if raw else None))
        return path

    def do_GET(self):  # noqa: N802
        path = self._record()
        if path.endswith("/version"):
            self._reply(200, {"ApiVersion": "1.47", "Version": "27.5.0", "MinAPIVersion": "1.24"})
        elif path.endswith("/_ping"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.send_header("Api-Version", "1.47")
            self.end_headers()
            self.wfile.write(b"OK")
        elif path.endswith("/containers/c0ffee/json"):
            self._reply(200, {"Id": "c0ffee", "Config": {"Tty": False}, "State": {"Running": False, "ExitCode": 0}})
        elif path.endswith("/images/json"):
            self._reply(200, [{"Id": "sha256:" + "0" * 64, "RepoTags": ["fraud-pipeline-jobs:latest"]}])
        else:
            self._reply(404, {"message": "not recorded"})

    def do_POST(self):  # noqa: N802
        path = self._record()
        if path.endswith("/containers/create"):
            self._reply(201, {"Id": "c0ffee", "Warnings": []})
        elif path.endswith("/attach"):  # an empty log stream: the daemon closes it when the container exits
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Connection", "close")
            self.end_headers()
        elif path.endswith("/start"):
            self._reply(204)
        elif path.endswith("/wait"):
            self._reply(200, {"StatusCode": 0})
        else:
            self._reply(404, {"message": "not recorded"})

    def do_DELETE(self):  # noqa: N802
        self._record()
        self._reply(204)


@pytest.fixture(scope="module")
def docker_calls():
    """{gpu: [(method, path, body)]} of the Docker runner's train task against the recorder."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    recorded = {}
    try:
        for gpu in (False, True):
            Recorder.calls = []
            recorded[gpu] = run_train_task(f"tcp://127.0.0.1:{server.server_address[1]}", gpu)
    finally:
        server.shutdown()
    return recorded


def run_train_task(url: str, gpu: bool) -> list:
    import os
    from types import SimpleNamespace
    from unittest import mock

    from pipeline.execution.docker_job import DockerJobOperator
    from pipeline.execution.runners import Resources

    env = {"PIPELINE_JOB_RUNNER": "docker", "PIPELINE_DOCKER_URL": url, "PIPELINE_DOCKER_NETWORK": "fraud-pipeline",
           "PIPELINE_DOCKER_MOUNTS": "fraud-pipeline-state:/data/state", "PIPELINE_JOB_GPUS": str(gpu).lower()}
    with mock.patch.dict(os.environ, env):
        task = DockerJobOperator(task_id="train", step="train", job_resources=Resources(gpu=1, cpu=2, memory_gb=4))
        ti = SimpleNamespace(log_url="http://localhost:8080/dags/d/runs/r/tasks/train?try_number=1",
                             xcom_push=lambda *a, **k: None)
        context = {"params": {"date": "2026-06-20", "force": False}, "run_id": "r", "ti": ti}
        with pytest.raises(Exception) as failed:  # noqa: B017 - the empty log has no result: the task fails after it
            task.execute(context)
    logging.getLogger("test").info("the task ended with %r", failed.value)
    logging.getLogger("test").info("recorded %d Docker API calls", len(Recorder.calls))
    return list(Recorder.calls)


def proxy_allowlist() -> dict[str, re.Pattern]:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    allow = {}
    for flag in compose["services"]["docker-proxy"]["command"]:
        match = re.fullmatch(r"-allow(GET|HEAD|POST|PUT|PATCH|DELETE|CONNECT|TRACE|OPTIONS)=(.+)", flag)
        if match:
            allow[match.group(1)] = re.compile(match.group(2).replace("$$", "$"))  # compose's escaped dollar
    return allow


def passes_proxy(method: str, path: str) -> bool:
    pattern = proxy_allowlist().get(method)
    return bool(pattern and pattern.fullmatch(path))


def test_the_runner_makes_the_calls_of_a_whole_run(docker_calls):
    for gpu, calls in docker_calls.items():
        made = [(method, re.sub(r"^/v[0-9.]+", "", path)) for method, path, _ in calls]
        for expected in (("POST", "/containers/create"), ("POST", "/containers/c0ffee/attach"),
                         ("POST", "/containers/c0ffee/start"), ("POST", "/containers/c0ffee/wait"),
                         ("DELETE", "/containers/c0ffee")):
            assert expected in made, (gpu, made)


def test_every_call_of_the_runner_passes_the_proxy(docker_calls):
    for calls in docker_calls.values():
        for method, path, _ in calls:
            assert passes_proxy(method, path), f"the proxy would refuse {method} {path}"


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1.47/containers/c0ffee/exec"), ("POST", "/v1.47/exec/abc/start"), ("POST", "/v1.47/build"),
    ("POST", "/v1.47/volumes/create"), ("POST", "/v1.47/networks/create"), ("PUT", "/v1.47/containers/c0ffee/archive"),
    ("GET", "/v1.47/containers/c0ffee/archive"), ("POST", "/v1.47/containers/prune"), ("POST", "/v1.47/swarm/init"),
    ("POST", "/v1.47/plugins/pull"), ("GET", "/v1.47/secrets"), ("POST", "/v1.47/images/load"),
    ("POST", "/v1.47/containers/c0ffee/update"), ("POST", "/v1.47/commit"), ("GET", "/v1.47/containers/json"),
    ("POST", "/v1.47/containers/create/../../build"), ("DELETE", "/v1.47/images/fraud-pipeline-jobs:latest"),
])
def test_the_proxy_refuses_what_the_runner_never_calls(method, path):
    assert not passes_proxy(method, path)


def test_the_proxy_refuses_host_paths_and_reaches_only_the_scheduler():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    proxy = compose["services"]["docker-proxy"]
    assert proxy["image"].startswith("wollomatic/socket-proxy:1.")
    flags = dict(flag.lstrip("-").split("=", 1) for flag in proxy["command"] if "=" in flag)
    assert flags["allowfrom"] == "airflow-scheduler"
    bind_root = flags["allowbindmountfrom"]
    assert bind_root.startswith("/nonexistent/"), "no host folder may be bind-mounted"
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert not proxy.get("ports")


# --- the daemon's policy -------------------------------------------------------------------------------


def decide(request: dict) -> tuple[bool, list[str]]:
    from regopy import Interpreter

    interpreter = Interpreter()
    interpreter.add_module("authz", POLICY.read_text())
    interpreter.set_input_term(json.dumps(request))
    answer = json.loads(str(interpreter.query("allow = data.docker.authz.allow; deny = data.docker.authz.deny")))
    return answer["bindings"]["allow"], answer["bindings"]["deny"]


def as_plugin_input(method: str, path: str, body: dict | None) -> dict:
    """What opa-docker-authz hands the policy for one request."""
    return {"Method": method, "Path": path, "PathPlain": path, "PathArr": path.strip("/").split("/"),
            "Body": body, "Headers": {}, "Query": {}, "User": ""}


def test_the_policy_allows_every_call_of_the_runner(docker_calls):
    for gpu, calls in docker_calls.items():
        for method, path, body in calls:
            allowed, reasons = decide(as_plugin_input(method, path, body))
            assert allowed and reasons == [], (gpu, method, path, reasons)
    create = next(body for method, path, body in docker_calls[True] if path.endswith("/containers/create"))
    assert create["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["gpu"]]  # the GPU job is in the test


@pytest.mark.parametrize("change,reason", [
    (lambda h: h.update(Privileged=True), "privileged containers are refused"),
    (lambda h: h.update(NetworkMode="host"), "NetworkMode=host is refused: it shares a namespace of the host"),
    (lambda h: h.update(PidMode="host"), "PidMode=host is refused: it shares a namespace of the host"),
    (lambda h: h.update(IpcMode="host"), "IpcMode=host is refused: it shares a namespace of the host"),
    (lambda h: h.update(UsernsMode="host"), "UsernsMode=host is refused: it shares a namespace of the host"),
    (lambda h: h.update(CapAdd=["SYS_ADMIN"]), "added capabilities are refused"),
    (lambda h: h.update(Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]),
     "host devices are refused"),
    (lambda h: h.update(Binds=["/:/host"]), "the host path / is refused"),
    (lambda h: h["Mounts"].append({"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}),
     "a bind mount of /var/run/docker.sock is refused"),
    (lambda h: h["Mounts"].append({"Type": "volume", "Source": "v", "Target": "/v", "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/etc"}}}}),
     "the volume v bound to a host folder is refused"),
    (lambda h: h.update(SecurityOpt=["seccomp=unconfined"]), "the security option seccomp=unconfined is refused"),
    (lambda h: h.update(SecurityOpt=["apparmor:unconfined"]), "the security option apparmor:unconfined is refused"),
    (lambda h: h.update(VolumesFrom=["other"]), "volumes from other containers are refused"),
    (lambda h: h.update(DeviceRequests=[{"Driver": "", "Count": -1, "Capabilities": [["gpu", "compute"]],
                                         "DeviceIDs": None, "Options": {}}, {"Capabilities": [["rdma"]]}]),
     "device requests other than GPUs are refused"),
])
def test_the_policy_refuses_the_runners_request_made_dangerous(docker_calls, change, reason):
    method, path, body = next(c for c in docker_calls[False] if c[1].endswith("/containers/create"))
    hostile = copy.deepcopy(body)
    hostile["HostConfig"].setdefault("Mounts", [])
    change(hostile["HostConfig"])
    allowed, reasons = decide(as_plugin_input(method, path, hostile))
    assert not allowed and reason in reasons, reasons


def test_the_policy_refuses_exec_and_host_bound_volumes():
    for request in (as_plugin_input("POST", "/v1.47/containers/c0ffee/exec", {"Cmd": ["sh"]}),
                    as_plugin_input("POST", "/v1.47/volumes/create",
                                    {"Name": "x", "Driver": "local", "DriverOpts": {"o": "bind", "device": "/"}})):
        allowed, reasons = decide(request)
        assert not allowed and reasons, request["PathPlain"]
