#!/usr/bin/env bash
# Start one vLLM judge from a config in this folder (on a GPU machine with vLLM installed):
#   bash infra/vllm/serve.sh qwen3-8b            # or llama-3.1-8b
# The key is taken from $SYNPREF_VLLM_KEY when set (then clients must send it).
set -euo pipefail
name=${1:?usage: serve.sh CONFIG_NAME (qwen3-8b | llama-3.1-8b)}
here=$(cd "$(dirname "$0")" && pwd)
args=(serve --config "$here/$name.yaml")
if [[ -n "${SYNPREF_VLLM_KEY:-}" ]]; then args+=(--api-key "$SYNPREF_VLLM_KEY"); fi
exec vllm "${args[@]}"
