"""Turn run directories into the paper's tables and figures: `python -m agents.report RUN_DIRS... --out DIR`.

Protocol (paper section 4.1, Agarwal et al. 2021):
- a run's final score is its last iteration's score (mean raw return of the training episodes that
  finished in that iteration), i.e. "IQM after 40M frames" for a full-budget run; it is
  human-normalised with the Atari-57 human_at30 table (agents/data/atari_scores.csv);
- per configuration, the [seeds, games] matrix of final scores gives the IQM, median, mean and
  optimality gap with 95% stratified-bootstrap percentile intervals (agents/evaluation.py);
- learning curves are the same IQM per iteration (one point per iteration, 1M frames by default).

Runs are grouped by their whole config.json except game, seed and bookkeeping fields (run name,
device, logging, checkpoints), so runs that differ in anything that can change results (lr, batch size,
budget, ...) are never averaged together. Labels name agent, network, width and sparsity, plus any
other field that differs between configurations (replay ratio, budget, lr, ...).

Nothing is silently averaged. A configuration is complete when it has a finished run for every game
(every game found in any run, or --games) and every seed that appears anywhere in that configuration.
Otherwise it is flagged in report.md and on stderr and left out of the IQM table, the IQM curves and the
width figure, unless --allow-incomplete: then each game keeps its first n seeds (n = the smallest count
over games), unfinished runs count with the score of their last iteration, and the configuration is
marked "partial" / "incomplete" everywhere. The sparsity and analysis figures plot whatever runs logged.
Games without a human reference score are reported with raw scores only.

Outputs in --out: report.md, summary.json, final_scores.csv, curves.csv and PNG figures
(iqm_curves.png, iqm_vs_width.png, sparsity_schedule.png, analysis.png), all drawn with matplotlib's
Agg backend.

Modules: runs (loading), configs (grouping, labels, completeness), stats (aggregates on top of
agents.evaluation), tables (report.md, CSV, JSON), figures, demo (synthetic runs), cli (main).
"""

from agents.report.cli import main, parse_args
from agents.report.configs import Config, build_matrices, group_runs
from agents.report.demo import write_synthetic_runs
from agents.report.runs import ReportError, Run, RunError, find_run_dirs, load_run

__all__ = ["Config", "ReportError", "Run", "RunError", "build_matrices", "find_run_dirs", "group_runs", "load_run",
           "main", "parse_args", "write_synthetic_runs"]
