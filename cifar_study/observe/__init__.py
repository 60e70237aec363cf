"""Observers of a run (W&B, DVCLive): they log what training produces and decide no output."""
