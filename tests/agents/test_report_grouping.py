"""agents.report: which runs form one configuration, how configurations are named and drawn."""

import json
from itertools import product

import numpy as np
import pytest

from agents import report
from agents.config import RUNTIME_FIELDS, TrainConfig, flatten_config, paper_agent
from agents.report import figures
from agents.report.configs import Config, experiment_key, group_runs
from tests.agents.report_runs import GAMES, SEEDS, edit_config, summary, write_run


def _changed(default):
    """Another value of the same type."""
    if isinstance(default, bool):
        return not default
    return default + 1 if isinstance(default, int | float) else f"{default}-changed"


def test_runtime_options_do_not_split_a_configuration(tmp_path):
    """Runs that differ only in how they ran (time limit, speed flags, paths, logging) are one experiment."""
    defaults = flatten_config(TrainConfig().to_dict())
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):
        d = write_run(root, game, seed, 0.95)
        if seed % 2:  # every other run was started with different runtime options
            edit_config(d, **{f: _changed(defaults.get(f)) for f in RUNTIME_FIELDS})
            edit_config(d, max_minutes=30)
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    (c,) = summary(out).values()
    assert c["complete"] and np.array(c["scores"]).shape == (len(SEEDS), len(GAMES))
    assert "None." in (out / "report.md").read_text().split("## Problems")[1]  # no run skipped


def test_runs_of_env_backend_auto_are_grouped_by_the_backend_that_ran(tmp_path, capsys):
    """`env.backend = auto` is envpool where it can be imported and ale-py elsewhere (config.json's env_backend
    says which ran): the runs of one config on machines with and without envpool were one experiment."""
    root = tmp_path / "runs"
    for game, seed in product(GAMES, SEEDS):
        d = write_run(root, game, seed, 0.95)  # seed 0: envpool given explicitly, the same experiment as auto's
        if seed:
            meta = json.loads((d / "config.json").read_text())
            meta["config"]["env"]["backend"] = "auto"
            meta["env_backend"] = "ale" if seed == 2 else "envpool"
            (d / "config.json").write_text(json.dumps(meta))
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures"]) == 0
    shapes = {c["label"]: np.array(c["scores"]).shape for c in summary(out).values()}
    assert shapes == {"backend=envpool": (2, len(GAMES)), "backend=ale": (1, len(GAMES))}, shapes


def test_experiment_options_do_split_a_configuration():
    base = TrainConfig().to_dict()
    changes = (("agent.lr", 1e-4), ("tf32", True), ("pruning.distribution", "uniform"), ("env.sticky_prob", 0))
    for dotted, value in changes:
        changed = json.loads(json.dumps(base))
        *parents, name = dotted.split(".")
        node = changed
        for p in parents:
            node = node[p]
        assert node[name] != value
        node[name] = value
        assert experiment_key(changed) != experiment_key(base), dotted
    # game and seed vary inside a configuration
    other = json.loads(json.dumps(base))
    other["seed"], other["env"]["game"] = 7, "Qbert"
    assert experiment_key(other) == experiment_key(base)


def _config(agent="dqn", width=3, sparsity=0.0, **changes) -> dict:
    cfg = TrainConfig(agent=paper_agent(agent)).to_dict()
    cfg["network"]["width"], cfg["pruning"]["final_sparsity"] = width, sparsity
    for dotted, value in changes.items():
        *parents, name = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[name] = value
    return cfg


def _configs(cfgs: list[dict]) -> list[Config]:
    runs = [report.Run(path=None, config=c, game="Pong", seed=0, iterations={}, finished=True) for c in cfgs]
    return group_runs(runs)


def test_labels_name_only_what_differs():
    configs = _configs([
        _config("dqn", 1, 0.0), _config("dqn", 3, 0.95), _config("rainbow", 3, 0.0),
        _config("dqn", 1, 0.0, **{"agent.lr": 1e-4}),
    ])
    # Rainbow's n_step, replay and v_max differ from DQN's but "Rainbow" says so; the lr override is named only
    # where it tells two configurations apart
    assert [c.label for c in configs] == [
        "DQN ×1, dense, lr=6.25e-05", "DQN ×1, dense, lr=0.0001", "DQN ×3, 95% pruned", "Rainbow ×3, dense"]
    assert [c.label for c in _configs([_config(sparsity=0.0), _config(sparsity=0.9)])] == ["dense", "90% pruned"]
    assert [c.label for c in _configs([_config()])] == ["DQN Impala ×3, dense"]  # nothing differs: say what it is
    # two fields with the same last name are told apart by their section
    labels = [c.label for c in _configs([_config(**{"agent.name": "x", "network.arch": "y"}), _config()])]
    assert labels == ["DQN Impala", "x y"]


