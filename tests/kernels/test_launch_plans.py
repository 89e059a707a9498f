"""Launch plans (kernels._utils): cached validation, ownership of the tables a CUDA graph reads, aliasing,
alignment and the device guard. CUDA-graph captures are simulated on the CPU by making `capturing()` true:
what is checked is which tables are cached, held and discarded, not the graph itself (GPU tests do that).
"""

import gc

import pytest
import torch

from kernels import _utils, graph_tables, masked_adam, topk_mask
from kernels.masked_adam import masked_adam_triton_
from kernels.reference import masked_adam_ref_, topk_magnitude_masks_ref
from kernels.topk_mask import topk_magnitude_masks_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def adam_state(shapes=((30,), (4, 5)), gen=None):
    params = [torch.randn(s, device=DEVICE) for s in shapes]
    grads = [torch.randn(s, device=DEVICE) for s in shapes]
    m, v = [torch.zeros(s, device=DEVICE) for s in shapes], [torch.zeros(s, device=DEVICE) for s in shapes]
    masks = [torch.rand(s, device=DEVICE) > 0.5 for s in shapes]
    return params, grads, m, v, masks


def adam_step(state, **kw):
    masked_adam_triton_(*state, step=kw.pop("step", 3), lr=1e-2, block=16, **kw)


def test_repeated_calls_reuse_one_plan():
    state = adam_state()
    adam_step(state)
    plan = _plan_of(state)
    assert plan is not None
    adam_step(state)
    assert _plan_of(state) is plan
    weights = [torch.randn(50, device=DEVICE), torch.randn(3, 7, device=DEVICE)]
    out = [torch.empty(w.shape, dtype=torch.bool, device=DEVICE) for w in weights]
    keep = torch.tensor([5, 6], device=DEVICE)
    n_plans, n_workspaces = len(topk_mask._plans), len(topk_mask._workspaces)
    for _ in range(3):
        topk_magnitude_masks_triton(weights, keep, out=out, block=16)
    assert len(topk_mask._plans) == n_plans + 1 and len(topk_mask._workspaces) == n_workspaces + 1
    topk_magnitude_masks_triton(weights, [7, 8], block=16)  # other outputs and counts: the same workspace
    assert len(topk_mask._workspaces) == n_workspaces + 1


def _adam_key(state, block=16):
    key, ptrs, _ = masked_adam._plan_key(*map(list, state), block)
    return key, ptrs


def test_a_tensor_that_moves_gets_a_new_plan():
    """`p.data = ...` keeps the tensor object but moves its memory (and may change its shape): the cached
    plan's addresses no longer match, so the call validates again and writes where the tensor now is."""
    state = adam_state()
    params, grads, m, v, masks = state
    adam_step(state)
    old = _plan_of(state)
    params[0].data = torch.randn(30, device=DEVICE)
    want = [[t.clone() for t in ts] for ts in (params, m, v)]
    adam_step(state)
    masked_adam_ref_(*want[:1], grads, *want[1:], masks, step=3, lr=1e-2)
    assert _plan_of(state) not in (None, old)
    for got, ref in zip((params, m, v), want):
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)
    params[1].data = torch.randn(5, 4, device=DEVICE)  # the new shape is validated, and refused
    with pytest.raises(ValueError, match="shape"):
        adam_step(state)


def test_plans_die_with_their_tensors():
    weights = [torch.randn(40, device=DEVICE)]
    n = len(topk_mask._plans)
    out = topk_magnitude_masks_triton(weights, [4], block=16)  # fresh masks: a plan of their own
    assert len(topk_mask._plans) == n + 1
    del out
    gc.collect()
    assert len(topk_mask._plans) == n
    cache = _utils.PlanCache(size=2)
    plans = []
    for i in range(3):
        plan = type("Plan", (), {"buffers": []})()
        cache.put((i,), (), plan, [])
        plans.append(plan)
    assert len(cache) == 2 and cache.get((0,), ()) is None and cache.get((2,), ()) is plans[2]


@pytest.fixture
def fake_capture(monkeypatch):
    """Calls made while this is on behave as if a CUDA graph were being captured."""
    flag = {"on": False}
    monkeypatch.setattr(_utils, "capturing", lambda device: flag["on"])
    return flag


