import pytest
import torch

from configs.loader import ConfigError, override_args
from datamodules.tracking import EvalClips
from lightning_modules.cotracker3 import CoTracker3Module
from lightning_modules.point_tracking import to_metric_space
from models.checkpoint_io import CheckpointMismatchError
from tests.tiny_run import TINY_MODEL
from train import load_config


def _module(tmp_path, *extra):
    _, cfg = load_config(override_args([*TINY_MODEL, f"run_dir={tmp_path}"], list(extra)))
    return CoTracker3Module(cfg.model)


def _batch(tiny_shards):
    clips = EvalClips(tiny_shards["val"], clip_len=8, num_queries=16)
    batch = {k: torch.stack([clips[i][k] for i in range(2)]) for k in ("video", "queries", "tracks", "visible", "valid")}
    batch["video"] = batch["video"].float()
    return batch


@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_down(tmp_path, tiny_shards):
    torch.manual_seed(0)
    module = _module(tmp_path, "model.arch.hidden_size=32", "model.arch.latent_dim=16", "model.arch.corr_out_dim=16")
    batch = _batch(tiny_shards)
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses, position = [], []
    for _ in range(100):
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        position.append(module.last_loss_terms["visible"].item())
    def mean(xs):
        return sum(xs) / len(xs)

    assert mean(losses[-5:]) < 0.3 * mean(losses[:5]), losses[::10]
    assert mean(position[-5:]) < 0.6 * mean(position[:5]), position[::10]


def test_freeze_by_prefix_excludes_parameters_from_the_optimiser(tmp_path):
    module = _module(tmp_path, "model.freeze=[fnet.]")
    frozen = [n for n, p in module.model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("fnet.") for n in frozen)
    with pytest.raises(ConfigError, match=r"model.freeze: prefix\(es\) \['fnett.'\] match no parameter of CoTrackerThree"):
        _module(tmp_path, "model.freeze=[fnett.]")


def test_init_from_loads_official_layout_strictly_and_rejects_wrong_files(tmp_path):
    donor = _module(tmp_path)
    path = tmp_path / "weights.pth"
    torch.save(donor.model.state_dict(), path)
    loaded = _module(tmp_path, f"model.init_from={path}")
    assert all(torch.equal(a, b) for a, b in zip(donor.model.state_dict().values(), loaded.model.state_dict().values()))
    bad = {k: v for k, v in donor.model.state_dict().items() if not k.startswith("corr_mlp.")}
    torch.save(bad, path)
    with pytest.raises(CheckpointMismatchError, match="corr_mlp.fc1.weight"):
        _module(tmp_path, f"model.init_from={path}")


def test_metric_space_maps_frame_corners_like_the_benchmark():
    pts = torch.tensor([[-0.5, -0.5], [63.5, 31.5], [31.5, 15.5]])
    out = to_metric_space(pts, (32, 64))
    assert torch.allclose(out, torch.tensor([[-0.5, -0.5], [255.5, 255.5], [127.5, 127.5]]))


def test_evaluation_updates_metrics_and_zero_motion_baseline(tmp_path, tiny_shards):
    module = _module(tmp_path)
    module._evaluate(_batch(tiny_shards), 0)
    values, baseline = module.val_metrics.compute(), module.zero_motion_metrics.compute()
    assert 0 <= values["aj"] <= 1 and 0 <= baseline["aj"] <= 1
    assert int(module.val_metrics.num_videos) == 2
    assert module.media["pred_tracks"].shape == (8, 16, 2)
