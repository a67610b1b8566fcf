"""The command line of training (``train.py``), and building a system from a config.

LightningCLI as it comes, with two conventions added:

- a ``ModelCheckpoint`` without a ``dirpath`` writes into ``<logger save_dir>/<logger
  name>/checkpoints``, so every run name keeps its own checkpoints and ``--ckpt_path last``
  resumes the run of that name;
- a mistake in the input (``nuir._cli``) ends in one line naming the option: jsonargparse's
  reports (a usage message, then an error spread over lines, nested per class) are condensed to
  the option's key, its class and the innermost messages, and the trainer declares the input
  read when it starts its work, after the model's and the data's set-up.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from jsonargparse import ArgumentError
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningCLI

from models.data import ImageDataModule
from models.system import ImplicitImageSystem
from nuir._cli import input_accepted, reading_input

# Lines of jsonargparse's reports that only give their structure.
_STRUCTURE = re.compile(
    r"(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|"
    r"Expected a <class 'NoneType'>|Given value type: .*|Given value: .*|"
    r"Problem with given class_path '[^']*':)"
)


def one_line_report(message: str, class_keys: dict[str, str] | None = None) -> str:
    """jsonargparse's report of a bad option in one line: ``--key (class): messages``.

    ``class_keys`` maps a class path to the key it was given under, for reports that name the
    class only (those of a class that refused its arguments when built)."""
    keys, classes, messages = [], [], []
    for line in message.splitlines():
        keys += re.findall(r'Parser key "([^"]+)"', line)
        classes += re.findall(r"class_path[= ]'([^']+)'", line)
        line = re.sub(r'Parser key "[^"]+":?', "", line).strip().removeprefix("- ")
        if line and not _STRUCTURE.fullmatch(line) and line not in messages:
            messages.append(line)
    if not keys and classes and class_keys and classes[0] in class_keys:
        keys = [class_keys[classes[0]]]
    where = " ".join(
        part
        for part in ("--" + ".".join(keys) if keys else "", f"({classes[0]})" if classes else "")
        if part
    )
    text = "; ".join(messages)
    return f"{where}: {text}" if where else text


class InputRead(Callback):
    """Declares the command's input read when the trainer starts its work, after the set-up of
    the model and the data: errors from then on keep their traceback (``nuir._cli``)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        input_accepted()

    on_validation_start = on_test_start = on_predict_start = on_fit_start


class ImplicitImageCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # A parse error raises (condensed to one line below) instead of printing a usage message.
        no_exit = {"exit_on_error": False}
        kwargs.setdefault("parser_kwargs", {**no_exit, **{c: no_exit for c in self.subcommands()}})
        super().__init__(ImplicitImageSystem, ImageDataModule, args=args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as exc:
            raise ArgumentError(None, one_line_report(str(exc))) from exc

    def instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        try:
            super().instantiate_classes()
        except MisconfigurationException as exc:  # the trainer's options, e.g. a missing GPU
            trainer = config.get("trainer") or {}
            chosen = ", ".join(
                f"{k} {trainer.get(k)!r}" for k in ("accelerator", "devices", "strategy")
            )
            raise ValueError(f"--trainer ({chosen}): {exc}") from exc
        except (ValueError, TypeError) as exc:
            class_keys = {}
            for key, value in config.items():
                if key.endswith(".class_path"):
                    class_keys.setdefault(value, key.removesuffix(".class_path"))
            line = one_line_report(str(exc), class_keys)
            if type(exc) not in (ValueError, TypeError) or line == str(exc):
                raise
            raise type(exc)(line) from exc

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(InputRead())
        return trainer

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
        with reading_input():
            cli = ImplicitImageCLI(
                args=["--config", str(config), *overrides], run=False, save_config_callback=None
            )
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule
