"""Distributed training: DeepSpeed ZeRO-3 model construction, activation checkpointing, engine, checkpoints."""
