"""Moved: the app's shared pieces now live in the ``ui`` package (one module per concern).

A thin re-export while the pages move over; removed once they import ``ui`` themselves.
"""

from defense.explain import attribution, trigger_share  # noqa: F401
from ui.charts import COLORS, image_grid, layer_heatmaps, layers_row, scaled  # noqa: F401
from ui.curves import (  # noqa: F401
    LABELS,  # noqa: F401
    pruning_figure,
    runs_figure,
)
from ui.jobs import background, wait_note  # noqa: F401
from ui.lab import LOAD_ERRORS, SLIDER_GRID, SLIDER_STEP, Lab, bundled, bundled_names, lab, warm, weights_key  # noqa: F401
from ui.runs import ABSENT_S, MARKING_DEFENSES, Runner, purification_config, report_json, start_run  # noqa: F401
from ui.sidebar import sidebar  # noqa: F401
from ui.state import CURVE_METRICS, DEFAULT_MODEL, init_state, intro, points, require_app, synced  # noqa: F401
from ui.upload import read_upload  # noqa: F401
