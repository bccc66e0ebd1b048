"""Test scripts run under Triton's CPU interpreter, so that CI without a GPU still runs the kernels.

The interpreter has to be switched on (``TRITON_INTERPRET=1``) before Triton is imported, hence a fresh Python
process per script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_PRELUDE = '''
def rel(a, b):
    """Relative error of ``a`` against ``b`` in float64 (Frobenius norms)."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
'''


def run_in_interpreter(script: str, timeout: int = 600, **env: str) -> None:
    """Run ``script`` (its asserts are the test; ``rel`` is defined for it) in a new Python process with the
    interpreter on and ``env`` set. It passes when the process exits 0 with "ok" as the last line it prints."""
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(script)], capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1", **env), timeout=timeout)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]
