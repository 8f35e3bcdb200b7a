"""The monitor against a real server (the serving runtime outside Nix): the suite's metrics, and a
note when the server serves another model than the one this monitor was built for."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mlbuild.runtime.monitor import Monitor
from tests.unit.conftest_serve import TOKENS_SOURCE, ServerProcess, build_package, digits_split, tokens_config

SUITE = '''\
from pathlib import Path
import numpy as np


def load(data: Path):
    a = np.loadtxt(data / "test.csv", delimiter=",", dtype=np.float32)
    return a[:, :-1], a[:, -1].astype(int)
'''


def spec(tmp_path: Path, pkg: Path, **extra: object) -> dict[str, object]:
    (tmp_path / "suite").mkdir(parents=True)
    (tmp_path / "suite" / "validate.py").write_text(SUITE)
    (tmp_path / "data").mkdir()
    _, _, x, y = digits_split()
    np.savetxt(tmp_path / "data" / "test.csv", np.column_stack([x, y]), delimiter=",", fmt="%.6g")
    return {"name": "digits", "suite": str(tmp_path / "suite"), "script": "validate.py",
            "dataset": str(tmp_path / "data"), "thresholds": {"accuracy": 0.5}, "task": "classification",
            "labels": [str(i) for i in range(10)], "package": str(pkg), "suite_version": "test", **extra}


def test_the_monitor_notes_a_server_serving_another_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pkg = build_package(tmp_path / "pkg")
    served = json.loads((pkg / "manifest.json").read_text())["hashes"]["model"]
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        url = f"http://{server.url}"
        same = Monitor(spec(tmp_path / "a", pkg, model_hash=served), url, None).run_once()
        assert same["model_hash"] == served and "expected_model_hash" not in same
        assert same["metrics"]["accuracy"] > 0.5
        caplog.set_level(logging.WARNING, logger="mlbuild.monitor")
        other = Monitor(spec(tmp_path / "b", pkg, model_hash="f" * 64), url, None)
        out = other.run_once()
        other.run_once()
        assert out["expected_model_hash"] == "f" * 64 and out["model_hash"] == served
        notes = [r.getMessage() for r in caplog.records if "not this build's" in r.getMessage()]
        assert notes == [f"note: {url} serves model {served[:16]}, not this build's {'f' * 16}: the metrics are the "
                         "served model's (deploy this build, or run the monitor of the commit that built the served "
                         "one)"]   # once, not every interval
    finally:
        server.stop()


def test_the_monitor_notes_each_deployment_of_another_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another model deployed, this build's deployed back, then the other again (a rollout and a
    rollback, twice): the second deployment of the other model was not noted, as the note was
    once per served hash for the monitor's lifetime."""
    ours, theirs = build_package(tmp_path / "ours"), build_package(tmp_path / "theirs", seed=1)
    expected = json.loads((ours / "manifest.json").read_text())["hashes"]["model"]
    other = json.loads((theirs / "manifest.json").read_text())["hashes"]["model"]
    assert expected != other
    servers = [ServerProcess(pkg, tmp_path / f"server-{i}").ready() for i, pkg in enumerate((ours, theirs))]
    try:
        ours_url, theirs_url = (f"http://{s.url}" for s in servers)
        mon = Monitor(spec(tmp_path / "m", ours, model_hash=expected), theirs_url, None)
        caplog.set_level(logging.WARNING, logger="mlbuild.monitor")
        for url in (theirs_url, theirs_url, ours_url, theirs_url, theirs_url):   # what the monitor's URL serves
            mon.url = url
            assert "error" not in mon.run_once()
        notes = [r.getMessage() for r in caplog.records if "not this build's" in r.getMessage()]
        assert notes == [f"note: {theirs_url} serves model {other[:16]}, not this build's {expected[:16]}: the metrics "
                         "are the served model's (deploy this build, or run the monitor of the commit that built the "
                         "served one)"] * 2
    finally:
        for server in servers:
            server.stop()


