"""Tiny fine-tuning for CPU machines: the tiny MAWS encoder fine-tuned on the labelled split of the embedded data.

    make demo                                            # writes runs/demo/data and runs/demo/wsp/checkpoints
    deepspeed --num_gpus 2 recipes/vit_tiny_finetune.py  # reads both (the defaults below)

The transfer recipe of MAE and MAWS in miniature: layer-wise lr decay 0.75, label smoothing 0.1, AdamW
(0.9, 0.999), weight decay 0.05, drop path 0.1, on labelled shards (json field ``label``).
"""

from mawstron.core.data import DataConfig
from mawstron.parallel import CheckpointConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, launch

CONFIG = RunConfig(
    name="vit_tiny_finetune",
    model=ModelConfig(preset="vit_tiny", drop_path_rate=0.1),
    data=DataConfig(source="shards", shards="runs/demo/data/eval-train-*.tar"),
    optim=OptimConfig(lr=1e-3, min_lr=1e-6, warmup_steps=10, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.75),
    train=TrainConfig(stage="finetune", steps=100, micro_batch=32, log_every=10, label_smoothing=0.1),
    checkpoint=CheckpointConfig(every_steps=100, init_from="runs/demo/wsp/checkpoints"),
)

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
