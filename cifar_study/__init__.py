"""Shared code for the CIFAR-10 SimpleCNN study pipeline (see README.md)."""
