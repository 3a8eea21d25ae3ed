"""The built Docker image, run with no network at all: healthy, non-root, serving the demo pack.

Opt-in, as building the image takes minutes and needs the package registries: build it, then name it::

    docker build -t candor:local .
    CANDOR_TEST_DOCKER_IMAGE=candor:local .venv/bin/pytest tests/e2e/test_docker_image.py

Skipped, with the reason, when the variable is unset or no Docker daemon answers. The container gets
``--network none``, so a start that tried to download a model or a dataset would fail here; the checks run inside
it with ``docker exec``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

IMAGE = os.environ.get("CANDOR_TEST_DOCKER_IMAGE", "")
# Long enough for the healthcheck's first probes (every 15 s) after a start on a slow 2-core host.
HEALTHY_WITHIN_S = 240


def _docker_unavailable() -> str | None:
    if not IMAGE:
        return "set CANDOR_TEST_DOCKER_IMAGE to a built image (docker build -t candor:local .) to run it"
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return "no Docker daemon answers: " + (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


_SKIP = _docker_unavailable()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

# Runs inside the container: the first key pair, then calls on the loopback interface.
PROBE = """
import json, os, urllib.error, urllib.request
keys = dict(line.split("=", 1) for line in open("/app/var/initial-keys.txt").read().split() if "=" in line)

def call(path, body, key):
    req = urllib.request.Request(
        "http://127.0.0.1:8000" + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)

search = call("/v1/search", {"query": "baby bath towel", "k": 3}, keys["CANDOR_FRONTEND_KEY"])
wrong = call("/v1/search", {"query": "towel"}, "cnd_00000000_not-a-key")
print(json.dumps({"uid": os.getuid(), "search": search, "wrong_key": wrong[0]}))
"""


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    """The image running with no network; removed afterwards."""
    name = f"candor-test-{uuid.uuid4().hex[:8]}"
    started = _docker("run", "-d", "--network", "none", "--name", name, IMAGE)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        status = ""
        while time.monotonic() < deadline:
            status = _docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            if status in {"healthy", "unhealthy"}:
                break
            time.sleep(2)
        if status != "healthy":
            pytest.fail(f"container health: {status!r}\n{_docker('logs', name).stderr[-3000:]}")
        yield name
    finally:
        _docker("rm", "-f", name)


def test_the_image_serves_the_demo_pack_offline_as_a_non_root_user(container: str) -> None:
    probe = subprocess.run(
        ["docker", "exec", "-i", container, "python", "-"],
        input=PROBE,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["uid"] != 0
    status, body = seen["search"]
    assert status == 200, body
    assert [item["category"].split(" > ")[0] for item in body["items"]] == ["Baby Care"] * 3
    assert body["audit_id"]
    assert seen["wrong_key"] == 401


def test_the_image_writes_a_pdf_report_and_verifies_its_audit_log(container: str) -> None:
    report = _docker("exec", container, "candor", "report", "compliance", "--format", "pdf", "--out", "/tmp/r.pdf")
    assert report.returncode == 0, report.stderr[-2000:]
    head = _docker("exec", container, "python", "-c", "print(open('/tmp/r.pdf', 'rb').read(5))")
    assert head.stdout.strip() == "b'%PDF-'"
    verify = _docker("exec", container, "candor", "audit", "verify")
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
