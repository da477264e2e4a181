"""Declarative YAML pipelines (ingest → train → predict → evaluate → batch → report), run like make.

``hsicluster run FILE.yaml`` calls :func:`run`. The schema is in :mod:`.schema`, planning in
:mod:`.plan`, the six kinds of step in :mod:`.steps`, the up-to-date bookkeeping in :mod:`.state`, the
report's rendering in :mod:`.report` and the run loop in :mod:`.runner`. No click here: the CLI is a
thin layer over :func:`run`.
"""

from hsi_cluster.pipeline.runner import RunResult, StepOutcome, describe, plan, run
from hsi_cluster.pipeline.schema import KINDS, Pipeline, PipelineError, load_pipeline

__all__ = ["KINDS", "Pipeline", "PipelineError", "RunResult", "StepOutcome", "describe", "load_pipeline", "plan", "run"]
