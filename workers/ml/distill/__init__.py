"""Distillation engine: teacher → LoRA expert on the shared student base. Pure ML, no Django.

Entry point: `workers.ml.distill.run.distill(config, corpus, on_progress, should_stop) -> DistillResult`.
Command line: `python -m workers.ml.distill --help`.
"""
