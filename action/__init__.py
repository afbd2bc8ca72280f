"""The GitHub Action front end of ptq-hub (``action.yml`` at the repository root).

``python -m action.main`` reads the step's inputs from the environment, calls
``ptq_core.quantize_to_hub`` once per job and reports back to the runner. See
``docs/action.md``.
"""
