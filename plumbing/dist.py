"""torch.distributed in one place: which rank am I, how many are we, which device is mine, and the
few collectives the stages need (sums of statistics, a shared flag, gathering results on every
rank).

    torchrun --standalone --nproc_per_node=N rlhf.py --config ...   # N ranks on one machine

nanoGPT train.py is the model: torchrun's RANK / LOCAL_RANK / WORLD_SIZE decide everything,
LOCAL_RANK picks the GPU, and the stages ask `is_main()` ("am I the writer?") instead of reading
RANK themselves. A plain `python rlhf.py` (or torchrun with one process) never creates a process
group: world size 1, rank 0, and every helper below returns its input, so the single-process code
path is the one it always was.

Backend from the device: NCCL on CUDA, gloo on CPU. The process group has a timeout
(Config.dist_timeout_s), so a rank stuck in a collective whose partner died raises instead of
hanging forever; torchrun itself stops the remaining ranks as soon as one exits with an error (its
elastic agent watches every worker).
Why a separate module: the stages stay the story of the pipeline; only this file knows about process
groups.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as tdist

from config import ConfigError


class EveryRankError(ConfigError):
    """A user error that every rank hits alike (a bad --device, an output folder rank 0 refused):
    rank 0 prints it, the other ranks exit with the same code in silence, so the user reads one
    line, not N."""


# ----------------------------------------------------------------------------- who am I
def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 under plain python); valid before setup()."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def is_main() -> bool:
    """The one writer (nanoGPT master_process): logs, metrics.jsonl, plots, checkpoints and the
    report."""
    return rank() == 0


def device_problem(device_type: str, n_gpus: int, local_world_size: int) -> str | None:
    """Why this node cannot give every local rank its own device, or None. Pure, so it is testable
    without GPUs."""
    if device_type == "cuda" and n_gpus < local_world_size:
        return (f"--device=cuda with {local_world_size} ranks on this node but {n_gpus} GPU(s) "
                f"visible; use --nproc_per_node={n_gpus} or fewer (one GPU per rank), "
                "or --device=cpu")
    if device_type == "mps" and local_world_size > 1:
        return ("--device=mps has one device and no collective backend; run one process, "
                "or use --device=cpu")
    return None


# ----------------------------------------------------------------------------- setup and teardown
def setup(device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group torchrun describes and return this rank's device (cuda:LOCAL_RANK on
    GPUs). World size 1: nothing to join, `device` comes back unchanged."""
    if env_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    problem = device_problem(device.type, n_gpus, local_world)
    if problem:
        raise EveryRankError(problem)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL and every bare .cuda() use the current device
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                             device_id=device if backend == "nccl" else None)
    return device


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


# --------------------------------------------------------- collectives (identities at world size 1)
def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    """op over ranks of x (any shape), on x's device, through a copy on the backend's device; x at
    world size 1."""
    if world_size() == 1:
        return x
    y = x.detach().to(_comm_device(), copy=True)
    tdist.all_reduce(y, op=op)
    return y.to(x.device)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of x (any shape), on x's device; x itself at world size 1."""
    return _all_reduce(x, tdist.ReduceOp.SUM)


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    return _all_reduce(x, tdist.ReduceOp.MAX)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over every element on every rank (ranks may hold different counts)."""
    if world_size() == 1:
        return x.mean()
    count = torch.tensor(float(x.numel()), device=x.device).double()
    sums = all_reduce_sum(torch.stack([x.sum().double(), count]))
    return (sums[0] / sums[1]).to(x.dtype)


def any_flag(flag: bool) -> bool:
    """True on every rank if it is true on any rank: a Ctrl-C seen by one rank stops all at the same
    step."""
    if world_size() == 1:
        return bool(flag)
    return bool(all_reduce_max(torch.tensor([int(bool(flag))])).item())


def barrier() -> None:
    """Wait for every rank (around each checkpoint: nobody reads it before rank 0 has renamed it
    into place)."""
    if world_size() > 1:
        tdist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (picklable): the output folder, the synthetic-feedback pairs."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor (same shape and dtype on every rank) on every rank."""
    if world_size() == 1:
        return x
    y = x.to(_comm_device(), copy=True)
    tdist.broadcast(y, src=0)
    return y.to(x.device)


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] at world size 1."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def save_on_main(folder, write) -> None:
    """Rank 0 writes `folder` atomically (models.save_atomic: a temp folder, then one rename); every
    rank then waits at a barrier, so no rank reads a checkpoint before it is in place, and a kill
    leaves a whole checkpoint or none, as with one process."""
    from plumbing import models

    if is_main():
        models.save_atomic(folder, write)
    barrier()


