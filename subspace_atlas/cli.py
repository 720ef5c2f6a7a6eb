"""``subspace-atlas``: one subcommand per registered analysis, plus ``demo``, ``scan``, ``report`` and ``info``.

Analysis flags are generated from each spec's ``params`` dataclass (name, type, default, help) and its kind
(``--base`` for a paired analysis, ``--start`` for a run, ``--task``/``--model`` for a probe), so registering
an analysis adds its subcommand. Bad input ends in one ``subspace-atlas: error: …`` line
and exit code 2; whatever was already stored stays. Building the parser, ``info`` and a rerun whose
jobs are all stored import no torch: runners and the ``ComputeContext`` (``context.resolve``: device, batch
bytes, cache, once per command) come in only when there is work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from subspace_atlas import analysis
from subspace_atlas.errors import AtlasError
from subspace_atlas.options import check_device_spec
from subspace_atlas.specs import Analysis, PairedAnalysis, ProbeAnalysis, RunAnalysis, load

if TYPE_CHECKING:
    from subspace_atlas.jobs import Outcome
    from subspace_atlas.planning import Job
    from subspace_atlas.store import Store

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
        text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help texts
        if isinstance(f.default, bool):  # --rank / --no-rank
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", default=f.default,
                               action=argparse.BooleanOptionalAction, help=text)
            continue
        if isinstance(f.default, tuple):  # one value or several
            kind, shown = (type(f.default[0]) if f.default else str), " ".join(map(str, f.default)) or "none"
            extra["nargs"] = "+"
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", type=kind,
                           default=f.default, help=f"{text} (default: {shown})", **extra)


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
    for spec in analysis.SPECS.values():
        if isinstance(spec, ProbeAnalysis):
            _add_probe(sub, spec)
        else:
            _add_analysis(sub, spec)
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
    scan = sub.add_parser("scan", help="find every checkpoint, run and adapter under a folder; run every analysis",
                          description="Spectra of every checkpoint, overlap per run, intruders and angles for "
                                      "PEFT adapters against their recorded base, and whatever atlas-scan.json "
                                      "adds (see the README); jobs the store holds are skipped.")
    scan.add_argument("folder")
    scan.add_argument("--analyses", nargs="+", default=None, metavar="NAME",
                      help=f"only these ({' '.join(spec.name for spec in analysis.batch_specs())}; default: all "
                           f"but the opt-in {' '.join(s.name for s in analysis.batch_specs() if s.opt_in) or '—'})")
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
    reported = " ".join(spec.name for spec in analysis.SPECS.values() if spec.report)
    report.add_argument("--page", nargs="+", default=None, metavar="PAGE",
                        help=f"only these pages: overview {reported} (default: every page with results)")
    report.add_argument("-o", "--output", default="atlas-report.html", help="the HTML file to write")
    report.set_defaults(handler=_run_report)
    _store_command(sub, "info", _run_info, "what a store holds: analyses, jobs, checkpoints")
    _store_command(sub, "compact", _run_compact, "merge a store's many small job files into few (readers never notice)",
                   "Merges the per-job Parquet parts of every analysis into few files, so a sweep of 1,000 jobs reads "
                   "like one. Safe while others read the store and if killed at any point; nothing is lost or "
                   "recomputed.")
    verify = _store_command(sub, "verify", _run_verify, "find every store file that does not read back; --repair",
                            "Reads every manifest and every table file its jobs name. With --repair, removes the "
                            "broken jobs (a plain rerun then computes them again) and what killed writers left "
                            "behind (over an hour old).")
    verify.add_argument("--repair", action="store_true", help="remove broken jobs and leftovers")
    verify.add_argument("--quick", action="store_true", help="check files' footers only, not every page")
    return parser


def _add_analysis(sub, spec: Analysis) -> None:
    """The subcommand of an analysis over checkpoints: its inputs by kind, the common flags, its params."""
    paired = isinstance(spec, PairedAnalysis)
    p = sub.add_parser(spec.command, help=spec.description, description=spec.description)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint file or folder, or a run folder of checkpoints"
                        + (" (fine-tunes: full state dicts or PEFT LoRA adapter folders)" if paired else ""))
    if paired:
        p.add_argument("--base", required=True, metavar="CKPT", help="the pretrained checkpoint they start from")
    if isinstance(spec, RunAnalysis):
        p.add_argument("--start", metavar="CKPT",
                       help="the checkpoint the run started from (e.g. the pretrained base), put first at step 0")
    if paired and spec.cross_tables:
        p.add_argument("--no-overlap", action="store_true",
                       help=f"skip the {', '.join(spec.cross_tables)} table(s) comparing every two checkpoints")
    _add_common(p)
    _add_params(p, spec.params)
    p.set_defaults(handler=_run_analysis, analysis=spec.name)


def _add_probe(sub, spec: ProbeAnalysis) -> None:
    """The subcommand of a probe: ``--task``, ``--model``, several values for each ``sweep`` field, its params."""
    p = sub.add_parser(spec.command, help=spec.description, description=spec.description)
    p.add_argument("--model", metavar="[NAME=]PATH", help="a local HF model folder (config, weights, tokenizer), "
                                                          f"for --task {' or '.join(spec.model_tasks)}")
    if spec.tasks:
        p.add_argument("--task", choices=spec.tasks, default=spec.tasks[0], help=f"default: {spec.tasks[0]}")
    fields = {f.name: f for f in dataclasses.fields(spec.params)}
    for name in spec.sweep:
        f = fields[name]
        p.add_argument(f"--{name.replace('_', '-')}", nargs="+", type=type(f.default), default=[f.default],
                       choices=f.metadata.get("choices"), help=f"{f.metadata.get('help', '')}; one or more "
                                                               f"(default: {f.default})".replace("%", "%%"))
    p.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true")
    _add_params(p, spec.params, skip=spec.sweep)
    p.set_defaults(handler=_run_probe, analysis=spec.name)


def _store_command(sub, name: str, handler, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that works on a store alone (``--store``)."""
    parser = sub.add_parser(name, help=summary, description=description or summary)
    parser.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    parser.set_defaults(handler=handler)
    return parser


