"""The offline engine: LLM, the step loop, engine arguments, sampling parameters, outputs and request state."""
