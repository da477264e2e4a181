"""Declarative YAML pipelines (ingest → train → predict → evaluate → batch → report), run like make.

``hsicluster run FILE.yaml`` calls :func:`run`. The schema is in :mod:`.schema`, the up-to-date
bookkeeping in :mod:`.state`, planning and the steps in :mod:`.runner`, the report's rendering in
:mod:`.report`. No click here: the CLI is a thin layer over :func:`run`.
"""

from hsi_cluster.pipeline.runner import RunResult, StepOutcome, describe, plan, run
from hsi_cluster.pipeline.schema import KINDS, Pipeline, PipelineError, load_pipeline

__all__ = ["KINDS", "Pipeline", "PipelineError", "RunResult", "StepOutcome", "describe", "load_pipeline", "plan", "run"]
