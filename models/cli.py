"""The command line of training (``train.py``), and building a system from a config.

LightningCLI as it comes, with one convention added: a ``ModelCheckpoint`` without a ``dirpath``
writes into ``<logger save_dir>/<logger name>/checkpoints``, so every run name keeps its own
checkpoints and ``--ckpt_path last`` resumes the run of that name.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from models.data import ImageDataModule
from models.system import ImplicitImageSystem


class ImplicitImageCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(ImplicitImageSystem, ImageDataModule, args=args, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.trainer.logger
        save_dir = getattr(getattr(logger, "init_args", None), "save_dir", None)
        if not save_dir:
            return
        run_dir = Path(save_dir) / (logger.init_args.name or "")
        for callback in config.trainer.callbacks or []:
            init_args = getattr(callback, "init_args", None)
            if callback.class_path.endswith(".ModelCheckpoint") and init_args.dirpath is None:
                init_args.dirpath = str(run_dir / "checkpoints")


def fit_steps(config: Path | str, overrides: list[str], steps: int):
    """The system and data of a config, trained for ``steps`` steps without logging,
    checkpoints or validation: (system in eval mode, data)."""
    import pytorch_lightning as pl

    system, data = build(config, overrides)
    system.show_summary = False
    pl.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(system, datamodule=data)
    return system.eval(), data


def build(config: Path | str, overrides: list[str]) -> tuple[ImplicitImageSystem, ImageDataModule]:
    """The system and data of a config plus overrides, built as ``train.py`` builds them."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI must read args, not the caller's
    try:
        cli = ImplicitImageCLI(
            args=["--config", str(config), *overrides], run=False, save_config_callback=None
        )
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule
