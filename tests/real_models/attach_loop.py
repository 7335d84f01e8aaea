"""A hand-written training loop recorded in attach mode: accumulation over micro-batches, gradient
clipping through a function imported by name, dropout. Run as a script: `python attach_loop.py TRACE`."""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import clip_grad_norm_

import repro_audit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--clip", type=float, default=0.05)
    parser.add_argument("--aux", action="store_true", help="add a zero-weighted auxiliary term")
    parser.add_argument("--given-model", action="store_true", help="attach to a model built beforehand")
    args = parser.parse_args()

    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
        return model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    generator = torch.Generator().manual_seed(5)
    data = [(torch.randn(8, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator))
            for _ in range(6)]
    if args.given_model:
        torch.manual_seed(0)
        model, optimizer = build()
        run = repro_audit.attach(args.trace, model=model, optimizer=optimizer, seed=0, loss_weights={"aux": 0.0})
    else:
        run = repro_audit.attach(args.trace, build=build, seed=0, loss_weights={"aux": 0.0})
    with run:
        for step in range(3):
            micro_batches = data[2 * step:2 * step + 2]
            with run.step(micro_batches) as recorded:
                run.optimizer.zero_grad()
                for x, y in micro_batches:
                    logits = run.model(x)
                    terms = {"ce": F.cross_entropy(logits, y)}
                    if args.aux:
                        terms["aux"] = logits.pow(2).mean()
                    recorded.backward(recorded.loss(terms, scale=0.5))
                clip_grad_norm_(run.model.parameters(), args.clip)
                run.optimizer.step()


if __name__ == "__main__":
    main()
