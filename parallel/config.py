"""Run configuration: nested dataclasses, overridable from the command line and YAML, validated up front.

A recipe builds a ``RunConfig``; ``apply_overrides`` merges ``--config file.yaml`` and ``--set a.b=value`` into
it.  Every key is checked against the dataclass fields and every value converted to the field's declared type,
so a typo or a wrong type fails with a message that names the key and the fix, before any rank initialises
anything.  The section ``__post_init__`` checks then validate the values themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field

import yaml

from mawstron.core import LitConfig, MAEConfig, PRESETS, size_overrides, vit_config
from mawstron.core.data import DataConfig

from .stages import STAGES, get_stage

PRECISIONS = ("bf16", "fp16", "fp32")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


class ConfigError(ValueError):
    """A bad key or value in a run configuration; the message says which and how to fix it."""


@dataclass
class ModelConfig:
    preset: str = "vit_tiny"
    img_size: int = 0  # 0: the preset's (224 for the paper's models)
    drop_path_rate: float = 0.0
    # custom sizes: 0 keeps the preset's value
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    patch_size: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset={self.preset!r} is not a preset; choose one of {sorted(PRESETS)}")

    def vit_overrides(self) -> dict:
        out = size_overrides(dataclasses.asdict(self))
        if self.drop_path_rate:
            out["drop_path_rate"] = self.drop_path_rate
        return out

    def vit_config(self, **extra):
        return vit_config(self.preset, **self.vit_overrides(), **extra)


@dataclass
class OptimConfig:
    """AdamW.  ``lr = base_lr * global_batch / 256`` (MAE's linear scaling rule) unless ``lr`` is set; an
    absolute ``lr`` is scaled the same way from ``lr_reference_batch``, the global batch it was set for (0: use it
    as is)."""

    base_lr: float = 1.5e-4
    lr: float = 0.0  # absolute peak learning rate; 0 means use base_lr scaling
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    layer_decay: float = 1.0  # layer-wise lr decay for fine-tuning (MAE/BEiT); 1.0 is off
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping
    lr_reference_batch: int = 0  # global batch that an absolute ``lr`` was tuned for; 0: never rescale ``lr``

    def __post_init__(self):
        if self.base_lr < 0 or self.lr < 0 or self.min_lr < 0:
            raise ConfigError("optim learning rates must be >= 0")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_reference_batch < 0:
            raise ConfigError(f"optim.lr_reference_batch must be >= 0, got {self.lr_reference_batch}")

    def peak_lr(self, global_batch: int) -> float:
        """The peak lr for ``global_batch`` images per optimizer step (linear scaling, as MAE)."""
        if self.lr > 0:
            return self.lr * global_batch / self.lr_reference_batch if self.lr_reference_batch else self.lr
        return self.base_lr * global_batch / 256


@dataclass
class TrainConfig:
    stage: str = "mae"
    steps: int = 100  # optimizer steps
    micro_batch: int = 8  # images per rank per forward/backward
    # images per optimizer step over all ranks (Megatron's convention): the schedule (steps, lr, images seen) then
    # does not depend on the GPU count; grad_accum = global_batch / (micro_batch x world size).  0: micro_batch x
    # grad_accum x world size (the global batch follows the GPU count)
    global_batch: int = 0
    grad_accum: int = 0  # 0: derived from global_batch (1 without it); set with global_batch, it must agree
    seed: int = 0
    log_every: int = 1
    label_smoothing: float = 0.0  # finetune only

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"train.stage={self.stage!r} must be one of {tuple(STAGES)}")
        for name in ("steps", "micro_batch", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.grad_accum < 0 or self.global_batch < 0:
            raise ConfigError("train.grad_accum and train.global_batch must be >= 0 (0: derived)")
        if self.global_batch and self.global_batch % self.micro_batch:
            raise ConfigError(f"train.global_batch={self.global_batch} is not a multiple of train.micro_batch="
                              f"{self.micro_batch}; set train.micro_batch to a divisor of the global batch")

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-batches per optimizer step on ``world_size`` ranks; ConfigError naming the fix when the global
        batch does not divide."""
        if not self.global_batch:
            return self.grad_accum or 1
        per_step = self.micro_batch * world_size
        accum, rest = divmod(self.global_batch, per_step)
        if rest or not accum:
            fits = [m for m in range(min(self.micro_batch, self.global_batch // world_size), 0, -1)
                    if self.global_batch % (m * world_size) == 0]
            fix = (f"set train.micro_batch={fits[0]} (or fewer)" if fits else
                   f"use a number of ranks that divides {self.global_batch}")
            raise ConfigError(
                f"train.global_batch={self.global_batch} is not a multiple of micro_batch {self.micro_batch} x "
                f"{world_size} ranks = {per_step}; {fix}, or change train.global_batch")
        if self.grad_accum and self.grad_accum != accum:
            raise ConfigError(
                f"train.grad_accum={self.grad_accum} contradicts train.global_batch={self.global_batch} = micro_batch "
                f"{self.micro_batch} x {world_size} ranks x {accum}; drop train.grad_accum (set train.grad_accum=0)")
        return accum

    def global_batch_for(self, world_size: int) -> int:
        return self.micro_batch * self.grad_accum_for(world_size) * world_size


@dataclass
class ParallelConfig:
    """DeepSpeed settings.  Bucket sizes of 0 are derived from the model width (DeepSpeed's own heuristics)."""

    zero_stage: int = 3
    precision: str = "bf16"
    activation_checkpointing: int = 1  # checkpoint every k-th transformer block; 0 disables
    offload_optimizer: str = "none"
    offload_params: str = "none"
    nvme_path: str = "/local_nvme"
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 0  # 0: width^2
    prefetch_bucket_size: int = 0  # 0: 0.9 * width^2
    param_persistence_threshold: int = 0  # 0: 10 * width (small params stay gathered)
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    # collective timeout: a rank that died or hangs ends the run after this long instead of never.  Long enough
    # for the first step's compilation, a checkpoint save and a world-size conversion on resume
    timeout_s: int = 1800

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"parallel.zero_stage must be 0-3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"parallel.precision={self.precision!r} must be one of {PRECISIONS}")
        for name in ("offload_optimizer", "offload_params"):
            if getattr(self, name) not in OFFLOAD_DEVICES:
                raise ConfigError(f"parallel.{name}={getattr(self, name)!r} must be one of {OFFLOAD_DEVICES}")
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ConfigError("parallel.offload_params needs parallel.zero_stage=3")
        if self.activation_checkpointing < 0:
            raise ConfigError("parallel.activation_checkpointing must be >= 0 (0 disables, k = every k-th block)")
        if self.timeout_s <= 0:
            raise ConfigError(f"parallel.timeout_s must be positive seconds, got {self.timeout_s}")


@dataclass
class CheckpointConfig:
    dir: str = ""  # "" means <run_dir>/checkpoints
    every_steps: int = 0  # 0: only at the end
    keep_last: int = 2
    init_from: str = ""  # MAE -> WSP handoff: an MAE checkpoint dir (ZeRO-3) or a consolidated file
    resume: bool = False  # continue from <dir>/latest

    def __post_init__(self):
        if self.every_steps < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint.every_steps must be >= 0 and checkpoint.keep_last >= 1")


@dataclass
class FinetuneConfig:
    """MAE's fine-tuning regularisation (core/augment.py; MAE's FINETUNE.md uses mixup=0.8 cutmix=1.0 reprob=0.25)
    and an exponential moving average of the weights (parallel/engine/ema.py).  Names follow MAE's main_finetune.py."""

    mixup: float = 0.0  # mixup alpha; 0 disables
    cutmix: float = 0.0  # cutmix alpha; 0 disables
    mixup_prob: float = 1.0  # probability that a batch is mixed
    mixup_switch_prob: float = 0.5  # with both on: probability of cutmix instead of mixup
    reprob: float = 0.0  # random erasing probability per image
    ema_decay: float = 0.0  # 0: no EMA; e.g. 0.9999 (DeiT's model_ema)

    def __post_init__(self):
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError("finetune.mixup and finetune.cutmix are Beta alphas: >= 0 (0 disables)")
        for name in ("mixup_prob", "mixup_switch_prob", "reprob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"finetune.{name} is a probability: in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"finetune.ema_decay must be in [0, 1) (0 disables), got {self.ema_decay}")

    @property
    def augments(self) -> bool:
        return bool(self.mixup or self.cutmix or self.reprob)


@dataclass
class EvalConfig:
    """Evaluation during training (parallel/training/periodic_eval.py): fine-tuning reports top-1/top-5 on
    ``test_shards``; MAE and WSP report k-NN top-1 of frozen features (``train_shards`` as the memory,
    ``test_shards`` as queries).  Shards or an ImageFolder directory.  Runs every ``every_steps`` and at the end
    when ``test_shards`` is set."""

    every_steps: int = 0  # 0: only at the end
    train_shards: str = ""  # labelled split the k-NN monitor memorises (MAE / WSP)
    test_shards: str = ""  # held-out labelled split; "" disables evaluation during training
    batch_size: int = 64  # per rank
    max_images: int = 1000  # per split; 0: all (keep it small: every rank waits for the evaluation)
    knn_k: int = 20

    def __post_init__(self):
        if self.every_steps < 0 or self.batch_size <= 0 or self.max_images < 0 or self.knn_k <= 0:
            raise ConfigError("eval.every_steps and eval.max_images must be >= 0, eval.batch_size and eval.knn_k > 0")


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = ""  # "" means runs/<name> (see run_dir)
    model: ModelConfig = field(default_factory=ModelConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lit: LitConfig = field(default_factory=LitConfig)  # train.stage=lit only

    def __post_init__(self):
        problem = self.stage.config_problem(self)  # what this stage cannot run with (parallel/stages/)
        if problem:
            raise ConfigError(problem)
        if self.finetune.ema_decay and self.parallel.offload_params == "nvme":
            raise ConfigError("finetune.ema_decay reads each rank's parameter partitions in memory; it does not "
                              "work with parallel.offload_params=nvme (use cpu offload or no EMA)")
        try:
            self.model.vit_config()
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model section: {e}") from None

    @property
    def stage(self):
        """The ``Stage`` object of ``train.stage`` (parallel/stages/): what differs between stages."""
        return get_stage(self.train.stage)

    @property
    def run_dir(self) -> str:
        """Where metrics, logs and (by default) checkpoints go: ``output_dir`` or ``runs/<name>``."""
        return self.output_dir or f"runs/{self.name}"

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or f"{self.run_dir}/checkpoints"


# ----------------------------------------------------------------------------------------------- overrides
def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value, tp, key: str):
    """``value`` as type ``tp`` (from a YAML file or a ``--set`` string); ConfigError if it isn't one."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                    return None
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot convert {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            except yaml.YAMLError:
                raise ConfigError(f"{key} expects {len(typing.get_args(tp))} values like [0.9,0.95], "
                                  f"got {value!r}") from None
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} expects {len(args)} values like [0.9, 0.95], got {value!r}")
        return tuple(_convert(v, t, key) for v, t in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} expects a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _merge(obj, updates: dict, prefix: str = ""):
    """A copy of dataclass ``obj`` with ``updates`` (a nested dict) applied and type-checked."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys here: {', '.join(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        tp = hints[key]
        current = getattr(obj, key)
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section; set its fields, e.g. {path}.{dataclasses.fields(tp)[0].name}=...")
            changes[key] = _merge(current, value, prefix=f"{path}.")
        else:
            changes[key] = _convert(value, tp, path)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a section's own validation (e.g. MAEConfig, DataConfig)
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def parse_set(assignments: list[str]) -> dict:
    """``["train.steps=200", "optim.betas=[0.9,0.95]"]`` -> nested dict of raw values."""
    out: dict = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE such as train.steps=200, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def _deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def apply_overrides(cfg: RunConfig, yaml_files: list[str] = (), assignments: list[str] = ()) -> RunConfig:
    """``cfg`` with YAML files (in order) then ``--set`` assignments applied; raises ConfigError on any problem."""
    updates: dict = {}
    for path in yaml_files:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
        except yaml.YAMLError as e:  # one line: where the file is malformed, not the parser's traceback
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {path!r} is not valid YAML{where}: {problem}; fix it or pass the "
                              f"values with --set key=value") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of sections, e.g. 'train: {{steps: 200}}'")
        _deep_update(updates, loaded)
    _deep_update(updates, parse_set(list(assignments)))
    return _merge(cfg, updates)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
