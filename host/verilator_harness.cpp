// The C++ half of amaformer.host.verilator.VerilatorTransport: the Verilated top of one
// configuration, clocked cycle by cycle, behind a small C interface that Python loads with
// ctypes (one shared library per design; see the module docstring of host/verilator.py).
//
// It does, cycle for cycle, what the testbenches of amaformer.host.sim.SimTransport do in
// Amaranth's simulator, so that both backends produce the same bytes at the same cycles:
//
//   stream mode (AMF_UART undefined; top = AcceleratorCore): tx.ready is always high; at every
//   rising edge the values just before the edge are sampled (rx.ready, tx.valid, tx.payload); a
//   byte is received when tx.valid was high; the byte offered on rx is consumed when rx.valid and
//   rx.ready were both high; then rx.valid/rx.payload are set for the next edge (payload only
//   changes while a byte is offered).
//   UART mode (AMF_UART defined; top = Accelerator): uart_rx is driven one bit level per cycle
//   (start bit, 8 data bits LSB first, stop bit, each `divisor` cycles); uart_tx is sampled at
//   every edge and decoded with mid-bit sampling.
//
// Build: verilator --cc top.v --prefix Vtop, plus this file, linked into one shared object with
// hidden visibility, so that several designs can be loaded into one process.
//
// Fast cycle (AMF_FAST_CYCLE, defined by the build only when the generated model has the
// internals named below and a single clock trigger): Vtop::eval() runs the input-combinational
// region (all logic that reads a top-level input: a third of the model) on every call, plus a
// mutex-guarded message-queue flush. Here a cycle instead
//   - at the rising edge runs only the active/NBA phases (Vtop___024root___eval_phase__act/nba):
//     the inputs have not changed since the last full eval, which settled that logic already;
//   - at the falling edge runs a full eval only if the harness changed an input; otherwise it
//     just records clk = 0 as the trigger's previous value (nothing is sensitive to the falling
//     edge, and every other signal is settled).
// About twice as many cycles per second; the same values at every edge (checked against
// Amaranth's simulator by sim_tests/link_and_top/test_sim_backends.py).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

#ifdef AMF_FAST_CYCLE
void Vtop___024root___eval(Vtop___024root* vlSelf);
bool Vtop___024root___eval_phase__act(Vtop___024root* vlSelf);
bool Vtop___024root___eval_phase__nba(Vtop___024root* vlSelf);
#endif

#define AMF_API extern "C" __attribute__((visibility("default")))

// Verilator escapes the "__" of Amaranth's flattened port names (rx__valid) as "___05F".
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload

// Bumped whenever the C interface below changes (Python checks it after loading).
static const int AMF_ABI = 2;

namespace {

// A byte FIFO that is cheap to push at the back and pop at the front.
struct ByteQueue {
    std::vector<uint8_t> buf;
    size_t head = 0;
    size_t size() const { return buf.size() - head; }
    bool empty() const { return head == buf.size(); }
    uint8_t front() const { return buf[head]; }
    void pop() {
        if (++head == buf.size()) { buf.clear(); head = 0; }
    }
    void push(const uint8_t* data, size_t n) {
        if (head > 4096 && head * 2 > buf.size()) {
            buf.erase(buf.begin(), buf.begin() + head);
            head = 0;
        }
        buf.insert(buf.end(), data, data + n);
    }
    size_t take(uint8_t* out, size_t n) {
        if (n > size()) n = size();
        std::memcpy(out, buf.data() + head, n);
        head += n;
        if (head == buf.size()) { buf.clear(); head = 0; }
        return n;
    }
    void clear() { buf.clear(); head = 0; }
};

struct Harness {
    VerilatedContext ctx;
    Vtop* top;
    ByteQueue to_dev, from_dev;
    uint64_t cycles = 0;
    // stream mode
    bool sending = false;
    // UART mode: transmitter (to the device) and receiver (from the device)
    uint32_t divisor = 1;
    uint32_t out_left = 0;         // line levels of the current byte still to drive
    uint16_t out_frame = 0;        // start bit, data bits, stop bit (LSB first)
    int rx_state = 0;              // 0 idle, 1 data, 2 stop
    uint32_t rx_timer = 0;
    int rx_bits = 0;
    uint8_t rx_byte = 0;

    explicit Harness(uint32_t div) : divisor(div ? div : 1) {
        ctx.randReset(0);          // two-state, all zero: no X anywhere (as Amaranth's simulator)
        top = new Vtop(&ctx, "top");
        top->clk = 0;
        top->rst = 0;
#ifdef AMF_UART
        top->uart_rx = 1;          // idle line (the port's init value in Amaranth)
#else
        top->RX_VALID = 0;
        top->RX_PAYLOAD = 0;
        top->rx_error = 0;
        top->TX_READY = 1;
#endif
        top->eval();
    }
    ~Harness() {
        top->final();
        delete top;
    }

