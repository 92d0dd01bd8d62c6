"""Imaging orders: the centre accepts referrals, books slots, publishes its worklist (web page and
DICOM Modality Worklist) and receives images (C-STORE / STOW-RS), matched by AccessionNumber."""