def test_the_monitor_says_when_the_server_stops_answering_and_when_it_is_back(tmp_path: Path) -> None:
    """A dead server left the last run's threshold_ok = 1 exported (reading as healthy), and a
    webhook user heard nothing: errors never reached it, and no alert was ever resolved."""
    import http.server
    import threading

    posts: list[dict[str, object]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")   # as Slack's webhooks answer: not JSON (the monitor crashed on it)

        def log_message(self, *args: object) -> None:
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    pkg = build_package(tmp_path / "pkg")
    server = ServerProcess(pkg, tmp_path / "server").ready()
    served = json.loads((pkg / "manifest.json").read_text())["hashes"]["model"]
    mon = Monitor(spec(tmp_path / "m", pkg, model_hash="f" * 64), f"http://{server.url}",
                  f"http://127.0.0.1:{hook.server_port}/")
    sample = mon.registry.get_sample_value
    try:
        assert "metrics" in mon.run_once() and posts == []           # fine from the start: nothing to say
        mon.thresholds = {"accuracy": 0.9999}
        mon.run_once()
        assert [p["status"] for p in posts] == ["alerting"]
        # which server, which model, and that it is not this monitor's build (a receiver watching
        # several deployments could not tell which one alerted, nor that a wrong build was deployed)
        assert posts[0]["url"] == f"http://{server.url}" and posts[0]["model_hash"] == served
        assert posts[0]["expected_model_hash"] == "f" * 64
        assert posts[0]["failed"] == [{"metric": "accuracy", "value": posts[0]["metrics"]["accuracy"], "op": ">=",
                                       "threshold": 0.9999, "ok": False}]
        server.stop()
        assert "error" in mon.run_once() and "error" in mon.run_once()
        assert [p["status"] for p in posts] == ["alerting", "unreachable"]   # once, not every interval
        assert sample("mlbuild_monitor_server_reachable", {"model": "digits"}) == 0
        assert sample("mlbuild_monitor_alerting", {"model": "digits"}) == 0
        assert not [m for m in mon.registry.collect() if m.name == "mlbuild_monitor_threshold_ok" and m.samples]
        server = ServerProcess(pkg, tmp_path / "server2").ready()
        mon.url, mon.thresholds = f"http://{server.url}", {"accuracy": 0.5}
        mon.run_once()
        assert [p["status"] for p in posts] == ["alerting", "unreachable", "resolved"]
        assert posts[2]["url"] == f"http://{server.url}" and posts[2]["model_hash"] == served
        assert sample("mlbuild_monitor_server_reachable", {"model": "digits"}) == 1
    finally:
        server.stop()
        hook.shutdown()


def test_a_wrong_url_names_the_request_and_the_server_s_answer(tmp_path: Path) -> None:
    """`--url http://HOST:PORT/v2` answered {"error": "HTTP Error 404: Not Found"}: no URL, no fix."""
    pkg = build_package(tmp_path / "pkg")
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        url = f"http://{server.url}/v2"
        out = Monitor(spec(tmp_path / "m", pkg), url, None).run_once()
        assert out["error"].startswith(f"GET {url}/v2/models/digits: HTTP 404 Not Found: no route GET "
                                       f"/v2/v2/models/digits"), out
        assert out["error"].endswith("; --url takes the server's root, e.g. http://HOST:PORT")
        server.stop()
        gone = Monitor(spec(tmp_path / "n", pkg), f"http://{server.url}", None).run_once()
        assert gone["error"].startswith(f"GET http://{server.url}/v2/models/digits: [Errno 111] Connection refused")
    finally:
        server.stop()


def test_the_monitor_sends_the_served_input_s_datatype(tmp_path: Path) -> None:
    """A model of INT64 token ids: the monitor sent every row as FP32, which the server refuses
    (400), so such a model read as unreachable for ever."""
    pkg = build_package(tmp_path / "pkg", name="bag", source=TOKENS_SOURCE, train_steps=0, params={"classes": 3},
                        extra_config=tokens_config())
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "validate.py").write_text(
        "import numpy as np\n\ndef load(data):\n"
        "    x = np.arange(60, dtype=np.int64).reshape(10, 6) % 50\n"
        "    return x, np.arange(10) % 3\n")
    (tmp_path / "data").mkdir()
    spec = {"name": "bag", "suite": str(tmp_path / "suite"), "script": "validate.py", "dataset": str(tmp_path / "data"),
            "thresholds": {"accuracy": 0.0}, "task": "classification", "labels": ["a", "b", "c"],
            "package": str(pkg), "suite_version": "test"}
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        out = Monitor(spec, f"http://{server.url}", None).run_once()
        assert "error" not in out, out
        assert 0.0 <= out["metrics"]["accuracy"] <= 1.0
    finally:
        server.stop()