def _run_analysis(args: argparse.Namespace) -> int:
    from subspace_atlas.checkpoints import open_checkpoints, open_one
    from subspace_atlas.planning import pending, plan
    from subspace_atlas.store import Store

    spec = analysis.SPECS[args.analysis]
    try:
        params = spec.params(**_param_values(args, spec.params))
    except ValueError as err:
        raise AtlasError(f"{spec.name}: {err}") from err
    check_device_spec(args.device)
    checkpoints = [c for arg in args.checkpoints for c in open_checkpoints(*_named(arg))]
    base = open_one(*_named(args.base), flag="--base") if getattr(args, "base", None) else None
    start = open_one(*_named(args.start), flag="--start") if getattr(args, "start", None) else None
    planned = plan(spec, checkpoints, params, args.tensors, base=base,
                   cross=not getattr(args, "no_overlap", False), start=start)
    store = Store(args.store)
    work = pending(planned, store, args.force)
    if work:
        store.ensure_writable()  # a read-only, full or unreachable store fails now, not after the compute
    outcome, device = _compute(args, planned, store) if work else (None, None)
    if outcome is None or not outcome.computed:
        print(f"{spec.name}: all {len(planned)} job(s) already in {store.root}; computed nothing")
    else:
        print(f"{spec.name}: computed {len(outcome.computed)} job(s), {outcome.matrices} matrices "
              f"in {outcome.seconds:.2f} s on {device}; {len(outcome.skipped)} already stored → {store.root}")
    return 0


def _compute(args: argparse.Namespace, planned: list[Job], store: Store) -> tuple[Outcome, str]:
    """Run a plan that has work (the runners and torch load here): its ``Outcome`` and where it ran."""
    batch = None if args.batch_mb is None else args.batch_mb << 20
    if args.executor == "ray":
        from subspace_atlas import executors

        return executors.run([planned], store, args.device, args.address, batch, force=args.force)
    from subspace_atlas import jobs
    from subspace_atlas.context import resolve

    context = resolve(args.device, batch)
    return jobs.run(planned, store, context, force=args.force), context.device


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
    from subspace_atlas import scan
    from subspace_atlas.planning import pending
    from subspace_atlas.store import Store

    store = Store(args.store)
    found = scan.plan(args.folder, tuple(args.analyses) if args.analyses else None)
    groups, failed = found.groups, list(found.failed)
    if not groups:
        print(f"scan: nothing to analyse under {args.folder}")
        return scan.report(found.skipped, failed)
    for line in scan.describe(groups, store):
        print(("plan: " if args.dry_run else "") + line)
    if args.dry_run:
        return scan.report(found.skipped, failed)
    if any(pending(planned, store, args.force) for _, planned in groups):
        store.ensure_writable()
    computed = skipped = 0
    if args.executor == "ray":  # every group's tasks at once: the cluster is never left waiting on one group
        from subspace_atlas import executors

        outcome, _ = executors.run([planned for _, planned in groups], store, args.device, args.address,
                                   force=args.force, keep_going=True)
        computed, skipped = len(outcome.computed), len(outcome.skipped)
        failed += outcome.failed
    elif any(pending(planned, store, args.force) for _, planned in groups):
        from subspace_atlas import jobs
        from subspace_atlas.context import resolve

        context = resolve(args.device)
        for k, (what, planned) in enumerate(groups, 1):
            print(f"[{k}/{len(groups)}] {what}", file=sys.stderr)
            outcome = jobs.run(planned, store, context, force=args.force, keep_going=True)
            computed, skipped = computed + len(outcome.computed), skipped + len(outcome.skipped)
            failed += outcome.failed
    else:
        check_device_spec(args.device)
        skipped = sum(len(planned) for _, planned in groups)
    print(f"scan: computed {computed} job(s), {skipped} already stored → {store.root}")
    return scan.report(found.skipped, failed)