def test_tables_used_by_a_capture_are_held_by_its_owner(fake_capture):
    state = adam_state()
    adam_step(state)  # warm-up: the plan is built and cached outside the capture
    plan = _plan_of(state)
    fake_capture["on"] = True
    with graph_tables() as held:
        adam_step(state)
    fake_capture["on"] = False
    ids = {id(b) for b in plan.buffers}
    del plan
    masked_adam._plans.clear()  # evicted from the cache: the owner still holds every buffer the graph reads
    gc.collect()
    assert {id(b) for b in held._buffers.values()} == ids
    held.release()
    assert len(held) == 0


def test_a_plan_first_built_inside_a_capture_is_never_cached(fake_capture):
    weights = [torch.randn(64, device=DEVICE), torch.randn(5, 5, device=DEVICE)]
    keep = torch.tensor([10, 3], device=DEVICE)
    n_plans, n_workspaces = len(topk_mask._plans), len(topk_mask._workspaces)
    process_held = len(_utils._held_for_process)
    fake_capture["on"] = True
    with graph_tables() as held:
        got = topk_magnitude_masks_triton(weights, keep, block=16)
    # Its tables were written by fill kernels the graph recorded: only that graph may use them.
    assert len(topk_mask._plans) == n_plans and len(topk_mask._workspaces) == n_workspaces and len(held) > 0
    assert len(_utils._held_for_process) == process_held  # the owner holds them, not the process
    fake_capture["on"] = False
    assert all(torch.equal(g, w) for g, w in zip(got, topk_magnitude_masks_ref(weights, [10, 3])))
    fake_capture["on"] = True
    topk_magnitude_masks_triton(weights, keep, block=16)  # a capture outside any graph_tables(): held for good
    assert len(_utils._held_for_process) > process_held


def test_a_failed_capture_lets_its_tables_go(fake_capture):
    state = adam_state()
    fake_capture["on"] = True
    with pytest.raises(RuntimeError, match="capture failed"), graph_tables() as held:
        adam_step(state)
        assert len(held) > 0
        raise RuntimeError("capture failed")
    assert len(held) == 0
    fake_capture["on"] = False
    assert _plan_of(state) is None  # nothing from the capture was cached


def test_aliased_inputs_are_refused():
    params, grads, m, v, masks = adam_state()
    with pytest.raises(ValueError, match="overlaps"):  # one tensor as both moments
        masked_adam_triton_(params, grads, m, m, masks, step=1, lr=1e-3)
    with pytest.raises(ValueError, match="overlaps"):  # a gradient that is a view of a parameter
        masked_adam_triton_(params, [params[0].view(30), grads[1]], m, v, masks, step=1, lr=1e-3)
    same_grad = [grads[0], grads[0][:20].view(4, 5)]  # read-only inputs may share memory
    masked_adam_triton_(params, same_grad, m, v, masks, step=1, lr=1e-3, block=16)
    w = torch.randn(64, device=DEVICE)
    with pytest.raises(ValueError, match="overlaps"):  # one mask buffer for two outputs
        out = torch.empty(64, dtype=torch.bool, device=DEVICE)
        topk_magnitude_masks_triton([w, w.clone()], [3, 3], out=[out, out])
    with pytest.raises(ValueError, match="overlaps"):  # zeroing weights that are also the moments
        topk_magnitude_masks_triton([w], [3], zero_pruned=True, exp_avgs=[w], exp_avg_sqs=[torch.zeros_like(w)])
    topk_magnitude_masks_triton([w, w], [3, 3], block=16)  # the same weights twice, read only: fine
    buf = torch.zeros(30, device=DEVICE)
    with pytest.raises(ValueError, match="overlaps"):  # partial overlap of two views
        _utils.check_no_aliasing([("a", buf[0:10], True), ("b", buf[5:15], False)])
    _utils.check_no_aliasing([("a", buf[0:10], True), ("b", buf[10:20], True), ("c", buf[20:], False)])


def test_misaligned_tensors_run_without_the_alignment_promise():
    # A view one element into a buffer is contiguous but not 16-byte aligned: no vectorisation hints then.
    state = adam_state()
    adam_step(state)
    assert _plan_of(state).aligned
    storage = torch.randn(31, device=DEVICE)
    state[0][0] = storage[1:]
    want = [[t.clone() for t in ts] for ts in (state[0], state[2], state[3])]
    adam_step(state)
    masked_adam_ref_(want[0], state[1], want[1], want[2], state[4], step=3, lr=1e-2)
    assert not _plan_of(state).aligned
    for got, ref in zip((state[0], state[2], state[3]), want):
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)


