"""One training loop for MAE, WSP and fine-tuning on a DeepSpeed engine.

What differs between stages is the data (images, or images + multi-hot targets) and the loss; everything else
(schedule, accumulation, metrics, checkpoints, resume, divergence detection) is shared.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from mawstron.core import training_flops, wsp_loss
from mawstron.core.data import build_train_loader
from mawstron.core.data.shards import SKIP_REASONS

from . import checkpoint as ckpt
from . import lit as lit_stage
from .build import build_model
from .config import RunConfig, to_dict
from .ds_config import build_ds_config
from .metrics import MetricsWriter, device_peak_tflops, peak_memory_gib, print_rank0, progress_line, zero_partition_report
from .optim import build_optimizer, lr_at, param_groups, set_lr

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.step = 0  # optimizer steps completed
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------------------------- set-up
    def init_distributed(self) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        elif "OMP_NUM_THREADS" not in os.environ:
            # CPU ranks share the machine's cores: by default each would start one intra-op thread per core,
            # and oversubscribed OpenMP threads spin-wait (several times slower on 2 cores with 2 ranks)
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_ranks)))

    def build(self) -> None:
        import deepspeed

        cfg = self.cfg
        lit = cfg.train.stage == "lit"
        tokenizer = lit_stage.prepare_tokenizer(cfg, self.rank) if lit else None
        self.loader = build_train_loader(cfg.data, stage=cfg.train.stage, img_size=cfg.model.vit_config().img_size,
                                         micro_batch=cfg.train.micro_batch, rank=self.rank,
                                         world_size=self.world_size, seed=cfg.train.seed, tokenizer=tokenizer)
        self.ds_config = build_ds_config(cfg, self.world_size, cfg.model.vit_config().embed_dim)
        # identical seed on every rank: each rank computes the same full tensor and keeps its shard, so the
        # sharded model equals the single-process initialisation with this seed
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, tokenizer.get_vocab_size() if lit else self.loader.num_classes, self.ds_config)
        self.vit_config = model.config
        groups = (lit_stage.lit_param_groups(model, cfg.optim, cfg.lit.image_lr_scale) if lit
                  else param_groups(model, cfg.optim, model.config.depth))
        optimizer = build_optimizer(groups, cfg.optim, use_fused=self.device.type == "cuda")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.dtype = DTYPES[cfg.parallel.precision]
        self.global_batch = cfg.train.micro_batch * cfg.train.grad_accum * self.world_size
        self.peak_lr = cfg.optim.peak_lr(self.global_batch)
        self.flops_per_image = (lit_stage.lit_training_flops(cfg) if lit else
                                training_flops(model.config, "mae" if cfg.train.stage == "mae" else "wsp", cfg.mae))
        self.device_name, self.device_peak = device_peak_tflops(self.device)
        # masks, drop-path and data order must differ between ranks
        torch.manual_seed(cfg.train.seed + 1 + self.rank)

    def resume(self) -> None:
        """Continue from ``<checkpoint_dir>/latest``: weights, optimizer, step, data position, RNG."""
        ckpt_dir = self.cfg.checkpoint_dir
        tag = ckpt.resolve_tag(ckpt_dir)
        saved_world = ckpt.read_marker(ckpt_dir, tag)["world_size"]
        if saved_world != self.world_size:
            raise RuntimeError(
                f"{ckpt_dir}/{tag} was written by {saved_world} ranks and this run has {self.world_size}; resume with "
                f"{saved_world} ranks (ZeRO shards are per rank)"
            )
        path, client = self.engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {ckpt_dir}/{tag}")
        self.step = int(client["step"])
        self.loader.load_state_dict(client["data"])
        ckpt.set_rng_state(client["rng"])
        print_rank0(self.rank, f"[mawstron] resumed from {ckpt_dir}/{tag} at step {self.step}")

    # ------------------------------------------------------------------------------------------- steps
    def compute_loss(self, batch: dict) -> torch.Tensor:
        if self.cfg.train.stage == "lit":
            return lit_stage.lit_loss(self.engine, batch, self.device, self.dtype)
        images = batch["images"].to(self.device, self.dtype, non_blocking=True)
        if self.cfg.train.stage == "mae":
            loss, _, _ = self.engine(images)
            return loss
        targets = batch["targets"].to(self.device, non_blocking=True)
        smoothing = self.cfg.train.label_smoothing
        if smoothing:
            labelled = targets.sum(1, keepdim=True) > 0
            targets = torch.where(labelled, targets / targets.sum(1, keepdim=True).clamp_min(1) * (1 - smoothing)
                                  + smoothing / targets.shape[1], targets)
        loss, _ = wsp_loss(self.engine(images), targets)
        return loss

    def _all_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Sum of the ranks' losses and whether any rank's was NaN/inf (one collective)."""
        stats = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()]).to(self.device)
        dist.all_reduce(stats)
        return stats

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics record."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg.train.steps, self.peak_lr, cfg.optim.warmup_steps, cfg.optim.min_lr)
        set_lr(self.optimizer, lr)
        start, waited, loss_sum = time.perf_counter(), 0.0, 0.0
        for _ in range(cfg.train.grad_accum):
            before = time.perf_counter()
            batch = next(self.batches)
            waited += time.perf_counter() - before
            loss = self.compute_loss(batch)
            stats = self._all_finite(loss)
            if stats[1] > 0:
                raise TrainingDiverged(
                    f"loss became {loss.item()} at step {self.step + 1} on at least one rank; stopped without saving. "
                    f"The last good checkpoint is in {cfg.checkpoint_dir} ('latest'). Lower optim.lr / optim.base_lr "
                    f"or raise optim.warmup_steps, then resume with --resume"
                )
            loss_sum += stats[0].item() / self.world_size
            self.engine.backward(loss)
            self.engine.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.step += 1
        grad_norm = self.engine.get_global_grad_norm()
        images_per_s = self.global_batch / elapsed
        tflops = self.flops_per_image * images_per_s / self.world_size / 1e12
        return {
            "step": self.step,
            "loss": loss_sum / cfg.train.grad_accum,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "images_per_s": images_per_s,
            "tflops_per_device": tflops,
            "mfu": tflops / self.device_peak if self.device_peak else None,
            "peak_mem_gib": peak_memory_gib(self.device),
            "data_wait_share": waited / elapsed,
            "step_time_s": elapsed,
        }

    def _data_stats(self) -> dict:
        """Data counters summed over ranks (a collective: every rank calls it at the same steps): images seen,
        samples skipped (in total and per reason), images without a known hashtag (kept, all-zero targets)."""
        stats = self.loader.stats()
        reasons = stats.get("skipped_by_reason", {})
        counts = torch.tensor([stats.get("images_seen", 0), stats.get("skipped", 0), stats.get("no_known_hashtag", 0)]
                              + [reasons.get(r, 0) for r in SKIP_REASONS], dtype=torch.float64)
        dist.all_reduce(counts)
        out = {"images_seen": int(counts[0]), "skipped": int(counts[1]), "no_known_hashtag": int(counts[2])}
        by_reason = {r: int(n) for r, n in zip(SKIP_REASONS, counts[3:].tolist()) if n}
        if by_reason:
            out["skipped_by_reason"] = by_reason
        return out

    def write_data_summary(self) -> None:
        """``<run_dir>/data_rank<r>.json``: what this rank's loader read and skipped (its shards, the worst ones);
        rank 0 prints the worst shards over all ranks."""
        stats = self.loader.stats()
        os.makedirs(self.cfg.run_dir, exist_ok=True)
        with open(os.path.join(self.cfg.run_dir, f"data_rank{self.rank}.json"), "w") as f:
            json.dump({"rank": self.rank, "world_size": self.world_size, **stats}, f, indent=1)
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, stats.get("worst_shards", []))
        worst = sorted((tuple(w) for ws in gathered for w in ws), key=lambda w: (-w[1], w[0]))[:5]
        if worst:
            print_rank0(self.rank, "[mawstron] data: skipped samples, worst shards: "
                        + ", ".join(f"{os.path.basename(s)} ({n})" for s, n in worst))

    def write_partition_report(self) -> None:
        """``<run_dir>/zero_partition.json``: each rank's share of parameters and measured model-state bytes
        (after the first step, when optimizer states exist)."""
        mine = zero_partition_report(self.engine)
        reports = [None] * self.world_size
        dist.all_gather_object(reports, mine)
        if self.rank == 0:
            os.makedirs(self.cfg.run_dir, exist_ok=True)
            with open(os.path.join(self.cfg.run_dir, "zero_partition.json"), "w") as f:
                json.dump({"zero_stage": self.cfg.parallel.zero_stage, "ranks": reports}, f, indent=1)

    def save(self) -> None:
        """Crash-safe checkpoint of the current step (see parallel/checkpoint.py)."""
        ckpt_dir, tag = self.cfg.checkpoint_dir, ckpt.tag_for_step(self.step)
        client_state = {"step": self.step, "data": self.loader.state_dict(), "rng": ckpt.rng_state()}
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)
        dist.barrier()  # every rank's shards are on disk before the checkpoint is declared complete
        if self.rank == 0:
            ckpt.finalize(ckpt_dir, tag, self.step, to_dict(self.cfg), self.cfg.checkpoint.keep_last,
                          world_size=self.world_size)
        dist.barrier()

    # ------------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        cfg = self.cfg
        metrics = MetricsWriter(cfg.run_dir, enabled=self.rank == 0,
                                resume_step=self.step if cfg.checkpoint.resume else None)
        self.batches = iter(self.loader)
        every = cfg.checkpoint.every_steps
        reported_partition = False
        try:
            while self.step < cfg.train.steps:
                record = self.train_step()
                if not reported_partition:
                    self.write_partition_report()
                    reported_partition = True
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    record.update(self._data_stats())
                    metrics.write(record)
                    print_rank0(self.rank, progress_line(record, cfg.train.steps))
                if (every and self.step % every == 0) or self.step == cfg.train.steps:
                    self.save()
        finally:
            metrics.close()
        self.write_data_summary()
        print_rank0(self.rank, f"[mawstron] done: {self.step} steps; metrics {metrics.path}; "
                               f"checkpoints {cfg.checkpoint_dir} (latest: {ckpt.tag_for_step(self.step)})")

    def run(self) -> None:
        self.init_distributed()
        self.build()
        if self.cfg.checkpoint.resume:
            self.resume()
        try:
            self.train()
        finally:
            self.loader.close()
