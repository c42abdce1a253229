"""Reports to NCMEC's CyberTipline through its reporting web service (issue 19).

- `document`: the `<report>` and `<fileDetails>` documents as typed frozen values, and
  their XML, elements in the order of NCMEC's schema sequences; optional validation
  against the XSD an operator downloaded (`validate`).
- `protocol`: the API as a sans-IO codec (requests as values, answers parsed into values
  or typed errors that say whether sending again is safe) and `client`, a thin blocking
  HTTP client over it.
- `journal`: the step sequence submit -> upload each file -> fileinfo each -> finish as
  recorded data, `next_step` (pure) and the resume rules; `run_steps` drives a client
  through it, saving the journal around every step.
- `credentials`: the password file, read at use, refused unless only its owner can read it.

Nothing here knows the quarantine: the `quarantine submit` command and the outbox channel
build a `Report` and the files from an entry and keep the journal in the entry's history.
"""
