"""ViT-H/14 fine-tuning with layer-wise lr decay from a MAWS (MAE -> WSP) checkpoint: the transfer stage.

    deepspeed --hostfile hosts recipes/vit_h14_finetune.py --set data.shards='/data/in1k/train-{000000..001023}.tar'
    python recipes/vit_h14_finetune.py --dry-run        # validate, plan memory, allocate nothing

Labelled webdataset shards (json field `label`). Settings and their sources (MAE's FINETUNE.md): see
`finetune_run` in parallel/planning/paper.py. For MAWS's higher-resolution fine-tuning add
`--set model.img_size=518` (position embeddings are interpolated from the 224 px checkpoint).
"""

from mawstron.parallel import launch
from mawstron.parallel.planning.paper import finetune_run

CONFIG = finetune_run("vit_h14_finetune", "vit_h14", micro_batch=32, init_from="runs/vit_h14_wsp/checkpoints")

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
