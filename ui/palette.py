"""Every colour the app uses, one per meaning, in one place (pages, charts and the HTML report read them here).

- ``INFECTED``: infected neurons, marked neurons and triggered images that reach the target (the one "danger"
  colour; nothing else is red).
- ``SCORES``: one colour per neuron score, the same on every chart (heatmap captions, ROC, pruning curve).
- ``RUNS``: purification runs, a palette of its own so that a run is never mistaken for a score.
- ``CHOICE``: the lecturer's current choice (the threshold line); ``CHANCE``: reference lines; ``CLEAN``: clean
  neurons in scatter plots.
Colours are the Okabe-Ito set (readable with the common colour-vision deficiencies) and Paul Tol's dark set.
"""

from __future__ import annotations

INFECTED = "#c8102e"  # red: infected / marked / sent to the target
CLEAN = "#8a9bb0"  # grey-blue: clean neurons
CHOICE = "#1a1a1a"  # near black: "your choice"
CHANCE = "#8c8c8c"  # grey: chance line, references
TEXT = "#1a1a1a"  # chart text: 17:1 on white
MUTED_TEXT = "#404040"  # secondary chart text (axis titles): 10:1 on white
GRID = "#e2e2e2"
AXIS = "#5a5a5a"

SCORES = {
    "benign": "#0072b2",  # blue
    "magnitude": "#e69f00",  # orange
    "activation": "#009e73",  # green
    "clp": "#cc79a7",  # pink-purple
    "anp": "#56b4e9",  # sky blue
    "bs-magnitude": "#7a5195",  # purple
    "unlearn": "#a6761d",  # brown
    "rnp": "#666666",  # grey
    "inversion": "#d55e00",  # vermillion
}
_EXTRA_SCORES = ("#b8860b", "#2f4b7c", "#8b4513", "#5f9ea0")  # scores registered later, by a hash of the name

RUNS = ("#332288", "#117733", "#882255", "#44aa99", "#999933", "#aa4499", "#6699cc", "#661100")

HEAT = "Viridis"  # per-neuron scores (dark = most suspect)
ATTRIBUTION = "Hot"  # attribution maps
DIFFERENCE = "RdBu"  # signed images (triggered minus clean)


def score_color(name: str) -> str:
    """The colour of score ``name``; scores without an assigned colour get one of the spare ones, stably."""
    if name in SCORES:
        return SCORES[name]
    return _EXTRA_SCORES[sum(map(ord, name)) % len(_EXTRA_SCORES)]


def run_color(number: int) -> str:
    """Colour of the ``number``-th run (1-based) of a model."""
    return RUNS[(number - 1) % len(RUNS)]


def contrast(fg: str, bg: str = "#ffffff") -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""

    def lum(hex_: str) -> float:
        rgb = [int(hex_.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    a, b = sorted((lum(fg), lum(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)
