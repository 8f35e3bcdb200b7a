"""The monitor's arguments: a bad URL or interval is refused up front, naming the value."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mlbuild.runtime.monitor import http_url, main
from tests.conftest import run_cli


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://models.example.com/digits/", "http://[::1]:80"])
def test_http_urls_pass(url: str) -> None:
    assert http_url(url) == url


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8080", "ftp://host/x", "http://", "file:///tmp/x", ""])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=f"{url!r} is not an http:// or https:// URL with a host"):
        http_url(url)


@pytest.mark.parametrize("args, message", [
    (["--url", "localhost:8080"], "argument --url: 'localhost:8080' is not an http:// or https:// URL"),
    (["--url", "http://a", "--webhook", "hooks.example.com"], "argument --webhook: 'hooks.example.com' is not"),
    (["--url", "http://a", "--interval", "0"], "argument --interval: '0' is not a number of seconds above 0 and at most a week (604800)"),
    (["--url", "http://a", "--interval", "soon"], "argument --interval: 'soon' is not a number of seconds above 0"),
    # accepted, then the wait after the first run overflowed (OverflowError: timestamp out of range)
    (["--url", "http://a", "--interval", "inf"], "argument --interval: 'inf' is not a number of seconds above 0 and at most a week (604800); "
                                                 "give one like 60"),
    (["--url", "http://a", "--interval", "1e400"], "argument --interval: '1e400' is not a number of seconds above 0"),
    (["--url", "http://a", "--interval", "nan"], "argument --interval: 'nan' is not a number of seconds above 0"),
])
def test_runtime_refuses_bad_arguments(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--spec", "/nonexistent/spec.json", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_bad_url_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n'})
    proc = run_cli("monitor", "digits", "--url", "localhost:8080", "--once", cwd=root, check=False,
                   env={"PATH": "/nonexistent"})   # no Nix: nothing is built
    assert proc.returncode == 2
    assert "Invalid value for '--url': 'localhost:8080' is not an http:// or https:// URL" in proc.stderr


def test_cli_refuses_a_bad_webhook_in_the_environment_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n'})
    proc = run_cli("monitor", "digits", "--url", "http://127.0.0.1:8080", "--once", cwd=root, check=False,
                   env={"PATH": "/nonexistent", "MLBUILD_MONITOR_WEBHOOK": "hooks.example.com/x"})
    assert proc.returncode == 2
    assert ("Invalid value for --webhook: $MLBUILD_MONITOR_WEBHOOK: 'hooks.example.com/x' is not an http:// or "
            "https:// URL") in proc.stderr


def test_runtime_refuses_a_bad_metrics_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--spec", "/nonexistent/spec.json", "--url", "http://a", "--port", "70000"])
    assert "argument --port: '70000' is not a port number in 0..65535" in capsys.readouterr().err


def test_the_built_monitor_s_help_asks_for_no_spec(capsys: pytest.CaptureFixture[str]) -> None:
    """`nix run .#digits.monitor -- --help` listed --spec SPEC as required: the wrapper passes it."""
    with pytest.raises(SystemExit):
        main(["--help"], spec_path="/nix/store/x-monitor/spec.json")
    assert "--spec" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--spec SPEC" in capsys.readouterr().out


def test_port_0_logs_the_port_it_bound(tmp_path: Path) -> None:
    """`--port 0` logged `metrics on http://127.0.0.1:0/metrics`: where are they?"""
    from tests.unit.test_monitor_answers import REPO, tiny_spec

    spec = tmp_path / "monitor.json"
    spec.write_text(json.dumps(tiny_spec(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-m", "mlbuild.runtime.monitor", "--spec", str(spec),
                             "--url", "http://127.0.0.1:1", "--port", "0", "--interval", "5"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stderr is not None
        line = next(line for line in proc.stderr if "metrics on" in line)
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics, every 5 s against http://127\.0\.0\.1:1", line)
        assert found and found[1] != "0", line
        with urllib.request.urlopen(f"http://127.0.0.1:{found[1]}/metrics", timeout=10) as r:
            assert b"mlbuild_monitor_start_time_seconds" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_platform_s_prometheus_multiproc_dir_is_left_alone(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR, which platforms set for gunicorn's workers, made prometheus_client
    keep the monitor's samples in files there: one that was missing (or read-only) ended the monitor
    with a FileNotFoundError traceback ('.../gauge_all_PID.db') before its first run."""
    from tests.unit.test_monitor_answers import REPO, tiny_spec

    spec = tmp_path / "monitor.json"
    spec.write_text(json.dumps(tiny_spec(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-m", "mlbuild.runtime.monitor", "--spec", str(spec),
                             "--url", "http://127.0.0.1:1", "--port", "0", "--interval", "60"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "no")})
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "unreachable" in line:   # its first run is done
                break
        assert any("unreachable" in x for x in seen) and not any("Traceback" in x for x in seen), "".join(seen)
        assert not (tmp_path / "no").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ctrl_c_stops_the_monitor_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C, how a monitor run in a terminal is stopped, ended it with a KeyboardInterrupt traceback
    out of its wait between runs."""
    import signal

    from tests.unit.test_monitor_answers import REPO, tiny_spec

    spec = tmp_path / "monitor.json"
    spec.write_text(json.dumps(tiny_spec(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-m", "mlbuild.runtime.monitor", "--spec", str(spec),
                             "--url", "http://127.0.0.1:1", "--port", "0", "--interval", "60"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stderr is not None
        next(line for line in proc.stderr if "unreachable" in line)   # its first run is done: it waits
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=10) == 130
        assert "Traceback" not in rest and rest.rstrip().endswith("monitor of digits: interrupted, stopped"), rest
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_cli_s_help_lists_the_monitor_s_options(tree) -> None:  # type: ignore[no-untyped-def]
    """`mlbuild monitor digits --help` listed --url and --allow-dirty only: --once, --interval,
    --port, --host and --webhook showed with `... -- --help` alone."""
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n'})
    out = " ".join(run_cli("monitor", "digits", "--help", cwd=root, env={"PATH": "/nonexistent"}).stdout.split())
    for option in ("--url", "--once", "--interval", "--host", "--port", "--webhook", "--allow-dirty"):
        assert option in out, (option, out)


@pytest.mark.parametrize("args, message", [
    # `No such option: --url`: the options had to follow the model's name
    (["monitor", "--url", "localhost:8080", "digits"], "Invalid value for '--url': 'localhost:8080' is not"),
    # checked before building (for hours, with a real model), not by the monitor after
    (["monitor", "digits", "--url", "http://a", "--interval", "inf"],
     "Invalid value for '--interval': inf is not a number of seconds above 0 and at most a week (604800); give one like 60"),
    (["monitor", "digits", "--url", "http://a", "--port", "70000"], "Invalid value for '--port': 70000 is not in"),
    # 1e10 s overflowed the wait's clock after the first run
    (["monitor", "digits", "--url", "http://a", "--interval", "1e10"],
     "Invalid value for '--interval': 10000000000.0 is not a number of seconds above 0 and at most a week (604800)"),
    # passed on to bin/monitor, which refused it only after the build (a training run, maybe)
    (["monitor", "digits", "--url", "http://a", "--intreval", "5"], "No such option '--intreval'. Did you mean '--interval'?"),
    (["monitor", "digits", "--url", "http://a", "--webhook", "hooks.example.com"],
     "Invalid value for '--webhook': 'hooks.example.com' is not an http:// or https:// URL"),
])
def test_the_cli_checks_the_monitor_s_options_before_building(tree, args: list[str],  # type: ignore[no-untyped-def]
                                                              message: str) -> None:
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n'})
    proc = run_cli(*args, cwd=root, check=False, env={"PATH": "/nonexistent"})   # no Nix: nothing is built
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def _pin_mlbuild(tmp_path: Path, monitor_source: str) -> Path:
    """A project whose flake.lock pins a (real, git) mlbuild whose monitor is ``monitor_source``."""
    old = tmp_path / "old-mlbuild"
    (old / "nix").mkdir(parents=True)
    (old / "nix" / "entry.nix").write_text('{ src, system ? "x86_64-linux", overrides ? "{}", dirty ? false }: { }\n')
    (old / "mlbuild" / "runtime").mkdir(parents=True)
    (old / "mlbuild" / "__init__.py").write_text("")
    (old / "mlbuild" / "runtime" / "monitor.py").write_text(monitor_source)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "old"]):
        subprocess.run(["git", *cmd], cwd=old, check=True, env=env)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=old, check=True, capture_output=True, text=True).stdout.strip()
    project = tmp_path / "project"
    project.mkdir()
    (project / "flake.nix").write_text("{ }\n")
    (project / "flake.lock").write_text(json.dumps({
        "nodes": {"mlbuild": {"locked": {"type": "git", "url": f"file://{old}", "rev": rev}},
                  "root": {"inputs": {"mlbuild": "mlbuild"}}}, "root": "root", "version": 7}))
    return project


@pytest.mark.parametrize("reads_env", [False, True])
def test_a_pinned_monitor_that_reads_no_webhook_variable_gets_it_as_an_argument(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reads_env: bool) -> None:
    """A project pinned to an mlbuild from before $MLBUILD_MONITOR_WEBHOOK: `mlbuild monitor
    --webhook URL` put the URL in the environment only, which that monitor never read, and no
    alert was ever posted, without a word."""
    from mlbuild.cli.monitor import _webhook_args
    from mlbuild.runtime.monitor import WEBHOOK_ENV

    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    source = "p.add_argument('--webhook')\n" + (f"os.environ.get({WEBHOOK_ENV!r})\n" if reads_env else "")
    project = _pin_mlbuild(tmp_path, source)
    args = _webhook_args(project, "https://hooks.example.com/s3cret")
    if reads_env:
        assert args == [] and os.environ[WEBHOOK_ENV] == "https://hooks.example.com/s3cret"
        assert "warning" not in capsys.readouterr().err
    else:
        assert args == ["--webhook", "https://hooks.example.com/s3cret"]
        assert "takes the webhook on its command line only" in capsys.readouterr().err
        monkeypatch.setenv(WEBHOOK_ENV, "https://hooks.example.com/from-env")   # given the documented other way
        assert _webhook_args(project, None) == ["--webhook", "https://hooks.example.com/from-env"]


def test_the_cli_checks_where_the_monitor_listens_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    """`monitor digits --url ... --port 9109` with the port taken (or a --host that is no address
    here) built the monitor, a training run where the model was not built, and only then did the
    monitor fail to serve its /metrics; `--host ""` (an unset variable) would have served it on
    every interface. `--once` serves no /metrics: a --port beside it is said to go unused."""
    import socket

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n'})
    env = {"PATH": "/nonexistent"}   # no Nix: a check passed reaches the build, which fails without Nix
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("monitor", "digits", "--url", "http://a", "--port", str(port), cwd=root, check=False, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"Error: cannot serve the monitor's /metrics on 127.0.0.1:{port} (Address already in use); pass " \
           f"another --port (0: a free one) or a --host that is an address of this machine" in proc.stderr
    assert "building digits.monitor" not in proc.stderr
    proc = run_cli("monitor", "digits", "--url", "http://a", "--host", "no-such-host.invalid", "--port", "0",
                   cwd=root, check=False, env=env)
    assert proc.returncode == 1 and "cannot serve the monitor's /metrics on no-such-host.invalid:0 (" in proc.stderr
    assert "building digits.monitor" not in proc.stderr
    proc = run_cli("monitor", "digits", "--url", "http://a", "--host", "", cwd=root, check=False, env=env)
    assert proc.returncode == 1 and "--host '' is empty (an unset variable?)" in proc.stderr, proc.stderr
    # the checks pass: on to the build (which fails here, with no Nix)
    proc = run_cli("monitor", "digits", "--url", "http://a", "--port", "0", cwd=root, check=False, env=env)
    assert "building digits.monitor" in proc.stderr and "cannot serve" not in proc.stderr, proc.stderr
    proc = run_cli("monitor", "digits", "--url", "http://a", "--once", "--port", str(port), cwd=root, check=False,
                   env=env)
    assert "mlbuild: warning: --once runs the suite and prints its result, serving no /metrics: --port is not " \
           "used" in proc.stderr and "building digits.monitor" in proc.stderr and not proc.stdout, proc.stderr


def test_an_ipv6_host_in_brackets_is_refused_naming_it_without_them() -> None:
    """`monitor digits --host [::1]` (the form monitor config's --server takes) said "cannot serve
    the monitor's /metrics on [[::1]]:9109 (Name or service not known)": no word that the brackets
    were the trouble. ::1, localhost and port 0 pass, as the monitor's server binds them."""
    from mlbuild.errors import ConfigError
    from mlbuild.monitor import check_listen

    with pytest.raises(ConfigError) as e:
        check_listen("[::1]", 0)
    assert str(e.value).startswith("--host '[::1]': give an IPv6 address without brackets (--host ::1)")
    for host in ("localhost", "127.0.0.1", *(["::1"] if socket.has_ipv6 and _binds("::1") else [])):
        check_listen(host, 0)


def _binds(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False
