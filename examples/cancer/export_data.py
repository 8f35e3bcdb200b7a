"""Write scikit-learn's bundled breast-cancer data (Wisconsin diagnostic) as a plain CSV file.

    python export_data.py data/cancer

The data ships inside the scikit-learn wheel: no network. Values are written with repr(), so
the file is byte-identical on every machine.
"""

import sys
from pathlib import Path

from sklearn.datasets import load_breast_cancer

out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/cancer")
out.mkdir(parents=True, exist_ok=True)
d = load_breast_cancer()
with open(out / "cancer.csv", "w") as f:
    f.write(",".join([n.replace(" ", "_") for n in d.feature_names] + ["label"]) + "\n")
    for x, y in zip(d.data, d.target):
        f.write(",".join(repr(float(v)) for v in x) + f",{int(y)}\n")
print(f"wrote {len(d.target)} rows to {out / 'cancer.csv'}")
