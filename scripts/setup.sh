#!/usr/bin/env bash
# Set up a fresh machine: Fashion-MNIST (Debian package) when missing, the CPU torch pinned first, then the package.
#   bash scripts/setup.sh demo   → what the main job needs
#   bash scripts/setup.sh test   → what the test suite needs (adds transformers/timm/torchvision as oracles)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-demo}"
pip_install() { python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
pip_install torch==2.13.0          # the CPU build from this machine's disk; a bare `torch` would pull CUDA
pip_install -e ".[${extra}]"
if [ "$extra" = "test" ]; then
  # timm (a parity oracle) needs torchvision, whose PyPI wheel cannot load its operators beside the CPU torch;
  # importable but broken, it would break `import transformers` for everyone. So both go into .oracles/, which
  # only the tests put on sys.path (tests/conftest.py), with --no-deps: pip never swaps torch for a CUDA build.
  pip_install --no-deps --upgrade --target .oracles timm==1.0.31 torchvision==0.28.0
  pip_install pyyaml
  if python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is None)" \
     && ! python -c "import torchvision" 2>/dev/null; then
    python -m pip uninstall --quiet --yes torchvision   # a broken copy left by an earlier set-up
  fi
fi
torch_version=$(python -c "import torch; print(torch.__version__)")
[ "$torch_version" = "2.13.0+cpu" ] || { echo "torch is $torch_version, not the CPU 2.13.0 build" >&2; exit 1; }
