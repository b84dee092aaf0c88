"""Learning per iteration, torchvision vs this harness: torchvision's MaskRCNN built like the CPU
demo (ResNet-10-GN FPN, or `--depth 18`; FPN and mask head 64 wide, 256-wide box MLP, 128 sampled
anchors and ROIs per image, 1000 proposals, 256 px) and trained with the demo's solver on the same synthetic images,
then scored with the harness's COCO evaluation after each epoch.

    python benchmarks/learning_parity.py --data data/synthetic --iters 768 [--lr 0.02 --step 900]
        [--depth 10|18|34]

Compare its mAP per epoch with `python -m harness.train --config configs/cpu_demo.yaml` run with the
same solver values (README, "The demo's status"). torchvision reads the images with PIL, masks with
pycocotools and flips with p = 0.5, its own way; the model math is what is compared.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from pycocotools.coco import COCO
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import evaluate
from harness.model.backbone import STAGE_BLOCKS


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


# The depths built from basic blocks, with the harness's blocks per stage (10 is the demo's body).
BASIC_DEPTHS = [depth for depth in sorted(STAGE_BLOCKS) if depth < 50]


def build_model(num_classes: int, depth: int) -> MaskRCNN:
    layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    backbone = BackboneWithFPN(
        ResNet(BasicBlock, list(STAGE_BLOCKS[depth]), norm_layer=group_norm),
        layers,
        [64, 128, 256, 512],
        64,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=group_norm,
    )
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=256,
        max_size=256,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=500,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_head=TwoMLPHead(64 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_head=MaskRCNNHeads(64, [64, 64], 1, norm_layer=group_norm),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
    )


class Split:
    """One COCO split read the torchvision way: [0, 1] RGB tensors, xyxy boxes (x + w), masks."""

    def __init__(self, root: Path, name: str):
        self.images = root / f"{name}2017"
        self.coco = COCO(str(root / "annotations" / f"instances_{name}2017.json"))
        self.categories = sorted(self.coco.getCatIds())
        self.label = {c: i + 1 for i, c in enumerate(self.categories)}

    def image(self, image_id: int) -> torch.Tensor:
        info = self.coco.loadImgs(image_id)[0]
        return TF.to_tensor(Image.open(self.images / info["file_name"]).convert("RGB"))

    def sample(self, image_id: int, flip: bool) -> tuple[torch.Tensor, dict]:
        image = self.image(image_id)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
        labels = torch.tensor([self.label[a["category_id"]] for a in anns])
        if flip:
            width = image.shape[-1]
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1
            )
        return image, {"boxes": boxes, "labels": labels, "masks": masks}


@torch.no_grad()
def score(model: MaskRCNN, val: Split, annotation_file: Path) -> dict[str, float]:
    model.eval()
    predictions, image_ids = [], sorted(val.coco.getImgIds())
    for image_id in image_ids:
        out = model([val.image(image_id)])[0]
        predictions.append({**out, "masks": out["masks"][:, 0] > 0.5})
    model.train()
    results = evaluate.to_coco_results(
        predictions, image_ids, val.categories, legacy_plus_one=False
    )
    return evaluate.coco_map(annotation_file, results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--iters", type=int, default=768)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--step", type=int, default=900, help="iteration of the x0.1 LR decay")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--depth", type=int, choices=BASIC_DEPTHS, default=10)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train, val = Split(args.data, "train"), Split(args.data, "val")
    ids = [i for i in sorted(train.coco.getImgIds()) if train.coco.getAnnIds(imgIds=i)]
    model = build_model(len(train.categories) + 1, args.depth)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)

    def lr_at(it: int) -> float:
        warm = 0.001 + (1 - 0.001) * it / args.warmup if it < args.warmup else 1.0
        return args.lr * warm * (0.1 if it >= args.step else 1.0)

    iteration, start = 0, time.time()
    for epoch in range(1, 10**6):
        order = ids[:]
        rng.shuffle(order)
        for k in range(0, len(order) - 1, 2):
            batch = [train.sample(i, rng.random() < 0.5) for i in order[k : k + 2]]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(iteration)
            losses = model([b[0] for b in batch], [b[1] for b in batch])
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            iteration += 1
            if iteration % 50 == 0:
                terms = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                print(f"it {iteration} ({time.time() - start:.0f} s) {terms}", flush=True)
            if iteration >= args.iters:
                break
        acc = score(model, val, args.data / "annotations" / "instances_val2017.json")
        print(
            f"eval epoch {epoch} iteration {iteration}: box {acc['BBOX']:.4f} mask {acc['SEGM']:.4f}"
        )
        if iteration >= args.iters:
            break


if __name__ == "__main__":
    main()
