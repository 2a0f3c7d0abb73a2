"""The app layer: the Prefect flow, its deployment and the `reftflow` command line.

Prefect reads its settings once, when it is first imported, so the environment defaults must be
in place before any module here imports it; applying them as this package is imported covers
`python -m flows.pipeline`, `python -m flows.deploy` and the `reftflow` console script alike.
"""

from reftflow.env import apply_defaults

apply_defaults()