def error_line(e: Exception) -> str | None:
    """The one line this rank prints for a user error, or None where rank 0 prints the same line:
    errors raised before the process group exists (config, data, device) and EveryRankError are
    alike on every rank."""
    r = env_rank()
    if r and (isinstance(e, EveryRankError) or world_size() == 1):
        return None
    return (f"rank {r}: " if r else "") + str(e)


# ----------------------------------------------------------------- minibatches of a global batch
# The PPO update's rank arithmetic (ppo.py detail 13): rank r holds global rows r*n .. r*n+n-1 of a
# global batch of world_size * n rows; every rank cuts the same minibatches from one permutation and
# runs its own rows of each, so N ranks x batch n take the update of one process with batch N*n.
def global_permutation(n_local: int, device=None) -> torch.Tensor:
    """Rank 0's shuffle of the global batch's world_size * n_local row indices, on every rank."""
    return broadcast_tensor(torch.randperm(n_local * world_size(), device=device))


def local_rows(global_rows: torch.Tensor, n_local: int) -> torch.Tensor:
    """This rank's rows of a minibatch of global row indices, as indices into its own n_local rows;
    empty when none of them is this rank's."""
    first = rank() * n_local
    return global_rows[(global_rows >= first) & (global_rows < first + n_local)] - first


def rows_or_dummy(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(rows, 1.0), or (row 0, 0.0) when `rows` is empty: as in shard_or_dummy, every rank must run
    DDP's backward once per optimizer step, so a rank with no row of a minibatch runs one row whose
    loss is scaled by 0."""
    if len(rows) == 0:
        return torch.zeros(1, dtype=torch.long, device=rows.device), 0.0
    return rows, 1.0


def token_share(n_tokens: torch.Tensor, global_tokens: torch.Tensor,
                scale: float = 1.0) -> torch.Tensor:
    """A micro-batch's loss weight: its n_tokens over the global minibatch's, times world_size
    because DDP averages the ranks' gradients (scale 0 for a dummy row). Summed over the
    micro-batches of every rank, the weighted token-mean losses give the gradient of the
    minibatch's token mean."""
    return scale * world_size() * n_tokens / global_tokens


# ----------------------------------------------------------------------------- sharding
def shard(items: list, strided: bool = False) -> list:
    """This rank's share of `items` (sizes differ by at most one; a rank may get none): a contiguous
    block, so concatenating the blocks in rank order gives `items` back, or with `strided` every
    world_size-th item, which spreads a length-sorted list evenly over the ranks."""
    n, w, r = len(items), world_size(), rank()
    return items[r::w] if strided else items[r * n // w:(r + 1) * n // w]


def shard_or_dummy(items: list, strided: bool = False) -> tuple[list, float]:
    """(this rank's shard, 1.0), or (items[:1], 0.0) when the shard is empty. DDP all-reduces
    gradients inside backward(), so every rank must run one per optimizer step; a rank with no
    examples runs the first example with its loss scaled by 0, which adds exactly nothing to the
    summed gradient."""
    mine = shard(items, strided)
    return (mine, 1.0) if mine or not items else (items[:1], 0.0)


def wrap_ddp(module: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False):
    """DDP around `module` when there are several ranks, else `module` itself. DDP averages
    gradients over ranks, so each rank's loss is scaled by world_size / (global count) where the
    stages need a global mean (token_share)."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (generate, save, value_head live there), else the module itself."""
    if type(module).__name__ == "DistributedDataParallel":
        return getattr(module, "module", module)
    return module


def no_sync(module, last: bool):
    """DDP's no_sync() on every micro-batch but the last of an optimizer step, so gradients are
    all-reduced once per step, not once per micro-batch (nanoGPT's require_backward_grad_sync)."""
    import contextlib

    return module.no_sync() if not last and hasattr(module, "no_sync") else contextlib.nullcontext()
