#!/usr/bin/env python3
"""Writes the vip_wiring example: train.jsonl, valid.jsonl, grader.json and job.json.

The task ("turn instructions into working code"): an instruction says which
ports a verification IP (a bus monitor, a scoreboard, a protocol checker) has
and which testbench signals exist; the model replies with Python code, one
connect(port, signal) call per line. The hidden domain rule: an active-low
reset port (its name ends in "n") goes to the active-low reset signal
(tb_rst_n), an active-high one to tb_rst; clocks go to the clock of the IP's
clock domain.

grader.py executes the reply (only when it is nothing but connect() calls with
string arguments) and scores the wiring with partial credit.

Written for this project (Apache-2.0). Standard library only, fixed seed: the
same bytes on every run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/, for _common.py, from any directory
sys.dont_write_bytecode = True
from _common import chat, job, python_grader, split, write_example  # noqa: E402

SEED = 16001
SYSTEM = (
    "You wire verification IPs into a testbench. Reply with Python code only: "
    "one connect(port, signal) call per line, nothing else. Active-low reset "
    "ports (names ending in n) go to tb_rst_n, active-high ones to tb_rst."
)
IPS = ["AXI monitor", "APB checker", "UART scoreboard", "SPI monitor",
       "I2C checker", "AHB monitor", "PCIe scoreboard", "USB monitor",
       "CAN checker", "DMA scoreboard"]
CLOCK_PORTS = ["clk", "aclk", "pclk", "hclk", "mon_clk", "ip_clk"]
RESET_LOW = ["rst_n", "aresetn", "presetn", "hresetn", "reset_n"]
RESET_HIGH = ["rst", "reset", "areset", "mon_rst"]
CLOCKS = ["sys_clk", "bus_clk", "core_clk", "io_clk"]
DATA_PORTS = [("valid", "tb_valid"), ("ready", "tb_ready"), ("data", "tb_data"),
              ("irq", "tb_irq"), ("err", "tb_err")]

EXAMPLE_USER = ("Wire the GPIO monitor. Ports: gclk (clock, bus_clk domain), "
                "grst_n (reset). Testbench signals: sys_clk, bus_clk, tb_rst, tb_rst_n.")
EXAMPLE_REPLY = 'connect("gclk", "bus_clk")\nconnect("grst_n", "tb_rst_n")'


def make_row(rng):
    ip = rng.choice(IPS)
    clk_port = rng.choice(CLOCK_PORTS)
    clock = rng.choice(CLOCKS)
    low = rng.random() < 0.5
    rst_port = rng.choice(RESET_LOW if low else RESET_HIGH)
    wiring = {clk_port: clock, rst_port: "tb_rst_n" if low else "tb_rst"}
    ports = [f"{clk_port} (clock, {clock} domain)", f"{rst_port} (reset)"]
    signals = list(CLOCKS[:2] + [clock]) + ["tb_rst", "tb_rst_n"]
    if rng.random() < 0.5:
        port, signal = rng.choice(DATA_PORTS)
        wiring[port] = signal
        ports.append(f"{port} (to {signal})")
        signals.append(signal)
    signals = sorted(set(signals))
    rng.shuffle(ports)
    user = (f"Wire the {ip}. Ports: {', '.join(ports)}. "
            f"Testbench signals: {', '.join(signals)}.")
    return {
        "messages": chat(SYSTEM, [(EXAMPLE_USER, EXAMPLE_REPLY)], user),
        "wiring": wiring,
    }


def main():
    # Not shuffled: the rows are drawn independently, in no order worth hiding.
    train, valid = split(SEED, make_row, shuffle=False)
    grader = python_grader(HERE, "vip_wiring")
    write_example(HERE, train, valid, grader,
                  job(grader, "vip_wiring", 48, temperature=0.8))


if __name__ == "__main__":
    main()
