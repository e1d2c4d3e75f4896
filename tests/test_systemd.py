"""ccci under systemd: sd_notify (ready, watchdog, stopping) over a real socket, the journal as
the one log with each line's priority, and secrets as the unit's credentials."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.flows.forge.connect import webhook_secret
from controller.flows.serve import Server, open_for_serve
from controller.registry.settings import parse_settings
from controller.util import log as log_module
from controller.util.credentials import secret_file
from controller.util.errors import BadInput
from controller.util.log import mask, register_secret
from controller.util.systemd import NOTIFY_VARIABLES, Notifier, notify_address, watchdog_seconds
from tests import helpers
from tests.helpers import RemoteRegistry

# The subprocesses never reach an engine: the tests here need none, and must not touch the
# shared one (start-up recovery says it cannot reach this one and goes on).
NO_ENGINE = "unix:///nonexistent/ccci-test-docker.sock"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as systemd's `$NOTIFY_SOCKET` may name one."""
    name = f"ccci-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _messages(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Datagrams as they come, up to and including the first that holds the line `until`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(message)
        if until in message.splitlines():
            return seen
    raise AssertionError(f"no {until} within {timeout:.0f} s; got {seen}")


def test_notify_socket_names_a_path_or_the_abstract_namespace() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@ccci/notify") == "\0ccci/notify"
    assert notify_address("vsock:2:1234") is None
    assert notify_address("") is None


def test_watchdog_interval_is_taken_only_when_meant_for_this_process() -> None:
    assert watchdog_seconds("2000000", None, 42) == 2.0
    assert watchdog_seconds("2000000", "42", 42) == 2.0
    assert watchdog_seconds("2000000", "41", 42) is None  # inherited from a parent
    assert watchdog_seconds("0", None, 42) is None
    assert watchdog_seconds("soon", None, 42) is None
    assert watchdog_seconds(None, None, 42) is None


