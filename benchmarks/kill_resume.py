"""SIGKILL a short run at random moments, resume it, and check it ends bit-identical to a straight run.

For each try: start ``degl train``, kill it with SIGKILL after a random delay drawn uniformly over the
straight run's duration (so kills land during start-up, steps, evaluation and checkpoint saves), then
``degl train --resume`` until it completes. A try passes when the final checkpoint's every tensor
equals the straight run's, no temporary file is left, and every ``metrics.jsonl`` line is JSON.

    .venv/bin/python benchmarks/kill_resume.py --tries 20
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from degl.run import checkpoint

RUN = [
    "--dataset", "synthetic", "--input-shape", "1,12,12", "--synthetic-size", "512", "--num-classes", "4",
    "--model", "cnn4", "--width", "0.125", "--batch-size", "32", "--stages", "3", "--epochs", "4",
    "--threads", "1", "--no-progress",
]  # fmt: skip


def degl(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "degl", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    path, meta = checkpoint.load_meta(run)
    tensors = {}
    for index in range(meta["num_stages"]):
        state = checkpoint.load_stage(path, index)
        tensors.update({f"{index}.{k}": v for k, v in state["model"].items()})
    return tensors


def check(run: Path, reference: dict[str, torch.Tensor]) -> list[str]:
    problems = []
    got = final_tensors(run)
    if got.keys() != reference.keys() or any(not torch.equal(got[k], reference[k]) for k in reference):
        problems.append("weights differ from the straight run")
    if not json.loads((run / "summary.json").read_text())["completed"]:
        problems.append("not complete")
    if leftovers := [str(p.relative_to(run)) for p in run.rglob("*.tmp")]:
        problems.append(f"temporary files left: {leftovers}")
    for number, line in enumerate((run / "metrics.jsonl").read_text().splitlines(), 1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"metrics.jsonl line {number} is not JSON")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="degl-kill-"))
    started = time.monotonic()
    straight = degl(*RUN, "--out", str(work / "straight"))
    assert straight.wait() == 0, straight.stderr.read()
    duration = time.monotonic() - started
    reference = final_tensors(work / "straight")
    moments = random.Random(args.seed).sample(range(1000), args.tries)
    results = []
    for i, permille in enumerate(sorted(moments)):
        run = work / f"try-{i}"
        delay = duration * permille / 1000
        proc = degl(*RUN, "--out", str(run))
        time.sleep(delay)
        proc.kill()  # SIGKILL
        proc.wait()
        finished_before_kill = proc.returncode == 0
        resumes = 0
        while not (run / "summary.json").is_file() or not json.loads((run / "summary.json").read_text())["completed"]:
            if checkpoint.latest_checkpoint(run) is None:
                # Killed before its first checkpoint: nothing to resume, so the run starts again.
                shutil.rmtree(run, ignore_errors=True)
                again = degl(*RUN, "--out", str(run))
            else:
                again = degl("--resume", str(run))
            if again.wait() != 0:
                err = again.stderr.read().strip().splitlines()
                results.append({"try": i, "delay_s": round(delay, 2), "problems": [f"resume failed: {err[-1:]}"]})
                break
            resumes += 1
        else:
            problems = check(run, reference)
            results.append({"try": i, "delay_s": round(delay, 2), "killed_run_finished": finished_before_kill,
                            "resumes": resumes, "problems": problems})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    passed = sum(1 for r in results if not r["problems"])
    print(f"{passed} of {len(results)} killed runs resumed to the straight run's exact weights "
          f"(straight run {duration:.1f} s)")  # fmt: skip
    print(json.dumps({"tries": len(results), "passed": passed, "straight_s": round(duration, 2)}))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
