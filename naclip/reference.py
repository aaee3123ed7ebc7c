"""The whole prediction stated plainly: what `naclip.segmenter.Segmenter.predict` computes, step by step.

`Segmenter` is the fast path: it reuses buffers across the settings of a sweep, upsamples window logits a few
at a time, stitches windows channels-last by first cover, and runs PAMR and the labels as compiled kernels;
the tests (tests/test_reference_pipeline.py) hold it to this module on every method preset.

Only the segmenter's loaded models, settings, classes and head are reused; every other step is plain torch:

1. resize and normalise the image per the protocol (`naclip.preprocess.prepare`);
2. cut it into windows as mmseg's `slide_inference` does (`naclip.sliding.window_boxes`; the whole image when
   `slide_crop` is 0), zero-padded to whole patches where the protocol pads them;
3. per window: the trunk, any second models, the method's head -> patch features; their cosine similarity to
   each query (or the head's own scores), upsampled bilinearly to the window; summed into place, divided by how
   many windows cover a pixel;
4. bilinear resize to the original size, then the head's refinement (`Head.refine`, PEARL's propagation) and
   PAMR, each guided by the prepared image resized bilinearly to that size;
5. logit scale, softmax over the queries, each class its best query, SCLIP's area threshold, the probability
   threshold (class 0 below it), argmax; the class scores renormalised if the method does so.

A whole-image head (Trident) gives its logits at the original size itself in place of steps 2-4; its
refinement follows the thresholds of step 5.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from naclip.heads import HeadInput, ImageInput, RefineInput, WholeImage
from naclip.preprocess import load_image, prepare
from naclip.segmenter import Prediction, Segmenter, drop_small_classes, head_features, window_padding
from naclip.sliding import window_boxes

DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))  # PAMR's 8 neighbours


@torch.no_grad()
def predict_plain(segmenter: Segmenter, image: str | os.PathLike | Image.Image | np.ndarray) -> Prediction:
    """What `segmenter.predict(image)` returns, computed plainly (see the module); image: a path, PIL or uint8 array."""
    s, classes = segmenter.settings, segmenter.classes
    if classes is None:
        raise RuntimeError("no classes set; call segmenter.set_classes([...]) first")
    queries = segmenter.text_cache.embed(segmenter.clip, segmenter.tokenizer, classes.queries)  # (Q, D), unit norm
    queries = queries.to(segmenter.device, segmenter.dtype).to(segmenter.score_dtype)  # as the fast path
    array = load_image(image)  # (H, W, 3) uint8 RGB
    size = array.shape[:2]
    prepared = prepare(array, s.short_side, s.long_side)  # (3, h, w) float32: the protocol's resize, normalised
    head = segmenter.head(s)
    if head.whole_image:  # the head's own pass over the whole image gives logits at the original size
        whole = ImageInput(
            segmenter.encoder, prepared.to(segmenter.device, segmenter.dtype), size, queries, segmenter.models, array
        )
        logits = head.fn(whole, s).to(queries.dtype)[None]  # (1, Q, H, W)
    else:
        logits = window_average(segmenter, prepared.to(segmenter.device, segmenter.dtype), queries)  # (Q, h, w)
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)  # (1, Q, H, W)
    guide = F.interpolate(prepared[None].to(logits), size=size, mode="bilinear", align_corners=False)  # (1, 3, H, W)
    refine = head.refine
    if refine is not None:  # the head's own step on the logits at the original size
        logits = refine(RefineInput(logits, guide, queries), s)
    if s.pamr_steps > 0:  # guided by the prepared image (full precision) at the original size
        logits = pamr_plain(guide, logits, s.pamr_dilations, s.pamr_steps)
    probs = torch.softmax(logits[0] * s.logit_scale, dim=0)  # (Q, H, W)
    scores = torch.stack([probs[first:stop].amax(0) for first, stop in classes.spans])  # (C, H, W): best synonym
    top, labels = scores.max(0)  # (H, W) each; ties go to the first class
    if s.area_threshold > 0:  # classes winning too small an area give their pixels to the next-best class
        scores = drop_small_classes(scores, labels, s.area_threshold)
        top, labels = scores.max(0)
    labels[top < s.prob_threshold] = 0  # unsure pixels go to class 0 (the background)
    if head.relabel is not None:  # the head's own post-processing (Trident's SAM refinement)
        labels, scores = head.relabel(whole, s, labels, scores)
    if s.renormalise:
        scores = scores / scores.sum(0, keepdim=True)
    return Prediction(labels.cpu().numpy().astype(np.int64), scores.cpu().numpy().astype(np.float32))


def window_average(segmenter: Segmenter, image: Tensor, queries: Tensor) -> Tensor:
    """(Q, h, w) window logits of a prepared image (3, h, w), averaged where windows overlap (mmseg's slide_inference).

    One window at a time; the fast path encodes `window_batch` of them together, to the same values.
    """
    s = segmenter.settings
    height, width = image.shape[-2:]
    boxes = window_boxes(height, width, s.slide_crop, s.slide_stride) if s.slide_crop > 0 else [(0, height, 0, width)]
    y1, y2, x1, x2 = boxes[0]  # every window has this size
    padding = window_padding(y2 - y1, x2 - x1, segmenter.pad_multiple) if s.pad_windows else (0, 0, 0, 0)
    left, _, top, _ = padding
    whole = WholeImage(image[None])  # the whole image, for heads that read it
    sums = torch.zeros(len(queries), height, width, dtype=queries.dtype, device=image.device)  # (Q, h, w)
    count = torch.zeros(1, height, width, dtype=queries.dtype, device=image.device)  # (1, h, w) windows per pixel
    for y1, y2, x1, x2 in boxes:
        window = F.pad(image[None, :, y1:y2, x1:x2], padding)  # zeros in normalised space (the mean colour)
        logits = window_logits(segmenter, window, queries, whole)[0]  # (Q, wh + pads, ww + pads)
        sums[:, y1:y2, x1:x2] += logits[:, top : top + y2 - y1, left : left + x2 - x1]  # the padding cut back
        count[:, y1:y2, x1:x2] += 1
    return sums / count


def window_logits(segmenter: Segmenter, windows: Tensor, queries: Tensor, whole: WholeImage) -> Tensor:
    """(n, Q, H, W) cosine similarities of the patch features of windows (n, 3, H, W) to queries (Q, D) (or the
    head's own scores), upsampled bilinearly from the patch grid (CLIP's, or the head's own) to the window;
    `whole`: the image they are cut from."""
    settings = segmenter.settings
    head = segmenter.head(settings)
    grid = segmenter.encoder.grid(*windows.shape[-2:])  # (h, w) whole patches
    trunk = segmenter.encoder.run_trunk(windows, head.taps(settings))  # every block but the last, and the head's taps
    models = {name: spec.features(module, windows) for name, (spec, module) in segmenter.models.items()}
    inputs = HeadInput(segmenter.encoder, trunk, grid, windows, queries, models, whole)
    out, grid = head_features(head, inputs, settings)  # (n, h*w, D) on CLIP's grid or the head's own
    if head.scores:
        logits = out.to(queries.dtype)  # (n, h*w, Q): the head's own scores
    else:
        logits = F.normalize(out.to(queries.dtype), dim=-1) @ queries.T  # features scored
    logits = logits.transpose(1, 2).reshape(len(windows), len(queries), *grid)  # (n, Q, h, w)
    return F.interpolate(logits, size=windows.shape[-2:], mode="bilinear", align_corners=False)


def neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """(B, K, 8 x D, H, W): for each dilation d, the 8 pixels (y + dy d, x + dx d) around each pixel of x (B, K, H, W),
    the border replicated."""
    height, width = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, [pad] * 4, mode="replicate")  # (B, K, H + 2 pad, W + 2 pad)
    return torch.stack(
        [
            padded[..., pad + dy * d : pad + dy * d + height, pad + dx * d : pad + dx * d + width]
            for d in dilations
            for dy, dx in DIRECTIONS
        ],
        dim=2,
    )


def pamr_plain(guide: Tensor, logits: Tensor, dilations: Sequence[int], steps: int) -> Tensor:
    """PAMR (Araslanov & Roth, CVPR 2020) on logits (1, Q, H, W) with a guide image (1, K, H, W): `steps` times,
    each pixel's logits become the affinity-weighted sum of its 8 x D neighbours'.

    The affinity of pixel p to neighbour n: -|I_p - I_n| / (1e-8 + 0.1 std_p) per channel, std_p the unbiased
    standard deviation of p's 3 x 3 neighbourhoods at all dilations pooled (centre once per dilation), averaged
    over the channels, soft-maxed over the neighbours. Each step holds 8 x D shifted copies of the logits at once.
    """
    around = neighbours(guide, dilations)  # (1, K, 8D, H, W)
    centre = guide[:, :, None]  # (1, K, 1, H, W)
    pooled = torch.cat([centre.expand(-1, -1, len(dilations), -1, -1), around], dim=2)  # (1, K, 9D, H, W)
    scores = -(centre - around).abs() / (1e-8 + 0.1 * pooled.std(2, keepdim=True))  # (1, K, 8D, H, W)
    weights = scores.mean(1).softmax(1)  # (1, 8D, H, W), summing to 1 over the neighbours
    for _ in range(steps):
        logits = (neighbours(logits, dilations) * weights[:, None]).sum(2)  # (1, Q, H, W)
    return logits
