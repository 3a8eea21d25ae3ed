"""The HTTP server's read deadline: slow clients are cut off, prompt ones are served (a tiny app, real uvicorn)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from litestar import Litestar, post
from litestar.params import JSONBody

from app.server import protocol_class
from tests.e2e.conftest import free_port


@post("/echo", sync_to_thread=False)
def echo(data: JSONBody[dict[str, str]]) -> dict[str, str]:
    return data


@pytest.fixture(scope="module", params=["httptools", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    from app import server as module

    protocol = protocol_class(0.5) if request.param == "httptools" else module._h11_protocol(0.5)
    chosen = free_port()
    config = uvicorn.Config(
        Litestar([echo]), host="127.0.0.1", port=chosen, http=protocol, log_config=None, timeout_keep_alive=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield chosen
    server.should_exit = True
    thread.join(timeout=10)


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_headers_that_do_not_arrive_in_time_get_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        started = time.monotonic()
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"request_timeout" in reply
    assert time.monotonic() - started < 4


def test_a_body_that_drips_is_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        for _ in range(30):  # one byte every 0.1 s: never done within the deadline
            try:
                sock.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        reply = read_all(sock)
    assert b"200 OK" not in reply
    assert time.monotonic() - started < 4


def test_prompt_requests_on_one_connection_are_served(port: int) -> None:
    body = b'{"a": "b"}'
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        for _ in range(3):
            time.sleep(0.3)  # idle between requests does not count against the next one
            sock.sendall(request)
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 201"), reply
