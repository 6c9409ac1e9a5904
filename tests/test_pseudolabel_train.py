"""Pseudo-label training (model.family=cotracker3_pseudolabel): train.py end to end, overfitting,
the pre-extraction job and training from its shards."""

import numpy as np
import pytest
import torch

import train
from configs.loader import override_args
from datamodules.shard_reader import SkipCounter, iter_shard
from datamodules.shards import ShardWriter, decode_clip, expand_shards
from datamodules.synthetic import SyntheticConfig, generate_clip
from lightning_modules.cotracker3 import CoTracker3Module
from lightning_modules.cotracker3_pseudolabel import CoTracker3PseudolabelModule
from models.cotracker3 import CoTrackerThree
from tests.tiny_run import TINY_MODEL
from tools import extract_tracks
from train import load_config

TINY_ARCH = ("{window_len: %d, latent_dim: 8, corr_levels: 2, corr_radius: 1, corr_hidden_dim: 16, corr_out_dim: 8, "
             "hidden_size: 16, num_heads: 2, time_depth: 1, space_depth: 1, num_virtual_tracks: 4, posenc_freqs: 2, "
             "model_resolution: [64, 64]}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Unlabelled 64x64 plaid clips (labels stripped), labelled validation clips, tiny teacher files."""
    root = tmp_path_factory.mktemp("pseudolabel")
    cfg = SyntheticConfig(height=64, width=64, num_frames=12, num_tracks=32, domain="plaid")
    with ShardWriter(root / "train", prefix="u", max_count=1) as writer:
        for seed in range(4):
            clip = generate_clip(seed, cfg)
            writer.write(f"u{seed}", clip["frames"], np.zeros((12, 0, 2), np.float32), np.zeros((12, 0), bool))
    with ShardWriter(root / "val", prefix="v", max_count=4) as writer:
        for seed in range(100, 102):
            clip = generate_clip(seed, cfg)
            writer.write(f"v{seed}", clip["frames"], clip["tracks"], clip["visible"])
    teachers = []
    for variant, window in (("online", 4), ("offline", 6)):
        torch.manual_seed(1)
        arch = eval("dict(" + TINY_ARCH[1:-1].replace(": ", "=").replace("%d", str(window)) + ")")
        path = root / f"teacher_{variant}.pth"
        torch.save(CoTrackerThree(variant=variant, **arch).state_dict(), path)
        teachers.append(f"{{checkpoint: {path}, kind: cotracker3_{variant}, weight: 1, "
                        f"arch: {TINY_ARCH % window}}}")
    return {"root": root, "teachers": "model.teachers=[" + ", ".join(teachers) + "]"}


def run_args(setup, tmp_path, *extra) -> list[str]:
    root = setup["root"]
    return override_args(["experiment=cotracker3_pseudolabel_tiny_synthetic", *override_args(TINY_MODEL, ["model.arch.model_resolution=[64,64]"]),
            setup["teachers"], f"data.train_shards={root / 'train'}", f"data.val_shards={root / 'val'}",
            "data.clip_len=8", "data.val_clip_len=8", "data.num_queries=16", "data.val_num_queries=8",
            "data.num_workers=0", "data.shuffle_buffer=1", f"run_dir={tmp_path / 'run'}", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "checkpoint.monitor=null"], list(extra))


@pytest.mark.slow
def test_train_py_fine_tunes_from_a_checkpoint_with_frozen_teachers(setup, tmp_path):
    # The student starts from a .ckpt of the cotracker3 family (a "Kubric" run).
    _, kubric_cfg = load_config([*override_args(TINY_MODEL, ["model.arch.model_resolution=[64,64]"]),
                                 f"run_dir={tmp_path / 'k'}"])
    kubric = CoTracker3Module(kubric_cfg.model)
    start = tmp_path / "kubric.ckpt"
    torch.save({"state_dict": kubric.state_dict(), "hyper_parameters": {}}, start)

    trainer = train.run(run_args(setup, tmp_path, f"model.init_from={start}", "trainer.max_steps=3",
                                 "trainer.val_check_interval=3"))
    module = trainer.lightning_module
    assert isinstance(module, CoTracker3PseudolabelModule) and len(module.teachers) == 2
    before, after = kubric.model.state_dict(), module.model.state_dict()
    assert torch.equal(before["updateformer.vis_conf_head.weight"], after["updateformer.vis_conf_head.weight"])
    assert not torch.equal(before["updateformer.flow_head.weight"], after["updateformer.flow_head.weight"])
    assert all(not p.requires_grad for t in module.teachers.teachers for p in t.tracker.parameters())
    logged = trainer.logged_metrics
    assert "train/teacher" in logged and "train/loss_visible" in logged and "val/aj" in logged
    # Checkpoints hold the student only, and serve as init_from of the plain cotracker3 family.
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    _, plain = load_config([*override_args(TINY_MODEL, ["model.arch.model_resolution=[64,64]"]), f"run_dir={tmp_path / 'p'}",
                            f"model.init_from={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"])
    assert torch.equal(CoTracker3Module(plain.model).model.corr_mlp.fc1.weight, module.model.corr_mlp.fc1.weight)
    # ... and as a teacher of a next round (no teacher files needed to load it).
    from lightning_modules.pseudolabel_teachers import TeacherConfig, load_teacher

    again = load_teacher(TeacherConfig(checkpoint=str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
                                       kind="tracklight"))
    assert again.type == "cotracker3_online" and again.support_grid == 5


def test_config_names_what_is_missing(setup, tmp_path):
    with pytest.raises(ValueError, match="trains on data.kind='unlabelled_videos'"):
        _, cfg = load_config([*TINY_MODEL, "model.family=cotracker3_pseudolabel", f"run_dir={tmp_path}"])
        CoTracker3PseudolabelModule(cfg.model).setup("fit")
    _, cfg = load_config(run_args(setup, tmp_path, "model.teachers=[]"))
    with pytest.raises(ValueError, match="no teachers"):
        CoTracker3PseudolabelModule(cfg.model).setup("fit")


@pytest.mark.slow
def test_overfitting_one_pseudo_labelled_batch_drives_the_loss_down(setup, tmp_path):
    torch.manual_seed(0)
    _, cfg = load_config(run_args(setup, tmp_path, "model.arch.hidden_size=32", "model.arch.latent_dim=16",
                                  "model.arch.corr_out_dim=16"))
    module = CoTracker3PseudolabelModule(cfg.model)
    module.setup("fit")
    clip = generate_clip(7, SyntheticConfig(height=64, width=64, num_frames=8, num_tracks=64, domain="plaid"))
    video = torch.from_numpy(clip["frames"]).permute(0, 3, 1, 2)[None].float()
    batch = {"video": video, **module.pseudo_labels(video, 0)}  # fixed targets from a drawn teacher
    assert batch["valid"].any()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses[::10]


@pytest.mark.slow
def test_pre_extracted_pseudo_labels_record_queries_and_teacher_and_train(setup, tmp_path):
    out = tmp_path / "pseudo"
    args = run_args(setup, tmp_path)
    extract_tracks.main(["--shards", str(setup["root"] / "train"), "--out", str(out), "--accelerator", "cpu",
                         "--devices", "1", "--num-workers", "0", "--seed", "3", "--pseudo-labels", *args])
    clips = [decode_clip(raw) for url in expand_shards(str(out)) for raw in iter_shard(url, SkipCounter())]
    assert sorted(c.key for c in clips) == [f"u{i}s3" for i in range(4)]
    for clip in clips:
        info = clip.meta["pseudo_labels"]
        assert info["teacher"] in ("teacher_online", "teacher_offline")
        assert info["occluded_loss"] is True and isinstance(info["keypoints_found"], bool)
        assert clip.num_frames == 8 and clip.queries.shape == (16, 3) and clip.tracks.shape == (8, 16, 2)
        assert len(info["source_frames"]) == 8 and (clip.queries[:, 0] <= 2).all()  # first quarter
    # Training reads them as stored: no teacher is loaded.
    trainer = train.run(override_args(args, [f"data.train_shards={out}", "data.pseudo_labels=from_shards", "trainer.max_steps=2",
                                              "trainer.val_check_interval=1000"]))
    assert trainer.lightning_module.teachers is None and trainer.global_step == 2
    assert np.isfinite(float(trainer.logged_metrics["train/loss"]))


def test_shared_draws_agree_across_ranks_and_per_rank_draws_do_not(setup, tmp_path):
    from lightning_modules.cotracker3_pseudolabel import teacher_generator

    _, cfg = load_config(run_args(setup, tmp_path))
    module = CoTracker3PseudolabelModule(cfg.model)
    module.setup("fit")

    def draws(mode, rank):
        return [module.teachers.draw(teacher_generator(mode, 42, step, 0, rank)) for step in range(64)]

    assert draws("shared", 0) == draws("shared", 3)
    assert draws("per_rank", 0) != draws("per_rank", 3)
    assert draws("per_rank", 1) == draws("per_rank", 1)  # still reproducible
    assert set(draws("shared", 0)) == {0, 1}


def test_gpu_recipe_experiments_carry_the_reference_values():
    for name, clip_len, random_len, init in (("cotracker3_real_pseudolabel", 64, False, "baseline_online.pth"),
                                             ("cotracker3_offline_real_pseudolabel", 80, True, "baseline_offline.pth")):
        _, cfg = load_config([f"experiment={name}", "data.val_tapvid.path=/data/tapvid_davis.pkl"])
        m, d, t = cfg.model, cfg.data, cfg.trainer
        assert m.family == "cotracker3_pseudolabel" and m.init_from.endswith(init)
        assert (m.lr, m.weight_decay, m.warmup_pct, m.adam_eps, m.train_iters) == (5e-5, 1e-5, 0.0, 1e-8, 4)
        assert list(m.freeze) == ["updateformer.vis_conf_head."]
        assert [tc.kind for tc in m.teachers] == ["cotracker3_online", "cotracker3_offline"]
        assert (m.loss.visible, m.loss.occluded, m.loss.huber_delta, m.loss.gamma) == (0.05, 0.01, 6.0, 0.8)
        assert (m.queries.method, m.queries.num_frames, m.queries.first_fraction) == ("sift", 8, 0.25)
        assert (d.num_queries, d.clip_len, d.random_clip_len, list(d.crop_hw)) == (384, clip_len, random_len, [384, 512])
        assert d.random_frame_rate and d.batch_size == 1 and d.val_tapvid.dataset == "davis"
        assert (t.max_steps, t.gradient_clip_val) == (15000, 10.0)
