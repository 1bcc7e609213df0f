"""``python -m hessviz.serve`` (what ``./dev dashboard`` runs): honest start, quiet stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from hessviz import serve

pytestmark = pytest.mark.slow


def test_stop_is_quiet_and_fast(tmp_path):
    """``python -m hessviz.serve``: the URL comes once the server answers; Ctrl+C stops it
    without a traceback (it printed a kernel's ZMQError in 2 of 3 stops before), three times."""
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    for attempt in range(3):
        port = serve.free_port()
        log_path = tmp_path / f"serve-{attempt}.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "hessviz.serve", f"--port={port}"],
                cwd=serve.find_checkout(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 90
            while "hessviz dashboard: http" not in log_path.read_text():
                assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            # The URL was printed: the server answers now.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/voila.js") as r:
                assert r.status == 200
            # Let the pre-heated kernel start its notebook (the stop that used to fail).
            time.sleep(8)
            os.killpg(server.pid, signal.SIGINT)  # what Ctrl+C in a terminal sends
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
        output = log_path.read_text()
        assert "Traceback" not in output and "ZMQError" not in output, output[-3000:]
        assert output.rstrip().endswith("hessviz dashboard: stopped"), output[-1000:]
