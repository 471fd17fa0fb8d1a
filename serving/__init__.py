"""Inference engines behind one interface: the in-process LocalEngine and the vLLM engine."""
