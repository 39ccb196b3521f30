"""``drwb``: the command line, a thin dispatcher (a face, like the apps).

Subcommands import their layer lazily so that ``drwb --help`` answers instantly. Each handler only
parses arguments, calls one function of ``workbench`` or ``training`` and prints the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import workbench  # noqa: F401  (sets the offline environment first)
from training.cli import add_train_arguments  # flags only: imports nothing heavy

__all__ = ["main"]


def _cmd_prepare(args: argparse.Namespace) -> int:
    from training.prepare import PART_SIZES, prepare

    for part in args.parts or list(PART_SIZES):
        for split in args.splits:
            folder = prepare(Path(args.data), Path(args.out), part, split, args.size, args.workers)
            print(folder)
    return 0


def _cmd_prepare_guides(args: argparse.Namespace) -> int:
    from training.guides import build_guides

    print(build_guides(Path(args.data), Path(args.cache), Path(args.out), args.workers))
    return 0


def _cmd_prepare_teacher(args: argparse.Namespace) -> int:
    from training.guides import build_teacher

    print(build_teacher(Path(args.run), Path(args.cache), Path(args.data), Path(args.out), args.folds))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.cli import run_train

    return run_train(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    if args.labels:
        return _audit(args)
    if args.oof:
        from training.oof import evaluate_oof

        print(json.dumps(evaluate_oof(Path(args.oof), Path(args.data)), indent=None if args.json else 1))
        return 0
    # a card's figures are its fp32 figures: the apps' thresholds and reliability flags are read from them
    if args.write_card and args.precision not in (None, "fp32"):
        raise ValueError(
            "--write-card records the card's own figures, which are fp32; measure other precisions "
            "without it (a card's training.bf16_check holds its bf16 figures)"
        )
    precision = args.precision or ("fp32" if args.write_card else None)
    result = evaluate(
        Path(args.data), args.split, args.task, args.model, profile=args.profile, precision=precision
    )
    if args.write_card:
        from training.evaluate import record_in_card

        record_in_card(result, args.command_line)
    if args.json:
        print(json.dumps(result))
        return 0
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else ("n/a" if value is None else value)
        print(f"{key:<{width}}  {shown}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    """``drwb evaluate --labels``: audit the grader on any labelled folder (exit 2: unusable labels)."""
    from workbench.analysis import Workbench
    from workbench.reports.audit import LabelsError, read_labels, run_audit, write_audit_report
    from workbench.reports.audit.figures import training_overlap_note

    if args.task != "grading":
        print("error: --labels audits grading only (use --task grading)", file=sys.stderr)
        return 2
    try:
        labels = read_labels(Path(args.labels), Path(args.data))
    except (LabelsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bench = Workbench(grader=args.model, segment=False)
    figures, graded, overlays = run_audit(bench, labels)
    out = Path(args.out or (Path(args.report).parent if args.report else "drwb-audit"))
    written = write_audit_report(figures, graded, overlays, out, Path(args.report) if args.report else None)
    if args.json:
        print(json.dumps(figures))
        return 0
    g = figures.get("grading", {})
    counts = [
        f"{figures['n']} images: {figures['n_graded']} graded, {figures['n_ungradeable']} ungradeable, "
        f"{figures['n_unreadable']} unreadable"
    ]
    if labels.unlabelled:
        counts.append(f"{len(labels.unlabelled)} image(s) without a label row")
    if labels.without_image:
        counts.append(f"{len(labels.without_image)} label row(s) without an image, ignored")
    print("; ".join(counts))
    for key in ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc"):
        value, ci = g.get(key), g.get("ci95", {}).get(key)
        shown = "n/a" if value is None else f"{value:.4f}" + (f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        print(f"{key:<16}{shown}")
    if note := training_overlap_note(figures):
        print(f"note: {note}")
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from training.ensemble import build_ensemble

    out = Path(args.out) if args.out else None
    print(
        build_ensemble(
            args.members, args.name, Path(args.data), not args.no_flip, out=out, command=args.command_line
        )
    )
    return 0


def _cmd_selection_check(args: argparse.Namespace) -> int:
    from models.registry import weights_dir
    from training.selection import record_selection, selection_check

    folder = weights_dir()
    result = selection_check(args.members, Path(args.data), folder, args.max_passes, args.mirror)
    if args.write_card:
        print(record_selection(result, args.write_card, folder, args.command_line), file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_provenance(args: argparse.Namespace) -> int:
    from models.registry import weights_dir
    from workbench.io.idrid import IDRiD
    from workbench.provenance import record_trained_files

    dataset = IDRiD(args.data)
    for name in args.models:
        path = Path(args.weights or weights_dir()) / f"{name}.json"
        if not path.is_file():
            print(f"error: no card {path}", file=sys.stderr)
            return 2
        try:
            count = record_trained_files(path, dataset)
        except ValueError as exc:  # not a grader, or a card that does not say what it trained on
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: {count} training files recorded in {path}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from workbench.analysis import Workbench
    from workbench.reports.batch import analyze_files, batch_tally
    from workbench.targets import parse_target

    methods = [m for m in (args.explain or "").split(",") if m]
    target = parse_target(args.target) if args.target else None
    if args.grader:
        from models.registry import shipped_names

        graders = shipped_names("grader")
        if args.grader not in graders:
            known = ", ".join(graders)
            print(f"error: unknown grader {args.grader!r}; shipped graders: {known}", file=sys.stderr)
            return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"error: --out {args.out} is a file; give a folder for the reports", file=sys.stderr)
        return 2
    if args.engine == "ray":
        from workbench.engines.ray_engine import analyze_with_ray

        rows = analyze_with_ray(
            args.images,
            Path(args.out),
            methods,
            target,
            not args.no_scores,
            args.address,
            profile=args.profile,
            grader=args.grader,
        )
    else:
        rows = analyze_files(
            Workbench(profile=args.profile, grader=args.grader),
            args.images,
            Path(args.out),
            methods,
            target,
            score=not args.no_scores,
        )
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            shown = (
                row["error"] or f"grade {row['dr_grade']} DME {row['dme_grade']} referable {row['referable']}"
            )
            print(f"{row['file']}: {shown if str(row['gradeable']) != 'False' else 'not gradeable'}")
        print(batch_tally(rows))
    return 1 if any(row["status"] == "error" for row in rows) else 0


def _cmd_explain_bench(args: argparse.Namespace) -> int:
    from workbench.explain.explain_bench import bench_grader, explain_bench

    if args.write_card and args.grader and Path(args.grader).is_dir():
        print(
            "error: --write-card stores the table in a shipped model's card, not in a training run's folder",
            file=sys.stderr,
        )
        return 2
    predictor = bench_grader(args.grader)
    methods = args.methods.split(",")
    result = explain_bench(predictor, Path(args.data), args.split, methods, args.limit, args.sanity_images)
    if args.write_card:
        from training.evaluate import record_in_card

        record_in_card(
            {**result, "model": result["grader"], "card_key": f"explain_bench_{args.split}"},
            args.command_line,
        )
    if args.json:
        print(json.dumps(result))
        return 0
    keys = ("deletion_auc", "insertion_auc", "pointing_game", "relevance_mass", "relevance_rank", "seconds")
    print(f"{'method':<22}" + "".join(f"{k:>22}" for k in keys) + f"{'random rho':>12}")
    for method, stats in result["methods"].items():
        cells = []
        for key in keys:
            cell = stats.get(key, {})
            cells.append(
                f"{cell['mean']:.3f} +- {cell['ci95']:.3f}" if cell.get("mean") is not None else "n/a"
            )
        rho = stats.get("randomisation_spearman", {}).get("mean")
        print(
            f"{method:<22}"
            + "".join(f"{c:>22}" for c in cells)
            + (f"{rho:>12.2f}" if rho is not None else "")
        )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from workbench.bench import run_benchmarks

    results = run_benchmarks(args.only, Path(args.image) if args.image else None, args.repeats)
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drwb", description="DR Workbench command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="decode, crop and resize an IDRiD folder into a training cache")
    prep.add_argument("--data", required=True, help="IDRiD-layout folder")
    prep.add_argument("--out", default="cache", help="cache folder (default: ./cache)")
    prep.add_argument("--parts", nargs="*", choices=["grading", "localization", "segmentation"])
    prep.add_argument("--splits", nargs="*", default=["train"], choices=["train", "test"])
    prep.add_argument("--size", type=int, default=None, help="crop side in px (default: per part)")
    prep.add_argument("--workers", type=int, default=2)
    prep.set_defaults(handler=_cmd_prepare)

    guides = sub.add_parser(
        "prepare-guides",
        help="lesion guides for attention supervision (ground truth + segmenter pseudo-labels)",
    )
    guides.add_argument("--data", default="../shared/data/idrid-lite", help="IDRiD-layout folder")
    guides.add_argument("--cache", default="cache")
    guides.add_argument("--out", default="cache/guides_512.npz")
    guides.add_argument("--workers", type=int, default=2)
    guides.set_defaults(handler=_cmd_prepare_guides)

    teacher = sub.add_parser("prepare-teacher", help="teacher logits of a --folds run, for distillation")
    teacher.add_argument("--run", required=True, help="the run folder of `drwb train grader --folds`")
    teacher.add_argument("--data", default="../shared/data/idrid-lite", help="IDRiD-layout folder")
    teacher.add_argument("--cache", default="cache")
    teacher.add_argument("--out", default="cache/teacher.npz")
    teacher.add_argument("--folds", type=int, default=5)
    teacher.set_defaults(handler=_cmd_prepare_teacher)

    tr = sub.add_parser("train", help="train a model (grader, segmenter, localizer, disc/fovea refiner)")
    add_train_arguments(tr)
    tr.set_defaults(handler=_cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a shipped model on an IDRiD-layout folder")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", choices=["train", "val", "test"], default="val")
    ev.add_argument(
        "--task", choices=["grading", "segmentation", "localization", "disc", "fovea"], required=True
    )
    ev.add_argument("--model", help="shipped model name (default: best of its family)")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--labels", help="labels CSV for a plain image folder --data (audit; any grader)")
    ev.add_argument("--report", help="with --labels: write the self-contained HTML audit report here")
    ev.add_argument(
        "--out", help="with --labels: folder for audit.json and per_image.csv (default: beside --report)"
    )
    ev.add_argument(
        "--oof", help="score out-of-fold predictions: a `drwb train --folds` run folder or a *.oof.csv file"
    )
    ev.add_argument("--write-card", action="store_true", help="store the metrics in the model's JSON card")
    ev.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="the lesion and landmark networks' precision (auto: bf16 on a CPU with bf16 units; default: "
        "$DRWB_PRECISION, else auto; --write-card measures fp32 only)",
    )
    ev.add_argument(
        "--profile",
        choices=["quality", "fast"],
        default="quality",
        help="segmentation and disc: the fast profile's crop",
    )
    ev.set_defaults(handler=_cmd_evaluate)

    en = sub.add_parser(
        "ensemble", help="combine shipped cross-validated graders into one grader, measured out of fold"
    )
    en.add_argument("members", nargs="+", help="card stems in the weights folder, e.g. grader_lite0")
    en.add_argument("--name", required=True, help="the ensemble's card stem")
    en.add_argument("--data", default="../shared/data/idrid-lite", help="IDRiD-layout folder (labels)")
    en.add_argument("--no-flip", action="store_true", help="members grade the image only, not its mirror")
    en.add_argument("--out", help="write the card here (default: the weights folder)")
    en.set_defaults(handler=_cmd_ensemble)

    sc = sub.add_parser(
        "selection-check",
        help="how optimistic a default grader's OOF figures are for having been chosen on them: nested "
        "cross-validation of choosing the best combination of the given members",
    )
    sc.add_argument("members", nargs="+", help="cross-validated card stems (same folds), e.g. grader_lite0")
    sc.add_argument("--max-passes", type=int, help="only combinations costing at most this many passes")
    sc.add_argument("--mirror", action="store_true", help="also every combination with the mirror view")
    sc.add_argument("--data", default="../shared/data/idrid-lite", help="IDRiD-layout folder (labels)")
    sc.add_argument(
        "--write-card", metavar="STEM", help="store the result in this grader's card (the rule's pick)"
    )
    sc.set_defaults(handler=_cmd_selection_check)

    pv = sub.add_parser(
        "provenance",
        help="record in grader cards the sha256 of the files each trained on (audits flag those files)",
    )
    pv.add_argument("models", nargs="+", help="grader card stems, e.g. grader_lite0_lite2_trio")
    pv.add_argument("--data", default="../shared/data/idrid-lite", help="IDRiD-layout folder it trained on")
    pv.add_argument("--weights", help="the cards' folder (default: the shipped weights)")
    pv.set_defaults(handler=_cmd_provenance)

    an = sub.add_parser("analyze", help="analyze images: report.json, overlays, report.html, summary.csv")
    an.add_argument("images", nargs="+", help="files, folders or glob patterns")
    an.add_argument(
        "--explain", default="", help="comma-separated explainers, e.g. gradcam,integrated_gradients"
    )
    an.add_argument("--target", help="dr:N, referable, dme:N or lesion:CODE (default: predicted DR grade)")
    an.add_argument("--out", default="drwb-reports")
    an.add_argument("--json", action="store_true")
    an.add_argument(
        "--profile",
        choices=["quality", "fast"],
        default="quality",
        help="quality: the best grader (an ensemble) and the best segmenter at its resolution (~10 s a "
        "4288-px photograph on 2 cores); fast: a grader of at most two forward passes (two networks without "
        "the mirror view) and a 640-px crop, about 0.7 s (README: Speed and memory)",
    )
    an.add_argument("--no-scores", action="store_true", help="skip faithfulness / localisation scores")
    an.add_argument("--grader", help="a shipped grader's card stem instead of the profile's default")
    an.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: actor pool, resumable")
    an.add_argument("--address", help="with --engine ray: auto or ray://HOST:10001 (default: local Ray)")
    an.set_defaults(handler=_cmd_analyze)

    eb = sub.add_parser("explain-bench", help="rank explanation methods on images with lesion ground truth")
    eb.add_argument("--data", required=True)
    eb.add_argument("--split", choices=["train", "val", "test"], default="val")
    eb.add_argument("--methods", default="attention,gradcam,gradcam++,integrated_gradients")
    eb.add_argument("--limit", type=int, default=0)
    eb.add_argument("--sanity-images", type=int, default=2)
    eb.add_argument(
        "--grader",
        help="shipped grader name, or a training run's folder with best.json "
        "(default: the best single network)",
    )
    eb.add_argument("--json", action="store_true")
    eb.add_argument(
        "--write-card",
        action="store_true",
        help="store the table in the grader's card (the Models tab shows it)",
    )
    eb.set_defaults(handler=_cmd_explain_bench)

    bench = sub.add_parser("bench", help="speed benchmarks; medians of repeats, as JSON")
    bench.add_argument("--json", action="store_true", help="one JSON object on one line")
    bench.add_argument(
        "--only",
        nargs="*",
        help="benchmark names (default: all but the slow 'engines', 'server', 'runtimes' and 'precision')",
    )
    bench.add_argument("--image", help="a JPEG to time instead of the synthetic 4288x2848 one")
    bench.add_argument("--repeats", type=int, default=15)
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``drwb`` console script."""
    args = _build_parser().parse_args(argv)
    # the command as typed, for the cards that record how they were made
    args.command_line = "drwb " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.handler(args))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        # Layout errors, bad images and unknown names carry a user-facing message: show it, no traceback.
        print(f"drwb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
