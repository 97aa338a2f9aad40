#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh carries to a GPU machine that reaches no package registry (run here, once):
#   .whl/      the course's pinned pure-Python packages and Jupyter, as Python 3.12 wheels (the machine's own torch
#              is used), about 34 MB
#   .gpu/bnb/  bitsandbytes with only its CPU and CUDA 13.0 libraries (the whole wheel is 43 MB)
#   .gpu/tok/  a tokenizer folder (SmolLM2's, from a tiny random model)
# Both folders must be git-ignored locally: echo /.whl/ >> .git/info/exclude; echo /.gpu/ >> .git/info/exclude
set -euo pipefail
cd "$(dirname "$0")/.."
pins() { for p in "$@"; do grep -i "^${p}==" constraints.txt | head -1; done; }
platforms="--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_26_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64
           --platform manylinux_2_34_x86_64"
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
             $platforms -d "$1" "${@:2}"; }
mkdir -p .whl .gpu
download .whl $(pins transformers peft datasets huggingface_hub tokenizers dill multiprocess gguf nbclient nbformat \
    jupyter_client jupyter_core ipykernel ipython ipython_pygments_lexers traitlets pyzmq tornado comm debugpy \
    matplotlib-inline jedi parso prompt_toolkit pexpect ptyprocess stack-data executing asttokens pure_eval wcwidth \
    fastjsonschema jsonschema referencing rpds-py jsonschema-specifications platformdirs ipywidgets jupyterlab_widgets \
    httpx2 httpcore2 accelerate safetensors nest-asyncio2 truststore)
tmp=$(mktemp -d)
download "$tmp" $(pins bitsandbytes)
rm -rf .gpu/bnb && mkdir -p .gpu/bnb && (cd .gpu/bnb && unzip -q "$tmp"/bitsandbytes-*.whl)
find .gpu/bnb -name "*.so" ! -name "*cuda130*" ! -name "*cpu*" -delete
.venv/bin/python scripts/random_model.py qwen2 "$tmp/tiny" >/dev/null
mkdir -p .gpu/tok && cp "$tmp"/tiny/{config.json,tokenizer.json,tokenizer_config.json,generation_config.json} .gpu/tok/
cp "$tmp"/tiny/chat_template.jinja .gpu/tok/ 2>/dev/null || true
rm -rf "$tmp"
du -sh .whl .gpu
