"""The distributions each stage declares it needs (`needs.wheels` in nix/) cover what its runtime imports.

Follows the imports from each stage's entry module through mlbuild's own modules and collects the
third-party ones; an import inside `try: ... except ImportError` is optional (httptools, uvloop).
A new import in the server without its distribution in nix/package.nix fails here, not in a new
user's server.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "mlbuild" / "runtime"
# Top-level module -> the distribution that installs it.
DISTRIBUTION = {"torch": "torch", "numpy": "numpy", "safetensors": "safetensors", "sklearn": "scikit-learn",
                "starlette": "starlette", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
                "nbclient": "nbclient", "nbformat": "nbformat", "traitlets": "nbclient"}  # traitlets: nbclient's
STAGES = {  # nix file -> the modules its derivation (or what it makes) runs
    "train.nix": ["mlbuild.runtime.train"],
    "package.nix": ["mlbuild.runtime.package", "mlbuild.runtime.serve.__main__"],
    "validate.nix": ["mlbuild.runtime.validate"],
    "monitor.nix": ["mlbuild.runtime.monitor"],
    "notebook.nix": ["mlbuild.runtime.notebook"],
}


def runtime_modules(nix_file: str) -> set[str]:
    """The runtime modules a stage's store paths hold (its `modules` and `runtimeFor` lists):
    an import of any other is on a path the stage never takes (it would fail there)."""
    text = (REPO / "nix" / nix_file).read_text()
    names = {n for lst in re.findall(r"(?:modules =|runtimeFor) \[([^\]]*)\]", text) for n in re.findall(r'"([^"]+)"', lst)}
    return {"mlbuild.runtime." + n.rstrip("/").replace("/", ".") for n in names}


def module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers):
            return True
    return False


def third_party_imports(entries: list[str], held: set[str] | None = None) -> dict[str, str]:
    """{top-level module: where} of the required third-party imports reachable from ``entries``
    through mlbuild's modules (only those under ``held``, when given)."""
    seen: set[str] = set()
    found: dict[str, str] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        path = module_file(name)
        inside = held is None or name in ("mlbuild", "mlbuild.runtime") or any(
            name == h or name.startswith(h + ".") for h in held)
        if name in seen or path is None or not inside:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    mod = f"{base}.{node.module}" if node.module else base
                    targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for t in targets:
                top = t.split(".")[0]
                if top == "mlbuild":
                    todo.append(t)
                elif top not in sys.stdlib_module_names and top != "__future__" and not _optional(node, parents):
                    found.setdefault(top, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def declared(nix_file: str) -> set[str]:
    text = (REPO / "nix" / nix_file).read_text()
    match = re.search(r"wheels = \[([^\]]*)\]", text)
    assert match, f"nix/{nix_file} declares no needs.wheels"
    return set(re.findall(r'"([^"]+)"', match.group(1)))


@pytest.mark.parametrize("nix_file", sorted(STAGES))
def test_declared_distributions_cover_the_imports(nix_file: str) -> None:
    imports = third_party_imports(STAGES[nix_file], runtime_modules(nix_file))
    unknown = {m: w for m, w in imports.items() if m not in DISTRIBUTION}
    assert not unknown, f"map these modules to their distribution in DISTRIBUTION: {unknown}"
    missing = {m: w for m, w in imports.items() if DISTRIBUTION[m] not in declared(nix_file)}
    assert not missing, f"nix/{nix_file} needs.wheels lacks the distributions of {missing}"


def test_the_walk_sees_the_server_stack() -> None:
    """The check itself: the server's imports are found, httptools (optional) is not."""
    assert {"mlbuild.runtime.serve", "mlbuild.runtime.package"} <= runtime_modules("package.nix")
    imports = third_party_imports(STAGES["package.nix"], runtime_modules("package.nix"))
    assert {"torch", "numpy", "safetensors", "starlette", "uvicorn", "prometheus_client"} <= set(imports)
    assert "httptools" not in imports and "uvloop" not in imports
