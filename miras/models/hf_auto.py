"""Makes transformers' Auto classes know miras without importing transformers (`import miras` calls install()).

AutoConfig learns model_type "miras" (miras.models.hf_config) when transformers loads its configuration auto
classes, and AutoModelForCausalLM learns MirasForCausalLM (miras.models.hf) when it loads its modeling auto classes,
each right after that transformers module has run; a module already loaded registers at once. Nothing is imported
where transformers is not installed or never used, so `import miras` costs no transformers import.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

# transformers module -> the miras module whose import registers miras with it
REGISTRARS = {"transformers.models.auto.configuration_auto": "miras.models.hf_config",
              "transformers.models.auto.modeling_auto": "miras.models.hf"}


def _register(module: str) -> None:
    try:
        importlib.import_module(REGISTRARS[module])
    except Exception as err:  # a registration must never break the import of transformers itself
        warnings.warn(f"miras could not register with {module} ({type(err).__name__}: {err}); "
                      f"import {REGISTRARS[module]} yourself to see why", stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """A meta path finder that lets the other finders find the watched modules and registers after each runs."""

    def find_spec(self, name, path, target=None):
        if name not in REGISTRARS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                run = spec.loader.exec_module

                def exec_then_register(module, run=run):
                    run(module)
                    _register(name)

                spec.loader.exec_module = exec_then_register
                return spec
            if spec is not None:
                return spec
        return None


_FINDER = _AfterImport()


def install() -> None:
    """Registers with the watched transformers modules already imported and watches for the others (idempotent)."""
    for module in REGISTRARS:
        if module in sys.modules:
            _register(module)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


__all__ = ["REGISTRARS", "install"]
