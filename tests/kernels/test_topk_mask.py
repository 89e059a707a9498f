"""Triton segmented radix select vs the sort-based reference: masks must be bit-identical.

On a CPU-only machine the launcher runs under TRITON_INTERPRET=1 (tests/conftest.py), so shapes stay small;
`block` is shrunk so that tensors span many blocks and the cross-block tie scan is exercised, and `slots`
is varied so that both the candidate slots and the overflow path (re-reading the weights) are exercised.
Repeated calls on the same weights take the warm-start path; `select_stats` says which path each took.
"""

import math

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels.reference import topk_magnitude_masks_ref
from kernels.topk_mask import _flat_prefix, select_stats, topk_magnitude_masks_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_same_masks(weights, keep_counts, block=64, **kwargs):
    got = topk_magnitude_masks_triton(weights, keep_counts, block=block, **kwargs)
    want = topk_magnitude_masks_ref(weights, keep_counts)
    assert len(got) == len(want)
    for i, (g, w, k) in enumerate(zip(got, want, keep_counts)):
        assert g.dtype == torch.bool and g.shape == weights[i].shape and g.device == weights[i].device
        assert int(g.sum()) == int(k), f"tensor {i}: {int(g.sum())} kept, asked for {int(k)}"
        if not torch.equal(g, w):
            diff = (g != w).flatten().nonzero().flatten()[:10].tolist()
            raise AssertionError(f"tensor {i} (shape {tuple(g.shape)}, k={k}): masks differ at flat {diff}")
    return got


def random_counts(weights, gen=None):
    return [int(torch.randint(0, w.numel() + 1, (), generator=gen)) for w in weights]


# --- sizes and keep counts ---------------------------------------------------------------------------------

SHAPE_SETS = {
    "tiny": [(1,), (2,), (3, 1)],
    "odd": [(7, 3), (5, 5, 5), (1, 97)],
    "block_edges": [(63,), (64,), (65,), (128,), (129,)],
    "conv_like": [(8, 4, 3, 3), (16, 8, 3, 3), (10, 48)],
    "with_empty": [(0,), (5,), (0, 3)],
}


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("block", [16, 64, 4096])
def test_topk_matches_reference_random_counts(shapes, block):
    weights = [torch.randn(s, device=DEVICE) for s in shapes]
    assert_same_masks(weights, random_counts(weights), block=block)


