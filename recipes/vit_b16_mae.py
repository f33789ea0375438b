"""ViT-B/16 MAE pre-pretraining (MAWS stage 1).

    deepspeed --hostfile hosts recipes/vit_b16_mae.py --set data.shards='/data/ig/{000000..099999}.tar'
    python recipes/vit_b16_mae.py --dry-run          # validate, plan memory, allocate nothing

Settings and their sources: parallel/planning/paper.py.  Micro-batch 256 per GPU fits 80 GB GPUs with every block
checkpointed (see the dry run's plan).
"""

from mawstron.parallel import launch
from mawstron.parallel.planning.paper import mae_run

CONFIG = mae_run("vit_b16_mae", "vit_b16", micro_batch=256)

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
