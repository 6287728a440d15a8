"""A real ``redis-server`` for tests: a free 127.0.0.1 port, no persistence, its own temp folder.

    with RedisServer(tmp_path) as server:
        store = RedisStore(server.url, expiry=60)
        server.stop()      # the store now fails
        server.start()     # same port again: the store works again

Tests that need it use `requires_redis_server`, which skips them (saying why) only when
``redis-server`` is not installed; CI installs it (Debian package ``redis-server``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

REDIS_SERVER = shutil.which("redis-server")


def redis_server_available() -> bool:
    """Whether ``redis-server`` is installed here (tests that need it skip, saying why, when not)."""
    return REDIS_SERVER is not None


requires_redis_server = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)

START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(port: int, *lines: str, tls: ssl.SSLContext | None = None, timeout: float = 5.0) -> list[bytes]:
    """Send inline commands to 127.0.0.1:`port` (raw protocol, no client library); one reply line each."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        sock = raw if tls is None else tls.wrap_socket(raw, server_hostname="127.0.0.1")
        with sock:
            sock.sendall("".join(f"{line}\r\n" for line in lines).encode())
            reader = sock.makefile("rb")
            return [reader.readline().rstrip(b"\r\n") for _ in lines]


def generate_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem) made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class PortTaken(RuntimeError):
    """The chosen port was taken between choosing it and starting the server."""


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without persistence, in `folder`.

    `start()` and `stop()` may be called again: a restart uses the same port, so clients that
    were connected before reconnect to it. `pause()` / `resume()` freeze it (SIGSTOP / SIGCONT),
    so clients see a server that accepts nothing and answers nothing.
    """

    def __init__(
        self,
        folder: Path,
        *,
        password: str | None = None,
        tls: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.extra_args = extra_args
        self.certificate: Path | None = None
        self._tls_context: ssl.SSLContext | None = None
        if tls:
            if shutil.which("openssl") is None:
                pytest.skip("the openssl command is not installed (needed to make a test certificate)")
            self.certificate, key = generate_certificate(folder)
            self.extra_args = (
                "--tls-cert-file", str(self.certificate), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(self.certificate), "--tls-auth-clients", "no",
                *extra_args,
            )  # fmt: skip
            self._tls_context = ssl.create_default_context(cafile=str(self.certificate))
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``rediss://`` with the CA file, and the password, when set)."""
        auth = f":{self.password}@" if self.password else ""
        if self.certificate is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificate}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self, *lines: str) -> list[bytes]:
        """Send inline commands (authenticated first when the server has a password); their replies."""
        auth = [f"AUTH {self.password}"] if self.password else []
        return command(self.port, *auth, *lines, tls=self._tls_context)[len(auth) :]

    def ping(self) -> bool:
        """Whether the server answers PING."""
        try:
            return self.command("PING") == [b"+PONG"]
        except OSError:
            return False

    def start(self) -> None:
        """Start the server (on the same port as before, after a `stop()`) and wait until it answers."""
        assert self.process is None, "already running"
        for _ in range(5):
            try:
                self._start()
                return
            except PortTaken:
                if self._started:
                    raise  # a restart must keep its port
                self.port = free_port()  # another process took the port meanwhile: pick another
        self._start()

    def _start(self) -> None:
        assert REDIS_SERVER is not None
        log = (self.folder / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                "0" if self.certificate is not None else str(self.port),
                *(("--tls-port", str(self.port)) if self.certificate is not None else ()),
                *(("--requirepass", self.password) if self.password else ()),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None:
                output = (self.folder / "redis.log").read_text(errors="replace")
                self.process = None
                if "Address already in use" in output:
                    raise PortTaken(output)
                raise RuntimeError(f"redis-server exited on port {self.port}:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT}s")
            time.sleep(0.02)
        self._started = True

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until its port is closed."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel, but nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def flush(self) -> None:
        """Remove every key (between tests that share a server)."""
        assert self.command("FLUSHALL") == [b"+OK"]

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
