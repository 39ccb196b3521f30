"""Training layer: prepared caches, augmentations and training loops. Imports workbench and models."""
