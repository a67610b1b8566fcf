"""Train an implicit image: ``python train.py fit --config configs/default.yaml``."""

from pytorch_lightning.cli import LightningCLI

from models.data import ImageDataModule
from models.system import ImplicitImageSystem


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(
        ImplicitImageSystem, ImageDataModule, save_config_kwargs={"overwrite": True}, args=args
    )


if __name__ == "__main__":
    main()
