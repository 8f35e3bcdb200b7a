"""The monitor against servers that answer what Python's HTTP client cannot parse, or what the
protocol does not say: each run is an error naming the request (method and URL), the
"unreachable" webhook goes out, and the monitor's loop carries on. A webhook receiver answering
garbage is logged, not fatal. The servers here are real sockets speaking (broken) HTTP."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from mlbuild.runtime.monitor import Monitor

REPO = Path(__file__).resolve().parents[2]

#: The answer a route gets: bytes sent as they are (then the connection is closed), or a special
#: "hang" (never answer) or "close" (close without a byte).
Answer = Callable[[str, str, bytes], Any]


def http_reply(body: Any, status: str = "200 OK") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n"
            f"connection: close\r\n\r\n").encode() + raw


class RawServer:
    """A TCP server that reads one HTTP request per connection and answers ``answer(method,
    path, body)`` byte for byte."""

    def __init__(self, answer: Answer) -> None:
        self.answer, self.requests = answer, []   # type: ignore[var-annotated]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:])
                           if k.strip().lower() == "content-length"), 0)
            while len(body) < length:
                body += conn.recv(65536)
            method, path = lines[0].split()[:2]
            self.requests.append((method, path, body))
            out = self.answer(method, path, body)
            if out == "hang":
                self.stopped.wait(30)
            elif out != "close":
                conn.sendall(out)

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


META = {"name": "digits", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "hashes": {"model": "a" * 64}}


def model(meta: Any = None, infer: Any = None) -> Answer:
    """A server answering ``meta`` to GET /v2/models/digits and ``infer`` to its /infer; by default
    a model that gets every label right."""
    def answer(method: str, path: str, body: bytes) -> Any:
        if method == "GET":
            return http_reply(META) if meta is None else meta
        if infer is not None:
            return infer
        rows = json.loads(body)["inputs"][0]
        n = rows["shape"][0]
        labels = [int(v) % 3 for v in np.asarray(rows["data"]).reshape(n, -1)[:, 0]]
        return http_reply({"outputs": [{"name": "label", "datatype": "INT64", "shape": [n], "data": labels}]})
    return answer


def tiny_spec(tmp_path: Path) -> dict[str, Any]:
    """Twenty rows of four features whose label is the first feature mod 3 (heldout arrays, as
    the Nix build writes them)."""
    held = tmp_path / "heldout"
    held.mkdir(parents=True, exist_ok=True)
    x = np.arange(80, dtype=np.float32).reshape(20, 4)
    np.save(held / "inputs.npy", x)
    np.save(held / "targets.npy", x[:, 0].astype(int) % 3)
    return {"name": "digits", "heldout": str(held), "thresholds": {"accuracy": 0.5}, "task": "classification",
            "labels": ["a", "b", "c"], "suite_version": "test"}


class Hook:
    """A webhook receiver: the payloads it got."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.server = RawServer(self._answer)

    def _answer(self, method: str, path: str, body: bytes) -> bytes:
        self.posts.append(json.loads(body))
        return http_reply(b"ok")


@pytest.fixture
def hook() -> Any:
    h = Hook()
    yield h
    h.server.stop()


CUT = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"na"


