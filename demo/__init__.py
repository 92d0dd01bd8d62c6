"""The demo: one whole closed loop (referral to paid invoice) driven as users and devices drive it,
through the HTTP API and a real DICOM association.

Not core: a client of the public API, with its synthetic study made by `synthetic`. The `hospital`
command offers it as `hospital demo` (`demo.cli`); the end-to-end tests, chaos tests and benchmarks
reuse its pieces (`demo.closed_loop`).
"""
