"""`python -m agents.report`: command line and the pipeline from run directories to report files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents import evaluation as ev
from agents.report.configs import build_matrices, group_runs
from agents.report.demo import write_synthetic_runs
from agents.report.figures import (
    REPLAY_RATIO_AXIS,
    SPARSITY_AXIS,
    WIDTH_AXIS,
    plot_analysis,
    plot_curves,
    plot_final,
    plot_grad_covariance,
    plot_methods,
    plot_sparsity,
)
from agents.report.runs import ReportError, find_run_dirs, load_run, warn
from agents.report.stats import MIN_RUNS_FOR_CI, final_aggregates, has_ci, iqm_curve, probability_of_improvement_pairs
from agents.report.sweep import expect, is_sweep, read_sweep, sweep_status
from agents.report.tables import write_markdown, write_tables

SWEEP_AXIS_FIGURES = ("iqm_vs_replay_ratio.png", "iqm_vs_sparsity.png")  # drawn only where runs sweep the axis
CURVE_REPS = 5000  # the learning curves' default cap on bootstrap replications per point (--curve-reps)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agents.report",
        description="Aggregate prunerl run directories into a markdown table, CSV/JSON and paper-style figures "
        "(IQM of human-normalised final scores with stratified-bootstrap CIs, Agarwal et al. 2021).",
        epilog="Examples: python -m agents.report runs/ --out results/  (searches runs/ for config.json files); "
        "python -m agents.report sweeps/fig1  (a sweep directory: writes sweeps/fig1/report/). Exit codes: 0 "
        "report written, 1 written but a configuration has an error, 2 nothing written.",
    )
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="run directories, parents of them, or sweep directories (with a sweep.json, from agents.sweep: the "
        "report then knows which runs each configuration expects)",
    )
    p.add_argument("--out", default=None, help="output directory (created if needed); default SWEEP_DIR/report "
                   "when the one RUN_DIR is a sweep directory")
    p.add_argument(
        "--games",
        default=None,
        help="comma-separated games every configuration must have, or 'paper15'; default: every game found in the runs",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="aggregate configurations with missing games/seeds, unfinished runs or runs the trainer flagged "
        "(resumed without its replay, below target sparsity) anyway, marked partial",
    )
    p.add_argument(
        "--score",
        choices=("train", "eval"),
        default="train",
        help="which iteration score counts: train (default; mean return of the training episodes that "
        "finished in the iteration) or eval (the evaluation phase after each iteration, when the runs had one)",
    )
    p.add_argument("--reps", type=int, default=ev.DEFAULT_REPS, help="bootstrap replications of the final aggregates "
                   "and P(improvement) (default 50000, rliable's: with fewer, the CI bounds move visibly with --seed)")
    p.add_argument("--curve-reps", type=int, default=None, help="bootstrap replications at each point of the learning "
                   f"curves (default: --reps, at most {CURVE_REPS}; 50000 at each of 40 iterations adds about a "
                   "second per configuration of 10 games x 5 seeds, and the curves' bands are drawn, not quoted)")
    p.add_argument("--confidence", type=float, default=0.95, help="CI coverage (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default 0)")
    p.add_argument(
        "--normalization",
        choices=("dqn_zoo", "dopamine"),
        default="dqn_zoo",
        help="human/random table: dqn_zoo (default) or dopamine (differs only on VideoPinball)",
    )
    p.add_argument(
        "--analysis-games",
        default=None,
        help="comma-separated games for the analysis and gradient covariance figures (default: those of Fig. 11 "
        "and Fig. 14 when present)",
    )
    p.add_argument("--note", default="", help="text added to every figure title and to report.md")
    p.add_argument("--no-figures", action="store_true", help="write the tables only (drawing takes most of the time)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="write synthetic run dirs to OUT/synthetic_runs and report those (marked as synthetic)",
    )
    args = p.parse_args(argv)
    if not args.run_dirs and not args.demo:
        p.error("give at least one RUN_DIR (or --demo)")
    if args.out is None:
        if len(args.run_dirs) != 1 or not is_sweep(args.run_dirs[0]):
            p.error("--out is required (it defaults to SWEEP_DIR/report only for a single sweep directory)")
        args.out = str(Path(args.run_dirs[0]) / "report")
    if args.curve_reps is None:
        args.curve_reps = min(args.reps, CURVE_REPS)
    if args.reps < 1 or args.curve_reps < 1 or not 0 < args.confidence < 1:
        p.error("--reps and --curve-reps must be >= 1 and --confidence in (0, 1)")
    if args.seed < 0:  # numpy's generators take none (a traceback from deep inside numpy)
        p.error(f"--seed must be >= 0, got {args.seed}")
    return args


def main(argv=None) -> int:
    """Exit codes: 0 = report written; 1 = report written, but some configuration has an error (repeated runs);
    2 = nothing written: bad arguments, no readable run, an unknown game."""
    args = parse_args(argv)
    try:
        return report(args)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _games(names: str) -> list[str]:
    """--games: comma-separated Atari-57 names (any spelling agents.evaluation accepts) or paper15."""
    if names == "paper15":
        return list(ev.PAPER_15_GAMES)
    try:
        return [ev.canonical_game(g) for g in names.split(",") if g.strip()]
    except KeyError as e:
        raise ReportError(f"--games: {e.args[0]}") from None


def report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "config.json").is_file():  # its summary.json (finished, sparsity flags) was overwritten by ours
        raise ReportError(f"--out {out} is a run directory (it holds config.json): the report's summary.json would "
                          "replace the run's; write the report to another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: {e.strerror}") from None
    required = _games(args.games) if args.games else None
    if args.demo:
        write_synthetic_runs(out / "synthetic_runs")
        args.run_dirs = [str(out / "synthetic_runs")]  # (the runs say they are synthetic: the note follows)
    problems: list[str] = []
    sweeps = [read_sweep(d) for d in args.run_dirs if is_sweep(d)]
    try:
        dirs = find_run_dirs(args.run_dirs)
    except ReportError:
        if sweeps:
            expected = sum(len(s.runs) for s in sweeps)
            names = ", ".join(s.name for s in sweeps)
            raise ReportError(f"no run of sweep {names} has started ({expected} expected)") from None
        raise
    runs = [r for r in (load_run(d, problems, args.score) for d in dirs) if r is not None]
    if not runs:
        raise ReportError(f"none of the {len(dirs)} run directories could be read (see the warnings above)")
    synthetic = [r for r in runs if r.synthetic]
    if synthetic and len(synthetic) < len(runs):  # a demo's output folder under the real runs
        where = sorted({str(r.path.parent) for r in synthetic})
        warn(problems, f"left out {len(synthetic)} synthetic runs of agents.report --demo (made-up data, not results) "
                       f"in {', '.join(where[:3])}{' ...' if len(where) > 3 else ''}")
        runs = [r for r in runs if not r.synthetic]
    elif synthetic:
        args.note = args.note or "SYNTHETIC DATA: made-up runs from agents.report --demo, not results"
    if args.score == "eval":
        without = [r for r in runs if not r.has_score]
        if len(without) == len(runs):
            raise ReportError("--score eval: no run has an evaluation score (iterations.csv has no eval_score column, "
                              "or it is empty: the runs were trained without the evaluation phase)")
        for r in without:
            warn(problems, f"{r.path}: no evaluation score (trained without the evaluation phase?)")
    else:  # offline runs play no training episodes: without this hint they read "no score logged"
        offline = [r for r in runs if (r.config.get("offline") or {}).get("enabled") and not r.has_score]
        if offline:
            warn(problems, f"{len(offline)} offline run(s) have no training score (they learn from a dataset and play "
                           "only in their evaluation phase): report them with --score eval")
    games = required or sorted({r.game for r in runs if ev.has_reference(r.game)})
    unreferenced = {r.game for r in runs if not ev.has_reference(r.game)}
    if unreferenced:
        warn(problems, f"no human reference score for {', '.join(sorted(unreferenced))}: raw scores only")

    configs = group_runs(runs)
    not_started = expect(sweeps, runs, configs, problems)
    build_matrices(configs, games, args.allow_incomplete, problems, args.normalization, required=bool(args.games))
    sweep_lines = [sweep_status(s, runs) for s in sweeps] + not_started
    without_ci = [c.label for c in configs if c.aggregated and not has_ci(c.matrix)]
    if without_ci:
        warn(problems, f"no confidence interval for {', '.join(without_ci)}: a stratified bootstrap needs at least "
                       f"{MIN_RUNS_FOR_CI} runs per game (it resamples runs within each game); n/a in the tables "
                       "(also for P(improvement) against them), no error bars or bands in the figures")
    finals = {c.label: final_aggregates(c, args.reps, args.confidence, args.seed) for c in configs if c.aggregated}
    curves = {
        c.label: iqm_curve(c, args.curve_reps, args.confidence, args.seed, problems, args.normalization)
        for c in configs
        if c.aggregated
    }
    pairs = probability_of_improvement_pairs(configs, args.reps, args.confidence, args.seed)

    ci = round(args.confidence * 100)
    analysis_games = (
        [ev.canonical_game(g) if ev.has_reference(g) else g for g in args.analysis_games.split(",")]
        if args.analysis_games
        else None
    )
    absent = [g for g in analysis_games or () if g not in {r.game for r in runs}]
    if absent:  # a misspelled game was silently left out of the figures
        warn(problems, f"--analysis-games: no run of {', '.join(absent)} (the runs' games: "
                       f"{', '.join(sorted({r.game for r in runs}))}); left out of analysis.png and "
                       "grad_covariance.png")
    figures = []
    for name, draw in () if args.no_figures else (
        ("iqm_curves.png", lambda p: plot_curves(configs, curves, p, args.note, ci)),
        ("iqm_vs_width.png", lambda p: plot_final(configs, finals, p, args.note, ci, WIDTH_AXIS)),
        ("iqm_vs_replay_ratio.png", lambda p: plot_final(configs, finals, p, args.note, ci, REPLAY_RATIO_AXIS)),
        ("iqm_vs_sparsity.png", lambda p: plot_final(configs, finals, p, args.note, ci, SPARSITY_AXIS)),
        ("sparsity_schedule.png", lambda p: plot_sparsity(configs, p, args.note)),
        (
            "analysis.png",
            lambda p: plot_analysis(
                configs, analysis_games, p, args.note, min(args.reps, 1000), args.confidence, args.seed
            ),
        ),
        ("methods.png", lambda p: plot_methods(configs, curves, finals, p, args.note, ci)),
        ("grad_covariance.png", lambda p: plot_grad_covariance(configs, analysis_games, p, args.note)),
    ):
        if draw(out / name):
            figures.append(name)
        else:  # an older report's figure of the same name would read as this report's
            stale = (out / name).exists()
            (out / name).unlink(missing_ok=True)
            if stale or name not in SWEEP_AXIS_FIGURES:  # (most runs sweep neither: no news)
                print(f"note: {name} not drawn (no data for it)" + (": removed the older one in --out" * stale),
                      file=sys.stderr)
    write_tables(out, configs, finals, curves, pairs, problems, args, sweep_lines)
    text = write_markdown(
        out / "report.md", configs, finals, pairs, games, unreferenced, problems, figures, args, sweep_lines
    )
    print(text.split("\n\nProbability")[0].split("\n\nPer-game")[0])
    print(f"\nwrote {out}/report.md, summary.json, final_scores.csv, curves.csv and {len(figures)} figure(s)")
    if any(c.errors for c in configs):
        print("error: some configurations could not be aggregated (see report.md, Problems)", file=sys.stderr)
        return 1
    return 0
