"""Per-run evaluation records -> leaderboard tables, plots and sample grids.

Each evaluated setting writes one JSON record (benchmark/records.py). The leaderboard is always
rebuilt from the records found on disk (``rebuild_leaderboard``), so a record that is corrupt or
half-written is reported and skipped instead of breaking the table. ``tables`` builds the
frames and Markdown, ``plots`` the figures (bare matplotlib Figures through the Agg canvas: no
display, pyplot's global state untouched), ``grids`` the sample grids.
"""
from benchmark.io import write_json as write_record
from benchmark.results.grids import (GRID_PADDING, grid_cells, label_margin, save_comparison, save_sample_grid,
                                     save_side_by_side)
from benchmark.results.plots import _setting_labels, plot_leaderboard, plot_quality_speed, save_loss_curve
from benchmark.results.tables import (COST_COLUMNS, ID_COLUMNS, MAIN_METRICS, markdown_table, read_records,
                                      rebuild_leaderboard, records_to_frame, summarize, tokenizer_table)

__all__ = ["COST_COLUMNS", "GRID_PADDING", "ID_COLUMNS", "MAIN_METRICS", "grid_cells", "label_margin", "markdown_table",
           "save_comparison", "save_side_by_side",
           "plot_leaderboard", "plot_quality_speed", "read_records", "rebuild_leaderboard", "records_to_frame",
           "save_loss_curve", "save_sample_grid", "summarize", "tokenizer_table", "write_record"]
