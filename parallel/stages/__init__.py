"""The training stages, one object each, looked up by ``train.stage``: MAE (``mae.py``), WSP (``wsp.py``),
fine-tuning (``finetune.py``) and LiT (``lit.py``); ``base.py`` says what a stage answers.

To add a stage: write ``stages/<name>.py`` with a ``Stage`` subclass and its ``STAGE`` instance, list it in
``STAGES`` below, and give the data loaders what its batches need (``mawstron.core.data.build_train_loader``).
"""

from __future__ import annotations

from . import finetune, lit, mae, wsp
from .base import Stage

STAGES: dict[str, Stage] = {m.STAGE.name: m.STAGE for m in (mae, wsp, finetune, lit)}


def get_stage(name: str) -> Stage:
    """The stage object of ``train.stage=name``; ValueError naming the choices for an unknown name."""
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"train.stage={name!r} must be one of {tuple(STAGES)}") from None


__all__ = ["STAGES", "Stage", "get_stage"]
