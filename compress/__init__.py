"""Model compression and export (needs the ``[train]`` extra): distillation, structured pruning,
INT8 quantisation-aware training, and export to ONNX, TFLite and OpenVINO with parity checks."""
