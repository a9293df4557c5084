"""lipcore: Lipschitz-bounded deep networks (sandwich layers and baselines), training and certificates.

`import lipcore` loads nothing else: import the part you use (`lipcore.models`, `lipcore.certify`,
...). The description of experiments, `lipcore.catalog` (with `lipcore.spec`, its public name for
the spec), imports pydantic only, so the API and the client use it without torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
