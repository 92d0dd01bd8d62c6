"""Synthetic data for development, tests, benchmarks and AI training: chest CT phantoms
(`synthetic.phantoms`) and the DICOM series made from them (`synthetic.dicom_factory`); and a
second, independently designed generator used only to evaluate the model (`synthetic.eval_phantoms`,
imported by `ai_services.evaluation` alone: see `tests/test_architecture.py`).

No real patient data may enter this project, so every scan the platform sees outside production is
made here. A leaf package: it needs numpy and pydicom only and imports nothing from `hospital/` or
the stages, so the core never depends on its own test data.
"""
