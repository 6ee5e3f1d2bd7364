"""Seeded synthetic camera sequences with ground truth: the project's own scene benchmark."""
