"""One training loop for every stage (MAE, WSP, fine-tuning, LiT) on a DeepSpeed engine.

What differs between stages (model, tokenizer, parameter groups, loss, FLOPs) the run's ``Stage`` object
answers (parallel/stages/); everything else (schedule, accumulation, metrics, checkpoints, resume, divergence
detection, evaluation during training) is shared.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist

from mawstron.core.data import build_train_loader
from mawstron.core.data.shards import SKIP_REASONS

from ..checkpoints import store as ckpt
from ..checkpoints import universal
from ..config import RunConfig, to_dict
from ..engine.build import build_model
from ..engine.ds_config import build_ds_config
from ..engine.optim import build_optimizer, lr_at, set_lr
from .metrics import MetricsWriter, device_peak_tflops, peak_memory_gib, print_rank0, progress_line, zero_partition_report
from .periodic_eval import PeriodicEval
from .resilience import InterruptHandler, Preempted, PreemptionHandler, end_worker_processes, signals_held
from .schedule import Schedule, format_duration
from .status import StatusFile

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


def divergence_advice(checkpoint_dir: str) -> str:
    """What to do after a NaN/inf loss, naming a checkpoint that exists."""
    done = ckpt.complete_tags(checkpoint_dir)
    if done:
        return (f"the last good checkpoint is {os.path.join(checkpoint_dir, done[-1])}. Lower optim.lr / optim.base_lr "
                f"or raise optim.warmup_steps, then continue it with --resume")
    return ("no checkpoint was saved before it (checkpoint.every_steps sets how often). Lower optim.lr / "
            "optim.base_lr or raise optim.warmup_steps, then start again with --overwrite")


CPU_SHM_PREFIX = "/dev/shm/deepspeed_allreduce_buffer"


def release_cpu_shm_name(rank: int) -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer name once every rank has mapped its peers' buffers.

    DeepSpeed's CPU accelerator (``ops/csrc/cpu/comm/shm_interface.cpp``) creates
    ``/dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}`` (66 MB) for each local rank
    while ``init_distributed`` runs, maps every peer's, and never unlinks them: each run left 66 MB per rank in
    /dev/shm, and test suites that kill runs filled it.  After the barrier every rank holds its mappings, which stay
    valid after the name is gone, so each rank removes its own name and even a killed run leaves nothing behind."""
    env = os.environ
    name = f"{CPU_SHM_PREFIX}_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{rank}"
    dist.barrier()  # on every CPU rank, whether or not DeepSpeed used shared memory (it does not across hosts)
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.step = 0  # optimizer steps completed
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")
        self.resume_tag, self.resume_universal = None, False
        self.last_checkpoint, self.last_save_s = None, None
        # rank 0's status.json (``mawstron status``); the rank that fails enables its own to say so
        self.status = StatusFile(cfg.run_dir, cfg.train.steps, enabled=int(os.environ.get("RANK", "0")) == 0)
        # made by build(): the data, the engine and what it runs with
        self.loader = self.ds_config = self.engine = self.optimizer = None
        self.vit_config = self.schedule = self.dtype = None
        self.grad_accum, self.global_batch, self.peak_lr = 1, 0, 0.0
        self.flops_per_image, self.device_name, self.device_peak = 0, "", None
        self.batches = None  # the loader's iterator, from train()
        self.interrupt: InterruptHandler | None = None  # Ctrl-C during train() (resilience.InterruptHandler)
        self.evaluator: PeriodicEval | None = None  # weight EMA and evaluation during training, from train()

    # ------------------------------------------------------------------------------------------- set-up
    def init_distributed(self) -> None:
        import deepspeed

        # a rank that died or hangs ends every other rank's collective after parallel.timeout_s instead of never
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   timeout=datetime.timedelta(seconds=self.cfg.parallel.timeout_s))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
            return
        release_cpu_shm_name(self.rank)
        if "OMP_NUM_THREADS" not in os.environ:
            # CPU ranks share the machine's cores: by default each would start one intra-op thread per core,
            # and oversubscribed OpenMP threads spin-wait (several times slower on 2 cores with 2 ranks)
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_ranks)))

    def build(self) -> None:
        import deepspeed

        cfg, stage = self.cfg, self.cfg.stage
        tokenizer = stage.tokenizer(cfg, self.rank)  # LiT's caption tokenizer, identical on every rank
        self.loader = build_train_loader(cfg.data, stage=cfg.train.stage, img_size=cfg.model.vit_config().img_size,
                                         micro_batch=cfg.train.micro_batch, rank=self.rank,
                                         world_size=self.world_size, seed=cfg.train.seed, tokenizer=tokenizer)
        self.ds_config = build_ds_config(cfg, self.world_size, cfg.model.vit_config().embed_dim)
        if cfg.checkpoint.resume:
            self.prepare_resume()
        # identical seed on every rank: each rank computes the same full tensor and keeps its shard, so the
        # sharded model equals the single-process initialisation with this seed
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, stage.num_outputs(self.loader, tokenizer), self.ds_config)
        self.vit_config = model.config
        optimizer = build_optimizer(stage.param_groups(model, cfg), cfg.optim, use_fused=self.device.type == "cuda")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.dtype = DTYPES[cfg.parallel.precision]
        self.schedule = Schedule.of(cfg, self.world_size)
        self.grad_accum, self.global_batch = self.schedule.grad_accum, self.schedule.global_batch
        self.peak_lr = self.schedule.peak_lr
        print_rank0(self.rank, f"[mawstron] {cfg.name}: {self.schedule.format()}")
        self.flops_per_image = stage.training_flops(cfg, model.config)
        self.device_name, self.device_peak = device_peak_tflops(self.device)
        # masks, drop-path and data order must differ between ranks
        torch.manual_seed(cfg.train.seed + 1 + self.rank)

    def _verify_collectively(self, tag: str) -> list[str]:
        """``tag``'s manifest problems, the files checked in parallel (rank r hashes every world-th file)."""
        manifest = ckpt.read_manifest(self.cfg.checkpoint_dir, tag)
        if manifest is None:
            return []
        names = sorted(manifest["files"])[self.rank::self.world_size]
        mine = ckpt.verify_files(self.cfg.checkpoint_dir, tag, names=names)
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        return sorted(p for ps in gathered for p in ps)

    def prepare_resume(self) -> None:
        """Before the engine exists: pick the newest checkpoint that verifies and, when it was written by another
        number of ranks, convert it with DeepSpeed's universal checkpointing (rank 0, cached) and ask the engine
        to load universal checkpoints."""
        ckpt_dir = self.cfg.checkpoint_dir
        self.resume_tag = ckpt.newest_verified_tag(ckpt_dir, problems_of=self._verify_collectively,
                                                   say=lambda line: print_rank0(self.rank, line))
        saved_world = ckpt.read_marker(ckpt_dir, self.resume_tag)["world_size"]
        if saved_world == self.world_size:
            return
        self.resume_universal = True
        if self.rank == 0:
            start = time.perf_counter()
            # the other ranks wait in a barrier that ends after parallel.timeout_s: stop the conversion before it
            path, converted = universal.convert(ckpt_dir, self.resume_tag, timeout_s=0.9 * self.cfg.parallel.timeout_s)
            how = f"converted in {time.perf_counter() - start:.1f} s" if converted else "cached conversion"
            print(f"[mawstron] {ckpt_dir}/{self.resume_tag} was written by {saved_world} ranks, this run has "
                  f"{self.world_size}: loading DeepSpeed's universal checkpoint {path} ({how})", flush=True)
        dist.barrier()  # the conversion is on disk before any rank loads it
        self.ds_config["checkpoint"] = {"load_universal": True}

    def resume(self) -> None:
        """Continue from the checkpoint ``prepare_resume`` chose: weights, optimizer, step, data position, RNG."""
        ckpt_dir, tag = self.cfg.checkpoint_dir, self.resume_tag
        if self.resume_universal:
            self.resume_on_new_world()
            return
        path, client = self.engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {ckpt_dir}/{tag}")
        self.step = int(client["step"])
        self.loader.load_state_dict(client["data"])
        ckpt.set_rng_state(client["rng"])
        self.last_checkpoint = os.path.join(ckpt_dir, tag)
        print_rank0(self.rank, f"[mawstron] resumed from {ckpt_dir}/{tag} at step {self.step}")

    def resume_on_new_world(self) -> None:
        """Load ``<tag>/universal`` on this world size: weights, Adam moments and step from DeepSpeed; then each
        group's own hyperparameters (DeepSpeed copies group 0's onto all), the data position for the new split
        of the data and fresh per-rank RNG streams."""
        ckpt_dir, tag = self.cfg.checkpoint_dir, self.resume_tag
        expected = universal.group_settings(self.optimizer.param_groups)
        path, client = self.engine.load_checkpoint(os.path.join(ckpt_dir, tag), tag=ckpt.UNIVERSAL,
                                                   load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the universal checkpoint "
                               f"{universal.universal_dir(ckpt_dir, tag)}")
        restored = universal.restore_group_settings(self.optimizer.param_groups, expected)
        self.step = int(client["step"])
        self.loader.load_state_dict(universal.data_state_for_world(client["data"], self.step, self.grad_accum))
        # the saved RNG streams belong to the old ranks: derive new ones from the seed, the rank and the step
        ckpt.seed_everything(self.cfg.train.seed + 1 + self.rank + 7919 * self.step)
        self.last_checkpoint = os.path.join(ckpt_dir, tag)
        print_rank0(self.rank, f"[mawstron] resumed from {ckpt_dir}/{tag} at step {self.step} on {self.world_size} "
                               f"ranks (grad accumulation {self.grad_accum}); restored the own settings of "
                               f"{restored} of {len(expected)} parameter groups that the universal load had "
                               f"overwritten")

    # ------------------------------------------------------------------------------------------- steps
    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.cfg.stage.loss(self.engine, batch, self.device, self.dtype, self.cfg)

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
        for _ in range(self.grad_accum):
            before = time.perf_counter()
            with signals_held():  # workers forked here survive the group's SIGTERM (resilience.signals_held)
                batch = next(self.batches)
            waited += time.perf_counter() - before
            loss = self.compute_loss(batch)
            stats = self._all_finite(loss)
            if stats[1] > 0:
                raise TrainingDiverged(f"loss became {loss.item()} at step {self.step + 1} on at least one rank; "
                                       f"stopped without saving; {divergence_advice(cfg.checkpoint_dir)}")
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
            "loss": loss_sum / self.grad_accum,
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
        """Crash-safe checkpoint of the current step (see parallel/checkpoints/store.py)."""
        ckpt_dir, tag = self.cfg.checkpoint_dir, ckpt.tag_for_step(self.step)
        self.status.update(state="saving")
        start = time.perf_counter()
        if self.rank == 0 and os.path.isdir(os.path.join(ckpt_dir, tag)):
            # a checkpoint of this step from an earlier attempt (say one that failed verification) is replaced
            # whole: stale shards of another world size must not mix with the new ones
            ckpt.discard(ckpt_dir, tag)
        dist.barrier()
        if self.evaluator is not None:
            self.evaluator.save_ema(self.step)
        client_state = {"step": self.step, "data": self.loader.state_dict(), "rng": ckpt.rng_state()}
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)
        # each rank checksums its own shards (in parallel); gathering them is also the barrier after which every
        # rank's files are on disk and the checkpoint can be declared complete
        digests = [None] * self.world_size
        dist.all_gather_object(digests, ckpt.rank_file_digests(ckpt_dir, tag, self.rank))
        if self.rank == 0:
            ckpt.finalize(ckpt_dir, tag, self.step, to_dict(self.cfg), self.cfg.checkpoint.keep_last,
                          world_size=self.world_size, digests={k: v for d in digests for k, v in d.items()})
        dist.barrier()
        self.last_checkpoint = os.path.join(ckpt_dir, tag)
        self.last_save_s = time.perf_counter() - start
        size_mb = sum(d["size"] for ds in digests for d in ds.values()) / 2**20
        # the save time is what a preemption's grace period has to cover (README: Running on a cluster)
        print_rank0(self.rank, f"[mawstron] saved {tag} ({size_mb:.1f} MB, {self.world_size} ranks) in "
                               f"{self.last_save_s:.2f} s")
        self.status.update(state="running", last_checkpoint=self.last_checkpoint, last_save_s=round(self.last_save_s, 3))

    # ------------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        cfg = self.cfg
        metrics = MetricsWriter(cfg.run_dir, enabled=self.rank == 0,
                                resume_step=self.step if cfg.checkpoint.resume else None)
        self.batches = iter(self.loader)
        every = cfg.checkpoint.every_steps
        reported_partition = False
        self.status.start_step = self.step
        self.status.update(state="running", step=self.step, last_checkpoint=self.last_checkpoint)
        self.evaluator = evaluator = PeriodicEval(cfg, self.engine.module, rank=self.rank, world_size=self.world_size,
                                                  device=self.device, dtype=self.dtype, train_loader=self.loader,
                                                  resume_tag=self.resume_tag)
        try:
            with PreemptionHandler() as preemption, InterruptHandler() as self.interrupt:
                while self.step < cfg.train.steps:
                    record = self.train_step()
                    self.status.step_done(self.step)
                    if not reported_partition:
                        self.write_partition_report()
                        reported_partition = True
                    if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                        record.update(self._data_stats())
                        metrics.write(record)
                        self.log_progress(record)
                    evaluator.after_step(self.step, metrics)
                    saved = (every and self.step % every == 0) or self.step == cfg.train.steps
                    if saved:
                        self.save()
                    if preemption.agreed(self.device):
                        self.stop_on_signal(preemption.signal_name(), saved)
                    self.interrupt.check()  # Ctrl-C: stop here (nothing saved past the last checkpoint)
        finally:
            metrics.close()
        self.status.update(state="done", step=self.step)
        self.write_data_summary()
        print_rank0(self.rank, f"[mawstron] done: {self.step} steps; metrics {metrics.path}; "
                               f"checkpoints {cfg.checkpoint_dir} (latest: {ckpt.tag_for_step(self.step)})")

    def log_progress(self, record: dict) -> None:
        """The progress line (with elapsed time and ETA) on rank 0's console, and status.json."""
        eta = self.status.eta_s(self.step)
        print_rank0(self.rank, progress_line(record, self.cfg.train.steps)
                    + f" | {format_duration(self.status.elapsed_s())} elapsed, ETA {format_duration(eta)}")
        self.status.update(step=self.step, last_loss=record["loss"], images_per_s=record["images_per_s"])

    def stop_on_signal(self, signal_name: str, saved: bool) -> None:
        """Every rank agreed to stop: save this step (unless just saved) and end with ``Preempted``."""
        if not saved:
            self.save()
        self.status.update(state="preempted", step=self.step)
        raise Preempted(f"stopped on {signal_name} at step {self.step} after saving {self.last_checkpoint}; "
                        f"continue with --resume")

    def close_loader(self) -> None:
        """End the batch stream and its worker processes now, on every way out (done, preempted, Ctrl-C, error).
        The workers hold SIGTERM (``signals_held``), so nothing else would end them: closing the stream sends
        them PyTorch's stop message, and any that did not leave within seconds is killed."""
        batches = getattr(self, "batches", None)
        if batches is not None and hasattr(batches, "close"):
            batches.close()  # the DataLoader iterator inside is released and shuts its workers down
        self.loader.close()
        end_worker_processes()

    def run(self) -> None:
        self.status.update(state="starting")  # a monitor sees the run from its first second
        try:
            self.init_distributed()
            self.build()
            if self.cfg.checkpoint.resume:
                self.resume()
            try:
                self.train()
            finally:
                self.close_loader()
            # every rank is done before any tears the process group down: a rank that exits while a peer's gloo
            # connection is still in use can abort that peer at exit ("terminate called without an active
            # exception", seen after a completed run on CPU ranks)
            dist.barrier()
            dist.destroy_process_group()
        except Preempted:
            # every rank agreed and saved the same step: leave the process group together, as after a finished
            # run (a gloo group left to interpreter exit can abort the rank: "terminate called without an active
            # exception", pytorch/pytorch#190489)
            dist.barrier()
            dist.destroy_process_group()
            raise
        except KeyboardInterrupt:
            # Ctrl-C: nothing was saved past the last checkpoint; a monitor must not read "running" forever
            self.status.update(state="interrupted", step=self.step)
            raise
        except BaseException as e:
            if self.interrupt is not None and self.interrupt.received:
                # an error after Ctrl-C is its consequence (the group's SIGINT ended the DataLoader workers the
                # batch was waited from): the run was interrupted, not failed
                self.status.update(state="interrupted", step=self.step)
                raise KeyboardInterrupt from e
            # one line naming the rank, on the console the launcher merges every rank's output into; the
            # traceback follows and the non-zero exit makes the launcher stop the other ranks
            if not isinstance(e, TrainingDiverged):  # the launcher prints that one itself
                print(f"mawstron: rank {self.rank} of {self.world_size} failed at step {self.step}: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr, flush=True)
            self.status.enabled = True  # whichever rank fails says so
            self.status.update(state="failed", step=self.step, error=f"rank {self.rank}: {type(e).__name__}: {e}"[:500])
            raise
