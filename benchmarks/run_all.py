"""Runs every benchmark in this folder and prints one table of ratios.

Each benchmark module exposes ``run() -> list[dict]`` with rows holding
``benchmark, metric, value, baseline, ratio, unit, goal``; the baseline is
measured in the same run as the value, so the ratio is what to compare. A row whose
ratio is a median over rounds also has ``interval``, the 95% interval of that median.
When the interval holds the goal's bound, the run cannot tell which side of the bound
the ratio lies on; the median alone says met or not.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("benchmark", "metric", "value", "baseline", "ratio", "interval", "unit", "goal")
# Benchmarks whose file name does not end in _bench, run after the others.
CURVES = ("cost_curve",)


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict[str, object]]) -> None:
    """Prints rows as a Markdown table, ready to paste into README."""
    cells = [[_format(row.get(c, "")) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def main(names: list[str]) -> int:
    """Runs the named benchmark modules, or all of them."""
    sys.path.insert(0, str(HERE))
    modules = names or [*sorted(p.stem for p in HERE.glob("*_bench.py")), *CURVES]
    rows: list[dict[str, object]] = []
    failed = []
    for name in modules:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(importlib.import_module(name).run())
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print_table(rows)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