@pytest.mark.parametrize("which", ["zero", "one", "all", "all_but_one", "half"])
def test_topk_edge_keep_counts(which):
    weights = [torch.randn(s, device=DEVICE) for s in [(1,), (2,), (33,), (7, 9), (300,)]]
    pick = {"zero": lambda n: 0, "one": lambda n: min(1, n), "all": lambda n: n,
            "all_but_one": lambda n: max(n - 1, 0), "half": lambda n: n // 2}[which]
    assert_same_masks(weights, [pick(w.numel()) for w in weights], block=16)


def test_topk_many_segments_of_very_different_sizes():
    sizes = [1, 2, 3, 1000, 5, 17, 1, 600, 64, 65, 7, 2, 300, 1, 129, 11, 3, 250, 31, 1]
    weights = [torch.randn(n, device=DEVICE) * (10.0 ** (i % 5 - 2)) for i, n in enumerate(sizes)]
    counts = random_counts(weights)
    counts[0], counts[3], counts[7] = 0, 1000, 1
    assert_same_masks(weights, counts, block=32)
    assert_same_masks(weights, random_counts(weights), block=32)  # warm, from the first call's histograms


# --- ties ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thread_major", [False, True])
@pytest.mark.parametrize("levels, slots", [(1, 4), (2, 16), (5, 4), (33, 8)])
def test_topk_heavy_ties_quantised(monkeypatch, levels, slots, thread_major):
    # Few distinct magnitudes (and both signs of each): the threshold value is shared by many elements
    # spread over many blocks, so the tie break by flat index decides most of the mask. With few slots most
    # blocks overflow (and re-read their weights); with all 16, the candidates are ranked from the slots.
    # thread_major: the full read's rows as a thread holds them (GUESS_THREAD_MAJOR, 2 rows per "thread").
    _thread_major(monkeypatch, thread_major, threads=2)
    weights = [(torch.randint(-levels, levels + 1, s, device=DEVICE) / 4.0) for s in [(700,), (13, 17), (40,)]]
    for _ in range(3):
        assert_same_masks(weights, random_counts(weights), block=16, slots=slots)
    assert any(select_stats(weights, block=16, slots=slots)["tie"])


def test_topk_exact_zeros_and_negative_zeros():
    # A pruned network: most weights exactly 0 (some -0.0); keep counts above and below the non-zeros.
    w = torch.randn(900, device=DEVICE)
    w[torch.rand(900, device=DEVICE) < 0.9] = 0.0
    w[::7] = -0.0
    nnz = int((w != 0).sum())
    for k in [0, 1, nnz - 1, nnz, nnz + 1, nnz + 100, 900]:
        assert_same_masks([w, torch.zeros(50, device=DEVICE)], [k, min(k, 50)], block=32)


def test_topk_lanes_past_the_end_are_never_candidates():
    # All zeros: the threshold's pattern is 0, so the next guess starts at pattern 0, where a lane past the
    # end of the tensor (37 elements, blocks of 16) would look like a zero weight.
    w = torch.zeros(37, device=DEVICE)
    for _ in range(2):
        assert_same_masks([w], [5], block=16)
    stats = select_stats([w], block=16)
    assert stats["warm"] == [True] and stats["candidates"] == 37


def test_topk_all_equal_every_count():
    w = torch.full((37,), -0.5, device=DEVICE)
    for k in range(0, 38, 3):
        assert_same_masks([w], [k], block=16)


# --- warm start -------------------------------------------------------------------------------------------------


def test_topk_warm_start_follows_a_gmp_schedule():
    """A GMP run's mask updates: keep counts shrink by a fraction of a percent of the weights (at most ~0.2%
    per update with 1,500 updates) and the surviving weights drift a little between updates; each call
    guesses an interval around the previous threshold, moved by the change of k at the density seen around
    it. Every mask is exact; the guess holds for most calls (never for the first: nothing to start from)."""
    weights = [torch.randn(s, device=DEVICE) for s in [(50, 40), (900,), (10, 30)]]
    held = []
    for update in range(10):
        counts = [max(1, round(w.numel() * (0.4 - 0.005 * update))) for w in weights]
        masks = assert_same_masks(weights, counts, block=64)
        warm = select_stats(weights, block=64)["warm"]
        if update == 0:
            assert not any(warm)
        else:
            held += warm
        for w, m in zip(weights, masks):  # the pruned weights become 0; the others take a few Adam steps
            w.mul_(m).add_(0.001 * torch.randn_like(w) * m)
    assert sum(held) >= 0.8 * len(held), held


def test_topk_wrong_warm_start_guess_falls_back():
    weights = [torch.randn(s, device=DEVICE) for s in [(600,), (20, 20)]]
    assert_same_masks(weights, [100, 50], block=32)
    span = select_stats(weights, block=32)["span"]
    weights[0].mul_(1000.0)  # every magnitude moves ~10 binades up: the guessed interval holds nothing
    weights[1].add_(1e-4 * torch.randn_like(weights[1]))  # barely moves: the guess holds
    assert_same_masks(weights, [100, 50], block=32)
    stats = select_stats(weights, block=32)
    assert stats["warm"] == [False, True]
    assert stats["span"][0] == span[0] + 1  # a wrong guess widens the next one (18 -> 19, the widest)
    assert_same_masks(weights, [100, 50], block=32)  # the next call starts from the new threshold
    assert select_stats(weights, block=32)["warm"] == [True, True]
    assert_same_masks(weights, [100, 50], block=32, warm_start=False)
    assert select_stats(weights, block=32)["warm"] == [False, False]


@pytest.mark.parametrize("direction", ["up", "down"])
def test_topk_threshold_moved_out_of_the_guess(direction):
    # Unchanged k, but the weights around the threshold move far: the threshold leaves the guessed interval
    # (too narrow for the move). Up: more than k elements lie above it; down: fewer than k above or in it.
    gen = torch.Generator().manual_seed(1)
    w = (torch.rand(1000, generator=gen) + 1.0).to(DEVICE)  # |w| in [1, 2): one binade, T near 1.9
    assert_same_masks([w], [100], block=64)
    assert select_stats([w], block=64)["warm"] == [False]
    w.mul_(1.25 if direction == "up" else 0.8)
    assert_same_masks([w], [100], block=64)
    assert select_stats([w], block=64)["warm"] == [False]
    assert_same_masks([w], [100], block=64)  # and from the new threshold the guess holds again
    assert select_stats([w], block=64)["warm"] == [True]


def test_topk_guess_with_no_candidate_kept():
    # k equals the number of elements above the guessed interval: no candidate is kept (T = HI + 1), with
    # ties at the interval's top edge and right above it.
    w = torch.rand(700, device=DEVICE) - 0.5  # |w| < 0.5
    w[[3, 50, 51, 600]] = 100.0  # far above any guess around the 5th largest
    w[[9, 10, 300]] = -2.0
    assert_same_masks([w], [5], block=32)  # T = 2.0, a three-way tie broken by index
    assert_same_masks([w], [4], block=32)  # the guess around 2.0 holds: the four 100s above it, k == above
    assert select_stats([w], block=32)["warm"] == [True]
    assert_same_masks([w], [0], block=32)  # k = 0 from a guess: nothing above the interval, nothing kept
    assert_same_masks([w], [0], block=32)  # and again from T = HI + 1
    assert select_stats([w], block=32)["warm"] == [True]
    assert_same_masks([w], [7], block=32)  # back down: a wrong guess, then the cold path
    assert select_stats([w], block=32)["warm"] == [False]


def test_topk_warm_start_at_extreme_counts():
    weights = [torch.randn(s, device=DEVICE) for s in [(300,), (1,), (5, 7)]]
    weights[0][::4] = 0.25  # a tie at many counts
    n = [w.numel() for w in weights]
    for counts in ([30, 1, 10], [0, 0, 0], [1, 1, 1], n, [k - 1 for k in n], [76, 0, 35], [41, 1, 2]):
        assert_same_masks(weights, counts, block=32, slots=4)  # from whatever the previous counts left
        assert_same_masks(weights, counts, block=32, slots=4)
        # Unchanged weights and counts: the threshold is the previous one, so the guess always holds.
        assert select_stats(weights, block=32, slots=4)["warm"] == [True] * 3
    weights[0][7] = 1e6  # a new largest weight, far above every threshold seen: k = 1 moves T out of the guess
    assert_same_masks(weights, [1, 1, 1], block=32, slots=4)
    assert select_stats(weights, block=32, slots=4)["warm"] == [False, True, True]


def test_topk_guess_span_narrows_when_candidates_crowd():
    # Every |w| within 0.1% of 1.0: any interval around T holds most weights (the slots overflow, and the
    # blocks read their weights instead), so each warm call narrows the next guess until few remain.
    w = (1.0 + 1e-3 * torch.rand(2000, device=DEVICE)) * torch.sign(torch.randn(2000, device=DEVICE))
    assert_same_masks([w], [1000], block=64)
    spans = [select_stats([w], block=64)["span"][0]]
    for _ in range(4):
        assert_same_masks([w], [1000], block=64)
        stats = select_stats([w], block=64)
        assert stats["warm"] == [True]
        spans.append(stats["span"][0])
    assert spans == [spans[0] - i for i in range(5)], spans


def test_topk_cold_path_grid_stride(monkeypatch):
    # The cold histogram runs on fewer programs than blocks (a grid-stride loop), cold and after a wrong guess,
    # for the segments whose guess's verdict (read 2 segments at a time here) says so.
    from kernels import topk_mask

    monkeypatch.setattr(topk_mask, "COLD_INTERPRETER_PROGRAMS", 2)
    monkeypatch.setattr(topk_mask, "VERDICT_SEGS", 2)
    weights = [torch.randn(s, device=DEVICE) for s in [(500,), (7, 9), (40,)]]
    assert_same_masks(weights, [60, 10, 40], block=16)
    ws = topk_mask._workspaces.get(*topk_mask._workspace_key(weights, 16, 4))
    assert ws.cold_programs == 2
    span = select_stats(weights, block=16)["span"]
    weights[1].mul_(1e3)
    assert_same_masks(weights, [60, 10, 40], block=16)
    stats = select_stats(weights, block=16)
    assert stats["warm"] == [True, False, True]
    assert stats["span"][1] == min(span[1] + 2, topk_mask.SPAN_MAX.value)  # a wrong guess widens the next
    assert_same_masks(weights, [61, 11, 39], block=16)  # every guess holds: the cold pass has nothing to do
    assert select_stats(weights, block=16)["warm"] == [True, True, True]


def test_topk_tie_scan_carries_across_chunks(monkeypatch):
    # A segment spans more blocks than one iteration of the tie scan handles (shrunk from 1024 to 4 here).
    from kernels import topk_mask

    monkeypatch.setattr(topk_mask, "SCAN_CHUNK", 4)
    weights = [torch.randint(-2, 3, (400,), device=DEVICE) / 2.0, torch.randint(-1, 2, (50,), device=DEVICE) / 2.0]
    for counts in ([150, 20], [260, 31]):
        assert_same_masks(weights, counts, block=16, slots=16)
        assert select_stats(weights, block=16, slots=16)["tie"] == [True, True]
    ws = topk_mask._workspaces.get(*topk_mask._workspace_key(weights, 16, 16))
    assert int(ws.ties) == 0  # the fix-up zeroed the count of segments with a tie to break


def _thread_major(monkeypatch, on: bool, threads: int) -> None:
    """The full read's thread-major rows (GUESS_THREAD_MAJOR) with `threads` standing for the threads."""
    from kernels import topk_mask

    monkeypatch.setattr(topk_mask, "GUESS_THREAD_MAJOR", on)
    monkeypatch.setattr(topk_mask, "GUESS_INTERPRETER_THREADS", threads)


@pytest.mark.parametrize("thread_major", [False, True])
@pytest.mark.parametrize("grid_stride", [False, True])
@pytest.mark.parametrize("zero_pruned", [False, True])
def test_topk_candidate_passes_loop_over_chunks_and_pieces(monkeypatch, zero_pruned, grid_stride, thread_major):
    # The passes after the full read walk a block's used slots a chunk at a time, and its weights (overflow,
    # cold path, zeroing) a piece at a time: shrunk here so that both loops take several turns, with the tie
    # rank carried from one turn to the next. Every 7th weight of the first tensor is 0.75 and T = 0.75 keeps
    # half of them, from the slots; the second tensor has few levels, so its blocks overflow their slots.
    # grid_stride: the candidate passes on 2 programs that loop over the 16 blocks (CAND_PROGRAMS_PER_SM).
    # thread_major: the full read's 16 rows of a block as 4 "threads" of 4 consecutive rows (GUESS_THREAD_MAJOR).
    from kernels import topk_mask

    _thread_major(monkeypatch, thread_major, threads=4)
    assert topk_mask.guess_threads(64, True, torch.device(DEVICE)) == (4 if thread_major and DEVICE == "cpu" else 16)

    monkeypatch.setattr(topk_mask, "CAND_CHUNK", 4)
    monkeypatch.setattr(topk_mask, "CAND_PIECE", 16)
    monkeypatch.setattr(topk_mask, "CAND_PROGRAMS_PER_SM", 1 if grid_stride else 0)
    if grid_stride:
        monkeypatch.setattr(topk_mask, "CAND_INTERPRETER_PROGRAMS", 2)
    weights = [torch.randn(700, device=DEVICE), torch.randint(-2, 3, (300,), device=DEVICE) / 2.0]
    weights[0][::7] = -0.75
    counts = [int((weights[0].abs() > 0.75).sum()) + 50, 100]
    seen = []
    for _ in range(3):  # cold, then warm from the previous threshold
        before = [w.clone() for w in weights]
        want = topk_magnitude_masks_ref(before, counts)
        got = topk_magnitude_masks_triton(weights, counts, block=64, slots=16, zero_pruned=zero_pruned)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        for g, w, w0 in zip(got, weights, before):
            assert torch.equal(w, w0 * g if zero_pruned else w0)
        seen.append(select_stats(weights, block=64, slots=16))
    assert seen[0]["tie"] == [True, True] and seen[-1]["warm"] == [True, True], seen
    assert all(s["overflowed_blocks"] > 0 for s in seen), seen
    ws = topk_mask._workspaces.get(*topk_mask._workspace_key(weights, 64, 16))
    assert ws.n_blocks == 16 and ws.cand_programs == (2 if grid_stride else 16)
    # The full read took each block once (a block taken twice or skipped still gives right masks, through the
    # cold path, so the masks alone would not tell): its counts of elements above HI and in [LO, HI] are exact.
    state = ws.state.cpu()
    for i, w in enumerate(weights):
        bits = w.abs().view(torch.int32)
        lo, hi = (int(state[i, c.value]) for c in (topk_mask._LO, topk_mask._HI))
        assert int(state[i, topk_mask._ABOVE.value]) == int((bits > hi).sum())
        assert int(state[i, topk_mask._CANDS.value]) == int(((bits >= lo) & (bits <= hi)).sum())
    if not zero_pruned:  # (zeroing leaves no surplus of ties after the first call)
        assert all(s["tie"] == [True, True] for s in seen), seen


@pytest.mark.parametrize("slots", [1, 32])
def test_topk_candidate_slots_overflow_or_not(slots):
    # slots=1: nearly every block overflows and reads its weights in every pass; slots=block: none does.
    weights = [torch.randn(s, device=DEVICE) for s in [(500,), (9, 20)]]
    for counts in ([50, 90], [40, 80]):
        assert_same_masks(weights, counts, block=32, slots=slots)
        stats = select_stats(weights, block=32, slots=slots)
        assert (stats["overflowed_blocks"] > 0) == (slots == 1), stats


@triton.jit
def _prefix_kernel(flags_ptr, out_ptr, total_ptr, N: tl.constexpr):
    before, total = _flat_prefix(tl.load(flags_ptr + tl.arange(0, N)), N)
    tl.store(out_ptr + tl.arange(0, N), before)
    tl.store(total_ptr, total)


@pytest.mark.parametrize("n", [16, 64, 4096])
def test_flat_prefix_packed_scan(n):
    # The compaction's exclusive prefix sums, four rows at a time in the bytes of an int32: rows entirely of
    # ones (a byte's prefix reaches 255, its total 256 = a carry) and of zeros, next to random ones.
    rows = (torch.rand(16, n // 16) < torch.tensor([1.0, 0.0, 0.5, 0.02] * 4)[:, None]).to(torch.int32)
    for flags in (rows.flatten(), torch.ones(n, dtype=torch.int32), torch.zeros(n, dtype=torch.int32)):
        flags = flags.to(DEVICE)
        out = torch.empty(n, dtype=torch.int32, device=DEVICE)
        total = torch.empty(1, dtype=torch.int32, device=DEVICE)
        _prefix_kernel[(1,)](flags, out, total, N=n)
        assert torch.equal(out, torch.cumsum(flags, 0, dtype=torch.int32) - flags)
        assert int(total) == int(flags.sum())


# --- NaN / Inf / subnormals -------------------------------------------------------------------------------------


def test_topk_nan_inf_rule():
    w = torch.randn(500, device=DEVICE)
    w[[3, 90, 91, 400]] = float("nan")
    w[17] = -float("nan")
    w[[5, 6, 250]] = float("inf")
    w[[7, 499]] = -float("inf")
    # A NaN with a different payload (and the sign bit set) must still tie with the others.
    w.view(torch.int32)[300] = 0x7F800001
    w.view(torch.int32)[301] = -1  # 0xFFFFFFFF: a negative NaN with a full payload
    w[[8, 9]] = torch.tensor([1e-40, -1e-42])  # subnormals
    n_nan, n_inf = int(w.isnan().sum()), int(w.isinf().sum())
    for k in [0, 1, 3, n_nan - 1, n_nan, n_nan + 1, n_nan + n_inf, n_nan + n_inf + 1, 250, 499, 500]:
        mask = assert_same_masks([w], [k], block=32)[0]
        if k >= n_nan:  # every NaN is kept first, then every Inf: never a wrong-sized mask
            assert bool(mask[w.isnan()].all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_topk_low_precision_weights(dtype):
    # Few distinct values at low precision: ties at the threshold are the rule, not the exception.
    weights = [torch.randn(s, device=DEVICE).to(dtype) for s in [(300,), (9, 11)]]
    weights[0][::5] = 0
    weights[0][1::7] = -0.0
    weights[1][0, 0] = float("inf")
    weights[1][1, :] = torch.tensor(1e-40 if dtype == torch.bfloat16 else 1e-7, dtype=dtype)  # subnormals
    for _ in range(2):  # cold, then warm
        assert_same_masks(weights, random_counts(weights), block=32)


# --- device keep counts, out=, fused zeroing -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_topk_keep_counts_as_tensor(dtype):
    weights = [torch.randn(s, device=DEVICE) for s in [(40,), (3, 3)]]
    assert_same_masks(weights, torch.tensor(random_counts(weights), dtype=dtype, device=DEVICE), block=16)


def test_topk_device_counts_are_clamped_not_synced():
    # Counts on the weights' device are never read on the host: out of range, they are clamped to [0, numel].
    weights = [torch.randn(s, device=DEVICE) for s in [(40,), (9,), (5,)]]
    got = topk_magnitude_masks_triton(weights, torch.tensor([-3, 10**9, 2], device=DEVICE), block=16)
    want = topk_magnitude_masks_ref(weights, [0, 9, 2])
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_topk_out_and_fused_zeroing_match_reference():
    shapes = [(50,), (6, 7)]
    weights = [torch.randn(s, device=DEVICE) for s in shapes]
    weights[0][::3] = -2.0  # ties, and negative pruned weights (must become +0.0, not -0.0)
    m = [torch.randn(s, device=DEVICE) for s in shapes]
    v = [torch.rand(s, device=DEVICE) for s in shapes]
    counts = [20, 11]
    got_w, got_m, got_v = ([t.clone() for t in ts] for ts in (weights, m, v))
    want_w, want_m, want_v = ([t.clone() for t in ts] for ts in (weights, m, v))
    out = [torch.ones(s, dtype=torch.bool, device=DEVICE) for s in shapes]
    got = topk_magnitude_masks_triton(got_w, counts, out=out, zero_pruned=True, exp_avgs=got_m, exp_avg_sqs=got_v,
                                      block=16)
    want = topk_magnitude_masks_ref(want_w, counts, zero_pruned=True, exp_avgs=want_m, exp_avg_sqs=want_v)
    assert all(g is o for g, o in zip(got, out))
    for g, w in zip(got + got_w + got_m + got_v, want + want_w + want_m + want_v):
        assert torch.equal(g, w)
        if g.is_floating_point():  # bitwise too: pruned entries are +0.0
            assert torch.equal(g.view(torch.int32), w.view(torch.int32))
    for mask, w, w0 in zip(got, got_w, weights):
        assert bool((w[~mask] == 0).all()) and torch.equal(w[mask], w0[mask])


def test_topk_without_zeroing_leaves_weights_untouched():
    w = torch.randn(100, device=DEVICE)
    before = w.clone()
    topk_magnitude_masks_triton([w], [10], block=16)
    assert torch.equal(w, before)


# --- errors ----------------------------------------------------------------------------------------------------


def test_topk_clear_errors():
    w = torch.randn(8, 6, device=DEVICE)
    with pytest.raises(ValueError, match="not contiguous"):
        topk_magnitude_masks_triton([w.t()], [3])
    with pytest.raises(TypeError, match="dtype"):
        topk_magnitude_masks_triton([w, w.half()], [3, 3])
    with pytest.raises(TypeError, match="dtype"):
        topk_magnitude_masks_triton([torch.ones(4, dtype=torch.int32, device=DEVICE)], [1])
    with pytest.raises(ValueError, match="outside"):
        topk_magnitude_masks_triton([w], [49])
    with pytest.raises(ValueError, match="keep counts"):
        topk_magnitude_masks_triton([w], [1, 2])
    with pytest.raises(ValueError, match="shape"):
        topk_magnitude_masks_triton([w], [3], out=[torch.empty(6, 8, dtype=torch.bool, device=DEVICE)])
    with pytest.raises(ValueError, match="both"):
        topk_magnitude_masks_triton([w], [3], exp_avgs=[torch.zeros_like(w)])
    assert topk_magnitude_masks_triton([], []) == []


@pytest.mark.parametrize("backend", ["triton", "fused", "torch"])
def test_every_backend_refuses_what_the_kernels_refuse(monkeypatch, backend):
    """The CPU paths once truncated fractional keep counts, returned float "masks" into float `out` tensors and
    raised raw broadcast errors: every backend now names the problem, as the Triton launcher does."""
    monkeypatch.setenv("PRUNERL_KERNELS", backend)
    w = [torch.randn(4, 5, device=DEVICE), torch.randn(10, device=DEVICE)]
    bools = [torch.empty(t.shape, dtype=torch.bool, device=DEVICE) for t in w]
    with pytest.raises(TypeError, match=r"keep_counts\[0\] = 2.5 \(float\); keep counts must be integers"):
        kernels.topk_magnitude_masks(w, [2.5, 5])
    for counts in (2, {0: 2, 1: 5}):  # were "'int' object is not iterable" and KeyError: 0
        with pytest.raises(TypeError, match=r"keep_counts must be a list or 1-D tensor of one count per weight "
                                            rf"tensor; got {type(counts).__name__}"):
            kernels.topk_magnitude_masks(w, counts)
    with pytest.raises(ValueError, match=r"keep_counts must be .*1-D.*shape \(\)"):  # (tolist() gave a bare int)
        kernels.topk_magnitude_masks(w, torch.tensor(2, device=DEVICE))
    assert [int(m.sum()) for m in kernels.topk_magnitude_masks(w, iter([2, 5]))] == [2, 5]  # any iterable
    with pytest.raises(TypeError, match="integer tensor"):
        kernels.topk_magnitude_masks(w, torch.tensor([2.0, 5.0]))
    with pytest.raises(TypeError, match=r"out\[0\] has dtype torch.float32"):
        kernels.topk_magnitude_masks(w, [2, 5], out=[torch.zeros(4, 5, device=DEVICE), bools[1]])
    with pytest.raises(ValueError, match=r"out\[0\] has shape \(4, 4\), weights\[0\] has \(4, 5\)"):
        kernels.topk_magnitude_masks(w, [2, 5], out=[torch.empty(4, 4, dtype=torch.bool, device=DEVICE), bools[1]])
    with pytest.raises(ValueError, match="got 2 weights but 1 out masks"):
        kernels.topk_magnitude_masks(w, [2, 5], out=bools[:1])
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has shape \(3,\)"):
        kernels.topk_magnitude_masks(w, [2, 5], exp_avgs=[torch.zeros(3, device=DEVICE), torch.zeros_like(w[1])],
                                     exp_avg_sqs=[torch.zeros_like(t) for t in w])
    p, g = [torch.randn(4, 5, device=DEVICE)], [torch.randn(4, 5, device=DEVICE)]
    with pytest.raises(TypeError, match=r"masks\[0\] has dtype torch.float32"):
        kernels.masked_adam_(p, g, [torch.zeros_like(p[0])], [torch.zeros_like(p[0])], [torch.ones_like(p[0])],
                             step=1, lr=1e-3)
    want = topk_magnitude_masks_ref(w, [2, 5])  # integer counts of any integer type still work
    for counts in ([2, 5], torch.tensor([2, 5], dtype=torch.int32), __import__("numpy").array([2, 5])):
        assert all(torch.equal(a, b) for a, b in zip(kernels.topk_magnitude_masks(w, counts), want))


@pytest.mark.parametrize("backend", ["triton", "fused", "torch"])
def test_every_backend_names_an_entry_that_is_not_a_tensor(monkeypatch, backend):
    """A None among the weights failed deep in a backend with an AttributeError, and one tensor passed for the
    list was taken as a list of its rows: with as many keep counts as rows, per-row masks and no error."""
    monkeypatch.setenv("PRUNERL_KERNELS", backend)
    w = torch.randn(4, 5, device=DEVICE)
    with pytest.raises(TypeError, match=r"weights\[1\] must be a tensor, got NoneType"):
        kernels.topk_magnitude_masks([w, None], [2, 2])
    with pytest.raises(TypeError, match=r"weights\[0\] must be a tensor, got NoneType"):
        kernels.topk_magnitude_masks([None, w], [2, 2])
    with pytest.raises(TypeError, match=r"out\[0\] must be a tensor, got NoneType"):
        kernels.topk_magnitude_masks([w], [2], out=[None])
    with pytest.raises(TypeError, match=r"weights must be a list of tensors, got a tensor of shape \(4, 5\)"):
        kernels.topk_magnitude_masks(w, [2] * 4)


# --- properties --------------------------------------------------------------------------------------------------


@st.composite
def segment_sets(draw):
    n_seg = draw(st.integers(1, 6))
    sizes = [draw(st.integers(0, 400)) for _ in range(n_seg)]
    levels = draw(st.sampled_from([0, 1, 3, 50]))  # 0 = continuous values, otherwise quantised (ties)
    zero_frac = draw(st.sampled_from([0.0, 0.5, 0.95]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for n in sizes:
        w = torch.randn(n, generator=gen)
        if levels:
            w = torch.round(w * levels) / levels
        w[torch.rand(n, generator=gen) < zero_frac] = 0.0
        if n and draw(st.booleans()):
            w[int(torch.randint(0, n, (), generator=gen))] = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
        weights.append(w.to(DEVICE))
    counts = [draw(st.integers(0, n)) for n in sizes]
    block = draw(st.sampled_from([32, 64, 256]))
    slots = draw(st.sampled_from([1, 4, block]))  # overflowing, tight, never full
    return weights, counts, block, slots


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segment_sets(), st.booleans())
def test_topk_property_matches_reference(case, again):
    weights, counts, block, slots = case
    assert_same_masks(weights, counts, block=block, slots=slots)
    if again:  # warm: the same weights with other counts
        assert_same_masks(weights, [n // 2 for n in counts], block=block, slots=slots)


# --- integration: public op, torch.library, torch.compile --------------------------------------------------------


def test_public_op_dispatches_to_triton(monkeypatch):
    monkeypatch.setenv("PRUNERL_KERNELS", "triton")
    weights = [torch.randn(s, device=DEVICE) for s in [(30,), (4, 4)]]
    weights[0][:10] = 1.0
    counts = [12, 3]
    out = [torch.empty(s, dtype=torch.bool, device=DEVICE) for s in [(30,), (4, 4)]]
    got = kernels.topk_magnitude_masks(weights, counts, out=out)
    want = topk_magnitude_masks_ref(weights, counts)
    assert got[0] is out[0] and all(torch.equal(g, w) for g, w in zip(got, want))


def test_topk_op_under_torch_compile():
    weights = [torch.randn(s, device=DEVICE) for s in [(30,), (4, 4)]]
    keep = torch.tensor([5, 16], device=DEVICE)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def masks_of(ws, k):
        return topk_magnitude_masks_triton([w * 2 for w in ws], k)

    got = masks_of(weights, keep)
    want = topk_magnitude_masks_ref(weights, [5, 16])
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_topk_op_registration_opcheck():
    weights = [torch.randn(s, device=DEVICE) for s in [(20,), (3, 3)]]
    out = [torch.empty(w.shape, dtype=torch.bool, device=DEVICE) for w in weights]
    torch.library.opcheck(torch.ops.prunerl.topk_magnitude_masks_.default,
                          (weights, torch.tensor([4, 9], device=DEVICE), out, True, [], [], 16, 4, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
def test_topk_realistic_sizes_gpu():
    # Impala-like layer sizes; ties from a previous pruning round (exact zeros).
    shapes = [(16, 4, 3, 3), (32, 32, 3, 3), (512, 3872), (18, 512)]
    weights = [torch.randn(s, device="cuda") for s in shapes]
    weights[2][torch.rand(shapes[2], device="cuda") < 0.8] = 0.0
    counts = [max(1, round(w.numel() * 0.1)) for w in weights]
    counts[2] = int((weights[2] != 0).sum()) + 1000
    assert_same_masks(weights, counts, block=4096)


@pytest.mark.gpu
def test_topk_warm_calls_along_a_gmp_schedule_gpu():
    # The warm path at realistic sizes, with thousands of programs racing on the same bins' atomics and the
    # cold pass skipped: weights drift a little and k shrinks between calls, as between GMP's mask updates.
    shapes = [(48, 4, 8, 8), (96, 48, 3, 3), (96, 96, 3, 3), (512, 11616), (18, 512)]
    weights = [torch.randn(s, device="cuda") for s in shapes]
    warm = []
    for fraction in (0.5, 0.49, 0.48, 0.47, 0.46, 0.45):
        for w in weights:
            w.add_(torch.randn_like(w), alpha=1e-3)
        assert_same_masks(weights, [max(1, round(w.numel() * fraction)) for w in weights], block=4096)
        warm.append(select_stats(weights, block=4096)["warm"])
    assert warm[0] == [False] * len(shapes)  # the first call has no guess
    assert all(all(w) for w in warm[1:]), warm  # then every guess holds (as under the interpreter)


@pytest.mark.gpu
@pytest.mark.parametrize("grid_stride", [False, True])
@pytest.mark.parametrize("offset", [0, 1])
def test_topk_vector_and_grid_stride_paths_gpu(monkeypatch, offset, grid_stride):
    # The full read's two compilations (offset 0: aligned weights, 128-bit loads; offset 1: views 4 bytes off
    # their allocation, scalar loads) and the candidate passes on a program per block or on one per SM looping
    # over blocks (388 blocks here: a few turns each on an H100's 132 SMs), warm and cold, with ties and full
    # and partial blocks, against the reference.
    from kernels import topk_mask

    monkeypatch.setattr(topk_mask, "CAND_PROGRAMS_PER_SM", 1 if grid_stride else 0)
    shapes = [(96, 48, 3, 3), (512, 3001), (7,)]
    buffers = [torch.randn(torch.Size(s).numel() + offset, device="cuda") for s in shapes]
    weights = [b[offset:].view(s) for b, s in zip(buffers, shapes)]
    weights[1][:, ::5] = 0.25  # a tie at T for some counts
    for fraction in (0.5, 0.3, 0.1, 0.05):
        counts = [max(1, round(w.numel() * fraction)) for w in weights]
        counts[1] = int((weights[1].abs() > 0.25).sum()) + 700  # T = 0.25, with ties to break
        assert_same_masks(weights, counts, block=4096)
    assert kernels._utils.all_aligned(weights) == (offset == 0)  # (so the launches took the intended variant)
    ws = topk_mask._workspaces.get(*topk_mask._workspace_key(weights, 4096, 1024))
    assert (ws.cand_programs < ws.n_blocks) == grid_stride


@pytest.mark.gpu
def test_topk_cuda_graph_capture():
    # Device keep counts and out= masks: the whole mask update replays from a graph with new weights.
    weights = [torch.randn(s, device="cuda") for s in [(64, 9), (1000,), (3,)]]
    keep = torch.tensor([100, 10, 3], device="cuda")
    out = [torch.empty(w.shape, dtype=torch.bool, device="cuda") for w in weights]
    topk_magnitude_masks_triton(weights, keep, out=out, zero_pruned=True)  # warm-up: compile, cache tables
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        topk_magnitude_masks_triton(weights, keep, out=out, zero_pruned=True)
    for _ in range(3):
        fresh = [torch.randn(w.shape, device="cuda") for w in weights]
        for w, f in zip(weights, fresh):
            w.copy_(f)
        keep.copy_(torch.tensor([int(torch.randint(0, w.numel() + 1, ())) for w in weights]))
        graph.replay()
        want = topk_magnitude_masks_ref(fresh, keep.tolist())
        assert all(torch.equal(o, w) for o, w in zip(out, want))
        assert all(bool((w[~o] == 0).all()) for w, o in zip(weights, out))
