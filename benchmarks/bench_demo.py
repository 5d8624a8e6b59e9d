"""Wall time of ``make demo`` from an empty model / data / glasses cache (the issue #13 target: 10 min on 2 cores).

    python benchmarks/bench_demo.py [--keep] [-- MAKE_VARS ...]     e.g. -- DEMO_SWEEP_LIMIT=6

It needs a finished ``make setup`` (setup is not timed). The caches go to a fresh temporary folder
(``MMTOXICQA_CACHE``), so the model and the benchmark are built and SGM calibrates, as on a first
run. The report gives the total, the part after model and data (the demo's own ``demo: N s`` line),
the machine's cores and load average before and after, and ``OMP_NUM_THREADS``: a loaded machine
is slower, so say which it was when you quote the number.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache and demo output")
    parser.add_argument("make_vars", nargs="*", help="extra make variables, e.g. DEMO_SWEEP_LIMIT=6")
    args = parser.parse_args()
    if not (REPO / ".venv" / ".mmtoxicqa-installed").is_file():
        print("bench_demo: run `make setup` first (setup is not part of the timed demo)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = {**os.environ, "MMTOXICQA_CACHE": str(scratch / "cache")}
    env.pop("MMTOXICQA_DATA", None)  # built into the empty cache, like a first run
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(
        ["make", "demo", f"DEMO_OUT={scratch / 'out'}", *args.make_vars], cwd=REPO, env=env, capture_output=True, text=True
    )
    total = time.perf_counter() - start
    load_after = os.getloadavg()
    log = scratch / "demo.log"
    log.write_text(proc.stdout + proc.stderr)
    demo_part = re.findall(r"^demo: (\d+) s after setup, model and data$", proc.stdout, flags=re.M)
    print(f"make demo exit {proc.returncode}; total {total:.0f} s ({total / 60:.1f} min, target {TARGET_S} s)")
    if demo_part:
        print(f"  after model and data: {demo_part[-1]} s; model + data build: {total - int(demo_part[-1]):.0f} s")
    print(
        f"  cores {os.cpu_count()}, load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    if proc.returncode:
        print("  last lines of its output:\n" + "\n".join((proc.stdout + proc.stderr).replace("\r", "\n").splitlines()[-15:]))
    print(f"  log: {log}" if args.keep else "  (temporary cache and output removed; --keep keeps them)")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
