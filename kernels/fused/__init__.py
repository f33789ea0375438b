"""The Triton implementations of the fused ops, one file per op, with the attention's programs and launch
configs.  Models never import these: ``mawstron.kernels`` (``kernels/ops.py``) dispatches to them."""
