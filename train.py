"""Train an implicit image: ``python train.py fit --config configs/default.yaml``.

A mistake in the input (a path, an option's value) ends in one line and exit status 2; with
``--debug`` or ``NUIR_DEBUG=1``, in its traceback (``nuir._cli``)."""

from models.cli import ImplicitImageCLI
from nuir._cli import reading_input, run_command


def main(args: list[str] | None = None) -> ImplicitImageCLI:
    with reading_input():  # until training starts (models.cli.InputRead)
        return ImplicitImageCLI(args=args)


if __name__ == "__main__":
    raise SystemExit(run_command(main))
