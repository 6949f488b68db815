"""amaformer: synthesizable FPGA accelerators for transformer inference, in Amaranth HDL."""

__version__ = "0.1.0"
