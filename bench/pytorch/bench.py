#!/usr/bin/env python3
"""The PyTorch side of `lossbench bench`: the same loss heads, CIFAR ResNets (torchvision
ResNet, 3x3 stride-1 stem, no max-pool), batch sizes and thread count, timed the same way
(warm-up, then the median of repeats). Writes a JSON list of measurements.

PyTorch is an optional dependency of this benchmark only:
    python3 -m venv ~/.cache/lossbench-torch-venv
    ~/.cache/lossbench-torch-venv/bin/pip install torch torchvision
    just bench --pytorch ~/.cache/lossbench-torch-venv/bin/python
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), repeats


def cos_logits(x, w):
    return (F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()).clamp(-1, 1)


def head_loss(name, x, w, b, y, iteration=100):
    if name == "softmax":
        return F.cross_entropy(x @ w.t() + b, y)
    cos = cos_logits(x, w)
    onehot = F.one_hot(y, w.shape[0]).to(x.dtype)
    c = cos.gather(1, y[:, None])
    if name == "normface":
        return F.cross_entropy(64.0 * cos, y)
    if name == "cosface":
        return F.cross_entropy(64.0 * (cos - 0.35 * onehot), y)
    if name == "arcface":
        m = 0.5
        sin = (1 - c * c).clamp_min(1e-12).sqrt()
        phi = torch.where(c > math.cos(math.pi - m), c * math.cos(m) - sin * math.sin(m), c - m * math.sin(m))
        return F.cross_entropy(64.0 * (cos + onehot * (phi - c)), y)
    if name == "sphereface":
        lam = max(5.0, 1000.0 * (1 + 0.12 * iteration) ** -1)
        norm = x.norm(dim=1, keepdim=True)
        logits = norm * cos
        t4 = 8 * c**4 - 8 * c**2 + 1
        k = sum((c <= math.cos(j * math.pi / 4)).to(x.dtype) for j in range(1, 5))
        psi = (1 - 2 * (k % 2)) * t4 - 2 * k
        target = (lam * norm * c + norm * psi) / (1 + lam)
        return F.cross_entropy(logits + onehot * (target - norm * c), y)
    raise ValueError(name)


def heads(quick, out):
    shapes = [(128, 2048, 100), (256, 512, 10_000)] + ([] if quick else [(256, 512, 100_000)])
    for batch, dim, classes in shapes:
        g = torch.Generator().manual_seed(1)
        x0 = torch.randn(batch, dim, generator=g)
        w = (0.01 * torch.randn(classes, dim, generator=g)).requires_grad_()
        b = torch.zeros(classes, requires_grad=True)
        y = torch.tensor([(i * 7919) % classes for i in range(batch)])
        for name in ["softmax", "normface", "sphereface", "cosface", "arcface"]:
            def step():
                x = x0.clone().requires_grad_()
                head_loss(name, x, w, b, y).backward()
                x.grad.sum().item()
            seconds, repeats = timed(step, 1, 3 if quick else 5)
            out.append(dict(group="head", name=name, shape=f"batch {batch}, dim {dim}, classes {classes}",
                            backend="pytorch", median_seconds=seconds, repeats=repeats))
            print(f"pytorch head {name:<10} {batch}x{dim}x{classes} {1e3 * seconds:9.2f} ms", flush=True)


def cifar_resnet(arch):
    model = getattr(torchvision.models, arch)(num_classes=100)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def train_steps(quick, out, device):
    configs = [("resnet18", 64)] if quick else [("resnet18", 64), ("resnet18", 128), ("resnet50", 64), ("resnet50", 128)]
    gpu = device != "cpu"
    for arch, batch in configs:
        model = cifar_resnet(arch).train().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(batch, 3, 32, 32).to(device)
        y = (torch.arange(batch) % 100).to(device)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if gpu:
                torch.cuda.synchronize()

        # On a GPU: more warm-up (cuDNN picks algorithms, the allocator fills) and more repeats.
        # The warm-up and repeats of crates/bench/src/lib.rs's train_steps.
        seconds, repeats = timed(step, 5 if gpu else (1 if quick else 2), 20 if gpu else (2 if quick else 5))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.append(dict(group="train_step", name=arch, shape=f"batch {batch}", backend=f"pytorch {device}",
                        median_seconds=seconds, repeats=repeats, per_second=batch / seconds, peak_rss_mib=peak))
        print(f"pytorch ({device}) train step {arch} batch {batch}: {batch / seconds:.1f} img/s", flush=True)


def convolutions(shapes, out):
    """The three convolutions of a training step (forward, input and weight gradient, as
    autograd calls them), batch 64, on the shapes lossbench passes: every convolution of the
    CIFAR ResNet-18 and ResNet-50 (crates/bench/src/conv.rs names them the same way)."""
    batch = 64
    for c_in, c_out, k, stride, side in shapes:
        pad = k // 2
        out_side = (side + 2 * pad - k) // stride + 1
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, c_in, side, side, generator=g)
        w = torch.randn(c_out, c_in, k, k, generator=g)
        dy = torch.randn(batch, c_out, out_side, out_side, generator=g)
        ops = {
            "forward": lambda: F.conv2d(x, w, stride=stride, padding=pad),
            "input grad": lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=pad),
            "weight grad": lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=pad),
        }
        label = f"{k}x{k}/{stride}, batch {batch}, {c_in}->{c_out} channels, {side}x{side}"
        for name, op in ops.items():
            seconds, repeats = timed(op, 1, 5)
            out.append(dict(group="conv", name=name, shape=label, backend="pytorch",
                            median_seconds=seconds, repeats=repeats))
            print(f"pytorch conv {name} {label}: {1e3 * seconds:.2f} ms", flush=True)


class Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.t = v2.Compose([
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        ])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.t(self.images[i]), i % 100


def data_path(threads, out):
    ds = Images(10_000)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=threads, persistent_workers=True)

    def epoch():
        for batch in loader:
            pass

    seconds, repeats = timed(epoch, 1, 3)
    out.append(dict(group="data", name="augment + batch", shape=f"{len(ds)} images, batch 128",
                    backend=f"torchvision v2, {threads} workers", median_seconds=seconds, repeats=repeats,
                    per_second=len(ds) / seconds))
    print(f"pytorch data path: {len(ds) / seconds:.0f} img/s", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu",
                   help="where the training steps run: cpu, or cuda (eager fp32 with PyTorch's defaults)")
    p.add_argument("--only", default="data,head,train_step,conv",
                   help="comma-separated groups: data, head, train_step, conv")
    p.add_argument("--conv-shapes", default="64,64,3,1,32;512,512,3,1,4",
                   help="convolutions to time: c_in,c_out,kernel,stride,side joined by ';'")
    a = p.parse_args()
    only = set(a.only.split(","))
    torch.set_num_threads(a.threads)
    out = []
    if "data" in only:
        data_path(a.threads, out)
    if "head" in only:
        heads(a.quick, out)
    if "train_step" in only:
        train_steps(a.quick, out, a.device)
    if "conv" in only:
        shapes = [tuple(int(v) for v in s.split(",")) for s in a.conv_shapes.split(";") if s]
        convolutions(shapes, out)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
