"""`BENCH_MODULE=tests.fake_plan`: the paper plan's pieces, in the plan's order and under their names, each run
with the test-only method `fake` (tests/fake_method.py) and its own training, so that the rehearsal of the whole
pipeline (tools/rehearsal.py: shards, kills, packs, merges, tables) fits the fast tier. `make rehearsal` and the
slow test run the real methods.

Imported by `tools/paper_tables.py` (its `main` imports $BENCH_MODULE), it replaces that script's `pieces`; run as
`python -m tests.fake_plan ARGS` it is `bench ARGS` with `fake` and these variants registered.
"""

import sys

from bench import estimate, registry
from tests.fake_method import FakeMethod

registry.METHODS.setdefault("fake", "tests.fake_method:FakeMethod")
PIECES = ("main", "cd_grid", "drop_teacher", "drop_discriminators", "drop_id_loss", "drop_mse_loss", "drop_msswd_loss",
          "drop_disc_dino1", "drop_disc_dino2", "drop_disc_clip", "drop_ste", "nfe", "teacher_first", "shots1",
          "backbone")
FakeMethod.variants = {**FakeMethod.variants,
                       **{p: {"iterations": 2 + i, "sleep": 0.05} for i, p in enumerate(PIECES)}}

_paper_timing = estimate.paper_timing


def _timed(method: str, backbone: str, steps: int, variant: str | None = None) -> tuple[float, float] | None:
    """A cost for `fake` (the paper does not time it): what `estimate` and the shard split read."""
    return (0.5, 0.01 * steps) if method == "fake" else _paper_timing(method, backbone, steps, variant)


estimate.paper_timing = _timed
script = sys.modules.get("__main__")
if script is not None and hasattr(script, "pieces") and hasattr(script, "Piece"):
    real = script.pieces

    def stand_in_pieces(main_methods: list[str]) -> list:
        return [script.Piece(p.name, "run", ("fake",), (p.name,)) for p in real(main_methods)]

    script.pieces = stand_in_pieces

if __name__ == "__main__":
    from bench.cli import main

    main()
