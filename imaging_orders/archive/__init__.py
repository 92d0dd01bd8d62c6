"""The image archive: the DICOM node, ingest (C-STORE and STOW-RS), query/retrieve (C-FIND, C-GET,
C-MOVE), DICOMweb (QIDO-RS, WADO-RS) and reconciliation, over the study/series/instance tables in
`models` and the files under DICOM_STORAGE_DIR.

It is the only writer of those tables and files. Ordering and scheduling (`imaging_orders`) sit
beside it; later stages use `imaging_orders.archive.public` and nothing else of it.
"""
