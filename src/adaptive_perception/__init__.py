"""Onboard perception router over three preloaded YOLOv8 detectors."""
