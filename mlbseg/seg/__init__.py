"""Segmentation: config, data on device, views, model, the training step and the trainer."""
