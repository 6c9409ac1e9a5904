"""The published video depth evaluation protocols as data: which clips, which frames, what crop and cap.

One place for every protocol number (the converters write exactly these clips with
``tools/convert.py DATASET SRC OUT --split bench --benchmark NAME``; evaluation reads the crop and
the cap from here). Sources, read from the reference code (see shared/reference/real_data.md):
DepthCrafter ``benchmark/csv/meta_*.csv`` and ``benchmark/eval/eval.sh`` (Tencent/DepthCrafter),
Video Depth Anything ``benchmark/`` (DepthAnything/Video-Depth-Anything), the NYUv2 test split
(654 of the 1449 labelled images, the official ``splits.mat``; the indices below equal the
numbers in Marigold's ``data_split/nyu_depth/labeled/filename_list_test.txt``).

Frame selections are Python slices over a sequence's frames sorted in the source's order
(numerically: ScanNet ``2.jpg`` before ``10.jpg``; KITTI over the frames that have ground truth;
Bonn by timestamp). Crops are (row_start, row_stop, col_start, col_stop) slice bounds on the stored
(ground-truth resolution) frames, negative values counting from the end, applied at evaluation
only; ``even_crop`` drops a last odd row / column (DepthCrafter's KITTI and Bonn). Valid ground
truth is ``min_depth < gt < max_depth`` (metres).

The model sees the frames cropped like the ground truth (the reference extractors write cropped RGB:
ScanNet's border, NYUv2's Eigen crop, KITTI's and Bonn's even sizes), except in VDA's TAE, which
predicts on the uncropped frames and crops the prediction (``crop_input``).

Where the references are defective we do it right and say so: TAE takes the first 20 scenes of
the SORTED list (the reference takes them in unsorted ``glob`` order, which depends on the file
system); Sintel depth is the float ``.dpt`` (VDA quantises it to whole metres); TAE intrinsics
must be shifted by the crop offset (the reference does not).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkSet:
    """One dataset's clips in one protocol."""

    dataset: str  # tools/convert.py subcommand
    source_split: str  # the source split the sequences come from
    sequences: tuple[str, ...]  # sequence names as the converter names them (NYUv2: 1-based image indices)
    frames: tuple[int | None, int | None, int | None]  # slice (start, stop, step) over each sequence's frames
    max_depth: float  # metres; valid GT is min_depth < gt < max_depth
    crop: tuple[int, int, int, int] | None = None  # (row_start, row_stop, col_start, col_stop) slice bounds
    even_crop: bool = False  # drop a last odd row / column
    min_depth: float = 1e-3
    single_frames: bool = False  # every selected frame is its own clip (NYUv2)
    # The reference extractors crop the RGB like the ground truth, so the model sees the cropped
    # frames; VDA's TAE instead predicts on the uncropped frames and crops the prediction.
    crop_input: bool = True
    note: str = ""

    def select(self, num_frames: int) -> list[int]:
        """Indices of the protocol's frames in a sequence of `num_frames` frames."""
        return list(range(num_frames))[slice(*self.frames)]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Absolute (row_start, row_stop, col_start, col_stop) of the evaluation crop for a frame size."""
        r0, r1, c0, c1 = self.crop or (0, height, 0, width)
        r0, r1, c0, c1 = (v if v >= 0 else size + v for v, size in ((r0, height), (r1, height), (c0, width), (c1, width)))
        if self.even_crop:
            r1, c1 = r0 + (r1 - r0) // 2 * 2, c0 + (c1 - c0) // 2 * 2
        return r0, r1, c0, c1


def _ranges(spec: str) -> tuple[int, ...]:
    """'1-3,7' -> (1, 2, 3, 7)."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


SINTEL_SCENES = (
    "alley_1", "alley_2", "ambush_2", "ambush_4", "ambush_5", "ambush_6", "ambush_7", "bamboo_1", "bamboo_2",
    "bandage_1", "bandage_2", "cave_2", "cave_4", "market_2", "market_5", "market_6", "mountain_1", "shaman_2",
    "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3",
)
SCANNET_TEST_SCENES = tuple(f"scene{i:04d}_00" for i in range(707, 807))  # scans_test, 100 scenes
KITTI_VAL_DRIVES = tuple(f"{d}_sync" for d in (
    "2011_09_26_drive_0002", "2011_09_26_drive_0005", "2011_09_26_drive_0013", "2011_09_26_drive_0020",
    "2011_09_26_drive_0023", "2011_09_26_drive_0036", "2011_09_26_drive_0079", "2011_09_26_drive_0095",
    "2011_09_26_drive_0113", "2011_09_28_drive_0037", "2011_09_29_drive_0026", "2011_09_30_drive_0016",
    "2011_10_03_drive_0047"))
