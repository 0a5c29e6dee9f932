"""The DIMSE gateway's supervisor (dimse_processes.py) with stand-in processes: a process that
exits with an error as it starts stops the gateway with that error (instead of a restart loop),
the port is let go afterwards, and each process is given the listening socket."""
from __future__ import annotations

import socket
import sys
import threading

from live_servers import free_port

from dicomserver import Settings
from dicomserver.dimse_processes import StartFailed, Supervisor


def settings(port: int) -> Settings:
    return Settings(dimse_port=port, dimse_processes=2)


def test_a_process_that_cannot_start_stops_the_gateway_and_frees_the_port():
    port = free_port()
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    supervisor = Supervisor(settings(port), 2, command=failing)
    stopping = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            supervisor.run(stopping)
        except BaseException as exc:
            raised.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(30)
    stopping.set()  # a supervisor restarting them instead would run until told to stop
    runner.join(60)
    assert len(raised) == 1 and isinstance(raised[0], StartFailed), raised
    assert "status 3" in str(raised[0])
    with socket.create_server(("127.0.0.1", port)):
        pass  # the supervisor's socket is closed


def test_each_process_accepts_on_the_supervisors_socket(tmp_path):
    """The processes get the listening socket's descriptor (`--listen-fd N`) and can accept on it."""
    port = free_port()
    out = tmp_path / "accepted"
    accept_one = [sys.executable, "-c", (
        "import socket, sys\n"
        "fd = int(sys.argv[sys.argv.index('--listen-fd') + 1])\n"
        "conn, _ = socket.socket(fileno=fd).accept()\n"
        f"open({str(out)!r}, 'a').write('x')\n"
        "conn.close()\n"
        "import time; time.sleep(60)\n"
    )]
    stopping = threading.Event()
    supervisor = Supervisor(settings(port), 2, command=accept_one)
    runner = threading.Thread(target=supervisor.run, args=(stopping,))
    runner.start()
    try:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
                assert client.recv(1) == b""  # accepted, then closed by a stand-in process
        assert out.read_text() == "xx"
    finally:
        stopping.set()
        runner.join(60)
    assert not runner.is_alive()
    assert all(p.popen.poll() is not None for p in supervisor.processes)
