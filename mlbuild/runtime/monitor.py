"""The monitor: the validation suite run against the live service, as Prometheus metrics.

"Monitoring just consists of running the validation suite in real time on the production
system, plus whatever alerts are needed." At each interval (or once) the monitor sends the
suite's held-out inputs to the server over its HTTP API (Open Inference Protocol v2, JSON),
computes the same metrics as the validation build (``validate.compute_metrics``: scikit-learn)
and exports them on its own ``/metrics`` port, labelled by the live model's hash and the suite
version, with a threshold status per metric. A metric breaking its threshold is logged and, with
``--webhook``, POSTed as JSON.

Runs in the toolchain (``bin/monitor`` of ``NAME.monitor``, built by nix/monitor.nix).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

__all__ = ["shown", "WEBHOOK_ENV", "main", "Monitor"]

log = logging.getLogger("mlbuild.monitor")


#: Open Inference Protocol datatypes and the numpy types the monitor sends them as (JSON tensors; the
#: server's modules are not in the monitor's runtime: a test keeps it equal to serve/package.py's).
OIP_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
              "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
              "FP32": "float32", "FP64": "float64"}

# Marks the suite's requests as probes: the server keeps them out of its live drift and feedback
# windows (PROBE_HEADER in mlbuild/runtime/serve/names.py).
_HEADERS = {"content-type": "application/json", "mlbuild-probe": "validation-suite"}


def _said(raw: bytes) -> str:
    """The start of an answer, for an error message (a page of HTML is not worth more)."""
    text = raw[:200].decode("utf-8", "replace")
    return repr(text) + (" (and more)" if len(raw) > 200 else "")


#: The longest interval between runs: a week (longer ones overflowed the wait's clock).
MAX_INTERVAL = 7 * 24 * 3600.0


def _read_within(resp: Any, deadline: float, timeout: float) -> bytes:
    """The whole body of ``resp``, or TimeoutError once ``deadline`` (monotonic) has passed: the
    socket's timeout bounds each read, not the answer (a server sending a byte every few seconds
    held a run for ever)."""
    parts = []
    while chunk := resp.read1(65536):
        parts.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the answer took longer than {timeout:g} s")
    if getattr(resp, "length", None):   # EOF before its Content-Length: read() raises this, read1() not
        raise http.client.IncompleteRead(b"".join(parts), resp.length)
    return b"".join(parts)


class TooLarge(OSError):
    """The server refused a request body over its limit (413, ``max_body_bytes``)."""


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    """The JSON answer; OSError naming the request (method and URL) and what went wrong: the
    server's own error, a broken or non-HTTP reply, a timeout, an answer that is not JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=_HEADERS)
    try:
        deadline = time.monotonic() + timeout
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = _read_within(resp, deadline, timeout)
    except urllib.error.HTTPError as e:
        try:
            said = str(json.loads(e.read()).get("error", ""))[:300]
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            said = ""
        hint = ("; --url takes the server's root, e.g. http://HOST:PORT" if e.code == 404
                and urllib.parse.urlsplit(url).path.count("/v2") > 1 else "")
        error = TooLarge if e.code == 413 else OSError
        raise error(f"{method} {url}: HTTP {e.code} {e.reason}{': ' + said if said else ''}{hint}") from None
    except urllib.error.URLError as e:
        raise OSError(f"{method} {url}: {e.reason}") from None
    except http.client.IncompleteRead as e:   # http.client's errors are not OSErrors (but RemoteDisconnected)
        more = f", {e.expected} more expected" if e.expected is not None else ""
        raise OSError(f"{method} {url}: the server cut its answer short ({len(e.partial)} bytes read{more})") from None
    except http.client.BadStatusLine as e:   # RemoteDisconnected is one, and an OSError
        if isinstance(e, http.client.RemoteDisconnected):
            raise OSError(f"{method} {url}: the server closed the connection without answering") from None
        line = str(e.args[0] if e.args else "")[:80]
        raise OSError(f"{method} {url}: the answer is not HTTP (it starts {line!r}): is --url the "
                      f"model server's address?") from None
    except (http.client.HTTPException, OSError) as e:   # a timeout reading the answer, a reset
        raise OSError(f"{method} {url}: {e or type(e).__name__}") from None
    try:
        return json.loads(raw or b"null")
    except (ValueError, RecursionError):   # RecursionError: nested deeper than the parser goes
        raise OSError(f"{method} {url}: the answer is not JSON: {_said(raw)}") from None