@pytest.mark.parametrize("answer, method, path, said", [
    # http.client.IncompleteRead (not an OSError): the loop died with a traceback
    (model(meta=CUT), "GET", "/v2/models/digits", "the server cut its answer short (4 bytes read, 96 more expected)"),
    # BadStatusLine: a port that is not HTTP
    (model(meta=b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"), "GET", "/v2/models/digits",
     "the answer is not HTTP (it starts 'SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n'): is --url the model server's "
     "address?"),
    # AttributeError, IndexError
    (model(meta=http_reply([])), "GET", "/v2/models/digits", "the answer is not a model's metadata (no inputs[0].name): '[]'"),
    (model(meta=http_reply({"inputs": []})), "GET", "/v2/models/digits", "the answer is not a model's metadata"),
    # TypeError (unhashable), past every except
    (model(meta=http_reply({"inputs": [{"name": "input", "datatype": ["FP32"]}]})), "GET", "/v2/models/digits",
     "the server's input 'input' has datatype ['FP32'], which the monitor cannot send"),
    # these said "Expecting value: line 1 column 1 (char 0)" and "Remote end closed connection
    # without response", without the request
    (model(meta=http_reply(b"<html>hello</html>")), "GET", "/v2/models/digits",
     "the answer is not JSON: '<html>hello</html>'"),
    (model(meta="close"), "GET", "/v2/models/digits", "the server closed the connection without answering"),
    (model(infer=CUT), "POST", "/v2/models/digits/infer", "the server cut its answer short"),
    (model(infer=http_reply({"outputs": [{"name": "label", "shape": [1], "data": [1]}]})), "POST",
     "/v2/models/digits/infer", "the answer is not 20 rows of outputs"),
    (model(infer=http_reply({"outputs": [{"name": "y", "shape": [20], "data": [1] * 20}]})), "POST",
     "/v2/models/digits/infer", "the answer has no \"label\" output (it has 'y'): is --url this model's server?"),
])
def test_a_broken_answer_is_a_failed_run_naming_the_request(tmp_path: Path, hook: Hook, answer: Answer, method: str,
                                                            path: str, said: str) -> None:
    server = RawServer(answer)
    try:
        mon = Monitor(tiny_spec(tmp_path), server.url, hook.server.url)
        out = mon.run_once()
        assert out["error"] == f"{method} {server.url}{path}: {said}" or out["error"].startswith(
            f"{method} {server.url}{path}: {said}"), out
        assert mon.registry.get_sample_value("mlbuild_monitor_server_reachable", {"model": "digits"}) == 0
        assert [(p["status"], p["error"]) for p in hook.posts] == [("unreachable", out["error"])]
    finally:
        server.stop()


def test_a_server_that_never_answers_is_named(tmp_path: Path) -> None:
    """It said {"error": "timed out"}: which request, where?"""
    server = RawServer(lambda *_: "hang")
    try:
        out = Monitor(tiny_spec(tmp_path), server.url, None, timeout=0.5).run_once()
        assert out == {"error": f"GET {server.url}/v2/models/digits: timed out"}
    finally:
        server.stop()


def test_a_good_server_still_passes(tmp_path: Path) -> None:
    server = RawServer(model())
    try:
        out = Monitor(tiny_spec(tmp_path), server.url, None).run_once()
        assert out["metrics"]["accuracy"] == 1.0 and out["model_hash"] == "a" * 64
    finally:
        server.stop()


def test_a_webhook_answering_garbage_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`BadStatusLine: GARBAGE` on the first alert POST ended the monitor: a broken alert
    receiver switched monitoring off."""
    garbage = RawServer(lambda *_: b"GARBAGE\r\n")
    wrong = http_reply({"outputs": [{"name": "label", "datatype": "INT64", "shape": [20], "data": [0] * 20}]})
    server = RawServer(model(infer=wrong))   # accuracy 0.35: alerting at every run
    try:
        mon = Monitor(tiny_spec(tmp_path), server.url, garbage.url)
        caplog.set_level(logging.ERROR, logger="mlbuild.monitor")
        assert mon.run_once()["checks"][0]["ok"] is False
        assert mon.run_once()["checks"][0]["ok"] is False   # and again at the next interval
        errors = [r.getMessage() for r in caplog.records]
        assert len(errors) == 2 and errors[0].startswith(f"webhook POST {garbage.url} failed: "), errors
        assert len([r for r in garbage.requests if r[0] == "POST"]) == 2
    finally:
        garbage.stop()
        server.stop()


def test_the_monitor_s_loop_carries_on(tmp_path: Path) -> None:
    """The monitor process (its main loop) against a port that is not HTTP, with a webhook that
    answers garbage: it logs each failed run and runs again, rather than exit with a traceback."""
    ssh = RawServer(lambda *_: b"SSH-2.0-OpenSSH_9.2p1\r\n")
    garbage = RawServer(lambda *_: b"GARBAGE\r\n")
    spec = tmp_path / "monitor.json"
    spec.write_text(json.dumps(tiny_spec(tmp_path)))
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlbuild.runtime.monitor", "--spec", str(spec), "--url", ssh.url,
                                 "--webhook", garbage.url, "--interval", "0.2", "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and log.read_text().count("answered wrongly") < 3 and proc.poll() is None:
            time.sleep(0.1)
        text = log.read_text()
        assert proc.poll() is None, text
        assert text.count(f"answered wrongly: GET {ssh.url}/v2/models/digits: the answer is not HTTP") >= 3, text
        assert f"webhook POST {garbage.url} failed" in text and "Traceback" not in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        ssh.stop()
        garbage.stop()


def test_a_one_shot_webhook_is_posted_again_until_delivered(tmp_path: Path) -> None:
    """"unreachable" and "resolved" are sent once: a failed POST (the receiver restarting)
    recorded the new state all the same, and the notice was lost for good."""
    answers: list[bytes] = []   # what the receiver answers, in turn; then 200
    posts: list[str] = []

    def receive(method: str, path: str, body: bytes) -> bytes:
        posts.append(json.loads(body)["status"])
        return answers.pop(0) if answers else http_reply(b"ok")

    hook = RawServer(receive)
    up = model()
    server = RawServer(lambda *a: up(*a))
    try:
        mon = Monitor(tiny_spec(tmp_path), server.url, hook.url)
        assert "metrics" in mon.run_once() and posts == []
        up = lambda *_: "close"   # noqa: E731  the server goes away
        answers[:] = [http_reply(b"busy", "503 Service Unavailable"), b"GARBAGE\r\n"]
        for _ in range(4):
            assert "error" in mon.run_once()
        assert posts == ["unreachable"] * 3   # failed, failed, delivered; then no more
        up = model()
        answers[:] = [http_reply(b"busy", "503 Service Unavailable")]
        for _ in range(3):
            assert "metrics" in mon.run_once()
        assert posts == ["unreachable"] * 3 + ["resolved"] * 2
    finally:
        hook.stop()
        server.stop()


def test_a_redirecting_webhook(tmp_path: Path, hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    """urllib turned a redirected POST into a GET with no body (or refused a 307): the alert was
    dropped without a word. A 307/308 is followed with the POST; a 301/302/303 is an error naming
    where it leads (where to point --webhook)."""
    def redirect(status: str, to: str) -> Answer:
        return lambda *_: (f"HTTP/1.1 {status}\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                           ).encode()

    target = f"{hook.server.url}/hooks/x"
    server = RawServer(lambda *_: "close")   # the server unreachable: one notice per monitor
    caplog.set_level(logging.ERROR, logger="mlbuild.monitor")
    try:
        for status, to, delivered in (("307 Temporary Redirect", target, True),
                                      ("308 Permanent Redirect", target, True),
                                      ("301 Moved Permanently", target, False),
                                      ("302 Found", target, False)):
            via = RawServer(redirect(status, to))
            hook.posts.clear()
            caplog.clear()
            try:
                Monitor(tiny_spec(tmp_path), server.url, f"{via.url}/hook").run_once()
            finally:
                via.stop()
            assert [p["status"] for p in hook.posts] == (["unreachable"] if delivered else []), status
            if delivered:
                assert hook.server.requests[-1][:2] == ("POST", "/hooks/x")
            else:
                code = status.split()[0]
                assert [r.getMessage() for r in caplog.records][-1] == (
                    f"webhook POST {via.url}/... failed: it redirects (HTTP {code}) to {hook.server.url}/..., and a "
                    "POST redirected so becomes a GET without the alert; give --webhook the address it redirects to "
                    "(its Location header; paths are not logged, as a webhook's is often its secret)")
        # a relative Location, and a loop
        via = RawServer(redirect("308 Permanent Redirect", "/again"))
        try:
            assert Monitor(tiny_spec(tmp_path), server.url, f"{via.url}/hook")._webhook({"status": "x"}) is False
            assert caplog.records[-1].getMessage() == (f"webhook POST {via.url}/... failed: more than 5 redirects "
                                                       f"(from {via.url}/...)")
            assert [r[:2] for r in via.requests] == [("POST", "/hook")] + [("POST", "/again")] * 5
        finally:
            via.stop()
    finally:
        server.stop()


def test_a_webhook_redirect_off_http_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 307 to file:///etc/hostname counted as delivered (urllib opened the file); to
    file:///dev/zero, the monitor read for ever."""
    via = RawServer(lambda *_: b"HTTP/1.1 307 Temporary Redirect\r\nlocation: file:///dev/zero\r\n"
                               b"content-length: 0\r\nconnection: close\r\n\r\n")
    caplog.set_level(logging.ERROR, logger="mlbuild.monitor")
    try:
        assert Monitor(tiny_spec(tmp_path), via.url, f"{via.url}/hook")._webhook({"status": "x"}) is False
        assert caplog.records[-1].getMessage() == (f"webhook POST {via.url}/... failed: it redirects (HTTP 307) "
                                                   f"to file:///..., which is not an http(s) URL")
    finally:
        via.stop()


def test_a_slow_answer_is_bounded_as_a_whole(tmp_path: Path) -> None:
    """A server sending a byte every 0.2 s never tripped the socket's timeout (0.5 s a read): one
    run took as long as the server liked."""
    def drip(method: str, path: str, body: bytes) -> Any:
        return "drip"

    server = RawServer(drip)

    def one(conn: socket.socket) -> None:   # the head at once, then the body a byte at a time
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n")
            for _ in range(1000):
                if server.stopped.wait(0.2):
                    return
                conn.sendall(b" ")
    server._one = one   # type: ignore[method-assign]
    try:
        started = time.monotonic()
        out = Monitor(tiny_spec(tmp_path), server.url, None, timeout=1.0).run_once()
        assert time.monotonic() - started < 3
        assert out == {"error": f"GET {server.url}/v2/models/digits: the answer took longer than 1 s"}, out
    finally:
        server.stop()


def test_json_nested_deeper_than_the_parser_goes_is_not_json(tmp_path: Path) -> None:
    """json.loads raised RecursionError, past the "not JSON" handling: a traceback from --once."""
    server = RawServer(model(meta=http_reply(b"[" * 100_000 + b"]" * 100_000)))
    try:
        out = Monitor(tiny_spec(tmp_path), server.url, None).run_once()
        assert out["error"].startswith(f"GET {server.url}/v2/models/digits: the answer is not JSON: '[[[["), out
    finally:
        server.stop()


def test_webhook_secrets_stay_out_of_the_log_and_off_the_command_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook's path is often its secret (Slack's hooks.slack.com/services/T/B/XXXX): every
    failed POST logged it whole, and the only way to give it was --webhook, in argv for any `ps`."""
    from mlbuild.runtime import monitor as rm

    assert rm.shown("https://user:pw@hooks.example.com/services/T0/B0/s3cret?x=1") == "https://hooks.example.com/..."
    assert rm.shown("http://[::1]:9000/hook") == "http://[::1]:9000/..."
    assert rm.shown("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    down = RawServer(lambda *_: "close")
    gone = RawServer(lambda *_: "close")
    secret = f"{gone.url}/services/T0/B0/s3cret"
    caplog.set_level(logging.ERROR, logger="mlbuild.monitor")
    try:
        Monitor(tiny_spec(tmp_path), down.url, secret).run_once()
    finally:
        down.stop()
        gone.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"webhook POST {gone.url}/... failed" in text and "s3cret" not in text, text
    # the environment gives it, so that it is not in the monitor's argv
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec(tmp_path)))
    monkeypatch.setenv(rm.WEBHOOK_ENV, "ftp://nope")
    with pytest.raises(SystemExit):   # checked as --webhook is
        rm.main(["--url", "http://127.0.0.1:1", "--once"], spec_path=str(spec))
    hook = RawServer(lambda *_: http_reply(b"ok"))
    down = RawServer(lambda *_: "close")
    monkeypatch.setenv(rm.WEBHOOK_ENV, f"{hook.url}/services/T0/B0/s3cret")
    try:
        assert rm.main(["--url", down.url, "--once"], spec_path=str(spec)) == 1
    finally:
        hook.stop()
        down.stop()
    assert [r[:2] for r in hook.requests] == [("POST", "/services/T0/B0/s3cret")]


def test_an_undelivered_notice_of_a_once_run_is_not_promised_again(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """`--once` with a webhook that did not take the notice said it was "posting it again at the next
    run", which a --once run never has."""
    down = RawServer(lambda *_: "close")
    gone = RawServer(lambda *_: "close")
    caplog.set_level(logging.WARNING, logger="mlbuild.monitor")
    try:
        Monitor(tiny_spec(tmp_path / "a"), down.url, f"{gone.url}/hook", once=True).run_once()
        once = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
        caplog.clear()
        Monitor(tiny_spec(tmp_path / "b"), down.url, f"{gone.url}/hook").run_once()
        every = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    finally:
        down.stop()
        gone.stop()
    assert once == ["webhook: the unreachable notice is not delivered (--once: no later run posts it again)"]
    assert every == ["webhook: the unreachable notice is not delivered: posting it again at the next run"]