def test_mask_selection_vectorises_only_aligned_weights_and_masks():
    # The full read's ALIGNED promise: VEC weights (16 bytes of fp32, 8 of bf16) and VEC mask bytes per row.
    def plan(weights, out, block=16):
        keep = [w.numel() // 2 for w in weights]
        got = topk_magnitude_masks_triton(weights, keep, out=out, block=block)
        for g, r in zip(got, topk_magnitude_masks_ref(weights, keep)):
            assert torch.equal(g, r)
        tensors = (*weights, *out, topk_mask._keep_counts_tensor(weights, keep, DEVICE))
        return topk_mask._plans.get((block, block // 4, False, *map(id, tensors)), tuple(t.data_ptr() for t in tensors))

    w = torch.randn(70, device=DEVICE)
    masks = lambda ws: [torch.empty(x.shape, dtype=torch.bool, device=DEVICE) for x in ws]  # noqa: E731
    assert plan([w], masks([w])).aligned
    storage = torch.randn(80, device=DEVICE)
    assert not plan([storage[1:71]], masks([w])).aligned  # weights 4 bytes off
    assert plan([storage[4:74]], masks([w])).aligned  # 16 bytes off: still a multiple of 16
    mask_storage = torch.empty(80, dtype=torch.bool, device=DEVICE)
    assert not plan([w], [mask_storage[2:72]]).aligned  # masks 2 bytes off
    half = torch.randn(80, device=DEVICE).to(torch.bfloat16)
    assert plan([half[4:74]], masks([w])).aligned  # bf16 rows need 8 bytes
    assert not plan([half[2:72]], masks([w])).aligned


def _plan_of(state):
    return masked_adam._plans.get(*_adam_key(state))


def test_device_guard(monkeypatch):
    assert isinstance(_utils.device_guard(torch.device("cpu")), type(_utils.contextlib.nullcontext()))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert isinstance(_utils.device_guard(torch.device("cuda", 0)), type(_utils.contextlib.nullcontext()))
    guard = _utils.device_guard(torch.device("cuda", 1))  # launches for cuda:1 tensors run with cuda:1 current
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_tensors_on_two_devices_are_refused():
    params, grads, m, v, masks = adam_state()
    with pytest.raises(ValueError, match="is on meta"):
        masked_adam_triton_(params, grads, m, [v[0], v[1].to("meta")], masks, step=1, lr=1e-3)
    with pytest.raises(ValueError, match="on meta"):
        topk_magnitude_masks_triton([params[0], params[1].to("meta")], [3, 3])


def test_triton_pin_admits_the_tested_releases():
    """pyproject.toml pins the Triton releases the kernels are tested with: the GPU image's 3.6 and this one."""
    import pathlib
    import tomllib

    import triton
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    (spec,) = [Requirement(d).specifier for d in deps["project"]["dependencies"] if Requirement(d).name == "triton"]
    assert Version("3.6.0") in spec and Version(triton.__version__) in spec
    assert Version("3.5.1") not in spec and Version("3.10.0") not in spec


@pytest.mark.gpu
def test_captured_graphs_keep_their_tables_after_the_caches_forget_them():
    """Graphs replayed after every cached plan was dropped and the freed memory reused: their tables are held
    by `graph_tables`, so the replays still read the right pointers and plans."""
    params, grads, m, v, masks = adam_state(shapes=((300, 7), (513,)))
    step = torch.zeros((), device="cuda")
    weights = [p.detach().clone() for p in params]
    keep = torch.tensor([200, 100], device="cuda")
    out = [torch.empty(w.shape, dtype=torch.bool, device="cuda") for w in weights]

    def work():
        step.add_(1)
        masked_adam_triton_(params, grads, m, v, masks, step=step, lr=1e-2)
        topk_magnitude_masks_triton(weights, keep, out=out)

    work()  # warm-up: compile, build and cache the plans
    graph = torch.cuda.CUDAGraph()
    with graph_tables() as held, torch.cuda.graph(graph):
        work()
    masked_adam._plans.clear()
    topk_mask._plans.clear()
    topk_mask._workspaces.clear()
    gc.collect()
    junk = [torch.full((4096,), -1, dtype=torch.int64, device="cuda") for _ in range(64)]  # reuse freed blocks
    want = [[t.clone() for t in ts] for ts in (params, m, v)]
    for s in range(2, 5):
        graph.replay()
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=s, lr=1e-2)
    torch.cuda.synchronize()
    for got, ref in zip((params, m, v), want):
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)
    assert all(torch.equal(o, r) for o, r in zip(out, topk_magnitude_masks_ref(weights, [200, 100])))
    del junk, held


@pytest.mark.gpu
def test_new_gradient_tensors_at_every_step_on_the_gpu():
    """Eager steps as after zero_grad(set_to_none=True): each step's gradients are new tensors, often at the
    addresses the caching allocator just freed, bound to the cached plan (their tables copied without a sync)."""
    params, _, m, v, masks = adam_state(shapes=((300, 7), (513,)))
    want = [[t.clone() for t in ts] for ts in (params, m, v)]
    step = torch.zeros((), device="cuda")
    for s in range(1, 6):
        grads = [torch.randn(p.shape, device="cuda").to(torch.bfloat16 if s == 3 else torch.float32) for p in params]
        step.add_(1)
        masked_adam_triton_(params, grads, m, v, masks, step=step, lr=1e-2)
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=s, lr=1e-2)
        del grads
    torch.cuda.synchronize()
    for got, ref in zip((params, m, v), want):
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)