def _registry() -> Any:
    """A Prometheus registry whose scrapes wait while a run updates its gauges (``updating``): a
    run clears the last run's series before setting its own, and a scrape between the two saw no
    ``threshold_ok`` at all, which resets the pending time of any alert with a ``for:``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    class Registry(CollectorRegistry):
        def __init__(self) -> None:
            super().__init__()
            self.updating = threading.Lock()

        def collect(self) -> Iterator[Metric]:
            with self.updating:
                families = list(super().collect())
            yield from families

    return Registry()


class Monitor:
    def __init__(self, spec: dict[str, Any], url: str, webhook: str | None, batch: int = 256,
                 timeout: float = 30.0, once: bool = False) -> None:
        from prometheus_client import Counter, Gauge

        from .prepare import load_module

        self.spec, self.url, self.webhook, self.batch = spec, url.rstrip("/"), webhook, batch
        self.once = once   # --once: no later run posts an undelivered notice again
        self.timeout = timeout   # seconds for each request to the server
        self._told: str | None = None   # the served model hash a mismatch note was logged for
        self.name = spec["name"]
        if spec.get("heldout"):   # the suite's load(data), run when the monitor was built
            import numpy as np

            held = Path(spec["heldout"])
            self.x, self.y = np.load(held / "inputs.npy"), np.load(held / "targets.npy")
        else:   # inputs numpy cannot store without pickle: the suite reads the dataset here
            suite = load_module(spec["suite"], spec["script"])
            self.x, self.y = suite.load(Path(spec["dataset"]))
        self.thresholds: dict[str, Any] = spec["thresholds"]
        self.suite_version: str = spec["suite_version"]
        self.registry = _registry()
        labels = ["model", "model_hash", "suite_version", "metric"]
        self.metric = Gauge("mlbuild_monitor_metric", "Validation-suite metric computed against the live server.",
                            labels, registry=self.registry)
        self.ok = Gauge("mlbuild_monitor_threshold_ok", "1 when the metric meets its threshold, 0 when not.",
                        labels, registry=self.registry)
        self.threshold = Gauge("mlbuild_monitor_threshold", "The metric's threshold (from mlbuild.toml).",
                               ["model", "metric", "op"], registry=self.registry)
        self.runs = Counter("mlbuild_monitor_runs", "Suite runs against the live server.", ["model", "outcome"],
                            registry=self.registry)
        self.last = Gauge("mlbuild_monitor_last_run_timestamp_seconds",
                          "When a suite run last completed (a run that could not reach or read the server does not "
                          "count: see mlbuild_monitor_runs_total{outcome=\"error\"}).", ["model"], registry=self.registry)
        # MlbuildMonitorStale counts from here until a run completes: a monitor that never
        # completed one (a wrong --url) has no last run to be stale
        self.started = Gauge("mlbuild_monitor_start_time_seconds", "When the monitor started.", ["model"],
                             registry=self.registry)
        self.started.labels(self.name).set(time.time())
        self.samples = Gauge("mlbuild_monitor_samples", "Held-out samples sent per run.", ["model"],
                             registry=self.registry)
        self.alerting = Gauge("mlbuild_monitor_alerting", "1 while a metric breaks its threshold.", ["model"],
                              registry=self.registry)
        self.reachable = Gauge("mlbuild_monitor_server_reachable",
                               "1 when the last run reached the server and read its answers, 0 when not.", ["model"],
                               registry=self.registry)
        self._state: str | None = None   # "ok", "alerting", "unreachable": webhooks on changes

    def predict(self) -> dict[str, Any]:
        """The served model's hash and its outputs for the suite's inputs; OSError naming the
        request when the server cannot be reached or answers what the protocol does not say."""
        import numpy as np

        meta_url = f"{self.url}/v2/models/{self.name}"
        meta = _http("GET", meta_url, timeout=self.timeout)
        try:
            spec = meta["inputs"][0]
            name, datatype = str(spec["name"]), spec.get("datatype", "FP32")
            model_hash = str((meta.get("hashes") or {}).get("model", "unknown"))
        except (KeyError, IndexError, TypeError, AttributeError):
            raise OSError(f"GET {meta_url}: the answer is not a model's metadata (no inputs[0].name): "
                          f"{_said(json.dumps(meta).encode())}") from None
        if not isinstance(datatype, str) or datatype not in OIP_DTYPES:
            raise ValueError(f"GET {meta_url}: the server's input {name!r} has datatype {datatype!r}, which the monitor "
                             f"cannot send (it sends {', '.join(OIP_DTYPES)})")
        outs: dict[str, list[Any]] = {}
        infer_url = f"{self.url}/v2/models/{self.name}/infer"
        i = 0
        while i < len(self.x):
            # The suite's rows in the served input's datatype (token ids stay exact integers).
            rows = np.asarray(self.x[i:i + self.batch]).astype(OIP_DTYPES[datatype], copy=False)
            body = {"id": f"monitor-{int(time.time())}-{i}",
                    "inputs": [{"name": name, "datatype": datatype, "shape": list(rows.shape),
                                "data": rows.reshape(-1).tolist()}]}
            try:
                resp = _http("POST", infer_url, body, timeout=self.timeout)
            except TooLarge:
                # Over the server's max_body_bytes (8 MiB by default: 256 rows of a 3x32x32 image are
                # 15 MiB of JSON): fewer rows a request, from now on; one row too many is an error.
                if len(rows) == 1:
                    raise
                self.batch = (len(rows) + 1) // 2
                log.info("monitor: %s refuses %d rows in one request as too large: sending %d a request",
                         infer_url, len(rows), self.batch)
                continue
            i += len(rows)
            try:
                for o in resp["outputs"]:
                    out = np.asarray(o["data"]).reshape(o["shape"])
                    if len(out) != len(rows):
                        raise ValueError(f"{len(out)} rows")
                    outs.setdefault(str(o["name"]), []).append(out)
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
                raise OSError(f"POST {infer_url}: the answer is not {len(rows)} rows of outputs ({e!r}): "
                              f"{_said(json.dumps(resp).encode())}") from None
        task = self.spec.get("task", "classification")
        if task == "classification" and "label" not in outs:
            raise OSError(f"POST {infer_url}: the answer has no \"label\" output (it has "
                          f"{', '.join(map(repr, outs)) or 'none'}): is --url this model's server?")
        if not outs or any(sum(map(len, v)) != len(self.x) for v in outs.values()):
            raise OSError(f"POST {infer_url}: the answers do not give every output for every row")
        return {"hash": model_hash, "task": task, "outputs": {k: np.concatenate(v) for k, v in outs.items()}}

    def run_once(self) -> dict[str, Any]:
        from .validate import check_thresholds, class_count, compute_metrics

        try:
            live = self.predict()
            o = live["outputs"]
            try:
                if live["task"] == "classification":
                    report = compute_metrics("classification", self.y, o["label"], o.get("probabilities"),
                                             self.spec.get("labels"),
                                             class_count(self.spec.get("labels"), self.spec.get("outputs")))
                else:
                    report = compute_metrics("regression", self.y, next(iter(o.values())))
            except (KeyError, IndexError, TypeError, ValueError) as e:   # labels it does not know, NaNs
                raise ValueError(f"POST {self.url}/v2/models/{self.name}/infer: the suite cannot score the "
                                 f"answers: {e!r}") from None
        # http.client's errors for a reply it cannot parse are not all OSErrors (_http turns them
        # into OSErrors naming the request; this is the net under it)
        except (OSError, http.client.HTTPException, KeyError, ValueError) as e:
            with self.registry.updating:
                self.runs.labels(self.name, "error").inc()
                self.reachable.labels(self.name).set(0)
                # The last run's metrics say nothing about a server that does not answer: drop them
                # (a threshold_ok of 1 would read as healthy) until a run succeeds again.
                self.metric.clear()
                self.ok.clear()
                self.alerting.labels(self.name).set(0)
            log.error("monitor: %s unreachable or answered wrongly: %s", self.url, e)
            self._transition("unreachable", {"model": self.name, "status": "unreachable", "url": self.url,
                                             "error": str(e)})
            return {"error": str(e)}
        checks = check_thresholds(report["metrics"], self.thresholds)
        expected = self.spec.get("model_hash")
        if live["hash"] == expected:   # this build's model again: another served later is news again
            self._told = None
        elif expected and live["hash"] != self._told:
            self._told = live["hash"]   # once per deployment of another model, not every interval
            log.warning("note: %s serves model %s, not this build's %s: the metrics are the served model's "
                        "(deploy this build, or run the monitor of the commit that built the served one)",
                        self.url, live["hash"][:16], expected[:16])
        base = [self.name, live["hash"], self.suite_version]
        failed = [c for c in checks if not c["ok"]]
        with self.registry.updating:   # a scrape sees the last run's series or this one's, never none
            self.reachable.labels(self.name).set(1)
            self.metric.clear()
            self.ok.clear()
            for k, v in report["metrics"].items():
                self.metric.labels(*base, k).set(v)
            for c in checks:
                self.ok.labels(*base, c["metric"]).set(1 if c["ok"] else 0)
                self.threshold.labels(self.name, c["metric"], c["op"]).set(c["threshold"])
            self.alerting.labels(self.name).set(1 if failed else 0)
            self.runs.labels(self.name, "ok").inc()
            self.last.labels(self.name).set(time.time())
            self.samples.labels(self.name).set(len(self.y))
        # what a receiver needs to act: which server, which model (and whether it is this build's)
        payload = {"model": self.name, "url": self.url, "model_hash": live["hash"],
                   **({"expected_model_hash": expected} if expected and expected != live["hash"] else {}),
                   "suite_version": self.suite_version, "metrics": report["metrics"]}
        if failed:
            text = ", ".join(f"{c['metric']} {c['value']} (threshold {c['op']} {c['threshold']})" for c in failed)
            log.warning("ALERT %s (model %s): threshold broken: %s", self.name, live["hash"][:16], text)
            # every run while alerting (a reminder, as Alertmanager repeats), then one "resolved"
            self._state = "alerting"
            self._webhook({**payload, "status": "alerting", "failed": failed})
        else:
            log.info("%s (model %s): %s", self.name, live["hash"][:16],
                     ", ".join(f"{k}={v:.4f}" for k, v in sorted(report["metrics"].items())))
            self._transition("ok", {**payload, "status": "resolved"})
        return {"metrics": report["metrics"], "checks": checks, "model_hash": live["hash"],
                **({"expected_model_hash": expected} if expected and expected != live["hash"] else {})}

    def _transition(self, state: str, payload: dict[str, Any]) -> None:
        """POST ``payload`` when the monitor's state changes to ``state`` ("unreachable" once
        when the server stops answering; "ok" as "resolved" after an alert or an outage). The
        change is recorded once the POST is delivered: until then each run posts it again."""
        if self._state != state and not (state == "ok" and self._state is None):
            if not self._webhook(payload):
                log.warning("webhook: the %s notice is not delivered%s", payload.get("status", state),
                            " (--once: no later run posts it again)" if self.once
                            else ": posting it again at the next run")
                return
        self._state = state

    def _webhook(self, payload: dict[str, Any]) -> bool:
        """POST ``payload`` to the webhook; whether it was delivered (True with no webhook). A 307
        or 308 redirect is followed with the POST; a 301, 302 or 303 (which urllib turned into a
        GET without the payload) is an error naming where it leads."""
        if not self.webhook:
            return True
        data = json.dumps(payload, default=float).encode()
        url = self.webhook
        for _ in range(_REDIRECTS + 1):
            req = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json"})
            try:   # what the webhook answers is its own business (Slack's says "ok"): not even read
                with _NO_REDIRECTS.open(req, timeout=10):
                    pass
                return True
            except urllib.error.HTTPError as e:
                location = e.headers.get("location") if e.headers else None
                e.close()
                if e.code in (307, 308) and location:   # "repeat the request there": the POST
                    target = urllib.parse.urljoin(url, location)
                    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):   # file:///dev/zero
                        log.error("webhook POST %s failed: it redirects (HTTP %d) to %s, which is not an http(s) "
                                  "URL", shown(url), e.code, shown(target))
                        return False
                    url = target
                    continue
                if e.code in (301, 302, 303) and location:
                    final = urllib.parse.urljoin(url, location)
                    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(final)
                    fix = (f"the same address with {b.scheme}://" if a._replace(scheme=b.scheme) == b
                           else "the address it redirects to (its Location header; paths are not logged, as a "
                                "webhook's is often its secret)")
                    log.error("webhook POST %s failed: it redirects (HTTP %d) to %s, and a POST redirected so "
                              "becomes a GET without the alert; give --webhook %s", shown(url), e.code, shown(final),
                              fix)
                else:
                    log.error("webhook POST %s failed: HTTP %d %s", shown(url), e.code, e.reason)
                return False
            except (OSError, http.client.HTTPException, ValueError) as e:   # a receiver answering garbage
                log.error("webhook POST %s failed: %s", shown(url), str(e).replace(url, shown(url)) or type(e).__name__)
                return False
        log.error("webhook POST %s failed: more than %d redirects (from %s)", shown(url), _REDIRECTS,
                  shown(self.webhook))
        return False


_REDIRECTS = 5
WEBHOOK_ENV = "MLBUILD_MONITOR_WEBHOOK"


def shown(url: str) -> str:
    """``url`` as logs show it: scheme, host and port, the rest hidden. A webhook's path is often
    its secret (Slack's, Teams'), and logs travel further than the command line."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    rest = "/..." if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{rest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects become HTTPErrors, for the webhook to follow (urllib's handler turns a redirected
    POST into a GET without its body, or refuses a 307)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)


