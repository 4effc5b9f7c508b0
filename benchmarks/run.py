"""Run every benchmark (``make bench``): each ``bench_*.py`` in this folder,
in name order, in its own process.  Each writes its table, as printed, to
``benchmarks/results/``.  Pass names to run a subset: ``run.py grassmann``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(a in s.stem for a in argv)]
    status = 0
    for script in scripts:
        print(f"==> {script.name}", flush=True)
        status |= subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
