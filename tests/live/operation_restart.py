"""What the tests of operations that survive a killed server share: a short lease, killing the
server once its operation is under way, and waiting for the restarted server to finish it."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import requests
from live_servers import LiveServer, stop_server

#: A short lease, polled often: a restarted server takes over the killed one's operation soon.
QUICK_TAKEOVER = {"DICOMWEB_OPERATIONS_LEASE_SECONDS": "2", "DICOMWEB_OPERATIONS_POLL_SECONDS": "0.2"}


def kill_when(server: LiveServer, read_state: Callable[[], dict[str, Any]],
              under_way: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the operation's state until `under_way` says it is caught halfway, then SIGKILL the
    server's process group (started with new_session=True); the last state seen."""
    try:
        for _ in range(1200):  # the operation takes seconds: caught running, not done
            state = read_state()
            if state["status"] == "running" and under_way(state):
                break
            assert state["status"] in ("notStarted", "running"), state
            time.sleep(0.02)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    finally:
        stop_server(server)
    return state


def finished(server: LiveServer, path: str) -> dict[str, Any]:
    """The operation at `path` once a runner of the restarted server has resumed and ended it
    (the dead runner's lease expires first); it must have succeeded."""
    for _ in range(600):
        answer = requests.get(server.url + path, timeout=30)
        if answer.status_code == 200:
            break
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    done: dict[str, Any] = answer.json()
    assert done["status"] == "succeeded", done
    return done
