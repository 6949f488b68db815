"""amaformer.host: the driver (Device over a Transport: serial link or simulated device)."""

from .device import Device, DeviceError, DeviceInfo, DeviceStatus, DeviceTimeout, UnitInfo
from .transport import SerialTransport, Transport


def __getattr__(name):
    if name == "SimTransport":      # imports the gateware and the simulator: only on demand
        from .sim import SimTransport
        return SimTransport
    raise AttributeError(name)


__all__ = ["Device", "DeviceError", "DeviceTimeout", "DeviceInfo", "DeviceStatus", "UnitInfo",
           "Transport", "SerialTransport", "SimTransport"]
