"""A tiny torchrun job for the launcher tests: real gloo process group, then one of a few behaviours.

usage: dist_job.py allreduce | exit CODE | loop PID_DIR [--ignore-sigterm]
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> int:
    mode = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "allreduce":
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        print(f"rank {rank}/{world} sum={value.item():.0f} tqdm every {os.environ['TQDM_MININTERVAL']} s", flush=True)
        dist.destroy_process_group()
        return 0
    if mode == "exit":
        dist.destroy_process_group()
        return int(sys.argv[2])
    if "--ignore-sigterm" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid_dir = Path(sys.argv[2])
    tmp = pid_dir / f".rank{rank}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(pid_dir / f"rank{rank}.pid")
    step = 0
    while True:
        step += 1
        if step % 10 == 0:
            print(f"rank {rank} step {step}", flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
