"""The loop with D-SPIB, end to end: ``latf loop`` on a small three-hole workflow with ``[train] model = "dspib"``.

Usage: python bench/dspib_loop.py [--seeds 5 6] [--out DIR]

The workflow is the loop test's replica-exchange one (``tests/test_loop.py``: round 0 at
k_BT 0.75 and 1.2, one metadynamics walker along the CV, replicas at 0.75 / 0.95 / 1.2 under
its fixed bias; one round) with a D-SPIB model (3 joint epochs, 1 500 polishing steps) and
targets 0.75, 1.0 (no MD there) and 1.2. Too long for CI (≈ 5 min on 2 shared cores, most
of it the D-SPIB training and final refit). For each seed it prints one JSON line per target
(the regions' populations as the final model generates them, as the loop's MBAR estimate
has them, and by quadrature; the largest error of each) and the loop's wall time, then a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_loop import REPLICA_WORKFLOW  # the loop test's workflow (tests/ is on the path above)

GRID_PRIOR = 'prior = "grid"              # three temperatures; an unpolished flow fails the generation check'
DSPIB = 'model = "dspib"\njoint_max_epochs = 3\npolish_steps = 1500'


def workflow(seed: int) -> str:
    """Return the loop test's replica workflow with D-SPIB, seed ``seed`` and targets 0.75, 1.0 and 1.2."""
    if GRID_PRIOR not in REPLICA_WORKFLOW or "seed = 5\n" not in REPLICA_WORKFLOW:
        raise SystemExit("tests/test_loop.py's REPLICA_WORKFLOW changed: update bench/dspib_loop.py")
    text = REPLICA_WORKFLOW.replace(GRID_PRIOR, DSPIB).replace("seed = 5\n", f"seed = {seed}\n")
    return text.replace("[md]", "targets = [0.75, 1.0, 1.2]\n[md]", 1)


def run_seed(seed: int, out: Path) -> list[dict]:
    """Run the loop for ``seed`` in ``out/seed_<seed>``; return one record per target."""
    folder = out / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workflow.toml").write_text(workflow(seed))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "latf_openmm.cli", "loop", str(folder / "workflow.toml"), "--out",
                             str(folder / "run")], capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"seed {seed}: the loop failed: {result.stderr.strip().splitlines()[-1]}")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    records = []
    for target, figures in summary["targets"].items():
        regions = figures["regions"]
        generated, mbar, exact = (regions[f"{k}_populations"] for k in ("generated", "mbar", "exact"))
        records.append({
            "seed": seed, "k_BT": float(target), "regions": regions["names"],
            "generated": [round(p, 4) for p in generated], "mbar": [round(p, 4) for p in mbar],
            "exact": [round(p, 4) for p in exact],
            "generated_max_error": round(max(abs(g - e) for g, e in zip(generated, exact, strict=True)), 4),
            "mbar_max_error": round(max(abs(m - e) for m, e in zip(mbar, exact, strict=True)), 4),
            "loop_wall_seconds": round(wall, 1),
        })  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_dspib_loop"))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for record in run_seed(seed, args.out):
            print(json.dumps(record), flush=True)
            rows.append(record)
    print("\n| seed | k_BT | generated | MBAR | exact | largest error: generated / MBAR | loop s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        shown = [" / ".join(f"{p:.3f}" for p in r[k]) for k in ("generated", "mbar", "exact")]
        print(f"| {r['seed']} | {r['k_BT']:g} | {' | '.join(shown)} | {r['generated_max_error']:.3f} / "
              f"{r['mbar_max_error']:.3f} | {r['loop_wall_seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
