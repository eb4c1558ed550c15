"""Print every held-out-fold run in scripts/experiments/results/*.jsonl as one markdown table
(the source of the tables in docs/nn-results.md).

    python scripts/experiments/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    rows = []
    for p in sorted(RESULTS.glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["when"])
    print("| run | impl | fold | seed | held-out acc (errors / rows) | log loss | extra | "
          "seconds (s/epoch, median) | load | when (UTC) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ep = sorted(r["epoch_seconds"])
        med = ep[len(ep) // 2] if ep else 0
        extra = ", ".join(f"{k} {r[k]:.2%}" for k in ("tta_acc", "swa_acc") if k in r)
        print(f"| {r['name']} | {r['impl']} | {r['fold']} | {r['seed']} | {r['acc']:.2%} "
              f"({r['errors']} / {r['held_out_rows']}) | {r['log_loss']:.4f} | {extra} | "
              f"{r['seconds']:.0f} ({med:.0f}) | {r['load'][0]:.1f} | {r['when']} |")


if __name__ == "__main__":
    main()
