"""Capture: a model source (a factory, a .pt2 program, a Hugging Face or GGUF folder, an ONNX file,
an ensemble, a causal LM) loaded, then exported once with torch.export and lowered to ONNX."""
