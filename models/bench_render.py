"""Render benchmark: nuir's adaptive render against the renders a user would try, at equal cost.

    python -m models.bench_render CKPT [CKPT ...] --scales 2 4 8
    python -m models.bench_render --train --out bench_out/render   # trains the 9 networks first

For every checkpoint and scale, in one run on one machine, each method renders the network at
``scale`` x its training size and is timed with every network evaluation it makes (best of
``--repeats``, the methods taking turns; the dense render once); PSNR and SSIM are against the
dense render (the network at every output pixel). Methods:

- ``adaptive``: ``models.render``'s default (``nuir.adaptive.AdaptiveRenderer``) at its default
  tolerance, and at every tolerance of ``--tolerances`` (the time / fidelity curve);
- ``1x+lanczos``, ``1x+bicubic``: the network densely at the training size, then resized with
  Pillow (float, per channel); ``1x+torch-bicubic``: resized with ``torch.nn.functional.
  interpolate``; ``0.5x+lanczos``: from half the training size;
- ``grid``: one sample per training pixel, Gaussians with values solved to pass through them;
- ``dense``: the reference (PSNR infinite, its time the cost of exactness).

After each table: the adaptive curve read at each baseline's time (PSNR gained at equal time) and
at each baseline's PSNR (time needed), interpolated between tolerances. ``--train`` first trains
the benchmark's networks with ``train.py`` (the main job's config): a SIREN, a Fourier-feature
MLP and a hash grid, each on the bundled astronaut and on scikit-image's coffee and chelsea
(resized to 256 rows).
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from models.checkpoint import Trained, load_trained
from models.render import DEFAULT_TOLERANCE, output_size, renderer_for
from nuir.geometry import pixel_centres, pixel_to_unit
from nuir.renderers import evaluate_network, render

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ("1x+lanczos", "1x+bicubic", "1x+torch-bicubic", "0.5x+lanczos", "grid")
TOLERANCES = (0.04, 0.03, 0.025, 0.02, 0.015, 0.01, 0.005)
NETWORKS = {
    "siren": [],
    "fourier": ["--model.network=models.fourier.FourierFeatureMLP"],
    "hashgrid": ["--model.network=models.hashgrid.HashGridMLP"],
}
PHOTOS = {
    "astronaut": [],
    "coffee": ["--data.path=skimage:coffee", "--data.resize=[256,384]"],
    "chelsea": ["--data.path=skimage:chelsea", "--data.resize=[256,384]"],
}


def dense_at(trained: Trained, size: tuple[int, int], chunk: int = 65536) -> torch.Tensor:
    """The network at every pixel centre of a raster of ``size``: [C, H, W]."""
    centres = pixel_centres((0, 0, *size), device=trained.device)
    values = evaluate_network(trained.network, pixel_to_unit(centres, size), chunk)
    return values.T.reshape(-1, *size).float().cpu()


def pil_resize(image: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    resample = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}[method]
    planes = [
        np.asarray(Image.fromarray(plane.numpy()).resize((size[1], size[0]), resample))
        for plane in image
    ]
    return torch.from_numpy(np.stack(planes))


def baseline(trained: Trained, size: tuple[int, int], name: str) -> tuple[torch.Tensor, int]:
    """A baseline's render [C, H, W] and its network evaluations."""
    if name == "grid":
        renderer = renderer_for(trained, size, "grid")
        return render(renderer, size), renderer.evaluations
    factor, method = name.split("+")
    small_size = (
        round(trained.size[0] * float(factor[:-1])),
        round(trained.size[1] * float(factor[:-1])),
    )
    small = dense_at(trained, small_size)
    evaluations = small_size[0] * small_size[1]
    if method == "torch-bicubic":
        return F.interpolate(small[None], size=size, mode="bicubic", align_corners=False)[
            0
        ], evaluations
    return pil_resize(small, size, method), evaluations


def adaptive(trained: Trained, size: tuple[int, int], tolerance: float) -> tuple[torch.Tensor, int]:
    renderer = renderer_for(trained, size, "adaptive", tolerance=tolerance)
    return render(renderer, size, renderer.preferred_tile()), renderer.evaluations


