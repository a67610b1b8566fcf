"""Objective benchmark: the alternatives behind the main job's objective, at equal steps.

    python -m models.bench_objectives --steps 2000

Each variant is the main job (configs/default.yaml) with a few options changed, trained for the
same number of steps on the same photo with the same seed. Reported: the network's PSNR at every
pixel (the implicit image), the PSNR of the point set's reconstruction, and, when the data is the
bundled 256 x 256 astronaut, the network rendered densely at 512 x 512 against scikit-image's
512 x 512 original (super-resolution: what the network holds between pixels). Wall time is not
compared here (``python -m models.bench_train`` does that, at equal time).
"""

from __future__ import annotations

import argparse
import time

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from models.bench_train import CONFIG
from models.checkpoint import Trained
from models.cli import fit_steps
from models.data import DEFAULT_IMAGE
from models.render import renderer_for
from nuir.image_files import load_image, skimage_photo_path
from nuir.renderers import render

STATIC = [
    "--model.sampler.n_points=16384",
    "--model.sampler.max_points=null",
    "--model.sampler.adaptation.times=0",
]
TRAINED = ["--model.reconstruction.weight=1", "--model.reconstruction.every=1"]
VARIANTS = {
    "implicit (the main job)": [],
    "static grid of 16384 points (no adaptation)": STATIC,
    "samples at the strata's centres (no jitter)": ["--model.sampler.jitter=0"],
    "reconstruction every step, trains positions and sigma": TRAINED,
    "... and the samples drawn from the learned Gaussians": [
        *TRAINED,
        "--model.sampler.sample_from=gaussians",
    ],
    "... and positions learned 10x faster (lr 1e-2)": [
        *TRAINED,
        "--model.sampler.sample_from=gaussians",
        "--model.optimisation.lr_points=0.01",
    ],
    "reconstruction gradient into the network x0.1": [
        *TRAINED,
        "--model.reconstruction.value_gradient=0.1",
    ],
    "reconstruction objective": [
        "--model.objective=reconstruction",
        "--model.optimisation.lr_points=0.01",
        *STATIC,
    ],
    "uniform random pixels (16384)": [
        "--model.sampler=models.sampling.UniformRandom",
        "--model.sampler.count=16384",
        "--model.reconstruction.weight=0",
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bench_objectives", description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--override", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)
    original = load_image(skimage_photo_path("astronaut"))
    print(f"# {args.steps} steps per variant, seed 0")
    print("| variant | network PSNR | reconstruction PSNR | network at 2x vs original | s |")
    print("|---|---|---|---|---|")
    for name in args.variants:
        started = time.perf_counter()
        system, data = fit_steps(CONFIG, [*VARIANTS[name], *args.override], args.steps)
        metrics = system.image_metrics(system.target)
        superres = "-"
        if data.path == DEFAULT_IMAGE:
            with torch.no_grad():
                trained = Trained(system.network, system.size)
                dense = render(renderer_for(trained, (512, 512), "dense"), (512, 512)).clamp(0, 1)
            superres = f"{float(peak_signal_noise_ratio(dense, original, data_range=1.0)):.2f} dB"
        reconstruction = metrics.get("psnr_reconstruction")
        print(
            f"| {name} | {metrics['psnr_network']:.2f} dB | "
            + ("-" if reconstruction is None else f"{reconstruction:.2f} dB")
            + f" | {superres} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    from nuir._cli import run_command

    raise SystemExit(run_command(main))
