"""The ML core: model, data loader, training loop, evaluation and what they measure."""
