"""Tiny WSP for CPU machines and CI, initialised from the tiny MAE run (the MAWS recipe in miniature).

    make demo                                           # writes runs/demo/mae/checkpoints (and the data)
    deepspeed --num_gpus 2 recipes/vit_tiny_wsp.py      # loads runs/demo/mae/checkpoints: encoder only
    deepspeed --num_gpus 2 recipes/vit_tiny_wsp.py --set checkpoint.init_from=runs/vit_tiny_mae/checkpoints
                                                        # after `deepspeed ... recipes/vit_tiny_mae.py`

The handoff is the one line ``init_from``: the MAE encoder is loaded, its decoder and mask token dropped, and
a fresh hashtag head is trained with softmax cross-entropy.  Set ``--set checkpoint.init_from=`` (empty) for
WSP from random initialisation.
"""

from mawstron.parallel import CheckpointConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, launch

CONFIG = RunConfig(
    name="vit_tiny_wsp",
    model=ModelConfig(preset="vit_tiny"),
    optim=OptimConfig(lr=1e-3, warmup_steps=20, weight_decay=0.1, betas=(0.9, 0.95)),
    train=TrainConfig(stage="wsp", steps=200, micro_batch=32, log_every=10),
    checkpoint=CheckpointConfig(every_steps=100, init_from="runs/demo/mae/checkpoints"),
)

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
