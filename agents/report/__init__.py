"""Turn run directories into the paper's tables and figures: `python -m agents.report RUN_DIRS... --out DIR`, or
`python -m agents.report SWEEP_DIR`.

Protocol (paper section 4.1, Agarwal et al. 2021):
- a run's final score is its last iteration's score (mean raw return of the training episodes that
  finished in that iteration, or with --score eval of the evaluation phase after it), i.e. "IQM after
  40M frames" for a full-budget run; it is human-normalised with the Atari-57 human_at30 table
  (agents/data/atari_scores.csv);
- per configuration, the [runs, games] matrix of final scores gives the IQM, median, mean and
  optimality gap with 95% stratified-bootstrap percentile intervals (agents/evaluation.py), or none ("n/a",
  null) where a game has a single run: resampling runs within a game then always gives that run back;
- learning curves are the same IQM per iteration (one point per iteration, 1M frames by default).

Runs are grouped by the options that change the experiment (agents.config.experiment_fields: everything
but RUNTIME_FIELDS) except game, seed and --analysis-every (which changes no training), so runs that differ
in anything that can change results (lr, batch size, budget, ...) are never averaged together, and runs
that differ only in how they ran (--max-minutes, --device, speed flags, paths, logging) always are.
`env.backend = auto` counts as the backend that ran (config.json's env_backend: envpool, or ale-py where envpool
could not be imported), since the two start episodes differently. Labels
name what differs between configurations; report.md lists every differing field.

Nothing is silently averaged. A configuration is complete when it has exactly one finished run, not flagged by its
trainer (summary.json: resumed without its replay, below its target sparsity, schedule short of it; or no
summary.json although its iterations reach the end: killed before recording it), for every
(game, seed) it expects: those its sweep lists (a sweep directory's sweep.json), or else every game (found in any
run, or --games) with every seed that appears anywhere in that configuration. Otherwise it is flagged in report.md
and on stderr and left out of the IQM table, the IQM curves and the width figure, unless --allow-incomplete: then
each game keeps its first n seeds (n = the smallest count over games; summary.json's score_seeds says which seed
each score is), unfinished and flagged runs count with the score of their last iteration, and the configuration is
marked "partial" / "incomplete" everywhere. A (game, seed) pair with two runs is an error: that configuration is
never aggregated. The sparsity and analysis figures plot whatever runs logged. Games without a human reference score
are reported with raw scores only. A run whose files cannot be read is skipped with a warning naming the file and
line.

Outputs in --out: report.md, summary.json, final_scores.csv, curves.csv and PNG figures
(iqm_curves.png, iqm_vs_width.png, iqm_vs_replay_ratio.png and iqm_vs_sparsity.png where the runs sweep them,
sparsity_schedule.png, analysis.png, methods.png, grad_covariance.png), all drawn with matplotlib's Agg backend.

Modules: runs (loading run directories), sweep (sweep.json), configs (grouping, labels, completeness),
stats (aggregates on top of agents.evaluation), tables (report.md, CSV, JSON), figures, demo (synthetic
runs), cli (main).
"""

from agents.report.cli import main, parse_args
from agents.report.configs import Config, build_matrices, group_runs
from agents.report.demo import write_synthetic_runs
from agents.report.runs import ReportError, Run, RunError, find_run_dirs, load_run

__all__ = ["Config", "ReportError", "Run", "RunError", "build_matrices", "find_run_dirs", "group_runs", "load_run",
           "main", "parse_args", "write_synthetic_runs"]
