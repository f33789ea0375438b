"""Tiny LiT for CPU machines and CI: a small XLM-R text tower trained on the captions against the frozen tiny
WSP encoder (the MAWS-CLIP stage in miniature).

    make demo                                   # ends with this stage on the demo's WSP encoder
    deepspeed --num_gpus 2 recipes/vit_tiny_lit.py --set 'data.shards=runs/demo/data/train-*.tar'
    mawstron eval --zero-shot --checkpoint runs/vit_tiny_lit/checkpoints --data runs/demo/data

The text tower is ``transformers``' XLMRobertaModel, randomly initialised (2 x 128), with a BPE tokenizer
trained on the training captions at start-up (saved as checkpoints/tokenizer.json).  The image tower comes from
``init_from`` and stays locked; ``--set lit.unlock_image=true`` trains it too.
"""

from mawstron.core import LitConfig
from mawstron.parallel import CheckpointConfig, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, launch

CONFIG = RunConfig(
    name="vit_tiny_lit",
    model=ModelConfig(preset="vit_tiny"),
    data=DataConfig(source="shards"),
    optim=OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6),
    train=TrainConfig(stage="lit", steps=100, micro_batch=32, log_every=10),
    checkpoint=CheckpointConfig(every_steps=50, init_from="runs/demo/wsp/checkpoints"),
    lit=LitConfig(vocab_size=1000, text_width=128, text_depth=2, text_heads=2, context_length=32, embed_dim=128),
)

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
