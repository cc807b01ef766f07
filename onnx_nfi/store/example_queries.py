"""SQL shown to users as examples (the demo's queries, the SQL page's example, where skipped files
are listed): SQL text, like every other statement, lives with the database it is written for."""

from __future__ import annotations

#: (title, query) pairs the demo prints and runs.
DEMO_QUERIES = (
    ("Most colour-selective neurons of Lite0's conv20",
     "SELECT unit, round(color_selectivity, 3) AS color, round(active_fraction, 2) AS active, top_class "
     "FROM neurons n JOIN layers l USING (model, layer) WHERE model = 'efficientnet_lite0' AND alias = 'conv20' "
     "AND active_fraction > 0.2 ORDER BY color_selectivity DESC LIMIT 5"),
    ("Colour and class selectivity by relative depth, both models",
     "SELECT model, alias, round(relative_depth, 2) AS depth, round(color_selectivity_median, 3) AS color, "
     "round(class_selectivity_median, 3) AS class FROM layer_summary WHERE alias IN ('conv1', 'conv10', 'conv25', "
     "'conv40', 'conv49', 'conv52') ORDER BY model, depth"),
)

#: The query ``serve``'s SQL page offers before one is typed.
SQL_PAGE_EXAMPLE = (
    "SELECT n.model, l.alias AS layer, n.unit, n.top_class, n.top_class_frequency\n"
    "FROM neurons n JOIN layers l USING (model, layer)\n"
    "WHERE n.top_class IS NOT NULL ORDER BY n.top_class_frequency DESC LIMIT 20"
)


def skipped_files_query(run_id: int) -> str:
    """The query that lists every file run ``run_id`` skipped, with the reason."""
    return f"SELECT path, reason FROM skipped_images WHERE run_id = {int(run_id)}"
