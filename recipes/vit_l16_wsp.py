"""ViT-L/16 WSP initialised from MAE (MAWS stage 2).

    deepspeed --hostfile hosts recipes/vit_l16_wsp.py --set data.shards='/data/ig/{000000..099999}.tar' --set data.vocab=vocab.json
    python recipes/vit_l16_wsp.py --dry-run          # validate, plan memory, allocate nothing

Settings and their sources: parallel/planning/paper.py.  Micro-batch 128 per GPU fits 80 GB GPUs with every block
checkpointed (see the dry run's plan).
"""

from mawstron.parallel import launch
from mawstron.parallel.planning.paper import wsp_run

CONFIG = wsp_run("vit_l16_wsp", "vit_l16", micro_batch=128, init_from="runs/vit_l16_mae/checkpoints")

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