def _twelve_configs() -> dict[str, list[Config]]:
    return {
        "widths x sparsities": _configs([_config(width=w, sparsity=s) for w in (1, 3, 5) for s in (0, .9, .95, .99)]),
        "lr only": _configs([_config(**{"agent.lr": 1e-5 * (i + 1)}) for i in range(12)]),
        "two agents": _configs([_config(a, w, s) for a in ("dqn", "rainbow") for w in (1, 3, 5) for s in (0, .95)]),
        "sparsity and distribution": _configs([
            _config(width=w, sparsity=s, **{"pruning.distribution": d})
            for w in (1, 3) for s in (0.9, 0.95) for d in ("erk", "uniform", "erk_conv")]),
    }


@pytest.mark.parametrize("name", ["widths x sparsities", "lr only", "two agents", "sparsity and distribution"])
def test_every_configuration_has_its_own_line_style(name):
    configs = _twelve_configs()[name]
    assert len(configs) == 12
    lines = figures.line_styles(configs)
    styles = [(ln.color, figures.DASHES[ln.variant % 4], figures.MARKERS[ln.variant % 12]) for ln in lines]
    assert len(set(styles)) == 12, styles
    assert len({ln.label for ln in lines}) == 12
    assert max(len(ln.label) for ln in lines) <= 40
    if name != "lr only":  # several sparsities: dense is blue, 95% orange, as in the paper
        for c, ln in zip(configs, lines, strict=True):
            if c.sparsity in (0.0, 0.95) and name != "sparsity and distribution":
                assert ln.color == {0.0: "tab:blue", 0.95: "tab:orange"}[c.sparsity]


def test_lines_that_differ_only_in_sparsity_differ_in_dash_and_marker_too():
    """Fig. 3: dense, 90, 95, 99% lines coincide early in training; colour alone would hide one behind another."""
    lines = figures.line_styles(_configs([_config(sparsity=s) for s in (0.0, 0.9, 0.95, 0.99)]))
    assert len({ln.color for ln in lines}) == 4 and len({ln.variant for ln in lines}) == 4


def test_panel_labels_mean_the_same_in_every_panel():
    configs = _twelve_configs()["two agents"]
    lines = figures.line_styles(configs, panels=[c.agent for c in configs])
    by_label = {}
    for ln in lines:
        by_label.setdefault(ln.label, set()).add((ln.color, ln.variant))
    assert len(by_label) == 6 and all(len(s) == 1 for s in by_label.values())  # one legend serves both panels
    assert "×3, 95% pruned" in by_label


def test_figures_keep_legends_outside_and_a_sane_size(tmp_path, monkeypatch):
    """12 configurations over 2 agents x 2 networks: every figure is drawn, no legend covers a panel."""
    root = tmp_path / "runs"
    for agent, arch, width, sparsity in product(("dqn", "rainbow"), ("impala", "nature"), (1, 3, 5), (0.0, 0.95)):
        if arch == "nature" and width == 5:
            continue
        for game, seed in product(GAMES[:2], SEEDS[:2]):
            d = write_run(root / f"{agent}_{arch}", game, seed, sparsity, width=width)
            edit_config(d, **{"agent.name": agent, "network.arch": arch})
    checked = {}

    def check(fig, plt, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(a) for a in axes), path.name
        assert fig.get_figwidth() * figures.DPI <= 2400 and fig.get_figheight() * figures.DPI <= 2400, path.name
        checked[path.name] = len(fig.legends[0].get_texts()) if fig.legends else 0
        plt.close(fig)

    monkeypatch.setattr(figures, "_save", check)
    report.main([str(root), "--out", str(tmp_path / "r"), "--reps", "20"])
    assert set(checked) == {"iqm_curves.png", "iqm_vs_width.png", "sparsity_schedule.png", "analysis.png"}
    assert checked["iqm_curves.png"] == 6  # ×1/×3/×5 dense/pruned: the same six entries in all four panels
    assert checked["iqm_vs_width.png"] == 2  # dense, 95% pruned


def test_repeated_game_and_seed_is_an_error_that_names_the_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    for sparsity, game, seed in product((0.0, 0.95), GAMES, SEEDS):
        write_run(root / f"s{sparsity}", game, seed, sparsity)
    again = write_run(root / "again", "Pong", 1, 0.0)  # the same experiment, run twice
    edit_config(again, max_minutes=30)
    first = root / "s0.0" / again.name
    for allow in ([], ["--allow-incomplete"]):
        out = tmp_path / f"r{len(allow)}"
        assert report.main([str(root), "--out", str(out), "--reps", "50", "--no-figures", *allow]) == 1
        err = capsys.readouterr().err
        assert f"Pong seed 1 has 2 runs: {again}, {first}" in err or f"Pong seed 1 has 2 runs: {first}, {again}" in err
        dense, pruned = summary(out)["dense"], summary(out)["95% pruned"]
        assert dense["errors"] and dense["final"] is None and dense["scores"] is None  # never counted twice
        assert pruned["complete"] and pruned["final"] is not None
        md = (out / "report.md").read_text()
        assert "**error**: Pong seed 1 has 2 runs" in md
        pong_row = next(line for line in md.splitlines() if line.startswith("| Pong |"))
        assert "(n=2)" in pong_row  # the dense Pong cell counts seeds 0 and 2, not the repeated pair


