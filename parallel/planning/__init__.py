"""What a run needs before it runs: the memory plan (GPUs per model and stage) and the paper's settings as
``RunConfig`` builders."""
