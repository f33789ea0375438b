"""What a run needs before it runs: the memory plan (GPUs per model and stage), the paper's recipe builders, the
training benchmark."""