def test_the_notify_variables_are_read_once_and_kept_from_children(
    monkeypatch: pytest.MonkeyPatch, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, name = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert not any(variable in os.environ for variable in NOTIFY_VARIABLES)
    assert notifier.watchdog_s == 8.0 and notifier.ping_every == 2.0
    notifier.ready("serving")
    notifier.status("serving")  # unchanged: not sent again
    notifier.status("busy")
    notifier.keep_alive()
    notifier.stopping("bye")
    sock.settimeout(5)
    assert [sock.recv(4096).decode() for _ in range(4)] == [
        "READY=1\nSTATUS=serving", "STATUS=busy", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye"]


def test_outside_systemd_notifying_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in NOTIFY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    notifier = Notifier.from_environment()
    assert notifier.address is None and notifier.ping_every == float("inf")
    notifier.ready("serving")
    notifier.keep_alive()
    # A socket that went away costs a log line, never the daemon.
    Notifier("\0ccci-test-nobody-listens-" + uuid.uuid4().hex, 1.0).keep_alive()


def test_serve_tells_systemd_ready_then_watchdog_then_stopping(
    git_remote: RemoteRegistry, state_dir: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, name = notify_socket
    clone = git_remote.clone("controller")
    # A one-second watchdog, a poll interval far longer: the loop must wake to ping.
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "60", env={
        "NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000", "DOCKER_HOST": NO_ENGINE})
    try:
        before_ready = _messages(sock, "READY=1", 60)
        assert any(m.startswith("STATUS=recovering") for m in before_ready), before_ready
        assert "STATUS=0 claimed, 0 finished, 0 rejected; running: nothing" in before_ready[-1]
        pinged_at = []
        for _ in range(4):
            _messages(sock, "WATCHDOG=1", 10)
            pinged_at.append(time.monotonic())
        gaps = [later - earlier for earlier, later in itertools.pairwise(pinged_at)]
        assert max(gaps) < 0.9, f"the watchdog (1 s) needs a ping at least twice a second: {gaps}"
        serve.proc.terminate()
        stopping = _messages(sock, "STOPPING=1", 30)
        assert "STATUS=stopping: finishing the runs in flight" in stopping[-1]
        assert serve.proc.wait(timeout=60) == 0, serve.log()
    finally:
        serve.stop()
    assert "READY=1" not in serve.log()  # the protocol goes to the socket, never to the log



def _finishes(target: Callable[[], object], timeout: float = 5.0) -> bool:
    """Whether `target` returns within `timeout` s, run on a thread of its own."""
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()


def test_a_log_line_never_waits_for_the_secrets_lock() -> None:
    # A log line written from a signal handler that interrupted register_secret (or another log
    # line) in the same thread would otherwise wait forever for a lock its own thread holds.
    register_secret("test-secret-4f1e")
    with log_module._secrets_lock:
        masked: list[str] = []
        assert _finishes(lambda: masked.append(mask("token test-secret-4f1e"))), "mask waited for the lock"
    assert masked == ["token *****"]


def test_serve_s_signal_handler_takes_no_lock_and_the_loop_says_it_was_heard(
    git_remote: RemoteRegistry, state_dir: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    # A handler runs between two bytecodes of the main thread, which may hold the log
    # handler's lock or the watcher's: CI once saw serve ignore SIGTERM for good, its log cut
    # off mid-run. Here another thread holds both while the handler runs.
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    ctx = open_for_serve(git_remote.clone("controller"), state_dir, once=False, poll_interval=60)
    server = Server(ctx, poll_interval=60, watch=False)
    held, release = threading.Event(), threading.Event()
    locks = [handler.lock for handler in logging.getLogger().handlers if handler.lock is not None]
    locks.append(server.watcher._changed._cond)

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(30)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)
    try:
        assert _finishes(lambda: server._on_signal(signal.SIGTERM, None)), "the handler waited for a lock"
    finally:
        release.set()
        holder.join(10)
    assert server.stopping and server.signalled == signal.SIGTERM
    # The waiting loop notices the flag within its check interval and says so once.
    with caplog.at_level(logging.INFO, logger="controller.flows.serve"):
        assert _finishes(server._wait_for_change, timeout=10)
        server._heed_signal()
        server._heed_signal()
    heard = [r.getMessage() for r in caplog.records if r.getMessage().startswith("signal ")]
    assert heard == [f"signal {int(signal.SIGTERM)}: finishing in-flight runs, claiming nothing new"]



def test_serve_holding_on_a_broken_ccci_yaml_is_ready_and_says_why(
    git_remote: RemoteRegistry, state_dir: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """A registry's mistake must neither hang `systemctl start` nor crash-loop the unit."""
    sock, name = notify_socket
    git_remote.edit({"ccci.yaml": "base_domain: [not, a, domain]\n"})
    clone = git_remote.clone("controller")
    serve = helpers.ServeProcess(clone, state_dir, "--poll-interval", "0.3", env={
        "NOTIFY_SOCKET": name, "DOCKER_HOST": NO_ENGINE})
    try:
        ready = _messages(sock, "READY=1", 60)[-1]
        assert "STATUS=holding: ccci.yaml: at 'base_domain'" in ready, ready
        serve.proc.terminate()
        # Before the loop started SIGTERM ends it at once: 130, which the units count as success.
        assert serve.proc.wait(timeout=60) == 130, serve.log()
    finally:
        serve.stop()


def _run_ccci_with_stderr(path: Path, journal_stream: str | None, *args: str) -> int:
    env = {**os.environ, "DOCKER_HOST": NO_ENGINE}
    env.pop("JOURNAL_STREAM", None)
    with path.open("w") as stderr:
        if journal_stream == "this file":
            stat = os.fstat(stderr.fileno())
            journal_stream = f"{stat.st_dev}:{stat.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        return subprocess.run([sys.executable, "-m", "controller", *args], stderr=stderr,
                              stdout=subprocess.DEVNULL, env=env, cwd=helpers.REPO_ROOT, timeout=120,
                              check=False).returncode


def test_under_the_journal_each_line_goes_once_with_its_priority(
    git_remote: RemoteRegistry, state_dir: Path, tmp_path: Path
) -> None:
    clone = git_remote.clone("controller")
    serve_once = ("--state-dir", str(state_dir), "serve", "--registry", str(clone), "--once")
    journal = tmp_path / "journal"
    assert _run_ccci_with_stderr(journal, "this file", *serve_once) == 0
    lines = journal.read_text().splitlines()
    assert "<6>[-] controller.flows.serve: serve stopped: 0 claimed, 0 finished, 0 rejected" in lines
    assert any(line.startswith("<3>[-] controller.flows.recover: start-up teardown skipped") for line in lines)
    assert all(line[:3] in ("<2>", "<3>", "<4>", "<6>", "<7>") for line in lines), lines
    log_file = state_dir / "logs" / "ccci.log"
    assert not log_file.exists() or log_file.read_text() == ""  # the journal is the log

    # The sentence a failed command ends with is an error, too.
    assert _run_ccci_with_stderr(journal, "this file", "--state-dir", str(state_dir), "serve", "--registry",
                                 str(tmp_path / "nowhere"), "--once") == 2
    assert journal.read_text().splitlines()[-1].startswith("<3>ccci: "), journal.read_text()

    # JSON lines keep their shape behind the priority.
    assert _run_ccci_with_stderr(journal, "this file", "--log-json", *serve_once) == 0
    assert all(line.startswith(("<3>{", "<6>{")) for line in journal.read_text().splitlines())

    # A JOURNAL_STREAM inherited by a process whose stderr was redirected is not the journal:
    # plain lines with their time, and the state dir's log file as well.
    plain = tmp_path / "plain"
    assert _run_ccci_with_stderr(plain, "1:1", *serve_once) == 0
    text = plain.read_text()
    assert not text.startswith("<") and " INFO [-] controller.flows.serve: serve stopped" in text
    assert "serve stopped" in log_file.read_text()


CREDENTIAL_SETTINGS = b"""\
base_domain: ci.test
forge:
  url: https://git.test
  token_file: $CREDENTIALS_DIRECTORY/forge-token
  webhook_secret_file: $CREDENTIALS_DIRECTORY/forge-webhook-secret
warm:
  keycloak: {mode: external, url: 'https://sso.test', admin_secret_file: $CREDENTIALS_DIRECTORY/keycloak-admin-password}
"""


def test_a_secret_named_in_the_credentials_directory_is_read_from_the_units_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_settings(CREDENTIAL_SETTINGS)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(BadInput, match=r"^ccci\.yaml: at 'forge\.webhook_secret_file': \$CREDENTIALS_DIRECTORY/"
                                       r"forge-webhook-secret is a systemd credential, and this process was "
                                       r"given none"):
        webhook_secret(settings)
    assert settings.warm.keycloak.admin_password() is None

    # systemd's LoadCredential= puts them in a directory of the unit's own.
    credentials = tmp_path / "credentials" / "ccci-forge.service"
    credentials.mkdir(parents=True)
    (credentials / "forge-webhook-secret").write_text("hook-secret-42\n")
    (credentials / "keycloak-admin-password").write_text("kc-admin-42\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert webhook_secret(settings) == b"hook-secret-42"
    assert settings.warm.keycloak.admin_password() == "kc-admin-42"
    assert secret_file("/etc/ccci/forge-token") == Path("/etc/ccci/forge-token")  # a path is a path


@pytest.mark.parametrize("name", ["forge-token", "$CREDENTIALS_DIRECTORY/../../etc/shadow",
                                  "$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/forge-token"])
def test_a_secret_file_is_an_absolute_path_or_one_credential(name: str) -> None:
    text = CREDENTIAL_SETTINGS.replace(b"$CREDENTIALS_DIRECTORY/forge-token", name.encode())
    with pytest.raises(BadInput, match=r"ccci\.yaml: at 'forge\.token_file'"):
        parse_settings(text)
