"""A loopback TCP proxy in front of a real backend, whose faults the tests switch on and off.

    with FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        sdk.init(endpoint=proxy.url)
        proxy.set_mode("refuse")        # connection refused: nothing listens on the port
        proxy.set_mode("reset")         # accepts, reads the request, then resets the connection (RST)
        proxy.set_mode("hang")          # accepts, reads, never answers
        proxy.set_mode("status", 503)   # answers every HTTP request itself with this status (429, ...)
        proxy.set_mode("forward")       # a plain TCP relay to the backend

Changing the mode closes every connection the proxy holds, so a client's pooled keep-alive (or
gRPC) connection cannot carry on in the old mode. Real sockets only; everything on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Any

HOST = "127.0.0.1"


class FaultProxy:
    """A TCP proxy on a fixed free port of 127.0.0.1 (see the module docstring for the modes)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "forward"
        self.status = 503
        self.retry_after: str | None = None
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stopped = False
        self._release = threading.Event()
        self.connections = 0
        with socket.socket() as probe:  # a free port, kept for the proxy's whole life
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listener and every connection."""
        self._stopped = True
        self._release.set()
        self._close_listener()
        self._close_connections()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    def set_mode(self, mode: str, status: int = 503, retry_after: str | None = None) -> None:
        """Switch to `mode` (forward, refuse, reset, hang, status); open connections are closed."""
        assert mode in ("forward", "refuse", "reset", "hang", "status"), mode
        with self._lock:
            self.mode, self.status, self.retry_after = mode, status, retry_after
        self._release.set()
        self._release = threading.Event()
        self._close_connections()
        if mode == "refuse":
            self._close_listener()
        elif self._listener is None:
            self._listen()

    # -- listening -------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(100):  # the port may linger for a moment after the listener closed
            try:
                listener.bind((HOST, self.port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"cannot listen on {HOST}:{self.port} again")
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="fault-proxy", daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _close_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed (refuse mode or stop)
            self.connections += 1
            self._track(client)
            with self._lock:
                mode, status, retry_after = self.mode, self.status, self.retry_after
            handler: Any = {
                "forward": self._forward,
                "reset": self._reset,
                "hang": self._hang,
                "status": self._answer_status,
                "refuse": self._reset,  # accepted just before the listener closed
            }[mode]
            threading.Thread(
                target=handler, args=(client, status, retry_after), name="fault-proxy-conn", daemon=True
            ).start()

    # -- behaviours ------------------------------------------------------------------------

    def _forward(self, client: socket.socket, *_: Any) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._reset(client)
            return
        upstream.settimeout(None)
        self._track(upstream)

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def _reset(self, client: socket.socket, *_: Any) -> None:
        with contextlib.suppress(OSError):
            client.settimeout(2)
            client.recv(65536)  # mid-request: some of the request has arrived
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            client.close()  # with SO_LINGER 0: an RST, not a FIN

    def _hang(self, client: socket.socket, *_: Any) -> None:
        release = self._release
        client.settimeout(0.2)
        while not release.is_set() and not self._stopped:
            try:
                if not client.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def _answer_status(self, client: socket.socket, status: int, retry_after: str | None) -> None:
        client.settimeout(5)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buffer) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
                client.sendall(f"HTTP/1.1 {status} Fault\r\nContent-Length: 0\r\n{extra}\r\n".encode("ascii"))
        except OSError:
            return
