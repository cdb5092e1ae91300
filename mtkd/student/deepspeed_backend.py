"""The DeepSpeed adapter of the shared training loop, and its config generator.

:class:`DeepSpeedBackend` implements the same ``forward/backward/step`` as
:class:`~mtkd.training.backend.TorchBackend` around the engine from
``deepspeed.initialize``; the loop itself is reused unchanged. Ray Train has already set
up the process group (gloo on CPU, NCCL on GPU), which DeepSpeed joins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mtkd.config import StudentConfig
from mtkd.precision import DTYPES, Resolved, resolve_here
from mtkd.resources import on_gpu, ray_resources
from mtkd.training.optim import TaskAwareAdamW, build_adamw, linear_warmup_decay
from mtkd.training.stages import parameter_unit

PRECISION_KEY = "student.training.precision"


def mixed_precision(student: StudentConfig, precision: str) -> str:
    """How the resolved ``precision`` is trained: student.deepspeed.mixed_precision, except
    fp16 at ZeRO 1-3, which always uses DeepSpeed's fp16 mode (half_weights).

    Why: in DeepSpeed 0.18-0.19 (checked on 0.19.8) torch_autocast with fp16 under ZeRO
    1-3 scales the loss with a GradScaler, but the ZeRO optimizer detects an overflow
    itself and skips the step before the GradScaler can back off: the scale stays at
    2**16 and every later step overflows and is skipped too (tests/unit/
    test_deepspeed_backend.py reproduces it on CPU). DeepSpeed's fp16 mode has its own
    dynamic loss scaler, which halves the scale on overflow as it should.
    """
    if precision == "fp16" and student.zero_stage > 0:
        return "half_weights"
    return student.deepspeed.mixed_precision


def deepspeed_config(student: StudentConfig, world_size: int,
                     precision: str | None = None) -> dict[str, Any]:
    """DeepSpeed's JSON config from the experiment config (ZeRO stage, precision and how
    mixed precision is done, accumulation, clipping); optimizer and schedule are mtkd's own
    AdamW and warm-up/decay. ``precision``: the resolved one (fp32, bf16, fp16; default
    ``student.training.precision``, which must then not be "auto"). fp16 gets dynamic
    loss scaling: DeepSpeed's GradScaler under torch_autocast (ZeRO-0 and ZeRO 1-3 alike),
    its own dynamic loss scaler in half_weights mode."""
    training, ds = student.training, student.deepspeed
    precision = precision or training.precision
    if precision not in DTYPES:
        raise ValueError(f"deepspeed_config needs a resolved precision, got {precision!r}")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.grad_accum,
        "train_batch_size": training.batch_size * training.grad_accum * world_size,
        "gradient_clipping": training.grad_clip,
        "zero_optimization": {"stage": student.zero_stage},
        # mtkd passes torch's AdamW (no JIT-built fused/CPU Adam op needed on any machine).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer and student.zero_stage > 0:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if precision == "fp32":
        return config
    if mixed_precision(student, precision) == "autocast":
        # fp32 weights; DeepSpeed runs the forward under torch.autocast (and adds a
        # GradScaler for fp16). No "lower precision safe" modules: gradients are reduced in
        # fp32, as DDP does in the teachers' loop (DeepSpeed's default would round the
        # Linear layers' gradients to bf16/fp16 before reducing them).
        dtype = str(DTYPES[precision]).removeprefix("torch.")  # "bfloat16", "float16"
        config["torch_autocast"] = {"enabled": True, "dtype": dtype,
                                    "lower_precision_safe_modules": []}
    elif precision == "bf16":
        config["bf16"] = {"enabled": True}
    else:
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


class DeepSpeedBackend:
    """Training step through a DeepSpeed engine (ZeRO 0-3, bf16/fp16/fp32)."""

    def __init__(self, model: torch.nn.Module, student: StudentConfig, total_steps: int,
                 world_size: int, device: torch.device | str | None = None,
                 resolved: Resolved | None = None,
                 zero_overrides: dict[str, Any] | None = None, freezable: bool = False
                 ) -> None:
        """``device``: where this rank runs (default: DeepSpeed's accelerator device);
        ``student.training.precision`` is resolved there unless ``resolved`` is given.
        ``zero_overrides``: DeepSpeed ``zero_optimization`` keys set over the generated
        config (benchmarks compare e.g. ``contiguous_gradients``; the student stage passes
        none). ``freezable``: group the optimizer's parameters by freezing unit, for staged
        training (:mod:`mtkd.training.stages`; DeepSpeed keeps the groups' keys)."""
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        training = student.training
        if device is None:
            device = (torch.device(get_accelerator().current_device_name())
                      if on_gpu(ray_resources(student.worker_resources))
                      else torch.device("cpu"))
        device = torch.device(device)
        self.resolved = resolved or resolve_here(training.precision, device, PRECISION_KEY)
        self._optimizer = build_adamw(model, training.learning_rate, training.weight_decay,
                                      parameter_unit if freezable else None)
        optimizer = self._optimizer
        warmup = round(training.warmup_ratio * total_steps)

        def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: linear_warmup_decay(step, warmup, total_steps))

        self.config = deepspeed_config(student, world_size, self.resolved.precision)
        self.config["zero_optimization"].update(zero_overrides or {})
        if "torch_autocast" not in self.config:
            # DeepSpeed keeps its torch_autocast state in module globals (a TODO of theirs);
            # a process that built an autocast engine before (tests, benchmarks) would
            # otherwise carry it into this one.
            import deepspeed.runtime.torch_autocast as ds_autocast

            ds_autocast.TORCH_AUTOCAST_INITIALIZED = False
        if device.type == "cpu":
            # Users watch the console: say why the next line may take a while.
            logging.getLogger("mtkd").info(
                "initialising DeepSpeed (ZeRO-%d); its first start on a machine compiles its "
                "CPU communication op, about 40 s", student.zero_stage)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, config=self.config,
            dist_init_required=False)
        if world_size == 1 and student.zero_stage == 0:
            # Averaging gradients over one rank is the identity, but DeepSpeed's ZeRO-0 path
            # still flattens, "reduces" and copies back every gradient (~30% of a CPU
            # backward). ZeRO 1-3 move gradients into their partitions in that reduction, so
            # it stays on for them.
            self.engine.enable_backward_allreduce = False
        self.model = self.engine.module
        self.device = self.engine.device
        self.precision = self.resolved.precision
        self._head_params = [p for name, p in self.model.named_parameters()
                             if name.startswith("heads.")]
        self._task_names = sorted({name.split(".")[1] for name, _ in
                                   self.model.named_parameters() if name.startswith("heads.")})
        self._world_size = world_size
        self._used: set[str] = set()

    @property
    def optimizer(self) -> TaskAwareAdamW:
        """mtkd's AdamW inside the engine (under ZeRO 1-2 its groups are DeepSpeed's flat
        partitions, with the keys of :func:`~mtkd.training.optim.parameter_groups`)."""
        return self._optimizer

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The whole model's weights as it evaluates now (in half_weights mode its bf16/fp16
        module weights), as fp32 on the CPU. Every rank must call it: ZeRO-3 gathers the
        partitioned parameters."""
        params = dict(self.model.named_parameters())
        if self.engine.zero_optimization_partition_weights():
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone()
                        for k, v in self.model.state_dict().items()}
        return {k: v.detach().float().cpu().clone() for k, v in self.model.state_dict().items()}

    def forward(self, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self._used.add(task)
        return self.engine(task, **inputs)

    def backward(self, loss: torch.Tensor) -> None:
        # Data-parallel ranks may draw batches of different tasks at one step; a zero-weight
        # term gives every head a (zero) gradient on every rank, so the gradient reduction
        # always covers the same parameters. The optimizer then skips the heads no rank
        # used (step), as the teachers' PyTorch loop does.
        anchor = sum(p.sum() for p in self._head_params) * 0.0
        self.engine.backward(loss + anchor)

    def step(self) -> bool:
        boundary = bool(self.engine.is_gradient_accumulation_boundary())
        if boundary:
            self._optimizer.set_tasks(self._tasks_on_any_rank())
            self._used.clear()
        self.engine.step()
        return boundary

    def _tasks_on_any_rank(self) -> set[str]:
        """The tasks of this accumulation window's batches on any rank (one tiny
        all-reduce when data-parallel)."""
        if self._world_size == 1:
            return set(self._used)
        import torch.distributed as dist

        flags = torch.tensor([float(t in self._used) for t in self._task_names],
                             device=self.engine.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return {t for t, used in zip(self._task_names, flags.tolist(), strict=True) if used}

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def loss_scale(self) -> float | None:
        """DeepSpeed's current fp16 loss scale (None without loss scaling): the
        GradScaler of torch_autocast at ZeRO-0, else the fp16 mode's dynamic scaler."""
        if self.precision != "fp16":
            return None
        scaler = getattr(self.engine, "torch_autocast_z0_gradscaler", None)
        if scaler is not None:
            return float(scaler.get_scale())
        for name in ("loss_scale", "cur_scale"):  # ZeRO optimizers; FP16_Optimizer (ZeRO-0)
            scale = getattr(self.engine.optimizer, name, None)
            if isinstance(scale, (int, float)):
                return float(scale)
        return None

    def save_state(self, folder: Path, rank: int = 0) -> None:
        """This rank's DeepSpeed checkpoint (model, optimizer and ZeRO shard, schedule, loss
        scaler) under ``folder/ds`` (every rank must call it: a collective)."""
        self.engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG)

    def load_state(self, folder: Path, rank: int = 0) -> None:
        """Restore model, optimizer and schedule from a checkpoint folder (all ranks'
        shards); RuntimeError when DeepSpeed finds no checkpoint there."""
        path, _ = self.engine.load_checkpoint(str(folder), tag=CHECKPOINT_TAG)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint (tag {CHECKPOINT_TAG!r}) in {folder}")


CHECKPOINT_TAG = "ds"
