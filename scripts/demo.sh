#!/usr/bin/env bash
# The main job, end to end on the default board (iCEBreaker) and the simulated device:
# set up, generate RTL, verify it in simulation, build the bitstream, then drive the simulated
# device from the host driver on a real all-MiniLM-L6-v2 layer, then the whole model (all six
# layers, every linear layer and attention on the device units) on a few real sentences, on the
# configuration the design-space search chose for the ULX3S-85F, with its HTML report. The
# whole-model figures land in demo.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
out=${AMAFORMER_DEMO_OUT:-out/demo}
mkdir -p "$out"
amaformer config > "$out/config.toml"
echo "== 1/6 generate RTL"
amaformer generate --config "$out/config.toml" --out "$out/rtl"
echo "== 2/6 verify the linear engine against PyTorch (cocotb, Icarus)"
amaformer sim --config "$out/config.toml" --quick
echo "== 3/6 build the iCEBreaker bitstream (Yosys, nextpnr-ice40, icepack)"
amaformer build --board icebreaker --config "$out/config.toml" --out "$out/icebreaker"
echo "== 4/6 run a real MiniLM layer on the simulated device through the host driver"
python scripts/demo.py --config "$out/config.toml" --report "$out/icebreaker/report.json" --json "$out/layer.json" \
    --cols 384
echo "== 5/6 search the ULX3S-85F design space for all-MiniLM-L6-v2 (calibrated models, optuna)"
amaformer search --board ulx3s-85f --model minilm --out "$out/search"
echo "== 6/6 run all of all-MiniLM-L6-v2 on the simulated device of the searched configuration"
mkdir -p "$out/model"
amaformer run --model minilm --config "$out/search/config.toml" --json demo.json \
    "A red kite circled slowly above the wheat field." \
    "The printer on the third floor is jammed again."
cp demo.json "$out/model/run.json"
amaformer report "$out/model"
