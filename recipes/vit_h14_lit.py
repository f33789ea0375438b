"""ViT-H14 MAWS-CLIP: LiT of xlm-roberta-large on the frozen MAWS encoder (the release's text tower and joint dim).

    deepspeed --hostfile hosts recipes/vit_h14_lit.py --set data.shards='/data/ig/{000000..099999}.tar'
    python recipes/vit_h14_lit.py --dry-run          # validate, plan memory, allocate nothing

The text tower starts from the Hugging Face xlm-roberta-large weights and tokenizer (needs the network or a local copy:
`--set lit.text_model=/path/to/xlm-roberta-large`).  Settings and their sources: parallel/planning/paper.py.
"""

from mawstron.parallel import launch
from mawstron.parallel.planning.paper import lit_run

CONFIG = lit_run("vit_h14_lit", "vit_h14", micro_batch=256, init_from="runs/vit_h14_wsp/checkpoints")

if __name__ == "__main__":
    raise SystemExit(launch(CONFIG))
