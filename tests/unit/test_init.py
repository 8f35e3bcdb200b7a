"""`mlbuild init`: the files of a new project, what it reads from the CSV, and what it refuses."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mlbuild.init import REQUIREMENTS, InitError, init_project, read_csv_shape
from tests.conftest import MLBUILD, run_cli

IRIS_LIKE = "sl,sw,pl,pw,species\n" + "".join(f"{i % 7}.5,{i % 5},{i % 3}.25,1,{i % 3}\n" for i in range(12))


def csv(root: Path, text: str = IRIS_LIKE, name: str = "data/d.csv") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_csv_gives_features_classes_and_header(tmp_path: Path) -> None:
    shape = read_csv_shape(csv(tmp_path))
    assert (shape.features, shape.classes, shape.header, shape.rows) == (4, 3, True, 12)
    bare = read_csv_shape(csv(tmp_path, "1,2,0\n3,4,1\n5,6,0\n7,8,1\n" * 2, "bare.csv"))
    assert (bare.features, bare.classes, bare.header, bare.labels) == (2, 2, False, None)
    # pandas' header for an unnamed frame (`to_csv(index=False)`): it was read as a row of data
    pandas = read_csv_shape(csv(tmp_path, "0,1,2\n" + "1,2,0\n3,4,1\n5,6,0\n7,8,1\n" * 2, "pandas.csv"))
    assert (pandas.features, pandas.classes, pandas.header, pandas.rows) == (2, 2, True, 8)


def test_class_names_in_the_last_column_are_numbered_in_sorted_order(tmp_path: Path) -> None:
    text = "a,b,species\n" + "1,2, virginica\n3,4,setosa\n5,6,versicolor\n" * 4
    shape = read_csv_shape(csv(tmp_path, text))
    assert (shape.features, shape.classes, shape.header) == (2, 3, True)
    assert shape.labels == ["setosa", "versicolor", "virginica"]  # stripped, sorted
    root = tmp_path / "p"
    init_project(root, csv_path=csv(root, text))
    split = tomllib.loads((root / "mlbuild.toml").read_text())["datasets"]["p-split"]["params"]
    assert split["labels"] == ["setosa", "versicolor", "virginica"] and split["header"] is True


@pytest.mark.parametrize(("text", "message"), [
    ("a,b\n1,0\n2,1\n", "has 2 data rows"),
    ("a;b;label\n1;2;x\n", "line 1: 'a;b;label' is one column; it looks separated by semicolons: save it with commas"),
    ("1\t2\t0\n3\t4\t1\n", "line 1: '1\\t2\\t0' is one column; it looks separated by tabs"),
    ("0\n1\n0\n1\n", "line 1: '0' is one column. mlbuild init reads comma-separated values"),
    ("1,2,0\n3,4,1\n5,x,0\n7,8,1\n", "line 3: '5,x,0' is not 2 numbers and a class"),
    ("1,2,0\n3,4,1\n5,6\n7,8,1\n", "line 3: '5,6' is not 2 numbers and a class"),
    # float() reads these: the model trained to loss nan and the server answered NaN probabilities
    ("1,2,0\n3,nan,1\n5,6,0\n7,8,1\n", "line 2: '3,nan,1' holds NaN or infinity; the model cannot train"),
    ("1,2,0\n3,4,1\n5,-inf,0\n7,8,1\n", "line 3: '5,-inf,0' holds NaN or infinity"),
    ("1,2,a\n3,4,b\n5,6,\n7,8,b\n", "line 3: '5,6,' is not 2 numbers and a class; the class (the last column) is "
                                     "'', a missing value: fill or drop the rows with missing values"),
    # the cell that is wrong, by column and header name (the row, cut at 80 characters, hid it)
    ("age,income,plan,y\n26,255.5,pro,a\n1,2,3,b\n4,5,6,a\n7,8,9,b\n",
     "line 2: '26,255.5,pro,a' is not 3 numbers and a class; column 3 (plan) is 'pro', not a number: the features "
     "must be numbers; encode a category as numbers first (a 0/1 column per value), or drop the column"),
    ("age,income,y\n1,2,a\n3,,b\n4,5,a\n7,8,b\n", "line 3: '3,,b' is not 2 numbers and a class; column 2 (income) "
                                                  "is '', a missing value: fill or drop the rows with missing values"),
    ("1,2,a\n3,N/A,b\n4,5,a\n7,8,b\n", "column 2 is 'N/A', a missing value"),
    ("1,2,a\n3,4,5,b\n4,5,a\n7,8,b\n", "line 2: '3,4,5,b' is not 2 numbers and a class; it has 4 columns, line 1 has 3"),
    # blank lines are skipped, and still counted: the line is the file's (it said line 3)
    ("1,2,0\n\n\n3,4,1\n5,x,0\n7,8,1\n", "line 5: '5,x,0' is not 2 numbers and a class"),
    ("1,2,1\n3,4,2\n5,6,1\n7,8,2\n", "holds 1, 2; it must hold the class: the numbers 0..1, or names"),
    ("1,2,0.5\n3,4,0\n5,6,0\n7,8,0\n", "holds 0, 0.5: 2 different values, a continuous target rather than "
                                         "classes. mlbuild init makes classifiers; for a regression model"),
    # a continuous target: was "class 0, 1, 2... has one row; the stratified split needs two rows of each"
    ("".join(f"{i},{i},{i}\n" for i in range(40)), "holds 40 different values in 40 rows (0, 1, 2, 3...): a class needs several"),
    ("".join(f"{i},{i},${i}.01\n" for i in range(40)), "holds 40 different values in 40 rows ($0.01, $1.01, $10.01, "
                                                      "$11.01...): a class needs several rows each. mlbuild init makes"),
    # numbers with a missing cell: was "class 10.05, 10.08 ... has one row"
    ("".join(f"{i},{i},{i % 6}\n" for i in range(30)) + "9,9,n/a\n",
     "line 31: the class 'n/a' is not a number, while 6 of the 7 classes are; fill or drop the rows with missing"),
    # ...with few classes too: it took "n/a" as a fourth class, or blamed its one row
    ("".join(f"{i},{i},{i % 3}\n" for i in range(12)) + "9,9,N/A\n8,8,n/a\n",
     "line 13: the class 'N/A' is not a number, while 3 of the 5 classes are; fill or drop the rows"),
    ("".join(f"{i},{i},{i % 2}\n" for i in range(8)) + "9,9,?\n",
     "line 9: the class '?' is not a number, while 2 of the 3 classes are"),
    ("1,2,0\n3,4,0\n5,6,0\n7,8,0\n", "one class only"),
    ("1,2,0\n3,4,0\n5,6,0\n7,8,1\n", "class 1 of"),
    ("1,2,cat\n3,4,cat\n5,6,dog\n7,8,cow\n", "class cow, dog of"),
    ("1,2,0\n3,4,0\n5,6,1\n7,8,1\n9,9,2\n8,8,2\n", "has 6 rows: a 25% held-out split of them cannot hold each of the 3"),
])
def test_a_csv_that_cannot_train_a_classifier_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InitError) as e:
        read_csv_shape(csv(tmp_path, text))
    assert message in str(e.value)


def test_init_writes_a_project_from_the_csv(tmp_path: Path) -> None:
    root = tmp_path / "my-iris"
    new = init_project(root, csv_path=csv(root), python="python3.11", flake_url="git+file:///opt/mlbuild")
    assert (new.name, new.dataset, new.csv) == ("my-iris", "my-iris-raw", "data/d.csv")
    assert sorted(f.name for f in new.files) == [".gitignore", "flake.nix", "mlbuild.toml", "model.py", "prepare.py",
                                                  "validate.py"]
    config = tomllib.loads((root / "mlbuild.toml").read_text())
    assert config["python"] == {"interpreter": "python3.11", "requirements": REQUIREMENTS}
    assert config["datasets"]["my-iris-raw"] == {"path": "data/d.csv"}
    assert config["datasets"]["my-iris-split"]["params"] == {"test_fraction": 0.25, "seed": 0, "header": True}
    model = config["models"]["my-iris"]
    assert model["datasets"] == ["my-iris-split"] and model["script"] == "model.py"
    assert {k: model["params"][k] for k in ("features", "classes")} == {"features": 4, "classes": 3}
    assert model["validation"]["dataset"] == "my-iris-split"
    for name in ("model.py", "prepare.py", "validate.py"):
        compile((root / name).read_text(), name, "exec")
    assert 'inputs.mlbuild.url = "git+file:///opt/mlbuild"' in (root / "flake.nix").read_text()
    # no checkout there: the note gives git's reason, not the "(use '--show-trace' ...)" Nix prints last
    assert new.note is not None and "'/opt/mlbuild' does not appear to be a git repository" in new.note
    assert "show-trace" not in new.note
    assert "/data/" in (root / ".gitignore").read_text().splitlines()  # data (and its backups) stays out of git
    assert subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True).returncode == 0


def test_class_names_and_a_csv_name_beyond_the_basic_plane_stay_valid_toml(tmp_path: Path) -> None:
    # json.dumps wrote "cat \ud83d\ude3a": a surrogate pair, which TOML refuses ("Escaped character
    # is not a Unicode scalar value"), so the first command after init failed on the file it wrote
    root = tmp_path / "p"
    names = ["cat \U0001F63A", "dog", "\u732b"]
    text = "a,b,kind\n" + "".join(f"{i},{i % 3},{names[i % 3]}\n" for i in range(12))
    init_project(root, csv_path=csv(root, text, "data/\U0001F63A.csv"))
    config = tomllib.loads((root / "mlbuild.toml").read_text())
    assert config["datasets"]["p-split"]["params"]["labels"] == sorted(names)
    assert config["datasets"]["p-raw"]["path"] == "data/\U0001F63A.csv"


def test_without_a_csv_the_shape_is_a_placeholder(tmp_path: Path) -> None:
    init_project(tmp_path / "p", name="flowers")
    text = (tmp_path / "p" / "mlbuild.toml").read_text()
    config = tomllib.loads(text)
    assert config["datasets"]["flowers-raw"] == {"path": "data/flowers.csv"}
    assert config["models"]["flowers"]["params"]["features"] == 4
    assert "set to your data's feature count" in text


def test_init_overwrites_nothing(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("mine\n")
    with pytest.raises(InitError, match=r"already has model.py; mlbuild init writes only new files"):
        init_project(tmp_path, name="x")
    assert (tmp_path / "model.py").read_text() == "mine\n"
    assert not (tmp_path / "mlbuild.toml").exists()
    # a flake.lock of the user's: it was kept and init said it wrote one
    (tmp_path / "model.py").unlink()
    (tmp_path / "flake.lock").write_text('{"custom": true}\n')
    with pytest.raises(InitError, match=r"already has flake.lock"):
        init_project(tmp_path, name="x")
    assert (tmp_path / "flake.lock").read_text() == '{"custom": true}\n'


@pytest.mark.parametrize(("name", "message"), [
    ("My_Project", "'my_project' is not a project name"), ("9lives", "'9lives' is not a project name"),
    # its model, named like it, was refused by every build
    ("toolchain", "'toolchain' is a name mlbuild uses itself"), ("datasets", "pass another, e.g. --name datasets-model")])
def test_a_bad_name_is_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(InitError, match=message):
        init_project(tmp_path / name)


def test_a_csv_outside_the_project_is_refused(tmp_path: Path) -> None:
    outside = csv(tmp_path, name="elsewhere/d.csv")
    with pytest.raises(InitError, match="is outside .*put the data inside the project"):
        init_project(tmp_path / "p", csv_path=outside)
    assert not (tmp_path / "p").exists()


def test_the_command_says_what_comes_next(tmp_path: Path) -> None:
    root = tmp_path / "iris"
    csv(root)
    out = run_cli("init", "--csv", "data/d.csv", cwd=root).stdout
    assert "data/d.csv: 12 rows, 4 features, 3 classes, a header row" in out
    assert "mlbuild data add iris-raw data/d.csv" in out and "mlbuild build iris && mlbuild validate iris" in out
    again = run_cli("init", cwd=root, check=False)
    assert again.returncode == 1 and "already has mlbuild.toml" in again.stderr


def test_the_next_commands_quote_a_folder_and_a_csv_with_spaces(tmp_path: Path) -> None:
    # "cd /x/my projects/iris && ..." and "mlbuild data add iris-raw data/my data.csv" failed when pasted
    root = tmp_path / "my projects" / "iris"
    csv(root, name="data/my data.csv")
    out = run_cli("init", "--csv", str(root / "data" / "my data.csv"), str(root), cwd=tmp_path).stdout
    assert f"cd '{root}' && mlbuild lock" in out and "mlbuild data add iris-raw 'data/my data.csv'" in out


@pytest.mark.parametrize("file", ["da\nta.csv", "da\x01ta.csv", "da\x7fta.csv"])
def test_a_csv_name_with_a_control_character_stays_valid_toml(tmp_path: Path, file: str) -> None:
    # the path = line escaped it, but two comments named the CSV as it is: a newline ended the
    # comment (the rest of the name read as a key), a \x01 or DEL is not allowed in one
    root = tmp_path / "c"
    init_project(root, csv_path=csv(root, name=file))
    config = tomllib.loads((root / "mlbuild.toml").read_text())
    assert config["datasets"]["c-raw"]["path"] == file


def test_a_csv_name_that_is_not_utf8_is_refused_writing_nothing(tmp_path: Path) -> None:
    # it ended in a UnicodeEncodeError traceback ('surrogates not allowed') writing mlbuild.toml
    root = tmp_path / "n"
    data = csv(root, name=os.fsdecode(b"data/caf\xe9.csv"))
    with pytest.raises(InitError, match=re.escape("the CSV's name b'data/caf\\xe9.csv' is not UTF-8")):
        init_project(root, csv_path=data)
    assert not (root / "mlbuild.toml").exists()


def test_paths_with_quotes_stay_valid_toml(tmp_path: Path) -> None:
    root = tmp_path / "q"
    data = csv(root, name='data/my "best" \\ data.csv')
    python = tmp_path / 'py "3"' / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    init_project(root, csv_path=data, python=str(python))
    config = tomllib.loads((root / "mlbuild.toml").read_text())
    assert config["python"]["interpreter"] == str(python)
    assert config["datasets"]["q-raw"]["path"] == 'data/my "best" \\ data.csv'


def test_a_byte_order_mark_is_not_data(tmp_path: Path) -> None:
    # Spreadsheets save CSVs with a UTF-8 BOM: without a header row, the first row is still data.
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,9,0\n8,8,1\n7,7,0\n6,6,1\n".encode())
    shape = read_csv_shape(path)
    assert (shape.header, shape.rows, shape.features, shape.classes) == (False, 8, 2, 2)


def test_a_csv_that_is_not_utf8_is_refused_naming_its_line_and_how_to_convert_it(tmp_path: Path) -> None:
    # Excel's 'CSV' saves in the Windows code page, its 'Unicode Text' in UTF-16: init said "cannot
    # read ...: 'utf-8' codec can't decode byte 0xe9 in position 21: invalid continuation byte",
    # with no fix, and a position within the reader's 8 KiB chunk, not the file.
    rows = "".join(f"{i},{i % 7},{'a' if i % 2 else 'b'}\r\n" for i in range(2000))
    path = tmp_path / "cp1252.csv"
    path.write_bytes((rows + "1,2,caf\u00e9\r\n").encode("cp1252"))
    with pytest.raises(InitError) as e:
        read_csv_shape(path)
    start = len(rows) + len("1,2,caf")
    assert str(e.value) == (f"{path}, line 2001: not UTF-8 text (byte {start} is b'\\xe9'); save it as UTF-8: Excel's "
                            f"'CSV UTF-8 (Comma delimited)', or `iconv -f cp1252 -t utf-8 {path} > new.csv`")
    path.write_bytes(("a,b,c\r\n" + rows).encode("utf-16"))
    with pytest.raises(InitError, match=r"line 1: not UTF-8 text \(byte 0 is b'\\xff'; a UTF-16 file.*iconv -f utf-16"):
        read_csv_shape(path)
    # Excel for Mac's 'CSV (Macintosh)': Mac Roman with CR line ends, which the reader counts as lines too
    path.write_bytes((rows + "1,2,caf\u00e9\r\n").replace("\r\n", "\r").encode("mac_roman"))
    with pytest.raises(InitError, match=r"line 2001: not UTF-8 text"):
        read_csv_shape(path)


def test_an_existing_gitignore_gets_the_lines_it_lacks(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / ".gitignore").write_text("__pycache__/\nresult*")   # no final newline
    new = init_project(root, csv_path=csv(root))
    assert (root / ".gitignore").read_text() == "__pycache__/\nresult*\n/data/\n.ipynb_checkpoints/\n"
    assert new.extended == [root / ".gitignore"] and root / ".gitignore" not in new.files
    assert (root / "mlbuild.toml").exists()


def _generated_prepare(root: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generated_prepare", root / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare


def test_the_generated_prepare_names_the_line_a_later_edit_broke(tmp_path: Path) -> None:
    """The CSV is checked by init, but it changes later (`data add` pins the new one): the split
    then says which line is wrong instead of a bare ValueError or KeyError."""
    root = tmp_path / "p"
    text = "a,b,kind\n" + "".join(f"{i},{i % 3},{'cat' if i % 2 else 'dog'}\n" for i in range(12))
    data = csv(root, text)
    init_project(root, csv_path=data)
    prepare = _generated_prepare(root)
    params = tomllib.loads((root / "mlbuild.toml").read_text())["datasets"]["p-split"]["params"]
    out = tmp_path / "out"
    out.mkdir()
    prepare({"p-raw": data}, out, params)
    assert json.loads((out / "labels.json").read_text()) == ["cat", "dog"]
    assert len((out / "train.csv").read_text().splitlines()) == 9
    for line, message in (("3,nan,dog", "dataset p-raw, line 5: '3,nan,dog' holds NaN or infinity"),
                          ("3,x,dog", "line 5: '3,x,dog': column 2 is 'x', not a number"),
                          ("3,1,cow", "line 5: '3,1,cow': the class (last column) is 'cow', not one of cat, dog; "
                                      "a new class needs the labels"),
                          ("3,1,2,dog", "line 5: '3,1,2,dog' has 4 columns; line 2 has 3"),
                          # a dropped column: the width, not the class, is what is wrong
                          ("3,dog", "line 5: '3,dog' has 2 columns; line 2 has 3"),
                          ("3;1;dog", "line 5: '3;1;dog' has 1 columns; line 2 has 3")):
        lines = text.splitlines()
        lines[4] = line
        data.write_text("\n".join(lines) + "\n")
        with pytest.raises(SystemExit, match=re.escape(message)):
            prepare({"p-raw": data}, out, params)
    data.write_text(text.replace("\n", "\n\n", 2))   # two blank lines after line 1 and 2: the lines move
    lines = data.read_text().split("\n")
    lines[6] = "3,x,dog"
    data.write_text("\n".join(lines))
    with pytest.raises(SystemExit, match=re.escape("dataset p-raw, line 7: '3,x,dog': column 2")):
        prepare({"p-raw": data}, out, params)
    # saved again from Excel: in its code page, the split ended in a UnicodeDecodeError traceback;
    # with a byte order mark and CRLF, as 'CSV UTF-8' saves, it splits as before
    data.write_bytes(text.replace("dog\n", "d\u00f6g\n", 3).encode("cp1252"))
    with pytest.raises(SystemExit, match=re.escape("dataset p-raw, line 2: not UTF-8 text (byte 14 is b'\\xf6'); "
                                                   "save the CSV as UTF-8")):
        prepare({"p-raw": data}, out, params)
    data.write_bytes(text.replace("dog\n", "d\u00f6g\n", 3).replace("\n", "\r").encode("mac_roman"))  # CR line ends
    with pytest.raises(SystemExit, match=re.escape("dataset p-raw, line 2: not UTF-8 text (byte 14 is b'\\x9a')")):
        prepare({"p-raw": data}, out, params)
    data.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    prepare({"p-raw": data}, out, params)
    assert len((out / "train.csv").read_text().splitlines()) == 9
    data.write_text(text)
    for bad in (25, 1.0, 0.0):   # 25 would be 25 rows to scikit-learn
        with pytest.raises(SystemExit, match=re.escape(f"test_fraction is {bad!r}; give the held-out share as a fraction")):
            prepare({"p-raw": data}, out, {**params, "test_fraction": bad})
    with pytest.raises(SystemExit, match="no rows of the class 'bird' that \\[datasets.p-split.params\\].labels names"):
        prepare({"p-raw": data}, out, {**params, "labels": ["cat", "dog", "bird"]})


@pytest.mark.parametrize(("room_kb", "said"), [(8, "Error: No space left on device writing "),
                                               (40, "Error: `git init` in ")])   # its hook samples
def test_a_full_disk_leaves_no_file_of_a_half_init(tmp_path: Path, room_kb: int, said: str) -> None:
    """The files were written in place, one by one: a disk that filled up left mlbuild.toml (and
    more) empty or cut, with the CLI naming no file, and the next init refused the folder ("already
    has mlbuild.toml"). Now the file is named and init writes all or nothing (the .gitignore it
    extended is put back); a `git init` that failed so was a CalledProcessError traceback."""
    import shlex

    root = tmp_path / "p"
    root.mkdir()
    r = shlex.quote(str(root))
    init = f"{shlex.join(MLBUILD)} init --csv data/d.csv --python {shlex.quote(sys.executable)}"
    script = (f"mount -t tmpfs -o size=1m tmpfs {r} && cd {r} && mkdir data && printf '{IRIS_LIKE}' > data/d.csv "
              f"&& printf 'mine\\n' > .gitignore && avail=$(df -k --output=avail . | tail -1) && "
              f"(dd if=/dev/zero of=fill bs=1k count=$((avail - {room_kb})) 2>/dev/null; true) && {{ {init}; "
              f"echo \"left: $(ls -A | tr '\\n' ' ')$(cat .gitignore)\"; rm fill; {init} >/dev/null && ls; }}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stderr.startswith(said) and "No space left on device" in proc.stderr, proc.stderr
    assert "left: .gitignore data fill mine\n" in proc.stdout, proc.stdout
    assert "mlbuild.toml" in proc.stdout.split("mine", 1)[1], proc.stdout + proc.stderr


def test_an_interpreter_that_is_not_there_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"--python python9\.9 is not an executable on PATH; give a Python that runs "
                                        r"here \(e\.g\. --python python3\.11, or a path\)"):
        init_project(tmp_path / "p", python="python9.9")
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_a_python_that_is_not_a_python_is_refused(tmp_path: Path) -> None:
    """`--python ls` was written into mlbuild.toml; `mlbuild lock` then printed its probe script."""
    with pytest.raises(InitError, match=r"--python ls \(/\S+/ls\) is not a CPython interpreter that runs here"):
        init_project(tmp_path / "p", python="ls")


def test_init_refuses_the_model_names_nix_refuses() -> None:
    """init names the model like the project; nix/project.nix refuses its reserved model names.
    The two lists are written apart (Python, Nix): they must stay the same."""
    from mlbuild.init import RESERVED

    nix = (Path(__file__).parents[2] / "nix" / "project.nix").read_text()
    m = re.search(r"^ +reserved = \[([^\]]*)\];", nix, re.M)
    assert m and tuple(json.loads(f"[{m.group(1).strip().replace(' ', ', ')}]")) == RESERVED


def test_a_failed_git_init_leaves_a_repository_that_was_there(tmp_path: Path) -> None:
    """A folder holding a .git that `git rev-parse` rejects (another user's checkout: "dubious
    ownership"; a damaged config) and `git init` cannot set up either: init removed that .git
    whole, the commits in it too, and said "it wrote nothing". Only a .git it made is removed."""
    root = tmp_path / "p"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "f").write_text("mine\n")
    subprocess.run(["git", "add", "f"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"], cwd=root, check=True)
    objects = sorted(p for p in (root / ".git" / "objects").rglob("*") if p.is_file())
    (root / ".git" / "config").rename(root / ".git" / "config.saved")
    (root / ".git" / "config").mkdir()   # git can neither read nor write it, as root too
    with pytest.raises(InitError, match=r"`git init` in .* failed: .*; fix that, then run mlbuild init again"):
        init_project(root, python=sys.executable)
    assert sorted(p for p in (root / ".git" / "objects").rglob("*") if p.is_file()) == objects
    assert sorted(p.name for p in root.iterdir()) == [".git", "f"]


def flake_checkout(path: Path, commits: int = 1) -> Path:
    """A git checkout at ``path`` of a minimal flake, with ``commits`` commits."""
    path.mkdir()
    (path / "flake.nix").write_text("{ outputs = { self }: { lib = { }; }; }\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "add", "flake.nix"], cwd=path, check=True)
    for i in range(commits):
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", str(i)], cwd=path, check=True)
    return path


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_an_mlbuild_checkout_with_uncommitted_changes_is_named_with_the_fix(tmp_path: Path) -> None:
    """Nix 2.8 locked such a checkout by its tree's hash alone and init said nothing, though that
    lock is refused by Nix 2.26 ("Lock file contains unlocked input", CI on Debian 13); Nix 2.26
    refused to write one and init's note said the first `nix build` would write it (it refuses the
    same way) beside Nix's hint `--allow-dirty-locks`, whose lock Nix 2.8 cannot read."""
    checkout = flake_checkout(tmp_path / "mlbuild")
    (checkout / "flake.nix").write_text("{ outputs = { self }: { lib = { x = 1; }; }; }\n")   # uncommitted
    root = tmp_path / "p"
    new = init_project(root, csv_path=csv(root), python="python3.11", flake_url=f"git+file://{checkout}")
    assert new.note is not None and re.search(
        r"^flake.lock was (not written:|written, but) the mlbuild checkout flake.nix names has uncommitted changes, "
        r"which no other machine can fetch, .* commit them there, then `nix flake lock --update-input mlbuild` "
        r"here, `git add flake.lock` and commit it$", new.note), new.note
    assert (root / "flake.lock" in new.files) == (root / "flake.lock").is_file()   # "wrote flake.lock" when it did


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_a_shallow_mlbuild_checkout_this_nix_cannot_lock_is_named_with_the_fix(tmp_path: Path) -> None:
    """Nix 2.8 refuses a shallow clone as a flake input ("a non-shallow repository is needed"), and
    init's note said the first `nix build` would write flake.lock, which fails the same way."""
    full = flake_checkout(tmp_path / "full", commits=2)
    checkout = tmp_path / "mlbuild"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{full}", str(checkout)], check=True)
    root = tmp_path / "p"
    new = init_project(root, csv_path=csv(root), python="python3.11", flake_url=f"git+file://{checkout}")
    if new.note is None:   # a Nix that locks a shallow clone (2.26)
        return
    assert new.note == (f"flake.lock was not written: the mlbuild checkout flake.nix names, {checkout}, is a shallow "
                        f"clone, which this Nix cannot lock (nor can `nix build` here); run `git -C {checkout} fetch "
                        f"--unshallow`, then `nix flake lock` here, `git add flake.lock` and commit it"), new.note


