"""The training loop (``Trainer``) and what runs beside it: the schedule, metrics and status files, evaluation
during training, batch regularisation, preemption."""
