"""Super-resolution benchmark: does the trained network hold the image *between* its pixels?

    python -m models.bench_superres --photos astronaut coffee chelsea --factors 2 4

Each photo (shipped with scikit-image, centre-cropped to ``--crop``) is box-downsampled by each
factor (the area average a camera sensor takes); the main job's config trains the network on the
small image (the points grow from a sixteenth to a quarter of its pixels, as in the main job;
``--steps`` steps), which is then rendered back
at the photo's size, adaptively (``models.render``'s default) and densely, and compared with the
original, beside PIL's bicubic and Lanczos resizes of the same small image. Optionally
(``--bundled CKPT``) a checkpoint of the main job, trained on the bundled 256 x 256 astronaut,
is rendered at 512 x 512 and compared with scikit-image's 512 x 512 original. A crop panel at
the largest factor (photo, adaptive render, dense render, bicubic) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from models.bench_train import CONFIG
from models.checkpoint import Trained, load_trained
from models.cli import fit_steps
from models.render import renderer_for
from nuir.image_files import load_image, skimage_photo_path, to_integers
from nuir.renderers import render

ROOT = Path(__file__).resolve().parent.parent


def centre_crop(image: torch.Tensor, crop: int) -> torch.Tensor:
    """The central min(crop, H) x min(crop, W) window of [C, H, W]."""
    _, height, width = image.shape
    h, w = min(crop, height), min(crop, width)
    top, left = (height - h) // 2, (width - w) // 2
    return image[:, top : top + h, left : left + w]


def resize(image: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """PIL resize of [C, H, W] in [0, 1] to (H', W'), channel by channel in float32."""
    planes = [
        np.asarray(
            Image.fromarray(plane.numpy()).resize(
                (size[1], size[0]), getattr(Image.Resampling, method.upper())
            )
        )
        for plane in image.float()
    ]
    return torch.from_numpy(np.stack(planes)).clamp(0, 1)


def scores(image: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    image = image.clamp(0, 1).float()
    return (
        float(peak_signal_noise_ratio(image, reference, data_range=1.0)),
        float(structural_similarity_index_measure(image[None], reference[None], data_range=1.0)),
    )


def train_on(image: torch.Tensor, steps: int, folder: Path, overrides: list[str]):
    """The main job's system trained on ``image`` [C, h, w] for ``steps`` steps, with the point
    counts scaled to the image (a quarter of its pixels in the end, a sixteenth at the start)."""
    path = folder / "train.png"
    Image.fromarray(to_integers(image, 8)).save(path)
    pixels = image.shape[1] * image.shape[2]
    counts = [
        f"--model.sampler.n_points={pixels // 16}",
        f"--model.sampler.max_points={pixels // 4}",
    ]
    system = fit_steps(CONFIG, [f"--data.path={path}", *counts, *overrides], steps)[0]
    return Trained(system.network, system.size)


def renders(system: Trained, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            method: render(renderer_for(system, size, method), size).cpu()
            for method in ("adaptive", "dense")
        }


def rows_for(
    photo: str,
    factor: int,
    original: torch.Tensor,
    small: torch.Tensor,
    network_renders: dict[str, torch.Tensor],
) -> list[dict]:
    size = tuple(original.shape[1:])
    candidates = {f"nuir {method} render": image for method, image in network_renders.items()} | {
        "PIL bicubic": resize(small, size, "bicubic"),
        "PIL lanczos": resize(small, size, "lanczos"),
    }
    rows = []
    for method, image in candidates.items():
        psnr, ssim = scores(image, original)
        rows.append(dict(photo=photo, factor=factor, method=method, psnr=psnr, ssim=ssim))
    return rows


def crop_panel(
    path: Path, original: torch.Tensor, images: dict[str, torch.Tensor], box: int = 96
) -> None:
    """Photo, renders and bicubic side by side, the same box x box crop (around the centre)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, height, width = original.shape
    top, left = height // 2 - box // 2, width // 2 - box // 2
    panels = {"photo": original} | images
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for axis, (label, image) in zip(axes, panels.items()):
        patch = image[:, top : top + box, left : left + box].clamp(0, 1)
        shown = patch.permute(1, 2, 0).numpy()
        axis.imshow(shown if shown.shape[-1] == 3 else shown[..., 0], cmap="gray")
        axis.set_title(label, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def superres_table(rows: list[dict]) -> str:
    lines = ["| photo | factor | method | PSNR | SSIM |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['photo']} | {row['factor']}x | {row['method']} | {row['psnr']:.2f} dB | "
            f"{row['ssim']:.4f} |"
        )
    return "\n".join(lines)


def bundled_rows(checkpoint: Path) -> list[dict]:
    """The main job's checkpoint (bundled 256 x 256 astronaut) at 2x against the 512 original."""
    system = load_trained(checkpoint)
    original = load_image(skimage_photo_path("astronaut"))
    small = load_image(ROOT / "models" / "assets" / "astronaut_256.png")
    if tuple(small.shape[1:]) != system.size:
        raise ValueError(f"{checkpoint}: not trained on the bundled 256 x 256 photo")
    return rows_for("astronaut (bundled 256)", 2, original, small, renders(system, (512, 512)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bench_superres", description=__doc__)
    parser.add_argument("--photos", nargs="+", default=["astronaut", "coffee", "chelsea"])
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--crop", type=int, default=384, help="centre crop (divisible by factors)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per model")
    parser.add_argument("--bundled", type=Path, default=None, help="main-job checkpoint to add")
    parser.add_argument(
        "--override", action="append", default=[], metavar="ARG", help="extra CLI argument"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/superres"))
    args = parser.parse_args(argv)
    for factor in args.factors:
        if factor < 2 or args.crop % factor:
            parser.error(f"--factors must be >= 2 and divide --crop {args.crop}, got {factor}")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        rows = bundled_rows(args.bundled) if args.bundled else []
    except (FileNotFoundError, ValueError) as exc:
        from nuir._cli import input_error

        return input_error(exc)
    panel = None
    with tempfile.TemporaryDirectory() as folder:
        for photo in args.photos:
            original = centre_crop(load_image(skimage_photo_path(photo)), args.crop)
            original = original[:3] if original.shape[0] >= 3 else original
            for factor in args.factors:
                size = tuple(s // factor for s in original.shape[1:])
                small = resize(original, size, "box")
                system = train_on(small, args.steps, Path(folder), args.override)
                network_renders = renders(system, tuple(original.shape[1:]))
                rows += rows_for(photo, factor, original, small, network_renders)
                if factor == max(args.factors) and panel is None:
                    bicubic = resize(small, tuple(original.shape[1:]), "bicubic")
                    panel = (original, network_renders, bicubic)
                print(superres_table(rows[-4:]), flush=True)
    print("\n" + superres_table(rows))
    if panel is not None:
        original, network_renders, bicubic = panel
        images = {f"nuir {k}": v for k, v in network_renders.items()} | {"PIL bicubic": bicubic}
        crop_panel(args.out / "superres_crops.png", original, images)
        print(f"\nwrote {args.out / 'superres_crops.png'}")
    return 0


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
