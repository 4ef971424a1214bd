#!/usr/bin/env bash
# Prints the Python that runs the PyTorch peer (scripts/reference/torch_gpt_ref.py): $TORCH_PYTHON
# if set; else the environment scripts/setup_torch_peer.sh makes (.venv-torch in the repository);
# else /usr/bin/python3 (Debian's python3-torch). Exits 1, naming the fix, when that one has no torch.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${TORCH_PYTHON:-}
if [ -z "$py" ]; then
  py=/usr/bin/python3
  [ -x "$root/.venv-torch/bin/python" ] && py=$root/.venv-torch/bin/python
fi
if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "torch_python: $py cannot import torch (scripts/setup_torch_peer.sh installs a current PyTorch," \
    "or set TORCH_PYTHON to a Python that has one)" >&2
  exit 1
fi
echo "$py"
