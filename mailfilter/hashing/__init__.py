"""The hash stage: pure functions from decoded pixels (or raw bytes) to fingerprints. PDQ
(Meta's reference-compatible), vPDQ of sampled video frames, gridhist (ours) and the exact
hashes; which of them a list can hold is told by the registry in `mailfilter.signals`."""
