"""``subspace-atlas``: one subcommand per registered analysis, plus ``demo`` and ``info``.

Analysis flags are generated from each module's ``Params`` dataclass (name, type, default, help),
so adding an analysis adds its subcommand. Bad input ends in one ``subspace-atlas: error: …`` line
and exit code 2; whatever was already stored stays.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from subspace_atlas import analysis
from subspace_atlas.errors import AtlasError

DEFAULT_STORE = os.environ.get("SUBSPACE_ATLAS_STORE", "atlas-store")
STORE_HELP = ("result store: a folder, or an fsspec URL such as s3://bucket/prefix, gs://… "
              "(default: $SUBSPACE_ATLAS_STORE or ./atlas-store)")


def _add_params(parser: argparse.ArgumentParser, params_cls: type, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("analysis parameters (part of the cache key)")
    for f in dataclasses.fields(params_cls):
        if f.name in skip:
            continue
        kind = type(f.default)
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        shown = f.default
        if isinstance(f.default, bool):  # --rank / --no-rank
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", default=f.default,
                               action=argparse.BooleanOptionalAction, help=f.metadata.get("help", ""))
            continue
        if isinstance(f.default, tuple):  # one value or several
            kind, shown = (type(f.default[0]) if f.default else str), " ".join(map(str, f.default)) or "none"
            extra["nargs"] = "+"
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", type=kind,
                           default=f.default, help=f"{f.metadata.get('help', '')} (default: {shown})",
                           **extra)


def _param_values(args: argparse.Namespace, params_cls: type, skip: tuple[str, ...] = ()) -> dict:
    """The ``Params`` fields as ``_add_params`` parsed them (lists of several values back to tuples)."""
    values = {f.name: getattr(args, f"param_{f.name}") for f in dataclasses.fields(params_cls) if f.name not in skip}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--tensors", default="", metavar="REGEX",
                        help="only tensors whose name matches this regular expression")
    parser.add_argument("--batch-mb", type=int, default=None,
                        help="MB of same-shaped matrices decomposed together (default: 1024 on GPU, 0 on CPU)")
    parser.add_argument("--force", action="store_true", help="recompute even what the store holds")
    _add_executor(parser)


def _add_executor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: this process; ray: one Ray task per job (per base for paired analyses), "
                             "on the cluster at --address or a local one")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --executor ray: a running Ray cluster (auto, HOST:PORT or ray://HOST:10001; "
                             "default: $RAY_ADDRESS, else a local cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subspace-atlas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in analysis.MODULES:
        module = analysis.get(name)
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                       help="checkpoint file or folder, or a run folder of checkpoints"
                            + (" (fine-tunes: full state dicts or PEFT LoRA adapter folders)"
                               if getattr(module, "PAIRED", False) else ""))
        if getattr(module, "PAIRED", False):
            p.add_argument("--base", required=True, metavar="CKPT", help="the pretrained checkpoint they start from")
        if getattr(module, "RUN", False):
            p.add_argument("--start", metavar="CKPT",
                           help="the checkpoint the run started from (e.g. the pretrained base), put first at step 0")
        if getattr(module, "CROSS_TABLES", ()):
            p.add_argument("--no-overlap", action="store_true",
                           help=f"skip the {', '.join(module.CROSS_TABLES)} table(s) comparing every two checkpoints")
        _add_common(p)
        _add_params(p, module.Params)
        p.set_defaults(handler=_run_analysis, analysis=name)
    demo = sub.add_parser("demo", help="build the demo zoo, then every analysis over it into the demo store")
    demo.add_argument("--store", default=None, help="where to write (default: data/demo-store)")
    demo.add_argument("--zoo", default=None, help="where the zoo's runs go (default: data/zoo, git-ignored)")
    demo.add_argument("--scale", choices=["full", "mini"], default="full",
                      help="mini: the same recipes with a few steps, for a quick look")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(handler=_run_demo)
    zoo = sub.add_parser("zoo", help="build only the demo zoo: real fine-tuning and pretraining runs")
    zoo.add_argument("root", nargs="?", default="data/zoo", help="folder to build into (default: data/zoo)")
    zoo.add_argument("--scale", choices=["full", "mini"], default="full")
    zoo.add_argument("--seed", type=int, default=0)
    zoo.add_argument("--only", nargs="+", metavar="RUN", help="build only these runs")
    zoo.add_argument("--threads", type=int, default=None, help="torch CPU threads while training (default 1)")
    zoo.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    zoo.set_defaults(handler=_run_zoo)
    patch = sub.add_parser("patch", help="activation patching along a subspace: is it real or an illusion?",
                           description="Find a direction at a site (DAS, difference of means, probe, gradient), "
                                       "patch it and its parts inside / outside what reads the site downstream, "
                                       "and judge it faithful, illusory or inconclusive.")
    patch.add_argument("--model", metavar="[NAME=]PATH",
                       help="a local HF causal-LM folder (config, weights, tokenizer); not for --task toy")
    patch.add_argument("--task", choices=["ioi", "toy"], default="ioi",
                       help="ioi: paired IOI prompts; toy: the distilled illusion example (default: ioi)")
    patch.add_argument("--site", nargs="+", default=["mlp_hidden"], choices=["mlp_hidden", "resid_post"])
    patch.add_argument("--layer", nargs="+", type=int, default=[0], help="one or more layers")
    patch.add_argument("--method", nargs="+", default=["das"],
                       choices=["das", "mean_diff", "probe", "gradient", "planted_faithful", "planted_illusory"],
                       help="one or more; planted_* only with --task toy")
    patch.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    patch.add_argument("--device", default="auto")
    patch.add_argument("--force", action="store_true")
    from subspace_atlas.probes import patching as _patching  # noqa: PLC0415 (the Params fields become flags)

    _add_params(patch, _patching.Params, skip=("site", "layer", "method"))
    patch.set_defaults(handler=_run_patch)
    scan = sub.add_parser("scan", help="find every checkpoint, run and adapter under a folder; run every analysis",
                          description="Spectra of every checkpoint, overlap per run, intruders and angles for "
                                      "PEFT adapters against their recorded base, and whatever atlas-scan.json "
                                      "adds (see the README); jobs the store holds are skipped.")
    scan.add_argument("folder")
    scan.add_argument("--analyses", nargs="+", default=None, metavar="NAME",
                      help="only these (spectra overlap intruders sparsity angles; default: all)")
    scan.add_argument("--dry-run", action="store_true", help="print the plan and what the store holds; compute nothing")
    scan.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    scan.add_argument("--device", default="auto")
    scan.add_argument("--force", action="store_true")
    _add_executor(scan)
    scan.set_defaults(handler=_run_scan)
    report = sub.add_parser("report", help="a self-contained HTML report of a store (plotly.js inlined once)",
                            description="The store's main figures at the app's default choices, one file that "
                                        "opens offline in any browser. Needs the `app` extra (plotly).")
    report.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    report.add_argument("--page", nargs="+", default=None, metavar="PAGE",
                        help="only these pages: overview spectra intruders sparsity angles overlap patching "
                             "(default: every page with results)")
    report.add_argument("-o", "--output", default="atlas-report.html", help="the HTML file to write")
    report.set_defaults(handler=_run_report)
    info = sub.add_parser("info", help="what a store holds: analyses, jobs, checkpoints")
    info.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    info.set_defaults(handler=_run_info)
    return parser


def _run_analysis(args: argparse.Namespace) -> int:
    from subspace_atlas import jobs, linalg
    from subspace_atlas.checkpoints import open_checkpoints, open_one
    from subspace_atlas.store import Store

    module = analysis.get(args.analysis)
    try:
        params = module.Params(**_param_values(args, module.Params))
    except ValueError as err:
        raise AtlasError(f"{module.NAME}: {err}") from err
    device = linalg.resolve_device(args.device) if args.executor == "local" else None
    checkpoints = [c for arg in args.checkpoints for c in open_checkpoints(*_named(arg))]
    base = open_one(*_named(args.base), flag="--base") if getattr(args, "base", None) else None
    start = open_one(*_named(args.start), flag="--start") if getattr(args, "start", None) else None
    planned = jobs.plan(module, checkpoints, params, args.tensors, base=base,
                        cross=not getattr(args, "no_overlap", False), start=start)
    store = Store(args.store)
    store.ensure_writable()
    batch = None if args.batch_mb is None else args.batch_mb << 20
    if args.executor == "ray":
        from subspace_atlas import executors

        outcome, device = executors.run([planned], store, args.device, args.address, batch, force=args.force)
    else:
        outcome = jobs.run(planned, store, device, batch, force=args.force)
    if not outcome.computed:
        print(f"{module.NAME}: all {len(planned)} job(s) already in {store.root}; computed nothing")
    else:
        print(f"{module.NAME}: computed {len(outcome.computed)} job(s), {outcome.matrices} matrices "
              f"in {outcome.seconds:.2f} s on {device}; {len(outcome.skipped)} already stored → {store.root}")
    return 0


def _named(arg: str) -> tuple[str, str | None]:
    """``NAME=PATH`` names a checkpoint; a plain path (even one containing '=') keeps its own name."""
    name, sep, path = arg.partition("=")
    if sep and name and path and not Path(arg).exists():
        return path, name
    return arg, None


def _run_demo(args: argparse.Namespace) -> int:
    from subspace_atlas import demo

    return demo.build(args.store, args.device, args.zoo, args.scale)


def _run_zoo(args: argparse.Namespace) -> int:
    from subspace_atlas import zoo

    try:
        manifest = zoo.build(args.root, scale=args.scale, progress=not args.quiet, seed=args.seed, only=args.only,
                             threads=args.threads)
    except ValueError as err:
        raise AtlasError(str(err)) from err
    print(f"zoo: {len(manifest['runs'])} run(s); manifest: {Path(args.root) / zoo.MANIFEST}")
    return 0


def _run_scan(args: argparse.Namespace) -> int:
    from subspace_atlas import jobs, linalg, scan
    from subspace_atlas.store import Store

    store = Store(args.store)
    groups = scan.plan(args.folder, tuple(args.analyses) if args.analyses else scan.ALL)
    if not groups:
        print(f"scan: nothing to analyse under {args.folder}")
        return 0
    for line in scan.describe(groups, store):
        print(("plan: " if args.dry_run else "") + line)
    if args.dry_run:
        return 0
    computed = skipped = 0
    if args.executor == "ray":  # every group's tasks at once: the cluster is never left waiting on one group
        from subspace_atlas import executors

        outcome, _ = executors.run([planned for _, planned in groups], store, args.device, args.address,
                                   force=args.force)
        computed, skipped = len(outcome.computed), len(outcome.skipped)
    else:
        device = linalg.resolve_device(args.device)
        for k, (what, planned) in enumerate(groups, 1):
            print(f"[{k}/{len(groups)}] {what}", file=sys.stderr)
            outcome = jobs.run(planned, store, device, force=args.force)
            computed, skipped = computed + len(outcome.computed), skipped + len(outcome.skipped)
    print(f"scan: computed {computed} job(s), {skipped} already stored → {store.root}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from subspace_atlas import report
    from subspace_atlas.store import Store, atomic_write

    page = report.store_report(Store(args.store), args.page)
    target = Path(args.output)
    atomic_write(target, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    figures = page.count('class="plotly-graph-div"')
    print(f"report: {target} ({len(page.encode()) / 1e6:.1f} MB, {figures} figures)")
    return 0


def _run_patch(args: argparse.Namespace) -> int:
    from subspace_atlas import linalg
    from subspace_atlas.probes import patching
    from subspace_atlas.store import Store

    fixed = _param_values(args, patching.Params, skip=("site", "layer", "method"))
    if args.task == "ioi" and not args.model:
        raise AtlasError("patch --task ioi needs --model PATH (a local HF causal-LM folder)")
    path, name = _named(args.model) if args.task == "ioi" else (None, None)
    computed, skipped = patching.run_jobs(Store(args.store), args.task, path, args.site, args.layer, args.method,
                                          fixed, str(linalg.resolve_device(args.device)), force=args.force,
                                          name=name)
    print(f"patch: computed {computed} job(s), {skipped} already stored → {args.store}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from subspace_atlas.store import Store

    store = Store(args.store)
    names = store.analyses()
    if not names:
        print(f"{store.root}: empty store")
        return 0
    for name in names:
        jobs = store.jobs(name)
        checkpoints = sorted({j["checkpoint"] for j in jobs["inputs"]})
        print(f"{name}: {len(jobs)} job(s) over {len(checkpoints)} checkpoint(s): {', '.join(checkpoints)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "address", None) and args.executor != "ray":
        parser.error("--address names a Ray cluster: use it with --executor ray")
    try:
        return args.handler(args)
    except AtlasError as err:
        print(f"subspace-atlas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("subspace-atlas: interrupted; finished jobs are stored, the one in flight is not", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
