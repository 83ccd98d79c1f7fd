"""Models from other libraries in udm, and udm models for other libraries (docs/interop.md).

One module per foreign format, one registry of loaders and one of exporters:

* :mod:`.kdiffusion`: the ``model(x, sigma, **cond) -> denoised`` convention of
  k-diffusion and EDM, both ways (Python callables, no files);
* :mod:`.schedulers`: diffusers scheduler configs mapped exactly onto udm
  processes, parameterizations, grids and samplers (or refused);
* :mod:`.diffusers_folder`: diffusers model and pipeline folders as denoisers
  (``LOADERS["diffusers"]``);
* :mod:`.export`: udm runs written as diffusers folders (``EXPORTERS["diffusers"]``).

``diffusers`` itself is an optional extra (``pip install 'udm[diffusers]'``),
imported only when a diffusers network is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InteropError
from ..registry import Registry
from .diffusers_folder import ForeignModel, load_diffusers, recognizes_diffusers
from .export import export_diffusers
from .kdiffusion import from_kdiffusion, to_kdiffusion

#: name -> (recognizes(path) -> bool, load(path, **options) -> ForeignModel)
LOADERS: Registry[tuple[Callable[[Path], bool], Callable[..., ForeignModel]]] = Registry("model format")
LOADERS.register("diffusers", (recognizes_diffusers, load_diffusers))
#: name -> export(run, out, use_ema=...) -> the folder written
EXPORTERS: Registry[Callable[..., Path]] = Registry("export format")
EXPORTERS.register("diffusers", export_diffusers)


def load(path: str | Path, *, format: str | None = None, **options: Any) -> ForeignModel:
    """The foreign model at ``path`` in ``format`` (default: the registered format that recognizes the folder).

    ``options`` go to the format's loader (diffusers: ``scheduler``, ``trust_pickle``, ``dtype``, ``device``).
    """
    path = Path(path)
    if format is None:
        format = next((name for name in LOADERS.names() if LOADERS.get(name)[0](path)), None)
        if format is None:
            what = "does not exist" if not path.exists() else "is in no format udm reads"
            raise InteropError(f"{path} {what}; give a folder in one of these formats: {', '.join(LOADERS.names())}")
    return LOADERS.get(format)[1](path, **options)


__all__ = ["EXPORTERS", "LOADERS", "ForeignModel", "export_diffusers", "from_kdiffusion", "load", "load_diffusers", "to_kdiffusion"]
