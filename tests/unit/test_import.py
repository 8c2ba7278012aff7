"""The core library imports without Prefect or Ray (ARCHITECTURE principle 1)."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import synpref_core
for mod in pkgutil.walk_packages(synpref_core.__path__, "synpref_core."):
    importlib.import_module(mod.name)
heavy = sorted(m for m in ("prefect", "ray", "mlflow") if m in sys.modules)
print(",".join(heavy))
"""


def test_core_imports_without_prefect_or_ray():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
