"""HostShell against a real sshd on 127.0.60.1 with its own config, host key and known_hosts.

Two throwaway users (no sudo, and NOPASSWD sudo) are created for the sudo tests and removed
in the fixture's teardown; sshd is stopped by its PID.
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
from fabric import Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from infra.sites.shell import HostShell, ShellDied, ShellError, SudoRefused
from playbooks import host
from tests.conftest import service_dir

pytestmark = pytest.mark.integration
ADDRESS = "127.0.60.1"
SECRET = "s3cr3t-Pa55word-do-not-print"


@contextmanager
def loopback_sshd(address: str = ADDRESS, users: bool = True):
    """sshd on `address` (own port, config, host key, known_hosts); yields a dict of its facts.

    With `users`, also a user without sudo and one with NOPASSWD sudo (both removed after).
    """
    root = service_dir("shell-sshd")
    suffix = os.getpid() % 100000
    made: list[str] = []
    sudoers = Path(f"/etc/sudoers.d/hs60sudo{suffix}")
    proc = None
    try:
        for name in ("host_ed25519", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / name], check=True)
        shutil.copy(root / "client.pub", root / "authorized_keys")
        os.chmod(root / "authorized_keys", 0o644)
        port = _free_port(address)
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress {address}\nHostKey {root}/host_ed25519\nPidFile {root}/sshd.pid\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
            "AllowTcpForwarding no\nX11Forwarding no\nPrintMotd no\nMaxSessions 20\n")
        key = (root / "host_ed25519.pub").read_text().split()
        (root / "known_hosts").write_text(f"[{address}]:{port} {key[0]} {key[1]}\n")
        facts = {"root": root, "port": port, "address": address, "nosudo": None, "sudo": None}
        if users and os.geteuid() == 0 and shutil.which("useradd"):
            for role in ("nosudo", "sudo"):
                name = f"hs60{role}{suffix}"
                # '*' is a password that matches nothing but, unlike useradd's '!', does not lock the account
                subprocess.run(["useradd", "-M", "-d", str(root), "-s", "/bin/bash", "-p", "*", name], check=True)
                made.append(name)
                facts[role] = name
            sudoers.write_text(f"{facts['sudo']} ALL=(ALL) NOPASSWD:ALL\n")
            os.chmod(sudoers, 0o440)
        Path("/run/sshd").mkdir(exist_ok=True)
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", root / "sshd_config"],
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex((address, port)) != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "sshd did not start"
            time.sleep(0.05)
        yield facts
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        sudoers.unlink(missing_ok=True)
        for name in made:
            # -f: a session sshd of a client that is still connected must not keep the user alive
            subprocess.run(["userdel", "-f", name], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def connect(facts: dict, user: str = "root") -> Connection:
    """A Fabric Connection that trusts only the sshd's own host key."""
    root = facts["root"]
    conn = Connection(facts["address"], user=user, port=facts["port"],
                      connect_kwargs={"key_filename": str(root / "client"), "look_for_keys": False,
                                      "allow_agent": False})
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.load_host_keys(str(root / "known_hosts"))
    return conn


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd():
    with loopback_sshd() as facts:
        yield facts


@pytest.fixture
def conn(sshd):
    c = connect(sshd)
    yield c
    c.close()


@pytest.fixture
def shell(conn):
    with HostShell(conn) as s:
        yield s


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_exit_codes_and_separate_streams(shell):
    result = shell.run("echo out; echo err >&2; echo more; exit 3", warn=True)
    assert (result.exited, result.ok, result.failed) == (3, False, True)
    assert (result.stdout, result.stderr) == ("out\nmore\n", "err\n")
    assert result.command == "echo out; echo err >&2; echo more; exit 3"
    ok = shell.run("true")
    assert (ok.exited, ok.ok, ok.stdout, ok.stderr) == (0, True, "", "")


def test_a_failure_raises_unexpected_exit_unless_warn(shell):
    with pytest.raises(UnexpectedExit) as error:
        shell.run("echo nope >&2; false")
    assert error.value.result.exited == 1 and error.value.result.stderr == "nope\n"
    assert f"{ADDRESS}" in str(error.value) and "exited 1" in str(error.value)


