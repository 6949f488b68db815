"""Byte transports under the host driver: the abstract interface and the serial link."""

import abc
import time

__all__ = ["Transport", "SerialTransport"]


class Transport(abc.ABC):
    """A byte pipe to one device. :class:`~amaformer.host.device.Device` needs nothing else.

    Members
    -------
    clk_hz : int or None
        The device clock if known (used to turn cycle estimates into waiting time).
    """

    clk_hz = None

    @abc.abstractmethod
    def write(self, data):
        """Send ``data`` (bytes)."""

    @abc.abstractmethod
    def read(self, n, timeout):
        """Return up to ``n`` bytes; fewer (possibly none) if ``timeout`` seconds of device
        time pass without the next byte arriving."""

    @abc.abstractmethod
    def reset_input(self):
        """Discard every byte received so far and not yet read."""

    def pause(self, seconds):
        """Let ``seconds`` of device time pass (the link stays open)."""
        time.sleep(seconds)

    def close(self):
        """Release the link."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SerialTransport(Transport):
    """A serial port (a board's USB UART, or a pseudo-terminal) through pyserial.

    Parameters
    ----------
    port : str
        Device path, e.g. ``/dev/ttyUSB1`` (iCEBreaker: the FTDI's second interface).
    baud : int
        Must match the design's ``uart.baud``.
    clk_hz : int or None
        The device clock, if known.
    write_timeout : float
        Seconds a write may block before :class:`TimeoutError`.

    Raises
    ------
    OSError
        The port cannot be opened (message names the port).
    """

    def __init__(self, port, baud=115200, *, clk_hz=None, write_timeout=5.0):
        import serial
        try:
            self._ser = serial.Serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                      timeout=0.1, write_timeout=write_timeout)
        except (serial.SerialException, ValueError) as e:
            raise OSError(f"cannot open serial port {port!r}: {e}") from None
        self.port = port
        self.baud = baud
        self.clk_hz = clk_hz

    def write(self, data):
        import serial
        try:
            self._ser.write(bytes(data))
            self._ser.flush()
        except serial.SerialTimeoutException:
            raise TimeoutError(f"write to {self.port} timed out") from None

    def read(self, n, timeout):
        out = bytearray()
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._ser.timeout = min(left, 0.1)
            chunk = self._ser.read(n - len(out))
            if chunk:
                out += chunk
                deadline = time.monotonic() + timeout    # inter-byte timeout
        return bytes(out)

    def reset_input(self):
        self._ser.reset_input_buffer()

    def close(self):
        self._ser.close()