BONN_SEQUENCES = tuple(f"rgbd_bonn_{n}" for n in ("balloon2", "crowd2", "crowd3", "person_tracking", "synchronous"))
NYU_TEST_INDICES = _ranges(
    "1-2,9,14-18,21,28-43,46-47,56-57,59-63,76-79,84-91,117-119,125-129,131-134,137,153-155,"
    "167-169,171-176,180-202,207-212,220-222,250,264,271-273,279-285,296-302,310-312,315-317,"
    "325-335,351-352,355-364,384-390,395-397,411-414,430-435,441-448,462-466,469-477,508-513,"
    "515-526,531-533,537-539,549-551,555-571,579-583,591-594,603-607,612-613,617-621,633-638,"
    "644-645,650-651,656-658,663-664,668-673,676-681,686-690,693-694,697-699,706-713,717-718,"
    "724-728,731-734,743-744,759-787,800-804,810-814,821-823,833-846,850-852,857-862,869-871,"
    "906-908,917-919,926-928,932-935,945-947,959-962,965-967,970-977,991-995,1001-1004,"
    "1010-1012,1021-1023,1032-1034,1038-1039,1048-1049,1052-1053,1057-1058,1075-1084,"
    "1088-1096,1098-1104,1106-1109,1117-1119,1123-1131,1135-1136,1144-1158,1162-1167,"
    "1170-1171,1174-1176,1179-1184,1192-1196,1201-1212,1216-1220,1226-1230,1233-1235,"
    "1247-1250,1254-1265,1275-1280,1285-1295,1297-1299,1302-1308,1314-1315,1329-1332,"
    "1335-1340,1347-1349,1353-1356,1364-1365,1368-1369,1384-1391,1394-1401,1407-1414,"
    "1421-1424,1430-1433,1441-1449"
)
SCANNET_CROP = (8, -8, 11, -11)  # the black border of the 480x640 depth
NYU_CROP = (45, 471, 41, 601)  # the Eigen crop

BENCHMARKS: dict[str, dict[str, BenchmarkSet]] = {
    # DepthCrafter / Video Depth Anything main table.
    "depthcrafter": {
        "sintel": BenchmarkSet("sintel", "training", SINTEL_SCENES, (0, 50, None), 70.0,
                               note="clean pass, all frames (every scene has at most 50)"),
        "scannet": BenchmarkSet("scannet", "all", SCANNET_TEST_SCENES, (0, 270, 3), 10.0, SCANNET_CROP,
                                note="90 frames: every 3rd of the first 270"),
        "kitti": BenchmarkSet("kitti", "val", KITTI_VAL_DRIVES, (0, 110, None), 80.0, even_crop=True,
                              note="first 110 frames with ground truth (image indices 5..114)"),
        "bonn": BenchmarkSet("bonn", "all", BONN_SEQUENCES, (30, 140, None), 10.0, even_crop=True,
                             note="DepthCrafter's 5 sequences, frames 30..139"),
        "nyuv2": BenchmarkSet("nyuv2", "test", tuple(str(i) for i in NYU_TEST_INDICES), (None, None, None), 10.0,
                              NYU_CROP, single_frames=True, note="654 test images, filled depth"),
    },
    # VDA's long-video variant ("~500 frames"); NYUv2's (raw Kinect videos) is not convertible from the .mat.
    "vda500": {
        "scannet": BenchmarkSet("scannet", "all", SCANNET_TEST_SCENES, (0, 500, None), 10.0, SCANNET_CROP),
        "kitti": BenchmarkSet("kitti", "val", KITTI_VAL_DRIVES, (0, 500, None), 80.0, even_crop=True),
        "bonn": BenchmarkSet("bonn", "all", BONN_SEQUENCES, (0, 500, None), 10.0, even_crop=True),
    },
    # VDA temporal alignment error: 20 ScanNet scenes (first 20 SORTED), frames 10..179, poses and intrinsics.
    "tae": {
        "scannet": BenchmarkSet("scannet", "all", SCANNET_TEST_SCENES[:20], (10, 180, None), 10.0, SCANNET_CROP,
                                crop_input=False, note="every frame 10..179; intrinsics need the crop offset (11, 8) px"),
    },
}


def benchmark_set(benchmark: str, dataset: str) -> BenchmarkSet:
    """The protocol's clips for one dataset; a clear error for an unknown pair."""
    if benchmark not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS)}")
    if dataset not in BENCHMARKS[benchmark]:
        raise KeyError(f"benchmark {benchmark!r} has no {dataset!r} clips; it has {sorted(BENCHMARKS[benchmark])}")
    return BENCHMARKS[benchmark][dataset]