def _run_report(args: argparse.Namespace) -> int:
    from subspace_atlas import report
    from subspace_atlas.store import Store, atomic_write

    page = report.store_report(Store(args.store), args.page)
    target = Path(args.output)
    atomic_write(target, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    figures = page.count('class="plotly-graph-div"')
    print(f"report: {target} ({len(page.encode()) / 1e6:.1f} MB, {figures} figures)")
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    from subspace_atlas.context import resolve
    from subspace_atlas.store import Store

    spec = analysis.SPECS[args.analysis]
    task = getattr(args, "task", "")
    fixed = _param_values(args, spec.params, skip=spec.sweep)
    needs_model = task in spec.model_tasks
    if needs_model and not args.model:
        raise AtlasError(f"{spec.command} --task {task} needs --model PATH (a local HF model folder)")
    path, name = _named(args.model) if needs_model else (None, None)
    computed, skipped = load(spec.compute)(Store(args.store), task, path, *(getattr(args, n) for n in spec.sweep),
                                           fixed, resolve(args.device), force=args.force, name=name)
    print(f"{spec.command}: computed {computed} job(s), {skipped} already stored → {args.store}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from subspace_atlas.store import Store

    store = Store(args.store)
    catalog = store.catalog()
    if not catalog:
        print(f"{store.root}: empty store")
    by_analysis: dict[str, list] = {}
    for manifest in catalog:
        by_analysis.setdefault(manifest.analysis, []).append(manifest)
    for name, manifests in sorted(by_analysis.items()):
        checkpoints = sorted({str(m.content.get("inputs", {}).get("checkpoint")) for m in manifests})
        files = {(t, m.file(t)) for m in manifests for t in m.content.get("tables", {})}
        shown = ", ".join(checkpoints[:8]) + (f" and {len(checkpoints) - 8} more" if len(checkpoints) > 8 else "")
        print(f"{name}: {len(manifests)} job(s) over {len(checkpoints)} checkpoint(s), {len(files)} file(s): {shown}")
    for path, why in sorted(store.unreadable.items()):
        print(f"unreadable: {path}: {why}")
    return 1 if store.unreadable else 0


def _run_compact(args: argparse.Namespace) -> int:
    from subspace_atlas import compaction
    from subspace_atlas.store import Store

    store = Store(args.store)
    if not store.exists():
        raise AtlasError(f"{store.root}: no such store")
    done = compaction.compact(store, log=lambda line: print(line, file=sys.stderr))
    print(f"compact: {done.jobs} job(s) merged; {done.files_before} → {done.files_after} file(s)"
          + (f"; {done.orphans_removed} leftover merged file(s) removed" if done.orphans_removed else "")
          + f" in {store.root}")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from subspace_atlas.store import Store
    from subspace_atlas.verify import verify

    store = Store(args.store)
    if not store.exists():
        raise AtlasError(f"{store.root}: no such store")
    found = verify(store, repair=args.repair, deep=not args.quick)
    for path, why in sorted(found.broken.items()):
        print(f"{'removed' if args.repair else 'broken'}: {store.relative(path)}: {why}")
    for path in found.leftovers:
        print(f"{'removed' if args.repair else 'leftover'}: {store.relative(path)}")
    jobs = len(set(found.broken_jobs))
    print(f"verify: {found.files} file(s) read back; {len(found.broken)} broken, {jobs} job(s) affected, "
          f"{len(found.leftovers)} leftover(s)" + ("; repaired: rerun the same commands to recompute"
                                                   if args.repair and (found.broken or jobs) else ""))
    return 0 if args.repair or not (found.broken or found.leftovers) else 1


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
