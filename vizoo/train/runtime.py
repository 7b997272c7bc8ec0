"""What vizoo's trainers (``vizoo train``, ``vizoo clip-train``) share at run time: the process's place in a
torchrun job and the run logs (JSON lines rewritten atomically on resume, and their CSV copy)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum", "read_jsonl", "rewrite_jsonl", "setup_distributed", "write_csv"]


@dataclass
class DistInfo:
    """This process's rank, world size and device; ``main`` is rank 0."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str | None = None) -> DistInfo:
    """Read torchrun's environment, pick the device (``device_name``, else this rank's GPU, else the CPU) and join
    the process group (NCCL on GPUs, gloo on CPUs) when there are several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name:
        device = torch.device(device_name)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistInfo(rank, world, local, device, owns)


def all_reduce_sum(values: list[float], d: DistInfo) -> list[float]:
    """``values`` summed over the processes (as they are with one process)."""
    if d.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log; a last line cut by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace a JSON-lines log atomically (a resumed run drops the rows after its checkpoint)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as CSV atomically, with the union of their keys as columns."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
