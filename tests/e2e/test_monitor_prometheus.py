"""Monitoring end to end: the Nix-built server and monitor, scraped by a real Prometheus (Debian's
package, started here) with the generated config; its HTTP API shows the live accuracy, the
threshold status, and the alert condition once wrong ground-truth labels are fed back."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from tests.conftest import build_path, run_cli
from tests.integration.conftest import digits_repo  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.torch]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def wait(what: str, fn: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.procs = workdir, []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "wb") as log:   # the child keeps its own descriptor
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def stack(digits_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: `bash .ci/setup` installs Debian's prometheus package")
    work = tmp_path_factory.mktemp("monitoring")
    build = run_cli("build", "digits", "digits.monitor", cwd=digits_repo).stdout.splitlines()
    package, monitor = (line.split("\t")[1] for line in build[:2])
    # It carries the held-out rows the suite loads, not the split (which holds the training rows).
    closure = subprocess.run(["nix-store", "-qR", monitor], capture_output=True, text=True, check=True).stdout
    assert "-digits-split" not in closure and Path(monitor, "heldout", "inputs.npy").is_file()
    server_port, monitor_port, prom_port = free_port(), free_port(), free_port()
    procs = Procs(work)
    procs.start("server", [f"{package}/bin/serve", "--host", "127.0.0.1", "--port", str(server_port),
                           "--log-level", "warning"])
    wait("server", lambda: http("GET", f"http://127.0.0.1:{server_port}/v2/health/ready")["ready"])
    monitor_proc = procs.start("monitor", [f"{monitor}/bin/monitor", "--url", f"http://127.0.0.1:{server_port}",
                            "--port", str(monitor_port), "--interval", "1"])
    conf = work / "conf"
    run_cli("monitor", "config", "digits", "--out", str(conf), "--server", f"127.0.0.1:{server_port}",
            "--monitor", f"127.0.0.1:{monitor_port}", "--scrape-interval", "1s", "--interval", "1",
            cwd=digits_repo)
    procs.start("prometheus", ["prometheus", f"--config.file={conf / 'prometheus.yml'}",
                               f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"])
    wait("prometheus", lambda: "Ready" in http("GET", f"http://127.0.0.1:{prom_port}/-/ready"))
    try:
        yield {"package": Path(package), "server": f"http://127.0.0.1:{server_port}",
               "monitor": f"http://127.0.0.1:{monitor_port}", "prom": f"http://127.0.0.1:{prom_port}", "conf": conf,
               "repo": digits_repo, "monitor_proc": monitor_proc}
    finally:
        procs.stop()


def query(stack: dict[str, Any], q: str) -> list[dict[str, Any]]:
    out = http("GET", f"{stack['prom']}/api/v1/query?query={urllib.parse.quote(q)}")
    assert out["status"] == "success", out
    return list(out["data"]["result"])


def test_prometheus_sees_the_suite_on_the_live_server(stack: dict[str, Any]) -> None:
    acc = wait("monitor accuracy in Prometheus",
               lambda: query(stack, 'mlbuild_monitor_metric{model="digits",metric="accuracy"}'))
    report = json.loads((stack["package"] / "manifest.json").read_text())
    assert acc[0]["metric"]["model_hash"] == report["hashes"]["model"]
    assert float(acc[0]["value"][1]) >= 0.95
    ok = wait("threshold status", lambda: query(stack, 'mlbuild_monitor_threshold_ok{model="digits"}'))
    # the suite's requests are probes: the server's live drift window has none of them
    # (test_wrong_feedback below sends its rows after this test)
    assert 'mlbuild_input_drift_rows{model="digits"} 0.0' in http("GET", f"{stack['server']}/metrics")
    assert {r["metric"]["metric"]: r["value"][1] for r in ok} == {"accuracy": "1", "f1_macro": "1"}


def test_the_monitor_s_metrics_are_the_validation_report_s(stack: dict[str, Any]) -> None:
    """The suite against the live server gives the validation build's numbers, every one, exactly
    (the same package, the same held-out rows, the same scikit-learn computation)."""
    path = run_cli("build", "digits.validation.report", cwd=stack["repo"]).stdout.split("\t")[1].split("\n")[0]
    report = json.loads((Path(path) / "metrics.json").read_text())

    def scraped() -> dict[str, float]:
        found = re.findall(r'^mlbuild_monitor_metric\{[^}]*metric="([^"]+)"[^}]*\} (\S+)$',
                           http("GET", f"{stack['monitor']}/metrics"), re.M)
        return {name: float(value) for name, value in found}

    live = wait("the monitor's metrics", scraped)
    assert live == report["metrics"]


def test_the_cli_says_what_it_builds_and_takes_options_before_the_name(stack: dict[str, Any]) -> None:
    """`mlbuild monitor --url URL NAME` was `No such option '--url'`, and it built (and trained,
    where this checkout's model was not built) without a word."""
    proc = run_cli("monitor", "--url", stack["server"], "digits", "--once", cwd=stack["repo"])
    assert json.loads(proc.stdout)["metrics"]["accuracy"] >= 0.95, proc.stdout   # stdout: the JSON alone
    assert proc.stderr.startswith("mlbuild: building digits.monitor (it trains and packages digits first "), proc.stderr
    assert "monitoring with /nix/store/" in proc.stderr


def test_the_cli_hands_the_webhook_on_off_the_command_line(stack: dict[str, Any]) -> None:
    """`--webhook URL` reached the monitor in its argv, for any `ps` to show: the path of a Slack
    webhook is its secret. It goes through MLBUILD_MONITOR_WEBHOOK now, and still gets the POST."""
    import http.server
    import threading

    got: list[tuple[str, dict[str, Any]]] = []
    down = f"http://127.0.0.1:{free_port()}"
    argv: list[str] = []   # the monitor's command line, read while it posts

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if "bin/monitor" in text and down in text:
                    argv.append(text)
            got.append((self.path, json.loads(self.rfile.read(int(self.headers["content-length"])))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        proc = run_cli("monitor", "digits", "--url", down, "--once", "--webhook",
                       f"http://127.0.0.1:{hook.server_address[1]}/services/T0/s3cret", cwd=stack["repo"], check=False)
    finally:
        hook.shutdown()
    assert proc.returncode == 1 and "s3cret" not in proc.stderr, proc.stderr   # nothing answers: unreachable
    assert [(path, body["status"]) for path, body in got] == [("/services/T0/s3cret", "unreachable")]
    assert len(argv) == 1 and "s3cret" not in argv[0], argv


def test_wrong_feedback_makes_the_alert_condition_true(stack: dict[str, Any]) -> None:
    split = build_path(stack["repo"], "datasets.digits-split")
    data = np.loadtxt(split / "test.csv", delimiter=",", dtype=np.float32)[:120]   # the server publishes from 100
    x, y = data[:, :-1], data[:, -1].astype(int)
    feedback = []
    for i in range(0, len(x), 20):
        rows = x[i:i + 20]
        resp = http("POST", f"{stack['server']}/v2/models/digits/infer",
                    {"id": f"req-{i}", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                                   "data": rows.reshape(-1).tolist()}]})
        assert resp["id"] == f"req-{i}"
        feedback.append({"id": resp["id"], "labels": [int((v + 1) % 10) for v in y[i:i + 20]]})  # all wrong
    out = http("POST", f"{stack['server']}/v2/models/digits/feedback", {"feedback": feedback})
    assert out == {"matched_rows": 120, "repeated_rows": 0, "unknown_ids": 0}
    out = http("POST", f"{stack['server']}/v2/models/digits/feedback", {"feedback": feedback})   # a retry
    assert out == {"matched_rows": 0, "repeated_rows": 120, "unknown_ids": 0}
    assert 'mlbuild_live_feedback_samples{model="digits"} 120.0' in http("GET", f"{stack['server']}/metrics")
    live = wait("live accuracy", lambda: query(stack, 'mlbuild_live_metric{model="digits",metric="accuracy"}'))
    assert float(live[0]["value"][1]) < 0.5
    rules = json.loads((stack["conf"] / "alerts.yml").read_text())["groups"][0]["rules"]
    live_rule = next(r for r in rules if r["alert"] == "MlbuildLiveMetricThresholdFailed"
                     and r["labels"]["metric"] == "accuracy")
    assert query(stack, live_rule["expr"]), "the alert expression is not true"
    alerts = wait("the alert pending", lambda: [a for a in http("GET", f"{stack['prom']}/api/v1/alerts")["data"]["alerts"]
                                               if a["labels"]["alertname"] == "MlbuildLiveMetricThresholdFailed"])
    assert alerts[0]["labels"]["model"] == "digits"
    assert alerts[0]["state"] in ("pending", "firing")   # pending for 10 minutes before it pages
    assert live_rule["for"] == "10m"


def test_generated_rules_and_dashboard_are_valid(stack: dict[str, Any]) -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(stack["conf"] / "alerts.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["promtool", "check", "config", str(stack["conf"] / "prometheus.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every metric the dashboard and the rules name is one the server or the monitor exports (the
    # drift gauges once the server has seen 500 rows)
    split = build_path(stack["repo"], "datasets.digits-split")
    x = np.resize(np.loadtxt(split / "test.csv", delimiter=",", dtype=np.float32)[:, :-1], (500, 64))
    http("POST", f"{stack['server']}/v2/models/digits/infer",
         {"inputs": [{"name": "input", "datatype": "FP32", "shape": [500, 64], "data": x.reshape(-1).tolist()}]})
    exposed = set()
    for url in (f"{stack['server']}/metrics", f"{stack['monitor']}/metrics"):
        wait(f"{url}", lambda: "mlbuild_" in http("GET", url))
        text = http("GET", url)
        exposed |= set(re.findall(r"^(mlbuild_[a-z_]+)", text, re.M))
        assert "_created" not in text, f"{url} exports *_created series"
    board = json.loads((stack["conf"] / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [r["expr"] for r in json.loads((stack["conf"] / "alerts.yml").read_text())["groups"][0]["rules"]]
    named = {m for e in exprs for m in re.findall(r"\b(mlbuild_[a-z_]+)", e)}
    assert named and named <= exposed, f"not exported: {sorted(named - exposed)}"


def _rule(stack: dict[str, Any], name: str) -> dict[str, Any]:
    rules = json.loads((stack["conf"] / "alerts.yml").read_text())["groups"][0]["rules"]
    return next(r for r in rules if r["alert"] == name)


def test_the_latency_rule_watches_every_inference_route(stack: dict[str, Any]) -> None:
    """It watched /v2/models/{name}/infer only: tritonclient with a model_version, and the v1
    route, were not in it."""
    rows = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    http("POST", f"{stack['server']}/v2/models/digits/versions/1/infer", rows)
    http("POST", f"{stack['server']}/v1/models/digits:predict", {"instances": [[0.0] * 64]})
    inner = re.search(r"rate\((mlbuild_request_duration_seconds_bucket\{.*\})\[5m\]", _rule(stack, "MlbuildHighLatency")["expr"])
    assert inner
    routes = wait("both routes scraped", lambda: (lambda got: got if {"/v2/models/{name}/versions/{version}/infer",
                                                                     "/v1/models/{name}:predict"} <= got else None)(
        {r["metric"]["route"] for r in query(stack, inner[1])}))
    assert "/v2/models/{name}/infer" in routes and not any("ready" in r or "health" in r for r in routes)


def test_a_dead_monitor_is_an_alert(stack: dict[str, Any]) -> None:
    """Last (it stops the monitor): the stale rule compared series a dead monitor no longer has."""
    stack["monitor_proc"].terminate()
    stack["monitor_proc"].wait(timeout=30)
    expr = _rule(stack, "MlbuildMonitorDown")["expr"]
    down = wait("the monitor seen down", lambda: query(stack, expr))
    assert down[0]["metric"]["job"] == "mlbuild-digits-monitor"
    assert not query(stack, _rule(stack, "MlbuildServerDown")["expr"])   # the server is still up
