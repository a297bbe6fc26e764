"""Single-process DGL: stages, splitting, aux heads, reference trainers. Never imports torch.distributed."""