def _final_figures(tmp_path, monkeypatch, root):
    """{figure name: (legend entries, {line label: (x tick labels under its points, y values)})} of the final-IQM
    figures a report of `root` draws, and the report's summary."""
    drawn = {}

    def check(fig, plt, path):
        if path.name.startswith("iqm_vs_"):
            lines = {}
            for ax in (a for a in fig.axes if a.get_visible()):
                ticks = {t.get_position()[0]: t.get_text() for t in ax.get_xticklabels()}
                for ln in ax.get_lines():
                    if not ln.get_label().startswith("_"):  # (error bars and circles have no label)
                        xs = [ticks[x] for x in ln.get_xdata()]
                        lines.setdefault(ln.get_label(), []).append((xs, list(ln.get_ydata())))
            drawn[path.name] = ([t.get_text() for t in fig.legends[0].get_texts()], lines)
        plt.close(fig)

    monkeypatch.setattr(figures, "_save", check)
    out = tmp_path / "r"
    assert report.main([str(root), "--out", str(out), "--reps", "20"]) == 0
    return drawn, summary(out)


def test_a_replay_ratio_sweep_draws_final_iqm_against_the_replay_ratio(tmp_path, monkeypatch):
    """Fig. 5 / 17: dense and pruned at several replay ratios, one width: the final IQM against the replay ratio,
    a line per sparsity, and no figure against a width that does not vary."""
    root = tmp_path / "runs"
    for rr, sparsity, game, seed in product((0.25, 1, 2), (0.0, 0.95), GAMES[:2], SEEDS[:2]):
        edit_config(write_run(root, game, seed, sparsity, name=f"{game}_{seed}_{sparsity}_rr{rr}"), replay_ratio=rr)
    drawn, configs = _final_figures(tmp_path, monkeypatch, root)
    assert set(drawn) == {"iqm_vs_replay_ratio.png"}
    legend, lines = drawn["iqm_vs_replay_ratio.png"]
    assert legend == ["dense", "95% pruned"]
    iqm = {c["label"]: c["final"]["iqm"]["value"] for c in configs.values()}
    for label in ("dense", "95% pruned"):
        ((xs, ys),) = lines[label]
        assert xs == ["0.25", "1", "2"]  # evenly spaced: the ratios double
        assert ys == pytest.approx([iqm[f"{label}, RR {rr}"] for rr in (0.25, 1, 2)])


def test_a_sparsity_sweep_draws_final_iqm_against_the_sparsity_a_line_per_width(tmp_path, monkeypatch):
    """Fig. 15: three or more sparsities at widths 1 and 3; with only dense and 95% there is no such figure, and
    at a single width the figure against the width still shows dense against pruned."""
    root = tmp_path / "runs"
    for width, sparsity, game, seed in product((1, 3), (0.0, 0.5, 0.95), GAMES[:2], SEEDS[:2]):
        write_run(root, game, seed, sparsity, width=width)
    drawn, configs = _final_figures(tmp_path, monkeypatch, root)
    assert set(drawn) == {"iqm_vs_sparsity.png", "iqm_vs_width.png"}
    legend, lines = drawn["iqm_vs_sparsity.png"]
    assert legend == ["×1", "×3"]
    iqm = {c["label"]: c["final"]["iqm"]["value"] for c in configs.values()}
    for width in (1, 3):
        ((xs, ys),) = lines[f"×{width}"]
        assert xs == ["0", "0.5", "0.95"]
        assert ys == pytest.approx([iqm[f"×{width}, {s}"] for s in ("dense", "50% pruned", "95% pruned")])

    gap = tmp_path / "gap"  # ×1 has no run at 0.5: its line stops there instead of crossing the ×3-only value
    for width, sparsity, game, seed in product((1, 3), (0.0, 0.5, 0.95), GAMES[:2], SEEDS[:2]):
        if (width, sparsity) != (1, 0.5):
            write_run(gap, game, seed, sparsity, width=width)
    drawn, _ = _final_figures(tmp_path / "gap_report", monkeypatch, gap)
    _, lines = drawn["iqm_vs_sparsity.png"]
    assert [xs for xs, _ in lines["×1"]] == [["0"], ["0.95"]]
    assert [xs for xs, _ in lines["×3"]] == [["0", "0.5", "0.95"]]

    one_width = tmp_path / "one_width"
    for sparsity, game, seed in product((0.0, 0.95), GAMES[:2], SEEDS[:2]):
        write_run(one_width, game, seed, sparsity)
    drawn, _ = _final_figures(tmp_path / "again", monkeypatch, one_width)
    assert set(drawn) == {"iqm_vs_width.png"} and drawn["iqm_vs_width.png"][0] == ["dense", "95% pruned"]
