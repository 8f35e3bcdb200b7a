"""`mlbuild init`: a new project that builds as it is, for a classifier over one CSV file.

The files are those of examples/cancer, made generic: a raw dataset (the CSV: numeric features,
then the class in the last column, a number 0..K-1 or a name), a seeded stratified split (prepare.py), an MLP
that standardises its inputs itself (model.py, so the server takes raw features), the validation
suite on the held-out split (validate.py) and a four-line flake.nix. Given the CSV, the feature
count, the classes and whether it has a header row are read from it; otherwise they are
placeholders to edit. Nothing existing is overwritten.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, git
from .data.datasets import toml_string
from .errors import MlbuildError
from .interpreter import executable, not_found

__all__ = ["InitError", "CsvShape", "Created", "init_project", "read_csv_shape", "REQUIREMENTS"]

# The examples' requirements: the same lock, so the same toolchain (a cache hit where the
# examples were built). Everything the stages import (README, "The project file"), plus
# httptools and uvloop (uvicorn's fast parser and loop) and the notebook runners.
REQUIREMENTS = ["torch==2.13.0", "numpy", "safetensors", "scikit-learn", "starlette", "uvicorn", "httptools",
                "uvloop", "prometheus-client", "ipykernel", "nbclient", "nbformat"]
NAME = re.compile(r"[a-z][a-z0-9-]*")
# The model is named like the project; nix/project.nix refuses these model names (a project's own
# attributes), which init wrote for a folder named `config` or `datasets`.
RESERVED = ("name", "config", "lock", "toolchain", "interpreter", "datasets", "notebooks", "models")
TEST_FRACTION = 0.25  # the held-out share of the split (prepare.py's test_fraction)


class InitError(MlbuildError):
    """The project cannot be created as asked."""


@dataclass(frozen=True)
class CsvShape:
    features: int
    classes: int
    header: bool
    rows: int
    labels: list[str] | None = None  # the class names, when the last column holds names


@dataclass(frozen=True)
class Created:
    """A new project: its folder, name (also the model's), raw dataset, data path and files."""
    root: Path
    name: str
    dataset: str
    csv: str
    files: list[Path]
    shape: CsvShape | None
    extended: list[Path] = field(default_factory=list)   # existing files it added lines to (.gitignore)
    note: str | None = None   # why flake.lock could not be written


# How spreadsheets and exports write a missing value.
MISSING = frozenset({"n/a", "na", "nan", "null", "none", "?", "-", "--", "missing", "#n/a"})


def _not_numbers(row: list[str], width: int, first: int, names: list[str] | None) -> str:
    """Why a data row is not numeric features and a class, naming the cell (the row alone, cut at
    80 characters, hid it in a wide CSV): a missing value, a category, or another width."""
    if len(row) != width:
        return (f"it has {len(row)} columns, line {first} has {width}; every row must hold the numeric features, "
                "then the class (a number 0..K-1 or a name)")
    for col, cell in enumerate(row, 1):
        name = f" ({names[col - 1][:40]})" if names and col <= len(names) and names[col - 1] else ""
        if not cell or cell.lower() in MISSING:
            what = "the class (the last column)" if col == width else f"column {col}{name}"
            return f"{what} is {cell!r}, a missing value: fill or drop the rows with missing values"
        if col < width:
            try:
                float(cell)
            except ValueError:
                return (f"column {col}{name} is {cell[:40]!r}, not a number: the features must be numbers; encode a "
                        "category as numbers first (a 0/1 column per value), or drop the column")
    return "every row must hold the numeric features, then the class (a number 0..K-1 or a name)"


def _not_utf8(path: Path) -> str:
    """The refusal of a CSV that is not UTF-8, naming its line, its first bad byte and the fix."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return f"{path}: not UTF-8 text; save it as UTF-8"
    except UnicodeDecodeError as e:   # the reader's own error counts characters, not the file's bytes
        start = e.start
    # a line ends at LF, CRLF or a lone CR (Excel for Mac's 'CSV (Macintosh)'), as the csv reader counts them
    line, bad = data[:start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1, data[start:start + 1]
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
    return (f"{path}, line {line}: not UTF-8 text (byte {start} is {bad!r}"
            + ("; a UTF-16 file, as Excel's 'Unicode Text' saves" if utf16 else "")
            + "); save it as UTF-8: Excel's 'CSV UTF-8 (Comma delimited)', or "
            + f"`iconv -f {'utf-16' if utf16 else 'cp1252'} -t utf-8 {shlex.quote(str(path))} > new.csv`")


def read_csv_shape(path: Path) -> CsvShape:
    """Feature count, classes and header of a classification CSV: numeric features, then the class
    in the last column, as a number 0..K-1 or as a name (names are numbered in sorted order)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # a BOM (spreadsheet exports) is not data
            reader = csv.reader(f)
            # each row with its line in the file (blank lines are skipped, and still counted)
            numbered = [(reader.line_num, [c.strip() for c in r]) for r in reader if r]
        rows = [r for _, r in numbered]
    except UnicodeDecodeError:   # as a spreadsheet saves it in a Windows code page or UTF-16
        raise InitError(_not_utf8(path)) from None
    except OSError as e:
        raise InitError(f"cannot read {path}: {e}") from None

    def numbers(row: list[str]) -> list[float] | None:
        try:
            return [float(c) for c in row]
        except ValueError:
            return None

    if rows and len(rows[0]) < 2:  # one column: not comma-separated, or no class column
        seen = next((name for d, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")) if d in rows[0][0]), None)
        guess = f"; it looks separated by {seen}: save it with commas" if seen else ""
        raise InitError(f"{path}, line 1: {rows[0][0][:80]!r} is one column{guess}. mlbuild init reads comma-separated "
                        "values: the numeric features, then the class")
    # A header: names, or pandas' default column names for an unnamed frame (0,1,2,...: numbers,
    # read as a data row they made one row of features 0,1,2 and class 3)
    header = bool(rows) and (numbers(rows[0][:-1]) is None or rows[0] == [str(i) for i in range(len(rows[0]))])
    body = rows[1:] if header else rows
    body_lines = [n for n, _ in numbered][1 if header else 0:]
    if len(body) < 4:
        raise InitError(f"{path} has {len(body)} data rows; a model needs a CSV of numeric features with the class "
                        "in the last column, at least a few rows per class")
    width = len(body[0])
    counts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for i, row in zip(body_lines, body):
        features = numbers(row[:-1]) if len(row) == width and width >= 2 else None
        if features is None or not row[-1]:
            raise InitError(f"{path}, line {i}: {','.join(row)[:80]!r} is not {width - 1} numbers and a class; "
                            + _not_numbers(row, width, body_lines[0], rows[0] if header else None))
        if not all(math.isfinite(v) for v in features):   # float() reads "nan" and "inf"
            raise InitError(f"{path}, line {i}: {','.join(row)[:80]!r} holds NaN or infinity; the model cannot train "
                            "on it: fill or drop the missing values")
        counts[row[-1]] = counts.get(row[-1], 0) + 1
        first_line.setdefault(row[-1], i)
    k = len(counts)
    values = numbers(list(counts))
    regression = ("mlbuild init makes classifiers; for a regression model (a continuous target) write the files "
                  "by hand: see the README's Training section")
    labels = sorted(counts) if values is None else None   # class names: numbered in sorted order
    if values is None:
        words = [c for c in counts if numbers([c]) is None]
        # numbers, and cells that are not: missing values ("n/a", "?"), not class names
        if len(words) < k and (len(words) * 5 <= k or all(w.lower() in MISSING for w in words)):
            odd = min(words, key=first_line.__getitem__)
            raise InitError(f"{path}, line {first_line[odd]}: the class {odd[:40]!r} is not a number, while "
                            f"{k - len(words)} of the {k} classes are; fill or drop the rows with missing values")
    if k > 20 and k * 2 > len(body):   # mostly one row per value: prices, measurements, ids
        shown = ", ".join(sorted(counts, key=lambda c: (numbers([c]) or [0.0], c))[:4])
        raise InitError(f"the last column of {path} holds {k} different values in {len(body)} rows ({shown}...): "
                        f"a class needs several rows each. {regression}")
    if values is not None and set(values) != set(map(float, range(k))):
        shown = ", ".join(f"{c:g}" for c in sorted(values)[:8])
        if any(v != int(v) for v in values) or k > 20:
            raise InitError(f"the last column of {path} holds {shown}{'...' if k > 8 else ''}: {k} different "
                            f"values, a continuous target rather than classes. {regression}")
        raise InitError(f"the last column of {path} holds {shown}{'...' if k > 8 else ''}; it must hold the class: "
                        f"the numbers 0..{k - 1}, or names")
    if k < 2:
        raise InitError(f"the last column of {path} holds one class only; a classifier needs two or more")
    rare = sorted(c for c, n in counts.items() if n < 2)
    if rare:
        raise InitError(f"class {', '.join(rare[:8])} of {path} has one row; the stratified train/test split needs "
                        "at least two rows of each class")
    if math.ceil(len(body) * TEST_FRACTION) < k:
        raise InitError(f"{path} has {len(body)} rows: a {TEST_FRACTION:.0%} held-out split of them cannot hold "
                        f"each of the {k} classes; add rows")
    return CsvShape(features=width - 1, classes=k, header=header, rows=len(body), labels=labels)


def _mlbuild_flake() -> str:
    """The flake URL of this mlbuild: its git checkout, when it runs from one."""
    root = Path(__file__).resolve().parent.parent
    if (root / "flake.nix").is_file() and (root / ".git").exists():
        return f"git+file://{root}"
    return "git+file:///path/to/mlbuild"


def _toml_list(items: list[str], indent: int) -> str:
    """A TOML array of strings, wrapped before 100 columns (continuation lines at ``indent``)."""
    lines: list[list[str]] = [[]]
    for s in (toml_string(i) for i in items):   # json.dumps wrote an emoji as \ud83d\ude3a, which TOML refuses
        if lines[-1] and indent + len(", ".join(lines[-1] + [s])) + 2 > 100:
            lines.append([])
        lines[-1].append(s)
    return "[" + (",\n" + " " * indent).join(", ".join(line) for line in lines) + "]"


def _files(name: str, csv_rel: str, shape: CsvShape | None, python: str, flake_url: str) -> dict[str, str]:
    features = shape.features if shape else 4
    classes = shape.classes if shape else 3
    # The CSV's path in mlbuild.toml's comments: a control character (a newline) there is not TOML,
    # and ended the comment, so the file init wrote did not load; the path = line holds it escaped.
    csv_said = "PATH (its path below)" if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in csv_rel) else csv_rel
    if shape:
        says = (f"   # the columns of {'the CSV' if csv_said != csv_rel else csv_rel} but the last (read by mlbuild init)",
                "   # the distinct values of its last column")
    else:
        says = ("   # set to your data's feature count (its columns but the last)",
                "   # set to your data's class count")
    header = "true" if shape and shape.header else "false"
    labels = ("\n# The class names in the last column, numbered 0, 1, ... in this order.\n"
              f"labels = {_toml_list(shape.labels, len('labels = ['))}") if shape and shape.labels else ""
    reqs = _toml_list(REQUIREMENTS, len("requirements = ["))
    toml = f'''[project]
name = "{name}"

[python]
interpreter = {toml_string(python)}
# What the builds import: torch + safetensors train; starlette, uvicorn (httptools, uvloop) and
# prometheus-client serve; scikit-learn splits the data (prepare.py) and validates; ipykernel,
# nbclient, nbformat run notebooks.
requirements = {reqs}

# The raw data, pinned by content hash: `mlbuild data add {name}-raw {csv_said}`.
[datasets.{name}-raw]
path = {toml_string(csv_rel)}

# A seeded, stratified train/test split: a derivation, rebuilt only when the data or prepare.py change.
[datasets.{name}-split]
prepare = "prepare.py"
inputs = ["{name}-raw"]

[datasets.{name}-split.params]
test_fraction = {TEST_FRACTION}
seed = 0
header = {header}{labels}

[models.{name}]
script = "model.py"
datasets = ["{name}-split"]
seed = 0

[models.{name}.params]
features = {features}{says[0]}
classes = {classes}{says[1]}
hidden = 32
epochs = 200
lr = 0.01

[models.{name}.validation]
suite = "validate.py"
dataset = "{name}-split"
thresholds = {{ accuracy = 0.8, f1_macro = 0.8 }}
'''
    prepare = f'''"""The {name}-split dataset: a seeded, stratified train/test split of the raw CSV.

train.csv and test.csv hold the features, then the class number; labels.json the class names.
"""

import csv
import io
import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split


def prepare(inputs: dict[str, Path], out: Path, params: dict) -> None:
    raw = inputs["{name}-raw"]
    if raw.is_dir():  # a folder of data: its one CSV file
        raw = next(raw.glob("*.csv"))
    data = raw.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte order mark (spreadsheet exports) is not data
    except UnicodeDecodeError as e:  # saved since init in a Windows code page or UTF-16
        line = data[:e.start].replace(b"\\r\\n", b"\\n").replace(b"\\r", b"\\n").count(b"\\n") + 1  # LF, CRLF or CR ends
        raise SystemExit(f"dataset {name}-raw, line {{line}}: not UTF-8 text (byte {{e.start}} is "
                         f"{{data[e.start:e.start + 1]!r}}); save the CSV as UTF-8 (Excel: 'CSV UTF-8'), "
                         "then pin it again: mlbuild data add {name}-raw PATH") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # each row with its line (blank lines skipped, still counted)
    numbered = [(reader.line_num, [c.strip() for c in r]) for r in reader if r]
    numbered = numbered[1:] if params["header"] else numbered
    rows = [r for _, r in numbered]
    names = params.get("labels")  # the last column holds these names; else class numbers
    want = f"one of {{', '.join(names)}}" if names else "a number 0, 1, ..."
    fraction = params["test_fraction"]
    if not isinstance(fraction, float) or not 0 < fraction < 1:
        raise SystemExit(f"[datasets.{name}-split.params].test_fraction is {{fraction!r}}; give the held-out "
                         "share as a fraction between 0 and 1, e.g. 0.25 (a whole number would be a row count)")
    x_rows: list[list[float]] = []
    y_rows: list[int] = []
    for line, r in numbered:
        # The CSV may have changed since mlbuild init checked it: name the line and cell that is wrong.
        where = f"dataset {name}-raw, line {{line}}: {{','.join(r)[:80]!r}}"
        if len(r) != len(rows[0]):
            raise SystemExit(f"{{where}} has {{len(r)}} columns; line {{numbered[0][0]}} has {{len(rows[0])}}")
        for col, c in enumerate(r[:-1], 1):
            try:
                float(c)
            except ValueError:
                raise SystemExit(f"{{where}}: column {{col}} is {{c!r}}, not a number; fix or drop the row") from None
        x_rows.append([float(c) for c in r[:-1]])
        try:
            y_rows.append(names.index(r[-1]) if names else int(float(r[-1])))
        except ValueError:
            raise SystemExit(f"{{where}}: the class (last column) is {{r[-1]!r}}, not {{want}}; a new class "
                             "needs the labels in mlbuild.toml and the model's classes param updated") from None
        if not np.isfinite(x_rows[-1]).all():
            raise SystemExit(f"{{where}} holds NaN or infinity; fill or drop the missing values")
    x, y = np.array(x_rows), np.array(y_rows, dtype=np.int64)
    empty = [n for c, n in enumerate(names or []) if not (y == c).any()]
    if empty:
        raise SystemExit(f"dataset {name}-raw has no rows of the class {{empty[0]!r}} that "
                         f"[datasets.{name}-split.params].labels names; add its rows or take it out of labels "
                         "(and the model's classes param)")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=params["test_fraction"], random_state=params["seed"], stratify=y)
    for part, xs, ys in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        np.savetxt(out / f"{{part}}.csv", np.column_stack([xs, ys]), fmt="%.10g", delimiter=",")
    labels = names or [str(c) for c in range(int(y.max()) + 1)]
    (out / "labels.json").write_text(json.dumps(labels) + "\\n")
'''
    model = f'''"""The {name} classifier: an MLP that standardises its inputs itself, so the server takes raw features.

build_model(params) is the architecture (the server calls it too); train(ctx) returns the trained model.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(params: dict) -> nn.Module:
    return Classifier(params["features"], params["hidden"], params["classes"])


def load(path) -> tuple[torch.Tensor, torch.Tensor]:
    a = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    return torch.from_numpy(a[:, :-1].astype(np.float32)), torch.from_numpy(a[:, -1].astype(np.int64))


def train(ctx) -> nn.Module:
    p = ctx.params
    split = ctx.data["{name}-split"]
    x, y = load(split / "train.csv")
    labels = json.loads((split / "labels.json").read_text())
    if len(labels) != p["classes"]:
        raise SystemExit(f"params.classes is {{p['classes']}}, but the data has {{len(labels)}} classes: {{labels}}")
    n_val = max(1, len(x) // 5)  # the last fifth of the training split tells how training goes
    x_tr, y_tr, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    ctx.describe(task="classification", input_shape=[p["features"]], labels=labels)
    ctx.save_reference(x_tr.numpy())  # feature statistics: the server's input-drift gauges
    model = build_model(p)
    model.mean.copy_(x_tr.mean(0))
    model.std.copy_(x_tr.std(0) + 1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    for epoch in range(1, p["epochs"] + 1):
        model.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_tr), y_tr)
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            val_acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        ctx.log_epoch(epoch, p["epochs"], loss=loss.item(), val_accuracy=val_acc)
    return model
'''
    validate = f'''"""The {name} validation suite: the held-out split, raw features as the server receives them."""

from pathlib import Path

import numpy as np


def load(data: Path) -> tuple[np.ndarray, np.ndarray]:
    a = np.loadtxt(data / "test.csv", delimiter=",", dtype=np.float64, ndmin=2)
    return a[:, :-1].astype(np.float32), a[:, -1].astype(np.int64)
'''
    flake = f'''{{
  inputs.mlbuild.url = "{flake_url}";
  outputs = {{ self, mlbuild }}: mlbuild.lib.flakeOutputs {{ inherit self; src = ./.; }};
}}
'''
    return {"mlbuild.toml": toml, "prepare.py": prepare, "model.py": model, "validate.py": validate,
            "flake.nix": flake,
            ".gitignore": f"result*\n/{_ignored_data(csv_rel)}\n__pycache__/\n.ipynb_checkpoints/\n"}


def _ignored_data(csv_rel: str) -> str:
    """What .gitignore keeps out of git: the CSV's top folder (data/ holds data, never committed,
    backups and new versions too), or the CSV itself when it sits next to mlbuild.toml."""
    top, sep, _ = csv_rel.partition("/")
    return f"{top}/" if sep else csv_rel


_EXTENDED = {".gitignore"}   # files a project usually has already: lines are added, never replaced


def _check_python(python: str) -> None:
    """``--python`` names a CPython that runs here (it is snapshotted by `mlbuild lock`)."""
    fix = "give a Python that runs here (e.g. --python python3.11, or a path)"
    exe = executable(python)
    if exe is None:
        raise InitError(f"--python {python} is not {not_found(python)}; {fix}, as [python].interpreter is "
                        "snapshotted from it")
    try:
        proc = subprocess.run([exe, "-c", "import sys; print(sys.implementation.name)"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InitError(f"--python {python} ({exe}) does not run: {e}; {fix}") from None
    if proc.returncode != 0 or proc.stdout.strip() != "cpython":
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise InitError(f"--python {python} ({exe}) is not a CPython interpreter that runs here "
                        f"({said[0][:200]}); {fix}")


def init_project(root: Path, *, name: str | None = None, csv_path: Path | None = None, python: str = "python3",
                 flake_url: str | None = None) -> Created:
    """Write a new project into ``root`` (created if missing; a git repository if it is in none).
    Refuses, writing nothing, where any of its files exists; an existing .gitignore gets the lines
    it lacks instead."""
    root = root.resolve()
    # "" from an unset variable (`--name "$NAME"`) was the folder's name, and `--mlbuild-flake ""`
    # this checkout's: each is refused, as the option given names nothing
    for option, value, default in (("--name", name, "the folder's name"), ("--python", python, "python3"),
                                   ("--mlbuild-flake", flake_url, "this mlbuild's git checkout")):
        if value is not None and not value.strip():
            raise InitError(f"{option} {value!r} is empty (an unset variable?); give one, or leave {option} out for "
                            f"{default}")
    if flake_url is not None and (any(c.isspace() or ord(c) < 32 or c in '"\\' for c in flake_url) or "${" in flake_url):
        # flake.nix holds it in a Nix string: a '"' ended the string (a flake.nix that does not parse, or
        # one that says more than the URL), and Nix refuses a flake URL with a space in it
        raise InitError(f"--mlbuild-flake {flake_url!r} is not a flake URL (it holds a space, a quote, a backslash, "
                        "a control character or '${'); give one like git+file:///path/to/mlbuild or "
                        "github:ORG/mlbuild")
    name = name or root.name.lower()
    if not NAME.fullmatch(name):
        raise InitError(f"{name!r} is not a project name: use lower-case letters, digits and - (starting with a "
                        "letter), e.g. --name iris")
    if name in RESERVED:
        raise InitError(f"{name!r} is a name mlbuild uses itself (a project's {', '.join(RESERVED)}), and the model "
                        f"would be named so; pass another, e.g. --name {name}-model")
    _check_python(python)
    shape = None
    if csv_path is not None:
        shape = read_csv_shape(csv_path)
        try:
            csv_rel = csv_path.resolve().relative_to(root).as_posix()
        except ValueError:
            raise InitError(f"{csv_path} is outside {root}; put the data inside the project (it stays out of git: "
                            "`mlbuild data add` ignores it) and pass that path") from None
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in csv_rel):   # bytes that are not UTF-8, as os.fsdecode holds them
            raise InitError(f"the CSV's name {os.fsencode(csv_rel)!r} is not UTF-8 (a name from another system's code "
                            "page), and mlbuild.toml, UTF-8 text, cannot hold it: rename it to a UTF-8 name, e.g. "
                            "`convmv -f latin1 -t utf-8 --notest FILE` or mv, then run mlbuild init again")
    else:
        csv_rel = f"data/{name}.csv"
    files = _files(name, csv_rel, shape, python, flake_url or _mlbuild_flake())
    taken = [n for n in [*files, "flake.lock"] if (root / n).exists() and n not in _EXTENDED]
    if taken:
        raise InitError(f"{root} already has {', '.join(taken)}; mlbuild init writes only new files (move them, "
                        "or init another folder)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:   # a folder no one may make here (/proc/x, another user's): a traceback, once
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise   # the CLI names a full disk
        raise InitError(f"cannot make the folder {root}: {e.strerror}; give a folder you may write to "
                        "(mlbuild init FOLDER)") from None
    written, extended, before = [], [], {}
    try:
        for n, text in files.items():
            path = root / n
            if n in _EXTENDED and path.exists():
                old = before[path] = path.read_text()
                have = set(old.splitlines())
                missing = [line for line in text.splitlines() if line not in have]
                if missing:
                    atomic.write_text(path, old + ("" if old.endswith("\n") or not old else "\n") + "\n".join(missing) + "\n")
                    extended.append(path)
                continue
            atomic.write_text(path, text)
            written.append(path)
        # In another user's repository git answers as if there were none: a GitError naming the fix
        # (safe.directory), where `git init` made a repository inside theirs.
        if git.repo_root(root) is None:
            # A .git already there is one git rejects (another user's: "dubious ownership"; a damaged
            # one), holding its commits: never this init's to remove.
            had_git = os.path.lexists(root / ".git")
            git_init = subprocess.run(["git", "init", "-q"], cwd=root, capture_output=True, text=True)
            if git_init.returncode != 0:
                if not had_git:
                    shutil.rmtree(root / ".git", ignore_errors=True)
                said = (git_init.stderr.strip().splitlines() or [f"exit {git_init.returncode}"])[-1]
                raise InitError(f"`git init` in {root} failed: {said}; fix that, then run mlbuild init again "
                                "(it wrote nothing)")
    except BaseException:
        # All or nothing (a full disk, a Ctrl-C): an empty mlbuild.toml left behind made the next
        # init refuse the folder ("already has mlbuild.toml") and every other command read it.
        for path in written:
            path.unlink(missing_ok=True)
        for path in extended:
            with contextlib.suppress(OSError):
                atomic.write_text(path, before[path])
        raise
    note = _lock_flake(root)
    if (root / "flake.lock").is_file():   # init refuses a folder that has one: it wrote it
        written.append(root / "flake.lock")
    return Created(root=root, name=name, dataset=f"{name}-raw", csv=csv_rel, files=written, shape=shape,
                   extended=extended, note=note)


_DIRTY = "the mlbuild checkout flake.nix names has uncommitted changes, "


def _nix_reason(log_tail: str) -> str:
    """The line of a failed `nix flake lock`'s output that says why: the first that is not a
    warning, a bare `error:`, a trace line (`… while ...`) or the closing `(use '--show-trace' ...)`,
    which Nix prints last (git's `fatal: ... does not appear to be a git repository` comes first)."""
    for line in log_tail.splitlines():
        line = line.strip()
        if line and line != "error:" and not line.startswith(("warning:", "…", "(use '--show-trace'")):
            return line.removeprefix("error: ")
    return ""


def _lock_flake(root: Path) -> str | None:
    """Write flake.lock (the mlbuild input pinned) beside the new flake.nix, so that the project's
    first commit holds it. Else the first `nix build` writes it, and Nix 2.8 marks it
    intent-to-add: the tree is dirty from then on, and so is what that build makes. The lock
    depends on flake.nix alone: it is made in a folder holding only that (a `path:` flake of the
    project would copy its data into the store). None when written; else why not."""
    import tempfile

    from . import _nix
    from .errors import NixError

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(root / "flake.nix", tmp)
        try:
            _nix.run_nix([*_nix.common_options(), "flake", "lock", f"path:{tmp}"])
        except NixError as e:
            from .flakepin import DIRTY_MLBUILD

            if "unlocked input" in e.log_tail:   # Nix 2.26 (Debian 13): the mlbuild checkout is dirty
                return f"flake.lock was not written: {_DIRTY}{DIRTY_MLBUILD}"
            shallow = re.search(r"'([^']+)' is a shallow Git repository", e.log_tail)
            if shallow:   # Nix 2.8 (Debian 12) cannot lock a shallow clone; `nix build` fails alike
                return (f"flake.lock was not written: the mlbuild checkout flake.nix names, {shallow.group(1)}, "
                        f"is a shallow clone, which this Nix cannot lock (nor can `nix build` here); run "
                        f"`git -C {shallow.group(1)} fetch --unshallow`, then `nix flake lock` here, "
                        f"`git add flake.lock` and commit it")
            return (f"flake.lock was not written ({_nix_reason(e.log_tail) or e}); the first `nix build` writes it: "
                    "`git add flake.lock` and commit it then")
        shutil.copy(Path(tmp) / "flake.lock", root / "flake.lock")
    from .flakepin import DIRTY_MLBUILD, locked_input

    locked = locked_input(root) or {}
    if locked.get("type") == "git" and "rev" not in locked:   # Nix 2.8 locks a dirty checkout's tree
        return f"flake.lock was written, but {_DIRTY}{DIRTY_MLBUILD}"
    return None
