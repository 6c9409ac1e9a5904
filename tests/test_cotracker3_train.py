"""CoTracker3 unrolled training forward: output format, exact gradients with checkpointing."""

import pytest
import torch

from models.cotracker3 import CoTrackerThree

TINY = dict(latent_dim=16, corr_levels=2, corr_radius=1, corr_hidden_dim=32, corr_out_dim=16, hidden_size=32,
            num_heads=4, time_depth=2, space_depth=1, num_virtual_tracks=4, window_len=8, model_resolution=(32, 32))


def tiny(variant: str = "online", **overrides) -> CoTrackerThree:
    torch.manual_seed(0)
    model = CoTrackerThree(variant=variant, **{**TINY, **overrides}).double()
    with torch.no_grad():
        for head in (model.updateformer.flow_head, model.updateformer.vis_conf_head):
            head.weight.normal_(0.0, 0.3)
    return model


def clip(frames: int = 19, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    video = torch.rand(batch, frames, 3, 32, 32, generator=g, dtype=torch.float64) * 255
    t = torch.tensor([0.0, 3.0, 9.0, frames - 1.0]).view(1, 4, 1).expand(batch, 4, 1)
    xy = torch.rand(batch, 4, 2, generator=g, dtype=torch.float64) * 31
    return video, torch.cat([t.double(), xy], dim=-1)


def loss_of(windows, seed: int = 7) -> torch.Tensor:
    """A loss touching every output the CoTracker3 loss uses (coords, sigmoid vis / conf)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for w in windows:
        for c, v, f in zip(w.coords, w.vis_logits, w.conf_logits):
            total = total + (c * torch.randn(c.shape, generator=g, dtype=c.dtype)).sum()
            total = total + (torch.sigmoid(v) * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum()
            total = total + (torch.sigmoid(f) * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum()
    return total


def gradients(model, video, queries, checkpointed: bool, **cfg) -> tuple[dict[str, torch.Tensor], list]:
    model.config.activation_checkpointing = checkpointed
    for key, value in cfg.items():
        setattr(model.config, key, value)
    model.zero_grad()
    windows = model.forward_train(video, queries, iters=2)
    loss_of(windows).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}, windows


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    # conv biases before instance norm have structurally ~0 gradients: compare on a global scale too
    floor = 1e-6 * max(g.abs().max().item() for g in b.values())
    for key in b:
        err = (a[key] - b[key]).abs().max().item() / max(b[key].abs().max().item(), floor)
        assert err < 1e-8, (key, err)


def test_online_windows_format_and_final_values_match_forward():
    model = tiny()
    video, queries = clip(frames=19, batch=2)
    windows = model.forward_train(video, queries, iters=3)
    assert [(w.start, w.num_frames) for w in windows] == [(0, 8), (4, 8), (8, 8), (12, 7)]
    for w in windows:
        assert len(w.coords) == len(w.vis_logits) == len(w.conf_logits) == 3
        assert w.coords[0].shape == (2, w.num_frames, 4, 2)
        assert w.vis_logits[0].shape == w.conf_logits[0].shape == (2, w.num_frames, 4)
        assert w.vis_logits[-1].requires_grad
    with torch.no_grad():
        out = model(video, queries, iters=3)
    tracks = torch.zeros_like(out.tracks)
    for w in windows:
        tracks[:, w.start:w.start + w.num_frames] = w.coords[-1].detach()
    torch.testing.assert_close(tracks, out.tracks, rtol=1e-8, atol=1e-8)


def test_offline_is_one_window_over_the_clip():
    model = tiny("offline", window_len=12)
    video, queries = clip(frames=19)
    windows = model.forward_train(video, queries, iters=2)
    assert len(windows) == 1 and windows[0].start == 0 and windows[0].num_frames == 19
    with torch.no_grad():
        out = model(video, queries, iters=2)
    torch.testing.assert_close(windows[0].coords[-1].detach(), out.tracks, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_checkpointed_gradients_equal_plain_backprop(variant):
    model = tiny(variant)
    video, queries = clip(frames=19)
    plain, plain_windows = gradients(model, video, queries, checkpointed=False)
    ckpt, ckpt_windows = gradients(model, video, queries, checkpointed=True)
    assert len(plain_windows) == (4 if variant == "online" else 1)
    assert_same_gradients(ckpt, plain)


def test_logit_gradient_flows_between_windows_unless_detached():
    model = tiny()
    video, queries = clip(frames=12)  # windows at 0 and 4

    def grads(detach: bool, window: int) -> dict[str, torch.Tensor]:
        model.config.detach_logits_between_windows = detach
        model.zero_grad()
        windows = model.forward_train(video, queries, iters=2)
        loss_of(windows[window:window + 1]).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    # the first window has no predecessor: the option changes nothing there
    assert_same_gradients(grads(True, 0), grads(False, 0))
    # the second window's loss reaches the first window's updates through the carried logits
    carried, cut = grads(False, 1), grads(True, 1)
    assert any(not torch.allclose(carried[k], cut[k], rtol=1e-6, atol=0) for k in carried)
    model.config.detach_logits_between_windows = False


def saved_bytes(model, video, queries) -> int:
    """Bytes of new memory autograd keeps outside checkpointed regions (inside them it keeps none).

    Storages are counted once; views of the input video (checkpoint inputs) cost nothing.
    """
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() != video.untyped_storage().data_ptr():
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        windows = model.forward_train(video, queries, iters=2)
    loss_of(windows).backward()
    return sum(storages.values())


def test_checkpointing_keeps_no_per_frame_activations():
    model = tiny()
    short, queries = clip(frames=16)
    long = torch.cat([short] * 4, dim=1)
    model.config.activation_checkpointing = False
    plain = saved_bytes(model, long, queries)
    model.config.activation_checkpointing = True
    ckpt_short, ckpt_long = saved_bytes(model, short, queries), saved_bytes(model, long, queries)
    assert ckpt_long < 0.01 * plain
    # what is kept per window (masks) is tiny next to one window of activations
    assert ckpt_long - ckpt_short < 0.01 * plain / 16
