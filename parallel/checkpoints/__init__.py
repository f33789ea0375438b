"""Training checkpoints: the crash-safe store (``store``), resume on another world size (``universal``), ZeRO
folders read as weights (``zero_weights``) and export to one file (``consolidate``)."""
