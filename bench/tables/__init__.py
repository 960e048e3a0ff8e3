"""The paper's tables from run records only (they never train or score), as Markdown and CSV.

Each table is a list of rows (`RowSpec`) that say which records feed them (registry method name, variant names,
and which evaluation of the record: the final model, a view, the view the method declares for the tables
(`MethodOptions.table_view`), or the real-vs-real ceiling) and which row of the paper's `reference/paper_tables.csv`
they correspond to. Records are grouped by (profile, metric suite): one rendered table per group, since numbers
from different suites or models are not comparable. Records are typed (`bench.record.RunRecord`, read by
`load_records`); the logic reads how each run is shown from its record (`bench.contract.recorded`: its label, table
view), never its name.

Aggregation of one cell (one row, one metric), as the authors' released evaluation writes its result ("Average
over Instances") and then honestly:
  1. per run (one concept, one training seed): per evaluation seed, the mean over the run's images (CLIP-T) or
     over all its (image, real) pairs (CLIP-I, DINO); then the mean over evaluation seeds (the run's `metrics`,
     `bench.metrics.aggregate` on its images);
  2. per concept: the mean over its training-seed runs;
  3. the cell: the mean over concepts of the per-concept means, each concept weighing the same; ± the sample
     std over training seeds (of each seed's mean over its concepts) when there are several;
  4. a 95% bootstrap interval over concepts: concepts resampled with replacement (1000 resamples, fixed RNG
     seed) of the mean of per-concept means;
  5. runs behind the cell: done / expected (expected = the concepts present for the profile x the training
     seeds present in the table), failed and missing runs written into the cell, never dropped.
Beside it, `Stats.pooled` (CSV `*_pooled`): per training seed, the pooled mean over every image / pair of all
concepts per evaluation seed, then the mean over evaluation seeds (what the released script prints per seed),
then the mean over training seeds. Both are computed here from per-record sums, because calling `aggregate` per
cell takes seconds for a full sweep and importing it imports torch; `tests/test_tables.py` holds them to
`aggregate`'s numbers.

Where each part lives: `definitions` (the tables' rows, the metrics, the paper's numbers), `statistics` (one cell
from records), `building` (tables from records), `rendering` (Markdown, CSV and the `bench table` command).
"""

from __future__ import annotations

from bench.tables.building import Row, Table, build_tables, load_records, suite_name
from bench.tables.definitions import (
                                      BEFORE_ECHO,
                                      CD,
                                      CHOICES,
                                      COMPARE,
                                      DEFS,
                                      ED,
                                      FORMATS,
                                      METRIC_LABELS,
                                      METRICS,
                                      TABLE_VIEW,
                                      TABLES,
                                      RowSpec,
                                      TableDef,
                                      paper_rows,
                                      split_variant,
                                      variant_key,
)
from bench.tables.rendering import (
                                      CSV_COLUMNS,
                                      PAPER_COLUMNS,
                                      csv_rows,
                                      md_rows,
                                      metric_cell,
                                      render,
                                      table_command,
                                      to_markdown,
)
from bench.tables.statistics import (
                                      BOOTSTRAP_RESAMPLES,
                                      BOOTSTRAP_SEED,
                                      RunSummary,
                                      Stats,
                                      as_records,
                                      bootstrap_interval,
                                      ceiling_stats,
                                      cell_stats,
                                      concept_mean,
                                      pooled,
                                      summarize_run,
)

__all__ = ["BEFORE_ECHO", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CD", "CHOICES", "COMPARE", "CSV_COLUMNS", "DEFS",
           "ED", "FORMATS", "METRICS", "METRIC_LABELS", "PAPER_COLUMNS", "Row", "RowSpec",
           "RunSummary", "Stats", "TABLES", "TABLE_VIEW", "Table", "TableDef", "as_records", "bootstrap_interval",
           "build_tables",
           "ceiling_stats", "cell_stats", "concept_mean", "csv_rows", "load_records", "md_rows", "metric_cell",
           "paper_rows", "pooled", "render", "split_variant", "suite_name", "summarize_run", "table_command",
           "to_markdown", "variant_key"]
