"""Segment the nuclei of a real fluorescence microscopy image shipped inside the `stardist` wheel.

The `stardist` 0.9.2 wheel on PyPI carries `stardist/data/images/img2d.tif` (a 512x512 nuclei image from
the 2018 Data Science Bowl) and `mask2d.tif`, its instance labels. The demo reads both straight from the
wheel file, prompts npsam with the tight box of every nucleus, writes the label map and prints the Dice
(DSC) and normalised surface Dice (NSD) of the result against the instance labels.

Run: `pip download --no-deps stardist==0.9.2 -d demo-data`, then
`python -m npsam.demo demo-data/stardist-0.9.2-*.whl -o demo-output`.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

IMAGE_MEMBER = "stardist/data/images/img2d.tif"
MASK_MEMBER = "stardist/data/images/mask2d.tif"


def read_wheel_tiff(wheel: Path, member: str) -> np.ndarray:
    """Read one TIFF image from inside a wheel (a zip file) with tifffile."""
    try:
        import tifffile
    except ImportError:
        raise SystemExit("the demo reads TIFF files with tifffile: pip install 'npsam[images]' or pip install tifffile") from None
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (OSError, zipfile.BadZipFile, KeyError) as error:
        raise SystemExit(
            f"cannot read {member} from {wheel}: {error}; download the wheel with "
            f"`pip download --no-deps stardist==0.9.2 -d demo-data`"
        ) from None
    return tifffile.imread(io.BytesIO(data))


def boxes_from_instances(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel instances to 1..N and return (labels, (N, 4) tight boxes [x_min, y_min, x_max, y_max])."""
    ids = np.unique(instances)
    ids = ids[ids != 0]
    labels = np.zeros(instances.shape, dtype=np.uint16 if len(ids) > 255 else np.uint8)
    boxes = np.empty((len(ids), 4), dtype=np.int64)
    for new_id, old_id in enumerate(ids, start=1):
        rows, cols = np.nonzero(instances == old_id)
        labels[rows, cols] = new_id
        boxes[new_id - 1] = (cols.min(), rows.min(), cols.max(), rows.max())
    return labels, boxes


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scale an integer image to uint8, as the challenge's microscopy cases were prepared."""
    image = image.astype(np.float64)
    span = image.max() - image.min()
    if span == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.round((image - image.min()) / span * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npsam.demo", description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="path of the downloaded stardist-0.9.2 wheel (.whl)")
    parser.add_argument("-o", "--output", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--model", default="litemedsam", help="registered model name or path of an npsam .h5 file")
    args = parser.parse_args(argv)

    import npsam
    from npsam.metrics import score_case

    image = to_uint8(read_wheel_tiff(args.wheel, IMAGE_MEMBER))
    ground_truth, boxes = boxes_from_instances(read_wheel_tiff(args.wheel, MASK_MEMBER))
    print(f"image {image.shape} from {args.wheel.name}, {len(boxes)} nuclei boxes from the instance mask")

    start = time.perf_counter()
    labels = npsam.segment(image, boxes, model=args.model)
    seconds = time.perf_counter() - start

    args.output.mkdir(parents=True, exist_ok=True)
    target = args.output / "img2d_segs.npz"
    temporary = target.with_name(target.name + ".tmp.npz")
    np.savez_compressed(temporary, segs=labels)
    temporary.replace(target)

    scores = score_case(ground_truth, labels, is_3d=False)
    print(f"segmented in {seconds:.1f} s (including model loading and kernel compilation on a first run)")
    print(f"wrote {target}")
    print(f"DSC {scores['dsc']:.4f}  NSD {scores['nsd']:.4f}  (mean over {len(boxes)} nuclei)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
