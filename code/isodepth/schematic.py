"""Schematic of the prelude - recur - coda architecture per recurrence count r, drawn with matplotlib.

Every box is a matplotlib patch tagged with a gid (see GIDS), so a test can count the drawn
layers of each section and compare them with the model configuration they came from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from matplotlib import patches
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import style
from .config import ModelConfig
from .grids import Grid, load_grid

GID_PRELUDE = "layer-prelude"
GID_BLOCK = "layer-block"
GID_CODA = "layer-coda"
GID_INJECTION = "injection"
GID_BLOCK_FRAME = "block-frame"
GID_EMBEDDING = "embedding"
GID_HEAD = "head"
GIDS = (GID_PRELUDE, GID_BLOCK, GID_CODA, GID_INJECTION, GID_BLOCK_FRAME, GID_EMBEDDING, GID_HEAD)

# Geometry in data units: one layer box is LAYER_HEIGHT tall and BOX_WIDTH wide, with GAP
# between boxes, so every panel of a figure draws layers at the same size.
BOX_WIDTH = 2.4
LAYER_HEIGHT = 0.7
GAP = 0.3
FRAME_PAD = 0.18

COLORS = {
    "once": "#c6dbef",  # prelude and coda layers
    "injection": "#fdd0a2",
    "io": "#eeeeee",  # embedding and head
    "edge": "#444444",
}


@dataclass(frozen=True)
class Layout:
    """Layer counts of one architecture: prelude, a block of n_block layers run r times, coda."""

    r: int
    n_prelude: int
    n_block: int
    n_coda: int
    injection: str | None  # the input injection of a looped model; None for r = 1

    def __post_init__(self) -> None:
        if self.r < 1 or self.n_block < 1 or self.n_prelude < 0 or self.n_coda < 0:
            raise ValueError(f"invalid layout {self}: r and n_block must be at least 1 and the "
                             "prelude and coda counts non-negative")
        if (self.r > 1) != (self.injection is not None):
            raise ValueError(f"invalid layout {self}: a looped model (r > 1) needs an injection "
                             "mode and a plain model (r = 1) has none")

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "Layout":
        return cls(r=cfg.recurrences, n_prelude=cfg.n_prelude, n_block=cfg.n_recur_layers,
                   n_coda=cfg.n_coda, injection=cfg.injection if cfg.looped else None)

    @property
    def effective_depth(self) -> int:
        """Layers executed per token."""
        return self.n_prelude + self.r * self.n_block + self.n_coda

    @property
    def unique_layers(self) -> int:
        return self.n_prelude + self.n_block + self.n_coda

    def depth_formula(self) -> str:
        """Write the executed depth as a sum, e.g. "1 + 4×2 + 1 = 10" (r = 1: "10 layers, run once")."""
        if self.r == 1:
            return f"{self.n_block} layers, run once"
        parts = [str(self.n_prelude)] if self.n_prelude else []
        parts.append(f"{self.n_block}\u00d7{self.r}")
        if self.n_coda:
            parts.append(str(self.n_coda))
        return f"{' + '.join(parts)} = {self.effective_depth}"


def grid_layouts(grid: Grid | str) -> list[Layout]:
    """Return the layout of every recurrence count of a grid, in the grid's r order.

    Layer counts do not depend on the width, so each r takes the configuration of its first
    planned run in the grid's first variant (the main, linear-injection variant by default).
    """
    grid = load_grid(grid) if isinstance(grid, str) else grid
    first_variant = grid.variants[0].name
    configs: dict[int, ModelConfig] = {}
    for run in grid.runs():
        if run.variant == first_variant and run.r not in configs:
            configs[run.r] = run.model
    missing = [r for r in grid.recurrences if r not in configs]
    if missing:
        raise ValueError(f"grid {grid.name!r} plans no run of its first variant {first_variant!r} "
                         f"for r = {missing}; check its budgets or token_runs")
    return [Layout.from_config(configs[r]) for r in grid.recurrences]


def _box(ax: Axes, y: float, height: float, label: str, gid: str, facecolor, *, x: float = 0.0,
         width: float = BOX_WIDTH, fontsize: float = 6.0, linestyle: str = "-") -> float:
    """Draw a rounded box centred on x with its bottom at y. Return the y of its top."""
    box = patches.FancyBboxPatch((x - width / 2, y), width, height, boxstyle="round,pad=0,rounding_size=0.08",
                                 facecolor=facecolor, edgecolor=COLORS["edge"], linewidth=0.6,
                                 linestyle=linestyle, gid=gid)
    ax.add_patch(box)
    ax.text(x, y + height / 2, label, ha="center", va="center", fontsize=fontsize)
    return y + height


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], color: str = COLORS["edge"]) -> None:
    ax.add_patch(patches.FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=6, linewidth=0.6,
                                         color=color, shrinkA=0, shrinkB=0))


def _layers(ax: Axes, y: float, count: int, label: str, gid: str, facecolor) -> float:
    """Stack `count` layer boxes from y upwards with arrows between them. Return the top y."""
    for i in range(count):
        if i:
            _arrow(ax, (0.0, y), (0.0, y + GAP))
            y += GAP
        text = label if count == 1 else f"{label} {i + 1}"
        y = _box(ax, y, LAYER_HEIGHT, text, gid, facecolor)
    return y


def draw_layout(ax: Axes, layout: Layout) -> Counter:
    """Draw one architecture from the embedding (bottom) to the head (top) on ax.

    Returns the number of patches drawn per gid, which equals the layer counts of the layout.
    """
    block_color = style.R_COLORS.get(layout.r, "#777777")
    y = _box(ax, 0.0, LAYER_HEIGHT, "embedding", GID_EMBEDDING, COLORS["io"])

    if layout.n_prelude:
        _arrow(ax, (0.0, y), (0.0, y + GAP))
        y = _layers(ax, y + GAP, layout.n_prelude, "prelude", GID_PRELUDE, COLORS["once"])

    _arrow(ax, (0.0, y), (0.0, y + GAP))
    y += GAP
    frame_bottom = y
    injection_top = None
    if layout.injection is not None:
        y = _box(ax, y + FRAME_PAD, LAYER_HEIGHT, "injection", GID_INJECTION,
                 COLORS["injection"])
        injection_top = y
        ax.text(-0.2, frame_bottom - GAP / 2, "e", ha="right", va="center", fontsize=6, style="italic")
        _arrow(ax, (0.0, y), (0.0, y + GAP))
        y += GAP
    else:
        y += FRAME_PAD
    y = _layers(ax, y, layout.n_block, "layer", GID_BLOCK, _lighten(block_color))
    frame_top = y + FRAME_PAD

    frame = patches.FancyBboxPatch((-BOX_WIDTH / 2 - FRAME_PAD, frame_bottom), BOX_WIDTH + 2 * FRAME_PAD,
                                   frame_top - frame_bottom, boxstyle="round,pad=0,rounding_size=0.12",
                                   facecolor="none", edgecolor=block_color, linewidth=1.2, gid=GID_BLOCK_FRAME)
    ax.add_patch(frame)
    side = BOX_WIDTH / 2 + FRAME_PAD
    if layout.r > 1:
        # The loop: the block output h goes back into the injection, r times in all.
        loop_x = side + 0.3
        return_y = injection_top - LAYER_HEIGHT / 2
        ax.plot([side, loop_x, loop_x], [y - LAYER_HEIGHT / 2, y - LAYER_HEIGHT / 2, return_y],
                color=block_color, linewidth=0.9, solid_capstyle="butt")
        _arrow(ax, (loop_x, return_y), (BOX_WIDTH / 2, return_y), color=block_color)
        ax.text(loop_x + 0.1, (y + injection_top) / 2 - LAYER_HEIGHT / 2, f"h\n\u00d7{layout.r}", ha="left",
                va="center", fontsize=7, color=block_color, fontweight="bold")
    else:
        ax.text(side + 0.1, (frame_top + frame_bottom) / 2, "\u00d71", ha="left", va="center", fontsize=7,
                color=block_color, fontweight="bold")
    y = frame_top

    if layout.n_coda:
        _arrow(ax, (0.0, y), (0.0, y + GAP))
        y = _layers(ax, y + GAP, layout.n_coda, "coda", GID_CODA, COLORS["once"])
    _arrow(ax, (0.0, y), (0.0, y + GAP))
    _box(ax, y + GAP, LAYER_HEIGHT, "norm + head", GID_HEAD, COLORS["io"])
    return count_drawn(ax)


def layout_height(layout: Layout) -> float:
    """Height in data units that draw_layout uses for a layout."""
    injection = int(layout.injection is not None)
    boxes = 2 + layout.n_prelude + layout.n_block + layout.n_coda + injection
    gaps = layout.n_prelude + layout.n_block + layout.n_coda + injection + 1
    return boxes * LAYER_HEIGHT + gaps * GAP + 2 * FRAME_PAD


def count_drawn(ax: Axes) -> Counter:
    """Count the patches on ax per schematic gid (layers per section, injections, frames)."""
    return Counter(p.get_gid() for p in ax.patches if p.get_gid() in GIDS)


def draw_schematic(layouts: list[Layout], figsize: tuple[float, float] = (7.0, 3.6)) -> Figure:
    """Draw one panel per layout side by side, all at the same scale, in a new figure."""
    import matplotlib.pyplot as plt

    if not layouts:
        raise ValueError("draw_schematic needs at least one layout")
    style.apply()
    fig, axes = plt.subplots(1, len(layouts), figsize=figsize)
    axes = [axes] if len(layouts) == 1 else list(axes)
    top = max(layout_height(layout) for layout in layouts)
    for ax, layout in zip(axes, layouts):
        draw_layout(ax, layout)
        ax.set_xlim(-BOX_WIDTH / 2 - 0.4, BOX_WIDTH / 2 + 1.1)
        ax.set_ylim(-0.9, top + 0.2)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"r = {layout.r}", fontsize=8, color=style.R_COLORS.get(layout.r, "black"))
        ax.text(0.0, -0.25, f"{layout.depth_formula()}\n{layout.unique_layers} unique layers",
                ha="center", va="top", fontsize=6)
    return fig


def _lighten(color: str, amount: float = 0.75) -> tuple[float, float, float]:
    """Mix a colour with white: amount 0 keeps it, 1 gives white."""
    from matplotlib.colors import to_rgb

    return tuple(c + (1.0 - c) * amount for c in to_rgb(color))
