"""Experiments: `mlbuild exp run NAME --set k=v` builds a variant without editing files.

A variant is the model with some params overridden (``mkProject { overrides = ...; }``): a new
store path, so going back to an earlier param set is a cache hit, not a retrain. Runs are
recorded in ``.mlbuild/experiments/NAME.jsonl`` with the git commit they ran at; ``exp show``
lists the variants. Values are shown as ``--set`` takes them (TOML: ``true``, ``"name"``, ``[1, 2]``).
A model with a validation suite gets each variant's held-out metrics as well (its validation
report, built with the variant).
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import _nix, atomic, git
from .build import Progress, Summary, build_targets, check_model, validation_table
from .config import STATE_NAME, Project, find_date, state_dir
from .errors import ConfigError
from .metrics import heldout

__all__ = ["parse_sets", "split_sets", "typed_overrides", "variant_overrides", "run", "show", "Variant", "format_value", "describe"]


def format_value(value: Any) -> str:
    """A param's value as ``--set`` takes it (TOML), not as Python prints it."""
    return json.dumps(value, ensure_ascii=False)


def describe(overrides: dict[str, Any]) -> str:
    """``lr=0.004 epochs=5``, or ``(as configured)``."""
    return " ".join(f"{k}={format_value(v)}" for k, v in sorted(overrides.items())) or "(as configured)"


def split_sets(sets: Sequence[str]) -> dict[str, str]:
    """``["lr=0.01", "name=x"]`` -> ``{"lr": "0.01", "name": "x"}``, the values as typed."""
    out: dict[str, str] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=0.01")
        if key.strip() in out:
            raise ConfigError(f"--set {key.strip()} is given twice ({out[key.strip()]} and {value}); give it once")
        out[key.strip()] = value
    return out


def _value(key: str, text: str) -> Any:
    """A --set value: TOML syntax, else the text as a string. TOML's nan and inf are refused:
    they reach Nix as JSON, which has neither, and no hyper-parameter means them."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text

    def finite(v: Any) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, list):
            return all(finite(x) for x in v)
        return all(finite(x) for x in v.values()) if isinstance(v, dict) else True

    if find_date(value, []) is not None:   # json.dumps of it was a TypeError traceback
        raise ConfigError(f"--set {key}={text}: a TOML date or time is not a parameter value Nix can read; "
                          f"quote it for the text: --set '{key}=\"{text}\"'")
    if not finite(value):
        raise ConfigError(f"--set {key}={text}: NaN and infinity are not parameter values; give a finite number "
                          f"(or quote it, --set '{key}=\"{text}\"', for the text)")
    return value


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.01", "epochs=5", "name=x"]`` -> typed values (TOML syntax, else a string)."""
    return {key: _value(key, text) for key, text in split_sets(sets).items()}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean (true or false)"
    if isinstance(value, (int, float)):
        return "an integer" if isinstance(value, int) else "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a table" if isinstance(value, dict) else type(value).__name__   # TOML dates and times


def typed_overrides(model: str, params: dict[str, Any], overrides: dict[str, Any],
                    raw: dict[str, str]) -> dict[str, Any]:
    """``overrides`` in the types of the configured ``params``: an integer where a number is
    configured becomes a float, text where a string is configured stays text (``--set name=123``);
    any other mismatch (``--set lr=abc``, ``--set epochs=1.5``) is a ConfigError naming both."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        have = params[key]
        if isinstance(have, str):
            out[key] = value if isinstance(value, str) else raw[key]
        elif isinstance(have, float) and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        elif _kind(value) == _kind(have):
            out[key] = value
        else:
            example = "" if isinstance(have, dict) else f", e.g. --set {key}={json.dumps(have)}"
            raise ConfigError(f"--set {key}={raw[key]}: [models.{model}.params].{key} is {_kind(have)} "
                              f"({json.dumps(have)} in mlbuild.toml), not {_kind(value)}; give {_kind(have)}{example}")
        _check_64_bits(key, raw[key], out[key])
    return out


def _check_64_bits(key: str, text: str, value: Any) -> None:
    """Nix's integers are 64-bit: it read 2**63 as -2**63 and larger ones as floats. Checked on the
    typed value: a string param keeps the digits as text, a number param takes them as a float."""
    if isinstance(value, int) and not -2**63 <= value < 2**63:
        raise ConfigError(f"--set {key}={text}: {value} is beyond the 64-bit integers Nix has (it would reach the "
                          f"training as the float {float(value):g}); give an integer from -2**63 to 2**63-1")
    for v in value if isinstance(value, list) else value.values() if isinstance(value, dict) else ():
        _check_64_bits(key, text, v)


def changed_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that change a param: `--set lr=0.0030` where lr = 0.003 is the configured
    model (the same derivation), not a variant whose lr `exp show` marks as set."""
    return {k: v for k, v in overrides.items() if not (v == params.get(k) and type(v) is type(params.get(k)))}


def _log(project: Project, model: str, write: bool = True) -> Path:
    """The experiment log (made ready to write when ``write``: `exp show` in a read-only checkout reads it)."""
    return (state_dir(project.root) if write else project.root / STATE_NAME) / "experiments" / f"{model}.jsonl"


def variant_overrides(project: Project, model: str, sets: Sequence[str]) -> dict[str, Any]:
    """The params ``--set`` changes, typed as mlbuild.toml's (ConfigError for a param it does not
    have or a value of another type)."""
    check_model(project, model)
    configured = project.raw["models"][model].get("params") or {}
    raw = split_sets(sets)
    overrides = {key: _value(key, text) for key, text in raw.items()}
    unknown = sorted(set(overrides) - set(configured))
    if unknown:
        have = f"params: {', '.join(sorted(configured))}" if configured else "it has none"
        raise ConfigError(f"--set names {', '.join(unknown)}, which [models.{model}.params] does not have; {have}")
    return changed_params(configured, typed_overrides(model, configured, overrides, raw))


