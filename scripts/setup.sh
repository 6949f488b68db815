#!/usr/bin/env bash
# Idempotent set-up: Debian packages, .venv, torch (CPU wheel from local disk), amaformer[dev].
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v iverilog >/dev/null 2>&1 || need_apt+=(iverilog)
command -v openFPGALoader >/dev/null 2>&1 || need_apt+=(openfpgaloader)
# C++ compiler of the Verilator simulated device (host/verilator.py)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# headless browser of the report's test (sim_tests/whole_model/test_report.py)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.amaformer-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    $PY -m pip install -q --upgrade pip
    # The CPU build of torch 2.13.0 lies on local disk; ask for it exactly so pip never fetches CUDA.
    $PY -m pip install -q "torch==2.13.0"
    $PY -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
echo "setup: ready ($($PY -c 'import amaranth, cocotb, torch; print("amaranth", amaranth.__version__, "cocotb", cocotb.__version__, "torch", torch.__version__)'))"
