"""The research image database: patients' research consent, contributions of reviewed studies,
their de-identified copies, and immutable dataset versions exported for training."""