def run(project: Project, model: str, sets: Sequence[str], *, allow_dirty: bool = False,
        on_progress: Callable[[Progress], None] | None = None) -> tuple[Summary, dict[str, Any]]:
    models = project.raw.get("models", {})
    overrides = variant_overrides(project, model, sets)
    # A model with a validation suite: the variant's held-out metrics too (its validation report;
    # the training log's metrics are on training data), so variants are compared on what counts.
    validated = validation_table(project, model) is not None
    targets = [f"{model}.model", *([f"{model}.validation.report"] if validated else [])]
    summary = build_targets(project, targets, allow_dirty=allow_dirty,
                            overrides={model: {"params": overrides}} if overrides else {},
                            on_progress=on_progress)
    path = summary.outputs[0].path
    params = {**models[model].get("params", {}), **overrides}
    record = {"model": model, "overrides": overrides, "params": params, "path": path,
              "status": "cached" if f"{model}.model" in summary.present else "built", "time": time.time(),
              "git_rev": git.head(project.root), "dirty": summary.dirty}
    if validated:
        record["report"] = summary.outputs[1].path
    _append(_log(project, model), record)
    return summary, record


def _append(log: Path, record: dict[str, Any]) -> None:
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):   # a file, or a link to nothing: a traceback after the build
        raise ConfigError(f"{log.parent} is not a folder, so the run (built: {record['path']}) cannot be recorded "
                          f"there for `mlbuild exp show`; move it away (`mv {log.parent} {log.parent}.old`) and run "
                          f"the same `mlbuild exp run` again (a cache hit, then recorded)") from None
    atomic.append_line(log, json.dumps(record, sort_keys=True))


@dataclass(frozen=True)
class Variant:
    overrides: dict[str, Any]
    params: dict[str, Any]
    path: str
    status: str
    runs: int
    metrics: dict[str, float]   # the training log's final metrics (on training data)
    commit: str | None = None   # the commit of its first recorded run (12 hex digits)
    dirty: bool = False         # built from uncommitted files (--allow-dirty)
    held_out: dict[str, float] = field(default_factory=dict)   # its validation report's metrics
    data: str | None = None     # the training datasets' hashes, shortened (a data change shows here)
    heldout_data: str | None = None   # the samples its validation report scored (their hash)


def show(project: Project, model: str, notes: list[str] | None = None) -> list[Variant]:
    """``model``'s variants, from its experiment log; a line of the log that is no record (torn by a
    run killed while writing it, or edited) is left out, and said so in ``notes``. A model that
    mlbuild.toml no longer declares (renamed or removed) still shows the runs its log holds."""
    log = _log(project, model, write=False)
    if model not in (project.raw.get("models") or {}):
        if not log.is_file() or "/" in model or model.startswith("."):   # `exp show ../x` is no model's log
            check_model(project, model)   # refused, naming today's models
        elif notes is not None:
            notes.append(f"note: mlbuild.toml no longer declares [models.{model}] (renamed or removed): these are the "
                         f"runs {log} recorded; a renamed model's later runs are under its new name")
    if not log.exists():
        return []
    by_path: dict[str, list[dict[str, Any]]] = {}
    bad = []
    for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
            path, _, _, _ = rec["path"], rec["overrides"], rec["params"], rec["status"]   # what a row shows
            by_path.setdefault(str(path), []).append(rec)
        except (ValueError, TypeError, KeyError):
            if line.strip():
                bad.append(number)
    if bad and notes is not None:
        notes.append(f"note: {log} line{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:10]))}"
                     f"{', ...' if len(bad) > 10 else ''} {'are' if len(bad) > 1 else 'is'} not a record of a run "
                     "(torn or edited), left out")
    variants = []
    for path, recs in by_path.items():
        metrics: dict[str, float] = {}
        files = Path(_nix.real_path(path))   # in a runner's own store (NIX_CONFIG, NIX_REMOTE): there
        mfile = files / "metrics.json"
        if mfile.exists():
            final = json.loads(mfile.read_text()).get("final", {})
            metrics = {k: v for k, v in final.items() if k not in ("epoch", "epochs")}
        last = recs[-1]
        commit = next((r["git_rev"] for r in recs if r.get("git_rev")), None)
        report = next((r["report"] for r in reversed(recs) if r.get("report")), None)
        scored = _read(Path(_nix.real_path(report)) / "metrics.json") if report else {}
        variants.append(Variant(last["overrides"], last["params"], path, last["status"], len(recs), metrics,
                                commit[:12] if commit else None, any(r.get("dirty") for r in recs),
                                scored.get("metrics", {}), _data(files),
                                heldout(scored) if scored.get("metrics") and heldout(scored) != "-" else None))
    return variants


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):   # collected by a Nix gc, or not there: no numbers to show
        return {}
    return data if isinstance(data, dict) else {}


def _data(model_path: Path) -> str | None:
    """The training data a variant saw: its datasets' hashes (8 hex digits each), from provenance."""
    datasets = _read(model_path / "provenance.json").get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        return None
    # an older mlbuild's provenance may have no hash ("sha256": null), which printed as "None"
    return ",".join(str((d or {}).get("sha256") or "?")[:8] for _, d in sorted(datasets.items()))
