#!/usr/bin/env python3
"""Neronet quickstart sample: train a tiny two-layer MLP in plain Python.

A 2 -> WIDTH (tanh) -> 1 (sigmoid) network is trained with mini-batch
gradient descent on a synthetic, deterministically generated data set of two
interleaved spirals (binary classification). Standard library only.

Usage:
    python3 train.py --lr LR --width W --epochs N [--seed S]

Output: exactly one line per epoch on stdout, flushed immediately:
    epoch=3 loss=0.512345 errorrate=0.2350
where loss is the mean binary cross-entropy over the whole data set and
errorrate is the fraction of misclassified points (0..1). The cross-entropy is
computed from the output pre-activation z, which is clipped to [-50, 50]; this
is the same as clipping the predicted probabilities to about
[2e-22, 1 - 2e-22], so a point costs at most 50 and the loss is always finite.
A wildly too large learning rate (e.g. --lr 3000) saturates the network and
leaves many points confidently wrong, so its loss stays far above 3.
A single human-readable start message, free of name=value tokens, goes to
stderr; nothing else is printed.
"""

import argparse
import math
import random
import sys
import time

N_POINTS = 200      # total points, half per class
BATCH_SIZE = 20     # mini-batch size
CLIP = 50.0         # pre-activations are clipped to [-CLIP, CLIP] before exp
# The network is so small that an epoch takes only a few milliseconds, which
# would make the live progress invisible. Each epoch therefore pads itself
# with a short time.sleep so that it lasts at least this long (the sleep is
# never longer than 0.1 s).
MIN_EPOCH_SECONDS = 0.1


def clip(x, lo=-CLIP, hi=CLIP):
    return lo if x < lo else hi if x > hi else x


def sigmoid(z):
    z = clip(z)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def make_spirals(n, rng):
    """Two interleaved spirals, n points in total, labels 0 and 1."""
    data = []
    half = n // 2
    for i in range(half):
        t = 0.25 + 2.25 * math.pi * i / half      # angle: a bit over one turn
        r = t / (2.0 * math.pi)                    # radius grows with angle
        for label, sign in ((0, 1.0), (1, -1.0)):
            x = sign * r * math.cos(t) + rng.gauss(0.0, 0.03)
            y = sign * r * math.sin(t) + rng.gauss(0.0, 0.03)
            data.append((x * 2.0, y * 2.0, label))
    rng.shuffle(data)
    return data


class MLP:
    def __init__(self, width, rng):
        self.width = width
        s1 = 1.0 / math.sqrt(2.0)
        s2 = 1.0 / math.sqrt(width)
        self.w1 = [[rng.gauss(0.0, 2.0 * s1) for _ in range(2)] for _ in range(width)]
        self.b1 = [rng.gauss(0.0, 0.5) for _ in range(width)]
        self.w2 = [rng.gauss(0.0, s2) for _ in range(width)]
        self.b2 = 0.0

    def forward(self, x, y):
        h = [math.tanh(clip(w[0] * x + w[1] * y + b)) for w, b in zip(self.w1, self.b1)]
        z = clip(sum(v * h_j for v, h_j in zip(self.w2, h)) + self.b2)
        return h, z

    def step(self, batch, lr):
        width = self.width
        gw1 = [[0.0, 0.0] for _ in range(width)]
        gb1 = [0.0] * width
        gw2 = [0.0] * width
        gb2 = 0.0
        for x, y, label in batch:
            h, z = self.forward(x, y)
            dz = sigmoid(z) - label          # dBCE/dz for a sigmoid output
            gb2 += dz
            for j in range(width):
                gw2[j] += dz * h[j]
                dh = dz * self.w2[j] * (1.0 - h[j] * h[j])
                gb1[j] += dh
                gw1[j][0] += dh * x
                gw1[j][1] += dh * y
        scale = lr / len(batch)
        for j in range(width):
            self.w2[j] = clip(self.w2[j] - scale * gw2[j], -1e6, 1e6)
            self.b1[j] = clip(self.b1[j] - scale * gb1[j], -1e6, 1e6)
            self.w1[j][0] = clip(self.w1[j][0] - scale * gw1[j][0], -1e6, 1e6)
            self.w1[j][1] = clip(self.w1[j][1] - scale * gw1[j][1], -1e6, 1e6)
        self.b2 = clip(self.b2 - scale * gb2, -1e6, 1e6)

    def evaluate(self, data):
        loss = 0.0
        errors = 0
        for x, y, label in data:
            _, z = self.forward(x, y)
            # -log(sigmoid(z)) for label 1, -log(1 - sigmoid(z)) for label 0,
            # written as a numerically stable softplus(a).
            a = -z if label == 1 else z
            loss += max(a, 0.0) + math.log1p(math.exp(-abs(a)))
            if (z >= 0.0) != (label == 1):
                errors += 1
        return loss / len(data), errors / len(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Neronet quickstart: tiny MLP on two spirals")
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate (default 0.5)")
    parser.add_argument("--width", type=int, default=16, help="hidden units (default 16)")
    parser.add_argument("--epochs", type=int, default=40, help="number of epochs (default 40)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    if args.width < 1 or args.epochs < 0:
        parser.error("width must be >= 1 and epochs >= 0")
    if not math.isfinite(args.lr):
        parser.error("lr must be a finite number")

    rng = random.Random(args.seed)
    data = make_spirals(N_POINTS, rng)
    model = MLP(args.width, rng)
    print("training a two-layer MLP on %d spiral points" % len(data),
          file=sys.stderr, flush=True)

    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        rng.shuffle(data)
        for i in range(0, len(data), BATCH_SIZE):
            model.step(data[i:i + BATCH_SIZE], args.lr)
        loss, errorrate = model.evaluate(data)
        print("epoch=%d loss=%.6f errorrate=%.4f" % (epoch, loss, errorrate), flush=True)
        pad = MIN_EPOCH_SECONDS - (time.monotonic() - started)
        if pad > 0:
            time.sleep(min(pad, 0.1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
