"""Compare tracklight's CoTrackerThree with the reference co-tracker code on identical weights.

    python tools/parity_cotracker3.py --reference-repo /path/to/co-tracker \
        [--weights-online scaled_online.pth] [--weights-offline scaled_offline.pth] \
        [--frames 24 --points 16 --height 384 --width 512 --dtype float64]

Builds the reference CoTrackerThreeOnline / CoTrackerThreeOffline (random init unless
weights are given), copies their state_dict into ours with the strict loader, runs both
on the same synthetic video and queries, and prints max relative differences
(max |ours - ref| / max |ref|) of tracks, visibility and confidence for:
  forward    online sliding windows and offline single window
  stream     online chunked processing vs the reference's is_online mode
  predictor  the reference demo predictor's logic around our model vs our predictor
             (resizing, support grid, backward tracking, query forcing, visibility rule)
  train      unrolled training forward: loss and every parameter gradient
Random weights get larger head weights than the official init, so tracks actually move.

``--dump-keys PATH`` writes the reference state_dict layout (keys, shapes) of both variants;
``--write-golden PATH`` writes reference outputs for deterministic formula weights on a tiny
clip, which tests/test_cotracker3_parity.py compares against without the reference code.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from models.cotracker3 import CoTrackerThree
from models.cotracker3_predictor import CoTrackerThreePredictor

TARGET = 1e-4


def import_reference(repo: Path) -> dict[str, type]:
    if not (repo / "cotracker" / "models" / "core" / "cotracker" / "cotracker3_online.py").is_file():
        raise SystemExit(f"{repo} is not a co-tracker checkout (cotracker3_online.py not found)")
    sys.path.insert(0, str(repo))
    from cotracker.models.core.cotracker.cotracker3_offline import CoTrackerThreeOffline
    from cotracker.models.core.cotracker.cotracker3_online import CoTrackerThreeOnline
    from cotracker.predictor import CoTrackerPredictor
    return {"online": CoTrackerThreeOnline, "offline": CoTrackerThreeOffline, "predictor": CoTrackerPredictor}


def dump_keys(ref: dict[str, type], path: Path) -> None:
    layout = {}
    for variant, window in (("online", 16), ("offline", 60)):
        model = ref[variant](stride=4, corr_radius=3, window_len=window)
        sd = model.state_dict()
        params = dict(model.named_parameters())
        layout[variant] = {
            "window_len": window,
            "num_tensors": len(sd),
            "num_parameters": sum(p.numel() for p in params.values()),
            "keys": [[k, list(v.shape)] for k, v in sd.items()],
        }
    # one key per line keeps the file diffable
    lines = []
    for variant, info in layout.items():
        keys = ",\n".join(f"    {json.dumps(entry)}" for entry in info["keys"])
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in info.items() if k != "keys")
        lines.append(f'  "{variant}": {{{head}, "keys": [\n{keys}\n  ]}}')
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {path}")


GOLDEN = {"height": 32, "width": 48, "points": 3, "iters": 2, "frames": {"online": 17, "offline": 12}}


def formula_state_dict(template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic, RNG-free weights (sinusoids scaled like a fan-in init) for golden files."""
    out = {}
    for k, (name, tensor) in enumerate(template.items()):
        if name == "time_emb":
            out[name] = tensor.clone()
            continue
        wave = torch.sin(0.37 * torch.arange(tensor.numel(), dtype=torch.float64) + 1.1 * k).view(tensor.shape)
        if name.startswith(("updateformer.flow_head", "updateformer.vis_conf_head")):
            out[name] = 0.01 * wave  # small steps keep the golden tracks smooth and logits unsaturated
        elif tensor.dim() >= 2:
            out[name] = wave / math.sqrt(tensor[0].numel())
        elif name.endswith("norm_context.weight"):
            out[name] = 1 + 0.1 * wave
        else:
            out[name] = 0.1 * wave
    return out


