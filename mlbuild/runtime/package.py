"""Builder of a model package: the unit that is validated, imaged and deployed.

Layout::

    $out/manifest.json      name + hashes: model (weights sha256), data, code, toolchain
    $out/model/             links to the training output's model.safetensors, config.json,
                            metrics.json, provenance.json, reference.json (feature statistics)
    $out/code               a link to the model's source files (build_model, optional
                            pre/postprocess): the code store path
    $out/serve.json         micro-batching and limits from [models.NAME.serve]
    $out/bin/serve          starts the OIP v2 server on this package (a Python script whose
                            shebang is the toolchain's python: no shell needed)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .hashing import sha256_file
from .stagespec import load_spec

__all__ = ["main"]

# -E: the caller's PYTHONPATH (a dev shell's, another project's) and PYTHONHOME are not read, so the
# toolchain's own wheels are what runs, as in the build and the image; -s: no user site-packages;
# -B: no bytecode written (-E drops PYTHONDONTWRITEBYTECODE: as root, with no Nix daemon, the
# store's folders are writable, and __pycache__ went into the runtime's and the code's store paths).
SERVE_SCRIPT = """#!{python} -EsB
# Serve the {name} model package (Open Inference Protocol v2). Arguments: --port, --host...
import sys
sys.path.insert(0, {runtime!r})
from mlbuild.runtime.serve.__main__ import main
sys.exit(main(sys.argv[1:], package={package!r}))
"""


def main() -> None:
    spec = load_spec()
    out = Path(os.environ["out"])
    trained = Path(spec["model"])
    # Links, not copies: the training output and the code are store paths of the package's closure
    # already, and a copy would put every byte of the weights into the store, the shared store and
    # each push twice.
    (out / "model").mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "metrics.json", "provenance.json", "reference.json"):
        if (trained / name).exists():
            os.symlink(trained / name, out / "model" / name)
    os.symlink(spec["code"], out / "code")
    provenance = json.loads((trained / "provenance.json").read_text())
    data = json.dumps(provenance["datasets"], sort_keys=True).encode()
    manifest = {
        "version": 1,
        "name": spec["name"],
        "hashes": {
            "model": sha256_file(out / "model" / "model.safetensors"),
            "data": hashlib.sha256(data).hexdigest(),
            "code": provenance["code"]["sha256"],
            "toolchain": spec["toolchain"],
        },
        "training": str(trained),
        "datasets": provenance["datasets"],
        "params": provenance["params"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / "serve.json").write_text(json.dumps(spec["serve"], indent=2, sort_keys=True) + "\n")
    (out / "bin").mkdir()
    script = out / "bin" / "serve"
    script.write_text(SERVE_SCRIPT.format(python=spec["python"], name=spec["name"], runtime=spec["runtime"],
                                          package=str(out)))
    script.chmod(0o555)


if __name__ == "__main__":
    main()
