"""Small-scale training of tokenizers and IARs on the CPU, with planted memorization as ground truth."""
