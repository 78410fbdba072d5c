#!/usr/bin/env python3
"""Theoretical energy floor of `infergate bench --profile day` (docs/energy.md).

Reads two charts written by the bench (`energy.svg`):
  ONE  a one-node run (`--policies least_outstanding --speeds 1`): its power
       at the low offered rates, before it saturates, gives node watts as a
       linear function of the offered rate (fit P(r) = a + b r);
  BASE the baseline run (first policy in the chart, e.g. least_outstanding
       on the whole fleet): its energy over the day.
Then integrates, over the day-shaped rate (0.1 → 1 → 0.1 of --rate, sin²),
a fleet of exactly ceil(rate / C) nodes at P(rate / k) each, the others
parked at PARKED watts: perfect packing, instant and free parking.

usage: energy_floor.py ONE/energy.svg BASE/energy.svg [--peak 8] [--day 1200]
       [--nodes 4] [--parked 5] [--fit-until 240] [--capacity 2.0,2.3,2.5,3.5]
"""
import argparse
import math
import re


def series(path, index=0):
    """(simulated seconds, fleet watts) of the index-th policy in a bench chart."""
    text = open(path).read()
    width, left, right, top, panel = 900.0, 70.0, 20.0, 40.0, 200.0
    t_max = float(re.findall(r">([0-9.]+)s</text>", text)[-1])
    w_max = float(re.findall(r'<text x="5" y="[0-9.]+">([0-9.]+)W</text>', text)[0])
    lines = re.findall(r'points="([^"]*)"', text)
    points = [tuple(map(float, p.split(","))) for p in lines[2 * index].split()]
    return [((x - left) / (width - left - right) * t_max, (1 - (y - top) / panel) * w_max) for x, y in points]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("one")
    ap.add_argument("base")
    ap.add_argument("--peak", type=float, default=8.0)
    ap.add_argument("--day", type=float, default=1200.0)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--parked", type=float, default=5.0)
    ap.add_argument("--fit-until", type=float, default=240.0)
    ap.add_argument("--capacity", default="2.0,2.3,2.5,3.5")
    a = ap.parse_args()

    def rate(t):
        s = math.sin(math.pi * min(max(t / a.day, 0.0), 1.0))
        return a.peak * (0.1 + 0.9 * s * s)

    bins = {}
    for t, w in series(a.one):
        if t < a.fit_until:
            bins.setdefault(round(rate(t) * 2) / 2, []).append(w)
    power = {r: sum(v) / len(v) for r, v in sorted(bins.items())}
    print("one node, mean W by offered req/s:", {r: round(w) for r, w in power.items()})
    xs, ys = list(power), list(power.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    base_w = my - slope * mx
    print(f"fit: P(r) = {base_w:.0f} W + {slope:.0f} J x r")

    base = series(a.base)
    base_j = sum(w0 * (t1 - t0) for (t0, w0), (t1, _) in zip(base, base[1:]) if t1 <= a.day)
    print(f"baseline over the day: {base_j / 3600:.1f} Wh")
    for c in map(float, a.capacity.split(",")):
        joules, dt = 0.0, 0.1
        for i in range(int(a.day / dt)):
            r = rate(i * dt)
            k = min(a.nodes, max(1, math.ceil(r / c)))
            joules += (k * (base_w + slope * r / k) + (a.nodes - k) * a.parked) * dt
        print(f"C = {c} req/s per node: floor {joules / 3600:.1f} Wh, saving {100 * (1 - joules / base_j):.1f} %")


if __name__ == "__main__":
    main()
