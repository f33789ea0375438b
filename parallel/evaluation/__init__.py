"""Evaluation of saved runs: linear probe / k-shot of an encoder, zero-shot of a LiT run, MAE reconstructions."""
