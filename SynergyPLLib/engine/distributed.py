"""Training on several processes (``torchrun``): DistributedDataParallel on NCCL (GPUs) or gloo (CPU).

``torchrun --nproc_per_node N -m SynergyPLLib.cli train ...`` starts N copies of the trainer; each reads
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment (:func:`setup`). Without those variables
(or with ``WORLD_SIZE=1``) everything here is a no-op and training is exactly the single-process one.

The contract of a distributed run (the :class:`~SynergyPLLib.engine.trainer.Trainer` calls the hooks of
:class:`DistContext`):

- data: each rank draws its patches from its own shard of the labeled and of the unlabeled cases
  (``torch.utils.data.DistributedSampler``, reshuffled every epoch with the run's seed; an epoch is one
  pass of every rank over its shard). The batch sizes of the config are per rank: the global batch of a
  step is ``N * batch_labeled`` labeled and ``N * batch_unlabeled`` unlabeled patches.
- gradients: the student is wrapped in ``DistributedDataParallel`` (gradients averaged over the ranks),
  so after the optimizer step every rank holds the same student and the one EMA teacher update per
  step gives the same teacher on every rank. Class prototypes are averaged over the ranks after each
  update so the label smoothing is the same everywhere.
- validation, checkpoint selection, calibration, ``model.pt`` and ``state.pt``: rank 0 only, the others
  receive its decision (best Dice, iteration, temperature) by broadcast. ``state.pt`` holds every rank's
  random state and data-stream position, so a resumed run (every rank loads the same file) continues as
  it would have.
- cancel: ``should_stop`` is asked on rank 0 and its answer broadcast, so every rank stops after the same
  iteration; progress (``on_progress``) is reported by rank 0 only, with losses averaged over the ranks.

Test hook: with ``SYNERGYPL_RANK_LOG=DIR`` every rank appends one JSON line per step to
``DIR/rank<r>.jsonl`` (the cases it drew) and, at the end, the SHA-256 of its teacher's weights.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

RANK_LOG_ENV = "SYNERGYPL_RANK_LOG"
TIMEOUT_ENV = "SYNERGYPL_DIST_TIMEOUT"  # seconds a rank waits for the others (validation runs on rank 0)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives --------------------------------------------------------------------------
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def broadcast_object(self, obj):
        """``obj`` of rank 0 on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # --- trainer hooks ------------------------------------------------------------------------
    def rank_seed(self, seed: int) -> int:
        """A different, reproducible seed per rank (the seed itself on rank 0 and without DDP)."""
        return seed + 104729 * self.rank

    def seed_ranks(self, seed: int) -> None:
        """Give each rank its own torch random stream (dropout) once the networks are built."""
        if self.enabled:
            torch.manual_seed(self.rank_seed(seed))

    def wrap(self, student: torch.nn.Module, teacher: torch.nn.Module):
        """The module to run the training forward through: DDP around ``student`` when distributed.

        DDP broadcasts rank 0's weights at construction; the teacher is then set to the same weights.
        """
        if not self.enabled:
            return student
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(student, device_ids=ids, output_device=ids[0] if ids else None)
        teacher.load_state_dict(student.state_dict())
        return ddp

    def shard(self, sampler, seed: int):
        """``sampler`` (a PatchSampler) drawing from this rank's shard of its cases when distributed."""
        return ShardedPatchSampler(sampler, self, seed) if self.enabled else sampler

    def should_stop(self, should_stop) -> bool:
        """Rank 0 asks ``should_stop``; every rank gets its answer (so all stop at the same iteration)."""
        flag = bool(self.is_main and should_stop is not None and should_stop())
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def after_step(self, trainer, losses: dict[str, float]) -> dict[str, float]:
        """Losses averaged over the ranks (for progress and history); logs the step's cases when asked."""
        if os.environ.get(RANK_LOG_ENV):
            record = {"iteration": trainer.iteration, "rank": self.rank, "world_size": self.world_size,
                      "pid": os.getpid()}
            for name in ("labeled", "unlabeled"):
                s = getattr(trainer, name)
                if s is not None:
                    record[name] = list(s.last_ids)
                    if isinstance(s, ShardedPatchSampler):
                        record[f"{name}_epoch"] = s.last_epoch
            self.log(record)
        if not self.enabled:
            return losses
        keys = sorted(losses)
        t = torch.tensor([float(losses[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        t /= self.world_size
        return dict(zip(keys, t.tolist(), strict=True))

    def sync_prototypes(self, prototypes) -> None:
        """Average the class prototypes over the ranks that have seen each class."""
        if not self.enabled or prototypes.prototypes is None:
            return
        dev = self._comm_device()
        seen = prototypes.seen.to(dev, torch.float32)
        summed = (prototypes.prototypes.to(dev) * seen[:, None]).contiguous()
        dist.all_reduce(summed)
        dist.all_reduce(seen)
        mask = seen > 0
        mean = summed / seen.clamp_min(1)[:, None]
        prototypes.prototypes = torch.where(mask[:, None], mean, prototypes.prototypes.to(dev)).cpu()
        prototypes.seen = mask.cpu()

    def validate(self, trainer) -> float:
        """Validation and checkpoint selection on rank 0; its decision reaches every rank."""
        if not self.enabled:
            return trainer._validate_and_keep_best()
        out = None
        if self.is_main:
            val = trainer._validate_and_keep_best()
            out = (val, trainer.best_dice, trainer.best_iteration, trainer.temperature, trainer.pseudo_offset)
        val, trainer.best_dice, trainer.best_iteration, trainer.temperature, trainer.pseudo_offset = \
            self.broadcast_object(out)
        return val

    def rank_states(self, trainer) -> dict:
        """What ``state.pt`` needs of every rank (collective: all ranks call it at the same iteration)."""
        if not self.enabled:
            return {}
        mine = {"rng": trainer.rng.bit_generator.state, "gen": trainer.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "streams": {
                    n: getattr(trainer, n).state_dict() for n in ("labeled", "unlabeled")
                    if isinstance(getattr(trainer, n), ShardedPatchSampler)}}
        return {"world_size": self.world_size, "rank_states": self.all_gather_object(mine)}

    def load_rank_state(self, trainer, state: dict) -> None:
        """This rank's part of a ``state.pt`` written by :meth:`rank_states`."""
        if not self.enabled:
            return
        states = state.get("rank_states")
        if not states or len(states) != self.world_size:
            raise ValueError(f"state.pt was written by a run on {state.get('world_size', 1)} process(es); "
                             f"resume it with the same number (this run has {self.world_size})")
        mine = states[self.rank]
        trainer.rng.bit_generator.state = mine["rng"]
        trainer.gen.set_state(mine["gen"])
        torch.set_rng_state(mine["torch_rng"])
        for name, s in mine["streams"].items():
            getattr(trainer, name).load_state_dict(s)

    def finish(self, trainer, result=None):
        """Rank 0 passes its TrainResult to every rank; every rank logs its teacher's checksum."""
        result = self.broadcast_object(result)
        self.log({"final": True, "rank": self.rank, "iteration": trainer.iteration,
                  "teacher_sha256": state_checksum(trainer.teacher), "student_sha256": state_checksum(trainer.student)})
        return result

    def log(self, record: dict) -> None:
        folder = os.environ.get(RANK_LOG_ENV)
        if not folder:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(Path(folder) / f"rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def state_checksum(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (equal only when bit-identical)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def setup(device: str | None = None) -> DistContext:
    """The process group of a torchrun launch (created once per process), or a single-process context."""
    from .model import default_device

    world = env_world_size()
    if world <= 1:
        return DistContext(device=torch.device(device or default_device()))
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    kind = torch.device(device or default_device()).type
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} wants GPU {local}, but this machine has {torch.cuda.device_count()}")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(kind)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "3600")))
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timeout)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown() -> None:
    """Leave the process group together: a rank that destroys it while another still talks to it can
    abort the process at exit ("terminate called without an active exception", seen on a loaded CPU)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


class ShardedPatchSampler:
    """A PatchSampler whose case indices come from this rank's DistributedSampler shard, epoch by epoch."""

    def __init__(self, inner, ctx: DistContext, seed: int):
        from torch.utils.data import DistributedSampler

        self.inner = inner
        self.sampler = DistributedSampler(range(len(inner)), num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.epoch, self.offset = 0, 0
        self.last_epoch = 0
        self._order: list[int] | None = None

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def last_ids(self) -> list[str]:
        return self.inner.last_ids

    def _next_indices(self, n: int) -> list[int]:
        out: list[int] = []
        self.last_epoch = self.epoch
        while len(out) < n:
            if self._order is None:
                self.sampler.set_epoch(self.epoch)
                self._order = list(iter(self.sampler))
            take = self._order[self.offset:self.offset + n - len(out)]
            out += take
            self.offset += len(take)
            if self.offset >= len(self._order):
                self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        return out

    def sample(self, n: int):
        return self.inner.sample(n, indices=np.asarray(self._next_indices(n)))

    def foreground_patches(self, k: int):
        return self.inner.foreground_patches(k)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset, self._order = int(state["epoch"]), int(state["offset"]), None