def golden_inputs(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Formula video (1, T, 3, 32, 48) in 0..255 and three queries at frames 0, 5, 9 (float64)."""
    H, W = GOLDEN["height"], GOLDEN["width"]
    t, c, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (frames, 3, H, W)), indexing="ij")
    video = 127.5 + 127.5 * torch.sin(0.3 * (x - 0.7 * t) + 0.2 * (y + 0.3 * t) + c)
    queries = torch.tensor([[[0.0, 10.5, 7.25], [5.0, 30.0, 20.5], [9.0, 41.75, 3.0]]], dtype=torch.float64)
    return video[None], queries


def write_golden(ref: dict[str, type], path: Path) -> None:
    torch.set_default_dtype(torch.float64)
    golden = {key: GOLDEN[key] for key in ("height", "width", "iters")}
    for variant, window in (("online", 16), ("offline", 60)):
        model = ref[variant](stride=4, corr_radius=3, window_len=window,
                             model_resolution=(GOLDEN["height"], GOLDEN["width"])).double().eval()
        model.load_state_dict(formula_state_dict(model.state_dict()))
        video, queries = golden_inputs(GOLDEN["frames"][variant])
        with torch.no_grad():
            tracks, vis, conf, _ = model(video, queries, iters=GOLDEN["iters"])
        golden[variant] = {"frames": video.shape[1], "queries": queries.tolist(), "tracks": tracks.tolist(),
                           "vis": vis.tolist(), "conf": conf.tolist()}
    path.write_text(json.dumps(golden) + "\n")
    print(f"wrote {path}")


def build_pair(ref: dict[str, type], variant: str, args: argparse.Namespace, dtype: torch.dtype):
    window = 16 if variant == "online" else 60
    torch.manual_seed(args.seed)
    reference = ref[variant](stride=4, corr_radius=3, window_len=window, model_resolution=(args.height, args.width))
    weights = getattr(args, f"weights_{variant}")
    if weights:
        reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        with torch.no_grad():
            for head in (reference.updateformer.flow_head, reference.updateformer.vis_conf_head):
                head.weight.normal_(0.0, args.head_std)
    ours = CoTrackerThree(variant=variant, window_len=window, model_resolution=(args.height, args.width))
    ours.load_official(reference.state_dict())
    return reference.to(dtype).eval(), ours.to(dtype).eval()


def synthetic_clip(args: argparse.Namespace, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A random texture sliding over time (so tracking is meaningful) and random queries."""
    g = torch.Generator().manual_seed(args.seed + 1)
    T, H, W = args.frames, args.height, args.width
    texture = torch.rand(1, 3, H // 8 + 4, W // 8 + 4, generator=g, dtype=torch.float32)
    texture = F.interpolate(texture, (H + 32, W + 32), mode="bilinear", align_corners=True) * 255
    frames = [texture[0, :, 16 + round(8 * math.sin(t / 5)):, 16 + t // 2:][:, :H, :W] for t in range(T)]
    video = torch.stack(frames)[None].to(dtype)
    # float32-representable queries: the reference rounds its initial coords to float32
    t = torch.randint(0, T, (1, args.points, 1), generator=g).float()
    xy = torch.rand(1, args.points, 2, generator=g, dtype=torch.float32) * torch.tensor([W - 1.0, H - 1.0], dtype=torch.float32)
    return video, torch.cat([t, xy], dim=-1).to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def report(name: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], results: list) -> None:
    parts = []
    for key, (a, b) in pairs.items():
        value = rel(a, b)
        results.append((value, TARGET))
        parts.append(f"{key} {value:.2e}")
    print(f"  {name:<28} " + "  ".join(parts))


def check_forward(reference, ours, video, queries, args, results) -> None:
    with torch.no_grad():
        r_tracks, r_vis, r_conf, _ = reference(video, queries, iters=args.iters)
        o = ours(video, queries, iters=args.iters)
    report("forward", {"tracks": (o.tracks, r_tracks), "vis": (o.vis, r_vis), "conf": (o.conf, r_conf)}, results)


def check_stream(reference, ours, video, queries, args, results) -> None:
    T, step = video.shape[1], reference.window_len // 2
    with torch.no_grad():
        reference.init_video_online_processing()
        for ind in range(0, max(T - step, 1), step):  # CoTrackerOnlinePredictor's chunking
            r_tracks, r_vis, r_conf, _ = reference(video[:, ind:ind + 2 * step], queries, iters=args.iters,
                                                   is_online=True)
        stream = ours.stream(queries, iters=args.iters)
        windows = [w for t in range(0, T, step) for w in stream.push(video[:, t:t + step])] + stream.finish()
    tracks = torch.zeros_like(r_tracks)
    vis, conf = torch.zeros_like(r_vis), torch.zeros_like(r_conf)
    for w in windows:
        end = w.start + w.num_frames
        tracks[:, w.start:end] = w.coords[-1]
        vis[:, w.start:end] = torch.sigmoid(w.vis_logits[-1])
        conf[:, w.start:end] = torch.sigmoid(w.conf_logits[-1])
    report("stream (8-frame pushes)", {"tracks": (tracks, r_tracks), "vis": (vis, r_vis), "conf": (conf, r_conf)},
           results)


class _OursAsReference(torch.nn.Module):
    """Our model behind the reference model's call signature.

    The predictor check runs the reference predictor around *our* model, so it compares
    predictor logic alone (resizing, support grid, backward tracking, query forcing,
    thresholds); the model itself is compared by the other checks. Running the
    reference model inside would add its float32 rounding of grid coordinates, which
    random-weight dynamics amplify.
    """

    def __init__(self, model: CoTrackerThree) -> None:
        super().__init__()
        self.inner = model
        self.model_resolution = model.config.model_resolution
        self.window_len = model.window_len

    def forward(self, video, queries, iters=4, **_):
        out = self.inner(video, queries, iters=iters)
        return out.tracks, out.vis, out.conf, None


def check_predictor(ref, reference, ours, video, queries, args, results) -> None:
    online = reference.window_len == 16
    # the reference predictor builds a default model; put ours in its place
    predictor = ref["predictor"](checkpoint=None, offline=not online, window_len=reference.window_len)
    predictor.model = _OursAsReference(ours)
    predictor.interp_shape = ours.config.model_resolution
    # it hard-codes 6 iterations and the sigmoid(vis) > 0.9 rule
    mine = CoTrackerThreePredictor(ours, iters=6, support_grid_size=6, visibility_rule="vis")
    # a smaller input exercises the resize and the coordinate rescaling
    H, W = video.shape[-2] * 3 // 4, video.shape[-1] * 3 // 4
    small = F.interpolate(video[0], (H, W), mode="bilinear", align_corners=False)[None]
    q = torch.cat([queries[..., :1], queries[..., 1:] * q_scale(video, H, W)], dim=-1)
    with torch.no_grad():
        r_tracks, r_visible = predictor(small, q, backward_tracking=online)
        o = mine(small, q, backward_tracking=online)
    flips = (o.visible != r_visible).sum().item()
    report(f"predictor (backward={online})", {"tracks": (o.tracks, r_tracks)}, results)
    print(f"  {'':<28} visible flags differing: {flips} of {r_visible.numel()}")


def q_scale(video: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return video.new_tensor([(W - 1) / (video.shape[-1] - 1), (H - 1) / (video.shape[-2] - 1)])


def check_train(reference, ours, video, queries, args, results) -> None:
    g = torch.Generator().manual_seed(args.seed + 2)
    weights: dict[tuple[int, int, str], torch.Tensor] = {}

    def loss_of(coords, vis, conf):
        """Random-weighted sum of every per-window, per-iteration output (vis/conf as probabilities)."""
        total = 0.0
        for j, window in enumerate(zip(coords, vis, conf)):
            for i, (c, v, f) in enumerate(zip(*window)):
                for name, x in (("c", c), ("v", v), ("f", f)):
                    if (j, i, name) not in weights:
                        weights[(j, i, name)] = torch.randn(x.shape, generator=g, dtype=torch.float64)
                    total = total + (x * weights[(j, i, name)].to(x.dtype)).sum()
        return total

    def reference_grads(model, v, q):
        model.zero_grad()
        _, _, _, (coords, vis, conf, _) = model(v, q, iters=args.iters, is_train=True)
        loss = loss_of(coords, vis, conf)
        loss.backward()
        return loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}

    r_loss, r_grads = reference_grads(reference, video, queries)
    target, tolerance = (r_loss, r_grads), TARGET
    if video.dtype != torch.float64:
        # In float32 a random-signed sum over every output and its gradients are dominated by
        # summation order, so both implementations are judged against the reference in float64,
        # and ours must stay within 10x the reference's own float32 error.
        torch.set_default_dtype(torch.float64)
        try:
            target = reference_grads(copy.deepcopy(reference).double(), video.double(), queries.double())
        finally:
            torch.set_default_dtype(video.dtype)
        noise = grad_errors(r_loss, r_grads, *target)
        tolerance = max(TARGET, 10 * noise[0], 10 * noise[1])
        print(f"  {'train: reference f32 vs f64':<28} loss {noise[0]:.2e}  worst param grad {noise[1]:.2e} ({noise[2]})")
    for checkpointed in (True, False):
        ours.config.activation_checkpointing = checkpointed
        ours.zero_grad()
        windows = ours.forward_train(video, queries, iters=args.iters)
        o_loss = loss_of([w.coords for w in windows], [[torch.sigmoid(v) for v in w.vis_logits] for w in windows],
                         [[torch.sigmoid(f) for f in w.conf_logits] for w in windows])
        o_loss.backward()
        loss_err, worst, worst_name, zero_noise = grad_errors(
            o_loss.detach(), {k: p.grad for k, p in ours.named_parameters()}, *target)
        results.extend([(loss_err, tolerance), (worst, tolerance)])
        label = "train (checkpointed)" if checkpointed else "train (plain)"
        vs = "" if tolerance == TARGET else " vs reference f64"
        print(f"  {label:<28} windows {len(windows)}{vs}  loss {loss_err:.2e}  worst param grad {worst:.2e} "
              f"({worst_name})")
        print(f"  {'':<28} pre-instance-norm conv biases (exactly 0 in exact arithmetic): "
              f"|grad| <= {zero_noise:.1e} of the largest gradient")
    ours.config.activation_checkpointing = True


def grad_errors(loss, grads, ref_loss, ref_grads) -> tuple[float, float, str, float]:
    """Relative loss error, worst relative parameter-gradient error (and its tensor), zero-gradient noise.

    Biases of convs followed by instance norm have an exactly zero true gradient; both sides
    hold rounding noise there, so they are reported on the scale of the largest gradient
    instead of their own. Every other tensor is judged against its own largest reference
    gradient (floored at 1e-6 of the largest of all).
    """
    top = max(g.abs().max().item() for g in ref_grads.values())
    worst, worst_name, zero_noise = 0.0, "", 0.0
    for name, grad in grads.items():
        ref = ref_grads[name].double()
        if _zero_by_instance_norm(name):
            zero_noise = max(zero_noise, grad.abs().max().item() / top, ref.abs().max().item() / top)
            continue
        value = (grad.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6 * top)
        if value > worst:
            worst, worst_name = value, name
    return rel(loss, ref_loss), worst, worst_name, zero_noise


def _zero_by_instance_norm(name: str) -> bool:
    """Conv biases in fnet that an instance norm cancels (all but the output conv3)."""
    return name.startswith("fnet.") and name.endswith(".bias") and name != "fnet.conv3.bias"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True)
    parser.add_argument("--weights-online", type=Path)
    parser.add_argument("--weights-offline", type=Path)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-std", type=float, default=0.05, help="std of the random flow / vis-conf heads")
    parser.add_argument("--checks", default="forward,stream,predictor,train")
    parser.add_argument("--variants", default="online,offline")
    parser.add_argument("--dump-keys", type=Path, help="write the reference key layout JSON and exit")
    parser.add_argument("--write-golden", type=Path, help="write reference outputs for formula weights and exit")
    args = parser.parse_args()

    ref = import_reference(args.reference_repo.resolve())
    if args.dump_keys:
        dump_keys(ref, args.dump_keys)
        return
    if args.write_golden:
        write_golden(ref, args.write_golden)
        return
    if args.height % 16 or args.width % 16:
        raise SystemExit("height and width must be multiples of 16 (stride 4 and a 4-level pyramid)")
    dtype = getattr(torch, args.dtype)
    # the reference creates some tensors with the default dtype; match it to the comparison dtype
    torch.set_default_dtype(dtype)
    checks = set(args.checks.split(","))
    video, queries = synthetic_clip(args, dtype)
    print(f"clip T={args.frames} N={args.points} {args.height}x{args.width} iters={args.iters} dtype={args.dtype}")
    results: list[tuple[float, float]] = []  # (relative difference, tolerance)
    for variant in args.variants.split(","):
        reference, ours = build_pair(ref, variant, args, dtype)
        print(f"{variant} (window {reference.window_len}):")
        if "forward" in checks:
            check_forward(reference, ours, video, queries, args, results)
        if "stream" in checks and variant == "online":
            check_stream(reference, ours, video, queries, args, results)
        if "predictor" in checks:
            check_predictor(ref, reference, ours, video, queries, args, results)
        if "train" in checks:
            check_train(reference, ours, video, queries, args, results)
    worst = max((value for value, _ in results), default=0.0)
    passed = all(value <= tolerance for value, tolerance in results)
    print(f"worst relative difference {worst:.2e} (target <= {TARGET:.0e}, float32 gradients: within 10x the "
          f"reference's own float32 error): {'PASS' if passed else 'FAIL'}")
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
