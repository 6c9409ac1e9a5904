"""Where TAPTRv2's forward memory goes: peak live activation bytes and the largest tensors at the peak.

A ``TorchDispatchMode`` records every tensor an op returns (by storage, so views count once) and
forgets it when its storage is freed; at the peak it lists the live tensors grouped by the op
that made them and their shape. Weights and the input clip are not counted (made before the mode).
Published TAPTRv2 size, random weights, queries on the first frame, no_grad.

    python tools/profile_taptrv2_memory.py --frames 16 --resolution 256 --points 800
"""

from __future__ import annotations

import argparse
import collections
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.taptrv2 import TaptrV2, TaptrV2Config


class LiveMemory(TorchDispatchMode):
    """Live bytes of the tensors created under the mode, their peak, and the largest groups at the peak."""

    def __init__(self, top: int = 12) -> None:
        super().__init__()
        self.top = top
        self.live: dict[int, tuple[str, tuple[int, ...], int]] = {}
        self.bytes = 0
        self.peak = 0
        self.at_peak: list[tuple[tuple[str, tuple[int, ...]], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (str(func), tuple(t.shape), storage.nbytes())
                    self.bytes += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        if self.bytes > self.peak:
            self.peak = self.bytes
            groups: collections.Counter = collections.Counter()
            for name, shape, nbytes in self.live.values():
                groups[(name, shape)] += nbytes
            self.at_peak = groups.most_common(self.top)
        return out

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256, help="square input and model resolution")
    parser.add_argument("--points", type=int, default=800)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    size = args.resolution
    model = TaptrV2(TaptrV2Config(model_resolution=(size, size))).eval()
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, args.frames, 3, size, size, generator=g) * 255
    queries = torch.cat([torch.zeros(1, args.points, 1), torch.rand(1, args.points, 2, generator=g) * (size - 1)], -1)
    with torch.no_grad(), LiveMemory(args.top) as probe:
        model(video, queries)
    print(f"TAPTRv2, {args.frames} frames at {size}x{size}, {args.points} points: peak live activations "
          f"{probe.peak / 2**30:.2f} GiB; largest at the peak:")
    for (name, shape), nbytes in probe.at_peak:
        print(f"  {nbytes / 2**20:9.1f} MiB  {name}  {shape}")


if __name__ == "__main__":
    main()