def guarded(shape, dtype, fill, pad=8):
    """A tensor of `shape` inside a buffer with `pad` canary elements on each side (kept aligned)."""
    n = 1
    for d in shape:
        n *= d
    buf = torch.full((n + 2 * pad,), fill, dtype=dtype, device=DEVICE)
    return buf, buf[pad:pad + n].view(shape)


def test_kernels_never_touch_memory_around_their_tensors():
    # Sizes one short of, equal to and one past a block multiple: the tail block must stay in bounds.
    shapes = [(31,), (32,), (33,), (3, 21)]
    bufs, (params, grads, m, v) = [], ([], [], [], [])
    for s in shapes:
        for seq, fill in ((params, 7.0), (grads, 8.0), (m, 9.0), (v, 10.0)):
            buf, t = guarded(s, torch.float32, fill)
            t.copy_(torch.randn(s) if seq is not v else torch.rand(s))
            bufs.append((buf, t, fill))
            seq.append(t)
    masks = [torch.rand(s, device=DEVICE) > 0.3 for s in shapes]
    for moments in ("faithful", "frozen"):
        masked_adam_triton_(params, grads, m, v, masks, step=2, lr=1e-2, weight_decay=0.1, moments=moments, block=16)
    outs = []
    for s in shapes:
        buf, t = guarded(s, torch.bool, True)
        bufs.append((buf, t, True))
        outs.append(t)
    for kwargs in (dict(), dict(zero_pruned=True, exp_avgs=m, exp_avg_sqs=v)):
        topk_magnitude_masks_triton(params, [5, 6, 7, 8], out=outs, block=16, slots=4, **kwargs)
    for buf, t, fill in bufs:
        pad = (buf.numel() - t.numel()) // 2
        assert bool((buf[:pad] == fill).all()) and bool((buf[-pad:] == fill).all())


def test_a_plan_built_in_a_capture_reuses_the_warm_up_tables(fake_capture):
    """New gradients in every call (e.g. masked copies made inside the graph): the plan is new, but only the
    gradients' pointer table has to be written by fill kernels in the graph; the block plan and the other
    pointer tables are the warm-up call's."""
    params, grads, m, v, masks = adam_state()
    adam_step((params, [g * 1 for g in grads], m, v, masks))  # warm-up, with its own temporaries
    device = params[0].device
    warm = [_utils.block_plan([p.numel() for p in params], 16, device)[0]] + [
        _utils.pointer_table(seq, device) for seq in (params, m, v, masks)]  # cache hits: the warm-up's tables
    cached_before = {id(t) for t in _utils._tables.values()}
    fake_capture["on"] = True
    with graph_tables() as held:
        temporaries = [g * 1 for g in grads]
        adam_step((params, temporaries, m, v, masks))
    fake_capture["on"] = False
    held_ids = {id(b) for b in held._buffers.values()}
    assert {id(t) for t in warm} <= held_ids
    grads_table = [b for b in held._buffers.values() if b.tolist() == [t.data_ptr() for t in temporaries]]
    assert len(grads_table) == 1
    # Nothing made in the capture is cached. (The temporaries may sit where the warm-up's, since freed, did: their
    # table is then the warm-up's, a cache hit with the same contents, which is right too; the old check failed.)
    assert {id(t) for t in _utils._tables.values()} <= cached_before


