"""Core of the closed-loop imaging hospital: app factory, config, database, auth, audit, jobs,
the FHIR layer and the CLI. It imports no stage except in the app factory (`hospital.app`)."""
