"""A private mosquitto on 127.0.0.1 for benchmarks and tests, never the system broker.

:class:`LocalBroker` owns a directory (generated config, a password file made with
``mosquitto_passwd``, the persistence database and the log) and one free 127.0.0.1 port
that it keeps across :meth:`LocalBroker.stop` / :meth:`LocalBroker.start`. Nothing
happens in the constructor; :meth:`LocalBroker.start` writes the files, starts the
process and waits until the port accepts connections.

mosquitto's defaults are made for many small clients, not for one fast subscriber:
``max_queued_messages 1000`` counts, per client, the messages waiting above those in
flight — and also the *QoS 0* packets waiting for the client's socket, which are
silently dropped beyond it — and ``max_inflight_messages 20`` caps the QoS 1 messages
in flight to an MQTT v3.1.1 subscriber (a v5 subscriber's own Receive Maximum replaces
it). The defaults here are raised for a benchmark (see :class:`LocalBroker`).

>>> b = LocalBroker(Path("/tmp/b"), password="pw", port=1999)
>>> b.url()
'mqtt://edge:pw@127.0.0.1:1999'
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LocalBroker", "find_binary", "free_port", "wait_until"]

_SBIN = "/usr/sbin:/usr/local/sbin"
_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe")


def find_binary(name: str) -> str | None:
    """``name`` on ``PATH``, or in ``/usr/sbin`` (where Debian puts mosquitto)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(ok: Callable[[], object], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll ``ok`` until it returns something true; ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:g} s waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(step)


class LocalBroker:
    """One mosquitto process with auth, persistence and a file log in ``root``.

    Args:
        root: Directory for ``mosquitto.conf``, ``passwd``, ``data/`` and ``mosquitto.log``.
        binary: The ``mosquitto`` executable (default: found on ``PATH`` or in /usr/sbin).
        username: The one user in the password file.
        password: Its password (default: a random one).
        port: The 127.0.0.1 port (default: a free one, kept across restarts).
        max_queued_messages: Per-client queue above the in-flight messages; also the
            most QoS 0 packets waiting for a client's socket before mosquitto drops
            them (mosquitto's default is 1000).
        max_inflight_messages: Outgoing QoS 1/2 messages in flight per v3.1.1 client
            (v5 clients set it with their Receive Maximum); 0 means no limit.
        tcp_nodelay: ``set_tcp_nodelay``: send small packets (PUBACKs) at once. Off
            (mosquitto's default), a client that waits for its PUBACKs, like the alert
            sink, can stall 40 ms (Nagle's algorithm meeting delayed TCP ACKs).
        extra: More config lines, before the listener.
        listener_extra: Lines after the ``listener`` line (TLS files, for instance).
    """

    def __init__(
        self,
        root: Path,
        *,
        binary: str | None = None,
        username: str = "edge",
        password: str | None = None,
        port: int | None = None,
        max_queued_messages: int = 1_000_000,
        max_inflight_messages: int = 0,
        tcp_nodelay: bool = True,
        extra: str = "",
        listener_extra: str = "",
    ) -> None:
        self.root, self.binary = root, binary
        self.username = username
        self.password = password if password is not None else secrets.token_urlsafe(12)
        self.port = port if port is not None else free_port()
        self.max_queued_messages, self.max_inflight_messages = (
            max_queued_messages,
            max_inflight_messages,
        )
        self.tcp_nodelay = tcp_nodelay
        self.extra, self.listener_extra = extra, listener_extra
        self.proc: subprocess.Popen[bytes] | None = None
        self._configured = False
        self.log = root / "mosquitto.log"
        self.conf = root / "mosquitto.conf"

    def url(self) -> str:
        """``mqtt://user:password@127.0.0.1:port``."""
        return f"mqtt://{self.username}:{self.password}@127.0.0.1:{self.port}"

    def write_config(self) -> None:
        """Write the password file and ``mosquitto.conf`` (the first ``start`` calls this)."""
        self._configured = True
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        passwd = self.root / "passwd"
        tool = find_binary("mosquitto_passwd") or "mosquitto_passwd"
        cmd = [tool, "-c", "-b", str(passwd), self.username, self.password]
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        logs = "".join(f"log_type {t}\n" for t in _LOG_TYPES)
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\nallow_anonymous false\n"
            f"password_file {passwd}\n"
            f"persistence true\npersistence_location {self.root / 'data'}/\n"
            "autosave_interval 0\n"
            f"max_queued_messages {self.max_queued_messages}\n"
            f"max_inflight_messages {self.max_inflight_messages}\n"
            + ("set_tcp_nodelay true\n" if self.tcp_nodelay else "")
            + f"log_dest file {self.log}\n{logs}log_timestamp false\n"
            f"{self.extra}\n"
            f"listener {self.port} 127.0.0.1\n{self.listener_extra}"
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto (writing its files first if needed); wait until it accepts."""
        if self.proc is not None:
            msg = "broker already running"
            raise RuntimeError(msg)
        if not self._configured:
            self.write_config()
        binary = self.binary or find_binary("mosquitto")
        if binary is None:
            msg = "mosquitto is not installed (Debian: apt-get install mosquitto)"
            raise FileNotFoundError(msg)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        proc = self.proc

        def accepting() -> bool:
            if proc.poll() is not None:
                msg = f"mosquitto exited with {proc.returncode}:\n{self.log_text()[-2000:]}"
                raise RuntimeError(msg)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return False
            return True

        try:
            wait_until(accepting, timeout, f"mosquitto on port {self.port}")
        except BaseException:
            self.stop()  # never leave a half-started broker behind
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its database) and wait; SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same database."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        """Everything mosquitto has logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
