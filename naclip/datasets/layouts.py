"""Where images and masks live on disk: the mmsegmentation layouts and their listing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from naclip.datasets.base import Item

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Layout:
    """Image and mask folders (relative to a root), file-name suffixes, and an optional split list.

    Without a split file the images are every file under `image_dir` (recursively) ending in
    `image_suffix`; an image `A/b<image_suffix>` has the mask `A/b<mask_suffix>` under `mask_dir`.
    With a split file (one name a line) the images are exactly `<name><image_suffix>`.
    """

    image_dir: str
    mask_dir: str
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"
    split_file: str | None = None

    def describe(self) -> str:
        """The expected tree, for error messages and docs."""
        lines = [
            f"{self.image_dir}/**/*{self.image_suffix}",
            f"{self.mask_dir}/**/*{self.mask_suffix}",
        ]
        if self.split_file:
            lines = [
                f"{self.image_dir}/NAME{self.image_suffix}",
                f"{self.mask_dir}/NAME{self.mask_suffix}",
                f"{self.split_file} (one NAME a line)",
            ]
        return "\n".join(f"  {line}" for line in lines)

    def list_items(self, root: Path) -> list[Item]:
        """The image/mask pairs under `root`; raises FileNotFoundError naming a missing folder or split."""
        image_dir, mask_dir = root / self.image_dir, root / self.mask_dir
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"missing folder {folder}; expected under {root}:\n{self.describe()}")
        if self.split_file:
            split = root / self.split_file
            if not split.is_file():
                raise FileNotFoundError(f"missing split file {split}; expected under {root}:\n{self.describe()}")
            lines = [(number, line.strip()) for number, line in enumerate(split.read_text().splitlines(), 1)]
            named = [(f"split file {split}, line {number}: ", name) for number, name in lines if name]
            if not named:
                raise ValueError(f"split file {split} lists no images")
        else:
            named = sorted(
                (
                    (f"{path}: ", str(path.relative_to(image_dir))[: -len(self.image_suffix)])
                    for path in image_dir.rglob(f"*{self.image_suffix}")
                    if path.is_file()
                ),
                key=lambda pair: pair[1],  # by name
            )
            if not named:
                raise ValueError(f"no images matching *{self.image_suffix} under {image_dir}: the split is empty")
        items = []
        for where, name in named:
            try:
                items.append(
                    Item(name, image_dir / f"{name}{self.image_suffix}", mask_dir / f"{name}{self.mask_suffix}")
                )
            except ValueError as error:  # a name leaving its folders
                raise ValueError(f"{where}{error}") from None
        return items


VOC = Layout("JPEGImages", "SegmentationClass", split_file="ImageSets/Segmentation/val.txt")
CONTEXT = Layout("JPEGImages", "SegmentationClassContext", split_file="ImageSets/SegmentationContext/val.txt")
COCO_OBJECT = Layout("images/val2017", "annotations/val2017", mask_suffix="_instanceTrainIds.png")
COCO_STUFF = Layout("images/val2017", "annotations/val2017", mask_suffix="_labelTrainIds.png")
CITYSCAPES = Layout("leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png")
ADE20K = Layout("images/validation", "annotations/validation")
# The large-vocabulary pair as CAT-Seg's prepare_ade20k_847.py / prepare_pascal_context_459.py write them
# (ProxyCLIP's and Trident's cfg_ade847.py, cfg_context459.py and custom_datasets.py:174-297 read these).
ADE847 = Layout("images_detectron2/validation", "annotations_detectron2/validation", mask_suffix=".tif")
CONTEXT459 = Layout(
    "JPEGImages",
    "annotations_detectron2/pc459_val",
    mask_suffix=".tif",
    split_file="ImageSets/SegmentationContext/val.txt",
)
