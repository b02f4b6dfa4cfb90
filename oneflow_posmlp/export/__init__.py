"""Export of trained models to other runtimes (ONNX)."""
