"""Model configs and weights: HF directories (config.json + safetensors), GGUF files, dummy weights."""
