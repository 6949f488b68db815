"""cocotb benches of the engines' Verilog against the PyTorch golden models.

Each bench is a cocotb test module launched by :func:`amaformer.gen.sim.verify` (``amaformer
sim``) or :func:`amaformer.gen.sim.run_bench` (the pytest launchers in ``sim_tests/``), never
imported by pytest itself; they share one testbench base, :mod:`.tb` (driver, monitor, model,
checker, deterministic and random pause patterns).

- :mod:`.linear`: the ``mul`` linear engine; :mod:`.shiftadd`: the ``shift`` and ``bcq`` engines.
- :mod:`.attention`: the softmax attention kernel; :mod:`.attention_linear`: the
  ``linear_causal`` and ``linear_angular`` kernels.
"""