def test_output_without_trailing_newline_comes_back_as_it_was(shell):
    assert shell.run("printf abc").stdout == "abc"
    assert shell.run("printf 'abc\\n\\n'").stdout == "abc\n\n"
    assert shell.run("printf err >&2").stderr == "err"


def test_megabytes_of_binary_output_on_both_streams(shell, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(5 * 1024 * 1024))
    os.chmod(tmp_path, 0o755)
    result = shell.run(f"cat {blob}; cat {blob} >&2", timeout=60)
    assert result.stdout_bytes == blob.read_bytes() and result.stderr_bytes == blob.read_bytes()
    assert shell.run("echo after").stdout == "after\n"


def test_a_command_reading_stdin_gets_eof_instead_of_hanging(shell):
    assert shell.run("cat", timeout=5).stdout == ""
    assert shell.run('read -r line; echo "rc=$? line=$line"', timeout=5).stdout == "rc=1 line=\n"


def test_each_command_has_its_own_shell_state(shell):
    assert shell.pid is None  # opened on first use
    shell.run("true")
    pid = shell.pid
    shell.run("cd /tmp; export LEAK=1; set -e; trap 'echo trapped' EXIT; exit 7", warn=True)
    assert shell.run('pwd; echo "leak=${LEAK:-}"').stdout == f"{shell.run('echo ~').stdout.strip()}\nleak=\n"
    assert shell.pid == pid  # `exit` ended the command's subshell, not the shell


def test_env_values_are_passed_literally(shell):
    result = shell.run('echo "$A|$B"', env={"A": "it's $HOME `id`", "B": "two\nlines"})
    assert result.stdout == "it's $HOME `id`|two\nlines\n"
    with pytest.raises(ValueError):
        shell.run("true", env={"BAD NAME": "x"})


def test_a_syntax_error_fails_that_command_only(shell):
    result = shell.run("echo 'unbalanced", warn=True)
    assert result.exited == 2 and "unexpected EOF" in result.stderr
    assert shell.run("echo fine").stdout == "fine\n"


def test_timeout_kills_the_command_and_the_next_call_reopens(shell):
    shell.run("true")
    pid = shell.pid
    with pytest.raises(CommandTimedOut) as error:
        shell.run("echo started; sleep 31.4159", timeout=0.5)
    assert error.value.result.stdout == "started\n" and error.value.timeout == 0.5
    assert ADDRESS in str(error.value)
    wait_until(lambda: b"31.4159" not in subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout)
    assert shell.run("echo back").stdout == "back\n"
    assert shell.pid != pid


def test_a_timeout_comes_back_as_a_failed_result_through_playbooks_run(shell):
    result = host.run(shell, ["sleep", "20.5"], warn=True, timeout=0.3)
    assert result.exited == 124 and "timed out" in result.stderr
    assert shell.run("echo ok").ok


def test_a_shell_killed_between_commands_is_reopened_silently(shell):
    shell.run("true")
    pid = shell.pid
    os.kill(pid, signal.SIGKILL)  # the sshd is on this machine, so the remote PID is a local one
    wait_until(lambda: not shell.alive)
    assert shell.run("echo again").stdout == "again\n"
    assert shell.pid not in (None, pid)


def test_a_shell_dying_during_a_command_raises_and_then_recovers(shell):
    with pytest.raises(ShellDied) as error:
        shell.run("echo partial; kill -9 $$; sleep 5", timeout=10)
    assert ADDRESS in str(error.value) and "may or may not have run" in str(error.value)
    assert isinstance(error.value, OSError)
    assert shell.run("echo recovered").stdout == "recovered\n"


