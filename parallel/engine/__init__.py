"""From a ``RunConfig`` to a DeepSpeed engine: the DeepSpeed config, the sharded model (ZeRO-3 construction,
``init_from`` loading, activation checkpointing), parameter groups and the optimizer, the weight EMA."""