def test_init_in_another_users_repository_names_safe_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlbuild init` in ml/ of a monorepo another user owns: git answered as if there were no
    repository, so init ran `git init` there and left a repository inside theirs. Now it is
    refused naming safe.directory, and nothing is written."""
    from mlbuild.git import GitError
    from tests.unit.test_git import another_users

    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    repo = tmp_path / "mono"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    project = repo / "ml"
    csv(project)
    another_users(repo, monkeypatch)
    with pytest.raises(GitError, match=r"another user owns it .*safe\.directory"):
        init_project(project, python=sys.executable, csv_path=project / "data" / "d.csv")
    assert sorted(p.name for p in project.iterdir()) == ["data"]


@pytest.mark.parametrize(("option", "value", "message"), [
    # the folder's name, this checkout's flake, without a word: an unset variable went unseen
    ("--name", "", "--name '' is empty (an unset variable?); give one, or leave --name out for the folder's name"),
    ("--mlbuild-flake", "", "--mlbuild-flake '' is empty (an unset variable?)"),
    ("--python", "", "--python '' is empty (an unset variable?)"),
    # flake.nix holds the URL in a Nix string: one with a '"' wrote a flake.nix that did not parse
    ("--mlbuild-flake", 'git+file:///x"; y = "z', "is not a flake URL (it holds a space, a quote"),
    ("--mlbuild-flake", "not a url", "--mlbuild-flake 'not a url' is not a flake URL"),
    ("--mlbuild-flake", "github:org/${x}", "is not a flake URL"),
])
def test_an_empty_or_unquotable_option_is_refused_writing_nothing(tmp_path: Path, option: str, value: str,
                                                                  message: str) -> None:
    root = tmp_path / "iris"
    csv(root)
    proc = run_cli("init", "--csv", "data/d.csv", option, value, cwd=root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert sorted(p.name for p in root.iterdir()) == ["data"]


def test_a_folder_that_cannot_be_made_is_named_not_a_traceback(tmp_path: Path) -> None:
    """`mlbuild init /proc/x` (or a folder under one this user may not write) ended in a
    FileNotFoundError (PermissionError) traceback from mkdir."""
    proc = run_cli("init", "/proc/mlbuild-init-test/p", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Error: cannot make the folder /proc/mlbuild-init-test/p: No such file or directory; give a folder you " \
           "may write to (mlbuild init FOLDER)" in proc.stderr
