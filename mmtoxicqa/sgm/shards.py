"""Calibrate once under data parallel: N processes, one shard of the calibration batches each.

When ``torch.distributed`` is initialised with several processes (``accelerate launch``,
``torchrun``; lmms-eval's wrapper initialises it through accelerate, ``mmtoxicqa calibrate``
through :func:`init_from_env`), calibration splits the batches into N contiguous blocks, one per
process (:func:`plan`). Each process runs the model over its block only. Rank 0 receives the
pooled rows of the others straight into its N x M matrix (point-to-point, in blocks of at most
``SEND_BYTES``, as raw bytes so float16/bfloat16 travel on any backend), computes the AUROCs,
and writes the glasses atomically; the others wait and load that file. Each process runs the same
batches with the same padding as one process would, and the rows are put back in item order, so
the AUROCs, alphas and placebo ranking equal one process's bit for bit.

No pickle: only tensors travel (``gather_object`` and friends pickle, so they are not used).

Failures do not hang the others: after each phase every process reports whether it failed
(:meth:`Group.agree`); then all raise, the failing one its own error, the others a line naming it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmtoxicqa.core import settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.discovery import discover_sites, unwrap_model
from mmtoxicqa.sgm.api import rate_responses
from mmtoxicqa.sgm.auroc import MIN_PER_CLASS, check_labels
from mmtoxicqa.sgm.collect import Responses, collect

SEND_BYTES = 64 << 20  # largest block sent in one message (bounds the staging buffer on a GPU backend)


@dataclass(frozen=True)
class Group:
    """This process's place among the calibrating processes (``world == 1``: alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where tensors must be to travel (cuda for NCCL)

    @classmethod
    def current(cls) -> Group:
        """The default ``torch.distributed`` process group, or one process when there is none."""
        import torch.distributed as dist  # heavy: torch loads only where a model runs

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return cls()
        backend = str(dist.get_backend()).lower()
        if "gloo" in backend or "mpi" in backend:
            device = torch.device("cpu")
        elif "nccl" in backend:
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- small collectives --------------------------------------------------------------------
    def agree(self, error: BaseException | None, what: str) -> None:
        """Every process says whether ``what`` failed here; if any did, all raise (no one waits forever).
        Also a barrier: nobody returns before every process has reached it."""
        if not self.parallel:
            if error is not None:
                raise error
            return
        import torch.distributed as dist  # heavy: torch loads only where a model runs

        mine = torch.tensor([1 if error is not None else 0], dtype=torch.int64, device=self.device)
        flags = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(flags, mine)
        failed = [r for r, f in enumerate(flags) if int(f.item())]
        if error is not None:
            raise error
        if failed:
            ranks = ", ".join(str(r) for r in failed)
            raise MMToxError(f"{what} failed in process {ranks} of {self.world} (its error is above); this process stops too")

    def decide(self, value: bool) -> bool:
        """Rank 0's ``value``, the same for every process (so that all take the same branch)."""
        if not self.parallel:
            return bool(value)
        import torch.distributed as dist  # heavy: torch loads only where a model runs

        flag = torch.tensor([1 if value else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes of ``tensor`` (returned on the CPU)."""
        if not self.parallel:
            return tensor.cpu()
        import torch.distributed as dist  # heavy: torch loads only where a model runs

        moved = tensor.to(self.device).clone()
        dist.all_reduce(moved)
        return moved.cpu()

    def max(self, value: int) -> int:
        if not self.parallel:
            return int(value)
        import torch.distributed as dist  # heavy: torch loads only where a model runs

        moved = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.MAX)
        return int(moved.item())

    # -- rows to rank 0 ---------------------------------------------------------------------------
    def gather_rows(self, local: torch.Tensor | None, bounds: Sequence[tuple[int, int]], shape_tail: tuple, dtype: torch.dtype):
        """Rank 0: a CPU tensor of ``(bounds[-1][1], *shape_tail)`` whose rows ``bounds[r]`` are rank r's
        ``local``; others: None. ``local`` is this process's rows (None or empty when it has none).
        Rank 0 keeps its own block plus the full matrix; the others' rows land in place."""
        total = bounds[-1][1]
        lo, hi = bounds[self.rank]
        if local is not None and (tuple(local.shape[1:]) != tuple(shape_tail) or local.shape[0] != hi - lo):
            raise MMToxError(f"process {self.rank} holds {tuple(local.shape)} rows but its shard is rows {lo}:{hi} of width {shape_tail}")
        if not self.parallel:
            return local
        import torch.distributed as dist  # heavy: torch loads only where a model runs

        if not self.main:
            if hi > lo:
                flat = local.contiguous().view(-1).view(torch.uint8)
                for start in range(0, flat.numel(), SEND_BYTES):
                    dist.send(flat[start : start + SEND_BYTES].to(self.device), dst=0)
                    if self.device.type == "cuda":  # NCCL returns before the transfer: wait, so one staged block exists at a time
                        torch.cuda.synchronize(self.device)
            return None
        full = torch.empty((total, *shape_tail), dtype=dtype)
        if hi > lo:
            full[lo:hi].copy_(local)
        for rank in range(1, self.world):
            r_lo, r_hi = bounds[rank]
            if r_hi <= r_lo:
                continue
            flat = full[r_lo:r_hi].view(-1).view(torch.uint8)  # rows are contiguous in the full matrix
            for start in range(0, flat.numel(), SEND_BYTES):
                target = flat[start : start + SEND_BYTES]
                if self.device.type == "cpu":
                    dist.recv(target, src=rank)
                else:
                    staged = torch.empty(target.numel(), dtype=torch.uint8, device=self.device)
                    dist.recv(staged, src=rank)
                    target.copy_(staged)
        return full


def plan(n_items: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """Item bounds ``(lo, hi)`` of each process: the batches (of ``batch_size`` items, in order) cut
    into ``world`` contiguous blocks whose batch counts differ by at most one."""
    batches = (n_items + batch_size - 1) // batch_size
    bounds = []
    for rank in range(world):
        first, last = batches * rank // world, batches * (rank + 1) // world
        bounds.append((min(first * batch_size, n_items), min(last * batch_size, n_items)))
    return bounds


def init_from_env(device: str | None) -> tuple[Group, str | None, bool]:
    """For a command run under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1 in
    the environment): initialise the default process group (NCCL for a CUDA device, gloo otherwise)
    unless something already did. Returns the group, the device this process should use (``cuda``
    becomes ``cuda:LOCAL_RANK``) and whether this call initialised the group (then the caller
    destroys it at the end)."""

    import torch.distributed as dist  # heavy: torch loads only where a model runs

    world = settings.number("WORLD_SIZE", 1)
    if world <= 1:
        return Group.current(), device, False
    local_rank = settings.number("LOCAL_RANK", 0, minimum=0)
    wants_cuda = str(device or "").startswith("cuda")
    if wants_cuda:
        if ":" in str(device):
            raise MMToxError(
                f"--device {device} names one GPU but {world} processes were launched; pass --device cuda (process i uses cuda:LOCAL_RANK)"
            )
        device = f"cuda:{local_rank}"
    created = False
    if not dist.is_initialized():
        if wants_cuda:
            torch.cuda.set_device(local_rank)
        # Rank 0 rates every neuron while the others wait: allow a long wait (a 72B's AUROCs on a CPU take minutes).
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo", timeout=datetime.timedelta(hours=2))
        created = True
    return Group.current(), device, created


def reduce_steering(group: Group, accumulator) -> bool:
    """Sum a :class:`~mmtoxicqa.sgm.steering_vectors.SteeringAccumulator`'s per-class sums and counts over
    the processes (each saw its shard); returns whether every process saw all of its batches run."""
    complete = int(group.sum(torch.tensor([0 if accumulator.complete else 1], dtype=torch.int64)).item()) == 0
    if not group.parallel:
        return complete
    width = group.max(max((int(v.numel()) for v in accumulator.sums.values() if v is not None), default=0))
    for label in (0, 1):
        mine = accumulator.sums[label]
        mine = torch.zeros(width, dtype=torch.float32) if mine is None else mine.detach().float().cpu()
        accumulator.sums[label] = group.sum(mine)
    counts = group.sum(torch.tensor([accumulator.counts[0], accumulator.counts[1]], dtype=torch.int64))
    accumulator.counts = {0: int(counts[0]), 1: int(counts[1])}
    return complete


def fit_glasses_sharded(
    group: Group,
    model,
    batches,
    labels: Sequence[int],
    bounds: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    pooling: str = "max",
    layers=None,
    dtype: torch.dtype = torch.float32,
    checkpoint_path=None,
    progress: bool = True,
    site: str = "down_input",
    **rate_options,
):
    """:func:`~mmtoxicqa.sgm.api.fit_glasses` as one of ``group.world`` processes: ``batches`` are this
    process's items ``bounds[group.rank]`` (in batches of ``batch_size``), ``labels`` those of all items.
    Returns ``(glasses, error)``: on rank 0 the glasses, or the exception that rating the neurons raised
    (returned, not raised: the others are already waiting for the file, and the caller's
    :meth:`Group.agree` tells them); ``(None, None)`` elsewhere. Errors while collecting are agreed
    here and raised in every process."""

    all_labels = torch.as_tensor(list(labels), dtype=torch.int64)
    check_labels(all_labels, min_per_class=rate_options.get("min_per_class", MIN_PER_CLASS))  # the same on every process
    net = unwrap_model(model)
    sites = discover_sites(net, layers, site)
    lo, hi = bounds[group.rank]
    local, error = None, None
    try:
        if hi > lo:
            local = collect(
                model,
                batches,
                all_labels[lo:hi],
                sites=sites,
                pooling=pooling,
                dtype=dtype,
                placeholder_token_ids=rate_options.get("placeholder_token_ids"),
                ignore_token_ids=rate_options.get("ignore_token_ids", ()),
                checkpoint_path=checkpoint_path,
                progress=progress,
                total=(hi - lo + batch_size - 1) // batch_size,
                batch_offset=lo // batch_size,
            )
    except Exception as exc:  # every process must reach agree(), or the others would wait for its rows forever
        error = exc
    group.agree(error, "collecting the calibration responses")
    # A module that ran on some processes' batches and not on others' is as partial as within one process.
    ran = torch.tensor([0 if local is None or s.module_name in local.not_fired else 1 for s in sites], dtype=torch.int64)
    ran = group.sum(ran)
    with_rows = int(group.sum(torch.tensor([1 if hi > lo else 0], dtype=torch.int64)).item())
    partial = [s.module_name for s, r in zip(sites, ran.tolist()) if 0 < r < with_rows]
    if partial:
        raise MMToxError(
            f"module {partial[0]} ran on only some calibration batches (e.g. Mllama cross-attention layers skip inputs without images); "
            "calibrate on batches that all have images, or restrict layers="
        )
    width = sum(s.width for s in sites)
    pooled = group.gather_rows(None if local is None else local.pooled, bounds, (width,), dtype)
    counts = group.gather_rows(None if local is None else local.token_counts.reshape(-1, 1).long(), bounds, (1,), torch.int64)
    if local is not None:
        del local  # rank 0 keeps only the gathered matrix from here on
    if not group.main:
        return None, None
    try:
        return _rate_gathered(group, model, sites, pooled, counts, all_labels, ran, pooling, layers, dtype, site, rate_options), None
    except Exception as exc:
        return None, exc


def _rate_gathered(group, model, sites, pooled, counts, all_labels, ran, pooling, layers, dtype, site, rate_options):

    responses = Responses(
        sites=sites,
        pooled=pooled,
        labels=all_labels,
        token_counts=counts.reshape(-1),
        pooling=pooling,
        data_hash=rate_options.get("data_hash") or "",
        not_fired=[s.module_name for s, r in zip(sites, ran.tolist()) if r == 0],
    )
    glasses = rate_responses(model, responses, layers=layers, dtype=dtype, site=site, **rate_options)
    glasses.meta["calibration_processes"] = group.world
    return glasses
