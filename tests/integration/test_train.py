"""Training runs with real Nix: outputs, provenance, reproducibility, caching, experiments."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from mlbuild.runtime.hashing import tree_digest, tree_hashes
from mlbuild.storepath import check_output_path
from tests.conftest import MLBUILD, build_path, run_cli
from tests.integration.conftest import commit_all, instantiate

pytestmark = [pytest.mark.integration, pytest.mark.torch]


def model_path(root: Path, *extra: str) -> tuple[str, str]:
    out = run_cli("build", *extra, "digits.model", cwd=root).stdout
    return out.split("\t")[1].split("\n")[0], out


@pytest.fixture(scope="module")
def trained(digits_repo: Path) -> str:
    return model_path(digits_repo)[0]


def test_outputs_and_provenance(digits_repo: Path, trained: str) -> None:
    out = Path(trained)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "metrics.json", "model.safetensors", "provenance.json", "reference.json", "train.log"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights["0.weight"].shape == (64, 64)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 30 and metrics["final"]["val_accuracy"] > 0.9
    prov = json.loads((out / "provenance.json").read_text())
    lock = json.loads((digits_repo / "mlbuild.lock").read_text())
    assert prov["params"]["epochs"] == 30 and prov["seed"] == 0 and prov["device"] == "cpu"
    assert set(prov["datasets"]) == {"digits-split"}
    # The datasets by content hash, not by path: a path would be a reference, and the package's
    # closure (and its image) would carry the training data.
    split = build_path(digits_repo, "datasets.digits-split")
    assert prov["datasets"]["digits-split"] == {"sha256": tree_digest(tree_hashes(split)), "of": "files"}
    closure = subprocess.run(["nix-store", "-qR", build_path(digits_repo, "digits")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert not [p for p in closure if p.endswith(("-digits-split", "-digits-raw"))]
    # So the split has a GC root of its own: nix-collect-garbage keeps it for the next retraining.
    assert (digits_repo / ".mlbuild" / "gcroots" / "dataset-digits-split").resolve() == split
    assert list(prov["code"]["files"]) == ["model.py"]
    assert prov["toolchain"].startswith("/nix/store/") and prov["interpreter"] == lock["interpreter"]["version"]
    assert prov["determinism"]["deterministic"] is True and prov["determinism"]["threads"] == 1
    assert prov["determinism"]["env"]["ATEN_CPU_CAPABILITY"] == "default"
    assert prov["git"]["dirty"] is False
    assert "epoch 30" in (out / "train.log").read_text() or '"epoch": 30' in (out / "train.log").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "classification" and config["inputs"][0]["shape"] == [-1, 64]
    record = (digits_repo / ".mlbuild" / "builds.jsonl").read_text().splitlines()[-1]
    assert json.loads(record)["git_rev"]  # the build's git revision is recorded beside it


def test_a_project_copied_after_its_build_is_rooted_again(digits_repo: Path, trained: str, tmp_path: Path) -> None:
    """`cp -a` (or `mv`) of a built project into a folder named with a space and a non-ASCII
    letter: its build there is a cache hit, and the copy's links root the outputs and datasets.
    They came along already pointing at them, so no root was made, while Nix's own entries named
    the old folder: after `mv` nothing held them, and raw data was rooted only by `data add`."""
    copy = tmp_path / "my projects" / "d\u00edgits"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(digits_repo), str(copy)], check=True)
    path, out = model_path(copy)
    assert path == trained and "built 0" in out, out
    held = {name: build_path(digits_repo, f"datasets.{name}") for name in ("digits-raw", "digits-split")}
    roots = subprocess.run(["nix-store", "-q", "--roots", trained, *held.values()], capture_output=True, text=True,
                           errors="surrogateescape", check=True).stdout
    for link in ("digits.model", "dataset-digits-split", "dataset-digits-raw"):
        assert f"{copy / '.mlbuild' / 'gcroots' / link} -> " in roots, (link, roots)


# This once failed about half the time: safetensors wrote its two metadata keys in a per-process
# random order (see mlbuild.runtime.train.save_weights and tests/unit/test_train_weights.py).
def test_training_is_bit_reproducible(digits_repo: Path, trained: str) -> None:
    drv = instantiate(digits_repo, "digits.model")
    proc = subprocess.run(["nix-build", "--check", drv, "--no-out-link"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_build_check_builds_again_and_names_the_files_that_differ(digits_repo: Path, trained: str) -> None:
    """`mlbuild build --check`: a user's model trained with an unseeded generator or the time was
    cached as it came out the first time, and nothing said so (only `nix build --rebuild` by hand)."""
    out = run_cli("build", "--check", "digits.model", cwd=digits_repo).stdout
    assert f"digits.model\t{trained}" in out and "reproducible: digits.model (built again, the same bytes)" in out
    # Nix leaves the second build in the store (invalid, until a garbage collection): a second
    # copy of every checked output, 300 MB for a model of 300 MB.
    drv = subprocess.run(["nix-store", "-q", "--deriver", trained], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert not Path(check_output_path(drv, trained)).exists()
    model = digits_repo / "model.py"
    original = model.read_text()
    model.write_text(original.replace(
        "    p = ctx.params\n", "    p = ctx.params\n    import time; (ctx.out / 'noise.txt').write_text(str(time.time_ns()))\n", 1))
    try:
        proc = run_cli("build", "--check", "--allow-dirty", "digits.model", cwd=digits_repo, check=False)
        assert proc.returncode == 1, proc.stderr[-2000:]
        first, second = re.search(r"digits.model is not reproducible: built again, it gave other bytes in noise.txt "
                                  r"\(the first build: (\S+); the second: (\S+)\); fix the source of randomness",
                                  proc.stderr).groups()   # type: ignore[union-attr]
        assert second == first + ".check" and Path(second, "noise.txt").read_text() != Path(first, "noise.txt").read_text()
        kept = re.search(r"keeping build directory '([^']+)'", proc.stderr)
        assert kept is None or not Path(kept.group(1)).exists()   # the build folder, kept by --keep-failed, is gone
        if kept is not None and Path(kept.group(1)).name == "build":   # Nix 2.26: and the folder it is in
            assert not Path(kept.group(1)).parent.exists()
    finally:
        model.write_text(original)


def test_unrelated_change_keeps_path_param_change_does_not(digits_repo: Path, trained: str) -> None:
    (digits_repo / "README.md").write_text("an unrelated edit\n")
    (digits_repo / "export_data.py").write_text((digits_repo / "export_data.py").read_text() + "\n# edit\n")
    commit_all(digits_repo, "unrelated")
    same, out = model_path(digits_repo)
    assert same == trained and "built 0" in out
    toml = digits_repo / "mlbuild.toml"
    original = toml.read_text()
    toml.write_text(original.replace("epochs = 30", "epochs = 5"))
    commit_all(digits_repo, "fewer epochs")
    other, out = model_path(digits_repo)
    assert other != trained  # (built now, or in an earlier run of the tests: the store outlives them)
    assert json.loads((Path(other) / "provenance.json").read_text())["params"]["epochs"] == 5
    toml.write_text(original)
    commit_all(digits_repo, "back")
    assert model_path(digits_repo)[0] == trained


def test_dirty_build_is_marked(digits_repo: Path, trained: str) -> None:
    (digits_repo / "scratch.txt").write_text("untracked")
    try:
        path, _ = model_path(digits_repo, "--allow-dirty")
        assert path != trained
        assert json.loads((Path(path) / "provenance.json").read_text())["git"]["dirty"] is True
    finally:
        (digits_repo / "scratch.txt").unlink()


def test_experiment_round_trip(digits_repo: Path, trained: str) -> None:
    lr = f"lr={0.01 + (time.time_ns() % 100000) * 1e-9:.9f}"  # a variant no earlier test run built
    roots = digits_repo / ".mlbuild" / "gcroots"
    rooted = (roots / "digits.model").resolve()
    first = run_cli("exp", "run", "digits", "--set", "epochs=4", "--set", lr, cwd=digits_repo).stdout
    assert "built" in first and f"epochs=4 lr={float(lr[3:])}:" in first  # as --set takes them
    # its held-out metrics and the gate, said at once (4 epochs may or may not meet the thresholds)
    assert re.search(r"^  test: accuracy 0\.\d{4}, f1_macro 0\.\d{4} \(n 450\); gate: (pass|FAIL \(.*>= 0\.95.*\))$",
                     first, re.M), first
    # The variant has a GC root of its own; the configured model keeps its (the variant's replaced it).
    variant_path = re.search(r"-> (/nix/store/\S+)", first).group(1)
    assert (roots / "digits.model").resolve() == rooted
    assert [p.name for p in roots.glob("digits.model@*") if p.resolve() == Path(variant_path)]
    again = run_cli("exp", "run", "digits", "--set", "epochs=4", "--set", lr, cwd=digits_repo).stdout
    assert "cached" in again
    back = run_cli("exp", "run", "digits", cwd=digits_repo)
    assert "cached" in back.stdout and trained in back.stdout
    assert "epoch" not in back.stderr  # nothing trained
    table = run_cli("exp", "show", "digits", cwd=digits_repo).stdout
    assert trained in table and str(float(lr[3:])) in table and "train:val_accuracy" in table
    # the held-out metrics the gate checks (validation report), the params --set changed, the data
    head_row, rows = table.splitlines()[0].split(), table.splitlines()[1:]
    assert {"test:accuracy", "test:f1_macro", "gate", "data"} <= set(head_row)
    variant = next(r.split() for r in rows if str(float(lr[3:])) in r)
    configured = next(r.split() for r in rows if trained in r)
    col = head_row.index("test:accuracy")
    assert 0 <= float(variant[col]) <= 1 and float(configured[col]) > 0.9
    assert configured[head_row.index("gate")] == "pass"   # the thresholds are met by the configured model
    meets = all(float(variant[head_row.index(f"test:{k}")]) >= 0.95 for k in ("accuracy", "f1_macro"))
    assert variant[head_row.index("gate")] == ("pass" if meets else "FAIL")
    assert variant[head_row.index("epochs")] == "4*" and configured[head_row.index("epochs")] == "30"
    assert variant[head_row.index("data")] == configured[head_row.index("data")] != "-"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=digits_repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert "commit" in table.splitlines()[0] and head[:12] in table
    bad = run_cli("exp", "run", "digits", "--set", "nope=1", cwd=digits_repo, check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr and "params:" in bad.stderr


def test_training_error_shows_log_tail(digits_repo: Path) -> None:
    model = digits_repo / "model.py"
    original = model.read_text()
    model.write_text(original.replace('    p = ctx.params\n', '    p = ctx.params\n    raise ValueError("bad learning rate schedule")\n', 1))
    commit_all(digits_repo, "broken")
    try:
        proc = run_cli("build", "digits.model", cwd=digits_repo, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr.split("---")[0]
        assert "ValueError: bad learning rate schedule" in proc.stderr
        assert "last lines of the build log of digits-model" in proc.stderr
    finally:
        model.write_text(original)
        commit_all(digits_repo, "fixed")


def test_a_model_that_never_describes_itself_fails_its_training(digits_repo: Path) -> None:
    """Without ctx.describe the package built, and validation and the server failed later, saying
    to rebuild the package; the training says what is missing. (--allow-dirty: no commit.)"""
    model = digits_repo / "model.py"
    original = model.read_text()
    model.write_text("\n".join(line for line in original.splitlines() if "ctx.describe(" not in line) + "\n")
    try:
        proc = run_cli("build", "digits.model", "--allow-dirty", cwd=digits_repo, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "train(ctx) in model.py never called ctx.describe(...)" in proc.stderr
        assert 'ctx.describe(task="regression", input_shape=[FEATURES])' in proc.stderr
    finally:
        model.write_text(original)


def test_an_output_naming_a_dataset_path_is_refused(digits_repo: Path) -> None:
    """Writing ctx.data[...] into the output would make the package (and its image) carry the data."""
    model = digits_repo / "model.py"
    original = model.read_text()
    model.write_text(original.replace(
        '    p = ctx.params\n',
        '    p = ctx.params\n    (ctx.out / "inputs.txt").write_text(str(ctx.data["digits-split"]))\n', 1))
    commit_all(digits_repo, "names its data")
    try:
        proc = run_cli("build", "digits.model", cwd=digits_repo, check=False)
        assert proc.returncode == 1
        assert "inputs.txt names the store path of dataset digits-split" in proc.stderr
        assert "copy what the model needs" in proc.stderr
        assert "MLBUILD {" not in proc.stderr   # the epoch events drive the bar; the tail is the rest
    finally:
        model.write_text(original)
        commit_all(digits_repo, "fixed")


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            stack.append(child)
    return found


@pytest.mark.parametrize("signum", [15, 2])
def test_stopping_mlbuild_alone_stops_the_build(digits_repo: Path, signum: int) -> None:
    """SIGTERM or SIGINT sent to mlbuild only (a CI runner, a supervisor, not a terminal's Ctrl-C to
    the whole group) left nix and the training orphaned, and the next build waiting on their lock."""
    import os
    import signal

    model = digits_repo / "model.py"
    original = model.read_text()
    model.write_text(original.replace('    p = ctx.params\n', '    p = ctx.params\n    import time; time.sleep(3600)\n', 1))
    # Not committed: `metrics history` of this repo (test_validate) builds every commit of model.py.
    proc = subprocess.Popen([*MLBUILD, "build", "--allow-dirty", "digits.model"], cwd=digits_repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any("mlbuild.runtime.train" in c for c in _descendants(proc.pid).values()):
            assert proc.poll() is None and time.monotonic() < deadline, "the training never started"
            time.sleep(0.5)
        below = _descendants(proc.pid)
        os.kill(proc.pid, signum)
        assert proc.wait(30) != 0
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{p}").exists() for p in below) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p: c for p, c in below.items() if Path(f"/proc/{p}").exists()}
        assert not left, f"still running after mlbuild stopped: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        model.write_text(original)
