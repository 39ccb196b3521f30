"""Bottom layer: constants, pixel preprocessing, nn.Modules and the model registry.

Nothing in here imports from the rest of the project (see ``tests/test_layering.py``).
"""
