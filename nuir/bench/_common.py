"""Helpers shared by the benchmarks: PIL resizing, metrics, tables, CSV and plots."""

from __future__ import annotations

import csv
import ctypes
import io
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree
from torchmetrics.functional import mean_absolute_error
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

PIL_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

L1_SCALE = 255.0  # L1 is reported on the 0-255 intensity scale


def add_sweep_argument(parser, what: str) -> None:
    """--sweep A [A ...]: sweep the sigma scale of ``what`` instead of running the benchmark."""
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="+",
        default=None,
        metavar="A",
        help=f"instead of the benchmark, sweep the sigma scale a of {what}",
    )


def check_ranges(parser, args, *, above: Sequence[str] = (), at_least: dict | None = None):
    """parser.error naming the first option out of range: each name in ``above`` must be > 0,
    each ``name: minimum`` in ``at_least`` >= minimum."""
    for name in above:
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name, minimum in (at_least or {}).items():
        if getattr(args, name) < minimum:
            option = name.replace("_", "-")
            parser.error(f"--{option} must be >= {minimum}, got {getattr(args, name)}")


def pil_resize(pixels: np.ndarray, size: tuple[int, int], filter: str) -> np.ndarray:
    """``PIL.Image.resize`` of a float image [H, W, C] to size (h, w), channel by channel.

    Float ("F" mode) images, so PIL neither rounds nor clips; the result is [h, w, C] float32.
    """
    height, width = size
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(pixels[:, :, c]), mode="F").resize(
                (width, height), PIL_RESAMPLING[filter]
            )
        )
        for c in range(pixels.shape[2])
    ]
    return np.stack(channels, axis=2)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """[H, W, C] array -> [1, C, H, W] float32 tensor."""
    array = np.ascontiguousarray(pixels, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """[1, C, H, W] or [C, H, W] tensor -> [H, W, C] float32 array."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    return image.permute(1, 2, 0).numpy()


def image_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """L1 (0-255 scale), PSNR (dB) and SSIM of [H, W, C] images in [0, 1], via torchmetrics.

    The prediction is clipped to [0, 1] first, as storing it in any image format would.
    """
    pred = to_tensor(np.clip(prediction, 0.0, 1.0))  # [1, C, H, W]
    true = to_tensor(target)
    return {
        "l1": float(mean_absolute_error(pred.double(), true.double())) * L1_SCALE,
        "psnr": float(peak_signal_noise_ratio(pred.double(), true.double(), data_range=1.0)),
        # float32: torchmetrics' SSIM convolutions are ten times slower in float64 on CPU
        "ssim": float(structural_similarity_index_measure(pred, true, data_range=1.0)),
    }


def limit_scipy_blas_threads(count: int) -> bool:
    """Set the thread count of the OpenBLAS that scipy wheels bundle; True if it was found.

    This is what threadpoolctl does. scipy's griddata calls LAPACK on 2 x 2 matrices, once per
    triangle; OpenBLAS threads only add overhead there, and on a loaded machine their busy-waiting
    turns a 0.03 s interpolation into 20-100 s.
    """
    import scipy

    found = False
    for folder in (Path(scipy.__file__).parent, Path(scipy.__file__).parent.parent / "scipy.libs"):
        for path in sorted(folder.glob("libscipy_openblas*.so*")):
            library = ctypes.CDLL(str(path))
            for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                setter = getattr(library, name, None)
                if setter is not None:
                    setter(ctypes.c_int(count))
                    found = True
                    break
    return found


def covering_sigma(
    sigma: np.ndarray | float, points: np.ndarray, unreached: np.ndarray, cutoff: float
) -> np.ndarray:
    """[N] sigmas raised so that every unreached pixel [M, 2] (x, y) is reached after all.

    The nearest point i of each unreached pixel, at distance d, gets sigma_i >= 1.01 d / cutoff.
    Sigmas only grow, so pixels that were reached stay reached.
    """
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(points),)).copy()  # [N]
    distance, nearest = cKDTree(points).query(unreached)  # [M], [M]
    np.maximum.at(sigma, nearest, distance * (1.01 / cutoff))
    return sigma


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[object, float]:
    """(result of the first call, seconds of the fastest of `repeats` calls)."""
    result, best = None, float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
        if repeat == 0:
            result = value
    return result, best


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def mean_by(
    rows: Iterable[dict[str, object]], keys: Sequence[str], metric: str
) -> dict[tuple, float]:
    """Mean of `metric` over rows grouped by the values of `keys`."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(float(row[metric]))
    return {key: float(np.mean(values)) for key, values in groups.items()}


METRIC_TITLES = (
    ("l1", "mean L1 (0-255 scale, lower is better)"),
    ("psnr", "mean PSNR in dB (higher is better)"),
    ("ssim", "mean SSIM (higher is better)"),
    ("seconds", "mean seconds per image"),
)


def metric_tables(
    rows: list[dict[str, object]], column: str, columns: Sequence[object]
) -> list[str]:
    """One Markdown table per metric of METRIC_TITLES: methods (rows) x ``column`` values."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    blocks = []
    for metric, title in METRIC_TITLES:
        means = mean_by(rows, ("method", column), metric)
        table = [
            [m]
            + [f"{means[(m, c)]:.4f}" if metric == "seconds" else means[(m, c)] for c in columns]
            for m in methods
        ]
        blocks.append(f"{title}\n\n" + markdown_table(["method", *columns], table))
    return blocks


def fmt(value, spec: str) -> str:
    """A table cell: value formatted by spec ("8.2f", ">10"), or "-" as wide where there is none."""
    return format(value, spec) if value is not None else format("-", ">" + width(spec))


def width(spec: str) -> str:
    return spec.lstrip("<>").split(".")[0]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats printed with 2 decimals (3 for values below 1)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, *, dpi: int = 100, palette: bool = False) -> None:
    """Save a matplotlib figure as PNG; `palette` stores 256 colours (photo panels stay small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        buffer.seek(0)
        with Image.open(buffer) as image:
            image.convert("RGB").quantize(colors=256).save(path, optimize=True)
    else:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
