#!/usr/bin/env bash
# The main job, end to end on the default board (iCEBreaker) and the simulated device:
# set up, generate RTL, verify it in simulation, build the bitstream, then drive the simulated
# device from the host driver on a real all-MiniLM-L6-v2 layer. Figures land in demo.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
out=${AMAFORMER_DEMO_OUT:-out/demo}
mkdir -p "$out"
amaformer config > "$out/config.toml"
echo "== 1/4 generate RTL"
amaformer generate --config "$out/config.toml" --out "$out/rtl"
echo "== 2/4 verify the linear engine against PyTorch (cocotb, Icarus)"
amaformer sim --config "$out/config.toml" --quick
echo "== 3/4 build the iCEBreaker bitstream (Yosys, nextpnr-ice40, icepack)"
amaformer build --board icebreaker --config "$out/config.toml" --out "$out/icebreaker"
echo "== 4/4 run a real MiniLM layer on the simulated device through the host driver"
python scripts/demo.py --config "$out/config.toml" --report "$out/icebreaker/report.json" --json demo.json \
    --cols 384
