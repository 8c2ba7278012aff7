"""The demo's wall time per step, against its 20-minute target (issue 13).

Runs ``python -m flows.demo`` as ``make demo`` does, on the embedded defaults (the bundled real
data, 2 Stage 1 rounds, Stage 2 over the other half of hh-rlhf with 20% of it swapped, the
comparison and the report), but from nothing: a fresh output directory, ingest output, vector
store, verification database, MLflow store and Prefect home under one temporary directory
(install excluded). The run is its own baseline: every step is reported as a share of the whole
and the whole as a ratio to the 20-minute target; the cores other processes kept busy meanwhile
are sampled (a busy machine makes every figure pessimistic).

    .venv/bin/python -m benchmarks.bench_demo            # ~15-20 min on 2 cores
    .venv/bin/python -m benchmarks.bench_demo --keep DIR # keep the run's outputs in DIR

Results: a Markdown table on stdout and ``benchmarks/results/demo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, OtherLoad, machine, write_results

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 20 * 60


def demo_config(root: Path) -> dict:
    """The embedded defaults with every path moved under ``root``."""
    from flows.demo import DemoFlowConfig
    from synpref_core.config import TrackingConfig

    config = DemoFlowConfig()
    stage1 = config.stage1.model_copy(
        update={
            "store": config.stage1.store.model_copy(update={"uri": str(root / "vectors")}),
            "human": config.stage1.human.model_copy(
                update={"db_url": f"sqlite:///{root / 'human.db'}"}
            ),
            "out": str(root / "stage1"),
        }
    )
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    config = config.model_copy(
        update={
            "ingest": config.ingest.model_copy(update={"out": str(root / "ingest")}),
            "stage1": stage1,
            "out": str(root / "demo"),
            "runtime": config.runtime.model_copy(update={"tracking": tracking}),
        }
    )
    return config.model_dump(mode="json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="synpref-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    config = root / "demo.yaml"
    config.write_text(yaml.safe_dump(demo_config(root)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "RAY_"))}
    env |= {"PREFECT_HOME": str(root / "prefect-home"), "PYTHONPATH": str(REPO),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    log = root / "demo.log"
    started = time.perf_counter()
    with OtherLoad() as load, log.open("wb") as handle:
        rc = subprocess.run(
            [sys.executable, "-m", "flows.demo", "--config", str(config)],
            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False,
        ).returncode  # fmt: skip
    wall = time.perf_counter() - started
    if rc != 0:
        sys.exit(f"the demo failed (exit {rc}); its log: {log}")
    demo = json.loads((root / "demo" / "demo.json").read_text())
    steps = [{"step": s["step"], "seconds": s["seconds"]} for s in demo["steps"]]
    rounds = [{"round": r["round"], "seconds": r["seconds"], **r.get("timings", {})}
              for r in demo["stage1"]["rounds"]]  # fmt: skip
    results = {
        "machine": machine("torch", "ray", "prefect"),
        "wall_s": round(wall, 1),
        "target_s": TARGET_S,
        "ratio_to_target": round(wall / TARGET_S, 3),
        "other_load_cores": round(load.mean, 2),
        "steps": steps,
        "rounds": rounds,
        "comparison": demo["comparison"],
        "stage2": demo["stage2"],
    }
    path = write_results(RESULTS / "demo.json", results)
    print(f"demo wall time {wall:,.0f} s = {wall / TARGET_S:.2f} × the 20-min target "
          f"(other load {load.mean:.2f} cores)\n")  # fmt: skip
    print("| step | seconds | share |\n|---|---:|---:|")
    for step in steps:
        print(f"| {step['step']} | {step['seconds']:,.0f} | {step['seconds'] / wall:.0%} |")
    keys = sorted({k for r in rounds for k in r} - {"round", "seconds"})
    print(f"\n| round | seconds | {' | '.join(keys)} |\n|---|" + "---:|" * (len(keys) + 1))
    for r in rounds:
        cells = " | ".join(f"{r.get(k, 0):,.0f}" for k in keys)
        print(f"| {r['round']} | {r['seconds']:,.0f} | {cells} |")
    print(f"\nresults: {path}; log: {log}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
