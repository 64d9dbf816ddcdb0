"""Sub-8-bit quantization-aware training (DuQ quantizers, PROFIT) and its integer lowering."""
