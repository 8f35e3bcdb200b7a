"""Breast-cancer classifier (binary: malignant / benign): standardisation inside the model,
so the served model takes raw measurements."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(params: dict) -> nn.Module:
    return Classifier(30, params["hidden"])


def load(path) -> tuple[torch.Tensor, torch.Tensor]:
    a = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return torch.from_numpy(a[:, :-1].astype(np.float32)), torch.from_numpy(a[:, -1].astype(np.int64))


def train(ctx) -> nn.Module:
    p = ctx.params
    x, y = load(ctx.data["cancer-split"] / "train.csv")
    n_val = len(x) // 5
    x_tr, y_tr, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    ctx.describe(task="classification", input_shape=[30], labels=["malignant", "benign"])
    ctx.save_reference(x_tr.numpy())
    model = build_model(p)
    model.mean.copy_(x_tr.mean(0))
    model.std.copy_(x_tr.std(0) + 1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    for epoch in range(1, p["epochs"] + 1):
        model.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_tr), y_tr)
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            val_acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        ctx.log_epoch(epoch, p["epochs"], loss=loss.item(), val_accuracy=val_acc)
    return model
