"""The torch twin: the same layers as one of our specs, in PyTorch (NCHW), trained with the loop
shape of our train() and timed the same way. torch is imported only here, only when asked."""

from __future__ import annotations

import time

import numpy as np

from pipeline.nn.models import build_spec
from pipeline.params import TrainConfig
from pipeline.train import hyperparameters

from .measure import WARMUP_ROWS, timed


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_twin(torch, spec):
    """The same layers as `spec` in torch (NCHW), in the same order."""
    nn = torch.nn
    acts = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "tanh": nn.Tanh,
            "sigmoid": nn.Sigmoid}
    mods, flat = [], False
    for ly in spec["layers"]:
        kind = ly["type"]
        if kind == "dense":
            mods.append(nn.Linear(ly["in"], ly["out"], bias=ly.get("bias", True)))
        elif kind == "conv":
            mods.append(nn.Conv2d(ly["cin"], ly["cout"], ly["k"], padding=ly.get("pad", 0),
                                  bias=ly.get("bias", True)))
        elif kind == "bn":
            bn = nn.BatchNorm1d if flat else nn.BatchNorm2d
            mods.append(bn(ly["c"], momentum=ly.get("momentum", 0.1), eps=1e-5))
        elif kind == "act":
            mods.append(acts[ly["fn"]]())
        elif kind == "pool":
            mods.append(nn.MaxPool2d(2))
        elif kind == "dropout":
            mods.append(nn.Dropout(ly["p"]))
        elif kind == "flatten":
            mods.append(nn.Flatten())
            flat = True
        else:
            raise ValueError(f"no torch twin for layer type {kind!r}")
    return nn.Sequential(*mods)


def torch_optimizer(torch, hp, net):
    if hp["optimizer"] == "adam":
        return torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    raise ValueError(f"no torch optimizer for {hp['optimizer']!r}")


def torch_epoch(torch, net, opt, X, Y, batch, gen):
    """One epoch of the loop train() runs: shuffle, gather, forward, loss, backward, step."""
    F = torch.nn.functional
    net.train()
    t0 = time.perf_counter()
    N = X.shape[0]
    perm = torch.randperm(N, generator=gen)
    loss_sum, correct = 0.0, 0
    for s in range(0, N, batch):
        idx = perm[s:s + batch]
        xb, yb = X[idx], Y[idx]
        z = net(xb)
        loss = F.cross_entropy(z, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * yb.shape[0]
        correct += int((z.argmax(1) == yb).sum())
    return time.perf_counter() - t0


def torch_trainer(torch, settings, x, y, seed, threads=1):
    """The torch twin of `settings` on `threads` threads (torch.set_num_threads, set again
    before each epoch), warmed up on 1024 rows -> a function that trains it one timed epoch
    and returns (seconds, the net)."""
    hp = hyperparameters(TrainConfig(**settings))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = torch_twin(torch, build_spec(settings["model"], hp))
    opt = torch_optimizer(torch, hp, net)
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, 1, 28, 28)
    Y = torch.from_numpy(y.astype(np.int64))
    torch.set_num_threads(threads)
    torch_epoch(torch, net, opt, X[:WARMUP_ROWS], Y[:WARMUP_ROWS], hp["batch_size"], gen)

    def epoch():
        torch.set_num_threads(threads)
        return torch_epoch(torch, net, opt, X, Y, hp["batch_size"], gen), net

    return epoch


def torch_predict(torch, net, x_test, threads):
    torch.set_num_threads(threads)
    net.eval()
    X = torch.from_numpy(np.ascontiguousarray(x_test.transpose(0, 3, 1, 2)))

    def run(X):
        with torch.no_grad():
            for s in range(0, X.shape[0], 1000):
                torch.softmax(net(X[s:s + 1000]), 1)

    run(X[:1000])
    return min(timed(run, X) for _ in range(2))
