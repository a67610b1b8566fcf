"""Training benchmark: nuir's sampler against the field's sample-selection methods, at equal wall
time, on public photos.

    python -m models.photos fetch                        # once: the photos, into a cache folder
    python -m models.bench_train --tune                  # learning rates, on the training photos
    python -m models.bench_train --lrs bench_out/train_tune/lrs.json    # the benchmark

Protocol (docs/training.md has the figures): every method trains the same network (a SIREN of
3 x 128, the main job's, and of 3 x 256, the anchors') with the same optimiser (Adam, cosine decay
of the learning rate to a tenth over the budget) on the same centre crop (``--crop``) of each
photo, for the same wall time (``--budget`` seconds of training per run: sampling, full passes a
method makes, adaptation and optimiser steps count; scoring does not). The methods of one photo,
network and seed take turns in slices of ``--slice`` seconds, so the machine's load hits them
alike; ``--streams`` such groups run at once, one per core, each with one thread. Every
``budget / --evals`` seconds the network is scored at every pixel (PSNR against the crop). The
learning rate of each method and network is the best of ``--lr-grid`` on photos that are not
scored (``--tune``: DIV2K's training crops), then fixed.

Methods (``models.sampling``): ``all-pixels`` (every pixel each step), ``uniform`` (a quarter of
the pixels, uniformly), ``nuir`` (the main job's sampler: 1/16 of the pixels as points at first,
grown to 1/4 where the network's error is largest), ``evos`` (EVOS, ratio 0.5, its main table's
setting), ``int`` (INT, ratio 0.2 rising in 10 steps, incremental refreshes: its image setting),
``soft-mining`` (Soft Mining, ratio 0.5, as in EVOS's comparison); on request
``nuir-reconstruction`` (nuir with the reconstruction through the operator trained along, every
4th step).

Outputs in ``--out``: ``runs.csv`` (every score of every run), ``summary.md`` (per-photo table,
means and spread over seeds, the targets), ``curves.png`` (PSNR against time and iterations).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "default.yaml"
NETWORKS = {
    "siren-3x128": ["--model.network.init_args.hidden_features=128"],
    "siren-3x256": ["--model.network.init_args.hidden_features=256"],
}
NO_POINTS = ["--model.reconstruction.weight=0"]
METHODS = {
    "all-pixels": ["--model.sampler=models.sampling.AllPixels", *NO_POINTS],
    "uniform": [
        "--model.sampler=models.sampling.UniformRandom",
        "--model.sampler.ratio=0.25",
        *NO_POINTS,
    ],
    "nuir": [],
    "evos": ["--model.sampler=models.sampling.EVOS", *NO_POINTS],
    "int": ["--model.sampler=models.sampling.INT", *NO_POINTS],
    "soft-mining": ["--model.sampler=models.sampling.SoftMining", *NO_POINTS],
    # The main job's sampler with the reconstruction trained along (every 4th step).
    "nuir-reconstruction": ["--model.reconstruction.weight=1", "--model.reconstruction.every=4"],
}
DEFAULT_METHODS = ["all-pixels", "uniform", "nuir", "evos", "int", "soft-mining"]
DEFAULT_LR = 1e-3


def parse_photos(spec: str) -> list[tuple[str, int]]:
    """'div2k_test:0-7' -> [('div2k_test', 0), ..., ('div2k_test', 7)]; also 'kodak:1,3'."""
    name, _, indices = spec.partition(":")
    chosen: list[int] = []
    for part in (indices or "0").split(","):
        low, _, high = part.partition("-")
        chosen += list(range(int(low), int(high or low) + 1))
    return [(name, index) for index in chosen]


def crop_photo(set_name: str, index: int, crop: int, folder: Path) -> Path:
    """The centre crop x crop of a cached photo, written as a PNG in ``folder``."""
    from models.photos import photo_path

    source = photo_path(set_name, index)
    target = folder / f"{set_name}_{index:02d}_{crop}.png"
    if not target.exists():
        with Image.open(source) as image:
            width, height = image.size
            left, top = (width - crop) // 2, (height - crop) // 2
            image.convert("RGB").crop((left, top, left + crop, top + crop)).save(target)
    return target


def overrides_for(photo: Path, network: str, method: str, seed: int, lr: float) -> list[str]:
    points = []
    if method.startswith("nuir"):  # the main job's counts scaled to the photo: 1/16, then 1/4
        with Image.open(photo) as image:
            pixels = image.width * image.height
        points = [
            f"--model.sampler.n_points={pixels // 16}",
            f"--model.sampler.max_points={pixels // 4}",
        ]
    return [
        f"--data.path={photo}",
        *NETWORKS[network],
        *METHODS[method],
        *points,
        f"--model.optimisation.lr_network={lr}",
        f"--model.seed={seed}",
        f"--seed_everything={seed}",
        "--trainer.accelerator=cpu",
    ]


def run_group(task: dict) -> list[dict]:
    """Train every method of one (photo, network, seed) in turns; rows of scores."""
    import warnings

    from models.bench_clock import train_interleaved
    from models.cli import build

    warnings.filterwarnings("ignore")
    torch.set_num_threads(task["threads"])
    systems = {}
    for method in task["methods"]:
        lr = task["lrs"].get(f"{task['network']}/{method}", DEFAULT_LR)
        torch.manual_seed(task["seed"])
        systems[method] = build(
            CONFIG, overrides_for(Path(task["photo"]), task["network"], method, task["seed"], lr)
        )
    curves = train_interleaved(
        systems, task["budget"], task["budget"] / task["evals"], "cpu", task["slice"]
    )
    rows = []
    for method, curve in curves.items():
        for i in range(len(curve.seconds)):
            rows.append(
                {
                    "photo": task["photo_name"],
                    "network": task["network"],
                    "method": method,
                    "seed": task["seed"],
                    "lr": task["lrs"].get(f"{task['network']}/{method}", DEFAULT_LR),
                    "seconds": round(curve.seconds[i], 3),
                    "steps": curve.steps[i],
                    "evaluations": curve.evaluations[i],
                    "psnr": round(curve.psnr_network[i], 4),
                }
            )
    return rows


def run_tasks(tasks: list[dict], streams: int, log) -> list[dict]:
    rows: list[dict] = []
    started = time.perf_counter()
    if streams <= 1:
        results = map(run_group, tasks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(streams, maxtasksperchild=1)
        results = pool.imap_unordered(run_group, tasks)
    for done, group in enumerate(results, 1):
        rows += group
        first = group[0]
        log(
            f"  [{done}/{len(tasks)}] {first['photo']} {first['network']} seed {first['seed']} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    if streams > 1:
        pool.close()
        pool.join()
    return rows


# --- analysis ---------------------------------------------------------------------------------


def final_psnr(rows: list[dict]) -> dict[tuple, float]:
    """(photo, network, method, seed) -> PSNR at the end of the budget."""
    last: dict[tuple, dict] = {}
    for row in rows:
        key = (row["photo"], row["network"], row["method"], int(row["seed"]))
        if key not in last or float(row["seconds"]) >= float(last[key]["seconds"]):
            last[key] = row
    return {key: float(row["psnr"]) for key, row in last.items()}


def curve_of(rows: list[dict], photo, network, method, seed) -> list[tuple[float, float, int]]:
    return sorted(
        (float(r["seconds"]), float(r["psnr"]), int(r["steps"]))
        for r in rows
        if (r["photo"], r["network"], r["method"], int(r["seed"])) == (photo, network, method, seed)
    )


def time_to_reach(curve: list[tuple[float, float, int]], level: float) -> float:
    """Seconds of training until the curve first reaches ``level`` (inf if never; linear
    between scores)."""
    previous = None
    for seconds, psnr, _ in curve:
        if psnr >= level:
            if previous is None or previous[1] >= level:
                return seconds
            t0, p0 = previous[:2]
            return t0 + (seconds - t0) * (level - p0) / (psnr - p0)
        previous = (seconds, psnr)
    return math.inf


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict], budget: float, reference: str = "nuir") -> str:
    finals = final_psnr(rows)
    photos = sorted({key[0] for key in finals})
    networks = [n for n in NETWORKS if any(key[1] == n for key in finals)]
    methods = [m for m in METHODS if any(key[2] == m for key in finals)]
    seeds = sorted({key[3] for key in finals})
    lines = []
    for network in networks:
        lines.append(f"\n### {network}: PSNR of the network at every pixel after {budget:g} s\n")
        lines.append("| photo | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---|" * len(methods))
        for photo in photos:
            cells = []
            for method in methods:
                values = [
                    finals[(photo, network, method, s)]
                    for s in seeds
                    if (photo, network, method, s) in finals
                ]
                cells.append(
                    f"{statistics.mean(values):.2f} ± {spread(values):.2f}" if values else "-"
                )
            lines.append(f"| {photo} | " + " | ".join(cells) + " |")
        # Mean over photos, per seed, then mean and spread over seeds.
        per_seed = {
            method: [
                statistics.mean(finals[(p, network, method, s)] for p in photos)
                for s in seeds
                if all((p, network, method, s) in finals for p in photos)
            ]
            for method in methods
        }
        cells = [
            f"**{statistics.mean(v):.2f}** ± {spread(v):.2f}" if v else "-"
            for v in per_seed.values()
        ]
        lines.append("| mean over photos (± spread over seeds) | " + " | ".join(cells) + " |")
        steps = {
            method: statistics.mean(
                max(
                    int(r["steps"])
                    for r in rows
                    if (r["photo"], r["network"], r["method"], int(r["seed"]))
                    == (p, network, method, s)
                )
                for p in photos
                for s in seeds
                if (p, network, method, s) in finals
            )
            for method in methods
        }
        lines.append(
            "| mean steps in the budget | " + " | ".join(f"{steps[m]:.0f}" for m in methods) + " |"
        )
        if reference in methods:
            lines += targets(
                rows, finals, network, photos, seeds, methods, budget, reference, per_seed
            )
    return "\n".join(lines)


def targets(
    rows, finals, network, photos, seeds, methods, budget, reference, per_seed
) -> list[str]:
    lines = [""]
    if "all-pixels" in methods:
        fractions = []
        for p in photos:
            for s in seeds:
                if (p, network, "all-pixels", s) in finals and (p, network, reference, s) in finals:
                    level = finals[(p, network, "all-pixels", s)]
                    reach = time_to_reach(curve_of(rows, p, network, reference, s), level)
                    fractions.append(reach / budget)
        if fractions:
            within = sum(f <= 0.4 for f in fractions)
            finite = [f for f in fractions if math.isfinite(f)]
            lines.append(
                f"- (a) {reference} reaches the all-pixels run's final PSNR after "
                f"{100 * statistics.mean(finite):.0f} % of the budget on average (worst "
                f"{100 * max(fractions):.0f} %), within 40 % in {within} of {len(fractions)} runs"
                if finite
                else f"- (a) {reference} never reaches the all-pixels run's final PSNR"
            )
    others = [
        m for m in methods if m in ("evos", "int", "soft-mining") and per_seed[m]
    ]  # the re-implemented methods
    if others and per_seed[reference]:
        best = max(others, key=lambda m: statistics.mean(per_seed[m]))
        differences = [a - b for a, b in zip(per_seed[reference], per_seed[best])]
        margin = statistics.mean(differences)
        lines.append(
            f"- (b) {reference} - {best} (the best re-implemented method) = {margin:+.2f} dB on "
            f"the mean over photos; spread over seeds of that difference "
            f"{spread(differences):.2f} dB ({len(differences)} seeds)"
        )
    return lines


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = [n for n in NETWORKS if any(r["network"] == n for r in rows)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    figure, axes = plt.subplots(len(networks), 2, figsize=(12, 4.2 * len(networks)), squeeze=False)
    for row_axes, network in zip(axes, networks):
        for method in methods:
            runs = {
                (r["photo"], int(r["seed"]))
                for r in rows
                if r["network"] == network and r["method"] == method
            }
            curves = [curve_of(rows, p, network, method, s) for p, s in sorted(runs)]
            length = min(len(c) for c in curves)
            seconds = [statistics.mean(c[i][0] for c in curves) for i in range(length)]
            psnr = [statistics.mean(c[i][1] for c in curves) for i in range(length)]
            steps = [statistics.mean(c[i][2] for c in curves) for i in range(length)]
            row_axes[0].plot(seconds, psnr, marker=".", label=method)
            row_axes[1].plot(steps, psnr, marker=".", label=method)
        row_axes[0].set_xlabel("training wall time (s)")
        row_axes[1].set_xlabel("iterations")
        for axis in row_axes:
            axis.set_ylabel(f"mean PSNR, {network} (dB)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_rows(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- command ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--photos",
        nargs="+",
        default=None,
        help="photo sets and indices, e.g. div2k_test:0-7 kodak:1-4 (default: "
        "div2k_test:0-7; with --tune div2k_train:0-1), or image files",
    )
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--evals", type=int, default=12, help="scores per run")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in pixels")
    parser.add_argument("--slice", type=float, default=5.0, help="seconds per turn")
    parser.add_argument("--streams", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--lrs", type=Path, default=None, help="a lrs.json written by --tune")
    parser.add_argument("--tune", action="store_true", help="choose the learning rates")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument(
        "--summarise", type=Path, default=None, help="only summarise an existing runs.csv"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.photos is None:
        args.photos = ["div2k_train:0-1"] if args.tune else ["div2k_test:0-7"]
    if args.out is None:
        args.out = Path("bench_out") / ("train_tune" if args.tune else "train")
    for name in ("budget", "crop", "evals", "streams"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    return args


def photo_files(args: argparse.Namespace) -> dict[str, Path]:
    folder = args.out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for spec in args.photos:
        if Path(spec).is_file():
            files[Path(spec).stem] = Path(spec)
            continue
        for set_name, index in parse_photos(spec):
            files[f"{set_name}_{index:02d}"] = crop_photo(set_name, index, args.crop, folder)
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summarise is not None:
        rows = read_rows(args.summarise)
        print(summarise(rows, args.budget))
        return 0
    try:
        photos = photo_files(args)
    except (FileNotFoundError, ValueError) as exc:
        from nuir._cli import input_error

        return input_error(exc)
    lrs = json.loads(args.lrs.read_text()) if args.lrs else {}
    threads = 1 if args.streams > 1 else torch.get_num_threads()
    header = (
        f"# training benchmark: {args.budget:g} s per run, {len(photos)} photos "
        f"({args.crop} x {args.crop} centre crops), seeds {args.seeds}, {args.streams} "
        f"stream(s) of {threads} thread(s), {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}"
    )
    print(header, flush=True)
    grid = args.lr_grid if args.tune else [None]
    tasks = []
    for lr in grid:
        for network in args.networks:
            for name, photo in photos.items():
                for seed in args.seeds:
                    tasks.append(
                        {
                            "photo": str(photo),
                            "photo_name": name if lr is None else f"{name}@lr={lr:g}",
                            "network": network,
                            "methods": args.methods,
                            "seed": seed,
                            "lrs": lrs
                            if lr is None
                            else {f"{network}/{m}": lr for m in args.methods},
                            "budget": args.budget,
                            "evals": args.evals,
                            "slice": args.slice,
                            "threads": threads,
                        }
                    )
    rows = run_tasks(tasks, args.streams, print)
    write_rows(rows, args.out / "runs.csv")
    if args.tune:
        chosen = choose_lrs(rows, args.lr_grid)
        (args.out / "lrs.json").write_text(json.dumps(chosen, indent=1))
        print(json.dumps(chosen, indent=1))
        print(f"wrote {args.out / 'lrs.json'}")
        return 0
    summary = header + "\n" + summarise(rows, args.budget)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    plot(rows, args.out / "curves.png", f"{args.budget:g} s per run, {len(photos)} photos")
    print(f"\nwrote {args.out / 'runs.csv'}, {args.out / 'summary.md'}, {args.out / 'curves.png'}")
    return 0


def choose_lrs(rows: list[dict], grid: list[float]) -> dict[str, float]:
    """For every network/method, the learning rate of the best mean final PSNR."""
    finals = final_psnr(rows)
    scores: dict[str, dict[float, list[float]]] = {}
    for (photo, network, method, _), psnr in finals.items():
        lr = float(photo.rsplit("@lr=", 1)[1])
        scores.setdefault(f"{network}/{method}", {}).setdefault(lr, []).append(psnr)
    return {
        key: max(by_lr, key=lambda lr: statistics.mean(by_lr[lr])) for key, by_lr in scores.items()
    }


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
