"""Running the model: the model runner, the Llama-family model and its layers, attention over the paged cache, the KV cache tensors, CUDA graphs and the sampler."""