def http_url(value: str) -> str:
    """``value`` if it is an http(s) URL with a host, else ValueError naming it."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host; "
                         f"give one like http://127.0.0.1:8080")
    return value


def _url_arg(value: str) -> str:
    try:
        return http_url(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def interval_seconds(value: str | float) -> float:
    """The seconds between runs: above zero and at most ``MAX_INTERVAL`` (``inf`` or 1e10 broke the
    wait's clock after the first run); ValueError naming the value. The monitor's flag and the
    driver's (`mlbuild monitor`, `monitor config`) both check with this."""
    try:
        x = float(value)
    except ValueError:
        x = 0.0
    if not (0 < x <= MAX_INTERVAL):
        raise ValueError(f"{value!r} is not a number of seconds above 0 and at most a week "
                         f"({MAX_INTERVAL:.0f}); give one like 60")
    return x


def _positive(value: str) -> float:
    try:
        return interval_seconds(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number in 0..65535")
    return int(value)


def main(argv: list[str] | None = None, spec_path: str | None = None) -> int:
    """The monitor's command line; the built ``bin/monitor`` passes its own spec as ``spec_path``
    (so its --help shows no --spec to give)."""
    p = argparse.ArgumentParser(prog="monitor", description="Run the validation suite against a live server.")
    if spec_path is None:
        p.add_argument("--spec", required=True, help="the monitor spec (written by the Nix build)")
    p.add_argument("--url", required=True, type=_url_arg, help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--once", action="store_true", help="run the suite once, print the result as JSON and exit")
    p.add_argument("--interval", type=_positive, default=60.0, help="seconds between runs (default 60)")
    p.add_argument("--host", default="127.0.0.1", help="address of the monitor's own /metrics (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=9109, help="port of the monitor's own /metrics (default 9109; 0: a free one, logged)")
    p.add_argument("--webhook", type=_url_arg, default=os.environ.get(WEBHOOK_ENV) or None,
                   help="POST JSON here: every run while a metric breaks its threshold (status alerting), once when "
                        f"the server stops answering (unreachable), once when it is fine again (resolved); default: "
                        f"${WEBHOOK_ENV}, which keeps a secret URL off the command line (logs show its host only)")
    args = p.parse_args(argv)
    # Set by platforms for gunicorn's workers, often for every service: prometheus_client, once
    # imported, kept every sample in files there, and one missing or read-only ended the monitor with
    # a traceback. The monitor is one process with a registry of its own.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        os.environ.pop(name, None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path or args.spec).read_text())
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series beside the runs counter
    mon = Monitor(spec, args.url, args.webhook, once=args.once)
    try:
        return _serve(mon, args)
    except KeyboardInterrupt:   # Ctrl-C, how a monitor in a terminal is stopped: not a traceback
        log.info("monitor of %s: interrupted, stopped", mon.name)
        return 130


def _serve(mon: Monitor, args: argparse.Namespace) -> int:
    """Run ``mon`` once (``--once``) or every ``--interval``, its metrics on ``--host``:``--port``."""
    if args.once:
        result = mon.run_once()
        print(json.dumps(result, indent=2, sort_keys=True, default=float))
        return 1 if "error" in result or any(not c["ok"] for c in result.get("checks", [])) else 0
    from prometheus_client import start_http_server

    try:
        served = start_http_server(args.port, addr=args.host, registry=mon.registry)
    except OSError as e:
        print(f"Error: cannot serve the monitor's /metrics on {args.host}:{args.port} ({e.strerror or e}); "
              f"pass another --port or --host", file=sys.stderr)
        return 2
    # the port bound, which --port 0 leaves to the system (prometheus-client before 0.17 returns None)
    port = served[0].server_port if isinstance(served, tuple) else args.port
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("monitor of %s: metrics on http://%s:%d/metrics, every %g s against %s",
             mon.name, host, port, args.interval, args.url)
    stop = threading.Event()
    while not stop.is_set():
        try:
            mon.run_once()
        except Exception:   # a monitor that stops is an outage of its own: log it, run again
            log.exception("monitor: the run against %s failed; running again in %s s", args.url, args.interval)
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -E: the caller's PYTHONPATH (a dev shell's, another project's) and PYTHONHOME are not read, so the
# toolchain's own wheels are what runs, as in the build and the image; -s: no user site-packages;
# -B: no bytecode written (-E drops PYTHONDONTWRITEBYTECODE: as root, with no Nix daemon, the
# store's folders are writable, and __pycache__ went into the runtime's and the code's store paths).
SCRIPT = """#!{python} -EsB
# Monitor the {name} model: its validation suite against a live server (see --help).
import sys
sys.path.insert(0, {runtime!r})
from mlbuild.runtime.monitor import main
sys.exit(main(sys.argv[1:], spec_path={spec!r}))
"""


def build_main() -> None:
    """Builder of ``NAME.monitor``: the spec (suite, held-out data, thresholds) and bin/monitor."""
    import os

    from .hashing import tree_digest, tree_hashes
    from .stagespec import load_spec

    spec = load_spec()
    out = Path(os.environ["out"])
    (out / "bin").mkdir(parents=True)
    files = tree_hashes(Path(spec["suite"]))
    config = json.loads((Path(spec["package"]) / "model" / "config.json").read_text())
    manifest = json.loads((Path(spec["package"]) / "manifest.json").read_text())
    monitor = {"name": spec["name"], "suite": spec["suite"], "script": spec["script"],
               "thresholds": spec["thresholds"], "task": config.get("task", "classification"),
               "labels": config.get("labels"), "package": spec["package"],
               "outputs": config.get("outputs"),   # the class count, where no labels give it
               "model_hash": manifest.get("hashes", {}).get("model"),
               "suite_version": tree_digest(files)[:16]}
    # The held-out rows the suite loads, not the dataset: a split holds the training rows too, and
    # the monitor (its closure, its image) should carry no more data than it sends.
    import numpy as np

    from .prepare import load_module

    x, y = load_module(spec["suite"], spec["script"]).load(Path(spec["dataset"]))
    try:
        (out / "heldout").mkdir()
        np.save(out / "heldout" / "inputs.npy", np.asarray(x), allow_pickle=False)
        np.save(out / "heldout" / "targets.npy", np.asarray(y), allow_pickle=False)
        monitor["heldout"] = str(out / "heldout")
    except ValueError:   # object arrays (numpy would pickle them): keep reading the dataset
        shutil.rmtree(out / "heldout")
        monitor["dataset"] = spec["dataset"]
    (out / "monitor.json").write_text(json.dumps(monitor, indent=2, sort_keys=True) + "\n")
    script = out / "bin" / "monitor"
    script.write_text(SCRIPT.format(python=spec["python"], name=spec["name"], runtime=spec["runtime"],
                                    spec=str(out / "monitor.json")))
    script.chmod(0o555)