def test_new_gradient_tensors_rebind_the_plan_without_validating_it_again(monkeypatch):
    """After `zero_grad(set_to_none=True)` autograd makes new gradient tensors at every step: the plan of the
    same parameters, moments and masks is reused with the new gradients bound (and checked), and the results
    stay the reference's, also when the gradients' dtype changes."""
    builds = []
    init = masked_adam._AdamPlan.__init__
    monkeypatch.setattr(masked_adam._AdamPlan, "__init__", lambda self, *a: builds.append(1) or init(self, *a))
    params, _, m, v, masks = adam_state()
    want = [[t.clone() for t in ts] for ts in (params, m, v)]
    for step, dtype in ((1, torch.float32), (2, torch.float32), (3, torch.bfloat16), (4, torch.float32)):
        grads = [torch.randn(p.shape, device=DEVICE).to(dtype) for p in params]
        masked_adam_triton_(params, grads, m, v, masks, step=step, lr=1e-2, block=16)
        masked_adam_ref_(want[0], grads, want[1], want[2], masks, step=step, lr=1e-2)
        for got, ref in zip((params, m, v), want):
            for g, r in zip(got, ref):
                torch.testing.assert_close(g, r)
    assert len(builds) == 1
    last = (params, grads, m, v, masks)  # the last step's plan is cached whole: its own gradient table
    new = (params, [torch.randn(p.shape, device=DEVICE) for p in params], m, v, masks)
    adam_step(new)
    assert _plan_of(new).tables[1] is not _plan_of(last).tables[1]
    assert _plan_of(new).tables[0] is _plan_of(last).tables[0] and len(builds) == 1


def test_new_gradient_tensors_are_validated():
    params, grads, m, v, masks = adam_state()
    adam_step((params, grads, m, v, masks))  # the plan the later calls rebind
    cases = [
        ([grads[0], torch.randn(5, 4, device=DEVICE)], ValueError, "shape"),
        ([grads[0], torch.randn(5, 4, device=DEVICE).t()], ValueError, "not contiguous"),
        ([grads[0].half(), grads[1].half()], TypeError, "dtype"),
        ([grads[0], grads[1].bfloat16()], TypeError, "dtype"),
        ([grads[0], params[1]], ValueError, "overlaps params\\[1\\]"),
        ([m[0][:30], grads[1]], ValueError, "overlaps exp_avgs\\[0\\]"),
    ]
    for bad, error, match in cases:
        before = [[t.clone() for t in ts] for ts in (params, m, v)]
        with pytest.raises(error, match=match):
            adam_step((params, bad, m, v, masks))
        for got, ref in zip((params, m, v), before):  # refused before anything was written
            assert all(torch.equal(g, r) for g, r in zip(got, ref))


def test_spans_find_overlaps_at_their_edges():
    buf = torch.zeros(40, device=DEVICE)
    spans = _utils.Spans([("a", buf[10:20], True), ("b", buf[30:35], True), ("none", None, True)])
    spans.check_reads([("r", buf[0:10]), ("r", buf[20:30]), ("r", buf[35:]), ("empty", buf[15:15]), ("n", None)])
    for lo, hi, writer in ((5, 11, "a"), (19, 25, "a"), (12, 13, "a"), (0, 40, "b"), (34, 36, "b"), (25, 31, "b")):
        with pytest.raises(ValueError, match=f"r overlaps {writer} "):
            spans.check_reads([("r", buf[lo:hi])])


def test_alias_check_spans_strided_views_by_their_strides():
    """A transposed or sliced view's memory runs by its strides: a numel-long span missed the end of a column
    slice (an overlap let through) and could not tell disjoint row blocks of a transposed tensor apart."""
    from kernels._utils import check_no_aliasing

    big = torch.randn(8, 6)
    col = big[:, 5:]  # 8 elements spread over the whole storage
    with pytest.raises(ValueError, match="overlaps"):
        check_no_aliasing([("a", col, True), ("b", big[7:, :5], False)])  # the last row's first five
    t = torch.randn(6, 8).t()  # non-contiguous, rows of t are columns of the storage
    check_no_aliasing([("a", big[:4], True), ("b", big[4:], True), ("c", t, False)])  # disjoint: fine
    with pytest.raises(ValueError, match="overlaps"):  # interleaved columns count as overlapping (documented)
        check_no_aliasing([("a", big[:, :3], True), ("b", big[:, 3:], True)])
