"""The SLURM job scripts on a real single-node SLURM cluster started for this module.

``scripts/slurm/local_cluster.sh`` starts munged, slurmctld and slurmd (Debian's slurm-wlm and
munge, as root) in a temporary folder on free ports; the tests then submit exactly what
scripts/slurm/README.md documents: a sweep as base job -> array (afterok) -> merge (afterany),
and a 2-task CPU DDP ``capl fit`` that SLURM's requeue signal interrupts after its first epoch
and that resumes in the same run folder. Skipped, with the reason, where no cluster can be set
up (not root, packages missing, daemons not starting). About two to three minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capl.sweep import read_results_csv
from capl.sweep.report import flatten
from tests.test_sweep import train_base

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "slurm"
VENV = Path(sys.executable).parent.parent
pytestmark = pytest.mark.slurm

SWEEP = {
    "name": "slurm",
    "base": train_base(),
    "data": {
        "class_path": "DigitsSubset",
        "init_args": {
            "batch_size": 32,
            "samples_per_class": 20,
            "calibration_samples_per_class": 4,
        },
    },
    "grid": {"criteria": ["L1Norm", "OCAP"], "ratios": [0.3, 0.5], "classes": [[3, 5, 8]]},
    "benchmark": {"batch_sizes": [1], "backends": ["torch"], "warmup": 0, "repeats": 1},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _why_no_cluster() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to start munged, slurmctld and slurmd"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y slurm-wlm munge)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running single-node cluster; yields the environment for sbatch and friends."""
    reason = _why_no_cluster()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    state = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(SLURMCTLD_PORT=str(_free_port()), SLURMD_PORT=str(_free_port()))
    start = subprocess.run(
        [str(SCRIPTS / "local_cluster.sh"), "start", str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if start.returncode != 0:
        pytest.skip(f"no SLURM cluster: local_cluster.sh start failed: {start.stderr.strip()}")
    env.update(SLURM_CONF=str(state / "slurm.conf"), PYTHONPATH=str(ROOT), VENV=str(VENV))
    try:
        yield env
    finally:
        subprocess.run([str(SCRIPTS / "local_cluster.sh"), "stop", str(state)], timeout=60)


def _run(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        list(args), env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}): {done.stderr}"
    return done.stdout


def jobs(env: dict[str, str], job: str) -> list[dict[str, str]]:
    """``scontrol show job -o``: one dict per job (one per task of an array)."""
    out = _run(env, "scontrol", "show", "job", "-o", job)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def wait(env: dict[str, str], job: str, timeout: float = 600.0) -> list[dict[str, str]]:
    """Wait until every task of ``job`` has finished; their records."""
    deadline = time.monotonic() + timeout
    finished = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    while time.monotonic() < deadline:
        records = jobs(env, job)
        if records and all(r["JobState"] in finished for r in records):
            return records
        time.sleep(2)
    raise AssertionError(f"job {job} did not finish in {timeout:.0f}s: {jobs(env, job)}")


def ok(records: list[dict[str, str]], logs: Path) -> None:
    bad = [r for r in records if r["JobState"] != "COMPLETED" or r["ExitCode"] != "0:0"]
    tails = "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob("slurm-*.out")))
    assert not bad, f"jobs failed: {bad}\n{tails}"


@pytest.fixture(scope="module")
def sweep(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The documented sweep submission: base job, array chained on it, merge chained on that."""
    work = tmp_path_factory.mktemp("sweep")
    config = work / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    env = {**cluster, "CONFIG": str(config), "OUTPUT": str(work / "out")}
    start = time.monotonic()
    line = _run(env, str(SCRIPTS / "submit_sweep.sh"), f"--chdir={work}", "--cpus-per-task=1")
    found = re.search(r"(\d+) points; base job (\d+), array job (\d+), merge job (\d+)", line)
    assert found, line
    n, base, array, merge = (int(g) for g in found.groups())
    records = {
        name: wait(env, str(job))
        for name, job in zip(("base", "array", "merge"), (base, array, merge))
    }
    for group in records.values():
        ok(group, work)
    return {"n": n, "work": work, "out": work / "out", "records": records,
            "seconds": time.monotonic() - start}  # fmt: skip


def test_sweep_base_then_array_then_merge(sweep: dict[str, Any]) -> None:
    records, out, work = sweep["records"], sweep["out"], sweep["work"]
    assert sweep["n"] == 4
    tasks = sorted(records["array"], key=lambda r: int(r["ArrayTaskId"]))
    assert [int(r["ArrayTaskId"]) for r in tasks] == [0, 1, 2, 3]
    # afterok: no array task started before the base job ended; the merge after all of them
    base_end = records["base"][0]["EndTime"]
    assert all(r["StartTime"] >= base_end for r in tasks)
    assert records["merge"][0]["StartTime"] >= max(r["EndTime"] for r in tasks)
    # the base model was trained once, by the base job, and every point used it
    assert len(list((out / "base").glob("*/base.json"))) == 1
    base_log = next(work.glob("slurm-capl-sweep-base-*.out")).read_text()
    assert "base model ready" in base_log
    rows = read_results_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok"] * 4
    for task, row in zip(tasks, rows):
        # each array task ran its own point (SLURM_ARRAY_TASK_ID -> --index)
        log = next(work.glob(f"slurm-capl-sweep-{task['ArrayJobId']}_{task['ArrayTaskId']}.out"))
        assert f"{row['point_id']}" in log.read_text()
        bench = json.loads((out / "points" / row["point_id"] / "benchmark.json").read_text())
        # the merged row holds exactly that point's benchmark.json
        flat = flatten(bench)
        assert flat["after.accuracy"] is not None
        assert [k for k, v in flat.items() if not _same(row.get(k), v)] == []
        assert bench["after"]["macs"] < bench["before"]["macs"]
    assert (out / "report.md").is_file() and (out / "accuracy_vs_macs.png").is_file()


FIT_YAML = """
seed_everything: 0
data:
  class_path: DigitsSubset
  init_args: {classes: [3, 5, 8], batch_size: 32, calibration_samples_per_class: 8}
model:
  network: resnet20
  small_input: true
  num_classes: 10
  weights: BASE
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01, momentum: 0.9}}
trainer:
  accelerator: cpu
  max_epochs: 3
  deterministic: true
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: WORK/runs, name: ddp}   # no version: capl names it slurm_<job id>
  callbacks:
    - class_path: capl.callbacks.PruningCallback
      init_args: {criterion: {class_path: OCAP}, ratio: 0.5, scope: global, target: macs}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/acc, mode: max, filename: best, save_last: true}
    - class_path: tests.slurm_probe.RankProbe
      init_args: {folder: WORK/probe}
