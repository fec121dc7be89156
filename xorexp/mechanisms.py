"""xorexp's speed-ups, each with a switch. ``XOREXP_OFF`` names those to turn off (``all``, or names
separated by commas): the command then takes the plain path, with the same runs in the store (the
tests compare both paths; ``benchmarks/bench_mechanisms.py`` times each one off in turn)."""

from __future__ import annotations

import os

OFF_ENV = "XOREXP_OFF"

MECHANISMS = {
    "train_ahead": "a child process trains a small grid sweep while the store opens (xorexp.train_ahead)",
    "glyph_cache": "run titles drawn from kept glyph bitmaps (xorexp.compat.matplotlib.GlyphCache)",
    "png_writer": "run plots encoded by xorexp (run_plots.encode_png) instead of matplotlib's PNG writer",
    "yaml_templates": "a job's .hydra YAML files written from its shape's template, not dumped whole",
    "run_job_copy": "jobs run by the launcher's copy of Hydra's run_job with configs made per shape",
    "sql_writer": "runs written straight into an SQL store's tables (xorexp.tracking.sql_writer)",
    "background": "runs' requests to a tracking server in flight while the next jobs run",
    "quick_teardown": "a process ends without walking the object graphs MLflow built at import",
}


def on(name: str) -> bool:
    """Whether the speed-up ``name`` (a key of MECHANISMS) is on: not named by ``XOREXP_OFF``."""
    if name not in MECHANISMS:
        raise KeyError(f"no mechanism {name!r}: one of {', '.join(MECHANISMS)}")
    named = {item.strip() for item in os.environ.get(OFF_ENV, "").split(",")}
    return not (named & {name, "all"})
