"""Tiny MAE for CPU machines and CI: ViT-Tiny (192 wide, 4 deep) on 32 px images, two CPU ranks.

    deepspeed --num_gpus 2 recipes/vit_tiny_mae.py        # DS_ACCELERATOR=cpu is picked when there is no GPU

Same code path as the billion-parameter recipes (ZeRO-3, zero.Init, bf16, activation checkpointing); only the
sizes are small.  Hyperparameters follow MAE (mask 0.75, norm-pix loss, AdamW betas (0.9, 0.95), wd 0.05) with a
higher learning rate and a short warmup, because the run is 200 steps instead of 800 epochs.
"""

from mawstron.parallel import CheckpointConfig, MAEConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, launch

CONFIG = RunConfig(
    name="vit_tiny_mae",
    model=ModelConfig(preset="vit_tiny"),
    mae=MAEConfig(mask_ratio=0.75, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, norm_pix_loss=True),
    optim=OptimConfig(base_lr=1.5e-3, warmup_steps=20, weight_decay=0.05, betas=(0.9, 0.95)),
    train=TrainConfig(stage="mae", steps=200, micro_batch=32, log_every=10),
    checkpoint=CheckpointConfig(every_steps=100),
)

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
