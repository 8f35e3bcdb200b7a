"""Write scikit-learn's bundled digits data (UCI optical digits, 8x8) as a plain CSV file.

    python export_data.py data/digits

The data ships inside the scikit-learn wheel: no network. Pixel values are integers 0..16, so
the file is byte-identical on every machine.
"""

import sys
from pathlib import Path

from sklearn.datasets import load_digits

out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/digits")
out.mkdir(parents=True, exist_ok=True)
d = load_digits()
with open(out / "digits.csv", "w") as f:
    f.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
    for x, y in zip(d.data.astype(int), d.target):
        f.write(",".join(map(str, x)) + f",{y}\n")
print(f"wrote {len(d.target)} rows to {out / 'digits.csv'}")