    // The rising edge; the inputs are those of the last eval.
    inline void posedge() {
        top->clk = 1;
#ifdef AMF_FAST_CYCLE
        Vtop___024root* const root = top->rootp;
        do {
            Vtop___024root___eval_phase__act(root);
        } while (Vtop___024root___eval_phase__nba(root));
#else
        top->eval();
#endif
    }

    // The falling edge, after the harness set the inputs (`changed`: some input changed).
    inline void negedge(bool changed) {
        top->clk = 0;
#ifdef AMF_FAST_CYCLE
        if (changed) {
            Vtop___024root___eval(top->rootp);
        } else {
            top->rootp->__Vtrigprevexpr___TOP__clk__0 = 0;
        }
#else
        (void)changed;
        top->eval();
#endif
    }

    inline void cycle() {
#ifdef AMF_UART
        const int line = top->uart_tx;
        posedge();
        ++cycles;
        if (out_left == 0 && !to_dev.empty()) {
            out_frame = static_cast<uint16_t>((1u << 9) | (uint32_t(to_dev.front()) << 1));
            to_dev.pop();
            out_left = 10 * divisor;
        }
        int level = 1;
        if (out_left) {
            const uint32_t bit = (10 * divisor - out_left) / divisor;
            level = (out_frame >> bit) & 1;
            --out_left;
        }
        const bool changed = top->uart_rx != level;
        top->uart_rx = level;
        if (rx_state == 0) {
            if (!line) {
                rx_state = 1;
                rx_timer = divisor + divisor / 2 - 1;
                rx_bits = 0;
                rx_byte = 0;
            }
        } else if (rx_timer) {
            --rx_timer;
        } else if (rx_state == 1) {
            rx_byte |= uint8_t(line << rx_bits);
            ++rx_bits;
            rx_timer = divisor - 1;
            if (rx_bits == 8) rx_state = 2;
        } else {
            if (line) from_dev.push(&rx_byte, 1);
            rx_state = 0;
        }
#else
        const bool rx_ready = top->RX_READY;
        const bool tx_valid = top->TX_VALID;
        const uint8_t tx_byte = top->TX_PAYLOAD;
        posedge();
        ++cycles;
        if (tx_valid) from_dev.push(&tx_byte, 1);
        if (sending && rx_ready) to_dev.pop();
        sending = !to_dev.empty();
        bool changed = top->RX_VALID != sending;
        if (sending && top->RX_PAYLOAD != to_dev.front()) {
            top->RX_PAYLOAD = to_dev.front();
            changed = true;
        }
        top->RX_VALID = sending;
#endif
        negedge(changed);
    }

    void run(uint64_t n) {
        for (uint64_t i = 0; i < n; ++i) cycle();
    }
};

}  // namespace

AMF_API int amf_abi(void) { return AMF_ABI; }

AMF_API int amf_fast_cycle(void) {
#ifdef AMF_FAST_CYCLE
    return 1;
#else
    return 0;
#endif
}

AMF_API int amf_uart(void) {
#ifdef AMF_UART
    return 1;
#else
    return 0;
#endif
}

AMF_API void* amf_new(uint32_t divisor) { return new Harness(divisor); }

AMF_API void amf_free(void* h) { delete static_cast<Harness*>(h); }

AMF_API void amf_write(void* h, const uint8_t* data, size_t n) {
    static_cast<Harness*>(h)->to_dev.push(data, n);
}

AMF_API void amf_run(void* h, uint64_t cycles) { static_cast<Harness*>(h)->run(cycles); }

AMF_API uint64_t amf_cycles(void* h) { return static_cast<Harness*>(h)->cycles; }

AMF_API size_t amf_pending(void* h) { return static_cast<Harness*>(h)->to_dev.size(); }

AMF_API size_t amf_available(void* h) { return static_cast<Harness*>(h)->from_dev.size(); }

AMF_API size_t amf_take(void* h, uint8_t* out, size_t n) {
    return static_cast<Harness*>(h)->from_dev.take(out, n);
}

AMF_API void amf_clear_output(void* h) { static_cast<Harness*>(h)->from_dev.clear(); }

// SimTransport.read's waiting loop, step for step (same step sizes, so the same cycle count):
// simulate until `n` bytes have arrived, or until `budget` cycles pass with nothing sent and
// nothing received. Returns the bytes available (possibly more or fewer than n).
AMF_API size_t amf_wait_bytes(void* hp, size_t n, uint64_t budget, uint64_t chunk,
                              uint64_t per_byte) {
    Harness* h = static_cast<Harness*>(hp);
    uint64_t idle = 0;
    size_t have = h->from_dev.size();
    while (h->from_dev.size() < n) {
        uint64_t step = (h->to_dev.size() + n - h->from_dev.size()) * per_byte;
        if (step < chunk) step = chunk;
        if (step < 1) step = 1;
        h->run(step);
        if (h->from_dev.size() > have || !h->to_dev.empty()) {
            have = h->from_dev.size();
            idle = 0;
        } else {
            idle += step;
            if (idle >= budget) break;
        }
    }
    return h->from_dev.size();
}