def test_the_monitor_knows_the_datatypes_the_server_takes() -> None:
    """The monitor's runtime does not carry the server's modules: its own table must agree."""
    from mlbuild.runtime.monitor import OIP_DTYPES
    from mlbuild.runtime.serve.package import DATATYPES

    assert {k: np.dtype(v) for k, v in OIP_DTYPES.items()} == {k: np.dtype(v) for k, v in DATATYPES.items()}


def test_the_monitor_sends_fewer_rows_a_request_to_a_server_that_refuses_its_size(tmp_path: Path) -> None:
    """256 rows a request, always: over the server's max_body_bytes (8 MiB by default, which 256 rows
    of a 3x32x32 image exceed) every run was a 413, and the monitor never completed one."""
    pkg = build_package(tmp_path / "pkg")
    server = ServerProcess(pkg, tmp_path / "server", "--max-body-bytes", "20000").ready()
    try:
        mon = Monitor(spec(tmp_path / "m", pkg), f"http://{server.url}", None)
        first = mon.run_once()
        assert "error" not in first, first
        assert mon.batch < 256
        again = mon.run_once()   # the smaller size kept
        assert again["metrics"] == first["metrics"] and first["metrics"]["accuracy"] > 0.5
        whole = Monitor(spec(tmp_path / "w", pkg), f"http://{server.url}", None)
        whole.batch = 10**6   # split otherwise (halving from all rows at once): the same metrics
        assert whole.run_once()["metrics"] == first["metrics"]
    finally:
        server.stop()


def test_a_scrape_during_a_run_s_update_sees_a_whole_run(tmp_path: Path) -> None:
    """A run clears the last run's series, then sets its own: a scrape landing between the two
    saw no threshold_ok at all, which restarts the pending time of an alert with a `for:`."""
    import threading

    from prometheus_client import generate_latest

    pkg = build_package(tmp_path / "pkg")
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        mon = Monitor(spec(tmp_path / "m", pkg), f"http://{server.url}", None)
        assert "error" not in mon.run_once()
        scraped: list[str] = []
        scrape = threading.Thread(target=lambda: scraped.append(generate_latest(mon.registry).decode()))
        clear = mon.ok.clear

        def scrape_in_the_gap() -> None:
            clear()
            scrape.start()
            scrape.join(0.5)   # it waits for the run's update (without the wait: done, and empty)
            assert scrape.is_alive()

        mon.ok.clear = scrape_in_the_gap   # type: ignore[method-assign]
        assert "error" not in mon.run_once()
        scrape.join(10)
        for series in ("mlbuild_monitor_threshold_ok{", "mlbuild_monitor_metric{"):
            assert [s for s in scraped[0].splitlines() if s.startswith(series) and 'metric="accuracy"' in s], scraped
    finally:
        server.stop()


def test_the_monitor_scores_a_model_without_class_names_over_all_its_classes(tmp_path: Path) -> None:
    """Held-out rows of two of a 10-class model's classes, the model declaring no class names: the
    monitor took the model for a binary one (its classes were the targets') and every run failed on
    the predictions of the other classes ("Target is multiclass but average='binary'"); the class
    count comes from the package's probabilities output, as the validation build's does."""
    from mlbuild.runtime.validate import compute_metrics

    pkg = build_package(tmp_path / "pkg")
    outputs = json.loads((pkg / "model" / "config.json").read_text())["outputs"]
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        s = spec(tmp_path / "m", pkg, labels=None, outputs=outputs)
        (tmp_path / "m" / "suite" / "validate.py").write_text(SUITE.replace(
            "    return a[:, :-1], a[:, -1].astype(int)",
            "    a = a[a[:, -1] < 2]\n    return a[:, :-1], a[:, -1].astype(int)"))
        mon = Monitor(s, f"http://{server.url}", None)
        out = mon.run_once()
        assert "error" not in out, out
        assert not {"precision", "recall", "f1", "roc_auc"} & set(out["metrics"])
        served = mon.predict()["outputs"]["label"]
        assert out["metrics"] == compute_metrics("classification", mon.y, served, None, None, 10)["metrics"]
    finally:
        server.stop()
