import torch

from configs.schema import AugmentConfig
from datamodules.augment import (
    add_occluders,
    apply_affine_to_points,
    augment_tracking_batch,
    in_frame,
    requery,
    sample_affines,
    warp_video,
)
from models.track_ops import bilinear_sample


def _dot_video(tracks, hw, radius=1.2):
    """Frames black except a bright Gaussian dot under every track point."""
    B, T, N, _ = tracks.shape
    H, W = hw
    ys = torch.arange(H).view(1, 1, 1, H, 1).float()
    xs = torch.arange(W).view(1, 1, 1, 1, W).float()
    d2 = (xs - tracks[..., 0, None, None]) ** 2 + (ys - tracks[..., 1, None, None]) ** 2
    return (255 * torch.exp(-d2 / (2 * radius**2))).amax(2, keepdim=True).expand(B, T, 3, H, W).contiguous()


def test_dot_stays_under_its_track_through_geometric_augmentation():
    g = torch.Generator().manual_seed(0)
    B, T, N, H, W = 2, 8, 1, 48, 64
    tracks = torch.stack([torch.rand(B, T, N, generator=g) * 40 + 12, torch.rand(B, T, N, generator=g) * 24 + 12], -1)
    video = _dot_video(tracks, (H, W))
    cfg = AugmentConfig(flip_h_p=0.5, flip_v_p=0.5, scale_min=0.7, scale_max=1.4, offset_drift=0.05, scale_drift=0.05)
    for out_hw in [(48, 64), (40, 40)]:
        for _ in range(4):
            affine = sample_affines(tracks, torch.ones(B, T, N, dtype=torch.bool), (H, W), out_hw, cfg, g)
            warped = warp_video(video, affine, out_hw)
            moved = apply_affine_to_points(tracks, affine)
            inside = in_frame(moved, out_hw) & (moved[..., 0] > 2) & (moved[..., 1] > 2)
            inside &= (moved[..., 0] < out_hw[1] - 3) & (moved[..., 1] < out_hw[0] - 3)
            frames = warped.flatten(0, 1)[:, :1]
            at_track = bilinear_sample(frames, moved.flatten(0, 1)).view(B, T, N)
            assert inside.any()
            # The peak of the (rescaled) dot sits under the track: value close to the max of the frame.
            peak = frames.amax((-1, -2, -3)).view(B, T, 1)
            assert (at_track[inside] > 0.8 * peak.expand_as(at_track)[inside]).all()
            # A point shifted by 2 px would not be under the dot (guards the test itself).
            shifted = bilinear_sample(frames, (moved + 2.0).flatten(0, 1)).view(B, T, N)
            assert (shifted[inside] < 0.6 * peak.expand_as(at_track)[inside]).all()


def test_flip_maps_pixel_centres_exactly():
    cfg = AugmentConfig(flip_h_p=1.0, flip_v_p=0.0, scale_min=1.0, scale_max=1.0, aspect_jitter=0.0,
                        scale_drift=0.0, offset_drift=0.0)
    tracks = torch.tensor([[[[0.0, 5.0], [63.0, 7.0], [10.5, 47.0]]]])  # (1, 1, 3, 2)
    affine = sample_affines(tracks, torch.ones(1, 1, 3, dtype=torch.bool), (48, 64), (48, 64), cfg)
    moved = apply_affine_to_points(tracks, affine)
    assert torch.equal(moved, torch.tensor([[[[63.0, 5.0], [0.0, 7.0], [52.5, 47.0]]]]))
    video = _dot_video(tracks, (48, 64))
    assert torch.allclose(warp_video(video, affine, (48, 64)), video.flip(-1), atol=1e-3)


def test_points_leaving_the_frame_and_under_occluders_become_invisible():
    g = torch.Generator().manual_seed(1)
    B, T, N, H, W = 1, 6, 200, 32, 32
    tracks = torch.randint(0, 32, (B, T, N, 2), generator=g).float()  # on pixel centres
    visible = torch.ones(B, T, N, dtype=torch.bool)
    video = torch.rand(B, T, 3, H, W, generator=g) * 255
    cfg = AugmentConfig(occluder_p=1.0, max_occluders=3, occluder_min_size=0.2, occluder_max_size=0.4)
    occluded_video, vis = add_occluders(video, tracks, visible, cfg, g)
    assert vis[:, 0].all()  # never on the first frame
    assert (~vis[:, 1:]).any()
    changed = (occluded_video != video).any(2)  # (B, T, H, W)
    px = tracks.long()
    covered = changed[0, torch.arange(T).view(T, 1), px[0, ..., 1], px[0, ..., 0]]
    # Points are invisible exactly where a box changed their pixel.
    assert torch.equal(covered, ~vis[0])
    assert not in_frame(torch.tensor([[-0.1, 3.0], [31.01, 3.0], [31.0, 31.0]]), (32, 32))[:2].any()


def test_requery_moves_query_to_a_visible_frame_and_invalidates_lost_tracks():
    tracks = torch.arange(4 * 3 * 2, dtype=torch.float32).view(1, 4, 3, 2)
    visible = torch.tensor([[[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]]], dtype=torch.bool)
    queries = torch.tensor([[[1.0, 0, 0], [0.0, 0, 0], [2.0, 0, 0]]])
    valid = torch.ones(1, 4, 3, dtype=torch.bool)
    new_q, new_valid = requery(queries, tracks, visible, valid)
    assert new_q[0, :, 0].tolist() == [1.0, 2.0, 0.0]
    assert torch.equal(new_q[0, 0, 1:], tracks[0, 1, 0]) and torch.equal(new_q[0, 1, 1:], tracks[0, 2, 1])
    assert new_valid[0, :, :2].all() and not new_valid[0, :, 2].any()


def test_full_augmentation_keeps_shapes_and_queries_on_visible_points():
    torch.manual_seed(0)
    B, T, N, H, W = 2, 6, 16, 32, 48
    batch = {
        "video": torch.rand(B, T, 3, H, W) * 255,
        "tracks": torch.rand(B, T, N, 2) * torch.tensor([W - 1.0, H - 1.0]),
        "visible": torch.ones(B, T, N, dtype=torch.bool),
        "queries": torch.zeros(B, N, 3),
        "valid": torch.ones(B, T, N, dtype=torch.bool),
        "depth": torch.rand(B, T, 1, H, W) + 1,
        "depth_valid": torch.ones(B, T, 1, H, W, dtype=torch.bool),
    }
    out = augment_tracking_batch(batch, AugmentConfig(), crop_hw=[24, 32])
    assert out["video"].shape == (B, T, 3, 24, 32) and out["depth"].shape == (B, T, 1, 24, 32)
    assert out["video"].min() >= 0 and out["video"].max() <= 255
    frame = out["queries"][..., 0].long()
    vis_at_query = out["visible"].gather(1, frame.unsqueeze(1)).squeeze(1)
    ok = out["valid"].any(1)
    assert vis_at_query[ok].all()
    assert torch.allclose(out["queries"][..., 1:], out["tracks"].gather(1, frame.view(B, 1, N, 1).expand(B, 1, N, 2)).squeeze(1))
