"""The explorer (``notebooks/explore.ipynb``): one image, some words, several methods side by side.

`Explorer` holds one loaded backbone and runs every chosen method on it as a variant (the trunk runs once per
image for all methods; a method needing a second model gets a segmenter of its own). `explorer_ui` builds the
ipywidgets page: choose or upload an image, type the words, pick methods, move sigma and the thresholds, and
click the image to see each method's attention from the patch under the pointer. With random weights every
overlay carries the RANDOM WEIGHTS band.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from naclip.datasets.benchmarks import SAMPLES_DIR
from naclip.methods import METHODS
from naclip.segment_cli import parse_class_argument
from naclip.settings import variant_keys
from naclip.viz import RANDOM_MARK, overlay, png_bytes


def sample_images() -> dict[str, Path]:
    """The embedded sample images, by file name."""
    return {path.name: path for path in sorted(SAMPLES_DIR.rglob("*.jpg"))}


class Explorer:
    """Every registered method on one backbone (`model`, `pretrained`, `device`, any protocol setting)."""

    def __init__(self, **backbone: Any) -> None:
        from naclip import Segmenter

        self.backbone = backbone
        self.segmenter = Segmenter(**backbone)
        self._own: dict[str, Any] = {}  # method -> a segmenter of its own (second models)
        self.methods = list(METHODS)

    @property
    def random_weights(self) -> bool:
        return self.segmenter.random_weights or any(s.random_weights for s in self._own.values())

    def _for(self, method: str):
        """The segmenter that runs `method`: the shared one, or (second models) one of its own."""
        try:
            self.segmenter.variant({"method": method})
            return self.segmenter
        except ValueError:
            if method not in self._own:
                from naclip import Segmenter

                self._own[method] = Segmenter(method=method, **self.backbone)
            return self._own[method]

    def _variant(self, method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """`settings` that `method` has (sigma only where the method has a sigma), and the method itself."""
        return {"method": method, **{k: v for k, v in settings.items() if v is not None and k in variant_keys(method)}}

    def overlays(
        self, image: np.ndarray, words: str, methods: Sequence[str], **settings: Any
    ) -> dict[str, Image.Image]:
        """Each method's labels over `image` for the class lines in `words` ("cat; dog, puppy; grass")."""
        classes = parse_class_argument(words)
        shown = {}
        mark = RANDOM_MARK if self.random_weights else None
        for method in methods:
            segmenter = self._for(method)
            segmenter.set_classes(classes)
            tensor = segmenter.prepare(image)
            (prediction,) = segmenter.predict_variants(tensor, image.shape[:2], [self._variant(method, settings)])
            shown[method] = overlay(image, prediction.labels, segmenter.class_names, mark=mark)
        return shown

    def attention(
        self, image: np.ndarray, point: tuple[float, float], methods: Sequence[str], **settings: Any
    ) -> dict[str, Image.Image]:
        """Each method's last-layer attention from the patch under `point` ((y, x) fractions), over the image,
        all on one colour scale (0 to the largest weight of any method)."""
        import matplotlib

        maps = {}
        for method in methods:
            segmenter = self._for(method)
            variant = {
                k: v
                for k, v in self._variant(method, settings).items()
                if k in ("method", "attention", "sigma", "arch")
            }
            weights = segmenter.patch_attention(image, **variant)
            h, w = weights.shape[1:]
            row, col = min(int(point[0] * h), h - 1), min(int(point[1] * w), w - 1)
            maps[method] = weights[row * w + col]
        top = max(float(m.max()) for m in maps.values()) or 1.0
        colours = matplotlib.colormaps["jet"]
        shown = {}
        for method, weights in maps.items():
            heat = Image.fromarray((255 * colours(weights / top)[..., :3]).astype(np.uint8))
            heat = heat.resize((image.shape[1], image.shape[0]), Image.NEAREST)
            blended = Image.blend(Image.fromarray(image), heat, 0.55)
            shown[method] = overlay(
                np.asarray(blended),
                np.zeros(image.shape[:2], dtype=np.int64),
                ["attention"],
                alpha=0,
                legend=False,
                mark=RANDOM_MARK if self.random_weights else None,
            )
        return shown