"""


def _same(a: Any, b: Any) -> bool:
    if b in (None, "") or a in (None, ""):
        return a in (None, "") and b in (None, "")
    if isinstance(b, bool) or isinstance(a, bool):
        return str(a) == str(b)
    if isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def _fit_config(work: Path, base_ckpt: Path) -> Path:
    path = work / "fit.yaml"
    path.write_text(FIT_YAML.replace("BASE", str(base_ckpt)).replace("WORK", str(work)))
    return path


def _await_files(pattern: str, folder: Path, count: int, job: str, env: dict[str, str]) -> None:
    deadline = time.monotonic() + 400
    while len(list(folder.glob(pattern))) < count:
        state = jobs(env, job)[0]["JobState"]
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job} ended early: {state}"
        assert time.monotonic() < deadline, f"no {pattern} from {count} ranks in {folder}"
        time.sleep(1)


def test_ddp_fit_two_tasks_requeued_resumes_in_its_run_folder(
    cluster: dict[str, str], sweep: dict[str, Any], tmp_path: Path
) -> None:
    base_ckpt = next((sweep["out"] / "base").glob("*/checkpoints/best.ckpt"))
    env = {**cluster, "CONFIG": str(_fit_config(tmp_path, base_ckpt))}
    job = _run(env, "sbatch", "--parsable", f"--chdir={tmp_path}", "--ntasks-per-node=2",
               "--cpus-per-task=1", str(SCRIPTS / "fit.sbatch")).strip()  # fmt: skip
    probe = tmp_path / "probe"
    _await_files("attempt0-rank*-ready.json", probe, 2, job, env)
    # what SLURM sends 90 s before the time limit (--signal=SIGUSR1@90): Lightning saves a
    # checkpoint and requeues the job
    _run(env, "scancel", "--signal=USR1", job)
    deadline = time.monotonic() + 120
    while jobs(env, job)[0]["JobState"] != "PENDING" or jobs(env, job)[0]["Restarts"] != "1":
        assert time.monotonic() < deadline, jobs(env, job)
        time.sleep(1)
    # SLURM holds a requeued job back for two minutes; let it start now
    _run(env, "scontrol", "update", f"JobId={job}", "StartTime=now")
    (record,) = wait(env, job)
    ok([record], tmp_path)
    assert record["Restarts"] == "1"

    log = (tmp_path / f"slurm-capl-fit-{job}.out").read_text()
    assert f"job {job} attempt 1 " in log and f"job {job} attempt 2 " in log  # --open-mode=append
    assert "Handling auto-requeue signal" in log
    # one run folder, named by the job, holding the requeue checkpoint; nothing in the cwd
    run = tmp_path / "runs" / "ddp" / f"slurm_{job}"
    assert [p.name for p in (tmp_path / "runs" / "ddp").iterdir()] == [run.name]
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    assert not list(tmp_path.glob("hpc_ckpt_*"))
    assert (run / "checkpoints" / "best.ckpt").is_file()

    starts = {p.name: json.loads(p.read_text()) for p in probe.glob("attempt*-start.json")}
    assert sorted(starts) == [f"attempt{a}-rank{r}-start.json" for a in (0, 1) for r in (0, 1)]
    plans = [s["plan"] for s in starts.values()]
    assert plans[0] is not None and plans[0]["removed"]
    assert all(p == plans[0] for p in plans)  # both ranks, both attempts: the same pruned network
    assert all(
        s["shapes"] == starts["attempt0-rank0-start.json"]["shapes"] for s in starts.values()
    )
    assert all(s["world_size"] == 2 for s in starts.values())
    assert starts["attempt0-rank0-start.json"]["epoch"] == 0
    assert starts["attempt1-rank0-start.json"]["epoch"] == 1  # resumed, not restarted
    assert all(Path(s["default_root_dir"]) == run for s in starts.values())
    assert starts["attempt1-rank1-start.json"]["ckpt_path"] == str(run / "hpc_ckpt_1.ckpt")
    assert json.loads((run / "pruning_plan.json").read_text()) == plans[0]
    ends = [json.loads((probe / f"attempt1-rank{r}-end.json").read_text()) for r in (0, 1)]
    assert ends[0]["digest"] == ends[1]["digest"]  # DDP kept the replicas equal
    assert ends[0]["epoch"] == 3

    # the resumed attempt continued the first one's TensorBoard run: epochs 0, 1, 2 in one folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    epochs = sorted({int(e.value) for e in events.Scalars("epoch")})
    assert epochs == [0, 1, 2]
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(steps) and len(steps) == 3
