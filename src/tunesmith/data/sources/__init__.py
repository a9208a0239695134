"""Dataset readers that turn a source format into `Example`s / encoded features."""
