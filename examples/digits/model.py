"""Digits classifier: a small MLP in plain PyTorch (the mlbuild training API: build_model, train)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def build_model(params: dict) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, params["hidden"]), nn.ReLU(),
        nn.Linear(params["hidden"], params["hidden"]), nn.ReLU(),
        nn.Linear(params["hidden"], 10),
    )


def load(path) -> tuple[torch.Tensor, torch.Tensor]:
    a = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return torch.from_numpy(a[:, :-1] / 16.0), torch.from_numpy(a[:, -1].astype(np.int64))


def preprocess(x: np.ndarray) -> torch.Tensor:
    """Raw pixel values 0..16 in, scaled features out (the server calls this too)."""
    return torch.from_numpy(np.asarray(x, dtype=np.float32) / 16.0)


def train(ctx) -> nn.Module:
    p = ctx.params
    x, y = load(ctx.data["digits-split"] / "train.csv")
    n_val = len(x) // 10  # the last tenth of the training split is the validation split
    x_tr, y_tr, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    ctx.describe(task="classification", input_shape=[64], labels=[str(i) for i in range(10)])
    ctx.save_reference(x_tr.numpy() * 16.0)
    model = build_model(p)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    gen = torch.Generator().manual_seed(ctx.seed)
    for epoch in range(1, p["epochs"] + 1):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(order), p["batch_size"]):
            idx = order[i:i + p["batch_size"]]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_acc = (model(x_val).argmax(1) == y_val).float().mean().item()
            train_acc = (model(x_tr).argmax(1) == y_tr).float().mean().item()
        ctx.log_epoch(epoch, p["epochs"], loss=total / len(x_tr), accuracy=train_acc, val_accuracy=val_acc)
    return model