def test_threads_share_a_shell_without_mixing_output(shell):
    failures: list[str] = []

    def worker(i: int) -> None:
        for j in range(40):
            r = shell.run(f"echo out-{i}-{j}; echo err-{i}-{j} >&2; exit {j % 3}", warn=True)
            if (r.stdout, r.stderr, r.exited) != (f"out-{i}-{j}\n", f"err-{i}-{j}\n", j % 3):
                failures.append(f"{i}-{j}: {r.stdout!r} {r.stderr!r} {r.exited}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []


def test_two_shells_on_one_connection_run_in_parallel(conn):
    with HostShell(conn) as a, HostShell(conn) as b:
        a.run("true"), b.run("true")
        started = time.monotonic()
        threads = [threading.Thread(target=s.run, args=("sleep 0.5",)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert time.monotonic() - started < 0.9


def test_sudo_shell_runs_as_root_for_a_nopasswd_user(sshd):
    if not sshd["sudo"] or not shutil.which("sudo"):
        pytest.skip("needs root to create users, and sudo installed")
    c = connect(sshd, sshd["sudo"])
    try:
        with HostShell(c) as plain, HostShell(c, sudo=True) as rooted:
            assert plain.run("id -un").stdout.strip() == sshd["sudo"]
            assert rooted.run("id -u").stdout.strip() == "0"
            with pytest.raises(CommandTimedOut):  # a root job is killed through `sudo -n` too
                rooted.run("sleep 27.1828", timeout=0.3)
            wait_until(lambda: b"27.1828" not in subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout)
            assert rooted.run("id -u").stdout.strip() == "0"
    finally:
        c.close()


def test_sudo_refused_names_host_and_user_and_says_what_to_grant(sshd):
    if not sshd["nosudo"]:
        pytest.skip("needs root to create a user")
    user = sshd["nosudo"]
    c = connect(sshd, user)
    try:
        with pytest.raises(SudoRefused) as error:
            HostShell(c, sudo=True).run("true")
        message = str(error.value)
        assert ADDRESS in message and user in message and "NOPASSWD" in message
        assert isinstance(error.value, ShellError)
        assert HostShell(c).run("id -un").stdout.strip() == user  # the same login without sudo works
    finally:
        c.close()


def test_secrets_never_appear_in_errors(shell):
    payload = base64.b64encode(SECRET.encode()).decode()
    failures = []
    for command, kwargs in ((f"echo {payload} | base64 -d > /nonexistent/dir/file", {}),
                            (f"sleep 10 # {SECRET}", {"timeout": 0.3}),
                            (f": {SECRET}; kill -9 $$", {})):
        with pytest.raises((UnexpectedExit, CommandTimedOut, ShellDied)) as error:
            shell.run(command, **kwargs)
        failures.append(error.value)
    killed = shell.run(f": {SECRET}; kill -9 $BASHPID", warn=True)  # bash reports the killed job on stderr
    assert killed.exited == 137
    for text in [str(e) for e in failures] + [repr(e) for e in failures] + [killed.stderr]:
        assert SECRET not in text and payload not in text, text


def test_playbooks_run_over_the_shell_unchanged(shell):
    work = service_dir("shell-playbook")
    try:
        host.ensure_dir(shell, f"{work}/conf", "700")
        text = "password = " + SECRET + "\n" + "x" * 100_000
        host.write_file(shell, f"{work}/conf/pg.conf", text)
        assert host.run(shell, ["cat", f"{work}/conf/pg.conf"]).stdout == text
        assert Path(f"{work}/conf/pg.conf").owner() == host.SERVICE_USER
        with pytest.raises(OSError) as error:
            host.write_file(shell, "/nonexistent/dir/pg.conf", text)
        assert SECRET not in str(error.value)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_in_stream_is_refused(shell):
    with pytest.raises(ValueError):
        shell.run("cat", in_stream=open(os.devnull))


def test_a_shell_is_much_faster_than_a_session_per_command(conn, shell):
    def median_ms(run, n):
        times = []
        for _ in range(n):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    shell.run("true")
    conn.run("true", hide=True, in_stream=False)
    fabric = median_ms(lambda: conn.run("true", hide=True, in_stream=False), 10)
    ours = median_ms(lambda: shell.run("true"), 200)
    assert ours * 5 < fabric, (ours, fabric)


def test_close_from_another_thread_ends_a_running_command(shell):
    shell.run("true")
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            shell.run("sleep 3.3")
        except ShellDied as error:
            errors.append(error)

    thread = threading.Thread(target=runner)
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)
    shell.close()
    thread.join(5)
    assert len(errors) == 1 and time.monotonic() - started < 2.5
    assert shell.run("echo reopened").stdout == "reopened\n"
