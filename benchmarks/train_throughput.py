"""Training throughput for covidnet-cxr3b at 480x480, three ways, in one process on one GPU (issue 4):

  (a) naive:   the pipeline most PyTorch users write — image files -> PIL decode -> crop/resize ->
               torchvision augmentation, in DataLoader workers -> the same model, same batch, same precision;
               on the source files as they are, and on full-size PNG copies (COVIDx's files are PNGs of
               about 1024 px; the development sources are JPEGs shrunk to <= 480 px)
  (b) compute: the model's training step rate with the batch already on the GPU (the ceiling)
  (c) ours:    `covidnet train` end to end on the built dataset (store on the GPU, augmentation on the GPU)

Targets: (c) >= 10x (a) and (c) >= 85 % of (b). MFU = model training FLOPs x images/s / peak, with the
peak bf16 dense rate measured on these GPUs (790 TFLOP/s, H100/H200).

    python benchmarks/train_throughput.py --data DATASET_DIR [--batch-size 64] [--out FILE.json]
    python benchmarks/train_throughput.py --data DATASET_DIR --quick     # CPU smoke test, small size
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PEAK_BF16_FLOPS = 790e12


def naive_rate(paths, labels, model, size, batch, workers, steps, device, amp) -> float:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    class Files(Dataset):
        tf = v2.Compose(
            [
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.85, 1.15)),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.1),
            ]
        )

        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            im = Image.open(paths[i]).convert("L")
            w, h = im.size
            im = im.crop((0, int(0.08 * h), w, h))
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
            return self.tf(im), labels[i]

    loader = DataLoader(
        Files(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-5)
    done, t0, warm = 0, None, 3
    while done < steps + warm:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with amp:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warm:
                _sync(device)
                t0 = time.perf_counter()
            if done >= steps + warm:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _png_copy(task):
    from PIL import Image

    src, dst, side = task
    im = Image.open(src).convert("L")
    scale = side / min(im.size)
    im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.Resampling.BICUBIC).save(dst)
    return dst


def png_copies(paths, folder: Path, side: int) -> list[str]:
    """The images as full-size PNG files, short side ``side``, like COVIDx's (RSNA's are 1024 x 1024):
    what the naive pipeline decodes on real COVIDx. Not timed."""
    from multiprocessing import Pool

    with Pool(os.cpu_count()) as pool:
        return pool.map(_png_copy, [(p, str(folder / f"{k}.png"), side) for k, p in enumerate(paths)], chunksize=8)


def compute_rate(model, size, batch, steps, device, amp, channels_last) -> float:
    x = torch.rand(batch, 1, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-5)
    for i in range(steps + 5):
        if i == 5:
            _sync(device)
            t0 = time.perf_counter()
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="a dataset built by `covidnet data build` at --size")
    ap.add_argument("--arch", default="covidnet-cxr3b")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(15, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4, help="epochs of (c); the first (compilation) is not counted")
    ap.add_argument("--compile", default="on", choices=("on", "off"))
    ap.add_argument("--png-side", type=int, default=1024, help="(a) also on PNG copies with this short side; 0: skip")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: few steps, no compile")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = ap.parse_args()

    from covidnet.data.store import open_store
    from covidnet.models import create_model
    from covidnet.profile import count_macs
    from covidnet.train import TrainConfig, train

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu)
    if args.quick:
        args.steps, args.epochs, args.compile = 3, 2, "off"
    store = open_store(args.data)
    size = store.size
    train_rows = store.rows("train")
    with open(args.data / "records.csv") as f:  # the source files of the stored images, for the naive pipeline
        by_name = {(r["source"], r["filename"]): r["path"] for r in csv.DictReader(f)}
    paths = [by_name[(store.index[i]["source"], store.index[i]["filename"])] for i in train_rows]
    labels = store.labels(train_rows).tolist()

    with torch.device("meta"):
        macs = count_macs(create_model(args.arch, in_channels=1).eval(), torch.empty(1, 1, size, size))
    train_flops_per_image = 6 * macs  # forward 2 FLOPs per MAC, backward twice the forward

    def fresh(channels_last: bool, compiled: bool):
        torch.manual_seed(0)
        m = create_model(args.arch, in_channels=1).to(device)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return torch.compile(m) if compiled else m

    result = {
        "benchmark": "train_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "arch": args.arch,
        "size": size,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
        "precision": "bf16 autocast" if on_gpu else "fp32",
        "train_gflops_per_image": train_flops_per_image / 1e9,
    }
    t = time.perf_counter()
    result["a_naive_images_per_s"] = naive_rate(
        paths, labels, fresh(False, False), size, args.batch_size, args.workers, args.steps, device, amp
    )
    result["a_workers"] = args.workers
    print(f"(a) naive {result['a_naive_images_per_s']:.0f} img/s ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.png_side:
        with tempfile.TemporaryDirectory() as tmp:
            pngs = png_copies(paths, Path(tmp), args.png_side)
            t = time.perf_counter()
            result["a_naive_png_images_per_s"] = naive_rate(
                pngs, labels, fresh(False, False), size, args.batch_size, args.workers, args.steps, device, amp
            )
            result["a_png_side"] = args.png_side
        print(
            f"(a) naive on {args.png_side}px PNGs {result['a_naive_png_images_per_s']:.0f} img/s "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    t = time.perf_counter()
    result["b_compute_images_per_s"] = compute_rate(
        fresh(True, args.compile == "on"), size, args.batch_size, args.steps, device, amp, True
    )
    print(f"(b) compute {result['b_compute_images_per_s']:.0f} img/s ({time.perf_counter() - t:.0f} s)", flush=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(
            TrainConfig(
                data=str(args.data),
                out=str(Path(tmp) / "run"),
                arch=args.arch,
                epochs=args.epochs,
                batch_size=args.batch_size,
                compile=args.compile,
                progress=False,
                precise_bn=0,
            )
        )
    result["c_covidnet_train_images_per_s"] = summary["images_per_s"]
    print(f"(c) covidnet train {summary['images_per_s']:.0f} img/s ({time.perf_counter() - t:.0f} s)", flush=True)
    a, b, c = (result[k] for k in ("a_naive_images_per_s", "b_compute_images_per_s", "c_covidnet_train_images_per_s"))
    result.update(
        {
            "c_over_a_png": c / result["a_naive_png_images_per_s"] if args.png_side else None,
            "c_over_a": c / a,
            "c_over_b": c / b,
            "target_c_over_a": 10.0,
            "target_c_over_b": 0.85,
            "mfu_b": b * train_flops_per_image / PEAK_BF16_FLOPS,
            "mfu_c": c * train_flops_per_image / PEAK_BF16_FLOPS,
            "train_images": len(train_rows),
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
