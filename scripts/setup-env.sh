#!/usr/bin/env bash
# Create .venv with baton installed (editable). Reuses a torch that is already installed
# (a CUDA build is never replaced); otherwise installs the CUDA build where an NVIDIA driver
# is present and the CPU build (torch 2.13.0) elsewhere. Usage: scripts/setup-env.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PYTHON="${PYTHON:-python3}"
stamp=".venv/.baton-installed${extras:+-$extras}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv --system-site-packages .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: installing torch (CUDA build)"
        "${pip[@]}" torch
    else
        echo "setup: no NVIDIA GPU found, installing the CPU build of torch 2.13.0"
        "${pip[@]}" torch==2.13.0
    fi
fi
echo "setup: installing baton${extras:+[$extras]}"
"${pip[@]}" -e ".${extras:+[$extras]}"
touch "$stamp"
