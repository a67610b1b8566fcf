"""Checks an installed (not editable) nuir: run by .ci/run with the python of a fresh venv where
`pip install` put nuir, from a folder outside the checkout, so that the installed package is
imported. Its prebuilt nuir._C must load and serve the op, nothing may be built, and the op must
give the reference's answer.

    python .ci/check_installed.py CHECKOUT
"""

import os
import sys
import tempfile
from pathlib import Path

checkout = Path(sys.argv[1]).resolve()
extensions = Path(tempfile.mkdtemp()) / "torch_extensions"
os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions)  # where a JIT build would go
os.environ["NUIR_BACKEND"] = "compiled"  # a failed load raises instead of using the reference

import torch  # noqa: E402

import nuir  # noqa: E402
from nuir import _backend, reference  # noqa: E402

package = Path(nuir.__file__).resolve().parent
assert checkout not in package.parents, f"imported the checkout, not the install: {package}"
site = package.parent
for top in ("nuir", "models"):  # every module of the checkout is installed
    missing = {p.relative_to(checkout) for p in (checkout / top).rglob("*.py")} - {
        p.relative_to(site) for p in (site / top).rglob("*.py")
    }
    assert not missing, f"not installed (pyproject.toml packages): {sorted(map(str, missing))}"

g = torch.Generator().manual_seed(0)
points = (torch.rand(2, 400, 2, generator=g) * 40).requires_grad_()
values = torch.rand(2, 400, 3, generator=g).requires_grad_()
sigma = torch.full((2, 400), 1.5).requires_grad_()
image = nuir.interpolate(points, values, (40, 48), sigma)
image.square().sum().backward()
got = [image.detach(), points.grad, values.grad, sigma.grad]

leaves = [t.detach().double().requires_grad_() for t in (points, values, sigma)]
want_image = reference.interpolate(*leaves[:2], (40, 48), leaves[2])
want_image.square().sum().backward()
want = [want_image.detach(), *(t.grad for t in leaves)]
for name, a, b in zip(["image", "d points", "d values", "d sigma"], got, want):
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b.float(), rtol=1e-3, atol=1e-4 * scale, msg=name)

assert nuir.backend_name() == "compiled (cpu, prebuilt)", nuir.backend_name()
library = Path(_backend._state["library"])
assert library.parent == package and library.name.startswith("_C."), library
assert not extensions.exists(), f"a JIT build ran: {sorted(extensions.rglob('*'))[:5]}"
print(
    f"installed nuir ok: {library}, {nuir.backend_name()}, CPU kernels {_backend.cpu_isa()} "
    f"(runs here: {' '.join(_backend.cpu_isas())})"
)