def scores(image: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    mse = float((image.clamp(0, 1).double() - reference).square().mean())
    psnr = math.inf if mse == 0 else -10 * math.log10(mse)
    ssim = float(
        structural_similarity_index_measure(
            image.clamp(0, 1)[None].float(), reference[None].float(), data_range=1.0
        )
    )
    return psnr, ssim


def benchmark(trained: Trained, scale: float, tolerances, repeats: int) -> list[dict]:
    """One row per method at one scale (times: best of ``repeats``, methods in turns)."""
    size = output_size(trained, scale, None)
    methods = {"dense": lambda: (dense_at(trained, size), size[0] * size[1])}
    methods[f"adaptive (tolerance {DEFAULT_TOLERANCE:g}, the default)"] = lambda: adaptive(
        trained, size, DEFAULT_TOLERANCE
    )
    for name in BASELINES:
        methods[name] = lambda name=name: baseline(trained, size, name)
    for tolerance in tolerances:
        if tolerance != DEFAULT_TOLERANCE:
            methods[f"adaptive (tolerance {tolerance:g})"] = lambda tolerance=tolerance: adaptive(
                trained, size, tolerance
            )
    times = {name: math.inf for name in methods}
    images: dict[str, tuple[torch.Tensor, int]] = {}
    with torch.no_grad():
        for repeat in range(repeats):
            for name, run in methods.items():
                if name == "dense" and repeat > 0:  # the reference: its cost, timed once
                    continue
                started = time.perf_counter()
                images[name] = run()
                times[name] = min(times[name], time.perf_counter() - started)
    reference = images["dense"][0].clamp(0, 1).double()
    rows = []
    for name in methods:
        image, evaluations = images[name]
        psnr, ssim = scores(image, reference)
        rows.append(
            {"scale": scale, "size": size, "method": name, "evaluations": evaluations,
             "seconds": times[name], "psnr": psnr, "ssim": ssim}
        )  # fmt: skip
    return rows


def curve_at(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of sorted (x, y) points at x (None outside their range)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def comparison(rows: list[dict]) -> list[str]:
    """The adaptive curve at each baseline's time and PSNR."""
    points = sorted((r["seconds"], r["psnr"]) for r in rows if r["method"].startswith("adaptive"))
    by_time = []  # keep the curve monotone in time: the best PSNR reached by each time
    for seconds, psnr in points:
        if not by_time or psnr > by_time[-1][1]:
            by_time.append((seconds, psnr))
    by_psnr = [(psnr, seconds) for seconds, psnr in by_time]
    lines = []
    for row in rows:
        if row["method"] not in BASELINES:
            continue
        at_time = curve_at(by_time, row["seconds"])
        at_psnr = curve_at(by_psnr, row["psnr"])
        gain = "outside the curve" if at_time is None else f"{at_time - row['psnr']:+.2f} dB"
        needed = (
            "outside the curve" if at_psnr is None else f"{100 * at_psnr / row['seconds']:.0f} %"
        )
        lines.append(
            f"- vs {row['method']}: at its time adaptive gains {gain}; its PSNR takes adaptive "
            f"{needed} of its time"
        )
    return lines


def table(rows: list[dict]) -> str:
    reference = next(r for r in rows if r["method"] == "1x+lanczos")
    lines = [
        "| method | network evals | seconds | time / 1x+lanczos | PSNR vs dense | SSIM vs dense |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['evaluations']:,} | {row['seconds']:.3f} | "
            f"{row['seconds'] / reference['seconds']:.2f} | {row['psnr']:.2f} dB | "
            f"{row['ssim']:.4f} |"
        )
    return "\n".join(lines)


def crop_panel(
    trained: Trained, scale: float, path: Path, crop: int = 200, at=(0.19, 0.41)
) -> None:
    """A figure of crop x crop pixels at ``scale`` (top-left corner at the fractions ``at`` of
    the height and width: the astronaut's face): the dense render, the default adaptive render
    and the 1x render resized with Lanczos, with their PSNR against dense."""
    from PIL import ImageDraw

    size = output_size(trained, scale, None)
    with torch.no_grad():
        dense = dense_at(trained, size).clamp(0, 1)
        panels = {
            "dense": dense,
            "nuir adaptive (default)": adaptive(trained, size, DEFAULT_TOLERANCE)[0],
            "1x + Lanczos": baseline(trained, size, "1x+lanczos")[0],
        }
    top, left = int(at[0] * size[0]), int(at[1] * size[1])
    figure = Image.new("RGB", (len(panels) * (crop + 8), crop + 28), "white")
    draw = ImageDraw.Draw(figure)
    for k, (name, image) in enumerate(panels.items()):
        part = image.clamp(0, 1)[:, top : top + crop, left : left + crop]
        pixels = (part.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        figure.paste(Image.fromarray(pixels.squeeze()), (k * (crop + 8), 26))
        psnr = scores(image, dense.double())[0]
        label = name if math.isinf(psnr) else f"{name}: {psnr:.2f} dB"
        draw.text((k * (crop + 8) + 2, 4), label, fill="black")
    figure.save(path)


def train_networks(out: Path, steps: int | None) -> list[Path]:
    """The benchmark's 9 checkpoints, trained by train.py where missing."""
    checkpoints = []
    for network, network_args in NETWORKS.items():
        for photo, photo_args in PHOTOS.items():
            name = f"{network}_{photo}"
            checkpoint = out / "runs" / name / "checkpoints" / "last.ckpt"
            if not checkpoint.exists():
                command = [
                    sys.executable, str(ROOT / "train.py"), "fit",
                    "--config", str(ROOT / "configs" / "default.yaml"),
                    *network_args, *photo_args,
                    "--trainer.max_time=null", "--trainer.enable_progress_bar=false",
                    f"--trainer.logger.init_args.save_dir={out / 'runs'}",
                    f"--trainer.logger.init_args.name={name}",
                ]  # fmt: skip
                if steps:
                    command.append(f"--trainer.max_steps={steps}")
                print(f"training {name} ...", flush=True)
                subprocess.run(command, check=True, capture_output=True, text=True)
            checkpoints.append(checkpoint)
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.bench_render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoints", type=Path, nargs="*", help=".ckpt files written by train.py")
    parser.add_argument("--train", action="store_true", help="train the benchmark's networks")
    parser.add_argument("--steps", type=int, default=None, help="--train: steps (default: config)")
    parser.add_argument("--scales", type=float, nargs="+", default=[2, 4, 8])
    parser.add_argument("--tolerances", type=float, nargs="*", default=list(TOLERANCES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_out/render"))
    parser.add_argument(
        "--figure", type=Path, default=None,
        help="write a 4x crop panel of the first checkpoint (dense, adaptive, 1x + Lanczos)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    checkpoints = list(args.checkpoints)
    if args.train:
        checkpoints += train_networks(args.out, args.steps)
    if not checkpoints:
        parser.error("give checkpoints, or --train")
    print(
        f"# render benchmark on {args.device} ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads); times are the best of "
        f"{args.repeats}, every method in the same run"
    )
    for index, path in enumerate(checkpoints):
        try:
            trained = load_trained(path, args.device)
        except (FileNotFoundError, ValueError) as exc:
            from nuir._cli import input_error

            return input_error(exc)
        if index == 0 and args.figure is not None:
            crop_panel(trained, 4, args.figure)
            print(f"wrote {args.figure}")
        for scale in args.scales:
            rows = benchmark(trained, scale, args.tolerances, args.repeats)
            size = rows[0]["size"]
            print(
                f"\n## {path} ({type(trained.network).__name__}, trained at "
                f"{trained.size[0]}x{trained.size[1]}): {scale:g}x, {size[0]}x{size[1]}\n"
            )
            print(table(rows))
            print("\n" + "\n".join(comparison(rows)), flush=True)
    return 0


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
