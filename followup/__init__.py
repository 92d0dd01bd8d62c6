"""Follow-up: the consultation a signed report opens, the follow-up plan and its tasks, and
prescriptions through to the pharmacy's dispense."""
