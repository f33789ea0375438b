"""The training stages (MAE, WSP, fine-tuning, LiT): one object per stage, looked up by ``train.stage``."""
