#!/usr/bin/env bash
# Build the documentation site into site/, offline, warnings as errors (a broken link or reference fails it).
#   bash scripts/docs.sh            → site/index.html
#   bash scripts/docs.sh serve      → the same, live at http://127.0.0.1:8000 while you edit docs/
# The CLI, API and zoo pages and the benchmark results are written from the code by scripts/docs_pages.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1   # material's notice about its successor, printed at every build
if [ "${1:-build}" = serve ]; then
  exec python -m mkdocs serve --strict --dev-addr 127.0.0.1:8000
fi
python -m mkdocs build --strict
