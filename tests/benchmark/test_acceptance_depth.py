"""bench/acceptance_depth.py: acceptance by depth per method, against counts done by hand."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "acceptance_depth.py"


def test_depth_shares_are_counted_per_method_over_all_rows(tmp_path):
    rows = [{"method": "plain", "accepted_per_step": [1, 1, 1]},
            {"method": "spec", "accepted_per_step": [1, 3, 2]},
            {"method": "spec", "accepted_per_step": [4, 1]}]
    path = tmp_path / "results.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"rows": rows}, handle)
    out = subprocess.run([sys.executable, str(SCRIPT), str(path), "--depths", "3"],
                         capture_output=True, text=True, check=True).stdout
    table = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
             for line in out.splitlines()[2:]}
    # spec: 5 steps committing 1, 3, 2, 4, 1 tokens; depth >= 1 in 3 of them, >= 2 in 2,
    # >= 3 in 1; so 2 given 1 = 2/3 and 3 given 2 = 1/2.
    assert table["spec"][1:] == ["5", "2.20", "40%", "60%", "40%", "20%", "67%", "50%"]
    assert table["plain"][1:] == ["3", "1.00", "100%", "0%", "0%", "0%", "-", "-"]
