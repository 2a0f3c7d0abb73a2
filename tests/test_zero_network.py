"""Zero network: a whole pipeline run (`python -m flows.pipeline`, Prefect's temporary server, DVC,
MLflow's SQLite store, training, the registry, the DVC push) inside a network namespace that holds
only loopback. The run itself is the shared `finished_project` (tests/conftest.py), made in such a
namespace wherever the machine allows one; here: that the namespace really had no way out, and that
the run completed in it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import loopback_only_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

_CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=5).close()
except OSError as e:
    print(type(e).__name__, e.errno, e)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def prefix():
    found = loopback_only_prefix()
    if found is None:
        pytest.skip("this machine cannot make a loopback-only network namespace (`unshare -rn` with `ip`)")
    return found


def test_the_namespace_has_only_loopback_and_it_is_up(prefix):
    links = subprocess.run([*prefix, "ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links
    assert "UP" in links.split("<")[1].split(">")[0].split(",")  # Prefect's temporary server listens on 127.0.0.1
    # no route out: a documentation address (RFC 5737) is unreachable, not merely slow
    out = subprocess.run([*prefix, sys.executable, "-c", _CONNECT, "192.0.2.1", "80"], capture_output=True, text=True)
    assert out.returncode == 1 and "Network is unreachable" in out.stdout, out.stdout + out.stderr
    # ...while a server on loopback is reachable from inside
    serve = ("import socket, subprocess, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
             f"sys.exit(subprocess.run([sys.executable, '-c', {_CONNECT!r}, '127.0.0.1', str(s.getsockname()[1])])"
             ".returncode)")
    assert subprocess.run([*prefix, sys.executable, "-c", serve], capture_output=True).returncode == 0


@pytest.mark.slow
def test_the_whole_pipeline_completes_with_only_loopback(prefix, finished_project):
    run = finished_project
    assert run.isolated, "the shared run was not made in the namespace"
    assert run.returncode == 0, run.tail
    assert "Starting temporary server on http://127.0.0.1" in run.output  # Prefect's own, inside the namespace
    gate = json.loads((run.project / "metrics/gate.json").read_text())
    assert gate["decision"] == "pass" and gate["registered"]["alias"] == "champion"
    assert "reftflow: gate PASS" in run.output
    print(f"whole tiny pipeline with only loopback: {run.seconds:.0f} s")
