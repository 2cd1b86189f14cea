"""Loader throughput on NYUv2-sized files, next to what one GPU consumes for SegNet.

``python -m okd.data.bench [--root DIR] [--n 64] [--workers 0 2 4] [--augment]``

Without ``--root`` it writes ``--n`` synthetic samples in the NYUv2 layout at 288x384
(:func:`okd.data.synthetic.write_layout`, float32 files, 3.5 MB per sample) into a temporary
folder. It then iterates the real ``dataset=nyuv2`` training split through a DataLoader (batch 8,
shuffled, persistent workers) and reports samples/s over the epochs after the first: files come
from the page cache, which is the steady state of a run once the 5 GB (float32) dataset has been
read once. A cold first epoch is bounded by the disk instead (about 3.5 MB per sample).

The GPU side is an estimate, not a measurement: the FLOPs of one SegNet training step (forward +
backward, width 1.0, three tasks) are counted with ``torch.utils.flop_counter`` on the meta device
(shapes only); a GPU sustaining F TFLOP/s then consumes F / (FLOPs per sample) samples/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from okd.data.nyuv2 import NUM_CLASSES
from okd.data.nyuv2 import build as build_nyuv2
from okd.data.synthetic import write_layout

# Effective TF32 / bf16 throughputs of an H100 running a VGG-like net: about 20 %, 40 % and 80 % of
# its dense TF32 peak (495 TFLOP/s SXM); the middle one is what we quote as "one GPU".
GPU_TFLOPS = (100.0, 200.0, 400.0)


def segnet_train_flops(height: int, width: int, tasks: Sequence[str] = ("segmentation", "depth", "normal"),
                       num_classes: int = NUM_CLASSES, width_mult: float = 1.0) -> float:
    """FLOPs (2 x multiply-adds) of one SegNet forward + backward on ONE image of height x width."""
    from torch.utils.flop_counter import FlopCounterMode

    from okd.models.segnet import SegNet
    from okd.tasks import build_tasks

    # On the meta device: shapes and FLOPs only, no arithmetic, so full resolution costs nothing.
    with torch.device("meta"):
        model = SegNet(build_tasks(list(tasks), num_classes), width=width_mult)
        image = torch.randn(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(image)
        sum(p.float().mean() for p in out.predictions.values()).backward()
    return float(counter.get_total_flops())


def loader_throughput(dataset, batch_size: int, workers: int, epochs: int, pin_memory: bool = False) -> float:
    """Samples/s of iterating ``dataset`` over ``epochs`` epochs after one warm-up epoch
    (``pin_memory``: as the trainer's loaders on CUDA, batches copied to page-locked memory)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(0))
    for _ in loader:  # warm-up: worker start-up and page cache
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def cpu_cost_per_sample(dataset, batch_size: int, epochs: int) -> float:
    """CPU seconds per sample of reading, transforming and collating, in-process on one thread.

    CPU time (not wall time) of the work one DataLoader worker does per sample, so the figure
    holds on a busy machine; W workers on W free cores deliver about W / cost samples/s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        order = list(range(len(dataset)))
        default_collate([dataset[i] for i in order[:batch_size]])  # warm-up
        count, start = 0, time.process_time()
        for _ in range(epochs):
            for b in range(0, len(order) - batch_size + 1, batch_size):
                default_collate([dataset[i] for i in order[b:b + batch_size]])
                count += batch_size
        return (time.process_time() - start) / count
    finally:
        torch.set_num_threads(threads)


def run(root: Path | None, n: int, size: tuple[int, int], batch_size: int, workers: Sequence[int],
        augment: bool, epochs: int) -> dict:
    """Measure; returns {"loader": {workers: samples/s}, "segnet_flops": F, "gpu": {tflops: samples/s}}."""
    with tempfile.TemporaryDirectory(prefix="okd-bench-") as tmp:
        if root is None:
            root = write_layout(Path(tmp) / "nyuv2", "nyuv2", n, 1, size[0], size[1])
        bundle = build_nyuv2(root, augment=augment, val_fraction=0.0, select_split="test")
        height, width = bundle.info["height"], bundle.info["width"]
        rates = {w: loader_throughput(bundle.train, batch_size, w, epochs) for w in workers}
        cpu = cpu_cost_per_sample(bundle.train, batch_size, epochs)
    flops = segnet_train_flops(height, width)
    gpu = {t: t * 1e12 / flops for t in GPU_TFLOPS}
    return {"loader": rates, "cpu_s_per_sample": cpu, "segnet_flops": flops, "gpu": gpu, "size": (height, width),
            "samples": len(bundle.train), "augment": augment, "threads": torch.get_num_threads()}


def report(result: dict, batch_size: int) -> str:
    h, w = result["size"]
    lines = [f"NYUv2 layout {h}x{w}, {result['samples']} training samples, batch {batch_size}, "
             f"augment={result['augment']}, torch threads {result['threads']}",
             "loader (page cache, after a warm-up epoch):"]
    for workers, rate in result["loader"].items():
        lines.append(f"  num_workers={workers}: {rate:8.1f} samples/s ({1e3 * batch_size / rate:6.1f} ms/batch)")
    cpu = result["cpu_s_per_sample"]
    lines.append(f"  CPU cost {1e3 * cpu:.2f} ms per sample on one thread: {1 / cpu:.0f} samples/s per worker core")
    lines.append(f"SegNet (width 1.0, 3 tasks) training: {result['segnet_flops'] / 1e9:.0f} GFLOP per sample; "
                 f"a GPU sustaining")
    for tflops, rate in result["gpu"].items():
        lines.append(f"  {tflops:5.0f} TFLOP/s consumes {rate:7.1f} samples/s ({rate / batch_size:6.1f} steps/s)")
    return "\n".join(lines)


def _parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m okd.data.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="an NYUv2 root (default: synthetic files)")
    parser.add_argument("--n", type=int, default=64, help="synthetic training samples to write")
    parser.add_argument("--size", type=_parse_size, default=(288, 384), help="synthetic HEIGHTxWIDTH")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--augment", action="store_true", help="with random scale-crop and flip")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    args = parser.parse_args(argv)
    result = run(args.root, args.n, args.size, args.batch_size, args.workers, args.augment, args.epochs)
    print(report(result, args.batch_size))
    return result


if __name__ == "__main__":
    main()
