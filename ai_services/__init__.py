"""AI services: lesion-agnostic analysis of every completed study, the model registry, the
preliminary DiagnosticReport and the radiologist's review and sign-off."""
