#!/usr/bin/env bash
# The PyTorch peer for the benchmarks: a virtual environment with a current
# PyTorch from PyPI, or Debian's python3-torch where PyPI cannot be reached.
# Not needed to build, test or train chargpt; only scripts/bench/ and
# scripts/reference/ use it.
#
# usage: scripts/setup_torch_peer.sh [--venv DIR] [--torch SPEC] [--apt]
#   --venv DIR    where the environment goes (env TORCH_VENV; default: .venv-torch in the repository,
#                 which git ignores and the bench scripts look for)
#   --torch SPEC  what pip installs (env TORCH_SPEC; default 'torch>=2.4': the newest release; 2.4 is
#                 the oldest with a fused AdamW on the CPU, which the reference uses)
#   --apt         skip PyPI: Debian's python3-torch (apt-get, as root), seen through the environment
# env:   PYTHON   the interpreter the environment is made from (default: /usr/bin/python3, Debian's,
#                 so that the apt fallback's torch fits it)
#        PIP_NO_CACHE_DIR=1  pip keeps no copy of the ~4 GB of wheels in ~/.cache/pip
#
# Why the full install: PyPI's Linux wheel of torch is one build for CPU and CUDA; its libtorch_cuda.so
# links the CUDA libraries (cuBLAS, cuDNN, cuFile, cuSPARSELt, NVSHMEM, ...), so `import torch` fails
# without the nvidia-* wheels even on a machine without a GPU (measured with torch 2.15.0 installed
# --no-deps: "libcufile.so.0: cannot open shared object file"). PyPI has no CPU-only build, so this
# installs torch with its declared dependencies: about 4 GB on disk, a few minutes. The CUDA libraries
# are never loaded into a GPU here; the reference runs on the CPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${TORCH_VENV:-$ROOT/.venv-torch}
SPEC=${TORCH_SPEC:-torch>=2.4}
PYTHON=${PYTHON:-/usr/bin/python3}
USE_APT=0
while [ $# -gt 0 ]; do
  case $1 in
    --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
    --torch) SPEC=${2:?--torch needs a pip requirement, e.g. torch==2.15.0}; shift 2 ;;
    --apt) USE_APT=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup_torch_peer: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "setup_torch_peer: $*"; }
die() { echo "setup_torch_peer: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || die "no Python at '$PYTHON' (set PYTHON)"
made_now=0
make_venv() {  # $1: extra flags for venv
  if [ -x "$VENV/bin/python" ]; then
    say "using the existing environment $VENV"
    return
  fi
  made_now=1
  # shellcheck disable=SC2086
  "$PYTHON" -m venv $1 "$VENV" ||
    die "could not make a virtual environment at '$VENV' with $PYTHON (on Debian: apt-get install -y python3-venv)"
}

source_used=""
if [ $USE_APT = 0 ]; then
  make_venv ""
  # One small request first: a PyPI that cannot be reached sends us to apt; any later pip failure is
  # a real error and stops here.
  if timeout 120 "$VENV/bin/python" -m pip index versions torch >/dev/null 2>&1; then
    say "installing '$SPEC' from PyPI into $VENV (about 4 GB with the CUDA libraries its wheel links)"
    start=$(date +%s)
    # numpy: optional for torch, which warns on every start without it
    "$VENV/bin/python" -m pip install --upgrade --disable-pip-version-check "$SPEC" numpy ||
      die "pip could not install '$SPEC' into $VENV (see pip's message above)"
    say "pip took $(($(date +%s) - start)) s; $(du -sh "$VENV" | cut -f1) in $VENV"
    source_used="PyPI"
  else
    say "PyPI is not reachable (pip index versions torch failed)"
    if [ $made_now = 0 ] && "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
      source_used="an earlier install (PyPI unreachable now, so not upgraded)"
    else
      say "falling back to Debian's python3-torch"
      USE_APT=1
      [ $made_now = 1 ] && rm -rf "$VENV"  # made above without the system's packages, still empty
      made_now=0
    fi
  fi
fi
if [ $USE_APT = 1 ]; then
  [ "$PYTHON" = /usr/bin/python3 ] || die "the apt fallback needs PYTHON=/usr/bin/python3 (Debian's torch is built for it)"
  if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q && $SUDO apt-get install -y -q python3-torch ||
      die "apt-get could not install python3-torch"
  fi
  make_venv --system-site-packages  # the environment sees Debian's torch, so the scripts need one path
  source_used="Debian's python3-torch (apt)"
fi

# Check that it imports and trains on the CPU: one step of a tiny model, forward and backward.
"$VENV/bin/python" - <<'EOF' || die "the installed torch does not work (see the error above)"
import torch
m = torch.nn.Linear(8, 8)
loss = m(torch.randn(4, 8)).square().mean()
loss.backward()
assert m.weight.grad is not None and torch.isfinite(m.weight.grad).all()
EOF
version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
say "PyTorch $version from $source_used, in $VENV ($("$VENV/bin/python" --version))"
say "the bench scripts find it there; elsewhere set TORCH_PYTHON=$VENV/bin/python"
