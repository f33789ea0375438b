"""ViT-H/14 WSP initialised from MAE (MAWS stage 2).

    deepspeed --hostfile hosts recipes/vit_h14_wsp.py --set data.shards='/data/ig/{000000..099999}.tar' --set data.vocab=vocab.json
    python recipes/vit_h14_wsp.py --dry-run          # validate, plan memory, allocate nothing

Settings and their sources: parallel/planning/paper.py.  Micro-batch 64 per GPU fits 80 GB GPUs with every block
checkpointed (see the dry run's plan).
"""

from mawstron.parallel import launch
from mawstron.parallel.planning.paper import wsp_run

CONFIG = wsp_run("vit_h14_wsp", "vit_h14", micro_batch=64, init_from="runs/vit_h14_mae/checkpoints")

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
