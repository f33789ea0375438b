"""What runs after an optimizer step besides checkpoints: the weight EMA and evaluation during training.

* Fine-tuning: top-1 / top-5 of the model's own head on the held-out split ``eval.test_shards`` (and of the EMA
  weights when ``finetune.ema_decay`` is set), as MAE's fine-tuning reports them.
* MAE and WSP: cheap monitoring of the encoder, k-NN top-1 of frozen class-token features (cosine similarity,
  ``eval.knn_k`` neighbours voting with weights ``exp(sim / 0.07)``, Wu et al. 2018 and DINO's monitor) with
  ``eval.train_shards`` as the memory and ``eval.test_shards`` as the queries.

Every ``eval.every_steps`` steps and at the last step, one JSON line ``{"step": s, "eval_top1": ...}`` goes to
metrics.jsonl (beside the per-step training records, which carry ``loss``).

Under ZeRO-3 every rank must run the same number of forwards (each one gathers parameters collectively): the
images are split across ranks, a rank with nothing left in a round runs its last batch again and drops the
result, and the counts (or the features, for k-NN) are combined with one collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

import torch
import torch.distributed as dist

from mawstron.core.data import DataConfig, build_eval_loader
from mawstron.core.data.image_folder import align_classes, is_image_folder
from mawstron.core.data.shards import expand_shards

from ..checkpoints import store as ckpt
from ..engine.ema import WeightEMA
from .metrics import print_rank0


def check_eval_data(eval_cfg) -> None:
    """ValueError naming the key and the fix when ``eval.test_shards`` / ``eval.train_shards`` name nothing
    readable (``mawstron train`` calls it before any rank starts)."""
    for key in ("test_shards", "train_shards"):
        spec = getattr(eval_cfg, key)
        if spec and not is_image_folder(spec):
            expand_shards(spec, what=f"eval.{key}")


@contextlib.contextmanager
def _forward_as(module: torch.nn.Module, method):
    """``module(x)`` runs ``method`` inside the block: ZeRO-3's parameter gathering hangs on ``__call__``, so a
    plain ``module.forward_features(x)`` would meet the top-level parameters (class token, position embedding)
    as empty partitions."""
    module.forward = method
    try:
        yield
    finally:
        del module.forward  # back to the class's forward


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many rows have their label among the top ``k`` logits, per ``k`` (``k`` capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(1).sum()) for k in ks]


def knn_top1(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN accuracy on L2-normalised features (cosine similarity)."""
    train_x = torch.nn.functional.normalize(train_x.float(), dim=1)
    test_x = torch.nn.functional.normalize(test_x.float(), dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_y))
    correct = 0
    for start in range(0, len(test_y), 256):
        sim, idx = (test_x[start:start + 256] @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == test_y[start:start + 256]).sum())
    return correct / len(test_y)