def explorer_ui(explorer: Explorer, words: str = "sky; person; grass, lawn; tree; building; horse; aeroplane"):
    """The explorer's widgets (an ipywidgets VBox): inputs on top, an overlay per method, then the attention
    of the clicked patch per method. Every change redraws."""
    import ipywidgets as widgets
    from ipyevents import Event

    from naclip.preprocess import load_image

    SIZE = widgets.Layout(width="320px")  # noqa: N806 - one layout for every picture

    samples = sample_images()
    state: dict[str, Any] = {"image": load_image(next(iter(samples.values()))), "point": None}
    choose = widgets.Dropdown(options=list(samples), description="image")
    upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
    text = widgets.Text(value=words, description="words", layout=widgets.Layout(width="60%"))
    methods = widgets.SelectMultiple(
        options=explorer.methods, value=("clip", "naclip"), description="methods", rows=len(explorer.methods)
    )
    sigma = widgets.FloatSlider(value=5.0, min=0.5, max=12.0, step=0.5, description="sigma")
    prob = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="prob thr.")
    area = widgets.FloatSlider(value=0.0, min=0.0, max=0.5, step=0.01, description="area thr.")
    picture = widgets.Image(format="png", layout=SIZE)
    results, attention = widgets.HBox(), widgets.HBox()
    mark = (
        f"<b style='color:red'>{RANDOM_MARK}: the model is randomly initialised.</b> "
        if explorer.random_weights
        else ""
    )
    status = widgets.HTML(mark)

    def settings() -> dict[str, Any]:
        return {"sigma": sigma.value, "prob_threshold": prob.value, "area_threshold": area.value}

    def panel(name: str, draw: Any) -> Any:
        """A method's picture, or what stopped it (a setting the method refuses on this backbone)."""
        try:
            image = draw()
        except ValueError as error:
            return widgets.VBox(
                [widgets.HTML(f"<b>{name}</b>"), widgets.HTML(f"<span style='color:red'>{error}</span>")]
            )
        return widgets.VBox(
            [widgets.HTML(f"<b>{name}</b>"), widgets.Image(value=png_bytes(image), format="png", layout=SIZE)]
        )

    def draw_attention() -> None:
        image, point, chosen = state["image"], state["point"], list(methods.value)
        attention.children = [
            panel(m, lambda m=m: explorer.attention(image, point, [m], **settings())[m]) for m in chosen
        ]

    def redraw(*_: Any) -> None:
        picture.value = png_bytes(Image.fromarray(state["image"]))
        try:
            parse_class_argument(text.value)
        except ValueError as error:
            status.value = f"{mark}<span style='color:red'>{error}</span>"
            return
        status.value = mark
        image, chosen = state["image"], list(methods.value)
        results.children = [
            panel(m, lambda m=m: explorer.overlays(image, text.value, [m], **settings())[m]) for m in chosen
        ]
        if state["point"] is not None:
            draw_attention()

    def chosen(*_: Any) -> None:
        state["image"], state["point"] = load_image(samples[choose.value]), None
        attention.children = []
        redraw()

    def uploaded(*_: Any) -> None:
        if upload.value:
            state["image"] = load_image(Image.open(io.BytesIO(bytes(upload.value[0]["content"]))))
            state["point"] = None
            redraw()

    def clicked(event: Mapping[str, Any]) -> None:
        y, x = event["relativeY"] / event["boundingRectHeight"], event["relativeX"] / event["boundingRectWidth"]
        state["point"] = (min(max(y, 0.0), 1.0), min(max(x, 0.0), 1.0))
        draw_attention()

    choose.observe(chosen, "value")
    upload.observe(uploaded, "value")
    for control in (text, methods, sigma, prob, area):
        control.observe(redraw, "value")
    clicks = Event(source=picture, watched_events=["click"])
    clicks.on_dom_event(clicked)
    redraw()
    page = widgets.VBox(
        [
            status,
            widgets.HBox([choose, upload]),
            text,
            widgets.HBox([methods, widgets.VBox([sigma, prob, area])]),
            widgets.HTML("<b>the image</b> (click a point: each method's attention from that patch, one colour scale)"),
            picture,
            results,
            attention,
        ]
    )
    page.clicked = clicked  # what a click does, for tests without a browser
    return page
