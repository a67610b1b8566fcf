"""Train an implicit image: ``python train.py fit --config configs/default.yaml``."""

from models.cli import ImplicitImageCLI


def main(args: list[str] | None = None) -> ImplicitImageCLI:
    return ImplicitImageCLI(args=args)


if __name__ == "__main__":
    main()