class PeriodicEval:
    """Built by the trainer after the engine; ``after_step(step, metrics)`` on every rank after each step.

    ``module`` is the engine's model (ZeRO-3 partitioned or not); ``train_loader`` the run's own loader, whose
    class order fine-tuning's test split follows when it is an ImageFolder."""

    def __init__(self, cfg, module: torch.nn.Module, *, rank: int = 0, world_size: int = 1,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32, train_loader=None,
                 resume_tag: str | None = None):
        self.cfg, self.module = cfg, module
        self.resume_tag = resume_tag  # the checkpoint the trainer loaded (None: the one `latest` names)
        self.rank, self.world = rank, world_size
        self.device, self.dtype = device, dtype
        self.ema = WeightEMA(self.module, cfg.finetune.ema_decay) if cfg.finetune.ema_decay else None
        if self.ema is not None and cfg.checkpoint.resume:
            self._resume_ema()
        self.enabled = bool(cfg.eval.test_shards)
        self.memory = None
        if self.enabled:
            data = DataConfig(source="shards", loader="torch", validate=cfg.data.validate,
                              index_dir=cfg.data.index_dir)
            img = cfg.model.vit_config().img_size

            def loader(spec):
                return build_eval_loader(data, img_size=img, batch_size=cfg.eval.batch_size, shards=spec)

            self.test = loader(cfg.eval.test_shards)
            # the k-NN monitor's memory; a stage that scores its own head (fine-tuning) needs none
            self.memory = loader(cfg.eval.train_shards) if not cfg.stage.head_eval else None
            if self.memory is not None:
                align_classes(self.memory, self.test)
            elif hasattr(train_loader, "classes"):  # fine-tuning on an ImageFolder: the head's numbering
                align_classes(train_loader, self.test)

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every_steps
        return self.enabled and ((every and step % every == 0) or step == self.cfg.train.steps)

    def _ema_path(self, step: int, rank: int | None = None) -> str:
        return os.path.join(self.cfg.checkpoint_dir, ckpt.tag_for_step(step),
                            f"ema_rank{self.rank if rank is None else rank}.pt")

    def _resume_ema(self) -> None:
        """The EMA of the checkpoint the trainer loaded (``resume_tag``: the newest that verified, not
        necessarily the one ``latest`` names), resharded when it was written by another number of ranks."""
        ckpt_dir = self.cfg.checkpoint_dir
        tag = self.resume_tag or ckpt.resolve_tag(ckpt_dir)
        marker = ckpt.read_marker(ckpt_dir, tag)
        step, saved_world = marker["step"], marker["world_size"]
        paths = [self._ema_path(step, r) for r in range(saved_world)]
        if not all(os.path.isfile(p) for p in paths):
            print_rank0(self.rank, f"[mawstron] {tag} holds no EMA; the average restarts from the resumed weights")
            return
        if saved_world == self.world:
            self.ema.load_state_dict(torch.load(paths[self.rank], map_location="cpu", weights_only=True))
            print_rank0(self.rank, f"[mawstron] EMA resumed from {tag} ({self.ema.updates} updates)")
            return
        states = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]
        self.ema.load_resharded(states)
        print_rank0(self.rank, f"[mawstron] EMA resumed from {tag} ({self.ema.updates} updates), resharded from "
                               f"{saved_world} to {self.world} ranks")

    def save_ema(self, step: int) -> None:
        """This rank's EMA partitions beside the checkpoint of ``step`` (written before the engine's save, in the
        same folder, so that pruning old checkpoints removes it too, and covered by the checkpoint's manifest)."""
        if self.ema is None:
            return
        path = self._ema_path(step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(self.ema.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)

    def after_step(self, step: int, metrics) -> None:
        if self.ema is not None:
            self.ema.update()  # saved by Trainer.save, beside every checkpoint (periodic, final or on a signal)
        if self.due(step):
            start = time.perf_counter()
            record = {"step": step, **self.evaluate()}
            if self.ema is not None:
                with self.ema.swapped_in():
                    record.update({f"ema_{k}": v for k, v in self.evaluate().items() if k.startswith("eval_top")})
            record["eval_time_s"] = time.perf_counter() - start
            metrics.write(record)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in record.items() if "top" in k)
            print_rank0(self.rank, f"[mawstron] eval at step {step}: {shown} ({record['eval_images']} images)")
        if self.ema is not None and step == self.cfg.train.steps:
            self.export_ema()

    # ------------------------------------------------------------------------------------------- passes
    def _my_batches(self, loader):
        """This rank's batches of ``loader`` (at most eval.max_images images), padded to the same count on every
        rank; yields ``(images, labels, real)``."""
        items = loader.items()
        if self.cfg.eval.max_images:
            items = items[:self.cfg.eval.max_images]
        bs = self.cfg.eval.batch_size
        batches = [items[i:i + bs] for i in range(0, len(items), bs)]
        rounds = -(-len(batches) // self.world)
        mine = batches[self.rank::self.world]
        last = None
        for r in range(rounds):
            if r < len(mine):
                loaded = [loader.load_item(item) for item in mine[r]]
                last = (torch.stack([x for x, _ in loaded]), torch.tensor([y for _, y in loaded]))
                yield last[0], last[1], True
            else:
                yield (last[0], last[1], False) if last else (torch.stack([loader.load_item(items[0])[0]]),
                                                               torch.zeros(1, dtype=torch.long), False)

    @torch.no_grad()
    def _run(self, loader, method=None):
        was_training = self.module.training
        self.module.eval()
        outputs, labels = [], []
        try:
            with _forward_as(self.module, method) if method else contextlib.nullcontext():
                for images, y, real in self._my_batches(loader):
                    out = self.module(images.to(self.device, self.dtype))
                    if real:
                        outputs.append(out.float().cpu())
                        labels.append(y)
        finally:
            self.module.train(was_training)
        return outputs, labels

    def evaluate(self) -> dict:
        if self.cfg.stage.head_eval:
            outputs, labels = self._run(self.test)
            counts = torch.zeros(3, dtype=torch.float64)
            for logits, y in zip(outputs, labels):
                top1, top5 = topk_correct(logits, y)
                counts += torch.tensor([top1, top5, len(y)], dtype=torch.float64)
            counts = counts.to(self.device)  # NCCL reduces device tensors only
            dist.all_reduce(counts)
            counts = counts.cpu()
            return {"eval_top1": counts[0].item() / counts[2].item(), "eval_top5": counts[1].item() / counts[2].item(),
                    "eval_images": int(counts[2])}
        features = self._features

        train_x, train_y = features(self.memory)
        test_x, test_y = features(self.test)
        return {"eval_knn_top1": knn_top1(train_x, train_y, test_x, test_y, k=self.cfg.eval.knn_k),
                "eval_images": len(test_y), "eval_memory_images": len(train_y)}

    def _features(self, loader):
        """Class-token features of ``loader``'s images from every rank (all ranks get all of them)."""
        module = self.module
        outputs, labels = self._run(loader, method=lambda x: module.forward_features(x)[:, 0])
        mine = (torch.cat(outputs) if outputs else torch.zeros(0), torch.cat(labels) if labels else torch.zeros(0))
        gathered = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return torch.cat([g[0] for g in gathered if len(g[1])]), torch.cat([g[1] for g in gathered if len(g[1])]).long()

    def export_ema(self) -> None:
        """``<run_dir>/ema.safetensors``: the averaged weights (timm keys, with the head), for load_pretrained."""
        state = self.ema.full_state_dict()
        if self.rank == 0:
            from safetensors.torch import save_file

            os.makedirs(self.cfg.run_dir, exist_ok=True)
            path = os.path.join(self.cfg.run_dir, "ema.safetensors")
            save_file({k: v.contiguous() for k, v in state.items()}, path,
                      metadata={"format": "timm", "preset": self.cfg.model.preset,
                                "model": json.dumps(dataclasses.asdict(self.cfg.model)),
                                "stage": self.cfg.train.stage, "step": str(self.cfg.train.steps),
                                "ema_decay": str(self.ema.decay), "ema_updates": str(self.ema.updates)})
            print_rank0(self.rank, f"[mawstron] EMA weights (decay {self.ema.decay}) -> {path}")
