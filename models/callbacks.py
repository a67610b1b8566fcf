"""Lightning callbacks the training system brings along (``configure_callbacks``).

- :class:`ImageLogger`: after each validation, TensorBoard images (target, the network's dense
  image, the point set's reconstruction, the network's error x4, the points over the target) and
  a histogram of sigma.
- :class:`FitSummary`: at the end of ``fit``, the final figures, where the checkpoint and the logs
  are, and the commands to render and to browse the logs.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """[C, H, W] with C in 1..4 -> [3, H, W] for display (alpha dropped, grey repeated)."""
    image = image.detach().float().cpu()
    colour = image[:3] if image.shape[0] >= 3 else image[:1]
    return colour.expand(3, -1, -1).clamp(0, 1)


@torch.no_grad()
def draw_points(image: torch.Tensor, points: torch.Tensor, min_side: int = 512) -> torch.Tensor:
    """The points as red dots over a dimmed, upscaled copy of the image.

    Args:
        image: [C, H, W] in [0, 1].
        points: [N, 2] (x, y) pixel positions on the image (those outside are left out).
        min_side: upscale by an integer factor until the shorter side is at least this.
    Returns:
        [3, H * s, W * s] with s = ceil(min_side / min(H, W)).
    """
    height, width = image.shape[-2:]
    scale = max(1, math.ceil(min_side / min(height, width)))
    canvas = 0.5 * as_rgb(image)  # [3, H, W]
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # [3, Hs, Ws]
    points = points.detach().float().cpu()
    inside = ((points >= -0.5) & (points < points.new_tensor([width, height]) - 0.5)).all(1)
    on_canvas = ((points[inside] + 0.5) * scale - 0.5).round().long()  # [n, 2]
    x = on_canvas[:, 0].clamp(0, width * scale - 1)
    y = on_canvas[:, 1].clamp(0, height * scale - 1)
    red = torch.tensor([1.0, 0.15, 0.15])
    canvas[:, y, x] = red[:, None]
    return canvas


class ImageLogger(Callback):
    """Images and the sigma histogram in TensorBoard after every validation (not the sanity
    check), on the first process only."""

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, system) -> None:
        if trainer.sanity_checking or not isinstance(trainer.logger, TensorBoardLogger):
            return
        images = system.last_validation  # the central window of at most 1024 x 1024
        if not images:
            return
        writer, step = trainer.logger.experiment, int(trainer.global_step)
        target = images["target"]
        writer.add_image("images/target", as_rgb(target), step)
        writer.add_image("images/network", as_rgb(images["network"]), step)
        error = (images["network"] - target).abs().mean(0, keepdim=True)  # [1, h, w]
        writer.add_image("images/network_abs_error_x4", (4 * error).clamp(0, 1), step)
        if "reconstruction" in images:
            writer.add_image("images/reconstruction", as_rgb(images["reconstruction"]), step)
            writer.add_image("images/points", draw_points(target, images["points"]), step)
            writer.add_histogram("sigma", system.sigma().detach().cpu(), step)

    def on_train_start(self, trainer, system) -> None:
        if isinstance(trainer.logger, TensorBoardLogger):
            # Registers the metrics shown in TensorBoard's HParams tab.
            trainer.logger.log_hyperparams(system.hparams, {"hp/psnr": 0.0, "hp/ssim": 0.0})


class FitSummary(Callback):
    """Prints the final figures and the next commands when ``fit`` ends (first process)."""

    @rank_zero_only
    def on_fit_end(self, trainer, system) -> None:
        lines = [f"\nnuir: fit ended after {trainer.global_step} steps."]
        if trainer.datamodule is not None:
            metrics = system.image_metrics(system.target)
            lines.append(
                f"  the network (the implicit image) at every pixel: "
                f"PSNR {float(metrics['psnr_network']):.2f} dB, "
                f"SSIM {float(metrics['ssim_network']):.4f}"
            )
            if "psnr_reconstruction" in metrics:
                lines.append(
                    f"  the reconstruction from its {system.point_set.count} points: "
                    f"PSNR {float(metrics['psnr_reconstruction']):.2f} dB, "
                    f"SSIM {float(metrics['ssim_reconstruction']):.4f}"
                )
        checkpoint = next(
            (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None
        )
        last = None
        if checkpoint is not None and checkpoint.dirpath:
            path = Path(checkpoint.dirpath) / "last.ckpt"
            last = path if path.exists() else checkpoint.best_model_path or None
        if last:
            lines.append(f"  checkpoint: {last}")
            lines.append(
                f"  render it 4x larger:  python -m models.render {shlex.quote(str(last))} "
                "--scale 4 --out render_4x.png"
            )
        if trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"  logs: {trainer.logger.log_dir}")
            root = Path(trainer.logger.log_dir).parent.parent
            lines.append(f"  browse them:  tensorboard --logdir {shlex.quote(str(root))}")
        print("\n".join(lines), flush=True)
