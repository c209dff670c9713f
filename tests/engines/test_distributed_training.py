# Copyright (c) 2026 The pointsynth-nuclei authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Both training workflows under ``torchrun`` with 2 processes and the gloo backend (``multi_gpu_train.json``): the
ranks end with the same weights, only rank 0 writes, and a stopped run resumes on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from scripts.engines.checkpoint import list_checkpoints
from scripts.runtime import distributed
from tests.helpers import REPO

CONFIGS = REPO / "bundle" / "configs"
MULTI = CONFIGS / "multi_gpu_train.json"
WORKFLOWS = {
    "synthesis": (
        [CONFIGS / "train_synthesis.json", CONFIGS / "train_synthesis_smoke.json"],
        ["generator", "mask_net", "image_discriminator", "mask_discriminator"],
    ),
    "segmentation": ([CONFIGS / "train.json", CONFIGS / "train_smoke.json"], ["network_def"]),
}


def _dump_override(tmp_path: Path, networks: list[str]) -> Path:
    """A test-only override whose ``finalize`` saves each rank's trained parameters to ``rank<r>.pt``."""
    pairs = ", ".join(f"('{n}', @{n})" for n in networks)
    dump = (
        f"$torch.save({{n: {{k: v.detach().cpu() for k, v in m.named_parameters()}} for n, m in [{pairs}]}}, "
        "@output_dir + f'/rank{scripts.runtime.distributed.rank()}.pt')"
    )
    path = tmp_path / "dump_weights.json"
    path.write_text(json.dumps({"finalize": [dump, "$scripts.runtime.distributed.cleanup()"]}))
    return path


def _torchrun(files: list[Path], output_dir: Path, iterations: int) -> str:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", str([str(f) for f in files]),
        "--output_dir", str(output_dir), "--iterations", str(iterations),
    ]  # fmt: skip
    env = {**os.environ, "POINTSYNTH_NO_REEXEC": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def _assert_same_weights(output_dir: Path) -> dict:
    ranks = [torch.load(output_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        for key, value in ranks[0][name].items():
            assert torch.equal(value, ranks[1][name][key]), f"{name}.{key} differs between the ranks"
    return ranks[0]


@pytest.mark.slow
@pytest.mark.parametrize("workflow", list(WORKFLOWS))
def test_two_process_training_and_resume(tmp_path, workflow):
    files, networks = WORKFLOWS[workflow]
    files = [*files, MULTI, _dump_override(tmp_path, networks)]
    out = tmp_path / "run"
    log = _torchrun(files, out, iterations=4)
    assert "rank 0 of 2, backend gloo" in log and "rank 1 of 2, backend gloo" in log
    first = _assert_same_weights(out)
    # rank 0 alone writes: one checkpoint per epoch (2 iterations each), one metrics line per validation round
    checkpoints = [p.name for p in list_checkpoints(out / "checkpoints")]
    assert checkpoints == ["checkpoint_00000002.pt", "checkpoint_00000004.pt"]
    rounds = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [2, 4]
    assert not list(out.rglob(".*.tmp"))
    # rank 0 alone logs to TensorBoard (event file names end in <pid>.<n>): other ranks create no writer either
    assert len({p.name.split(".")[-2] for p in (out / "tensorboard").glob("events.out.tfevents.*")}) == 1
    saved = torch.load(out / "checkpoints" / checkpoints[-1], weights_only=True)
    key = "network" if workflow == "segmentation" else "generator"
    rank0 = first["network_def" if workflow == "segmentation" else "generator"]
    for name, value in rank0.items():  # the checkpoint holds the unwrapped network (no "module." prefix)
        assert torch.equal(saved[key][name], value)

    # run the same command with a longer schedule: both ranks resume at iteration 4 and stay identical
    log = _torchrun(files, out, iterations=8)
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 2 and all("at iteration 4" in line for line in resumed), log[-3000:]
    rounds = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [2, 4, 6, 8]
    second = _assert_same_weights(out)
    changed = [k for k, v in second[next(iter(second))].items() if not torch.equal(v, rank0[k])]
    assert changed, "the resumed run did not train"
    assert [p.name for p in list_checkpoints(out / "checkpoints")][-1] == "checkpoint_00000008.pt"


def test_single_process_helpers():
    """Without torchrun the helpers describe one process and leave networks unwrapped."""
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.shard(list(range(5))) == [0, 1, 2, 3, 4]
    network = torch.nn.Linear(2, 2)
    assert distributed.prepare(network, "cpu") is network
    assert distributed.unwrap(network) is network
    assert distributed.threads_per_rank() >= 1
    assert distributed.init() is False  # no RANK / WORLD_SIZE in the environment: stays one process
    with pytest.raises(ValueError, match="backend"):
        os.environ.update(RANK="0", WORLD_SIZE="1")
        try:
            distributed.init(backend="mpi")
        finally:
            del os.environ["RANK"], os.environ["WORLD_SIZE"]


def test_unwrap_ddp_in_a_one_process_group(tmp_path):
    """``prepare`` wraps in DistributedDataParallel once a process group exists; ``unwrap`` gives the module back."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        network = torch.nn.Linear(2, 2)
        wrapped = distributed.prepare(network, "cpu")
        assert isinstance(wrapped, DistributedDataParallel)
        assert distributed.unwrap(wrapped) is network
        assert distributed.shard(["a", "b", "c"]) == ["a", "b", "c"]
    finally:
        torch.distributed.destroy_process_group()
